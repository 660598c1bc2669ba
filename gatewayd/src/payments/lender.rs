//! The lender's side of a paid call: the requirements it states, the checks a payment must
//! pass before anything is served (its own, then the facilitator's), and the settlement —
//! before a write or delete is carried out, after a read answered 2xx — recorded in the
//! ledger. Accepting a payment claims its nonce in the ledger (`pending`), so a payment is
//! served at most once, whatever runs concurrently and across restarts.

use sha2::{Digest, Sha256};

use super::amount;
use super::evm::Address;
use super::ledger::{self, Direction, Entry, State};
use super::x402::{PaymentRequired, Requirements, Settlement, TokenExtra, SCHEME_EXACT, VERSION};
use super::{facilitator, x402::Payment, PaymentError};
use crate::Gateway;

/// What a paid call is: `nkmc://LENDER/OP/PATH`, the same string on both sides.
pub fn resource(lender: &str, op: &str, path: &str) -> String {
    format!("nkmc://{lender}/{op}{path}")
}

/// The hex SHA-256 of an `X-PAYMENT` value: the borrower puts it in the signed request body
/// (`payment_sha256`), which binds the payment to that request.
pub fn payment_digest(header: &str) -> String {
    hex::encode(Sha256::digest(header.trim().as_bytes()))
}

/// The requirements for one call priced at `price` (a decimal of the asset's unit).
pub fn requirements(gw: &Gateway, op: &str, path: &str, price: &str) -> Result<Requirements, PaymentError> {
    let cfg = &gw.config.payments;
    let (_, pay_to) = cfg.lending()?;
    let atomic = amount::to_atomic(price, cfg.decimals)?;
    Ok(Requirements {
        scheme: SCHEME_EXACT.into(),
        network: cfg.network.clone(),
        max_amount_required: atomic.to_string(),
        resource: resource(&gw.identity.id, op, path),
        description: format!("{op} {path} through gateway {}", gw.identity.name),
        mime_type: "application/json".into(),
        pay_to: pay_to.to_string(),
        max_timeout_seconds: cfg.max_timeout_seconds,
        asset: Address::parse(&cfg.asset)?.to_string(),
        extra: Some(TokenExtra { name: cfg.asset_name.clone(), version: cfg.asset_version.clone() }),
    })
}

/// The body of a 402 answer.
pub fn required(requirements: Requirements, error: &str) -> PaymentRequired {
    PaymentRequired { x402_version: VERSION, error: error.to_owned(), accepts: vec![requirements] }
}

/// A payment verified for one call. Its nonce is claimed in the ledger; dropped without
/// being settled, the claim turns `void` (the nonce stays used).
#[derive(Debug)]
pub struct Accepted<'a> {
    gw: &'a Gateway,
    payment: Payment,
    requirements: Requirements,
    settled: bool,
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let nonce = &self.payment.payload.authorization.nonce;
            if let Err(e) = ledger::void(&self.gw.db(), Direction::Earned, nonce) {
                tracing::error!(error = %e, "payments: an unsettled payment could not be marked void");
            }
        }
    }
}

fn refused(reason: impl Into<String>) -> PaymentError {
    PaymentError::Refused(reason.into())
}

/// Checks `header` (the `X-PAYMENT` value) against `requirements` at `now_s` (Unix
/// seconds), claims its nonce for `peer`'s call `op` on `path`, then has the facilitator
/// verify it.
pub async fn accept<'a>(
    gw: &'a Gateway,
    header: &str,
    requirements: &Requirements,
    peer: &str,
    op: &str,
    path: &str,
    now_s: u64,
) -> Result<Accepted<'a>, PaymentError> {
    let mut payment = Payment::from_header(header).map_err(|e| refused(e.to_string()))?;
    let auth = &payment.payload.authorization;
    if payment.network != requirements.network {
        return Err(refused(format!("network `{}`, not `{}`", payment.network, requirements.network)));
    }
    let to = Address::parse(&auth.to).map_err(|_| refused("`to` is not an address"))?;
    if to.to_string() != requirements.pay_to {
        return Err(refused("it does not pay this gateway's payee"));
    }
    let from = Address::parse(&auth.from).map_err(|_| refused("`from` is not an address"))?;
    if auth.value != requirements.max_amount_required {
        return Err(refused(format!("it pays {}, the price is {}", auth.value, requirements.max_amount_required)));
    }
    let after: u64 = auth.valid_after.parse().map_err(|_| refused("validAfter is not a number"))?;
    let before: u64 = auth.valid_before.parse().map_err(|_| refused("validBefore is not a number"))?;
    if after > now_s || before <= now_s + 6 {
        return Err(refused("it is not valid now (validAfter/validBefore)"));
    }
    let nonce_ok = auth.nonce.len() == 66
        && auth.nonce.starts_with("0x")
        && auth.nonce[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !nonce_ok {
        return Err(refused("the nonce is not 32 bytes of hex"));
    }
    let nonce = auth.nonce.to_ascii_lowercase();
    let cfg = &gw.config.payments;
    let atomic: u128 = requirements.max_amount_required.parse().unwrap_or(0);
    let claim = Entry {
        at_ms: gw.audit.now_ms(),
        direction: Direction::Earned,
        state: State::Pending,
        peer: peer.to_owned(),
        domain: path.split('/').nth(1).unwrap_or_default().to_owned(),
        op: op.to_owned(),
        path: path.to_owned(),
        amount: requirements.max_amount_required.clone(),
        amount_display: amount::to_decimal(atomic, cfg.decimals),
        network: requirements.network.clone(),
        asset: requirements.asset.clone(),
        payer: from.to_string(),
        pay_to: requirements.pay_to.clone(),
        nonce: nonce.clone(),
        transaction: String::new(),
        valid_until_ms: i64::try_from(before.saturating_mul(1000)).unwrap_or(i64::MAX),
    };
    if !ledger::claim(&gw.db(), &claim)? {
        return Err(refused("this payment was already used"));
    }
    payment.payload.authorization.nonce = nonce;
    // From here on, dropping `accepted` voids the claim.
    let accepted = Accepted { gw, payment, requirements: requirements.clone(), settled: false };
    let (base, _) = cfg.lending()?;
    let verdict = facilitator::verify(&gw.federation.client, base, &accepted.payment, requirements).await?;
    if !verdict.is_valid {
        let reason = verdict.invalid_reason.unwrap_or_else(|| "no reason given".into());
        return Err(refused(format!("the facilitator found it invalid: {reason}")));
    }
    Ok(accepted)
}

impl Accepted<'_> {
    /// Has the facilitator settle the payment and records it as settled.
    pub async fn settle(mut self) -> Result<Settlement, PaymentError> {
        let gw = self.gw;
        let (base, _) = gw.config.payments.lending()?;
        let settled = facilitator::settle(&gw.federation.client, base, &self.payment, &self.requirements).await?;
        if !settled.success {
            let reason = settled.error_reason.clone().unwrap_or_else(|| "no reason given".into());
            return Err(refused(format!("settlement failed: {reason}")));
        }
        let nonce = &self.payment.payload.authorization.nonce;
        let tx = settled.transaction.clone().unwrap_or_default();
        ledger::settle(&gw.db(), Direction::Earned, nonce, &tx, settled.payer.as_deref())?;
        self.settled = true;
        Ok(settled)
    }
}
