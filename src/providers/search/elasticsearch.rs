//! Elasticsearch provider: index, role and API key per tenant.

use serde::{Deserialize, Serialize};

use crate::api::regions;
use crate::providers::{ExternalResource, TenantInfo};

/// `search:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchConfig {
    /// Base URL of the Elasticsearch deployment.
    pub endpoint: String,
    /// Region of the deployment (it holds tenant data: EU only).
    pub region: String,
    /// Environment variable holding the operator's API key (`id:key` base64, as Elastic
    /// issues it); needs `manage_security` and index management.
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Or a file (a mounted Secret) holding it; wins over the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
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
            ExternalResource::new("ElasticsearchIndex", &name, loc.clone(), processor),
            ExternalResource::new("ElasticsearchRole", &name, loc.clone(), processor),
            ExternalResource::new("ElasticsearchApiKey", &name, loc, processor),
        ]
    }
}

/// `<prefix><tenant>`: lowercase, at most 255 bytes, as Elasticsearch requires.
pub fn index_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}{tenant}")
}
