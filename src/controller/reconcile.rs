//! One pass over one tenant: validate -> build -> apply -> observe -> update status.
//! Only `apply` and `update_status` (and cleanup) touch the network.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::apply::{ensure, remove_stale};
use super::context::Context;
use super::error::Error;
use super::status::{self, Observation, types};
use crate::api::validate::name_problem;
use crate::api::{DealerTenant, DeletionPolicy, FINALIZER, Phase, regions};
use crate::desired::{self, Desired, names};

/// Entry point for the controller: wraps the work in the `dealerdesk.de/cleanup` finalizer.
pub async fn reconcile(tenant: Arc<DealerTenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = tenant.tenant_name().to_string();
    if tenant.spec.paused {
        // Not even the finalizer is touched: a paused tenant is left exactly as it is.
        return paused(&tenant, &ctx).await;
    }
    let api: Api<DealerTenant> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.note_success(&name);
    }
    result
}

/// What the API server itself would refuse; checked again here so that a hand-edited CRD
/// cannot make the operator build anything outside the EU.
fn spec_problem(t: &DealerTenant) -> Option<String> {
    if let Some(why) = name_problem(t.tenant_name()) {
        return Some(format!("metadata.name: {why}"));
    }
    regions::region_error(&t.spec.region).map(|why| format!("spec.region: {why}"))
}

async fn apply(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = names::namespace(t.tenant_name());
    if let Some(problem) = spec_problem(t) {
        let obs = [Observation::not(types::READY, "InvalidSpec", problem)];
        update_status(t, ctx, &obs, Phase::Failed, None).await?;
        return Ok(Action::await_change());
    }
    let desired = desired::build(t, &ctx.config, &[]);
    match apply_objects(ctx, &desired).await {
        Ok((ns, deployment)) => {
            let mut obs = vec![observe_namespace(&ns), observe_server(t, &deployment)];
            let ready = status::summarize(&obs);
            let phase = if ready.status {
                Phase::Ready
            } else {
                Phase::Provisioning
            };
            obs.insert(0, ready);
            update_status(t, ctx, &obs, phase, Some(namespace)).await?;
            Ok(Action::requeue(Duration::from_secs(
                ctx.config.resync_seconds,
            )))
        }
        Err(err) => {
            let phase = if err.is_transient() {
                Phase::Provisioning
            } else {
                Phase::Failed
            };
            let obs = [Observation::not(
                types::READY,
                "ApplyFailed",
                err.to_string(),
            )];
            if let Err(status_err) = update_status(t, ctx, &obs, phase, Some(namespace)).await {
                warn!(tenant = t.tenant_name(), error = %status_err, "could not record the failure in status");
            }
            Err(err)
        }
    }
}

/// Applies every desired object in dependency order; returns the namespace and deployment
/// as the API server has them.
async fn apply_objects(ctx: &Context, d: &Desired) -> Result<(Namespace, Deployment), Error> {
    let (c, s) = (&ctx.client, &ctx.stores);
    let ns = ensure(c, &s.namespaces, &d.namespace).await?.object;
    ensure(c, &s.quotas, &d.quota).await?;
    ensure(c, &s.limits, &d.limits).await?;
    for np in &d.network_policies {
        ensure(c, &s.network_policies, np).await?;
    }
    ensure(c, &s.service_accounts, &d.service_account).await?;
    ensure(c, &s.services, &d.service).await?;
    let deployment = ensure(c, &s.deployments, &d.deployment).await?.object;
    match &d.pdb {
        Some(pdb) => {
            ensure(c, &s.pdbs, pdb).await?;
        }
        None => {
            remove_stale(c, &s.pdbs, &ns.name_any(), names::SERVER).await?;
        }
    }
    Ok((ns, deployment))
}

fn observe_namespace(ns: &Namespace) -> Observation {
    let name = ns.name_any();
    match ns.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Active") => Observation::ok(
            types::NAMESPACE,
            "Active",
            format!("namespace {name} is active"),
        ),
        Some(phase) => Observation::not(
            types::NAMESPACE,
            "NamespaceNotActive",
            format!("namespace {name} is {phase}"),
        ),
        None => Observation::not(
            types::NAMESPACE,
            "NamespacePending",
            format!("namespace {name} has no phase yet"),
        ),
    }
}

