//! x402 (version 1) messages, as the x402 reference implementations spell them: the 402
//! body with payment requirements, the `X-PAYMENT` payload of the `exact` scheme on EVM
//! networks, and the facilitator's `/verify` and `/settle` exchange.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::PaymentError;

/// The protocol version spoken.
pub const VERSION: u32 = 1;
/// The one scheme supported: a fixed amount, an EIP-3009 transfer authorization.
pub const SCHEME_EXACT: &str = "exact";
/// The request header carrying the payment.
pub const PAYMENT_HEADER: &str = "x-payment";
/// The answer header carrying the settlement.
pub const PAYMENT_RESPONSE_HEADER: &str = "x-payment-response";

/// What a resource costs, and how to pay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// `exact`.
    pub scheme: String,
    /// The network (`base-sepolia`, `base`...).
    pub network: String,
    /// Atomic units of the asset, as a decimal string.
    pub max_amount_required: String,
    /// What is paid for: `nkmc://LENDER/OP/PATH`.
    pub resource: String,
    /// For people.
    #[serde(default)]
    pub description: String,
    /// The media type of the resource.
    #[serde(default)]
    pub mime_type: String,
    /// The payee's address.
    pub pay_to: String,
    /// How long the payment may take to settle.
    pub max_timeout_seconds: u64,
    /// The token contract.
    pub asset: String,
    /// The token's EIP-712 domain: `{"name": "USDC", "version": "2"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<TokenExtra>,
}

/// The token's EIP-712 name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExtra {
    /// The EIP-712 name.
    pub name: String,
    /// The EIP-712 version.
    pub version: String,
}

/// The body of a 402 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// [`VERSION`].
    pub x402_version: u32,
    /// Why payment is asked for (or why the one given was refused).
    #[serde(default)]
    pub error: String,
    /// The ways to pay.
    pub accepts: Vec<Requirements>,
}

/// The `X-PAYMENT` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Payment {
    /// [`VERSION`].
    pub x402_version: u32,
    /// `exact`.
    pub scheme: String,
    /// The network.
    pub network: String,
    /// The signed authorization.
    pub payload: ExactPayload,
}

/// The `exact` scheme's payload on EVM networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactPayload {
    /// `0x` + 65 bytes of hex: the EIP-712 signature.
    pub signature: String,
    /// What was signed.
    pub authorization: Authorization,
}

/// An EIP-3009 transfer authorization, as JSON strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// The payer.
    pub from: String,
    /// The payee.
    pub to: String,
    /// Atomic units.
    pub value: String,
    /// Unix seconds.
    pub valid_after: String,
    /// Unix seconds.
    pub valid_before: String,
    /// `0x` + 32 bytes of hex.
    pub nonce: String,
}

impl Payment {
    /// The `X-PAYMENT` header value: base64 of the JSON.
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses an `X-PAYMENT` header value.
    pub fn from_header(value: &str) -> Result<Self, PaymentError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| PaymentError::Invalid("X-PAYMENT is not base64".into()))?;
        let payment: Payment = serde_json::from_slice(&bytes)
            .map_err(|e| PaymentError::Invalid(format!("X-PAYMENT is not an x402 payment: {e}")))?;
        if payment.x402_version != VERSION || payment.scheme != SCHEME_EXACT {
            return Err(PaymentError::Invalid("X-PAYMENT: only x402 version 1, scheme `exact` is taken".into()));
        }
        Ok(payment)
    }
}

/// The body of `POST /verify` and `POST /settle` to a facilitator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// [`VERSION`].
    pub x402_version: u32,
    /// The payment as the payer sent it.
    pub payment_payload: Payment,
    /// The requirements it must meet (the lender's own, never the payer's copy).
    pub payment_requirements: Requirements,
}

/// A facilitator's answer to `/verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment is good for the requirements.
    pub is_valid: bool,
    /// Why not.
    #[serde(default)]
    pub invalid_reason: Option<String>,
    /// The payer's address.
    #[serde(default)]
    pub payer: Option<String>,
}

/// A facilitator's answer to `/settle`; also the `X-PAYMENT-RESPONSE` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settlement {
    /// Whether the transfer went through.
    pub success: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// The transaction hash (facilitators send `null` or leave it out on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// The network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The payer's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

impl Settlement {
    /// The `X-PAYMENT-RESPONSE` header value.
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses an `X-PAYMENT-RESPONSE` header value.
    pub fn from_header(value: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_header_round_trips_and_strangers_are_refused() {
        let p = Payment {
            x402_version: 1,
            scheme: "exact".into(),
            network: "base-sepolia".into(),
            payload: ExactPayload {
                signature: "0x00".into(),
                authorization: Authorization {
                    from: "0x1".into(),
                    to: "0x2".into(),
                    value: "10000".into(),
                    valid_after: "0".into(),
                    valid_before: "1".into(),
                    nonce: "0x22".into(),
                },
            },
        };
        let h = p.to_header();
        assert_eq!(Payment::from_header(&h).unwrap(), p);
        // The reference clients' spelling.
        let json = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&h).unwrap()).unwrap();
        assert!(json.contains(r#""x402Version":1"#) && json.contains(r#""validBefore":"1""#), "{json}");
        assert!(Payment::from_header("not base64!").is_err());
        let mut other = p.clone();
        other.scheme = "upto".into();
        assert!(Payment::from_header(&other.to_header()).is_err());
        let extra = base64::engine::general_purpose::STANDARD.encode(json.replacen('{', r#"{"more":1,"#, 1));
        assert!(Payment::from_header(&extra).is_err());
    }
}
