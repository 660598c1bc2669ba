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

pub async fn write(ctx: &Ctx, path: &str, data: Option<String>) -> anyhow::Result<ExitCode> {
    let body = match data.as_deref() {
        Some(d) if d != "-" => d.as_bytes().to_vec(),
        _ => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
            b
        }
    };
    let resp =
        ctx.client().call_ok(Method::POST, &fs_route("write", path), Some((body.into(), "application/json"))).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&resp)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(ctx: &Ctx, path: &str) -> anyhow::Result<ExitCode> {
    ctx.client().call_ok(Method::POST, &fs_route("delete", path), None).await?;
    Ok(ExitCode::SUCCESS)
}
