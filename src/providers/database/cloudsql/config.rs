//! `database.cloudsql:` in the operator configuration, the instance names it gives, and the
//! Google credentials it names.

use google_cloud_sql_v1::model::SqlDatabaseVersion;
use serde::{Deserialize, Serialize};

use super::errors::SERVICE;
use crate::providers::{ExternalResource, ProviderError, TenantInfo};

/// The tenant annotation that appends `-<suffix>` to the instance name: the way out when
/// Cloud SQL still reserves the plain name for a deleted instance.
pub const SUFFIX_ANNOTATION: &str = "dealerdesk.de/database-instance-suffix";

/// `database.cloudsql:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Start of the daily backup window, `HH:MM` (UTC); Cloud SQL picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_start_time: Option<String>,
    /// Cloud SQL edition, `ENTERPRISE` or `ENTERPRISE_PLUS`. Cloud SQL's default for new
    /// PostgreSQL 16+ instances is `ENTERPRISE_PLUS`, which does not accept `db-custom-*`
    /// tiers, so the edition is always sent.
    #[serde(default = "default_edition")]
    pub edition: String,
    /// A service-account key file (a mounted Secret); wins over `credentialsEnv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Admin API requests per minute the operator may send, spread evenly (the project's
    /// quota is 180 per minute and user; `0`: no pacing, for test doubles).
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Environment variable holding a service-account key (JSON). When neither it nor the
    /// file is set, Application Default Credentials are used (Workload Identity on GKE).
    #[serde(default = "default_credentials_env")]
    pub credentials_env: String,
    /// Send no credentials at all. Only for emulators and test doubles (needs `endpoint`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous_credentials: bool,
    /// Deadline of one API request.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Days Cloud SQL keeps a final backup it takes when the instance is deleted (1-365);
    /// `0`: none (unless the instance's own final-backup setting asks for one). The erasure
    /// receipt then says the data stays restorable, and until when.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub final_backup_days: u32,
    /// Keep the instance's backups after it is deleted (`settings.retainBackupsOnDelete`;
    /// automated ones per the backup retention setting, on-demand ones until deleted). The
    /// erasure receipt then says they stay restorable until deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_backups_on_delete: bool,
    /// The operator's own built-in user on each instance (made with the Admin API, a member
    /// of `cloudsqlsuperuser`). The operator logs in with it over SQL to make the tenant's
    /// least-privilege role and database; its password is random, held only in the
    /// operator's memory and set again through the Admin API after a restart. Never handed
    /// to the tenant.
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
    /// `host:port` the operator connects to over SQL instead of the instance's IP address
    /// (private when `privateNetwork` is set, else public) at port 5432. For tests only: a
    /// PostgreSQL server standing in for the instances. TLS is required either way; the
    /// tenant's Secret names the instance's address regardless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_endpoint: Option<String>,
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
fn default_requests_per_minute() -> u32 {
    180
}
fn default_edition() -> String {
    "ENTERPRISE".into()
}
fn default_credentials_env() -> String {
    "DEALERTENANT_GOOGLE_CREDENTIALS".into()
}
fn default_admin_user() -> String {
    "dealertenant_admin".into()
}
fn default_timeout() -> u64 {
    30
}
fn is_zero(n: &u32) -> bool {
    *n == 0
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
            backup_start_time: None,
            edition: default_edition(),
            credentials_file: None,
            requests_per_minute: default_requests_per_minute(),
            credentials_env: default_credentials_env(),
            anonymous_credentials: false,
            timeout_seconds: default_timeout(),
            final_backup_days: 0,
            retain_backups_on_delete: false,
            admin_user: default_admin_user(),
            sql_endpoint: None,
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
        if !matches!(self.edition.as_str(), "ENTERPRISE" | "ENTERPRISE_PLUS") {
            return Err(format!(
                "edition: \"{}\" is not ENTERPRISE or ENTERPRISE_PLUS",
                self.edition
            ));
        }
        if !SqlDatabaseVersion::from(self.database_version.as_str())
            .name()
            .is_some_and(|n| n.starts_with("POSTGRES_"))
        {
            return Err(format!(
                "databaseVersion: \"{}\" is not a Cloud SQL for PostgreSQL version",
                self.database_version
            ));
        }
        if let Some(t) = &self.backup_start_time
            && !is_hh_mm(t)
        {
            return Err(format!("backupStartTime: \"{t}\" is not HH:MM"));
        }
        if self.anonymous_credentials && self.endpoint.is_none() {
            return Err(
                "anonymousCredentials: only for an emulator or test double named in endpoint"
                    .into(),
            );
        }
        if self.final_backup_days > 365 {
            return Err(format!(
                "finalBackupDays: {} is above Cloud SQL's maximum of 365",
                self.final_backup_days
            ));
        }
        if self.timeout_seconds == 0 {
            return Err("timeoutSeconds: must be at least 1".into());
        }
        if let Some(why) = admin_user_problem(&self.admin_user) {
            return Err(format!("adminUser: \"{}\" {why}", self.admin_user));
        }
        if let Some(ep) = &self.sql_endpoint
            && split_endpoint(ep).is_none()
        {
            return Err(format!("sqlEndpoint: \"{ep}\" is not host:port"));
        }
        Ok(())
    }

    /// Where the operator connects over SQL to the instance at `ip`: [`Self::sql_endpoint`]
    /// when set (tests), else `ip` at port 5432.
    pub fn sql_address(&self, ip: &str) -> (String, u16) {
        self.sql_endpoint
            .as_deref()
            .and_then(split_endpoint)
            .unwrap_or_else(|| (ip.to_string(), 5432))
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        // An invalid suffix annotation is reported by `reconcile`; the plan shows the plain name.
        let instance = instance_name_for(&self.instance_prefix, t)
            .unwrap_or_else(|_| instance_name(&self.instance_prefix, &t.name));
        let db = crate::providers::database::postgres::database_name(&t.name);
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

/// Why `name` cannot be the operator's admin user, if it cannot: it must be a plain
/// lowercase SQL identifier outside the names the tenants (`dt_*`), PostgreSQL (`pg_*`,
/// `postgres`) and Cloud SQL (`cloudsql*`) use.
fn admin_user_problem(name: &str) -> Option<&'static str> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !plain {
        Some("is not 1-63 lowercase letters, digits or underscores (not starting with a digit)")
    } else if name.starts_with("dt_") {
        Some("is in the tenants' name space dt_*")
    } else if name == "postgres" || name.starts_with("pg_") || name.starts_with("cloudsql") {
        Some("is reserved by PostgreSQL or Cloud SQL")
    } else {
        None
    }
}

