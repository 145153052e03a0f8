//! The `cloudsql` database provider through the real `google-cloud-sql-v1` client against
//! the Cloud SQL Admin API double (`support::cloudsql`), which validates every request
//! against Google's discovery document.

mod support;

use std::collections::BTreeMap;

use dealertenant_operator::providers::database::cloudsql::{
    self, CloudSqlConfig, CloudSqlProvider, SUFFIX_ANNOTATION, from_config,
};
use dealertenant_operator::providers::{
    Provider, ProviderError, Reconciled, SecretData, TenantInfo,
};
use serde_json::json;
use support::cloudsql::{CloudSqlDouble, FaultMode, Spec};

const PROJECT: &str = "dd-test";
const SECRET_KEYS: [&str; 7] = [
    "DATABASE_HOST",
    "DATABASE_INSTANCE",
    "DATABASE_NAME",
    "DATABASE_PASSWORD",
    "DATABASE_PORT",
    "DATABASE_SSLMODE",
    "DATABASE_USER",
];

fn cfg(d: &CloudSqlDouble) -> CloudSqlConfig {
    CloudSqlConfig {
        project: PROJECT.into(),
        endpoint: Some(d.endpoint()),
        anonymous_credentials: true,
        timeout_seconds: 10,
        // Unpaced: the tests share one project; pacing has its own test.
        requests_per_minute: 0,
        // The PostgreSQL server behind the double's instances, and an admin user of the
        // double's own.
        sql_endpoint: Some(d.sql_endpoint()),
        admin_user: d.admin_user(),
        ..CloudSqlConfig::default()
    }
}

/// Admin API requests are spread out process-wide, at `requestsPerMinute`: a burst of
/// passes (a resync of thousands of tenants) never exceeds the quota.
#[tokio::test]
async fn admin_api_requests_are_paced() {
    let d = CloudSqlDouble::start("dd-paced").await;
    let paced = CloudSqlConfig {
        // 600 a minute: one request every 100 ms; a project of its own, so no other test
        // shares its pacer.
        project: "dd-paced".into(),
        requests_per_minute: 600,
        ..cfg(&d)
    };
    let p = from_config(&paced).await.unwrap();
    let started = std::time::Instant::now();
    let tenants: Vec<TenantInfo> = (0..3)
        .map(|i| tenant(&format!("paced-{i}"), "europe-west3"))
        .collect();
    // Three tenants at once, as concurrent passes would.
    let passes = tenants.iter().map(|t| p.reconcile(t, None));
    futures::future::join_all(passes).await;
    let n = d.request_count();
    let took = started.elapsed();
    assert!(n >= 3, "{n} requests");
    assert!(
        took >= std::time::Duration::from_millis(100 * (n - 1)),
        "{n} requests in {took:?}: faster than one per 100 ms"
    );
}

fn tenant(name: &str, region: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: "uid-1".into(),
        region: region.into(),
        namespace: format!("tenant-{name}"),
        annotations: BTreeMap::new(),
    }
}

async fn provider(d: &CloudSqlDouble) -> CloudSqlProvider {
    from_config(&cfg(d)).await.expect("provider builds")
}

/// Runs passes like the operator does (keeping the Secret it is handed) until a pass is
/// ready and issues nothing. Returns the last result.
async fn converge(
    p: &CloudSqlProvider,
    t: &TenantInfo,
    secret: &mut Option<SecretData>,
    max: usize,
) -> Reconciled {
    for _ in 0..max {
        let r = p
            .reconcile(t, secret.as_ref())
            .await
            .expect("pass succeeds");
        if let Some(s) = &r.secret {
            *secret = Some(s.clone());
        }
        if r.ready && r.secret.is_none() {
            return r;
        }
    }
    panic!("did not converge in {max} passes");
}

fn assert_clean(d: &CloudSqlDouble) {
    assert_eq!(d.violations(), Vec::<String>::new(), "spec violations");
    assert_eq!(d.conflicts(), 0, "a write was sent while an operation ran");
}

fn ids(d: &CloudSqlDouble) -> Vec<String> {
    d.calls().into_iter().map(|c| c.id).collect()
}

