//! A stateful double of Postmark's Account API, servers endpoints, on 127.0.0.1.
//!
//! Its behaviour follows these published documents:
//! - Postmark's Account API description (Swagger 2.0, `account.yml`), trimmed to the
//!   servers endpoints and vendored in `tests/specs/postmark-account-servers.swagger.yaml`:
//!   paths, methods, parameters, the `CreateServerPayload` / `EditServerPayload` /
//!   `ExtendedServerInfo` / `ServerListingResponse` definitions, and errors as HTTP 422 with
//!   the `StandardPostmarkResponse` body `{"ErrorCode": n, "Message": "..."}`.
//!   EVERY request is validated against that file ([`SpecValidator`]): method and path,
//!   required headers, query and path parameters (names and types, unknown query
//!   parameters refused), and the JSON body against its definition with names, types and
//!   enums checked and unknown fields refused. The one field allowed beyond the file is
//!   `DeliveryType` (`Live`/`Sandbox`) in `CreateServerPayload` and in server answers,
//!   which the servers API reference (<https://postmarkapp.com/developer/api/servers-api>)
//!   documents and the older file predates; it is not accepted by edit (Postmark cannot
//!   change it after creation). A violating request is answered 422 (as Prism does) and
//!   recorded in [`PostmarkDouble::violations`]; the double's own answers are validated
//!   against the response definitions too.
//! - The API overview (<https://postmarkapp.com/developer/api/overview>): a wrong or
//!   missing account token is HTTP 401 (ErrorCode 10); error codes 601 "Server does not
//!   exist", 603 "Server name already exists", 604 "You don't have delete access", 608
//!   "Server name missing"; 429 for rate limiting.
//! - The servers API reference: the listing's `name` filter matches names containing the
//!   text (case-insensitive here); `count` at most 500; new servers get one API token.
//! - Server deletion through the API is off until Postmark support enables it for the
//!   account (Postmark's PHP client documentation, "Managing your servers"): with
//!   [`PostmarkDouble::set_delete_enabled`]`(false)` a delete answers 422, ErrorCode 604.
//!
//! - Inbound domains (error codes page,
//!   <https://postmarkapp.com/developer/api/overview#error-codes>, and "Inbound domain
//!   forwarding", <https://postmarkapp.com/developer/user-guide/inbound/inbound-domain-forwarding>):
//!   an `InboundDomain` given to create or edit must have an MX record pointing to
//!   `inbound.postmarkapp.com`, else 422 with ErrorCode 610 "Invalid MX record for Inbound
//!   Domain"; inbound domains are unique across Postmark, so one in use by another server
//!   (of this account or any other) is 422 with ErrorCode 602 "Duplicate Inbound Domain".
//!   A refused request changes nothing. DNS is the double's: no MX exists until
//!   [`PostmarkDouble::add_mx`] adds one (a `*.suffix` wildcard record covers every
//!   subdomain, as DNS wildcards do); [`PostmarkDouble::claim_domain`] marks a domain as used
//!   by another Postmark account.
//!
//! Switches: delete disabled, 429 rate limiting, a forced status for every request,
//! 404 instead of 422/601 for unknown servers, one injected failure on the k-th request
//! ([`Fault`]), and a slow answer ([`PostmarkDouble::set_delay`], off by default). Every
//! request is recorded ([`Call`]) once answered; [`PostmarkDouble::in_flight`] counts those
//! received and not answered yet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

/// The vendored spec.
pub const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/specs/postmark-account-servers.swagger.yaml"
);

// ---------------------------------------------------------------------------------------
// Request validation against the Swagger file.
// ---------------------------------------------------------------------------------------

/// Definitions that carry the one documented extension, `DeliveryType`.
const DELIVERY_TYPE_EXTENDED: &[&str] = &["CreateServerPayload", "ExtendedServerInfo"];

struct Param {
    name: String,
    location: String,
    required: bool,
    ty: Option<String>,
}

/// One operation of the spec.
pub struct Operation {
    pub id: String,
    pub method: String,
    pub template: String,
    segments: Vec<String>,
    params: Vec<Param>,
    body: Option<jsonschema::Validator>,
    responses: BTreeMap<u16, Option<jsonschema::Validator>>,
    produces_json: bool,
}

/// Validates requests (and the double's answers) against the vendored Swagger 2.0 file.
pub struct SpecValidator {
    ops: Vec<Operation>,
}

