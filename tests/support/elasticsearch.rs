//! A stateful Elasticsearch double on 127.0.0.1 (axum), for the endpoints the search
//! provider uses and a small data plane to prove what tenant keys can reach.
//!
//! Behaviour follows the official Elasticsearch REST API specification
//! (github.com/elastic/elasticsearch-specification: `indices.create`, `indices.get`,
//! `indices.put_settings`, `indices.get_mapping`, `indices.put_mapping`, `indices.delete`, `security.put_role`, `security.get_role`,
//! `security.delete_role`, `security.create_api_key`, `security.get_api_key`,
//! `security.invalidate_api_key`, `security.authenticate`, `search`, `index`), the
//! Elasticsearch reference pages of those APIs, and the server's behaviour where the spec is
//! silent (Elasticsearch source, `RestGetApiKeyAction`, `ApiKeyService`,
//! `TransportCreateApiKeyAction`):
//! - Errors use the spec's `ErrorResponseBase`: `{"error": {"root_cause": [..], "type",
//!   "reason", ..}, "status": N}` with the real types and texts: 404
//!   `index_not_found_exception` ("no such index [x]"), 400
//!   `resource_already_exists_exception` ("index [x/uuid] already exists"), 400
//!   `invalid_index_name_exception`, 401 `security_exception` (with `WWW-Authenticate`),
//!   403 `security_exception` ("action [..] is unauthorized for API key id [..] of user
//!   [..] on indices [..], this action is granted by the index privileges [..]"), 400
//!   `illegal_argument_exception` for derived keys with privileges.
//! - `GET /_security/role/{name}` answers 404 with `{}` for an unknown role and fills in the
//!   defaults (`applications`, `run_as`, `allow_restricted_indices`, `transient_metadata`);
//!   `DELETE` answers `{"found": false}` with 404.
//! - `GET /_security/api_key?name=` answers 200 with `{"api_keys": []}` when nothing
//!   matches (404 only when `id` was given), lists invalidated keys too, and reports
//!   `role_descriptors`; `DELETE /_security/api_key` invalidates only keys that are still
//!   valid and answers 200 with empty lists when none match.
//! - A request authenticated by an API key may create only keys with an explicit role
//!   descriptor that grants nothing.
//! - Index settings come back as strings; `number_of_shards` is static.
//! - Mappings hold only `_meta` here (reference, "_meta field"): set at creation from
//!   `mappings._meta`, reported by `GET /{index}` and `GET /{index}/_mapping`, and
//!   replaced as a whole by `PUT /{index}/_mapping` with `{"_meta": {..}}` ("Update mapping
//!   API"); other mapping parts are accepted and not kept. Explicit mapping updates need
//!   `manage` (since 8.0 `write` grants only `indices:admin/mapping/auto_put`).
//! - Tenant keys are authorized by their role descriptors (an empty map means the owner's
//!   rights); the operator user is a superuser. Auto-creation of indices is off
//!   (`action.auto_create_index: false`).
//!
//! Switches: a canned status for every request (401/403/429/503), failure of the k-th
//! request either before it is performed or after (the client gets a 500 either way), a
//! concurrent index create between the client's `GET` and `PUT`, and echoing the received `Authorization` header in errors (a misbehaving proxy) to prove the
//! provider scrubs credentials. Every request is recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// The operator's user (a superuser of the native realm).
pub const OPERATOR_USER: &str = "dealertenant-operator";
pub const OPERATOR_PASSWORD: &str = "op-Pw-3xq9Lk2vT7";
const OPERATOR_KEY_ID: &str = "opKeyId0000000000001";
const OPERATOR_KEY_SECRET: &str = "opKeySecretZz91Qa7Wc3Xe";
const REALM: &str = "native1";

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// Credentials were refused (401).
    Rejected,
    /// The operator user, HTTP Basic.
    Operator,
    /// The operator's own API key.
    OperatorKey,
    /// A key created through the API, by ID.
    Key(String),
}

/// One request the double received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub principal: Principal,
}

impl Call {
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }

    /// A call that changes state at the service (data-plane calls excluded).
    pub fn is_write(&self) -> bool {
        self.method != "GET" && !self.path.ends_with("/_search") && !self.path.ends_with("/_doc")
    }

    /// A call that creates something: an index, a role or an API key.
    pub fn is_create(&self) -> bool {
        let segs: Vec<&str> = self.path.trim_start_matches('/').split('/').collect();
        match (self.method.as_str(), segs.as_slice()) {
            ("PUT", [index]) => !index.starts_with('_'),
            ("PUT" | "POST", ["_security", "role", _]) => true,
            ("PUT" | "POST", ["_security", "api_key"]) => true,
            _ => false,
        }
    }
}

/// An index.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    pub uuid: String,
    pub shards: u32,
    pub replicas: u32,
    pub docs: u64,
    pub creation_date: i64,
    /// `mappings._meta`, when set.
    pub meta: Option<Value>,
}

