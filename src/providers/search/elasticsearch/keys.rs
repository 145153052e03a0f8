//! The tenant's API keys as Elasticsearch lists them, and which of them to keep.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::UID_META;
use super::desired::grants_exactly;

/// One entry of `GET /_security/api_key`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub invalidated: bool,
    /// Milliseconds since the epoch, when the key expires.
    pub expiration: Option<i64>,
    /// Reported by Elasticsearch 8.5 and later.
    pub role_descriptors: Option<Value>,
    /// Reported by Elasticsearch 7.13 and later.
    pub metadata: Option<Value>,
}

impl KeyInfo {
    /// Valid for authentication at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        !self.invalidated && self.expiration.is_none_or(|e| e > now_ms)
    }

    /// Whether the key is limited to the tenant's index (unknown counts as yes: older
    /// versions do not report descriptors). An empty map would mean "everything the
    /// creator may do", which is drift.
    pub fn limited_to(&self, index: &str) -> bool {
        match &self.role_descriptors {
            None | Some(Value::Null) => true,
            Some(Value::Object(m)) => m.len() == 1 && m.values().all(|d| grants_exactly(d, index)),
            Some(_) => false,
        }
    }

    /// Whether the key's metadata names a tenant UID other than `uid` (a key without one,
    /// issued by an earlier version or reported by an older service, is not).
    pub fn bound_elsewhere(&self, uid: &str) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get(UID_META))
            .and_then(Value::as_str)
            .is_some_and(|u| u != uid)
    }
}

/// Parses `{"api_keys": [...]}`.
pub fn parse_keys(body: &Value) -> Vec<KeyInfo> {
    body.get("api_keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| {
                    Some(KeyInfo {
                        id: k.get("id")?.as_str()?.to_string(),
                        name: k.get("name")?.as_str()?.to_string(),
                        invalidated: k.get("invalidated").and_then(Value::as_bool) == Some(true),
                        expiration: k.get("expiration").and_then(Value::as_i64),
                        role_descriptors: k.get("role_descriptors").cloned(),
                        metadata: k.get("metadata").cloned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::search::elasticsearch::desired::tests::reported;
    use crate::providers::search::elasticsearch::tenant_descriptor;
    use serde_json::json;

    #[test]
    fn keys_are_parsed_and_judged() {
        let body = json!({"api_keys": [
            {"id": "k1", "name": "dt-a", "creation": 1, "invalidated": false,
             "role_descriptors": {"dt-a": reported(tenant_descriptor("dt-a"))}},
            {"id": "k2", "name": "dt-a", "creation": 1, "invalidated": true},
            {"id": "k3", "name": "dt-a", "creation": 1, "invalidated": false, "expiration": 5},
            {"id": "k4", "name": "dt-a", "invalidated": false, "role_descriptors": {}},
            {"name": "no-id"}
        ]});
        let keys = parse_keys(&body);
        assert_eq!(keys.len(), 4);
        let active: Vec<_> = keys
            .iter()
            .filter(|k| k.active(10))
            .map(|k| &k.id)
            .collect();
        assert_eq!(active, ["k1", "k4"]);
        assert!(keys[2].active(4));
        assert!(keys[0].limited_to("dt-a"));
        assert!(!keys[0].limited_to("dt-b"));
        assert!(
            keys[1].limited_to("dt-a"),
            "not reported: unknown counts as limited"
        );
        assert!(
            !keys[3].limited_to("dt-a"),
            "empty descriptors = creator's rights"
        );
        assert!(parse_keys(&json!({})).is_empty());
        let bound = parse_keys(&json!({"api_keys": [
            {"id": "k5", "name": "dt-a", "metadata": {UID_META: "u1"}},
            {"id": "k6", "name": "dt-a", "metadata": {}}
        ]}));
        assert!(!bound[0].bound_elsewhere("u1"));
        assert!(bound[0].bound_elsewhere("u2"));
        assert!(
            !bound[1].bound_elsewhere("u2"),
            "no UID: an earlier version's key"
        );
    }
}
