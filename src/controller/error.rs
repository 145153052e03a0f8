//! The reconciler's errors: typed, classified, and free of secrets by construction (they
//! carry Kubernetes API errors and our own messages, never provider credentials).

use std::time::Duration;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call {action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper failed (adding/removing the finalizer, or cleanup).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup started but is not finished (e.g. the namespace is still terminating).
    /// Not a failure: the tenant is requeued soon and keeps its finalizer.
    #[error("cleanup in progress: {0}")]
    CleanupPending(String),
    /// The RoleBinding that grants the operator its rights in the tenant namespace has not
    /// taken effect yet.
    #[error("{0}")]
    AccessPending(String),
    /// An external service failed (its condition says which and why).
    #[error(transparent)]
    Provider(#[from] crate::providers::ProviderError),
    /// Some processors still hold the tenant's data; retried with backoff (slowly when a
    /// person is needed, e.g. Postmark refuses server deletion).
    #[error("{summary}")]
    ErasureIncomplete { summary: String, transient: bool },
    /// A serialization bug: our own objects did not serialize.
    #[error("could not serialize {0}: {1}")]
    Serialize(&'static str, #[source] serde_json::Error),
}

impl Error {
    /// Wraps a Kubernetes error with what we were doing.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// Transient errors (5xx, 429, timeouts, connection failures) are retried quickly;
    /// the others need a person or a change and are retried slowly.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) => {
                    status.code == 429 || status.code >= 500 || status.code == 409
                }
                kube::Error::HyperError(_) | kube::Error::Service(_) => true,
                _ => false,
            },
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_transient(),
                _ => true,
            },
            Error::CleanupPending(_) | Error::AccessPending(_) => true,
            Error::Provider(e) => e.is_transient(),
            Error::ErasureIncomplete { transient, .. } => *transient,
            Error::Serialize(..) => false,
        }
    }

    /// A short name of what failed, for the `reconcile_errors` metric.
    pub fn metric_reason(&self) -> &'static str {
        match self.root() {
            Error::Kube { .. } => "KubernetesApi",
            Error::Finalizer(_) => "Finalizer",
            Error::CleanupPending(_) => "CleanupPending",
            Error::AccessPending(_) => "AccessPending",
            Error::Provider(e) => e.reason(),
            Error::ErasureIncomplete { .. } => "ErasureIncomplete",
            Error::Serialize(..) => "Serialize",
        }
    }

    /// The error the reconcile branch itself returned, seen through the finalizer wrapper.
    pub fn root(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.root(),
                _ => self,
            },
            other => other,
        }
    }
}

/// Exponential backoff with jitter: 5s, 10s, 20s, ... capped at 5 minutes (transient) or
/// starting at 60s (permanent), each ±20% so that tenants failing together spread out.
pub fn backoff(attempt: u32, transient: bool) -> Duration {
    let base: f64 = if transient { 5.0 } else { 60.0 };
    let secs = (base * 2f64.powi(attempt.min(10) as i32)).min(300.0);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    Duration::from_secs_f64(secs * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(0, true).as_secs_f64();
        assert!((4.0..=6.0).contains(&first), "{first}");
        let later = backoff(3, true).as_secs_f64();
        assert!((32.0..=48.0).contains(&later), "{later}");
        for n in [8, 20, 1000] {
            assert!(backoff(n, true).as_secs_f64() <= 360.0);
        }
        assert!(backoff(0, false) > backoff(0, true) * 5);
    }

    #[test]
    fn api_errors_are_classified() {
        let api = |code| {
            Error::kube(
                "test",
                kube::Error::Api(Box::new(
                    kube::core::Status::failure("x", "y").with_code(code),
                )),
            )
        };
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(422).is_transient());
        assert!(!api(403).is_transient());
    }
}
