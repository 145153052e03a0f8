//! Classification of Postmark's answers (status codes and error codes from
//! <https://postmarkapp.com/developer/api/overview>).

use reqwest::StatusCode;
use serde::Deserialize;

use super::SERVICE;
use crate::providers::ProviderError;

/// Postmark API error codes this provider acts on
/// (<https://postmarkapp.com/developer/api/overview#error-codes>).
pub mod error_codes {
    /// Bad or missing API token (with HTTP 401).
    pub const BAD_TOKEN: i64 = 10;
    /// Server does not exist.
    pub const SERVER_NOT_FOUND: i64 = 601;
    /// Duplicate Inbound Domain: the inbound domain is already in use on Postmark (inbound
    /// domains are unique across all Postmark accounts).
    pub const DUPLICATE_INBOUND_DOMAIN: i64 = 602;
    /// Server name already exists.
    pub const DUPLICATE_NAME: i64 = 603;
    /// You don't have delete access: server deletion through the API is off for the
    /// account until Postmark support enables it.
    pub const NO_DELETE_ACCESS: i64 = 604;
    /// Invalid MX record for Inbound Domain: the domain has no MX record pointing to
    /// `inbound.postmarkapp.com`.
    pub const INBOUND_DOMAIN_MX: i64 = 610;
}

/// `StandardPostmarkResponse`: Postmark's error body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// What a request was for: decides how some statuses are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    List,
    Create,
    Get,
    Edit,
    Delete,
}

/// `ErrorCode N: Message` from Postmark's error body, or a short cleaned excerpt of a body
/// that is not one, or the status's reason phrase.
fn describe(status: u16, body: &[u8]) -> (Option<i64>, String) {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body)
        && (e.error_code.is_some() || e.message.is_some())
    {
        let text = match (e.error_code, e.message) {
            (Some(code), Some(m)) => format!("ErrorCode {code}: {}", clean(&m)),
            (Some(code), None) => format!("ErrorCode {code}"),
            (None, Some(m)) => clean(&m),
            (None, None) => unreachable!(),
        };
        return (e.error_code, text);
    }
    let text = clean(&String::from_utf8_lossy(body));
    if text.is_empty() {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message");
        (None, reason.to_string())
    } else {
        (None, text)
    }
}

/// One line, at most 300 characters.
fn clean(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    match trimmed.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed.to_string(),
    }
}

/// Whether an answer says the server does not exist (404, or 422 with ErrorCode 601).
pub fn is_not_found(status: u16, body: &[u8]) -> bool {
    status == 404
        || (status == 422 && describe(status, body).0 == Some(error_codes::SERVER_NOT_FOUND))
}

/// Whether an answer is Postmark's duplicate server name error (422, ErrorCode 603).
pub fn is_duplicate_name(status: u16, body: &[u8]) -> bool {
    status == 422 && describe(status, body).0 == Some(error_codes::DUPLICATE_NAME)
}

/// Whether an answer is Postmark refusing an inbound domain (422 with ErrorCode 602 or
/// 610): the error code and Postmark's text.
pub fn inbound_domain_refusal(status: u16, body: &[u8]) -> Option<(i64, String)> {
    if status != 422 {
        return None;
    }
    match describe(status, body) {
        (Some(code), text)
            if code == error_codes::DUPLICATE_INBOUND_DOMAIN
                || code == error_codes::INBOUND_DOMAIN_MX =>
        {
            Some((code, text))
        }
        _ => None,
    }
}

/// Pure: the condition message for an inbound domain Postmark refused (`code`, `text` from
/// [`inbound_domain_refusal`]): what is wrong and what a person does about it.
pub fn inbound_domain_problem(domain: &str, code: i64, text: &str) -> String {
    let todo = if code == error_codes::INBOUND_DOMAIN_MX {
        format!("add an MX record for {domain} pointing to inbound.postmarkapp.com (priority 10)")
    } else {
        format!(
            "{domain} is the inbound domain of another Postmark server (inbound domains are \
             unique across Postmark): remove it there, or change email.postmark.inboundDomain"
        )
    };
    format!(
        "inbound domain {domain} not set, Postmark refused it ({text}): {todo}; the operator \
         sets it on a later pass once Postmark accepts it"
    )
}

/// Pure: the error for a non-success answer. Messages carry the status and Postmark's own
/// error code and text, never a request's headers, body or URL.
pub fn classify(op: Operation, status: u16, body: &[u8]) -> ProviderError {
    let (code, text) = describe(status, body);
    if status == 401 {
        return ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "HTTP 401: Postmark rejected the account token ({text}); check the token \
                 given by email.postmark.accountTokenFile or the variable named by \
                 email.postmark.accountTokenEnv"
            ),
        };
    }
    if op == Operation::Delete
        && (status == 403 || (status == 422 && code == Some(error_codes::NO_DELETE_ACCESS)))
    {
        return ProviderError::DeletionBlocked {
            service: SERVICE,
            message: format!(
                "HTTP {status}: {text}. Postmark deletes servers through the API only after \
                 its support has enabled server deletion for the account: ask Postmark \
                 support (support@postmarkapp.com) to enable the DELETE server API, and \
                 deletion resumes by itself; or abandon the component with the annotation \
                 `dealerdesk.de/abandon: email` on the DealerTenant (the server is then kept \
                 and has to be removed by hand in Postmark)"
            ),
        };
    }
    ProviderError::from_status(SERVICE, status, text)
}

