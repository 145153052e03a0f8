//! Prometheus metrics, served with a health endpoint on `--metrics-addr`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `transient` or `permanent`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResidencyLabels {
    pub component: String,
}

/// The reason a pass failed (the error's kind: `Kube`, `ProviderUnavailable`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// One operation (`reconcile` or `delete`) of a component at its provider, which may send
/// several requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `database`, `storage`, `search`, `email`.
    pub component: String,
    /// The processor behind it (`google-cloud`, `postmark`, ...).
    pub processor: String,
    pub operation: String,
}

/// [`ProviderLabels`] with how it ended: `ok`, `transient`, `rate_limited` (HTTP 429),
/// `permanent`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOutcomeLabels {
    pub component: String,
    pub processor: String,
    pub operation: String,
    pub outcome: String,
}

/// A tenant phase (`Ready`, `Provisioning`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// A condition type with a status (`True`, `False`, `Unknown`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub r#type: String,
    pub status: String,
}

/// One processor entry of a final erasure receipt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErasureLabels {
    /// `namespace`, `database`, `storage`, `search`, `email`.
    pub component: String,
    /// `Erased`, `NothingFound`, `Kept`, `Abandoned`, `Failed`.
    pub outcome: String,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    /// Failed passes by the error's reason.
    pub errors: Family<ReasonLabels, Counter>,
    /// Provider operations by component, processor, operation and outcome.
    pub provider_operations: Family<ProviderOutcomeLabels, Counter>,
    /// Seconds one provider operation took.
    pub provider_duration: Family<ProviderLabels, Histogram>,
    /// Tenants by phase (`Pending` before their first status), from the watch cache.
    pub tenants: Family<PhaseLabels, Gauge>,
    /// Tenants by condition type and status.
    pub conditions: Family<ConditionLabels, Gauge>,
    /// Passes running now.
    pub passes_in_flight: Gauge,
    /// Tenants due for a pass that has not started (`dealertenant_workqueue_depth`).
    pub workqueue: Arc<super::queue::WorkQueue>,
    /// Requests sent to the providers' services, shared with the providers.
    pub provider_requests: crate::providers::requests::RequestMetrics,
    /// Processor entries of final erasure receipts, by outcome.
    pub erasures: Family<ErasureLabels, Counter>,
    /// Watches that fail and have not recovered, for `/healthz`.
    pub watches: Arc<WatchHealth>,
    /// Locations outside the EU, refused before a create or reported by a service.
    pub residency_violations: Family<ResidencyLabels, Counter>,
    /// Seconds one pass took (in-cluster work and provider calls), after the caches were
    /// filled.
    pub reconcile_duration: Histogram,
    /// 1 while this process holds the leader Lease and runs the controller (also when
    /// leader election is off), else 0.
    pub leader: Gauge,
    /// `/readyz` answers 200 while this is set: for the leader once every watch cache has
    /// been filled, for a follower once it has seen another live holder of the Lease.
    pub ready: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&Default::default())
    }
}

impl Metrics {
    /// The operator's metrics, with the providers' request counts from `provider_requests`.
    pub fn new(provider_requests: &crate::providers::requests::RequestMetrics) -> Self {
        let mut registry = Registry::with_prefix("dealertenant");
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let residency_violations = Family::<ResidencyLabels, Counter>::default();
        registry.register("reconciles", "Reconcile passes started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile passes that failed",
            failures.clone(),
        );
        registry.register(
            "residency_violations",
            "External resources whose location is outside the EU (refused or reported)",
            residency_violations.clone(),
        );
        // 1 ms to about 16 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        let errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by the error's reason",
            errors.clone(),
        );
        let provider_operations = Family::<ProviderOutcomeLabels, Counter>::default();
        registry.register(
            "provider_operations",
            "Operations (reconcile, delete) of a component at its provider, by outcome: ok, \
             transient, rate_limited (HTTP 429), permanent",
            provider_operations.clone(),
        );
        let provider_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "provider_operation_duration_seconds",
            "Duration of provider operations",
            provider_duration.clone(),
        );
        let tenants = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "tenants",
            "Tenants by phase (Pending: no status yet), counted every 10 s from the watch cache",
            tenants.clone(),
        );
        let conditions = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "tenant_conditions",
            "Tenants by condition type and status",
            conditions.clone(),
        );
        let passes_in_flight = Gauge::default();
        registry.register(
            "passes_in_flight",
            "Reconcile passes running now",
            passes_in_flight.clone(),
        );
        let workqueue = Arc::new(super::queue::WorkQueue::default());
        registry.register(
            "workqueue_depth",
            "Tenants due for a pass (triggered by a watch event, or their requeue time has \
             come) whose pass has not started",
            super::queue::Depth(workqueue.clone()),
        );
        provider_requests.register(&mut registry);
        let erasures = Family::<ErasureLabels, Counter>::default();
        registry.register(
            "erasures",
            "Processor entries of final erasure receipts, by component and outcome",
            erasures.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Self {
            reconciles,
            failures,
            errors,
            provider_operations,
            provider_duration,
            tenants,
            conditions,
            passes_in_flight,
            workqueue,
            provider_requests: provider_requests.clone(),
            erasures,
            watches: Arc::new(WatchHealth::default()),
            residency_violations,
            reconcile_duration,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(registry),
        }
    }
}

