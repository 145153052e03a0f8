//! Operator configuration: one YAML file, typed and validated at start.
//!
//! The file holds settings only. Credentials never live in it: they come from the
//! environment or from mounted Secret files (see each provider). A key that looks like a
//! credential is refused with a clear error instead of being silently accepted.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use crate::api::regions;
use crate::api::validate::name_problem;
use crate::desired::quantity;
use crate::processors::Processor;
use crate::providers::database::DatabaseConfig;
use crate::providers::email::EmailConfig;
use crate::providers::search::SearchConfig;
use crate::providers::storage::StorageConfig;

/// Environment variable that names the configuration file when `--config` is absent.
pub const CONFIG_ENV: &str = "DEALERTENANT_CONFIG";

/// Everything the operator needs to know that is not in a DealerTenant.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// Namespace the operator runs in; erasure receipts are kept here.
    #[serde(default = "default_operator_namespace")]
    pub operator_namespace: String,
    /// Where ingress traffic to tenant servers comes from.
    #[serde(default)]
    pub ingress: IngressConfig,
    /// Defaults for every tenant server.
    #[serde(default)]
    pub server: ServerDefaults,
    /// Limits of every tenant namespace.
    #[serde(default)]
    pub namespace: NamespaceDefaults,
    /// Seconds between full resyncs of a healthy tenant.
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// The cluster the tenant servers run in.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Tenant databases.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Tenant buckets.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Tenant email servers.
    #[serde(default)]
    pub email: EmailConfig,
    /// Tenant search indices.
    #[serde(default)]
    pub search: SearchConfig,
    /// Whether components may use processors outside the EU/EEA.
    #[serde(default)]
    pub third_country_processors: ThirdCountryPolicy,
    /// Entries that extend or override the built-in processor catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<Processor>,
}

/// Where the operator's cluster (and so every tenant namespace and server) runs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// Google Cloud region of the cluster (EU only).
    pub region: String,
    /// Processor that hosts it.
    #[serde(default = "default_cluster_processor")]
    pub processor: String,
}

fn default_cluster_processor() -> String {
    crate::processors::ids::GOOGLE_CLOUD.into()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            region: "europe-west3".into(),
            processor: default_cluster_processor(),
        }
    }
}

/// `thirdCountryProcessors`: under `deny`, a component that would use a processor outside
/// the EU/EEA is not provisioned, and its condition says why.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ThirdCountryPolicy {
    #[default]
    Allow,
    Deny,
}

/// The ingress controller whose Pods may reach tenant servers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressConfig {
    /// Namespace of the ingress controller (matched by `kubernetes.io/metadata.name`).
    pub namespace: String,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            namespace: "ingress-nginx".into(),
        }
    }
}

/// Defaults for the tenant application server.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerDefaults {
    /// Image used when a tenant names none.
    pub image: String,
    /// Port the server listens on (container and NetworkPolicy).
    #[serde(default = "default_port")]
    pub port: i32,
    /// HTTP path of the readiness and liveness probes.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Requests and limits when a tenant names none.
    #[serde(default = "default_server_resources")]
    pub resources: ResourceRequirements,
}

impl Default for ServerDefaults {
    fn default() -> Self {
        Self {
            image: "ghcr.io/dealerdesk/dealer-server:1.0.0".into(),
            port: default_port(),
            health_path: default_health_path(),
            resources: default_server_resources(),
        }
    }
}

/// ResourceQuota and LimitRange of each tenant namespace.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceDefaults {
    /// `ResourceQuota.spec.hard`.
    #[serde(default = "default_quota")]
    pub quota: BTreeMap<String, Quantity>,
    /// LimitRange `defaultRequest` for containers.
    #[serde(default = "default_container_request")]
    pub default_request: BTreeMap<String, Quantity>,
    /// LimitRange `default` (limit) for containers.
    #[serde(default = "default_container_limit")]
    pub default_limit: BTreeMap<String, Quantity>,
    /// Where tenant Pods may connect to. Everything else is denied.
    #[serde(default)]
    pub egress: EgressConfig,
}

impl Default for NamespaceDefaults {
    fn default() -> Self {
        Self {
            quota: default_quota(),
            default_request: default_container_request(),
            default_limit: default_container_limit(),
            egress: EgressConfig::default(),
        }
    }
}