fn resolve<'a>(spec: &'a Value, reference: &str) -> (&'a Value, Option<String>) {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local references are supported: {reference}"));
    let target = spec
        .pointer(pointer)
        .unwrap_or_else(|| panic!("dangling reference {reference}"));
    let name = reference
        .strip_prefix("#/definitions/")
        .map(ToString::to_string);
    (target, name)
}

/// A Swagger schema as a strict JSON Schema: references inlined, objects closed
/// (`additionalProperties: false`), `DeliveryType` added where documented.
fn strict(spec: &Value, schema: &Value, definition: Option<&str>) -> Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let (target, name) = resolve(spec, r);
        return strict(spec, target, name.as_deref());
    }
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "properties" => {
                let mut props = Map::new();
                for (name, p) in v.as_object().expect("properties is a mapping") {
                    props.insert(name.clone(), strict(spec, p, None));
                }
                if definition.is_some_and(|d| DELIVERY_TYPE_EXTENDED.contains(&d)) {
                    props.insert(
                        "DeliveryType".into(),
                        json!({"type": "string", "enum": ["Live", "Sandbox"]}),
                    );
                }
                out.insert(k.clone(), Value::Object(props));
                out.insert("additionalProperties".into(), Value::Bool(false));
                out.entry("type").or_insert(json!("object"));
            }
            "items" => {
                out.insert(k.clone(), strict(spec, v, None));
            }
            // Swagger-only or documentation keys.
            "description" | "example" | "x-nullable" => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn compile(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema from the spec does not compile: {e}: {schema}"))
}

fn type_ok(ty: Option<&str>, value: &str) -> bool {
    match ty {
        Some("integer") => value.parse::<i64>().is_ok(),
        Some("number") => value.parse::<f64>().is_ok(),
        Some("boolean") => value == "true" || value == "false",
        _ => true,
    }
}

impl SpecValidator {
    /// Loads the vendored file.
    pub fn load() -> Self {
        let text = std::fs::read_to_string(SPEC_PATH).expect("the vendored spec is readable");
        let spec: Value = serde_saphyr::from_str(&text).expect("the vendored spec is YAML");
        Self::from_spec(&spec)
    }

