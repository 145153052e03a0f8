//! Counting the operator's API requests from the API server's audit log.
//!
//! The test control plane (`/work/shared/kube/start`, see its README) writes one JSON line
//! per request of the operator's user to `DIR/audit.log`, at level `Metadata`:
//!
//! ```json
//! {"stage":"ResponseComplete","verb":"patch",
//!  "objectRef":{"resource":"deployments","namespace":"tenant-acme","name":"server"},
//!  "responseStatus":{"code":200}, ...}
//! ```
//!
//! Only `stage == "ResponseComplete"` counts (a watch also logs `ResponseStarted`). Requests
//! are reads (get, list, watch) or writes (create, update, patch, delete, deletecollection),
//! per resource (`deployments`, `dealertenants/status`, …) and per tenant:
//! - objects in namespace `tenant-<name>` belong to tenant `<name>`;
//! - the cluster-scoped `dealertenants` (and their subresources) by name, `namespaces` by
//!   name `tenant-<name>`;
//! - Events about a tenant are in namespace `default` (tenants are cluster-scoped) and
//!   named `<tenant>.<hex timestamp>` by kube-runtime's `Recorder`;
//! - erasure receipts are ConfigMaps `erasure-<tenant>-<8 of uid>` (any namespace: the
//!   operator's own).
//!
//! Everything else (cluster-wide lists and watches, discovery) belongs to no tenant.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

/// One completed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub verb: String,
    /// `""` for the core group.
    pub api_group: String,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: Option<u16>,
    pub user: String,
    pub request_uri: String,
    pub user_agent: String,
}

/// Read, write, or neither (e.g. a non-resource URL like `/version`: verb `get`, no
/// resource, counts as a read too; unknown verbs are neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    #[serde(default)]
    stage: String,
    #[serde(default)]
    verb: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    user: RawUser,
    #[serde(default)]
    user_agent: String,
    object_ref: Option<RawObjectRef>,
    response_status: Option<RawStatus>,
}

#[derive(Default, Deserialize)]
struct RawUser {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObjectRef {
    #[serde(default)]
    api_group: Option<String>,
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawStatus {
    code: Option<u16>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// The request on one audit line; `None` for other stages and for lines that are not an
/// audit event (a line cut short while the API server writes it, say).
pub fn parse_line(line: &str) -> Option<Request> {
    let raw: RawEvent = serde_json::from_str(line.trim()).ok()?;
    if raw.stage != "ResponseComplete" {
        return None;
    }
    let (api_group, resource, subresource, namespace, name) = match raw.object_ref {
        Some(o) => (
            o.api_group.unwrap_or_default(),
            non_empty(o.resource),
            non_empty(o.subresource),
            non_empty(o.namespace),
            non_empty(o.name),
        ),
        None => (String::new(), None, None, None, None),
    };
    Some(Request {
        verb: raw.verb,
        api_group,
        resource,
        subresource,
        namespace,
        name,
        code: raw.response_status.and_then(|s| s.code),
        user: raw.user.username,
        request_uri: raw.request_uri,
        user_agent: raw.user_agent,
    })
}

/// Every completed request in `text`, in order.
pub fn parse(text: &str) -> Vec<Request> {
    text.lines().filter_map(parse_line).collect()
}

/// The audit log from byte `offset` on, up to its last complete line; returns the requests
/// and the offset to read on from next time.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Request>, u64)> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    Ok((parse(&text[..complete]), offset + complete as u64))
}

/// The current size of the audit log: where the requests made from now on start.
pub fn end_of(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self.verb.as_str() {
            "get" | "list" | "watch" => Kind::Read,
            "create" | "update" | "patch" | "delete" | "deletecollection" => Kind::Write,
            _ => Kind::Other,
        }
    }

