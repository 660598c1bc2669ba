//! `nkmc auth` and `nkmc token ...`: agent tokens. Minting and revoking ask gatewayd;
//! attenuating and inspecting work offline from the token alone.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use agentfs::client::{ClientError, GatewayClient};
use agentfs::wire::{
    InspectTokenRequest, MintTokenRequest, RevokeResponse, RevokeTokenRequest, TokenInfo, TokenResponse,
};
use anyhow::Context;
use clap::Subcommand;
use gatewayd::auth::{self, token, Allow};
use hyper::Method;

use crate::Ctx;

/// `nkmc auth`.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// The agent's name (default: your user name, or `agent`).
    #[arg(long)]
    agent: Option<String>,
}

/// `nkmc token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token for an agent (asks gatewayd) and print it to stdout.
    Mint {
        /// The agent's name: letters, digits and `. _ @ -`, up to 64.
        #[arg(long)]
        agent: String,
    },
    /// Narrow a token offline (no gatewayd needed) and print the result. The new token can
    /// never do more than the one it came from.
    #[command(after_help = "Examples:\n  \
        nkmc token attenuate --allow api.openai.com:read --ttl 1h\n  \
        nkmc token attenuate --token - --allow 'localhost:8080:read,write/pets' < parent.token\n\n\
        OPS: read (implies list), list, write, delete, run; all when absent. A PREFIX covers the\n\
        name, NAME.d/ and everything below it, NAME?query and NAME.json. DOMAIN * is every service.")]
    Attenuate {
        /// The token to narrow; `-` reads it from stdin. Default: $NKMC_TOKEN, else the token
        /// saved by `nkmc auth`.
        #[arg(long)]
        token: Option<String>,
        /// What stays allowed, as DOMAIN[:OPS][/PREFIX] (repeat for several: any of them).
        #[arg(long = "allow", value_name = "DOMAIN[:OPS][/PREFIX]", value_parser = parse_allow)]
        allows: Vec<Allow>,
        /// How long the new token lasts from now: 90s, 15m, 1h, 2d, 1h30m.
        #[arg(long, value_parser = token::parse_ttl)]
        ttl: Option<Duration>,
        /// Seal the result: nothing can be appended to it any more.
        #[arg(long)]
        seal: bool,
    },
    /// Print what a token allows, block by block; says whether gatewayd verifies it when
    /// gatewayd is running.
    Inspect {
        /// The token; `-` reads it from stdin. Default: $NKMC_TOKEN, else the saved token.
        #[arg(long)]
        token: Option<String>,
        /// Print the description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (asks gatewayd): it and every token attenuated from it stop working.
    Revoke {
        /// The token; `-` reads it from stdin. Default: $NKMC_TOKEN, else the saved token.
        #[arg(long)]
        token: Option<String>,
        /// Also revoke the tokens it was attenuated from, up to the minted one (and so
        /// everything derived from them).
        #[arg(long)]
        lineage: bool,
    },
}

fn parse_allow(s: &str) -> Result<Allow, String> {
    s.parse().map_err(|e: auth::AuthError| e.to_string())
}

/// The token this CLI acts with: `$NKMC_TOKEN` if set and not empty, else the one `nkmc auth`
/// saved in the data dir.
pub fn current_token(ctx: &Ctx) -> Option<String> {
    if let Some(t) = std::env::var("NKMC_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
        return Some(t);
    }
    std::fs::read_to_string(auth::token_file(&ctx.paths.data_dir))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// `--token T`, `--token -` (stdin) or the current token.
fn resolve_token(ctx: &Ctx, given: Option<String>) -> anyhow::Result<String> {
    match given.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the token from stdin")?;
            let s = s.trim().to_owned();
            anyhow::ensure!(!s.is_empty(), "no token on stdin");
            Ok(s)
        }
        Some(t) => Ok(t.trim().to_owned()),
        None => current_token(ctx).ok_or_else(|| {
            anyhow::anyhow!(
                "no token: give --token (or --token - for stdin), set NKMC_TOKEN, or run `nkmc auth` to save one"
            )
        }),
    }
}