#[tokio::test]
async fn first_pass_starts_the_instance_later_passes_converge_and_then_nothing_is_written() {
    let d = CloudSqlDouble::start(PROJECT).await;
    d.set_create_polls(3);
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");

    // Pass 1: insert, not ready, no secret yet.
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(!r.ready);
    assert!(r.secret.is_none());
    // Creating takes minutes: looking every 15 s would spend the Admin API quota on waiting.
    assert_eq!(r.recheck_after, Some(cloudsql::INSTANCE_RECHECK));
    assert!(
        r.message
            .contains("instance dt-acme is being created (operation op-"),
        "{}",
        r.message
    );
    assert_eq!(
        ids(&d),
        [
            "sql.instances.get",
            "sql.instances.insert",
            "sql.instances.get"
        ]
    );
    let insert = d.writes().remove(0).body.unwrap();
    assert_eq!(insert["name"], "dt-acme");
    assert_eq!(insert["region"], "europe-west3");
    assert_eq!(insert["settings"]["tier"], "db-custom-1-3840");
    assert_eq!(insert["settings"]["userLabels"]["tenant"], "acme");
    assert_eq!(
        insert["settings"]["userLabels"]["managed-by"],
        "dealertenant-operator"
    );
    assert_eq!(
        insert["settings"]["userLabels"]["dealerdesk-tenant-uid"],
        "uid-1"
    );
    assert_eq!(insert["settings"]["deletionProtectionEnabled"], true);
    assert_eq!(insert["settings"]["backupConfiguration"]["enabled"], true);
    assert_eq!(
        insert["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(insert["settings"]["ipConfiguration"]["ipv4Enabled"], true);
    // Stored as Cloud SQL would: names, not enum numbers.
    let stored = d.instance("dt-acme").unwrap();
    assert_eq!(
        stored["settings"]["ipConfiguration"]["sslMode"],
        "ENCRYPTED_ONLY"
    );
    assert_eq!(stored["databaseVersion"], "POSTGRES_16");
    assert_eq!(stored["settings"]["edition"], "ENTERPRISE");
    assert_eq!(stored["settings"]["availabilityType"], "ZONAL");
    assert_eq!(stored["state"], "PENDING_CREATE");

    // Pass 2: still PENDING_CREATE: not ready, nothing written.
    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(!r.ready, "{}", r.message);
    assert!(r.message.contains("being created"), "{}", r.message);
    assert_eq!(r.recheck_after, Some(cloudsql::INSTANCE_RECHECK));
    assert!(d.writes().is_empty(), "{:?}", d.writes());

    // Pass 3: RUNNABLE: the operator's own user (the only one the Admin API makes; on an
    // instance it created, inserted right away), then the tenant's role and database over
    // SQL; Secret issued.
    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(r.ready, "{}", r.message);
    let writes = d.writes();
    let ids: Vec<&str> = writes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["sql.users.insert"]);
    assert_eq!(writes[0].body.as_ref().unwrap()["name"], d.admin_user());
    let s = r.secret.expect("credentials issued");
    assert_eq!(s.keys().collect::<Vec<_>>(), SECRET_KEYS);
    assert_eq!(s.get("DATABASE_NAME"), Some("dt_acme"));
    assert_eq!(s.get("DATABASE_USER"), Some("dt_acme"));
    assert_eq!(s.get("DATABASE_PORT"), Some("5432"));
    assert_eq!(s.get("DATABASE_SSLMODE"), Some("require"));
    assert_eq!(
        s.get("DATABASE_INSTANCE"),
        Some("dd-test:europe-west3:dt-acme")
    );
    let stored = d.instance("dt-acme").unwrap();
    let public_ip = stored["ipAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["type"] == "PRIMARY")
        .unwrap()["ipAddress"]
        .clone();
    assert_eq!(s.get("DATABASE_HOST"), public_ip.as_str());
    let pw = s.get("DATABASE_PASSWORD").unwrap();
    assert!(d.login("dt-acme", "dt_acme", pw).await);
    assert!(!format!("{s:?}").contains(pw));
    assert!(!r.message.contains(pw));
    assert_eq!(
        r.resources
            .iter()
            .map(|x| (x.kind.as_str(), x.name.as_str(), x.location.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("CloudSqlInstance", "dt-acme", Some("europe-west3")),
            ("Database", "dt-acme/dt_acme", Some("europe-west3")),
            ("DatabaseUser", "dt-acme/dt_acme", Some("europe-west3")),
        ]
    );

    // Pass 4 with the Secret: reads only, nothing issued.
    d.clear_calls();
    let r = p.reconcile(&t, Some(&s)).await.unwrap();
    assert!(r.ready, "{}", r.message);
    assert!(r.secret.is_none());
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(!d.calls().is_empty());

    assert_eq!(d.instance_names(), ["dt-acme"]);
    // The tenant's database and role are made over SQL, not with the Admin API.
    assert!(d.databases().is_empty());
    assert_eq!(d.users(), [("dt-acme".to_string(), d.admin_user())]);
    assert_clean(&d);
}

/// The application's credential administers nothing: the tenant's login is a role made
/// over SQL, not a built-in user (which Cloud SQL makes a member of `cloudsqlsuperuser`,
/// with `CREATEROLE` and `CREATEDB`), and it owns and can use its database. Checked by
/// logging in with the Secret on the server behind the double.
#[tokio::test]
async fn the_tenants_login_is_a_least_privilege_role_not_a_built_in_user() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let s = secret.unwrap();
    let (user, pw, db) = (
        s.get("DATABASE_USER").unwrap(),
        s.get("DATABASE_PASSWORD").unwrap(),
        s.get("DATABASE_NAME").unwrap(),
    );
    assert_eq!((user, db), ("dt_acme", "dt_acme"));
    let c = d
        .pg()
        .connect(user, pw, db)
        .await
        .expect("the Secret logs in to its database");
    let row = c
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb,
                    pg_has_role(current_user, 'cloudsqlsuperuser', 'MEMBER'),
                    (SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid),
                    (SELECT d.datdba = r.oid FROM pg_database d
                     WHERE d.datname = current_database())
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    let (superuser, createrole, createdb): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    assert!(!superuser && !createrole && !createdb, "role attributes");
    assert!(!row.get::<_, bool>(3), "a member of cloudsqlsuperuser");
    assert_eq!(row.get::<_, i64>(4), 0, "a member of some role");
    assert!(row.get::<_, bool>(5), "owns its database");
    // It uses its database, and cannot make roles or databases.
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("the tenant creates and writes tables");
    assert!(c.batch_execute("CREATE ROLE dt_acme_more").await.is_err());
    assert!(
        c.batch_execute("CREATE DATABASE dt_acme_more")
            .await
            .is_err()
    );
    // The Admin API made no user for the tenant.
    assert!(
        d.calls()
            .iter()
            .filter(|c| c.id == "sql.users.insert")
            .all(|c| c.body.as_ref().unwrap()["name"] == d.admin_user().as_str())
    );
    drop(c);

    // A restart: the operator's user gets the new process's password with one request;
    // the tenant's password is kept, and the tenant stays ready while Cloud SQL sets it.
    let p = provider(&d).await;
    d.set_op_polls(1);
    d.clear_calls();
    let r = p.reconcile(&t, Some(&s)).await.unwrap();
    assert!(r.ready && r.secret.is_none(), "{}", r.message);
    assert!(r.message.contains("being set up"), "{}", r.message);
    let writes: Vec<String> = d.writes().into_iter().map(|c| c.id).collect();
    assert_eq!(writes, ["sql.users.update"]);
    d.set_op_polls(0);
    d.clear_calls();
    let r = p.reconcile(&t, Some(&s)).await.unwrap();
    assert!(r.ready && r.secret.is_none(), "{}", r.message);
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    d.clear_calls();
    p.reconcile(&t, Some(&s)).await.unwrap();
    assert_eq!(
        ids(&d),
        ["sql.instances.get"],
        "a pass of a converged tenant"
    );

    // Someone changes the operator's password by hand: the pass says so (no password in
    // the message), and the next sets it again.
    d.pg()
        .superuser()
        .await
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD 'changed-by-hand-0000'",
            d.admin_user()
        ))
        .await
        .unwrap();
    let e = p.reconcile(&t, Some(&s)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("refused the password"), "{e}");
    d.clear_calls();
    let r = p.reconcile(&t, Some(&s)).await.unwrap();
    assert!(r.ready && r.secret.is_none(), "{}", r.message);
    let writes: Vec<String> = d.writes().into_iter().map(|c| c.id).collect();
    assert_eq!(writes, ["sql.users.update"]);
    assert!(d.login("dt-acme", "dt_acme", pw).await);
    assert_clean(&d);
}

/// A tenant from an earlier version logs in with a built-in user (a member of
/// `cloudsqlsuperuser`). PostgreSQL 16+ lets nobody take that membership away, so the
/// operator replaces the user with a role made over SQL that owns what the old one owned,
/// under the same name and with the same password (the Secret stays as it is). Each step is
/// found again after a failure: here Cloud SQL's delete of the old user fails once.
#[tokio::test]
async fn a_legacy_built_in_tenant_user_is_replaced_by_a_least_privilege_role() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    // The instance is there (pass 1 creates it), with what an earlier version made: the
    // built-in user, its database, and the application's table in it. Then the new
    // version starts (a provider that did not create the instance).
    p.reconcile(&t, None).await.unwrap();
    let p = provider(&d).await;
    let old_pw = "Legacy0Password0Made0By0Users0Insert".to_string();
    d.legacy_tenant_user("dt-acme", "dt_acme", &old_pw).await;
    let app = d.pg().connect("dt_acme", &old_pw, "dt_acme").await.unwrap();
    app.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (7)")
        .await
        .unwrap();
    drop(app);

    // Its own user does not exist yet: Cloud SQL refuses the update (here with a 400, which
    // the reference does not rule out), users.get says so, and it is inserted. Without the
    // password the operator cannot act as the old user: it says what to do.
    d.queue_error_for(
        "sql.users.update",
        400,
        "INVALID_ARGUMENT",
        "invalid",
        "Invalid request: the user does not exist.",
    );
    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    let writes: Vec<String> = d.writes().into_iter().map(|c| c.id).collect();
    assert_eq!(writes, ["sql.users.update", "sql.users.insert"]);
    assert!(ids(&d).contains(&"sql.users.get".to_string()));
    assert!(!r.ready, "{}", r.message);
    assert_eq!(r.reason, Some(cloudsql::LEGACY_BUILT_IN_USER));
    assert!(r.message.contains("cloudsqlsuperuser"), "{}", r.message);
    assert!(r.message.contains("DATABASE_PASSWORD"), "{}", r.message);

    // With it: replaced. A step that fails (the old user's session is read-only, so it
    // cannot hand its objects over; then Cloud SQL's delete of the old user fails once)
    // is found again by the next pass, which finishes.
    let mut secret = Some(
        dealertenant_operator::providers::SecretData::new()
            .with("DATABASE_PASSWORD", old_pw.clone()),
    );
    let su = d.pg().superuser().await;
    support::pg::set_read_only(&su, "dt_acme", true).await;
    let e = p.reconcile(&t, secret.as_ref()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("hand the objects of dt_acme"), "{e}");
    assert!(d.pg().role_exists("dt_acme_next").await);
    support::pg::set_read_only(&su, "dt_acme", false).await;
    d.fail_next_operation(
        "DELETE_USER",
        "INTERNAL_ERROR",
        "An internal error occurred.",
    );
    let e = p.reconcile(&t, secret.as_ref()).await.unwrap_err();
    assert_eq!(e.reason(), "OperationFailed", "{e}");
    assert!(!e.to_string().contains(&old_pw));
    assert!(d.pg().role_exists("dt_acme_next").await);
    let r = converge(&p, &t, &mut secret, 5).await;
    assert!(r.ready, "{}", r.message);
    let s = secret.unwrap();
    assert_eq!(
        s.get("DATABASE_PASSWORD"),
        Some(old_pw.as_str()),
        "same password"
    );
    assert!(!d.pg().role_exists("dt_acme_next").await);
    assert!(d.calls().iter().any(|c| c.id == "sql.users.delete"));
    assert_eq!(d.users(), [("dt-acme".to_string(), d.admin_user())]);

    let c = d.pg().connect("dt_acme", &old_pw, "dt_acme").await.unwrap();
    let row = c
        .query_one(
            "SELECT r.rolcreaterole, r.rolcreatedb,
                    pg_has_role(current_user, 'cloudsqlsuperuser', 'MEMBER'),
                    (SELECT d.datdba = r.oid FROM pg_database d
                     WHERE d.datname = current_database()),
                    (SELECT tableowner = current_user FROM pg_tables
                     WHERE tablename = 'orders')
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0) && !row.get::<_, bool>(1),
        "CREATEROLE/CREATEDB"
    );
    assert!(!row.get::<_, bool>(2), "a member of cloudsqlsuperuser");
    assert!(row.get::<_, bool>(3), "owns its database");
    assert!(row.get::<_, bool>(4), "owns the application's table");
    let n: i32 = c
        .query_one("SELECT id FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7, "the data is kept");
    assert_clean(&d);
}

