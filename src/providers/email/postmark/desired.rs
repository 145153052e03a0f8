//! Pure: the server a tenant should have, the bodies that create or repair it, and what
//! Postmark answers about a server.

use serde::{Deserialize, Serialize};

use super::config::{DeliveryType, TrackLinks};

/// `<prefix>-<tenant>`.
pub fn server_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}

/// `<tenant>.<suffix>`, the tenant's inbound domain.
pub fn inbound_domain(tenant: &str, suffix: &str) -> String {
    format!("{tenant}.{}", suffix.trim_start_matches('.'))
}

/// The settings a tenant's server must have. Privacy defaults: no open tracking, no link
/// tracking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredServer {
    pub name: String,
    pub color: String,
    pub delivery_type: DeliveryType,
    pub track_opens: bool,
    pub track_links: TrackLinks,
    pub inbound_hook_url: Option<String>,
    pub inbound_domain: Option<String>,
}

/// Body of `POST /servers` (`CreateServerPayload`, plus `DeliveryType`, which Postmark's
/// servers API reference documents for create and the older Swagger file predates).
///
/// It never carries the `InboundDomain`: Postmark checks that domain (its MX record,
/// ErrorCode 610; unique across Postmark, ErrorCode 602) and would refuse the whole server
/// over it. The domain is set afterwards with an edit, whose refusal leaves a working server
/// (<https://postmarkapp.com/developer/api/servers-api>,
/// <https://postmarkapp.com/developer/api/overview#error-codes>).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateServer {
    pub name: String,
    pub color: String,
    pub delivery_type: DeliveryType,
    pub track_opens: bool,
    pub track_links: TrackLinks,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_hook_url: Option<String>,
}

/// Body of `PUT /servers/{serverid}` (`EditServerPayload`): only the fields to change. An
/// empty string clears a hook URL or the inbound domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EditServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_opens: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_links: Option<TrackLinks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_hook_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_domain: Option<String>,
}

impl EditServer {
    pub fn is_empty(&self) -> bool {
        *self == EditServer::default()
    }

    /// The inbound domain this edit sets (not one it clears), if any.
    pub fn sets_inbound_domain(&self) -> Option<&str> {
        self.inbound_domain.as_deref().filter(|d| !d.is_empty())
    }

    /// The same edit without its inbound domain.
    pub fn without_inbound_domain(&self) -> EditServer {
        EditServer {
            inbound_domain: None,
            ..self.clone()
        }
    }

    /// The names of the fields that change, for messages.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.name.is_some() {
            f.push("Name");
        }
        if self.color.is_some() {
            f.push("Color");
        }
        if self.track_opens.is_some() {
            f.push("TrackOpens");
        }
        if self.track_links.is_some() {
            f.push("TrackLinks");
        }
        if self.inbound_hook_url.is_some() {
            f.push("InboundHookUrl");
        }
        if self.inbound_domain.is_some() {
            f.push("InboundDomain");
        }
        f
    }
}

/// A server as Postmark answers it (`ExtendedServerInfo`; the fields this provider reads).
/// `Debug` leaves the API tokens out.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Server {
    #[serde(rename = "ID")]
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub api_tokens: Vec<String>,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub delivery_type: Option<String>,
    #[serde(default)]
    pub track_opens: Option<bool>,
    #[serde(default)]
    pub track_links: Option<String>,
    #[serde(default)]
    pub inbound_hook_url: Option<String>,
    #[serde(default)]
    pub inbound_domain: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("id", &self.id)
            .field("name", &self.name)
            .field(
                "api_tokens",
                &format_args!("<{} hidden>", self.api_tokens.len()),
            )
            .field("color", &self.color)
            .field("delivery_type", &self.delivery_type)
            .field("track_opens", &self.track_opens)
            .field("track_links", &self.track_links)
            .field("inbound_hook_url", &self.inbound_hook_url)
            .field("inbound_domain", &self.inbound_domain)
            .finish()
    }
}

impl DesiredServer {
    /// Pure: the body of the create request.
    pub fn create_body(&self) -> CreateServer {
        CreateServer {
            name: self.name.clone(),
            color: self.color.clone(),
            delivery_type: self.delivery_type,
            track_opens: self.track_opens,
            track_links: self.track_links,
            inbound_hook_url: self.inbound_hook_url.clone(),
        }
    }

    /// Pure: what has to change on `observed` (empty when nothing drifted). A field the
    /// answer lacks counts as drifted, except that an absent and an empty hook URL or
    /// inbound domain are the same ("not set"). Colours compare without case.
    pub fn edit_for(&self, observed: &Server) -> EditServer {
        let unset = |v: &Option<String>| v.as_deref().unwrap_or("").to_string();
        let mut edit = EditServer::default();
        if observed.name != self.name {
            edit.name = Some(self.name.clone());
        }
        if !observed
            .color
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(&self.color))
        {
            edit.color = Some(self.color.clone());
        }
        if observed.track_opens != Some(self.track_opens) {
            edit.track_opens = Some(self.track_opens);
        }
        if observed.track_links.as_deref() != Some(self.track_links.as_str()) {
            edit.track_links = Some(self.track_links);
        }
        if unset(&observed.inbound_hook_url) != unset(&self.inbound_hook_url) {
            edit.inbound_hook_url = Some(unset(&self.inbound_hook_url));
        }
        if !unset(&observed.inbound_domain).eq_ignore_ascii_case(&unset(&self.inbound_domain)) {
            edit.inbound_domain = Some(unset(&self.inbound_domain));
        }
        edit
    }

    /// Pure: a message when `observed` has another delivery type. Postmark cannot change
    /// a server's `DeliveryType` after creation, so this needs a person. An answer without
    /// the field (the older API description has none) is taken as no conflict.
    pub fn delivery_type_conflict(&self, observed: &Server) -> Option<String> {
        let actual = observed.delivery_type.as_deref()?;
        if actual.eq_ignore_ascii_case(self.delivery_type.as_str()) {
            return None;
        }
        Some(format!(
            "server {} (ID {}) is a {actual} server but the configuration asks for {}; \
             Postmark cannot change a server's delivery type after creation: change \
             email.postmark.deliveryType back, or delete the server in Postmark so that the \
             operator creates a new one",
            observed.name,
            observed.id,
            self.delivery_type.as_str()
        ))
    }
}

