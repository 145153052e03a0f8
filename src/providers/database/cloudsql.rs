//! `cloudsql` database provider: one Cloud SQL for PostgreSQL instance per tenant in the
//! tenant's region, through the official `google-cloud-sql-v1` crate.

use serde::{Deserialize, Serialize};

use crate::providers::{ExternalResource, TenantInfo};

/// `database.cloudsql:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudSqlConfig {
    /// Google Cloud project that owns the instances.
    pub project: String,
    /// API endpoint; the SDK's default (Google) when absent. Tests point it at 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Prefix of instance names: `<prefix>-<tenant>`.
    #[serde(default = "default_prefix")]
    pub instance_prefix: String,
    /// e.g. `POSTGRES_16`.
    #[serde(default = "default_version")]
    pub database_version: String,
    /// Machine tier, e.g. `db-custom-1-3840`.
    #[serde(default = "default_tier")]
    pub tier: String,
    #[serde(default = "default_disk")]
    pub disk_size_gb: i64,
    /// `ZONAL` or `REGIONAL`.
    #[serde(default = "default_availability")]
    pub availability_type: String,
    #[serde(default = "yes")]
    pub backups: bool,
    #[serde(default = "yes")]
    pub point_in_time_recovery: bool,
    #[serde(default = "yes")]
    pub deletion_protection: bool,
    /// VPC network for a private IP, e.g. `projects/p/global/networks/default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_network: Option<String>,
    /// CIDRs allowed to connect over the public IP (when there is no private network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_networks: Vec<String>,
}

fn default_prefix() -> String {
    "dt".into()
}
fn default_version() -> String {
    "POSTGRES_16".into()
}
fn default_tier() -> String {
    "db-custom-1-3840".into()
}
fn default_disk() -> i64 {
    20
}
fn default_availability() -> String {
    "ZONAL".into()
}
fn yes() -> bool {
    true
}

impl Default for CloudSqlConfig {
    fn default() -> Self {
        Self {
            project: "dealerdesk-prod".into(),
            endpoint: None,
            instance_prefix: default_prefix(),
            database_version: default_version(),
            tier: default_tier(),
            disk_size_gb: default_disk(),
            availability_type: default_availability(),
            backups: true,
            point_in_time_recovery: true,
            deletion_protection: true,
            private_network: None,
            authorized_networks: Vec::new(),
        }
    }
}

impl CloudSqlConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.project.trim().is_empty() {
            return Err("project: must not be empty".into());
        }
        if !matches!(self.availability_type.as_str(), "ZONAL" | "REGIONAL") {
            return Err(format!(
                "availabilityType: \"{}\" is not ZONAL or REGIONAL",
                self.availability_type
            ));
        }
        if self.disk_size_gb < 10 {
            return Err(format!(
                "diskSizeGb: {} is below Cloud SQL's minimum of 10",
                self.disk_size_gb
            ));
        }
        if self.private_network.is_none() && self.authorized_networks.is_empty() {
            // Neither: the instance is reachable only through the Cloud SQL Auth Proxy.
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        let instance = instance_name(&self.instance_prefix, &t.name);
        let db = super::postgres::database_name(&t.name);
        let loc = Some(t.region.clone());
        vec![
            ExternalResource::new("CloudSqlInstance", &instance, loc.clone(), processor),
            ExternalResource::new(
                "Database",
                format!("{instance}/{db}"),
                loc.clone(),
                processor,
            ),
            ExternalResource::new("DatabaseUser", format!("{instance}/{db}"), loc, processor),
        ]
    }
}

/// `<prefix>-<tenant>`: lowercase letters, digits and hyphens, as Cloud SQL requires.
pub fn instance_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}
