//! The virtual tree of a service, built once from its [`ServiceSpec`].
//!
//! DESIGN's rules, per node of the path templates (after the server's base path):
//! - only children → a directory;
//! - only operations → a file (`cat` is its GET, a write its POST/PUT/PATCH, `rm` its DELETE);
//! - operations and children → a file `name` plus a sibling directory `name.d/`.
//!
//! A templated segment (`{model}`, or `{id}.json`) accepts any name on lookup. A query
//! string in the last name (`search?q=fuse`) is passed through to the request. Every file
//! also answers to a hidden alias with `.json` appended (`models.json`), never listed.

pub mod items;
mod pattern;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::path::Name;
use crate::spec::{Method, ServiceSpec};
use pattern::Pattern;

/// Index of a node in its [`Tree`].
pub type NodeId = usize;

/// The suffix that names a node's children directory when the node is also a file.
pub const DIR_SUFFIX: &str = ".d";

/// The suffix of the hidden alias of every file: `models.json` reads as `models`. Not listed.
pub const JSON_ALIAS: &str = ".json";

/// Whether a name shows a node as a file or as a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The node's own operations.
    File,
    /// The node's children.
    Dir,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// No node has this name.
    #[error("tree: no such file or directory: `{0}`")]
    NotFound(String),
    /// A file was used as a directory.
    #[error("tree: `{0}` is a file, not a directory")]
    NotADirectory(String),
    /// A query string on a name that is not the last.
    #[error("tree: a query string is only allowed in the last name (`{0}`)")]
    QueryNotLast(String),
}

#[derive(Debug, Default)]
struct Node {
    literals: BTreeMap<String, NodeId>,
    templates: Vec<(Pattern, NodeId)>,
    ops: BTreeMap<Method, usize>,
}

impl Node {
    fn has_children(&self) -> bool {
        !self.literals.is_empty() || !self.templates.is_empty()
    }
    fn has_ops(&self) -> bool {
        !self.ops.is_empty()
    }
    /// How the node shows under its plain name.
    fn plain_view(&self) -> View {
        if self.has_ops() {
            View::File
        } else {
            View::Dir
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeEntry {
    /// The name shown.
    pub name: String,
    /// File or directory.
    pub view: View,
    /// The node it shows.
    pub node: NodeId,
}

/// A name resolved to a node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The node.
    pub node: NodeId,
    /// Shown as a file or as a directory.
    pub view: View,
    /// The raw upstream path segments (ids unescaped, `.d` suffixes removed).
    pub segments: Vec<String>,
    /// The query string carried by the last name, if any.
    pub query: Option<String>,
}

/// The tree of one service.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds the tree of a spec. Cheap: one pass over the operations.
    pub fn build(spec: &ServiceSpec) -> Self {
        let mut tree = Tree { nodes: vec![Node::default()] };
        for (index, op) in spec.operations.iter().enumerate() {
            let mut cur = 0;
            for seg in op.path.split('/').filter(|s| !s.is_empty()) {
                cur = tree.child_for_template(cur, seg);
            }
            tree.nodes[cur].ops.entry(op.method).or_insert(index);
        }
        tree
    }

    fn child_for_template(&mut self, parent: NodeId, seg: &str) -> NodeId {
        let next = self.nodes.len();
        match Pattern::parse(seg) {
            None => {
                if let Some(&id) = self.nodes[parent].literals.get(seg) {
                    return id;
                }
                self.nodes.push(Node::default());
                self.nodes[parent].literals.insert(seg.to_owned(), next);
            }
            Some(p) => {
                if let Some((_, id)) = self.nodes[parent].templates.iter().find(|(q, _)| q.same_shape(&p)) {
                    return *id;
                }
                self.nodes.push(Node::default());
                self.nodes[parent].templates.push((p, next));
            }
        }
        next
    }

    /// The root of the service.
    pub fn root(&self) -> NodeId {
        0
    }

    /// The operation index (into the spec's operations) for `method` on `node`.
    pub fn operation(&self, node: NodeId, method: Method) -> Option<usize> {
        self.nodes.get(node).and_then(|n| n.ops.get(&method).copied())
    }

    /// The methods `node` has.
    pub fn methods(&self, node: NodeId) -> impl Iterator<Item = Method> + '_ {
        self.nodes.get(node).into_iter().flat_map(|n| n.ops.keys().copied())
    }

    /// Resolves the names inside a service to a node.
    pub fn resolve(&self, names: &[Name]) -> Result<Resolved, TreeError> {
        let mut resolved = Resolved { node: self.root(), view: View::Dir, segments: Vec::new(), query: None };
        for (i, name) in names.iter().enumerate() {
            if resolved.view == View::File {
                return Err(TreeError::NotADirectory(names[i - 1].to_string()));
            }
            let mut text = name.as_str();
            if let Some((base, query)) = text.split_once('?') {
                if i + 1 != names.len() {
                    return Err(TreeError::QueryNotLast(text.to_owned()));
                }
                resolved.query = Some(query.to_owned());
                text = base;
            }
            let (node, view, shown) =
                self.lookup(resolved.node, text).ok_or_else(|| TreeError::NotFound(name.to_string()))?;
            resolved.node = node;
            resolved.view = view;
            resolved.segments.push(Name::parse(shown).map(|n| n.raw()).unwrap_or_else(|_| shown.to_owned()));
        }
        if resolved.query.is_some() && resolved.view == View::Dir {
            return Err(TreeError::NotFound(names.last().map(ToString::to_string).unwrap_or_default()));
        }
        Ok(resolved)
    }

