//! `cloudsql` database provider: one Cloud SQL for PostgreSQL instance per tenant in the
//! tenant's region, through the official `google-cloud-sql-v1` crate.
//!
//! Life cycle of one tenant, one reconcile pass at a time (nothing here ever waits for a
//! long-running operation; the operator requeues and the next pass observes):
//! 1. `instances.get` by the deterministic name. Missing: residency check, `instances.insert`,
//!    report "being created (operation ...)", not ready.
//! 2. Present: ownership labels and the reported region are checked; `PENDING_CREATE`,
//!    maintenance and the like report not ready without writing. The label
//!    `dealerdesk-tenant-uid` binds the instance to the UID of the tenant that made it: one
//!    bound to another UID (retained from a deleted tenant whose name this one reuses) is
//!    refused with `RetainedDataExists` before any write, unless the tenant adopts it with
//!    `dealerdesk.de/adopt-retained: <that uid>`; then the label is rewritten with the other
//!    drifted settings. Deleting a tenant never erases an instance bound to another UID.
//! 3. `RUNNABLE`: work out the writes needed (database, user, password, drifted settings).
//!    None: no write at all. Some: first make sure no operation runs on the instance (Cloud
//!    SQL runs one at a time), then do them in order, stopping as soon as one returns an
//!    operation that is not `DONE`.
//!
//! A name Cloud SQL refuses because a deleted instance still reserves it (`409` on insert
//! while `get` says `404`) is reported as a permanent error that tells the user to set the
//! `dealerdesk.de/database-instance-suffix` annotation.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use google_cloud_gax::error::rpc::{Code, StatusDetails};
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_sql_v1::client::{
    SqlDatabasesService, SqlInstancesService, SqlOperationsService, SqlUsersService,
};
use google_cloud_sql_v1::model::{
    AclEntry, BackupConfiguration, Database, DatabaseInstance, IpConfiguration, Operation,
    Settings, SqlAvailabilityType, SqlDatabaseVersion, SqlIpAddressType, User,
    database_instance::SqlInstanceState, operation::SqlOperationStatus, settings::Edition,
};
use serde::{Deserialize, Serialize};

use crate::desired::names::ADOPT_ANNOTATION;
use crate::processors::ids;
use crate::providers::pace::Paced;
use crate::providers::storage::bucket::uid_label_value;
use crate::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, SecretData,
    TenantInfo, residency, secret,
};

/// Name of the service in error messages.
const SERVICE: &str = "Cloud SQL";

/// The tenant annotation that appends `-<suffix>` to the instance name: the way out when
/// Cloud SQL still reserves the plain name for a deleted instance.
pub const SUFFIX_ANNOTATION: &str = "dealerdesk.de/database-instance-suffix";

/// Label keys and value that mark an instance as this operator's.
pub const LABEL_TENANT: &str = "tenant";
pub use crate::providers::{LABEL_MANAGED_BY, MANAGED_BY};
/// Label key whose value is the UID of the tenant the instance belongs to: names are
/// reused, UIDs are not. A Kubernetes UID is a valid label value as it is.
pub const LABEL_TENANT_UID: &str = "dealerdesk-tenant-uid";

/// PostgreSQL's port; Cloud SQL does not let it be changed.
const POSTGRES_PORT: &str = "5432";

/// `database.cloudsql:` in the operator configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudSqlConfig {
    /// Google Cloud project that owns the instances.
    pub project: String,
    /// API endpoint; the SDK's default (Google) when absent. Tests point it at 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Prefix of instance names: `<prefix>-<tenant>`.
    #[serde(default = "default_prefix")]
    pub instance_prefix: String,
    /// e.g. `POSTGRES_16`.
    #[serde(default = "default_version")]
    pub database_version: String,
    /// Machine tier, e.g. `db-custom-1-3840`.
    #[serde(default = "default_tier")]
    pub tier: String,
    #[serde(default = "default_disk")]
    pub disk_size_gb: i64,
    /// `ZONAL` or `REGIONAL`.
    #[serde(default = "default_availability")]
    pub availability_type: String,
    #[serde(default = "yes")]
    pub backups: bool,
    #[serde(default = "yes")]
    pub point_in_time_recovery: bool,
    #[serde(default = "yes")]
    pub deletion_protection: bool,
    /// VPC network for a private IP, e.g. `projects/p/global/networks/default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_network: Option<String>,
    /// CIDRs allowed to connect over the public IP (when there is no private network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_networks: Vec<String>,
    /// Start of the daily backup window, `HH:MM` (UTC); Cloud SQL picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_start_time: Option<String>,
    /// Cloud SQL edition, `ENTERPRISE` or `ENTERPRISE_PLUS`. Cloud SQL's default for new
    /// PostgreSQL 16+ instances is `ENTERPRISE_PLUS`, which does not accept `db-custom-*`
    /// tiers, so the edition is always sent.
    #[serde(default = "default_edition")]
    pub edition: String,
    /// A service-account key file (a mounted Secret); wins over `credentialsEnv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Admin API requests per minute the operator may send, spread evenly (the project's
    /// quota is 180 per minute and user; `0`: no pacing, for test doubles).
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Environment variable holding a service-account key (JSON). When neither it nor the
    /// file is set, Application Default Credentials are used (Workload Identity on GKE).
    #[serde(default = "default_credentials_env")]
    pub credentials_env: String,
    /// Send no credentials at all. Only for emulators and test doubles (needs `endpoint`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous_credentials: bool,
    /// Deadline of one API request.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_prefix() -> String {
    "dt".into()
}
fn default_version() -> String {
    "POSTGRES_16".into()
}
fn default_tier() -> String {
    "db-custom-1-3840".into()
}
fn default_disk() -> i64 {
    20
}
fn default_availability() -> String {
    "ZONAL".into()
}
fn default_requests_per_minute() -> u32 {
    180
}
fn default_edition() -> String {
    "ENTERPRISE".into()
}
fn default_credentials_env() -> String {
    "DEALERTENANT_GOOGLE_CREDENTIALS".into()
}
fn default_timeout() -> u64 {
    30
}
fn yes() -> bool {
    true
}

impl Default for CloudSqlConfig {
    fn default() -> Self {
        Self {
            project: "dealerdesk-prod".into(),
            endpoint: None,
            instance_prefix: default_prefix(),
            database_version: default_version(),
            tier: default_tier(),
            disk_size_gb: default_disk(),
            availability_type: default_availability(),
            backups: true,
            point_in_time_recovery: true,
            deletion_protection: true,
            private_network: None,
            authorized_networks: Vec::new(),
            backup_start_time: None,
            edition: default_edition(),
            credentials_file: None,
            requests_per_minute: default_requests_per_minute(),
            credentials_env: default_credentials_env(),
            anonymous_credentials: false,
            timeout_seconds: default_timeout(),
        }
    }
}

