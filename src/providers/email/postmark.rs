//! Postmark server per tenant, through the Account API (`X-Postmark-Account-Token`).

use serde::{Deserialize, Serialize};

use crate::providers::{ExternalResource, TenantInfo};

/// Postmark servers are hosted in the United States; there is no EU hosting.
pub const POSTMARK_LOCATION: &str = "us";

/// `email.postmark:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostmarkConfig {
    /// Account API base URL.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Environment variable holding the account token.
    #[serde(default = "default_token_env")]
    pub account_token_env: String,
    /// Or a file (a mounted Secret) holding it; wins over the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_token_file: Option<String>,
    /// Server names: `<serverNamePrefix>-<tenant>`.
    #[serde(default = "default_prefix")]
    pub server_name_prefix: String,
    /// `Live` or `Sandbox`.
    #[serde(default)]
    pub delivery_type: DeliveryType,
    /// Inbound webhook URL set on every server, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_hook_url: Option<String>,
    /// Inbound domain suffix: a tenant's inbound domain is `<tenant>.<inboundDomain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_domain: Option<String>,
}

/// Postmark's `DeliveryType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum DeliveryType {
    #[default]
    Live,
    Sandbox,
}

fn default_endpoint() -> String {
    "https://api.postmarkapp.com".into()
}
fn default_token_env() -> String {
    "POSTMARK_ACCOUNT_TOKEN".into()
}
fn default_prefix() -> String {
    "dealerdesk".into()
}

impl Default for PostmarkConfig {
    fn default() -> Self {
        Self {
            endpoint: default_endpoint(),
            account_token_env: default_token_env(),
            account_token_file: None,
            server_name_prefix: default_prefix(),
            delivery_type: DeliveryType::Live,
            inbound_hook_url: None,
            inbound_domain: None,
        }
    }
}

impl PostmarkConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            return Err(format!(
                "endpoint: \"{}\" is not an http(s) URL",
                self.endpoint
            ));
        }
        if self.server_name_prefix.trim().is_empty() {
            return Err("serverNamePrefix: must not be empty".into());
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        vec![ExternalResource::new(
            "PostmarkServer",
            server_name(&self.server_name_prefix, &t.name),
            Some(POSTMARK_LOCATION.into()),
            processor,
        )]
    }
}

/// `<prefix>-<tenant>`.
pub fn server_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}
