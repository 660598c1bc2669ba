//! Paid lending with x402 (version 1, scheme `exact`, EVM networks).
//!
//! A lender whose rule prices a domain `per-request` answers an unpaid `/federation/exec`
//! with 402 and its [`x402::Requirements`]; the borrower, if its owner gave it a wallet and a
//! daily budget with room left, signs an EIP-3009 transfer authorization for exactly that
//! amount and sends it again with `X-PAYMENT`. The lender checks the payment against its own
//! requirements, has its facilitator `/verify` it, serves the call, and only after a
//! successful answer has the facilitator `/settle` it. Both record the charge in their
//! [`ledger`].
//!
//! - [`x402`]: the messages; [`evm`]: addresses, the wallet, EIP-712 signing;
//!   [`amount`]: decimals and atomic units; [`config`]: `[payments]`.
//! - [`lender`]: requirements, checking and settling a payment; [`facilitator`]: its HTTP API.
//! - [`payer`]: the wallet, the budget, paying a lender; [`ledger`]: charges on both sides.
//! - [`credit`]: per-token lending, prepaid in top-ups and metered on the tokens reported.

pub mod amount;
pub mod config;
pub mod credit;
pub mod evm;
pub mod facilitator;
pub mod ledger;
pub mod lender;
pub mod payer;
pub mod x402;

use std::sync::Mutex;

/// Why a payment step failed. Messages never hold the wallet key.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// Malformed input: a payment, an address, an amount, a setting.
    #[error("payments: {0}")]
    Invalid(String),
    /// This gateway lends for a price but cannot be paid.
    #[error(
        "payments: this gateway has no facilitator or payee; set [payments] facilitator_url and pay_to in config.toml"
    )]
    NotConfigured,
    /// A payment that does not pay for this request (refused with 402).
    #[error("payments: the payment was refused: {0}")]
    Refused(String),
    /// The facilitator could not be asked, or answered badly.
    #[error("payments: the facilitator failed: {0}")]
    Facilitator(String),
    /// No wallet to pay with.
    #[error("payments: peer {peer} asks {amount} for this call and this gateway has no wallet; create one with `nkmc wallet create` (or import one with `nkmc wallet import`)")]
    NoWallet {
        /// The lender.
        peer: String,
        /// The price, in the asset's unit.
        amount: String,
    },
    /// Paying would go over the daily budget.
    #[error("payments: peer {peer} asks {amount} for this call; today's budget is {budget} and {spent} is spent; raise it with `nkmc budget set --daily X`")]
    OverBudget {
        /// The lender.
        peer: String,
        /// The price.
        amount: String,
        /// The budget (`none set` when there is none).
        budget: String,
        /// Spent today, including payments under way.
        spent: String,
    },
    /// The lender's terms are not ones this gateway pays.
    #[error("payments: peer {peer}'s terms are not accepted: {reason}")]
    Terms {
        /// The lender.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("payments: database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// What payments keep in memory: one payment is decided at a time, so the budget check and
/// the pending ledger row that reserves the money are one step.
#[derive(Debug, Default)]
pub struct Payments {
    paying: Mutex<()>,
}

impl Payments {
    fn lock_paying(&self) -> std::sync::MutexGuard<'_, ()> {
        self.paying.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
