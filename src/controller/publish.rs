//! The only writer of a tenant's status, and of the Events about it. The status is written
//! (server-side apply on `/status`) at most once per pass and only when it changed; an
//! Event is published only for a condition that changed: the story `kubectl describe`
//! tells, once each — every component provisioned, the tenant Ready (or why not), and
//! what went wrong.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use serde_json::json;
use tracing::warn;

use super::assemble::{StatusUpdate, tenant_processors};
use super::context::Context;
use super::error::Error;
use super::holdings;
use super::status::{self, types};
use crate::api::DealerTenant;
use crate::desired::names;

/// Writes the status when it changed, and publishes an Event for every condition that
/// changed in a way a person should see. The previous status is the one this process
/// last wrote (the watch cache may not show it yet), so nothing is written or told twice.
pub async fn update_status(
    t: &DealerTenant,
    ctx: &Context,
    update: StatusUpdate,
) -> Result<(), Error> {
    let now = status::now();
    let old = ctx.status_of(t);
    let phase = update
        .phase
        .or(old.as_ref().and_then(|s| s.phase))
        .unwrap_or(crate::api::Phase::Provisioning);
    let mut new = status::next_status(
        old.as_ref(),
        &update.observations,
        phase,
        update.namespace,
        t.metadata.generation,
        &now,
    );
    status::drop_conditions(&mut new.conditions, &update.drop_types);
    new.components = Some(status::components_summary(&new.conditions));
    if let Some(held) = &update.holdings {
        new.external_resources = holdings::resources(held);
        new.processors = tenant_processors(&ctx.config, held);
    }
    if old.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<DealerTenant> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": DealerTenant::api_version(&()),
        "kind": DealerTenant::kind(&()),
        "status": new,
    });
    api.patch_status(
        t.tenant_name(),
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube("write status", e))?;
    ctx.wrote_status(t, new.clone());
    let old_conditions = old
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let worth_an_event: Vec<_> = status::transitions(old_conditions, &new.conditions)
        .into_iter()
        .filter(|c| {
            c.type_ == types::READY
                || (c.status == "False" && is_failure(&c.reason))
                || (c.status == "True" && is_component(&c.type_))
        })
        .collect();
    if worth_an_event.is_empty() {
        return Ok(());
    }
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for c in worth_an_event {
        let kind = if c.status == "True" || !is_failure(&c.reason) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let note = if c.type_ == types::READY {
            c.message.clone()
        } else {
            format!("{}: {}", c.type_, c.message)
        };
        publish(&recorder, t, kind, &c.reason, note).await;
    }
    Ok(())
}

/// A component's condition: its becoming ready is part of the story `describe` tells.
fn is_component(type_: &str) -> bool {
    crate::providers::Component::ORDER
        .iter()
        .any(|c| c.condition_type() == type_)
}

/// Reasons that mean something is wrong (a Warning), as opposed to work in progress.
pub fn is_failure(reason: &str) -> bool {
    matches!(
        reason,
        "ApplyFailed"
            | "InvalidSpec"
            | "ProviderUnavailable"
            | "ProviderRefused"
            | "ResidencyViolation"
            | "RetainedDataExists"
            | "NotConfigured"
            | "DeletionBlocked"
            | "ThirdCountryProcessorDenied"
            | "ErasureIncomplete"
            | "ErasureFailed"
    )
}

/// Publishes one Event about the tenant; a failure to do so is logged, not fatal.
pub async fn publish(
    recorder: &Recorder,
    t: &DealerTenant,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &t.object_ref(&())).await {
        warn!(tenant = t.tenant_name(), error = %e, "could not publish event");
    }
}