/// The server is ready when the Deployment controller has seen the current spec and
/// enough replicas are available. With `replicas: 0` that is as soon as it has seen it.
fn observe_server(t: &DealerTenant, d: &Deployment) -> Observation {
    let want = t.spec.server.replicas;
    let generation = d.metadata.generation.unwrap_or(0);
    let st = d.status.clone().unwrap_or_default();
    let seen = st.observed_generation.unwrap_or(0) >= generation && generation > 0;
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    if !seen {
        Observation::not(
            types::SERVER,
            "RolloutPending",
            "the Deployment controller has not observed the current spec yet",
        )
    } else if available >= want && updated >= want {
        Observation::ok(
            types::SERVER,
            "Available",
            format!("{available}/{want} replicas available"),
        )
    } else {
        Observation::not(
            types::SERVER,
            "Progressing",
            format!("{available}/{want} replicas available"),
        )
    }
}

/// Erases or keeps the tenant's data, by its deletion policy.
async fn cleanup(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let ns_name = names::namespace(t.tenant_name());
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    match t.spec.deletion_policy {
        DeletionPolicy::Retain => {
            let cached = ctx.stores.namespaces.get(&ObjectRef::new(&ns_name));
            if cached.is_some() {
                let mut ns = desired::namespace::namespace(t.tenant_name());
                ns.labels_mut()
                    .insert(names::RETAINED_LABEL.into(), "true".into());
                ns.annotations_mut().insert(
                    "dealerdesk.de/retained-from-uid".into(),
                    t.uid().unwrap_or_default(),
                );
                let api: Api<Namespace> = Api::all(ctx.client.clone());
                api.patch(
                    &ns_name,
                    &PatchParams::apply(names::FIELD_MANAGER).force(),
                    &Patch::Apply(&ns),
                )
                .await
                .map_err(|e| Error::kube(format!("mark namespace {ns_name} retained"), e))?;
            }
            info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant deleted; data retained");
            publish(&recorder, t, EventType::Normal, "Retained", format!(
                "deletionPolicy Retain: namespace {ns_name} and its Secrets are kept, labelled {}=true", names::RETAINED_LABEL
            )).await;
            Ok(Action::await_change())
        }
        DeletionPolicy::Delete => {
            let cached = ctx.stores.namespaces.get(&ObjectRef::new(&ns_name));
            if cached
                .as_ref()
                .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
            {
                return Err(Error::CleanupPending(format!(
                    "namespace {ns_name} is terminating"
                )));
            }
            let api: Api<Namespace> = Api::all(ctx.client.clone());
            match api.delete(&ns_name, &DeleteParams::foreground()).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant erased");
                    publish(
                        &recorder,
                        t,
                        EventType::Normal,
                        "Erased",
                        format!("namespace {ns_name} deleted"),
                    )
                    .await;
                    Ok(Action::await_change())
                }
                Err(e) => Err(Error::kube(format!("delete namespace {ns_name}"), e)),
                Ok(_) => {
                    let obs = [Observation::not(
                        types::READY,
                        "Deleting",
                        format!("waiting for namespace {ns_name} to be deleted"),
                    )];
                    update_status(t, ctx, &obs, Phase::Deleting, Some(ns_name.clone())).await?;
                    Err(Error::CleanupPending(format!(
                        "namespace {ns_name} is terminating"
                    )))
                }
            }
        }
    }
}

async fn paused(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let message = if t.metadata.deletion_timestamp.is_some() {
        "spec.paused is true: deletion is on hold until it is unpaused"
    } else {
        "spec.paused is true: the operator changes nothing for this tenant"
    };
    let obs = [Observation::not(types::READY, "Paused", message)];
    let namespace = t.status.as_ref().and_then(|s| s.namespace.clone());
    update_status(t, ctx, &obs, Phase::Paused, namespace).await?;
    Ok(Action::await_change())
}

/// Writes the status (server-side apply on the status subresource) only when it changed,
/// and publishes an Event for every condition that changed.
async fn update_status(
    t: &DealerTenant,
    ctx: &Context,
    obs: &[Observation],
    phase: Phase,
    namespace: Option<String>,
) -> Result<(), Error> {
    let now = Time(jiff::Timestamp::now());
    let old = t.status.as_ref();
    let new = status::next_status(old, obs, phase, namespace, t.metadata.generation, &now);
    if old == Some(&new) {
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
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let changed = status::transitions(old_conditions, &new.conditions);
    if !changed.is_empty() {
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        for c in changed.into_iter().filter(|c| c.type_ == types::READY) {
            let kind = if c.status == "True" || !is_failure(&c.reason) {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(&recorder, t, kind, &c.reason, c.message.clone()).await;
        }
    }
    Ok(())
}

fn is_failure(reason: &str) -> bool {
    matches!(reason, "ApplyFailed" | "InvalidSpec")
}

async fn publish(
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
