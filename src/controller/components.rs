//! The tenant's external components: provisioning them in a pass, and erasing them when
//! the tenant is deleted. Every provider outcome becomes one [`ComponentResult`].

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tracing::{info, warn};

use super::apply::{ensure_uncached, get};
use super::context::Context;
use super::error::Error;
use super::holdings::{ComponentResult, Holdings, Outcome};
use super::receipt::{Entry, Outcome as Receipt};
use crate::api::DealerTenant;
use crate::desired::secret::{component_secret, retiring, secret_data, with_retiring};
use crate::processors::{self, Processor};
use crate::providers::{self, Component, TenantInfo};

/// Annotation listing components whose external resources are abandoned: not deleted when
/// the tenant is deleted (e.g. `email` while Postmark has not enabled server deletion).
pub const ABANDON_ANNOTATION: &str = "dealerdesk.de/abandon";

/// What the component step did.
pub struct Provisioned {
    pub results: Vec<ComponentResult>,
    /// Component Secrets that exist, for the server to read: name and data (the data only
    /// for the pod template's hash).
    pub secrets: Vec<(String, providers::SecretData)>,
    /// Secrets that name credentials to retire once the server has rolled out with them.
    pub retiring: Vec<Retiring>,
}

/// A component Secret whose [`crate::desired::secret::RETIRE_ANNOTATION`] lists credentials to retire.
pub struct Retiring {
    pub component: Component,
    /// The IDs, as the Secret's annotation lists them.
    pub ids: Vec<String>,
    /// The Secret's data as written: the Secret is applied again without the annotation.
    pub data: providers::SecretData,
}

/// Calls every enabled component's provider in the fixed order and writes the Secrets
/// they issue. One component failing does not stop the others; a failed Secret write
/// does (the credentials it held would otherwise be lost).
pub async fn provision(t: &DealerTenant, ctx: &Context) -> Result<Provisioned, Error> {
    let info = TenantInfo::of(t);
    let mut out = Provisioned {
        results: Vec::new(),
        secrets: Vec::new(),
        retiring: Vec::new(),
    };
    for component in Component::ORDER {
        let result = |outcome, has_secret| ComponentResult {
            component,
            outcome,
            has_secret,
        };
        if !component.enabled_for(t) {
            out.results.push(result(Outcome::Disabled, false));
            continue;
        }
        if let Some(reason) = providers::skip_reason(component, t, &ctx.config) {
            out.results.push(result(Outcome::Denied(reason), false));
            continue;
        }
        let Some(provider) = ctx.providers.get(component) else {
            let why = ctx.providers.why_unavailable(component);
            out.results.push(result(Outcome::NotConfigured(why), false));
            continue;
        };
        // Credentials are issued anew when the Secret is missing: the API server says so.
        // Secrets are never cached; this GET in the tenant namespace is the only read.
        let secret = get::<Secret>(ctx, Some(&info.namespace), component.key()).await?;
        let current = secret.as_ref().map(secret_data);
        let started = std::time::Instant::now();
        let outcome = provider.reconcile_rotating(&info, current.as_ref()).await;
        observe(ctx, component, "reconcile", started, outcome.as_ref().err());
        // What earlier passes left to retire, still listed on the Secret.
        let listed = secret.as_ref().map(retiring).unwrap_or_default();
        match outcome {
            Ok(providers::Rotating {
                reconciled: done,
                retire,
            }) => {
                // New credentials, or the current ones (labelled with this tenant's UID;
                // no write when they already are). The credentials they replaced are
                // listed on the Secret in the same write, to be retired after the
                // rollout: a crash after it still retires them.
                if let Some(data) = done.secret.as_ref().or(current.as_ref()) {
                    let mut ids = listed.clone();
                    ids.extend(retire);
                    let desired = with_retiring(
                        component_secret(&info.name, &info.uid, component.key(), data),
                        &ids,
                    );
                    let written = ensure_uncached(ctx, secret.as_ref(), &desired).await?;
                    let ids = retiring(&written.object);
                    if !ids.is_empty() {
                        out.retiring.push(Retiring {
                            component,
                            ids,
                            data: data.clone(),
                        });
                    }
                    out.secrets
                        .push((component.key().to_string(), data.clone()));
                }
                let has_secret = done.secret.is_some() || current.is_some();
                out.results.push(result(
                    Outcome::Reconciled {
                        ready: done.ready,
                        reason: done.reason,
                        message: done.message,
                        resources: done.resources,
                        recheck_after: done.recheck_after,
                    },
                    has_secret,
                ));
            }
            Err(e) => {
                warn!(tenant = %info.name, %component, error = %e, "component not provisioned");
                if let Some(data) = &current {
                    out.secrets
                        .push((component.key().to_string(), data.clone()));
                    if !listed.is_empty() {
                        out.retiring.push(Retiring {
                            component,
                            ids: listed,
                            data: data.clone(),
                        });
                    }
                }
                out.results
                    .push(result(Outcome::Failed(e), current.is_some()));
            }
        }
    }
    Ok(out)
}

