//! External components of a tenant's stack, one module per service, all behind one trait.
//!
//! The reconciler calls the enabled providers in a fixed order ([`Component::ORDER`]:
//! database, storage, search, email) after the tenant namespace exists and before the
//! server Deployment, which receives each component's Secret as environment.
//!
//! Every provider follows the same life cycle, modelled on Crossplane's external client:
//! - `plan` (pure, [`plan`] in this module, from the configuration alone): the external
//!   resources a tenant gets, with deterministic names and their location. The `plan`
//!   command prints it; the residency check uses it.
//! - [`Provider::reconcile`]: observe by the deterministic name, then create what is missing
//!   or bring drifted settings back, then report. Idempotent and crash-safe: a crash
//!   after a create is healed by finding the resource by name on the next pass. Returns new
//!   Secret data only when credentials had to be (re)issued.
//! - [`Provider::reconcile_rotating`] and [`Provider::retire`]: what the reconciler calls.
//!   A service that can hold several credentials at once (Elasticsearch API keys) issues
//!   the new one first and reports the replaced ones; the reconciler retires them once the
//!   server has rolled out with the new Secret. The defaults suit services with one
//!   password per role (PostgreSQL, Cloud SQL), where rotation is a password change.
//! - [`Provider::delete`]: erase everything of the tenant at this service; absent is success.
//! - abandon: a component the user marks abandoned (annotation
//!   `dealerdesk.de/abandon: email,search`) is not deleted; the reconciler records it as
//!   kept, and no provider call is made.

pub mod database;
pub mod email;
pub mod error;
pub mod google;
pub mod pace;
pub mod requests;
pub mod residency;
pub mod search;
pub mod secret;
pub mod storage;
pub mod tls;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub use error::ProviderError;
pub use secret::SecretData;

use crate::api::DealerTenant;
use crate::desired::names;

/// A part of the tenant's stack that lives outside the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Component {
    Database,
    Storage,
    Search,
    Email,
}

impl Component {
    /// The fixed order in which the reconciler calls providers.
    pub const ORDER: [Component; 4] = [
        Component::Database,
        Component::Storage,
        Component::Search,
        Component::Email,
    ];

    /// Its condition type, e.g. `DatabaseReady`.
    pub fn condition_type(self) -> &'static str {
        match self {
            Component::Database => "DatabaseReady",
            Component::Storage => "StorageReady",
            Component::Search => "SearchReady",
            Component::Email => "EmailReady",
        }
    }

    /// Name of its Secret in the tenant namespace, also the `spec` field name.
    pub fn key(self) -> &'static str {
        match self {
            Component::Database => "database",
            Component::Storage => "storage",
            Component::Search => "search",
            Component::Email => "email",
        }
    }

    /// Whether the tenant has this component switched on.
    pub fn enabled_for(self, t: &DealerTenant) -> bool {
        match self {
            Component::Database => t.spec.database.enabled,
            Component::Storage => t.spec.storage.enabled,
            Component::Search => t.spec.search.enabled,
            Component::Email => t.spec.email.enabled,
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// What a provider needs to know about a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid` (empty offline, in `plan`).
    pub uid: String,
    /// `spec.region`.
    pub region: String,
    /// `tenant-<name>`.
    pub namespace: String,
    /// The tenant's annotations (`dealerdesk.de/...` ways out, such as a Cloud SQL
    /// instance-name suffix after a name was reserved).
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl TenantInfo {
    /// Whether the tenant asked to take over the data retained from the tenant `uid`
    /// (annotation `dealerdesk.de/adopt-retained: <uid>`).
    pub fn adopts(&self, uid: &str) -> bool {
        self.annotations
            .get(names::ADOPT_ANNOTATION)
            .is_some_and(|a| !uid.is_empty() && a == uid)
    }

    pub fn of(t: &DealerTenant) -> Self {
        Self {
            name: t.tenant_name().to_string(),
            uid: t.metadata.uid.clone().unwrap_or_default(),
            region: t.spec.region.clone(),
            namespace: names::namespace(t.tenant_name()),
            annotations: t.metadata.annotations.clone().unwrap_or_default(),
        }
    }
}

/// One external resource, planned or observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalResource {
    /// `Database`, `DatabaseRole`, `CloudSqlInstance`, `Bucket`, `PostmarkServer`,
    /// `ElasticsearchIndex`, `ElasticsearchRole`, `ElasticsearchApiKey`, ...
    pub kind: String,
    /// The deterministic name.
    pub name: String,
    /// Where it lives (a region ID), when the service has locations.
    pub location: Option<String>,
    /// The processor that holds it (an ID of the processor register).
    pub processor: String,
    /// The service's own identifier, once known (Postmark server ID, key ID, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The tenant component it belongs to (`database`, `storage`, `search`, `email`), as
    /// the reconciler recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl ExternalResource {
    pub fn new(
        kind: &str,
        name: impl Into<String>,
        location: Option<String>,
        processor: &str,
    ) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            location,
            processor: processor.into(),
            id: None,
            component: None,
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// The result of one [`Provider::reconcile`].
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Whether the component is usable now (false while e.g. an instance is being created).
    pub ready: bool,
    /// The condition's reason when the provider knows better than `Provisioned` /
    /// `Provisioning` (e.g. `InboundDomainRejected` while the server itself works).
    /// UpperCamelCase, per the API conventions.
    pub reason: Option<&'static str>,
    /// One human line for the condition message. Never contains a secret.
    pub message: String,
    /// New contents for the component Secret, when credentials were (re)issued.
    pub secret: Option<SecretData>,
    /// What exists at the service, with the location the service reports.
    pub resources: Vec<ExternalResource>,
    /// While not ready: how long until looking again is worth it, when the provider knows
    /// the service is slow (a Cloud SQL instance takes minutes to create, and every look
    /// costs Admin API quota). `None`: the reconciler's default.
    pub recheck_after: Option<std::time::Duration>,
}

/// The result of one [`Provider::reconcile_rotating`]: the reconcile's result and the
/// credentials a rotation replaced. Those still work, so that Pods that run with the old
/// Secret keep working; the reconciler records their IDs on the component Secret and has
/// the provider [`Provider::retire`] them once the server Deployment has rolled out with
/// the new Secret.
#[derive(Debug, Default)]
pub struct Rotating {
    pub reconciled: Reconciled,
    /// IDs of the credentials to retire after the rollout. IDs only, never a secret: they
    /// are written into an annotation.
    pub retire: Vec<String>,
}

/// The result of one [`Provider::delete`]: what was erased (for the erasure receipt).
#[derive(Debug, Default)]
pub struct Erased {
    pub resources: Vec<ExternalResource>,
    /// What the service still keeps restorable after the delete (a soft-deleted bucket, a
    /// Cloud SQL instance's retained or final backups). Non-empty means the receipt must
    /// not say "erased": it says what stays restorable, and until when.
    pub restorable: Vec<Restorable>,
}

/// Something a delete left restorable at the service for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restorable {
    /// In words, e.g. `soft-deleted bucket dd-acme` or `final backup of instance dt-acme`.
    pub what: String,
    /// Until when it can be restored (RFC 3339), when the service says; `None` means
    /// until someone deletes it.
    pub until: Option<String>,
}

