//! The storage provider against the Cloud Storage double (tests/support/gcs.rs), plugged in
//! through the SDK's stub seam: creation and the Secret, no writes on an unchanged bucket,
//! drift repair, deletion order, error classification, crash safety by failure injection,
//! residency, name collisions and the create/delete spacing (on tokio's paused clock).

mod support;

use std::sync::Arc;
use std::time::Duration;

use dealertenant_operator::providers::storage::{
    CreateDeleteLimiter, StorageConfig, StorageProvider,
};
use dealertenant_operator::providers::{Provider, ProviderError, SecretData, TenantInfo};
use google_cloud_gax::error::rpc::Code;
use google_cloud_storage::model::bucket::iam_config::UniformBucketLevelAccess;
use google_cloud_storage::model::bucket::{IamConfig, SoftDeletePolicy, Versioning};
use support::gcs::{FakeGcs, Fault, PROJECT_ID, PROJECT_NUMBER};

const DAY: i64 = 86_400;

fn cfg() -> StorageConfig {
    StorageConfig {
        project: PROJECT_ID.into(),
        bucket_prefix: "dd-test".into(),
        min_create_delete_interval_ms: 0,
        ..StorageConfig::default()
    }
}

fn tenant(name: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: format!("uid-{name}"),
        region: "europe-west3".into(),
        namespace: format!("tenant-{name}"),
        annotations: Default::default(),
    }
}

fn provider(fake: &FakeGcs, cfg: StorageConfig) -> StorageProvider {
    StorageProvider::new(cfg, fake.client())
}

/// Asserts that the bucket at the double has every enforced setting of `cfg`.
fn assert_settings(fake: &FakeGcs, id: &str, cfg: &StorageConfig, tenant: &str) {
    let b = fake.bucket(id).unwrap_or_else(|| panic!("no bucket {id}"));
    assert_eq!(b.location, "EUROPE-WEST3");
    assert_eq!(b.project, PROJECT_NUMBER);
    assert_eq!(b.labels.get("tenant").map(String::as_str), Some(tenant));
    assert_eq!(
        b.labels.get("dealerdesk-tenant-uid").map(String::as_str),
        Some(format!("uid-{tenant}").as_str()),
        "bound to the tenant's UID"
    );
    assert_eq!(
        b.labels.get("managed-by").map(String::as_str),
        Some("dealertenant-operator")
    );
    let iam = b.iam_config.as_ref().unwrap();
    assert!(iam.uniform_bucket_level_access.as_ref().unwrap().enabled);
    assert_eq!(iam.public_access_prevention, "enforced");
    let retention = b
        .soft_delete_policy
        .as_ref()
        .and_then(|p| p.retention_duration.as_ref())
        .map(|d| d.seconds())
        .unwrap_or(0);
    assert_eq!(retention, i64::from(cfg.soft_delete_days) * DAY);
    assert_eq!(
        b.versioning.as_ref().is_some_and(|v| v.enabled),
        cfg.versioning
    );
}

fn assert_secret(s: &SecretData, id: &str) {
    assert_eq!(s.get("STORAGE_BUCKET"), Some(id));
    assert_eq!(s.get("STORAGE_LOCATION"), Some("europe-west3"));
    assert_eq!(s.get("STORAGE_PROJECT"), Some(PROJECT_ID));
    assert_eq!(s.keys().count(), 3);
}

// ----- life cycle ------------------------------------------------------------------------

#[tokio::test]
async fn first_reconcile_creates_the_bucket_and_issues_the_secret() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let r = p.reconcile(&tenant("acme"), None).await.unwrap();

    assert!(r.ready);
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
    assert_settings(&fake, "dd-test-acme", &cfg(), "acme");
    assert_secret(r.secret.as_ref().unwrap(), "dd-test-acme");
    assert_eq!(
        fake.methods(),
        ["get_bucket", "create_bucket", "get_bucket"],
        "observe, create, read back"
    );
    assert_eq!(r.resources.len(), 1);
    let res = &r.resources[0];
    assert_eq!(res.kind, "Bucket");
    assert_eq!(res.name, "dd-test-acme");
    assert_eq!(res.location.as_deref(), Some("europe-west3"));
    assert_eq!(res.processor, "google-cloud");
    assert_eq!(
        res.id.as_deref(),
        Some("projects/123456789012/buckets/dd-test-acme")
    );
    assert!(r.message.contains("dd-test-acme"), "{}", r.message);
}

