//! `[payments]` in config.toml: where this gateway is paid, through which facilitator, in
//! which asset on which network. The same asset is the unit of the borrower's daily budget.

use serde::Deserialize;

use super::evm::{self, Address, TokenDomain};
use super::PaymentError;

/// USDC on Base Sepolia, the network x402's examples use.
const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// `[payments]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// The x402 facilitator lent calls are verified and settled with (its `/verify` and
    /// `/settle`); needed to lend for a price.
    pub facilitator_url: Option<String>,
    /// The address paid for lent calls; needed to lend for a price.
    pub pay_to: Option<String>,
    /// The x402 network name.
    pub network: String,
    /// The token contract.
    pub asset: String,
    /// The token's EIP-712 name.
    pub asset_name: String,
    /// The token's EIP-712 version.
    pub asset_version: String,
    /// The token's decimals (amounts in rules and budgets are decimals of this unit).
    pub decimals: u32,
    /// How long a payment may take to settle; also how long a payment this gateway signs is
    /// valid for.
    pub max_timeout_seconds: u64,
    /// How many tokens one payment buys under a per-token rule.
    pub prepaid_tokens: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            facilitator_url: None,
            pay_to: None,
            network: "base-sepolia".into(),
            asset: BASE_SEPOLIA_USDC.into(),
            asset_name: "USDC".into(),
            asset_version: "2".into(),
            decimals: 6,
            max_timeout_seconds: 60,
            prepaid_tokens: 10_000,
        }
    }
}

impl PaymentsConfig {
    /// Checks what is set (at start, so a typo stops gatewayd with its name).
    pub fn validate(&self) -> Result<(), PaymentError> {
        if evm::chain_id(&self.network).is_none() {
            return Err(PaymentError::Invalid(format!(
                "[payments] network `{}` is not an EVM network x402 knows (base, base-sepolia, avalanche, avalanche-fuji, polygon, polygon-amoy, sei, sei-testnet, iotex)",
                self.network
            )));
        }
        let asset = Address::parse(&self.asset).map_err(|e| PaymentError::Invalid(format!("[payments] asset: {e}")))?;
        if self.network != "base-sepolia" && Address::parse(BASE_SEPOLIA_USDC).is_ok_and(|d| d == asset) {
            return Err(PaymentError::Invalid(format!(
                "[payments] network `{}` needs its own asset, asset_name and asset_version (the defaults are USDC on base-sepolia)",
                self.network
            )));
        }
        if let Some(p) = &self.pay_to {
            Address::parse(p).map_err(|e| PaymentError::Invalid(format!("[payments] pay_to: {e}")))?;
        }
        if let Some(u) = &self.facilitator_url {
            // The URL is not repeated in these errors: it might hold a password.
            let url = url::Url::parse(u)
                .map_err(|e| PaymentError::Invalid(format!("[payments] facilitator_url is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(PaymentError::Invalid("[payments] facilitator_url must be http(s)".into()));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(PaymentError::Invalid(
                    "[payments] facilitator_url must carry no user or password: they would not be sent".into(),
                ));
            }
        }
        if self.decimals > 18 {
            return Err(PaymentError::Invalid("[payments] decimals above 18".into()));
        }
        if !(1..=1_000_000_000).contains(&self.prepaid_tokens) {
            return Err(PaymentError::Invalid("[payments] prepaid_tokens must be 1 to 1000000000".into()));
        }
        if !(1..=3600).contains(&self.max_timeout_seconds) {
            return Err(PaymentError::Invalid("[payments] max_timeout_seconds must be 1 to 3600".into()));
        }
        Ok(())
    }

    /// The facilitator and payee, when this gateway can be paid.
    pub fn lending(&self) -> Result<(&str, Address), PaymentError> {
        match (&self.facilitator_url, &self.pay_to) {
            (Some(f), Some(p)) => Ok((f.as_str(), Address::parse(p)?)),
            _ => Err(PaymentError::NotConfigured),
        }
    }

    /// The token's EIP-712 domain.
    pub fn token(&self) -> Result<TokenDomain, PaymentError> {
        Ok(TokenDomain {
            name: self.asset_name.clone(),
            version: self.asset_version.clone(),
            chain_id: evm::chain_id(&self.network)
                .ok_or_else(|| PaymentError::Invalid(format!("unknown network `{}`", self.network)))?,
            contract: Address::parse(&self.asset)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_facilitator(url: &str) -> Result<(), PaymentError> {
        PaymentsConfig { facilitator_url: Some(url.into()), ..PaymentsConfig::default() }.validate()
    }

    #[test]
    fn the_facilitator_url_is_http_without_credentials_and_never_repeated() {
        assert!(with_facilitator("https://x402.org/facilitator").is_ok());
        assert!(with_facilitator("http://127.0.0.1:8402").is_ok());
        for bad in ["ftp://x402.org/f", "not a url CANARY_pw", "https://user:CANARY_pw@fac.example/"] {
            let e = with_facilitator(bad).unwrap_err().to_string();
            assert!(e.contains("[payments] facilitator_url"), "{e}");
            assert!(!e.contains("CANARY_pw"), "{e}");
        }
        let e = with_facilitator("https://only-user@fac.example/").unwrap_err().to_string();
        assert!(e.contains("no user or password"), "{e}");
    }
}