/// An API key as stored.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub secret: String,
    pub invalidated: bool,
    pub invalidation: Option<i64>,
    pub creation: i64,
    pub metadata: Value,
    /// Normalized descriptors by name; empty = the owner's rights.
    pub role_descriptors: Value,
    pub owner: String,
}

impl Key {
    pub fn encoded(&self) -> String {
        BASE64.encode(format!("{}:{}", self.id, self.secret))
    }
}

/// Failure injection for the k-th request from arming.
#[derive(Clone, Copy, Debug)]
struct Fault {
    nth: usize,
    performed: bool,
}

#[derive(Default)]
struct State_ {
    indices: BTreeMap<String, Index>,
    roles: BTreeMap<String, Value>,
    keys: Vec<Key>,
    calls: Vec<Call>,
    respond_with: Option<u16>,
    echo_credentials: bool,
    fault: Option<Fault>,
    since_armed: usize,
    race_index_create: bool,
    clock: i64,
    seq: u64,
}

impl State_ {
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        1_700_000_000_000 + self.clock
    }

    fn random_id(&mut self, len: usize) -> String {
        self.seq += 1;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s: String = (0..len)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        // Unique even with a poor random source.
        let tag = format!("{:x}", self.seq);
        s.replace_range(len - tag.len().min(len).., &tag);
        s
    }
}

/// The running double.
#[derive(Clone)]
pub struct EsDouble {
    state: Arc<Mutex<State_>>,
    url: String,
}

impl EsDouble {
    /// Starts the double on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State_::default()));
        {
            let mut s = state.lock().unwrap();
            let creation = s.tick();
            s.keys.push(Key {
                id: OPERATOR_KEY_ID.into(),
                name: "dealertenant-operator-admin".into(),
                secret: OPERATOR_KEY_SECRET.into(),
                invalidated: false,
                invalidation: None,
                creation,
                metadata: json!({}),
                role_descriptors: json!({}),
                owner: OPERATOR_USER.into(),
            });
        }
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            state,
            url: format!("http://{addr}"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The operator's own API key (`encoded` form).
    pub fn operator_api_key(&self) -> String {
        BASE64.encode(format!("{OPERATOR_KEY_ID}:{OPERATOR_KEY_SECRET}"))
    }

    // --- recorded calls ------------------------------------------------------------------

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    pub fn calls_since(&self, n: usize) -> Vec<Call> {
        self.lock().calls[n..].to_vec()
    }

    // --- switches --------------------------------------------------------------------------

    /// Answer every request with this status and its canned error (or normally: `None`).
    pub fn respond_with(&self, status: Option<u16>) {
        self.lock().respond_with = status;
    }

    /// Put the received `Authorization` header into error reasons.
    pub fn echo_credentials(&self, on: bool) {
        self.lock().echo_credentials = on;
    }

    /// Fail the `nth` request from now (1-based) with a 500: before performing it, or after
    /// (`performed`), so the client never sees the answer.
    pub fn fail_request(&self, nth: usize, performed: bool) {
        let mut s = self.lock();
        s.fault = Some(Fault { nth, performed });
        s.since_armed = 0;
    }

    pub fn clear_fault(&self) {
        self.lock().fault = None;
    }

    /// The next `PUT /{index}` finds the index just created by someone else (a concurrent
    /// pass between the client's `GET` and its `PUT`).
    pub fn race_index_create(&self) {
        self.lock().race_index_create = true;
    }

    // --- state -----------------------------------------------------------------------------

    pub fn index(&self, name: &str) -> Option<Index> {
        self.lock().indices.get(name).cloned()
    }

    pub fn index_names(&self) -> Vec<String> {
        self.lock().indices.keys().cloned().collect()
    }

    /// Creates or replaces an index directly (out of band).
    pub fn put_index(&self, name: &str, shards: u32, replicas: u32) {
        let mut s = self.lock();
        let creation_date = s.tick();
        let uuid = s.random_id(22);
        s.indices.insert(
            name.into(),
            Index {
                uuid,
                shards,
                replicas,
                docs: 0,
                creation_date,
                meta: None,
            },
        );
    }

    /// Replaces an index's `mappings._meta` directly (out of band).
    pub fn set_index_meta(&self, name: &str, meta: Option<Value>) {
        self.lock().indices.get_mut(name).unwrap().meta = meta;
    }

    pub fn set_replicas(&self, name: &str, replicas: u32) {
        self.lock().indices.get_mut(name).unwrap().replicas = replicas;
    }

    /// The role as `GET /_security/role/{name}` reports it.
    pub fn role(&self, name: &str) -> Option<Value> {
        self.lock().roles.get(name).cloned()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.lock().roles.keys().cloned().collect()
    }

    /// Stores a role directly (out of band), normalized as Elasticsearch would.
    pub fn put_role(&self, name: &str, body: &Value) {
        self.lock().roles.insert(name.into(), normalize_role(body));
    }

    /// Every key with this name, valid or not.
    pub fn keys_named(&self, name: &str) -> Vec<Key> {
        self.lock()
            .keys
            .iter()
            .filter(|k| k.name == name)
            .cloned()
            .collect()
    }

    /// Keys with this name that still authenticate.
    pub fn valid_keys(&self, name: &str) -> Vec<Key> {
        self.keys_named(name)
            .into_iter()
            .filter(|k| !k.invalidated)
            .collect()
    }

    /// Invalidates a key directly (out of band).
    pub fn invalidate_key(&self, id: &str) {
        let mut s = self.lock();
        let now = s.tick();
        let k = s.keys.iter_mut().find(|k| k.id == id).unwrap();
        k.invalidated = true;
        k.invalidation = Some(now);
    }

    /// Creates a key directly (out of band), owned by the operator; returns it.
    pub fn mint_key(&self, name: &str, role_descriptors: &Value) -> Key {
        let mut s = self.lock();
        let key = new_key(&mut s, name, role_descriptors, &json!({}));
        s.keys.push(key.clone());
        key
    }

    // --- a tenant's view -------------------------------------------------------------------

    /// `GET /{index}/_search` with a key's `encoded` value; returns the status.
    pub async fn search_as(&self, encoded: &str, index: &str) -> u16 {
        self.status_as("GET", encoded, &format!("{index}/_search"))
            .await
    }

    /// `POST /{index}/_doc` with a key's `encoded` value; returns the status.
    pub async fn index_doc_as(&self, encoded: &str, index: &str) -> u16 {
        self.status_as("POST", encoded, &format!("{index}/_doc"))
            .await
    }

    /// Any request with a key's `encoded` value (POST/PUT carry a small JSON body).
    pub async fn status_as(&self, method: &str, encoded: &str, path: &str) -> u16 {
        dealertenant_operator::providers::tls::ensure_crypto_provider();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = reqwest::Client::new()
            .request(method.clone(), format!("{}/{path}", self.url))
            .header("Authorization", format!("ApiKey {encoded}"));
        if method == reqwest::Method::POST || method == reqwest::Method::PUT {
            rb = rb.json(&json!({"title": "a document"}));
        }
        rb.send().await.unwrap().status().as_u16()
    }
}

// ---------------------------------------------------------------------------------------
// Answers.
// ---------------------------------------------------------------------------------------

fn reply(status: u16, body: Value) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json"),
            ("x-elastic-product", "Elasticsearch"),
        ],
        body.to_string(),
    )
        .into_response();
    if status == 401 {
        resp.headers_mut().append(
            "www-authenticate",
            "Basic realm=\"security\", charset=\"UTF-8\""
                .parse()
                .unwrap(),
        );
        resp.headers_mut()
            .append("www-authenticate", "ApiKey".parse().unwrap());
    }
    resp
}

