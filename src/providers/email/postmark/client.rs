//! The wire: Postmark's Account API over HTTPS, one method per request.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};

use super::config::{PostmarkConfig, read_account_token};
use super::desired::{CreateServer, EditServer, Server, exact_matches};
use super::errors::{
    Operation, RawError, is_duplicate_name, is_not_found, not_configured, refused,
};
use super::{SECRET_SERVER_ID, SECRET_SERVER_TOKEN, SERVICE};
use crate::processors::ids;
use crate::providers::requests::{Meter, RequestMetrics};
use crate::providers::{Component, ProviderError, SecretData};

/// Servers per listing page (`count`); Postmark allows at most 500.
pub const PAGE_SIZE: u64 = 500;
/// Pages read at most when looking a name up (100,000 servers); a guard against an answer
/// whose `TotalCount` never ends.
const MAX_PAGES: u64 = 200;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `ServerListingResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerList {
    #[serde(default)]
    servers: Vec<Server>,
    #[serde(default)]
    total_count: u64,
}

/// The Postmark email provider.
pub struct PostmarkProvider {
    pub(super) cfg: PostmarkConfig,
    base: Url,
    /// Kept only to scrub messages; the client sends it as a sensitive default header.
    pub(super) token: String,
    http: reqwest::Client,
    meter: Meter,
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
            meter: RequestMetrics::default().meter(Component::Email, ids::POSTMARK),
        })
    }

    /// Counts its requests into `metrics` (the operator's).
    pub fn observed_by(mut self, metrics: &RequestMetrics) -> Self {
        self.meter = metrics.meter(Component::Email, ids::POSTMARK);
        self
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
        let (status, body) =
            (self.meter.exchange(req).await).map_err(|e| ProviderError::transport(SERVICE, &e))?;
        if (200..300).contains(&status) {
            Ok(Ok(body))
        } else {
            Ok(Err(RawError { status, body }))
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
    pub(super) async fn create_server(
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

    pub(super) async fn edit_server(
        &self,
        id: u64,
        body: &EditServer,
    ) -> Result<Server, ProviderError> {
        self.edit_server_raw(id, body)
            .await?
            .map_err(|raw| raw.into_error(Operation::Edit, &self.token))
    }

    /// Like [`Self::edit_server`], but hands a non-success answer back raw (an inbound
    /// domain Postmark refuses is not an error of the whole pass).
    pub(super) async fn edit_server_raw(
        &self,
        id: u64,
        body: &EditServer,
    ) -> Result<Result<Server, RawError>, ProviderError> {
        let url = self.url(&["servers", &id.to_string()]);
        match self
            .send_raw(Operation::Edit, Method::PUT, url, Some(body))
            .await?
        {
            Ok(b) => Ok(Ok(Self::decode("the server edit", &b)?)),
            Err(raw) => Ok(Err(raw)),
        }
    }

    /// Deletes the server; `false` when it was already gone.
    pub(super) async fn delete_server(&self, id: u64) -> Result<bool, ProviderError> {
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
    pub(super) async fn tokens_of(&self, server: &Server) -> Result<Vec<String>, ProviderError> {
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
    pub(super) async fn find_by_secret(
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

#[cfg(test)]
mod tests {
    use super::*;

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