impl CloudSqlConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.project.trim().is_empty() {
            return Err("project: must not be empty".into());
        }
        if !matches!(self.availability_type.as_str(), "ZONAL" | "REGIONAL") {
            return Err(format!(
                "availabilityType: \"{}\" is not ZONAL or REGIONAL",
                self.availability_type
            ));
        }
        if self.disk_size_gb < 10 {
            return Err(format!(
                "diskSizeGb: {} is below Cloud SQL's minimum of 10",
                self.disk_size_gb
            ));
        }
        if self.private_network.is_none() && self.authorized_networks.is_empty() {
            // Neither: the instance is reachable only through the Cloud SQL Auth Proxy.
        }
        if !matches!(self.edition.as_str(), "ENTERPRISE" | "ENTERPRISE_PLUS") {
            return Err(format!(
                "edition: \"{}\" is not ENTERPRISE or ENTERPRISE_PLUS",
                self.edition
            ));
        }
        if !SqlDatabaseVersion::from(self.database_version.as_str())
            .name()
            .is_some_and(|n| n.starts_with("POSTGRES_"))
        {
            return Err(format!(
                "databaseVersion: \"{}\" is not a Cloud SQL for PostgreSQL version",
                self.database_version
            ));
        }
        if let Some(t) = &self.backup_start_time
            && !is_hh_mm(t)
        {
            return Err(format!("backupStartTime: \"{t}\" is not HH:MM"));
        }
        if self.anonymous_credentials && self.endpoint.is_none() {
            return Err(
                "anonymousCredentials: only for an emulator or test double named in endpoint"
                    .into(),
            );
        }
        if self.timeout_seconds == 0 {
            return Err("timeoutSeconds: must be at least 1".into());
        }
        Ok(())
    }

    pub fn plan(&self, t: &TenantInfo, processor: &str) -> Vec<ExternalResource> {
        // An invalid suffix annotation is reported by `reconcile`; the plan shows the plain name.
        let instance = instance_name_for(&self.instance_prefix, t)
            .unwrap_or_else(|_| instance_name(&self.instance_prefix, &t.name));
        let db = super::postgres::database_name(&t.name);
        let loc = Some(t.region.clone());
        vec![
            ExternalResource::new("CloudSqlInstance", &instance, loc.clone(), processor),
            ExternalResource::new(
                "Database",
                format!("{instance}/{db}"),
                loc.clone(),
                processor,
            ),
            ExternalResource::new("DatabaseUser", format!("{instance}/{db}"), loc, processor),
        ]
    }
}

fn is_hh_mm(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && t[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && t[3..].parse::<u8>().is_ok_and(|m| m < 60)
        && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
}

/// `<prefix>-<tenant>`: lowercase letters, digits and hyphens, as Cloud SQL requires.
pub fn instance_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}

/// The instance name of `t`: [`instance_name`] plus `-<suffix>` when the tenant carries the
/// [`SUFFIX_ANNOTATION`]. A suffix that would make an invalid name is refused.
pub fn instance_name_for(prefix: &str, t: &TenantInfo) -> Result<String, ProviderError> {
    let base = instance_name(prefix, &t.name);
    let Some(suffix) = t.annotations.get(SUFFIX_ANNOTATION) else {
        return Ok(base);
    };
    let suffix = suffix.trim();
    let valid = !suffix.is_empty()
        && suffix.len() <= 20
        && suffix
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !suffix.ends_with('-');
    if !valid {
        return Err(ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "annotation {SUFFIX_ANNOTATION}: \"{suffix}\" is not 1-20 lowercase letters, \
                 digits or hyphens (not ending in a hyphen)"
            ),
        });
    }
    Ok(format!("{base}-{suffix}"))
}

/// The user labels that mark the instance of `tenant` (the tenant with UID `uid`; no UID
/// label when the UID is unknown, as offline).
pub fn labels(tenant: &str, uid: &str) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (LABEL_TENANT.to_string(), tenant.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    if !uid.is_empty() {
        l.insert(LABEL_TENANT_UID.to_string(), uid_label_value(uid));
    }
    l
}

/// The tenant UID an instance is bound to (its [`LABEL_TENANT_UID`]), if any. Instances made
/// before the label existed have none.
pub fn owner_of(observed: &DatabaseInstance) -> Option<&str> {
    observed
        .settings
        .as_ref()
        .and_then(|s| s.user_labels.get(LABEL_TENANT_UID))
        .map(String::as_str)
        .filter(|u| !u.is_empty())
}