#[tokio::test]
async fn second_reconcile_with_the_secret_writes_nothing() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let first = p.reconcile(&tenant("acme"), None).await.unwrap();
    let secret = first.secret.unwrap();
    fake.clear_calls();

    let again = p.reconcile(&tenant("acme"), Some(&secret)).await.unwrap();
    assert!(again.secret.is_none());
    assert!(again.ready);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(fake.methods(), ["get_bucket"]);

    // A restarted operator (no learned project number) confirms ownership by listing
    // our project's buckets: still reads only.
    let restarted = provider(&fake, cfg());
    fake.clear_calls();
    let r = restarted
        .reconcile(&tenant("acme"), Some(&secret))
        .await
        .unwrap();
    assert!(r.secret.is_none());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(fake.methods(), ["get_bucket", "list_buckets"]);
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
}

#[tokio::test]
async fn a_missing_secret_is_issued_again_without_writes() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let first = p.reconcile(&tenant("acme"), None).await.unwrap().secret;
    fake.clear_calls();

    let r = p.reconcile(&tenant("acme"), None).await.unwrap();
    let reissued = r.secret.expect("Secret deleted -> issued again");
    assert_secret(&reissued, "dd-test-acme");
    assert_eq!(
        Some(reissued),
        first,
        "nothing to rotate: a bucket has no credentials"
    );
    assert!(fake.writes().is_empty());

    // A stale Secret (other values) is replaced too.
    let stale = SecretData::new()
        .with("STORAGE_BUCKET", "old")
        .with("STORAGE_LOCATION", "europe-west3")
        .with("STORAGE_PROJECT", PROJECT_ID);
    let r = p.reconcile(&tenant("acme"), Some(&stale)).await.unwrap();
    assert_secret(r.secret.as_ref().unwrap(), "dd-test-acme");
}

#[tokio::test]
async fn drift_is_repaired_with_one_masked_update() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let secret = p.reconcile(&tenant("acme"), None).await.unwrap().secret;
    fake.mutate("dd-test-acme", |b| {
        b.labels.remove("managed-by");
        b.labels.insert("team".into(), "sales".into());
        b.iam_config = Some(
            IamConfig::new()
                .set_uniform_bucket_level_access(UniformBucketLevelAccess::new().set_enabled(false))
                .set_public_access_prevention("inherited"),
        );
        b.soft_delete_policy = Some(
            SoftDeletePolicy::new()
                .set_retention_duration(google_cloud_wkt::Duration::clamp(30 * DAY, 0)),
        );
        b.versioning = Some(Versioning::new().set_enabled(true));
    });
    fake.clear_calls();

    let r = p.reconcile(&tenant("acme"), secret.as_ref()).await.unwrap();
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "update_bucket");
    assert_eq!(
        writes[0].detail,
        "labels,iam_config,soft_delete_policy,versioning"
    );
    assert!(r.message.contains("repaired"), "{}", r.message);
    assert!(r.secret.is_none());
    assert_settings(&fake, "dd-test-acme", &cfg(), "acme");
    let b = fake.bucket("dd-test-acme").unwrap();
    assert_eq!(b.labels["team"], "sales", "labels set by others stay");

    // One setting only: one path only.
    fake.mutate("dd-test-acme", |b| {
        b.versioning = Some(Versioning::new().set_enabled(true));
    });
    fake.clear_calls();
    p.reconcile(&tenant("acme"), secret.as_ref()).await.unwrap();
    let writes = fake.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].detail, "versioning");

    fake.clear_calls();
    p.reconcile(&tenant("acme"), secret.as_ref()).await.unwrap();
    assert!(fake.writes().is_empty(), "repaired bucket: no more writes");
}

#[tokio::test]
async fn versioning_and_soft_delete_off_follow_the_configuration() {
    let fake = FakeGcs::new();
    let c = StorageConfig {
        versioning: true,
        soft_delete_days: 0,
        ..cfg()
    };
    let p = provider(&fake, c.clone());
    let secret = p.reconcile(&tenant("acme"), None).await.unwrap().secret;
    assert_settings(&fake, "dd-test-acme", &c, "acme");
    fake.clear_calls();
    p.reconcile(&tenant("acme"), secret.as_ref()).await.unwrap();
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn delete_removes_every_object_version_before_the_bucket() {
    let fake = FakeGcs::new();
    let c = StorageConfig {
        versioning: true,
        ..cfg()
    };
    let p = provider(&fake, c);
    p.reconcile(&tenant("acme"), None).await.unwrap();
    fake.put_object("dd-test-acme", "invoices/1.pdf");
    fake.put_object("dd-test-acme", "invoices/1.pdf"); // the first becomes noncurrent
    fake.put_object("dd-test-acme", "logo.png");
    assert_eq!(fake.objects("dd-test-acme").len(), 3);

    // The double refuses to delete a bucket that is not empty, as Cloud Storage does.
    let refused = fake
        .client()
        .delete_bucket()
        .set_name("projects/_/buckets/dd-test-acme")
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.status().unwrap().code, Code::FailedPrecondition);
    fake.clear_calls();

    let erased = p.delete(&tenant("acme")).await.unwrap();
    assert!(fake.bucket_names().is_empty());
    let methods = fake.methods();
    assert_eq!(methods.first(), Some(&"get_bucket"));
    assert_eq!(methods.last(), Some(&"delete_bucket"));
    let object_deletes = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "delete_object")
        .collect::<Vec<_>>();
    assert_eq!(
        object_deletes.len(),
        3,
        "all three versions, noncurrent included"
    );
    assert!(object_deletes.iter().all(|c| !c.detail.ends_with("#0")));
    assert!(
        fake.calls()
            .iter()
            .filter(|c| c.method == "list_objects")
            .all(|c| c.detail == "versions=true")
    );
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.method == "delete_bucket")
            .count(),
        1,
        "the bucket delete comes once, after the objects"
    );

    assert_eq!(erased.resources.len(), 1);
    let r = &erased.resources[0];
    assert_eq!(r.kind, "Bucket");
    assert_eq!(r.name, "dd-test-acme");
    assert_eq!(r.location.as_deref(), Some("europe-west3"));
    assert_eq!(
        r.id.as_deref(),
        Some("projects/123456789012/buckets/dd-test-acme")
    );
}

