//! The TLS settings of gatewayd's outbound clients (upstreams, peers, the coordinator): the
//! platform's trust store, as reqwest itself would use it, but read on the first TLS
//! handshake rather than when a client is built. Loading and parsing the system's root
//! certificates was nine tenths of gatewayd's start-up instructions (once per client, and
//! there are two), and many gateways never dial an `https://` URL at all.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A rustls configuration for reqwest's `tls_backend_preconfigured`: the safe default
/// protocol versions (TLS 1.2 and 1.3), HTTP/1.1 by ALPN, server certificates checked by
/// the platform verifier, whose trust store every client shares and which is loaded once,
/// on first use. `None` if the crypto provider cannot make such a configuration (then
/// reqwest's own, eagerly loaded, is used).
pub fn client_config() -> Option<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(LazyPlatformVerifier::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(shared_verifier())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(config)
}

/// The one verifier of the process.
fn shared_verifier() -> Arc<LazyPlatformVerifier> {
    static VERIFIER: OnceLock<Arc<LazyPlatformVerifier>> = OnceLock::new();
    VERIFIER.get_or_init(|| Arc::new(LazyPlatformVerifier { inner: OnceLock::new() })).clone()
}

/// `rustls_platform_verifier::Verifier`, built on first use; a failure to build it (no
/// readable trust store) fails that handshake and is tried again on the next.
#[derive(Debug)]
struct LazyPlatformVerifier {
    inner: OnceLock<rustls_platform_verifier::Verifier>,
}

impl LazyPlatformVerifier {
    fn provider() -> Arc<CryptoProvider> {
        CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
    }

    fn get(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        if let Some(v) = self.inner.get() {
            return Ok(v);
        }
        let built = rustls_platform_verifier::Verifier::new(Self::provider())
            .map_err(|e| rustls::Error::General(format!("tls: the platform's trust store cannot be used: {e}")))?;
        // Two first handshakes at once: both build one, the first stored is kept.
        Ok(self.inner.get_or_init(|| built))
    }
}

impl ServerCertVerifier for LazyPlatformVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self.get() {
            Ok(v) => v.supported_verify_schemes(),
            // The handshake fails in `verify_server_cert`, with the reason.
            Err(_) => Self::provider().signature_verification_algorithms.supported_schemes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_loaded_until_a_handshake_needs_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = client_config().expect("ring makes a TLS 1.2/1.3 configuration");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let fresh = LazyPlatformVerifier { inner: OnceLock::new() };
        assert!(fresh.inner.get().is_none());
        assert!(!fresh.supported_verify_schemes().is_empty());
        // Built on first use and kept; a platform without a trust store fails each handshake.
        let built = fresh.get().is_ok();
        assert_eq!(fresh.inner.get().is_some(), built);
    }
}
