//! OpenRPC documents: one file per JSON-RPC method.
//!
//! Read leniently, as the published examples need: a `result` without `name`, params given
//! as `$ref`s into `components.contentDescriptors`, server URLs with `${var}` variables.
//! Each method becomes a POST operation on `/<method>` (writing params calls it); a method
//! with no required param also gets a GET (reading it calls it with no params).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{parse_document, Method, Operation, Protocol, ServiceSpec, SpecError};
use crate::path::Name;

/// How a JSON-RPC method takes its params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamStructure {
    /// An object of named params.
    ByName,
    /// An array of positional params.
    ByPosition,
    /// Either (the OpenRPC default); nkmc sends an array when it has no params.
    #[default]
    Either,
}

/// What the gateway needs to call one method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcMethod {
    /// The method's name on the wire.
    pub name: String,
    /// Param names in order.
    pub params: Vec<String>,
    /// Names of the required params.
    pub required: BTreeSet<String>,
    /// How params are passed.
    #[serde(default)]
    pub structure: ParamStructure,
}

impl RpcMethod {
    /// The params of a call made by reading the file: none.
    pub fn empty_params(&self) -> Value {
        match self.structure {
            ParamStructure::ByName => Value::Object(Default::default()),
            ParamStructure::ByPosition | ParamStructure::Either => Value::Array(Vec::new()),
        }
    }
}

/// Deepest `$ref` chain followed.
const MAX_REF_DEPTH: usize = 32;

/// Follows `$ref`s within the document (`#/...` only), with a visited set and a depth cap.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> Result<&'a Value, SpecError> {
    let mut seen = BTreeSet::new();
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        if !seen.insert(r.to_owned()) || seen.len() > MAX_REF_DEPTH {
            return Err(SpecError::Invalid { path: r.to_owned(), message: "circular or too deep `$ref`".into() });
        }
        let pointer = r.strip_prefix('#').ok_or_else(|| SpecError::Invalid {
            path: r.to_owned(),
            message: "only references inside the document (`#/...`) are supported".into(),
        })?;
        v = doc
            .pointer(pointer)
            .ok_or_else(|| SpecError::Invalid { path: r.to_owned(), message: "the reference points nowhere".into() })?;
    }
    Ok(v)
}

fn server_url(s: &Value) -> Option<String> {
    let mut url = s.get("url")?.as_str()?.to_owned();
    if let Some(vars) = s.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            let default = var.get("default").and_then(Value::as_str).unwrap_or_default();
            url = url.replace(&format!("${{{name}}}"), default).replace(&format!("{{{name}}}"), default);
        }
    }
    Some(url)
}

/// Parses an OpenRPC document.
pub fn parse_openrpc(bytes: &[u8]) -> Result<ServiceSpec, SpecError> {
    super::on_parse_stack(|| parse_openrpc_value(parse_document(bytes)?))
}

/// An OpenRPC document already read into a value.
pub(super) fn parse_openrpc_value(doc: Value) -> Result<ServiceSpec, SpecError> {
    let invalid = |path: String, message: &str| SpecError::Invalid { path, message: message.to_owned() };
    if doc.get("openrpc").and_then(Value::as_str).is_none() {
        return Err(SpecError::Unsupported("not an OpenRPC document: the `openrpc` version field is missing".into()));
    }
    let info = doc.get("info").ok_or_else(|| invalid("info".into(), "missing"))?;
    let title = info.get("title").and_then(Value::as_str).unwrap_or("JSON-RPC service").to_owned();
    let version = info.get("version").and_then(Value::as_str).unwrap_or_default().to_owned();
    let servers = doc.get("servers").and_then(Value::as_array).into_iter().flatten().filter_map(server_url).collect();
    let methods = doc
        .get("methods")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("methods".into(), "missing or not a list"))?;

    let mut operations = Vec::new();
    let mut rpc_methods = BTreeMap::new();
    for (i, m) in methods.iter().enumerate() {
        let at = format!("methods[{i}]");
        let m = resolve(&doc, m)?;
        let name = m.get("name").and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}.name"), "missing"))?;
        let file = Name::from_raw(name).map_err(|e| invalid(format!("{at}.name"), &e.to_string()))?;
        if file.as_str().contains(['{', '}']) {
            return Err(invalid(format!("{at}.name"), "method names with braces are not supported"));
        }
        let mut params = Vec::new();
        let mut required = BTreeSet::new();
        for (j, p) in m.get("params").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let p = resolve(&doc, p)?;
            let pname = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}.params[{j}].name"), "missing"))?;
            if p.get("required").and_then(Value::as_bool).unwrap_or(false) {
                required.insert(pname.to_owned());
            }
            params.push(pname.to_owned());
        }
        let structure = match m.get("paramStructure").and_then(Value::as_str) {
            Some("by-name") => ParamStructure::ByName,
            Some("by-position") => ParamStructure::ByPosition,
            _ => ParamStructure::Either,
        };
        let path = format!("/{}", file.as_str());
        let summary = m.get("summary").and_then(Value::as_str).map(str::to_owned);
        let op = |method| Operation {
            method,
            path: path.clone(),
            fixed_query: None,
            operation_id: Some(name.to_owned()),
            summary: summary.clone(),
            security: None,
        };
        if required.is_empty() {
            operations.push(op(Method::Get));
        }
        operations.push(op(Method::Post));
        rpc_methods.insert(path.clone(), RpcMethod { name: name.to_owned(), params, required, structure });
    }
    Ok(ServiceSpec {
        title,
        version,
        servers,
        operations,
        security_schemes: BTreeMap::new(),
        security: Vec::new(),
        protocol: Protocol::JsonRpc,
        rpc_methods,
        item_ids: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openrpc").join(name))
            .unwrap()
    }

    #[test]
    fn petstore_methods_become_files() {
        let spec = parse_openrpc(&fixture("petstore-openrpc.json")).unwrap();
        assert_eq!(spec.protocol, Protocol::JsonRpc);
        assert_eq!(spec.servers, vec!["http://localhost:8080"]);
        let ops: Vec<_> = spec.operations.iter().map(|o| (o.method, o.path.as_str())).collect();
        assert_eq!(
            ops,
            vec![
                (Method::Get, "/list_pets"),
                (Method::Post, "/list_pets"),
                (Method::Post, "/create_pet"),
                (Method::Post, "/get_pet"),
            ]
        );
        let get_pet = &spec.rpc_methods["/get_pet"];
        assert_eq!(get_pet.params, vec!["petId"], "a param given as $ref");
        assert!(get_pet.required.contains("petId"));
    }

    #[test]
    fn all_fixtures_parse_and_server_variables_fill_in() {
        for f in ["petstore-expanded-openrpc.json", "simple-math-openrpc.json"] {
            parse_openrpc(&fixture(f)).unwrap();
        }
        let math = parse_openrpc(&fixture("simple-math-openrpc.json")).unwrap();
        assert_eq!(math.servers, vec!["http://demo.simple-math.example.org:443/jsonrpc/"]);
    }

    #[test]
    fn circular_refs_fail_cleanly() {
        let doc = br##"{"openrpc":"1.2.6","info":{"title":"t","version":"1"},
            "methods":[{"$ref":"#/components/x"}],"components":{"x":{"$ref":"#/components/x"}}}"##;
        let err = parse_openrpc(doc).unwrap_err().to_string();
        assert!(err.contains("circular"), "{err}");
    }
}
