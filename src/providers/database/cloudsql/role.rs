//! The tenant's role and database, made over SQL by the operator's own built-in user.
//!
//! A user made with the Admin API (`users.insert`, type `BUILT_IN`) is a member of
//! `cloudsqlsuperuser` with `CREATEROLE` and `CREATEDB` ("About PostgreSQL users and roles",
//! <https://cloud.google.com/sql/docs/postgres/users>; "Create and manage users",
//! <https://cloud.google.com/sql/docs/postgres/create-manage-users>): a credential that can
//! administer its own instance. So only the operator gets one ([`CloudSqlConfig::admin_user`],
//! its password random and held in this process only), and the tenant gets a role made
//! with SQL through the `postgres` provider's reconcile: `LOGIN` and nothing else, its
//! password a SCRAM verifier, owner of its database, on which `PUBLIC` holds nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use google_cloud_sql_v1::model::Operation;

use super::client::CloudSqlProvider;
use super::config::CloudSqlConfig;
use super::errors::{SERVICE, operation_done};
use super::migrate::Migration;
use crate::providers::database::postgres::{
    self, KEY_PASSWORD, PostgresConfig, PostgresProvider, SslMode,
};
use crate::providers::{Provider, ProviderError, SecretData, TenantInfo};

/// The condition reason while a tenant still logs in with a built-in user made by an
/// earlier version (a member of `cloudsqlsuperuser`) that the operator cannot replace by
/// itself.
pub const LEGACY_BUILT_IN_USER: &str = "LegacyBuiltInUser";

/// The condition reason while such a user is being replaced and a step waits for Cloud SQL.
pub const MIGRATING: &str = "Migrating";

/// The role Cloud SQL makes every built-in user a member of.
pub const CLOUDSQLSUPERUSER: &str = "cloudsqlsuperuser";

