//! The wire: the three Admin API clients, built from the configuration, and the reads every
//! pass makes. All calls share the project's pacer.

use std::time::Duration;

use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_sql_v1::client::{SqlInstancesService, SqlOperationsService, SqlUsersService};
use google_cloud_sql_v1::model::{
    DatabaseInstance, Operation, Settings, User, operation::SqlOperationType,
};

use super::config::CloudSqlConfig;
use super::errors::{
    SERVICE, classify, is_conflict, is_not_found, is_operation_in_progress, latest,
    operation_errors,
};
use crate::providers::ProviderError;
use crate::providers::pace::Paced;

/// Cloud SQL for PostgreSQL, one instance per tenant.
pub struct CloudSqlProvider {
    pub(super) cfg: CloudSqlConfig,
    pub(super) pacer: std::sync::Arc<crate::providers::pace::Pacer>,
    pub(super) instances: SqlInstancesService,
    pub(super) users: SqlUsersService,
    pub(super) operations: SqlOperationsService,
    /// The operator's admin user on the instances: its password, held only here.
    pub(super) admin: super::role::AdminLogin,
}

impl std::fmt::Debug for CloudSqlProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSqlProvider")
            .field("project", &self.cfg.project)
            .finish_non_exhaustive()
    }
}

/// Reads the credentials `cfg` names: the key file, else the key in the environment
/// variable, else Application Default Credentials; anonymous for emulators.
fn credentials(
    cfg: &CloudSqlConfig,
) -> Result<google_cloud_auth::credentials::Credentials, ProviderError> {
    use google_cloud_auth::credentials::{Builder, anonymous};
    let not_configured = |message: String| ProviderError::NotConfigured {
        service: SERVICE,
        message,
    };
    if cfg.anonymous_credentials {
        if cfg.endpoint.is_none() {
            return Err(not_configured(
                "anonymousCredentials needs an endpoint (an emulator or test double)".into(),
            ));
        }
        return Ok(anonymous::Builder::new().build());
    }
    let key = crate::providers::google::KeySource {
        section: "database.cloudsql",
        file: cfg.credentials_file.as_deref(),
        env: Some(&cfg.credentials_env),
        // The variable's name has a default: unset means Application Default Credentials.
        env_required: false,
    };
    match crate::providers::google::credentials(&key).map_err(not_configured)? {
        Some(credentials) => Ok(credentials),
        None => Builder::default().build().map_err(|_| {
            not_configured(
                "no credentials: set credentialsFile or the variable in credentialsEnv, \
                 or run with Application Default Credentials (Workload Identity)"
                    .into(),
            )
        }),
    }
}

/// Builds the provider: reads the credentials and creates the three API clients.
pub async fn from_config(cfg: &CloudSqlConfig) -> Result<CloudSqlProvider, ProviderError> {
    cfg.validate().map_err(|m| ProviderError::NotConfigured {
        service: SERVICE,
        message: m,
    })?;
    crate::providers::tls::ensure_crypto_provider();
    let creds = credentials(cfg)?;
    let timeout = Duration::from_secs(cfg.timeout_seconds);
    let built = |e: google_cloud_gax::client_builder::Error| ProviderError::NotConfigured {
        service: SERVICE,
        message: format!("client could not be built: {e}"),
    };
    // No retries inside the SDK: the reconciler retries with backoff, and a pass must not
    // hang for a minute on an outage.
    macro_rules! client {
        ($t:ty) => {{
            let mut b = <$t>::builder()
                .with_credentials(creds.clone())
                .with_retry_policy(NeverRetry)
                .with_attempt_timeout(timeout)
                // One span per request: the request metrics (providers::requests::google).
                .with_tracing();
            if let Some(ep) = &cfg.endpoint {
                b = b.with_endpoint(ep.clone());
            }
            b.build().await.map_err(built)?
        }};
    }
    // 60 s / requests per minute between two requests, shared by every provider value
    // of the project in this process.
    let interval = match cfg.requests_per_minute {
        0 => std::time::Duration::ZERO,
        n => std::time::Duration::from_secs(60) / n,
    };
    let pacer =
        crate::providers::pace::Pacer::shared(&format!("sqladmin:{}", cfg.project), interval);
    Ok(CloudSqlProvider {
        cfg: cfg.clone(),
        pacer,
        instances: client!(SqlInstancesService),
        users: client!(SqlUsersService),
        operations: client!(SqlOperationsService),
        admin: super::role::AdminLogin::new(),
    })
}

impl CloudSqlProvider {
    pub(super) fn project(&self) -> &str {
        &self.cfg.project
    }

