//! A stateful test double of the Cloud SQL Admin API v1 (REST), on 127.0.0.1.
//!
//! Every request is validated against Google's discovery document
//! (`tests/specs/sqladmin.v1.discovery.json`, as shipped in google-api-python-client 2.202.0,
//! Apache-2.0): the method must exist for the HTTP verb and path template, every query
//! parameter must be one of the method's or a system parameter, every field of the JSON body
//! must exist in the method's request schema (recursively, following `$ref`), values must
//! have the schema's type, and enum values must be among the schema's enum values. A
//! violation is answered like Google answers a malformed request (`400`,
//! `{"error": {"code": 400, "message": ..., "status": "INVALID_ARGUMENT"}}`) and recorded in
//! [`CloudSqlDouble::violations`], which every test asserts empty. The double's own answers
//! are checked against the response schemas too (a bug in the double is a violation).
//!
//! Behaviour follows the published Cloud SQL Admin API reference
//! (<https://cloud.google.com/sql/docs/postgres/admin-api/rest/v1>) and its error pages
//! (<https://cloud.google.com/sql/docs/postgres/admin-api-error-messages>,
//! <https://cloud.google.com/sql/docs/postgres/error-messages>):
//! - errors carry Google's JSON error body with the legacy `errors[].reason`
//!   (`instanceDoesNotExist`, `instanceAlreadyExists`, `operationInProgress`,
//!   `notAuthorized`, `invalid`);
//! - `instances.insert` answers an `Operation`; the instance is `PENDING_CREATE` until it has
//!   been observed [`CloudSqlDouble::set_create_polls`] times (`instances.get`,
//!   `operations.get` or `operations.list` for it), then `RUNNABLE` with its IP addresses;
//! - other operations finish after [`CloudSqlDouble::set_op_polls`] such observations
//!   (default 0: `DONE` in the answer);
//! - only one operation runs per instance: a write while one runs gets
//!   `409 Operation failed because another operation was already in progress.`;
//! - an existing name on insert gets `409 instanceAlreadyExists`; a name of a recently
//!   deleted instance too, with Google's "can't reuse the name ... one week" message,
//!   while `get` answers `404`;
//! - a protected instance (`deletionProtectionEnabled`) cannot be deleted (`400`);
//! - an omitted `region` defaults to `us-central1`, as in the API;
//! - a project other than the double's gets `403 notAuthorized`.
//!
//! Enums: the SDK sends enum numbers (proto JSON with `$alt=json;enum-encoding=int`). The
//! discovery document lists names only, so numbers are mapped to names through the
//! generated `google-cloud-sql-v1` enum types (the proto numbering) and the name is then
//! checked against the discovery enum. A number on a field the double has no mapping for is
//! a violation. Answers use numbers when the request asked for `enum-encoding=int`.
//!
//! Failure injection: [`CloudSqlDouble::fail_next_operation`] makes an accepted request's
//! operation finish `DONE` with `error.errors[]` and the change not made.
//! [`CloudSqlDouble::fail_nth`] fails the k-th request from now, either
//! before performing it or after performing it (the answer is lost and the client sees a
//! `500`). [`CloudSqlDouble::queue_error`] answers the next request with a given error.
//!
//! Users and databases: `users.insert`, `users.update`, `users.delete` and
//! `databases.insert` act on real roles and databases of the PostgreSQL test server that
//! serves every instance (`cloudsql_pg.rs`, following Cloud SQL's documented built-in users);
//! the operator's SQL goes there too ([`CloudSqlDouble::sql_endpoint`]).
//!
//! Quota: [`CloudSqlDouble::set_requests_per_minute`] imposes the Admin API's rate quota
//! (off by default), and [`CloudSqlDouble::rate_limited`] counts the `429`s it gave.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use google_cloud_sql_v1::model as m;

use super::cloudsql_pg::{PgSide, SqlAction};

// ---------------------------------------------------------------------------------------
// The discovery document
// ---------------------------------------------------------------------------------------

/// One method of the discovery document.
pub struct SpecMethod {
    pub id: String,
    pub http_method: String,
    segments: Vec<String>,
    def: Value,
}

/// Google's discovery document of the Cloud SQL Admin API v1, indexed.
pub struct Spec {
    doc: Value,
    methods: Vec<SpecMethod>,
}

type Codec = (fn(i32) -> Option<String>, fn(&str) -> Option<i32>);

macro_rules! codec {
    ($t:ty) => {
        Some((
            (|n: i32| <$t>::from(n).name().map(str::to_string)) as fn(i32) -> Option<String>,
            (|s: &str| <$t>::from(s).value()) as fn(&str) -> Option<i32>,
        ))
    };
}

