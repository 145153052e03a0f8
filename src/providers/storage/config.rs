//! `storage:` in the operator configuration.

use serde::{Deserialize, Serialize};

use super::desired::bucket_name;
use crate::providers::{ExternalResource, TenantInfo};

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
