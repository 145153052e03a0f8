//! Every request a provider sends to its service, counted on the wire: one count per HTTP
//! request or gRPC call attempt (a provider operation, one `reconcile` of a component,
//! sends several; the Cloud Storage SDK retries some on its own), with how it ended and
//! how long it took.
//!
//! - Elasticsearch and Postmark send with reqwest: [`Meter::exchange`] sends one request,
//!   reads its answer and counts it.
//! - Cloud SQL and Cloud Storage go through the Google Cloud SDK, whose transport is out of
//!   reach; with tracing on (`with_tracing()` on the client builder) it opens one span per
//!   attempt, which [`google::AttemptLayer`] turns into the same counts.
//! - PostgreSQL speaks SQL, not HTTP, and is not counted here.
//!
//! Labels are bounded: component, processor, method (the HTTP method, or a gRPC method's
//! name) and the status class. Never a tenant name, a URL or an ID.

pub mod google;

use std::borrow::Cow;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Component;

/// One request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `database`, `storage`, `search`, `email`.
    pub component: &'static str,
    /// The processor's ID (`google-cloud`, `elastic`, `postmark`).
    pub processor: &'static str,
    /// `GET`, `POST`, ... or, for gRPC, the method's name (`GetBucket`).
    pub method: Cow<'static, str>,
    /// See [`Answer::class`].
    pub status_class: &'static str,
}

/// Which provider a latency belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub component: &'static str,
    pub processor: &'static str,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code by its name (`OK`, `RESOURCE_EXHAUSTED`, ...).
    Grpc(&'a str),
    /// No answer: the connection failed, the request timed out or was abandoned.
    Failed,
}

impl Answer<'_> {
    /// The status class: `2xx`, `3xx`, `4xx` (but 429), `429`, `5xx`, or `error` when there
    /// was no answer. 429 (too many requests) is its own class, so that throttling shows
    /// (and alerts) on its own and `sum by (status_class)` still counts each request once.
    /// gRPC codes count as the HTTP status they map to in google.rpc.Code
    /// (<https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto>):
    /// `RESOURCE_EXHAUSTED` is 429, `UNAVAILABLE` 503, `NOT_FOUND` 404, ...
    pub fn class(self) -> &'static str {
        match self {
            Answer::Http(429) => "429",
            Answer::Http(s) => match s / 100 {
                1 | 2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                _ => "error",
            },
            Answer::Grpc(code) => match code {
                "OK" => "2xx",
                "RESOURCE_EXHAUSTED" => "429",
                // 400, 401, 403, 404, 409, 499 (the client cancelled).
                "INVALID_ARGUMENT"
                | "FAILED_PRECONDITION"
                | "OUT_OF_RANGE"
                | "UNAUTHENTICATED"
                | "PERMISSION_DENIED"
                | "NOT_FOUND"
                | "ALREADY_EXISTS"
                | "ABORTED"
                | "CANCELLED" => "4xx",
                // 500, 501, 503, 504.
                "UNKNOWN" | "INTERNAL" | "DATA_LOSS" | "UNIMPLEMENTED" | "UNAVAILABLE"
                | "DEADLINE_EXCEEDED" => "5xx",
                _ => "error",
            },
            Answer::Failed => "error",
        }
    }
}

/// The request counters and latency histograms, shared by every provider of the process
/// and registered with the operator's other metrics. Clones share the counts.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    /// Requests by component, processor, method and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from sending a request to having its answer, by provider.
    pub duration: Family<ProviderLabels, Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 5 ms to about 40 s.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        }
    }
}

