//! The tenant's own email server. Today one provider, Postmark (ActiveCampaign LLC, United
//! States: a third-country processor under EU standard contractual clauses). An EU
//! provider is added as a new module here implementing [`crate::providers::Provider`], a
//! variant of [`EmailProviderKind`] and its config section; nothing else changes.

pub mod postmark;

use serde::{Deserialize, Serialize};

use super::{ExternalResource, TenantInfo};

/// Which email provider runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EmailProviderKind {
    #[default]
    Postmark,
}

/// `email:` in the operator configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailConfig {
    #[serde(default)]
    pub provider: EmailProviderKind,
    #[serde(default)]
    pub postmark: postmark::PostmarkConfig,
}

impl EmailConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.provider {
            EmailProviderKind::Postmark => self
                .postmark
                .validate()
                .map_err(|e| format!("email.postmark.{e}")),
        }
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        match self.provider {
            EmailProviderKind::Postmark => self.postmark.plan(t, processor),
        }
    }
}
