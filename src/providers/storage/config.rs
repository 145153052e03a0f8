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
    /// Soft-delete retention in days: 0 turns soft delete off, otherwise 7 to 90 (what
    /// Cloud Storage accepts). A deleted bucket stays restorable this long.
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

/// Least soft-delete retention when soft delete is on, and the most, in days
/// (<https://cloud.google.com/storage/docs/soft-delete>: the retention can be raised to
/// 90 days, or set to 0 to turn soft delete off; the minimum with soft delete on is 7 days).
pub const MIN_SOFT_DELETE_DAYS: u32 = 7;
pub const MAX_SOFT_DELETE_DAYS: u32 = 90;

/// Whether Cloud Storage accepts a soft-delete retention of `days`.
pub fn soft_delete_days_allowed(days: u32) -> bool {
    days == 0 || (MIN_SOFT_DELETE_DAYS..=MAX_SOFT_DELETE_DAYS).contains(&days)
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
        if !soft_delete_days_allowed(self.soft_delete_days) {
            return Err(format!(
                "storage.softDeleteDays: {} is not a retention Cloud Storage accepts: 0 (soft \
                 delete off) or from {MIN_SOFT_DELETE_DAYS} to {MAX_SOFT_DELETE_DAYS} days",
                self.soft_delete_days
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_delete_days_are_0_or_7_to_90() {
        for ok in [0, 7, 30, 90] {
            let cfg = StorageConfig {
                soft_delete_days: ok,
                ..StorageConfig::default()
            };
            assert!(cfg.validate().is_ok(), "{ok}");
        }
        for bad in [1, 6, 91, 365] {
            let cfg = StorageConfig {
                soft_delete_days: bad,
                ..StorageConfig::default()
            };
            let e = cfg.validate().unwrap_err();
            assert!(e.starts_with("storage.softDeleteDays:"), "{e}");
            assert!(e.contains(&bad.to_string()) && e.contains("7 to 90"), "{e}");
        }
        // At configuration load.
        let e = crate::config::OperatorConfig::from_yaml(
            "storage:\n  project: dd-prod\n  bucketPrefix: dd-prod\n  softDeleteDays: 120\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("storage.softDeleteDays") && e.contains("7 to 90"),
            "{e}"
        );
    }
}