/// `{"error": {"root_cause": [cause], ..cause}, "status": N}` with extra fields in the cause.
fn error(status: u16, kind: &str, reason: Value, extra: Value) -> Response {
    let mut cause = json!({ "type": kind, "reason": reason });
    if let (Some(c), Some(e)) = (cause.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    if status == 401 {
        cause["header"] = json!({"WWW-Authenticate": [
            "Basic realm=\"security\", charset=\"UTF-8\"", "ApiKey"]});
    }
    let mut top = cause.clone();
    top["root_cause"] = json!([cause]);
    reply(status, json!({ "error": top, "status": status }))
}

fn index_not_found(index: &str, reason: Option<String>) -> Response {
    error(
        404,
        "index_not_found_exception",
        json!(reason.unwrap_or_else(|| format!("no such index [{index}]"))),
        json!({"resource.type": "index_or_alias", "resource.id": index,
               "index_uuid": "_na_", "index": index}),
    )
}

fn bad_request(kind: &str, reason: &str) -> Response {
    error(400, kind, json!(reason), json!({}))
}

fn validation(reason: &str) -> Response {
    bad_request(
        "action_request_validation_exception",
        &format!("Validation Failed: 1: {reason};"),
    )
}

/// The canned answer of a status switch.
fn canned(status: u16, action: &str, index: Option<&str>, echo: Option<&str>) -> Response {
    let echo = echo
        .map(|h| format!(" (received [{h}])"))
        .unwrap_or_default();
    match status {
        401 => error(
            401,
            "security_exception",
            json!(format!(
                "unable to authenticate with provided credentials and anonymous access is \
                 not allowed for this request{echo}"
            )),
            json!({"additional_unsuccessful_credentials":
                   "API key: unable to find apikey with id [unknown]"}),
        ),
        403 => {
            let on = index
                .map(|i| format!(" on indices [{i}]"))
                .unwrap_or_default();
            let granted = if index.is_some() {
                "index privileges [manage,all]"
            } else {
                "cluster privileges [manage_security,all]"
            };
            error(
                403,
                "security_exception",
                json!(format!(
                    "action [{action}] is unauthorized for user [{OPERATOR_USER}] with \
                     effective roles [{OPERATOR_USER}]{on}, this action is granted by the \
                     {granted}{echo}"
                )),
                json!({}),
            )
        }
        429 => error(
            429,
            "es_rejected_execution_exception",
            json!(format!(
                "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, \
                 replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, \
                 max_coordinating_and_primary_bytes=0]{echo}"
            )),
            json!({}),
        ),
        503 => error(
            503,
            "master_not_discovered_exception",
            Value::Null,
            json!({}),
        ),
        s => error(
            s,
            "exception",
            json!(format!("injected failure{echo}")),
            json!({}),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Routing.
// ---------------------------------------------------------------------------------------

/// What a request wants, for authorization.
enum Action {
    /// Needs one of these cluster privileges.
    Cluster(&'static str, &'static [&'static str]),
    /// Needs one of these privileges on the index.
    Index(&'static str, &'static [&'static str]),
    /// Any authenticated principal.
    Anyone,
}

fn route_action(method: &Method, segs: &[String]) -> Option<Action> {
    use Action::*;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    Some(match (method.as_str(), segs.as_slice()) {
        ("GET", ["_security", "_authenticate"]) => Anyone,
        ("GET", ["_security", "role", _]) => Cluster(
            "cluster:admin/xpack/security/role/get",
            &["manage_security", "read_security", "all"],
        ),
        ("PUT" | "POST", ["_security", "role", _]) => Cluster(
            "cluster:admin/xpack/security/role/put",
            &["manage_security", "all"],
        ),
        ("DELETE", ["_security", "role", _]) => Cluster(
            "cluster:admin/xpack/security/role/delete",
            &["manage_security", "all"],
        ),
        ("GET", ["_security", "api_key"]) => Cluster(
            "cluster:admin/xpack/security/api_key/get",
            &["manage_api_key", "manage_security", "read_security", "all"],
        ),
        ("PUT" | "POST", ["_security", "api_key"]) => Cluster(
            "cluster:admin/xpack/security/api_key/create",
            &[
                "manage_own_api_key",
                "manage_api_key",
                "manage_security",
                "all",
            ],
        ),
        ("DELETE", ["_security", "api_key"]) => Cluster(
            "cluster:admin/xpack/security/api_key/invalidate",
            &["manage_api_key", "manage_security", "all"],
        ),
        ("GET", [i]) if !i.starts_with('_') => Index(
            "indices:admin/get",
            &["view_index_metadata", "manage", "all"],
        ),
        ("PUT", [i]) if !i.starts_with('_') => {
            Index("indices:admin/create", &["create_index", "manage", "all"])
        }
        ("DELETE", [i]) if !i.starts_with('_') => {
            Index("indices:admin/delete", &["delete_index", "manage", "all"])
        }
        ("PUT", [_, "_settings"]) => Index("indices:admin/settings/update", &["manage", "all"]),
        ("GET", [_, "_mapping"]) => Index(
            "indices:admin/mappings/get",
            &["view_index_metadata", "manage", "all"],
        ),
        ("PUT" | "POST", [_, "_mapping"]) => Index("indices:admin/mapping/put", &["manage", "all"]),
        ("GET" | "POST", [_, "_search"]) => Index("indices:data/read/search", &["read", "all"]),
        ("POST", [_, "_doc"]) => Index(
            "indices:data/write/index",
            &["create_doc", "create", "index", "write", "all"],
        ),
        _ => return None,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    let Some(q) = uri.query() else {
        return BTreeMap::new();
    };
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// Authenticates the `Authorization` header.
fn authenticate(s: &State_, headers: &HeaderMap) -> Principal {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Principal::Anonymous;
    };
    let decoded = |b64: &str| {
        BASE64
            .decode(b64.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
    };
    if let Some(b64) = value.strip_prefix("Basic ") {
        return match decoded(b64).as_deref().and_then(|d| d.split_once(':')) {
            Some((OPERATOR_USER, OPERATOR_PASSWORD)) => Principal::Operator,
            _ => Principal::Rejected,
        };
    }
    if let Some(b64) = value.strip_prefix("ApiKey ") {
        let Some(pair) = decoded(b64) else {
            return Principal::Rejected;
        };
        let Some((id, secret)) = pair.split_once(':') else {
            return Principal::Rejected;
        };
        return match s.keys.iter().find(|k| k.id == id) {
            Some(k) if k.secret == secret && !k.invalidated => {
                if k.id == OPERATOR_KEY_ID {
                    Principal::OperatorKey
                } else {
                    Principal::Key(k.id.clone())
                }
            }
            _ => Principal::Rejected,
        };
    }
    Principal::Rejected
}

fn unauthenticated(principal: &Principal, uri: &Uri, headers: &HeaderMap) -> Response {
    if *principal == Principal::Anonymous {
        return error(
            401,
            "security_exception",
            json!(format!(
                "missing authentication credentials for REST request [{}]",
                uri.path()
            )),
            json!({}),
        );
    }
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(user) = value
        .strip_prefix("Basic ")
        .and_then(|b| BASE64.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|d| d.split_once(':').map(|(u, _)| u.to_string()))
    {
        return error(
            401,
            "security_exception",
            json!(format!(
                "unable to authenticate user [{user}] for REST request [{}]",
                uri.path()
            )),
            json!({}),
        );
    }
    error(
        401,
        "security_exception",
        json!(
            "unable to authenticate with provided credentials and anonymous access is not \
             allowed for this request"
        ),
        json!({"additional_unsuccessful_credentials":
               "API key: invalid credentials or the api key has been invalidated"}),
    )
}

/// Simple index pattern matching: exact, or `*` wildcards.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else {
                return false;
            };
            rest = &rest[pos + part.len()..];
        }
    }
    true
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Authorization of a key by its role descriptors: `Some(403 answer)` when denied.
fn authorize_key(
    s: &State_,
    key_id: &str,
    action: &Action,
    index: Option<&str>,
) -> Option<Response> {
    let key = s.keys.iter().find(|k| k.id == key_id).unwrap();
    let descs = key
        .role_descriptors
        .as_object()
        .cloned()
        .unwrap_or_default();
    if descs.is_empty() {
        return None; // the owner's rights: the operator is a superuser
    }
    let (name, granted_by, kind) = match action {
        Action::Anyone => return None,
        Action::Cluster(n, g) => (*n, *g, "cluster"),
        Action::Index(n, g) => (*n, *g, "index"),
    };
    let allowed = descs.values().any(|d| match action {
        Action::Cluster(..) => strings(d.get("cluster"))
            .iter()
            .any(|p| granted_by.contains(&p.as_str())),
        Action::Index(..) => d
            .get("indices")
            .and_then(Value::as_array)
            .is_some_and(|entries| {
                entries.iter().any(|e| {
                    strings(e.get("names"))
                        .iter()
                        .any(|p| pattern_matches(p, index.unwrap_or_default()))
                        && strings(e.get("privileges"))
                            .iter()
                            .any(|p| granted_by.contains(&p.as_str()))
                })
            }),
        Action::Anyone => true,
    });
    if allowed {
        return None;
    }
    let on = index
        .map(|i| format!(" on indices [{i}]"))
        .unwrap_or_default();
    Some(error(
        403,
        "security_exception",
        json!(format!(
            "action [{name}] is unauthorized for API key id [{key_id}] of user [{}]{on}, this \
             action is granted by the {kind} privileges [{}]",
            key.owner,
            granted_by.join(",")
        )),
        json!({}),
    ))
}

async fn handle(
    State(state): State<Arc<Mutex<State_>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return bad_request(
                    "x_content_parse_exception",
                    &format!("Failed to parse the request body: {e}"),
                );
            }
        }
    };
    let segs: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let query = query_map(&uri);

    let mut s = state.lock().unwrap();
    let principal = authenticate(&s, &headers);
    s.calls.push(Call {
        method: method.to_string(),
        path: format!("/{}", segs.join("/")),
        query: uri.query().unwrap_or_default().to_string(),
        body: json_body.clone(),
        principal: principal.clone(),
    });

    let action = route_action(&method, &segs);
    let index = segs.first().filter(|i| !i.starts_with('_')).cloned();
    let echo = s
        .echo_credentials
        .then(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .flatten();

    if let Some(status) = s.respond_with {
        let name = match &action {
            Some(Action::Cluster(n, _) | Action::Index(n, _)) => *n,
            _ => "cluster:monitor/main",
        };
        return canned(status, name, index.as_deref(), echo.as_deref());
    }

    let mut fail_after = false;
    if let Some(f) = s.fault {
        s.since_armed += 1;
        if s.since_armed == f.nth {
            s.fault = None;
            if !f.performed {
                return canned(500, "", None, None);
            }
            fail_after = true;
        }
    }

    let resp = match principal {
        Principal::Anonymous | Principal::Rejected => {
            if let Some(h) = echo.as_deref() {
                error(
                    401,
                    "security_exception",
                    json!(format!("unable to authenticate with [{h}]")),
                    json!({}),
                )
            } else {
                unauthenticated(&principal, &uri, &headers)
            }
        }
        _ => match action {
            None => reply(
                400,
                json!({
                    "error": format!("no handler found for uri [{}] and method [{method}]", uri.path()),
                    "status": 400
                }),
            ),
            Some(action) => {
                let denied = match &principal {
                    Principal::Key(id) => authorize_key(&s, id, &action, index.as_deref()),
                    _ => None,
                };
                match denied {
                    Some(r) => r,
                    None => perform(&mut s, &principal, &method, &segs, &query, &json_body),
                }
            }
        },
    };
    if fail_after {
        return canned(500, "", None, None);
    }
    resp
}

fn perform(
    s: &mut State_,
    principal: &Principal,
    method: &Method,
    segs: &[String],
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Response {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["_security", "_authenticate"]) => authenticate_info(s, principal),
        ("GET", ["_security", "role", name]) => match s.roles.get(*name) {
            Some(r) => reply(200, json!({ *name: r })),
            None => reply(404, json!({})),
        },
        ("PUT" | "POST", ["_security", "role", name]) => {
            if ["superuser", "kibana_system", "elastic"].contains(name) {
                return bad_request(
                    "illegal_argument_exception",
                    &format!("role [{name}] is reserved and cannot be modified"),
                );
            }
            let created = s
                .roles
                .insert(name.to_string(), normalize_role(body))
                .is_none();
            reply(200, json!({"role": {"created": created}}))
        }
        ("DELETE", ["_security", "role", name]) => match s.roles.remove(*name) {
            Some(_) => reply(200, json!({"found": true})),
            None => reply(404, json!({"found": false})),
        },
        ("GET", ["_security", "api_key"]) => get_keys(s, query),
        ("PUT" | "POST", ["_security", "api_key"]) => create_key(s, principal, body),
        ("DELETE", ["_security", "api_key"]) => invalidate_keys(s, body),
        ("GET", [index]) => match s.indices.get(*index) {
            Some(i) => reply(200, json!({ *index: index_json(index, i) })),
            None => index_not_found(index, None),
        },
        ("PUT", [index]) => create_index(s, index, body),
        ("DELETE", [index]) => match s.indices.remove(*index) {
            Some(_) => reply(200, json!({"acknowledged": true})),
            None => index_not_found(index, None),
        },
        ("PUT", [index, "_settings"]) => put_settings(s, index, body),
        ("GET", [index, "_mapping"]) => match s.indices.get(*index) {
            Some(i) => reply(200, json!({ *index: {"mappings": mappings_json(i)} })),
            None => index_not_found(index, None),
        },
        ("PUT" | "POST", [index, "_mapping"]) => put_mapping(s, index, body),
        ("GET" | "POST", [index, "_search"]) => match s.indices.get(*index) {
            Some(i) => reply(
                200,
                json!({"took": 1, "timed_out": false,
                       "_shards": {"total": i.shards, "successful": i.shards, "skipped": 0, "failed": 0},
                       "hits": {"total": {"value": i.docs, "relation": "eq"},
                                "max_score": null, "hits": []}}),
            ),
            None => index_not_found(index, None),
        },
        ("POST", [index, "_doc"]) => {
            let id = s.random_id(20);
            match s.indices.get_mut(*index) {
                Some(i) => {
                    i.docs += 1;
                    let seq_no = i.docs - 1;
                    reply(
                        201,
                        json!({"_index": index, "_id": id, "_version": 1, "result": "created",
                               "_shards": {"total": 1 + i.replicas, "successful": 1, "failed": 0},
                               "_seq_no": seq_no, "_primary_term": 1}),
                    )
                }
                None => index_not_found(
                    index,
                    Some(format!(
                        "no such index [{index}] and [action.auto_create_index] is [false]"
                    )),
                ),
            }
        }
        _ => reply(
            400,
            json!({"error": format!("no handler found for uri [/{}] and method [{method}]",
                                    segs.join("/")), "status": 400}),
        ),
    }
}

fn authenticate_info(s: &State_, principal: &Principal) -> Response {
    let api_key_realm = json!({"name": "_es_api_key", "type": "_es_api_key"});
    match principal {
        Principal::Operator => reply(
            200,
            json!({"username": OPERATOR_USER, "roles": ["superuser"], "full_name": null,
                   "email": null, "metadata": {}, "enabled": true,
                   "authentication_realm": {"name": REALM, "type": "native"},
                   "lookup_realm": {"name": REALM, "type": "native"},
                   "authentication_type": "realm"}),
        ),
        Principal::OperatorKey | Principal::Key(_) => {
            let id = match principal {
                Principal::Key(id) => id.as_str(),
                _ => OPERATOR_KEY_ID,
            };
            let k = s.keys.iter().find(|k| k.id == id).unwrap();
            reply(
                200,
                json!({"username": k.owner, "roles": [], "full_name": null, "email": null,
                       "metadata": {}, "enabled": true,
                       "authentication_realm": api_key_realm, "lookup_realm": api_key_realm,
                       "authentication_type": "api_key",
                       "api_key": {"id": k.id, "name": k.name}}),
            )
        }
        _ => unreachable!("authenticated before"),
    }
}

fn mappings_json(i: &Index) -> Value {
    match &i.meta {
        Some(meta) => json!({ "_meta": meta }),
        None => json!({}),
    }
}

/// `PUT /{index}/_mapping`: `_meta`, when given, replaces the stored one.
fn put_mapping(s: &mut State_, index: &str, body: &Value) -> Response {
    let Some(i) = s.indices.get_mut(index) else {
        return index_not_found(index, None);
    };
    match body.get("_meta") {
        None => {}
        Some(m @ Value::Object(_)) => i.meta = Some(m.clone()),
        Some(Value::Null) => i.meta = None,
        Some(_) => {
            return error(
                400,
                "mapper_parsing_exception",
                json!("Failed to parse mapping: [_meta] must be an object"),
                json!({}),
            );
        }
    }
    reply(200, json!({"acknowledged": true}))
}

fn index_json(name: &str, i: &Index) -> Value {
    json!({
        "aliases": {},
        "mappings": mappings_json(i),
        "settings": {"index": {
            "routing": {"allocation": {"include": {"_tier_preference": "data_content"}}},
            "number_of_shards": i.shards.to_string(),
            "provided_name": name,
            "creation_date": i.creation_date.to_string(),
            "number_of_replicas": i.replicas.to_string(),
            "uuid": i.uuid,
            "version": {"created": "8500003"}
        }}
    })
}

/// Reads `index.<key>` from nested (`{"index": {key}}`), bare (`{key}`) or flat form.
fn setting(settings: &Value, key: &str) -> Option<Value> {
    settings
        .get("index")
        .and_then(|i| i.get(key))
        .or_else(|| settings.get(key))
        .or_else(|| settings.get(format!("index.{key}")))
        .cloned()
}

fn as_count(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn invalid_name(index: &str) -> Option<String> {
    let base = format!("Invalid index name [{index}], ");
    if index.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(format!("{base}must be lowercase"));
    }
    if index.starts_with(['_', '-', '+']) {
        return Some(format!("{base}must not start with '_', '-', or '+'"));
    }
    if index.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        return Some(format!(
            "{base}must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]"
        ));
    }
    if index.len() > 255 {
        return Some(format!(
            "{base}index name is too long, ({} > 255)",
            index.len()
        ));
    }
    None
}

fn create_index(s: &mut State_, index: &str, body: &Value) -> Response {
    if std::mem::take(&mut s.race_index_create) && invalid_name(index).is_none() {
        let creation_date = s.tick();
        let uuid = s.random_id(22);
        s.indices.insert(
            index.into(),
            Index {
                uuid,
                shards: 1,
                replicas: 1,
                docs: 0,
                creation_date,
                meta: None,
            },
        );
    }
    if let Some(reason) = invalid_name(index) {
        return error(
            400,
            "invalid_index_name_exception",
            json!(reason),
            json!({"index_uuid": "_na_", "index": index}),
        );
    }
    if let Some(existing) = s.indices.get(index) {
        let reason = format!("index [{index}/{}] already exists", existing.uuid);
        return error(
            400,
            "resource_already_exists_exception",
            json!(reason),
            json!({"index_uuid": existing.uuid, "index": index}),
        );
    }
    let settings = body.get("settings").cloned().unwrap_or(Value::Null);
    let shards = setting(&settings, "number_of_shards")
        .map(|v| as_count(&v))
        .unwrap_or(Some(1));
    let replicas = setting(&settings, "number_of_replicas")
        .map(|v| as_count(&v))
        .unwrap_or(Some(1));
    let (Some(shards), Some(replicas)) = (shards, replicas) else {
        return bad_request(
            "illegal_argument_exception",
            "Failed to parse value for setting [index.number_of_shards]",
        );
    };
    if !(1..=1024).contains(&shards) {
        return bad_request(
            "illegal_argument_exception",
            &format!(
                "Failed to parse value [{shards}] for setting [index.number_of_shards] must be \
                 >= 1"
            ),
        );
    }
    if replicas < 0 {
        return bad_request(
            "illegal_argument_exception",
            &format!(
                "Failed to parse value [{replicas}] for setting [index.number_of_replicas] \
                 must be >= 0"
            ),
        );
    }
    let meta = match body.get("mappings").and_then(|m| m.get("_meta")) {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => {
            return error(
                400,
                "mapper_parsing_exception",
                json!("Failed to parse mapping: [_meta] must be an object"),
                json!({}),
            );
        }
    };
    let creation_date = s.tick();
    let uuid = s.random_id(22);
    s.indices.insert(
        index.into(),
        Index {
            uuid,
            shards: shards as u32,
            replicas: replicas as u32,
            docs: 0,
            creation_date,
            meta,
        },
    );
    reply(
        200,
        json!({"acknowledged": true, "shards_acknowledged": true, "index": index}),
    )
}

fn put_settings(s: &mut State_, index: &str, body: &Value) -> Response {
    let Some(i) = s.indices.get_mut(index) else {
        return index_not_found(index, None);
    };
    if setting(body, "number_of_shards").is_some() {
        return bad_request(
            "illegal_argument_exception",
            &format!(
                "Can't update non dynamic settings [[index.number_of_shards]] for open indices \
                 [[{index}/{}]]",
                i.uuid
            ),
        );
    }
    if let Some(v) = setting(body, "number_of_replicas") {
        match as_count(&v) {
            Some(r) if r >= 0 => i.replicas = r as u32,
            _ => {
                return bad_request(
                    "illegal_argument_exception",
                    "Failed to parse value for setting [index.number_of_replicas]",
                );
            }
        }
    }
    reply(200, json!({"acknowledged": true}))
}

/// A role or descriptor as Elasticsearch stores and reports it.
fn normalize_role(body: &Value) -> Value {
    let indices: Vec<Value> = body
        .get("indices")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let mut n = json!({
                        "names": strings(e.get("names")),
                        "privileges": strings(e.get("privileges")),
                        "allow_restricted_indices":
                            e.get("allow_restricted_indices").and_then(Value::as_bool).unwrap_or(false),
                    });
                    for k in ["field_security", "query"] {
                        if let Some(v) = e.get(k) {
                            n[k] = v.clone();
                        }
                    }
                    n
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "cluster": strings(body.get("cluster")),
        "indices": indices,
        "applications": body.get("applications").cloned().unwrap_or(json!([])),
        "run_as": strings(body.get("run_as")),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "transient_metadata": {"enabled": true}
    })
}

fn grants_anything(desc: &Value) -> bool {
    !strings(desc.get("cluster")).is_empty()
        || desc
            .get("indices")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        || desc
            .get("applications")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        || !strings(desc.get("run_as")).is_empty()
}

fn new_key(s: &mut State_, name: &str, role_descriptors: &Value, metadata: &Value) -> Key {
    let descs: serde_json::Map<String, Value> = role_descriptors
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), normalize_role(v)))
                .collect()
        })
        .unwrap_or_default();
    let creation = s.tick();
    Key {
        id: s.random_id(20),
        name: name.into(),
        secret: s.random_id(22),
        invalidated: false,
        invalidation: None,
        creation,
        metadata: metadata.clone(),
        role_descriptors: Value::Object(descs),
        owner: OPERATOR_USER.into(),
    }
}