/// On PostgreSQL 15 the admin may lower a built-in user in place: its membership in
/// `cloudsqlsuperuser` and `CREATEROLE CREATEDB` are taken away by the `postgres`
/// provider's repairs, and no successor is made.
#[tokio::test]
async fn a_legacy_built_in_tenant_user_on_postgres_15_is_lowered_in_place() {
    let d = CloudSqlDouble::start_on(PROJECT, support::pg::Target::Pg15).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    p.reconcile(&t, None).await.unwrap();
    // The new version starts: its own user is unknown to Cloud SQL (404 on update), so it
    // is inserted.
    let p = provider(&d).await;
    let old_pw = "Legacy0Password0Made0By0Users0Insert".to_string();
    d.legacy_tenant_user("dt-acme", "dt_acme", &old_pw).await;
    let mut secret = Some(
        dealertenant_operator::providers::SecretData::new()
            .with("DATABASE_PASSWORD", old_pw.clone()),
    );
    d.clear_calls();
    let r = converge(&p, &t, &mut secret, 5).await;
    assert!(r.ready, "{}", r.message);
    let writes: Vec<String> = d.writes().into_iter().map(|c| c.id).collect();
    assert_eq!(writes, ["sql.users.update", "sql.users.insert"]);
    assert_eq!(
        secret.unwrap().get("DATABASE_PASSWORD"),
        Some(old_pw.as_str())
    );
    assert!(!d.pg().role_exists("dt_acme_next").await);
    assert!(!d.calls().iter().any(|c| c.id == "sql.users.delete"));
    let c = d.pg().connect("dt_acme", &old_pw, "dt_acme").await.unwrap();
    let row = c
        .query_one(
            "SELECT r.rolcreaterole, r.rolcreatedb,
                    pg_has_role(current_user, 'cloudsqlsuperuser', 'MEMBER'),
                    (SELECT d.datdba = r.oid FROM pg_database d
                     WHERE d.datname = current_database())
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0) && !row.get::<_, bool>(1),
        "CREATEROLE/CREATEDB"
    );
    assert!(!row.get::<_, bool>(2), "a member of cloudsqlsuperuser");
    assert!(row.get::<_, bool>(3), "owns its database");
    assert_clean(&d);
}

#[tokio::test]
async fn drift_is_repaired_by_one_patch_of_the_drifted_settings_only() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;

    // Someone edits the instance in the console; Cloud SQL also grew the disk on its own.
    d.edit_instance("dt-acme", |i| {
        i["settings"]["tier"] = json!("db-custom-4-15360");
        i["settings"]["backupConfiguration"]["enabled"] = json!(false);
        i["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"] = json!(false);
        i["settings"]["dataDiskSizeGb"] = json!("50");
        i["settings"]["userLabels"]
            .as_object_mut()
            .unwrap()
            .remove("dealerdesk-tenant-uid");
        i["settings"]["userLabels"]["cost-center"] = json!("sales");
    });
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.ready, "{}", r.message);
    assert!(r.secret.is_none());
    assert!(r.message.contains("repaired tier"), "{}", r.message);
    let writes = d.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].id, "sql.instances.patch");
    let body = writes[0].body.clone().unwrap();
    let settings = body["settings"].as_object().unwrap();
    let mut keys: Vec<&str> = settings.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["backupConfiguration", "tier", "userLabels"]);
    // The backup window Cloud SQL chose is kept; the foreign label too.
    assert_eq!(settings["backupConfiguration"]["startTime"], "23:00");

    let i = d.instance("dt-acme").unwrap();
    assert_eq!(i["settings"]["tier"], "db-custom-1-3840");
    assert_eq!(i["settings"]["backupConfiguration"]["enabled"], true);
    assert_eq!(
        i["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(i["settings"]["dataDiskSizeGb"], "50");
    assert_eq!(
        i["settings"]["userLabels"],
        json!({
            "tenant": "acme",
            "managed-by": "dealertenant-operator",
            "dealerdesk-tenant-uid": "uid-1",
            "cost-center": "sales"
        })
    );

    // Repaired: the next pass writes nothing.
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.ready && r.secret.is_none());
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert_clean(&d);
}

/// Only encrypted connections: `sslMode: ENCRYPTED_ONLY` on insert, another value is
/// patched back, and the Secret tells clients `sslmode=require`. A Secret from before the
/// key existed gets it without a new password.
#[tokio::test]
async fn only_encrypted_connections_are_accepted_and_the_secret_says_so() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let insert = d
        .calls()
        .into_iter()
        .find(|c| c.id == "sql.instances.insert")
        .unwrap()
        .body
        .unwrap();
    // The SDK sends the enum number; the double stores the name.
    assert!(!insert["settings"]["ipConfiguration"]["sslMode"].is_null());
    let ssl = |d: &CloudSqlDouble| {
        d.instance("dt-acme").unwrap()["settings"]["ipConfiguration"]["sslMode"].clone()
    };
    assert_eq!(ssl(&d), "ENCRYPTED_ONLY");

    d.edit_instance("dt-acme", |i| {
        i["settings"]["ipConfiguration"]["sslMode"] = json!("ALLOW_UNENCRYPTED_AND_ENCRYPTED")
    });
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(
        r.message.contains("repaired ipConfiguration"),
        "{}",
        r.message
    );
    assert_eq!(d.writes().len(), 1);
    assert_eq!(ssl(&d), "ENCRYPTED_ONLY");

    // An older Secret without the key: completed, same password, nothing written.
    let mut old = secret.unwrap().into_map();
    let pw = old["DATABASE_PASSWORD"].clone();
    old.remove("DATABASE_SSLMODE");
    let s = SecretData::from_map(old);
    d.clear_calls();
    let r = p.reconcile(&t, Some(&s)).await.unwrap();
    let s = r.secret.expect("the Secret is completed");
    assert_eq!(s.get("DATABASE_SSLMODE"), Some("require"));
    assert_eq!(s.get("DATABASE_PASSWORD"), Some(pw.as_str()));
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert_clean(&d);
}