/// Proto numbering of the enum fields the double knows, from the generated SDK types.
fn codec(schema: &str, prop: &str) -> Option<Codec> {
    match (schema, prop) {
        ("DatabaseInstance", "state") => codec!(m::database_instance::SqlInstanceState),
        ("DatabaseInstance", "databaseVersion") => codec!(m::SqlDatabaseVersion),
        ("DatabaseInstance", "instanceType") => codec!(m::SqlInstanceType),
        ("DatabaseInstance", "backendType") => codec!(m::SqlBackendType),
        ("DatabaseInstance", "suspensionReason") => codec!(m::SqlSuspensionReason),
        ("DatabaseInstance", "sqlNetworkArchitecture") => {
            codec!(m::database_instance::SqlNetworkArchitecture)
        }
        ("Settings", "availabilityType") => codec!(m::SqlAvailabilityType),
        ("Settings", "pricingPlan") => codec!(m::SqlPricingPlan),
        ("Settings", "replicationType") => codec!(m::SqlReplicationType),
        ("Settings", "activationPolicy") => codec!(m::settings::SqlActivationPolicy),
        ("Settings", "dataDiskType") => codec!(m::SqlDataDiskType),
        ("Settings", "edition") => codec!(m::settings::Edition),
        ("Settings", "connectorEnforcement") => codec!(m::settings::ConnectorEnforcement),
        ("IpConfiguration", "sslMode") => codec!(m::ip_configuration::SslMode),
        ("IpMapping", "type") => codec!(m::SqlIpAddressType),
        ("Operation", "status") => codec!(m::operation::SqlOperationStatus),
        ("Operation", "operationType") => codec!(m::operation::SqlOperationType),
        ("User", "type") => codec!(m::user::SqlUserType),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A request body: validate; enum numbers become names.
    Request,
    /// An answer: validate; enum names become numbers when `ints`.
    Response { ints: bool },
}

impl Spec {
    /// Loads `tests/specs/sqladmin.v1.discovery.json` once per process.
    pub fn get() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/specs/sqladmin.v1.discovery.json"
            );
            let doc: Value = serde_json::from_str(
                &std::fs::read_to_string(path).expect("discovery document present"),
            )
            .expect("discovery document is JSON");
            let mut methods = Vec::new();
            fn walk(res: &Value, out: &mut Vec<SpecMethod>) {
                if let Some(ms) = res.get("methods").and_then(Value::as_object) {
                    for def in ms.values() {
                        let path = def
                            .get("flatPath")
                            .or_else(|| def.get("path"))
                            .and_then(Value::as_str)
                            .unwrap();
                        out.push(SpecMethod {
                            id: def["id"].as_str().unwrap().to_string(),
                            http_method: def["httpMethod"].as_str().unwrap().to_string(),
                            segments: path.split('/').map(str::to_string).collect(),
                            def: def.clone(),
                        });
                    }
                }
                if let Some(rs) = res.get("resources").and_then(Value::as_object) {
                    for r in rs.values() {
                        walk(r, out);
                    }
                }
            }
            walk(&doc, &mut methods);
            Spec { doc, methods }
        })
    }

    pub fn revision(&self) -> &str {
        self.doc["revision"].as_str().unwrap_or_default()
    }

    /// The method for `verb` and `path` (without the leading `/`), with its path parameters.
    pub fn find(&self, verb: &str, path: &str) -> Option<(&SpecMethod, HashMap<String, String>)> {
        let parts: Vec<&str> = path.split('/').collect();
        let mut best: Option<(&SpecMethod, HashMap<String, String>, usize)> = None;
        for sm in self.methods.iter().filter(|m| m.http_method == verb) {
            if sm.segments.len() != parts.len() {
                continue;
            }
            let mut vars = HashMap::new();
            let mut literals = 0;
            let ok =
                sm.segments
                    .iter()
                    .zip(&parts)
                    .all(|(t, p)| match (t.find('{'), t.find('}')) {
                        (Some(a), Some(b)) => {
                            let (pre, name, post) = (&t[..a], &t[a + 1..b], &t[b + 1..]);
                            if p.len() > pre.len() + post.len()
                                && p.starts_with(pre)
                                && p.ends_with(post)
                            {
                                vars.insert(
                                    name.trim_start_matches('+').to_string(),
                                    p[pre.len()..p.len() - post.len()].to_string(),
                                );
                                true
                            } else {
                                false
                            }
                        }
                        _ => {
                            literals += 1;
                            t == p
                        }
                    });
            if ok && best.as_ref().is_none_or(|b| literals > b.2) {
                best = Some((sm, vars, literals));
            }
        }
        best.map(|(m, v, _)| (m, v))
    }

    /// Problems with the query parameters of a call of `sm`.
    pub fn check_query(&self, sm: &SpecMethod, query: &[(String, String)]) -> Vec<String> {
        let mut errs = Vec::new();
        let params = sm.def.get("parameters").and_then(Value::as_object);
        let global = self.doc["parameters"].as_object().unwrap();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, v) in query {
            *seen.entry(k.as_str()).or_default() += 1;
            // `$alt` is the system parameter `alt` in its `$` spelling (see
            // https://cloud.google.com/apis/docs/system-parameters), with the
            // `enum-encoding=int` option of the REST/JSON transcoding.
            if k == "$alt" {
                let mut parts = v.split(';');
                let alt = parts.next().unwrap_or_default();
                if !enum_values(&global["alt"]).iter().any(|e| e == alt) {
                    errs.push(format!("Invalid value for $alt: \"{v}\""));
                }
                for opt in parts {
                    if opt != "enum-encoding=int" {
                        errs.push(format!("Unknown $alt option \"{opt}\""));
                    }
                }
                continue;
            }
            let def = params
                .and_then(|p| p.get(k))
                .filter(|d| d["location"] == "query")
                .or_else(|| global.get(k));
            let Some(def) = def else {
                errs.push(format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot bind query parameter. Field '{k}' could not be found in request message."));
                continue;
            };
            let ty = def["type"].as_str().unwrap_or("string");
            let ok = match ty {
                "boolean" => v == "true" || v == "false",
                "integer" => v.parse::<i64>().is_ok(),
                _ if def["format"] == "int64" => v.parse::<i64>().is_ok(),
                _ => true,
            };
            if !ok {
                errs.push(format!("Invalid value at '{k}' ({ty}), \"{v}\""));
            }
            let allowed = enum_values(def);
            if !allowed.is_empty() && !allowed.iter().any(|e| e == v) {
                errs.push(format!(
                    "Invalid value at '{k}', \"{v}\" is not one of {allowed:?}"
                ));
            }
        }
        for (k, n) in seen {
            let repeated = params
                .and_then(|p| p.get(k))
                .is_some_and(|d| d["repeated"] == true);
            if n > 1 && !repeated {
                errs.push(format!("Query parameter '{k}' given {n} times"));
            }
        }
        if let Some(p) = params {
            for (k, d) in p {
                if d["location"] == "query"
                    && d["required"] == true
                    && !query.iter().any(|(q, _)| q == k)
                {
                    errs.push(format!("Required query parameter '{k}' missing"));
                }
            }
        }
        errs
    }

    fn schema(&self, name: &str) -> &Value {
        &self.doc["schemas"][name]
    }

    /// Validates `v` against schema `name`; returns it with enum numbers as names.
    pub fn check_body(&self, name: &str, v: &Value) -> Result<Value, Vec<String>> {
        let mut errs = Vec::new();
        let out = self.walk(
            &json!({ "$ref": name }),
            v,
            "body",
            ("", ""),
            Mode::Request,
            &mut errs,
        );
        if errs.is_empty() { Ok(out) } else { Err(errs) }
    }

    /// Validates an answer of schema `name` and encodes its enums as asked.
    pub fn encode_answer(&self, name: &str, v: &Value, ints: bool) -> Result<Value, Vec<String>> {
        let mut errs = Vec::new();
        let out = self.walk(
            &json!({ "$ref": name }),
            v,
            "answer",
            ("", ""),
            Mode::Response { ints },
            &mut errs,
        );
        if errs.is_empty() { Ok(out) } else { Err(errs) }
    }

    fn walk(
        &self,
        schema: &Value,
        v: &Value,
        at: &str,
        ctx: (&str, &str),
        mode: Mode,
        errs: &mut Vec<String>,
    ) -> Value {
        if v.is_null() {
            return Value::Null;
        }
        let (schema, owner) = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => (self.schema(r), r),
            None => (schema, ctx.0),
        };
        if schema.is_null() {
            errs.push(format!(
                "{at}: schema {owner} is not in the discovery document"
            ));
            return v.clone();
        }
        let allowed = enum_values(schema);
        if !allowed.is_empty() {
            let name = match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => match (n.as_i64(), codec(ctx.0, ctx.1)) {
                    (Some(i), Some((to_name, _))) => match to_name(i as i32) {
                        Some(name) => Some(name),
                        None => {
                            errs.push(format!(
                                "Invalid value at '{at}' (TYPE_ENUM), {i}: not a {}.{} number",
                                ctx.0, ctx.1
                            ));
                            return v.clone();
                        }
                    },
                    _ => {
                        errs.push(format!(
                            "{at}: enum number {n} on {}.{}, which the double cannot map",
                            ctx.0, ctx.1
                        ));
                        return v.clone();
                    }
                },
                _ => None,
            };
            let Some(name) = name else {
                errs.push(format!("Invalid value at '{at}' (TYPE_ENUM), {v}"));
                return v.clone();
            };
            if !allowed.contains(&name) {
                errs.push(format!(
                    "Invalid value at '{at}' (TYPE_ENUM), \"{name}\" is not one of {allowed:?}"
                ));
                return v.clone();
            }
            return match mode {
                Mode::Response { ints: true } => match codec(ctx.0, ctx.1) {
                    Some((_, to_int)) => to_int(&name).map(Value::from).unwrap_or(json!(name)),
                    None => json!(name),
                },
                _ => json!(name),
            };
        }
        match schema["type"].as_str().unwrap_or("object") {
            "object" => {
                let Some(obj) = v.as_object() else {
                    errs.push(format!("Invalid value at '{at}' (TYPE_MESSAGE), {v}"));
                    return v.clone();
                };
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties");
                let mut out = Map::new();
                for (k, x) in obj {
                    let sub_at = format!("{at}.{k}");
                    if let Some(p) = props.and_then(|p| p.get(k)) {
                        out.insert(k.clone(), self.walk(p, x, &sub_at, (owner, k), mode, errs));
                    } else if let Some(a) = extra {
                        out.insert(k.clone(), self.walk(a, x, &sub_at, (owner, k), mode, errs));
                    } else {
                        errs.push(format!(
                            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': \
                             Cannot find field."
                        ));
                    }
                }
                Value::Object(out)
            }
            "array" => {
                let Some(items) = v.as_array() else {
                    errs.push(format!("Invalid value at '{at}' (TYPE_LIST), {v}"));
                    return v.clone();
                };
                Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            self.walk(&schema["items"], x, &format!("{at}[{i}]"), ctx, mode, errs)
                        })
                        .collect(),
                )
            }
            "string" => {
                let ok = match schema["format"].as_str() {
                    Some("int64") | Some("uint64") => {
                        v.as_str().is_some_and(|s| s.parse::<i128>().is_ok()) || v.is_i64()
                    }
                    Some("google-datetime") => v
                        .as_str()
                        .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()),
                    _ => v.is_string(),
                };
                if !ok {
                    errs.push(format!("Invalid value at '{at}' (TYPE_STRING), {v}"));
                }
                v.clone()
            }
            "integer" => {
                if !(v.is_i64() || v.as_str().is_some_and(|s| s.parse::<i64>().is_ok())) {
                    errs.push(format!("Invalid value at '{at}' (TYPE_INT32), {v}"));
                }
                v.clone()
            }
            "number" => {
                if !v.is_number() {
                    errs.push(format!("Invalid value at '{at}' (TYPE_DOUBLE), {v}"));
                }
                v.clone()
            }
            "boolean" => {
                if !v.is_boolean() {
                    errs.push(format!("Invalid value at '{at}' (TYPE_BOOL), {v}"));
                }
                v.clone()
            }
            "any" => v.clone(),
            other => {
                errs.push(format!("{at}: unsupported schema type {other}"));
                v.clone()
            }
        }
    }
}

