//! OpenAPI 3.0 (read by `openapiv3`) and 3.1 (rewritten to the 3.0 shape first).

use std::collections::BTreeMap;

use openapiv3::{OpenAPI, ReferenceOr};
use serde_json::Value;

use super::{openapi31, KeyLocation, Method, Operation, SecurityScheme, ServiceSpec, SpecError, MAX_DOCUMENT_BYTES};

/// Parses an OpenAPI 3.0 or 3.1 document, JSON or YAML.
///
/// The work runs on a thread of its own with a 32 MiB stack: reading a
/// schema nested as deep as the JSON and YAML parsers allow (128 levels) takes far more
/// stack than a caller's thread may have (openapiv3's untagged and flattened schema types
/// recurse through buffered content), and running out of stack aborts the process.
pub fn parse_openapi(bytes: &[u8]) -> Result<ServiceSpec, SpecError> {
    super::on_parse_stack(|| parse_openapi_value(parse_document(bytes)?))
}

/// An OpenAPI document already read into a value. Deep documents need a deep stack: call it
/// through [`super::on_parse_stack`].
pub(super) fn parse_openapi_value(mut doc: Value) -> Result<ServiceSpec, SpecError> {
    if !doc.is_object() {
        let kind = match doc {
            Value::Null => "empty",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "a mapping",
        };
        return Err(SpecError::Unsupported(format!("not an OpenAPI document: the document is {kind}, not a mapping")));
    }
    let version = match doc.get("openapi") {
        Some(Value::String(v)) => v.clone(),
        // `openapi: 3.1` unquoted is a number in YAML: read it as the version it spells.
        Some(Value::Number(n)) => {
            let v = n.to_string();
            doc["openapi"] = Value::String(v.clone());
            v
        }
        Some(other) => {
            return Err(SpecError::Invalid {
                path: "openapi".into(),
                message: format!("the version must be a string such as \"3.0.3\", found `{other}`"),
            })
        }
        None if doc.get("swagger").is_some() => {
            return Err(SpecError::Unsupported(
                "Swagger 2.0 documents are not supported; convert the document to OpenAPI 3".into(),
            ))
        }
        None => {
            return Err(SpecError::Unsupported(
                "not an OpenAPI document: the `openapi` version field is missing".into(),
            ))
        }
    };
    if version.starts_with("3.1") {
        openapi31::downgrade(&mut doc);
    } else if !version.starts_with("3.0") {
        return Err(SpecError::Unsupported(format!("OpenAPI version {version} is not supported (3.0 and 3.1 are)")));
    }
    check_path_keys(&doc)?;
    match serde_path_to_error::deserialize::<_, OpenAPI>(&doc) {
        Ok(api) => Ok(to_spec(api)),
        Err(e) => Err(locate_error(&doc)
            .unwrap_or(SpecError::Invalid { path: e.path().to_string(), message: e.inner().to_string() })),
    }
}

/// Path keys become upstream URLs segment by segment: a `.` or `..` segment would make
/// the request land elsewhere than the tree shows, and a control character has no name.
fn check_path_keys(doc: &Value) -> Result<(), SpecError> {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(());
    };
    for key in paths.keys().filter(|k| !k.starts_with("x-")) {
        let path = key.split_once('?').map_or(key.as_str(), |(p, _)| p);
        let bad = |message: &str| Err(SpecError::Invalid { path: format!("paths.{key}"), message: message.into() });
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return bad("a path segment is `.` or `..`");
        }
        if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return bad("the path contains a control character");
        }
    }
    Ok(())
}

/// `paths` is read through a flattened map, which hides the failing key from the error
/// path: read each path item on its own to name the place.
fn locate_error(doc: &Value) -> Option<SpecError> {
    let paths = doc.get("paths")?.as_object()?;
    for (key, item) in paths {
        if key.starts_with("x-") || item.get("$ref").is_some() {
            continue;
        }
        if let Err(e) = serde_path_to_error::deserialize::<_, openapiv3::PathItem>(item) {
            let inner = e.path().to_string();
            // `.` is the path item itself; `[0]` needs no separator.
            let path = match inner.as_str() {
                "." => format!("paths.{key}"),
                i if i.starts_with('[') => format!("paths.{key}{i}"),
                i => format!("paths.{key}.{i}"),
            };
            return Some(SpecError::Invalid { path, message: e.inner().to_string() });
        }
    }
    None
}

