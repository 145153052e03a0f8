//! Elasticsearch provider: one index per tenant, an index-scoped role and one API key, all
//! named `<indexPrefix><tenant>`, through the REST API.
//!
//! - Index: `GET /{index}` observes it; `PUT /{index}` creates it with
//!   `number_of_shards`/`number_of_replicas` from the configuration. Replicas are a dynamic
//!   setting and are brought back with `PUT /{index}/_settings`; the shard count of an
//!   existing index cannot change, so a difference is reported as a permanent error.
//! - Role: `PUT /_security/role/{name}` granting `read`, `write` and `view_index_metadata`
//!   on that one index and no cluster privileges; written only when `GET` shows a
//!   difference.
//! - API key: `POST /_security/api_key` with the same role descriptor. Elasticsearch shows a
//!   key's secret once, at creation, so the tenant Secret is the only copy: with a Secret
//!   the key is checked (listed by name, not invalidated, same ID, same descriptor, and it
//!   authenticates) and nothing is written; without one (first pass, a crash after the key
//!   was created, or a deliberate rotation) every key of that name is invalidated and one
//!   new key is created. Either way exactly one valid key remains.
//!
//! Each index is bound to the UID of the tenant that created it: `mappings._meta` holds
//! `{"dealerdesk.de/tenant-uid": "<uid>"}` (set at creation, read from `GET /{index}`,
//! updated with `PUT /{index}/_mapping`; Elasticsearch reference, "_meta field" and
//! "Update mapping API"); the role's and the key's `metadata` carry it too. Tenant names
//! are reused, UIDs are not: an index bound to another UID holds data retained (under
//! `deletionPolicy: Retain`) from a deleted tenant, and is neither reconciled nor erased,
//! nor is a key issued for it, unless the tenant adopts exactly that UID with the
//! annotation `dealerdesk.de/adopt-retained: <uid>`. Adoption rewrites the role, issues a
//! new key, invalidating every older key of that name, the retained tenant's included (the
//! data belongs to the adopter from then on), and rebinds the index last, so that a pass
//! cut short adopts again. A held key bound to another UID is never kept. An index without the
//! UID (made by an earlier version) is bound to the tenant that reconciles it. Only
//! `manage` (not the tenants' `write`) covers the update mapping API from Elasticsearch 8
//! on, so a tenant key cannot rebind its own index there.
//!
//! The operator authenticates either with an API key (`Authorization: ApiKey`, the default)
//! or, when `search.username` is set, as that user with HTTP Basic. Elasticsearch refuses
//! to let a request authenticated by an API key create a key that carries privileges
//! ("creating derived api keys requires an explicit role descriptor that is empty"), so
//! issuing tenant keys needs the user form; with an operator API key the index and role
//! are still managed and key creation fails with a permanent error that says so.
//!
//! The deployment's region is configuration (validated against the EU list at load, and
//! checked again here before anything is created); Elasticsearch itself reports no
//! location for an index.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::regions;
use crate::processors::ids;
use crate::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo, residency,
};

/// `search:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchConfig {
    /// Base URL of the Elasticsearch deployment.
    pub endpoint: String,
    /// Region of the deployment (it holds tenant data: EU only).
    pub region: String,
    /// Environment variable holding the operator's API key (`id:key` base64, as Elastic
    /// issues it); needs `manage_security` and index management. Used when `username` is
    /// not set. Note: a request authenticated by an API key cannot create API keys that
    /// carry privileges, so tenant keys need `username` (see the module documentation).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Or a file (a mounted Secret) holding it; wins over the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    /// User the operator authenticates as with HTTP Basic (password from `passwordEnv` or
    /// `passwordFile`); wins over the API key. Needs the cluster privilege
    /// `manage_security` and, on `<indexPrefix>*`, the index privileges `create_index`,
    /// `delete_index`, `manage`, `view_index_metadata`, `read` and `write` (a key can hold
    /// only what its creator holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Environment variable holding that user's password.
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// Or a file (a mounted Secret) holding it; wins over the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Index, role and key names: `<indexPrefix><tenant>`.
    #[serde(default = "default_prefix")]
    pub index_prefix: String,
    /// Primary shards per index (clusters cap shards per node at 1000 by default).
    #[serde(default = "one")]
    pub shards: u32,
    /// Replicas per shard.
    #[serde(default = "one")]
    pub replicas: u32,
}

fn default_key_env() -> String {
    "ELASTICSEARCH_API_KEY".into()
}
fn default_password_env() -> String {
    "ELASTICSEARCH_PASSWORD".into()
}
fn default_prefix() -> String {
    "dt-".into()
}
fn one() -> u32 {
    1
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://search.dealerdesk.internal:9243".into(),
            region: "europe-west3".into(),
            api_key_env: default_key_env(),
            api_key_file: None,
            username: None,
            password_env: default_password_env(),
            password_file: None,
            index_prefix: default_prefix(),
            shards: 1,
            replicas: 1,
        }
    }
}

impl SearchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(why) = regions::why_not_eu(&self.region) {
            return Err(format!("search.region: {why}"));
        }
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            return Err(format!(
                "search.endpoint: \"{}\" is not an http(s) URL",
                self.endpoint
            ));
        }
        if self.shards == 0 {
            return Err("search.shards: must be at least 1".into());
        }
        let p = &self.index_prefix;
        if p.is_empty()
            || p.starts_with(['-', '_', '+'])
            || p.bytes()
                .any(|b| b.is_ascii_uppercase() || b"\\/*?\"<>| ,#:".contains(&b))
        {
            return Err(format!(
                "search.indexPrefix: \"{p}\" is not a valid start of an index name"
            ));
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        let name = index_name(&self.index_prefix, &t.name);
        let loc = Some(self.region.clone());
        vec![
            ExternalResource::new(KIND_INDEX, &name, loc.clone(), processor),
            ExternalResource::new(KIND_ROLE, &name, loc.clone(), processor),
            ExternalResource::new(KIND_KEY, &name, loc, processor),
        ]
    }
}

/// `<prefix><tenant>`: lowercase, at most 255 bytes, as Elasticsearch requires.
pub fn index_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}{tenant}")
}

