//! What every reconcile shares: the client, the configuration, read caches of the owned
//! objects, the event reporter and per-tenant backoff state.

use std::collections::HashMap;
use std::sync::Mutex;

use super::cache::{Cache, CacheWriter};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{RoleBinding, Subject};
use kube::Client;
use kube::runtime::events::Reporter;

use crate::api::{DealerTenant, DealerTenantStatus};
use crate::config::OperatorConfig;
use crate::providers::Providers;

/// Read caches of everything the operator manages, filled by the controller's watches:
/// compact, what a pass decides on ([`super::cache`]), not the objects. Reconciles read
/// from here, so an unchanged tenant costs no API call at all. Secrets are
/// not cached: the operator may not list them cluster-wide, and reads a tenant's component
/// Secret with a GET in the tenant namespace when a pass needs it.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Cache<Namespace>,
    pub quotas: Cache<ResourceQuota>,
    pub limits: Cache<LimitRange>,
    pub network_policies: Cache<NetworkPolicy>,
    pub service_accounts: Cache<ServiceAccount>,
    pub deployments: Cache<Deployment>,
    pub services: Cache<Service>,
    pub pdbs: Cache<PodDisruptionBudget>,
    pub role_bindings: Cache<RoleBinding>,
}

/// The writing halves of [`Stores`], consumed by the watches (or by tests).
pub struct Writers {
    pub namespaces: CacheWriter<Namespace>,
    pub quotas: CacheWriter<ResourceQuota>,
    pub limits: CacheWriter<LimitRange>,
    pub network_policies: CacheWriter<NetworkPolicy>,
    pub service_accounts: CacheWriter<ServiceAccount>,
    pub deployments: CacheWriter<Deployment>,
    pub services: CacheWriter<Service>,
    pub pdbs: CacheWriter<PodDisruptionBudget>,
    pub role_bindings: CacheWriter<RoleBinding>,
}

impl Stores {
    /// Empty caches and their writers.
    pub fn new() -> (Stores, Writers) {
        let (namespaces, w_namespaces) = Cache::new();
        let (quotas, w_quotas) = Cache::new();
        let (limits, w_limits) = Cache::new();
        let (network_policies, w_network_policies) = Cache::new();
        let (service_accounts, w_service_accounts) = Cache::new();
        let (deployments, w_deployments) = Cache::new();
        let (services, w_services) = Cache::new();
        let (pdbs, w_pdbs) = Cache::new();
        let (role_bindings, w_role_bindings) = Cache::new();
        let w = Writers {
            namespaces: w_namespaces,
            quotas: w_quotas,
            limits: w_limits,
            network_policies: w_network_policies,
            service_accounts: w_service_accounts,
            deployments: w_deployments,
            services: w_services,
            pdbs: w_pdbs,
            role_bindings: w_role_bindings,
        };
        let s = Stores {
            namespaces,
            quotas,
            limits,
            network_policies,
            service_accounts,
            deployments,
            services,
            pdbs,
            role_bindings,
        };
        (s, w)
    }

