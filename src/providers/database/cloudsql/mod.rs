//! `cloudsql` database provider: one Cloud SQL for PostgreSQL instance per tenant in the
//! tenant's region, through the official `google-cloud-sql-v1` crate.
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
//! 3. `RUNNABLE`: work out the writes needed (database, user, password, drifted settings).
//!    None: no write at all. Some: read the instance's operations; wait while one runs (Cloud
//!    SQL runs one at a time); a write whose last operation ended with an error less than 10
//!    minutes ago is not sent again and its error shows (`OperationFailed`); the others go
//!    in order, stopping at the first operation that is not `DONE`.
//!
//! Deletion lifts deletion protection, then deletes with the final backup the configuration
//! (or the instance) asks for; the receipt lists what stays restorable and until when. A
//! name a deleted instance still reserves (`409` on insert while `get` says `404`) is a
//! permanent error that points to `dealerdesk.de/database-instance-suffix`.

mod client;
mod config;
mod desired;
mod errors;
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
    Database, DatabaseInstance, Settings, User, database_instance::SqlInstanceState,
    operation::SqlOperationType,
};

use crate::providers::google::uid_label_value;
use crate::providers::pace::Paced;
use crate::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo, residency, secret,
};
use desired::{final_backup_days, resources, restorable_after_delete};
use errors::{
    SERVICE, days_after, failure_text, held_back, is_conflict, is_operation_in_progress, latest,
    operation_done, running, status_name, timestamp,
};

/// How long to wait before looking at an instance that is being created or is in
/// maintenance again. Cloud SQL takes minutes to create one, and every look is an Admin API
/// request against the project's quota (180 a minute): at the reconciler's default of 15 s,
/// 45 instances being created at once would spend all of it on waiting.
pub const INSTANCE_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// What one pass learnt about the tenant's instance.
struct Observed {
    instance: DatabaseInstance,
    database: Option<Database>,
    user: Option<User>,
}

impl CloudSqlProvider {
    fn resources(
        &self,
        inst: &str,
        location: &str,
        obs: Option<&Observed>,
    ) -> Vec<ExternalResource> {
        let database = obs
            .and_then(|o| o.database.as_ref())
            .map(|d| d.name.as_str());
        let user = obs.and_then(|o| o.user.as_ref()).map(|u| u.name.as_str());
        resources(self.project(), inst, location, database, user)
    }