/// Retires the credentials the component Secrets list, now that the server Deployment has
/// rolled out with those Secrets, and drops the list from each Secret. Retiring is
/// idempotent, and the list goes only after the provider retired them: a crash in
/// between retires them again on a later pass. Returns whether any remain listed.
pub async fn retire(t: &DealerTenant, ctx: &Context, pending: &[Retiring]) -> Result<bool, Error> {
    let info = TenantInfo::of(t);
    let mut remain = false;
    for r in pending {
        let Some(provider) = ctx.providers.get(r.component) else {
            remain = true;
            continue;
        };
        let started = std::time::Instant::now();
        let outcome = provider.retire(&info, &r.ids).await;
        observe(ctx, r.component, "retire", started, outcome.as_ref().err());
        match outcome {
            Ok(()) => {
                info!(tenant = %info.name, component = %r.component, ids = %r.ids.join(","), "retired replaced credentials after the rollout");
                let desired = component_secret(&info.name, &info.uid, r.component.key(), &r.data);
                // Applied without a current object: the apply drops the annotation that a
                // comparison with the current Secret would not see as a difference.
                ensure_uncached(ctx, None, &desired).await?;
            }
            Err(e) => {
                warn!(tenant = %info.name, component = %r.component, error = %e, "replaced credentials not retired yet");
                remain = true;
            }
        }
    }
    Ok(remain)
}

/// Components the user abandoned with the `dealerdesk.de/abandon` annotation.
pub fn abandoned(t: &DealerTenant) -> std::collections::BTreeSet<String> {
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

/// Deletes the tenant at the provider of every component that holds data (a component
/// switched off later, or one whose provider failed, may still hold some) and, with
/// `and_enabled`, of every enabled one (a pass may have created it and not got to record
/// it), in reverse order, and says what each did. Anything else costs no call; abandoned
/// components are left alone.
pub async fn erase(
    t: &DealerTenant,
    ctx: &Context,
    held: &Holdings,
    and_enabled: bool,
    catalog: &[Processor],
    now: &str,
) -> Vec<Entry> {
    let info = TenantInfo::of(t);
    let abandoned = abandoned(t);
    let mut entries = Vec::new();
    for component in Component::ORDER.iter().rev().copied() {
        let holds = held.contains_key(&component);
        let may_hold = holds || (and_enabled && component.enabled_for(t));
        if !may_hold {
            continue;
        }
        let processor = processor_of(ctx, catalog, component);
        let known = held.get(&component).cloned().unwrap_or_default();
        if abandoned.contains(component.key()) {
            let resources = if known.is_empty() {
                providers::plan(component, &ctx.config, &info)
            } else {
                known
            };
            entries.push(
                Entry::new(
                    component.key(),
                    &processor,
                    Receipt::Abandoned,
                    resources,
                    now,
                )
                .detail(format!("abandoned by the {ABANDON_ANNOTATION} annotation")),
            );
            continue;
        }
        let Some(provider) = ctx.providers.get(component) else {
            // Without a provider nothing can have been created, unless the holdings say an
            // earlier operator (with the provider) did: then the data is still there.
            if holds {
                let why = ctx.providers.why_unavailable(component);
                entries.push(
                    Entry::new(component.key(), &processor, Receipt::Failed, known, now)
                        .detail(format!("permanent: {why}")),
                );
            }
            continue;
        };
        let started = std::time::Instant::now();
        let outcome = provider.delete(&info).await;
        observe(ctx, component, "delete", started, outcome.as_ref().err());
        match outcome {
            Ok(erased) if erased.resources.is_empty() => {
                entries.push(Entry::new(
                    component.key(),
                    &processor,
                    Receipt::NothingFound,
                    Vec::new(),
                    now,
                ));
            }
            Ok(erased) if !erased.restorable.is_empty() => {
                let kept: Vec<String> = erased.restorable.iter().map(|r| r.to_string()).collect();
                let detail = kept.join("; ");
                info!(tenant = %info.name, %component, restorable = %detail, "deleted; the service keeps it restorable");
                entries.push(
                    Entry::new(
                        component.key(),
                        &processor,
                        Receipt::Restorable,
                        erased.resources,
                        now,
                    )
                    .detail(detail),
                );
            }
            Ok(erased) => {
                for r in &erased.resources {
                    info!(tenant = %info.name, %component, kind = %r.kind, name = %r.name, "erased");
                }
                entries.push(Entry::new(
                    component.key(),
                    &processor,
                    Receipt::Erased,
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
                    Entry::new(component.key(), &processor, Receipt::Failed, known, now)
                        .detail(format!("{class}: {e}")),
                );
            }
        }
    }
    entries
}

/// Counts one provider operation, how long it took and how it ended.
fn observe(
    ctx: &Context,
    component: Component,
    operation: &str,
    started: std::time::Instant,
    error: Option<&providers::ProviderError>,
) {
    use super::metrics::{ProviderLabels, ProviderOutcomeLabels};
    let processor = providers::processor_of(component, &ctx.config).to_string();
    // Services answer 429 as `HTTP 429: ...` (ProviderError::from_status) or, through the
    // Google SDKs, as RESOURCE_EXHAUSTED.
    let outcome = match error.map(|e| (e.is_transient(), e.to_string())) {
        None => "ok",
        Some((_, m)) if m.contains("HTTP 429") || m.contains("RESOURCE_EXHAUSTED") => {
            "rate_limited"
        }
        Some((true, _)) => "transient",
        Some((false, _)) => "permanent",
    };
    ctx.metrics
        .provider_duration
        .get_or_create(&ProviderLabels {
            component: component.key().into(),
            processor: processor.clone(),
            operation: operation.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .provider_operations
        .get_or_create(&ProviderOutcomeLabels {
            component: component.key().into(),
            processor,
            operation: operation.into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// The register entry of the processor that serves `component`.
pub fn processor_of(ctx: &Context, catalog: &[Processor], component: Component) -> Processor {
    processors::lookup(catalog, providers::processor_of(component, &ctx.config))
}