/// Egress of tenant Pods: denied by default; allowed to the cluster DNS, to the tenant's
/// own namespace, and to what is listed here (the providers' endpoints). The cloud metadata
/// server (169.254.169.254) is never allowed, even inside a listed range.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressConfig {
    /// Destinations outside the cluster, as CIDRs with optional ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<EgressRule>,
}

/// One allowed destination.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// `10.20.0.0/16`, `2001:db8::/32`.
    pub cidr: String,
    /// TCP ports; all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl EgressConfig {
    /// Every CIDR parses, is not the metadata server alone, and no port is 0.
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.allow.iter().enumerate() {
            let net: ipnet::IpNet = r.cidr.parse().map_err(|_| {
                format!(
                    "namespace.egress.allow[{i}].cidr: \"{}\" is not a CIDR (such as 10.20.0.0/16)",
                    r.cidr
                )
            })?;
            if net == metadata_server() {
                return Err(format!(
                    "namespace.egress.allow[{i}].cidr: {} is the cloud metadata server, which tenant Pods may never reach",
                    r.cidr
                ));
            }
            if r.ports.contains(&0) {
                return Err(format!(
                    "namespace.egress.allow[{i}].ports: 0 is not a port"
                ));
            }
        }
        Ok(())
    }
}

/// The cloud metadata server, as a /32.
pub fn metadata_server() -> ipnet::IpNet {
    "169.254.169.254/32".parse().expect("a valid CIDR")
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            operator_namespace: default_operator_namespace(),
            ingress: IngressConfig::default(),
            server: ServerDefaults::default(),
            namespace: NamespaceDefaults::default(),
            resync_seconds: default_resync(),
            cluster: ClusterConfig::default(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            email: EmailConfig::default(),
            search: SearchConfig::default(),
            third_country_processors: ThirdCountryPolicy::default(),
            processors: Vec::new(),
        }
    }
}

fn default_operator_namespace() -> String {
    "dealertenant-system".into()
}
fn default_resync() -> u64 {
    600
}
fn default_port() -> i32 {
    8080
}
fn default_health_path() -> String {
    "/healthz".into()
}
fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}
fn default_server_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(q(&[("cpu", "100m"), ("memory", "256Mi")])),
        limits: Some(q(&[("memory", "512Mi")])),
        ..Default::default()
    }
}
fn default_quota() -> BTreeMap<String, Quantity> {
    q(&[
        ("requests.cpu", "4"),
        ("requests.memory", "8Gi"),
        ("limits.memory", "16Gi"),
        ("pods", "30"),
        ("services.loadbalancers", "0"),
        ("services.nodeports", "0"),
    ])
}
fn default_container_request() -> BTreeMap<String, Quantity> {
    q(&[("cpu", "50m"), ("memory", "64Mi")])
}
fn default_container_limit() -> BTreeMap<String, Quantity> {
    q(&[("memory", "512Mi")])
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not the expected YAML.
    #[error("configuration file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    /// A value is out of range or inconsistent.
    #[error("configuration is not valid: {0}")]
    Invalid(String),
}

/// Keys that would hold a credential; the file must never carry one.
const CREDENTIAL_WORDS: &[&str] = &[
    "password",
    "token",
    "secret",
    "apikey",
    "api_key",
    "privatekey",
];