    pub fn from_spec(spec: &Value) -> Self {
        assert_eq!(spec["swagger"], "2.0", "a Swagger 2.0 file");
        let global_produces = spec["produces"]
            .as_array()
            .is_some_and(|p| p.iter().any(|m| m == "application/json"));
        let mut ops = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                let mut params = Vec::new();
                let mut body = None;
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let p = match p.get("$ref").and_then(Value::as_str) {
                        Some(r) => resolve(spec, r).0,
                        None => p,
                    };
                    let location = p["in"].as_str().expect("parameter in").to_string();
                    if location == "body" {
                        body = Some(compile(&strict(spec, &p["schema"], None)));
                        continue;
                    }
                    params.push(Param {
                        name: p["name"].as_str().expect("parameter name").to_string(),
                        required: p["required"].as_bool().unwrap_or(location == "path"),
                        ty: p["type"].as_str().map(ToString::to_string),
                        location,
                    });
                }
                let mut responses = BTreeMap::new();
                for (code, r) in op["responses"].as_object().expect("responses") {
                    let r = match r.get("$ref").and_then(Value::as_str) {
                        Some(reference) => resolve(spec, reference).0,
                        None => r,
                    };
                    let schema = r.get("schema").map(|s| compile(&strict(spec, s, None)));
                    responses.insert(code.parse().expect("numeric status"), schema);
                }
                let produces_json = match op.get("produces").and_then(Value::as_array) {
                    Some(p) => p.iter().any(|m| m == "application/json"),
                    None => global_produces,
                };
                ops.push(Operation {
                    id: op["operationId"].as_str().unwrap_or_default().to_string(),
                    method: method.to_ascii_uppercase(),
                    template: path.clone(),
                    segments: path
                        .trim_start_matches('/')
                        .split('/')
                        .map(ToString::to_string)
                        .collect(),
                    params,
                    body,
                    responses,
                    produces_json,
                });
            }
        }
        Self { ops }
    }

    fn matches(op: &Operation, segments: &[&str]) -> bool {
        op.segments.len() == segments.len()
            && op
                .segments
                .iter()
                .zip(segments)
                .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
    }

    /// The operation a request is for, or every way it breaks the spec.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<&Operation, Vec<String>> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let on_path: Vec<&Operation> = self
            .ops
            .iter()
            .filter(|op| Self::matches(op, &segments))
            .collect();
        if on_path.is_empty() {
            return Err(vec![format!("no path of the spec matches {path}")]);
        }
        let Some(op) = on_path.iter().find(|op| op.method == method).copied() else {
            return Err(vec![format!(
                "{method} is not an operation of {}",
                on_path[0].template
            )]);
        };
        let mut v = Vec::new();
        let what = format!("{} {}", op.method, op.template);

        for (t, s) in op.segments.iter().zip(&segments) {
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                let p = op
                    .params
                    .iter()
                    .find(|p| p.location == "path" && p.name == name);
                if !type_ok(p.and_then(|p| p.ty.as_deref()), s) {
                    v.push(format!(
                        "{what}: path parameter {name}={s} is not of type {}",
                        p.and_then(|p| p.ty.clone()).unwrap_or_default()
                    ));
                }
            }
        }

        let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("a query string");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let mut seen = BTreeSet::new();
        for (k, value) in &pairs {
            if !seen.insert(k.clone()) {
                v.push(format!("{what}: query parameter {k} given twice"));
            }
            match op
                .params
                .iter()
                .find(|p| p.location == "query" && &p.name == k)
            {
                None => v.push(format!("{what}: unknown query parameter {k}")),
                Some(p) if !type_ok(p.ty.as_deref(), value) => v.push(format!(
                    "{what}: query parameter {k}={value} is not of type {}",
                    p.ty.as_deref().unwrap_or("?")
                )),
                Some(_) => {}
            }
        }
        for p in op.params.iter().filter(|p| p.required) {
            let present = match p.location.as_str() {
                "query" => pairs.iter().any(|(k, _)| k == &p.name),
                "header" => headers.contains_key(p.name.as_str()),
                _ => true,
            };
            if !present {
                v.push(format!(
                    "{what}: required {} parameter {} is missing",
                    p.location, p.name
                ));
            }
        }
        if op.produces_json {
            let accept = headers
                .get("accept")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !accept.contains("application/json") {
                v.push(format!(
                    "{what}: the Accept header must be application/json (got {accept:?})"
                ));
            }
        }

        match &op.body {
            Some(schema) => {
                let ct = headers
                    .get("content-type")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !ct.starts_with("application/json") {
                    v.push(format!(
                        "{what}: Content-Type must be application/json (got {ct:?})"
                    ));
                }
                match serde_json::from_slice::<Value>(body) {
                    Err(e) => v.push(format!("{what}: the body is not JSON: {e}")),
                    Ok(instance) => {
                        for e in schema.iter_errors(&instance) {
                            v.push(format!("{what}: body{}: {e}", e.instance_path()));
                        }
                    }
                }
            }
            None if !body.is_empty() => v.push(format!("{what}: the operation takes no body")),
            None => {}
        }
        if v.is_empty() { Ok(op) } else { Err(v) }
    }

    /// How an answer of the double breaks the spec's response definitions (statuses the
    /// spec does not list, such as 401 and 429 from the API overview, are not checked).
    pub fn check_response(&self, op: &Operation, status: u16, body: &Value) -> Vec<String> {
        match op.responses.get(&status) {
            Some(Some(schema)) => schema
                .iter_errors(body)
                .map(|e| {
                    format!(
                        "answer {status} to {} {}: body{}: {e}",
                        op.method,
                        op.template,
                        e.instance_path()
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stateful double.
// ---------------------------------------------------------------------------------------

/// One request as the double received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The status it was answered with (0 for a dropped connection).
    pub status: u16,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is not performed; the client gets a 500.
    NotPerformed,
    /// The request is performed; the client gets a 500 instead of the answer.
    PerformedThen500,
    /// The request is performed; the connection is cut while the answer is sent.
    PerformedThenDropped,
}

/// A server as the double stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub id: u64,
    pub name: String,
    pub api_tokens: Vec<String>,
    pub color: String,
    pub delivery_type: String,
    pub track_opens: bool,
    pub track_links: String,
    pub inbound_hook_url: String,
    pub inbound_domain: String,
    pub bounce_hook_url: String,
    pub open_hook_url: String,
    pub delivery_hook_url: String,
    pub click_hook_url: String,
    pub smtp_api_activated: bool,
    pub raw_email_enabled: bool,
    pub post_first_open_only: bool,
    pub inbound_spam_threshold: i64,
    pub inbound_hash: String,
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
        .collect()
}

/// A fresh server API token (Postmark's are UUIDs).
pub fn new_token() -> String {
    format!(
        "{}-{}-{}-{}-{}",
        random_hex(8),
        random_hex(4),
        random_hex(4),
        random_hex(4),
        random_hex(12)
    )
}

impl Server {
    fn new(id: u64, name: &str) -> Self {
        Self {
            id,
            name: name.to_string(),
            api_tokens: vec![new_token()],
            color: "purple".into(),
            delivery_type: "Live".into(),
            track_opens: false,
            track_links: "None".into(),
            inbound_hook_url: String::new(),
            inbound_domain: String::new(),
            bounce_hook_url: String::new(),
            open_hook_url: String::new(),
            delivery_hook_url: String::new(),
            click_hook_url: String::new(),
            smtp_api_activated: true,
            raw_email_enabled: false,
            post_first_open_only: false,
            inbound_spam_threshold: 0,
            inbound_hash: random_hex(32),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "ID": self.id,
            "Name": self.name,
            "ApiTokens": self.api_tokens,
            "Color": self.color,
            "DeliveryType": self.delivery_type,
            "SmtpApiActivated": self.smtp_api_activated,
            "RawEmailEnabled": self.raw_email_enabled,
            "ServerLink": format!("https://account.postmarkapp.com/servers/{}/streams", self.id),
            "InboundAddress": format!("{}@inbound.postmarkapp.com", self.inbound_hash),
            "InboundHookUrl": self.inbound_hook_url,
            "BounceHookUrl": self.bounce_hook_url,
            "OpenHookUrl": self.open_hook_url,
            "DeliveryHookUrl": self.delivery_hook_url,
            "ClickHookUrl": self.click_hook_url,
            "PostFirstOpenOnly": self.post_first_open_only,
            "InboundDomain": self.inbound_domain,
            "InboundHash": self.inbound_hash,
            "InboundSpamThreshold": self.inbound_spam_threshold,
            "TrackOpens": self.track_opens,
            "TrackLinks": self.track_links,
        })
    }

    /// Applies the fields present in a (validated) create or edit body.
    fn apply(&mut self, body: &Map<String, Value>) {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(ToString::to_string);
        let b = |k: &str| body.get(k).and_then(Value::as_bool);
        if let Some(v) = s("Name") {
            self.name = v;
        }
        if let Some(v) = s("Color") {
            self.color = v;
        }
        if let Some(v) = s("DeliveryType") {
            self.delivery_type = v;
        }
        if let Some(v) = s("TrackLinks") {
            self.track_links = v;
        }
        if let Some(v) = s("InboundHookUrl") {
            self.inbound_hook_url = v;
        }
        if let Some(v) = s("InboundDomain") {
            self.inbound_domain = v;
        }
        if let Some(v) = s("BounceHookUrl") {
            self.bounce_hook_url = v;
        }
        if let Some(v) = s("OpenHookUrl") {
            self.open_hook_url = v;
        }
        if let Some(v) = s("DeliveryHookUrl") {
            self.delivery_hook_url = v;
        }
        if let Some(v) = s("ClickHookUrl") {
            self.click_hook_url = v;
        }
        if let Some(v) = b("TrackOpens") {
            self.track_opens = v;
        }
        if let Some(v) = b("SmtpApiActivated") {
            self.smtp_api_activated = v;
        }
        if let Some(v) = b("RawEmailEnabled") {
            self.raw_email_enabled = v;
        }
        if let Some(v) = b("PostFirstOpenOnly") {
            self.post_first_open_only = v;
        }
        if let Some(v) = body.get("InboundSpamThreshold").and_then(Value::as_i64) {
            self.inbound_spam_threshold = v;
        }
    }
}

struct Inner {
    account_token: String,
    servers: BTreeMap<u64, Server>,
    next_id: u64,
    calls: Vec<Call>,
    violations: Vec<String>,
    delete_enabled: bool,
    rate_limited: bool,
    /// (only for this method, status, body)
    forced: Option<(Option<String>, u16, Value)>,
    missing_as_404: bool,
    /// Domains with an MX record for `inbound.postmarkapp.com` (`*.suffix` for a wildcard).
    mx: BTreeSet<String>,
    /// Inbound domains in use by other Postmark accounts.
    claimed_elsewhere: BTreeSet<String>,
    /// Fail the k-th request from when it was armed.
    fault: Option<(usize, Fault)>,
    /// Hold requests (of this method only, if given) this long before performing them.
    delay: Option<(Option<String>, std::time::Duration)>,
    /// Requests received, answered or not.
    received: usize,
}

type Shared = Arc<(SpecValidator, Mutex<Inner>)>;

fn error(code: i64, message: &str) -> Value {
    json!({"ErrorCode": code, "Message": message})
}

/// What the double does with one request.
enum Answer {
    Json(u16, Value),
    Empty(u16),
    Drop,
}

impl Inner {
    fn not_found(&self) -> (u16, Value) {
        let status = if self.missing_as_404 { 404 } else { 422 };
        (status, error(601, "Server does not exist."))
    }

    fn name_taken(&self, name: &str, except: Option<u64>) -> bool {
        self.servers
            .values()
            .any(|s| Some(s.id) != except && s.name.eq_ignore_ascii_case(name))
    }

    fn has_mx(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.mx.iter().any(|r| match r.strip_prefix("*.") {
            Some(suffix) => domain.ends_with(&format!(".{suffix}")),
            None => *r == domain,
        })
    }

    /// The error for an `InboundDomain` field Postmark would refuse, if any.
    fn check_inbound_domain(&self, fields: &Map<String, Value>, id: Option<u64>) -> Option<Value> {
        let domain = fields.get("InboundDomain").and_then(Value::as_str)?;
        if domain.is_empty() {
            return None;
        }
        let in_use = self
            .claimed_elsewhere
            .contains(&domain.to_ascii_lowercase())
            || self
                .servers
                .values()
                .any(|s| Some(s.id) != id && s.inbound_domain.eq_ignore_ascii_case(domain));
        if in_use {
            return Some(error(
                602,
                "Duplicate Inbound Domain. The Inbound Domain you specified is already in use on Postmark.",
            ));
        }
        if !self.has_mx(domain) {
            return Some(error(
                610,
                "Invalid MX record for Inbound Domain. The Inbound Domain provided doesn't have an MX record value of inbound.postmarkapp.com.",
            ));
        }
        None
    }

    fn perform(&mut self, op: &str, path: &str, query: &str, body: &Value) -> (u16, Value) {
        let id = path
            .rsplit('/')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let empty = Map::new();
        let fields = body.as_object().unwrap_or(&empty);
        match op {
            "listServers" => {
                let url = reqwest::Url::parse(&format!("http://x/?{query}")).unwrap();
                let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
                let count: usize = q["count"].parse().unwrap();
                let offset: usize = q["offset"].parse().unwrap();
                if count > 500 {
                    return (422, error(0, "Count must be at most 500."));
                }
                let needle = q.get("name").map(|n| n.to_lowercase()).unwrap_or_default();
                let all: Vec<&Server> = self
                    .servers
                    .values()
                    .filter(|s| s.name.to_lowercase().contains(&needle))
                    .collect();
                let page: Vec<Value> = all
                    .iter()
                    .skip(offset)
                    .take(count)
                    .map(|s| s.to_json())
                    .collect();
                (200, json!({"TotalCount": all.len(), "Servers": page}))
            }
            "createServer" => {
                let name = fields.get("Name").and_then(Value::as_str).unwrap_or("");
                if name.trim().is_empty() {
                    return (422, error(608, "Server name missing."));
                }
                if self.name_taken(name, None) {
                    return (422, error(603, "Server name already exists."));
                }
                if let Some(e) = self.check_inbound_domain(fields, None) {
                    return (422, e);
                }
                self.next_id += 1;
                let mut server = Server::new(self.next_id, name);
                server.apply(fields);
                let answer = server.to_json();
                self.servers.insert(server.id, server);
                (200, answer)
            }
            "getServerInformation" => match self.servers.get(&id) {
                Some(s) => (200, s.to_json()),
                None => self.not_found(),
            },
            "editServerInformation" => {
                if !self.servers.contains_key(&id) {
                    return self.not_found();
                }
                if let Some(name) = fields.get("Name").and_then(Value::as_str) {
                    if name.trim().is_empty() {
                        return (422, error(608, "Server name missing."));
                    }
                    if self.name_taken(name, Some(id)) {
                        return (422, error(603, "Server name already exists."));
                    }
                }
                if let Some(e) = self.check_inbound_domain(fields, Some(id)) {
                    return (422, e);
                }
                let server = self.servers.get_mut(&id).unwrap();
                server.apply(fields);
                (200, server.to_json())
            }
            "deleteServer" => {
                if !self.delete_enabled {
                    return (422, error(604, "You don't have delete access."));
                }
                match self.servers.remove(&id) {
                    Some(s) => (200, error(0, &format!("Server {} removed.", s.name))),
                    None => self.not_found(),
                }
            }
            other => panic!("the double does not implement {other}"),
        }
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let (validator, inner) = &*shared;
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body: Value = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into()))
    };
    let delay = {
        let mut g = inner.lock().unwrap();
        g.received += 1;
        g.delay
            .clone()
            .filter(|(only, _)| only.as_deref().is_none_or(|m| m == method.as_str()))
            .map(|(_, d)| d)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut g = inner.lock().unwrap();
    let answer = 'answer: {
        let op = match validator.check_request(method.as_str(), &path, &query, &headers, &raw) {
            Ok(op) => op,
            Err(v) => {
                let message = format!("request violates the API description: {}", v.join("; "));
                g.violations.extend(v);
                break 'answer Answer::Json(422, error(0, &message));
            }
        };
        let token_ok = headers
            .get("x-postmark-account-token")
            .and_then(|h| h.to_str().ok())
            == Some(g.account_token.as_str());
        if !token_ok {
            break 'answer Answer::Json(401, error(10, "Bad or missing API token."));
        }
        let fault = match g.fault {
            Some((1, f)) => {
                g.fault = None;
                Some(f)
            }
            Some((k, f)) => {
                g.fault = Some((k - 1, f));
                None
            }
            None => None,
        };
        if fault == Some(Fault::NotPerformed) {
            break 'answer Answer::Empty(500);
        }
        if let Some((only, status, body)) = g.forced.clone()
            && only.is_none_or(|m| m == method.as_str())
        {
            break 'answer Answer::Json(status, body);
        }
        if g.rate_limited {
            break 'answer Answer::Json(429, error(429, "Rate limit exceeded."));
        }
        let (status, value) = g.perform(&op.id, &path, &query, &body);
        let problems = validator.check_response(op, status, &value);
        g.violations
            .extend(problems.into_iter().map(|p| format!("DOUBLE BUG: {p}")));
        match fault {
            Some(Fault::PerformedThen500) => Answer::Empty(500),
            Some(Fault::PerformedThenDropped) => Answer::Drop,
            _ => Answer::Json(status, value),
        }
    };
    let status = match &answer {
        Answer::Json(s, _) | Answer::Empty(s) => *s,
        Answer::Drop => 0,
    };
    g.calls.push(Call {
        method: method.to_string(),
        path,
        query,
        body,
        status,
    });
    drop(g);
    match answer {
        Answer::Json(s, v) => Response::builder()
            .status(StatusCode::from_u16(s).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        Answer::Empty(s) => Response::builder()
            .status(StatusCode::from_u16(s).unwrap())
            .body(Body::empty())
            .unwrap(),
        Answer::Drop => {
            let cut = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from_stream(cut))
                .unwrap()
        }
    }
}

