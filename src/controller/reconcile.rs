//! One pass over one tenant: validate -> build -> apply -> provision components -> observe
//! -> update status. Only `apply`, the providers and `update_status` touch the network.

use std::collections::BTreeSet;
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
use super::receipt::{self, Entry, Outcome, Receipt};
use super::status::{self, Observation, types};
use crate::api::validate::name_problem;
use crate::api::{DealerTenant, DeletionPolicy, FINALIZER, Phase, regions};
use crate::desired::{self, Desired, names};
use crate::plan::skip_reason;
use crate::processors::{self, TenantProcessor};
use crate::providers::{self, Component, ExternalResource, ProviderError, TenantInfo};

/// Annotation listing components whose external resources are abandoned: not deleted when
/// the tenant is deleted (e.g. `email` while Postmark has not enabled server deletion).
pub const ABANDON_ANNOTATION: &str = "dealerdesk.de/abandon";

/// How soon to look again at a component that is still being created.
const PENDING_REQUEUE: Duration = Duration::from_secs(15);

/// Entry point for the controller: wraps the work in the `dealerdesk.de/cleanup` finalizer.
pub async fn reconcile(tenant: Arc<DealerTenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
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

/// The status a pass wants to write.
struct StatusUpdate {
    observations: Vec<Observation>,
    phase: Phase,
    namespace: Option<String>,
    external_resources: Option<Vec<ExternalResource>>,
    processors: Option<Vec<TenantProcessor>>,
    drop_types: Vec<&'static str>,
}

impl StatusUpdate {
    fn new(observations: Vec<Observation>, phase: Phase, namespace: Option<String>) -> Self {
        Self {
            observations,
            phase,
            namespace,
            external_resources: None,
            processors: None,
            drop_types: Vec::new(),
        }
    }
}

async fn apply(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = names::namespace(t.tenant_name());
    if let Some(problem) = spec_problem(t) {
        let obs = vec![Observation::not(types::READY, "InvalidSpec", problem)];
        update_status(t, ctx, StatusUpdate::new(obs, Phase::Failed, None)).await?;
        return Ok(Action::await_change());
    }
    let desired = desired::build(t, &ctx.config, &[]);
    let ns = match apply_namespace_objects(ctx, &desired).await {
        Ok(ns) => ns,
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    };
    let components = provision_components(t, ctx).await;
    if let Some(err) = components.kube_error {
        return record_apply_failure(t, ctx, err, namespace).await;
    }
    let desired = desired.with_component_secrets(t, &ctx.config, &components.secrets);
    let deployment = match apply_server(ctx, &desired, &ns).await {
        Ok(d) => d,
        Err(err) => return record_apply_failure(t, ctx, err, namespace).await,
    };

    let residency = observe_residency(ctx, &components);
    let mut obs = vec![
        observe_namespace(&ns),
        observe_server(t, &deployment),
        residency,
    ];
    obs.extend(components.observations);
    let ready = status::summarize(&obs);
    let phase = if ready.status {
        Phase::Ready
    } else if components.permanent_failure {
        Phase::Failed
    } else {
        Phase::Provisioning
    };
    obs.insert(0, ready);
    let mut update = StatusUpdate::new(obs, phase, Some(namespace));
    update.processors = Some(tenant_processors(ctx, &components.holding));
    update.external_resources = Some(components.resources);
    update.drop_types = components.disabled;
    update_status(t, ctx, update).await?;

    if let Some(err) = components.transient {
        // Backed off by the error policy; the conditions already say what is wrong.
        return Err(Error::Provider(err));
    }
    Ok(if components.pending {
        Action::requeue(PENDING_REQUEUE)
    } else {
        Action::requeue(Duration::from_secs(ctx.config.resync_seconds))
    })
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

/// Applies the namespace and everything in it except the server; returns the namespace
/// as the API server has it.
async fn apply_namespace_objects(ctx: &Context, d: &Desired) -> Result<Namespace, Error> {
    let (c, s) = (&ctx.client, &ctx.stores);
    let ns = ensure(c, &s.namespaces, &d.namespace).await?.object;
    ensure(c, &s.quotas, &d.quota).await?;
    ensure(c, &s.limits, &d.limits).await?;
    for np in &d.network_policies {
        ensure(c, &s.network_policies, np).await?;
    }
    ensure(c, &s.service_accounts, &d.service_account).await?;
    ensure(c, &s.services, &d.service).await?;
    Ok(ns)
}

/// Applies the server Deployment and its disruption budget.
async fn apply_server(ctx: &Context, d: &Desired, ns: &Namespace) -> Result<Deployment, Error> {
    let (c, s) = (&ctx.client, &ctx.stores);
    let deployment = ensure(c, &s.deployments, &d.deployment).await?.object;
    match &d.pdb {
        Some(pdb) => {
            ensure(c, &s.pdbs, pdb).await?;
        }
        None => {
            remove_stale(c, &s.pdbs, &ns.name_any(), names::SERVER).await?;
        }
    }
    Ok(deployment)
}

/// What the component step found.
#[derive(Default)]
struct ComponentsOutcome {
    observations: Vec<Observation>,
    /// Secrets (by name) that exist for the server to read.
    secrets: Vec<String>,
    resources: Vec<ExternalResource>,
    /// Condition types of switched-off components.
    disabled: Vec<&'static str>,
    pending: bool,
    permanent_failure: bool,
    transient: Option<ProviderError>,
    kube_error: Option<Error>,
    /// Components that hold data now (provisioned, or with credentials issued).
    holding: Vec<Component>,
    /// Residency violations: (component, resource, location).
    residency: Vec<(Component, String, String)>,
}

/// Calls every enabled component's provider in the fixed order and writes the Secrets
/// they issue. One component failing does not stop the others.
async fn provision_components(t: &DealerTenant, ctx: &Context) -> ComponentsOutcome {
    let info = TenantInfo::of(t);
    let mut out = ComponentsOutcome::default();
    for component in Component::ORDER {
        let ctype = component.condition_type();
        if !component.enabled_for(t) {
            out.disabled.push(ctype);
            // Switched off after it was provisioned: the operator stops managing it, but its
            // processor still holds data until the tenant is erased, and the status says so.
            if held_components(t).contains(component.key()) {
                out.holding.push(component);
                out.resources.extend(known_resources(
                    t,
                    providers::plan(component, &ctx.config, &info),
                ));
            }
            continue;
        }
        if let Some(reason) = skip_reason(component, t, &ctx.config) {
            out.observations.push(Observation::not(
                ctype,
                "ThirdCountryProcessorDenied",
                reason,
            ));
            out.permanent_failure = true;
            continue;
        }
        let Some(provider) = ctx.providers.get(component) else {
            out.observations.push(Observation::not(
                ctype,
                "NotConfigured",
                ctx.providers.why_unavailable(component),
            ));
            out.permanent_failure = true;
            continue;
        };
        let key = ObjectRef::new(component.key()).within(&info.namespace);
        let cached = ctx.stores.secrets.get(&key);
        let current = cached.as_deref().map(desired::secret::secret_data);
        match provider.reconcile(&info, current.as_ref()).await {
            Ok(done) => {
                if let Some(data) = &done.secret {
                    let secret =
                        desired::secret::component_secret(&info.name, component.key(), data);
                    if let Err(e) = ensure(&ctx.client, &ctx.stores.secrets, &secret).await {
                        out.kube_error = Some(e);
                        return out;
                    }
                }
                if done.secret.is_some() || current.is_some() {
                    out.secrets.push(component.key().to_string());
                }
                if done.secret.is_some() || current.is_some() || !done.resources.is_empty() {
                    out.holding.push(component);
                }
                out.resources.extend(done.resources);
                out.pending |= !done.ready;
                out.observations.push(if done.ready {
                    Observation::ok(ctype, "Provisioned", done.message)
                } else {
                    Observation::not(ctype, "Provisioning", done.message)
                });
            }
            Err(e) => {
                warn!(tenant = %info.name, %component, error = %e, "component not provisioned");
                if current.is_some() {
                    out.secrets.push(component.key().to_string());
                }
                out.observations
                    .push(Observation::not(ctype, e.reason(), e.to_string()));
                if e.is_transient() {
                    out.transient.get_or_insert(e);
                } else {
                    out.permanent_failure = true;
                }
            }
        }
    }
    out
}

/// Layer 4 of residency: every location a service reported (or a provider refused) must be
/// an EU region, except at processors registered as third-country ones (Postmark), which
/// the processor register and the cluster policy govern instead.
fn observe_residency(ctx: &Context, c: &ComponentsOutcome) -> Observation {
    let catalog = processors::catalog(&ctx.config.processors);
    let third_country = |id: &str| catalog.iter().any(|p| p.id == id && p.third_country);
    let mut violations: Vec<(String, String, String)> = c
        .residency
        .iter()
        .map(|(comp, res, loc)| (comp.key().to_string(), res.clone(), loc.clone()))
        .collect();
    for r in &c.resources {
        let location = r.location.as_deref().unwrap_or("unknown");
        if !third_country(&r.processor) && !regions::is_eu_region(&location.to_ascii_lowercase()) {
            violations.push((
                r.kind.clone(),
                format!("{} {}", r.kind, r.name),
                location.to_string(),
            ));
        }
    }
    for (component, _, _) in &violations {
        ctx.metrics
            .residency_violations
            .get_or_create(&super::metrics::ResidencyLabels {
                component: component.clone(),
            })
            .inc();
    }
    if violations.is_empty() {
        let checked = c
            .resources
            .iter()
            .filter(|r| !third_country(&r.processor))
            .count();
        Observation::ok(
            types::RESIDENCY,
            "InEU",
            format!(
                "{checked} external resources checked; every reported location is an EU region"
            ),
        )
    } else {
        let list: Vec<String> = violations
            .iter()
            .map(|(_, res, loc)| format!("{res} in {loc}"))
            .collect();
        Observation::not(
            types::RESIDENCY,
            "ResidencyViolation",
            format!(
                "outside the EU: {}; writes to these resources are stopped",
                list.join(", ")
            ),
        )
    }
}

/// The processor register entries of what holds this tenant's data: the cluster's host
/// always, then each component that holds data.
fn tenant_processors(ctx: &Context, holding: &[Component]) -> Vec<TenantProcessor> {
    let mut used = vec![("hosting".to_string(), ctx.config.cluster.processor.clone())];
    used.extend(holding.iter().map(|c| {
        (
            c.key().to_string(),
            providers::processor_of(*c, &ctx.config).to_string(),
        )
    }));
    processors::for_tenant(&used, &processors::catalog(&ctx.config.processors))
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

/// Components the user abandoned with the `dealerdesk.de/abandon` annotation.
pub fn abandoned(t: &DealerTenant) -> BTreeSet<String> {
    t.annotations()
        .get(ABANDON_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Erases or keeps the tenant's data, by its deletion policy, and keeps a receipt.
async fn cleanup(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let ns_name = names::namespace(t.tenant_name());
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let now = jiff::Timestamp::now().to_string();
    let catalog = processors::catalog(&ctx.config.processors);
    let info = TenantInfo::of(t);
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
                ensure(&ctx.client, &ctx.stores.namespaces, &ns).await?;
            }
            let mut entries = vec![
                namespace_entry(ctx, &catalog, &ns_name, Outcome::Kept, &now).detail(format!(
                    "namespace {ns_name} and its Secrets, labelled {}=true",
                    names::RETAINED_LABEL
                )),
            ];
            for component in Component::ORDER {
                if !component.enabled_for(t) {
                    continue;
                }
                let processor = processor_entry(ctx, &catalog, component);
                let planned = known_resources(t, providers::plan(component, &ctx.config, &info));
                entries.push(
                    Entry::new(component.key(), &processor, Outcome::Kept, planned, &now)
                        .detail("deletionPolicy Retain"),
                );
            }
            let receipt = record_receipt(t, ctx, entries, true, &now).await?;
            info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant deleted; data retained");
            publish(
                &recorder,
                t,
                EventType::Normal,
                "Retained",
                receipt.summary(),
            )
            .await;
            Ok(Action::await_change())
        }
        DeletionPolicy::Delete => {
            let mut entries = erase_components(t, ctx, &catalog, &now).await;
            let failed: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.outcome == Outcome::Failed)
                .collect();
            if !failed.is_empty() {
                // External data first: the namespace (with the Secrets that reach that data)
                // stays until every processor has erased the tenant.
                let all_transient = failed.iter().all(|e| {
                    e.detail
                        .as_deref()
                        .is_some_and(|d| d.starts_with("transient:"))
                });
                let still: Vec<String> = failed
                    .iter()
                    .map(|e| format!("{} at {}", e.component, e.processor))
                    .collect();
                let summary = format!("erasure incomplete: {} still hold data", still.join(", "));
                let mut obs: Vec<Observation> = failed
                    .iter()
                    .filter_map(|e| Component::ORDER.iter().find(|c| c.key() == e.component))
                    .map(|c| {
                        let detail = entries
                            .iter()
                            .find(|e| e.component == c.key())
                            .and_then(|e| e.detail.clone());
                        Observation::not(
                            c.condition_type(),
                            "ErasureFailed",
                            detail.unwrap_or_default(),
                        )
                    })
                    .collect();
                obs.insert(
                    0,
                    Observation::not(types::READY, "ErasureIncomplete", summary.clone()),
                );
                entries.push(
                    namespace_entry(ctx, &catalog, &ns_name, Outcome::Kept, &now)
                        .detail("kept until every processor has erased the tenant"),
                );
                record_receipt(t, ctx, entries, false, &now).await?;
                update_status(
                    t,
                    ctx,
                    StatusUpdate::new(obs, Phase::Deleting, Some(ns_name.clone())),
                )
                .await?;
                publish(
                    &recorder,
                    t,
                    EventType::Warning,
                    "ErasureIncomplete",
                    summary.clone(),
                )
                .await;
                return Err(Error::ErasureIncomplete {
                    summary,
                    transient: all_transient,
                });
            }
            let cached = ctx.stores.namespaces.get(&ObjectRef::new(&ns_name));
            let gone = if cached
                .as_ref()
                .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
            {
                false
            } else {
                let api: Api<Namespace> = Api::all(ctx.client.clone());
                match api.delete(&ns_name, &DeleteParams::foreground()).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => true,
                    Err(e) => return Err(Error::kube(format!("delete namespace {ns_name}"), e)),
                    Ok(_) => false,
                }
            };
            if !gone {
                entries.push(
                    namespace_entry(ctx, &catalog, &ns_name, Outcome::Kept, &now)
                        .detail("being deleted"),
                );
                record_receipt(t, ctx, entries, false, &now).await?;
                let obs = vec![Observation::not(
                    types::READY,
                    "Deleting",
                    format!("waiting for namespace {ns_name} to be deleted"),
                )];
                update_status(
                    t,
                    ctx,
                    StatusUpdate::new(obs, Phase::Deleting, Some(ns_name.clone())),
                )
                .await?;
                return Err(Error::CleanupPending(format!(
                    "namespace {ns_name} is terminating"
                )));
            }
            entries.push(
                namespace_entry(ctx, &catalog, &ns_name, Outcome::Erased, &now)
                    .detail("namespace deleted with its Secrets"),
            );
            let receipt = record_receipt(t, ctx, entries, true, &now).await?;
            info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant erased");
            let kind = if receipt.still_holding().is_empty() {
                EventType::Normal
            } else {
                EventType::Warning
            };
            publish(&recorder, t, kind, "Erased", receipt.summary()).await;
            Ok(Action::await_change())
        }
    }
}

