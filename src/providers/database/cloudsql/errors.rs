//! Classification of the SDK's errors and of finished operations.

use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_sql_v1::model::{
    Operation,
    database_instance::SqlInstanceState,
    operation::{SqlOperationStatus, SqlOperationType},
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

/// How long a request whose operation failed is held back, counted from the end of that
/// operation: a doomed write is not repeated on every pass (nor its error hidden behind a
/// new attempt that runs), and a cause fixed meanwhile (a quota, a setting) is retried
/// without a person.
pub const HOLD_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(600);

/// The errors a finished operation carries, in Cloud SQL's words (`code: message; ...`);
/// `None` when it succeeded or has not finished.
pub fn operation_errors(op: &Operation) -> Option<String> {
    if op.status != SqlOperationStatus::Done {
        return None;
    }
    let errs = op.error.as_ref().filter(|e| !e.errors.is_empty())?;
    Some(
        errs.errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Whether `op` finished; a finished operation that carries errors is `OperationFailed`.
pub fn operation_done(what: &str, op: &Operation) -> Result<bool, ProviderError> {
    if op.status != SqlOperationStatus::Done {
        return Ok(false);
    }
    match operation_errors(op) {
        Some(errors) => Err(ProviderError::OperationFailed {
            service: SERVICE,
            message: format!("{what}: operation {} failed: {errors}", op.name),
        }),
        None => Ok(true),
    }
}

/// A failed operation that holds back the request of its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBack {
    /// The operation's name.
    pub operation: String,
    /// Cloud SQL's errors, as [`operation_errors`] words them.
    pub errors: String,
    /// When it ended.
    pub ended: jiff::Timestamp,
    /// When the request may be sent again.
    pub until: jiff::Timestamp,
}

impl HeldBack {
    /// The condition's message for the request `what` (e.g. `update settings of instance
    /// dt-acme`).
    pub fn message(&self, what: &str) -> String {
        format!(
            "{what} failed (operation {}, ended {}): {}; not sent again before {}",
            self.operation,
            rfc3339(self.ended),
            self.errors,
            rfc3339(self.until)
        )
    }
}

/// `ts` to the second, as RFC 3339 in UTC.
pub fn rfc3339(ts: jiff::Timestamp) -> String {
    ts.round(jiff::Unit::Second).unwrap_or(ts).to_string()
}

/// A timestamp of the API as a `jiff` one.
pub fn timestamp(ts: Option<&google_cloud_wkt::Timestamp>) -> Option<jiff::Timestamp> {
    ts.and_then(|t| jiff::Timestamp::new(t.seconds(), t.nanos()).ok())
}

/// The first operation in `ops` that is still pending or running.
pub fn running(ops: &[Operation]) -> Option<&Operation> {
    ops.iter().find(|op| {
        matches!(
            op.status,
            SqlOperationStatus::Pending | SqlOperationStatus::Running
        )
    })
}

/// The newest operation of type `kind` in `ops`: by insert time, and among equal (or
/// missing) times the one listed first (`operations.list` answers newest first).
pub fn latest<'a>(ops: &'a [Operation], kind: &SqlOperationType) -> Option<&'a Operation> {
    ops.iter().filter(|o| &o.operation_type == kind).fold(
        None::<&Operation>,
        |best, o| match best {
            Some(b) if timestamp(o.insert_time.as_ref()) <= timestamp(b.insert_time.as_ref()) => {
                Some(b)
            }
            _ => Some(o),
        },
    )
}

