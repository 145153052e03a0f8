//! A deleted tenant: erase or keep its data by its deletion policy, and keep a receipt.
//! Runs under the `dealerdesk.de/cleanup` finalizer; a failure keeps the finalizer.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use tracing::info;

use super::apply::{ensure, read};
use super::assemble::{StatusUpdate, previous_holdings};
use super::components::{self, processor_of};
use super::context::Context;
use super::error::Error;
use super::holdings::{self, Holdings};
use super::identity;
use super::publish::{publish, update_status};
use super::receipt::{self, Entry, Outcome, Receipt};
use super::status::{Observation, types};
use crate::api::{DealerTenant, DeletionPolicy, Phase};
use crate::desired::{self, names};
use crate::processors::{self, Processor};
use crate::providers::{Component, ExternalResource};

/// Erases or keeps the tenant's data, by its deletion policy, and keeps a receipt.
pub async fn cleanup(t: &DealerTenant, ctx: &Context) -> Result<Action, Error> {
    let ns_name = names::namespace(t.tenant_name());
    let now = jiff::Timestamp::now().to_string();
    let catalog = processors::catalog(&ctx.config.processors);
    let held = previous_holdings(t, &ctx.config, ctx.status_of(t).as_ref());
    let ns = read(ctx, &ctx.stores.namespaces, None, &ns_name).await?;
    let uid = t.uid().unwrap_or_default();
    // Only a namespace bound to this tenant's UID (or none at all) is this tenant's to keep
    // or delete, terminating or not (the pass after the delete finds it terminating); a
    // namespace retained from an earlier tenant of the same name is left alone.
    let ours = ns.as_ref().is_none_or(|n| identity::is_ours(n, &uid));
    let action = match t.spec.deletion_policy {
        DeletionPolicy::Retain => {
            retain(t, ctx, &catalog, &held, ours && ns.is_some(), &now).await?
        }
        DeletionPolicy::Delete => erase(t, ctx, &catalog, &held, ns.as_ref(), ours, &now).await?,
    };
    ctx.forget_tenant(t);
    Ok(action)
}

