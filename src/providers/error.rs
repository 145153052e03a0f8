//! Provider errors, classified: transient ones are retried with backoff, permanent ones set
//! a condition and wait for a change. Messages are built from status codes and the
//! services' own error texts, never from credentials or request bodies.

/// What went wrong at an external service.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// 5xx, 429, timeouts, refused connections: retried with jittered backoff.
    #[error("{service} is unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },
    /// The service refused the request for good (bad input, quota, permission, conflict
    /// with a resource that is not ours). Needs a person or a change.
    #[error("{service} refused the request: {message}")]
    Refused {
        service: &'static str,
        message: String,
    },
    /// A location outside the EU: refused before anything was sent, or reported back.
    #[error(
        "residency violation: {resource} would be or is in {location}, which is not an EU region"
    )]
    Residency { resource: String, location: String },
    /// The operator configuration lacks what this provider needs.
    #[error("{service} is not configured: {message}")]
    NotConfigured {
        service: &'static str,
        message: String,
    },
    /// The resource of this name holds data of another tenant (one deleted under
    /// `Retain`); nothing was changed. Needs adoption or a clean-up by a person.
    #[error("{service}: {message}")]
    Foreign {
        service: &'static str,
        message: String,
    },
    /// A long-running operation the service accepted finished with an error (a Cloud SQL
    /// operation `DONE` with `error`); the message carries the service's own text. The
    /// same request is held back for a while instead of being re-sent on every pass.
    #[error("{service} operation failed: {message}")]
    OperationFailed {
        service: &'static str,
        message: String,
    },
    /// Deletion is not possible now and needs a person; the message says what to do.
    #[error("{service} cannot delete: {message}")]
    DeletionBlocked {
        service: &'static str,
        message: String,
    },
}

impl ProviderError {
    /// Retry soon?
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable { .. })
    }

    /// The condition reason this error shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::Unavailable { .. } => "ProviderUnavailable",
            ProviderError::Refused { .. } => "ProviderRefused",
            ProviderError::Residency { .. } => "ResidencyViolation",
            ProviderError::Foreign { .. } => "RetainedDataExists",
            ProviderError::NotConfigured { .. } => "NotConfigured",
            ProviderError::DeletionBlocked { .. } => "DeletionBlocked",
            ProviderError::OperationFailed { .. } => "OperationFailed",
        }
    }

    /// Classifies an HTTP status with the service's own message.
    pub fn from_status(service: &'static str, status: u16, message: impl Into<String>) -> Self {
        let message = format!("HTTP {status}: {}", message.into());
        if status == 429 || status == 408 || status >= 500 {
            ProviderError::Unavailable { service, message }
        } else {
            ProviderError::Refused { service, message }
        }
    }

    /// Classifies a transport error (no HTTP status): always transient. The URL is left out
    /// on purpose; some services carry identifiers in it.
    pub fn transport(service: &'static str, err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_decode() {
            "answer could not be decoded"
        } else {
            "request failed"
        };
        ProviderError::Unavailable {
            service,
            message: kind.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_classified() {
        assert!(ProviderError::from_status("x", 503, "down").is_transient());
        assert!(ProviderError::from_status("x", 429, "slow down").is_transient());
        assert!(!ProviderError::from_status("x", 422, "bad").is_transient());
        assert!(!ProviderError::from_status("x", 401, "token").is_transient());
        assert_eq!(
            ProviderError::from_status("x", 500, "").reason(),
            "ProviderUnavailable"
        );
        assert_eq!(
            ProviderError::from_status("x", 409, "").reason(),
            "ProviderRefused"
        );
    }
}
