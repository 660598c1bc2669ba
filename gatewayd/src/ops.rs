//! The file-system operations on canonical virtual paths, as plain async logic:
//! what `stat`, `ls` and `cat` mean for the mount root, a service and a node.

use std::sync::Arc;

use agentfs::path::{PathError, VPath};
use agentfs::spec::Method;
use agentfs::tree::{items, Resolved, TreeError, View};
use agentfs::wire::{Entry, EntryKind, Listing};
use agentfs::{readme, skill};

use crate::registry::Service;
use crate::upstream::{Call, UpstreamError};
use crate::vault::VaultError;
use crate::Gateway;

/// Mode of a directory.
pub const DIR_MODE: u32 = 0o755;
/// Mode of a file that can only be read.
pub const READ_ONLY_MODE: u32 = 0o444;
/// Mode of a file that can be written.
pub const WRITABLE_MODE: u32 = 0o644;

/// Why a file-system operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The path is malformed.
    #[error("{0}")]
    Path(#[from] PathError),
    /// No such node.
    #[error("{0}")]
    Tree(#[from] TreeError),
    /// No such service.
    #[error("gatewayd: no service `{0}` is registered")]
    NoService(String),
    /// A directory where a file was needed.
    #[error("gatewayd: `{0}` is a directory")]
    IsADirectory(String),
    /// A file where a directory was needed.
    #[error("gatewayd: `{0}` is not a directory")]
    NotADirectory(String),
    /// The node has no operation for this.
    #[error("gatewayd: `{path}` has no {method} operation")]
    NoOperation {
        /// The path.
        path: String,
        /// The missing method.
        method: &'static str,
    },
    /// The upstream failed.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The vault failed.
    #[error("{0}")]
    Vault(#[from] VaultError),
}

/// Where a path points.
enum Target {
    Root,
    /// The generated `README.md` at the root.
    Readme,
    Service(Arc<Service>),
    /// The generated `skill.md` of a service (it shadows an API node of that name).
    Skill(Arc<Service>),
    Node(Arc<Service>, Resolved),
}

fn locate(gw: &Gateway, path: &VPath) -> Result<Target, OpError> {
    let Some(domain) = path.service() else {
        return Ok(Target::Root);
    };
    if path.names().len() == 1 && domain.as_str() == readme::FILE_NAME {
        return Ok(Target::Readme);
    }
    let service = gw.registry().get(domain.as_str()).ok_or_else(|| OpError::NoService(domain.to_string()))?;
    match path.inside_service() {
        [] => Ok(Target::Service(service)),
        [one] if one.as_str() == skill::FILE_NAME => Ok(Target::Skill(service)),
        inside => {
            let resolved = service.tree.resolve(inside)?;
            Ok(Target::Node(service, resolved))
        }
    }
}

fn generated_entry(name: &str, content_len: usize) -> Entry {
    Entry { name: name.to_owned(), kind: EntryKind::File, mode: READ_ONLY_MODE, size: Some(content_len as u64) }
}

fn file_mode(service: &Service, node: usize) -> u32 {
    let writable = service.tree.methods(node).any(|m| matches!(m, Method::Post | Method::Put | Method::Patch));
    if writable {
        WRITABLE_MODE
    } else {
        READ_ONLY_MODE
    }
}

fn dir_entry(name: String) -> Entry {
    Entry { name, kind: EntryKind::Dir, mode: DIR_MODE, size: None }
}

/// `stat`: what a path is.
pub fn stat(gw: &Gateway, path: &VPath) -> Result<Entry, OpError> {
    let name = path.names().last().map(|n| n.to_string()).unwrap_or_else(|| "/".into());
    Ok(match locate(gw, path)? {
        Target::Readme => generated_entry(&name, readme::mount_readme().len()),
        Target::Skill(s) => generated_entry(&name, skill::generate(&s.domain, &s.spec, &s.tree).len()),
        Target::Root | Target::Service(_) => dir_entry(name),
        Target::Node(_, r) if r.view == View::Dir => dir_entry(name),
        Target::Node(s, r) => Entry { name, kind: EntryKind::File, mode: file_mode(&s, r.node), size: None },
    })
}

/// `ls`: the entries of a directory. A collection's directory (`models.d/`) also lists
/// the items its GET returns, capped at [`items::MAX_ITEMS`].
pub async fn list(gw: &Gateway, path: &VPath) -> Result<Listing, OpError> {
    let (service, resolved) = match locate(gw, path)? {
        Target::Root => {
            let mut entries = vec![generated_entry(readme::FILE_NAME, readme::mount_readme().len())];
            entries.extend(gw.registry().iter().map(|s| dir_entry(s.domain.clone())));
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(Listing { entries });
        }
        Target::Readme | Target::Skill(_) => return Err(OpError::NotADirectory(path.to_string())),
        Target::Service(s) => {
            let root = Resolved { node: s.tree.root(), view: View::Dir, segments: Vec::new(), query: None };
            (s, root)
        }
        Target::Node(_, r) if r.view == View::File => return Err(OpError::NotADirectory(path.to_string())),
        Target::Node(s, r) => (s, r),
    };
    let mut tree_entries = service.tree.list(resolved.node);
    if service.tree.lists_items(resolved.node) {
        let ids = collection_ids(gw, &service, &resolved).await?;
        tree_entries.extend(service.tree.item_entries(resolved.node, &ids));
    }
    let mut entries: Vec<Entry> = tree_entries
        .into_iter()
        .map(|e| match e.view {
            View::Dir => dir_entry(e.name),
            View::File => Entry { name: e.name, kind: EntryKind::File, mode: file_mode(&service, e.node), size: None },
        })
        .collect();
    if path.inside_service().is_empty() {
        let skill_len = skill::generate(&service.domain, &service.spec, &service.tree).len();
        entries.retain(|e| e.name != skill::FILE_NAME);
        entries.push(generated_entry(skill::FILE_NAME, skill_len));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    Ok(Listing { entries })
}

/// Largest collection response read for a listing.
const MAX_LISTING_BODY: u64 = 16 * 1024 * 1024;

/// The ids in a collection's GET response.
async fn collection_ids(gw: &Gateway, service: &Service, dir: &Resolved) -> Result<Vec<String>, OpError> {
    let resp = send_get(gw, service, dir).await?;
    if resp.content_length().is_some_and(|l| l > MAX_LISTING_BODY) {
        return Ok(Vec::new());
    }
    let body = resp.bytes().await.map_err(|e| UpstreamError::Transport {
        domain: service.domain.clone(),
        message: format!("reading the collection: {}", e.without_url()),
    })?;
    Ok(match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => items::extract_ids(&v, items::MAX_ITEMS),
        Err(_) => Vec::new(),
    })
}

/// What a read returns.
#[derive(Debug)]
pub enum ReadBody {
    /// The upstream's response, to be streamed.
    Upstream(reqwest::Response),
    /// A file nkmc generates (README.md, skill.md).
    Generated(String),
}

/// `cat`: the upstream response to the file's GET, or a generated file.
pub async fn read(gw: &Gateway, path: &VPath) -> Result<ReadBody, OpError> {
    let (service, resolved) = match locate(gw, path)? {
        Target::Readme => return Ok(ReadBody::Generated(readme::mount_readme())),
        Target::Skill(s) => return Ok(ReadBody::Generated(skill::generate(&s.domain, &s.spec, &s.tree))),
        Target::Root | Target::Service(_) => return Err(OpError::IsADirectory(path.to_string())),
        Target::Node(_, r) if r.view == View::Dir => return Err(OpError::IsADirectory(path.to_string())),
        Target::Node(s, r) => (s, r),
    };
    if service.tree.operation(resolved.node, Method::Get).is_none() {
        return Err(OpError::NoOperation { path: path.to_string(), method: "GET" });
    }
    Ok(ReadBody::Upstream(send_get(gw, &service, &resolved).await?))
}

/// Sends the GET of a resolved node with the service's credential.
async fn send_get(gw: &Gateway, service: &Service, resolved: &Resolved) -> Result<reqwest::Response, OpError> {
    let op_index = service.tree.operation(resolved.node, Method::Get).ok_or_else(|| OpError::NoOperation {
        path: format!("/{}/{}", service.domain, resolved.segments.join("/")),
        method: "GET",
    })?;
    let op = &service.spec.operations[op_index];
    let credential = {
        let conn = gw.db();
        gw.vault.pool_key(&conn, &service.domain)?
    };
    let query = match (&op.fixed_query, &resolved.query) {
        (Some(a), Some(b)) => Some(format!("{a}&{b}")),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    let call = Call {
        domain: &service.domain,
        method: Method::Get,
        base_url: &service.base_url,
        segments: &resolved.segments,
        query,
        schemes: service.spec.schemes_for(op),
        credential,
    };
    Ok(gw.upstream.send(call).await?)
}
