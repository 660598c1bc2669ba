//! `nkmc peers` and `nkmc rules`: whom this gateway federates with, and what it lends.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;
use serde_json::{json, Value};

use crate::Ctx;

/// `nkmc peers`.
#[derive(Debug, clap::Subcommand)]
pub enum PeersCommand {
    /// Add (or replace) a peer under the id it calls itself (its `nkmc gateway status`).
    Add {
        /// The peer's gateway id.
        #[arg(long)]
        id: String,
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The base URL of the peer's TCP API (`http://host:9090`).
        #[arg(long)]
        url: String,
        /// The shared secret (at least 32 bytes; `-` reads it from stdin). Both gateways
        /// must add each other with the same secret.
        #[arg(long)]
        secret: String,
    },
    /// Peers, their status, when last seen, and what each lends to this gateway.
    List,
    /// Who is online and what they offer, from the configured coordinator. Nothing is
    /// added: peering needs `nkmc peers add` with a secret agreed with the other owner.
    Discover {
        /// Only gateways offering this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a peer, its secret, and what it lent.
    Remove {
        /// The peer's id.
        id: String,
    },
}

/// `nkmc rules`.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Lend (or refuse) a domain registered here to peers. Deny wins over allow.
    #[command(group(clap::ArgGroup::new("verdict").required(true).args(["allow", "deny"])))]
    Set {
        /// The domain, or `*` for every domain.
        domain: String,
        /// Lend it.
        #[arg(long)]
        allow: bool,
        /// Refuse it.
        #[arg(long)]
        deny: bool,
        /// Which peers: ids separated by commas, or `*`.
        #[arg(long, default_value = "*")]
        peers: String,
        /// The operations lent: read (listing comes with it), write, delete, run.
        #[arg(long, default_value = "read")]
        ops: String,
        /// free, per-request or per-token.
        #[arg(long, default_value = "free")]
        pricing: String,
        /// The amount, for paid lending (a decimal of `[payments]`'s asset, USDC by default;
        /// per-token: per thousand tokens).
        #[arg(long)]
        amount: Option<String>,
        /// A rate limit per peer, as `N/min`.
        #[arg(long)]
        rate: Option<String>,
    },
    /// The lending rules, by domain (allow or deny, peers, operations, price, rate).
    List,
    /// Remove the rule of a domain.
    Remove {
        /// The domain (or `*`).
        domain: String,
    },
}

fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn peers(ctx: &Ctx, command: PeersCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.owner_client();
    match command {
        PeersCommand::Add { id, name, url, secret } => {
            let secret = if secret == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("cannot read the secret from stdin")?;
                s.trim_end_matches(['\n', '\r']).to_owned()
            } else {
                secret
            };
            let body = json!({"id": id, "name": name, "url": url, "secret": secret});
            let peer: Value = client.send_json(Method::POST, "/v1/peers", &body).await?;
            println!("added peer {} ({}) at {}", peer["id"].as_str().unwrap_or(""), name, url);
        }
        PeersCommand::List => {
            let list: Vec<Value> = client.get_json("/v1/peers").await?;
            if list.is_empty() {
                println!("no peers (add one with `nkmc peers add`)");
            }
            for p in list {
                let domains: Vec<&str> =
                    p["domains"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let seen = p["last_seen_ms"].as_i64().map(crate::audit::utc).unwrap_or_else(|| "never".to_owned());
                println!(
                    "{}\t{}\t{}\t{}\tlast seen {}\tlends: {}",
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["url"].as_str().unwrap_or(""),
                    p["status"].as_str().unwrap_or(""),
                    seen,
                    if domains.is_empty() { "-".to_owned() } else { domains.join(",") }
                );
            }
        }
        PeersCommand::Discover { domain } => {
            let route = match &domain {
                Some(d) => format!("/v1/peers/discover?domain={}", segment(d)),
                None => "/v1/peers/discover".to_owned(),
            };
            let list: Vec<Value> = client.get_json(&route).await?;
            if list.is_empty() {
                println!("no gateway online{}", domain.map(|d| format!(" offers {d}")).unwrap_or_default());
            }
            for g in list {
                let domains: Vec<&str> =
                    g["domains"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{}\t{}\t{}\toffers: {}\tseen {}s ago",
                    g["id"].as_str().unwrap_or(""),
                    g["name"].as_str().unwrap_or(""),
                    g["url"].as_str().unwrap_or(""),
                    if domains.is_empty() { "-".to_owned() } else { domains.join(",") },
                    g["seen_secs_ago"].as_u64().unwrap_or(0)
                );
            }
        }
        PeersCommand::Remove { id } => {
            client.call_ok(Method::DELETE, &format!("/v1/peers/{}", segment(&id)), None).await?;
            println!("removed peer {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rate_per_min(rate: &str) -> anyhow::Result<u32> {
    let n = rate.strip_suffix("/min").unwrap_or(rate);
    n.trim().parse::<u32>().with_context(|| format!("--rate `{rate}` is not `N/min`"))
}

pub async fn rules(ctx: &Ctx, command: RulesCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.owner_client();
    match command {
        RulesCommand::Set { domain, allow, deny: _, peers, ops, pricing, amount, rate } => {
            let peers: Vec<&str> = peers.split(',').map(str::trim).collect();
            let ops: Vec<&str> = if allow { ops.split(',').map(str::trim).collect() } else { Vec::new() };
            let rate = rate.as_deref().map(rate_per_min).transpose()?;
            let mut rule = json!({"domain": domain, "allow": allow, "peers": peers, "ops": ops, "pricing": pricing});
            if let Some(a) = amount {
                rule["amount"] = json!(a);
            }
            if let Some(r) = rate {
                rule["rate_per_min"] = json!(r);
            }
            let _: Value = client.send_json(Method::PUT, &format!("/v1/rules/{}", segment(&domain)), &rule).await?;
            println!("{} {domain} to {}", if allow { "lending" } else { "refusing" }, peers.join(","));
        }
        RulesCommand::List => {
            let list: Vec<Value> = client.get_json("/v1/rules").await?;
            if list.is_empty() {
                println!("no rules: nothing is lent (add one with `nkmc rules set DOMAIN --allow`)");
            }
            for r in list {
                let join = |v: &Value| {
                    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
                };
                println!(
                    "{}\t{}\tpeers {}\tops {}\t{}{}{}",
                    r["domain"].as_str().unwrap_or(""),
                    if r["allow"].as_bool() == Some(true) { "allow" } else { "deny" },
                    join(&r["peers"]),
                    join(&r["ops"]),
                    r["pricing"].as_str().unwrap_or(""),
                    r["amount"].as_str().map(|a| format!(" {a}")).unwrap_or_default(),
                    r["rate_per_min"].as_u64().map(|n| format!("\t{n}/min")).unwrap_or_default(),
                );
            }
        }
        RulesCommand::Remove { domain } => {
            client.call_ok(Method::DELETE, &format!("/v1/rules/{}", segment(&domain)), None).await?;
            println!("removed the rule for {domain}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
