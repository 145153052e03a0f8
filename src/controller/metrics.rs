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

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
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
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Self {
            reconciles,
            failures,
            residency_violations,
            reconcile_duration,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` on `listener` until the
/// process ends. `/readyz` is 200 when the replica knows its role and can play it: the
/// leader once every watch cache has been filled, a follower once it has seen another live
/// holder of the Lease; 503 before, and while a new leader fills its caches.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready = metrics.ready.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
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
        let text = m.render();
        assert!(text.contains("dealertenant_leader 1"), "{text}");
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