    /// Waits until every cache has been filled by its first list, so that no pass takes
    /// "not in the cache" for "absent".
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.namespaces.wait_until_ready(),
            self.quotas.wait_until_ready(),
            self.limits.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.role_bindings.wait_until_ready(),
        );
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub stores: Stores,
    pub providers: Providers,
    pub metrics: super::metrics::Metrics,
    pub reporter: Reporter,
    /// Consecutive failures per tenant, for backoff; cleared by a successful pass.
    pub failures: Mutex<HashMap<String, u32>>,
    /// What this process applied that the caches may not show yet.
    pub written: std::sync::Arc<super::apply::Written>,
    /// The status this process last wrote, by tenant UID. The operator is the only writer
    /// of the status, so this is never older than the tenant in the watch cache, which
    /// may not have seen the write yet.
    pub statuses: Mutex<HashMap<String, DealerTenantStatus>>,
    /// Who the operator is to the API server: the subject of the RoleBinding that grants it
    /// its rights in each tenant namespace.
    pub operator: Subject,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        stores: Stores,
        providers: Providers,
    ) -> Self {
        Self {
            client,
            stores,
            metrics: super::metrics::Metrics::new(&providers.requests),
            providers,
            reporter: Reporter {
                controller: crate::desired::names::FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            failures: Mutex::new(HashMap::new()),
            written: Default::default(),
            statuses: Mutex::new(HashMap::new()),
            operator: crate::desired::access::installed_operator(&config.operator_namespace),
            config,
        }
    }

    /// The operator's identity, as the API server reported it at start.
    pub fn with_operator(mut self, operator: Subject) -> Self {
        self.operator = operator;
        self
    }

    /// When to look at a converged tenant again: `resyncSeconds`, with up to 10 % jitter so
    /// that tenants created together do not resync together.
    pub fn resync_interval(&self) -> std::time::Duration {
        let base = self.config.resync_seconds.max(1) as f64;
        std::time::Duration::from_secs_f64(base * (0.9 + 0.1 * fastrand::f64()))
    }

    /// The tenant's status as this process last wrote it, else as the cache has it.
    pub fn status_of(&self, t: &DealerTenant) -> Option<DealerTenantStatus> {
        let uid = t.metadata.uid.as_deref().unwrap_or_default();
        let known = self.lock_statuses().get(uid).cloned();
        known.or_else(|| t.status.clone())
    }

    /// Remembers the status just written for `t`.
    pub fn wrote_status(&self, t: &DealerTenant, status: DealerTenantStatus) {
        if let Some(uid) = t.metadata.uid.clone() {
            self.lock_statuses().insert(uid, status);
        }
    }

    /// Takes in a tenant as the watch cache now shows it: once it shows the status this
    /// process last wrote, the cache is current and the copy kept here is dropped (at
    /// 10,000 tenants, a copy of every status would cost megabytes).
    pub fn seen_tenant(&self, t: &DealerTenant) {
        let Some(uid) = t.metadata.uid.as_deref() else {
            return;
        };
        let mut statuses = self.lock_statuses();
        if statuses
            .get(uid)
            .is_some_and(|known| t.status.as_ref() == Some(known))
        {
            statuses.remove(uid);
        }
    }

    /// Forgets a tenant that is gone.
    pub fn forget_tenant(&self, t: &DealerTenant) {
        if let Some(uid) = t.metadata.uid.as_deref() {
            self.lock_statuses().remove(uid);
        }
        self.written
            .forget_namespace(&crate::desired::names::namespace(t.tenant_name()));
        self.written
            .forget(&super::reconcile::tenant_key(t.tenant_name()));
        self.note_success(t.tenant_name());
    }

    fn lock_statuses(&self) -> std::sync::MutexGuard<'_, HashMap<String, DealerTenantStatus>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one more failure of `tenant` and returns how many came before it.
    pub fn note_failure(&self, tenant: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(tenant.to_string()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// Forgets `tenant`'s failures after a good pass.
    pub fn note_success(&self, tenant: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DealerTenantSpec, Phase};

    /// A context whose client reaches nothing, and a tenant with a uid.
    fn context_and_tenant() -> (Context, DealerTenant) {
        let client = Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("a URL"),
        ))
        .expect("a client");
        let (stores, _) = Stores::new();
        let ctx = Context::new(
            client,
            OperatorConfig::default(),
            stores,
            Providers::default(),
        );
        let spec: DealerTenantSpec = serde_json::from_value(
            serde_json::json!({"displayName": "A", "region": "europe-west3"}),
        )
        .expect("a spec");
        let mut t = DealerTenant::new("a", spec);
        t.metadata.uid = Some("u".into());
        (ctx, t)
    }

    #[tokio::test]
    async fn a_written_status_is_kept_only_until_the_cache_shows_it() {
        let (ctx, mut t) = context_and_tenant();
        let written = DealerTenantStatus {
            phase: Some(Phase::Ready),
            ..Default::default()
        };
        ctx.wrote_status(&t, written.clone());
        // The cache does not show the write yet: the copy answers.
        ctx.seen_tenant(&t);
        assert_eq!(ctx.status_of(&t), Some(written.clone()));
        // Now it does: the copy is dropped, and the cache answers the same.
        t.status = Some(written.clone());
        ctx.seen_tenant(&t);
        assert!(ctx.lock_statuses().is_empty());
        assert_eq!(ctx.status_of(&t), Some(written));
    }

    #[tokio::test]
    async fn a_status_with_fresh_conditions_is_dropped_once_it_comes_back_from_the_server() {
        use crate::controller::status::{self, Observation, types};
        let (ctx, mut t) = context_and_tenant();
        t.metadata.generation = Some(1);
        // What a first pass writes: every condition new, stamped now.
        let observed = [
            Observation::ok(types::NAMESPACE, "Active", "namespace tenant-a is active"),
            Observation::ok(types::SERVER, "Available", "0/0 replicas available"),
        ];
        let mut written = status::next_status(
            None,
            &observed,
            Phase::Ready,
            Some("tenant-a".into()),
            Some(1),
            &status::now(),
        );
        written.components = Some(status::components_summary(&written.conditions));
        ctx.wrote_status(&t, written.clone());
        // The watch brings it back as the API server keeps it: serialized and read again.
        let echoed: DealerTenantStatus =
            serde_json::from_value(serde_json::to_value(&written).expect("serializable"))
                .expect("readable");
        t.status = Some(echoed);
        ctx.seen_tenant(&t);
        assert!(
            ctx.lock_statuses().is_empty(),
            "the copy of a written status outlives its echo"
        );
    }
}