/// Replaces every occurrence of `secret` in the error's message (defence in depth: no
/// Postmark answer is known to echo a token).
pub(super) fn scrub(err: ProviderError, secret: &str) -> ProviderError {
    if secret.is_empty() {
        return err;
    }
    let s = |m: String| m.replace(secret, "<redacted>");
    match err {
        ProviderError::Unavailable { service, message } => ProviderError::Unavailable {
            service,
            message: s(message),
        },
        ProviderError::Refused { service, message } => ProviderError::Refused {
            service,
            message: s(message),
        },
        ProviderError::NotConfigured { service, message } => ProviderError::NotConfigured {
            service,
            message: s(message),
        },
        ProviderError::DeletionBlocked { service, message } => ProviderError::DeletionBlocked {
            service,
            message: s(message),
        },
        ProviderError::Foreign { service, message } => ProviderError::Foreign {
            service,
            message: s(message),
        },
        ProviderError::OperationFailed { service, message } => ProviderError::OperationFailed {
            service,
            message: s(message),
        },
        other @ ProviderError::Residency { .. } => other,
    }
}

pub(super) fn not_configured(message: impl Into<String>) -> ProviderError {
    ProviderError::NotConfigured {
        service: SERVICE,
        message: message.into(),
    }
}

pub(super) fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::Refused {
        service: SERVICE,
        message: message.into(),
    }
}

/// A non-success answer, unclassified.
pub(super) struct RawError {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl RawError {
    pub(super) fn into_error(self, op: Operation, token: &str) -> ProviderError {
        scrub(classify(op, self.status, &self.body), token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e422 = |code: i64, m: &str| {
            serde_json::to_vec(&serde_json::json!({"ErrorCode": code, "Message": m})).unwrap()
        };
        let dup = classify(
            Operation::Create,
            422,
            &e422(603, "Server name already exists."),
        );
        assert!(!dup.is_transient());
        assert!(
            dup.to_string()
                .contains("ErrorCode 603: Server name already exists.")
        );
        assert!(is_duplicate_name(422, &e422(603, "x")));
        assert!(!is_duplicate_name(422, &e422(601, "x")));
        assert!(is_not_found(422, &e422(601, "Server does not exist.")));
        assert!(is_not_found(404, b""));
        assert!(!is_not_found(422, &e422(603, "x")));

        let auth = classify(Operation::List, 401, &e422(10, "Bad or missing API token"));
        assert_eq!(auth.reason(), "ProviderRefused");
        assert!(auth.to_string().contains("account token"));

        let blocked = classify(
            Operation::Delete,
            422,
            &e422(604, "You don't have delete access"),
        );
        assert_eq!(blocked.reason(), "DeletionBlocked");
        let m = blocked.to_string();
        assert!(m.contains("support") && m.contains("dealerdesk.de/abandon: email"));
        // The same code outside a delete is just a refusal.
        assert_eq!(
            classify(Operation::Edit, 422, &e422(604, "x")).reason(),
            "ProviderRefused"
        );
        assert_eq!(
            classify(Operation::Delete, 403, b"").reason(),
            "DeletionBlocked"
        );

        for s in [429u16, 500, 502, 503, 504] {
            assert!(classify(Operation::List, s, b"").is_transient(), "{s}");
        }
        let html = classify(Operation::List, 502, b"<html>\n bad gateway \n</html>");
        assert!(!html.to_string().contains('\n'));
        let long = classify(Operation::List, 500, "x".repeat(5000).as_bytes());
        assert!(long.to_string().len() < 400);
    }

    #[test]
    fn inbound_domain_refusals_are_recognised() {
        let e422 = |code: i64| {
            serde_json::to_vec(&serde_json::json!({"ErrorCode": code, "Message": "no"})).unwrap()
        };
        assert_eq!(inbound_domain_refusal(422, &e422(610)).unwrap().0, 610);
        assert_eq!(inbound_domain_refusal(422, &e422(602)).unwrap().0, 602);
        assert!(inbound_domain_refusal(422, &e422(603)).is_none());
        assert!(inbound_domain_refusal(500, &e422(610)).is_none());
        let mx = inbound_domain_problem("a.in.example", 610, "ErrorCode 610: x");
        assert!(
            mx.contains("MX record for a.in.example") && mx.contains("inbound.postmarkapp.com")
        );
        let dup = inbound_domain_problem("a.in.example", 602, "ErrorCode 602: x");
        assert!(dup.contains("another Postmark server") && dup.contains("inboundDomain"));
    }

    #[test]
    fn messages_are_scrubbed_of_the_token() {
        let e = classify(
            Operation::List,
            422,
            br#"{"ErrorCode":1,"Message":"echo s3cr3t"}"#,
        );
        let e = scrub(e, "s3cr3t");
        assert!(!e.to_string().contains("s3cr3t"));
        assert!(e.to_string().contains("<redacted>"));
    }
}
