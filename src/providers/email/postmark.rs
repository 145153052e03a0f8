//! Postmark server per tenant, through the Account API (`X-Postmark-Account-Token`).
//!
//! Every tenant gets one Postmark "server" named `<serverNamePrefix>-<tenant>`
//! ([`server_name`]). The endpoints used are those of Postmark's published Account API
//! description (`account.yml`, Swagger 2.0; a trimmed copy is vendored in
//! `tests/specs/postmark-account-servers.swagger.yaml`) and of the servers API reference
//! (<https://postmarkapp.com/developer/api/servers-api>):
//!
//! | step       | request                                              |
//! |------------|------------------------------------------------------|
//! | observe    | `GET /servers?count=500&offset=N&name=<name>`        |
//! | create     | `POST /servers`                                      |
//! | read token | `GET /servers/{serverid}` (only if a listing lacks it)|
//! | repair     | `PUT /servers/{serverid}` (only the drifted fields)  |
//! | erase      | `DELETE /servers/{serverid}`                         |
//!
//! The `name` filter of the listing is a substring match, so the answer is filtered for the
//! exact name and paged through. A crash after `POST /servers` succeeded is healed by the
//! next pass finding the server by name and reading its token from it: never a second
//! server.
//!
//! The tenant's Secret holds [`SECRET_SERVER_TOKEN`] (`POSTMARK_SERVER_TOKEN`, the server's
//! API token, `ApiTokens[0]`, used as `X-Postmark-Server-Token` to send mail) and
//! [`SECRET_SERVER_ID`] (`POSTMARK_SERVER_ID`, Postmark's numeric server ID). Nothing else.
//!
//! Residency: Postmark hosts every server in the United States; there is no EU hosting.
//! Postmark is registered as a third-country processor under EU standard contractual
//! clauses (see [`crate::processors`]), so this provider does not call
//! [`crate::providers::residency::check_before_create`] (it would refuse every create); the
//! cluster policy that may forbid third-country processors is enforced by the reconciler
//! before any provider is called. Resources are reported with location
//! [`POSTMARK_LOCATION`] (`us`), and Postmark reports no location of its own to check.
//!
//! Errors (status codes and error codes from <https://postmarkapp.com/developer/api/overview>):
//! 401 (bad or missing account token, ErrorCode 10) is permanent and never shows the token;
//! 422 with `{"ErrorCode", "Message"}` is permanent and shows both (603 "Server name already
//! exists", 601 "Server does not exist", 604 "You don't have delete access", ...); 429, 5xx,
//! timeouts and refused connections are transient.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::processors::ids;
use crate::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo,
};

/// Postmark servers are hosted in the United States; there is no EU hosting.
pub const POSTMARK_LOCATION: &str = "us";

/// The service name in errors and conditions.
pub const SERVICE: &str = "Postmark";

/// Secret key: the server's API token (`X-Postmark-Server-Token` for sending).
pub const SECRET_SERVER_TOKEN: &str = "POSTMARK_SERVER_TOKEN";
/// Secret key: Postmark's numeric server ID.
pub const SECRET_SERVER_ID: &str = "POSTMARK_SERVER_ID";

/// The kind of the one external resource, as planned and reported.
pub const RESOURCE_KIND: &str = "PostmarkServer";

/// Header that carries the account token.
pub const ACCOUNT_TOKEN_HEADER: &str = "X-Postmark-Account-Token";

/// Servers per listing page (`count`); Postmark allows at most 500.
pub const PAGE_SIZE: u64 = 500;
/// Pages read at most when looking a name up (100,000 servers); a guard against an answer
/// whose `TotalCount` never ends.
const MAX_PAGES: u64 = 200;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Postmark API error codes this provider acts on
/// (<https://postmarkapp.com/developer/api/overview#error-codes>).
pub mod error_codes {
    /// Bad or missing API token (with HTTP 401).
    pub const BAD_TOKEN: i64 = 10;
    /// Server does not exist.
    pub const SERVER_NOT_FOUND: i64 = 601;
    /// Server name already exists.
    pub const DUPLICATE_NAME: i64 = 603;
    /// You don't have delete access: server deletion through the API is off for the
    /// account until Postmark support enables it.
    pub const NO_DELETE_ACCESS: i64 = 604;
}

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
    /// Inbound domain suffix: a tenant's inbound domain is `<tenant>.<inboundDomain>`.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_domain: Option<String>,
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