fn processor_entry(
    ctx: &Context,
    catalog: &[processors::Processor],
    component: Component,
) -> processors::Processor {
    let id = providers::processor_of(component, &ctx.config);
    processors::lookup(catalog, id)
}

/// Components whose data the status last showed at a processor.
fn held_components(t: &DealerTenant) -> BTreeSet<&str> {
    t.status
        .iter()
        .flat_map(|s| s.processors.iter())
        .flat_map(|p| p.components.iter().map(String::as_str))
        .collect()
}

/// The planned resources, as the status last saw them where it did (with the provider's
/// ID and the location the service reported).
fn known_resources(t: &DealerTenant, planned: Vec<ExternalResource>) -> Vec<ExternalResource> {
    let seen = t
        .status
        .as_ref()
        .map(|s| s.external_resources.as_slice())
        .unwrap_or_default();
    planned
        .into_iter()
        .map(|p| {
            seen.iter()
                .find(|s| s.kind == p.kind && s.name == p.name)
                .cloned()
                .unwrap_or(p)
        })
        .collect()
}

fn namespace_entry(
    ctx: &Context,
    catalog: &[processors::Processor],
    ns: &str,
    outcome: Outcome,
    at: &str,
) -> Entry {
    let host = processors::lookup(catalog, &ctx.config.cluster.processor);
    let resource = ExternalResource::new(
        "Namespace",
        ns,
        Some(ctx.config.cluster.region.clone()),
        &host.id,
    );
    Entry::new("namespace", &host, outcome, vec![resource], at)
}

