//! Who holds this tenant's data: the one source of truth for `status.processors`,
//! `status.externalResources`, the erasure and both receipts.
//!
//! It is a pure function of the previous status and this pass's per-component results,
//! and it only grows during a tenant's life: a component that failed, lost its provider,
//! was switched off or denied by policy keeps what it held. It shrinks only when a
//! provider confirms an erasure ([`after_erasure`]).

use std::collections::BTreeMap;

use crate::api::DealerTenantStatus;
use crate::providers::{Component, ExternalResource, ProviderError};

/// What one component's step came to in this pass.
#[derive(Debug)]
pub enum Outcome {
    /// `spec.<component>.enabled` is false: not managed.
    Disabled,
    /// Not provisioned by the cluster's processor policy; the reason says why.
    Denied(String),
    /// No provider could be built; the reason says why.
    NotConfigured(String),
    /// The provider answered.
    Reconciled {
        ready: bool,
        /// The provider's own condition reason, if it gave one.
        reason: Option<&'static str>,
        message: String,
        resources: Vec<ExternalResource>,
        /// While not ready: when to look again, if the provider said.
        recheck_after: Option<std::time::Duration>,
    },
    /// The provider failed (a residency violation it saw is one such failure).
    Failed(ProviderError),
}

/// One component's result: the outcome, and whether its Secret exists (credentials were
/// issued, so the processor holds an account of the tenant's at least).
#[derive(Debug)]
pub struct ComponentResult {
    pub component: Component,
    pub outcome: Outcome,
    pub has_secret: bool,
}

/// Components holding data, each with its external resources as last known.
pub type Holdings = BTreeMap<Component, Vec<ExternalResource>>;

/// The holdings the previous status shows. `planned` gives each component's planned
/// resources, to tell which recorded resource belongs to which component.
pub fn from_status(
    previous: Option<&DealerTenantStatus>,
    planned: &dyn Fn(Component) -> Vec<ExternalResource>,
) -> Holdings {
    let Some(st) = previous else {
        return Holdings::new();
    };
    let mut out = Holdings::new();
    for component in Component::ORDER {
        let listed = st
            .processors
            .iter()
            .any(|p| p.components.iter().any(|c| c == component.key()));
        let plan = planned(component);
        // Recorded with its component; a status written before that field existed is
        // matched by the planned kind and name.
        let recorded: Vec<ExternalResource> = st
            .external_resources
            .iter()
            .filter(|r| match r.component.as_deref() {
                Some(c) => c == component.key(),
                None => plan.iter().any(|p| p.kind == r.kind && p.name == r.name),
            })
            .cloned()
            .collect();
        if listed || !recorded.is_empty() {
            out.insert(component, recorded);
        }
    }
    out
}

/// The holdings after this pass: the previous ones, plus what the providers reported.
/// Nothing is dropped here.
/// `processor_of` names the processor of a component, for a resource known only from a
/// provider's residency error.
pub fn next(
    previous: &Holdings,
    results: &[ComponentResult],
    processor_of: &dyn Fn(Component) -> String,
) -> Holdings {
    let mut out = previous.clone();
    for r in results {
        let reported = match &r.outcome {
            Outcome::Reconciled { resources, .. } => resources.clone(),
            _ => Vec::new(),
        };
        let residency = match &r.outcome {
            Outcome::Failed(ProviderError::Residency { resource, location }) => {
                Some((resource.clone(), location.clone()))
            }
            _ => None,
        };
        if reported.is_empty() && !r.has_secret && residency.is_none() {
            continue;
        }
        let entry = out.entry(r.component).or_default();
        for mut new in reported {
            new.component = Some(r.component.key().to_string());
            match entry
                .iter_mut()
                .find(|e| e.kind == new.kind && e.name == new.name)
            {
                Some(e) => *e = new,
                None => entry.push(new),
            }
        }
        // A location read back outside the EU stays visible on the resource it names.
        if let Some((resource, location)) = residency {
            match entry.iter_mut().find(|e| resource.ends_with(&e.name)) {
                Some(e) => e.location = Some(location),
                None => {
                    // `<Kind> <name>`, as the providers name it in the error.
                    let (kind, name) = resource.split_once(' ').unwrap_or(("Resource", &resource));
                    let mut held = ExternalResource::new(
                        kind,
                        name,
                        Some(location),
                        &processor_of(r.component),
                    );
                    held.component = Some(r.component.key().to_string());
                    entry.push(held);
                }
            }
        }
    }
    out
}

