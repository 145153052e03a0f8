//! Classification of the SDK's errors. Cloud Storage's gRPC API answers with the canonical
//! codes (<https://cloud.google.com/storage/docs/retry-strategy>: retry UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, INTERNAL); everything the service refuses for
//! good (PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION, ...) needs a person.
//! Messages carry the code and the service's own text, never request data or URLs.

use google_cloud_gax::error::CredentialsError;
use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_storage::Error;

use crate::providers::ProviderError;

/// Service name in errors.
pub const SERVICE: &str = "Cloud Storage";

/// The canonical code of a service error, if the service answered.
pub fn code_of(e: &Error) -> Option<Code> {
    e.status().map(|s| s.code)
}

/// Transient or permanent, by the canonical code.
pub fn from_code(code: Code, message: &str) -> ProviderError {
    let message = format!("{}: {}", code.name(), short(message));
    match code {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Cancelled => ProviderError::Unavailable {
            service: SERVICE,
            message,
        },
        _ => ProviderError::Refused {
            service: SERVICE,
            message,
        },
    }
}

/// Any error of the SDK, classified.
pub fn classify(e: &Error) -> ProviderError {
    if let Some(status) = e.status() {
        return from_code(status.code, &status.message);
    }
    if let Some(http) = e.http_status_code() {
        let text = e
            .http_payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or_default();
        return ProviderError::from_status(SERVICE, http, short(text));
    }
    let credentials =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<CredentialsError>());
    if let Some(c) = credentials {
        // The credentials error's own text is left out: it may quote the key file.
        return if c.is_transient() {
            unavailable("Google Cloud credentials are not available right now")
        } else {
            ProviderError::Refused {
                service: SERVICE,
                message: "cannot obtain Google Cloud credentials; check Workload Identity or \
                          storage.credentialsFile / storage.credentialsEnv"
                    .into(),
            }
        };
    }
    if e.is_timeout() {
        unavailable("timed out")
    } else if e.is_exhausted() {
        unavailable("retries exhausted")
    } else if e.is_serialization() {
        ProviderError::Refused {
            service: SERVICE,
            message: "the request could not be built".into(),
        }
    } else if e.is_deserialization() {
        unavailable("answer could not be decoded")
    } else {
        unavailable("connection failed or was interrupted")
    }
}

/// Why Cloud Storage refused a bucket delete with FAILED_PRECONDITION (gRPC) or 409 (JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteRefusal {
    /// "The bucket you tried to delete is not empty." (objects written meanwhile): delete
    /// them and try again.
    NotEmpty,
    /// Anything else (a locked retention policy, a hold, ...): needs a person. Carries the
    /// code and the service's own text.
    Blocked(String),
}

/// The refusal a bucket delete met, when it is one; `None` for every other error. Told
/// apart by the status's `google.rpc.ErrorInfo` reason when the service sends one, else by
/// its message: only a refusal that says the bucket is not empty is retried.
pub fn delete_refusal(e: &Error) -> Option<DeleteRefusal> {
    let (code, text) = if let Some(status) = e.status() {
        if status.code != Code::FailedPrecondition {
            return None;
        }
        let reason_says = status.details.iter().any(|d| match d {
            StatusDetails::ErrorInfo(info) => says_not_empty(&info.reason),
            _ => false,
        });
        if reason_says || says_not_empty(&status.message) {
            return Some(DeleteRefusal::NotEmpty);
        }
        (status.code.name().to_string(), status.message.clone())
    } else if e.http_status_code() == Some(409) {
        let text = e
            .http_payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or_default()
            .to_string();
        if says_not_empty(&text) {
            return Some(DeleteRefusal::NotEmpty);
        }
        ("HTTP 409".to_string(), text)
    } else {
        return None;
    };
    Some(DeleteRefusal::Blocked(format!("{code}: {}", short(&text))))
}

/// "not empty", "NOT_EMPTY", "notEmpty", "BUCKET_NOT_EMPTY", ...
fn says_not_empty(text: &str) -> bool {
    let folded: String = text
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    folded.contains("notempty")
}

fn unavailable(message: &str) -> ProviderError {
    ProviderError::Unavailable {
        service: SERVICE,
        message: message.into(),
    }
}

/// At most 300 characters of a service text (proxies answer with whole HTML pages).
fn short(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn service(code: Code, message: &str) -> Error {
        Error::service(Status::default().set_code(code).set_message(message))
    }

    #[test]
    fn transient_codes() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            let e = classify(&service(code, "try later"));
            assert!(e.is_transient(), "{code:?} -> {e}");
            assert!(e.to_string().contains(code.name()), "{e}");
            assert!(e.to_string().contains("try later"), "{e}");
        }
    }

    #[test]
    fn permanent_codes() {
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::NotFound,
        ] {
            let e = classify(&service(code, "no"));
            assert!(!e.is_transient(), "{code:?} -> {e}");
            assert_eq!(e.reason(), "ProviderRefused");
        }
    }

    #[test]
    fn bucket_delete_refusals_are_told_apart() {
        let not_empty = service(
            Code::FailedPrecondition,
            "The bucket you tried to delete is not empty.",
        );
        assert_eq!(delete_refusal(&not_empty), Some(DeleteRefusal::NotEmpty));
        let by_reason = Error::service(
            Status::default()
                .set_code(Code::FailedPrecondition)
                .set_message("Precondition failed.")
                .set_details([serde_json::from_value::<StatusDetails>(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "BUCKET_NOT_EMPTY",
                    "domain": "storage.googleapis.com",
                }))
                .unwrap()]),
        );
        assert_eq!(delete_refusal(&by_reason), Some(DeleteRefusal::NotEmpty));
        let locked = service(
            Code::FailedPrecondition,
            "The bucket's retention policy is locked.",
        );
        assert_eq!(
            delete_refusal(&locked),
            Some(DeleteRefusal::Blocked(
                "FAILED_PRECONDITION: The bucket's retention policy is locked.".into()
            ))
        );
        assert_eq!(delete_refusal(&service(Code::PermissionDenied, "no")), None);
    }

    #[test]
    fn client_side_errors() {
        assert!(classify(&Error::timeout("slow")).is_transient());
        assert!(classify(&Error::exhausted("gave up")).is_transient());
        assert!(classify(&Error::deser("garbage")).is_transient());
        assert!(!classify(&Error::ser("bad request")).is_transient());
    }

    #[test]
    fn long_service_texts_are_cut() {
        let e = classify(&service(Code::Internal, &"x".repeat(5000)));
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
    }

    /// The real gRPC transport against a closed port on 127.0.0.1: connection refused is
    /// transient.
    #[tokio::test]
    async fn connection_refused_is_transient() {
        crate::providers::tls::ensure_crypto_provider();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = google_cloud_storage::client::StorageControl::builder()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .unwrap();
        let err = client
            .get_bucket()
            .set_name("projects/_/buckets/some-bucket")
            .send()
            .await
            .unwrap_err();
        let mapped = classify(&err);
        assert!(mapped.is_transient(), "{err:?} -> {mapped}");
    }
}