    /// `deployments`, `dealertenants/status`; the request URI for a non-resource request.
    pub fn resource_key(&self) -> String {
        match (&self.resource, &self.subresource) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.clone(),
            (None, _) => self
                .request_uri
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// The tenant the request is about, if any (see the module documentation).
    pub fn tenant(&self) -> Option<String> {
        let resource = self.resource.as_deref()?;
        let name = self.name.as_deref();
        match resource {
            "dealertenants" => name.map(str::to_string),
            "namespaces" => name
                .and_then(|n| n.strip_prefix("tenant-"))
                .map(str::to_string),
            "events" if self.namespace.as_deref() == Some("default") => {
                let name = name?;
                name.split_once('.').map(|(tenant, _)| tenant.to_string())
            }
            "configmaps" if name.is_some_and(|n| n.starts_with("erasure-")) => {
                let rest = name?.strip_prefix("erasure-")?;
                rest.rsplit_once('-').map(|(tenant, _)| tenant.to_string())
            }
            _ => self
                .namespace
                .as_deref()
                .and_then(|ns| ns.strip_prefix("tenant-"))
                .map(str::to_string),
        }
    }

    /// The API server refused it (status 400 and above).
    pub fn failed(&self) -> bool {
        self.code.is_some_and(|c| c >= 400)
    }
}

/// Reads and writes by resource key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads: BTreeMap<String, u64>,
    pub writes: BTreeMap<String, u64>,
    /// Requests the API server refused, by `verb resource: code`.
    pub failed: BTreeMap<String, u64>,
}

impl Counts {
    pub fn add(&mut self, r: &Request) {
        let key = r.resource_key();
        match r.kind() {
            Kind::Read => *self.reads.entry(key.clone()).or_default() += 1,
            Kind::Write => *self.writes.entry(key.clone()).or_default() += 1,
            Kind::Other => {}
        }
        if r.failed() {
            let code = r.code.unwrap_or_default();
            *self
                .failed
                .entry(format!("{} {key}: {code}", r.verb))
                .or_default() += 1;
        }
    }

    pub fn total_reads(&self) -> u64 {
        self.reads.values().sum()
    }

    pub fn total_writes(&self) -> u64 {
        self.writes.values().sum()
    }

    pub fn writes_of(&self, key: &str) -> u64 {
        self.writes.get(key).copied().unwrap_or_default()
    }
}

/// The requests of a stretch of the log, by tenant.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub tenants: BTreeMap<String, Counts>,
    /// Requests about no tenant.
    pub other: Counts,
    /// Requests refused with 403 Forbidden: missing RBAC.
    pub forbidden: Vec<Request>,
}

impl Summary {
    pub fn of(requests: &[Request]) -> Self {
        let mut summary = Self::default();
        for r in requests {
            match r.tenant() {
                Some(t) => summary.tenants.entry(t).or_default().add(r),
                None => summary.other.add(r),
            }
            if r.code == Some(403) {
                summary.forbidden.push(r.clone());
            }
        }
        summary
    }

