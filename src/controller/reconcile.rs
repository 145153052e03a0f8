//! One pass over one tenant: validate -> claim -> build -> apply -> provision components ->
//! assemble -> update status. Only `apply`, the providers and `update_status` touch the
//! network; building and assembling are pure.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use tracing::{info, warn};

use super::access;
use super::apply::{ensure, read, remove_stale};
use super::assemble::{self, StatusUpdate, observe_server, previous_holdings};
use super::cleanup::cleanup;
use super::components;
use super::context::Context;
use super::error::Error;
use super::holdings;
use super::identity::{self, Claim};
use super::publish::update_status;
use super::status::{Observation, types};
use crate::api::validate::name_problem;
use crate::api::{DealerTenant, FINALIZER, Phase, regions};
use crate::desired::{self, Desired, names};

pub use super::components::{ABANDON_ANNOTATION, abandoned};

/// How soon to look again at a new tenant whose Deployment was just applied, if the
/// Deployment controller's status update does not trigger a pass first.
const ROLLOUT_REQUEUE: Duration = Duration::from_secs(60);
/// How long a new tenant may go without a status while it waits for the Deployment
/// controller to observe its Deployment. Under load that controller is slow: with 1,000
/// tenants created at once on two cores (kube-controller-manager's default client rate of
/// 20 requests per second), three in four waited more than a minute, and each then cost a
/// "Provisioning" status and Event that the next pass overwrote (16.5 writes per tenant
/// against 15 in the benchmark).
const ROLLOUT_GRACE: Duration = Duration::from_secs(180);
/// How soon to look again while a namespace of the tenant's name is being deleted.
const TERMINATING_REQUEUE: Duration = Duration::from_secs(5);

