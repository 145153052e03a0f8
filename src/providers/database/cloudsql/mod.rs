//! `cloudsql` database provider: one Cloud SQL for PostgreSQL instance per tenant in the
//! tenant's region, through the official `google-cloud-sql-v1` crate; inside it a
//! least-privilege role and database made over SQL (`role.rs`).
//!
//! One reconcile pass at a time (nothing waits for a long-running operation; the operator
//! requeues and the next pass observes):
//! 1. `instances.get` by the deterministic name. Missing: residency check, `instances.insert`
//!    (`sslMode: ENCRYPTED_ONLY`, our labels), report "being created", not ready.
//! 2. Present: it is ours only with the labels `managed-by` and `tenant` (else refused,
//!    nothing written, never deleted), and bound to the tenant's UID by
//!    `dealerdesk-tenant-uid` (another UID: `RetainedDataExists` unless the tenant adopts it
//!    with `dealerdesk.de/adopt-retained: <that uid>`); the reported region is checked;
//!    `PENDING_CREATE`, maintenance and the like report not ready without writing.
//! 3. `RUNNABLE`: work out the Admin API writes needed (the operator's admin user's
//!    password, once per instance and process; drifted settings). None: no Admin API write
//!    at all. Some: read the instance's operations; wait while one runs (Cloud SQL runs one
//!    at a time); a write whose last operation ended with an error less than 10 minutes ago
//!    is not sent again and its error shows (`OperationFailed`); the others go in order,
//!    stopping at the first operation that is not `DONE`.
//! 4. Over SQL, as the admin user (TLS required): the tenant's role and database, by the
//!    `postgres` provider's reconcile (`LOGIN` only, a SCRAM verifier, the database owned
//!    by the role, `CONNECT` revoked from `PUBLIC`). The Secret names the instance's address.
//!    A tenant whose login is still a built-in user from an earlier version is moved to
//!    such a role first (`migrate.rs`; `Migrating` while it waits for Cloud SQL,
//!    `LegacyBuiltInUser` when it cannot go on by itself).
//!
//! Deletion lifts deletion protection, then deletes with the final backup the configuration
//! (or the instance) asks for; the role and database go with the instance. The receipt
//! lists what stays restorable and until when. A name a deleted instance still reserves
//! (`409` on insert while `get` says `404`) is a permanent error that points to
//! `dealerdesk.de/database-instance-suffix`.

mod client;
mod config;
mod desired;
mod errors;
mod instance;
mod migrate;
mod role;
#[cfg(test)]
mod tests;

pub use client::{CloudSqlProvider, from_config};
pub use config::{CloudSqlConfig, SUFFIX_ANNOTATION, instance_name, instance_name_for};
pub use desired::{
    KEY_SSLMODE, LABEL_MANAGED_BY, LABEL_TENANT, LABEL_TENANT_UID, MANAGED_BY, adopt_command,
    check_ownership, check_uid, connect_address, connection_name, desired_backup_configuration,
    desired_instance, desired_ip_configuration, desired_settings, labels, owner_of, secret_data,
    settings_patch,
};
pub use errors::{classify, reserved_name_message};

use google_cloud_sql_v1::model::{
    Settings, database_instance::SqlInstanceState, operation::SqlOperationType,
};

use crate::providers::google::uid_label_value;
use crate::providers::{
    Component, Erased, Provider, ProviderError, Reconciled, SecretData, TenantInfo, residency,
};
pub use role::{CLOUDSQLSUPERUSER, LEGACY_BUILT_IN_USER, MIGRATING};

use desired::{final_backup_days, restorable_after_delete};
use errors::{
    SERVICE, days_after, failure_text, held_back, latest, operation_done, running, timestamp,
};
use role::TenantRole;

