//! The tenant's own Cloud Storage bucket, through the official `google-cloud-storage` crate.
//! Bucket management goes over gRPC (`StorageControl`, google.storage.v2); so do object
//! listing and deletion, which the same client offers.
//!
//! One bucket per tenant, named `<bucketPrefix>-<tenant>` in Cloud Storage's global
//! namespace, in the tenant's region, with uniform bucket-level access, public access
//! prevention `enforced`, the labels `tenant`, `managed-by` and `dealerdesk-tenant-uid` (the
//! UID of the tenant that made it), and the configured soft delete retention and versioning.
//!
//! - Observe: get the bucket by name. A bucket under our name counts as the tenant's only
//!   when it carries the tenant's label and lives in our project; otherwise the name is
//!   taken (permanent error: choose another prefix). Nothing is ever written to or deleted
//!   from a bucket that is not ours.
//! - Identity: names are reused, UIDs are not. A bucket whose UID label names another tenant
//!   (one deleted under `Retain`) is refused with `RetainedDataExists` before any write, and
//!   the tenant's deletion leaves it alone; the annotation `dealerdesk.de/adopt-retained:
//!   <that uid>` hands it over (the label update rewrites the UID). A bucket without the UID
//!   label (made by an earlier version) gets it as a drift repair.
//! - Create when missing (residency check first, then the process-wide create/delete
//!   spacing). ALREADY_EXISTS after a crash or a race is healed by adopting the bucket when
//!   it is ours. The bucket is read back and its reported location checked.
//! - Drift in the enforced settings is repaired with one update carrying a field mask; an
//!   unchanged bucket costs reads only.
//! - Delete: every object (all versions), then the bucket, which Cloud Storage refuses
//!   while anything is left in it. With soft delete on, Cloud Storage keeps deleted objects
//!   (and the deleted bucket) restorable for `softDeleteDays`; that is the configured safety
//!   net, not a leftover.
//!
//! The Secret holds where the bucket is (`STORAGE_BUCKET`, `STORAGE_LOCATION`,
//! `STORAGE_PROJECT`); the bucket has no credentials of its own.

pub mod bucket;
pub mod errors;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_storage::client::StorageControl;
use google_cloud_storage::model::{
    Bucket, DeleteBucketRequest, DeleteObjectRequest, GetBucketRequest, ListBucketsRequest,
    ListObjectsRequest,
};
use serde::{Deserialize, Serialize};

use super::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo, residency,
};
use crate::processors::ids;
pub use crate::providers::pace::Pacer as CreateDeleteLimiter;
use errors::{SERVICE, classify, code_of};

/// `storage:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Google Cloud project that owns the buckets.
    pub project: String,
    /// Bucket names are global across all of Google Cloud: `<bucketPrefix>-<tenant>`. Pick a
    /// prefix your organisation owns (at most 22 characters, so every name fits 63).
    pub bucket_prefix: String,
    /// API endpoint; the SDK's default (Google) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Soft-delete retention in days (0 turns soft delete off).
    #[serde(default = "default_soft_delete")]
    pub soft_delete_days: u32,
    /// Keep noncurrent object versions.
    #[serde(default)]
    pub versioning: bool,
    /// Least time between two bucket creates or deletes in the project (GCS allows about
    /// one every two seconds).
    #[serde(default = "default_interval")]
    pub min_create_delete_interval_ms: u64,
    /// Path of a Google credentials JSON file (service account key or external account).
    /// Wins over `credentialsEnv`. Without both, Application Default Credentials are used
    /// (Workload Identity on GKE, the recommended way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Name of an environment variable that holds such a credentials JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_env: Option<String>,
}

fn default_soft_delete() -> u32 {
    7
}
fn default_interval() -> u64 {
    2000
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            project: "dealerdesk-prod".into(),
            bucket_prefix: "dealerdesk-prod".into(),
            endpoint: None,
            soft_delete_days: default_soft_delete(),
            versioning: false,
            min_create_delete_interval_ms: default_interval(),
            credentials_file: None,
            credentials_env: None,
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.project.trim().is_empty() {
            return Err("storage.project: must not be empty".into());
        }
        let p = &self.bucket_prefix;
        let ok = !p.is_empty()
            && p.len() <= 22
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.starts_with("goog")
            && !p.contains("google");
        if !ok {
            return Err(format!(
                "storage.bucketPrefix: \"{p}\" must be 1-22 lowercase letters, digits or '-', not start with '-' or \"goog\", and not contain \"google\""
            ));
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        vec![ExternalResource::new(
            "Bucket",
            bucket_name(&self.bucket_prefix, &t.name),
            Some(t.region.clone()),
            processor,
        )]
    }
}

