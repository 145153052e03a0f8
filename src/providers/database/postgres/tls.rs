//! TLS for the operator's sessions: rustls (with `ring`, the crypto provider the rest of
//! the operator uses) through `tokio-postgres-rustls`; this module only builds the two
//! client configurations.
//!
//! - `require`: encrypted, the server's certificate not checked (libpq's `sslmode=require`):
//!   protects against passive listeners, not against someone in the middle.
//! - `verify-full`: the certificate must chain to the CA in `caFile` and name the host
//!   (libpq's `sslmode=verify-full`).
//!
//! SCRAM authentication binds to the TLS channel (`SCRAM-SHA-256-PLUS`, tls-server-end-point)
//! where the server offers it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// `sslmode=require`: encrypt, accept any certificate (its handshake signature is still
/// checked, so the session key belongs to whoever holds the certificate's key).
pub(super) fn encrypt_only() -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = EncryptOnly(provider.signature_verification_algorithms);
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `sslmode=verify-full` with the CA certificates (PEM) in `ca_file`: the certificate must
/// chain to one of them and name the configured host (a DNS name or an IP address).
pub(super) fn verify_full(ca_file: &str) -> Result<MakeRustlsConnect, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("cannot read caFile {ca_file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("caFile {ca_file}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caFile {ca_file}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("caFile {ca_file} holds no PEM certificate"));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate (see [`encrypt_only`]).
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
