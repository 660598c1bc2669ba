//! The file-system operations on canonical virtual paths, as plain async logic:
//! what `stat`, `ls` and `cat` mean for the mount root, a service and a node.

use std::sync::Arc;

use agentfs::path::{PathError, VPath};
use agentfs::spec::Method;
use agentfs::tree::{Resolved, TreeError, View};
use agentfs::wire::{Entry, EntryKind, Listing};

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
    Service(Arc<Service>),
    Node(Arc<Service>, Resolved),
}

fn locate(gw: &Gateway, path: &VPath) -> Result<Target, OpError> {
    let Some(domain) = path.service() else {
        return Ok(Target::Root);
    };
    let service = gw.registry().get(domain.as_str()).ok_or_else(|| OpError::NoService(domain.to_string()))?;
    if path.inside_service().is_empty() {
        return Ok(Target::Service(service));
    }
    let resolved = service.tree.resolve(path.inside_service())?;
    Ok(Target::Node(service, resolved))
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
        Target::Root | Target::Service(_) => dir_entry(name),
        Target::Node(_, r) if r.view == View::Dir => dir_entry(name),
        Target::Node(s, r) => Entry { name, kind: EntryKind::File, mode: file_mode(&s, r.node), size: None },
    })
}

/// `ls`: the entries of a directory.
pub fn list(gw: &Gateway, path: &VPath) -> Result<Listing, OpError> {
    let (service, node) = match locate(gw, path)? {
        Target::Root => {
            let entries = gw.registry().iter().map(|s| dir_entry(s.domain.clone())).collect();
            return Ok(Listing { entries });
        }
        Target::Service(s) => {
            let root = s.tree.root();
            (s, root)
        }
        Target::Node(_, r) if r.view == View::File => return Err(OpError::NotADirectory(path.to_string())),
        Target::Node(s, r) => (s, r.node),
    };
    let entries = service
        .tree
        .list(node)
        .into_iter()
        .map(|e| match e.view {
            View::Dir => dir_entry(e.name),
            View::File => Entry { name: e.name, kind: EntryKind::File, mode: file_mode(&service, e.node), size: None },
        })
        .collect();
    Ok(Listing { entries })
}

/// `cat`: the upstream response to the file's GET, as a stream.
pub async fn read(gw: &Gateway, path: &VPath) -> Result<reqwest::Response, OpError> {
    let (service, resolved) = match locate(gw, path)? {
        Target::Root | Target::Service(_) => return Err(OpError::IsADirectory(path.to_string())),
        Target::Node(_, r) if r.view == View::Dir => return Err(OpError::IsADirectory(path.to_string())),
        Target::Node(s, r) => (s, r),
    };
    let op_index = service
        .tree
        .operation(resolved.node, Method::Get)
        .ok_or_else(|| OpError::NoOperation { path: path.to_string(), method: "GET" })?;
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
