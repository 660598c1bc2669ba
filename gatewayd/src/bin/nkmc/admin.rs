//! `register`, `services`, `keys`: owner commands.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentfs::wire::{DocumentFormat, KeyInfo, KeyList, RegisterRequest, ServiceInfo, ServiceList, SetKeyRequest};
use anyhow::Context;
use hyper::Method;

use crate::Ctx;

/// Where `nkmc register` takes the service from.
pub enum Source {
    /// `--spec FILE`: an OpenAPI or OpenRPC document.
    Spec(PathBuf),
    /// `--skill FILE`: a skill.md manifest.
    Skill(PathBuf),
    /// `--url URL`: discovered.
    Url(String),
}

pub async fn register(
    ctx: &Ctx,
    source: Source,
    domain: Option<String>,
    base_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let (document, url, format) = match source {
        Source::Spec(p) => (Some(read(&p)?), None, None),
        Source::Skill(p) => (Some(read(&p)?), None, Some(DocumentFormat::Skill)),
        Source::Url(u) => (None, Some(u), None),
    };
    let req = RegisterRequest { document, url, format, domain, base_url };
    let info: ServiceInfo = ctx.client().send_json(Method::POST, "/v1/services", &req).await?;
    println!("registered {} → {} ({} operations, \"{}\")", info.domain, info.base_url, info.operations, info.title);
    Ok(ExitCode::SUCCESS)
}

pub async fn services_list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let list: ServiceList = ctx.client().get_json("/v1/services").await?;
    if list.services.is_empty() {
        println!("no services registered (add one with `nkmc register --spec FILE`)");
    }
    for s in list.services {
        println!("{}\t{}\t{} operations\t{}", s.domain, s.base_url, s.operations, s.title);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn services_remove(ctx: &Ctx, domain: &str) -> anyhow::Result<ExitCode> {
    ctx.client().call_ok(Method::DELETE, &format!("/v1/services/{}", segment(domain)), None).await?;
    println!("removed {domain}");
    Ok(ExitCode::SUCCESS)
}

pub async fn keys_set(
    ctx: &Ctx,
    domain: &str,
    token: &str,
    placement: Option<agentfs::spec::SecurityScheme>,
    byok: bool,
) -> anyhow::Result<ExitCode> {
    let client = ctx.keys_client(byok)?;
    let secret = if token == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the secret from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        token.to_owned()
    };
    if secret.is_empty() {
        anyhow::bail!("the secret is empty");
    }
    let req = SetKeyRequest { secret, placement };
    let info: KeyInfo = client.send_json(Method::PUT, &format!("/v1/keys/{}", segment(domain)), &req).await?;
    match &info.agent {
        Some(agent) => println!("stored {agent}'s own key for {} (key id {})", info.domain, info.key_id),
        None => println!("stored the key for {} (key id {})", info.domain, info.key_id),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keys_list(ctx: &Ctx, byok: bool) -> anyhow::Result<ExitCode> {
    let list: KeyList = ctx.keys_client(byok)?.get_json("/v1/keys").await?;
    if list.keys.is_empty() {
        println!("no keys stored (add one with `nkmc keys set DOMAIN --token -`)");
    }
    for k in list.keys {
        match k.agent {
            Some(agent) => println!("{}\t{}\t{}\t{agent}", k.domain, k.scope, k.key_id),
            None => println!("{}\t{}\t{}", k.domain, k.scope, k.key_id),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keys_remove(ctx: &Ctx, domain: &str, byok: bool) -> anyhow::Result<ExitCode> {
    ctx.keys_client(byok)?.call_ok(Method::DELETE, &format!("/v1/keys/{}", segment(domain)), None).await?;
    if byok {
        println!("removed your own key for {domain}");
    } else {
        println!("removed the keys of {domain}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn vault_rotate(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let body = ctx.owner_client().call_ok(Method::POST, "/v1/vault/rotate", None).await?;
    let r: agentfs::wire::VaultRotation =
        serde_json::from_slice(&body).context("gatewayd answered the rotation with something else")?;
    println!(
        "rotated the master key {} -> {}: {} keys re-encrypted ({})",
        r.old_master_id, r.new_master_id, r.keys, r.cipher
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn vault_check(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let c: agentfs::wire::VaultCheck = ctx.owner_client().get_json("/v1/vault/check").await?;
    println!("vault ok: {} keys decrypt (master key {}, from {})", c.keys, c.master_id, c.source);
    Ok(ExitCode::SUCCESS)
}

/// A domain as one URL path segment.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
