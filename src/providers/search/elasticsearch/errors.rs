//! Classification of the service's answers into [`ProviderError`]s, with the service's own
//! `type: reason` and never a credential.

use serde_json::Value;

use super::SERVICE;
use super::client::{Answer, ElasticsearchProvider, OperatorCredential};
use crate::providers::ProviderError;

/// Longest service error text copied into a message.
const MAX_REASON: usize = 400;

/// The service's error type, e.g. `index_not_found_exception`.
pub fn error_type(body: &Value) -> Option<&str> {
    body.get("error")?.get("type")?.as_str()
}

/// `type: reason` from an Elasticsearch error body (`{"error": {...}, "status": N}`), or
/// the shortcut form where `error` is a string. Nothing else of the body is used.
pub fn describe_error(body: &Value) -> String {
    let text = match body.get("error") {
        Some(Value::Object(e)) => {
            let kind = e.get("type").and_then(Value::as_str).unwrap_or("error");
            match e.get("reason").and_then(Value::as_str) {
                Some(reason) if !reason.is_empty() => format!("{kind}: {reason}"),
                _ => kind.to_string(),
            }
        }
        Some(Value::String(s)) => s.clone(),
        _ => "no error details in the answer".to_string(),
    };
    truncate(&text, MAX_REASON)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Replaces every occurrence of a credential in `text`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*s, "<redacted>");
    }
    out
}

impl ElasticsearchProvider {
    /// The error for an answer that was not expected, classified by status, with the
    /// service's own `type: reason` and no credential.
    pub(super) fn failed(&self, what: &str, a: &Answer, also_hide: &[&str]) -> ProviderError {
        let mut message = format!("{what}: {}", describe_error(&a.body));
        if a.status == 400
            && message.contains("derived api keys")
            && matches!(self.credential, OperatorCredential::ApiKey(_))
        {
            message.push_str(
                " (the operator authenticates with an API key, and Elasticsearch lets an \
                 API key create only keys without privileges; set search.username and \
                 search.passwordEnv or search.passwordFile for a user with manage_security)",
            );
        }
        let forms = self.credential.secret_forms();
        let mut hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        hide.extend_from_slice(also_hide);
        ProviderError::from_status(SERVICE, a.status, scrub(&message, &hide))
    }

    pub(super) fn bad_answer(&self, what: &str) -> ProviderError {
        ProviderError::Unavailable {
            service: SERVICE,
            message: format!("{what}: unexpected answer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::json;

    #[test]
    fn errors_are_described_from_type_and_reason_only() {
        let body = json!({"error": {"root_cause": [], "type": "index_not_found_exception",
            "reason": "no such index [dt-a]", "index": "dt-a"}, "status": 404});
        assert_eq!(error_type(&body), Some("index_not_found_exception"));
        assert_eq!(
            describe_error(&body),
            "index_not_found_exception: no such index [dt-a]"
        );
        let null_reason = json!({"error": {"type": "master_not_discovered_exception",
            "reason": null}, "status": 503});
        assert_eq!(
            describe_error(&null_reason),
            "master_not_discovered_exception"
        );
        assert_eq!(
            describe_error(&json!({"error": "Incorrect HTTP method"})),
            "Incorrect HTTP method"
        );
        assert_eq!(
            describe_error(&Value::Null),
            "no error details in the answer"
        );
        let long = json!({"error": {"type": "x", "reason": "é".repeat(500)}});
        assert!(describe_error(&long).len() <= MAX_REASON + "…".len());
        assert_eq!(scrub("key s3cr3t here", &["s3cr3t"]), "key <redacted> here");
    }

    #[test]
    fn every_form_of_the_credential_is_scrubbed() {
        let b = OperatorCredential::Basic {
            username: "op".into(),
            password: "hunter2!".into(),
        };
        let header = format!("Basic {}", BASE64.encode("op:hunter2!"));
        let forms = b.secret_forms();
        let hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        let text = scrub(&format!("got [{header}] and hunter2!"), &hide);
        assert!(
            !text.contains("hunter2!") && !text.contains(&header[6..]),
            "{text}"
        );

        let encoded = BASE64.encode("keyid:keysecret123");
        let k = OperatorCredential::ApiKey(encoded.clone());
        let forms = k.secret_forms();
        let hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        let text = scrub(&format!("ApiKey {encoded} / keysecret123"), &hide);
        assert!(
            !text.contains(&encoded) && !text.contains("keysecret123"),
            "{text}"
        );
    }
}