/// A bucket deleted with soft delete on is not erased yet: the receipt names the
/// soft-deleted bucket and until when it can be restored (delete time + its retention).
#[tokio::test]
async fn a_soft_deleted_bucket_is_reported_restorable_until_its_retention_ends() {
    let fake = FakeGcs::new();
    let p = provider(
        &fake,
        StorageConfig {
            soft_delete_days: 30,
            ..cfg()
        },
    );
    p.reconcile(&tenant("acme"), None).await.unwrap();
    let before = jiff::Timestamp::now();
    let erased = p.delete(&tenant("acme")).await.unwrap();
    let after = jiff::Timestamp::now();
    assert!(fake.bucket_names().is_empty());
    assert_eq!(erased.resources.len(), 1);
    assert_eq!(erased.restorable.len(), 1, "{:?}", erased.restorable);
    let r = &erased.restorable[0];
    assert_eq!(r.what, "soft-deleted bucket dd-test-acme");
    let until: jiff::Timestamp = r.until.as_deref().expect("until").parse().unwrap();
    let window = jiff::SignedDuration::from_hours(30 * 24);
    assert!(
        until
            >= jiff::Timestamp::from_second(before.as_second())
                .unwrap()
                .checked_add(window)
                .unwrap()
            && until <= after.checked_add(window).unwrap(),
        "{until} not 30 days after the delete"
    );

    // The retention the bucket has counts, not the configuration's: soft delete turned off
    // on the bucket (by hand, just before) means erased.
    p.reconcile(&tenant("beta"), None).await.unwrap();
    fake.mutate("dd-test-beta", |b| b.soft_delete_policy = None);
    let erased = p.delete(&tenant("beta")).await.unwrap();
    assert_eq!(erased.resources.len(), 1);
    assert!(erased.restorable.is_empty(), "{:?}", erased.restorable);

    // Soft delete off by configuration: erased.
    let off = provider(
        &fake,
        StorageConfig {
            soft_delete_days: 0,
            ..cfg()
        },
    );
    off.reconcile(&tenant("gamma"), None).await.unwrap();
    assert!(
        off.delete(&tenant("gamma"))
            .await
            .unwrap()
            .restorable
            .is_empty()
    );
}

/// A FAILED_PRECONDITION that is not "not empty" is no reason to delete objects and try
/// again: it needs a person, and says Cloud Storage's own words.
#[tokio::test]
async fn a_bucket_delete_refused_for_another_reason_is_blocked_not_retried() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    p.reconcile(&tenant("acme"), None).await.unwrap();
    // Wording illustrative: what matters is that it is not the not-empty refusal.
    let why = "Precondition of bucket deletion failed: the bucket has an active hold.";
    fake.block_delete("dd-test-acme", Some(why));
    fake.clear_calls();
    let err = p.delete(&tenant("acme")).await.unwrap_err();
    assert_eq!(err.reason(), "DeletionBlocked", "{err}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains(why), "{text}");
    assert!(text.contains("FAILED_PRECONDITION"), "{text}");
    assert!(text.contains("dealerdesk.de/abandon: storage"), "{text}");
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.method == "delete_bucket")
            .count(),
        1,
        "not retried as if objects were left"
    );
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);

    fake.block_delete("dd-test-acme", None);
    p.delete(&tenant("acme")).await.unwrap();
    assert!(fake.bucket_names().is_empty());
}

