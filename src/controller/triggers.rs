//! Which changes of an owned object start a pass: what the reconciler decides on, not
//! status churn. A Deployment's status is rewritten by its controller many times (condition
//! times, replica counts of old ReplicaSets), a ResourceQuota's with every Pod; a pass is
//! only worth it when the spec, labels, annotations or owners changed (drift to repair), or
//! the few status fields the conditions are built from.

use std::hash::{Hash, Hasher};

use serde::Serialize;
use serde_json::Value;

/// Status fields the reconciler reads, by kind.
fn read_status(kind: &str) -> &'static [&'static str] {
    match kind {
        "Deployment" => &["observedGeneration", "availableReplicas", "updatedReplicas"],
        "Namespace" => &["phase"],
        _ => &[],
    }
}

/// A hash of everything about `obj` that a pass decides on; `None` if it cannot be read
/// (then every change triggers, as without a filter).
pub fn decides_on<K: Serialize>(obj: &K) -> Option<u64> {
    fingerprints(obj).map(|f| f.trigger)
}

/// Two hashes of an owned object, taken when a watch delivers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// Everything but the status, the resourceVersion and others' annotations: what a
    /// comparison with the desired object can look at. When it is unchanged since the
    /// object was last found to be as applied, it still is.
    pub content: u64,
    /// The content and the status fields the reconciler reads ([`decides_on`]).
    pub trigger: u64,
}

/// The [`Fingerprints`] of `obj`; `None` if it cannot be serialized.
pub fn fingerprints<K: Serialize>(obj: &K) -> Option<Fingerprints> {
    let mut v = serde_json::to_value(obj).ok()?;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let map = v.as_object_mut()?;
    let status = map.remove("status");
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        // Annotations others set (the Deployment controller's revision) are not the
        // operator's business; its own (`dealerdesk.de/...`, the applied digest) are.
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.retain(|k, _| k.starts_with("dealerdesk.de/"));
        }
        // Only whether it is being deleted matters, not the grace period ticking down.
        if let Some(ts) = meta.get_mut("deletionTimestamp") {
            *ts = Value::Bool(true);
        }
        meta.remove("deletionGracePeriodSeconds");
    }
    let content = hash(&serde_json::to_string(&v).ok()?);
    let kept: serde_json::Map<String, Value> = read_status(&kind)
        .iter()
        .filter_map(|f| {
            status
                .as_ref()
                .and_then(|s| s.get(*f))
                .map(|x| (f.to_string(), x.clone()))
        })
        .collect();
    let trigger = hash(&(content, serde_json::to_string(&kept).ok()?));
    Some(Fingerprints { content, trigger })
}

fn hash<T: Hash + ?Sized>(t: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_churn_does_not_count_but_what_is_read_does() {
        let d = |rv: &str, status: Value| {
            json!({"kind": "Deployment", "metadata": {"name": "server", "resourceVersion": rv},
                   "spec": {"replicas": 0}, "status": status})
        };
        let a = d(
            "1",
            json!({"observedGeneration": 1, "conditions": [{"lastUpdateTime": "t1"}]}),
        );
        let b = d(
            "2",
            json!({"observedGeneration": 1, "conditions": [{"lastUpdateTime": "t2"}]}),
        );
        let c = d("3", json!({"observedGeneration": 2}));
        assert_eq!(decides_on(&a), decides_on(&b));
        assert_ne!(decides_on(&a), decides_on(&c));
    }

    #[test]
    fn only_the_operators_own_annotations_count() {
        let d = |annotations: Value| json!({"kind": "Deployment", "metadata": {"name": "server", "annotations": annotations}});
        let ours = d(json!({"dealerdesk.de/applied-hash": "a"}));
        let revised =
            d(json!({"dealerdesk.de/applied-hash": "a", "deployment.kubernetes.io/revision": "1"}));
        assert_eq!(decides_on(&ours), decides_on(&revised));
        assert_ne!(
            decides_on(&ours),
            decides_on(&d(json!({"dealerdesk.de/applied-hash": "b"})))
        );
    }

    #[test]
    fn spec_labels_and_deletion_count() {
        let q = |spec: Value, labels: Value| {
            json!({"kind": "ResourceQuota", "metadata": {"name": "q", "labels": labels},
                   "spec": spec, "status": {"used": {"pods": "3"}}})
        };
        let base = q(json!({"hard": {"pods": "30"}}), json!({"a": "1"}));
        let mut used = base.clone();
        used["status"]["used"]["pods"] = json!("4");
        assert_eq!(decides_on(&base), decides_on(&used));
        assert_ne!(
            decides_on(&base),
            decides_on(&q(json!({"hard": {"pods": "31"}}), json!({"a": "1"})))
        );
        assert_ne!(
            decides_on(&base),
            decides_on(&q(json!({"hard": {"pods": "30"}}), json!({"a": "2"})))
        );
        let mut deleting = base.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_ne!(decides_on(&base), decides_on(&deleting));
    }

    #[test]
    fn content_ignores_status_and_others_annotations_but_not_spec_or_ours() {
        let d = |replicas: i64, annotations: Value, status: Value| {
            json!({"kind": "Deployment", "metadata": {"name": "server", "resourceVersion": "1",
                   "annotations": annotations}, "spec": {"replicas": replicas}, "status": status})
        };
        let ours = json!({"dealerdesk.de/applied-hash": "a"});
        let base = fingerprints(&d(0, ours.clone(), json!({"observedGeneration": 1}))).unwrap();
        let rolled = fingerprints(&d(
            0,
            json!({"dealerdesk.de/applied-hash": "a", "deployment.kubernetes.io/revision": "2"}),
            json!({"observedGeneration": 2}),
        ))
        .unwrap();
        assert_eq!(base.content, rolled.content);
        assert_ne!(base.trigger, rolled.trigger);
        let scaled = fingerprints(&d(3, ours, json!({"observedGeneration": 1}))).unwrap();
        assert_ne!(base.content, scaled.content);
        let restamped = fingerprints(&d(
            0,
            json!({"dealerdesk.de/applied-hash": "b"}),
            json!({"observedGeneration": 1}),
        ))
        .unwrap();
        assert_ne!(base.content, restamped.content);
    }
}