/// Refuses an instance bound to another tenant UID (data retained from a deleted tenant
/// whose name `tenant` reuses), unless `tenant` adopts exactly that UID. Nothing is written
/// before this check.
pub fn check_uid(
    name: &str,
    tenant: &TenantInfo,
    observed: &DatabaseInstance,
) -> Result<(), ProviderError> {
    match owner_of(observed) {
        Some(owner) if owner != uid_label_value(&tenant.uid) && !tenant.adopts(owner) => {
            Err(ProviderError::Foreign {
                service: SERVICE,
                message: format!(
                    "instance {name} holds data retained from another tenant (UID {owner}); \
                     nothing was changed. Annotate this tenant {ADOPT_ANNOTATION}: {owner} to \
                     take it over, or delete the instance {name} first"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The IP configuration `cfg` asks for: private only, or public with authorized networks.
pub fn desired_ip_configuration(cfg: &CloudSqlConfig) -> IpConfiguration {
    let mut ip = IpConfiguration::new();
    match &cfg.private_network {
        Some(net) => {
            ip.ipv4_enabled = Some(false);
            ip.private_network = net.clone();
        }
        None => {
            ip.ipv4_enabled = Some(true);
            ip.authorized_networks = cfg
                .authorized_networks
                .iter()
                .map(|cidr| {
                    let mut e = AclEntry::new();
                    e.value = cidr.clone();
                    e
                })
                .collect();
        }
    }
    ip
}

/// The backup configuration `cfg` asks for. Point-in-time recovery needs backups.
pub fn desired_backup_configuration(cfg: &CloudSqlConfig) -> BackupConfiguration {
    let mut b = BackupConfiguration::new();
    b.enabled = Some(cfg.backups);
    b.point_in_time_recovery_enabled = Some(cfg.backups && cfg.point_in_time_recovery);
    if let Some(t) = &cfg.backup_start_time {
        b.start_time = t.clone();
    }
    b
}

/// The settings the instance of `tenant` (UID `uid`) must have.
pub fn desired_settings(cfg: &CloudSqlConfig, tenant: &str, uid: &str) -> Settings {
    let mut s = Settings::new();
    s.tier = cfg.tier.clone();
    s.edition = Edition::from(cfg.edition.as_str());
    s.availability_type = SqlAvailabilityType::from(cfg.availability_type.as_str());
    s.data_disk_size_gb = Some(cfg.disk_size_gb);
    s.deletion_protection_enabled = Some(cfg.deletion_protection);
    s.user_labels = labels(tenant, uid);
    s.backup_configuration = Some(desired_backup_configuration(cfg));
    s.ip_configuration = Some(desired_ip_configuration(cfg));
    s
}

/// The body of `instances.insert` for `tenant`'s (UID `uid`) instance `name` in `region`.
pub fn desired_instance(
    cfg: &CloudSqlConfig,
    tenant: &str,
    uid: &str,
    name: &str,
    region: &str,
) -> DatabaseInstance {
    let mut i = DatabaseInstance::new();
    i.name = name.to_string();
    i.region = region.to_string();
    i.database_version = SqlDatabaseVersion::from(cfg.database_version.as_str());
    i.settings = Some(desired_settings(cfg, tenant, uid));
    i
}

/// What differs between the observed settings and `cfg`: a patch that carries only the
/// drifted parts, and their names. An empty list means no write is needed.
///
/// Left alone on purpose: the disk when it is larger than configured (Cloud SQL grows it
/// automatically and cannot shrink it), the backup start time when none is configured, the
/// database version (a major upgrade is not a drift repair), and labels other than ours.
/// A missing or other UID label is a drift: an instance made before the label existed,
/// or one the tenant adopts (the caller refuses one bound to another UID before).
pub fn settings_patch(
    cfg: &CloudSqlConfig,
    tenant: &str,
    uid: &str,
    observed: &Settings,
) -> (Settings, Vec<&'static str>) {
    let mut patch = Settings::new();
    let mut drift = Vec::new();
    if observed.tier != cfg.tier {
        patch.tier = cfg.tier.clone();
        drift.push("tier");
    }
    if observed.edition.name() != Some(cfg.edition.as_str()) {
        patch.edition = Edition::from(cfg.edition.as_str());
        drift.push("edition");
    }
    if observed.availability_type.name() != Some(cfg.availability_type.as_str()) {
        patch.availability_type = SqlAvailabilityType::from(cfg.availability_type.as_str());
        drift.push("availabilityType");
    }
    if observed.data_disk_size_gb.unwrap_or(0) < cfg.disk_size_gb {
        patch.data_disk_size_gb = Some(cfg.disk_size_gb);
        drift.push("dataDiskSizeGb");
    }
    if observed.deletion_protection_enabled.unwrap_or(false) != cfg.deletion_protection {
        patch.deletion_protection_enabled = Some(cfg.deletion_protection);
        drift.push("deletionProtectionEnabled");
    }
    let want_backup = desired_backup_configuration(cfg);
    let have_backup = observed.backup_configuration.clone().unwrap_or_default();
    if have_backup.enabled.unwrap_or(false) != want_backup.enabled.unwrap_or(false)
        || have_backup.point_in_time_recovery_enabled.unwrap_or(false)
            != want_backup.point_in_time_recovery_enabled.unwrap_or(false)
        || (cfg.backup_start_time.is_some() && have_backup.start_time != want_backup.start_time)
    {
        let mut b = want_backup;
        if b.start_time.is_empty() {
            // Keep the window Cloud SQL chose.
            b.start_time = have_backup.start_time;
        }
        patch.backup_configuration = Some(b);
        drift.push("backupConfiguration");
    }
    let want_ip = desired_ip_configuration(cfg);
    let have_ip = observed.ip_configuration.clone().unwrap_or_default();
    let nets = |ip: &IpConfiguration| -> BTreeSet<String> {
        ip.authorized_networks
            .iter()
            .map(|e| e.value.clone())
            .collect()
    };
    let ip_drift = match &cfg.private_network {
        Some(net) => have_ip.ipv4_enabled != Some(false) || &have_ip.private_network != net,
        // An empty list cannot be sent in a patch (the SDK omits empty repeated fields),
        // so extra networks are only replaced when some are configured.
        None => {
            have_ip.ipv4_enabled != Some(true)
                || (!cfg.authorized_networks.is_empty() && nets(&have_ip) != nets(&want_ip))
        }
    };
    if ip_drift {
        patch.ip_configuration = Some(want_ip);
        drift.push("ipConfiguration");
    }
    let ours = labels(tenant, uid);
    if ours
        .iter()
        .any(|(k, v)| observed.user_labels.get(k) != Some(v))
    {
        let mut merged = observed.user_labels.clone();
        merged.extend(ours);
        patch.user_labels = merged;
        drift.push("userLabels");
    }
    (patch, drift)
}

/// Refuses an instance that carries another tenant's or another manager's labels. Missing
/// labels are a drift (repaired by [`settings_patch`]), not a refusal.
pub fn check_ownership(
    name: &str,
    tenant: &str,
    observed: &DatabaseInstance,
) -> Result<(), ProviderError> {
    let labels = observed
        .settings
        .as_ref()
        .map(|s| &s.user_labels)
        .cloned()
        .unwrap_or_default();
    let foreign = [(LABEL_TENANT, tenant), (LABEL_MANAGED_BY, MANAGED_BY)]
        .into_iter()
        .find(|(k, v)| labels.get(*k).is_some_and(|have| have != v));
    match foreign {
        None => Ok(()),
        Some((k, _)) => Err(ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "instance {name} exists but its label {k}={} says it is not this tenant's; \
                 it is left alone (set {SUFFIX_ANNOTATION} to use another name)",
                labels.get(k).map(String::as_str).unwrap_or_default()
            ),
        }),
    }
}

/// The address clients connect to: the private IP when a private network is configured,
/// else the public (`PRIMARY`) one.
pub fn connect_address(cfg: &CloudSqlConfig, observed: &DatabaseInstance) -> Option<String> {
    let want = if cfg.private_network.is_some() {
        SqlIpAddressType::Private
    } else {
        SqlIpAddressType::Primary
    };
    observed
        .ip_addresses
        .iter()
        .find(|ip| ip.r#type == want && !ip.ip_address.is_empty())
        .map(|ip| ip.ip_address.clone())
}

/// `project:region:instance`, as the Cloud SQL connectors expect it.
pub fn connection_name(project: &str, region: &str, instance: &str) -> String {
    format!("{project}:{region}:{instance}")
}

/// The Secret of the tenant's database.
pub fn secret_data(host: &str, db: &str, password: &str, connection: &str) -> SecretData {
    SecretData::new()
        .with("DATABASE_HOST", host)
        .with("DATABASE_PORT", POSTGRES_PORT)
        .with("DATABASE_NAME", db)
        .with("DATABASE_USER", db)
        .with("DATABASE_PASSWORD", password)
        .with("DATABASE_INSTANCE", connection)
}

/// The message of a permanent refusal because Cloud SQL still reserves `name`.
pub fn reserved_name_message(name: &str) -> String {
    format!(
        "Cloud SQL refuses the instance name {name}: it already exists in the project's \
         history (a deleted instance can reserve its name for up to a week) but cannot be read. \
         Give the tenant another name by setting the annotation \
         {SUFFIX_ANNOTATION}: \"2\" (or any other short lowercase suffix not used before)"
    )
}

/// The `errors[].reason` (or `ErrorInfo.reason`) of a Google error, if any.
fn error_reason(e: &google_cloud_sql_v1::Error) -> Option<&str> {
    e.status()?.details.iter().find_map(|d| match d {
        StatusDetails::ErrorInfo(info) if !info.reason.is_empty() => Some(info.reason.as_str()),
        _ => None,
    })
}

fn is_not_found(e: &google_cloud_sql_v1::Error) -> bool {
    e.http_status_code() == Some(404) || e.status().is_some_and(|s| s.code == Code::NotFound)
}

fn is_conflict(e: &google_cloud_sql_v1::Error) -> bool {
    e.http_status_code() == Some(409)
        || e.status()
            .is_some_and(|s| matches!(s.code, Code::AlreadyExists | Code::Aborted))
}

fn is_operation_in_progress(e: &google_cloud_sql_v1::Error) -> bool {
    error_reason(e) == Some("operationInProgress")
        || (is_conflict(e)
            && e.status()
                .is_some_and(|s| s.message.contains("another operation")))
}

/// Classifies an SDK error. `what` names the call ("get instance dt-acme"); `redact` is a
/// credential that must not appear in the message even if the service echoed it.
pub fn classify(what: &str, e: &google_cloud_sql_v1::Error, redact: Option<&str>) -> ProviderError {
    let scrub = |m: String| match redact {
        Some(s) if !s.is_empty() => m.replace(s, "[redacted]"),
        _ => m,
    };
    if is_operation_in_progress(e) {
        return ProviderError::Unavailable {
            service: SERVICE,
            message: format!("{what}: another operation is in progress on the instance"),
        };
    }
    if let Some(status) = e.status() {
        let message = scrub(format!("{what}: {}", status.message));
        if let Some(http) = e.http_status_code() {
            return ProviderError::from_status(SERVICE, http, message);
        }
        return match status.code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Aborted => ProviderError::Unavailable {
                service: SERVICE,
                message: format!("{}: {message}", status.code.name()),
            },
            _ => ProviderError::Refused {
                service: SERVICE,
                message: format!("{}: {message}", status.code.name()),
            },
        };
    }
    if let Some(http) = e.http_status_code() {
        // An answer without Google's error body (a proxy, a load balancer).
        return ProviderError::from_status(SERVICE, http, format!("{what}: no error details"));
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_io() || e.is_transport() {
        "request failed"
    } else if e.is_deserialization() {
        "answer could not be decoded"
    } else if e.is_authentication() {
        // The source may carry details of the credential; only its kind is reported.
        let transient = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        if transient {
            "credentials could not be obtained (transient)"
        } else {
            return ProviderError::Refused {
                service: SERVICE,
                message: format!("{what}: credentials could not be obtained"),
            };
        }
    } else {
        // Binding and serialization errors are bugs in the request, not outages.
        return ProviderError::Refused {
            service: SERVICE,
            message: format!("{what}: the request could not be built"),
        };
    };
    ProviderError::Unavailable {
        service: SERVICE,
        message: format!("{what}: {kind}"),
    }
}

/// Whether `op` finished; a finished operation that carries errors is a refusal.
fn operation_done(what: &str, op: &Operation) -> Result<bool, ProviderError> {
    if op.status != SqlOperationStatus::Done {
        return Ok(false);
    }
    match &op.error {
        Some(errs) if !errs.errors.is_empty() => Err(ProviderError::Refused {
            service: SERVICE,
            message: format!(
                "{what}: operation {} failed: {}",
                op.name,
                errs.errors
                    .iter()
                    .map(|e| format!("{} {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
        _ => Ok(true),
    }
}

fn status_name(state: &SqlInstanceState) -> String {
    state.name().unwrap_or("UNKNOWN").to_string()
}

/// Cloud SQL for PostgreSQL, one instance per tenant.
pub struct CloudSqlProvider {
    cfg: CloudSqlConfig,
    pacer: std::sync::Arc<crate::providers::pace::Pacer>,
    instances: SqlInstancesService,
    databases: SqlDatabasesService,
    users: SqlUsersService,
    operations: SqlOperationsService,
}

impl std::fmt::Debug for CloudSqlProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSqlProvider")
            .field("project", &self.cfg.project)
            .finish_non_exhaustive()
    }
}

/// Reads the credentials `cfg` names: the key file, else the key in the environment
/// variable, else Application Default Credentials; anonymous for emulators.
fn credentials(
    cfg: &CloudSqlConfig,
) -> Result<google_cloud_auth::credentials::Credentials, ProviderError> {
    use google_cloud_auth::credentials::{Builder, anonymous, service_account};
    let not_configured = |message: String| ProviderError::NotConfigured {
        service: SERVICE,
        message,
    };
    if cfg.anonymous_credentials {
        if cfg.endpoint.is_none() {
            return Err(not_configured(
                "anonymousCredentials needs an endpoint (an emulator or test double)".into(),
            ));
        }
        return Ok(anonymous::Builder::new().build());
    }
    let (key, source) = if let Some(path) = &cfg.credentials_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| not_configured(format!("credentialsFile {path}: {}", e.kind())))?;
        (Some(text), format!("credentialsFile {path}"))
    } else {
        match std::env::var(&cfg.credentials_env) {
            Ok(v) if !v.trim().is_empty() => (Some(v), format!("${}", cfg.credentials_env)),
            _ => (None, String::new()),
        }
    };
    match key {
        Some(text) => {
            // Parse errors are reported without their text: it could quote the key.
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| not_configured(format!("{source}: not valid JSON")))?;
            service_account::Builder::new(json)
                .build()
                .map_err(|_| not_configured(format!("{source}: not a service-account key")))
        }
        None => Builder::default().build().map_err(|_| {
            not_configured(
                "no credentials: set credentialsFile or the variable in credentialsEnv, \
                 or run with Application Default Credentials (Workload Identity)"
                    .into(),
            )
        }),
    }
}

/// Builds the provider: reads the credentials and creates the four API clients.
pub async fn from_config(cfg: &CloudSqlConfig) -> Result<CloudSqlProvider, ProviderError> {
    cfg.validate().map_err(|m| ProviderError::NotConfigured {
        service: SERVICE,
        message: m,
    })?;
    crate::providers::tls::ensure_crypto_provider();
    let creds = credentials(cfg)?;
    let timeout = Duration::from_secs(cfg.timeout_seconds);
    let built = |e: google_cloud_gax::client_builder::Error| ProviderError::NotConfigured {
        service: SERVICE,
        message: format!("client could not be built: {e}"),
    };
    // No retries inside the SDK: the reconciler retries with backoff, and a pass must not
    // hang for a minute on an outage.
    macro_rules! client {
        ($t:ty) => {{
            let mut b = <$t>::builder()
                .with_credentials(creds.clone())
                .with_retry_policy(NeverRetry)
                .with_attempt_timeout(timeout);
            if let Some(ep) = &cfg.endpoint {
                b = b.with_endpoint(ep.clone());
            }
            b.build().await.map_err(built)?
        }};
    }
    // 60 s / requests per minute between two requests, shared by every provider value
    // of the project in this process.
    let interval = match cfg.requests_per_minute {
        0 => std::time::Duration::ZERO,
        n => std::time::Duration::from_secs(60) / n,
    };
    let pacer =
        crate::providers::pace::Pacer::shared(&format!("sqladmin:{}", cfg.project), interval);
    Ok(CloudSqlProvider {
        cfg: cfg.clone(),
        pacer,
        instances: client!(SqlInstancesService),
        databases: client!(SqlDatabasesService),
        users: client!(SqlUsersService),
        operations: client!(SqlOperationsService),
    })
}

/// What one pass learnt about the tenant's instance.
struct Observed {
    instance: DatabaseInstance,
    database: Option<Database>,
    user: Option<User>,
}

impl CloudSqlProvider {
    fn project(&self) -> &str {
        &self.cfg.project
    }

    async fn get_instance(&self, name: &str) -> Result<Option<DatabaseInstance>, ProviderError> {
        match self
            .instances
            .get()
            .set_project(self.project())
            .set_instance(name)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("get instance {name}"), &e, None)),
        }
    }

    async fn get_database(&self, inst: &str, db: &str) -> Result<Option<Database>, ProviderError> {
        match self
            .databases
            .get()
            .set_project(self.project())
            .set_instance(inst)
            .set_database(db)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(d) => Ok(Some(d)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("get database {inst}/{db}"), &e, None)),
        }
    }

    async fn get_user(&self, inst: &str, user: &str) -> Result<Option<User>, ProviderError> {
        match self
            .users
            .get()
            .set_project(self.project())
            .set_instance(inst)
            .set_name(user)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(u) => Ok(Some(u)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(classify(&format!("get user {inst}/{user}"), &e, None)),
        }
    }

    /// The first operation on `inst` that is still pending or running.
    async fn running_operation(&self, inst: &str) -> Result<Option<Operation>, ProviderError> {
        let list = self
            .operations
            .list()
            .set_project(self.project())
            .set_instance(inst)
            .set_max_results(20u32)
            .send()
            .paced(&self.pacer)
            .await
            .map_err(|e| classify(&format!("list operations of {inst}"), &e, None))?;
        Ok(list.items.into_iter().find(|op| {
            matches!(
                op.status,
                SqlOperationStatus::Pending | SqlOperationStatus::Running
            )
        }))
    }

    fn resources(
        &self,
        inst: &str,
        location: &str,
        obs: Option<&Observed>,
    ) -> Vec<ExternalResource> {
        let p = ids::GOOGLE_CLOUD;
        let conn = connection_name(self.project(), location, inst);
        let mut out = vec![
            ExternalResource::new("CloudSqlInstance", inst, Some(location.to_string()), p)
                .with_id(&conn),
        ];
        if let Some(o) = obs {
            if let Some(d) = &o.database {
                out.push(
                    ExternalResource::new(
                        "Database",
                        format!("{inst}/{}", d.name),
                        Some(location.to_string()),
                        p,
                    )
                    .with_id(format!("{conn}/{}", d.name)),
                );
            }
            if let Some(u) = &o.user {
                out.push(
                    ExternalResource::new(
                        "DatabaseUser",
                        format!("{inst}/{}", u.name),
                        Some(location.to_string()),
                        p,
                    )
                    .with_id(format!("{conn}/{}", u.name)),
                );
            }
        }
        out
    }

    /// Creates the instance (nothing exists under `name`).
    async fn create_instance(
        &self,
        tenant: &TenantInfo,
        name: &str,
    ) -> Result<Reconciled, ProviderError> {
        residency::check_before_create(&format!("Cloud SQL instance {name}"), &tenant.region)?;
        let body = desired_instance(&self.cfg, &tenant.name, &tenant.uid, name, &tenant.region);
        let what = format!("create instance {name}");
        match self
            .instances
            .insert()
            .set_project(self.project())
            .set_body(body)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(op) => {
                operation_done(&what, &op)?;
                tracing::info!(instance = name, operation = %op.name, "Cloud SQL instance insert accepted");
                // Check where Cloud SQL put it right away (the next pass checks again).
                if let Some(created) = self.get_instance(name).await? {
                    residency::check_reported(
                        &format!("Cloud SQL instance {name}"),
                        &created.region,
                        &tenant.region,
                    )?;
                }
                Ok(Reconciled {
                    ready: false,
                    reason: None,
                    message: format!("instance {name} is being created (operation {})", op.name),
                    secret: None,
                    resources: self.resources(name, &tenant.region, None),
                })
            }
            Err(e) if is_conflict(&e) && !is_operation_in_progress(&e) => {
                // Either the insert raced with one whose answer was lost (it exists now), or
                // a deleted instance still reserves the name.
                if self.get_instance(name).await?.is_some() {
                    Ok(Reconciled {
                        ready: false,
                        reason: None,
                        message: format!("instance {name} is being created"),
                        secret: None,
                        resources: self.resources(name, &tenant.region, None),
                    })
                } else {
                    tracing::warn!(
                        instance = name,
                        "Cloud SQL refuses a reserved instance name"
                    );
                    Err(ProviderError::Refused {
                        service: SERVICE,
                        message: reserved_name_message(name),
                    })
                }
            }
            Err(e) => Err(classify(&what, &e, None)),
        }
    }
}

