//! Status assembly, pure: from what a pass observed (namespace, server, each component's
//! result and the holdings) to the conditions, phase, processors and resources it writes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;

use super::holdings::{self, ComponentResult, Holdings, Outcome};
use super::status::{Observation, summarize, types};
use crate::api::{DealerTenant, Phase, regions};
use crate::config::OperatorConfig;
use crate::processors::{self, Processor, TenantProcessor};
use crate::providers::{self, Component, ExternalResource, ProviderError};

/// The status a pass wants to write.
#[derive(Debug, Default)]
pub struct StatusUpdate {
    pub observations: Vec<Observation>,
    pub phase: Option<Phase>,
    pub namespace: Option<String>,
    /// Replaces `externalResources` and `processors` when set.
    pub holdings: Option<Holdings>,
    /// Conditions to remove (switched-off components).
    pub drop_types: Vec<&'static str>,
}

impl StatusUpdate {
    pub fn new(observations: Vec<Observation>, phase: Phase, namespace: Option<String>) -> Self {
        Self {
            observations,
            phase: Some(phase),
            namespace,
            ..Default::default()
        }
    }
}

/// A location outside the EU: `(component, resource, location)`.
pub type Violation = (String, String, String);

/// How soon to look again at a component that is still being created, unless its provider
/// asks for longer ([`providers::Reconciled::recheck_after`]).
pub const PENDING_REQUEUE: Duration = Duration::from_secs(15);

/// What a whole pass came to.
pub struct Assembled {
    pub update: StatusUpdate,
    /// Some component is still being created: look again after this long (the shortest
    /// wait a not-ready component asked for, [`PENDING_REQUEUE`] where it asked for none).
    pub pending: Option<Duration>,
    /// The first transient provider failure, for the error policy's backoff.
    pub transient: Option<ProviderError>,
    pub violations: Vec<Violation>,
}

/// Assembles the status of a pass that reached the server step.
pub fn pass(
    cfg: &OperatorConfig,
    namespace: &Namespace,
    server: Observation,
    results: &[ComponentResult],
    held: Holdings,
) -> Assembled {
    let catalog = processors::catalog(&cfg.processors);
    let mut obs = vec![observe_namespace(namespace), server];
    let mut drop_types = Vec::new();
    let (mut pending, mut permanent, mut transient) = (None::<Duration>, false, None);
    for r in results {
        let ctype = r.component.condition_type();
        match &r.outcome {
            Outcome::Disabled => drop_types.push(ctype),
            Outcome::Denied(why) => {
                permanent = true;
                obs.push(Observation::not(ctype, "ThirdCountryProcessorDenied", why));
            }
            Outcome::NotConfigured(why) => {
                permanent = true;
                obs.push(Observation::not(ctype, "NotConfigured", why));
            }
            Outcome::Reconciled {
                ready,
                reason,
                message,
                recheck_after,
                ..
            } => {
                if !ready {
                    let wait = recheck_after.unwrap_or(PENDING_REQUEUE);
                    pending = Some(pending.map_or(wait, |p| p.min(wait)));
                }
                obs.push(if *ready {
                    Observation::ok(ctype, reason.unwrap_or("Provisioned"), message)
                } else {
                    Observation::not(ctype, reason.unwrap_or("Provisioning"), message)
                });
            }
            Outcome::Failed(e) => {
                obs.push(Observation::not(ctype, e.reason(), e.to_string()));
                if e.is_transient() {
                    transient.get_or_insert_with(|| e.clone());
                } else {
                    permanent = true;
                }
            }
        }
    }
    let violations = violations(&catalog, results, &held);
    obs.insert(2, residency(&catalog, &held, &violations));
    let ready = summarize(&obs);
    let phase = if ready.status {
        Phase::Ready
    } else if permanent || !violations.is_empty() {
        Phase::Failed
    } else {
        Phase::Provisioning
    };
    obs.insert(0, ready);
    Assembled {
        update: StatusUpdate {
            observations: obs,
            phase: Some(phase),
            namespace: Some(namespace.name_any()),
            holdings: Some(held),
            drop_types,
        },
        pending,
        transient,
        violations,
    }
}

/// Layer 4 of residency: every location a service reported (or a provider refused while
/// reading back) must be an EU region, except at processors registered as third-country
/// ones (Postmark), which the processor register and the cluster policy govern instead.
pub fn violations(
    catalog: &[Processor],
    results: &[ComponentResult],
    held: &Holdings,
) -> Vec<Violation> {
    let third_country = |id: &str| catalog.iter().any(|p| p.id == id && p.third_country);
    let mut out: Vec<Violation> = Vec::new();
    for r in results {
        if let Outcome::Failed(ProviderError::Residency { resource, location }) = &r.outcome {
            out.push((r.component.key().into(), resource.clone(), location.clone()));
        }
    }
    for (component, resources) in held {
        for r in resources {
            let location = r.location.as_deref().unwrap_or("unknown");
            let named = format!("{} {}", r.kind, r.name);
            if !third_country(&r.processor)
                && !regions::is_eu_region(&location.to_ascii_lowercase())
                && !out.iter().any(|(_, res, _)| res.ends_with(&r.name))
            {
                out.push((component.key().into(), named, location.to_string()));
            }
        }
    }
    out
}

