//! Unit tests of the pure parts (`desired`): the insert body, drift and its patch, whose
//! instance it is, the Secret.

use super::config::CloudSqlConfig;
use super::desired::*;
use crate::providers::TenantInfo;
use google_cloud_sql_v1::model::{
    DatabaseInstance, SqlAvailabilityType, SqlDatabaseVersion, SqlIpAddressType,
    ip_configuration::SslMode, settings::Edition,
};
use serde_json::json;

/// A tenant of the unit tests of this provider's modules.
pub(super) fn tenant(name: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: String::new(),
        region: "europe-west3".into(),
        namespace: format!("tenant-{name}"),
        annotations: Default::default(),
    }
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
                    "sslMode": SslMode::EncryptedOnly.value().unwrap(),
                },
                "retainBackupsOnDelete": false,
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
        json!({
            "ipv4Enabled": false,
            "privateNetwork": "projects/p/global/networks/n",
            "sslMode": SslMode::EncryptedOnly.value().unwrap(),
        })
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

    // Unencrypted connections allowed (Cloud SQL's default, or changed by hand): drift.
    for other in [SslMode::AllowUnencryptedAndEncrypted, SslMode::Unspecified] {
        let mut observed = desired.clone();
        observed.ip_configuration.as_mut().unwrap().ssl_mode = other;
        let (patch, drift) = settings_patch(&cfg, "acme", "", &observed);
        assert_eq!(drift, ["ipConfiguration"]);
        assert_eq!(
            patch.ip_configuration.unwrap().ssl_mode,
            SslMode::EncryptedOnly
        );
    }

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
    // Unlabelled (made by hand, or labels removed): not ours until someone labels it.
    for missing in [LABEL_MANAGED_BY, LABEL_TENANT] {
        let mut i = DatabaseInstance::new();
        i.settings = Some(desired_settings(&CloudSqlConfig::default(), "acme", ""));
        i.settings.as_mut().unwrap().user_labels.remove(missing);
        let e = check_ownership("dt-acme", "acme", &i).unwrap_err();
        assert_eq!(e.reason(), "ProviderRefused");
        assert!(
            e.to_string().contains(&format!("no label {missing}")),
            "{e}"
        );
        assert!(
            e.to_string().contains(
                "gcloud sql instances patch dt-acme \
                 --update-labels=managed-by=dealertenant-operator,tenant=acme"
            ),
            "{e}"
        );
    }
    i.settings.as_mut().unwrap().user_labels.clear();
    assert!(check_ownership("dt-acme", "acme", &i).is_err());
    assert!(check_ownership("dt-acme", "acme", &DatabaseInstance::new()).is_err());
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
            "DATABASE_SSLMODE",
            "DATABASE_USER"
        ]
    );
    assert_eq!(s.get("DATABASE_SSLMODE"), Some("require"));
    assert_eq!(s.get("DATABASE_PORT"), Some("5432"));
    assert!(!format!("{s:?}").contains("pw-123"));
}

#[test]
fn what_a_delete_leaves_restorable() {
    let mut i = DatabaseInstance::new();
    i.settings = Some(desired_settings(&CloudSqlConfig::default(), "acme", ""));
    let cfg = CloudSqlConfig::default();
    assert_eq!(final_backup_days(&cfg, &i), None);
    assert!(restorable_after_delete("dt-acme", &i, None).is_empty());
    let two_weeks = CloudSqlConfig {
        final_backup_days: 14,
        ..CloudSqlConfig::default()
    };
    assert_eq!(final_backup_days(&two_weeks, &i), Some(14));
    // The instance's own setting, with Cloud SQL's default of 30 days when it names none.
    let mut own = google_cloud_sql_v1::model::FinalBackupConfig::new();
    own.enabled = Some(true);
    i.settings.as_mut().unwrap().final_backup_config = Some(own);
    assert_eq!(final_backup_days(&cfg, &i), Some(30));
    i.settings.as_mut().unwrap().retain_backups_on_delete = Some(true);
    let until: jiff::Timestamp = "2027-01-01T10:00:00.4Z".parse().unwrap();
    let r = restorable_after_delete("dt-acme", &i, Some(until));
    assert_eq!(
        r.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "final backup of instance dt-acme, restorable until 2027-01-01T10:00:00Z",
            "backups of instance dt-acme retained after its deletion, restorable until deleted",
        ]
    );
}