#[async_trait::async_trait]
impl Provider for CloudSqlProvider {
    fn component(&self) -> Component {
        Component::Database
    }

    async fn reconcile(
        &self,
        tenant: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = instance_name_for(&self.cfg.instance_prefix, tenant)?;
        let db = super::postgres::database_name(&tenant.name);

        let Some(instance) = self.get_instance(&name).await? else {
            return self.create_instance(tenant, &name).await;
        };
        check_ownership(&name, &tenant.name, &instance)?;
        // Whose is it? One bound to another tenant UID is not touched, credentials
        // included, unless this tenant adopts it by that UID.
        check_uid(&name, tenant, &instance)?;
        residency::check_reported(
            &format!("Cloud SQL instance {name}"),
            &instance.region,
            &tenant.region,
        )?;
        let region = instance.region.clone();
        let not_ready = |message: String| Reconciled {
            ready: false,
            reason: None,
            message,
            secret: None,
            resources: self.resources(&name, &region, None),
        };
        match &instance.state {
            SqlInstanceState::Runnable => {}
            SqlInstanceState::PendingCreate => {
                return Ok(not_ready(format!("instance {name} is being created")));
            }
            SqlInstanceState::Failed | SqlInstanceState::Suspended => {
                return Err(ProviderError::Refused {
                    service: SERVICE,
                    message: format!(
                        "instance {name} is {}; it needs a person (see the Cloud SQL console)",
                        status_name(&instance.state)
                    ),
                });
            }
            other => {
                return Ok(not_ready(format!(
                    "instance {name} is {}, waiting",
                    status_name(other)
                )));
            }
        }

        let conn = if instance.connection_name.is_empty() {
            connection_name(self.project(), &region, &name)
        } else {
            instance.connection_name.clone()
        };
        let Some(host) = connect_address(&self.cfg, &instance) else {
            return Ok(not_ready(format!(
                "instance {name} has no {} IP address yet",
                if self.cfg.private_network.is_some() {
                    "private"
                } else {
                    "public"
                }
            )));
        };
        let mut obs = Observed {
            database: self.get_database(&name, &db).await?,
            user: self.get_user(&name, &db).await?,
            instance,
        };
        let (patch, drift) = settings_patch(
            &self.cfg,
            &tenant.name,
            &tenant.uid,
            &obs.instance.settings.clone().unwrap_or_default(),
        );
        let password = secret
            .and_then(|s| s.get("DATABASE_PASSWORD"))
            .filter(|p| !p.is_empty());
        let need_password = obs.user.is_none() || password.is_none();
        let writes_needed = obs.database.is_none() || need_password || !drift.is_empty();

        // The Secret as it should read with the password it has now (no write needed to
        // refresh connection details, e.g. after an IP change).
        let refreshed = |pw: &str| secret_data(&host, &db, pw, &conn);

        if writes_needed && let Some(op) = self.running_operation(&name).await? {
            let usable = obs.database.is_some() && !need_password;
            let msg = format!(
                "waiting for operation {} ({}) on instance {name}",
                op.name,
                op.operation_type.name().unwrap_or("UNKNOWN")
            );
            return Ok(Reconciled {
                ready: usable,
                reason: None,
                message: msg,
                secret: password
                    .map(refreshed)
                    .filter(|s| Some(s) != secret)
                    .filter(|_| usable),
                resources: self.resources(&name, &region, Some(&obs)),
            });
        }

        // 1. The database.
        if obs.database.is_none() {
            let mut body = Database::new();
            body.name = db.clone();
            let what = format!("create database {name}/{db}");
            let op = self
                .databases
                .insert()
                .set_project(self.project())
                .set_instance(&name)
                .set_body(body)
                .send()
                .paced(&self.pacer)
                .await
                .map_err(|e| classify(&what, &e, None))?;
            tracing::info!(instance = %name, database = %db, "Cloud SQL database insert accepted");
            if !operation_done(&what, &op)? {
                return Ok(not_ready(format!(
                    "database {db} is being created on instance {name} (operation {})",
                    op.name
                )));
            }
            let mut d = Database::new();
            d.name = db.clone();
            obs.database = Some(d);
        }

        // 2. The user and its password.
        let mut issued = None;
        if need_password {
            let pw = secret::random_password();
            let mut body = User::new();
            body.name = db.clone();
            body.password = pw.clone();
            let (what, result) = if obs.user.is_none() {
                let what = format!("create user {name}/{db}");
                let r = self
                    .users
                    .insert()
                    .set_project(self.project())
                    .set_instance(&name)
                    .set_body(body)
                    .send()
                    .paced(&self.pacer)
                    .await;
                (what, r)
            } else {
                let what = format!("set password of user {name}/{db}");
                let r = self
                    .users
                    .update()
                    .set_project(self.project())
                    .set_instance(&name)
                    .set_name(&db)
                    .set_body(body)
                    .send()
                    .paced(&self.pacer)
                    .await;
                (what, r)
            };
            let op = result.map_err(|e| classify(&what, &e, Some(&pw)))?;
            tracing::info!(instance = %name, user = %db, "Cloud SQL user credentials issued");
            let mut u = User::new();
            u.name = db.clone();
            obs.user = Some(u);
            let done = operation_done(&what, &op)?;
            issued = Some(refreshed(&pw));
            if !done {
                // The password is only known here: hand it over now.
                return Ok(Reconciled {
                    ready: false,
                    reason: None,
                    message: format!(
                        "credentials of user {db} are being set on instance {name} (operation {})",
                        op.name
                    ),
                    secret: issued,
                    resources: self.resources(&name, &region, Some(&obs)),
                });
            }
        }

        // 3. Drifted settings.
        let mut message = format!("instance {name} is ready ({conn})");
        if !drift.is_empty() {
            let mut body = DatabaseInstance::new();
            body.settings = Some(patch);
            let what = format!("update settings of instance {name}");
            let op = self
                .instances
                .patch()
                .set_project(self.project())
                .set_instance(&name)
                .set_body(body)
                .send()
                .paced(&self.pacer)
                .await
                .map_err(|e| classify(&what, &e, None))?;
            tracing::info!(instance = %name, drift = ?drift, operation = %op.name, "Cloud SQL settings drift repaired");
            message = if operation_done(&what, &op)? {
                format!("instance {name} is ready; repaired {}", drift.join(", "))
            } else {
                format!(
                    "instance {name} is ready; repairing {} (operation {})",
                    drift.join(", "),
                    op.name
                )
            };
        }

        let version = self.cfg.database_version.as_str();
        if obs.instance.database_version.name() != Some(version) {
            message.push_str(&format!(
                "; runs {} while {version} is configured (major upgrades are not automatic)",
                obs.instance.database_version.name().unwrap_or("UNKNOWN")
            ));
        }

        let secret_out = match issued {
            Some(s) => Some(s),
            None => password.map(refreshed).filter(|s| Some(s) != secret),
        };
        Ok(Reconciled {
            ready: true,
            reason: None,
            message,
            secret: secret_out,
            resources: self.resources(&name, &region, Some(&obs)),
        })
    }