/// `Retain`: the namespace is marked as retained (with the tenant's UID) and everything
/// is kept; the receipt lists what is kept where.
async fn retain(
    t: &DealerTenant,
    ctx: &Context,
    catalog: &[Processor],
    held: &Holdings,
    ours: bool,
    now: &str,
) -> Result<Action, Error> {
    let ns_name = names::namespace(t.tenant_name());
    let uid = t.uid().unwrap_or_default();
    let mut entries = Vec::new();
    if ours {
        let mut ns = desired::namespace::namespace(t.tenant_name(), &uid);
        ns.labels_mut()
            .insert(names::RETAINED_LABEL.into(), "true".into());
        ns.annotations_mut()
            .insert(names::RETAINED_FROM_ANNOTATION.into(), uid.clone());
        ensure(ctx, &ctx.stores.namespaces, &ns).await?;
        entries.push(
            namespace_entry(ctx, catalog, &ns_name, Outcome::Kept, now).detail(format!(
                "namespace {ns_name} and its Secrets, labelled {}=true and {}={uid}",
                names::RETAINED_LABEL,
                names::TENANT_UID_LABEL
            )),
        );
    }
    // Exactly what holds data: not what is merely enabled (a component denied by policy
    // never held any), and also what was switched off after it was provisioned.
    for (component, resources) in held {
        let processor = processor_of(ctx, catalog, *component);
        entries.push(
            Entry::new(
                component.key(),
                &processor,
                Outcome::Kept,
                resources.clone(),
                now,
            )
            .detail("deletionPolicy Retain"),
        );
    }
    let receipt = record_receipt(t, ctx, entries, true, now).await?;
    info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant deleted; data retained");
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    publish_entries(ctx, &recorder, t, &receipt).await;
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

/// `Delete` (GDPR Art. 17): every processor erases the tenant, then the namespace goes.
async fn erase(
    t: &DealerTenant,
    ctx: &Context,
    catalog: &[Processor],
    held: &Holdings,
    ns: Option<&Namespace>,
    ours: bool,
    now: &str,
) -> Result<Action, Error> {
    let ns_name = names::namespace(t.tenant_name());
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    // A component that is enabled but not (yet) in the holdings may have been created by a
    // pass that did not get to write its status: erase it too, but only when the namespace
    // is this tenant's. Otherwise this tenant never provisioned anything, and what its
    // names point to belongs to a tenant whose data was retained.
    let mut entries = components::erase(t, ctx, held, ours, catalog, now).await;
    let erased: Vec<Component> = Component::ORDER
        .into_iter()
        .filter(|c| {
            entries
                .iter()
                .any(|e| e.component == c.key() && e.outcome.deleted())
        })
        .collect();
    let remaining = holdings::after_erasure(held, &erased);
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
        if ours {
            entries.push(
                namespace_entry(ctx, catalog, &ns_name, Outcome::Kept, now)
                    .detail("kept until every processor has erased the tenant"),
            );
        }
        record_receipt(t, ctx, entries, false, now).await?;
        let mut update = StatusUpdate::new(obs, Phase::Deleting, Some(ns_name.clone()));
        update.holdings = Some(remaining);
        update_status(t, ctx, update).await?;
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
    if ours {
        let terminating = ns.is_some_and(|n| n.metadata.deletion_timestamp.is_some());
        let gone = if terminating {
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
                namespace_entry(ctx, catalog, &ns_name, Outcome::Kept, now).detail("being deleted"),
            );
            record_receipt(t, ctx, entries, false, now).await?;
            let obs = vec![Observation::not(
                types::READY,
                "Deleting",
                format!("waiting for namespace {ns_name} to be deleted"),
            )];
            let mut update = StatusUpdate::new(obs, Phase::Deleting, Some(ns_name.clone()));
            update.holdings = Some(remaining);
            update_status(t, ctx, update).await?;
            return Err(Error::CleanupPending(format!(
                "namespace {ns_name} is terminating"
            )));
        }
        entries.push(
            namespace_entry(ctx, catalog, &ns_name, Outcome::Erased, now)
                .detail("namespace deleted with its Secrets"),
        );
    } else if ns.is_some() {
        entries.push(
            namespace_entry(ctx, catalog, &ns_name, Outcome::NothingFound, now).detail(
                "the namespace of this name is not this tenant's (another UID); left alone",
            ),
        );
    }
    let receipt = record_receipt(t, ctx, entries, true, now).await?;
    info!(tenant = t.tenant_name(), namespace = %ns_name, "tenant erased");
    publish_entries(ctx, &recorder, t, &receipt).await;
    let kind = if receipt.still_holding().is_empty() {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(&recorder, t, kind, "Erased", receipt.summary()).await;
    Ok(Action::await_change())
}

fn namespace_entry(
    ctx: &Context,
    catalog: &[Processor],
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
/// One Event per processor of a final receipt, so that `kubectl describe` tells each
/// erasure (or why the data stays), once: only the last pass, whose receipt is complete,
/// publishes them.
async fn publish_entries(ctx: &Context, recorder: &Recorder, t: &DealerTenant, receipt: &Receipt) {
    for e in &receipt.entries {
        ctx.metrics
            .erasures
            .get_or_create(&super::metrics::ErasureLabels {
                component: e.component.clone(),
                outcome: format!("{:?}", e.outcome),
            })
            .inc();
        let (kind, reason) = match e.outcome {
            Outcome::Erased => (EventType::Normal, "ProcessorErased"),
            Outcome::Restorable => (EventType::Normal, "ProcessorDeletedRestorable"),
            Outcome::NothingFound => (EventType::Normal, "NothingToErase"),
            Outcome::Kept => (EventType::Normal, "ProcessorKept"),
            Outcome::Abandoned => (EventType::Warning, "ProcessorAbandoned"),
            Outcome::Failed => (EventType::Warning, "ErasureFailed"),
        };
        let resources: Vec<&str> = e.resources.iter().map(|r| r.name.as_str()).collect();
        let mut note = format!(
            "{} at {} ({})",
            e.component, e.processor, e.processor_country
        );
        if !resources.is_empty() {
            note.push_str(&format!(": {}", resources.join(", ")));
        }
        if let Some(d) = &e.detail {
            note.push_str(&format!("; {d}"));
        }
        publish(recorder, t, kind, reason, note).await;
    }
}

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
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
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