/// Pure: the servers of a listing page whose name is exactly `name` (the listing's `name`
/// filter matches substrings).
pub fn exact_matches(servers: Vec<Server>, name: &str) -> Vec<Server> {
    servers.into_iter().filter(|s| s.name == name).collect()
}

#[cfg(test)]
mod tests {
    use super::super::config::{PostmarkConfig, test_config as cfg};
    use super::*;

    fn observed(d: &DesiredServer) -> Server {
        Server {
            id: 7,
            name: d.name.clone(),
            api_tokens: vec!["tok".into()],
            color: Some(d.color.clone()),
            delivery_type: Some("Live".into()),
            track_opens: Some(false),
            track_links: Some("None".into()),
            inbound_hook_url: d.inbound_hook_url.clone(),
            inbound_domain: d.inbound_domain.clone(),
        }
    }

    #[test]
    fn create_body_uses_postmark_field_names_and_privacy_defaults() {
        let body = serde_json::to_value(cfg().desired("acme").create_body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "Name": "dealerdesk-acme",
                "Color": "blue",
                "DeliveryType": "Live",
                "TrackOpens": false,
                "TrackLinks": "None",
                "InboundHookUrl": "https://hooks.example/inbound",
            })
        );
        // Set by an edit after the create (see `CreateServer`).
        let fresh = Server {
            id: 1,
            name: "dealerdesk-acme".into(),
            color: Some("blue".into()),
            delivery_type: Some("Live".into()),
            track_opens: Some(false),
            track_links: Some("None".into()),
            inbound_hook_url: Some("https://hooks.example/inbound".into()),
            ..Server::default()
        };
        let edit = cfg().desired("acme").edit_for(&fresh);
        assert_eq!(
            serde_json::to_value(&edit).unwrap(),
            serde_json::json!({"InboundDomain": "acme.inbound.example"})
        );
        assert_eq!(edit.sets_inbound_domain(), Some("acme.inbound.example"));
        assert!(edit.without_inbound_domain().is_empty());
        let sandbox = PostmarkConfig {
            delivery_type: DeliveryType::Sandbox,
            ..PostmarkConfig::default()
        };
        let body = serde_json::to_value(sandbox.desired("acme").create_body()).unwrap();
        assert_eq!(body["DeliveryType"], "Sandbox");
        assert!(body.get("InboundHookUrl").is_none());
        assert!(body.get("InboundDomain").is_none());
    }

    #[test]
    fn no_drift_means_no_edit() {
        let d = cfg().desired("acme");
        let mut o = observed(&d);
        assert!(d.edit_for(&o).is_empty());
        o.color = Some("BLUE".into());
        assert!(d.edit_for(&o).is_empty(), "colour compares without case");
        let plain = PostmarkConfig::default().desired("acme");
        let mut o = observed(&plain);
        o.inbound_hook_url = Some(String::new());
        o.inbound_domain = None;
        assert!(
            plain.edit_for(&o).is_empty(),
            "empty and absent are both unset"
        );
    }

    #[test]
    fn drift_edits_only_what_differs() {
        let d = cfg().desired("acme");
        let mut o = observed(&d);
        o.track_opens = Some(true);
        o.track_links = Some("HtmlAndTextTracking".into());
        let edit = d.edit_for(&o);
        assert_eq!(
            serde_json::to_value(&edit).unwrap(),
            serde_json::json!({"TrackOpens": false, "TrackLinks": "None"})
        );
        assert_eq!(edit.fields(), ["TrackOpens", "TrackLinks"]);

        let plain = PostmarkConfig::default().desired("acme");
        let mut o = observed(&plain);
        o.inbound_hook_url = Some("https://someone.example/steal".into());
        o.name = "renamed".into();
        o.color = None;
        assert_eq!(
            serde_json::to_value(plain.edit_for(&o)).unwrap(),
            serde_json::json!({"Name": "dealerdesk-acme", "Color": "blue", "InboundHookUrl": ""})
        );
    }

    #[test]
    fn delivery_type_conflicts_need_a_person() {
        let d = cfg().desired("acme");
        let mut o = observed(&d);
        assert_eq!(d.delivery_type_conflict(&o), None);
        o.delivery_type = None;
        assert_eq!(d.delivery_type_conflict(&o), None);
        o.delivery_type = Some("Sandbox".into());
        let m = d.delivery_type_conflict(&o).unwrap();
        assert!(m.contains("Sandbox") && m.contains("Live") && m.contains("deliveryType"));
    }

    #[test]
    fn exact_name_filter() {
        let s = |id, name: &str| Server {
            id,
            name: name.into(),
            ..Server::default()
        };
        let got = exact_matches(
            vec![
                s(1, "dealerdesk-acme2"),
                s(2, "dealerdesk-acme"),
                s(3, "x-dealerdesk-acme"),
                s(4, "Dealerdesk-Acme"),
            ],
            "dealerdesk-acme",
        );
        assert_eq!(got.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn server_debug_hides_tokens() {
        let s = Server {
            api_tokens: vec!["very-secret-token".into()],
            ..Server::default()
        };
        assert!(!format!("{s:?}").contains("very-secret-token"));
    }
}
