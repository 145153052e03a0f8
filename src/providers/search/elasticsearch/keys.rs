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

/// What to do with the tenant's valid keys, given the ID of the one its Secret holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyJudgement {
    /// The held key, when it may be kept (whether its secret authenticates is still to be
    /// checked at the service).
    pub candidate: Option<String>,
    /// Keys that must stop working now: wider than the tenant's index, bound to another
    /// tenant UID, or, on adoption, every key of the name (the retained tenant's too).
    pub revoke_now: Vec<String>,
    /// The other sound keys: the one a rotation replaced, which running Pods may still
    /// use, or one a pass created and crashed before handing over. They are retired only
    /// after the server has rolled out with the Secret's key.
    pub retire_later: Vec<String>,
}

/// Sorts the valid keys of the tenant's name (`active`) into the one to keep, the ones to
/// revoke at once and the ones to retire after the rollout. A key is sound when it is
/// limited to `index` and not bound to a tenant UID other than `uid`; on adoption
/// (`reissue`) none is.
pub fn judge_keys(
    active: &[KeyInfo],
    held_id: Option<&str>,
    index: &str,
    uid: &str,
    reissue: bool,
) -> KeyJudgement {
    let mut out = KeyJudgement::default();
    for key in active {
        let sound = !reissue && key.limited_to(index) && !key.bound_elsewhere(uid);
        if !sound {
            out.revoke_now.push(key.id.clone());
        } else if Some(key.id.as_str()) == held_id {
            out.candidate = Some(key.id.clone());
        } else {
            out.retire_later.push(key.id.clone());
        }
    }
    out
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

    fn key(id: &str, descriptors: Value, uid: &str) -> KeyInfo {
        KeyInfo {
            id: id.into(),
            name: "dt-a".into(),
            invalidated: false,
            expiration: None,
            role_descriptors: Some(descriptors),
            metadata: Some(json!({ UID_META: uid })),
        }
    }

    #[test]
    fn a_rotation_keeps_the_replaced_key_for_later_and_revokes_only_unsafe_ones() {
        let narrow = json!({"dt-a": reported(tenant_descriptor("dt-a"))});
        let keys = [
            key("old", narrow.clone(), "u1"),
            key("held", narrow.clone(), "u1"),
            key("wide", json!({}), "u1"),
            key("foreign", narrow.clone(), "u2"),
        ];
        // The Secret holds `held`: kept; `old` (the key it replaced) only later.
        let j = judge_keys(&keys, Some("held"), "dt-a", "u1", false);
        assert_eq!(j.candidate.as_deref(), Some("held"));
        assert_eq!(j.retire_later, ["old"]);
        assert_eq!(j.revoke_now, ["wide", "foreign"]);
        // No Secret (a deleted Secret asks for a rotation): nothing sound is revoked now.
        let j = judge_keys(&keys, None, "dt-a", "u1", false);
        assert_eq!(j.candidate, None);
        assert_eq!(j.retire_later, ["old", "held"]);
        assert_eq!(j.revoke_now, ["wide", "foreign"]);
        // Adoption: the retained tenant's keys stop working at once.
        let j = judge_keys(&keys, Some("held"), "dt-a", "u1", true);
        assert_eq!(j.candidate, None);
        assert!(j.retire_later.is_empty());
        assert_eq!(j.revoke_now.len(), 4);
    }
}
