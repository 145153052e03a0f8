//! The wire: the `StorageControl` calls the provider makes, and what it concludes from
//! their answers (whose bucket a name is, what a create found).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_storage::client::StorageControl;
use google_cloud_storage::model::{
    Bucket, DeleteObjectRequest, GetBucketRequest, ListBucketsRequest, ListObjectsRequest,
};

use super::errors::{SERVICE, classify, code_of};
use super::{CreateDeleteLimiter, StorageConfig, desired as bucket};
use crate::processors::ids;
use crate::providers::{ExternalResource, ProviderError, TenantInfo, residency};

/// Where a lookup of a bucket by name ended.
pub(super) enum Lookup {
    Found(Box<Bucket>),
    Missing,
    /// PERMISSION_DENIED: a bucket of that name exists in a project we may not read, or the
    /// operator lacks `storage.buckets.get`. Carries the service's text.
    Denied(String),
}

/// Objects deleted concurrently per listing page.
const DELETE_CONCURRENCY: usize = 16;

/// The storage provider: one bucket per tenant through the `StorageControl` client.
pub struct StorageProvider {
    pub(super) cfg: StorageConfig,
    pub(super) client: StorageControl,
    pub(super) limiter: Arc<CreateDeleteLimiter>,
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

    pub(super) async fn get(&self, name: &str) -> Result<Lookup, ProviderError> {
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
    pub(super) async fn in_our_project(&self, b: &Bucket) -> Result<bool, ProviderError> {
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
    pub(super) async fn claim(
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
    pub(super) async fn create(
        &self,
        tenant: &TenantInfo,
        name: &str,
    ) -> Result<Bucket, ProviderError> {
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
    pub(super) async fn delete_objects(&self, name: &str) -> Result<usize, ProviderError> {
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

    pub(super) fn resource(&self, b: &Bucket) -> ExternalResource {
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

pub(super) fn taken(name: &str, why: &str) -> ProviderError {
    ProviderError::Refused {
        service: SERVICE,
        message: format!(
            "bucket name {name} is taken by another project; choose another storage.bucketPrefix ({why})"
        ),
    }
}
