//! Classification of the SDK's errors and of finished operations.

use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_sql_v1::model::{
    Operation, database_instance::SqlInstanceState, operation::SqlOperationStatus,
};

use super::config::SUFFIX_ANNOTATION;
use crate::providers::ProviderError;

/// Name of the service in error messages.
pub const SERVICE: &str = "Cloud SQL";

/// The message of a permanent refusal because Cloud SQL still reserves `name`.
pub fn reserved_name_message(name: &str) -> String {
    format!(
        "Cloud SQL refuses the instance name {name}: it already exists in the project's \
         history (a deleted instance can reserve its name for up to a week) but cannot be read. \
         Give the tenant another name by setting the annotation \
         {SUFFIX_ANNOTATION}: \"2\" (or any other short lowercase suffix not used before)"
    )
}

/// The `errors[].reason` (or `ErrorInfo.reason`) of a Google error, if any.
fn error_reason(e: &google_cloud_sql_v1::Error) -> Option<&str> {
    e.status()?.details.iter().find_map(|d| match d {
        StatusDetails::ErrorInfo(info) if !info.reason.is_empty() => Some(info.reason.as_str()),
        _ => None,
    })
}

pub fn is_not_found(e: &google_cloud_sql_v1::Error) -> bool {
    e.http_status_code() == Some(404) || e.status().is_some_and(|s| s.code == Code::NotFound)
}

pub fn is_conflict(e: &google_cloud_sql_v1::Error) -> bool {
    e.http_status_code() == Some(409)
        || e.status()
            .is_some_and(|s| matches!(s.code, Code::AlreadyExists | Code::Aborted))
}

pub fn is_operation_in_progress(e: &google_cloud_sql_v1::Error) -> bool {
    error_reason(e) == Some("operationInProgress")
        || (is_conflict(e)
            && e.status()
                .is_some_and(|s| s.message.contains("another operation")))
}

/// Classifies an SDK error. `what` names the call ("get instance dt-acme"); `redact` is a
/// credential that must not appear in the message even if the service echoed it.
pub fn classify(what: &str, e: &google_cloud_sql_v1::Error, redact: Option<&str>) -> ProviderError {
    let scrub = |m: String| match redact {
        Some(s) if !s.is_empty() => m.replace(s, "[redacted]"),
        _ => m,
    };
    if is_operation_in_progress(e) {
        return ProviderError::Unavailable {
            service: SERVICE,
            message: format!("{what}: another operation is in progress on the instance"),
        };
    }
    if let Some(status) = e.status() {
        let message = scrub(format!("{what}: {}", status.message));
        if let Some(http) = e.http_status_code() {
            return ProviderError::from_status(SERVICE, http, message);
        }
        return match status.code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Aborted => ProviderError::Unavailable {
                service: SERVICE,
                message: format!("{}: {message}", status.code.name()),
            },
            _ => ProviderError::Refused {
                service: SERVICE,
                message: format!("{}: {message}", status.code.name()),
            },
        };
    }
    if let Some(http) = e.http_status_code() {
        // An answer without Google's error body (a proxy, a load balancer).
        return ProviderError::from_status(SERVICE, http, format!("{what}: no error details"));
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_io() || e.is_transport() {
        "request failed"
    } else if e.is_deserialization() {
        "answer could not be decoded"
    } else if e.is_authentication() {
        // The source may carry details of the credential; only its kind is reported.
        let transient = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        if transient {
            "credentials could not be obtained (transient)"
        } else {
            return ProviderError::Refused {
                service: SERVICE,
                message: format!("{what}: credentials could not be obtained"),
            };
        }
    } else {
        // Binding and serialization errors are bugs in the request, not outages.
        return ProviderError::Refused {
            service: SERVICE,
            message: format!("{what}: the request could not be built"),
        };
    };
    ProviderError::Unavailable {
        service: SERVICE,
        message: format!("{what}: {kind}"),
    }
}

/// Whether `op` finished; a finished operation that carries errors is a refusal.
pub fn operation_done(what: &str, op: &Operation) -> Result<bool, ProviderError> {
    if op.status != SqlOperationStatus::Done {
        return Ok(false);
    }
    match &op.error {
        Some(errs) if !errs.errors.is_empty() => Err(ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "{what}: operation {} failed: {}",
                op.name,
                errs.errors
                    .iter()
                    .map(|e| format!("{} {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
        _ => Ok(true),
    }
}

pub fn status_name(state: &SqlInstanceState) -> String {
    state.name().unwrap_or("UNKNOWN").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    #[test]
    fn reserved_name_message_says_what_to_do() {
        let m = reserved_name_message("dt-acme");
        assert!(m.contains("dt-acme"));
        assert!(
            m.contains(r#"dealerdesk.de/database-instance-suffix: "2""#),
            "{m}"
        );
    }

    #[test]
    fn sdk_errors_are_classified() {
        let svc = |code: Code, msg: &str| {
            google_cloud_sql_v1::Error::service(Status::default().set_code(code).set_message(msg))
        };
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert!(
                classify("x", &svc(code, "m"), None).is_transient(),
                "{code:?}"
            );
        }
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ] {
            let e = classify("get instance dt-a", &svc(code, "the API says no"), None);
            assert!(!e.is_transient(), "{code:?}");
            assert!(e.to_string().contains("the API says no"), "{e}");
            assert!(e.to_string().contains("get instance dt-a"), "{e}");
        }
        let e = classify(
            "set password",
            &svc(Code::InvalidArgument, "password hunter2hunter2 is weak"),
            Some("hunter2hunter2"),
        );
        assert!(!e.to_string().contains("hunter2hunter2"), "{e}");
        assert!(e.to_string().contains("[redacted]"), "{e}");
        // Another operation running: transient although it is a conflict.
        let e = classify(
            "patch",
            &svc(
                Code::Aborted,
                "Operation failed because another operation was already in progress.",
            ),
            None,
        );
        assert!(e.is_transient());
        let t = google_cloud_sql_v1::Error::timeout("deadline");
        assert!(classify("x", &t, None).is_transient());
    }
}