/// Writes the receipt (merged with earlier attempts) to its ConfigMap and logs it.
async fn record_receipt(
    t: &DealerTenant,
    ctx: &Context,
    entries: Vec<Entry>,
    complete: bool,
    now: &str,
) -> Result<Receipt, Error> {
    let uid = t.uid().unwrap_or_default();
    let ns = &ctx.config.operator_namespace;
    let fresh = Receipt {
        tenant: t.tenant_name().into(),
        tenant_uid: uid.clone(),
        deletion_policy: t.spec.deletion_policy,
        complete,
        started_at: now.into(),
        completed_at: complete.then(|| now.to_string()),
        entries,
    };
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let name = receipt::configmap_name(t.tenant_name(), &uid);
    let old = match api.get_opt(&name).await {
        Ok(cm) => cm.as_ref().and_then(receipt::from_configmap),
        Err(e) => return Err(Error::kube(format!("read erasure receipt {ns}/{name}"), e)),
    };
    let merged = receipt::merge(old.as_ref(), fresh);
    if old.as_ref() != Some(&merged) {
        let cm = receipt::to_configmap(&merged, ns);
        api.patch(
            &name,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(|e| Error::kube(format!("write erasure receipt {ns}/{name}"), e))?;
        let json = serde_json::to_string(&merged).expect("a receipt serializes");
        info!(tenant = t.tenant_name(), receipt = %json, configmap = %format!("{ns}/{name}"), complete = merged.complete, "erasure receipt");
    }
    Ok(merged)
}

/// Deletes the tenant at the provider of every component that is enabled or that the
/// status last showed holding data (a component switched off later may still hold some),
/// in reverse order, and says what each did. A component never provisioned costs no call
/// at all; abandoned components are left alone.
async fn erase_components(
    t: &DealerTenant,
    ctx: &Context,
    catalog: &[processors::Processor],
    now: &str,
) -> Vec<Entry> {
    let info = TenantInfo::of(t);
    let abandoned = abandoned(t);
    let held = held_components(t);
    let mut entries = Vec::new();
    for component in Component::ORDER.iter().rev().copied() {
        if !component.enabled_for(t) && !held.contains(component.key()) {
            continue;
        }
        let processor = processor_entry(ctx, catalog, component);
        if abandoned.contains(component.key()) {
            let planned = known_resources(t, providers::plan(component, &ctx.config, &info));
            entries.push(
                Entry::new(
                    component.key(),
                    &processor,
                    Outcome::Abandoned,
                    planned,
                    now,
                )
                .detail(format!("abandoned by the {ABANDON_ANNOTATION} annotation")),
            );
            continue;
        }
        let Some(provider) = ctx.providers.get(component) else {
            // Without a provider nothing can have been created, unless the status says an
            // earlier operator (with the provider) did: then the data is still there.
            if held.contains(component.key()) {
                let why = ctx.providers.why_unavailable(component);
                entries.push(
                    Entry::new(
                        component.key(),
                        &processor,
                        Outcome::Failed,
                        Vec::new(),
                        now,
                    )
                    .detail(format!("permanent: {why}")),
                );
            }
            continue;
        };
        match provider.delete(&info).await {
            Ok(erased) if erased.resources.is_empty() => {
                entries.push(Entry::new(
                    component.key(),
                    &processor,
                    Outcome::NothingFound,
                    Vec::new(),
                    now,
                ));
            }
            Ok(erased) => {
                for r in &erased.resources {
                    info!(tenant = %info.name, %component, kind = %r.kind, name = %r.name, "erased");
                }
                entries.push(Entry::new(
                    component.key(),
                    &processor,
                    Outcome::Erased,
                    erased.resources,
                    now,
                ));
            }
            Err(e) => {
                warn!(tenant = %info.name, %component, error = %e, "erasure failed");
                let class = if e.is_transient() {
                    "transient"
                } else {
                    "permanent"
                };
                entries.push(
                    Entry::new(
                        component.key(),
                        &processor,
                        Outcome::Failed,
                        Vec::new(),
                        now,
                    )
                    .detail(format!("{class}: {e}")),
                );
            }
        }
    }
    entries
}

async fn paused(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let message = if t.metadata.deletion_timestamp.is_some() {
        "spec.paused is true: deletion is on hold until it is unpaused"
    } else {
        "spec.paused is true: the operator changes nothing for this tenant"
    };
    let obs = vec![Observation::not(types::READY, "Paused", message)];
    let namespace = t.status.as_ref().and_then(|s| s.namespace.clone());
    update_status(t, ctx, StatusUpdate::new(obs, Phase::Paused, namespace)).await?;
    Ok(Action::await_change())
}

/// Writes the status (server-side apply on the status subresource) only when it changed,
/// and publishes an Event for every condition that changed in a way a person should see.
async fn update_status(t: &DealerTenant, ctx: &Context, update: StatusUpdate) -> Result<(), Error> {
    let now = Time(jiff::Timestamp::now());
    let old = t.status.as_ref();
    let mut new = status::next_status(
        old,
        &update.observations,
        update.phase,
        update.namespace,
        t.metadata.generation,
        &now,
    );
    status::drop_conditions(&mut new.conditions, &update.drop_types);
    if let Some(resources) = update.external_resources {
        new.external_resources = resources;
    }
    if let Some(processors) = update.processors {
        new.processors = processors;
    }
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
    let worth_an_event: Vec<_> = changed
        .into_iter()
        .filter(|c| c.type_ == types::READY || (c.status == "False" && is_failure(&c.reason)))
        .collect();
    if !worth_an_event.is_empty() {
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
    }
    Ok(())
}

fn is_failure(reason: &str) -> bool {
    matches!(
        reason,
        "ApplyFailed"
            | "InvalidSpec"
            | "ProviderUnavailable"
            | "ProviderRefused"
            | "ResidencyViolation"
            | "NotConfigured"
            | "DeletionBlocked"
            | "ThirdCountryProcessorDenied"
            | "ErasureIncomplete"
            | "ErasureFailed"
    )
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
