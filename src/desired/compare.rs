//! Is what the cluster has already what we want? Desired objects name only the fields the
//! operator owns; the API server adds defaults, status and metadata around them. So an
//! object is up to date when every field of the desired object holds the same value in
//! the observed one. Quantities compare by amount ("1024Mi" is "1Gi").

use serde_json::Value;

use super::quantity;

/// True when every field set in `desired` holds an equal value in `observed`.
pub fn is_satisfied(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => is_satisfied(w, h),
            None => is_empty(w),
        }),
        (Value::Object(want), Value::Null) => want.values().all(is_empty),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_satisfied(w, h))
        }
        (Value::Array(want), Value::Null) => want.is_empty(),
        (Value::String(w), Value::String(h)) => w == h || quantity::same_amount(w, h),
        (Value::Null, _) => true,
        (w, h) => w == h,
    }
}

/// `{}`, `[]` and null ask for nothing the server must keep.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_and_extra_fields_do_not_count() {
        let want =
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}});
        let have = json!({
            "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "kubernetes.io/metadata.name": "a"}},
            "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate"}},
            "status": {"replicas": 0}
        });
        assert!(is_satisfied(&want, &have));
    }

    #[test]
    fn a_changed_or_missing_field_counts() {
        let want = json!({"spec": {"replicas": 2, "image": "a"}});
        assert!(!is_satisfied(
            &want,
            &json!({"spec": {"replicas": 1, "image": "a"}})
        ));
        assert!(!is_satisfied(&want, &json!({"spec": {"replicas": 2}})));
        assert!(!is_satisfied(&json!({"l": [1, 2]}), &json!({"l": [1]})));
        assert!(!is_satisfied(
            &json!({"l": [{"a": 1}]}),
            &json!({"l": [{"a": 2}]})
        ));
    }

    #[test]
    fn quantities_compare_by_amount_and_empty_matches_absent() {
        assert!(is_satisfied(
            &json!({"cpu": "1000m", "mem": "1024Mi"}),
            &json!({"cpu": "1", "mem": "1Gi"})
        ));
        assert!(!is_satisfied(&json!({"cpu": "2"}), &json!({"cpu": "1"})));
        assert!(is_satisfied(
            &json!({"a": {}, "b": [], "c": null}),
            &json!({})
        ));
        assert!(!is_satisfied(&json!({"a": false}), &json!({})));
    }
}
