//! An x402 facilitator's HTTP API: `POST {url}/verify` before serving, `POST {url}/settle`
//! after a successful answer. The lender sends its own requirements, never the payer's copy.

use super::x402::{FacilitatorRequest, Payment, Requirements, Settlement, VerifyResponse, VERSION};
use super::PaymentError;
use crate::federation::client::PeerClient;

/// The largest facilitator answer read.
const MAX_ANSWER: u64 = 64 * 1024;

async fn post<T: serde::de::DeserializeOwned>(
    http: &PeerClient,
    base: &str,
    route: &str,
    payment: &Payment,
    requirements: &Requirements,
) -> Result<T, PaymentError> {
    let body = FacilitatorRequest {
        x402_version: VERSION,
        payment_payload: payment.clone(),
        payment_requirements: requirements.clone(),
    };
    let url = url::Url::parse(&format!("{}/{route}", base.trim_end_matches('/')))
        .map_err(|e| PaymentError::Facilitator(format!("{route}: the facilitator URL is not a URL: {e}")))?;
    let body = serde_json::to_vec(&body).map_err(|e| PaymentError::Invalid(e.to_string()))?;
    let (status, bytes) = http
        .plain(hyper::Method::POST, &url, Some(body), MAX_ANSWER)
        .await
        .map_err(|e| PaymentError::Facilitator(format!("{route}: {e}")))?;
    if !(200..300).contains(&status) {
        return Err(PaymentError::Facilitator(format!("{route}: HTTP {status}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| PaymentError::Facilitator(format!("{route}: unexpected answer: {e}")))
}

/// Asks whether `payment` is good for `requirements`.
pub async fn verify(
    http: &PeerClient,
    base: &str,
    payment: &Payment,
    requirements: &Requirements,
) -> Result<VerifyResponse, PaymentError> {
    post(http, base, "verify", payment, requirements).await
}

/// Has `payment` carried out.
pub async fn settle(
    http: &PeerClient,
    base: &str,
    payment: &Payment,
    requirements: &Requirements,
) -> Result<Settlement, PaymentError> {
    post(http, base, "settle", payment, requirements).await
}
