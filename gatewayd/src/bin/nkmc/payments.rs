//! `nkmc wallet`, `nkmc budget` and `nkmc ledger`: paying peers for what they lend (x402).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use hyper::Method;
use serde_json::{json, Value};

use crate::Ctx;

/// `nkmc wallet`.
#[derive(Debug, clap::Subcommand)]
pub enum WalletCommand {
    /// Create a new wallet key (kept in the vault) and print its address, to fund.
    Create,
    /// Import a wallet key: 64 hex digits read from stdin (never from the command line).
    Import,
    /// The wallet's address, network and asset.
    Show,
    /// Forget the wallet key (peers asking for a price are then not paid).
    Remove,
}

/// `nkmc budget`.
#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// The most this gateway pays peers per UTC day, in the asset's unit (`0.50`); `0` pays
    /// nothing.
    Set {
        /// The daily amount.
        #[arg(long)]
        daily: String,
    },
    /// The budget and what is spent of it today.
    Show,
}

fn print_wallet(w: &Value) {
    println!(
        "wallet {} on {} (asset {})",
        w["address"].as_str().unwrap_or(""),
        w["network"].as_str().unwrap_or(""),
        w["asset"].as_str().unwrap_or("")
    );
}

pub async fn wallet(ctx: &Ctx, command: WalletCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.owner_client();
    match command {
        WalletCommand::Create => {
            let w: Value = client.send_json(Method::POST, "/v1/wallet", &json!({"create": true})).await?;
            print_wallet(&w);
        }
        WalletCommand::Import => {
            let mut key = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_to_string(&mut key).context("cannot read the wallet key from stdin")?;
            let body = json!({"key": key.trim()});
            let w: Value = client.send_json(Method::POST, "/v1/wallet", &body).await?;
            print_wallet(&w);
        }
        WalletCommand::Show => {
            let w: Value = client.get_json("/v1/wallet").await?;
            print_wallet(&w);
        }
        WalletCommand::Remove => {
            client.call_ok(Method::DELETE, "/v1/wallet", None).await?;
            println!("the wallet key is removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_budget(b: &Value) {
    let asset = b["asset"].as_str().unwrap_or("");
    match b["daily"].as_str() {
        Some(d) => println!(
            "daily budget {d} {asset}; spent today {} {asset} (UTC day, {})",
            b["spent_today"].as_str().unwrap_or("0"),
            b["network"].as_str().unwrap_or("")
        ),
        None => println!(
            "no budget: peers asking for a price are not paid (set one with `nkmc budget set --daily X`); spent today {} {asset}",
            b["spent_today"].as_str().unwrap_or("0")
        ),
    }
}

pub async fn budget(ctx: &Ctx, command: BudgetCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.owner_client();
    let b: Value = match command {
        BudgetCommand::Set { daily } => client.send_json(Method::PUT, "/v1/budget", &json!({"daily": daily})).await?,
        BudgetCommand::Show => client.get_json("/v1/budget").await?,
    };
    print_budget(&b);
    Ok(ExitCode::SUCCESS)
}

pub async fn ledger(ctx: &Ctx, json_out: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<Value> = ctx.owner_client().get_json("/v1/ledger").await?;
    if json_out {
        for e in &list {
            println!("{e}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no charges yet");
    }
    for e in list {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{} {}\t{}\ttx {}",
            e["at_ms"].as_i64().map(crate::audit::utc).unwrap_or_default(),
            s("direction"),
            s("state"),
            s("peer"),
            s("op"),
            s("path"),
            s("amount_display"),
            s("network"),
            s("transaction"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
