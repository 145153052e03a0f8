//! Every name and label the operator derives from a tenant, in one place.

use std::collections::BTreeMap;

/// Field manager for every server-side apply.
pub const FIELD_MANAGER: &str = "dealertenant-operator";
/// `app.kubernetes.io/managed-by` value; also the label selector of every watch.
pub const MANAGED_BY: &str = "dealertenant-operator";
/// Label naming the tenant an object belongs to.
pub const TENANT_LABEL: &str = "dealerdesk.de/tenant";
/// Label set on a namespace kept after its DealerTenant was deleted under `Retain`.
pub const RETAINED_LABEL: &str = "dealerdesk.de/retained";
/// Label on the namespace and the component Secrets: the UID of the tenant whose data
/// they hold. Names are reused; UIDs are not, so this is what ties data to a customer.
pub const TENANT_UID_LABEL: &str = "dealerdesk.de/tenant-uid";
/// Annotation on a retained namespace: the UID of the deleted tenant it was kept for.
pub const RETAINED_FROM_ANNOTATION: &str = "dealerdesk.de/retained-from-uid";
/// Annotation on a tenant that takes over the data a deleted tenant of the same name
/// retained: its value must be that tenant's UID.
pub const ADOPT_ANNOTATION: &str = "dealerdesk.de/adopt-retained";
/// Annotation on every applied object: a digest of what the operator last applied, so
/// that a change, including a field it no longer sends, is seen and applied.
pub const APPLIED_HASH_ANNOTATION: &str = "dealerdesk.de/applied-hash";
/// Name of the server's Deployment, Service, ServiceAccount and PodDisruptionBudget.
pub const SERVER: &str = "server";
/// Name of the ResourceQuota.
pub const QUOTA: &str = "tenant-quota";
/// Name of the LimitRange.
pub const LIMITS: &str = "tenant-limits";
/// NetworkPolicy that denies all ingress by default.
pub const NP_DENY: &str = "default-deny-ingress";
/// NetworkPolicy that lets Pods of the namespace talk to each other.
pub const NP_SAME_NS: &str = "allow-same-namespace";
/// NetworkPolicy that lets the ingress controller reach the server.
pub const NP_INGRESS: &str = "allow-ingress-controller";
/// NetworkPolicy that denies all egress by default.
pub const NP_DENY_EGRESS: &str = "default-deny-egress";
/// NetworkPolicy that allows DNS, the namespace itself and the configured destinations.
pub const NP_EGRESS: &str = "allow-egress";

/// The tenant's namespace: `tenant-<name>`.
pub fn namespace(tenant: &str) -> String {
    format!("tenant-{tenant}")
}

/// Labels every object of a tenant carries.
pub fn common_labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        ("app.kubernetes.io/part-of".into(), "dealerdesk".into()),
        (TENANT_LABEL.into(), tenant.into()),
    ])
}

/// Labels that select the tenant's server Pods.
pub fn server_selector(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "dealer-server".into()),
        (TENANT_LABEL.into(), tenant.into()),
    ])
}

/// Label selector string for watches: everything this operator manages.
pub fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGED_BY}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_of_the_longest_name_fits_a_label() {
        let longest = "a".repeat(crate::api::MAX_NAME_LEN);
        assert_eq!(namespace("acme"), "tenant-acme");
        assert!(namespace(&longest).len() <= 63);
    }

    #[test]
    fn labels_name_the_tenant_and_the_manager() {
        let l = common_labels("acme");
        assert_eq!(l["dealerdesk.de/tenant"], "acme");
        assert_eq!(l["app.kubernetes.io/managed-by"], "dealertenant-operator");
        assert!(
            server_selector("acme")
                .iter()
                .all(|(k, v)| k != "app.kubernetes.io/managed-by" && !v.is_empty())
        );
    }
}