/// The password of the operator's admin user and the instances on which this process has
/// set it. One random password for every instance of the provider, generated at start and
/// never stored anywhere but here (one per instance would sit in the same memory and travel
/// the same way, so it would protect nothing more): after a restart each instance's admin
/// user gets it with one `users.update` (the first pass that needs SQL).
pub(super) struct AdminLogin {
    password: String,
    set_on: Mutex<HashSet<String>>,
    /// Instance -> the operation setting the password that had not finished when its pass
    /// ended.
    pending: Mutex<HashMap<String, String>>,
    /// Instances this process created: their operator user does not exist yet.
    created: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminLogin")
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl AdminLogin {
    pub(super) fn new() -> Self {
        Self {
            password: crate::providers::secret::random_password(),
            set_on: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            created: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn password(&self) -> &str {
        &self.password
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A poisoned lock only means another pass panicked; the set is still usable.
        self.set_on.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this process set the password on instance `inst`.
    pub(super) fn is_set(&self, inst: &str) -> bool {
        self.set().contains(inst)
    }

    pub(super) fn mark_set(&self, inst: &str) {
        self.set().insert(inst.to_string());
        let mut c = self.created.lock().unwrap_or_else(|p| p.into_inner());
        c.remove(inst);
    }

    /// This process created instance `inst`.
    pub(super) fn created(&self, inst: &str) {
        let mut c = self.created.lock().unwrap_or_else(|p| p.into_inner());
        c.insert(inst.to_string());
    }

    /// Whether the operator user on `inst` is likely new (the instance was created by this
    /// process): then `users.insert` is tried first, else `users.update`.
    pub(super) fn likely_new(&self, inst: &str) -> bool {
        let c = self.created.lock().unwrap_or_else(|p| p.into_inner());
        c.contains(inst)
    }

    /// The operation `op` sets the password on `inst` and has not finished yet.
    pub(super) fn pending(&self, inst: &str, op: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.insert(inst.to_string(), op.to_string());
    }

    /// Given the instance's operations (none running): the password is set when the
    /// pending operation finished without error.
    pub(super) fn settle(&self, inst: &str, ops: &[Operation]) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(name) = p.remove(inst) else { return };
        drop(p);
        if ops
            .iter()
            .any(|op| op.name == name && operation_done("", op).unwrap_or(false))
        {
            self.mark_set(inst);
        }
    }

    /// The instance refused the password (changed by someone else): set it again.
    pub(super) fn forget(&self, inst: &str) {
        self.set().remove(inst);
    }
}

/// What the SQL part of a pass did.
pub(super) enum TenantRole {
    /// The role and database are as they should be; `password` is the one that works now,
    /// `issued` whether it is new. `message` says what was done.
    Ready {
        password: String,
        issued: bool,
        message: String,
    },
    /// The tenant's login is a built-in user made by an earlier version that the operator
    /// cannot replace on its own; `message` says why and what to do.
    Legacy { message: String },
    /// Replacing such a user waits for Cloud SQL.
    Waiting { message: String },
}

/// The `postgres` provider for instance `inst`, reached at `ip` (or the configured
/// `sqlEndpoint`), logging in as the operator's admin user.
pub(super) fn sql_provider(
    cfg: &CloudSqlConfig,
    ip: &str,
    region: &str,
    admin_password: &str,
) -> Result<PostgresProvider, ProviderError> {
    let (host, port) = cfg.sql_address(ip);
    let pg = PostgresConfig {
        host,
        port,
        admin_user: cfg.admin_user.clone(),
        admin_database: "postgres".into(),
        region: region.to_string(),
        connect_timeout_seconds: cfg.timeout_seconds,
        // The instance accepts encrypted connections only (`sslMode: ENCRYPTED_ONLY`).
        ssl_mode: SslMode::Require,
        ca_file: None,
        ..PostgresConfig::default()
    };
    PostgresProvider::with_admin_password(&pg, admin_password.to_string())
}

impl CloudSqlProvider {
    /// The tenant's role and database on instance `inst`: a built-in user from an earlier
    /// version replaced first (`migrate.rs`), then checked, made or repaired by the
    /// `postgres` provider's reconcile. `Ok(None)`: the instance refused the admin's
    /// password.
    pub(super) async fn tenant_role(
        &self,
        sql: &PostgresProvider,
        inst: &str,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Option<TenantRole>, ProviderError> {
        let name = postgres::database_name(&tenant.name);
        let Some(probe) = sql.probe(&name).await? else {
            return Ok(None);
        };
        let kept = secret
            .and_then(|s| s.get(KEY_PASSWORD))
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        match self
            .migrate(sql, inst, &name, kept.as_deref(), &probe)
            .await?
        {
            Migration::Done => {}
            Migration::Waiting(message) => return Ok(Some(TenantRole::Waiting { message })),
            Migration::Blocked(message) => return Ok(Some(TenantRole::Legacy { message })),
        }
        let done = sql.reconcile(tenant, secret).await?;
        let fresh = done
            .secret
            .as_ref()
            .and_then(|s| s.get(KEY_PASSWORD))
            .map(str::to_string);
        let issued = fresh.is_some() && fresh != kept;
        let Some(password) = fresh.or(kept) else {
            return Err(ProviderError::Unavailable {
                service: SERVICE,
                message: format!("role {name} on instance {inst}: no password was issued"),
            });
        };
        Ok(Some(TenantRole::Ready {
            password,
            issued,
            message: done.message,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_admin_password() {
        let a = AdminLogin::new();
        assert!(!format!("{a:?}").contains(a.password()));
    }

    #[test]
    fn the_sql_connection_goes_to_the_endpoint_over_tls() {
        let cfg = CloudSqlConfig {
            sql_endpoint: Some("127.0.0.1:55433".into()),
            ..CloudSqlConfig::default()
        };
        let p = sql_provider(&cfg, "10.0.0.3", "europe-west3", "pw-1234").unwrap();
        let c = p.config();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 55433));
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.admin_user, "dealertenant_admin");
        let p = sql_provider(&CloudSqlConfig::default(), "10.0.0.3", "eu", "pw").unwrap();
        assert_eq!(
            (p.config().host.as_str(), p.config().port),
            ("10.0.0.3", 5432)
        );
    }
}
