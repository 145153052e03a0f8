//! `plan`: every resource the operator would create for a manifest, in the cluster and
//! outside it, with name, location and processor. Pure: it shares the desired-state
//! builders with the reconciler and touches nothing.

use serde::Serialize;

use crate::api::DealerTenant;
use crate::config::OperatorConfig;
use crate::desired;
use crate::providers::{self, Component, ExternalResource, TenantInfo};

/// The plan of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub tenant: String,
    pub resources: Vec<ExternalResource>,
    /// Components that would not be provisioned, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// A component left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub component: String,
    pub reason: String,
}

pub use crate::providers::skip_reason;

/// Builds the plan of a valid tenant manifest.
pub fn plan(t: &DealerTenant, cfg: &OperatorConfig) -> Plan {
    let mut t = t.clone();
    // Offline manifests have no uid; owner references need one to be built.
    t.metadata
        .uid
        .get_or_insert_with(|| "<assigned-by-the-api-server>".into());
    let info = TenantInfo::of(&t);
    let cluster = |kind: &str, name: String| {
        ExternalResource::new(
            kind,
            name,
            Some(cfg.cluster.region.clone()),
            &cfg.cluster.processor,
        )
    };
    let d = desired::build(&t, cfg, &[]);
    let in_ns = |name: &Option<String>| {
        format!("{}/{}", info.namespace, name.as_deref().unwrap_or_default())
    };
    let mut resources = vec![cluster("Namespace", info.namespace.clone())];
    let binding = desired::access::role_binding(
        t.tenant_name(),
        &desired::owner_reference(&t),
        &desired::access::installed_operator(&cfg.operator_namespace),
    );
    resources.push(cluster("RoleBinding", in_ns(&binding.metadata.name)));
    resources.push(cluster("ResourceQuota", in_ns(&d.quota.metadata.name)));
    resources.push(cluster("LimitRange", in_ns(&d.limits.metadata.name)));
    for np in &d.network_policies {
        resources.push(cluster("NetworkPolicy", in_ns(&np.metadata.name)));
    }
    resources.push(cluster(
        "ServiceAccount",
        in_ns(&d.service_account.metadata.name),
    ));
    resources.push(cluster("Service", in_ns(&d.service.metadata.name)));
    resources.push(cluster("Deployment", in_ns(&d.deployment.metadata.name)));
    if let Some(pdb) = &d.pdb {
        resources.push(cluster("PodDisruptionBudget", in_ns(&pdb.metadata.name)));
    }
    let mut skipped = Vec::new();
    for component in Component::ORDER {
        if let Some(reason) = skip_reason(component, &t, cfg) {
            skipped.push(Skipped {
                component: component.key().into(),
                reason,
            });
            continue;
        }
        resources.push(cluster(
            "Secret",
            format!("{}/{}", info.namespace, component.key()),
        ));
        resources.extend(providers::plan(component, cfg, &info));
    }
    Plan {
        tenant: info.name,
        resources,
        skipped,
    }
}

/// The plan as an aligned text table.
pub fn to_text(plan: &Plan) -> String {
    let mut rows = vec![[
        "KIND".to_string(),
        "NAME".into(),
        "LOCATION".into(),
        "PROCESSOR".into(),
    ]];
    for r in &plan.resources {
        rows.push([
            r.kind.clone(),
            r.name.clone(),
            r.location.clone().unwrap_or_else(|| "-".into()),
            r.processor.clone(),
        ]);
    }
    let mut out = format!("tenant {}\n", plan.tenant);
    out.push_str(&crate::table::aligned(&rows));
    for s in &plan.skipped {
        out.push_str(&format!("skipped {}: {}\n", s.component, s.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DealerTenantSpec;

    fn tenant(spec: &str) -> DealerTenant {
        let spec: DealerTenantSpec = serde_saphyr::from_str(spec).unwrap();
        DealerTenant::new("acme", spec)
    }

    #[test]
    fn every_external_resource_is_located_in_the_eu_and_named() {
        let p = plan(
            &tenant("{displayName: A, region: europe-west9}"),
            &OperatorConfig::default(),
        );
        let kinds: Vec<_> = p.resources.iter().map(|r| r.kind.as_str()).collect();
        for k in [
            "Namespace",
            "Deployment",
            "Database",
            "Bucket",
            "PostmarkServer",
            "ElasticsearchIndex",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let bucket = p.resources.iter().find(|r| r.kind == "Bucket").unwrap();
        assert_eq!(bucket.location.as_deref(), Some("europe-west9"));
        assert_eq!(bucket.name, "dealerdesk-prod-acme");
        for r in &p.resources {
            assert!(r.location.is_some(), "{r:?}");
        }
        let pm = p
            .resources
            .iter()
            .find(|r| r.kind == "PostmarkServer")
            .unwrap();
        assert_eq!(pm.processor, "postmark");
    }

    #[test]
    fn email_off_or_denied_leaves_postmark_out() {
        let p = plan(
            &tenant("{displayName: A, region: europe-west3, email: {enabled: false}}"),
            &OperatorConfig::default(),
        );
        assert!(
            p.resources
                .iter()
                .all(|r| r.kind != "PostmarkServer" && r.name != "tenant-acme/email")
        );
        assert_eq!(p.skipped[0].component, "email");

        let cfg = OperatorConfig {
            third_country_processors: crate::config::ThirdCountryPolicy::Deny,
            ..Default::default()
        };
        let p = plan(&tenant("{displayName: A, region: europe-west3}"), &cfg);
        assert!(p.resources.iter().all(|r| r.processor != "postmark"));
        assert!(p.skipped[0].reason.contains("third country"));
    }

    #[test]
    fn cloudsql_instance_lives_in_the_tenant_region() {
        let mut cfg = OperatorConfig::default();
        cfg.database.provider = crate::providers::database::DatabaseProviderKind::Cloudsql;
        let p = plan(&tenant("{displayName: A, region: europe-north2}"), &cfg);
        let inst = p
            .resources
            .iter()
            .find(|r| r.kind == "CloudSqlInstance")
            .unwrap();
        assert_eq!(inst.name, "dt-acme");
        assert_eq!(inst.location.as_deref(), Some("europe-north2"));
    }
}