#[tokio::test]
async fn private_network_and_authorized_networks_are_sent_and_kept() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let private = CloudSqlConfig {
        private_network: Some("projects/dd-test/global/networks/tenants".into()),
        availability_type: "REGIONAL".into(),
        backup_start_time: Some("02:30".into()),
        ..cfg(&d)
    };
    let p = from_config(&private).await.unwrap();
    let t = tenant("acme", "europe-west4");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let insert = d
        .writes()
        .into_iter()
        .find(|c| c.id == "sql.instances.insert")
        .unwrap()
        .body
        .unwrap();
    assert_eq!(insert["settings"]["ipConfiguration"]["ipv4Enabled"], false);
    assert_eq!(
        insert["settings"]["ipConfiguration"]["privateNetwork"],
        "projects/dd-test/global/networks/tenants"
    );
    assert_eq!(
        insert["settings"]["backupConfiguration"]["startTime"],
        "02:30"
    );
    let i = d.instance("dt-acme").unwrap();
    let private_ip = i["ipAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["type"] == "PRIVATE")
        .unwrap()["ipAddress"]
        .clone();
    assert_eq!(
        secret.as_ref().unwrap().get("DATABASE_HOST"),
        private_ip.as_str()
    );
    assert_eq!(i["settings"]["availabilityType"], "REGIONAL");
    assert_clean(&d);
    // One double at a time (they share the PostgreSQL server and the tenant's name).
    drop(d);

    // Public IP with authorized networks; a changed list is drift.
    let d2 = CloudSqlDouble::start(PROJECT).await;
    let public = CloudSqlConfig {
        authorized_networks: vec!["203.0.113.0/24".into()],
        ..cfg(&d2)
    };
    let p2 = from_config(&public).await.unwrap();
    let mut secret2 = None;
    converge(&p2, &t, &mut secret2, 5).await;
    let i = d2.instance("dt-acme").unwrap();
    assert_eq!(
        i["settings"]["ipConfiguration"]["authorizedNetworks"],
        json!([{"value": "203.0.113.0/24"}])
    );
    d2.edit_instance("dt-acme", |i| {
        i["settings"]["ipConfiguration"]["authorizedNetworks"] = json!([{"value": "0.0.0.0/0"}]);
    });
    d2.clear_calls();
    let r = p2.reconcile(&t, secret2.as_ref()).await.unwrap();
    assert!(r.message.contains("ipConfiguration"), "{}", r.message);
    assert_eq!(
        d2.instance("dt-acme").unwrap()["settings"]["ipConfiguration"]["authorizedNetworks"],
        json!([{"value": "203.0.113.0/24"}])
    );
    assert_clean(&d2);
}

#[tokio::test]
async fn a_missing_secret_rotates_the_password_and_the_old_one_stops_working() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let old = secret
        .unwrap()
        .get("DATABASE_PASSWORD")
        .unwrap()
        .to_string();

    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(r.ready, "{}", r.message);
    let new = r
        .secret
        .expect("rotated")
        .get("DATABASE_PASSWORD")
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    // Set over SQL (as a SCRAM verifier): no Admin API write.
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(d.login("dt-acme", "dt_acme", &new).await);
    assert!(!d.login("dt-acme", "dt_acme", &old).await);
    assert_eq!(d.users(), [("dt-acme".to_string(), d.admin_user())]);
    assert_clean(&d);
}

#[tokio::test]
async fn one_operation_at_a_time_and_never_waiting() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    p.reconcile(&t, None).await.unwrap();
    // From now on every operation runs for a while.
    d.set_op_polls(3);

    // The operator's user starts an operation: the pass ends there.
    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(!r.ready);
    assert!(
        r.message.contains("the operator's user is being set up"),
        "{}",
        r.message
    );
    assert_eq!(
        d.writes().into_iter().map(|c| c.id).collect::<Vec<_>>(),
        ["sql.users.insert"]
    );

    // While it runs, the next pass sees it and writes nothing.
    d.clear_calls();
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(!r.ready);
    assert!(r.message.contains("waiting for operation"), "{}", r.message);
    assert!(r.message.contains("CREATE_USER"), "{}", r.message);
    assert!(d.writes().is_empty(), "{:?}", d.writes());

    // Then the tenant's role over SQL, and its Secret.
    let mut secret = None;
    let r = converge(&p, &t, &mut secret, 10).await;
    assert!(r.ready);
    let pw = secret
        .unwrap()
        .get("DATABASE_PASSWORD")
        .unwrap()
        .to_string();
    assert!(d.login("dt-acme", "dt_acme", &pw).await);
    assert_clean(&d);
}

#[tokio::test]
async fn delete_lifts_deletion_protection_then_deletes_and_reports_what_went() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    assert_eq!(
        d.instance("dt-acme").unwrap()["settings"]["deletionProtectionEnabled"],
        true
    );

    d.clear_calls();
    let erased = p.delete(&t).await.unwrap();
    let writes = d.writes();
    assert_eq!(
        writes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["sql.instances.patch", "sql.instances.delete"]
    );
    assert_eq!(
        writes[0].body.clone().unwrap(),
        json!({"settings": {"deletionProtectionEnabled": false}})
    );
    assert!(d.instance_names().is_empty());
    assert!(d.databases().is_empty() && d.users().is_empty());
    // Gone from the server with the instance: the tenant's role and the operator's user.
    assert!(!d.pg().role_exists("dt_acme").await);
    assert!(!d.pg().role_exists(&d.admin_user()).await);
    let got: Vec<(&str, &str, Option<&str>)> = erased
        .resources
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str(), r.id.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "CloudSqlInstance",
                "dt-acme",
                Some("dd-test:europe-west3:dt-acme")
            ),
            (
                "Database",
                "dt-acme/dt_acme",
                Some("dd-test:europe-west3:dt-acme/dt_acme")
            ),
            (
                "DatabaseUser",
                "dt-acme/dt_acme",
                Some("dd-test:europe-west3:dt-acme/dt_acme")
            ),
        ]
    );
    assert!(erased.resources.iter().all(|r| r.processor == "google-cloud"
        && r.location.as_deref() == Some("europe-west3")));

    // Gone: deleting again is fine and erases nothing more.
    d.clear_calls();
    let again = p.delete(&t).await.unwrap();
    assert!(again.resources.is_empty());
    assert!(d.writes().is_empty());
    assert_clean(&d);
}