    async fn delete(&self, tenant: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = instance_name_for(&self.cfg.instance_prefix, tenant)?;
        let db = super::postgres::database_name(&tenant.name);
        let Some(instance) = self.get_instance(&name).await? else {
            return Ok(Erased::default());
        };
        if let Err(e) = check_ownership(&name, &tenant.name, &instance) {
            return Err(ProviderError::DeletionBlocked {
                service: SERVICE,
                message: e.to_string(),
            });
        }
        // Another tenant's (retained) instance under this name is not this tenant's to erase.
        if let Some(owner) = owner_of(&instance)
            && owner != uid_label_value(&tenant.uid)
        {
            tracing::info!(instance = %name, "instance is bound to another tenant UID; not erased");
            return Ok(Erased::default());
        }
        let region = instance.region.clone();
        let obs = if instance.state == SqlInstanceState::Runnable {
            Observed {
                database: self.get_database(&name, &db).await?,
                user: self.get_user(&name, &db).await?,
                instance,
            }
        } else {
            Observed {
                database: None,
                user: None,
                instance,
            }
        };
        let erased = Erased {
            resources: self.resources(&name, &region, Some(&obs)),
            ..Erased::default()
        };
        if obs.instance.state == SqlInstanceState::PendingDelete {
            // Accepted on an earlier pass; Cloud SQL finishes on its own.
            return Ok(erased);
        }
        if let Some(op) = self.running_operation(&name).await? {
            return Err(ProviderError::Unavailable {
                service: SERVICE,
                message: format!(
                    "instance {name}: waiting for operation {} ({}) before deleting",
                    op.name,
                    op.operation_type.name().unwrap_or("UNKNOWN")
                ),
            });
        }
        let protected = obs
            .instance
            .settings
            .as_ref()
            .and_then(|s| s.deletion_protection_enabled)
            .unwrap_or(false);
        if protected {
            let mut settings = Settings::new();
            settings.deletion_protection_enabled = Some(false);
            let mut body = DatabaseInstance::new();
            body.settings = Some(settings);
            let what = format!("lift deletion protection of instance {name}");
            let op = self
                .instances
                .patch()
                .set_project(self.project())
                .set_instance(&name)
                .set_body(body)
                .send()
                .paced(&self.pacer)
                .await
                .map_err(|e| classify(&what, &e, None))?;
            tracing::info!(instance = %name, operation = %op.name, "Cloud SQL deletion protection lifted");
            if !operation_done(&what, &op)? {
                return Err(ProviderError::Unavailable {
                    service: SERVICE,
                    message: format!(
                        "instance {name}: deletion protection is being lifted (operation {}); \
                         deleting on the next pass",
                        op.name
                    ),
                });
            }
        }
        let what = format!("delete instance {name}");
        match self
            .instances
            .delete()
            .set_project(self.project())
            .set_instance(&name)
            .send()
            .paced(&self.pacer)
            .await
        {
            Ok(op) => {
                operation_done(&what, &op)?;
                tracing::info!(instance = %name, operation = %op.name, "Cloud SQL instance delete accepted");
                Ok(erased)
            }
            Err(e) if is_not_found(&e) => Ok(erased),
            Err(e) => Err(classify(&what, &e, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;
    use serde_json::json;

    fn tenant(name: &str) -> TenantInfo {
        TenantInfo {
            name: name.into(),
            uid: String::new(),
            region: "europe-west3".into(),
            namespace: format!("tenant-{name}"),
            annotations: Default::default(),
        }
    }

    fn with_suffix(name: &str, suffix: &str) -> TenantInfo {
        let mut t = tenant(name);
        t.annotations
            .insert(SUFFIX_ANNOTATION.into(), suffix.into());
        t
    }

    #[test]
    fn names_follow_prefix_tenant_and_optional_suffix() {
        assert_eq!(instance_name_for("dt", &tenant("acme")).unwrap(), "dt-acme");
        assert_eq!(
            instance_name_for("dt", &with_suffix("acme", "2")).unwrap(),
            "dt-acme-2"
        );
        assert_eq!(
            instance_name_for("dt", &with_suffix("acme", " b7 ")).unwrap(),
            "dt-acme-b7"
        );
        for bad in ["", "Two", "a_b", "x-", "2!", "123456789012345678901"] {
            let e = instance_name_for("dt", &with_suffix("acme", bad)).unwrap_err();
            assert!(!e.is_transient());
            assert!(e.to_string().contains(SUFFIX_ANNOTATION), "{e}");
        }
        let cfg = CloudSqlConfig::default();
        let plan = cfg.plan(&with_suffix("acme", "2"), "google-cloud");
        assert_eq!(plan[0].name, "dt-acme-2");
        assert_eq!(plan[1].name, "dt-acme-2/dt_acme");
        // An invalid suffix leaves the plan on the plain name (reconcile reports it).
        assert_eq!(
            cfg.plan(&with_suffix("acme", "??"), "google-cloud")[0].name,
            "dt-acme"
        );
    }

    #[test]
    fn insert_body_carries_every_configured_setting() {
        let cfg = CloudSqlConfig {
            backup_start_time: Some("02:30".into()),
            availability_type: "REGIONAL".into(),
            authorized_networks: vec!["203.0.113.0/24".into()],
            ..CloudSqlConfig::default()
        };
        let body = serde_json::to_value(desired_instance(
            &cfg,
            "acme",
            "",
            "dt-acme",
            "europe-west3",
        ))
        .unwrap();
        assert_eq!(
            body,
            json!({
                "name": "dt-acme",
                "region": "europe-west3",
                // Proto enum numbers, as the SDK sends them.
                "databaseVersion": SqlDatabaseVersion::Postgres16.value().unwrap(),
                "settings": {
                    "tier": "db-custom-1-3840",
                    "edition": Edition::Enterprise.value().unwrap(),
                    "availabilityType": SqlAvailabilityType::Regional.value().unwrap(),
                    "dataDiskSizeGb": "20",
                    "deletionProtectionEnabled": true,
                    "userLabels": {"tenant": "acme", "managed-by": "dealertenant-operator"},
                    "backupConfiguration": {
                        "enabled": true,
                        "pointInTimeRecoveryEnabled": true,
                        "startTime": "02:30",
                    },
                    "ipConfiguration": {
                        "ipv4Enabled": true,
                        "authorizedNetworks": [{"value": "203.0.113.0/24"}],
                    },
                },
            })
        );

        let private = CloudSqlConfig {
            private_network: Some("projects/p/global/networks/n".into()),
            backups: false,
            ..CloudSqlConfig::default()
        };
        let s = serde_json::to_value(desired_settings(&private, "acme", "")).unwrap();
        assert_eq!(
            s["ipConfiguration"],
            json!({"ipv4Enabled": false, "privateNetwork": "projects/p/global/networks/n"})
        );
        // No point-in-time recovery without backups.
        assert_eq!(
            s["backupConfiguration"],
            json!({"enabled": false, "pointInTimeRecoveryEnabled": false})
        );
    }

    #[test]
    fn drift_is_computed_field_by_field() {
        let cfg = CloudSqlConfig::default();
        let desired = desired_settings(&cfg, "acme", "");
        let (_, drift) = settings_patch(&cfg, "acme", "", &desired);
        assert!(drift.is_empty(), "{drift:?}");

        // What Cloud SQL adds on its own is no drift: a chosen backup window, a grown disk,
        // labels of others.
        let mut observed = desired.clone();
        observed.backup_configuration.as_mut().unwrap().start_time = "23:00".into();
        observed.data_disk_size_gb = Some(100);
        observed
            .user_labels
            .insert("cost-center".into(), "sales".into());
        assert!(settings_patch(&cfg, "acme", "", &observed).1.is_empty());

        let mut observed = desired.clone();
        observed.tier = "db-custom-2-7680".into();
        observed.data_disk_size_gb = Some(10);
        let (patch, drift) = settings_patch(&cfg, "acme", "", &observed);
        assert_eq!(drift, ["tier", "dataDiskSizeGb"]);
        assert_eq!(
            serde_json::to_value(patch).unwrap(),
            json!({"tier": "db-custom-1-3840", "dataDiskSizeGb": "20"})
        );

        let mut observed = desired.clone();
        observed.user_labels.remove(LABEL_MANAGED_BY);
        observed.user_labels.insert("team".into(), "a".into());
        observed
            .backup_configuration
            .as_mut()
            .unwrap()
            .point_in_time_recovery_enabled = Some(false);
        observed.backup_configuration.as_mut().unwrap().start_time = "04:00".into();
        observed.deletion_protection_enabled = None;
        observed.ip_configuration = None;
        let (patch, drift) = settings_patch(&cfg, "acme", "", &observed);
        assert_eq!(
            drift,
            [
                "deletionProtectionEnabled",
                "backupConfiguration",
                "ipConfiguration",
                "userLabels"
            ]
        );
        let patch = serde_json::to_value(patch).unwrap();
        assert_eq!(
            patch["backupConfiguration"],
            json!({"enabled": true, "pointInTimeRecoveryEnabled": true, "startTime": "04:00"})
        );
        assert_eq!(
            patch["userLabels"],
            json!({"tenant": "acme", "managed-by": "dealertenant-operator", "team": "a"})
        );

        // A configured backup window is enforced.
        let timed = CloudSqlConfig {
            backup_start_time: Some("02:00".into()),
            ..CloudSqlConfig::default()
        };
        let mut observed = desired_settings(&timed, "acme", "");
        observed.backup_configuration.as_mut().unwrap().start_time = "23:00".into();
        assert_eq!(
            settings_patch(&timed, "acme", "", &observed).1,
            ["backupConfiguration"]
        );
    }

    #[test]
    fn only_our_instances_are_touched() {
        let mut i = DatabaseInstance::new();
        i.settings = Some(desired_settings(&CloudSqlConfig::default(), "acme", ""));
        assert!(check_ownership("dt-acme", "acme", &i).is_ok());
        let e = check_ownership("dt-acme", "other", &i).unwrap_err();
        assert!(e.to_string().contains("tenant=acme"), "{e}");
        i.settings
            .as_mut()
            .unwrap()
            .user_labels
            .insert(LABEL_MANAGED_BY.into(), "terraform".into());
        let e = check_ownership("dt-acme", "acme", &i).unwrap_err();
        assert!(e.to_string().contains("managed-by=terraform"), "{e}");
        // Labels removed by hand: drift, not a refusal.
        i.settings.as_mut().unwrap().user_labels.clear();
        assert!(check_ownership("dt-acme", "acme", &i).is_ok());
    }

    #[test]
    fn an_instance_is_bound_to_its_tenants_uid() {
        let uid_a = "5a70ad95-0c70-4dba-b433-bea48aafe77e";
        let uid_b = "11111111-1111-1111-1111-111111111111";
        let cfg = CloudSqlConfig::default();
        let mut i = DatabaseInstance::new();
        i.settings = Some(desired_settings(&cfg, "acme", uid_a));
        assert_eq!(
            i.settings.as_ref().unwrap().user_labels[LABEL_TENANT_UID],
            uid_a
        );
        assert_eq!(owner_of(&i), Some(uid_a));
        let mut a = tenant("acme");
        a.uid = uid_a.into();
        assert!(check_uid("dt-acme", &a, &i).is_ok());
        let mut b = tenant("acme");
        b.uid = uid_b.into();
        let e = check_uid("dt-acme", &b, &i).unwrap_err();
        assert_eq!(e.reason(), "RetainedDataExists");
        assert!(e.to_string().contains(uid_a), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("dealerdesk.de/adopt-retained: {uid_a}")),
            "{e}"
        );
        b.annotations
            .insert("dealerdesk.de/adopt-retained".into(), uid_b.into());
        assert!(
            check_uid("dt-acme", &b, &i).is_err(),
            "adopting another UID"
        );
        b.annotations
            .insert("dealerdesk.de/adopt-retained".into(), uid_a.into());
        assert!(check_uid("dt-acme", &b, &i).is_ok());
        // Adopted: the labels are a drift to the adopter's UID, the others kept.
        let (patch, drift) = settings_patch(&cfg, "acme", uid_b, i.settings.as_ref().unwrap());
        assert_eq!(drift, ["userLabels"]);
        assert_eq!(patch.user_labels[LABEL_TENANT_UID], uid_b);
        // Made before the label: no owner, not refused, the label is added.
        i.settings
            .as_mut()
            .unwrap()
            .user_labels
            .remove(LABEL_TENANT_UID);
        assert_eq!(owner_of(&i), None);
        let mut c = tenant("acme");
        c.uid = uid_b.into();
        assert!(check_uid("dt-acme", &c, &i).is_ok());
        let (patch, drift) = settings_patch(&cfg, "acme", uid_a, i.settings.as_ref().unwrap());
        assert_eq!(drift, ["userLabels"]);
        assert_eq!(patch.user_labels[LABEL_TENANT_UID], uid_a);
        // Offline (no UID): no label.
        assert!(!labels("acme", "").contains_key(LABEL_TENANT_UID));
    }

    #[test]
    fn secret_points_at_the_configured_address() {
        let mut i = DatabaseInstance::new();
        let ip = |t: SqlIpAddressType, a: &str| {
            let mut m = google_cloud_sql_v1::model::IpMapping::new();
            m.r#type = t;
            m.ip_address = a.into();
            m
        };
        i.ip_addresses = vec![
            ip(SqlIpAddressType::Outgoing, "35.0.0.9"),
            ip(SqlIpAddressType::Primary, "34.1.2.3"),
            ip(SqlIpAddressType::Private, "10.0.0.3"),
        ];
        assert_eq!(
            connect_address(&CloudSqlConfig::default(), &i).as_deref(),
            Some("34.1.2.3")
        );
        let private = CloudSqlConfig {
            private_network: Some("projects/p/global/networks/n".into()),
            ..CloudSqlConfig::default()
        };
        assert_eq!(connect_address(&private, &i).as_deref(), Some("10.0.0.3"));
        i.ip_addresses.pop();
        assert_eq!(connect_address(&private, &i), None);

        let s = secret_data("10.0.0.3", "dt_acme", "pw-123", "p:europe-west3:dt-acme");
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [
                "DATABASE_HOST",
                "DATABASE_INSTANCE",
                "DATABASE_NAME",
                "DATABASE_PASSWORD",
                "DATABASE_PORT",
                "DATABASE_USER"
            ]
        );
        assert_eq!(s.get("DATABASE_PORT"), Some("5432"));
        assert!(!format!("{s:?}").contains("pw-123"));
    }

    #[test]
    fn reserved_name_message_says_what_to_do() {
        let m = reserved_name_message("dt-acme");
        assert!(m.contains("dt-acme"));
        assert!(
            m.contains(r#"dealerdesk.de/database-instance-suffix: "2""#),
            "{m}"
        );
    }

    #[test]
    fn sdk_errors_are_classified() {
        let svc = |code: Code, msg: &str| {
            google_cloud_sql_v1::Error::service(Status::default().set_code(code).set_message(msg))
        };
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert!(
                classify("x", &svc(code, "m"), None).is_transient(),
                "{code:?}"
            );
        }
        for code in [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::FailedPrecondition,
        ] {
            let e = classify("get instance dt-a", &svc(code, "the API says no"), None);
            assert!(!e.is_transient(), "{code:?}");
            assert!(e.to_string().contains("the API says no"), "{e}");
            assert!(e.to_string().contains("get instance dt-a"), "{e}");
        }
        let e = classify(
            "set password",
            &svc(Code::InvalidArgument, "password hunter2hunter2 is weak"),
            Some("hunter2hunter2"),
        );
        assert!(!e.to_string().contains("hunter2hunter2"), "{e}");
        assert!(e.to_string().contains("[redacted]"), "{e}");
        // Another operation running: transient although it is a conflict.
        let e = classify(
            "patch",
            &svc(
                Code::Aborted,
                "Operation failed because another operation was already in progress.",
            ),
            None,
        );
        assert!(e.is_transient());
        let t = google_cloud_sql_v1::Error::timeout("deadline");
        assert!(classify("x", &t, None).is_transient());
    }

    #[test]
    fn validation_covers_the_new_fields() {
        assert!(CloudSqlConfig::default().validate().is_ok());
        let bad = [
            CloudSqlConfig {
                edition: "STANDARD".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                database_version: "MYSQL_8_0".into(),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                backup_start_time: Some("25:00".into()),
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                anonymous_credentials: true,
                ..CloudSqlConfig::default()
            },
            CloudSqlConfig {
                timeout_seconds: 0,
                ..CloudSqlConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(is_hh_mm("00:00") && is_hh_mm("23:59"));
        assert!(!is_hh_mm("24:00") && !is_hh_mm("2:00") && !is_hh_mm("+1:00"));
    }
}
