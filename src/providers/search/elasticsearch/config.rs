//! `search:` in the operator configuration, the names it gives, and the tenant Secret's keys.

use serde::{Deserialize, Serialize};

use crate::api::regions;
use crate::providers::{ExternalResource, TenantInfo};

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
