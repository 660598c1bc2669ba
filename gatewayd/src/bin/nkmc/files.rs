//! `ls`, `cat`, `write`, `rm`, `grep`: the tree without a mount.

use std::io::Write;
use std::process::ExitCode;

use agentfs::client::fs_route;
use agentfs::wire::{EntryKind, GrepRequest, GrepResult, Listing};
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

/// `nkmc grep`.
#[derive(Debug, clap::Args)]
pub struct GrepArgs {
    /// Ignore case (`grep -i`).
    #[arg(short = 'i', long)]
    ignore_case: bool,
    /// The pattern is a literal string (`grep -F`).
    #[arg(short = 'F', long)]
    fixed_strings: bool,
    /// Print only the names of files with a match (`grep -l`).
    #[arg(short = 'l', long)]
    files_with_matches: bool,
    /// Print line numbers (`grep -n`).
    #[arg(short = 'n', long)]
    line_number: bool,
    /// Read at most this many files (default 1000, at most 10000).
    #[arg(long)]
    max_files: Option<u32>,
    /// A regular expression (Rust `regex` syntax).
    pattern: String,
    /// Where to search: a directory (recursively) or a file.
    #[arg(default_value = "/")]
    path: String,
}

pub async fn grep(ctx: &Ctx, args: GrepArgs) -> anyhow::Result<ExitCode> {
    // A search reads many files: it may take much longer than one upstream call.
    let client = agentfs::client::GatewayClient::new(&ctx.paths.socket, std::time::Duration::from_secs(600))
        .with_token(crate::token::current_token(ctx));
    let req = GrepRequest {
        path: args.path.clone(),
        pattern: args.pattern.clone(),
        fixed: args.fixed_strings,
        ignore_case: args.ignore_case,
        max_files: args.max_files,
    };
    let found: GrepResult = match client.send_json(Method::POST, "/v1/fs/grep", &req).await {
        Ok(found) => found,
        Err(e) => {
            eprintln!("nkmc grep: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut out = std::io::stdout().lock();
    let mut last: Option<&str> = None;
    for m in &found.matches {
        if args.files_with_matches {
            if last != Some(m.path.as_str()) {
                writeln!(out, "{}", m.path)?;
            }
            last = Some(m.path.as_str());
        } else if args.line_number {
            writeln!(out, "{}:{}:{}", m.path, m.line, m.text)?;
        } else {
            writeln!(out, "{}:{}", m.path, m.text)?;
        }
    }
    out.flush()?;
    if found.truncated {
        eprintln!(
            "nkmc grep: stopped at a limit after {} files (raise --max-files, or search a narrower path)",
            found.files_searched
        );
    }
    if found.files_failed > 0 {
        eprintln!("nkmc grep: {} files or directories could not be read", found.files_failed);
    }
    Ok(if found.matches.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
