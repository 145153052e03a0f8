//! The wire: the operator's credential, the HTTP client, and the requests the provider sends.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, Url};
use serde_json::{Value, json};

use super::errors::{describe_error, error_type};
use super::keys::{KeyInfo, parse_keys};
use super::{IndexState, SERVICE, SearchConfig, api_key_body, index_name, parse_index_state};
use crate::processors::ids;
use crate::providers::requests::{Meter, RequestMetrics};
use crate::providers::{Component, ExternalResource, ProviderError, TenantInfo};

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
    pub(super) fn secret_forms(&self) -> Vec<String> {
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
pub(super) enum As<'a> {
    Operator,
    /// A tenant's `encoded` key, to check that it authenticates.
    TenantKey(&'a str),
}

/// Status and JSON body of an answer (`Null` when the body is not JSON).
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

/// The Elasticsearch provider.
pub struct ElasticsearchProvider {
    pub(super) cfg: SearchConfig,
    base: Url,
    http: reqwest::Client,
    pub(super) credential: OperatorCredential,
    meter: Meter,
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
            meter: RequestMetrics::default().meter(Component::Search, ids::ELASTIC),
        })
    }

    /// Counts its requests into `metrics` (the operator's).
    pub fn observed_by(mut self, metrics: &RequestMetrics) -> Self {
        self.meter = metrics.meter(Component::Search, ids::ELASTIC);
        self
    }

    pub(super) fn name(&self, tenant: &TenantInfo) -> String {
        index_name(&self.cfg.index_prefix, &tenant.name)
    }

    pub(super) fn resource(&self, kind: &str, name: &str, id: Option<&str>) -> ExternalResource {
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

    pub(super) async fn call(
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
        let (status, bytes) =
            (self.meter.exchange(rb).await).map_err(|e| ProviderError::transport(SERVICE, &e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    // --- index ---------------------------------------------------------------------------

    pub(super) async fn get_index(&self, name: &str) -> Result<Option<IndexState>, ProviderError> {
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

    // --- API keys ------------------------------------------------------------------------

    /// Every key with exactly this name (valid or not).
    pub(super) async fn list_keys(&self, name: &str) -> Result<Vec<KeyInfo>, ProviderError> {
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
    pub(super) async fn invalidate(
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
    pub(super) async fn create_key(
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
    pub(super) async fn key_authenticates(
        &self,
        encoded: &str,
        id: &str,
    ) -> Result<bool, ProviderError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
