//! OpenAPI 3.1 → the 3.0 shape that `openapiv3` reads.
//!
//! 3.1 changed JSON Schema (type arrays, `type: 'null'`, numeric exclusive bounds,
//! `const`, `examples` arrays) and a few top-level fields. nkmc acts on paths,
//! operations, servers and security, not on schema details, so schemas are rewritten to
//! their closest 3.0 form rather than validated.

use serde_json::{Map, Value};

/// Rewrites a 3.1 document in place so that `openapiv3` accepts it.
pub fn downgrade(doc: &mut Value) {
    let Some(root) = doc.as_object_mut() else {
        return;
    };
    root.insert("openapi".into(), Value::String("3.0.3".into()));
    root.remove("webhooks");
    root.remove("jsonSchemaDialect");
    if let Some(license) = root.get_mut("info").and_then(|i| i.get_mut("license")) {
        if let Some(l) = license.as_object_mut() {
            l.remove("identifier");
        }
    }
    root.entry("paths").or_insert_with(|| Value::Object(Map::new()));
    if let Some(schemas) = root.get_mut("components").and_then(|c| c.get_mut("schemas")).and_then(Value::as_object_mut)
    {
        for s in schemas.values_mut() {
            fix_schema(s, 0);
        }
    }
    walk_for_schemas(doc, 0);
}

/// Deepest nesting followed; deeper parts are left as they are.
const MAX_DEPTH: usize = 256;

/// Finds every `schema` member outside `components.schemas` (parameters, media types,
/// headers) and fixes it.
fn walk_for_schemas(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "schema" {
                    fix_schema(child, 0);
                } else if k != "schemas" {
                    walk_for_schemas(child, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                walk_for_schemas(child, depth + 1);
            }
        }
        _ => {}
    }
}

fn fix_schema(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(s) = v.as_object_mut() else {
        return;
    };
    match s.get("type").cloned() {
        Some(Value::Array(types)) => {
            let non_null: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
            if non_null.len() < types.len() {
                s.insert("nullable".into(), Value::Bool(true));
            }
            match non_null.as_slice() {
                [one] => {
                    s.insert("type".into(), (*one).clone());
                }
                _ => {
                    s.remove("type");
                }
            }
        }
        Some(Value::String(t)) if t == "null" => {
            s.remove("type");
            s.insert("nullable".into(), Value::Bool(true));
        }
        _ => {}
    }
    for bound in ["exclusiveMinimum", "exclusiveMaximum"] {
        if let Some(n) = s.get(bound).filter(|b| b.is_number()).cloned() {
            let plain = if bound == "exclusiveMinimum" { "minimum" } else { "maximum" };
            s.insert(plain.into(), n);
            s.insert(bound.into(), Value::Bool(true));
        }
    }
    if let Some(c) = s.remove("const") {
        s.insert("enum".into(), Value::Array(vec![c]));
    }
    if let Some(Value::Array(mut examples)) = s.remove("examples") {
        if !examples.is_empty() && !s.contains_key("example") {
            s.insert("example".into(), examples.swap_remove(0));
        }
    }
    for key in ["$schema", "$id", "$anchor", "$defs", "$comment", "contentMediaType", "contentEncoding"] {
        s.remove(key);
    }
    if let Some(Value::Array(prefix)) = s.remove("prefixItems") {
        if !s.contains_key("items") {
            if let Some(first) = prefix.into_iter().next() {
                s.insert("items".into(), first);
            }
        }
    }
    for key in ["items", "not", "additionalProperties"] {
        if let Some(child) = s.get_mut(key) {
            fix_schema(child, depth + 1);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = s.get_mut(key) {
            for child in items {
                fix_schema(child, depth + 1);
            }
        }
    }
    if let Some(Value::Object(props)) = s.get_mut("properties") {
        for child in props.values_mut() {
            fix_schema(child, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_arrays_become_nullable() {
        let mut s = json!({"type": ["string", "null"], "examples": ["a"], "const": "a"});
        fix_schema(&mut s, 0);
        assert_eq!(s, json!({"type": "string", "nullable": true, "example": "a", "enum": ["a"]}));
        let mut n = json!({"type": "null"});
        fix_schema(&mut n, 0);
        assert_eq!(n, json!({"nullable": true}));
        let mut b = json!({"type": "integer", "exclusiveMinimum": 0});
        fix_schema(&mut b, 0);
        assert_eq!(b, json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true}));
    }
}