/// `host:port` split, with a port that is a number.
fn split_endpoint(ep: &str) -> Option<(String, u16)> {
    let (host, port) = ep.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty())
        .then(|| port.parse().ok().map(|p| (host.to_string(), p)))
        .flatten()
}

fn is_hh_mm(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && t[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && t[3..].parse::<u8>().is_ok_and(|m| m < 60)
        && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
}

/// `<prefix>-<tenant>`: lowercase letters, digits and hyphens, as Cloud SQL requires.
pub fn instance_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}

/// The instance name of `t`: [`instance_name`] plus `-<suffix>` when the tenant carries the
/// [`SUFFIX_ANNOTATION`]. A suffix that would make an invalid name is refused.
pub fn instance_name_for(prefix: &str, t: &TenantInfo) -> Result<String, ProviderError> {
    let base = instance_name(prefix, &t.name);
    let Some(suffix) = t.annotations.get(SUFFIX_ANNOTATION) else {
        return Ok(base);
    };
    let suffix = suffix.trim();
    let valid = !suffix.is_empty()
        && suffix.len() <= 20
        && suffix
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !suffix.ends_with('-');
    if !valid {
        return Err(ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "annotation {SUFFIX_ANNOTATION}: \"{suffix}\" is not 1-20 lowercase letters, \
                 digits or hyphens (not ending in a hyphen)"
            ),
        });
    }
    Ok(format!("{base}-{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::tenant;
    use super::*;

    fn with_suffix(name: &str, suffix: &str) -> TenantInfo {
        let mut t = tenant(name);
        t.annotations
            .insert(SUFFIX_ANNOTATION.into(), suffix.into());
        t
    }

    #[test]
    fn names_follow_prefix_tenant_and_optional_suffix() {
        assert_eq!(instance_name_for("dt", &tenant("acme")).unwrap(), "dt-acme");
        assert_eq!(
            instance_name_for("dt", &with_suffix("acme", "2")).unwrap(),
            "dt-acme-2"
        );
        assert_eq!(
            instance_name_for("dt", &with_suffix("acme", " b7 ")).unwrap(),
            "dt-acme-b7"
        );
        for bad in ["", "Two", "a_b", "x-", "2!", "123456789012345678901"] {
            let e = instance_name_for("dt", &with_suffix("acme", bad)).unwrap_err();
            assert!(!e.is_transient());
            assert!(e.to_string().contains(SUFFIX_ANNOTATION), "{e}");
        }
        let cfg = CloudSqlConfig::default();
        let plan = cfg.plan(&with_suffix("acme", "2"), "google-cloud");
        assert_eq!(plan[0].name, "dt-acme-2");
        assert_eq!(plan[1].name, "dt-acme-2/dt_acme");
        // An invalid suffix leaves the plan on the plain name (reconcile reports it).
        assert_eq!(
            cfg.plan(&with_suffix("acme", "??"), "google-cloud")[0].name,
            "dt-acme"
        );
    }

    #[test]
    fn validation_covers_the_new_fields() {
        assert!(CloudSqlConfig::default().validate().is_ok());
        let bad = [
            CloudSqlConfig {
                edition: "STANDARD".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                database_version: "MYSQL_8_0".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                backup_start_time: Some("25:00".into()),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                anonymous_credentials: true,
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                timeout_seconds: 0,
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                final_backup_days: 366,
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                admin_user: "dt_admin".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                admin_user: "Admin".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                admin_user: "cloudsqlsuperuser".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                sql_endpoint: Some("127.0.0.1".into()),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                sql_endpoint: Some(":5432".into()),
                ..CloudSqlConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let test = CloudSqlConfig {
            sql_endpoint: Some("127.0.0.1:55433".into()),
            ..CloudSqlConfig::default()
        };
        assert!(test.validate().is_ok());
        assert_eq!(test.sql_address("10.0.0.3"), ("127.0.0.1".into(), 55433));
        assert_eq!(
            CloudSqlConfig::default().sql_address("10.0.0.3"),
            ("10.0.0.3".into(), 5432)
        );
        assert!(is_hh_mm("00:00") && is_hh_mm("23:59"));
        assert!(!is_hh_mm("24:00") && !is_hh_mm("2:00") && !is_hh_mm("+1:00"));
    }
}
