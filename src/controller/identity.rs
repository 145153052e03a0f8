//! Whose data is this? Names are reused, UIDs are not: the tenant namespace (and the
//! Secrets in it) carry the UID of the tenant they were created for, and a tenant only
//! uses a namespace that carries its own UID. Pure functions; the reconciler reads the
//! namespace and acts on the answer.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;

use crate::desired::names;

/// What the namespace `tenant-<name>` means for the tenant with UID `uid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No such namespace: the tenant may create it.
    Free,
    /// The namespace is this tenant's.
    Ours,
    /// The namespace holds data retained from the tenant with UID `from`, and this tenant
    /// asked to take it over (annotation `dealerdesk.de/adopt-retained: <from>`).
    Adopt { from: String },
    /// The namespace is being deleted (by an earlier tenant's erasure, or by hand).
    Terminating,
    /// The namespace belongs to someone else: a tenant of the same name that was deleted
    /// under `Retain` (`owner` is its UID, when known), or something the operator does
    /// not manage. This tenant must not touch it.
    Foreign {
        owner: Option<String>,
        retained: bool,
    },
}

/// The UID a namespace is bound to: its label, or on a namespace retained by an earlier
/// version of the operator, the `retained-from-uid` annotation.
pub fn owner_uid(ns: &Namespace) -> Option<String> {
    ns.labels()
        .get(names::TENANT_UID_LABEL)
        .or_else(|| ns.annotations().get(names::RETAINED_FROM_ANNOTATION))
        .filter(|u| !u.is_empty())
        .cloned()
}

/// Whether the namespace is marked as retained data of a deleted tenant.
pub fn is_retained(ns: &Namespace) -> bool {
    ns.labels()
        .get(names::RETAINED_LABEL)
        .is_some_and(|v| v == "true")
}

/// Decides what the tenant (`uid`, asking to adopt `adopt` if set) may do with `ns`.
pub fn claim(ns: Option<&Namespace>, uid: &str, adopt: Option<&str>) -> Claim {
    let Some(ns) = ns else {
        return Claim::Free;
    };
    if ns.metadata.deletion_timestamp.is_some() {
        return Claim::Terminating;
    }
    let managed = ns
        .labels()
        .get("app.kubernetes.io/managed-by")
        .is_some_and(|m| m == names::MANAGED_BY);
    let retained = is_retained(ns);
    match owner_uid(ns) {
        Some(owner) if owner == uid => Claim::Ours,
        Some(owner) if adopt == Some(owner.as_str()) && retained => Claim::Adopt { from: owner },
        // A namespace an earlier operator version made for a live tenant carries no UID
        // yet; it is this tenant's as long as nobody marked it as retained.
        None if managed && !retained => Claim::Ours,
        owner => Claim::Foreign { owner, retained },
    }
}

/// Whether `ns` is the namespace of the tenant with `uid`, being deleted or not: what a
/// cleanup must know (a pass must also know whether it is terminating: see [`claim`]).
pub fn is_ours(ns: &Namespace, uid: &str) -> bool {
    let mut live = ns.clone();
    live.metadata.deletion_timestamp = None;
    matches!(claim(Some(&live), uid, None), Claim::Ours)
}

/// The condition message for a namespace this tenant may not use, saying what to do.
pub fn foreign_message(namespace: &str, owner: Option<&str>, retained: bool) -> String {
    match (owner, retained) {
        (Some(uid), true) => format!(
            "namespace {namespace} holds data retained from a deleted tenant of the same name \
             (UID {uid}); nothing was changed. To take that data over, annotate this tenant \
             {}: {uid}; to start afresh, delete the namespace (and that tenant's external \
             resources) first",
            names::ADOPT_ANNOTATION
        ),
        (Some(uid), false) => format!(
            "namespace {namespace} belongs to another tenant (UID {uid}); nothing was changed"
        ),
        (None, _) => format!(
            "namespace {namespace} exists and is not marked as this tenant's (no {} label); \
             nothing was changed. Delete or rename it, or label it {}=<this tenant's UID> \
             if it really is this tenant's",
            names::TENANT_UID_LABEL,
            names::TENANT_UID_LABEL
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::namespace::namespace;

    fn retained(from: &str) -> Namespace {
        let mut ns = namespace("x", from);
        ns.labels_mut()
            .insert(names::RETAINED_LABEL.into(), "true".into());
        ns
    }

    #[test]
    fn a_terminating_namespace_is_still_its_tenants_for_the_cleanup() {
        let mut ns = namespace("x", "u1");
        ns.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(claim(Some(&ns), "u1", None), Claim::Terminating);
        assert!(is_ours(&ns, "u1"));
        assert!(!is_ours(&ns, "u2"));
        assert!(is_ours(&retained("u2"), "u2"));
    }

    #[test]
    fn absent_is_free_and_own_uid_is_ours() {
        assert_eq!(claim(None, "u2", None), Claim::Free);
        assert_eq!(claim(Some(&namespace("x", "u2")), "u2", None), Claim::Ours);
    }

    #[test]
    fn another_tenants_retained_namespace_is_foreign_unless_adopted_by_uid() {
        let ns = retained("u1");
        assert_eq!(
            claim(Some(&ns), "u2", None),
            Claim::Foreign {
                owner: Some("u1".into()),
                retained: true
            }
        );
        // Naming another UID adopts nothing.
        assert!(matches!(
            claim(Some(&ns), "u2", Some("u3")),
            Claim::Foreign { .. }
        ));
        assert_eq!(
            claim(Some(&ns), "u2", Some("u1")),
            Claim::Adopt { from: "u1".into() }
        );
        // A live tenant's namespace cannot be adopted.
        assert!(matches!(
            claim(Some(&namespace("x", "u1")), "u2", Some("u1")),
            Claim::Foreign {
                retained: false,
                ..
            }
        ));
    }

    #[test]
    fn legacy_namespaces_are_judged_by_their_marks() {
        // Made by an earlier version for a live tenant: no UID label, not retained.
        let mut legacy = namespace("x", "");
        legacy.labels_mut().remove(names::TENANT_UID_LABEL);
        assert_eq!(claim(Some(&legacy), "u2", None), Claim::Ours);
        // Retained by an earlier version: the UID is in the annotation.
        let mut old = legacy.clone();
        old.labels_mut()
            .insert(names::RETAINED_LABEL.into(), "true".into());
        old.annotations_mut()
            .insert(names::RETAINED_FROM_ANNOTATION.into(), "u1".into());
        assert!(matches!(
            claim(Some(&old), "u2", None),
            Claim::Foreign { .. }
        ));
        assert_eq!(
            claim(Some(&old), "u2", Some("u1")),
            Claim::Adopt { from: "u1".into() }
        );
        // Not made by the operator at all.
        let mut theirs = Namespace::default();
        theirs.metadata.name = Some("tenant-x".into());
        assert_eq!(
            claim(Some(&theirs), "u2", None),
            Claim::Foreign {
                owner: None,
                retained: false
            }
        );
    }

    #[test]
    fn a_terminating_namespace_is_waited_for() {
        let mut ns = retained("u1");
        ns.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(claim(Some(&ns), "u2", None), Claim::Terminating);
    }

    #[test]
    fn the_message_names_the_uid_and_the_way_out() {
        let m = foreign_message("tenant-x", Some("u1"), true);
        assert!(m.contains("u1") && m.contains(names::ADOPT_ANNOTATION));
    }
}