    /// The counts of a tenant (empty if it made no request).
    pub fn tenant(&self, name: &str) -> Counts {
        self.tenants.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH_DEPLOYMENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"1","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/tenant-acme/deployments/server?fieldManager=dealertenant-operator\u0026force=true","verb":"patch","userAgent":"dealertenant-operator","user":{"username":"dealertenant-operator","groups":["system:authenticated"]},"objectRef":{"resource":"deployments","namespace":"tenant-acme","name":"server","apiGroup":"apps","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-02T13:26:50.364316Z","stageTimestamp":"2026-12-02T13:26:50.365415Z"}"#;
    const WATCH_STARTED: &str = r#"{"kind":"Event","level":"Metadata","stage":"ResponseStarted","requestURI":"/api/v1/namespaces?watch=true","verb":"watch","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"namespaces","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}"#;
    const WATCH_DONE: &str = r#"{"kind":"Event","level":"Metadata","stage":"ResponseComplete","requestURI":"/api/v1/namespaces?watch=true","verb":"watch","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"namespaces","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}"#;
    const STATUS_PATCH: &str = r#"{"stage":"ResponseComplete","requestURI":"/apis/dealerdesk.de/v1alpha1/dealertenants/acme/status","verb":"patch","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"dealertenants","name":"acme","apiGroup":"dealerdesk.de","apiVersion":"v1alpha1","subresource":"status"},"responseStatus":{"metadata":{},"code":200}}"#;
    const NAMESPACE_FORBIDDEN: &str = r#"{"stage":"ResponseComplete","requestURI":"/api/v1/namespaces/tenant-acme","verb":"get","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"namespaces","namespace":"tenant-acme","name":"tenant-acme","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403}}"#;
    const EVENT_CREATE: &str = r#"{"stage":"ResponseComplete","requestURI":"/apis/events.k8s.io/v1/namespaces/default/events","verb":"create","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"events","namespace":"default","name":"acme.18a2b3c4d5e6f708","apiGroup":"events.k8s.io","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201}}"#;
    const RECEIPT_CREATE: &str = r#"{"stage":"ResponseComplete","requestURI":"/api/v1/namespaces/dealertenant-system/configmaps","verb":"create","user":{"username":"dealertenant-operator"},"objectRef":{"resource":"configmaps","namespace":"dealertenant-system","name":"erasure-big-dealer-0123abcd","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201}}"#;
    const VERSION: &str = r#"{"stage":"ResponseComplete","requestURI":"/version?timeout=5s","verb":"get","user":{"username":"dealertenant-operator"},"responseStatus":{"metadata":{},"code":200}}"#;

    #[test]
    fn parses_a_complete_request() {
        let r = parse_line(PATCH_DEPLOYMENT).expect("a ResponseComplete line");
        assert_eq!(
            r,
            Request {
                verb: "patch".into(),
                api_group: "apps".into(),
                resource: Some("deployments".into()),
                subresource: None,
                namespace: Some("tenant-acme".into()),
                name: Some("server".into()),
                code: Some(200),
                user: "dealertenant-operator".into(),
                request_uri: "/apis/apps/v1/namespaces/tenant-acme/deployments/server?fieldManager=dealertenant-operator&force=true".into(),
                user_agent: "dealertenant-operator".into(),
            }
        );
        assert_eq!(r.kind(), Kind::Write);
        assert_eq!(r.tenant().as_deref(), Some("acme"));
        assert_eq!(r.resource_key(), "deployments");
    }

    #[test]
    fn counts_only_completed_stages_and_skips_garbage() {
        let text = [
            WATCH_STARTED,
            WATCH_DONE,
            "",
            "not json",
            r#"{"stage":"ResponseCo"#,
        ]
        .join("\n");
        let requests = parse(&text);
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0].kind(), Kind::Read);
        assert_eq!(requests[0].tenant(), None, "a cluster-wide watch");
    }

    #[test]
    fn attributes_requests_to_tenants() {
        let requests = parse(
            &[
                PATCH_DEPLOYMENT,
                STATUS_PATCH,
                NAMESPACE_FORBIDDEN,
                EVENT_CREATE,
                RECEIPT_CREATE,
                VERSION,
                WATCH_DONE,
            ]
            .join("\n"),
        );
        let tenants: Vec<Option<String>> = requests.iter().map(Request::tenant).collect();
        assert_eq!(
            tenants,
            [
                Some("acme".to_string()),
                Some("acme".into()),
                Some("acme".into()),
                Some("acme".into()),
                Some("big-dealer".into()),
                None,
                None,
            ]
        );
        assert_eq!(requests[1].resource_key(), "dealertenants/status");
        assert_eq!(requests[5].resource_key(), "/version");

        let summary = Summary::of(&requests);
        let acme = summary.tenant("acme");
        assert_eq!(acme.writes_of("deployments"), 1);
        assert_eq!(acme.writes_of("dealertenants/status"), 1);
        assert_eq!(acme.writes_of("events"), 1);
        assert_eq!(acme.total_writes(), 3);
        assert_eq!(acme.total_reads(), 1);
        assert_eq!(
            acme.failed.get("get namespaces: 403"),
            Some(&1),
            "{:?}",
            acme.failed
        );
        assert_eq!(summary.tenant("big-dealer").writes_of("configmaps"), 1);
        assert_eq!(summary.other.total_reads(), 2);
        assert_eq!(summary.other.total_writes(), 0);
        assert_eq!(summary.forbidden.len(), 1);
        assert_eq!(summary.tenant("nobody"), Counts::default());
    }

    #[test]
    fn reads_on_from_an_offset_up_to_the_last_complete_line() {
        let dir = std::env::temp_dir().join(format!("audit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        std::fs::write(&path, format!("{PATCH_DEPLOYMENT}\n{STATUS_PATCH}\n")).unwrap();
        let (first, offset) = read_from(&path, 0).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(offset, end_of(&path).unwrap());

        // A line still being written is left for the next read.
        let half = &EVENT_CREATE[..40];
        std::fs::write(
            &path,
            format!("{PATCH_DEPLOYMENT}\n{STATUS_PATCH}\n{VERSION}\n{half}"),
        )
        .unwrap();
        let (next, offset2) = read_from(&path, offset).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].resource_key(), "/version");
        assert_eq!(offset2, offset + VERSION.len() as u64 + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
