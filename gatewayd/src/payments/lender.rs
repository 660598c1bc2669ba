//! The lender's side of a paid call: the requirements it states, the checks a payment must
//! pass before anything is served (its own, then the facilitator's), and the settlement
//! after a successful answer, recorded in the ledger.

use super::amount;
use super::evm::Address;
use super::ledger::{self, Direction, Entry};
use super::x402::{PaymentRequired, Requirements, Settlement, TokenExtra, SCHEME_EXACT, VERSION};
use super::{facilitator, x402::Payment, PaymentError, Payments};
use crate::Gateway;

/// What a paid call is: `nkmc://LENDER/OP/PATH`, the same string on both sides.
pub fn resource(lender: &str, op: &str, path: &str) -> String {
    format!("nkmc://{lender}/{op}{path}")
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

/// A payment verified for one call; its nonce is held (no second call can use it) until it
/// is settled or dropped.
#[derive(Debug)]
pub struct Accepted<'a> {
    payment: Payment,
    requirements: Requirements,
    payer: String,
    held: &'a Payments,
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        self.held.lock_serving().remove(&self.payment.payload.authorization.nonce);
    }
}

fn refused(reason: impl Into<String>) -> PaymentError {
    PaymentError::Refused(reason.into())
}

/// Checks `header` (the `X-PAYMENT` value) against `requirements` at `now_s` (Unix
/// seconds), holds its nonce, then has the facilitator verify it.
pub async fn accept<'a>(
    gw: &'a Gateway,
    header: &str,
    requirements: &Requirements,
    now_s: u64,
) -> Result<Accepted<'a>, PaymentError> {
    let payment = Payment::from_header(header).map_err(|e| refused(e.to_string()))?;
    let auth = &payment.payload.authorization;
    if payment.network != requirements.network {
        return Err(refused(format!("network `{}`, not `{}`", payment.network, requirements.network)));
    }
    let to = Address::parse(&auth.to).map_err(|_| refused("`to` is not an address"))?;
    if to.to_string() != requirements.pay_to {
        return Err(refused("it does not pay this gateway's payee"));
    }
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
    if ledger::nonce_taken(&gw.db(), &nonce)? {
        return Err(refused("this payment was already used"));
    }
    let payments = &gw.federation.payments;
    if !payments.lock_serving().insert(nonce.clone()) {
        return Err(refused("this payment is already being used"));
    }
    let mut payment = payment;
    payment.payload.authorization.nonce = nonce;
    let mut accepted = Accepted { payment, requirements: requirements.clone(), payer: String::new(), held: payments };
    let (base, _) = gw.config.payments.lending()?;
    let verdict = facilitator::verify(gw.federation.client.http(), base, &accepted.payment, requirements).await?;
    if !verdict.is_valid {
        let reason = verdict.invalid_reason.unwrap_or_else(|| "no reason given".into());
        return Err(refused(format!("the facilitator found it invalid: {reason}")));
    }
    accepted.payer = verdict.payer.unwrap_or_else(|| accepted.payment.payload.authorization.from.clone());
    Ok(accepted)
}

impl Accepted<'_> {
    /// After a successful answer: has the facilitator settle the payment and records it.
    pub async fn settle(self, gw: &Gateway, peer: &str, op: &str, path: &str) -> Result<Settlement, PaymentError> {
        let (base, _) = gw.config.payments.lending()?;
        let settled = facilitator::settle(gw.federation.client.http(), base, &self.payment, &self.requirements).await?;
        if !settled.success {
            let reason = settled.error_reason.clone().unwrap_or_else(|| "no reason given".into());
            return Err(PaymentError::Facilitator(format!("settlement failed: {reason}")));
        }
        let cfg = &gw.config.payments;
        let atomic: u128 = self.requirements.max_amount_required.parse().unwrap_or(0);
        let entry = Entry {
            at_ms: gw.audit.now_ms(),
            direction: Direction::Earned,
            peer: peer.to_owned(),
            domain: path.split('/').nth(1).unwrap_or_default().to_owned(),
            op: op.to_owned(),
            path: path.to_owned(),
            amount: self.requirements.max_amount_required.clone(),
            amount_display: amount::to_decimal(atomic, cfg.decimals),
            network: self.requirements.network.clone(),
            asset: self.requirements.asset.clone(),
            payer: settled.payer.clone().unwrap_or_else(|| self.payer.clone()),
            pay_to: self.requirements.pay_to.clone(),
            nonce: self.payment.payload.authorization.nonce.clone(),
            transaction: settled.transaction.clone(),
        };
        ledger::record(&gw.db(), &entry)?;
        Ok(settled)
    }
}
