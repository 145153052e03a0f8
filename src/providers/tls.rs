//! TLS for the providers' HTTP clients: rustls with the `ring` provider (the one kube
//! already uses), installed once for the process.

/// Installs `ring` as the process-wide rustls crypto provider; harmless when one is set.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
