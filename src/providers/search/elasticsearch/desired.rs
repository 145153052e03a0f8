//! Pure parts: request bodies, comparisons with what the service reports, parsing of its
//! answers about the index, and the tenant Secret's contents.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{LABEL_MANAGED_BY, MANAGED_BY, TENANT_PRIVILEGES, UID_META, secret_keys};
use crate::providers::SecretData;

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

/// The contents of the tenant's `search` Secret.
pub fn secret_data(url: &str, index: &str, key_id: &str, encoded: &str) -> SecretData {
    SecretData::new()
        .with(secret_keys::URL, url)
        .with(secret_keys::INDEX, index)
        .with(secret_keys::API_KEY, encoded)
        .with(secret_keys::API_KEY_ID, key_id)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::providers::search::elasticsearch::{IndexState, index_name, parse_index_state};

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
    pub(crate) fn reported(mut role: Value) -> Value {
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
