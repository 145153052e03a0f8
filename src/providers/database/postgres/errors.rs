//! Classification of failures: transient (retry) or permanent, with messages that carry
//! the SQLSTATE and the server's primary message, never a secret.

use std::time::Duration;

use crate::providers::ProviderError;

pub(super) const SERVICE: &str = "PostgreSQL";

/// A failed call, before classification.
pub(super) enum Failure {
    Pg(tokio_postgres::Error),
    Timeout(Duration),
}

impl Failure {
    /// Classifies and describes a failure. The message holds `what`, the SQLSTATE and the
    /// server's primary message (never the statement, its DETAIL or CONTEXT), with every
    /// string of `secrets` scrubbed out.
    pub(super) fn classify(&self, what: &str, secrets: &[&str]) -> ProviderError {
        let e = match self {
            Failure::Timeout(d) => {
                return unavailable(&format!("{what}: timed out after {}s", d.as_secs()));
            }
            Failure::Pg(e) => e,
        };
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let message = redact(
                format!("{what}: {} (SQLSTATE {code})", db.message()),
                secrets,
            );
            return if sqlstate_is_transient(code) {
                ProviderError::Unavailable {
                    service: SERVICE,
                    message,
                }
            } else {
                ProviderError::Refused {
                    service: SERVICE,
                    message,
                }
            };
        }
        // No server error: the kind ("error connecting to server", "connection closed",
        // "authentication error", ...) and its cause (an io error, a missing setting).
        let mut text = e.to_string();
        if let Some(cause) = std::error::Error::source(e) {
            text.push_str(&format!(": {cause}"));
        }
        // TLS that cannot work as configured is permanent, with a hint at the setting.
        let tls_hint = tls_hint(&text);
        let message = redact(format!("{what}: {text}{}", tls_hint.unwrap_or("")), secrets);
        let permanent = text.starts_with("authentication error")
            || text.starts_with("invalid configuration")
            || text.starts_with("invalid connection string")
            || tls_hint.is_some();
        if permanent {
            ProviderError::Refused {
                service: SERVICE,
                message,
            }
        } else {
            ProviderError::Unavailable {
                service: SERVICE,
                message,
            }
        }
    }
}

/// For a TLS failure that retrying cannot fix (a certificate `verify-full` rejects, a
/// server without TLS), what to check in the configuration.
fn tls_hint(text: &str) -> Option<&'static str> {
    if !text.starts_with("error performing TLS handshake") {
        return None;
    }
    if text.contains("server does not support TLS") {
        Some(
            " (sslMode: the server offers no TLS; `disable` is meant only for a local proxy \
             that encrypts, such as the Cloud SQL Auth Proxy)",
        )
    } else if text.contains("invalid peer certificate") {
        Some(
            " (sslMode verify-full: the server's certificate must chain to a CA in caFile and \
             name the configured host)",
        )
    } else {
        None
    }
}

/// Whether a SQLSTATE means "try again later": connection problems (class 08), the server
/// shutting down or starting (57P01-57P03), too many connections and other resource
/// shortage (53), a cancelled statement (57014, our statement timeout), lock timeouts
/// (55P03), objects in use (55006, e.g. a database with sessions), serialization failures
/// and deadlocks (40001, 40P01), a read-only server (25006, a standby during failover),
/// system and internal errors (58, XX), and a concurrent creator (42710 role, 42P04
/// database: the next pass finds it). Everything else, notably authentication (28) and
/// missing privileges (42501), is permanent.
pub fn sqlstate_is_transient(code: &str) -> bool {
    matches!(
        code,
        "57P01"
            | "57P02"
            | "57P03"
            | "57014"
            | "55P03"
            | "55006"
            | "40001"
            | "40P01"
            | "25006"
            | "42710"
            | "42P04"
    ) || ["08", "53", "58", "XX"]
        .iter()
        .any(|class| code.starts_with(class))
}

pub(super) fn redact(mut text: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s, "[redacted]");
    }
    text
}

pub(super) fn decode(e: tokio_postgres::Error) -> ProviderError {
    refused(&format!("unexpected answer: {e}"))
}

pub(super) fn refused(message: &str) -> ProviderError {
    ProviderError::Refused {
        service: SERVICE,
        message: message.to_string(),
    }
}

pub(super) fn unavailable(message: &str) -> ProviderError {
    ProviderError::Unavailable {
        service: SERVICE,
        message: message.to_string(),
    }
}

pub(super) fn not_configured(message: &str) -> ProviderError {
    ProviderError::NotConfigured {
        service: SERVICE,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for transient in [
            "08006", "08001", "53300", "57P01", "57P03", "57014", "55P03", "55006", "40001",
            "40P01", "25006", "58030", "XX000", "42710", "42P04",
        ] {
            assert!(sqlstate_is_transient(transient), "{transient}");
        }
        for permanent in [
            "28P01", "28000", "42501", "42601", "3D000", "2BP01", "22023",
        ] {
            assert!(!sqlstate_is_transient(permanent), "{permanent}");
        }
    }

    #[test]
    fn tls_failures_that_retrying_cannot_fix_are_named() {
        assert!(
            tls_hint("error performing TLS handshake: invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("caFile")
        );
        assert!(
            tls_hint("error performing TLS handshake: server does not support TLS")
                .unwrap()
                .contains("offers no TLS")
        );
        assert_eq!(
            tls_hint("error performing TLS handshake: connection reset"),
            None
        );
        assert_eq!(tls_hint("error connecting to server: refused"), None);
    }

    #[test]
    fn redaction_removes_every_secret() {
        assert_eq!(
            redact("a pw1 b pw2 c pw1".into(), &["pw1", "pw2", ""]),
            "a [redacted] b [redacted] c [redacted]"
        );
    }
}
