//! The instance itself: creating it, and whether a pass may go on with it.

use google_cloud_sql_v1::model::{DatabaseInstance, database_instance::SqlInstanceState};

use super::client::CloudSqlProvider;
use super::desired::{desired_instance, resources};
use super::errors::{
    SERVICE, classify, is_conflict, is_operation_in_progress, operation_done, status_name,
};
use super::{INSTANCE_RECHECK, reserved_name_message};
use crate::providers::pace::Paced;
use crate::providers::{ExternalResource, ProviderError, Reconciled, TenantInfo, residency};

impl CloudSqlProvider {
    /// The tenant's resources at Cloud SQL: the instance and, once the tenant's role and
    /// database are made (`inside`), those.
    pub(super) fn resources(
        &self,
        inst: &str,
        location: &str,
        inside: Option<&str>,
    ) -> Vec<ExternalResource> {
        resources(self.project(), inst, location, inside, inside)
    }

    /// A pass that waits for the instance: not ready, looked at again after
    /// [`INSTANCE_RECHECK`].
    pub(super) fn waiting(&self, inst: &str, region: &str, message: String) -> Reconciled {
        Reconciled {
            ready: false,
            reason: None,
            message,
            secret: None,
            resources: self.resources(inst, region, None),
            recheck_after: Some(INSTANCE_RECHECK),
        }
    }

    /// Whether a pass may go on with `instance` (`RUNNABLE`): `Ok(Some(..))` is the pass's
    /// result while it may not (being created, in maintenance), an error when it needs a
    /// person.
    pub(super) async fn gate(
        &self,
        name: &str,
        instance: &DatabaseInstance,
    ) -> Result<Option<Reconciled>, ProviderError> {
        let region = &instance.region;
        match &instance.state {
            SqlInstanceState::Runnable => Ok(None),
            SqlInstanceState::PendingCreate => Ok(Some(self.waiting(
                name,
                region,
                format!("instance {name} is being created"),
            ))),
            SqlInstanceState::Failed => Err(self.why_failed(name).await?),
            SqlInstanceState::Suspended => Err(ProviderError::Refused {
                service: SERVICE,
                message: format!(
                    "instance {name} is {}; it needs a person (see the Cloud SQL console)",
                    status_name(&instance.state)
                ),
            }),
            other => Ok(Some(self.waiting(
                name,
                region,
                format!("instance {name} is {}, waiting", status_name(other)),
            ))),
        }
    }

    /// Creates the instance (nothing exists under `name`).
    pub(super) async fn create_instance(
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
                // A new instance has no operator user yet: insert it right away.
                self.admin.created(name);
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
