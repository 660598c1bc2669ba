//! The borrower's side of a paid call: the wallet (a vault row), the daily budget (a
//! setting), and paying a lender's 402 — only in this gateway's own asset and network, never
//! more than the lender advertised, never past the budget — then recording the charge.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::amount;
use super::evm::{Address, Transfer, Wallet};
use super::ledger::{self, Direction, Entry, State};
use super::x402::{Authorization, ExactPayload, Payment, PaymentRequired, Requirements, SCHEME_EXACT, VERSION};
use super::PaymentError;
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
    /// Committed since 00:00 UTC, in the asset's unit: settled payments and pending ones
    /// whose authorization has not expired.
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
    let now_ms = gw.audit.now_ms();
    let spent = ledger::spent_since(&conn, ledger::day_start_ms(now_ms), now_ms)?;
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

/// A signed payment for one call; the money is committed in the ledger (`pending`) until
/// it is settled, shown not taken, or its authorization expires.
#[derive(Debug)]
pub struct Signed {
    /// The `X-PAYMENT` value.
    pub header: String,
    /// What is paid.
    pub payment: Payment,
    /// The requirements paid.
    pub requirements: Requirements,
}

impl Signed {
    fn nonce(&self) -> &str {
        &self.payment.payload.authorization.nonce
    }

    /// The lender settled it (`transaction` from its answer, empty when it gave none).
    pub fn settled(&self, gw: &Gateway, transaction: &str) -> Result<(), PaymentError> {
        Ok(ledger::settle(&gw.db(), Direction::Spent, self.nonce(), transaction, None)?)
    }

    /// The lender's signed answer shows it did not take it.
    pub fn not_taken(&self, gw: &Gateway) -> Result<(), PaymentError> {
        Ok(ledger::void(&gw.db(), Direction::Spent, self.nonce())?)
    }
}

/// Pays `peer`'s 402 `required` for the call `op` on `path`, advertised at `offered` (a
/// decimal of the asset's unit, from the peer's query), if the terms and the budget allow.
/// The payment is in the ledger (`pending`) before this returns.
pub fn pay(
    gw: &Gateway,
    peer: &str,
    offered: Option<&str>,
    required: &PaymentRequired,
    op: &str,
    path: &str,
) -> Result<Signed, PaymentError> {
    let cfg = &gw.config.payments;
    let resource = super::lender::resource(peer, op, path);
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
                nonce: format!("0x{}", hex::encode(nonce)),
            },
        },
    };
    let entry = Entry {
        at_ms: now_ms,
        direction: Direction::Spent,
        state: State::Pending,
        peer: peer.to_owned(),
        domain: path.split('/').nth(1).unwrap_or_default().to_owned(),
        op: op.to_owned(),
        path: path.to_owned(),
        amount: price.to_string(),
        amount_display: display.clone(),
        network: req.network.clone(),
        asset: req.asset.clone(),
        payer: transfer.from.to_string(),
        pay_to: transfer.to.to_string(),
        nonce: payment.payload.authorization.nonce.clone(),
        transaction: String::new(),
        valid_until_ms: i64::try_from(transfer.valid_before.saturating_mul(1000)).unwrap_or(i64::MAX),
    };
    // The budget check and the pending row are one step: concurrent payments queue here.
    {
        let _one_at_a_time = gw.federation.payments.lock_paying();
        let conn = gw.db();
        let daily = daily_budget(&conn)?;
        let committed = ledger::spent_since(&conn, ledger::day_start_ms(now_ms), now_ms)?;
        if daily.is_none_or(|d| committed.saturating_add(price) > d) {
            return Err(PaymentError::OverBudget {
                peer: peer.to_owned(),
                amount: display,
                budget: daily.map_or_else(|| "none set".to_owned(), |d| amount::to_decimal(d, cfg.decimals)),
                spent: amount::to_decimal(committed, cfg.decimals),
            });
        }
        ledger::claim(&conn, &entry)?;
    }
    Ok(Signed { header: payment.to_header(), payment, requirements: req.clone() })
}
