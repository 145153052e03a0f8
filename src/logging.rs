//! The operator's log subscriber: `RUST_LOG` (default `info,kube=warn`) to stderr, as text
//! or JSON, with one rule no filter can undo: the Google Cloud SDKs' dumps of whole
//! requests and responses are never recorded.
//!
//! With request tracing on (`GOOGLE_CLOUD_RUST_LOGGING=true`, google-cloud-gax-internal),
//! every generated client method is a `#[tracing::instrument(ret)]` span whose `req` field
//! is the request's Debug form and whose `return` event is the response's. Cloud SQL's
//! `SqlUsersInsertRequest` / `SqlUsersUpdateRequest` carry the user's password there. The
//! SDK's `client_request` spans (method, status, latency, peer) stay: they carry no body.

use tracing::Metadata;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterFn, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Whether a span or event may be recorded: anything but a Google SDK's request or
/// response dump, and its error log of each failed call (target
/// `experimental.client.request`, on with the clients' tracing, which the request metrics
/// need): the provider reports the same failure in its own words.
pub fn recordable(meta: &Metadata<'_>) -> bool {
    let dump = meta.fields().field("req").is_some() || meta.fields().field("return").is_some();
    !(dump && meta.target().starts_with("google_cloud_"))
        && meta.target() != "experimental.client.request"
}

/// [`recordable`] as a per-layer filter, for every layer that writes logs (tests use it to
/// capture what the operator would record).
pub fn no_sdk_dumps() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    filter_fn(recordable as fn(&Metadata<'_>) -> bool)
}

/// Installs the subscriber for the process: the log, and the Google Cloud SDK's request
/// spans counted into `requests`.
pub fn init(json: bool, requests: &crate::providers::requests::RequestMetrics) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    subscriber(json, filter, requests).init();
}

/// The process's subscriber: the log to stderr (text or JSON) as `filter` (`RUST_LOG`)
/// allows, without the SDKs' dumps; and the Google Cloud SDK's request spans counted into
/// `requests`, whatever `filter` says.
pub fn subscriber(
    json: bool,
    filter: EnvFilter,
    requests: &crate::providers::requests::RequestMetrics,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    use tracing_subscriber::filter::FilterExt;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if json {
        layer.json().boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(no_sdk_dumps())))
        .with(crate::providers::requests::google::AttemptLayer::filtered(
            requests,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what reaches a layer filtered by [`no_sdk_dumps`].
    fn recorded(emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_filter(no_sdk_dumps());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// `RUST_LOG` filters the log only: the SDK's request spans are counted at any level.
    #[test]
    fn sdk_requests_are_counted_whatever_the_log_filter() {
        use crate::providers::Component;
        use crate::providers::requests::RequestMetrics;
        let m = RequestMetrics::default();
        // See providers::requests::google's test: a second dispatcher for the interest.
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        let process = subscriber(false, EnvFilter::new("error"), &m);
        tracing::subscriber::with_default(process, || {
            drop(tracing::info_span!(
                target: "google_cloud_gax_internal::observability::http_tracing",
                "http_request",
                "gcp.client.service" = "sqladmin",
                "http.request.method" = "GET",
                "http.response.status_code" = 200_i64,
            ));
        });
        assert_eq!(m.count(Component::Database, "2xx"), 1);
    }

    #[test]
    fn sdk_request_and_response_dumps_are_dropped_and_the_rest_kept() {
        let logs = recorded(|| {
            // What `#[instrument(ret)]` in google_cloud_sql_v1::tracing emits.
            let span = tracing::debug_span!(target: "google_cloud_sql_v1::tracing", "insert", req = "User { password: \"pw-1\" }");
            let _in = span.enter();
            tracing::debug!(target: "google_cloud_sql_v1::tracing", r#return = "User { password: \"pw-2\" }");
            tracing::info!(target: "google_cloud_sql_v1::tracing", "client_request ok");
            tracing::warn!(target: "experimental.client.request", "Error {{ status: 429 }}");
            tracing::info!(req = "ours, not an SDK's", "kept");
        });
        assert!(!logs.contains("pw-1") && !logs.contains("pw-2"), "{logs}");
        assert!(logs.contains("client_request ok"), "{logs}");
        assert!(!logs.contains("status: 429"), "{logs}");
        assert!(logs.contains("ours, not an SDK's"), "{logs}");
    }
}
