//! Conditions and status, as pure functions: the reconciler says what it saw, these decide
//! what status that means. Follows the Kubernetes API conventions: `lastTransitionTime`
//! changes only when a condition's status changes; every condition carries the
//! `observedGeneration` it describes; `Ready` summarises the per-component conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{DealerTenantStatus, Phase};

/// Condition types, one per component plus the summary.
pub mod types {
    pub const READY: &str = "Ready";
    pub const NAMESPACE: &str = "NamespaceReady";
    pub const SERVER: &str = "ServerReady";
    pub const RESIDENCY: &str = "ResidencyCompliant";
}

/// What the reconciler observed about one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observation {
    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn not(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The time to stamp on a condition that changes now, in whole seconds: what the API
/// server keeps of a `Time` (it is written as `%Y-%m-%dT%H:%M:%SZ`). A status carrying
/// the nanoseconds would never equal the one the watch brings back, so the copy of it the
/// process keeps until then ([`super::Context::wrote_status`]) would be kept for good, a
/// status per tenant.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The `Ready` condition that sums up the component conditions: true when all are.
pub fn summarize(components: &[Observation]) -> Observation {
    match components.iter().find(|c| !c.status) {
        None => Observation::ok(
            types::READY,
            "AllComponentsReady",
            "every enabled component is ready",
        ),
        Some(c) => Observation::not(
            types::READY,
            &c.reason,
            format!("{}: {}", c.type_, c.message),
        ),
    }
}

/// Merges observations into the previous conditions. A condition whose status did not
/// change keeps its `lastTransitionTime`. Conditions not observed this time are kept
/// unchanged (they belong to components not evaluated, e.g. while paused).
pub fn merge_conditions(
    old: &[Condition],
    observed: &[Observation],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.to_vec();
    for o in observed {
        let status = if o.status { "True" } else { "False" };
        let new = |since: Time| Condition {
            type_: o.type_.into(),
            status: status.into(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        };
        match out.iter_mut().find(|c| c.type_ == o.type_) {
            Some(c) if c.status == status => *c = new(c.last_transition_time.clone()),
            Some(c) => *c = new(now.clone()),
            None => out.push(new(now.clone())),
        }
    }
    out.sort_by_key(|c| order(&c.type_));
    out
}

fn order(type_: &str) -> usize {
    const ORDER: &[&str] = &[
        types::READY,
        types::NAMESPACE,
        types::SERVER,
        types::RESIDENCY,
        "DatabaseReady",
        "StorageReady",
        "EmailReady",
        "SearchReady",
    ];
    ORDER
        .iter()
        .position(|t| *t == type_)
        .unwrap_or(ORDER.len())
}

/// The whole new status from the old one and this pass's observations.
pub fn next_status(
    old: Option<&DealerTenantStatus>,
    observed: &[Observation],
    phase: Phase,
    namespace: Option<String>,
    generation: Option<i64>,
    now: &Time,
) -> DealerTenantStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    DealerTenantStatus {
        observed_generation: generation,
        phase: Some(phase),
        namespace,
        external_resources: old
            .map(|s| s.external_resources.clone())
            .unwrap_or_default(),
        processors: old.map(|s| s.processors.clone()).unwrap_or_default(),
        conditions: merge_conditions(old_conditions, observed, generation, now),
        components: None,
    }
}

/// `database=Ready storage=NotConfigured`: each component that has a condition (the
/// enabled ones), `Ready` or the reason it is not; `none` without any.
pub fn components_summary(conditions: &[Condition]) -> String {
    let parts: Vec<String> = crate::providers::Component::ORDER
        .iter()
        .filter_map(|c| {
            let cond = conditions.iter().find(|x| x.type_ == c.condition_type())?;
            let state = if cond.status == "True" {
                "Ready"
            } else {
                cond.reason.as_str()
            };
            Some(format!("{}={state}", c.key()))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// Drops conditions of components that are switched off (a condition that does not
/// apply is absent, by the API conventions).
pub fn drop_conditions(conditions: &mut Vec<Condition>, types: &[&str]) {
    conditions.retain(|c| !types.contains(&c.type_.as_str()));
}

/// Conditions whose status changed (or that are new): these get an Event.
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn the_components_summary_names_each_enabled_component_once() {
        let conds = merge_conditions(
            &[],
            &[
                Observation::not("EmailReady", "ThirdCountryProcessorDenied", "no"),
                Observation::ok("DatabaseReady", "Provisioned", "ok"),
                Observation::ok("ServerReady", "Available", "ok"),
            ],
            Some(1),
            &at(1),
        );
        assert_eq!(
            components_summary(&conds),
            "database=Ready email=ThirdCountryProcessorDenied"
        );
        assert_eq!(components_summary(&[]), "none");
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge_conditions(
            &[],
            &[Observation::not("ServerReady", "RolloutPending", "0/1")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        // Same status, new reason and message: time kept.
        let second = merge_conditions(
            &first,
            &[Observation::not("ServerReady", "Progressing", "0/2")],
            Some(2),
            &at(200),
        );
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].reason, "Progressing");
        assert_eq!(second[0].observed_generation, Some(2));
        // Status flips: time moves.
        let third = merge_conditions(
            &second,
            &[Observation::ok("ServerReady", "Available", "2/2")],
            Some(2),
            &at(300),
        );
        assert_eq!(third[0].last_transition_time, at(300));
        assert_eq!(third[0].status, "True");
    }

    #[test]
    fn unobserved_conditions_are_kept_and_order_is_stable() {
        let old = merge_conditions(
            &[],
            &[
                Observation::ok("ServerReady", "Available", ""),
                Observation::ok("Ready", "AllComponentsReady", ""),
            ],
            Some(1),
            &at(1),
        );
        let new = merge_conditions(
            &old,
            &[Observation::ok("NamespaceReady", "Active", "")],
            Some(1),
            &at(2),
        );
        let types: Vec<_> = new.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "NamespaceReady", "ServerReady"]);
    }

    #[test]
    fn ready_is_the_first_failing_component() {
        let ok = summarize(&[
            Observation::ok("NamespaceReady", "Active", ""),
            Observation::ok("ServerReady", "Available", ""),
        ]);
        assert!(ok.status);
        let bad = summarize(&[
            Observation::ok("NamespaceReady", "Active", ""),
            Observation::not("ServerReady", "RolloutPending", "0/1 replicas available"),
        ]);
        assert!(!bad.status);
        assert_eq!(bad.reason, "RolloutPending");
        assert_eq!(bad.message, "ServerReady: 0/1 replicas available");
    }

    #[test]
    fn identical_observations_give_an_identical_status() {
        let obs = [Observation::ok("NamespaceReady", "Active", "")];
        let s1 = next_status(
            None,
            &obs,
            Phase::Ready,
            Some("tenant-a".into()),
            Some(1),
            &at(1),
        );
        let s2 = next_status(
            Some(&s1),
            &obs,
            Phase::Ready,
            Some("tenant-a".into()),
            Some(1),
            &at(99),
        );
        assert_eq!(s1, s2);
        assert!(transitions(&s1.conditions, &s2.conditions).is_empty());
        assert_eq!(transitions(&[], &s1.conditions).len(), 1);
    }
}
