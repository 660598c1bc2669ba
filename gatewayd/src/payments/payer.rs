//! The borrower's side of a paid call: the wallet (a vault row), the daily budget (a
//! setting), and paying a lender's 402 — only in this gateway's own asset and network, never
//! more than the lender advertised, never past the budget — then recording the charge.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::amount;
use super::evm::{self, Address, Transfer, Wallet};
use super::ledger::{self, Direction, Entry};
use super::x402::{Authorization, ExactPayload, Payment, PaymentRequired, Requirements, SCHEME_EXACT, VERSION};
use super::{PaymentError, Payments};
use crate::vault::{KeyOwner, Secret, WALLET_DOMAIN};
use crate::Gateway;

const BUDGET_SETTING: &str = "payments.daily_budget";

/// The daily budget and what is spent of it, as `GET /v1/budget` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Per UTC day, in the asset's unit; absent: none set (nothing is paid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<String>,
    /// Spent since 00:00 UTC, in the asset's unit.
    #[serde(default)]
    pub spent_today: String,
    /// The asset's name (`USDC`).
    #[serde(default)]
    pub asset: String,
    /// The network.
    #[serde(default)]
    pub network: String,
}

/// `PUT /v1/budget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Per UTC day, in the asset's unit (`0.50`); `0` pays nothing.
    pub daily: String,
}

/// The daily budget in atomic units, if one is set.
pub fn daily_budget(conn: &Connection) -> Result<Option<u128>, PaymentError> {
    let v: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE name = ?1", [BUDGET_SETTING], |r| r.get(0)).optional()?;
    v.map(|s| s.parse().map_err(|_| PaymentError::Invalid("the stored budget is not a number".into()))).transpose()
}

/// Sets the daily budget (atomic units).
pub fn set_daily_budget(conn: &Connection, atomic: u128) -> Result<(), PaymentError> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2",
        params![BUDGET_SETTING, atomic.to_string()],
    )?;
    Ok(())
}

/// The budget as shown.
pub fn budget(gw: &Gateway) -> Result<Budget, PaymentError> {
    let cfg = &gw.config.payments;
    let conn = gw.db();
    let daily = daily_budget(&conn)?;
    let spent = ledger::spent_since(&conn, ledger::day_start_ms(gw.audit.now_ms()))?;
    Ok(Budget {
        daily: daily.map(|d| amount::to_decimal(d, cfg.decimals)),
        spent_today: amount::to_decimal(spent, cfg.decimals),
        asset: cfg.asset_name.clone(),
        network: cfg.network.clone(),
    })
}

/// The wallet, as `GET /v1/wallet` shows it (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletInfo {
    /// The address to fund.
    pub address: String,
    /// The network payments are made on.
    pub network: String,
    /// The token contract.
    pub asset: String,
}

/// The wallet, if there is one.
pub fn wallet(gw: &Gateway) -> Result<Option<Wallet>, PaymentError> {
    let key = { gw.vault.key(&gw.db(), KeyOwner::Wallet, WALLET_DOMAIN)? };
    key.map(|c| Wallet::from_hex(c.secret.expose())).transpose()
}

/// Stores `key_hex` (or a new key) as the wallet; returns its address.
pub fn store_wallet(gw: &Gateway, key_hex: Option<Zeroizing<String>>) -> Result<Address, PaymentError> {
    let key = match key_hex {
        Some(k) => k,
        None => Wallet::generate_hex(),
    };
    let wallet = Wallet::from_hex(&key)?;
    let secret = Secret::new(key.trim().trim_start_matches("0x").to_owned());
    gw.vault.set_key(&gw.db(), KeyOwner::Wallet, WALLET_DOMAIN, &secret, None)?;
    Ok(wallet.address())
}

/// Money set aside for a payment under way; given back when dropped (by then the ledger
/// counts it, or it was not spent).
#[derive(Debug)]
pub struct Reservation<'a> {
    payments: &'a Payments,
    amount: u128,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self.payments.lock_reserved();
        *r = r.saturating_sub(self.amount);
    }
}

/// A signed payment for one call, with the money set aside for it.
#[derive(Debug)]
pub struct Signed<'a> {
    /// The `X-PAYMENT` value.
    pub header: String,
    /// What is paid.
    pub payment: Payment,
    /// The requirements paid.
    pub requirements: Requirements,
    /// The money set aside.
    pub reservation: Reservation<'a>,
}