/// The holdings once `erased` components were confirmed erased by their providers.
pub fn after_erasure(previous: &Holdings, erased: &[Component]) -> Holdings {
    previous
        .iter()
        .filter(|(c, _)| !erased.contains(c))
        .map(|(c, r)| (*c, r.clone()))
        .collect()
}

/// Every resource held, in component order.
pub fn resources(h: &Holdings) -> Vec<ExternalResource> {
    h.values().flatten().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::TenantProcessor;

    fn db(name: &str, loc: &str) -> ExternalResource {
        ExternalResource::new("Database", name, Some(loc.into()), "google-cloud")
    }

    fn proc_of(_: Component) -> String {
        "google-cloud".into()
    }

    fn planned(c: Component) -> Vec<ExternalResource> {
        match c {
            Component::Database => vec![db("dt_x", "europe-west3")],
            _ => Vec::new(),
        }
    }

    fn ok(resources: Vec<ExternalResource>) -> ComponentResult {
        ComponentResult {
            component: Component::Database,
            outcome: Outcome::Reconciled {
                ready: true,
                reason: None,
                message: String::new(),
                resources,
                recheck_after: None,
            },
            has_secret: true,
        }
    }

    #[test]
    fn a_failure_or_a_missing_provider_keeps_what_was_held() {
        let first = next(
            &Holdings::new(),
            &[ok(vec![db("dt_x", "europe-west3")])],
            &proc_of,
        );
        assert_eq!(first[&Component::Database].len(), 1);
        for outcome in [
            Outcome::Failed(ProviderError::Unavailable {
                service: "PostgreSQL",
                message: "down".into(),
            }),
            Outcome::NotConfigured("no password".into()),
            Outcome::Disabled,
            Outcome::Denied("policy".into()),
        ] {
            let r = ComponentResult {
                component: Component::Database,
                outcome,
                has_secret: false,
            };
            assert_eq!(next(&first, &[r], &proc_of), first);
        }
    }

    #[test]
    fn only_a_confirmed_erasure_shrinks_the_holdings() {
        let h = next(
            &Holdings::new(),
            &[ok(vec![db("dt_x", "europe-west3")])],
            &proc_of,
        );
        assert!(after_erasure(&h, &[Component::Storage]).contains_key(&Component::Database));
        assert!(after_erasure(&h, &[Component::Database]).is_empty());
    }

    #[test]
    fn a_residency_violation_keeps_the_resource_with_the_location_read_back() {
        let h = next(
            &Holdings::new(),
            &[ok(vec![db("dt_x", "europe-west3")])],
            &proc_of,
        );
        let r = ComponentResult {
            component: Component::Database,
            outcome: Outcome::Failed(ProviderError::Residency {
                resource: "Database dt_x".into(),
                location: "us-central1".into(),
            }),
            has_secret: true,
        };
        let after = next(&h, &[r], &proc_of);
        assert_eq!(
            after[&Component::Database][0].location.as_deref(),
            Some("us-central1")
        );
    }

    #[test]
    fn the_previous_status_is_read_back_by_component() {
        let st = DealerTenantStatus {
            external_resources: vec![db("dt_x", "europe-west3")],
            processors: vec![TenantProcessor {
                id: "google-cloud".into(),
                name: "Google Cloud".into(),
                entity: "Google Cloud EMEA Ltd.".into(),
                country: "IE".into(),
                third_country: false,
                safeguard: String::new(),
                purpose: String::new(),
                data_categories: Vec::new(),
                retention: None,
                components: vec!["hosting".into(), "database".into()],
            }],
            ..Default::default()
        };
        let h = from_status(Some(&st), &planned);
        assert_eq!(h.len(), 1);
        assert_eq!(h[&Component::Database][0].name, "dt_x");
    }
}
