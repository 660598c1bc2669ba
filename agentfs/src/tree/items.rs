//! Item ids from a collection's response, for listings of templated children.
//!
//! The array is the response itself, or its `data`, `items`, `results`, `value`, `entries`
//! or `records` member, or else its first array-valued member. Each element's id is the
//! element itself (a string or number) or the member the document names with `x-nkmc-id`,
//! else its `id`, `name`, `slug`, `login` or `key`.

use serde_json::Value;

/// Most items a listing shows.
pub const MAX_ITEMS: usize = 1000;

const ARRAY_KEYS: [&str; 6] = ["data", "items", "results", "value", "entries", "records"];
const ID_KEYS: [&str; 5] = ["id", "name", "slug", "login", "key"];

/// Ids from a collection response, in response order, without duplicates, capped at `cap`.
/// `id_field` (from the document's `x-nkmc-id`) names the member to use before the usual ones.
pub fn extract_ids(body: &Value, id_field: Option<&str>, cap: usize) -> Vec<String> {
    let array = match body {
        Value::Array(a) => Some(a),
        Value::Object(o) => ARRAY_KEYS
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_array))
            .or_else(|| o.values().find_map(Value::as_array)),
        _ => None,
    };
    let mut out: Vec<String> = Vec::new();
    for item in array.into_iter().flatten() {
        if out.len() >= cap {
            break;
        }
        let id = match item {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(o) => id_field.into_iter().chain(ID_KEYS).find_map(|k| match o.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            }),
            _ => None,
        };
        if let Some(id) = id.filter(|i| !i.is_empty()) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_from_common_shapes() {
        assert_eq!(
            extract_ids(&json!({"object":"list","data":[{"id":"gpt-4o"},{"id":"o3"}]}), None, 10),
            ["gpt-4o", "o3"]
        );
        assert_eq!(extract_ids(&json!([{"id":1,"name":"rex"},{"name":"tom"}]), None, 10), ["1", "tom"]);
        assert_eq!(extract_ids(&json!({"things":[{"login":"octocat"}]}), None, 10), ["octocat"]);
        assert_eq!(extract_ids(&json!(["a", "b", "a", ""]), None, 10), ["a", "b"]);
        assert_eq!(extract_ids(&json!([1, 2, 3]), None, 2), ["1", "2"]);
        assert!(extract_ids(&json!({"id": 1}), None, 10).is_empty());
        let named = json!([{"id": 9, "uuid": "a-1"}, {"uuid": "b-2"}]);
        assert_eq!(extract_ids(&named, Some("uuid"), 10), ["a-1", "b-2"], "x-nkmc-id first");
        assert!(extract_ids(&json!("text"), None, 10).is_empty());
    }
}
