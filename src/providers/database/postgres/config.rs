//! `database.postgres:` in the operator configuration, and the admin password it points at.

use serde::{Deserialize, Serialize};

use super::errors::not_configured;
use crate::api::regions;
use crate::providers::{ExternalResource, ProviderError, TenantInfo};

/// `database.postgres:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Seconds to wait for a connection (TCP and login) before giving up (transient).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Longest one statement may run (server-side `statement_timeout`; the client gives
    /// up a few seconds later). Lock waits are limited to a quarter of it.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_seconds: u64,
    /// TLS for the operator's connections: `require` (encrypted, certificate not checked),
    /// `verify-full` (the certificate must chain to `caFile` and name `host`) or `disable`
    /// (plain; only for a local proxy that encrypts itself, such as the Cloud SQL Auth
    /// Proxy or AlloyDB Auth Proxy, which clients reach in plain text on localhost).
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// PEM file (a mounted Secret or ConfigMap) with the CA certificate(s) that sign the
    /// server's certificate; required for, and only used with, `sslMode: verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// `sslMode`, as libpq's `sslmode` of the same names.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Encrypted; the server's certificate is not verified.
    #[default]
    Require,
    /// Encrypted; the certificate must chain to `caFile` and name `host`.
    VerifyFull,
    /// No TLS: only for a local proxy that encrypts the connection itself.
    Disable,
}

pub(super) fn default_port() -> u16 {
    5432
}
pub(super) fn default_admin_user() -> String {
    "postgres".into()
}
pub(super) fn default_password_env() -> String {
    "DEALERTENANT_POSTGRES_PASSWORD".into()
}
pub(super) fn default_admin_database() -> String {
    "postgres".into()
}
pub(super) fn default_connect_timeout() -> u64 {
    10
}
pub(super) fn default_statement_timeout() -> u64 {
    60
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
            connect_timeout_seconds: default_connect_timeout(),
            statement_timeout_seconds: default_statement_timeout(),
            ssl_mode: SslMode::default(),
            ca_file: None,
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
        if self.connect_timeout_seconds == 0 {
            return Err("connectTimeoutSeconds: must be at least 1".into());
        }
        if self.statement_timeout_seconds == 0 {
            return Err("statementTimeoutSeconds: must be at least 1".into());
        }
        match (self.ssl_mode, &self.ca_file) {
            (SslMode::VerifyFull, None) => {
                return Err("caFile: required with sslMode verify-full".into());
            }
            (SslMode::Require | SslMode::Disable, Some(_)) => {
                return Err("caFile: only used with sslMode verify-full".into());
            }
            _ => {}
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

/// The admin password: the file (trailing line break removed) wins over the variable.
pub(super) fn admin_password(
    cfg: &PostgresConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ProviderError> {
    let password = match &cfg.admin_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                // The io error says why (not found, permission), never the content.
                not_configured(&format!("cannot read adminPasswordFile {path}: {e}"))
            })?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        None => env(&cfg.admin_password_env).ok_or_else(|| {
            not_configured(&format!(
                "environment variable {} (adminPasswordEnv) is not set",
                cfg.admin_password_env
            ))
        })?,
    };
    if password.is_empty() {
        return Err(not_configured("the admin password is empty"));
    }
    Ok(password)
}

/// The configuration the unit tests of this provider's modules share.
#[cfg(test)]
pub(super) fn test_config() -> PostgresConfig {
    PostgresConfig {
        host: "db.internal".into(),
        port: 6543,
        ..PostgresConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_config as cfg;
    use super::*;
    use crate::providers::secret::random_password;

    #[test]
    fn admin_password_file_wins_over_the_variable() {
        let dir = std::env::temp_dir().join(format!("pgpw-{}", random_password()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let env = |name: &str| (name == "PGADMIN").then(|| "from-env".to_string());

        let mut c = PostgresConfig {
            admin_password_env: "PGADMIN".into(),
            ..cfg()
        };
        assert_eq!(admin_password(&c, env).unwrap(), "from-env");
        c.admin_password_file = Some(file.to_string_lossy().into_owned());
        assert_eq!(admin_password(&c, env).unwrap(), "from-file");

        // Missing file: not configured, and nothing of the variable's value in the message.
        c.admin_password_file = Some(dir.join("absent").to_string_lossy().into_owned());
        let e = admin_password(&c, env).unwrap_err();
        assert_eq!(e.reason(), "NotConfigured");
        assert!(!e.to_string().contains("from-env"));

        c.admin_password_file = None;
        c.admin_password_env = "UNSET".into();
        let e = admin_password(&c, env).unwrap_err();
        assert!(e.to_string().contains("UNSET"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        c.admin_password_file = Some(file.to_string_lossy().into_owned());
        assert_eq!(
            admin_password(&c, env).unwrap_err().reason(),
            "NotConfigured"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ssl_mode_and_ca_file_go_together() {
        let c: PostgresConfig = serde_saphyr::from_str("host: db\nregion: europe-west3\n").unwrap();
        assert_eq!((c.ssl_mode, c.ca_file.as_deref()), (SslMode::Require, None));
        let full: PostgresConfig = serde_saphyr::from_str(
            "host: db\nregion: europe-west3\nsslMode: verify-full\ncaFile: /etc/pg/ca.crt\n",
        )
        .unwrap();
        assert_eq!(full.ssl_mode, SslMode::VerifyFull);
        assert!(full.validate().is_ok());
        let no_ca = PostgresConfig {
            ca_file: None,
            ..full.clone()
        };
        assert!(no_ca.validate().unwrap_err().contains("caFile"));
        let unused_ca = PostgresConfig {
            ssl_mode: SslMode::Disable,
            ..full
        };
        assert!(unused_ca.validate().is_err());
        assert!(
            serde_saphyr::from_str::<PostgresConfig>(
                "host: db\nregion: europe-west3\nsslMode: prefer\n"
            )
            .is_err()
        );
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: PostgresConfig = serde_saphyr::from_str("host: db\nregion: europe-west3\n").unwrap();
        assert_eq!(c.port, 5432);
        assert_eq!(c.connect_timeout_seconds, 10);
        assert_eq!(c.statement_timeout_seconds, 60);
        assert!(c.validate().is_ok());
        let zero = PostgresConfig {
            connect_timeout_seconds: 0,
            ..c.clone()
        };
        assert!(zero.validate().is_err());
        let us = PostgresConfig {
            region: "us-central1".into(),
            ..c
        };
        assert!(us.validate().is_err());
    }
}