impl fmt::Display for Restorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.until {
            Some(until) => write!(f, "{}, restorable until {until}", self.what),
            None => write!(f, "{}, restorable until deleted", self.what),
        }
    }
}

/// Value of the `managed-by` label (or metadata field) that every provider puts on what
/// it creates, and requires before it changes or deletes anything it finds.
pub const MANAGED_BY: &str = crate::desired::names::MANAGED_BY;
/// Key of that label.
pub const LABEL_MANAGED_BY: &str = "managed-by";

/// An external service that holds part of a tenant's stack.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Which component this provider serves.
    fn component(&self) -> Component;

    /// Observe, create or update, report. `secret` is the component's current Secret data,
    /// `None` when the Secret does not exist (then credentials are issued anew).
    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError>;

    /// [`Provider::reconcile`] for a reconciler that waits for the server's rollout before
    /// old credentials stop working: a rotation issues the new credential first and
    /// reports the old ones in [`Rotating::retire`] instead of revoking them. The default
    /// is `reconcile` with nothing to retire (a service with one password per role, whose
    /// rotation is a password change).
    async fn reconcile_rotating(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Rotating, ProviderError> {
        Ok(Rotating {
            reconciled: self.reconcile(tenant, secret).await?,
            retire: Vec::new(),
        })
    }

    /// Revokes the credentials `ids` of `tenant` that [`Provider::reconcile_rotating`]
    /// reported. Idempotent: an ID already revoked or gone is success. Default: nothing.
    async fn retire(&self, tenant: &TenantInfo, ids: &[String]) -> Result<(), ProviderError> {
        let _ = (tenant, ids);
        Ok(())
    }

    /// Erase every resource of `tenant` at this service. Idempotent.
    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError>;
}

/// The processor that holds `component`'s data under `cfg`.
pub fn processor_of(component: Component, cfg: &crate::config::OperatorConfig) -> &'static str {
    use crate::processors::ids;
    match component {
        Component::Database | Component::Storage => ids::GOOGLE_CLOUD,
        Component::Search => ids::ELASTIC,
        Component::Email => match cfg.email.provider {
            email::EmailProviderKind::Postmark => ids::POSTMARK,
        },
    }
}

