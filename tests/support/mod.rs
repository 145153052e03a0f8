//! Test doubles of the external services, shared by the integration suites. Each file says
//! which published documentation its behaviour follows. Every double listens on 127.0.0.1.
#![allow(dead_code)]

pub mod cloudsql;
pub mod cloudsql_pg;
pub mod cluster;
pub mod elasticsearch;
pub mod fake_kube;
pub mod fake_provider;
pub mod gcs;
pub mod pg;
pub mod pgproxy;
pub mod postmark;

/// Counts the Google Cloud SDK's requests made on this thread into `metrics` (the
/// operator's own subscriber does so process-wide) until the guard is dropped.
///
/// With a single dispatcher alive, tracing-core asks the registering thread's default
/// dispatcher for a callsite's interest: a test on another thread that first reaches the
/// SDK's span would cache "never" for every thread. A second live dispatcher makes it ask
/// all of them, this one included.
pub fn count_sdk_requests(
    metrics: &dealertenant_operator::providers::requests::RequestMetrics,
) -> (tracing::subscriber::DefaultGuard, tracing::Dispatch) {
    use dealertenant_operator::providers::requests::google::AttemptLayer;
    use tracing_subscriber::layer::SubscriberExt;
    let guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(AttemptLayer::filtered(metrics)),
    );
    let second = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::callsite::rebuild_interest_cache();
    (guard, second)
}