/// Service name in errors.
const SERVICE: &str = "Elasticsearch";
/// `metadata.managed-by` on roles and keys.
pub use crate::providers::{LABEL_MANAGED_BY, MANAGED_BY};
/// What a tenant's role and key may do on its own index, and nothing else.
pub const TENANT_PRIVILEGES: [&str; 3] = ["read", "view_index_metadata", "write"];

/// Key of the tenant UID in the index's `mappings._meta` and in the role's and the key's
/// `metadata`.
pub const UID_META: &str = "dealerdesk.de/tenant-uid";

pub const KIND_INDEX: &str = "ElasticsearchIndex";
pub const KIND_ROLE: &str = "ElasticsearchRole";
pub const KIND_KEY: &str = "ElasticsearchApiKey";

/// Keys of the tenant's `search` Secret.
pub mod secret_keys {
    pub const URL: &str = "ELASTICSEARCH_URL";
    pub const INDEX: &str = "ELASTICSEARCH_INDEX";
    /// The key's `encoded` value (base64 of `id:api_key`), ready for `Authorization: ApiKey`.
    pub const API_KEY: &str = "ELASTICSEARCH_API_KEY";
    pub const API_KEY_ID: &str = "ELASTICSEARCH_API_KEY_ID";
}

/// Longest service error text copied into a message.
const MAX_REASON: usize = 400;

// ---------------------------------------------------------------------------------------
// Pure parts: request bodies, comparisons, parsing of answers.
// ---------------------------------------------------------------------------------------

/// Body of `PUT /{index}`: settings, and the index bound to the tenant `uid` in
/// `mappings._meta`.
pub fn index_body(shards: u32, replicas: u32, uid: &str) -> Value {
    json!({
        "settings": {
            "index": { "number_of_shards": shards, "number_of_replicas": replicas }
        },
        "mappings": { "_meta": { UID_META: uid } }
    })
}

/// Body of `PUT /{index}/_mapping` that binds the index to `uid`, keeping the other keys of
/// its `_meta` (the whole object is sent, so it is right whether the service merges or
/// replaces `_meta`).
pub fn bind_body(meta: &serde_json::Map<String, Value>, uid: &str) -> Value {
    let mut meta = meta.clone();
    meta.insert(UID_META.into(), json!(uid));
    json!({ "_meta": meta })
}

/// The role descriptor of a tenant: its index, [`TENANT_PRIVILEGES`], no cluster privileges.
pub fn tenant_descriptor(index: &str) -> Value {
    json!({
        "cluster": [],
        "indices": [{
            "names": [index],
            "privileges": TENANT_PRIVILEGES,
            "allow_restricted_indices": false
        }]
    })
}

/// `metadata` on the role and the key: who manages it, the tenant's name and UID.
pub fn tenant_metadata(tenant: &str, uid: &str) -> Value {
    json!({ LABEL_MANAGED_BY: MANAGED_BY, "tenant": tenant, UID_META: uid })
}

/// Body of `PUT /_security/role/{name}`.
pub fn role_body(index: &str, tenant: &str, uid: &str) -> Value {
    let mut body = tenant_descriptor(index);
    body["metadata"] = tenant_metadata(tenant, uid);
    body
}

/// Body of `POST /_security/api_key`.
pub fn api_key_body(name: &str, index: &str, tenant: &str, uid: &str) -> Value {
    json!({
        "name": name,
        "role_descriptors": { name: tenant_descriptor(index) },
        "metadata": tenant_metadata(tenant, uid)
    })
}

/// A string or an array of strings, as a set (Elasticsearch accepts both for `names`).
fn string_set(v: Option<&Value>) -> Option<BTreeSet<&str>> {
    match v? {
        Value::String(s) => Some(BTreeSet::from([s.as_str()])),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

fn is_empty_value(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Whether a role descriptor, as Elasticsearch reports it (with its defaults filled in),
/// grants exactly [`TENANT_PRIVILEGES`] on exactly `index` and nothing else.
pub fn grants_exactly(desc: &Value, index: &str) -> bool {
    let nothing_else = [
        "cluster",
        "applications",
        "run_as",
        "global",
        "remote_indices",
        "remote_cluster",
    ]
    .iter()
    .all(|k| is_empty_value(desc.get(*k)));
    if !nothing_else {
        return false;
    }
    let Some(Value::Array(entries)) = desc.get("indices") else {
        return false;
    };
    let [entry] = entries.as_slice() else {
        return false;
    };
    string_set(entry.get("names")) == Some(BTreeSet::from([index]))
        && string_set(entry.get("privileges")) == Some(TENANT_PRIVILEGES.into_iter().collect())
        && matches!(
            entry.get("allow_restricted_indices"),
            None | Some(Value::Null) | Some(Value::Bool(false))
        )
        && is_empty_value(entry.get("field_security"))
        && is_empty_value(entry.get("query"))
}

/// Whether the role `GET /_security/role/{name}` returned is the tenant's role.
pub fn role_matches(role: &Value, index: &str, tenant: &str, uid: &str) -> bool {
    let meta = role.get("metadata");
    grants_exactly(role, index)
        && meta.and_then(|m| m.get(LABEL_MANAGED_BY)) == Some(&json!(MANAGED_BY))
        && meta.and_then(|m| m.get("tenant")) == Some(&json!(tenant))
        && meta.and_then(|m| m.get(UID_META)) == Some(&json!(uid))
}

/// What `GET /{index}` says about the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexState {
    pub uuid: Option<String>,
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    /// `mappings._meta` (empty when there is none).
    pub meta: serde_json::Map<String, Value>,
}

impl IndexState {
    /// The UID of the tenant the index is bound to, if any.
    pub fn owner(&self) -> Option<&str> {
        self.meta
            .get(UID_META)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
    }
}

/// Reads an index setting in nested or flat form; values come as strings.
fn index_setting<'a>(settings: &'a Value, key: &str) -> Option<&'a Value> {
    settings
        .get("index")
        .and_then(|i| i.get(key))
        .or_else(|| settings.get(format!("index.{key}")))
}