impl RequestMetrics {
    /// Adds the families to `registry` (prefixed there with `dealertenant_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "provider_requests",
            "Requests sent to providers' services (HTTP requests, gRPC call attempts), by \
             component, processor, method and status class: 2xx, 3xx, 4xx, 429, 5xx, error \
             (no answer: connection failed, timed out)",
            self.requests.clone(),
        );
        registry.register(
            "provider_request_duration_seconds",
            "Duration of requests sent to providers' services",
            self.duration.clone(),
        );
    }

    /// Counts one request.
    pub fn observe(
        &self,
        component: Component,
        processor: &'static str,
        method: Cow<'static, str>,
        answer: Answer<'_>,
        took: Duration,
    ) {
        self.observe_class(component, processor, method, answer.class(), took);
    }

    /// Counts one request whose status class is known.
    fn observe_class(
        &self,
        component: Component,
        processor: &'static str,
        method: Cow<'static, str>,
        status_class: &'static str,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                component: component.key(),
                processor,
                method,
                status_class,
            })
            .inc();
        self.duration
            .get_or_create(&ProviderLabels {
                component: component.key(),
                processor,
            })
            .observe(took.as_secs_f64());
    }

    /// How many requests of `component` ended in `status_class`, over every processor and
    /// method (read from the exposition: families are only readable by exact labels).
    pub fn count(&self, component: Component, status_class: &str) -> u64 {
        let mut registry = Registry::default();
        registry.register("r", "", self.requests.clone());
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            return 0;
        }
        let (c, s) = (
            format!("component=\"{}\"", component.key()),
            format!("status_class=\"{status_class}\""),
        );
        text.lines()
            .filter(|l| l.starts_with("r_total{") && l.contains(&c) && l.contains(&s))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The counting view of one provider's requests.
    pub fn meter(&self, component: Component, processor: &'static str) -> Meter {
        Meter {
            metrics: self.clone(),
            component,
            processor,
        }
    }
}

/// HTTP methods as static label values (others are counted as `other`).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "other"];

/// `method` as a label value without allocating: one of [`METHODS`].
pub fn method_label(method: &str) -> Cow<'static, str> {
    Cow::Borrowed(
        METHODS
            .into_iter()
            .find(|m| m.eq_ignore_ascii_case(method))
            .unwrap_or("other"),
    )
}

/// Counts the requests of one provider (component and processor fixed). A provider built
/// on its own (tests, `plan`) counts into metrics nobody reads.
#[derive(Clone, Debug)]
pub struct Meter {
    metrics: RequestMetrics,
    component: Component,
    processor: &'static str,
}

impl Meter {
    /// Sends the request `rb` describes and reads the whole answer: its status and body.
    /// Counted by the status, or as `error` when no full answer came (connection failed,
    /// timed out, body cut off).
    pub async fn exchange(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let (client, request) = rb.build_split();
        let request = request?;
        let method = method_label(request.method().as_str());
        let started = Instant::now();
        let result = async {
            let response = client.execute(request).await?;
            let status = response.status().as_u16();
            Ok((status, response.bytes().await?.to_vec()))
        }
        .await;
        let answer = match &result {
            Ok((status, _)) => Answer::Http(*status),
            Err(_) => Answer::Failed,
        };
        self.metrics.observe(
            self.component,
            self.processor,
            method,
            answer,
            started.elapsed(),
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let class = |a: Answer<'_>| a.class();
        assert_eq!(class(Answer::Http(200)), "2xx");
        assert_eq!(class(Answer::Http(204)), "2xx");
        assert_eq!(class(Answer::Http(304)), "3xx");
        assert_eq!(class(Answer::Http(404)), "4xx");
        assert_eq!(class(Answer::Http(429)), "429");
        assert_eq!(class(Answer::Http(503)), "5xx");
        assert_eq!(class(Answer::Failed), "error");
        assert_eq!(class(Answer::Grpc("OK")), "2xx");
        assert_eq!(class(Answer::Grpc("RESOURCE_EXHAUSTED")), "429");
        assert_eq!(class(Answer::Grpc("NOT_FOUND")), "4xx");
        assert_eq!(class(Answer::Grpc("UNAVAILABLE")), "5xx");
        assert_eq!(class(Answer::Grpc("SOMETHING_NEW")), "error");
    }

    #[test]
    fn counts_show_in_the_exposition() {
        let m = RequestMetrics::default();
        let mut registry = Registry::with_prefix("dealertenant");
        m.register(&mut registry);
        let took = Duration::from_millis(20);
        m.observe(
            Component::Search,
            "elastic",
            method_label("get"),
            Answer::Http(429),
            took,
        );
        m.observe(
            Component::Search,
            "elastic",
            method_label("PUT"),
            Answer::Http(201),
            took,
        );
        assert_eq!(m.count(Component::Search, "429"), 1);
        assert_eq!(m.count(Component::Search, "2xx"), 1);
        assert_eq!(m.count(Component::Email, "2xx"), 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "dealertenant_provider_requests_total{component=\"search\",processor=\"elastic\",method=\"GET\",status_class=\"429\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("dealertenant_provider_request_duration_seconds_count{component=\"search\",processor=\"elastic\"} 2"),
            "{text}"
        );
    }
}