/// A retention Cloud Storage does not accept (configuration validation refuses it first;
/// `StorageProvider::new` does not validate) is refused by the service, as the double
/// does: INVALID_ARGUMENT, permanent, nothing created.
#[tokio::test]
async fn a_soft_delete_retention_out_of_range_is_refused_by_the_service() {
    let bad = StorageConfig {
        soft_delete_days: 3,
        ..cfg()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("storage.softDeleteDays")
    );
    let fake = FakeGcs::new();
    let err = provider(&fake, bad)
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("INVALID_ARGUMENT"), "{text}");
    assert!(text.contains("between 7 and 90 days"), "{text}");
    assert!(fake.bucket_names().is_empty());
}

#[tokio::test]
async fn delete_of_an_absent_tenant_is_ok() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let erased = p.delete(&tenant("ghost")).await.unwrap();
    assert!(erased.resources.is_empty());
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn objects_written_during_deletion_are_deleted_in_another_round() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    p.reconcile(&tenant("acme"), None).await.unwrap();
    fake.put_object("dd-test-acme", "a");
    fake.late_objects(1);
    let erased = p.delete(&tenant("acme")).await.unwrap();
    assert_eq!(erased.resources.len(), 1);
    assert!(fake.bucket_names().is_empty());

    // A writer that never stops: transient error, the bucket stays for the next pass.
    p.reconcile(&tenant("acme"), None).await.unwrap();
    fake.late_objects(100);
    let err = p.delete(&tenant("acme")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
}

// ----- errors ----------------------------------------------------------------------------

#[tokio::test]
async fn service_errors_are_classified() {
    for (code, transient) in [
        (Code::Unavailable, true),
        (Code::ResourceExhausted, true),
        (Code::DeadlineExceeded, true),
        (Code::Internal, true),
        (Code::Unauthenticated, false),
        (Code::InvalidArgument, false),
        (Code::FailedPrecondition, false),
    ] {
        let fake = FakeGcs::new();
        let p = provider(&fake, cfg());
        fake.fail_all(code, "the service says no");
        let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
        assert_eq!(err.is_transient(), transient, "{code:?}: {err}");
        let text = err.to_string();
        assert!(text.contains(code.name()), "{text}");
        assert!(text.contains("the service says no"), "{text}");
        let err = p.delete(&tenant("acme")).await.unwrap_err();
        assert_eq!(err.is_transient(), transient, "delete {code:?}: {err}");
    }

    // PERMISSION_DENIED on the lookup: permanent, with the way out in the message.
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    fake.fail_all(Code::PermissionDenied, "missing storage.buckets.get");
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("storage.bucketPrefix"), "{err}");
}