impl OperatorConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: "<text>".into(),
            message,
        };
        let raw: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| parse_err(first_line(&e.to_string())))?
        };
        if let Some(key) = credential_key(&raw, "") {
            return Err(ConfigError::Invalid(format!(
                "{key}: credentials do not belong in the configuration file; \
                 provide them through the environment or a mounted Secret file"
            )));
        }
        let cfg: Self = serde_json::from_value(raw).map_err(|e| parse_err(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(why) = name_problem(&self.operator_namespace) {
            return bad(format!("operatorNamespace: {why}"));
        }
        if let Some(why) = name_problem(&self.ingress.namespace) {
            return bad(format!("ingress.namespace: {why}"));
        }
        if self.server.image.trim().is_empty() {
            return bad("server.image: must not be empty".into());
        }
        if !(1..=65535).contains(&self.server.port) {
            return bad(format!(
                "server.port: {} is not a port (1-65535)",
                self.server.port
            ));
        }
        if !self.server.health_path.starts_with('/') {
            return bad(format!(
                "server.healthPath: \"{}\" must start with '/'",
                self.server.health_path
            ));
        }
        if let Some(why) = regions::why_not_eu(&self.cluster.region) {
            return bad(format!("cluster.region: {why}"));
        }
        self.namespace
            .egress
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.database.validate().map_err(ConfigError::Invalid)?;
        self.storage.validate().map_err(ConfigError::Invalid)?;
        self.email.validate().map_err(ConfigError::Invalid)?;
        self.search.validate().map_err(ConfigError::Invalid)?;
        let catalog = crate::processors::catalog(&self.processors);
        for p in &self.processors {
            if p.country.len() != 2 || !p.country.bytes().all(|b| b.is_ascii_uppercase()) {
                return bad(format!(
                    "processors.{}.country: \"{}\" is not an ISO 3166-1 alpha-2 code",
                    p.id, p.country
                ));
            }
        }
        if !catalog.iter().any(|p| p.id == self.cluster.processor) {
            return bad(format!(
                "cluster.processor: \"{}\" is not in the processor catalog",
                self.cluster.processor
            ));
        }
        if self.resync_seconds < 10 {
            return bad(format!(
                "resyncSeconds: {} is too short (at least 10)",
                self.resync_seconds
            ));
        }
        let maps = [
            ("namespace.quota", &self.namespace.quota),
            ("namespace.defaultRequest", &self.namespace.default_request),
            ("namespace.defaultLimit", &self.namespace.default_limit),
        ];
        let res = &self.server.resources;
        let more = [
            ("server.resources.requests", res.requests.as_ref()),
            ("server.resources.limits", res.limits.as_ref()),
        ];
        for (field, map) in maps
            .into_iter()
            .chain(more.into_iter().filter_map(|(f, m)| m.map(|m| (f, m))))
        {
            for (key, value) in map {
                if quantity::parse(&value.0).is_none() {
                    return bad(format!(
                        "{field}.{key}: \"{}\" is not a Kubernetes quantity",
                        value.0
                    ));
                }
            }
        }
        Ok(())
    }
}

fn credential_key(v: &serde_json::Value, path: &str) -> Option<String> {
    let map = v.as_object()?;
    for (k, child) in map {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let lower = k.to_ascii_lowercase();
        // `*File`/`*Env` keys name where a credential is, which is what we want.
        let is_reference = lower.ends_with("file") || lower.ends_with("env");
        if !is_reference && CREDENTIAL_WORDS.iter().any(|w| lower.contains(w)) {
            return Some(here);
        }
        if let Some(found) = credential_key(child, &here) {
            return Some(found);
        }
    }
    None
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_default_configuration() {
        assert_eq!(
            OperatorConfig::from_yaml("").unwrap(),
            OperatorConfig::default()
        );
        OperatorConfig::default().validate().unwrap();
    }

    #[test]
    fn values_are_read() {
        let cfg = OperatorConfig::from_yaml(
            "ingress: {namespace: traefik}\nserver: {image: example/app:2, port: 9000}\n",
        )
        .unwrap();
        assert_eq!(cfg.ingress.namespace, "traefik");
        assert_eq!(cfg.server.image, "example/app:2");
        assert_eq!(cfg.server.port, 9000);
        assert_eq!(cfg.server.health_path, "/healthz");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = OperatorConfig::from_yaml("ingres: {namespace: x}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ingres`"), "{e}");
        let e = OperatorConfig::from_yaml("server: {image: a, port: 70000}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.port: 70000"), "{e}");
        let e = OperatorConfig::from_yaml("namespace: {quota: {pods: lots}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace.quota.pods: \"lots\""), "{e}");
        let e = OperatorConfig::from_yaml("ingress: {namespace: Bad_NS}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingress.namespace"), "{e}");
        let e = OperatorConfig::from_yaml(": : :").unwrap_err().to_string();
        assert!(e.contains("not valid"), "{e}");
    }

    #[test]
    fn credentials_are_refused_without_echoing_them() {
        let e = OperatorConfig::from_yaml("search: {apiKey: hunter2-s3cr3t}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("search.apiKey"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