fn default_agent() -> String {
    let from_env = ["USER", "LOGNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let name = from_env.or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name));
    name.filter(|n| token::validate_agent(n).is_ok()).unwrap_or_else(|| "agent".to_owned())
}

async fn mint_via_gateway(ctx: &Ctx, agent: &str) -> anyhow::Result<String> {
    token::validate_agent(agent)?;
    let req = MintTokenRequest { agent: agent.to_owned() };
    let answer: TokenResponse = ctx.client().send_json(Method::POST, "/v1/tokens", &req).await?;
    Ok(answer.token)
}

/// `nkmc auth [--agent NAME]`: mint and save to `$NKMC_DATA_DIR/agent.token` (0600).
pub async fn auth(ctx: &Ctx, args: AuthArgs) -> anyhow::Result<ExitCode> {
    let agent = args.agent.unwrap_or_else(default_agent);
    let token = mint_via_gateway(ctx, &agent).await?;
    let path = auth::token_file(&ctx.paths.data_dir);
    auth::keys::write_private_file(&path, token.as_bytes())
        .with_context(|| format!("cannot save the token to {}", path.display()))?;
    println!("saved a token for agent {agent} to {}", path.display());
    if std::env::var_os("NKMC_TOKEN").is_some_and(|v| !v.is_empty()) {
        eprintln!("note: NKMC_TOKEN is set and takes precedence over the saved token");
    }
    Ok(ExitCode::SUCCESS)
}

/// `nkmc token ...`.
pub async fn run(ctx: &Ctx, command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Mint { agent } => {
            println!("{}", mint_via_gateway(ctx, &agent).await?);
        }
        TokenCommand::Attenuate { token: given, allows, ttl, seal } => {
            let parent = resolve_token(ctx, given)?;
            let mut narrowed = token::attenuate(&parent, &allows, ttl, SystemTime::now())?;
            if seal {
                narrowed = token::seal(&narrowed)?;
            }
            println!("{narrowed}");
        }
        TokenCommand::Inspect { token: given, json } => {
            let t = resolve_token(ctx, given)?;
            let mut info = token::inspect(&t, None)?;
            let gateway = gateway_view(ctx, &t).await;
            if let Ok(verified) = &gateway {
                info.verified = verified.verified;
                info.revoked = verified.revoked;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info, &gateway.map(|_| ()), SystemTime::now());
            }
        }
        TokenCommand::Revoke { token: given, lineage } => {
            let t = resolve_token(ctx, given)?;
            let req = RevokeTokenRequest { token: t, lineage };
            let answer: RevokeResponse = ctx.client().send_json(Method::POST, "/v1/tokens/revoke", &req).await?;
            match answer.revoked {
                0 => println!("already revoked"),
                n => println!("revoked ({n} revocation id{} recorded)", if n == 1 { "" } else { "s" }),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What gatewayd says of the token, if it is running.
async fn gateway_view(ctx: &Ctx, t: &str) -> Result<TokenInfo, String> {
    let client = GatewayClient::new(&ctx.paths.socket, Duration::from_secs(5));
    let req = InspectTokenRequest { token: t.to_owned() };
    match client.send_json::<_, TokenInfo>(Method::POST, "/v1/tokens/inspect", &req).await {
        Ok(info) => Ok(info),
        Err(ClientError::Connect { .. }) => Err("gatewayd is not running, so signatures were not checked".to_owned()),
        Err(e) => Err(format!("gatewayd could not check it: {e}")),
    }
}

fn print_info(info: &TokenInfo, gateway: &Result<(), String>, now: SystemTime) {
    let now = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    println!("agent:    {}", info.agent.as_deref().unwrap_or("(none: not a token minted by nkmc)"));
    if let Some(at) = info.issued_at {
        println!("issued:   {}", auth::rfc3339(at));
    }
    match info.expires_at {
        Some(at) if at < now => println!("expires:  {} (expired)", auth::rfc3339(at)),
        Some(at) => println!("expires:  {} (in {})", auth::rfc3339(at), human(at - now)),
        None => println!("expires:  never"),
    }
    match gateway {
        Ok(()) if info.verified => println!("verified: yes, issued by this gateway"),
        Ok(()) => println!("verified: NO: not issued by this gateway (or altered)"),
        Err(why) => println!("verified: unknown: {why}"),
    }
    if let Some(revoked) = info.revoked {
        println!("revoked:  {}", if revoked { "YES" } else { "no" });
    }
    println!("rights (every block must allow a request):");
    for b in &info.blocks {
        let kind = if b.index == 0 { "authority" } else { "attenuation" };
        let id: String = b.revocation_id.chars().take(16).collect();
        println!("  block {} ({kind}, revocation id {id}…):", b.index);
        for r in &b.rights {
            println!("    {r}");
        }
        if b.custom {
            for line in b.source.lines() {
                println!("      | {line}");
            }
        }
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d", secs / 86_400),
    }
}