/// How long a watch may keep failing before `/healthz` fails (and the kubelet restarts
/// the operator): a watch that errs and retries for this long is stuck, not flaky.
pub const WATCH_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(180);

/// Whether the watches work: each watch says when it failed and when it got something
/// again. A quiet watch is fine; one that has failed continuously for
/// [`WATCH_STUCK_AFTER`] is stuck.
#[derive(Default)]
pub struct WatchHealth {
    failing_since: std::sync::Mutex<std::collections::BTreeMap<String, std::time::Instant>>,
}

impl WatchHealth {
    /// The watch of `kind` delivered an event (or a restart of its list).
    pub fn ok(&self, kind: &str) {
        self.lock().remove(kind);
    }
    /// The watch of `kind` failed (it retries with backoff).
    pub fn failed(&self, kind: &str) {
        self.lock()
            .entry(kind.to_string())
            .or_insert_with(std::time::Instant::now);
    }
    /// Watches failing for longer than `limit`, with how long.
    pub fn stuck(&self, limit: std::time::Duration) -> Vec<(String, std::time::Duration)> {
        self.lock()
            .iter()
            .map(|(k, since)| (k.clone(), since.elapsed()))
            .filter(|(_, d)| *d >= limit)
            .collect()
    }
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, std::time::Instant>> {
        self.failing_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Metrics {
    /// Sets the tenant gauges from the tenants' statuses (the watch cache's): how many in
    /// each phase, and with each condition type and status.
    pub fn count_tenants<'a>(
        &self,
        statuses: impl Iterator<Item = Option<&'a crate::api::DealerTenantStatus>>,
    ) {
        use std::collections::BTreeMap;
        let mut phases: BTreeMap<String, i64> = BTreeMap::new();
        let mut conditions: BTreeMap<(String, String), i64> = BTreeMap::new();
        for status in statuses {
            let phase = status
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Pending".into());
            *phases.entry(phase).or_default() += 1;
            for c in status.into_iter().flat_map(|s| s.conditions.iter()) {
                *conditions
                    .entry((c.type_.clone(), c.status.clone()))
                    .or_default() += 1;
            }
        }
        self.tenants.clear();
        for (phase, n) in phases {
            self.tenants.get_or_create(&PhaseLabels { phase }).set(n);
        }
        self.conditions.clear();
        for ((r#type, status), n) in conditions {
            self.conditions
                .get_or_create(&ConditionLabels { r#type, status })
                .set(n);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics`, `/healthz` (503 once a watch has failed without recovering for
/// [`WATCH_STUCK_AFTER`]) and `/readyz` on `listener` until the
/// process ends. `/readyz` is 200 when the replica knows its role and can play it: the
/// leader once every watch cache has been filled, a follower once it has seen another live
/// holder of the Lease; 503 before, and while a new leader fills its caches.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready = metrics.ready.clone();
    let watches = metrics.watches.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route(
            "/healthz",
            get(move || async move {
                let stuck = watches.stuck(WATCH_STUCK_AFTER);
                if stuck.is_empty() {
                    (StatusCode::OK, "ok".to_string())
                } else {
                    let list: Vec<String> = stuck
                        .iter()
                        .map(|(k, d)| format!("{k} (failing for {}s)", d.as_secs()))
                        .collect();
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("stuck watches: {}", list.join(", ")),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "leadership not known yet, or caches not filled yet",
                    )
                }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the Grafana dashboard (deploy/monitoring/dashboard.json) queries is one
    /// the operator exposes.
    #[test]
    fn the_dashboard_uses_only_exposed_metrics() {
        let dashboard = include_str!("../../deploy/monitoring/dashboard.json");
        // A family shows in the exposition once it has a series.
        let m = Metrics::default();
        let provider = ProviderLabels {
            component: "database".into(),
            processor: "google-cloud".into(),
            operation: "reconcile".into(),
        };
        m.provider_duration.get_or_create(&provider).observe(0.1);
        m.provider_operations
            .get_or_create(&ProviderOutcomeLabels {
                component: provider.component,
                processor: provider.processor,
                operation: provider.operation,
                outcome: "ok".into(),
            })
            .inc();
        m.provider_requests.observe(
            crate::providers::Component::Search,
            crate::processors::ids::ELASTIC,
            "GET".into(),
            crate::providers::requests::Answer::Http(429),
            std::time::Duration::from_millis(30),
        );
        m.errors
            .get_or_create(&ReasonLabels {
                reason: "KubernetesApi".into(),
            })
            .inc();
        m.erasures
            .get_or_create(&ErasureLabels {
                component: "database".into(),
                outcome: "Erased".into(),
            })
            .inc();
        m.residency_violations
            .get_or_create(&ResidencyLabels {
                component: "storage".into(),
            })
            .inc();
        m.count_tenants([None].into_iter());
        m.conditions
            .get_or_create(&ConditionLabels {
                r#type: "Ready".into(),
                status: "True".into(),
            })
            .set(1);
        let text = m.render();
        let mut used = std::collections::BTreeSet::new();
        for (i, _) in dashboard.match_indices("dealertenant_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, suffix| {
                    n.strip_suffix(suffix).map(str::to_string).unwrap_or(n)
                });
            used.insert(base);
        }
        assert!(used.len() >= 10, "{used:?}");
        // Per request, not per operation; the queue itself, not only the passes running.
        for wanted in [
            "dealertenant_provider_requests",
            "dealertenant_provider_request_duration_seconds",
            "dealertenant_workqueue_depth",
        ] {
            assert!(used.contains(wanted), "the dashboard lacks {wanted}");
        }
        assert!(
            dashboard.contains("status_class=\\\"429\\\""),
            "the dashboard shows 429s"
        );
        for base in used {
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "the dashboard queries {base}, which the operator does not expose:\n{text}"
            );
        }
    }

    #[test]
    fn a_watch_failing_without_recovery_is_stuck() {
        let w = WatchHealth::default();
        w.failed("Deployment");
        w.failed("Deployment");
        assert!(w.stuck(std::time::Duration::ZERO).len() == 1);
        assert!(w.stuck(std::time::Duration::from_secs(60)).is_empty());
        w.ok("Deployment");
        assert!(w.stuck(std::time::Duration::ZERO).is_empty());
    }

    #[test]
    fn counters_show_in_the_exposition() {
        let m = Metrics::default();
        m.residency_violations
            .get_or_create(&ResidencyLabels {
                component: "storage".into(),
            })
            .inc();
        m.reconcile_duration.observe(0.003);
        m.leader.set(1);
        let ready: crate::api::DealerTenantStatus = serde_json::from_value(serde_json::json!({
            "phase": "Ready",
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllComponentsReady",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }))
        .unwrap();
        let mut failed = ready.clone();
        failed.phase = Some(crate::api::Phase::Failed);
        failed.conditions[0].status = "False".into();
        m.count_tenants([Some(&ready), Some(&failed), None].into_iter());
        let text = m.render();
        assert!(
            text.contains("dealertenant_tenants{phase=\"Ready\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dealertenant_tenants{phase=\"Pending\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dealertenant_tenants{phase=\"Failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dealertenant_tenant_conditions{type=\"Ready\",status=\"False\"} 1"),
            "{text}"
        );
        assert!(text.contains("dealertenant_leader 1"), "{text}");
        m.workqueue.triggered("acme");
        m.workqueue.triggered("acme");
        let text = m.render();
        assert!(
            text.contains("# TYPE dealertenant_workqueue_depth gauge"),
            "{text}"
        );
        assert!(text.contains("dealertenant_workqueue_depth 1"), "{text}");
        assert!(
            text.contains("dealertenant_residency_violations_total{component=\"storage\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dealertenant_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