fn as_u32(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

/// Parses the answer of `GET /{index}`. An answer about another index means `name` is an
/// alias of it: not ours to manage.
pub fn parse_index_state(body: &Value, name: &str) -> Result<IndexState, String> {
    let Some(map) = body.as_object() else {
        return Err("the answer is not a JSON object".into());
    };
    let Some(entry) = map.get(name) else {
        let others: Vec<&str> = map.keys().map(String::as_str).collect();
        return Err(format!(
            "{name} resolves to [{}], so it is an alias or pattern, not the tenant's index",
            others.join(",")
        ));
    };
    let settings = entry.get("settings").cloned().unwrap_or(Value::Null);
    let meta = match entry.get("mappings").and_then(|m| m.get("_meta")) {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("its mappings._meta is not an object".into()),
    };
    Ok(IndexState {
        uuid: index_setting(&settings, "uuid")
            .and_then(Value::as_str)
            .map(str::to_string),
        shards: as_u32(index_setting(&settings, "number_of_shards")),
        replicas: as_u32(index_setting(&settings, "number_of_replicas")),
        meta,
    })
}

/// One entry of `GET /_security/api_key`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub invalidated: bool,
    /// Milliseconds since the epoch, when the key expires.
    pub expiration: Option<i64>,
    /// Reported by Elasticsearch 8.5 and later.
    pub role_descriptors: Option<Value>,
    /// Reported by Elasticsearch 7.13 and later.
    pub metadata: Option<Value>,
}

impl KeyInfo {
    /// Valid for authentication at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        !self.invalidated && self.expiration.is_none_or(|e| e > now_ms)
    }

    /// Whether the key is limited to the tenant's index (unknown counts as yes: older
    /// versions do not report descriptors). An empty map would mean "everything the
    /// creator may do", which is drift.
    pub fn limited_to(&self, index: &str) -> bool {
        match &self.role_descriptors {
            None | Some(Value::Null) => true,
            Some(Value::Object(m)) => m.len() == 1 && m.values().all(|d| grants_exactly(d, index)),
            Some(_) => false,
        }
    }

    /// Whether the key's metadata names a tenant UID other than `uid` (a key without one,
    /// issued by an earlier version or reported by an older service, is not).
    pub fn bound_elsewhere(&self, uid: &str) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get(UID_META))
            .and_then(Value::as_str)
            .is_some_and(|u| u != uid)
    }
}

/// Parses `{"api_keys": [...]}`.
pub fn parse_keys(body: &Value) -> Vec<KeyInfo> {
    body.get("api_keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| {
                    Some(KeyInfo {
                        id: k.get("id")?.as_str()?.to_string(),
                        name: k.get("name")?.as_str()?.to_string(),
                        invalidated: k.get("invalidated").and_then(Value::as_bool) == Some(true),
                        expiration: k.get("expiration").and_then(Value::as_i64),
                        role_descriptors: k.get("role_descriptors").cloned(),
                        metadata: k.get("metadata").cloned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The service's error type, e.g. `index_not_found_exception`.
pub fn error_type(body: &Value) -> Option<&str> {
    body.get("error")?.get("type")?.as_str()
}

/// `type: reason` from an Elasticsearch error body (`{"error": {...}, "status": N}`), or
/// the shortcut form where `error` is a string. Nothing else of the body is used.
pub fn describe_error(body: &Value) -> String {
    let text = match body.get("error") {
        Some(Value::Object(e)) => {
            let kind = e.get("type").and_then(Value::as_str).unwrap_or("error");
            match e.get("reason").and_then(Value::as_str) {
                Some(reason) if !reason.is_empty() => format!("{kind}: {reason}"),
                _ => kind.to_string(),
            }
        }
        Some(Value::String(s)) => s.clone(),
        _ => "no error details in the answer".to_string(),
    };
    truncate(&text, MAX_REASON)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Replaces every occurrence of a credential in `text`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*s, "<redacted>");
    }
    out
}

/// The contents of the tenant's `search` Secret.
pub fn secret_data(url: &str, index: &str, key_id: &str, encoded: &str) -> SecretData {
    SecretData::new()
        .with(secret_keys::URL, url)
        .with(secret_keys::INDEX, index)
        .with(secret_keys::API_KEY, encoded)
        .with(secret_keys::API_KEY_ID, key_id)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Credentials.
// ---------------------------------------------------------------------------------------

/// How the operator authenticates. `Debug` never shows the secret part.
#[derive(Clone)]
pub enum OperatorCredential {
    /// `Authorization: ApiKey <encoded>`.
    ApiKey(String),
    /// `Authorization: Basic`, as a user of the native or file realm.
    Basic { username: String, password: String },
}

impl fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorCredential::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            OperatorCredential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl OperatorCredential {
    /// Reads the credential the configuration points at: the user and password when
    /// `username` is set, else the API key (a file wins over the variable).
    pub fn from_config(cfg: &SearchConfig) -> Result<Self, ProviderError> {
        match &cfg.username {
            Some(username) => Ok(OperatorCredential::Basic {
                username: username.clone(),
                password: read_credential(
                    cfg.password_file.as_deref(),
                    &cfg.password_env,
                    "password",
                )?,
            }),
            None => Ok(OperatorCredential::ApiKey(read_credential(
                cfg.api_key_file.as_deref(),
                &cfg.api_key_env,
                "API key",
            )?)),
        }
    }

    /// Every form in which the credential could appear: as configured, in the header,
    /// and the secret half of a decoded API key.
    fn secret_forms(&self) -> Vec<String> {
        let mut forms = vec![self.header_value_text()];
        match self {
            OperatorCredential::ApiKey(k) => {
                forms.push(k.clone());
                if let Some(secret) = BASE64
                    .decode(k)
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|id_key| id_key.split_once(':').map(|(_, s)| s.to_string()))
                {
                    forms.push(secret);
                }
            }
            OperatorCredential::Basic { password, .. } => forms.push(password.clone()),
        }
        forms
    }

    /// The `Authorization` header's value as text.
    fn header_value_text(&self) -> String {
        match self {
            OperatorCredential::ApiKey(k) => format!("ApiKey {k}"),
            OperatorCredential::Basic { username, password } => {
                format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
            }
        }
    }

    fn header(&self) -> HeaderValue {
        sensitive(&self.header_value_text())
    }
}

/// A header value marked sensitive (kept out of debug output by the HTTP stack).
fn sensitive(text: &str) -> HeaderValue {
    match HeaderValue::from_str(text) {
        Ok(mut v) => {
            v.set_sensitive(true);
            v
        }
        // Not a valid header value (a stray newline in a file): send nothing usable, the
        // service answers 401.
        Err(_) => HeaderValue::from_static("ApiKey invalid"),
    }
}

fn read_credential(file: Option<&str>, env: &str, what: &str) -> Result<String, ProviderError> {
    let not_configured = |message: String| ProviderError::NotConfigured {
        service: SERVICE,
        message,
    };
    let value = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            not_configured(format!(
                "cannot read the operator's {what} from {path}: {}",
                e.kind()
            ))
        })?,
        None => std::env::var(env).map_err(|_| {
            not_configured(format!(
                "environment variable {env} (the operator's {what}) is not set"
            ))
        })?,
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        let source = file.map_or_else(|| format!("environment variable {env}"), str::to_string);
        return Err(not_configured(format!(
            "the operator's {what} in {source} is empty"
        )));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// The provider.
// ---------------------------------------------------------------------------------------

/// Who a request is sent as.
#[derive(Clone, Copy)]
enum As<'a> {
    Operator,
    /// A tenant's `encoded` key, to check that it authenticates.
    TenantKey(&'a str),
}

/// Status and JSON body of an answer (`Null` when the body is not JSON).
struct Answer {
    status: u16,
    body: Value,
}

/// The Elasticsearch provider.
pub struct ElasticsearchProvider {
    cfg: SearchConfig,
    base: Url,
    http: reqwest::Client,
    credential: OperatorCredential,
}

impl fmt::Debug for ElasticsearchProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticsearchProvider")
            .field("endpoint", &self.cfg.endpoint)
            .field("region", &self.cfg.region)
            .field("credential", &self.credential)
            .finish()
    }
}