/// Entry point for the controller: wraps the work in the `dealerdesk.de/cleanup` finalizer.
pub async fn reconcile(tenant: Arc<DealerTenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let name = tenant.tenant_name().to_string();
    tracing::debug!(tenant = %name, generation = ?tenant.metadata.generation, "pass");
    if tenant.spec.paused {
        // Not even the finalizer is touched: a paused tenant is left exactly as it is.
        return paused(&tenant, &ctx).await;
    }
    let api: Api<DealerTenant> = Api::all(ctx.client.clone());
    let tenant = if tenant.metadata.deletion_timestamp.is_none()
        && !tenant.finalizers().iter().any(|f| f == FINALIZER)
    {
        Arc::new(add_finalizer(&api, &tenant, &ctx).await?)
    } else {
        tenant
    };
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

/// Adds the `dealerdesk.de/cleanup` finalizer (a JSON patch that fails if someone changed
/// the finalizers meanwhile, as kube's finalizer helper does) and returns the tenant as
/// the API server answered. The same pass then goes on to build the tenant, and the watch
/// event of this patch, which holds nothing new, starts no pass of its own.
async fn add_finalizer(
    api: &Api<DealerTenant>,
    t: &DealerTenant,
    ctx: &Context,
) -> Result<DealerTenant, Error> {
    let ops = if t.finalizers().is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": t.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| Error::Serialize("finalizer patch", e))?;
    let patched = api
        .patch(
            t.tenant_name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
        .map_err(|e| Error::kube("add finalizer", e))?;
    ctx.written.remember_echo(
        tenant_key(t.tenant_name()),
        patched.resource_version().unwrap_or_default(),
    );
    Ok(patched)
}

/// How [`super::apply::Written`] names a tenant.
pub fn tenant_key(name: &str) -> String {
    format!("DealerTenant {name}")
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
        let obs = vec![Observation::not(types::READY, "InvalidSpec", problem)];
        update_status(t, ctx, StatusUpdate::new(obs, Phase::Failed, None)).await?;
        return Ok(Action::await_change());
    }
    match claim_namespace(t, ctx).await {
        Ok(None) => {}
        Ok(Some(action)) => return Ok(action),
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    }
    let desired = desired::build(t, &ctx.config, &[]);
    let ns = match apply_namespace_objects(t, ctx, &desired).await {
        Ok(ns) => ns,
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    };
    let provisioned = match components::provision(t, ctx).await {
        Ok(p) => p,
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    };
    let desired = desired.with_component_secrets(t, &ctx.config, &provisioned.secrets);
    let (deployment, server_applied) = match apply_server(ctx, &desired, &ns).await {
        Ok(d) => d,
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    };
    // Credentials that a rotation replaced stop working only once every Pod runs with
    // the new Secrets: the pod template carries their hash, so a Deployment not written
    // in this pass and rolled out runs with the Secrets as they are now.
    let retiring = if provisioned.retiring.is_empty() {
        false
    } else if !server_applied && assemble::rolled_out(t, &deployment) {
        match components::retire(t, ctx, &provisioned.retiring).await {
            Ok(remain) => remain,
            Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
        }
    } else {
        true
    };

    let previous = ctx.status_of(t);
    let held = holdings::next(
        &previous_holdings(t, &ctx.config, previous.as_ref()),
        &provisioned.results,
        &|c| crate::providers::processor_of(c, &ctx.config).to_string(),
    );
    let assembled = assemble::pass(
        &ctx.config,
        &ns,
        observe_server(t, &deployment),
        &provisioned.results,
        held,
    );
    count_new_violations(ctx, previous.as_ref(), &assembled.violations);
    let young = server_applied || is_young(&deployment);
    if previous.is_none() && young && only_rollout_pending(&assembled.update) {
        // A new tenant whose only open point is the Deployment just applied: the
        // Deployment controller observes it within moments, and that status change starts
        // the next pass. Writing "Provisioning" now would be a status write and an Event
        // that the next pass overwrites; the fallback requeue bounds the wait.
        return Ok(Action::requeue(ROLLOUT_REQUEUE));
    }
    update_status(t, ctx, assembled.update).await?;

    if let Some(err) = assembled.transient {
        // Backed off by the error policy; the conditions already say what is wrong.
        return Err(Error::Provider(err));
    }
    Ok(if let Some(wait) = assembled.pending {
        Action::requeue(wait)
    } else if retiring {
        // The rollout's status changes start passes too; this bounds the wait.
        Action::requeue(ROLLOUT_REQUEUE.min(ctx.resync_interval()))
    } else {
        Action::requeue(ctx.resync_interval())
    })
}

/// Makes sure the namespace of the tenant's name is this tenant's (by UID) before anything
/// is written into it. Returns the action to end the pass with when it is not.
async fn claim_namespace(t: &DealerTenant, ctx: &Context) -> Result<Option<Action>, Error> {
    let ns_name = names::namespace(t.tenant_name());
    // Confirmed with the API server when the cache does not have it: a retained namespace
    // must not be taken for a missing one.
    let existing = read(ctx, &ctx.stores.namespaces, None, &ns_name).await?;
    let uid = t.uid().unwrap_or_default();
    let adopt = t
        .annotations()
        .get(names::ADOPT_ANNOTATION)
        .map(String::as_str);
    let (reason, message, action) = match identity::claim(existing.as_ref(), &uid, adopt) {
        Claim::Free | Claim::Ours => return Ok(None),
        Claim::Adopt { from } => {
            info!(tenant = t.tenant_name(), namespace = %ns_name, retained_from = %from, "adopting retained data");
            return Ok(None);
        }
        Claim::Terminating => (
            "NamespaceTerminating",
            format!("namespace {ns_name} is being deleted; waiting until it is gone"),
            Action::requeue(TERMINATING_REQUEUE),
        ),
        Claim::Foreign { owner, retained } => (
            "RetainedDataExists",
            identity::foreign_message(&ns_name, owner.as_deref(), retained),
            Action::requeue(ctx.resync_interval()),
        ),
    };
    let obs = vec![Observation::not(types::READY, reason, message)];
    let phase = if reason == "RetainedDataExists" {
        Phase::Failed
    } else {
        Phase::Provisioning
    };
    update_status(t, ctx, StatusUpdate::new(obs, phase, None)).await?;
    Ok(Some(action))
}

/// Counts residency violations the moment they are found (not again on every pass).
fn count_new_violations(
    ctx: &Context,
    previous: Option<&crate::api::DealerTenantStatus>,
    violations: &[assemble::Violation],
) {
    let already = previous
        .into_iter()
        .flat_map(|s| s.conditions.iter())
        .any(|c| c.type_ == types::RESIDENCY && c.status == "False");
    if already {
        return;
    }
    for (component, _, _) in violations {
        ctx.metrics
            .residency_violations
            .get_or_create(&super::metrics::ResidencyLabels {
                component: component.clone(),
            })
            .inc();
    }
}

async fn record_apply_failure(
    t: &DealerTenant,
    ctx: &Context,
    err: Error,
    namespace: String,
) -> Result<Action, Error> {
    let phase = if err.is_transient() {
        Phase::Provisioning
    } else {
        Phase::Failed
    };
    let obs = vec![Observation::not(
        types::READY,
        "ApplyFailed",
        err.to_string(),
    )];
    if let Err(status_err) =
        update_status(t, ctx, StatusUpdate::new(obs, phase, Some(namespace))).await
    {
        warn!(tenant = t.tenant_name(), error = %status_err, "could not record the failure in status");
    }
    Err(err)
}

/// Applies the namespace, the operator's rights in it, and everything in it except the
/// server; returns the namespace as the API server has it.
async fn apply_namespace_objects(
    t: &DealerTenant,
    ctx: &Context,
    d: &Desired,
) -> Result<Namespace, Error> {
    let s = &ctx.stores;
    let ns = ensure(ctx, &s.namespaces, &d.namespace).await?.object;
    access::ensure_access(t, ctx).await?;
    ensure(ctx, &s.quotas, &d.quota).await?;
    ensure(ctx, &s.limits, &d.limits).await?;
    for np in &d.network_policies {
        ensure(ctx, &s.network_policies, np).await?;
    }
    ensure(ctx, &s.service_accounts, &d.service_account).await?;
    ensure(ctx, &s.services, &d.service).await?;
    Ok(ns)
}

/// Whether the Deployment was created so recently that its controller may just not have
/// looked yet.
fn is_young(d: &Deployment) -> bool {
    d.metadata.creation_timestamp.as_ref().is_some_and(|t| {
        let age = jiff::Timestamp::now().duration_since(t.0);
        age < jiff::SignedDuration::try_from(ROLLOUT_GRACE).unwrap_or_default()
    })
}

/// Whether the pass's only open point is that the Deployment controller has not yet
/// observed the server Deployment.
fn only_rollout_pending(update: &StatusUpdate) -> bool {
    update
        .observations
        .iter()
        .filter(|o| !o.status && o.type_ != types::READY)
        .all(|o| o.type_ == types::SERVER && o.reason == "RolloutPending")
        && update.observations.iter().any(|o| !o.status)
}

/// Applies the server Deployment and its disruption budget; says whether the Deployment
/// was written.
async fn apply_server(
    ctx: &Context,
    d: &Desired,
    ns: &Namespace,
) -> Result<(Deployment, bool), Error> {
    let s = &ctx.stores;
    let applied = ensure(ctx, &s.deployments, &d.deployment).await?;
    match &d.pdb {
        Some(pdb) => {
            ensure(ctx, &s.pdbs, pdb).await?;
        }
        None => {
            remove_stale(ctx, &s.pdbs, &ns.name_any(), names::SERVER).await?;
        }
    }
    Ok((applied.object, applied.wrote))
}

async fn paused(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let message = if t.metadata.deletion_timestamp.is_some() {
        "spec.paused is true: deletion is on hold until it is unpaused"
    } else {
        "spec.paused is true: the operator changes nothing for this tenant"
    };
    let obs = vec![Observation::not(types::READY, "Paused", message)];
    let namespace = ctx.status_of(t).and_then(|s| s.namespace);
    update_status(t, ctx, StatusUpdate::new(obs, Phase::Paused, namespace)).await?;
    Ok(Action::await_change())
}
