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
