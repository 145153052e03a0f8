//! Requests of the Google Cloud SDK (Cloud SQL Admin over HTTP, Cloud Storage over gRPC),
//! counted from the SDK's own tracing: a client built `with_tracing()` opens one `INFO` span
//! per attempt (google-cloud-gax-internal: `http_request` in `observability::http_tracing`,
//! `grpc.request` in `grpc::grpc_helpers`), retries included, and records on it how the
//! attempt ended, following the OpenTelemetry semantic conventions:
//! - `gcp.client.service`: `sqladmin`, `storage` (which provider);
//! - `http.request.method` (HTTP) or `rpc.method` (`google.storage.v2.Storage/GetBucket`);
//! - `http.response.status_code` (HTTP, also on errors that have a status), or
//!   `rpc.response.status_code` (gRPC: `OK`, `RESOURCE_EXHAUSTED`, ...);
//! - `error.type` when the attempt failed; without a status that is a transport failure,
//!   a timeout or a cancellation.
//!
//! The span lives from just before the request is sent until its answer is in; that is its
//! duration. [`AttemptLayer`] reads only these fields: never the URL (it carries instance
//! and bucket names) nor the SDK's request and response dumps (other spans, which its filter
//! does not even enable).

use std::borrow::Cow;
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::{Answer, RequestMetrics, method_label};
use crate::processors::ids;
use crate::providers::Component;

/// Where the SDK's transport spans come from.
const TARGET_PREFIX: &str = "google_cloud_gax_internal";
const HTTP_ATTEMPT: &str = "http_request";
const GRPC_ATTEMPT: &str = "grpc.request";

/// Whether `meta` is one of the SDK's per-attempt spans.
pub fn is_attempt(meta: &Metadata<'_>) -> bool {
    meta.is_span()
        && meta.target().starts_with(TARGET_PREFIX)
        && matches!(meta.name(), HTTP_ATTEMPT | GRPC_ATTEMPT)
}

/// The provider behind an SDK client, by its `gcp.client.service`.
fn component_of(service: &str) -> Option<Component> {
    match service {
        "sqladmin" => Some(Component::Database),
        "storage" => Some(Component::Storage),
        _ => None,
    }
}

/// Turns the SDK's attempt spans into [`RequestMetrics`] counts.
pub struct AttemptLayer {
    metrics: RequestMetrics,
}

/// Enables the attempt spans for [`AttemptLayer`] and nothing else, decided once per
/// callsite: other spans and events cost it nothing, whatever `RUST_LOG` says.
pub struct AttemptsOnly;

impl<S> Filter<S> for AttemptsOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        is_attempt(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_attempt(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

impl AttemptLayer {
    /// The layer, filtered to the attempt spans: add it to the process's subscriber.
    pub fn filtered<S>(metrics: &RequestMetrics) -> Filtered<Self, AttemptsOnly, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Self {
            metrics: metrics.clone(),
        }
        .with_filter(AttemptsOnly)
    }
}

/// What an attempt span has said so far.
struct Attempt {
    started: Instant,
    grpc: bool,
    component: Option<Component>,
    method: Option<Cow<'static, str>>,
    http_status: Option<u16>,
    rpc_class: Option<&'static str>,
}

impl Visit for Attempt {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "gcp.client.service" => self.component = component_of(value),
            "http.request.method" if !self.grpc => self.method = Some(method_label(value)),
            "rpc.method" if self.grpc => {
                let name = value.rsplit('/').next().unwrap_or(value);
                self.method = Some(Cow::Owned(name.to_string()));
            }
            "rpc.response.status_code" => self.rpc_class = Some(Answer::Grpc(value).class()),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "http.response.status_code" {
            self.http_status = u16::try_from(value).ok();
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "http.response.status_code" {
            self.http_status = u16::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl Attempt {
    /// The status class: the gRPC code on gRPC, else the HTTP status; `error` without an
    /// answer.
    fn class(&self) -> &'static str {
        let http = self.http_status.map(|s| Answer::Http(s).class());
        let answered = if self.grpc {
            self.rpc_class.or(http)
        } else {
            http
        };
        answered.unwrap_or(Answer::Failed.class())
    }
}

impl<S> Layer<S> for AttemptLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_attempt(attrs.metadata()) {
            return;
        }
        let mut attempt = Attempt {
            started: Instant::now(),
            grpc: attrs.metadata().name() == GRPC_ATTEMPT,
            component: None,
            method: None,
            http_status: None,
            rpc_class: None,
        };
        attrs.record(&mut attempt);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(attempt);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(attempt) = span.extensions_mut().get_mut::<Attempt>()
        {
            values.record(attempt);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(attempt) = span.extensions_mut().remove::<Attempt>() else {
            return;
        };
        // A client of a service no provider uses: not ours to count.
        let Some(component) = attempt.component else {
            return;
        };
        self.metrics.observe_class(
            component,
            ids::GOOGLE_CLOUD,
            attempt.method.clone().unwrap_or(Cow::Borrowed("other")),
            attempt.class(),
            attempt.started.elapsed(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Spans shaped as the SDK's (same target, name and field names) end up as counts; a
    /// span of another target does not.
    #[test]
    fn attempt_spans_become_counts() {
        let m = RequestMetrics::default();
        let subscriber = tracing_subscriber::registry().with(AttemptLayer::filtered(&m));
        // With one dispatcher alive, tracing-core takes the interest of a callsite from
        // the default dispatcher of the thread that reaches it first (another test's);
        // with two it asks each (tests/support/mod.rs, `count_sdk_requests`).
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                target: "google_cloud_gax_internal::observability::http_tracing",
                "http_request",
                "gcp.client.service" = "sqladmin",
                "http.request.method" = "POST",
                "http.response.status_code" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            span.record("http.response.status_code", 429_i64);
            span.record("error.type", "429");
            drop(span);
            let span = tracing::info_span!(
                target: "google_cloud_gax_internal::grpc::grpc_helpers",
                "grpc.request",
                "gcp.client.service" = "storage",
                "rpc.method" = "google.storage.v2.Storage/GetBucket",
                "rpc.response.status_code" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            span.record("error.type", "CLIENT_TIMEOUT");
            drop(span);
            let span = tracing::info_span!(
                target: "someone_else",
                "http_request",
                "gcp.client.service" = "sqladmin",
                "http.response.status_code" = 500_i64,
            );
            drop(span);
        });
        assert_eq!(m.count(Component::Database, "429"), 1);
        assert_eq!(m.count(Component::Database, "5xx"), 0);
        assert_eq!(m.count(Component::Storage, "error"), 1);
    }
}