/// A delete that leaves backups behind is not reported as an erasure: the receipt says what
/// stays restorable and until when (the final backup's expiry, as sent to Cloud SQL), or
/// "until deleted" for backups the instance retains on delete.
#[tokio::test]
async fn a_delete_that_leaves_backups_says_what_stays_restorable_and_until_when() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let keeps = CloudSqlConfig {
        final_backup_days: 14,
        retain_backups_on_delete: true,
        ..cfg(&d)
    };
    let p = from_config(&keeps).await.unwrap();
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    assert_eq!(
        d.instance("dt-acme").unwrap()["settings"]["retainBackupsOnDelete"],
        true
    );
    let before = jiff::Timestamp::now();
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 3);
    assert_eq!(erased.restorable.len(), 2, "{:?}", erased.restorable);
    let last = &erased.restorable[0];
    assert_eq!(last.what, "final backup of instance dt-acme");
    let until: jiff::Timestamp = last.until.as_deref().unwrap().parse().unwrap();
    let fortnight = jiff::SignedDuration::from_hours(14 * 24);
    assert!(
        until >= before.checked_add(fortnight).unwrap() - jiff::SignedDuration::from_secs(1)
            && until <= jiff::Timestamp::now().checked_add(fortnight).unwrap(),
        "{until}"
    );
    // The date Cloud SQL got is the date in the receipt.
    let taken = d.final_backups();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].0, "dt-acme");
    assert_eq!(taken[0].1.parse::<jiff::Timestamp>().unwrap(), until);
    assert_eq!(
        erased.restorable[1].to_string(),
        "backups of instance dt-acme retained after its deletion, restorable until deleted"
    );
    assert!(d.instance_names().is_empty());
    drop(d);

    // Without either: an erasure, no final backup.
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    converge(&p, &t, &mut None, 5).await;
    let erased = p.delete(&t).await.unwrap();
    assert!(erased.restorable.is_empty(), "{:?}", erased.restorable);
    assert!(d.final_backups().is_empty());
    drop(d);

    // The instance's own final-backup setting (made in the console) counts as well, also
    // on a pass that finds the delete already accepted.
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    converge(&p, &t, &mut None, 5).await;
    d.edit_instance("dt-acme", |i| {
        i["settings"]["finalBackupConfig"] = json!({"enabled": true, "retentionDays": 7})
    });
    d.set_op_polls(2);
    let e = p.delete(&t).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(d.instance("dt-acme").unwrap()["state"], "PENDING_DELETE");
    assert_eq!(erased.restorable.len(), 1, "{:?}", erased.restorable);
    let again = p.delete(&t).await.unwrap();
    assert_eq!(again.restorable.len(), 1, "{:?}", again.restorable);
    let sent: jiff::Timestamp = d.final_backups()[0].1.parse().unwrap();
    let said: jiff::Timestamp = again.restorable[0]
        .until
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    // Found pending, the receipt may only err on the late side.
    assert!(
        said >= sent && said <= sent + jiff::SignedDuration::from_secs(5),
        "{said} {sent}"
    );
    assert_clean(&d);
}

#[tokio::test]
async fn delete_does_not_wait_for_the_protection_patch() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    d.set_op_polls(2);

    let e = p.delete(&t).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        e.to_string()
            .contains("deletion protection is being lifted"),
        "{e}"
    );
    assert_eq!(d.instance_names(), ["dt-acme"]);

    // Next attempt: the patch finished (observed twice), delete accepted (PENDING_DELETE).
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 3);
    assert_eq!(d.instance("dt-acme").unwrap()["state"], "PENDING_DELETE");
    // A further call while Cloud SQL deletes reports the same without writing.
    d.clear_calls();
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources[0].name, "dt-acme");
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert_clean(&d);
}

#[tokio::test]
async fn delete_of_an_absent_tenant_is_ok() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let erased = p.delete(&tenant("ghost", "europe-west3")).await.unwrap();
    assert!(erased.resources.is_empty());
    assert!(d.writes().is_empty());
    assert_clean(&d);
}

#[tokio::test]
async fn residency_is_checked_before_create_and_on_what_cloud_sql_reports() {
    // Outside the EU: refused before anything is sent.
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let e = p
        .reconcile(&tenant("acme", "us-central1"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Residency { .. }), "{e}");
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(d.instance_names().is_empty());
    drop(d);

    // Cloud SQL reports another region than requested: refused after create and after.
    let d = CloudSqlDouble::start(PROJECT).await;
    d.report_region("europe-west1");
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(
        matches!(&e, ProviderError::Residency { location, .. } if location == "europe-west1"),
        "{e}"
    );
    d.clear_calls();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(matches!(e, ProviderError::Residency { .. }), "{e}");
    assert!(
        d.writes().is_empty(),
        "nothing is built on a misplaced instance"
    );
    assert!(d.databases().is_empty() && d.users().is_empty());
    assert_clean(&d);
}

#[tokio::test]
async fn a_reserved_name_is_a_clear_permanent_error_and_the_suffix_annotation_fixes_it() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let mut t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    p.delete(&t).await.unwrap();

    // The tenant comes back within the week: Cloud SQL still reserves the name.
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.reason(), "ProviderRefused");
    let msg = e.to_string();
    assert!(
        msg.contains(r#"dealerdesk.de/database-instance-suffix: "2""#),
        "{msg}"
    );
    assert!(msg.contains("dt-acme"), "{msg}");
    assert!(d.instance_names().is_empty());

    t.annotations.insert(SUFFIX_ANNOTATION.into(), "2".into());
    let mut secret = None;
    let r = converge(&p, &t, &mut secret, 5).await;
    assert!(r.ready);
    assert_eq!(d.instance_names(), ["dt-acme-2"]);
    let s = secret.unwrap();
    assert_eq!(
        s.get("DATABASE_INSTANCE"),
        Some("dd-test:europe-west3:dt-acme-2")
    );
    assert!(
        d.login("dt-acme-2", "dt_acme", s.get("DATABASE_PASSWORD").unwrap())
            .await
    );
    assert_eq!(
        cfg(&d).plan(&t, "google-cloud")[0].name,
        "dt-acme-2",
        "plan shows the suffixed name"
    );

    // A suffix that would make an invalid name is refused before anything is sent.
    t.annotations
        .insert(SUFFIX_ANNOTATION.into(), "Two!".into());
    d.clear_calls();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains(SUFFIX_ANNOTATION),
        "{e}"
    );
    assert!(d.calls().is_empty());
    assert_clean(&d);
}

#[tokio::test]
async fn an_instance_of_another_tenant_is_left_alone() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    // Tenant "a-b" owns dt-a-b; tenant "a" with suffix "b" would get the same name.
    let mut secret = None;
    converge(&p, &tenant("a-b", "europe-west3"), &mut secret, 5).await;
    let mut t = tenant("a", "europe-west3");
    t.annotations.insert(SUFFIX_ANNOTATION.into(), "b".into());
    d.clear_calls();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("label tenant=a-b"), "{e}");
    let e = p.delete(&t).await.unwrap_err();
    assert_eq!(e.reason(), "DeletionBlocked");
    assert!(d.writes().is_empty());
    assert_eq!(d.instance_names(), ["dt-a-b"]);
    assert_clean(&d);
}

/// An instance under the tenant's name that does not carry `managed-by` and the tenant's
/// label (made by hand, by another tool, or with its labels removed) is not adopted: the
/// pass fails with a clear condition and writes nothing, and the tenant's deletion neither
/// lifts its deletion protection nor deletes it. Labelling it hands it over.
#[tokio::test]
async fn an_unlabelled_instance_is_neither_adopted_nor_deleted() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let pw = secret
        .as_ref()
        .unwrap()
        .get("DATABASE_PASSWORD")
        .unwrap()
        .to_string();

    for labels in [
        json!({}),
        json!({"tenant": "acme"}),
        json!({"managed-by": "dealertenant-operator"}),
        json!({"tenant": "acme", "managed-by": "terraform"}),
    ] {
        d.edit_instance("dt-acme", |i| i["settings"]["userLabels"] = labels.clone());
        d.clear_calls();
        // Without a Secret, the pass would otherwise reset the user's password.
        let e = p.reconcile(&t, None).await.unwrap_err();
        assert!(!e.is_transient(), "{labels}: {e}");
        assert_eq!(e.reason(), "ProviderRefused", "{labels}: {e}");
        assert!(
            e.to_string().contains(
                "gcloud sql instances patch dt-acme \
                 --update-labels=managed-by=dealertenant-operator,tenant=acme"
            ),
            "{e}"
        );
        let e = p.delete(&t).await.unwrap_err();
        assert_eq!(e.reason(), "DeletionBlocked", "{labels}: {e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("not labelled"), "{e}");
        assert!(d.writes().is_empty(), "{labels}: {:?}", d.writes());
        let i = d.instance("dt-acme").unwrap();
        assert_eq!(i["state"], "RUNNABLE");
        assert_eq!(i["settings"]["deletionProtectionEnabled"], true);
        assert!(d.login("dt-acme", "dt_acme", &pw).await);
    }

    // Someone who knows it is the tenant's labels it (what `gcloud sql instances patch
    // --update-labels` does): the next pass takes it over and binds it to the UID.
    d.edit_instance("dt-acme", |i| {
        i["settings"]["userLabels"] =
            json!({"managed-by": "dealertenant-operator", "tenant": "acme"});
    });
    let r = converge(&p, &t, &mut secret, 3).await;
    assert!(r.ready, "{}", r.message);
    assert_eq!(uid_label(&d, "dt-acme"), json!("uid-1"));
    assert_eq!(p.delete(&t).await.unwrap().resources.len(), 3);
    assert!(d.instance_names().is_empty());
    assert_clean(&d);
}

