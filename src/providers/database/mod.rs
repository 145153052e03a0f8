//! The tenant's own database, from one of two providers chosen in the configuration:
//! `postgres` (a database and login role on a shared PostgreSQL server) or `cloudsql` (a
//! Cloud SQL for PostgreSQL instance per tenant, in the tenant's region).

pub mod cloudsql;
pub mod postgres;

use serde::{Deserialize, Serialize};

use super::{ExternalResource, TenantInfo};

/// Which database provider runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseProviderKind {
    #[default]
    Postgres,
    Cloudsql,
}

/// `database:` in the operator configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default)]
    pub provider: DatabaseProviderKind,
    #[serde(default)]
    pub postgres: postgres::PostgresConfig,
    #[serde(default)]
    pub cloudsql: cloudsql::CloudSqlConfig,
}

impl DatabaseConfig {
    /// Checks the settings of the selected provider.
    pub fn validate(&self) -> Result<(), String> {
        match self.provider {
            DatabaseProviderKind::Postgres => self
                .postgres
                .validate()
                .map_err(|e| format!("database.postgres.{e}")),
            DatabaseProviderKind::Cloudsql => self
                .cloudsql
                .validate()
                .map_err(|e| format!("database.cloudsql.{e}")),
        }
    }

    /// What a tenant gets, offline.
    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        match self.provider {
            DatabaseProviderKind::Postgres => self.postgres.plan(t, processor),
            DatabaseProviderKind::Cloudsql => self.cloudsql.plan(t, processor),
        }
    }
}