/// JSON or YAML text into a JSON value.
pub fn parse_document(bytes: &[u8]) -> Result<Value, SpecError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(SpecError::TooLarge(bytes.len()));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| SpecError::Syntax(format!("JSON, {e}")))
    } else {
        if yaml_flow_depth(bytes, MAX_YAML_FLOW_DEPTH) > MAX_YAML_FLOW_DEPTH {
            return Err(SpecError::Syntax(format!(
                "YAML, flow collections (`[`, `{{`) nested deeper than {MAX_YAML_FLOW_DEPTH} levels"
            )));
        }
        serde_yaml_ng::from_slice::<Lenient>(bytes).map(|l| l.0).map_err(|e| SpecError::Syntax(format!("YAML, {e}")))
    }
}

/// Deepest nesting of YAML flow collections read. The YAML scanner spends time in
/// proportion to the flow depth on every token, so `a: {a: {a: ...` 100,000 levels deep
/// takes minutes before the deserializer's own limit (128 levels) refuses it.
const MAX_YAML_FLOW_DEPTH: usize = 256;

/// The deepest nesting of flow collections in a YAML text, as far as `limit + 1` (a
/// linear pre-scan). It follows what decides flow nesting — quoted scalars, comments,
/// block scalars, where a node may start — closely enough for real documents; it is a
/// guard against nesting bombs, not a YAML parser.
fn yaml_flow_depth(bytes: &[u8], limit: usize) -> usize {
    let is_blank = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let n = bytes.len();
    let (mut depth, mut deepest) = (0usize, 0usize);
    // Whether a node may begin here (so `[`, `{`, quotes, `|` and `>` are indicators).
    let mut node_start = true;
    let mut line_begin = 0usize;
    // Inside a block scalar: lines indented more than this belong to it.
    let mut block_scalar: Option<usize> = None;
    let mut i = 0usize;
    while i < n {
        if i == line_begin {
            if let Some(parent) = block_scalar {
                let indent = bytes[i..].iter().take_while(|&&b| b == b' ').count();
                let rest = i + indent;
                let blank_line = rest >= n || matches!(bytes[rest], b'\n' | b'\r');
                if blank_line || indent > parent {
                    i = bytes[i..].iter().position(|&b| b == b'\n').map_or(n, |p| i + p + 1);
                    line_begin = i;
                    continue;
                }
                block_scalar = None;
            }
        }
        let b = bytes[i];
        let prev_blank = i == line_begin || is_blank(bytes[i - 1]);
        let next_blank = i + 1 >= n || is_blank(bytes[i + 1]);
        match b {
            b'\n' => {
                line_begin = i + 1;
                if depth == 0 {
                    node_start = true;
                }
            }
            b' ' | b'\t' | b'\r' => {}
            b'#' if prev_blank => {
                i = bytes[i..].iter().position(|&b| b == b'\n').map_or(n, |p| i + p);
                continue;
            }
            b'[' | b'{' if depth > 0 || node_start => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
                node_start = true;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                node_start = false;
            }
            b',' if depth > 0 => node_start = true,
            b':' if depth > 0 || next_blank => node_start = true,
            b'-' | b'?' if next_blank => node_start = true,
            b'"' if node_start => {
                i += 1;
                while i < n && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                node_start = false;
            }
            b'\'' if node_start => {
                i += 1;
                while i < n {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
                node_start = false;
            }
            // Anchors and tags come before the node they name.
            b'&' | b'!' if node_start => {
                while i + 1 < n && !is_blank(bytes[i + 1]) {
                    i += 1;
                }
            }
            b'|' | b'>' if node_start && depth == 0 => {
                // The block scalar's lines are those indented past the line's content
                // (after any `- ` sequence indicators).
                let mut col = line_begin;
                loop {
                    while col < n && bytes[col] == b' ' {
                        col += 1;
                    }
                    if col + 1 < n && bytes[col] == b'-' && bytes[col + 1] == b' ' {
                        col += 1;
                    } else {
                        break;
                    }
                }
                block_scalar = Some(col - line_begin);
                i = bytes[i..].iter().position(|&b| b == b'\n').map_or(n, |p| i + p + 1);
                line_begin = i;
                node_start = true;
                continue;
            }
            _ => node_start = false,
        }
        i += 1;
    }
    deepest
}

/// A JSON value read from YAML leniently: mapping keys become strings (`200:` →
/// `"200"`) and integers beyond 64 bits become floats (the OpenAI document's
/// `minimum: -9223372036854776000`). Nesting is capped by the YAML parser's own limit.
struct Lenient(Value);

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor).map(Lenient)
    }
}

struct LenientVisitor;

