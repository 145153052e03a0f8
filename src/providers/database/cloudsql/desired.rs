//! Pure: the instance a tenant gets (settings, labels), drift against what Cloud SQL reports
//! and the patch that repairs it, whose instance it is, and the Secret's contents.

use std::collections::{BTreeSet, HashMap};

use google_cloud_sql_v1::model::{
    AclEntry, BackupConfiguration, DatabaseInstance, IpConfiguration, Settings,
    SqlAvailabilityType, SqlDatabaseVersion, SqlIpAddressType, ip_configuration::SslMode,
    settings::Edition,
};

use super::config::{CloudSqlConfig, SUFFIX_ANNOTATION};
use super::errors::{SERVICE, rfc3339};
use crate::desired::names::ADOPT_ANNOTATION;
use crate::processors::ids;
use crate::providers::google::uid_label_value;
use crate::providers::{ExternalResource, ProviderError, Restorable, SecretData, TenantInfo};

/// Label keys and value that mark an instance as this operator's.
pub const LABEL_TENANT: &str = "tenant";
pub use crate::providers::google::LABEL_TENANT_UID;
pub use crate::providers::{LABEL_MANAGED_BY, MANAGED_BY};

/// PostgreSQL's port; Cloud SQL does not let it be changed.
const POSTGRES_PORT: &str = "5432";
/// Secret key of the libpq `sslmode` clients must use: the instance accepts encrypted
/// connections only.
pub const KEY_SSLMODE: &str = "DATABASE_SSLMODE";

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

/// The IP configuration `cfg` asks for: private only, or public with authorized networks;
/// either way only encrypted connections (`sslMode: ENCRYPTED_ONLY`; Cloud SQL's default
/// also accepts unencrypted ones).
pub fn desired_ip_configuration(cfg: &CloudSqlConfig) -> IpConfiguration {
    let mut ip = IpConfiguration::new();
    ip.ssl_mode = SslMode::EncryptedOnly;
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
    s.retain_backups_on_delete = Some(cfg.retain_backups_on_delete);
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
    if observed.retain_backups_on_delete.unwrap_or(false) != cfg.retain_backups_on_delete {
        patch.retain_backups_on_delete = Some(cfg.retain_backups_on_delete);
        drift.push("retainBackupsOnDelete");
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
    if ip_drift || have_ip.ssl_mode != SslMode::EncryptedOnly {
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

/// Refuses an instance that is not marked as this tenant's: its `userLabels` must carry
/// `managed-by=dealertenant-operator` and `tenant=<tenant>` (the UID label is checked by
/// [`check_uid`]). An unlabelled instance is not adopted: it may be somebody's by hand, and
/// adopting it would hand its deletion protection and its data to the tenant's deletion.
/// Someone who knows it is the tenant's sets the labels (see [`adopt_command`]).
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
    let wrong = [(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_TENANT, tenant)]
        .into_iter()
        .find(|(k, v)| labels.get(*k).map(String::as_str) != Some(*v));
    let Some((key, _)) = wrong else {
        return Ok(());
    };
    let found = match labels.get(key) {
        Some(have) => format!("its label {key}={have} says it is not this tenant's"),
        None => format!("it has no label {key}, so it is not known to be this tenant's"),
    };
    Err(ProviderError::Refused {
        service: SERVICE,
        message: format!(
            "instance {name} exists but {found}; nothing was changed. If it is the tenant's, \
             label it: {}; otherwise set {SUFFIX_ANNOTATION} to use another name",
            adopt_command(name, tenant)
        ),
    })
}

/// The command that marks an existing instance as `tenant`'s (the next pass also binds it
/// to the tenant's UID).
pub fn adopt_command(name: &str, tenant: &str) -> String {
    format!(
        "gcloud sql instances patch {name} \
         --update-labels={LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TENANT}={tenant}"
    )
}

/// Cloud SQL's default retention of a final backup, in days (`gcloud sql instances delete
/// --final-backup-retention-days`).
const FINAL_BACKUP_DEFAULT_DAYS: u32 = 30;

/// How many days the final backup a delete of `observed` takes is kept: the configured
/// days, else what the instance's own `finalBackupConfig` says; `None`: no final backup.
pub fn final_backup_days(cfg: &CloudSqlConfig, observed: &DatabaseInstance) -> Option<u32> {
    if cfg.final_backup_days > 0 {
        return Some(cfg.final_backup_days);
    }
    let own = observed.settings.as_ref()?.final_backup_config.as_ref()?;
    own.enabled.unwrap_or(false).then(|| {
        own.retention_days
            .and_then(|d| u32::try_from(d).ok())
            .filter(|d| *d > 0)
            .unwrap_or(FINAL_BACKUP_DEFAULT_DAYS)
    })
}

/// What stays restorable after `observed` (instance `name`) is deleted: its final backup,
/// until `final_expiry`, when one is taken; its backups when it retains them on delete.
pub fn restorable_after_delete(
    name: &str,
    observed: &DatabaseInstance,
    final_expiry: Option<jiff::Timestamp>,
) -> Vec<Restorable> {
    let mut out = Vec::new();
    if let Some(until) = final_expiry {
        out.push(Restorable {
            what: format!("final backup of instance {name}"),
            until: Some(rfc3339(until)),
        });
    }
    let retains = observed
        .settings
        .as_ref()
        .and_then(|s| s.retain_backups_on_delete)
        .unwrap_or(false);
    if retains {
        out.push(Restorable {
            what: format!("backups of instance {name} retained after its deletion"),
            until: None,
        });
    }
    out
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
        .with(KEY_SSLMODE, "require")
}

/// The tenant's resources at Cloud SQL, for the status and the receipts: the instance
/// and, when they exist, its database and user.
pub fn resources(
    project: &str,
    inst: &str,
    location: &str,
    database: Option<&str>,
    user: Option<&str>,
) -> Vec<ExternalResource> {
    let conn = connection_name(project, location, inst);
    let at = |kind: &str, name: String, id: String| {
        ExternalResource::new(kind, name, Some(location.to_string()), ids::GOOGLE_CLOUD).with_id(id)
    };
    let mut out = vec![at("CloudSqlInstance", inst.to_string(), conn.clone())];
    if let Some(d) = database {
        out.push(at("Database", format!("{inst}/{d}"), format!("{conn}/{d}")));
    }
    if let Some(u) = user {
        out.push(at(
            "DatabaseUser",
            format!("{inst}/{u}"),
            format!("{conn}/{u}"),
        ));
    }
    out
}