/// Whether the latest operation of type `kind` among `ops` (as `operations.list` answers,
/// newest first) failed less than [`HOLD_AFTER_FAILURE`] before `now`. Stateless: the
/// operations are Cloud SQL's record of what was asked and how it ended.
pub fn held_back(
    ops: &[Operation],
    kind: &SqlOperationType,
    now: jiff::Timestamp,
) -> Option<HeldBack> {
    let latest = latest(ops, kind)?;
    let errors = operation_errors(latest)?;
    let ended = timestamp(latest.end_time.as_ref())
        .or_else(|| timestamp(latest.insert_time.as_ref()))
        .unwrap_or(now);
    let hold = jiff::SignedDuration::try_from(HOLD_AFTER_FAILURE).unwrap_or_default();
    let until = ended.checked_add(hold).unwrap_or(ended);
    (now < until).then(|| HeldBack {
        operation: latest.name.clone(),
        errors,
        ended,
        until,
    })
}

pub fn status_name(state: &SqlInstanceState) -> String {
    state.name().unwrap_or("UNKNOWN").to_string()
}

/// `days` whole days after `ts`.
pub fn days_after(ts: jiff::Timestamp, days: u32) -> jiff::Timestamp {
    let span = jiff::SignedDuration::from_hours(24 * i64::from(days));
    ts.checked_add(span).unwrap_or(ts)
}

/// The message of an operation error, without the service prefix (the pass reports it
/// under its own).
pub fn failure_text(e: ProviderError) -> String {
    match e {
        ProviderError::OperationFailed { message, .. } => message,
        other => other.to_string(),
    }
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

    fn op(name: &str, kind: SqlOperationType, minutes_ago: i64, error: Option<&str>) -> Operation {
        use google_cloud_sql_v1::model::{OperationError, OperationErrors};
        let at = |m: i64| {
            let ts = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(m);
            google_cloud_wkt::Timestamp::clamp(ts.as_second(), 0)
        };
        let mut o = Operation::new();
        o.name = name.into();
        o.operation_type = kind;
        o.status = SqlOperationStatus::Done;
        o.insert_time = Some(at(minutes_ago + 1));
        o.end_time = Some(at(minutes_ago));
        if let Some(m) = error {
            let mut e = OperationError::new();
            e.code = "INTERNAL_ERROR".into();
            e.message = m.into();
            let mut errs = OperationErrors::new();
            errs.errors = vec![e];
            o.error = Some(errs);
        }
        o
    }

    #[test]
    fn only_a_recent_failure_of_the_latest_operation_holds_a_request_back() {
        let now = jiff::Timestamp::now();
        let update = SqlOperationType::Update;
        // Newest first, as operations.list answers.
        let ops = [
            op("op-3", SqlOperationType::CreateUser, 1, None),
            op("op-2", update.clone(), 2, Some("it broke")),
            op("op-1", update.clone(), 30, None),
        ];
        let h = held_back(&ops, &update, now).unwrap();
        assert_eq!(h.operation, "op-2");
        assert_eq!(h.errors, "INTERNAL_ERROR: it broke");
        let m = h.message("update settings of instance dt-a");
        assert!(
            m.contains("op-2") && m.contains("not sent again before"),
            "{m}"
        );
        assert_eq!(held_back(&ops, &SqlOperationType::CreateUser, now), None);
        assert_eq!(
            held_back(&ops, &SqlOperationType::CreateDatabase, now),
            None
        );
        // A later success lifts it; so does time.
        let mut later = vec![op("op-4", update.clone(), 1, None)];
        later.extend(ops.iter().cloned());
        assert_eq!(held_back(&later, &update, now), None);
        let old = [op("op-2", update.clone(), 11, Some("it broke"))];
        assert_eq!(held_back(&old, &update, now), None);
        // Still running: not a failure (the running operation is waited for instead).
        let mut running_op = op("op-5", update.clone(), 0, None);
        running_op.status = SqlOperationStatus::Running;
        assert!(running(std::slice::from_ref(&running_op)).is_some());
        assert_eq!(held_back(&[running_op], &update, now), None);
        // An operation that failed at once is OperationFailed, with the service's words.
        let e = operation_done("patch", &ops[1]).unwrap_err();
        assert_eq!(e.reason(), "OperationFailed");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("INTERNAL_ERROR: it broke"), "{e}");
    }
}