/// An operation that fails after its request was accepted (Cloud SQL answers `RUNNING`,
/// then reports `DONE` with `error`) is seen on the next pass: the condition says
/// `OperationFailed` with Cloud SQL's message, the tenant is not shown ready, and the same
/// request is not re-sent on every pass but again once the hold after the failure is over.
#[tokio::test]
async fn a_failed_operation_is_reported_and_not_resent_until_the_hold_is_over() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;

    // A drift repair whose operation fails.
    d.set_op_polls(1);
    d.edit_instance("dt-acme", |i| {
        i["settings"]["tier"] = json!("db-custom-4-15360")
    });
    d.fail_next_operation(
        "UPDATE",
        "QUOTA_EXCEEDED",
        "Quota exceeded for quota metric 'CPUs' in region europe-west3.",
    );
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.message.contains("repairing tier"), "{}", r.message);
    assert_eq!(d.writes().len(), 1);
    for _ in 0..3 {
        d.clear_calls();
        let e = p.reconcile(&t, secret.as_ref()).await.unwrap_err();
        assert_eq!(e.reason(), "OperationFailed", "{e}");
        assert!(!e.is_transient(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("QUOTA_EXCEEDED: Quota exceeded for quota metric 'CPUs'"),
            "{msg}"
        );
        assert!(msg.contains("update settings of instance dt-acme"), "{msg}");
        assert!(msg.contains("not sent again before"), "{msg}");
        assert!(d.writes().is_empty(), "re-sent: {:?}", d.writes());
    }
    assert_eq!(
        d.instance("dt-acme").unwrap()["settings"]["tier"],
        "db-custom-4-15360"
    );

    // Once the hold is over, the patch is sent again (and now succeeds).
    d.set_op_polls(0);
    d.age_operations(11 * 60);
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.ready, "{}", r.message);
    assert!(r.message.contains("repaired tier"), "{}", r.message);
    assert_eq!(
        d.instance("dt-acme").unwrap()["settings"]["tier"],
        "db-custom-1-3840"
    );

    // After a restart, the operator's user gets the new process's password; when that
    // operation fails, the tenant's password still works, nothing is handed over, and the
    // next pass does not send another.
    let old = secret
        .as_ref()
        .unwrap()
        .get("DATABASE_PASSWORD")
        .unwrap()
        .to_string();
    let p = provider(&d).await;
    d.fail_next_operation(
        "UPDATE_USER",
        "INTERNAL_ERROR",
        "An internal error has occurred.",
    );
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(e.reason(), "OperationFailed", "{e}");
    assert!(
        e.to_string()
            .contains("set the password of the operator's user on instance dt-acme"),
        "{e}"
    );
    assert!(d.login("dt-acme", "dt_acme", &old).await);
    d.clear_calls();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(e.reason(), "OperationFailed", "{e}");
    assert!(
        e.to_string().contains("An internal error has occurred."),
        "{e}"
    );
    assert!(d.writes().is_empty(), "re-sent: {:?}", d.writes());
    assert_clean(&d);
}

/// A create that fails after it was accepted leaves the instance `FAILED`; the condition
/// carries Cloud SQL's reason, and no second insert is sent.
#[tokio::test]
async fn a_failed_create_says_why() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    d.fail_next_operation(
        "CREATE",
        "INVALID_REQUEST",
        "Invalid request: Invalid tier (db-custom-1-3840) for ENTERPRISE_PLUS edition.",
    );
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(!r.ready);
    for _ in 0..2 {
        d.clear_calls();
        let e = p.reconcile(&t, None).await.unwrap_err();
        assert_eq!(e.reason(), "OperationFailed", "{e}");
        assert!(e.to_string().contains("Invalid tier"), "{e}");
        assert!(
            e.to_string()
                .contains("gcloud sql instances delete dt-acme"),
            "{e}"
        );
        assert!(d.writes().is_empty(), "{:?}", d.writes());
    }
    assert_eq!(d.instance("dt-acme").unwrap()["state"], "FAILED");
    assert_clean(&d);
}

const UID_LABEL: &str = "dealerdesk-tenant-uid";
const ADOPT: &str = "dealerdesk.de/adopt-retained";

fn uid_label(d: &CloudSqlDouble, instance: &str) -> serde_json::Value {
    d.instance(instance).unwrap()["settings"]["userLabels"][UID_LABEL].clone()
}

#[tokio::test]
async fn a_retained_instance_is_bound_to_its_tenants_uid() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let mut old = tenant("acme", "europe-west3");
    old.uid = "5a70ad95-0c70-4dba-b433-bea48aafe77e".into();
    let mut old_secret = None;
    converge(&p, &old, &mut old_secret, 5).await;
    let old_secret = old_secret.unwrap();
    let old_pw = old_secret.get("DATABASE_PASSWORD").unwrap().to_string();
    assert_eq!(uid_label(&d, "dt-acme"), json!(old.uid));

    // Another customer, same name, no Secret: refused before any write; the retained
    // tenant's password still works.
    let mut newcomer = old.clone();
    newcomer.uid = "11111111-1111-1111-1111-111111111111".into();
    d.clear_calls();
    let err = p.reconcile(&newcomer, None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Foreign { .. }), "{err}");
    assert_eq!(err.reason(), "RetainedDataExists");
    assert!(err.to_string().contains(&old.uid), "{err}");
    assert!(err.to_string().contains(ADOPT), "{err}");
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(d.login("dt-acme", "dt_acme", &old_pw).await);
    // Its deletion leaves the retained instance alone.
    let erased = p.delete(&newcomer).await.unwrap();
    assert!(erased.resources.is_empty(), "{:?}", erased.resources);
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert_eq!(d.instance_names(), ["dt-acme"]);
    assert_eq!(d.instance("dt-acme").unwrap()["state"], "RUNNABLE");
    // Adopting some other UID changes nothing either.
    newcomer
        .annotations
        .insert(ADOPT.into(), "22222222-2222-2222-2222-222222222222".into());
    let err = p.reconcile(&newcomer, None).await.unwrap_err();
    assert_eq!(err.reason(), "RetainedDataExists", "{err}");
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(d.login("dt-acme", "dt_acme", &old_pw).await);
    assert_eq!(uid_label(&d, "dt-acme"), json!(old.uid));

    // Adopting exactly that UID hands it over: new credentials, the labels name the adopter.
    newcomer.annotations.insert(ADOPT.into(), old.uid.clone());
    let mut secret = None;
    let r = converge(&p, &newcomer, &mut secret, 5).await;
    assert!(r.ready, "{}", r.message);
    // The new password is set over SQL; the Admin API only relabels.
    let written: Vec<String> = d.writes().into_iter().map(|c| c.id).collect();
    assert_eq!(written, ["sql.instances.patch"]);
    assert_eq!(uid_label(&d, "dt-acme"), json!(newcomer.uid));
    let labels = &d.instance("dt-acme").unwrap()["settings"]["userLabels"];
    assert_eq!(labels["tenant"], "acme");
    assert_eq!(labels["managed-by"], "dealertenant-operator");
    let secret = secret.expect("adoption issues credentials");
    let new_pw = secret.get("DATABASE_PASSWORD").unwrap();
    assert!(d.login("dt-acme", "dt_acme", new_pw).await);
    assert!(!d.login("dt-acme", "dt_acme", &old_pw).await);
    assert_eq!(d.instance_names(), ["dt-acme"]);
    // Converged: a second pass writes nothing.
    d.clear_calls();
    let again = p.reconcile(&newcomer, Some(&secret)).await.unwrap();
    assert!(again.ready && again.secret.is_none(), "{}", again.message);
    assert!(d.writes().is_empty(), "{:?}", d.writes());

    // Now bound to the adopter: the old UID is the stranger, for reconcile and delete.
    let err = p.reconcile(&old, Some(&old_secret)).await.unwrap_err();
    assert_eq!(err.reason(), "RetainedDataExists", "{err}");
    assert!(err.to_string().contains(&newcomer.uid), "{err}");
    assert!(p.delete(&old).await.unwrap().resources.is_empty());
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert!(d.login("dt-acme", "dt_acme", new_pw).await);

    // The adopter's own deletion erases it.
    let erased = p.delete(&newcomer).await.unwrap();
    assert_eq!(erased.resources.len(), 3);
    assert!(d.instance_names().is_empty());
    assert_clean(&d);
}