/// The double, listening on 127.0.0.1 until dropped.
pub struct PostmarkDouble {
    url: String,
    account_token: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PostmarkDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostmarkDouble {
    pub async fn start() -> Self {
        let account_token = format!("account-{}", new_token());
        let shared: Shared = Arc::new((
            SpecValidator::load(),
            Mutex::new(Inner {
                account_token: account_token.clone(),
                servers: BTreeMap::new(),
                next_id: 1000,
                calls: Vec::new(),
                violations: Vec::new(),
                delete_enabled: true,
                rate_limited: false,
                forced: None,
                missing_as_404: false,
                mx: BTreeSet::new(),
                claimed_elsewhere: BTreeSet::new(),
                fault: None,
                delay: None,
                received: 0,
            }),
        ));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            account_token,
            shared,
            task,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.1.lock().unwrap()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account token the double accepts.
    pub fn account_token(&self) -> &str {
        &self.account_token
    }

    pub fn validator(&self) -> &SpecValidator {
        &self.shared.0
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner().calls.clone()
    }

    /// A mark for [`Self::calls_since`].
    pub fn mark(&self) -> usize {
        self.inner().calls.len()
    }

    pub fn calls_since(&self, mark: usize) -> Vec<Call> {
        self.inner().calls[mark..].to_vec()
    }

    pub fn writes_since(&self, mark: usize) -> Vec<Call> {
        self.calls_since(mark)
            .into_iter()
            .filter(Call::is_write)
            .collect()
    }

    /// Requests that broke the API description (and answers of the double that did).
    pub fn violations(&self) -> Vec<String> {
        self.inner().violations.clone()
    }

    pub fn servers(&self) -> Vec<Server> {
        self.inner().servers.values().cloned().collect()
    }

    pub fn servers_named(&self, name: &str) -> Vec<Server> {
        self.inner()
            .servers
            .values()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    pub fn server(&self, id: u64) -> Option<Server> {
        self.inner().servers.get(&id).cloned()
    }

    /// Adds a server as if made by hand in Postmark.
    pub fn seed(&self, name: &str) -> Server {
        let mut g = self.inner();
        g.next_id += 1;
        let s = Server::new(g.next_id, name);
        g.servers.insert(s.id, s.clone());
        s
    }

    /// Changes a server as if by hand in Postmark.
    pub fn modify(&self, id: u64, f: impl FnOnce(&mut Server)) {
        f(self
            .inner()
            .servers
            .get_mut(&id)
            .expect("a server of the double"));
    }

    /// Whether `token` is a server token Postmark would accept for sending.
    pub fn server_token_works(&self, token: &str) -> bool {
        self.inner()
            .servers
            .values()
            .any(|s| s.api_tokens.iter().any(|t| t == token))
    }

    pub fn set_delete_enabled(&self, on: bool) {
        self.inner().delete_enabled = on;
    }

    pub fn set_rate_limited(&self, on: bool) {
        self.inner().rate_limited = on;
    }

    /// Answers every valid, authenticated request (of `method` only, if given) with this
    /// status and body, without performing it; `None` ends it.
    pub fn force(&self, method: Option<&str>, answer: Option<(u16, Value)>) {
        self.inner().forced = answer.map(|(s, b)| (method.map(ToString::to_string), s, b));
    }

    /// Adds an MX record for `domain` pointing to `inbound.postmarkapp.com` (`*.suffix`
    /// adds a wildcard record for every subdomain of `suffix`).
    pub fn add_mx(&self, domain: &str) {
        self.inner().mx.insert(domain.to_ascii_lowercase());
    }

    pub fn remove_mx(&self, domain: &str) {
        self.inner().mx.remove(&domain.to_ascii_lowercase());
    }

    /// Marks `domain` as the inbound domain of a server in another Postmark account.
    pub fn claim_domain(&self, domain: &str) {
        self.inner()
            .claimed_elsewhere
            .insert(domain.to_ascii_lowercase());
    }

    pub fn release_domain(&self, domain: &str) {
        self.inner()
            .claimed_elsewhere
            .remove(&domain.to_ascii_lowercase());
    }

    pub fn set_missing_as_404(&self, on: bool) {
        self.inner().missing_as_404 = on;
    }

    /// Fails the `k`-th request from now (1 = the next one) with `fault`.
    pub fn fail_nth(&self, k: usize, fault: Fault) {
        assert!(k >= 1);
        self.inner().fault = Some((k, fault));
    }

    /// Whether an armed fault is still waiting (the run had fewer than k requests).
    pub fn fault_pending(&self) -> bool {
        self.inner().fault.is_some()
    }

    pub fn clear_fault(&self) {
        self.inner().fault = None;
    }

    /// Holds every request (of `method` only, if given) for `delay` before it is performed
    /// and answered: a slow Postmark. `None` ends it (requests already held stay held).
    pub fn set_delay(&self, method: Option<&str>, delay: Option<std::time::Duration>) {
        self.inner().delay = delay.map(|d| (method.map(ToString::to_string), d));
    }

    /// Requests received and not answered yet (held by [`Self::set_delay`]; one whose
    /// client went away while it was held may stay counted).
    pub fn in_flight(&self) -> usize {
        let g = self.inner();
        g.received - g.calls.len()
    }
}