fn create_key(s: &mut State_, principal: &Principal, body: &Value) -> Response {
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return validation("api key name is required");
    };
    if name.is_empty() || name.len() > 256 || name.starts_with('_') || name.trim() != name {
        return validation(
            "api key name may not be more than [256] characters long, begin with an underscore, \
             or begin or end with whitespace",
        );
    }
    let descs = body.get("role_descriptors").cloned().unwrap_or(json!({}));
    if *principal == Principal::OperatorKey {
        let explicit_empty = descs
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.values().all(|d| !grants_anything(d)));
        if !explicit_empty {
            return bad_request(
                "illegal_argument_exception",
                "creating derived api keys requires an explicit role descriptor that is empty \
                 (has no privileges)",
            );
        }
    }
    let metadata = body.get("metadata").cloned().unwrap_or(json!({}));
    let key = new_key(s, name, &descs, &metadata);
    let answer = json!({"id": key.id, "name": key.name, "api_key": key.secret,
                        "encoded": key.encoded()});
    s.keys.push(key);
    reply(200, answer)
}

fn key_json(k: &Key) -> Value {
    let mut v = json!({
        "id": k.id, "name": k.name, "type": "rest", "creation": k.creation,
        "invalidated": k.invalidated, "username": k.owner, "realm": REALM,
        "realm_type": "native", "metadata": k.metadata,
        "role_descriptors": k.role_descriptors
    });
    if let Some(t) = k.invalidation {
        v["invalidation"] = json!(t);
    }
    v
}

