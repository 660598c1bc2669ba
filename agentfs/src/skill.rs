//! `skill.md`: the nkmc-compatible manifest that describes a service to agents.
//!
//! Every service folder shows one, generated from the spec, so any registered API is
//! described the same way: YAML front matter (`name`, `gateway`, `version`, `roles`), a
//! title and description, and an `## API` section with one `### Summary` per operation,
//! followed by `` `METHOD /path` `` and the file that performs it.

use std::fmt::Write;

use crate::spec::{Method, ServiceSpec};
use crate::tree::Tree;

/// The file name under each service folder.
pub const FILE_NAME: &str = "skill.md";

fn verb(m: Method) -> &'static str {
    match m {
        Method::Get => "cat FILE",
        Method::Post | Method::Put | Method::Patch => "write JSON to FILE",
        Method::Delete => "rm FILE",
    }
}

/// The skill.md of a registered service.
pub fn generate(domain: &str, spec: &ServiceSpec, tree: &Tree) -> String {
    let mut out = String::new();
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let _ =
        writeln!(out, "---\nname: {}\ngateway: nkmc\nversion: {}\nroles: [agent]\n---\n", q(domain), q(&spec.version));
    let _ = writeln!(out, "# {}\n", spec.title.trim());
    let _ = writeln!(
        out,
        "Each file under `{domain}/` is an API call made by the nkmc gateway with the owner's key; \
         the key never reaches you. `cat` a file to send its GET, write JSON to it to send its \
         POST/PUT/PATCH (then `cat` it for the response), `rm` it to send its DELETE. A name in \
         braces (`{{id}}`) stands for any value. Query strings go in the name: `cat 'search?q=x'`.\n"
    );
    let _ = writeln!(out, "## API\n");
    for op in &spec.operations {
        let summary = op
            .summary
            .as_deref()
            .or(op.operation_id.as_deref())
            .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{} {}", op.method.as_str(), op.path));
        let _ = writeln!(out, "### {summary}\n");
        let _ = writeln!(out, "`{} {}`\n", op.method.as_str(), op.path);
        if let Some(file) = tree.file_path(&op.path) {
            let _ = writeln!(out, "File: `{domain}/{file}` ({})\n", verb(op.method));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Operation;

    #[test]
    fn lists_operations_with_their_files() {
        let op = |method, path: &str, summary: Option<&str>| Operation {
            method,
            path: path.into(),
            fixed_query: None,
            operation_id: None,
            summary: summary.map(Into::into),
            security: None,
        };
        let spec = ServiceSpec {
            title: "Pets".into(),
            version: "1.0".into(),
            servers: vec![],
            operations: vec![
                op(Method::Get, "/pets", Some("List pets")),
                op(Method::Get, "/pets/{petId}", None),
                op(Method::Delete, "/pets/{petId}", None),
            ],
            security_schemes: Default::default(),
            security: vec![],
            protocol: Default::default(),
            rpc_methods: Default::default(),
            item_ids: Default::default(),
        };
        let md = generate("pets.test", &spec, &Tree::build(&spec));
        assert!(
            md.starts_with("---\nname: \"pets.test\"\ngateway: nkmc\nversion: \"1.0\"\nroles: [agent]\n---\n"),
            "{md}"
        );
        assert!(md.contains("# Pets\n"));
        assert!(md.contains("### List pets\n\n`GET /pets`\n\nFile: `pets.test/pets` (cat FILE)"), "{md}");
        assert!(md.contains("`DELETE /pets/{petId}`\n\nFile: `pets.test/pets.d/{petId}` (rm FILE)"), "{md}");
    }
}

/// Parses a skill.md manifest (as written by people, or as [`generate`] writes it) into a
/// spec: front matter, `# Title`, a description, and one operation per `### Summary` in the
/// `## API` section, taken from the first `` `METHOD /path` `` line under it. Other
/// sections (`## Schema` tables) and extra lines (`File:`, prices) are read past.
pub fn parse(text: &str) -> Result<crate::spec::ServiceSpec, crate::spec::SpecError> {
    use crate::spec::{Operation, Protocol, SpecError};
    let invalid = |path: &str, message: String| SpecError::Invalid { path: path.to_owned(), message };
    if text.len() > crate::spec::MAX_DOCUMENT_BYTES {
        return Err(SpecError::TooLarge(text.len()));
    }
    let text = text.replace("\r\n", "\n");
    let rest = text
        .strip_prefix("---\n")
        .ok_or_else(|| invalid("front matter", "a skill.md starts with a `---` line and YAML front matter".into()))?;
    let end = rest.find("\n---\n").ok_or_else(|| invalid("front matter", "no closing `---` line".into()))?;
    let front_bytes = &rest.as_bytes()[..end];
    let front = crate::spec::on_parse_stack(|| crate::spec::parse_document(front_bytes))?;
    let body = &rest[end + 5..];
    let name = front.get("name").and_then(serde_json::Value::as_str).map(str::to_owned);
    let version = match front.get("version") {
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };

    let mut title = None;
    let mut section = String::new();
    let mut summary: Option<String> = None;
    let mut operations = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim_end();
        if let Some(t) = line.strip_prefix("# ") {
            title.get_or_insert_with(|| t.trim().to_owned());
        } else if let Some(s) = line.strip_prefix("## ") {
            section = s.trim().to_ascii_lowercase();
            summary = None;
        } else if let Some(s) = line.strip_prefix("### ") {
            summary = (section == "api").then(|| s.trim().to_owned());
        } else if let (Some(sum), Some(call)) = (&summary, line.trim().strip_prefix('`')) {
            let Some(call) = call.split('`').next() else { continue };
            let Some((method, path)) = call.split_once(' ') else { continue };
            let method = match method.to_ascii_uppercase().as_str() {
                "GET" => Method::Get,
                "POST" => Method::Post,
                "PUT" => Method::Put,
                "PATCH" => Method::Patch,
                "DELETE" => Method::Delete,
                other => return Err(invalid(&format!("line {}", i + 1), format!("unknown method `{other}`"))),
            };
            let path = path.trim();
            if !path.starts_with('/') {
                return Err(invalid(&format!("line {}", i + 1), format!("the path `{path}` does not start with `/`")));
            }
            let (path, fixed_query) = match path.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (path.to_owned(), None),
            };
            operations.push(Operation {
                method,
                path,
                fixed_query,
                operation_id: None,
                summary: Some(sum.clone()),
                security: None,
            });
            summary = None;
        }
    }
    if operations.is_empty() {
        return Err(invalid("## API", "no operation found (`### Summary` followed by `` `METHOD /path` ``)".into()));
    }
    Ok(crate::spec::ServiceSpec {
        title: title.or(name).unwrap_or_else(|| "Untitled service".into()),
        version,
        servers: Vec::new(),
        operations,
        security_schemes: Default::default(),
        security: Vec::new(),
        protocol: Protocol::Http,
        rpc_methods: Default::default(),
        item_ids: Default::default(),
    })
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn reads_a_hand_written_manifest() {
        let md = "---\nname: weather\ngateway: nkmc\nversion: 1.2\nroles: [agent]\n---\n\n# Weather API\n\n\
                  Forecasts by city.\n\n## Schema\n\n| field | type |\n|---|---|\n| city | string |\n\n\
                  ## API\n\n### Forecast for a city\n\n`GET /forecast/{city}`\n\nPrice: 0.001 USD per call\n\n\
                  ### Report an observation\n`POST /observations`\n";
        let spec = parse(md).unwrap();
        assert_eq!((spec.title.as_str(), spec.version.as_str()), ("Weather API", "1.2"));
        let ops: Vec<_> = spec.operations.iter().map(|o| (o.method, o.path.as_str(), o.summary.as_deref())).collect();
        assert_eq!(
            ops,
            vec![
                (Method::Get, "/forecast/{city}", Some("Forecast for a city")),
                (Method::Post, "/observations", Some("Report an observation")),
            ]
        );
    }

    #[test]
    fn generated_manifests_read_back() {
        let spec = crate::spec::parse_openapi(
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/openapi/openai.yaml")).unwrap(),
        )
        .unwrap();
        let md = generate("api.openai.com", &spec, &Tree::build(&spec));
        let back = parse(&md).unwrap();
        let a: Vec<_> = spec.operations.iter().map(|o| (o.method, o.path.clone())).collect();
        let b: Vec<_> = back.operations.iter().map(|o| (o.method, o.path.clone())).collect();
        assert_eq!(a, b);
        assert_eq!(back.title, spec.title);
    }

    #[test]
    fn bad_manifests_say_where() {
        assert!(parse("# no front matter").unwrap_err().to_string().contains("front matter"));
        assert!(parse("---\nname: x\n---\n# T\n## API\n### S\n`FETCH /x`\n")
            .unwrap_err()
            .to_string()
            .contains("line 4"));
        assert!(parse("---\nname: x\n---\n# T\n").unwrap_err().to_string().contains("no operation"));
    }
}