    /// Creates the instance (nothing exists under `name`).
    async fn create_instance(
        &self,
        tenant: &TenantInfo,
        name: &str,
    ) -> Result<Reconciled, ProviderError> {
        residency::check_before_create(&format!("Cloud SQL instance {name}"), &tenant.region)?;
        let body = desired_instance(&self.cfg, &tenant.name, &tenant.uid, name, &tenant.region);
        let what = format!("create instance {name}");
        match self
            .instances
            .insert()
            .set_project(self.project())
            .set_body(body)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(op) => {
                operation_done(&what, &op)?;
                tracing::info!(instance = name, operation = %op.name, "Cloud SQL instance insert accepted");
                // Check where Cloud SQL put it right away (the next pass checks again).
                if let Some(created) = self.get_instance(name).await? {
                    residency::check_reported(
                        &format!("Cloud SQL instance {name}"),
                        &created.region,
                        &tenant.region,
                    )?;
                }
                Ok(Reconciled {
                    ready: false,
                    reason: None,
                    message: format!("instance {name} is being created (operation {})", op.name),
                    secret: None,
                    resources: self.resources(name, &tenant.region, None),
                    recheck_after: Some(INSTANCE_RECHECK),
                })
            }
            Err(e) if is_conflict(&e) && !is_operation_in_progress(&e) => {
                // Either the insert raced with one whose answer was lost (it exists now), or
                // a deleted instance still reserves the name.
                if self.get_instance(name).await?.is_some() {
                    Ok(Reconciled {
                        ready: false,
                        reason: None,
                        message: format!("instance {name} is being created"),
                        secret: None,
                        resources: self.resources(name, &tenant.region, None),
                        recheck_after: Some(INSTANCE_RECHECK),
                    })
                } else {
                    tracing::warn!(
                        instance = name,
                        "Cloud SQL refuses a reserved instance name"
                    );
                    Err(ProviderError::Refused {
                        service: SERVICE,
                        message: reserved_name_message(name),
                    })
                }
            }
            Err(e) => Err(classify(&what, &e, None)),
        }
    }
}

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
        let region = instance.region.clone();
        let not_ready = |message: String| Reconciled {
            ready: false,
            reason: None,
            message,
            secret: None,
            resources: self.resources(&name, &region, None),
            recheck_after: Some(INSTANCE_RECHECK),
        };
        match &instance.state {
            SqlInstanceState::Runnable => {}
            SqlInstanceState::PendingCreate => {
                return Ok(not_ready(format!("instance {name} is being created")));
            }
            SqlInstanceState::Failed => {
                return Err(self.why_failed(&name).await?);
            }
            SqlInstanceState::Suspended => {
                return Err(ProviderError::Refused {
                    service: SERVICE,
                    message: format!(
                        "instance {name} is {}; it needs a person (see the Cloud SQL console)",
                        status_name(&instance.state)
                    ),
                });
            }
            other => {
                return Ok(not_ready(format!(
                    "instance {name} is {}, waiting",
                    status_name(other)
                )));
            }
        }

        let conn = if instance.connection_name.is_empty() {
            connection_name(self.project(), &region, &name)
        } else {
            instance.connection_name.clone()
        };
        let Some(host) = connect_address(&self.cfg, &instance) else {
            return Ok(not_ready(format!(
                "instance {name} has no {} IP address yet",
                if self.cfg.private_network.is_some() {
                    "private"
                } else {
                    "public"
                }
            )));
        };
        let mut obs = Observed {
            database: self.get_database(&name, &db).await?,
            user: self.get_user(&name, &db).await?,
            instance,
        };
        let (patch, drift) = settings_patch(
            &self.cfg,
            &tenant.name,
            &tenant.uid,
            &obs.instance.settings.clone().unwrap_or_default(),
        );
        let password = secret
            .and_then(|s| s.get("DATABASE_PASSWORD"))
            .filter(|p| !p.is_empty());
        let need_password = obs.user.is_none() || password.is_none();
        let writes_needed = obs.database.is_none() || need_password || !drift.is_empty();

        // The Secret as it should read with the password it has now (no write needed to
        // refresh connection details, e.g. after an IP change).
        let refreshed = |pw: &str| secret_data(&host, &db, pw, &conn);

        // Writes wait while an operation runs (Cloud SQL runs one at a time). A write whose
        // last operation failed less than HOLD_AFTER_FAILURE ago is not sent again: its
        // error, in Cloud SQL's words, is what the pass reports.
        let ops = if writes_needed {
            self.list_operations(&name).await?
        } else {
            Vec::new()
        };
        if let Some(op) = running(&ops) {
            let usable = obs.database.is_some() && !need_password;
            let msg = format!(
                "waiting for operation {} ({}) on instance {name}",
                op.name,
                op.operation_type.name().unwrap_or("UNKNOWN")
            );
            return Ok(Reconciled {
                ready: usable,
                reason: None,
                message: msg,
                secret: password
                    .map(refreshed)
                    .filter(|s| Some(s) != secret)
                    .filter(|_| usable),
                resources: self.resources(&name, &region, Some(&obs)),
                recheck_after: None,
            });
        }
        let now = jiff::Timestamp::now();
        let held = |kind: SqlOperationType, what: &str| {
            held_back(&ops, &kind, now).map(|h| h.message(what))
        };
        let mut failed: Vec<String> = Vec::new();

        // 1. The database.
        let what = format!("create database {name}/{db}");
        if obs.database.is_none()
            && let Some(m) = held(SqlOperationType::CreateDatabase, &what)
        {
            failed.push(m);
        } else if obs.database.is_none() {
            let op = self.create_database(&name, &db, &what).await?;
            tracing::info!(instance = %name, database = %db, "Cloud SQL database insert accepted");
            if !operation_done(&what, &op)? {
                return Ok(not_ready(format!(
                    "database {db} is being created on instance {name} (operation {})",
                    op.name
                )));
            }
            let mut d = Database::new();
            d.name = db.clone();
            obs.database = Some(d);
        }

        // 2. The user and its password.
        let mut issued = None;
        let (kind, what) = match obs.user {
            None => (
                SqlOperationType::CreateUser,
                format!("create user {name}/{db}"),
            ),
            Some(_) => (
                SqlOperationType::UpdateUser,
                format!("set password of user {name}/{db}"),
            ),
        };
        if need_password && let Some(m) = held(kind, &what) {
            failed.push(m);
        } else if need_password {
            let pw = secret::random_password();
            let op = self
                .set_user(&name, &db, &pw, obs.user.is_some(), &what)
                .await?;
            tracing::info!(instance = %name, user = %db, "Cloud SQL user credentials issued");
            match operation_done(&what, &op) {
                // Failed: the password did not take; nothing to hand over (nor echoed).
                Err(e) => failed.push(failure_text(e).replace(&pw, "[redacted]")),
                Ok(done) => {
                    let mut u = User::new();
                    u.name = db.clone();
                    obs.user = Some(u);
                    issued = Some(refreshed(&pw));
                    if !done {
                        // The password is only known here: hand it over now.
                        return Ok(Reconciled {
                            ready: false,
                            reason: None,
                            message: format!(
                                "credentials of user {db} are being set on instance {name} \
                                 (operation {})",
                                op.name
                            ),
                            secret: issued,
                            resources: self.resources(&name, &region, Some(&obs)),
                            recheck_after: None,
                        });
                    }
                }
            }
        }

        // 3. Drifted settings.
        let mut message = format!("instance {name} is ready ({conn})");
        let what = format!("update settings of instance {name}");
        if !drift.is_empty()
            && let Some(m) = held(SqlOperationType::Update, &what)
        {
            failed.push(format!("{m} (drifted: {})", drift.join(", ")));
        } else if !drift.is_empty() {
            let op = self.patch_settings(&name, patch, &what).await?;
            tracing::info!(instance = %name, drift = ?drift, operation = %op.name, "Cloud SQL settings drift repair sent");
            match operation_done(&what, &op) {
                Ok(true) => {
                    message = format!("instance {name} is ready; repaired {}", drift.join(", "))
                }
                Ok(false) => {
                    message = format!(
                        "instance {name} is ready; repairing {} (operation {})",
                        drift.join(", "),
                        op.name
                    )
                }
                Err(e) => failed.push(failure_text(e)),
            }
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
                    resources: self.resources(&name, &region, Some(&obs)),
                    recheck_after: None,
                }),
                None => Err(ProviderError::OperationFailed {
                    service: SERVICE,
                    message,
                }),
            };
        }

        let version = self.cfg.database_version.as_str();
        if obs.instance.database_version.name() != Some(version) {
            message.push_str(&format!(
                "; runs {} while {version} is configured (major upgrades are not automatic)",
                obs.instance.database_version.name().unwrap_or("UNKNOWN")
            ));
        }

        let secret_out = match issued {
            Some(s) => Some(s),
            None => password.map(refreshed).filter(|s| Some(s) != secret),
        };
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: secret_out,
            resources: self.resources(&name, &region, Some(&obs)),
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
        let obs = if instance.state == SqlInstanceState::Runnable {
            Observed {
                database: self.get_database(&name, &db).await?,
                user: self.get_user(&name, &db).await?,
                instance,
            }
        } else {
            Observed {
                database: None,
                user: None,
                instance,
            }
        };
        let erased = Erased {
            resources: self.resources(&name, &region, Some(&obs)),
            ..Erased::default()
        };
        // A final backup outlives the instance: the receipt must say until when.
        let final_days = final_backup_days(&self.cfg, &obs.instance);
        // Whole seconds: the expiry sent and the one in the receipt are the same.
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        let ops = self.list_operations(&name).await?;
        if obs.instance.state == SqlInstanceState::PendingDelete {
            // Accepted on an earlier pass; Cloud SQL finishes on its own. The final backup
            // expires at the latest its days after that delete was accepted.
            let since = latest(&ops, &SqlOperationType::Delete)
                .and_then(|op| timestamp(op.insert_time.as_ref()))
                .unwrap_or(now);
            let expiry = final_days.map(|d| days_after(since, d));
            return Ok(Erased {
                restorable: restorable_after_delete(&name, &obs.instance, expiry),
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
        let protected = obs
            .instance
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
            restorable: restorable_after_delete(&name, &obs.instance, expiry),
            ..erased
        })
    }
}