/// `ServerListingResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerList {
    #[serde(default)]
    servers: Vec<Server>,
    #[serde(default)]
    total_count: u64,
}

/// `StandardPostmarkResponse`: Postmark's error body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
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
            inbound_domain: self.inbound_domain.clone(),
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

/// What a request was for: decides how some statuses are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    List,
    Create,
    Get,
    Edit,
    Delete,
}

/// `ErrorCode N: Message` from Postmark's error body, or a short cleaned excerpt of a body
/// that is not one, or the status's reason phrase.
fn describe(status: u16, body: &[u8]) -> (Option<i64>, String) {
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body)
        && (e.error_code.is_some() || e.message.is_some())
    {
        let text = match (e.error_code, e.message) {
            (Some(code), Some(m)) => format!("ErrorCode {code}: {}", clean(&m)),
            (Some(code), None) => format!("ErrorCode {code}"),
            (None, Some(m)) => clean(&m),
            (None, None) => unreachable!(),
        };
        return (e.error_code, text);
    }
    let text = clean(&String::from_utf8_lossy(body));
    if text.is_empty() {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message");
        (None, reason.to_string())
    } else {
        (None, text)
    }
}

/// One line, at most 300 characters.
fn clean(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    match trimmed.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed.to_string(),
    }
}

/// Whether an answer says the server does not exist (404, or 422 with ErrorCode 601).
pub fn is_not_found(status: u16, body: &[u8]) -> bool {
    status == 404
        || (status == 422 && describe(status, body).0 == Some(error_codes::SERVER_NOT_FOUND))
}

/// Whether an answer is Postmark's duplicate server name error (422, ErrorCode 603).
pub fn is_duplicate_name(status: u16, body: &[u8]) -> bool {
    status == 422 && describe(status, body).0 == Some(error_codes::DUPLICATE_NAME)
}

/// Pure: the error for a non-success answer. Messages carry the status and Postmark's own
/// error code and text, never a request's headers, body or URL.
pub fn classify(op: Operation, status: u16, body: &[u8]) -> ProviderError {
    let (code, text) = describe(status, body);
    if status == 401 {
        return ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "HTTP 401: Postmark rejected the account token ({text}); check the token \
                 given by email.postmark.accountTokenFile or the variable named by \
                 email.postmark.accountTokenEnv"
            ),
        };
    }
    if op == Operation::Delete
        && (status == 403 || (status == 422 && code == Some(error_codes::NO_DELETE_ACCESS)))
    {
        return ProviderError::DeletionBlocked {
            service: SERVICE,
            message: format!(
                "HTTP {status}: {text}. Postmark deletes servers through the API only after \
                 its support has enabled server deletion for the account: ask Postmark \
                 support (support@postmarkapp.com) to enable the DELETE server API, and \
                 deletion resumes by itself; or abandon the component with the annotation \
                 `dealerdesk.de/abandon: email` on the DealerTenant (the server is then kept \
                 and has to be removed by hand in Postmark)"
            ),
        };
    }
    ProviderError::from_status(SERVICE, status, text)
}

/// Replaces every occurrence of `secret` in the error's message (defence in depth: no
/// Postmark answer is known to echo a token).
fn scrub(err: ProviderError, secret: &str) -> ProviderError {
    if secret.is_empty() {
        return err;
    }
    let s = |m: String| m.replace(secret, "<redacted>");
    match err {
        ProviderError::Unavailable { service, message } => ProviderError::Unavailable {
            service,
            message: s(message),
        },
        ProviderError::Refused { service, message } => ProviderError::Refused {
            service,
            message: s(message),
        },
        ProviderError::NotConfigured { service, message } => ProviderError::NotConfigured {
            service,
            message: s(message),
        },
        ProviderError::DeletionBlocked { service, message } => ProviderError::DeletionBlocked {
            service,
            message: s(message),
        },
        ProviderError::Foreign { service, message } => ProviderError::Foreign {
            service,
            message: s(message),
        },
        ProviderError::OperationFailed { service, message } => ProviderError::OperationFailed {
            service,
            message: s(message),
        },
        other @ ProviderError::Residency { .. } => other,
    }
}