impl<'de> serde::de::Visitor<'de> for LenientVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(float(v as f64))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(float(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Lenient(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((Lenient(k), Lenient(v))) = map.next_entry()? {
            let key = match k {
                Value::String(s) => s,
                Value::Null => "null".to_owned(),
                Value::Bool(_) | Value::Number(_) => k.to_string(),
                Value::Array(_) | Value::Object(_) => {
                    return Err(serde::de::Error::custom("a mapping key is not a scalar"));
                }
            };
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

fn to_spec(api: OpenAPI) -> ServiceSpec {
    let servers = api.servers.iter().map(server_url).collect();
    let security_schemes = api
        .components
        .as_ref()
        .map(|c| {
            c.security_schemes
                .iter()
                .filter_map(|(name, s)| match s {
                    ReferenceOr::Item(s) => Some((name.clone(), scheme(s))),
                    ReferenceOr::Reference { .. } => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let security = api.security.as_deref().map(requirements).unwrap_or_default();

    let mut operations: Vec<Operation> = Vec::new();
    let mut item_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: BTreeMap<(String, Method), usize> = BTreeMap::new();
    // Plain path keys first, so that `/responses?beta=true` only adds what `/responses` lacks.
    let mut keys: Vec<(&String, &openapiv3::PathItem)> =
        api.paths.paths.iter().filter_map(|(k, item)| item.as_item().map(|i| (k, i))).collect();
    keys.sort_by_key(|(k, _)| k.contains('?'));
    for (key, item) in keys {
        let (path, fixed_query) = match key.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (key.clone(), None),
        };
        let methods = [
            (Method::Get, &item.get),
            (Method::Post, &item.post),
            (Method::Put, &item.put),
            (Method::Patch, &item.patch),
            (Method::Delete, &item.delete),
        ];
        for (method, op) in methods {
            let Some(op) = op else { continue };
            if seen.contains_key(&(path.clone(), method)) {
                continue;
            }
            seen.insert((path.clone(), method), operations.len());
            if method == Method::Get {
                if let Some(field) = op.extensions.get("x-nkmc-id").and_then(Value::as_str) {
                    item_ids.insert(path.clone(), field.to_owned());
                }
            }
            operations.push(Operation {
                method,
                path: path.clone(),
                fixed_query: fixed_query.clone(),
                operation_id: op.operation_id.clone(),
                summary: op.summary.clone(),
                security: op.security.as_deref().map(requirements),
            });
        }
    }
    ServiceSpec {
        title: api.info.title,
        version: api.info.version,
        servers,
        operations,
        security_schemes,
        security,
        protocol: super::Protocol::Http,
        rpc_methods: BTreeMap::new(),
        item_ids,
    }
}

fn server_url(s: &openapiv3::Server) -> String {
    let mut url = s.url.clone();
    if let Some(vars) = &s.variables {
        for (name, var) in vars {
            url = url.replace(&format!("{{{name}}}"), &var.default);
        }
    }
    url
}

fn requirements(reqs: &[openapiv3::SecurityRequirement]) -> Vec<Vec<String>> {
    reqs.iter().map(|r| r.keys().cloned().collect()).collect()
}

fn scheme(s: &openapiv3::SecurityScheme) -> SecurityScheme {
    use openapiv3::{APIKeyLocation, SecurityScheme as S};
    match s {
        S::APIKey { location, name, .. } => SecurityScheme::ApiKey {
            location: match location {
                APIKeyLocation::Header => KeyLocation::Header,
                APIKeyLocation::Query => KeyLocation::Query,
                APIKeyLocation::Cookie => KeyLocation::Cookie,
            },
            name: name.clone(),
        },
        S::HTTP { scheme, .. } if scheme.eq_ignore_ascii_case("bearer") => SecurityScheme::Bearer,
        S::HTTP { scheme, .. } if scheme.eq_ignore_ascii_case("basic") => SecurityScheme::Basic,
        S::HTTP { scheme, .. } => SecurityScheme::Unsupported { description: format!("http scheme `{scheme}`") },
        S::OAuth2 { flows, .. } => match &flows.client_credentials {
            Some(cc) => SecurityScheme::OAuth2ClientCredentials { token_url: cc.token_url.clone() },
            None => SecurityScheme::Unsupported { description: "oauth2 without a client-credentials flow".into() },
        },
        S::OpenIDConnect { .. } => SecurityScheme::Unsupported { description: "openIdConnect".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PETSTORE: &str = r#"
openapi: "3.0.0"
info: {title: Swagger Petstore, version: 1.0.0}
servers: [{url: "http://petstore.swagger.io/v1"}]
paths:
  /pets:
    get:
      operationId: listPets
      responses:
        200: {description: ok}
    post:
      operationId: createPets
      responses:
        '201': {description: created}
  /pets/{petId}:
    get:
      operationId: showPetById
      responses:
        default: {description: err}
"#;

    #[test]
    fn petstore_30_with_numeric_response_keys() {
        let spec = parse_openapi(PETSTORE.as_bytes()).unwrap();
        assert_eq!(spec.servers, vec!["http://petstore.swagger.io/v1"]);
        let ops: Vec<_> = spec.operations.iter().map(|o| (o.method, o.path.as_str())).collect();
        assert_eq!(ops, vec![(Method::Get, "/pets"), (Method::Post, "/pets"), (Method::Get, "/pets/{petId}")]);
    }

    #[test]
    fn query_keys_only_add_what_the_plain_path_lacks() {
        let doc = r#"{"openapi":"3.1.0","info":{"title":"t","version":"1","license":{"name":"MIT","identifier":"MIT"}},
          "paths":{"/r?beta=true":{"get":{"responses":{}},"delete":{"responses":{}}},"/r":{"get":{"responses":{}}}}}"#;
        let spec = parse_openapi(doc.as_bytes()).unwrap();
        assert_eq!(spec.operations.len(), 2);
        assert_eq!(spec.operations[0].fixed_query, None);
        assert_eq!(spec.operations[1].method, Method::Delete);
        assert_eq!(spec.operations[1].fixed_query.as_deref(), Some("beta=true"));
    }

    #[test]
    fn flow_scan_follows_quotes_comments_and_block_scalars() {
        let depth = |s: &str| yaml_flow_depth(s.as_bytes(), 1000);
        assert_eq!(depth("a: [[[]]]\nb: {c: [1]}"), 3);
        assert_eq!(depth("a: '[[[['\nb: \"[[\\\"[[\""), 0);
        assert_eq!(depth("a: it's [[[ 'x' [["), 0);
        assert_eq!(depth("a: # [[[[\nb: 1"), 0);
        assert_eq!(depth("a: |\n  [[[[\nb: [1]"), 1);
        assert_eq!(depth("- key: >-\n    [[[\n  other: [[x]]"), 2);
        assert_eq!(depth("a: &x [&y [!!seq [1]]]"), 3);
        assert_eq!(depth("--- [[1], {'a]': \"}\"}]"), 2);
        assert_eq!(depth(&format!("a: {}", "{a: ".repeat(300))), 300);
        assert_eq!(yaml_flow_depth(format!("a: {}", "[".repeat(100_000)).as_bytes(), 256), 257);
    }

    #[test]
    fn x_nkmc_id_names_the_id_member() {
        let doc = r#"{"openapi":"3.0.0","info":{"title":"t","version":"1"},
          "paths":{"/things":{"get":{"x-nkmc-id":"uuid","responses":{}}},"/things/{uuid}":{"get":{"responses":{}}}}}"#;
        let spec = parse_openapi(doc.as_bytes()).unwrap();
        assert_eq!(spec.item_ids.get("/things").map(String::as_str), Some("uuid"));
    }

    #[test]
    fn errors_name_the_place_in_the_document() {
        let doc = r#"{"openapi":"3.0.0","info":{"title":"t","version":"1"},"paths":{"/a":{"get":{"responses":{"200":{"description":5}}}}}}"#;
        let err = parse_openapi(doc.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("paths./a.get.responses"), "{err}");
        let err = parse_openapi(b"swagger: '2.0'").unwrap_err().to_string();
        assert!(err.contains("Swagger 2.0"), "{err}");
        assert!(matches!(parse_openapi(b"{ nope"), Err(SpecError::Syntax(_))));
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openapi").join(name);
        std::fs::read(p).unwrap()
    }

    #[test]
    fn openai_31_fixture_parses() {
        let spec = parse_openapi(&fixture("openai.yaml")).unwrap();
        assert_eq!(spec.servers, vec!["https://api.openai.com/v1"]);
        assert!(spec.operations.len() > 200, "{}", spec.operations.len());
        assert!(spec.operations.iter().any(|o| o.path == "/models" && o.method == Method::Get));
        assert_eq!(spec.security_schemes.get("ApiKeyAuth"), Some(&SecurityScheme::Bearer));
        assert_eq!(spec.security, vec![vec!["ApiKeyAuth".to_string()]]);
    }

    #[test]
    fn real_documents_are_shallow_for_the_flow_scan() {
        assert!(yaml_flow_depth(&fixture("openai.yaml"), MAX_YAML_FLOW_DEPTH) < 8);
        assert!(yaml_flow_depth(&fixture("petstore.yaml"), MAX_YAML_FLOW_DEPTH) < 8);
    }

    #[test]
    fn petstore_fixture_parses() {
        let spec = parse_openapi(&fixture("petstore.yaml")).unwrap();
        assert_eq!(spec.operations.len(), 3);
    }
}