/// `<prefix>-<tenant>`: at most 22 + 1 + 40 = 63 characters, GCS's limit.
pub fn bucket_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}

/// Where a lookup of a bucket by name ended.
enum Lookup {
    Found(Box<Bucket>),
    Missing,
    /// PERMISSION_DENIED: a bucket of that name exists in a project we may not read, or the
    /// operator lacks `storage.buckets.get`. Carries the service's text.
    Denied(String),
}

/// Objects deleted concurrently per listing page.
const DELETE_CONCURRENCY: usize = 16;
/// Rounds of "delete the objects, then the bucket" before giving up for this pass.
const DELETE_ROUNDS: usize = 3;

/// The storage provider: one bucket per tenant through the `StorageControl` client.
pub struct StorageProvider {
    cfg: StorageConfig,
    client: StorageControl,
    limiter: Arc<CreateDeleteLimiter>,
    /// `projects/<number>` of `cfg.project`, learned from the service: buckets report their
    /// project by number, the configuration names it by ID.
    project_number: Mutex<Option<String>>,
}

impl std::fmt::Debug for StorageProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageProvider")
            .field("project", &self.cfg.project)
            .field("bucket_prefix", &self.cfg.bucket_prefix)
            .finish_non_exhaustive()
    }
}

impl StorageProvider {
    /// A provider on `client`: the real one from [`StorageProvider::from_config`], or one
    /// made with `StorageControl::from_stub` in tests. Bucket creates and deletes share the
    /// process-wide limiter of `cfg.project`.
    pub fn new(cfg: StorageConfig, client: StorageControl) -> Self {
        let limiter = CreateDeleteLimiter::shared(
            &cfg.project,
            Duration::from_millis(cfg.min_create_delete_interval_ms),
        );
        Self {
            cfg,
            client,
            limiter,
            project_number: Mutex::new(None),
        }
    }