fn residency(catalog: &[Processor], held: &Holdings, violations: &[Violation]) -> Observation {
    if violations.is_empty() {
        let checked = holdings::resources(held)
            .iter()
            .filter(|r| {
                !catalog
                    .iter()
                    .any(|p| p.id == r.processor && p.third_country)
            })
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

/// The processor register entries of everyone holding this tenant's data: the cluster's
/// host always, then each component in the holdings.
pub fn tenant_processors(cfg: &OperatorConfig, held: &Holdings) -> Vec<TenantProcessor> {
    let mut used = vec![("hosting".to_string(), cfg.cluster.processor.clone())];
    used.extend(held.keys().map(|c| {
        (
            c.key().to_string(),
            providers::processor_of(*c, cfg).to_string(),
        )
    }));
    processors::for_tenant(&used, &processors::catalog(&cfg.processors))
}

/// The holdings the tenant's last status shows.
pub fn previous_holdings(
    t: &DealerTenant,
    cfg: &OperatorConfig,
    status: Option<&crate::api::DealerTenantStatus>,
) -> Holdings {
    let info = providers::TenantInfo::of(t);
    let planned = |c: Component| -> Vec<ExternalResource> { providers::plan(c, cfg, &info) };
    holdings::from_status(status, &planned)
}

pub fn observe_namespace(ns: &Namespace) -> Observation {
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
pub fn observe_server(t: &DealerTenant, d: &Deployment) -> Observation {
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

/// Whether the server Deployment has rolled out its current template: the Deployment
/// controller has observed it, every replica runs it and is available, and no Pod of an
/// older template is left (what `kubectl rollout status` waits for). Only then may
/// credentials the old Pods used stop working.
pub fn rolled_out(t: &DealerTenant, d: &Deployment) -> bool {
    let want = t.spec.server.replicas;
    let generation = d.metadata.generation.unwrap_or(0);
    let st = d.status.clone().unwrap_or_default();
    let seen = st.observed_generation.unwrap_or(0) >= generation && generation > 0;
    let updated = st.updated_replicas.unwrap_or(0);
    seen && updated >= want
        && st.available_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) <= updated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(name: &str) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.into());
        ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        });
        ns
    }

    /// A tenant's first pass with an active namespace and an available server.
    fn first_pass(cfg: &OperatorConfig, results: &[ComponentResult]) -> Assembled {
        let held = holdings::next(&Holdings::new(), results, &|_| "google-cloud".to_string());
        pass(
            cfg,
            &active("tenant-x"),
            Observation::ok(types::SERVER, "Available", ""),
            results,
            held,
        )
    }

    fn not_ready(component: Component, recheck_after: Option<Duration>) -> ComponentResult {
        ComponentResult {
            component,
            outcome: Outcome::Reconciled {
                ready: false,
                reason: None,
                message: String::new(),
                resources: Vec::new(),
                recheck_after,
            },
            has_secret: false,
        }
    }

    #[test]
    fn a_pass_looks_again_after_the_shortest_wait_a_pending_component_asked_for() {
        let cfg = OperatorConfig::default();
        let slow = not_ready(Component::Database, Some(Duration::from_secs(60)));
        assert_eq!(
            first_pass(&cfg, std::slice::from_ref(&slow)).pending,
            Some(Duration::from_secs(60))
        );
        let default = not_ready(Component::Search, None);
        assert_eq!(
            first_pass(&cfg, &[slow, default]).pending,
            Some(PENDING_REQUEUE)
        );
        assert_eq!(first_pass(&cfg, &[]).pending, None);
    }

    #[test]
    fn a_residency_error_from_a_provider_fails_the_residency_condition() {
        let cfg = OperatorConfig::default();
        let results = [ComponentResult {
            component: Component::Storage,
            outcome: Outcome::Failed(ProviderError::Residency {
                resource: "Bucket dt-x".into(),
                location: "US".into(),
            }),
            has_secret: true,
        }];
        let a = first_pass(&cfg, &results);
        assert_eq!(a.violations.len(), 1);
        let residency = a
            .update
            .observations
            .iter()
            .find(|o| o.type_ == types::RESIDENCY)
            .unwrap();
        assert!(!residency.status);
        assert!(residency.message.contains("Bucket dt-x in US"));
        assert_eq!(a.update.phase, Some(Phase::Failed));
        // The component still holds data, so the register keeps it.
        let procs = tenant_processors(&cfg, a.update.holdings.as_ref().unwrap());
        assert!(
            procs
                .iter()
                .any(|p| p.components.iter().any(|c| c == "storage"))
        );
    }

    #[test]
    fn a_location_read_back_outside_the_eu_is_a_violation() {
        let cfg = OperatorConfig::default();
        let results = [ComponentResult {
            component: Component::Database,
            outcome: Outcome::Reconciled {
                ready: true,
                reason: None,
                message: String::new(),
                recheck_after: None,
                resources: vec![ExternalResource::new(
                    "CloudSqlInstance",
                    "dt-x",
                    Some("us-central1".into()),
                    "google-cloud",
                )],
            },
            has_secret: true,
        }];
        let a = first_pass(&cfg, &results);
        assert_eq!(
            a.violations,
            vec![(
                "database".to_string(),
                "CloudSqlInstance dt-x".to_string(),
                "us-central1".to_string()
            )]
        );
        assert!(!a.update.observations[0].status);
    }
}
