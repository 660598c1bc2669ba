//! An x402 facilitator's HTTP API: `POST {url}/verify` before serving, `POST {url}/settle`
//! after a successful answer. The lender sends its own requirements, never the payer's copy.

use super::x402::{FacilitatorRequest, Payment, Requirements, Settlement, VerifyResponse, VERSION};
use super::PaymentError;

/// The largest facilitator answer read.
const MAX_ANSWER: usize = 64 * 1024;

async fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
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
    let url = format!("{}/{route}", base.trim_end_matches('/'));
    let failed = |e: reqwest::Error| PaymentError::Facilitator(format!("{route}: {}", e.without_url()));
    let body = serde_json::to_vec(&body).map_err(|e| PaymentError::Invalid(e.to_string()))?;
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(failed)?;
    let status = resp.status();
    let mut bytes = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(PaymentError::Facilitator(format!("{route}: the answer is over {MAX_ANSWER} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(PaymentError::Facilitator(format!("{route}: HTTP {}", status.as_u16())));
    }
    serde_json::from_slice(&bytes).map_err(|e| PaymentError::Facilitator(format!("{route}: unexpected answer: {e}")))
}

/// Asks whether `payment` is good for `requirements`.
pub async fn verify(
    http: &reqwest::Client,
    base: &str,
    payment: &Payment,
    requirements: &Requirements,
) -> Result<VerifyResponse, PaymentError> {
    post(http, base, "verify", payment, requirements).await
}

/// Has `payment` carried out.
pub async fn settle(
    http: &reqwest::Client,
    base: &str,
    payment: &Payment,
    requirements: &Requirements,
) -> Result<Settlement, PaymentError> {
    post(http, base, "settle", payment, requirements).await
}