#[tokio::test]
async fn configuration_errors_never_quote_credentials() {
    let dir = std::env::temp_dir().join(format!("storage-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = StorageConfig {
        credentials_file: Some(dir.join("absent.json").display().to_string()),
        ..cfg()
    };
    let err = StorageProvider::from_config(&missing).await.unwrap_err();
    assert_eq!(err.reason(), "NotConfigured", "{err}");

    let broken = dir.join("broken.json");
    std::fs::write(
        &broken,
        r#"{"type": "service_account", "private_key": "KEYMATERIAL-123"#,
    )
    .unwrap();
    let c = StorageConfig {
        credentials_file: Some(broken.display().to_string()),
        ..cfg()
    };
    let err = StorageProvider::from_config(&c).await.unwrap_err();
    assert_eq!(err.reason(), "NotConfigured");
    assert!(!format!("{err} {err:?}").contains("KEYMATERIAL"), "{err}");

    // Well-formed, so the SDK builds it; the key itself is garbage. Service-account
    // credentials sign their tokens locally, so nothing leaves the machine, and the client
    // points at a closed port on 127.0.0.1.
    let unusable = dir.join("unusable.json");
    std::fs::write(
        &unusable,
        r#"{"type": "service_account", "client_email": "op@dd-test.iam.gserviceaccount.com",
            "private_key_id": "k1", "project_id": "dd-test",
            "private_key": "-----BEGIN PRIVATE KEY-----\nKEYMATERIAL-456\n-----END PRIVATE KEY-----\n"}"#,
    )
    .unwrap();
    let c = StorageConfig {
        credentials_file: Some(unusable.display().to_string()),
        endpoint: Some(format!("http://127.0.0.1:{}", closed_port())),
        ..cfg()
    };
    let p = StorageProvider::from_config(&c)
        .await
        .expect("the SDK parses the key lazily");
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert!(!err.is_transient(), "a broken key needs a person: {err}");
    assert!(!format!("{err} {err:?}").contains("KEYMATERIAL"), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");

    let c = StorageConfig {
        credentials_env: Some("DT_STORAGE_TEST_UNSET_VARIABLE".into()),
        ..cfg()
    };
    let err = StorageProvider::from_config(&c).await.unwrap_err();
    assert!(
        err.to_string().contains("DT_STORAGE_TEST_UNSET_VARIABLE"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ----- crash safety ----------------------------------------------------------------------

/// Runs reconcile passes without faults until one succeeds; returns the last Secret issued.
async fn converge(
    p: &StorageProvider,
    t: &TenantInfo,
    mut secret: Option<SecretData>,
) -> SecretData {
    for _ in 0..4 {
        if let Ok(r) = p.reconcile(t, secret.as_ref()).await {
            if r.secret.is_some() {
                secret = r.secret;
            }
            return secret.expect("a converged pass leaves a Secret");
        }
    }
    panic!("reconcile did not converge in four passes");
}

#[tokio::test]
async fn creation_survives_a_failure_at_every_call() {
    // A clean first pass makes three calls; fail each of them and one past the end.
    for k in 1..=4 {
        for fault in [Fault::Before, Fault::After] {
            let fake = FakeGcs::new();
            let p = provider(&fake, cfg());
            fake.fail_nth(k, fault);
            let first = p.reconcile(&tenant("acme"), None).await;
            if let Err(e) = &first {
                assert!(e.is_transient(), "k={k} {fault:?}: {e}");
            }
            fake.heal();
            let secret = converge(&p, &tenant("acme"), first.ok().and_then(|r| r.secret)).await;

            assert_eq!(fake.bucket_names(), ["dd-test-acme"], "k={k} {fault:?}");
            assert_settings(&fake, "dd-test-acme", &cfg(), "acme");
            assert_secret(&secret, "dd-test-acme");
            assert!(fake.bucket(secret.get("STORAGE_BUCKET").unwrap()).is_some());

            fake.clear_calls();
            let r = p.reconcile(&tenant("acme"), Some(&secret)).await.unwrap();
            assert!(r.secret.is_none(), "k={k} {fault:?}");
            assert!(
                fake.writes().is_empty(),
                "k={k} {fault:?}: {:?}",
                fake.writes()
            );
        }
    }
}

#[tokio::test]
async fn repair_survives_a_failure_at_every_call() {
    for k in 1..=3 {
        for fault in [Fault::Before, Fault::After] {
            let fake = FakeGcs::new();
            let p = provider(&fake, cfg());
            let secret = p.reconcile(&tenant("acme"), None).await.unwrap().secret;
            fake.mutate("dd-test-acme", |b| {
                b.versioning = Some(Versioning::new().set_enabled(true));
                b.labels.remove("managed-by");
            });
            fake.fail_nth(k, fault);
            let _ = p.reconcile(&tenant("acme"), secret.as_ref()).await;
            fake.heal();
            converge(&p, &tenant("acme"), secret.clone()).await;
            assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
            assert_settings(&fake, "dd-test-acme", &cfg(), "acme");
        }
    }
}

#[tokio::test]
async fn deletion_survives_a_failure_at_every_call() {
    // get, list, 3 object deletes, list, delete bucket = 7 calls; one past the end.
    for k in 1..=8 {
        for fault in [Fault::Before, Fault::After] {
            let fake = FakeGcs::new();
            let p = provider(&fake, cfg());
            p.reconcile(&tenant("acme"), None).await.unwrap();
            for o in ["a", "b", "c"] {
                fake.put_object("dd-test-acme", o);
            }
            fake.fail_nth(k, fault);
            let first = p.delete(&tenant("acme")).await;
            if let Err(e) = &first {
                assert!(e.is_transient(), "k={k} {fault:?}: {e}");
            }
            fake.heal();
            let mut done = first.is_ok();
            for _ in 0..3 {
                if done {
                    break;
                }
                done = p.delete(&tenant("acme")).await.is_ok();
            }
            assert!(done, "k={k} {fault:?}");
            assert!(fake.bucket_names().is_empty(), "k={k} {fault:?}");
            assert!(fake.objects("dd-test-acme").is_empty());
            // And absent stays done.
            assert!(
                p.delete(&tenant("acme"))
                    .await
                    .unwrap()
                    .resources
                    .is_empty()
            );
        }
    }
}

// ----- residency -------------------------------------------------------------------------

#[tokio::test]
async fn a_region_outside_the_eu_is_refused_before_any_create() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let t = TenantInfo {
        region: "us-central1".into(),
        ..tenant("acme")
    };
    let err = p.reconcile(&t, None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Residency { .. }), "{err}");
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert!(fake.bucket_names().is_empty());
}

#[tokio::test]
async fn a_wrong_reported_location_is_a_residency_error() {
    for reported in ["EUROPE-WEST1", "US"] {
        let fake = FakeGcs::new();
        fake.report_location(reported);
        let p = provider(&fake, cfg());
        let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
        match &err {
            ProviderError::Residency { location, .. } => assert_eq!(location, reported),
            other => panic!("{reported}: {other}"),
        }
        // Every later pass checks again, and never creates a second bucket.
        let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
        assert!(matches!(err, ProviderError::Residency { .. }), "{err}");
        assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.method == "create_bucket")
                .count(),
            1
        );
    }
}