/// Why `component` is not provisioned for `t` under `cfg`, if it is not: switched off,
/// or served by a third-country processor while the cluster policy denies those.
pub fn skip_reason(
    component: Component,
    t: &DealerTenant,
    cfg: &crate::config::OperatorConfig,
) -> Option<String> {
    use crate::config::ThirdCountryPolicy;
    use crate::processors;
    if !component.enabled_for(t) {
        return Some(format!("spec.{}.enabled is false", component.key()));
    }
    if cfg.third_country_processors == ThirdCountryPolicy::Deny {
        let id = processor_of(component, cfg);
        let catalog = processors::catalog(&cfg.processors);
        if let Some(p) = catalog.iter().find(|p| p.id == id && p.third_country) {
            return Some(format!(
                "processor {} ({}, {}) is in a third country and the cluster policy thirdCountryProcessors is deny",
                p.name, p.entity, p.country
            ));
        }
    }
    None
}

/// Pure: the external resources of `component` for `tenant` under `cfg`.
pub fn plan(
    component: Component,
    cfg: &crate::config::OperatorConfig,
    tenant: &TenantInfo,
) -> Vec<ExternalResource> {
    let processor = processor_of(component, cfg);
    match component {
        Component::Database => cfg.database.plan(tenant, processor),
        Component::Storage => cfg.storage.plan(tenant, processor),
        Component::Search => cfg.search.plan(tenant, processor),
        Component::Email => cfg.email.plan(tenant, processor),
    }
}

/// The providers the operator runs with, by component.
#[derive(Clone, Default)]
pub struct Providers {
    pub by_component: Vec<Arc<dyn Provider>>,
    /// Components whose provider could not be built, with the reason (shown in their
    /// condition; the operator still runs for the other components).
    pub unavailable: Vec<(Component, String)>,
    /// Where the providers count their requests (registered with the operator's metrics).
    pub requests: requests::RequestMetrics,
}

impl Providers {
    pub fn new(list: Vec<Arc<dyn Provider>>) -> Self {
        Self {
            by_component: list,
            unavailable: Vec::new(),
            requests: Default::default(),
        }
    }

    /// The provider of `component`, if one is configured.
    pub fn get(&self, component: Component) -> Option<&Arc<dyn Provider>> {
        self.by_component
            .iter()
            .find(|p| p.component() == component)
    }

    /// Why `component` has no provider.
    pub fn why_unavailable(&self, component: Component) -> String {
        self.unavailable
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| format!("no {component} provider is configured in the operator"))
    }

    fn add(&mut self, component: Component, built: Result<Arc<dyn Provider>, ProviderError>) {
        match built {
            Ok(p) => self.by_component.push(p),
            Err(e) => {
                tracing::warn!(%component, error = %e, "provider unavailable; tenants using it will show NotConfigured");
                self.unavailable.push((component, e.to_string()));
            }
        }
    }
}

/// Builds the providers the configuration selects, reading their credentials. A provider
/// that cannot be built (a credential missing, say) is left out with its reason, so that
/// the operator still serves the other components and says what is missing. They count
/// their requests into `requests`: Elasticsearch and Postmark directly, the Google Cloud
/// SDK's clients through their tracing ([`requests::google::AttemptLayer`], which the
/// process's subscriber must carry with the same `requests`).
pub async fn from_config(
    cfg: &crate::config::OperatorConfig,
    requests: &requests::RequestMetrics,
) -> anyhow::Result<Providers> {
    tls::ensure_crypto_provider();
    let mut providers = Providers {
        requests: requests.clone(),
        ..Providers::default()
    };
    let database: Result<Arc<dyn Provider>, ProviderError> = match cfg.database.provider {
        database::DatabaseProviderKind::Cloudsql => {
            database::cloudsql::from_config(&cfg.database.cloudsql)
                .await
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        database::DatabaseProviderKind::Postgres => {
            database::postgres::from_config(&cfg.database.postgres)
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
    };
    providers.add(Component::Database, database);
    let storage = storage::StorageProvider::from_config(&cfg.storage)
        .await
        .map(|p| Arc::new(p) as Arc<dyn Provider>);
    providers.add(Component::Storage, storage);
    let search = search::elasticsearch::ElasticsearchProvider::from_config(&cfg.search)
        .map(|p| Arc::new(p.observed_by(requests)) as Arc<dyn Provider>);
    providers.add(Component::Search, search);
    let email: Result<Arc<dyn Provider>, ProviderError> = match cfg.email.provider {
        email::EmailProviderKind::Postmark => {
            email::postmark::PostmarkProvider::from_config(&cfg.email.postmark)
                .map(|p| Arc::new(p.observed_by(requests)) as Arc<dyn Provider>)
        }
    };
    providers.add(Component::Email, email);
    Ok(providers)
}
