//! Pure builders of the in-cluster objects a tenant should have. No I/O here: the
//! reconciler applies what these return, `plan` prints it, and unit tests check it.

pub mod access;
pub mod admission;
pub mod compare;
pub mod guard;
pub mod names;
pub mod namespace;
pub mod network;
pub mod quantity;
pub mod secret;
pub mod server;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::DealerTenant;
use crate::config::OperatorConfig;

/// Everything in the cluster that one tenant should have.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// `tenant-<name>`; not owned by the tenant, so that `Retain` can keep it.
    pub namespace: Namespace,
    /// Caps on what the namespace may use.
    pub quota: ResourceQuota,
    /// Per-container defaults, so that Pods without requests fit the quota.
    pub limits: LimitRange,
    /// Deny by default, allow same namespace, allow the ingress controller.
    pub network_policies: Vec<NetworkPolicy>,
    /// The server's identity, without an automounted token.
    pub service_account: ServiceAccount,
    /// The tenant's server.
    pub deployment: Deployment,
    /// The server's ClusterIP Service.
    pub service: Service,
    /// Only when the server runs more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Builds the tenant's desired in-cluster state. `component_secrets` are the Secrets (in the
/// tenant namespace) whose keys the server receives as environment variables.
pub fn build(tenant: &DealerTenant, cfg: &OperatorConfig, component_secrets: &[String]) -> Desired {
    let name = tenant.tenant_name();
    let ns = names::namespace(name);
    let owner = owner_reference(tenant);
    Desired {
        namespace: namespace::namespace(name, &tenant.metadata.uid.clone().unwrap_or_default()),
        quota: namespace::resource_quota(name, &owner, cfg),
        limits: namespace::limit_range(name, &owner, cfg),
        network_policies: network::policies(name, &owner, cfg),
        service_account: server::service_account(name, &owner),
        deployment: server::deployment(tenant, &owner, cfg, component_secrets),
        service: server::service(name, &owner),
        pdb: server::pdb(tenant, &owner),
    }
    .in_namespace(&ns)
}

impl Desired {
    /// Rebuilds the server Deployment so that it receives `component_secrets` (name and
    /// data of each Secret that exists), once the providers have said which exist. Their
    /// hash goes into the pod template, so that new credentials roll the Pods.
    pub fn with_component_secrets(
        mut self,
        tenant: &DealerTenant,
        cfg: &OperatorConfig,
        component_secrets: &[(String, crate::providers::SecretData)],
    ) -> Self {
        let ns = self.deployment.metadata.namespace.clone();
        let names: Vec<String> = component_secrets.iter().map(|(n, _)| n.clone()).collect();
        self.deployment = server::deployment(tenant, &owner_reference(tenant), cfg, &names);
        let hash = (!component_secrets.is_empty()).then(|| server::secrets_hash(component_secrets));
        server::set_secrets_hash(&mut self.deployment, hash);
        self.deployment.metadata.namespace = ns;
        self
    }

    fn in_namespace(mut self, ns: &str) -> Self {
        let set = |m: &mut ObjectMeta| m.namespace = Some(ns.to_string());
        set(&mut self.quota.metadata);
        set(&mut self.limits.metadata);
        self.network_policies
            .iter_mut()
            .for_each(|p| set(&mut p.metadata));
        set(&mut self.service_account.metadata);
        set(&mut self.deployment.metadata);
        set(&mut self.service.metadata);
        if let Some(p) = self.pdb.as_mut() {
            set(&mut p.metadata);
        }
        self
    }
}

/// The controller owner reference every namespaced object carries, so that it is garbage
/// collected with the tenant: none of these hold customer data or credentials.
pub fn owner_reference(tenant: &DealerTenant) -> OwnerReference {
    tenant
        .controller_owner_ref(&())
        .expect("a DealerTenant read from the API server has a name and uid")
}

/// Metadata shared by the tenant's namespaced objects.
fn meta(name: &str, tenant: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(names::common_labels(tenant)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::api::{DealerTenant, DealerTenantSpec};

    /// A tenant as the API server would return it after create.
    pub fn tenant(name: &str, yaml_spec: &str) -> DealerTenant {
        let spec: DealerTenantSpec = serde_saphyr::from_str(yaml_spec).unwrap();
        let mut t = DealerTenant::new(name, spec);
        t.metadata.uid = Some(format!("uid-{name}"));
        t.metadata.generation = Some(1);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespaced_object_lives_in_the_tenant_namespace_and_is_owned() {
        let t = testing::tenant(
            "acme",
            "{displayName: Acme, region: europe-west3, server: {replicas: 2}}",
        );
        let d = build(&t, &OperatorConfig::default(), &[]);
        let mut metas = vec![
            &d.quota.metadata,
            &d.limits.metadata,
            &d.service_account.metadata,
            &d.deployment.metadata,
            &d.service.metadata,
            &d.pdb.as_ref().unwrap().metadata,
        ];
        metas.extend(d.network_policies.iter().map(|p| &p.metadata));
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("tenant-acme"), "{:?}", m.name);
            let owners = m.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "DealerTenant");
            assert_eq!(owners[0].uid, "uid-acme");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(m.labels.as_ref().unwrap()["dealerdesk.de/tenant"], "acme");
        }
        assert!(
            d.namespace.metadata.owner_references.is_none(),
            "Retain must be able to keep the namespace"
        );
    }
}
