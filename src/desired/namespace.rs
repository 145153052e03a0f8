//! The tenant's Namespace, ResourceQuota and LimitRange.

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{meta, names};
use crate::config::OperatorConfig;

/// `tenant-<name>`, labelled with the tenant's name and UID, with Pod Security Admission
/// `restricted` enforced.
pub fn namespace(tenant: &str, uid: &str) -> Namespace {
    let mut labels = names::common_labels(tenant);
    labels.insert(names::TENANT_UID_LABEL.into(), uid.into());
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(names::namespace(tenant)),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Hard caps from the operator configuration.
pub fn resource_quota(tenant: &str, owner: &OwnerReference, cfg: &OperatorConfig) -> ResourceQuota {
    ResourceQuota {
        metadata: meta(names::QUOTA, tenant, owner),
        spec: Some(ResourceQuotaSpec {
            hard: Some(cfg.namespace.quota.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container defaults from the operator configuration.
pub fn limit_range(tenant: &str, owner: &OwnerReference, cfg: &OperatorConfig) -> LimitRange {
    LimitRange {
        metadata: meta(names::LIMITS, tenant, owner),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(cfg.namespace.default_limit.clone()),
                default_request: Some(cfg.namespace.default_request.clone()),
                ..Default::default()
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{owner_reference, testing::tenant};

    #[test]
    fn namespace_enforces_restricted_pod_security() {
        let ns = namespace("acme", "u-1");
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(ns.metadata.name.as_deref(), Some("tenant-acme"));
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "dealertenant-operator"
        );
        assert_eq!(labels["dealerdesk.de/tenant"], "acme");
    }

    #[test]
    fn quota_and_limits_come_from_the_configuration() {
        let t = tenant("acme", "{displayName: A, region: europe-west3}");
        let mut cfg = OperatorConfig::default();
        cfg.namespace.quota.insert(
            "pods".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("7".into()),
        );
        let owner = owner_reference(&t);
        let quota = resource_quota("acme", &owner, &cfg);
        assert_eq!(quota.spec.unwrap().hard.unwrap()["pods"].0, "7");
        let lr = limit_range("acme", &owner, &cfg);
        let item = &lr.spec.unwrap().limits[0];
        assert_eq!(item.type_, "Container");
        assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "50m");
        assert_eq!(item.default.as_ref().unwrap()["memory"].0, "512Mi");
    }
}
