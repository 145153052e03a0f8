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
//!   while anything is left in it (FAILED_PRECONDITION "not empty": objects written
//!   meanwhile, deleted in another round). Any other FAILED_PRECONDITION (a locked retention
//!   policy, a hold) is `DeletionBlocked` with Cloud Storage's text. With soft delete on,
//!   Cloud Storage keeps deleted objects (and the deleted bucket) restorable for the
//!   bucket's retention; that is the configured safety net, not a leftover, and the receipt
//!   records the soft-deleted bucket as restorable until the delete time plus that
//!   retention.
//!
//! The Secret holds where the bucket is (`STORAGE_BUCKET`, `STORAGE_LOCATION`,
//! `STORAGE_PROJECT`); the bucket has no credentials of its own.

pub mod client;
pub mod config;
pub mod desired;
pub mod errors;

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_storage::client::StorageControl;
use google_cloud_storage::model::DeleteBucketRequest;

use super::{
    Component, Erased, Provider, ProviderError, Reconciled, SecretData, TenantInfo, residency,
};
pub use crate::providers::pace::Pacer as CreateDeleteLimiter;
pub use client::StorageProvider;
use client::{Lookup, taken};
pub use config::StorageConfig;
pub use desired::bucket_name;
use errors::{DeleteRefusal, SERVICE, classify, code_of};

/// Rounds of "delete the objects, then the bucket" before giving up for this pass.
const DELETE_ROUNDS: usize = 3;

impl StorageProvider {
    /// Builds the real gRPC client: endpoint from the configuration when set, credentials
    /// from `credentialsFile`, else `credentialsEnv`, else Application Default Credentials.
    pub async fn from_config(cfg: &StorageConfig) -> Result<Self, ProviderError> {
        cfg.validate().map_err(not_configured)?;
        crate::providers::tls::ensure_crypto_provider();
        let mut builder = Self::client_builder(cfg);
        let key = crate::providers::google::KeySource {
            section: "storage",
            file: cfg.credentials_file.as_deref(),
            env: cfg.credentials_env.as_deref(),
            env_required: true,
        };
        if let Some(credentials) =
            crate::providers::google::credentials(&key).map_err(not_configured)?
        {
            builder = builder.with_credentials(credentials);
        }
        let client = builder
            .build()
            .await
            .map_err(|e| not_configured(format!("cannot build the client: {e}")))?;
        Ok(Self::new(cfg.clone(), client))
    }

    /// The client [`StorageProvider::from_config`] builds, before its credentials: the
    /// SDK retries idempotent calls for at most 30 seconds (the reconciler's backoff does
    /// the rest), and traces each attempt, for the request metrics
    /// ([`crate::providers::requests::google`]).
    pub fn client_builder(
        cfg: &StorageConfig,
    ) -> google_cloud_storage::builder::storage_control::ClientBuilder {
        use google_cloud_gax::retry_policy::RetryPolicyExt;
        let retry = google_cloud_storage::retry_policy::RetryableErrors
            .with_time_limit(Duration::from_secs(30))
            .with_attempt_limit(5);
        let builder = StorageControl::builder()
            .with_retry_policy(retry)
            .with_tracing();
        match &cfg.endpoint {
            Some(endpoint) => builder.with_endpoint(endpoint.clone()),
            None => builder,
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

        let paths = desired::drift(&self.cfg, tenant, &current);
        let current = if paths.is_empty() {
            current
        } else {
            tracing::info!(bucket = %name, fields = ?paths, "repairing bucket settings");
            let req = desired::update_request(&self.cfg, tenant, &current, &paths);
            self.client
                .update_bucket()
                .with_request(req)
                .send()
                .await
                .map_err(|e| classify(&e))?
        };

        let desired = desired::secret_data(&self.cfg, tenant);
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
            recheck_after: None,
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
        if !desired::labelled_for(&b, tenant) {
            return Err(ProviderError::DeletionBlocked {
                service: SERVICE,
                message: format!(
                    "bucket {name} in project {} is not labelled {}={}; check who uses it, then delete it by hand or restore the label",
                    self.cfg.project,
                    desired::LABEL_TENANT,
                    tenant.name
                ),
            });
        }
        // Another tenant's (retained) bucket under this name is not this tenant's to erase.
        if desired::bound_elsewhere(&b, tenant).is_some() {
            tracing::info!(bucket = %name, "bucket is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }
        let resources = vec![self.resource(&b)];
        // With soft delete on, the deleted bucket stays restorable for the retention the
        // bucket had (read just now): the receipt says so, and until when.
        let erased = || Erased {
            resources: resources.clone(),
            restorable: desired::soft_deleted(&b, jiff::Timestamp::now())
                .into_iter()
                .collect(),
        };
        for _ in 0..DELETE_ROUNDS {
            let objects = self.delete_objects(&name).await?;
            tracing::info!(bucket = %name, objects, "objects deleted");
            self.limiter.wait_turn().await;
            let req = DeleteBucketRequest::new().set_name(desired::resource_name(&name));
            match self.client.delete_bucket().with_request(req).send().await {
                Ok(()) => {
                    tracing::info!(bucket = %name, "bucket deleted");
                    return Ok(erased());
                }
                // Gone since the read: this pass's own delete whose answer was lost (the
                // SDK's retry then finds nothing), or one by hand a moment ago.
                Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(erased()),
                Err(e) => match errors::delete_refusal(&e) {
                    Some(DeleteRefusal::NotEmpty) => {
                        tracing::info!(bucket = %name, "bucket not empty yet (objects written meanwhile)");
                    }
                    Some(DeleteRefusal::Blocked(why)) => {
                        return Err(ProviderError::DeletionBlocked {
                            service: SERVICE,
                            message: format!(
                                "bucket {name}: {why}. Cloud Storage refuses to delete it for a \
                                 reason other than its contents (a locked retention policy, a \
                                 hold, ...): resolve that in project {}, and deletion resumes by \
                                 itself; or abandon the component with the annotation \
                                 `dealerdesk.de/abandon: storage` on the DealerTenant (the bucket \
                                 is then kept)",
                                self.cfg.project
                            ),
                        });
                    }
                    None => return Err(classify(&e)),
                },
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

fn not_configured(message: impl Into<String>) -> ProviderError {
    ProviderError::NotConfigured {
        service: SERVICE,
        message: message.into(),
    }
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