#[tokio::test]
async fn an_instance_without_the_uid_label_gets_it() {
    // Made by a version before the UID label: ours by name and labels, bound on the next pass.
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    d.edit_instance("dt-acme", |i| {
        i["settings"]["userLabels"]
            .as_object_mut()
            .unwrap()
            .remove(UID_LABEL);
    });
    d.clear_calls();
    let r = p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(r.ready && r.secret.is_none(), "{}", r.message);
    let writes = d.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].id, "sql.instances.patch");
    assert_eq!(
        writes[0].body.clone().unwrap(),
        json!({"settings": {"userLabels": {
            "tenant": "acme",
            "managed-by": "dealertenant-operator",
            UID_LABEL: "uid-1",
        }}})
    );
    assert_eq!(uid_label(&d, "dt-acme"), json!("uid-1"));
    d.clear_calls();
    p.reconcile(&t, secret.as_ref()).await.unwrap();
    assert!(d.writes().is_empty(), "{:?}", d.writes());
    assert_clean(&d);
}

#[tokio::test]
async fn errors_are_classified_with_the_service_message_and_no_credential() {
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");

    for (code, status, reason) in [
        (503, "UNAVAILABLE", "backendError"),
        (500, "INTERNAL", "internalError"),
        (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded"),
        (504, "DEADLINE_EXCEEDED", "backendError"),
    ] {
        d.queue_error(code, status, reason, "try later");
        let e = p.reconcile(&t, None).await.unwrap_err();
        assert!(e.is_transient(), "{code}: {e}");
        assert!(e.to_string().contains("try later"), "{e}");
    }
    for (code, status, reason, message) in [
        (
            403,
            "PERMISSION_DENIED",
            "notAuthorized",
            "The client is not authorized to make this request.",
        ),
        (400, "INVALID_ARGUMENT", "invalid", "Invalid request: tier."),
        (
            401,
            "UNAUTHENTICATED",
            "authError",
            "Request had invalid authentication credentials.",
        ),
    ] {
        d.queue_error(code, status, reason, message);
        let e = p.reconcile(&t, None).await.unwrap_err();
        assert!(!e.is_transient(), "{code}: {e}");
        assert_eq!(e.reason(), "ProviderRefused");
        assert!(e.to_string().contains(message), "{e}");
        assert!(e.to_string().contains(&format!("HTTP {code}")), "{e}");
    }

    // Another operation on the instance (409 operationInProgress) is transient. (The
    // operator's user gets its password after a restart: a new provider.)
    let mut secret = None;
    converge(&p, &t, &mut secret, 5).await;
    let p = provider(&d).await;
    d.queue_error_for(
        "sql.users.update",
        409,
        "ABORTED",
        "operationInProgress",
        "Operation failed because another operation was already in progress.",
    );
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");

    // A refused password update whose message echoes the password: the error carries the
    // service's text, never the password (the operator's, which it never hands out).
    d.queue_error_for(
        "sql.users.update",
        400,
        "INVALID_ARGUMENT",
        "invalid",
        "Invalid request: password {password} violates the password policy.",
    );
    d.clear_calls();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(!e.is_transient());
    let sent = d
        .calls()
        .into_iter()
        .find(|c| c.id == "sql.users.update")
        .and_then(|c| c.body)
        .unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sent.len(), 32);
    assert!(
        e.to_string().contains("violates the password policy"),
        "{e}"
    );
    assert!(!e.to_string().contains(&sent), "{e}");
    assert!(!format!("{e:?}").contains(&sent));
    // The old password still works: nothing was changed.
    let old = secret.as_ref().unwrap().get("DATABASE_PASSWORD").unwrap();
    assert!(d.login("dt-acme", "dt_acme", old).await);

    // A project the credentials may not use: the double's own 403.
    let other = from_config(&CloudSqlConfig {
        project: "someone-else".into(),
        ..cfg(&d)
    })
    .await
    .unwrap();
    let e = other.reconcile(&t, None).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("not authorized"), "{e}");

    // Nothing listening: transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gone = from_config(&CloudSqlConfig {
        endpoint: Some(format!("http://{closed}")),
        ..cfg(&d)
    })
    .await
    .unwrap();
    let e = gone.reconcile(&t, None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_clean(&d);
}

#[tokio::test]
async fn configuration_errors_are_reported_before_any_call() {
    let e = from_config(&CloudSqlConfig {
        anonymous_credentials: true,
        endpoint: None,
        ..CloudSqlConfig::default()
    })
    .await
    .unwrap_err();
    assert_eq!(e.reason(), "NotConfigured");

    let dir = std::env::temp_dir().join(format!("cloudsql-creds-{}", std::process::id()));
    std::fs::write(
        &dir,
        "{\"type\": \"service_account\", \"private_key\": \"SECRET-KEY\"",
    )
    .unwrap();
    let e = from_config(&CloudSqlConfig {
        credentials_file: Some(dir.display().to_string()),
        endpoint: Some("http://127.0.0.1:9".into()),
        ..CloudSqlConfig::default()
    })
    .await
    .unwrap_err();
    std::fs::remove_file(&dir).ok();
    assert_eq!(e.reason(), "NotConfigured");
    assert!(!e.to_string().contains("SECRET-KEY"), "{e}");
}

/// A clean run: how many requests it takes from nothing to converged.
async fn clean_request_count() -> u64 {
    let d = CloudSqlDouble::start(PROJECT).await;
    d.set_create_polls(2);
    let p = provider(&d).await;
    let mut secret = None;
    converge(&p, &tenant("acme", "europe-west3"), &mut secret, 6).await;
    d.request_count()
}