#[tokio::test]
async fn the_echoed_upper_case_location_passes() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let r = p.reconcile(&tenant("acme"), None).await.unwrap();
    assert_eq!(
        fake.bucket("dd-test-acme").unwrap().location,
        "EUROPE-WEST3"
    );
    assert_eq!(r.resources[0].location.as_deref(), Some("europe-west3"));
}

// ----- name collisions -------------------------------------------------------------------

fn assert_taken(err: &ProviderError) {
    assert!(!err.is_transient(), "{err}");
    assert_eq!(err.reason(), "ProviderRefused", "{err}");
    let text = err.to_string();
    assert!(text.contains("dd-test-acme"), "{text}");
    assert!(text.contains("is taken by another project"), "{text}");
    assert!(text.contains("storage.bucketPrefix"), "{text}");
}

#[tokio::test]
async fn a_name_held_by_a_project_we_cannot_read_is_refused() {
    let fake = FakeGcs::new();
    fake.insert_foreign("dd-test-acme", false, &[]);
    let p = provider(&fake, cfg());
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert_taken(&err);
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn a_readable_bucket_of_another_project_is_refused_even_with_our_labels() {
    let fake = FakeGcs::new();
    fake.insert_foreign(
        "dd-test-acme",
        true,
        &[("tenant", "acme"), ("managed-by", "dealertenant-operator")],
    );
    let p = provider(&fake, cfg());
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert_taken(&err);
    assert!(fake.writes().is_empty());
    // And deletion never touches it.
    let erased = p.delete(&tenant("acme")).await.unwrap();
    assert!(erased.resources.is_empty());
    assert!(fake.writes().is_empty());
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
}

#[tokio::test]
async fn a_bucket_of_our_project_labelled_for_another_tenant_is_refused() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    p.reconcile(&tenant("acme"), None).await.unwrap();
    fake.mutate("dd-test-acme", |b| {
        b.labels.insert("tenant".into(), "someone-else".into());
    });
    fake.clear_calls();
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert_taken(&err);
    assert!(fake.writes().is_empty());
    let err = p.delete(&tenant("acme")).await.unwrap_err();
    assert_eq!(err.reason(), "DeletionBlocked", "{err}");
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn already_exists_for_our_own_bucket_adopts_it() {
    // Another pass created the bucket between our lookup and our create.
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    p.reconcile(&tenant("acme"), None).await.unwrap();
    fake.hide_next_get("dd-test-acme");
    fake.clear_calls();

    let restarted = provider(&fake, cfg());
    let r = restarted.reconcile(&tenant("acme"), None).await.unwrap();
    assert!(r.ready);
    assert_secret(r.secret.as_ref().unwrap(), "dd-test-acme");
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
    let creates: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "create_bucket")
        .collect();
    assert_eq!(creates.len(), 1);
    assert!(creates[0].failed, "the create answered ALREADY_EXISTS");
    assert_eq!(
        fake.methods(),
        ["get_bucket", "create_bucket", "get_bucket", "list_buckets"]
    );
}

#[tokio::test]
async fn already_exists_for_a_foreign_bucket_is_refused() {
    let fake = FakeGcs::new();
    fake.insert_foreign("dd-test-acme", false, &[]);
    fake.hide_next_get("dd-test-acme");
    let p = provider(&fake, cfg());
    let err = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert_taken(&err);
    assert_eq!(
        fake.methods(),
        ["get_bucket", "create_bucket", "get_bucket"]
    );
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);
}

// ----- tenant identity: names are reused, UIDs are not ------------------------------------

const UID_LABEL: &str = "dealerdesk-tenant-uid";
const ADOPT: &str = "dealerdesk.de/adopt-retained";

fn uid_label(fake: &FakeGcs, id: &str) -> Option<String> {
    fake.bucket(id).unwrap().labels.get(UID_LABEL).cloned()
}