/// How long to wait before looking at an instance that is being created or is in
/// maintenance again. Cloud SQL takes minutes to create one, and every look is an Admin API
/// request against the project's quota (180 a minute): at the reconciler's default of 15 s,
/// 45 instances being created at once would spend all of it on waiting.
pub const INSTANCE_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait::async_trait]
impl Provider for CloudSqlProvider {
    fn component(&self) -> Component {
        Component::Database
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = instance_name_for(&self.cfg.instance_prefix, tenant)?;
        let db = super::postgres::database_name(&tenant.name);

        let Some(instance) = self.get_instance(&name).await? else {
            return self.create_instance(tenant, &name).await;
        };
        check_ownership(&name, &tenant.name, &instance)?;
        // Whose is it? One bound to another tenant UID is not touched, credentials
        // included, unless this tenant adopts it by that UID.
        check_uid(&name, tenant, &instance)?;
        residency::check_reported(
            &format!("Cloud SQL instance {name}"),
            &instance.region,
            &tenant.region,
        )?;
        if let Some(waiting) = self.gate(&name, &instance).await? {
            return Ok(waiting);
        }
        let region = instance.region.clone();
        let conn = if instance.connection_name.is_empty() {
            connection_name(self.project(), &region, &name)
        } else {
            instance.connection_name.clone()
        };
        let Some(host) = connect_address(&self.cfg, &instance) else {
            let which = if self.cfg.private_network.is_some() {
                "private"
            } else {
                "public"
            };
            let msg = format!("instance {name} has no {which} IP address yet");
            return Ok(self.waiting(&name, &region, msg));
        };
        let (patch, drift) = settings_patch(
            &self.cfg,
            &tenant.name,
            &tenant.uid,
            &instance.settings.clone().unwrap_or_default(),
        );
        let password = secret
            .and_then(|s| s.get("DATABASE_PASSWORD"))
            .filter(|p| !p.is_empty());
        // The Secret as it should read with the password it has now (no write needed to
        // refresh connection details, e.g. after an IP change).
        let refreshed = |pw: &str| secret_data(&host, &db, pw, &conn);
        // Admin API writes wait while an operation runs (Cloud SQL runs one at a time). A
        // write whose last operation failed less than HOLD_AFTER_FAILURE ago is not sent
        // again: its error, in Cloud SQL's words, is what the pass reports.
        let ops = if !self.admin.is_set(&name) || !drift.is_empty() {
            self.list_operations(&name).await?
        } else {
            Vec::new()
        };
        // A pass that cannot look inside the instance now: a tenant with a Secret keeps
        // working meanwhile (after a restart, every instance's operator user is set again).
        let unverified = |message: String| Reconciled {
            ready: password.is_some(),
            reason: None,
            message,
            secret: password.map(refreshed).filter(|s| Some(s) != secret),
            resources: self.resources(&name, &region, password.map(|_| db.as_str())),
            recheck_after: None,
        };
        if let Some(op) = running(&ops) {
            return Ok(unverified(format!(
                "waiting for operation {} ({}) on instance {name}",
                op.name,
                op.operation_type.name().unwrap_or("UNKNOWN")
            )));
        }
        self.admin.settle(&name, &ops);
        let admin_set = self.admin.is_set(&name);
        let now = jiff::Timestamp::now();
        let held = |kind: SqlOperationType, what: &str| {
            held_back(&ops, &kind, now).map(|h| h.message(what))
        };
        let mut failed: Vec<String> = Vec::new();

        // 1. The operator's admin user: this process's password, once per instance.
        let what = format!("set the password of the operator's user on instance {name}");
        let held_admin = held(SqlOperationType::UpdateUser, &what)
            .or_else(|| held(SqlOperationType::CreateUser, &what));
        if !admin_set && let Some(m) = held_admin {
            failed.push(m);
        } else if !admin_set {
            let op = self.set_admin(&name, &what).await?;
            tracing::info!(instance = %name, user = %self.cfg.admin_user, "Cloud SQL admin user credentials set");
            match operation_done(&what, &op) {
                Err(e) => failed.push(failure_text(e).replace(self.admin.password(), "[redacted]")),
                Ok(true) => self.admin.mark_set(&name),
                Ok(false) => {
                    self.admin.pending(&name, &op.name);
                    return Ok(unverified(format!(
                        "the operator's user is being set up on instance {name} (operation {})",
                        op.name
                    )));
                }
            }
        }

        // 2. The tenant's role and database, over SQL.
        let mut message = format!("instance {name} is ready ({conn})");
        let mut issued = None;
        let mut legacy = None;
        if self.admin.is_set(&name) {
            let sql = role::sql_provider(&self.cfg, &host, &region, self.admin.password())?;
            match self.tenant_role(&sql, &name, tenant, secret).await? {
                None => {
                    // Someone changed the admin user's password: set it again next pass.
                    self.admin.forget(&name);
                    return Err(ProviderError::Unavailable {
                        service: SERVICE,
                        message: format!(
                            "instance {name} refused the password of the operator's user {} \
                             (changed outside the operator?); it is set again on the next pass",
                            self.cfg.admin_user
                        ),
                    });
                }
                Some(TenantRole::Legacy { message }) => {
                    legacy = Some((LEGACY_BUILT_IN_USER, message))
                }
                Some(TenantRole::Waiting { message }) => legacy = Some((MIGRATING, message)),
                Some(TenantRole::Ready {
                    password: pw,
                    issued: new,
                    message: done,
                }) => {
                    message.push_str(&format!("; {done}"));
                    let s = refreshed(&pw);
                    if new || Some(&s) != secret {
                        issued = Some(s);
                    }
                }
            }
        }

        // 3. Drifted settings.
        let what = format!("update settings of instance {name}");
        if !drift.is_empty()
            && let Some(m) = held(SqlOperationType::Update, &what)
        {
            failed.push(format!("{m} (drifted: {})", drift.join(", ")));
        } else if !drift.is_empty() {
            let op = self.patch_settings(&name, patch, &what).await?;
            tracing::info!(instance = %name, drift = ?drift, operation = %op.name, "Cloud SQL settings drift repair sent");
            match operation_done(&what, &op) {
                Ok(true) => message.push_str(&format!("; repaired {}", drift.join(", "))),
                Ok(false) => message.push_str(&format!(
                    "; repairing {} (operation {})",
                    drift.join(", "),
                    op.name
                )),
                Err(e) => failed.push(failure_text(e)),
            }
        }

        // The tenant's role and database exist once the SQL step went through.
        let made = issued.is_some() || (self.admin.is_set(&name) && legacy.is_none());
        let resources = self.resources(&name, &region, made.then_some(db.as_str()));
        if let Some((reason, message)) = legacy {
            tracing::warn!(instance = %name, %reason, "tenant user is a legacy built-in user");
            // The application keeps its working login; the condition says what goes on.
            return Ok(Reconciled {
                ready: false,
                reason: Some(reason),
                message,
                secret: password.map(refreshed).filter(|s| Some(s) != secret),
                resources,
                recheck_after: None,
            });
        }
        if !failed.is_empty() {
            let message = failed.join("; ");
            tracing::warn!(instance = %name, %message, "Cloud SQL operation failed");
            // Credentials issued in this pass are handed over all the same.
            return match issued {
                Some(s) => Ok(Reconciled {
                    ready: false,
                    reason: Some("OperationFailed"),
                    message,
                    secret: Some(s),
                    resources,
                    recheck_after: None,
                }),
                None => Err(ProviderError::OperationFailed {
                    service: SERVICE,
                    message,
                }),
            };
        }

        let version = self.cfg.database_version.as_str();
        if instance.database_version.name() != Some(version) {
            message.push_str(&format!(
                "; runs {} while {version} is configured (major upgrades are not automatic)",
                instance.database_version.name().unwrap_or("UNKNOWN")
            ));
        }
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: issued,
            resources,
            recheck_after: None,
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = instance_name_for(&self.cfg.instance_prefix, tenant)?;
        let db = super::postgres::database_name(&tenant.name);
        let Some(instance) = self.get_instance(&name).await? else {
            return Ok(Erased::default());
        };
        // Not marked as this tenant's: neither its deletion protection nor the instance is
        // touched; a person decides.
        if check_ownership(&name, &tenant.name, &instance).is_err() {
            tracing::warn!(instance = %name, "instance is not labelled as the tenant's; not deleted");
            return Err(ProviderError::DeletionBlocked {
                service: SERVICE,
                message: format!(
                    "instance {name} is not labelled {LABEL_MANAGED_BY}={MANAGED_BY} and \
                     {LABEL_TENANT}={}; nothing was changed. Check who uses it, then delete it \
                     by hand, or label it ({}) to let the operator delete it",
                    tenant.name,
                    adopt_command(&name, &tenant.name)
                ),
            });
        }
        // Another tenant's (retained) instance under this name is not this tenant's to erase.
        if let Some(owner) = owner_of(&instance)
            && owner != uid_label_value(&tenant.uid)
        {
            tracing::info!(instance = %name, "instance is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }
        let region = instance.region.clone();
        // The tenant's role and database live inside the instance and go with it.
        let inside = (instance.state == SqlInstanceState::Runnable).then_some(db.as_str());
        let erased = Erased {
            resources: self.resources(&name, &region, inside),
            ..Erased::default()
        };
        // A final backup outlives the instance: the receipt must say until when.
        let final_days = final_backup_days(&self.cfg, &instance);
        // Whole seconds: the expiry sent and the one in the receipt are the same.
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        let ops = self.list_operations(&name).await?;
        if instance.state == SqlInstanceState::PendingDelete {
            // Accepted on an earlier pass; Cloud SQL finishes on its own. The final backup
            // expires at the latest its days after that delete was accepted.
            let since = latest(&ops, &SqlOperationType::Delete)
                .and_then(|op| timestamp(op.insert_time.as_ref()))
                .unwrap_or(now);
            let expiry = final_days.map(|d| days_after(since, d));
            return Ok(Erased {
                restorable: restorable_after_delete(&name, &instance, expiry),
                ..erased
            });
        }
        if let Some(op) = running(&ops) {
            return Err(ProviderError::Unavailable {
                service: SERVICE,
                message: format!(
                    "instance {name}: waiting for operation {} ({}) before deleting",
                    op.name,
                    op.operation_type.name().unwrap_or("UNKNOWN")
                ),
            });
        }
        let protected = instance
            .settings
            .as_ref()
            .and_then(|s| s.deletion_protection_enabled)
            .unwrap_or(false);
        if protected {
            let what = format!("lift deletion protection of instance {name}");
            let mut settings = Settings::new();
            settings.deletion_protection_enabled = Some(false);
            let op = self.patch_settings(&name, settings, &what).await?;
            tracing::info!(instance = %name, operation = %op.name, "Cloud SQL deletion protection lifted");
            if !operation_done(&what, &op)? {
                return Err(ProviderError::Unavailable {
                    service: SERVICE,
                    message: format!(
                        "instance {name}: deletion protection is being lifted (operation {}); \
                         deleting on the next pass",
                        op.name
                    ),
                });
            }
        }
        let what = format!("delete instance {name}");
        if let Some(h) = held_back(&ops, &SqlOperationType::Delete, jiff::Timestamp::now()) {
            return Err(ProviderError::OperationFailed {
                service: SERVICE,
                message: h.message(&what),
            });
        }
        let expiry = final_days.map(|d| days_after(now, d));
        let Some(op) = self.delete_instance(&name, expiry, &what).await? else {
            return Ok(erased);
        };
        operation_done(&what, &op)?;
        tracing::info!(instance = %name, operation = %op.name, "Cloud SQL instance delete accepted");
        Ok(Erased {
            restorable: restorable_after_delete(&name, &instance, expiry),
            ..erased
        })
    }
}