#[tokio::test]
async fn crash_injection_never_makes_a_second_instance_and_ends_with_a_working_secret() {
    let n = clean_request_count().await;
    // get, insert, get; get (still creating); get, operations.list, users.insert: a fault
    // is injected into each.
    assert!(n >= 7, "{n}");
    let t = tenant("acme", "europe-west3");
    for mode in [FaultMode::Before, FaultMode::After] {
        for k in 1..=n + 1 {
            let d = CloudSqlDouble::start(PROJECT).await;
            d.set_create_polls(2);
            let p = provider(&d).await;
            d.fail_nth(k, mode);
            // The operator: passes until an error (the injected one) or convergence,
            // keeping each Secret it is handed.
            let mut secret: Option<SecretData> = None;
            for _ in 0..8 {
                match p.reconcile(&t, secret.as_ref()).await {
                    Ok(r) => {
                        let issued = r.secret.is_some();
                        if let Some(s) = r.secret {
                            secret = Some(s);
                        }
                        if r.ready && !issued {
                            break;
                        }
                    }
                    Err(e) => {
                        assert!(e.is_transient(), "k={k} {mode:?}: {e}");
                        break;
                    }
                }
            }
            let ctx = format!("k={k} {mode:?}");
            assert_eq!(
                d.faults_fired(),
                u64::from(k <= n),
                "{ctx}: the fault struck"
            );
            d.disarm();
            // Then without faults until converged.
            converge(&p, &t, &mut secret, 6).await;
            assert_eq!(d.instance_names(), ["dt-acme"], "{ctx}");
            assert_eq!(
                d.users(),
                [("dt-acme".to_string(), d.admin_user())],
                "{ctx}"
            );
            let s = secret.expect("a Secret");
            assert!(
                d.login("dt-acme", "dt_acme", s.get("DATABASE_PASSWORD").unwrap())
                    .await,
                "{ctx}: the final Secret works"
            );
            assert_eq!(d.violations(), Vec::<String>::new(), "{ctx}");
            assert_eq!(d.conflicts(), 0, "{ctx}");
        }
    }
}

#[tokio::test]
async fn crash_injection_during_delete_still_erases_everything() {
    let t = tenant("acme", "europe-west3");
    for mode in [FaultMode::Before, FaultMode::After] {
        // A delete takes four requests: instances.get, operations.list, instances.patch
        // (deletion protection), instances.delete.
        for k in 1..=4 {
            let d = CloudSqlDouble::start(PROJECT).await;
            let p = provider(&d).await;
            let mut secret = None;
            converge(&p, &t, &mut secret, 5).await;
            d.fail_nth(k, mode);
            let mut done = false;
            for _ in 0..5 {
                match p.delete(&t).await {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(e) => assert!(e.is_transient(), "k={k} {mode:?}: {e}"),
                }
            }
            assert!(done, "k={k} {mode:?}");
            assert_eq!(d.faults_fired(), 1, "k={k} {mode:?}: the fault struck");
            assert!(d.instance_names().is_empty(), "k={k} {mode:?}");
            assert_eq!(d.violations(), Vec::<String>::new());
        }
    }
}

/// Proves the double's spec check can fail: requests that break the discovery document
/// get Google's 400 and are recorded.
#[tokio::test]
async fn the_double_rejects_requests_that_break_the_discovery_document() {
    dealertenant_operator::providers::tls::ensure_crypto_provider();
    assert_eq!(Spec::get().revision(), "20261018");
    let d = CloudSqlDouble::start(PROJECT).await;
    let http = reqwest::Client::new();
    let base = format!("{}/v1/projects/{PROJECT}", d.endpoint());
    let cases = [
        // Unknown field, deep down.
        (
            "POST",
            format!("{base}/instances"),
            json!({"name": "x", "settings": {"tier": "t", "backupConfiguration": {"enabeld": true}}}),
            "Unknown name \"enabeld\"",
        ),
        // Enum value not in the schema.
        (
            "POST",
            format!("{base}/instances"),
            json!({"name": "x", "settings": {"tier": "t", "availabilityType": "MULTI_REGIONAL"}}),
            "TYPE_ENUM",
        ),
        // Enum number that is not one of the type's.
        (
            "POST",
            format!("{base}/instances"),
            json!({"name": "x", "settings": {"tier": "t", "availabilityType": 7}}),
            "TYPE_ENUM",
        ),
        // Wrong type.
        (
            "POST",
            format!("{base}/instances"),
            json!({"name": "x", "settings": {"tier": "t", "deletionProtectionEnabled": "yes"}}),
            "TYPE_BOOL",
        ),
        // No such method for the verb and path.
        (
            "PUT",
            format!("{base}/instances/x/databases"),
            json!({}),
            "no method",
        ),
        // A body on a method without request.
        (
            "DELETE",
            format!("{base}/instances/x"),
            json!({"force": true}),
            "must be empty",
        ),
    ];
    for (verb, url, body, expect) in cases {
        let resp = http
            .request(verb.parse().unwrap(), &url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 400, "{verb} {url}");
        assert_eq!(err["error"]["code"], 400);
        assert!(
            err["error"]["message"].as_str().unwrap().contains(expect),
            "{err}"
        );
        assert_eq!(err["error"]["status"], "INVALID_ARGUMENT");
    }
    // Unknown query parameter.
    let resp = http
        .get(format!("{base}/instances/x?force=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(d.violations().len(), 7);
    assert!(d.instance_names().is_empty());

    // A valid request with enum names is accepted (the API takes names and numbers), and
    // answers carry numbers only when `enum-encoding=int` is asked for.
    d.set_create_polls(5);
    let resp = http
        .post(format!("{base}/instances"))
        .json(&json!({
            "name": "raw",
            "region": "europe-west3",
            "databaseVersion": "POSTGRES_16",
            "settings": {"tier": "db-custom-1-3840", "availabilityType": "ZONAL"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let named: serde_json::Value = http
        .get(format!("{base}/instances/raw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(named["state"], "PENDING_CREATE");
    assert_eq!(named["settings"]["availabilityType"], "ZONAL");
    let numbered: serde_json::Value = http
        .get(format!(
            "{base}/instances/raw?%24alt=json%3Benum-encoding%3Dint"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(numbered["state"], 4, "PENDING_CREATE is 4 in the proto");
    assert_eq!(numbered["settings"]["availabilityType"], 1);
    assert_eq!(numbered["databaseVersion"], 272);
    assert_eq!(d.violations().len(), 7);
}

/// Each Admin API request is counted once, from the SDK's own per-request span (the
/// process's subscriber carries the counting layer), by its status class: `429` apart from
/// the other 4xx (a queued one, and the project quota's), `5xx`, and `error` when nothing
/// answered.
#[tokio::test]
async fn requests_are_counted_by_status_class() {
    use dealertenant_operator::providers::Component;
    use dealertenant_operator::providers::requests::RequestMetrics;
    let m = RequestMetrics::default();
    let _counting = support::count_sdk_requests(&m);
    tracing::callsite::rebuild_interest_cache();
    let count = |class: &str| m.count(Component::Database, class);
    let total = || {
        ["2xx", "3xx", "4xx", "429", "5xx", "error"]
            .map(count)
            .iter()
            .sum::<u64>()
    };
    let d = CloudSqlDouble::start(PROJECT).await;
    let p = provider(&d).await;
    let t = tenant("acme", "europe-west3");
    let _ = p.reconcile(&t, None).await;
    let first = d.request_count();
    assert!(first >= 2, "{first} requests");
    assert_eq!(total(), first, "one count per request");
    assert!(count("2xx") >= 1);
    d.queue_error(429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "slow down");
    p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(count("429"), 1);
    d.queue_error(503, "UNAVAILABLE", "backendError", "try later");
    p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(count("5xx"), 1);
    // The project's quota: one request a minute, the rest refused.
    d.set_requests_per_minute(Some(1));
    let _ = p.reconcile(&t, None).await;
    let _ = p.reconcile(&t, None).await;
    assert!(d.rate_limited() >= 1);
    assert_eq!(count("429"), 1 + d.rate_limited());
    d.set_requests_per_minute(None);
    assert_eq!(total(), d.request_count(), "one count per request");
    // Nothing listens: no answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = from_config(&CloudSqlConfig {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..cfg(&d)
    })
    .await
    .unwrap();
    nowhere.reconcile(&t, None).await.unwrap_err();
    assert_eq!(count("error"), 1);
    let text = {
        let mut r = prometheus_client::registry::Registry::default();
        m.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    };
    assert!(
        text.contains("processor=\"google-cloud\",method=\"GET\""),
        "{text}"
    );
    assert!(!text.contains("acme") && !text.contains(PROJECT), "{text}");
}