/// Pays `peer`'s 402 `required` for the call `resource`, advertised at `offered` (a decimal
/// of the asset's unit, from the peer's query), if the terms and the budget allow.
pub fn pay<'a>(
    gw: &'a Gateway,
    peer: &str,
    offered: Option<&str>,
    required: &PaymentRequired,
    resource: &str,
) -> Result<Signed<'a>, PaymentError> {
    let cfg = &gw.config.payments;
    let terms = |reason: String| PaymentError::Terms { peer: peer.to_owned(), reason };
    let own_asset = Address::parse(&cfg.asset)?;
    let req = required
        .accepts
        .iter()
        .find(|r| {
            r.scheme == SCHEME_EXACT
                && r.network == cfg.network
                && Address::parse(&r.asset).is_ok_and(|a| a == own_asset)
                && r.resource == resource
        })
        .ok_or_else(|| {
            terms(format!(
                "no `exact` payment in {} on {} for {resource} is offered ([payments] asset, network)",
                cfg.asset_name, cfg.network
            ))
        })?;
    let price: u128 = req.max_amount_required.parse().map_err(|_| terms("the amount is not a number".into()))?;
    let display = amount::to_decimal(price, cfg.decimals);
    let advertised = offered.map(|o| amount::to_atomic(o, cfg.decimals)).transpose().ok().flatten();
    if advertised.is_none_or(|a| price > a) {
        return Err(terms(format!("it asks {display}, more than it advertised ({})", offered.unwrap_or("nothing"))));
    }
    let pay_to = Address::parse(&req.pay_to).map_err(|_| terms("payTo is not an address".into()))?;
    let Some(wallet) = wallet(gw)? else {
        return Err(PaymentError::NoWallet { peer: peer.to_owned(), amount: display });
    };
    let now_ms = gw.audit.now_ms();
    let reservation = {
        let conn = gw.db();
        let daily = daily_budget(&conn)?;
        let spent = ledger::spent_since(&conn, ledger::day_start_ms(now_ms))?;
        let mut reserved = gw.federation.payments.lock_reserved();
        let committed = spent.saturating_add(*reserved);
        if daily.is_none_or(|d| committed.saturating_add(price) > d) {
            return Err(PaymentError::OverBudget {
                peer: peer.to_owned(),
                amount: display,
                budget: daily.map_or_else(|| "none set".to_owned(), |d| amount::to_decimal(d, cfg.decimals)),
                spent: amount::to_decimal(committed, cfg.decimals),
            });
        }
        *reserved += price;
        Reservation { payments: &gw.federation.payments, amount: price }
    };
    let now_s = u64::try_from(now_ms / 1000).unwrap_or(0);
    let mut nonce = [0u8; 32];
    aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, &mut nonce);
    let transfer = Transfer {
        from: wallet.address(),
        to: pay_to,
        value: price,
        // As x402's clients do: valid from a little before now (clock skew) until the
        // payment's timeout.
        valid_after: now_s.saturating_sub(600),
        valid_before: now_s + req.max_timeout_seconds.clamp(10, 3600),
        nonce,
    };
    let mut token = cfg.token()?;
    if let Some(extra) = &req.extra {
        token.name = extra.name.clone();
        token.version = extra.version.clone();
    }
    let signature = wallet.sign(&transfer.digest(&token))?;
    let payment = Payment {
        x402_version: VERSION,
        scheme: SCHEME_EXACT.into(),
        network: req.network.clone(),
        payload: ExactPayload {
            signature,
            authorization: Authorization {
                from: transfer.from.to_string(),
                to: transfer.to.to_string(),
                value: price.to_string(),
                valid_after: transfer.valid_after.to_string(),
                valid_before: transfer.valid_before.to_string(),
                nonce: format!("0x{}", evm::hex(&nonce)),
            },
        },
    };
    Ok(Signed { header: payment.to_header(), payment, requirements: req.clone(), reservation })
}

/// Records a payment the lender settled (`transaction` from its `X-PAYMENT-RESPONSE`; empty
/// when it gave none — the charge is counted all the same).
pub fn record_spent(
    gw: &Gateway,
    peer: &str,
    op: &str,
    path: &str,
    signed: &Signed<'_>,
    transaction: &str,
) -> Result<(), PaymentError> {
    let cfg = &gw.config.payments;
    let price: u128 = signed.requirements.max_amount_required.parse().unwrap_or(0);
    let auth = &signed.payment.payload.authorization;
    ledger::record(
        &gw.db(),
        &Entry {
            at_ms: gw.audit.now_ms(),
            direction: Direction::Spent,
            peer: peer.to_owned(),
            domain: path.split('/').nth(1).unwrap_or_default().to_owned(),
            op: op.to_owned(),
            path: path.to_owned(),
            amount: price.to_string(),
            amount_display: amount::to_decimal(price, cfg.decimals),
            network: signed.requirements.network.clone(),
            asset: signed.requirements.asset.clone(),
            payer: auth.from.clone(),
            pay_to: auth.to.clone(),
            nonce: auth.nonce.clone(),
            transaction: transaction.to_owned(),
        },
    )?;
    Ok(())
}
