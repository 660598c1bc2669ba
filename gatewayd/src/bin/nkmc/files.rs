//! `ls`, `cat`: the tree without a mount.

use std::io::Write;
use std::process::ExitCode;

use agentfs::client::fs_route;
use agentfs::wire::{EntryKind, Listing};
use hyper::Method;

use crate::Ctx;

pub async fn ls(ctx: &Ctx, path: &str) -> anyhow::Result<ExitCode> {
    let listing: Listing = ctx.client().get_json(&fs_route("list", path)).await?;
    for e in listing.entries {
        match e.kind {
            EntryKind::Dir => println!("{}/", e.name),
            EntryKind::File => println!("{}", e.name),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cat(ctx: &Ctx, path: &str) -> anyhow::Result<ExitCode> {
    let body = ctx.client().call_ok(Method::GET, &fs_route("read", path), None).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
