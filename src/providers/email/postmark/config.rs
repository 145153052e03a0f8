//! `email.postmark:` in the operator configuration, and the account token it points to.

use serde::{Deserialize, Serialize};

use super::desired::{DesiredServer, inbound_domain, server_name};
use super::errors::not_configured;
use super::{POSTMARK_LOCATION, RESOURCE_KIND};
use crate::providers::{ExternalResource, ProviderError, TenantInfo};

/// `email.postmark:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// `Live` or `Sandbox`. Postmark cannot change it after a server was created.
    #[serde(default)]
    pub delivery_type: DeliveryType,
    /// Inbound webhook URL set on every server, if any. When unset, a hook set by hand is
    /// removed (inbound mail must not flow to an address nobody configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_hook_url: Option<String>,
    /// Inbound domain suffix: a tenant's inbound domain is `<tenant>.<inboundDomain>`. Each
    /// needs an MX record for `inbound.postmarkapp.com` (a wildcard `*.<inboundDomain>`
    /// covers all); while Postmark refuses a tenant's domain, the server works without it
    /// and the email condition says `InboundDomainRejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_domain: Option<String>,
    /// Colour of the servers in Postmark's server list. Postmark documents purple, blue,
    /// turquoise, green, red, yellow, grey and orange; it refuses others (ErrorCode 607).
    #[serde(default = "default_color")]
    pub color: String,
}

/// Postmark's `DeliveryType`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum DeliveryType {
    #[default]
    Live,
    Sandbox,
}

impl DeliveryType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryType::Live => "Live",
            DeliveryType::Sandbox => "Sandbox",
        }
    }
}

/// Postmark's `TrackLinks` (the values of the spec's enum).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum TrackLinks {
    #[default]
    None,
    HtmlAndTextTracking,
    HtmlOnlyTracking,
    TextOnlyTracking,
}

impl TrackLinks {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackLinks::None => "None",
            TrackLinks::HtmlAndTextTracking => "HtmlAndTextTracking",
            TrackLinks::HtmlOnlyTracking => "HtmlOnlyTracking",
            TrackLinks::TextOnlyTracking => "TextOnlyTracking",
        }
    }
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
fn default_color() -> String {
    "blue".into()
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
            color: default_color(),
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
        if self.color.is_empty() || !self.color.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "color: \"{}\" is not a Postmark server colour (purple, blue, turquoise, green, red, yellow, grey, orange)",
                self.color
            ));
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        vec![ExternalResource::new(
            RESOURCE_KIND,
            server_name(&self.server_name_prefix, &t.name),
            Some(POSTMARK_LOCATION.into()),
            processor,
        )]
    }

    /// Pure: the server `tenant` should have.
    pub fn desired(&self, tenant: &str) -> DesiredServer {
        DesiredServer {
            name: server_name(&self.server_name_prefix, tenant),
            color: self.color.clone(),
            delivery_type: self.delivery_type,
            track_opens: false,
            track_links: TrackLinks::None,
            inbound_hook_url: self.inbound_hook_url.clone().filter(|u| !u.is_empty()),
            inbound_domain: self
                .inbound_domain
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| inbound_domain(tenant, d)),
        }
    }
}

/// Reads the account token: the file in `accountTokenFile` wins over the variable named by
/// `accountTokenEnv`. Surrounding whitespace (a trailing newline) is dropped.
pub fn read_account_token(cfg: &PostmarkConfig) -> Result<String, ProviderError> {
    if let Some(path) = cfg.account_token_file.as_deref().filter(|p| !p.is_empty()) {
        let text = std::fs::read_to_string(path).map_err(|e| {
            not_configured(format!(
                "cannot read the account token file {path} (accountTokenFile): {}",
                e.kind()
            ))
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(not_configured(format!(
                "the account token file {path} (accountTokenFile) is empty"
            )));
        }
        return Ok(token);
    }
    match std::env::var(&cfg.account_token_env) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(not_configured(format!(
            "no account token: accountTokenFile is not set and the environment variable {} \
             (accountTokenEnv) is empty or missing",
            cfg.account_token_env
        ))),
    }
}

/// The configuration the unit tests of this provider's modules share.
#[cfg(test)]
pub(super) fn test_config() -> PostmarkConfig {
    PostmarkConfig {
        inbound_hook_url: Some("https://hooks.example/inbound".into()),
        inbound_domain: Some("inbound.example".into()),
        ..PostmarkConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_config as cfg;
    use super::*;
    use crate::processors::ids;

    #[test]
    fn names_and_inbound_domain() {
        assert_eq!(server_name("dealerdesk", "acme"), "dealerdesk-acme");
        let d = cfg().desired("acme");
        assert_eq!(d.name, "dealerdesk-acme");
        assert_eq!(d.inbound_domain.as_deref(), Some("acme.inbound.example"));
        assert_eq!(inbound_domain("acme", ".in.example"), "acme.in.example");
        let plain = PostmarkConfig::default().desired("acme");
        assert_eq!(plain.inbound_domain, None);
        assert_eq!(plain.inbound_hook_url, None);
    }

    #[test]
    fn plan_reports_us_and_postmark() {
        let t = TenantInfo {
            name: "acme".into(),
            uid: String::new(),
            region: "europe-west3".into(),
            namespace: "tenant-acme".into(),
            annotations: Default::default(),
        };
        let p = cfg().plan(&t, ids::POSTMARK);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, "PostmarkServer");
        assert_eq!(p[0].name, "dealerdesk-acme");
        assert_eq!(p[0].location.as_deref(), Some("us"));
        assert_eq!(p[0].processor, "postmark");
    }

    #[test]
    fn config_validates_colour() {
        assert!(PostmarkConfig::default().validate().is_ok());
        let bad = PostmarkConfig {
            color: "#ff0000".into(),
            ..PostmarkConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("color:"));
    }
}