fn get_keys(s: &State_, query: &BTreeMap<String, String>) -> Response {
    let active_only = query.get("active_only").map(String::as_str) == Some("true");
    let by_id = query.get("id");
    let found: Vec<Value> = s
        .keys
        .iter()
        .filter(|k| by_id.is_none_or(|id| &k.id == id))
        .filter(|k| {
            query
                .get("name")
                .is_none_or(|n| pattern_matches(n, &k.name))
        })
        .filter(|k| query.get("username").is_none_or(|u| &k.owner == u))
        .filter(|k| !(active_only && k.invalidated))
        .map(key_json)
        .collect();
    // RestGetApiKeyAction: empty answer is 404 only when an ID was asked for.
    let status = if found.is_empty() && by_id.is_some() {
        404
    } else {
        200
    };
    reply(status, json!({"api_keys": found}))
}

fn invalidate_keys(s: &mut State_, body: &Value) -> Response {
    let mut ids = strings(body.get("ids"));
    if let Some(id) = body.get("id").and_then(Value::as_str) {
        ids.push(id.to_string());
    }
    let name = body.get("name").and_then(Value::as_str);
    let username = body.get("username").and_then(Value::as_str);
    if ids.is_empty() && name.is_none() && username.is_none() {
        return validation(
            "One of [api key id(s), api key name, username, realm name] must be specified if \
             [owner] flag is false",
        );
    }
    if !ids.is_empty() && name.is_some() {
        return validation("only one of [api key id(s), api key name] can be specified");
    }
    let now = s.tick();
    let mut done = Vec::new();
    for k in s.keys.iter_mut().filter(|k| !k.invalidated) {
        let hit = (!ids.is_empty() && ids.contains(&k.id))
            || name.is_some_and(|n| pattern_matches(n, &k.name))
            || username.is_some_and(|u| u == k.owner && ids.is_empty() && name.is_none());
        if hit {
            k.invalidated = true;
            k.invalidation = Some(now);
            done.push(k.id.clone());
        }
    }
    reply(
        200,
        json!({"invalidated_api_keys": done, "previously_invalidated_api_keys": [],
               "error_count": 0}),
    )
}