#[tokio::test]
async fn a_retained_bucket_is_bound_to_its_tenants_uid() {
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let mut old = tenant("acme");
    old.uid = "5a70ad95-0c70-4dba-b433-bea48aafe77e".into();
    let old_secret = p.reconcile(&old, None).await.unwrap().secret.unwrap();
    assert_eq!(
        uid_label(&fake, "dd-test-acme").as_deref(),
        Some(old.uid.as_str())
    );
    fake.put_object("dd-test-acme", "customer-a.pdf");

    // Another customer, same name: refused before any write.
    let mut newcomer = old.clone();
    newcomer.uid = "11111111-1111-1111-1111-111111111111".into();
    fake.clear_calls();
    let err = p.reconcile(&newcomer, None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Foreign { .. }), "{err}");
    assert_eq!(err.reason(), "RetainedDataExists");
    assert!(err.to_string().contains(&old.uid), "{err}");
    assert!(err.to_string().contains(ADOPT), "{err}");
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    // Its deletion leaves the retained bucket and its objects alone.
    let erased = p.delete(&newcomer).await.unwrap();
    assert!(erased.resources.is_empty(), "{:?}", erased.resources);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(fake.objects("dd-test-acme").len(), 1);
    // Adopting some other UID changes nothing either.
    newcomer
        .annotations
        .insert(ADOPT.into(), "22222222-2222-2222-2222-222222222222".into());
    let err = p.reconcile(&newcomer, None).await.unwrap_err();
    assert_eq!(err.reason(), "RetainedDataExists", "{err}");
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(
        uid_label(&fake, "dd-test-acme").as_deref(),
        Some(old.uid.as_str())
    );

    // Adopting exactly that UID hands the bucket over, objects and all: one label update.
    newcomer.annotations.insert(ADOPT.into(), old.uid.clone());
    let r = p.reconcile(&newcomer, None).await.unwrap();
    assert!(r.ready, "{}", r.message);
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "update_bucket");
    assert_eq!(writes[0].detail, "labels");
    assert_eq!(
        uid_label(&fake, "dd-test-acme").as_deref(),
        Some(newcomer.uid.as_str())
    );
    assert_eq!(fake.objects("dd-test-acme").len(), 1);
    let secret = r.secret.expect("the Secret is issued to the adopter");
    fake.clear_calls();
    let again = p.reconcile(&newcomer, Some(&secret)).await.unwrap();
    assert!(again.ready && again.secret.is_none());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    // Now bound to the adopter: the old UID is the stranger, for reconcile and delete.
    let err = p.reconcile(&old, Some(&old_secret)).await.unwrap_err();
    assert_eq!(err.reason(), "RetainedDataExists", "{err}");
    assert!(err.to_string().contains(&newcomer.uid), "{err}");
    assert!(p.delete(&old).await.unwrap().resources.is_empty());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert_eq!(fake.bucket_names(), ["dd-test-acme"]);

    // The adopter's own deletion erases it.
    let erased = p.delete(&newcomer).await.unwrap();
    assert_eq!(erased.resources.len(), 1);
    assert!(fake.bucket_names().is_empty());
}

#[tokio::test]
async fn a_bucket_without_the_uid_label_gets_it() {
    // Made by a version before the UID label: ours by name and labels, bound on the next pass.
    let fake = FakeGcs::new();
    let p = provider(&fake, cfg());
    let t = tenant("acme");
    let secret = p.reconcile(&t, None).await.unwrap().secret;
    fake.mutate("dd-test-acme", |b| {
        b.labels.remove(UID_LABEL);
    });
    fake.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.ready && r.secret.is_none(), "{}", r.message);
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].detail, "labels");
    assert_eq!(
        uid_label(&fake, "dd-test-acme").as_deref(),
        Some("uid-acme")
    );
    fake.clear_calls();
    p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
}

// ----- create/delete spacing -------------------------------------------------------------

fn spaced(at: &[tokio::time::Instant], interval: Duration) {
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval,
            "{:?} apart, want at least {interval:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn creates_and_deletes_of_all_tenants_are_spaced() {
    let fake = FakeGcs::new();
    let interval = Duration::from_millis(2000);
    let c = StorageConfig {
        min_create_delete_interval_ms: 2000,
        ..cfg()
    };
    let p = provider(&fake, c).with_limiter(Arc::new(CreateDeleteLimiter::new(interval)));
    let start = tokio::time::Instant::now();
    let tenants: Vec<TenantInfo> = ["a1", "b2", "c3"].map(tenant).to_vec();

    let results = futures::future::join_all(tenants.iter().map(|t| p.reconcile(t, None))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(fake.bucket_names().len(), 3);
    let creates: Vec<_> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "create_bucket")
        .map(|c| c.at)
        .collect();
    assert_eq!(creates.len(), 3);
    spaced(&creates, interval);
    assert_eq!(
        creates[0] - start,
        Duration::ZERO,
        "the first create does not wait"
    );
    assert_eq!(
        creates[2] - start,
        Duration::from_secs(4),
        "no more than needed"
    );
    // Reads are not held back.
    assert!(
        fake.calls()
            .iter()
            .filter(|c| c.method == "get_bucket")
            .take(3)
            .all(|c| c.at == start)
    );

    let results = futures::future::join_all(tenants.iter().map(|t| p.delete(t))).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(fake.bucket_names().is_empty());
    let mixed: Vec<_> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "create_bucket" || c.method == "delete_bucket")
        .map(|c| c.at)
        .collect();
    assert_eq!(mixed.len(), 6);
    spaced(&mixed, interval);
}

