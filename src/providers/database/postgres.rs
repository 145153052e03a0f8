//! `postgres` database provider: one database and one login role per tenant on a
//! PostgreSQL server named in the configuration.

use serde::{Deserialize, Serialize};

use crate::api::regions;
use crate::providers::{ExternalResource, TenantInfo};

/// `database.postgres:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host tenant servers and the operator connect to.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Administrative login that may create databases and roles.
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
    /// Environment variable holding the admin password.
    #[serde(default = "default_password_env")]
    pub admin_password_env: String,
    /// Or a file (a mounted Secret) holding it; wins over the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_file: Option<String>,
    /// Database the operator connects to for administration.
    #[serde(default = "default_admin_database")]
    pub admin_database: String,
    /// The Google Cloud region the server runs in (it holds tenant data: EU only).
    pub region: String,
}

fn default_port() -> u16 {
    5432
}
fn default_admin_user() -> String {
    "postgres".into()
}
fn default_password_env() -> String {
    "DEALERTENANT_POSTGRES_PASSWORD".into()
}
fn default_admin_database() -> String {
    "postgres".into()
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            host: "postgres.dealertenant-system.svc".into(),
            port: default_port(),
            admin_user: default_admin_user(),
            admin_password_env: default_password_env(),
            admin_password_file: None,
            admin_database: default_admin_database(),
            region: "europe-west3".into(),
        }
    }
}

impl PostgresConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("host: must not be empty".into());
        }
        if let Some(why) = regions::why_not_eu(&self.region) {
            return Err(format!("region: {why}"));
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        let name = database_name(&t.name);
        vec![
            ExternalResource::new("Database", &name, Some(self.region.clone()), processor),
            ExternalResource::new("DatabaseRole", &name, Some(self.region.clone()), processor),
        ]
    }
}

/// Database and role name of a tenant: `dt_<name>` with `-` as `_` (a plain SQL identifier,
/// at most 43 characters, well inside PostgreSQL's 63).
pub fn database_name(tenant: &str) -> String {
    format!("dt_{}", tenant.replace('-', "_"))
}