fn enum_values(def: &Value) -> Vec<String> {
    def.get("enum")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The double
// ---------------------------------------------------------------------------------------

/// One request the double received.
#[derive(Clone, Debug)]
pub struct Call {
    /// Discovery method ID, e.g. `sql.instances.insert` (`?` when there is none).
    pub id: String,
    pub method: String,
    pub path: String,
    pub body: Option<Value>,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// When an injected failure strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The request is not performed; the client gets a 500.
    Before,
    /// The request is performed; the answer is lost and the client gets a 500.
    After,
}

struct Op {
    json: Value,
    instance: String,
    remaining: u32,
    /// The instance becomes RUNNABLE / is removed when this operation finishes.
    effect: Effect,
    /// `(code, message)` of the error this operation finishes with, if it fails.
    error: Option<(String, String)>,
}

#[derive(Clone, PartialEq)]
enum Effect {
    None,
    Runnable,
    Remove,
    /// A failed create: the instance is left `FAILED` ("The creation of the instance
    /// failed or a fatal error occurred during maintenance", `SqlInstanceState`).
    Failed,
}

/// An operation failure armed with [`CloudSqlDouble::fail_next_operation`].
struct FailSpec {
    operation_type: String,
    code: String,
    message: String,
}

struct Queued {
    id: Option<String>,
    code: u16,
    status: String,
    reason: String,
    message: String,
}

#[derive(Default)]
struct St {
    calls: Vec<Call>,
    violations: Vec<String>,
    instances: BTreeMap<String, Value>,
    reserved: BTreeSet<String>,
    ops: Vec<Op>,
    databases: BTreeMap<(String, String), Value>,
    /// (instance, user) -> password.
    users: BTreeMap<(String, String), String>,
    counter: u64,
    fault: Option<(u64, FaultMode)>,
    queued: VecDeque<Queued>,
    create_polls: u32,
    op_polls: u32,
    reported_region: Option<String>,
    failing: Vec<FailSpec>,
    /// Final backups taken on delete: (instance, expiry time).
    final_backups: Vec<(String, String)>,
    seq: u64,
    conflicts: u64,
    faults_fired: u64,
    /// The project's request quota per minute (`None`: unlimited).
    quota: Option<u32>,
    /// When each request the quota admitted in the last minute arrived.
    admitted: VecDeque<std::time::Instant>,
    /// `429 RESOURCE_EXHAUSTED` answers given.
    rate_limited: u64,
    /// Changes the server must see, taken by the request that made them.
    pending_sql: Vec<SqlAction>,
    /// Every password `users.insert` and `users.update` set.
    passwords: Vec<String>,
}

struct Inner {
    project: String,
    st: Mutex<St>,
    pg: PgSide,
}

/// The Cloud SQL Admin API double. Dropping it stops the server and removes what its
/// instances had on the PostgreSQL server (as deleting them would).
pub struct CloudSqlDouble {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    admin_user: String,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for CloudSqlDouble {
    fn drop(&mut self) {
        self.task.abort();
        let actions = {
            let mut st = self.st();
            let names: Vec<String> = st.instances.keys().cloned().collect();
            let mut actions = Vec::new();
            for inst in names {
                st.instances_gone(&inst);
                actions.append(&mut st.pending_sql);
            }
            actions.push(SqlAction::DropInstance {
                tenant: None,
                users: vec![self.admin_user.clone()],
            });
            actions
        };
        self.inner.pg.apply_blocking(actions);
    }
}

const RESERVED_MESSAGE: &str = "The Cloud SQL instance already exists. When you delete an \
    instance, you can't reuse the name of the deleted instance until one week from the \
    deletion date.";

fn google_error(code: u16, status: &str, reason: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "errors": [{ "message": message, "domain": "global", "reason": reason }],
            "status": status,
        }
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn not_found_instance() -> Response {
    google_error(
        404,
        "NOT_FOUND",
        "instanceDoesNotExist",
        "The Cloud SQL instance does not exist.",
    )
}

fn in_progress() -> Response {
    google_error(
        409,
        "ABORTED",
        "operationInProgress",
        "Operation failed because another operation was already in progress. Try your \
         request after the current operation is complete.",
    )
}

/// Google Cloud's rules for `userLabels` (not in the discovery document): at most 64
/// labels; keys 1-63 characters starting with a lowercase letter, values 0-63 characters,
/// both of lowercase letters, digits, `_` and `-`.
fn label_error(labels: &Value) -> Option<String> {
    let map = labels.as_object()?;
    let ok = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    };
    if map.len() > 64 {
        return Some("Invalid request: more than 64 user labels.".into());
    }
    map.iter().find_map(|(k, v)| {
        let v = v.as_str().unwrap_or_default();
        let key_ok = ok(k) && k.starts_with(|c: char| c.is_ascii_lowercase());
        (!key_ok || !ok(v)).then(|| format!("Invalid request: invalid user label {k}={v}."))
    })
}

/// The `sslMode` / legacy `requireSsl` pairs PostgreSQL accepts (`IpConfiguration.sslMode`
/// in the discovery document): `ALLOW_UNENCRYPTED_AND_ENCRYPTED` and `ENCRYPTED_ONLY` with
/// `requireSsl` false or cleared, `TRUSTED_CLIENT_CERTIFICATE_REQUIRED` with it true or
/// cleared.
fn ssl_error(ip: &Value) -> Option<String> {
    let require = ip["requireSsl"].as_bool()?;
    let mode = ip["sslMode"].as_str()?;
    let ok = match mode {
        "ALLOW_UNENCRYPTED_AND_ENCRYPTED" | "ENCRYPTED_ONLY" => !require,
        "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" => require,
        _ => true,
    };
    (!ok).then(|| format!("Invalid request: sslMode {mode} conflicts with requireSsl={require}."))
}

/// Google's answer to a request over the project's quota, as the Admin API gives it
/// (`429`, `RESOURCE_EXHAUSTED`, legacy reason `rateLimitExceeded`, an `ErrorInfo` with
/// `RATE_LIMIT_EXCEEDED`; see <https://cloud.google.com/sql/docs/quotas> and
/// <https://cloud.google.com/apis/design/errors#handling_errors>).
fn quota_exceeded(project: &str, limit: u32) -> Response {
    let message = format!(
        "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute per user' of \
         service 'sqladmin.googleapis.com' for consumer 'project:{project}'."
    );
    let body = json!({
        "error": {
            "code": 429,
            "message": message,
            "errors": [{ "message": message, "domain": "global", "reason": "rateLimitExceeded" }],
            "status": "RESOURCE_EXHAUSTED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RATE_LIMIT_EXCEEDED",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "sqladmin.googleapis.com",
                    "quota_metric": "sqladmin.googleapis.com/default",
                    "quota_limit": "defaultPerMinutePerUser",
                    "quota_limit_value": limit.to_string(),
                    "consumer": format!("projects/{project}"),
                },
            }],
        }
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn invalid(message: &str) -> Response {
    google_error(400, "INVALID_ARGUMENT", "invalid", message)
}

/// JSON merge of `patch` into `base` (objects recursively; anything else replaced).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

impl CloudSqlDouble {
    /// Starts the double for `project`.
    pub async fn start(project: &str) -> Self {
        Self::start_on(project, super::pg::Target::Pg17).await
    }

    /// The double with its instances served by the test server of `target` (the instances
    /// then run that major version).
    pub async fn start_on(project: &str, target: super::pg::Target) -> Self {
        Spec::get();
        let turn = PgSide::exclusive().await;
        let inner = Arc::new(Inner {
            project: project.to_string(),
            st: Mutex::new(St {
                create_polls: 1,
                ..St::default()
            }),
            pg: PgSide::start(target).await,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let admin_user = format!(
            "dtadmin_{}",
            (0..8).map(|_| fastrand::lowercase()).collect::<String>()
        );
        Self {
            addr,
            inner,
            task,
            admin_user,
            _turn: turn,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The PostgreSQL server behind every instance, as `host:port` (the operator's
    /// `sqlEndpoint`).
    pub fn sql_endpoint(&self) -> String {
        self.inner.pg.endpoint()
    }

    /// A name for the operator's admin user (`adminUser`) that no other double shares.
    pub fn admin_user(&self) -> String {
        self.admin_user.clone()
    }

    /// The server behind the instances.
    pub fn pg(&self) -> &PgSide {
        &self.inner.pg
    }

    /// What an earlier version of the operator made for a tenant with the Admin API: the
    /// built-in user `user` (with `password`) and the database of the same name on
    /// `instance`, as `users.insert` and `databases.insert` make them.
    pub async fn legacy_tenant_user(&self, instance: &str, user: &str, password: &str) {
        {
            let mut st = self.st();
            st.users
                .insert((instance.into(), user.into()), password.into());
            st.databases.insert(
                (instance.into(), user.into()),
                json!({"kind": "sql#database", "name": user, "instance": instance}),
            );
        }
        self.inner
            .pg
            .apply(vec![
                SqlAction::CreateUser {
                    name: user.into(),
                    password: password.into(),
                },
                SqlAction::CreateDatabase { name: user.into() },
            ])
            .await;
    }

    /// Every password the Admin API was given (to scan logs and errors for).
    pub fn passwords(&self) -> Vec<String> {
        self.st().passwords.clone()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.inner.st.lock().unwrap()
    }

    /// Observations (`instances.get`, `operations.get/list`) before a new instance is RUNNABLE.
    pub fn set_create_polls(&self, n: u32) {
        self.st().create_polls = n.max(1);
    }

    /// Observations before any other operation is DONE (0: DONE in the answer).
    pub fn set_op_polls(&self, n: u32) {
        self.st().op_polls = n;
    }

    /// New instances report this region instead of the requested one.
    pub fn report_region(&self, region: &str) {
        self.st().reported_region = Some(region.to_string());
    }

    /// Makes the next operation of type `operation_type` (`CREATE`, `UPDATE`,
    /// `CREATE_DATABASE`, `CREATE_USER`, `UPDATE_USER`, `DELETE`) fail: the request is
    /// accepted and answers an operation as usual, but the change is not made and the
    /// operation finishes `DONE` with `error.errors[{code, message}]`, as Cloud SQL reports
    /// a long-running operation that failed after the request returned
    /// (<https://cloud.google.com/sql/docs/postgres/admin-api/rest/v1/operations>). A failed
    /// `CREATE` leaves the instance `FAILED`.
    pub fn fail_next_operation(&self, operation_type: &str, code: &str, message: &str) {
        self.st().failing.push(FailSpec {
            operation_type: operation_type.to_string(),
            code: code.to_string(),
            message: message.to_string(),
        });
    }

    /// Moves every operation's times `secs` seconds into the past, as if that much time
    /// had passed since.
    pub fn age_operations(&self, secs: i64) {
        let mut st = self.st();
        for op in &mut st.ops {
            for k in ["insertTime", "startTime", "endTime"] {
                if let Some(ts) = op.json[k]
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                {
                    let aged = ts - jiff::SignedDuration::from_secs(secs);
                    op.json[k] = json!(aged.to_string());
                }
            }
        }
    }

    /// Marks `name` as the name of a recently deleted instance.
    pub fn reserve(&self, name: &str) {
        self.st().reserved.insert(name.to_string());
    }

    /// Fails the k-th request from now (1 = the next one).
    pub fn fail_nth(&self, k: u64, mode: FaultMode) {
        let mut st = self.st();
        st.fault = Some((st.counter + k, mode));
    }

    /// Cancels a failure that has not struck yet.
    pub fn disarm(&self) {
        self.st().fault = None;
    }

    /// Imposes the Admin API's rate quota: at most `n` requests in any 60 seconds, the
    /// rest answered `429 RESOURCE_EXHAUSTED` (not performed, and not counted against the
    /// quota). The documented default is 180 requests per minute per project and user
    /// (<https://cloud.google.com/sql/docs/quotas#fixed-limits>); Google does not say over
    /// which window it counts, so the double takes the strictest reading, a sliding minute:
    /// a client that bursts is refused even when its average is under the quota. `None`
    /// (the default) lifts it.
    pub fn set_requests_per_minute(&self, n: Option<u32>) {
        let mut st = self.st();
        st.quota = n;
        st.admitted.clear();
    }

    /// How many requests the quota refused with `429`.
    pub fn rate_limited(&self) -> u64 {
        self.st().rate_limited
    }

    /// How many injected failures struck.
    pub fn faults_fired(&self) -> u64 {
        self.st().faults_fired
    }

    /// Answers the next request with Google's error body (the request is not performed).
    pub fn queue_error(&self, code: u16, status: &str, reason: &str, message: &str) {
        self.queue(None, code, status, reason, message);
    }

    /// Answers the next call of method `id` (e.g. `sql.users.update`) with Google's error
    /// body; the request is not performed. `{password}` in `message` is replaced by the
    /// password in the request body, like a service that echoes its input.
    pub fn queue_error_for(&self, id: &str, code: u16, status: &str, reason: &str, message: &str) {
        self.queue(Some(id), code, status, reason, message);
    }

    fn queue(&self, id: Option<&str>, code: u16, status: &str, reason: &str, message: &str) {
        self.st().queued.push_back(Queued {
            id: id.map(str::to_string),
            code,
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }

    pub fn writes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_write).collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.st().violations.clone()
    }

    /// How many `409 operationInProgress` answers were given.
    pub fn conflicts(&self) -> u64 {
        self.st().conflicts
    }

    pub fn request_count(&self) -> u64 {
        self.st().counter
    }

    pub fn instance_names(&self) -> Vec<String> {
        self.st().instances.keys().cloned().collect()
    }

    pub fn instance(&self, name: &str) -> Option<Value> {
        self.st().instances.get(name).cloned()
    }

    /// Changes the stored instance as if someone edited it in the console.
    pub fn edit_instance(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.st();
        f(st.instances.get_mut(name).expect("instance exists"));
    }

    /// Final backups taken on delete: (instance, expiry as RFC 3339).
    pub fn final_backups(&self) -> Vec<(String, String)> {
        self.st().final_backups.clone()
    }

    pub fn databases(&self) -> Vec<(String, String)> {
        self.st().databases.keys().cloned().collect()
    }

    pub fn users(&self) -> Vec<(String, String)> {
        self.st().users.keys().cloned().collect()
    }

    /// Whether `user` accepts `password`: a real login to database `user` (the tenant's
    /// database has its role's name) on the server behind `instance`; `false` when there
    /// is no such instance.
    pub async fn login(&self, instance: &str, user: &str, password: &str) -> bool {
        if !self.st().instances.contains_key(instance) {
            return false;
        }
        self.inner.pg.connect(user, password, user).await.is_ok()
    }

    pub fn operations_running(&self) -> usize {
        self.st()
            .ops
            .iter()
            .filter(|o| o.json["status"] != "DONE")
            .count()
    }
}

impl St {
    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn busy(&self, inst: &str) -> bool {
        self.ops
            .iter()
            .any(|o| o.instance == inst && o.json["status"] != "DONE")
    }

    /// One observation of `inst`: running operations advance.
    fn tick(&mut self, inst: &str) {
        let mut effects = Vec::new();
        for op in self
            .ops
            .iter_mut()
            .filter(|o| o.instance == inst && o.json["status"] != "DONE")
        {
            op.remaining = op.remaining.saturating_sub(1);
            if op.remaining == 0 {
                finish(op);
                effects.push(op.effect.clone());
            }
        }
        for e in effects {
            self.apply(inst, e);
        }
    }

    fn apply(&mut self, inst: &str, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Runnable => {
                let n = self.next_id();
                if let Some(i) = self.instances.get_mut(inst) {
                    i["state"] = json!("RUNNABLE");
                    let ip = &i["settings"]["ipConfiguration"];
                    let mut ips = Vec::new();
                    if ip["ipv4Enabled"] != false {
                        ips.push(json!({"type": "PRIMARY", "ipAddress": format!("34.1.0.{n}")}));
                    }
                    if ip["privateNetwork"].as_str().is_some_and(|s| !s.is_empty()) {
                        ips.push(json!({"type": "PRIVATE", "ipAddress": format!("10.8.0.{n}")}));
                    }
                    i["ipAddresses"] = Value::Array(ips);
                }
            }
            Effect::Failed => {
                if let Some(i) = self.instances.get_mut(inst) {
                    i["state"] = json!("FAILED");
                }
            }
            Effect::Remove => {
                self.instances_gone(inst);
                self.reserved.insert(inst.to_string());
            }
        }
    }

    /// `inst` is gone, and with it everything in it on the server (see `cloudsql_pg`).
    fn instances_gone(&mut self, inst: &str) {
        let tenant = self.instances.remove(inst).and_then(|i| {
            i["settings"]["userLabels"]["tenant"]
                .as_str()
                .map(str::to_string)
        });
        self.databases.retain(|(i, _), _| i != inst);
        let mine: Vec<String> = self
            .users
            .keys()
            .filter(|(i, _)| i == inst)
            .map(|(_, u)| u.clone())
            .collect();
        self.users.retain(|(i, _), _| i != inst);
        let users = mine
            .into_iter()
            .filter(|u| !self.users.keys().any(|(_, other)| other == u))
            .collect();
        self.pending_sql
            .push(SqlAction::DropInstance { tenant, users });
    }

    fn operation(
        &mut self,
        project: &str,
        inst: &str,
        ty: &str,
        polls: u32,
        effect: Effect,
    ) -> Value {
        self.operation_ending(project, inst, ty, polls, effect, None)
    }

    /// The armed failure for the next operation of type `ty`, if any (consumed).
    fn failure(&mut self, ty: &str) -> Option<(String, String)> {
        let at = self.failing.iter().position(|f| f.operation_type == ty)?;
        let f = self.failing.remove(at);
        Some((f.code, f.message))
    }

    /// An operation that finishes with `error` (when given) instead of succeeding.
    fn operation_ending(
        &mut self,
        project: &str,
        inst: &str,
        ty: &str,
        polls: u32,
        effect: Effect,
        error: Option<(String, String)>,
    ) -> Value {
        let id = format!("op-{:08x}", self.next_id() * 2654435761 % 0xffff_ffff);
        let done = polls == 0;
        let mut json = json!({
            "kind": "sql#operation",
            "name": id,
            "status": "RUNNING",
            "operationType": ty,
            "user": "operator@example.iam.gserviceaccount.com",
            "insertTime": now(),
            "startTime": now(),
            "targetId": inst,
            "targetProject": project,
            "targetLink": format!("https://sqladmin.googleapis.com/v1/projects/{project}/instances/{inst}"),
            "selfLink": format!("https://sqladmin.googleapis.com/v1/projects/{project}/operations/{id}"),
        });
        let mut op = Op {
            json: Value::Null,
            instance: inst.to_string(),
            remaining: polls,
            effect: effect.clone(),
            error,
        };
        if done {
            op.json = json;
            finish(&mut op);
            json = op.json.clone();
        } else {
            op.json = json.clone();
        }
        self.ops.push(op);
        if done {
            self.apply(inst, effect);
        }
        json
    }
}

/// Marks `op` DONE now. A failing one carries `error` the way the API reports it: the
/// operation is `DONE` and `error.errors[]` holds `code` and `message` (`Operation`,
/// `OperationErrors`, `OperationError` in the discovery document).
fn finish(op: &mut Op) {
    op.json["status"] = json!("DONE");
    op.json["endTime"] = json!(now());
    if let Some((code, message)) = &op.error {
        op.json["error"] = json!({
            "kind": "sql#operationErrors",
            "errors": [{ "kind": "sql#operationError", "code": code, "message": message }],
        });
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut actions = Vec::new();
    let response = respond(&inner, method, uri, body, &mut actions);
    // What the request did to users and databases reaches the server before the answer.
    inner.pg.apply(actions).await;
    response
}

/// Answers one request; the changes the server must see go to `actions`.
fn respond(
    inner: &Inner,
    method: Method,
    uri: Uri,
    body: Bytes,
    actions: &mut Vec<SqlAction>,
) -> Response {
    let spec = Spec::get();
    let path = uri.path().trim_start_matches('/').to_string();
    let query: Vec<(String, String)> = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let ints = query
        .iter()
        .any(|(k, v)| k == "$alt" && v.contains("enum-encoding=int"));
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut st = inner.st.lock().unwrap();
                st.violations
                    .push(format!("{method} /{path}: body is not JSON: {e}"));
                return invalid(&format!("Invalid JSON payload received. {e}"));
            }
        }
    };
    let found = spec.find(method.as_str(), &path);
    let mut st = inner.st.lock().unwrap();
    st.counter += 1;
    st.calls.push(Call {
        id: found
            .as_ref()
            .map(|(m, _)| m.id.clone())
            .unwrap_or_else(|| "?".into()),
        method: method.to_string(),
        path: format!("/{path}"),
        body: body_json.clone(),
    });

    // 0. The project's rate quota, checked before anything else, as Google's front end does.
    if let Some(limit) = st.quota {
        let now = std::time::Instant::now();
        while st
            .admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(60))
        {
            st.admitted.pop_front();
        }
        if st.admitted.len() >= limit as usize {
            st.rate_limited += 1;
            return quota_exceeded(&inner.project, limit);
        }
        st.admitted.push_back(now);
    }

    // 1. The discovery document.
    let Some((sm, vars)) = found else {
        let msg = format!("no method for {method} /{path} in the discovery document");
        st.violations.push(msg.clone());
        return invalid(&msg);
    };
    let mut errs = spec.check_query(sm, &query);
    let request_schema = sm.def["request"]["$ref"].as_str();
    let body_norm = match (request_schema, &body_json) {
        (Some(schema), Some(b)) => match spec.check_body(schema, b) {
            Ok(v) => Some(v),
            Err(e) => {
                errs.extend(e);
                None
            }
        },
        (Some(_), None) => Some(json!({})),
        (None, Some(b)) if b != &json!({}) => {
            errs.push(format!("{}: the request body must be empty", sm.id));
            None
        }
        (None, _) => None,
    };
    if !errs.is_empty() {
        let msg = errs.join("; ");
        st.violations.push(format!("{} {}: {msg}", sm.id, path));
        return invalid(&msg);
    }

    // 2. Injected failures.
    if let Some(pos) = st
        .queued
        .iter()
        .position(|q| q.id.as_deref().is_none_or(|id| id == sm.id))
    {
        let q = st.queued.remove(pos).unwrap();
        let password = body_json
            .as_ref()
            .and_then(|b| b["password"].as_str())
            .unwrap_or_default();
        let message = q.message.replace("{password}", password);
        return google_error(q.code, &q.status, &q.reason, &message);
    }
    let fault = match st.fault {
        Some((at, mode)) if at == st.counter => {
            st.fault = None;
            st.faults_fired += 1;
            Some(mode)
        }
        _ => None,
    };
    if fault == Some(FaultMode::Before) {
        return google_error(
            500,
            "INTERNAL",
            "internalError",
            "Internal error encountered.",
        );
    }

    // 3. The service.
    let id = sm.id.clone();
    let response_schema = sm.def["response"]["$ref"].as_str().map(str::to_string);
    let answer = serve(inner, &mut st, &id, &vars, &query, body_norm);
    *actions = std::mem::take(&mut st.pending_sql);
    let answer = match answer {
        Ok(v) => v,
        Err(r) => {
            return if fault == Some(FaultMode::After) {
                google_error(
                    500,
                    "INTERNAL",
                    "internalError",
                    "Internal error encountered.",
                )
            } else {
                r
            };
        }
    };
    if fault == Some(FaultMode::After) {
        return google_error(
            500,
            "INTERNAL",
            "internalError",
            "Internal error encountered.",
        );
    }
    let encoded = match &response_schema {
        Some(schema) => match spec.encode_answer(schema, &answer, ints) {
            Ok(v) => v,
            Err(e) => {
                st.violations
                    .push(format!("double bug: answer of {id}: {}", e.join("; ")));
                answer
            }
        },
        None => answer,
    };
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        encoded.to_string(),
    )
        .into_response()
}

/// Performs a validated request; `Err` is an error answer.
#[allow(clippy::result_large_err)] // an axum Response, built once per request
fn serve(
    inner: &Inner,
    st: &mut St,
    id: &str,
    vars: &HashMap<String, String>,
    query: &[(String, String)],
    body: Option<Value>,
) -> Result<Value, Response> {
    let project = &inner.project;
    if vars.get("project").is_some_and(|p| p != project) {
        return Err(google_error(
            403,
            "PERMISSION_DENIED",
            "notAuthorized",
            "The client is not authorized to make this request.",
        ));
    }
    let inst = vars.get("instance").cloned().unwrap_or_default();
    let q = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let exists = |st: &St, i: &str| st.instances.contains_key(i);
    let polls = st.op_polls;
    match id {
        "sql.instances.get" => {
            st.tick(&inst);
            st.instances
                .get(&inst)
                .cloned()
                .ok_or_else(not_found_instance)
        }
        "sql.instances.insert" => {
            let mut b = body.unwrap_or_default();
            let name = b["name"].as_str().unwrap_or_default().to_string();
            let valid_name = !name.is_empty()
                && name.len() <= 84
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && !name.ends_with('-')
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
            if !valid_name {
                return Err(invalid("Invalid request: instance name is invalid."));
            }
            if b["settings"]["tier"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                return Err(invalid(
                    "Invalid request: Missing required field: settings.tier.",
                ));
            }
            if let Some(msg) = label_error(&b["settings"]["userLabels"])
                .or_else(|| ssl_error(&b["settings"]["ipConfiguration"]))
            {
                st.violations.push(format!("sql.instances.insert: {msg}"));
                return Err(invalid(&msg));
            }
            if exists(st, &name) {
                return Err(google_error(
                    409,
                    "ALREADY_EXISTS",
                    "instanceAlreadyExists",
                    "The Cloud SQL instance already exists.",
                ));
            }
            if st.reserved.contains(&name) {
                return Err(google_error(
                    409,
                    "ALREADY_EXISTS",
                    "instanceAlreadyExists",
                    RESERVED_MESSAGE,
                ));
            }
            let region = st.reported_region.clone().unwrap_or_else(|| {
                b["region"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .unwrap_or("us-central1")
                    .to_string()
            });
            let defaults = json!({
                "kind": "sql#instance",
                "state": "PENDING_CREATE",
                "project": project,
                "region": region,
                "gceZone": format!("{region}-a"),
                "connectionName": format!("{project}:{region}:{name}"),
                "selfLink": format!("https://sqladmin.googleapis.com/v1/projects/{project}/instances/{name}"),
                "instanceType": "CLOUD_SQL_INSTANCE",
                "backendType": "SECOND_GEN",
                "databaseVersion": "POSTGRES_16",
                "createTime": now(),
                "settings": {
                    "kind": "sql#settings",
                    "settingsVersion": "1",
                    "pricingPlan": "PER_USE",
                    "replicationType": "SYNCHRONOUS",
                    "activationPolicy": "ALWAYS",
                    "dataDiskType": "PD_SSD",
                    "storageAutoResize": true,
                    "availabilityType": "ZONAL",
                    "deletionProtectionEnabled": false,
                    "dataDiskSizeGb": "10",
                    "backupConfiguration": { "kind": "sql#backupConfiguration", "enabled": false },
                    // New instances accept unencrypted connections unless told otherwise.
                    "ipConfiguration": {
                        "ipv4Enabled": true,
                        "sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED",
                    },
                },
            });
            let mut inst_json = defaults;
            b["region"] = json!(region);
            b["connectionName"] = inst_json["connectionName"].clone();
            merge(&mut inst_json, &b);
            if inst_json["settings"]["backupConfiguration"]["enabled"] == true
                && inst_json["settings"]["backupConfiguration"]["startTime"].is_null()
            {
                inst_json["settings"]["backupConfiguration"]["startTime"] = json!("23:00");
            }
            st.instances.insert(name.clone(), inst_json);
            let polls = st.create_polls;
            let (effect, error) = match st.failure("CREATE") {
                Some(e) => (Effect::Failed, Some(e)),
                None => (Effect::Runnable, None),
            };
            Ok(st.operation_ending(project, &name, "CREATE", polls, effect, error))
        }
        "sql.instances.patch" => {
            if !exists(st, &inst) {
                return Err(not_found_instance());
            }
            if st.busy(&inst) {
                st.conflicts += 1;
                return Err(in_progress());
            }
            let b = body.unwrap_or_default();
            if let Some(msg) = label_error(&b["settings"]["userLabels"])
                .or_else(|| ssl_error(&b["settings"]["ipConfiguration"]))
            {
                st.violations.push(format!("sql.instances.patch: {msg}"));
                return Err(invalid(&msg));
            }
            if let Some(e) = st.failure("UPDATE") {
                return Ok(st.operation_ending(
                    project,
                    &inst,
                    "UPDATE",
                    polls,
                    Effect::None,
                    Some(e),
                ));
            }
            let i = st.instances.get_mut(&inst).unwrap();
            if let Some(s) = b.get("settings") {
                merge(&mut i["settings"], s);
            }
            let v = i["settings"]["settingsVersion"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(1);
            i["settings"]["settingsVersion"] = json!((v + 1).to_string());
            Ok(st.operation(project, &inst, "UPDATE", polls, Effect::None))
        }
        "sql.instances.delete" => {
            let Some(i) = st.instances.get(&inst) else {
                return Err(not_found_instance());
            };
            if i["settings"]["deletionProtectionEnabled"] == true {
                return Err(google_error(
                    400,
                    "FAILED_PRECONDITION",
                    "invalid",
                    "The instance is protected from deletion. Disable deletion protection on \
                     the instance and try again.",
                ));
            }
            if st.busy(&inst) {
                st.conflicts += 1;
                return Err(in_progress());
            }
            // The final backup (query parameters of `instances.delete`): `enableFinalBackup`
            // opts in; `finalBackupTtlDays` and `finalBackupExpiryTime` are a union (at
            // most one), 1-365 days (`gcloud sql instances delete`), 30 days by default.
            let final_backup = if q("enableFinalBackup") == "true" {
                let ttl = q("finalBackupTtlDays");
                let expiry = q("finalBackupExpiryTime");
                let now = jiff::Timestamp::now();
                let until = match (ttl.is_empty(), expiry.is_empty()) {
                    (false, false) => {
                        return Err(invalid(
                            "Invalid request: only one of finalBackupTtlDays and \
                             finalBackupExpiryTime may be set.",
                        ));
                    }
                    (false, true) => {
                        let days: i64 = ttl.parse().unwrap_or(0);
                        if !(1..=365).contains(&days) {
                            return Err(invalid(
                                "Invalid request: finalBackupTtlDays must be 1-365.",
                            ));
                        }
                        now + jiff::SignedDuration::from_hours(24 * days)
                    }
                    (true, false) => match expiry.parse::<jiff::Timestamp>() {
                        Ok(ts)
                            if ts > now
                                && ts <= now + jiff::SignedDuration::from_hours(24 * 365) =>
                        {
                            ts
                        }
                        _ => {
                            return Err(invalid(
                                "Invalid request: finalBackupExpiryTime must be in the next 365 days.",
                            ));
                        }
                    },
                    (true, true) => now + jiff::SignedDuration::from_hours(24 * 30),
                };
                Some(until.to_string())
            } else {
                None
            };
            if let Some(e) = st.failure("DELETE") {
                return Ok(st.operation_ending(
                    project,
                    &inst,
                    "DELETE",
                    polls,
                    Effect::None,
                    Some(e),
                ));
            }
            if let Some(until) = final_backup {
                st.final_backups.push((inst.clone(), until));
            }
            st.instances.get_mut(&inst).unwrap()["state"] = json!("PENDING_DELETE");
            Ok(st.operation(project, &inst, "DELETE", polls, Effect::Remove))
        }
        "sql.operations.get" => {
            let name = vars.get("operation").cloned().unwrap_or_default();
            let Some(target) = st
                .ops
                .iter()
                .find(|o| o.json["name"] == name.as_str())
                .map(|o| o.instance.clone())
            else {
                return Err(google_error(
                    404,
                    "NOT_FOUND",
                    "operationDoesNotExist",
                    &format!("The Cloud SQL operation {name} does not exist."),
                ));
            };
            st.tick(&target);
            Ok(st
                .ops
                .iter()
                .find(|o| o.json["name"] == name.as_str())
                .unwrap()
                .json
                .clone())
        }
        "sql.operations.list" => {
            let target = q("instance");
            st.tick(&target);
            let max: usize = q("maxResults").parse().unwrap_or(500);
            let items: Vec<Value> = st
                .ops
                .iter()
                .rev()
                .filter(|o| target.is_empty() || o.instance == target)
                .take(max)
                .map(|o| o.json.clone())
                .collect();
            Ok(json!({ "kind": "sql#operationsList", "items": items }))
        }
        "sql.databases.get" => {
            if !exists(st, &inst) {
                return Err(not_found_instance());
            }
            let db = vars.get("database").cloned().unwrap_or_default();
            st.databases
                .get(&(inst.clone(), db.clone()))
                .cloned()
                .ok_or_else(|| {
                    google_error(
                        404,
                        "NOT_FOUND",
                        "notFound",
                        &format!("Not Found: database \"{db}\" does not exist."),
                    )
                })
        }
        "sql.databases.insert" => {
            let Some(i) = st.instances.get(&inst) else {
                return Err(not_found_instance());
            };
            if i["state"] != "RUNNABLE" {
                return Err(invalid("Invalid request since instance is not running."));
            }
            if st.busy(&inst) {
                st.conflicts += 1;
                return Err(in_progress());
            }
            let b = body.unwrap_or_default();
            let db = b["name"].as_str().unwrap_or_default().to_string();
            if db.is_empty() {
                return Err(invalid("Invalid request: Missing required field: name."));
            }
            if st.databases.contains_key(&(inst.clone(), db.clone())) {
                return Err(google_error(
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                    &format!("database \"{db}\" already exists"),
                ));
            }
            if let Some(e) = st.failure("CREATE_DATABASE") {
                return Ok(st.operation_ending(
                    project,
                    &inst,
                    "CREATE_DATABASE",
                    polls,
                    Effect::None,
                    Some(e),
                ));
            }
            let n = st.next_id();
            st.databases.insert(
                (inst.clone(), db.clone()),
                json!({
                    "kind": "sql#database",
                    "name": db,
                    "instance": inst,
                    "project": project,
                    "charset": "UTF8",
                    "collation": "en_US.UTF8",
                    "etag": format!("etag-{n}"),
                    "selfLink": format!("https://sqladmin.googleapis.com/v1/projects/{project}/instances/{inst}/databases/{db}"),
                }),
            );
            st.pending_sql.push(SqlAction::CreateDatabase { name: db });
            Ok(st.operation(project, &inst, "CREATE_DATABASE", polls, Effect::None))
        }
        "sql.users.get" => {
            if !exists(st, &inst) {
                return Err(not_found_instance());
            }
            let name = vars.get("name").cloned().unwrap_or_default();
            if st.users.contains_key(&(inst.clone(), name.clone())) {
                Ok(json!({
                    "kind": "sql#user",
                    "name": name,
                    "instance": inst,
                    "project": project,
                    "type": "BUILT_IN",
                }))
            } else {
                Err(google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("Not Found: user \"{name}\" does not exist."),
                ))
            }
        }
        "sql.users.insert" | "sql.users.update" => {
            let Some(i) = st.instances.get(&inst) else {
                return Err(not_found_instance());
            };
            if i["state"] != "RUNNABLE" {
                return Err(invalid("Invalid request since instance is not running."));
            }
            if st.busy(&inst) {
                st.conflicts += 1;
                return Err(in_progress());
            }
            let b = body.unwrap_or_default();
            let name = if id == "sql.users.update" {
                q("name")
            } else {
                b["name"].as_str().unwrap_or_default().to_string()
            };
            let password = b["password"].as_str().unwrap_or_default().to_string();
            if name.is_empty() {
                return Err(invalid("Invalid request: Missing required field: name."));
            }
            let key = (inst.clone(), name.clone());
            let known = st.users.contains_key(&key);
            if id == "sql.users.insert" && known {
                return Err(google_error(
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                    &format!("user \"{name}\" already exists"),
                ));
            }
            if id == "sql.users.update" && !known {
                return Err(google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("Not Found: user \"{name}\" does not exist."),
                ));
            }
            let ty = if id == "sql.users.insert" {
                "CREATE_USER"
            } else {
                "UPDATE_USER"
            };
            if let Some(e) = st.failure(ty) {
                return Ok(st.operation_ending(project, &inst, ty, polls, Effect::None, Some(e)));
            }
            st.users.insert(key, password.clone());
            st.passwords.push(password.clone());
            st.pending_sql.push(if ty == "CREATE_USER" {
                SqlAction::CreateUser { name, password }
            } else {
                SqlAction::SetPassword { name, password }
            });
            Ok(st.operation(project, &inst, ty, polls, Effect::None))
        }
        "sql.users.delete" => {
            let Some(i) = st.instances.get(&inst) else {
                return Err(not_found_instance());
            };
            if i["state"] != "RUNNABLE" {
                return Err(invalid("Invalid request since instance is not running."));
            }
            if st.busy(&inst) {
                st.conflicts += 1;
                return Err(in_progress());
            }
            let name = q("name");
            if !st.users.contains_key(&(inst.clone(), name.clone())) {
                return Err(google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("Not Found: user \"{name}\" does not exist."),
                ));
            }
            if let Some(e) = st.failure("DELETE_USER") {
                return Ok(st.operation_ending(
                    project,
                    &inst,
                    "DELETE_USER",
                    polls,
                    Effect::None,
                    Some(e),
                ));
            }
            st.users.remove(&(inst.clone(), name.clone()));
            if !st.users.keys().any(|(_, u)| *u == name) {
                st.pending_sql.push(SqlAction::DeleteUser { name });
            }
            Ok(st.operation(project, &inst, "DELETE_USER", polls, Effect::None))
        }
        other => Err(google_error(
            501,
            "UNIMPLEMENTED",
            "notImplemented",
            &format!("{other} is not implemented by the double"),
        )),
    }
}