    /// One name in a directory: the node, its view, and the name without `.d`.
    fn lookup<'a>(&self, dir: NodeId, name: &'a str) -> Option<(NodeId, View, &'a str)> {
        let d = &self.nodes[dir];
        if let Some(&id) = d.literals.get(name) {
            return Some((id, self.nodes[id].plain_view(), name));
        }
        if let Some(base) = name.strip_suffix(DIR_SUFFIX) {
            if let Some(&id) = d.literals.get(base) {
                let n = &self.nodes[id];
                if n.has_ops() && n.has_children() {
                    return Some((id, View::Dir, base));
                }
            }
            for (p, id) in &d.templates {
                let n = &self.nodes[*id];
                if n.has_ops() && n.has_children() && p.matches(base) {
                    return Some((*id, View::Dir, base));
                }
            }
        }
        for (p, id) in &d.templates {
            if p.matches(name) {
                return Some((*id, self.nodes[*id].plain_view(), name));
            }
        }
        // Hidden alias: `x.json` is the file `x` (for tools that pick a parser by extension).
        if let Some(base) = name.strip_suffix(JSON_ALIAS) {
            if let Some(found @ (_, View::File, _)) = self.lookup(dir, base) {
                return Some(found);
            }
        }
        None
    }

    /// The file that performs an operation on `template` (e.g. `/models/{model}` →
    /// `models.d/{model}`), by DESIGN's `name` + `name.d/` rule.
    pub fn file_path(&self, template: &str) -> Option<String> {
        let segs: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
        let mut cur = self.root();
        let mut out = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            let d = &self.nodes[cur];
            cur = match pattern::Pattern::parse(seg) {
                None => *d.literals.get(*seg)?,
                Some(p) => d.templates.iter().find(|(q, _)| q.same_shape(&p)).map(|(_, id)| *id)?,
            };
            let n = &self.nodes[cur];
            let last = i + 1 == segs.len();
            if !last && n.has_ops() && n.has_children() {
                out.push(format!("{seg}{DIR_SUFFIX}"));
            } else {
                out.push((*seg).to_owned());
            }
        }
        (!out.is_empty()).then(|| out.join("/"))
    }

    /// Whether a listing of `dir` can show items: the node has a GET (the collection) and a
    /// templated child (the items). Nothing is fetched for a listing the spec cannot back.
    pub fn lists_items(&self, dir: NodeId) -> bool {
        self.nodes.get(dir).is_some_and(|d| d.ops.contains_key(&Method::Get) && !d.templates.is_empty())
    }

    /// Entries for items of `dir`'s templated children, named from raw ids (escaped).
    /// Literal names win over items of the same name; invalid names are skipped.
    pub fn item_entries(&self, dir: NodeId, ids: &[String]) -> Vec<TreeEntry> {
        let mut out = Vec::new();
        let Some(d) = self.nodes.get(dir) else { return out };
        let literal = |n: &str| {
            d.literals.contains_key(n) || n.strip_suffix(DIR_SUFFIX).is_some_and(|b| d.literals.contains_key(b))
        };
        for (pattern, id) in &d.templates {
            let node = &self.nodes[*id];
            for raw in ids {
                let Ok(name) = Name::from_raw(&pattern.render(raw)) else { continue };
                let name = name.as_str().to_owned();
                if literal(&name) {
                    continue;
                }
                if node.has_ops() {
                    out.push(TreeEntry { name: name.clone(), view: View::File, node: *id });
                }
                if node.has_children() {
                    let shown = if node.has_ops() { format!("{name}{DIR_SUFFIX}") } else { name };
                    if Name::parse(&shown).is_ok() {
                        out.push(TreeEntry { name: shown, view: View::Dir, node: *id });
                    }
                }
            }
        }
        out
    }

    /// The fixed entries of a directory view: its literal children by DESIGN's rules.
    /// Items of templated children come from the collection's response, not from here.
    pub fn list(&self, dir: NodeId) -> Vec<TreeEntry> {
        let mut out = Vec::new();
        let Some(d) = self.nodes.get(dir) else {
            return out;
        };
        for (name, &id) in &d.literals {
            let n = &self.nodes[id];
            if n.has_ops() {
                out.push(TreeEntry { name: name.clone(), view: View::File, node: id });
            }
            if n.has_children() {
                let shown = if n.has_ops() { format!("{name}{DIR_SUFFIX}") } else { name.clone() };
                out.push(TreeEntry { name: shown, view: View::Dir, node: id });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests;
