//! Classification of the SDK's errors. Cloud Storage's gRPC API answers with the canonical
//! codes (<https://cloud.google.com/storage/docs/retry-strategy>: retry UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, INTERNAL); everything the service refuses for
//! good (PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION, ...) needs a person.
//! Messages carry the code and the service's own text, never request data or URLs.

use google_cloud_gax::error::CredentialsError;
use google_cloud_gax::error::rpc::Code;
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