#[tokio::test(start_paused = true)]
async fn two_providers_of_one_project_share_the_spacing() {
    // `new` takes the process-wide limiter of the project.
    let c = StorageConfig {
        project: "spacing-shared-project".into(),
        min_create_delete_interval_ms: 2000,
        ..cfg()
    };
    let fake = FakeGcs::new();
    // The double only accepts creates for PROJECT_ID; this test looks at the arrival
    // times of the create calls, refused or not.
    let a = StorageProvider::new(c.clone(), fake.client());
    let b = StorageProvider::new(c, fake.client());
    let (one, two) = (tenant("one"), tenant("two"));
    let (ra, rb) = tokio::join!(a.reconcile(&one, None), b.reconcile(&two, None));
    assert!(ra.is_err() && rb.is_err());
    let creates: Vec<_> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "create_bucket")
        .map(|c| c.at)
        .collect();
    assert_eq!(creates.len(), 2);
    spaced(&creates, Duration::from_millis(2000));
}

/// A gRPC endpoint on 127.0.0.1 that answers each call with the next status code of a
/// script (then `OK`), as the gRPC over HTTP/2 protocol has it
/// (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>): a failure is a
/// "Trailers-Only" response (HEADERS with `:status 200`, `content-type: application/grpc`,
/// `grpc-status`, `grpc-message`, END_STREAM); `OK` is one empty message (every field at
/// its default) followed by trailers with `grpc-status: 0`.
struct ScriptedGrpc {
    endpoint: String,
    received: Arc<std::sync::atomic::AtomicU64>,
}

impl ScriptedGrpc {
    async fn start(script: Vec<u32>) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let script = Arc::new(std::sync::Mutex::new(
            script
                .into_iter()
                .collect::<std::collections::VecDeque<u32>>(),
        ));
        let count = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (script, count) = (script.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        count.fetch_add(1, Ordering::SeqCst);
                        let mut body = request.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        let code = script.lock().unwrap().pop_front().unwrap_or(0);
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc");
                        if code == 0 {
                            let Ok(mut send) = respond.send_response(head.body(()).unwrap(), false)
                            else {
                                continue;
                            };
                            let _ = send.send_data(bytes::Bytes::from_static(&[0; 5]), false);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = send.send_trailers(trailers);
                        } else {
                            let head = head
                                .header("grpc-status", code.to_string())
                                .header("grpc-message", "injected");
                            let _ = respond.send_response(head.body(()).unwrap(), true);
                        }
                    }
                });
            }
        });
        Self { endpoint, received }
    }

    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Each gRPC call attempt is counted once, from the SDK's own per-attempt span, retries
/// included: the client `from_config` builds retries RESOURCE_EXHAUSTED and UNAVAILABLE on
/// its own, and each attempt shows with its status class (`429`, `5xx`, `4xx`, `2xx`).
#[tokio::test]
async fn requests_are_counted_per_attempt_by_status_class() {
    use dealertenant_operator::providers::Component;
    use dealertenant_operator::providers::requests::RequestMetrics;
    dealertenant_operator::providers::tls::ensure_crypto_provider();
    let m = RequestMetrics::default();
    let _counting = support::count_sdk_requests(&m);
    // GetBucket: RESOURCE_EXHAUSTED (8), UNAVAILABLE (14), NOT_FOUND (5); then OK.
    let server = ScriptedGrpc::start(vec![8, 14, 5]).await;
    let cfg = StorageConfig {
        endpoint: Some(server.endpoint.clone()),
        ..cfg()
    };
    let client = StorageProvider::client_builder(&cfg)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    let p = StorageProvider::new(cfg, client);
    // (Two SDK retries: a few seconds of its backoff.)
    let _ = p.reconcile(&tenant("acme"), None).await;
    let count = |class: &str| m.count(Component::Storage, class);
    assert_eq!(count("429"), 1);
    assert_eq!(count("5xx"), 1);
    assert_eq!(count("4xx"), 1);
    assert!(count("2xx") >= 1, "the create after NOT_FOUND");
    let total: u64 = ["2xx", "3xx", "4xx", "429", "5xx", "error"]
        .map(count)
        .iter()
        .sum();
    assert_eq!(total, server.received(), "one count per attempt");
}
