//! Federation: gateways lend and borrow API access under rules, and keys never move.
//!
//! - [`sign`]: HMAC-SHA256 signatures of every peer message and answer, the time window and
//!   the replay cache.
//! - [`rules`]: what this gateway lends, to whom, for which operations, at what price and rate.

pub mod client;
pub mod identity;
pub mod peers;
pub mod protocol;
pub mod rules;
pub mod sign;