    pub(super) async fn get_instance(
        &self,
        name: &str,
    ) -> Result<Option<DatabaseInstance>, ProviderError> {
        match self
            .instances
            .get()
            .set_project(self.project())
            .set_instance(name)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("get instance {name}"), &e, None)),
        }
    }

    /// The recent operations on `inst`, newest first (Cloud SQL lists them in reverse
    /// order of their start).
    pub(super) async fn list_operations(
        &self,
        inst: &str,
    ) -> Result<Vec<Operation>, ProviderError> {
        let list = self
            .operations
            .list()
            .set_project(self.project())
            .set_instance(inst)
            .set_max_results(20u32)
            .send()
            .paced(&self.pacer)
            .await
            .map_err(|e| classify(&format!("list operations of {inst}"), &e, None))?;
        Ok(list.items)
    }

    /// Gives the operator's admin user on `inst` this process's password: `users.update`,
    /// or `users.insert` when Cloud SQL does not know the user. On an instance this process
    /// created, `users.insert` first (`users.update` when the user exists after all).
    pub(super) async fn set_admin(
        &self,
        inst: &str,
        what: &str,
    ) -> Result<Operation, ProviderError> {
        let (user, password) = (&self.cfg.admin_user, self.admin.password());
        let first_insert = self.admin.likely_new(inst);
        match self.send_user(inst, user, password, !first_insert).await {
            Err(e) if first_insert && is_conflict(&e) && !is_operation_in_progress(&e) => {
                self.send_user(inst, user, password, true).await
            }
            // The reference does not say how `users.update` of an unknown user is refused:
            // a 404, or a 400 after which `users.get` tells (an instance an earlier version
            // made has no operator user).
            Err(e) if !first_insert && is_not_found(&e) => {
                self.send_user(inst, user, password, false).await
            }
            Err(e) if !first_insert && e.http_status_code() == Some(400) => {
                if self.user_exists(inst, user).await? {
                    Err(e)
                } else {
                    self.send_user(inst, user, password, false).await
                }
            }
            other => other,
        }
        .map_err(|e| classify(what, &e, Some(password)))
    }

    /// `users.get` of `user` on `inst`: whether Cloud SQL knows it.
    async fn user_exists(&self, inst: &str, user: &str) -> Result<bool, ProviderError> {
        match self
            .users
            .get()
            .set_project(self.project())
            .set_instance(inst)
            .set_name(user)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(classify(&format!("get user {inst}/{user}"), &e, None)),
        }
    }

    /// `users.insert` (a new user) or `users.update` (a new password) of `user` on `inst`.
    async fn send_user(
        &self,
        inst: &str,
        user: &str,
        password: &str,
        exists: bool,
    ) -> Result<Operation, google_cloud_sql_v1::Error> {
        let mut body = User::new();
        body.name = user.to_string();
        body.password = password.to_string();
        if exists {
            self.users
                .update()
                .set_project(self.project())
                .set_instance(inst)
                .set_name(user)
                .set_body(body)
                .send()
                .paced(&self.pacer)
                .await
        } else {
            self.users
                .insert()
                .set_project(self.project())
                .set_instance(inst)
                .set_body(body)
                .send()
                .paced(&self.pacer)
                .await
        }
    }

    /// `users.delete` of `user` on `inst`. `None`: Cloud SQL does not know the user.
    pub(super) async fn delete_user(
        &self,
        inst: &str,
        user: &str,
        what: &str,
    ) -> Result<Option<Operation>, ProviderError> {
        match self
            .users
            .delete()
            .set_project(self.project())
            .set_instance(inst)
            .set_name(user)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(op) => Ok(Some(op)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(what, &e, None)),
        }
    }

    /// `instances.patch` of `inst` with `settings` (only the fields set are changed).
    pub(super) async fn patch_settings(
        &self,
        inst: &str,
        settings: Settings,
        what: &str,
    ) -> Result<Operation, ProviderError> {
        let mut body = DatabaseInstance::new();
        body.settings = Some(settings);
        self.instances
            .patch()
            .set_project(self.project())
            .set_instance(inst)
            .set_body(body)
            .send()
            .paced(&self.pacer)
            .await
            .map_err(|e| classify(what, &e, None))
    }

    /// `instances.delete` of `inst`, with a final backup kept until `final_expiry` when
    /// given. `None`: the instance is gone already.
    pub(super) async fn delete_instance(
        &self,
        inst: &str,
        final_expiry: Option<jiff::Timestamp>,
        what: &str,
    ) -> Result<Option<Operation>, ProviderError> {
        let mut call = self
            .instances
            .delete()
            .set_project(self.project())
            .set_instance(inst);
        if let Some(until) = final_expiry {
            let until = google_cloud_wkt::Timestamp::clamp(until.as_second(), 0);
            call = call
                .set_enable_final_backup(true)
                .set_final_backup_expiry_time(until);
        }
        match call.send().paced(&self.pacer).await {
            Ok(op) => Ok(Some(op)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(what, &e, None)),
        }
    }

    /// Why `inst` is `FAILED`: Cloud SQL's errors of its failed create when that is what
    /// happened (`OperationFailed`), else a refusal that asks for a person.
    pub(super) async fn why_failed(&self, inst: &str) -> Result<ProviderError, ProviderError> {
        let ops = self.list_operations(inst).await?;
        Ok(
            match latest(&ops, &SqlOperationType::Create).and_then(operation_errors) {
                Some(errors) => ProviderError::OperationFailed {
                    service: SERVICE,
                    message: format!(
                        "instance {inst} could not be created: {errors}; it is FAILED and \
                         needs a person: delete it (gcloud sql instances delete {inst}) and \
                         the next pass creates it anew"
                    ),
                },
                None => ProviderError::Refused {
                    service: SERVICE,
                    message: format!(
                        "instance {inst} is FAILED; it needs a person (see the Cloud SQL console)"
                    ),
                },
            },
        )
    }
}