fn not_configured(message: impl Into<String>) -> ProviderError {
    ProviderError::NotConfigured {
        service: SERVICE,
        message: message.into(),
    }
}

fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::Refused {
        service: SERVICE,
        message: message.into(),
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

/// The Postmark email provider.
pub struct PostmarkProvider {
    cfg: PostmarkConfig,
    base: Url,
    /// Kept only to scrub messages; the client sends it as a sensitive default header.
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for PostmarkProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostmarkProvider")
            .field("endpoint", &self.base.as_str())
            .field("server_name_prefix", &self.cfg.server_name_prefix)
            .field("account_token", &"<redacted>")
            .finish()
    }
}

impl PostmarkProvider {
    /// Reads the account token (file, else environment) and builds the HTTP client.
    pub fn from_config(cfg: &PostmarkConfig) -> Result<Self, ProviderError> {
        cfg.validate().map_err(not_configured)?;
        let token = read_account_token(cfg)?;
        Self::new(cfg, token)
    }

    /// With an account token at hand.
    pub fn new(cfg: &PostmarkConfig, account_token: String) -> Result<Self, ProviderError> {
        cfg.validate().map_err(not_configured)?;
        let base = Url::parse(&cfg.endpoint)
            .map_err(|e| not_configured(format!("endpoint: not a URL: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(not_configured("endpoint: not a base URL"));
        }
        let mut token_value = HeaderValue::from_str(&account_token).map_err(|_| {
            not_configured("the account token holds characters an HTTP header cannot carry")
        })?;
        token_value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-postmark-account-token"),
            token_value,
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        crate::providers::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ProviderError::transport(SERVICE, &e))?;
        Ok(Self {
            cfg: cfg.clone(),
            base,
            token: account_token,
            http,
        })
    }

    pub fn config(&self) -> &PostmarkConfig {
        &self.cfg
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `cannot_be_a_base` was ruled out in `new`.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request; `Ok` carries the body of a 2xx answer, every other answer is
    /// classified.
    async fn send<B: Serialize + ?Sized>(
        &self,
        op: Operation,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ProviderError> {
        self.send_raw(op, method, url, body)
            .await?
            .map_err(|raw| raw.into_error(op, &self.token))
    }

    /// Like [`Self::send`], but hands a non-success answer back raw, for the callers that
    /// read particular statuses (not found, duplicate name).
    async fn send_raw<B: Serialize + ?Sized>(
        &self,
        op: Operation,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Result<Vec<u8>, RawError>, ProviderError> {
        tracing::debug!(service = SERVICE, ?op, %method, "request");
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::transport(SERVICE, &e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::transport(SERVICE, &e))?;
        if (200..300).contains(&status) {
            Ok(Ok(bytes.to_vec()))
        } else {
            Ok(Err(RawError {
                status,
                body: bytes.to_vec(),
            }))
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, ProviderError> {
        serde_json::from_slice(body).map_err(|e| ProviderError::Unavailable {
            service: SERVICE,
            message: format!(
                "the answer to {what} could not be read (line {}, column {})",
                e.line(),
                e.column()
            ),
        })
    }

    /// Every server named exactly `name`, reading all pages of the listing.
    pub async fn find_by_name(&self, name: &str) -> Result<Vec<Server>, ProviderError> {
        let mut found = Vec::new();
        let mut offset = 0u64;
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&["servers"]);
            url.query_pairs_mut()
                .append_pair("count", &PAGE_SIZE.to_string())
                .append_pair("offset", &offset.to_string())
                .append_pair("name", name);
            let body = self
                .send::<()>(Operation::List, Method::GET, url, None)
                .await?;
            let page: ServerList = Self::decode("the server listing", &body)?;
            let len = page.servers.len() as u64;
            found.extend(exact_matches(page.servers, name));
            offset += len;
            if len == 0 || offset >= page.total_count {
                return Ok(found);
            }
        }
        Err(ProviderError::Unavailable {
            service: SERVICE,
            message: format!(
                "the server listing did not end after {MAX_PAGES} pages of {PAGE_SIZE}"
            ),
        })
    }

    /// The server with `id`, or `None` when Postmark says it does not exist.
    pub async fn get_server(&self, id: u64) -> Result<Option<Server>, ProviderError> {
        let url = self.url(&["servers", &id.to_string()]);
        match self
            .send_raw::<()>(Operation::Get, Method::GET, url, None)
            .await?
        {
            Ok(body) => Ok(Some(Self::decode("a server read", &body)?)),
            Err(raw) if is_not_found(raw.status, &raw.body) => Ok(None),
            Err(raw) => Err(raw.into_error(Operation::Get, &self.token)),
        }
    }

    /// Creates a server; `Ok(Err(raw))` when Postmark says the name is taken.
    async fn create_server(
        &self,
        body: &CreateServer,
    ) -> Result<Result<Server, RawError>, ProviderError> {
        let url = self.url(&["servers"]);
        match self
            .send_raw(Operation::Create, Method::POST, url, Some(body))
            .await?
        {
            Ok(b) => Ok(Ok(Self::decode("the server create", &b)?)),
            Err(raw) if is_duplicate_name(raw.status, &raw.body) => Ok(Err(raw)),
            Err(raw) => Err(raw.into_error(Operation::Create, &self.token)),
        }
    }

    async fn edit_server(&self, id: u64, body: &EditServer) -> Result<Server, ProviderError> {
        let url = self.url(&["servers", &id.to_string()]);
        let b = self
            .send(Operation::Edit, Method::PUT, url, Some(body))
            .await?;
        Self::decode("the server edit", &b)
    }

    /// Deletes the server; `false` when it was already gone.
    async fn delete_server(&self, id: u64) -> Result<bool, ProviderError> {
        let url = self.url(&["servers", &id.to_string()]);
        match self
            .send_raw::<()>(Operation::Delete, Method::DELETE, url, None)
            .await?
        {
            Ok(_) => Ok(true),
            Err(raw) if is_not_found(raw.status, &raw.body) => Ok(false),
            Err(raw) => Err(raw.into_error(Operation::Delete, &self.token)),
        }
    }

    /// The server's API tokens; read with `GET /servers/{id}` when `server` came without.
    async fn tokens_of(&self, server: &Server) -> Result<Vec<String>, ProviderError> {
        if !server.api_tokens.is_empty() {
            return Ok(server.api_tokens.clone());
        }
        let read = self
            .get_server(server.id)
            .await?
            .ok_or_else(|| ProviderError::Unavailable {
                service: SERVICE,
                message: format!(
                    "server {} (ID {}) disappeared while it was read",
                    server.name, server.id
                ),
            })?;
        if read.api_tokens.is_empty() {
            return Err(refused(format!(
                "Postmark lists no API token for server {} (ID {}); add one in Postmark",
                server.name, server.id
            )));
        }
        Ok(read.api_tokens)
    }

    /// The server of a previous Secret, when the name lookup found none: a server renamed
    /// by hand is still ours if the Secret's token is one of its tokens.
    async fn find_by_secret(
        &self,
        secret: Option<&SecretData>,
    ) -> Result<Option<Server>, ProviderError> {
        let Some(s) = secret else { return Ok(None) };
        let (Some(id), Some(token)) = (
            s.get(SECRET_SERVER_ID).and_then(|v| v.parse::<u64>().ok()),
            s.get(SECRET_SERVER_TOKEN),
        ) else {
            return Ok(None);
        };
        let Some(server) = self.get_server(id).await? else {
            return Ok(None);
        };
        let tokens = self.tokens_of(&server).await?;
        Ok(tokens.iter().any(|t| t == token).then_some(server))
    }
}

/// A non-success answer, unclassified.
struct RawError {
    status: u16,
    body: Vec<u8>,
}

impl RawError {
    fn into_error(self, op: Operation, token: &str) -> ProviderError {
        scrub(classify(op, self.status, &self.body), token)
    }
}

#[async_trait::async_trait]
impl Provider for PostmarkProvider {
    fn component(&self) -> Component {
        Component::Email
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let desired = self.cfg.desired(&tenant.name);

        // Observe by name (a crash after create is healed here), then by the Secret's ID.
        let mut found = self.find_by_name(&desired.name).await?;
        if found.len() > 1 {
            let ids: Vec<String> = found.iter().map(|s| s.id.to_string()).collect();
            return Err(refused(format!(
                "{} servers are named {} (IDs {}); exactly one is expected: remove the others \
                 in Postmark",
                found.len(),
                desired.name,
                ids.join(", ")
            )));
        }
        let mut observed = found.pop();
        if observed.is_none() {
            observed = self.find_by_secret(secret).await?;
        }

        // Create what is missing. No `residency::check_before_create`: Postmark has no EU
        // hosting and is an allowed third-country processor (SCCs); the policy that may
        // forbid such processors is the reconciler's, before this call (see module docs).
        let mut created = false;
        let server = match observed {
            Some(s) => s,
            None => match self.create_server(&desired.create_body()).await? {
                Ok(s) => {
                    created = true;
                    tracing::info!(service = SERVICE, server = %s.name, id = s.id, "server created");
                    s
                }
                Err(raw) => {
                    // Name taken although the lookup found none: a concurrent create, or a
                    // server whose name differs only in case. Adopt an exact match only.
                    let mut again = self.find_by_name(&desired.name).await?;
                    if again.len() == 1 {
                        again.remove(0)
                    } else {
                        return Err(raw.into_error(Operation::Create, &self.token));
                    }
                }
            },
        };

        if let Some(conflict) = desired.delivery_type_conflict(&server) {
            return Err(refused(conflict));
        }

        // Bring drifted settings back (also checks what a create returned).
        let edit = desired.edit_for(&server);
        let repaired = edit.fields();
        let server = if edit.is_empty() {
            server
        } else {
            tracing::info!(service = SERVICE, server = %desired.name, id = server.id,
                fields = ?repaired, "repairing drifted server settings");
            let mut edited = self.edit_server(server.id, &edit).await?;
            if edited.api_tokens.is_empty() {
                edited.api_tokens = server.api_tokens;
            }
            edited
        };

        // Credentials. Postmark's Account API (the servers endpoints used here) cannot
        // rotate a server's API token, so a lost Secret is reissued with the current token
        // read back from the server; a person can add and remove tokens in Postmark's UI,
        // and the next pass then issues the new one.
        let tokens = self.tokens_of(&server).await?;
        let id = server.id.to_string();
        let secret_is_current = secret.is_some_and(|s| {
            s.get(SECRET_SERVER_ID) == Some(id.as_str())
                && s.get(SECRET_SERVER_TOKEN)
                    .is_some_and(|t| tokens.iter().any(|x| x == t))
        });
        let new_secret = (!secret_is_current).then(|| {
            SecretData::new()
                .with(SECRET_SERVER_TOKEN, tokens[0].clone())
                .with(SECRET_SERVER_ID, id.clone())
        });

        let what = if created {
            "created".to_string()
        } else if !repaired.is_empty() {
            format!("repaired {}", repaired.join(", "))
        } else {
            "in sync".to_string()
        };
        let issued = match (&new_secret, secret) {
            (Some(_), None) => "; credentials issued",
            (Some(_), Some(_)) => "; credentials reissued",
            (None, _) => "",
        };
        Ok(Reconciled {
            ready: true,
            reason: None,
            message: format!(
                "Postmark server {} (ID {id}, {}) {what}{issued}",
                desired.name,
                desired.delivery_type.as_str()
            ),
            secret: new_secret,
            resources: vec![
                ExternalResource::new(
                    RESOURCE_KIND,
                    desired.name.clone(),
                    Some(POSTMARK_LOCATION.into()),
                    ids::POSTMARK,
                )
                .with_id(id),
            ],
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = server_name(&self.cfg.server_name_prefix, &tenant.name);
        let mut erased = Erased::default();
        for server in self.find_by_name(&name).await? {
            if self.delete_server(server.id).await? {
                tracing::info!(service = SERVICE, server = %name, id = server.id, "server deleted");
                erased.resources.push(
                    ExternalResource::new(
                        RESOURCE_KIND,
                        name.clone(),
                        Some(POSTMARK_LOCATION.into()),
                        ids::POSTMARK,
                    )
                    .with_id(server.id.to_string()),
                );
            }
        }
        Ok(erased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PostmarkConfig {
        PostmarkConfig {
            inbound_hook_url: Some("https://hooks.example/inbound".into()),
            inbound_domain: Some("inbound.example".into()),
            ..PostmarkConfig::default()
        }
    }

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
                "InboundDomain": "acme.inbound.example",
            })
        );
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
    fn errors_are_classified() {
        let e422 = |code: i64, m: &str| {
            serde_json::to_vec(&serde_json::json!({"ErrorCode": code, "Message": m})).unwrap()
        };
        let dup = classify(
            Operation::Create,
            422,
            &e422(603, "Server name already exists."),
        );
        assert!(!dup.is_transient());
        assert!(
            dup.to_string()
                .contains("ErrorCode 603: Server name already exists.")
        );
        assert!(is_duplicate_name(422, &e422(603, "x")));
        assert!(!is_duplicate_name(422, &e422(601, "x")));
        assert!(is_not_found(422, &e422(601, "Server does not exist.")));
        assert!(is_not_found(404, b""));
        assert!(!is_not_found(422, &e422(603, "x")));

        let auth = classify(Operation::List, 401, &e422(10, "Bad or missing API token"));
        assert_eq!(auth.reason(), "ProviderRefused");
        assert!(auth.to_string().contains("account token"));

        let blocked = classify(
            Operation::Delete,
            422,
            &e422(604, "You don't have delete access"),
        );
        assert_eq!(blocked.reason(), "DeletionBlocked");
        let m = blocked.to_string();
        assert!(m.contains("support") && m.contains("dealerdesk.de/abandon: email"));
        // The same code outside a delete is just a refusal.
        assert_eq!(
            classify(Operation::Edit, 422, &e422(604, "x")).reason(),
            "ProviderRefused"
        );
        assert_eq!(
            classify(Operation::Delete, 403, b"").reason(),
            "DeletionBlocked"
        );

        for s in [429u16, 500, 502, 503, 504] {
            assert!(classify(Operation::List, s, b"").is_transient(), "{s}");
        }
        let html = classify(Operation::List, 502, b"<html>\n bad gateway \n</html>");
        assert!(!html.to_string().contains('\n'));
        let long = classify(Operation::List, 500, "x".repeat(5000).as_bytes());
        assert!(long.to_string().len() < 400);
    }

    #[test]
    fn messages_are_scrubbed_of_the_token() {
        let e = classify(
            Operation::List,
            422,
            br#"{"ErrorCode":1,"Message":"echo s3cr3t"}"#,
        );
        let e = scrub(e, "s3cr3t");
        assert!(!e.to_string().contains("s3cr3t"));
        assert!(e.to_string().contains("<redacted>"));
    }

    #[test]
    fn server_debug_hides_tokens() {
        let s = Server {
            api_tokens: vec!["very-secret-token".into()],
            ..Server::default()
        };
        assert!(!format!("{s:?}").contains("very-secret-token"));
    }

    #[test]
    fn token_file_wins_and_provider_debug_hides_it() {
        let dir = std::env::temp_dir().join(format!("pm-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "file-token-123\n").unwrap();
        let cfg = PostmarkConfig {
            account_token_env: "DEALERDESK_TEST_SURELY_UNSET_VARIABLE".into(),
            account_token_file: Some(file.display().to_string()),
            ..PostmarkConfig::default()
        };
        assert_eq!(read_account_token(&cfg).unwrap(), "file-token-123");
        let p = PostmarkProvider::from_config(&cfg).unwrap();
        assert!(!format!("{p:?}").contains("file-token-123"));

        let none = PostmarkConfig {
            account_token_file: None,
            ..cfg.clone()
        };
        let e = read_account_token(&none).unwrap_err();
        assert_eq!(e.reason(), "NotConfigured");
        assert!(
            e.to_string()
                .contains("DEALERDESK_TEST_SURELY_UNSET_VARIABLE")
        );

        std::fs::write(&file, "  \n").unwrap();
        assert_eq!(
            read_account_token(&cfg).unwrap_err().reason(),
            "NotConfigured"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn urls_keep_a_path_prefix() {
        let cfg = PostmarkConfig {
            endpoint: "http://127.0.0.1:9/prefix/".into(),
            ..PostmarkConfig::default()
        };
        let p = PostmarkProvider::new(&cfg, "t".into()).unwrap();
        assert_eq!(
            p.url(&["servers", "5"]).as_str(),
            "http://127.0.0.1:9/prefix/servers/5"
        );
        let p = PostmarkProvider::new(&PostmarkConfig::default(), "t".into()).unwrap();
        assert_eq!(
            p.url(&["servers"]).as_str(),
            "https://api.postmarkapp.com/servers"
        );
    }
}