    /// Uses `limiter` for bucket creates and deletes instead of the process-wide one.
    pub fn with_limiter(mut self, limiter: Arc<CreateDeleteLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    /// Builds the real gRPC client: endpoint from the configuration when set, credentials
    /// from `credentialsFile`, else `credentialsEnv`, else Application Default Credentials.
    /// The SDK retries idempotent calls for at most 30 seconds; the reconciler's backoff
    /// does the rest.
    pub async fn from_config(cfg: &StorageConfig) -> Result<Self, ProviderError> {
        use google_cloud_gax::retry_policy::RetryPolicyExt;
        cfg.validate().map_err(not_configured)?;
        crate::providers::tls::ensure_crypto_provider();
        let retry = google_cloud_storage::retry_policy::RetryableErrors
            .with_time_limit(Duration::from_secs(30))
            .with_attempt_limit(5);
        let mut builder = StorageControl::builder().with_retry_policy(retry);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(credentials) = credentials(cfg)? {
            builder = builder.with_credentials(credentials);
        }
        let client = builder
            .build()
            .await
            .map_err(|e| not_configured(format!("cannot build the client: {e}")))?;
        Ok(Self::new(cfg.clone(), client))
    }

    fn known_project_number(&self) -> Option<String> {
        self.project_number
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn remember_project(&self, project: &str) {
        if project.starts_with("projects/")
            && project != bucket::project_resource(&self.cfg.project)
        {
            *self
                .project_number
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(project.to_string());
        }
    }

    async fn get(&self, name: &str) -> Result<Lookup, ProviderError> {
        let req = GetBucketRequest::new().set_name(bucket::resource_name(name));
        match self.client.get_bucket().with_request(req).send().await {
            Ok(b) => Ok(Lookup::Found(Box::new(b))),
            Err(e) => match code_of(&e) {
                Some(Code::NotFound) => Ok(Lookup::Missing),
                Some(Code::PermissionDenied) => Ok(Lookup::Denied(
                    e.status().map(|s| s.message.clone()).unwrap_or_default(),
                )),
                _ => Err(classify(&e)),
            },
        }
    }

    /// Whether `b` lives in our project. Compares with the project ID and the learned
    /// number; otherwise looks the bucket up among our project's buckets (a read that also
    /// teaches the number, so it happens once per process for our own buckets).
    async fn in_our_project(&self, b: &Bucket) -> Result<bool, ProviderError> {
        if b.project == bucket::project_resource(&self.cfg.project)
            || self.known_project_number().as_deref() == Some(b.project.as_str())
        {
            return Ok(true);
        }
        let name = bucket::bucket_id(b).to_string();
        let mut token = String::new();
        loop {
            let req = ListBucketsRequest::new()
                .set_parent(bucket::project_resource(&self.cfg.project))
                .set_prefix(name.clone())
                .set_page_token(token);
            let page = self
                .client
                .list_buckets()
                .with_request(req)
                .send()
                .await
                .map_err(|e| classify(&e))?;
            if let Some(listed) = page.buckets.iter().find(|l| bucket::bucket_id(l) == name) {
                // Names are global: listed in our project means it is this very bucket.
                self.remember_project(&listed.project);
                return Ok(true);
            }
            if page.next_page_token.is_empty() {
                return Ok(false);
            }
            token = page.next_page_token;
        }
    }

    /// `b` if it is the tenant's (our project, the tenant's label), else the name is taken.
    async fn claim(
        &self,
        tenant: &TenantInfo,
        name: &str,
        b: Bucket,
    ) -> Result<Bucket, ProviderError> {
        if !bucket::labelled_for(&b, tenant) {
            return Err(taken(
                name,
                &format!(
                    "it is not labelled {}={}",
                    bucket::LABEL_TENANT,
                    tenant.name
                ),
            ));
        }
        if !self.in_our_project(&b).await? {
            return Err(taken(
                name,
                &format!("it does not belong to project {}", self.cfg.project),
            ));
        }
        // Whose is it? A bucket bound to another tenant UID (retained from a deleted tenant
        // whose name this one reuses) is not touched unless this tenant adopts that UID.
        if let Some(owner) = bucket::bound_elsewhere(&b, tenant)
            && !tenant.adopts(owner)
        {
            return Err(ProviderError::Foreign {
                service: SERVICE,
                message: format!(
                    "bucket {name} holds data retained from another tenant (UID {owner}); \
                     nothing was changed. Annotate this tenant {}: {owner} to take it over, \
                     or delete the bucket {name} first",
                    crate::desired::names::ADOPT_ANNOTATION
                ),
            });
        }
        Ok(b)
    }

    /// Creates the tenant's bucket (or adopts it after a crash), and reads it back.
    async fn create(&self, tenant: &TenantInfo, name: &str) -> Result<Bucket, ProviderError> {
        residency::check_before_create(&format!("bucket {name}"), &tenant.region)?;
        self.limiter.wait_turn().await;
        let req = bucket::create_request(&self.cfg, tenant);
        match self.client.create_bucket().with_request(req).send().await {
            Ok(created) => {
                tracing::info!(bucket = name, location = %created.location, "bucket created");
                self.remember_project(&created.project);
            }
            Err(e) if code_of(&e) == Some(Code::AlreadyExists) => {
                // Our own create whose answer was lost (a crash, a race with another pass),
                // or somebody else's bucket.
                return match self.get(name).await? {
                    Lookup::Found(b) => {
                        let b = self.claim(tenant, name, *b).await?;
                        tracing::info!(bucket = name, "adopted existing bucket of this tenant");
                        Ok(b)
                    }
                    Lookup::Denied(message) => {
                        Err(taken(name, &format!("PERMISSION_DENIED: {message}")))
                    }
                    Lookup::Missing => Err(ProviderError::Unavailable {
                        service: SERVICE,
                        message: format!(
                            "bucket {name}: create answered ALREADY_EXISTS but it cannot be found; retrying"
                        ),
                    }),
                };
            }
            Err(e) => return Err(classify(&e)),
        }
        match self.get(name).await? {
            Lookup::Found(b) => Ok(*b),
            Lookup::Missing => Err(ProviderError::Unavailable {
                service: SERVICE,
                message: format!("bucket {name} was created but cannot be read back yet"),
            }),
            Lookup::Denied(message) => Err(ProviderError::Refused {
                service: SERVICE,
                message: format!(
                    "bucket {name} was created but cannot be read back (PERMISSION_DENIED: {message}); grant storage.buckets.get"
                ),
            }),
        }
    }

    /// Deletes every object of the bucket, all versions. Returns how many were deleted.
    async fn delete_objects(&self, name: &str) -> Result<usize, ProviderError> {
        use futures::stream::{self, StreamExt};
        let parent = bucket::resource_name(name);
        let mut total = 0;
        loop {
            let req = ListObjectsRequest::new()
                .set_parent(parent.clone())
                .set_versions(true)
                .set_page_size(1000);
            let page = match self.client.list_objects().with_request(req).send().await {
                Ok(page) => page,
                Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(total),
                Err(e) => return Err(classify(&e)),
            };
            if page.objects.is_empty() {
                return Ok(total);
            }
            let results: Vec<_> = stream::iter(page.objects)
                .map(|o| {
                    let req = DeleteObjectRequest::new()
                        .set_bucket(parent.clone())
                        .set_object(o.name)
                        .set_generation(o.generation);
                    async move { self.client.delete_object().with_request(req).send().await }
                })
                .buffer_unordered(DELETE_CONCURRENCY)
                .collect()
                .await;
            let mut round = 0;
            for r in results {
                match r {
                    Ok(()) => round += 1,
                    Err(e) if code_of(&e) == Some(Code::NotFound) => {}
                    Err(e) => return Err(classify(&e)),
                }
            }
            if round == 0 {
                // The listing shows only objects that are gone already; the bucket delete
                // will tell whether anything is left.
                return Ok(total);
            }
            total += round;
        }
    }

    fn resource(&self, b: &Bucket) -> ExternalResource {
        let id = bucket::bucket_id(b);
        let r = ExternalResource::new(
            "Bucket",
            id,
            Some(b.location.to_ascii_lowercase()),
            ids::GOOGLE_CLOUD,
        );
        if b.project.is_empty() {
            r
        } else {
            r.with_id(format!("{}/buckets/{id}", b.project))
        }
    }
}

#[async_trait::async_trait]
impl Provider for StorageProvider {
    fn component(&self) -> Component {
        Component::Storage
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = bucket_name(&self.cfg.bucket_prefix, &tenant.name);
        let current = match self.get(&name).await? {
            Lookup::Found(b) => self.claim(tenant, &name, *b).await?,
            Lookup::Missing => self.create(tenant, &name).await?,
            Lookup::Denied(message) => {
                return Err(taken(
                    &name,
                    &format!(
                        "PERMISSION_DENIED: {message}; if the name is ours, grant the operator storage.buckets.get"
                    ),
                ));
            }
        };
        residency::check_reported(&format!("bucket {name}"), &current.location, &tenant.region)?;

        let paths = bucket::drift(&self.cfg, tenant, &current);
        let current = if paths.is_empty() {
            current
        } else {
            tracing::info!(bucket = %name, fields = ?paths, "repairing bucket settings");
            let req = bucket::update_request(&self.cfg, tenant, &current, &paths);
            self.client
                .update_bucket()
                .with_request(req)
                .send()
                .await
                .map_err(|e| classify(&e))?
        };

        let desired = bucket::secret_data(&self.cfg, tenant);
        let up_to_date = secret.is_some_and(|s| desired.keys().all(|k| s.get(k) == desired.get(k)));
        let mut message = format!("bucket {name} in {}", current.location.to_ascii_lowercase());
        if !paths.is_empty() {
            message.push_str(&format!("; repaired {}", paths.join(", ")));
        }
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: (!up_to_date).then_some(desired),
            resources: vec![self.resource(&current)],
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = bucket_name(&self.cfg.bucket_prefix, &tenant.name);
        let b = match self.get(&name).await? {
            Lookup::Missing => return Ok(Erased::default()),
            Lookup::Denied(message) => {
                return Err(ProviderError::Refused {
                    service: SERVICE,
                    message: format!(
                        "cannot read bucket {name} (PERMISSION_DENIED: {message}); if another project owns the name, nothing of this tenant is in it: mark the storage component abandoned"
                    ),
                });
            }
            Lookup::Found(b) => *b,
        };
        let ours = self.in_our_project(&b).await?;
        if !ours {
            tracing::warn!(bucket = %name, "bucket of another project under the tenant's name; left alone");
            return Ok(Erased::default());
        }
        if !bucket::labelled_for(&b, tenant) {
            return Err(ProviderError::DeletionBlocked {
                service: SERVICE,
                message: format!(
                    "bucket {name} in project {} is not labelled {}={}; check who uses it, then delete it by hand or restore the label",
                    self.cfg.project,
                    bucket::LABEL_TENANT,
                    tenant.name
                ),
            });
        }
        // Another tenant's (retained) bucket under this name is not this tenant's to erase.
        if bucket::bound_elsewhere(&b, tenant).is_some() {
            tracing::info!(bucket = %name, "bucket is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }
        let erased = Erased {
            resources: vec![self.resource(&b)],
            ..Erased::default()
        };
        for _ in 0..DELETE_ROUNDS {
            let objects = self.delete_objects(&name).await?;
            tracing::info!(bucket = %name, objects, "objects deleted");
            self.limiter.wait_turn().await;
            let req = DeleteBucketRequest::new().set_name(bucket::resource_name(&name));
            match self.client.delete_bucket().with_request(req).send().await {
                Ok(()) => {
                    tracing::info!(bucket = %name, "bucket deleted");
                    return Ok(erased);
                }
                Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(erased),
                Err(e) if not_empty(&e) => {
                    tracing::info!(bucket = %name, "bucket not empty yet (objects written meanwhile)");
                }
                Err(e) => return Err(classify(&e)),
            }
        }
        Err(ProviderError::Unavailable {
            service: SERVICE,
            message: format!(
                "bucket {name} is still not empty: objects are being written while it is deleted"
            ),
        })
    }
}

/// Cloud Storage's refusal to delete a bucket that still holds objects: FAILED_PRECONDITION
/// over gRPC, 409 over JSON.
fn not_empty(e: &google_cloud_storage::Error) -> bool {
    code_of(e) == Some(Code::FailedPrecondition) || e.http_status_code() == Some(409)
}

fn taken(name: &str, why: &str) -> ProviderError {
    ProviderError::Refused {
        service: SERVICE,
        message: format!(
            "bucket name {name} is taken by another project; choose another storage.bucketPrefix ({why})"
        ),
    }
}

fn not_configured(message: impl Into<String>) -> ProviderError {
    ProviderError::NotConfigured {
        service: SERVICE,
        message: message.into(),
    }
}

/// Credentials from `credentialsFile` or `credentialsEnv`; `None` means Application Default
/// Credentials. Errors never quote the file or variable contents.
fn credentials(
    cfg: &StorageConfig,
) -> Result<Option<google_cloud_auth::credentials::Credentials>, ProviderError> {
    use google_cloud_auth::credentials::{external_account, service_account, user_account};
    let (text, origin) = if let Some(path) = &cfg.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            not_configured(format!(
                "storage.credentialsFile {path}: cannot read it ({})",
                e.kind()
            ))
        })?;
        (text, format!("storage.credentialsFile {path}"))
    } else if let Some(var) = &cfg.credentials_env {
        let text = std::env::var(var).map_err(|_| {
            not_configured(format!(
                "environment variable {var} (storage.credentialsEnv) is not set"
            ))
        })?;
        (text, format!("environment variable {var}"))
    } else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        not_configured(format!(
            "{origin}: not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let kind = json
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    let built = match kind.as_str() {
        "service_account" => service_account::Builder::new(json).build(),
        "external_account" => external_account::Builder::new(json).build(),
        "authorized_user" => user_account::Builder::new(json).build(),
        _ => {
            return Err(not_configured(format!(
                "{origin}: \"type\" must be service_account, external_account or authorized_user"
            )));
        }
    };
    built
        .map(Some)
        .map_err(|_| not_configured(format!("{origin}: not a usable {kind} credential")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_references_are_accepted_by_the_configuration_file() {
        let cfg = crate::config::OperatorConfig::from_yaml(
            "storage:\n  project: dd-prod\n  bucketPrefix: dd-prod\n  credentialsFile: /var/run/gcp/key.json\n  credentialsEnv: GCP_KEY_JSON\n",
        )
        .unwrap();
        assert_eq!(
            cfg.storage.credentials_file.as_deref(),
            Some("/var/run/gcp/key.json")
        );
        assert_eq!(cfg.storage.credentials_env.as_deref(), Some("GCP_KEY_JSON"));
        assert_eq!(cfg.storage.min_create_delete_interval_ms, 2000);
    }

    #[test]
    fn taken_names_say_what_to_do() {
        let e = taken("dd-acme", "it belongs elsewhere");
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains("bucket name dd-acme is taken by another project"));
        assert!(text.contains("choose another storage.bucketPrefix"));
    }

    #[tokio::test]
    async fn missing_credentials_are_a_configuration_error() {
        let cfg = StorageConfig {
            credentials_env: Some("DT_STORAGE_UNIT_TEST_UNSET".into()),
            ..StorageConfig::default()
        };
        let err = StorageProvider::from_config(&cfg).await.unwrap_err();
        assert_eq!(err.reason(), "NotConfigured");
        let cfg = StorageConfig {
            bucket_prefix: "Bad_Prefix".into(),
            ..StorageConfig::default()
        };
        let err = StorageProvider::from_config(&cfg).await.unwrap_err();
        assert_eq!(err.reason(), "NotConfigured");
    }
}