impl ElasticsearchProvider {
    /// Reads the operator's credential as configured and builds the HTTP client.
    pub fn from_config(cfg: &SearchConfig) -> Result<Self, ProviderError> {
        let credential = OperatorCredential::from_config(cfg)?;
        Self::new(cfg, credential)
    }

    /// With an explicit credential.
    pub fn new(cfg: &SearchConfig, credential: OperatorCredential) -> Result<Self, ProviderError> {
        let not_configured = |message: String| ProviderError::NotConfigured {
            service: SERVICE,
            message,
        };
        let base = Url::parse(&cfg.endpoint)
            .map_err(|e| not_configured(format!("search.endpoint is not a URL: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(not_configured(
                "search.endpoint is not an http(s) URL".into(),
            ));
        }
        crate::providers::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| not_configured(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            cfg: cfg.clone(),
            base,
            http,
            credential,
        })
    }

    fn name(&self, tenant: &TenantInfo) -> String {
        index_name(&self.cfg.index_prefix, &tenant.name)
    }

    fn resource(&self, kind: &str, name: &str, id: Option<&str>) -> ExternalResource {
        let r = ExternalResource::new(kind, name, Some(self.cfg.region.clone()), ids::ELASTIC);
        match id {
            Some(id) => r.with_id(id),
            None => r,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        who: As<'_>,
    ) -> Result<Answer, ProviderError> {
        let mut rb = self.http.request(method, self.url(segments));
        if !query.is_empty() {
            rb = rb.query(query);
        }
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let auth = match who {
            As::Operator => self.credential.header(),
            As::TenantKey(encoded) => sensitive(&format!("ApiKey {encoded}")),
        };
        rb = rb.header(AUTHORIZATION, auth);
        let resp = rb
            .send()
            .await
            .map_err(|e| ProviderError::transport(SERVICE, &e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::transport(SERVICE, &e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// The error for an answer that was not expected, classified by status, with the
    /// service's own `type: reason` and no credential.
    fn failed(&self, what: &str, a: &Answer, also_hide: &[&str]) -> ProviderError {
        let mut message = format!("{what}: {}", describe_error(&a.body));
        if a.status == 400
            && message.contains("derived api keys")
            && matches!(self.credential, OperatorCredential::ApiKey(_))
        {
            message.push_str(
                " (the operator authenticates with an API key, and Elasticsearch lets an \
                 API key create only keys without privileges; set search.username and \
                 search.passwordEnv or search.passwordFile for a user with manage_security)",
            );
        }
        let forms = self.credential.secret_forms();
        let mut hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        hide.extend_from_slice(also_hide);
        ProviderError::from_status(SERVICE, a.status, scrub(&message, &hide))
    }

    fn bad_answer(&self, what: &str) -> ProviderError {
        ProviderError::Unavailable {
            service: SERVICE,
            message: format!("{what}: unexpected answer"),
        }
    }

    // --- index ---------------------------------------------------------------------------

    async fn get_index(&self, name: &str) -> Result<Option<IndexState>, ProviderError> {
        let what = format!("reading index {name}");
        let a = self
            .call(Method::GET, &[name], &[], None, As::Operator)
            .await?;
        match a.status {
            200 => {
                parse_index_state(&a.body, name)
                    .map(Some)
                    .map_err(|why| ProviderError::Refused {
                        service: SERVICE,
                        message: format!("{what}: {why}"),
                    })
            }
            404 if error_type(&a.body) == Some("index_not_found_exception") => Ok(None),
            _ => Err(self.failed(&what, &a, &[])),
        }
    }

    /// Refuses an index bound to another tenant UID that `tenant` does not adopt.
    fn check_owner(
        &self,
        name: &str,
        state: &IndexState,
        tenant: &TenantInfo,
    ) -> Result<(), ProviderError> {
        match state.owner() {
            Some(owner) if owner != tenant.uid && !tenant.adopts(owner) => {
                Err(ProviderError::Foreign {
                    service: SERVICE,
                    message: format!(
                        "index {name} holds data retained from another tenant (UID {owner}); \
                         nothing was changed and no API key was issued. Annotate this tenant \
                         dealerdesk.de/adopt-retained: {owner} to take it over, or delete the \
                         index {name} first"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Observes the index, creates it (bound to the tenant) when missing, refuses one bound
    /// to another tenant that is not adopted, and brings replicas back. Returns the state
    /// and whether the index is being adopted.
    async fn ensure_index(
        &self,
        name: &str,
        tenant: &TenantInfo,
    ) -> Result<(IndexState, bool), ProviderError> {
        let mut state = match self.get_index(name).await? {
            Some(s) => s,
            None => {
                residency::check_before_create(
                    &format!("Elasticsearch index {name}"),
                    &self.cfg.region,
                )?;
                let body = index_body(self.cfg.shards, self.cfg.replicas, &tenant.uid);
                let a = self
                    .call(Method::PUT, &[name], &[], Some(&body), As::Operator)
                    .await?;
                match a.status {
                    200 => tracing::info!(index = %name, "created Elasticsearch index"),
                    // Created by a pass that crashed or by a concurrent one: it exists.
                    400 if error_type(&a.body) == Some("resource_already_exists_exception") => {}
                    _ => return Err(self.failed(&format!("creating index {name}"), &a, &[])),
                }
                self.get_index(name)
                    .await?
                    .ok_or_else(|| ProviderError::Unavailable {
                        service: SERVICE,
                        message: format!("index {name} was created but is not visible yet"),
                    })?
            }
        };
        // Whose is it? Checked before any write (and again after a create that found the
        // index made concurrently).
        self.check_owner(name, &state, tenant)?;
        let adopted = state.owner().is_some_and(|owner| owner != tenant.uid);
        if let Some(shards) = state.shards
            && shards != self.cfg.shards
        {
            return Err(ProviderError::Refused {
                service: SERVICE,
                message: format!(
                    "index {name} has {shards} primary shards, the configuration asks for {}; \
                     the shard count of an existing index cannot change (reindex into a new \
                     index, or set search.shards to {shards})",
                    self.cfg.shards
                ),
            });
        }
        if state.replicas != Some(self.cfg.replicas) {
            let body = json!({ "index": { "number_of_replicas": self.cfg.replicas } });
            let a = self
                .call(
                    Method::PUT,
                    &[name, "_settings"],
                    &[],
                    Some(&body),
                    As::Operator,
                )
                .await?;
            if a.status != 200 {
                return Err(self.failed(&format!("setting replicas of index {name}"), &a, &[]));
            }
            tracing::info!(index = %name, replicas = self.cfg.replicas, "set index replicas");
            state.replicas = Some(self.cfg.replicas);
        }
        Ok((state, adopted))
    }

    /// Binds an index made by an earlier version, or adopted, to `tenant` (no write when
    /// it is bound to it already).
    async fn bind_index(
        &self,
        name: &str,
        state: &mut IndexState,
        tenant: &TenantInfo,
    ) -> Result<(), ProviderError> {
        if state.owner() != Some(tenant.uid.as_str()) {
            let body = bind_body(&state.meta, &tenant.uid);
            let a = self
                .call(
                    Method::PUT,
                    &[name, "_mapping"],
                    &[],
                    Some(&body),
                    As::Operator,
                )
                .await?;
            if a.status != 200 {
                return Err(self.failed(&format!("binding index {name} to its tenant"), &a, &[]));
            }
            tracing::info!(index = %name, "bound Elasticsearch index to its tenant's UID");
            if let Some(Value::Object(meta)) = body.get("_meta") {
                state.meta = meta.clone();
            }
        }
        Ok(())
    }

    // --- role ----------------------------------------------------------------------------

    async fn ensure_role(&self, name: &str, tenant: &TenantInfo) -> Result<(), ProviderError> {
        let what = format!("reading role {name}");
        let a = self
            .call(
                Method::GET,
                &["_security", "role", name],
                &[],
                None,
                As::Operator,
            )
            .await?;
        let current = match a.status {
            200 => a.body.get(name).cloned(),
            404 => None,
            _ => return Err(self.failed(&what, &a, &[])),
        };
        if current.is_some_and(|r| role_matches(&r, name, &tenant.name, &tenant.uid)) {
            return Ok(());
        }
        let body = role_body(name, &tenant.name, &tenant.uid);
        let a = self
            .call(
                Method::PUT,
                &["_security", "role", name],
                &[],
                Some(&body),
                As::Operator,
            )
            .await?;
        if a.status != 200 {
            return Err(self.failed(&format!("writing role {name}"), &a, &[]));
        }
        tracing::info!(role = %name, "wrote Elasticsearch role");
        Ok(())
    }

    // --- API keys ------------------------------------------------------------------------

    /// Every key with exactly this name (valid or not).
    async fn list_keys(&self, name: &str) -> Result<Vec<KeyInfo>, ProviderError> {
        let a = self
            .call(
                Method::GET,
                &["_security", "api_key"],
                &[("name", name)],
                None,
                As::Operator,
            )
            .await?;
        match a.status {
            200 => {
                if a.body.get("api_keys").is_none() {
                    return Err(self.bad_answer(&format!("listing API keys of {name}")));
                }
                Ok(parse_keys(&a.body)
                    .into_iter()
                    .filter(|k| k.name == name)
                    .collect())
            }
            // Some versions answer 404 when nothing matches.
            404 => Ok(Vec::new()),
            _ => Err(self.failed(&format!("listing API keys of {name}"), &a, &[])),
        }
    }

    /// Invalidates keys by ID; returns the IDs Elasticsearch invalidated now.
    async fn invalidate(
        &self,
        name: &str,
        key_ids: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!("invalidating API keys of {name}");
        let body = json!({ "ids": key_ids });
        let a = self
            .call(
                Method::DELETE,
                &["_security", "api_key"],
                &[],
                Some(&body),
                As::Operator,
            )
            .await?;
        if a.status != 200 {
            return Err(self.failed(&what, &a, &[]));
        }
        let errors = a
            .body
            .get("error_count")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if errors > 0 {
            let detail = a
                .body
                .get("error_details")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .map(|e| describe_error(&json!({ "error": e })))
                .unwrap_or_default();
            return Err(ProviderError::Unavailable {
                service: SERVICE,
                message: format!("{what}: {errors} failed: {detail}"),
            });
        }
        let done: Vec<String> = a
            .body
            .get("invalidated_api_keys")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for id in &done {
            tracing::info!(key = %name, id = %id, "invalidated Elasticsearch API key");
        }
        Ok(done)
    }

    /// Creates the tenant's key; returns `(id, encoded)`.
    async fn create_key(
        &self,
        name: &str,
        tenant: &TenantInfo,
    ) -> Result<(String, String), ProviderError> {
        let what = format!("creating API key {name}");
        let body = api_key_body(name, name, &tenant.name, &tenant.uid);
        let a = self
            .call(
                Method::POST,
                &["_security", "api_key"],
                &[],
                Some(&body),
                As::Operator,
            )
            .await?;
        if a.status != 200 {
            return Err(self.failed(&what, &a, &[]));
        }
        let id = a.body.get("id").and_then(Value::as_str);
        let encoded = a.body.get("encoded").and_then(Value::as_str);
        match (id, encoded) {
            (Some(id), Some(encoded)) => {
                tracing::info!(key = %name, id = %id, "created Elasticsearch API key");
                Ok((id.to_string(), encoded.to_string()))
            }
            // `encoded` exists since 7.16; without it the key cannot be handed over.
            _ => Err(ProviderError::Refused {
                service: SERVICE,
                message: format!(
                    "{what}: the answer lacks `id` or `encoded` (Elasticsearch 7.16 or later \
                     is required); the key will be invalidated on the next pass"
                ),
            }),
        }
    }

    /// Whether `encoded` authenticates as the key `id` (`GET /_security/_authenticate`).
    async fn key_authenticates(&self, encoded: &str, id: &str) -> Result<bool, ProviderError> {
        let a = self
            .call(
                Method::GET,
                &["_security", "_authenticate"],
                &[],
                None,
                As::TenantKey(encoded),
            )
            .await?;
        match a.status {
            200 => Ok(a
                .body
                .get("api_key")
                .and_then(|k| k.get("id"))
                .and_then(Value::as_str)
                .is_none_or(|got| got == id)),
            401 => Ok(false),
            _ => Err(self.failed("checking the tenant's API key", &a, &[encoded])),
        }
    }

    /// Keeps the key the Secret holds when it is sound (no write), else replaces every key
    /// of that name by one new key. Returns the key ID and new Secret data, if any. A key
    /// bound to another tenant UID is never sound, and on adoption (`reissue`) none is: the
    /// retained tenant's keys stop working.
    async fn ensure_key(
        &self,
        name: &str,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
        reissue: bool,
    ) -> Result<(String, Option<SecretData>), ProviderError> {
        let now = now_ms();
        let active: Vec<KeyInfo> = self
            .list_keys(name)
            .await?
            .into_iter()
            .filter(|k| k.active(now))
            .collect();

        let held = secret.and_then(|s| {
            Some((
                s.get(secret_keys::API_KEY_ID)?,
                s.get(secret_keys::API_KEY)?,
                s,
            ))
        });
        if let Some((id, encoded, s)) = held.filter(|_| !reissue)
            && let Some(key) = active.iter().find(|k| k.id == id)
            && key.limited_to(name)
            && !key.bound_elsewhere(&tenant.uid)
            && self.key_authenticates(encoded, id).await?
        {
            // Sound. Other valid keys of this name are strays: invalidate them.
            let strays: Vec<String> = active
                .iter()
                .filter(|k| k.id != id)
                .map(|k| k.id.clone())
                .collect();
            self.invalidate(name, &strays).await?;
            let want = secret_data(&self.cfg.endpoint, name, id, encoded);
            let same = want.keys().all(|k| s.get(k) == want.get(k));
            return Ok((id.to_string(), (!same).then_some(want)));
        }

        // (Re)issue: first pass, missing Secret (rotation or crash after create), or a key
        // that no longer works.
        let old: Vec<String> = active.iter().map(|k| k.id.clone()).collect();
        self.invalidate(name, &old).await?;
        let (id, encoded) = self.create_key(name, tenant).await?;
        let data = secret_data(&self.cfg.endpoint, name, &id, &encoded);
        Ok((id, Some(data)))
    }
}

#[async_trait::async_trait]
impl Provider for ElasticsearchProvider {
    fn component(&self) -> Component {
        Component::Search
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = self.name(tenant);
        // The deployment's region is where the index lives; nothing is sent when it is not
        // in the EU (it was validated at load; this guards a config that slipped past).
        residency::check_before_create(&format!("Elasticsearch index {name}"), &self.cfg.region)?;

        // An index bound to another tenant UID is refused here, before any write.
        let (mut index, adopted) = self.ensure_index(&name, tenant).await?;
        self.ensure_role(&name, tenant).await?;
        let (key_id, new_secret) = self.ensure_key(&name, tenant, secret, adopted).await?;
        // Binding comes last: on adoption it is the commit point, after the retained
        // tenant's keys were invalidated and the new key issued. A pass that stops before
        // it adopts again (issuing yet another key); one that stops after it finds the
        // retained keys invalidated and issues a key for a missing or unusable Secret.
        self.bind_index(&name, &mut index, tenant).await?;

        let mut message = format!(
            "index {name} ({} primary shard(s), {} replica(s)) with its role and API key in {}",
            index.shards.unwrap_or(self.cfg.shards),
            index.replicas.unwrap_or(self.cfg.replicas),
            self.cfg.region
        );
        if adopted {
            message.push_str("; adopted from the retained tenant, whose API keys were invalidated");
        }
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: new_secret,
            resources: vec![
                self.resource(KIND_INDEX, &name, index.uuid.as_deref()),
                self.resource(KIND_ROLE, &name, None),
                self.resource(KIND_KEY, &name, Some(&key_id)),
            ],
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = self.name(tenant);
        let mut erased = Vec::new();

        // Another tenant's (retained) data under this name is not this tenant's to erase:
        // neither its index nor its role or keys.
        let index = self.get_index(&name).await?;
        if let Some(owner) = index.as_ref().and_then(IndexState::owner)
            && owner != tenant.uid
        {
            tracing::info!(index = %name, "index is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }

        // Keys first, so that nothing reaches the index while it is being deleted.
        // Invalidated keys stay listed (without working) until Elasticsearch's retention
        // period for invalidated keys has passed, then it removes them.
        let now = now_ms();
        let active: Vec<String> = self
            .list_keys(&name)
            .await?
            .into_iter()
            .filter(|k| k.active(now))
            .map(|k| k.id)
            .collect();
        for id in self.invalidate(&name, &active).await? {
            erased.push(self.resource(KIND_KEY, &name, Some(&id)));
        }

        if let Some(state) = index {
            let a = self
                .call(Method::DELETE, &[&name], &[], None, As::Operator)
                .await?;
            match a.status {
                200 => {
                    tracing::info!(index = %name, "deleted Elasticsearch index");
                    erased.push(self.resource(KIND_INDEX, &name, state.uuid.as_deref()));
                }
                404 if error_type(&a.body) == Some("index_not_found_exception") => {}
                _ => return Err(self.failed(&format!("deleting index {name}"), &a, &[])),
            }
        }

        let a = self
            .call(
                Method::DELETE,
                &["_security", "role", &name],
                &[],
                None,
                As::Operator,
            )
            .await?;
        match a.status {
            200 if a.body.get("found") == Some(&Value::Bool(true)) => {
                tracing::info!(role = %name, "deleted Elasticsearch role");
                erased.push(self.resource(KIND_ROLE, &name, None));
            }
            200 | 404 => {}
            _ => return Err(self.failed(&format!("deleting role {name}"), &a, &[])),
        }

        Ok(Erased {
            resources: erased,
            ..Erased::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bodies() {
        assert_eq!(index_name("dt-", "acme"), "dt-acme");
        assert_eq!(
            index_body(1, 2, "u-acme"),
            json!({"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 2}},
                   "mappings": {"_meta": {"dealerdesk.de/tenant-uid": "u-acme"}}})
        );
        let role = role_body("dt-acme", "acme", "u-acme");
        assert_eq!(role["cluster"], json!([]));
        assert_eq!(role["indices"][0]["names"], json!(["dt-acme"]));
        assert_eq!(
            role["indices"][0]["privileges"],
            json!(["read", "view_index_metadata", "write"])
        );
        assert_eq!(role["metadata"]["tenant"], json!("acme"));
        let key = api_key_body("dt-acme", "dt-acme", "acme", "u-acme");
        assert_eq!(key["name"], json!("dt-acme"));
        assert_eq!(
            key["role_descriptors"]["dt-acme"],
            tenant_descriptor("dt-acme")
        );
        assert_eq!(key["metadata"]["managed-by"], json!(MANAGED_BY));
        assert_eq!(key["metadata"][UID_META], json!("u-acme"));
        assert_eq!(role["metadata"][UID_META], json!("u-acme"));
        // Binding keeps the other keys of `_meta`.
        let meta = json!({"other": 1, UID_META: "u-old"});
        assert_eq!(
            bind_body(meta.as_object().unwrap(), "u-new"),
            json!({"_meta": {"other": 1, UID_META: "u-new"}})
        );
        assert!(key.get("expiration").is_none());
    }

    /// What `GET /_security/role/{name}` reports: the stored role with defaults filled in.
    fn reported(mut role: Value) -> Value {
        role["applications"] = json!([]);
        role["run_as"] = json!([]);
        role["transient_metadata"] = json!({"enabled": true});
        role
    }

    #[test]
    fn role_comparison_sees_every_widening() {
        let ok = reported(role_body("dt-a", "a", "u-a"));
        assert!(role_matches(&ok, "dt-a", "a", "u-a"));
        // Another tenant's index, or the same role for another tenant.
        assert!(!role_matches(&ok, "dt-b", "b", "u-b"));
        let mut r = ok.clone();
        r["indices"][0]["privileges"] = json!(["all"]);
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["indices"][0]["names"] = json!(["dt-*"]);
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["cluster"] = json!(["monitor"]);
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["run_as"] = json!(["elastic"]);
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["indices"][0]["allow_restricted_indices"] = json!(true);
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["indices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"names": ["x"], "privileges": ["read"]}));
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        let mut r = ok.clone();
        r["metadata"] = json!({});
        assert!(!role_matches(&r, "dt-a", "a", "u-a"));
        // The same role bound to another tenant UID (a retained tenant of the same name).
        assert!(!role_matches(&ok, "dt-a", "a", "u-other"));
        // Order and the string form of `names` do not matter.
        let mut r = ok;
        r["indices"][0]["names"] = json!("dt-a");
        r["indices"][0]["privileges"] = json!(["write", "read", "view_index_metadata"]);
        assert!(role_matches(&r, "dt-a", "a", "u-a"));
    }

    #[test]
    fn index_state_is_read_from_nested_or_flat_settings() {
        let body = json!({"dt-a": {"aliases": {}, "mappings": {}, "settings": {"index": {
            "number_of_shards": "1", "number_of_replicas": "2", "uuid": "u1",
            "provided_name": "dt-a", "creation_date": "1"}}}});
        assert_eq!(
            parse_index_state(&body, "dt-a").unwrap(),
            IndexState {
                uuid: Some("u1".into()),
                shards: Some(1),
                replicas: Some(2),
                meta: Default::default(),
            }
        );
        assert_eq!(parse_index_state(&body, "dt-a").unwrap().owner(), None);
        let bound = json!({"dt-a": {"mappings": {"_meta": {UID_META: "u1", "x": 1}},
            "settings": {}}});
        assert_eq!(
            parse_index_state(&bound, "dt-a").unwrap().owner(),
            Some("u1")
        );
        let odd = json!({"dt-a": {"mappings": {"_meta": "u1"}, "settings": {}}});
        assert!(parse_index_state(&odd, "dt-a").is_err());
        let flat = json!({"dt-a": {"settings": {"index.number_of_shards": "3"}}});
        let s = parse_index_state(&flat, "dt-a").unwrap();
        assert_eq!((s.shards, s.replicas), (Some(3), None));
        // `dt-a` being an alias of another index is not ours.
        let alias = json!({"other": {"settings": {}}});
        assert!(
            parse_index_state(&alias, "dt-a")
                .unwrap_err()
                .contains("alias")
        );
    }

    #[test]
    fn keys_are_parsed_and_judged() {
        let body = json!({"api_keys": [
            {"id": "k1", "name": "dt-a", "creation": 1, "invalidated": false,
             "role_descriptors": {"dt-a": reported(tenant_descriptor("dt-a"))}},
            {"id": "k2", "name": "dt-a", "creation": 1, "invalidated": true},
            {"id": "k3", "name": "dt-a", "creation": 1, "invalidated": false, "expiration": 5},
            {"id": "k4", "name": "dt-a", "invalidated": false, "role_descriptors": {}},
            {"name": "no-id"}
        ]});
        let keys = parse_keys(&body);
        assert_eq!(keys.len(), 4);
        let active: Vec<_> = keys
            .iter()
            .filter(|k| k.active(10))
            .map(|k| &k.id)
            .collect();
        assert_eq!(active, ["k1", "k4"]);
        assert!(keys[2].active(4));
        assert!(keys[0].limited_to("dt-a"));
        assert!(!keys[0].limited_to("dt-b"));
        assert!(
            keys[1].limited_to("dt-a"),
            "not reported: unknown counts as limited"
        );
        assert!(
            !keys[3].limited_to("dt-a"),
            "empty descriptors = creator's rights"
        );
        assert!(parse_keys(&json!({})).is_empty());
        let bound = parse_keys(&json!({"api_keys": [
            {"id": "k5", "name": "dt-a", "metadata": {UID_META: "u1"}},
            {"id": "k6", "name": "dt-a", "metadata": {}}
        ]}));
        assert!(!bound[0].bound_elsewhere("u1"));
        assert!(bound[0].bound_elsewhere("u2"));
        assert!(
            !bound[1].bound_elsewhere("u2"),
            "no UID: an earlier version's key"
        );
    }

    #[test]
    fn errors_are_described_from_type_and_reason_only() {
        let body = json!({"error": {"root_cause": [], "type": "index_not_found_exception",
            "reason": "no such index [dt-a]", "index": "dt-a"}, "status": 404});
        assert_eq!(error_type(&body), Some("index_not_found_exception"));
        assert_eq!(
            describe_error(&body),
            "index_not_found_exception: no such index [dt-a]"
        );
        let null_reason = json!({"error": {"type": "master_not_discovered_exception",
            "reason": null}, "status": 503});
        assert_eq!(
            describe_error(&null_reason),
            "master_not_discovered_exception"
        );
        assert_eq!(
            describe_error(&json!({"error": "Incorrect HTTP method"})),
            "Incorrect HTTP method"
        );
        assert_eq!(
            describe_error(&Value::Null),
            "no error details in the answer"
        );
        let long = json!({"error": {"type": "x", "reason": "é".repeat(500)}});
        assert!(describe_error(&long).len() <= MAX_REASON + "…".len());
        assert_eq!(scrub("key s3cr3t here", &["s3cr3t"]), "key <redacted> here");
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let k = OperatorCredential::ApiKey("c2VjcmV0OmtleQ==".into());
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
        let b = OperatorCredential::Basic {
            username: "op".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{b:?}");
        assert!(
            shown.contains("op") && !shown.contains("hunter2"),
            "{shown}"
        );
        let p = ElasticsearchProvider::new(&SearchConfig::default(), b).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn every_form_of_the_credential_is_scrubbed() {
        let b = OperatorCredential::Basic {
            username: "op".into(),
            password: "hunter2!".into(),
        };
        let header = format!("Basic {}", BASE64.encode("op:hunter2!"));
        let forms = b.secret_forms();
        let hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        let text = scrub(&format!("got [{header}] and hunter2!"), &hide);
        assert!(
            !text.contains("hunter2!") && !text.contains(&header[6..]),
            "{text}"
        );

        let encoded = BASE64.encode("keyid:keysecret123");
        let k = OperatorCredential::ApiKey(encoded.clone());
        let forms = k.secret_forms();
        let hide: Vec<&str> = forms.iter().map(String::as_str).collect();
        let text = scrub(&format!("ApiKey {encoded} / keysecret123"), &hide);
        assert!(
            !text.contains(&encoded) && !text.contains("keysecret123"),
            "{text}"
        );
    }

    #[test]
    fn missing_credentials_are_not_configured() {
        let cfg = SearchConfig {
            api_key_env: "DT_TEST_SURELY_UNSET_ES_KEY".into(),
            ..SearchConfig::default()
        };
        let e = OperatorCredential::from_config(&cfg).unwrap_err();
        assert_eq!(e.reason(), "NotConfigured");
        assert!(e.to_string().contains("DT_TEST_SURELY_UNSET_ES_KEY"), "{e}");
        let cfg = SearchConfig {
            username: Some("op".into()),
            password_file: Some("/nonexistent/dt-test/password".into()),
            ..SearchConfig::default()
        };
        let e = OperatorCredential::from_config(&cfg).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/dt-test/password"),
            "{e}"
        );
    }

    #[test]
    fn secret_has_the_four_keys() {
        let s = secret_data("https://es", "dt-a", "id1", "ZW5j");
        let keys: Vec<_> = s.keys().collect();
        assert_eq!(
            keys,
            [
                "ELASTICSEARCH_API_KEY",
                "ELASTICSEARCH_API_KEY_ID",
                "ELASTICSEARCH_INDEX",
                "ELASTICSEARCH_URL"
            ]
        );
        assert_eq!(s.get(secret_keys::API_KEY), Some("ZW5j"));
    }
}
