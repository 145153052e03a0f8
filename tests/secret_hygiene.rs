//! No generated credential ever reaches a log line, an Event, the status or an error
//! message: a full provisioning, a rotation and an erasure run with every log level on,
//! and the captured output and every request body outside Secrets are searched.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::providers::{Component, Provider, Providers};
use support::fake_kube::{World, pass};
use support::fake_provider::{FakeProvider, Fault, Injector};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_generated_secret_appears_in_logs_events_status_or_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let spec: DealerTenantSpec = serde_saphyr::from_str(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    )
    .unwrap();
    let world = World::new(&DealerTenant::new("acme", spec));
    let injector = Injector::new();
    let fakes: Vec<_> = Component::ORDER
        .iter()
        .map(|c| FakeProvider::new(*c, "europe-west3", injector.clone()))
        .collect();
    let providers = Providers::new(
        fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    let cfg = OperatorConfig::default();
    let mut errors = Vec::new();
    let mut issued = Vec::new();
    let mut run = |result: Option<Result<_, dealertenant_operator::controller::Error>>| {
        if let Some(Err(e)) = result {
            errors.push(format!("{e} {e:?}"));
        }
    };

    for _ in 0..3 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    issued.extend(fakes.iter().flat_map(|f| {
        f.resources
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>()
    }));
    // Rotation, with a failure in the middle of it.
    world
        .lock()
        .unwrap()
        .objects
        .retain(|p, _| !p.ends_with("/secrets/database"));
    injector.arm(injector.calls() + 3, Fault::After);
    for _ in 0..3 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    issued.extend(fakes.iter().flat_map(|f| {
        f.resources
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>()
    }));
    // Erasure.
    world.lock().unwrap().tenant["metadata"]["deletionTimestamp"] =
        serde_json::json!("2026-11-27T00:00:00Z");
    for _ in 0..4 {
        run(pass(&world, &cfg, &providers, &injector).await);
    }
    assert!(
        world.lock().unwrap().tenant.is_null(),
        "the tenant was erased"
    );

    issued.sort();
    issued.dedup();
    assert!(
        issued.len() >= 5,
        "credentials were issued and rotated: {}",
        issued.len()
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("erased"), "logging was captured");
    let bodies = world.lock().unwrap().bodies.join("\n");
    assert!(bodies.contains("\"status\""), "status writes were captured");
    assert!(!errors.is_empty(), "an error message was captured");
    for secret in &issued {
        assert!(
            !logs.contains(secret.as_str()),
            "a credential is in the logs"
        );
        assert!(
            !bodies.contains(secret.as_str()),
            "a credential is in a status, Event or object"
        );
        assert!(
            errors.iter().all(|e| !e.contains(secret.as_str())),
            "a credential is in an error"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Every real provider against its double (PostgreSQL against the real test server), with
// every log level on and the Google SDKs' request tracing switched on.
// ---------------------------------------------------------------------------------------

use std::time::Duration;

use base64::Engine as _;
use dealertenant_operator::providers::database::cloudsql::{self, CloudSqlConfig};
use dealertenant_operator::providers::database::postgres::{self, PostgresConfig, SslMode};
use dealertenant_operator::providers::email::postmark::{PostmarkConfig, PostmarkProvider};
use dealertenant_operator::providers::search::SearchConfig;
use dealertenant_operator::providers::search::elasticsearch::ElasticsearchProvider;
use dealertenant_operator::providers::storage::{StorageConfig, StorageProvider};
use dealertenant_operator::providers::{ProviderError, SecretData, TenantInfo};
use support::cloudsql::CloudSqlDouble;
use support::elasticsearch::{EsDouble, OPERATOR_PASSWORD, OPERATOR_USER};
use support::gcs::{FakeGcs, PROJECT_ID};
use support::postmark::PostmarkDouble;

/// The secret values to look for, by what they are; each also in base64 (a Secret's
/// `data`, an HTTP Basic header).
#[derive(Default)]
struct Scanner(Vec<(String, String)>);

impl Scanner {
    fn add(&mut self, what: &str, value: &str) {
        assert!(
            value.len() >= 8,
            "{what}: a secret this short would match by chance"
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        for v in [value.to_string(), b64] {
            if !self.0.iter().any(|(_, x)| *x == v) {
                self.0.push((what.to_string(), v));
            }
        }
    }

    /// Every value of a component Secret whose key names a credential.
    fn add_secret(&mut self, provider: &str, s: &SecretData) {
        for k in s.keys() {
            let credential = ["PASSWORD", "TOKEN", "API_KEY"]
                .iter()
                .any(|w| k.contains(w))
                && !k.ends_with("_ID");
            if credential {
                self.add(&format!("{provider} {k}"), s.get(k).unwrap());
            }
        }
    }

    /// What of the secrets `text` holds.
    fn leaks(&self, text: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, v)| text.contains(v.as_str()))
            .map(|(what, _)| what.clone())
            .collect()
    }
}

fn hygiene_tenant(name: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: format!("uid-{name}"),
        region: "europe-west3".into(),
        namespace: format!("tenant-{name}"),
        annotations: Default::default(),
    }
}

fn temp_file(tag: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "dt-hygiene-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, content).unwrap();
    path
}

/// `Ok`'s value, or the error's text and `Debug` into `errors`.
fn record<T>(r: Result<T, ProviderError>, errors: &mut Vec<String>) -> Option<T> {
    match r {
        Ok(x) => Some(x),
        Err(e) => {
            errors.push(format!("{e} {e:?}"));
            None
        }
    }
}

/// Create (until ready), rotate (the Secret is gone: issued again), delete (until done);
/// every Secret into the scanner, every error's text and `Debug` into `errors`.
async fn life_cycle(
    name: &str,
    p: &dyn Provider,
    t: &TenantInfo,
    scan: &mut Scanner,
    errors: &mut Vec<String>,
) {
    let mut secret: Option<SecretData> = None;
    let mut ready = false;
    for _ in 0..30 {
        if let Some(r) = record(p.reconcile(t, secret.as_ref()).await, errors) {
            if let Some(s) = r.secret {
                scan.add_secret(name, &s);
                secret = Some(s);
            }
            if r.ready && secret.is_some() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "{name}: the tenant's component became ready");
    // Rotation: the component Secret was deleted, credentials are issued again.
    let again = record(p.reconcile(t, None).await, errors).expect("reissue");
    if let Some(s) = &again.secret {
        scan.add_secret(name, s);
    }
    let mut deleted = false;
    for _ in 0..30 {
        if record(p.delete(t).await, errors).is_some() {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(deleted, "{name}: the tenant's component was deleted");
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_of_a_real_provider_appears_in_traces_or_errors() {
    // The test's own PostgreSQL admin login, made before the capture starts (the statement
    // that creates it carries its password and is not the provider's).
    let pg = match support::pg::server().await {
        Some(srv) => {
            let su = support::pg::connect(srv.port, "postgres", &srv.password, "postgres")
                .await
                .unwrap();
            let s: String = (0..8)
                .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                .collect();
            let admin = format!("hygadm_{s}");
            let admin_password = format!("hygpw{}", s.repeat(3));
            su.batch_execute(&format!(
                "CREATE ROLE {admin} LOGIN CREATEDB CREATEROLE PASSWORD '{admin_password}'"
            ))
            .await
            .unwrap();
            Some((srv, su, s, admin, admin_password))
        }
        None => None,
    };
    let (captured, _guard) = capture_with_sdk_tracing();
    let mut scan = Scanner::default();
    let mut errors: Vec<String> = Vec::new();

    // The scanner's self-check: a secret logged once is found, in either form.
    {
        let mut probe = Scanner::default();
        probe.add("probe", "probe-secret-4711");
        let leak = Captured::default();
        let w = leak.clone();
        let s = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(s, || {
            tracing::debug!(token = "probe-secret-4711", "deliberate leak");
            tracing::trace!(
                basic = "cHJvYmUtc2VjcmV0LTQ3MTE=",
                "deliberate leak, encoded"
            );
        });
        let text = String::from_utf8(leak.0.lock().unwrap().clone()).unwrap();
        assert_eq!(probe.leaks(&text), ["probe", "probe"], "{text}");
        assert!(probe.leaks("nothing here").is_empty());
    }

    // Postmark: the account token is configured; server tokens are issued.
    let pm = PostmarkDouble::start().await;
    scan.add("Postmark account token", pm.account_token());
    let pm_token = temp_file("pm", pm.account_token());
    let pm_provider = PostmarkProvider::from_config(&PostmarkConfig {
        endpoint: pm.url().into(),
        account_token_env: "DEALERDESK_TEST_UNSET_POSTMARK_ACCOUNT_TOKEN".into(),
        account_token_file: Some(pm_token.display().to_string()),
        ..PostmarkConfig::default()
    })
    .unwrap();
    life_cycle(
        "Postmark",
        &pm_provider,
        &hygiene_tenant("hyg-pm"),
        &mut scan,
        &mut errors,
    )
    .await;
    // Error paths: a server error, and an answer that echoes the token.
    pm.force(
        None,
        Some((500, serde_json::json!({"ErrorCode": 0, "Message": "boom"}))),
    );
    let _ = life_once(&pm_provider, "hyg-pm2", &mut errors).await;
    pm.force(
        None,
        Some((
            422,
            serde_json::json!({"ErrorCode": 1, "Message": format!("bad token {}", pm.account_token())}),
        )),
    );
    let _ = life_once(&pm_provider, "hyg-pm3", &mut errors).await;
    pm.force(None, None);

    // Elasticsearch: the operator's password is configured; tenant API keys are issued.
    let es = EsDouble::start().await;
    scan.add("Elasticsearch operator password", OPERATOR_PASSWORD);
    let es_password = temp_file("es", OPERATOR_PASSWORD);
    let es_provider = ElasticsearchProvider::from_config(&SearchConfig {
        endpoint: es.url(),
        region: "europe-west3".into(),
        username: Some(OPERATOR_USER.into()),
        password_file: Some(es_password.display().to_string()),
        ..SearchConfig::default()
    })
    .unwrap();
    life_cycle(
        "Elasticsearch",
        &es_provider,
        &hygiene_tenant("hyg-es"),
        &mut scan,
        &mut errors,
    )
    .await;
    // Error path: the service echoes the credentials it received into its error.
    es.echo_credentials(true);
    es.respond_with(Some(403));
    let _ = life_once(&es_provider, "hyg-es2", &mut errors).await;
    es.respond_with(None);
    es.echo_credentials(false);

    // Cloud Storage (SDK tracing on): no credentials issued; the configured key's private
    // key must not show up when the key cannot be used.
    let gcs = FakeGcs::new();
    let st_provider = StorageProvider::new(
        StorageConfig {
            project: PROJECT_ID.into(),
            bucket_prefix: "dd-hyg".into(),
            min_create_delete_interval_ms: 0,
            ..StorageConfig::default()
        },
        gcs.client(),
    );
    life_cycle(
        "Cloud Storage",
        &st_provider,
        &hygiene_tenant("hyg-st"),
        &mut scan,
        &mut errors,
    )
    .await;
    gcs.fail_all(google_cloud_gax::error::rpc::Code::Unavailable, "down");
    let _ = life_once(&st_provider, "hyg-st2", &mut errors).await;
    gcs.heal();
    let private_key = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFDN1Zz\n-----END PRIVATE KEY-----\n";
    scan.add(
        "GCP key private_key",
        "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFDN1Zz",
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let key = temp_file(
        "gcp",
        &serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": "0123456789abcdef",
            "private_key": private_key,
            "client_email": "operator@dd-test.iam.gserviceaccount.com",
            "token_uri": format!("http://127.0.0.1:{closed}/token"),
        })
        .to_string(),
    );
    match StorageProvider::from_config(&StorageConfig {
        project: PROJECT_ID.into(),
        bucket_prefix: "dd-hyg".into(),
        endpoint: Some(format!("http://127.0.0.1:{closed}")),
        credentials_file: Some(key.display().to_string()),
        ..StorageConfig::default()
    })
    .await
    {
        Ok(p) => {
            let r = tokio::time::timeout(
                Duration::from_secs(90),
                p.reconcile(&hygiene_tenant("hyg-st3"), None),
            )
            .await
            .expect("the unusable key is reported in time");
            assert!(r.is_err(), "an unusable key cannot reach a bucket");
            if let Err(e) = r {
                errors.push(format!("{e} {e:?}"));
            }
        }
        Err(e) => errors.push(format!("{e} {e:?}")),
    }

    // PostgreSQL, the real test server: the admin password is configured, the tenant's
    // password issued.
    if let Some((srv, su, s, admin, admin_password)) = pg {
        scan.add("PostgreSQL admin password", &admin_password);
        scan.add("PostgreSQL superuser password", &srv.password);
        let pw_file = temp_file("pg", &admin_password);
        let pg_cfg = PostgresConfig {
            host: "127.0.0.1".into(),
            port: srv.port,
            admin_user: admin.clone(),
            admin_password_env: format!("DEALERTENANT_TEST_UNSET_{admin}"),
            admin_password_file: Some(pw_file.display().to_string()),
            admin_database: "postgres".into(),
            region: "europe-west3".into(),
            connect_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            // TLS as in production: the handshake and its traces are captured too.
            ssl_mode: SslMode::Require,
            ca_file: None,
        };
        let pg_provider = postgres::from_config(&pg_cfg).unwrap();
        let tenant = format!("hyg-pg-{s}");
        life_cycle(
            "PostgreSQL",
            &pg_provider,
            &hygiene_tenant(&tenant),
            &mut scan,
            &mut errors,
        )
        .await;
        // Error path: the admin login is refused (a wrong password configured).
        let wrong = temp_file("pg-wrong", "hygiene-wrong-password");
        scan.add("PostgreSQL wrong admin password", "hygiene-wrong-password");
        let refused = postgres::from_config(&PostgresConfig {
            admin_password_file: Some(wrong.display().to_string()),
            ..pg_cfg.clone()
        })
        .unwrap();
        let _ = life_once(&refused, &format!("hyg-pg2-{s}"), &mut errors).await;
        let _ = std::fs::remove_file(&wrong);
        let _ = std::fs::remove_file(&pw_file);
        su.batch_execute(&format!(
            "DROP OWNED BY {admin}; DROP ROLE IF EXISTS {admin}"
        ))
        .await
        .unwrap();
    }

    for f in [pm_token, es_password, key] {
        let _ = std::fs::remove_file(f);
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("server created"),
        "Postmark's logs were captured"
    );
    assert!(errors.len() >= 5, "the error paths were taken: {errors:#?}");
    assert_no_leaks(&scan, &logs, &errors);
}

/// Cloud SQL with the Google SDK's request tracing on: the password the provider issues
/// to the tenant's database user must not be traced.
#[tokio::test(flavor = "current_thread")]
async fn no_cloud_sql_password_appears_in_the_sdk_request_traces() {
    let (captured, _guard) = capture_with_sdk_tracing();
    let mut scan = Scanner::default();
    let mut errors: Vec<String> = Vec::new();
    // Cloud SQL (SDK tracing on): the user's password is issued.
    let sql = CloudSqlDouble::start("dd-hyg").await;
    sql.set_create_polls(1);
    let sql_provider = cloudsql::from_config(&CloudSqlConfig {
        project: "dd-hyg".into(),
        endpoint: Some(sql.endpoint()),
        anonymous_credentials: true,
        timeout_seconds: 10,
        requests_per_minute: 0,
        sql_endpoint: Some(sql.sql_endpoint()),
        admin_user: sql.admin_user(),
        ..CloudSqlConfig::default()
    })
    .await
    .unwrap();
    life_cycle(
        "Cloud SQL",
        &sql_provider,
        &hygiene_tenant("hyg-sql"),
        &mut scan,
        &mut errors,
    )
    .await;
    sql.queue_error(
        403,
        "PERMISSION_DENIED",
        "forbidden",
        "The caller does not have permission",
    );
    let _ = life_once(&sql_provider, "hyg-sql2", &mut errors).await;
    // A tenant from an earlier version: its built-in user is replaced by a role made over
    // SQL with the same password (sent as a verifier, and used to log in as the old user).
    let legacy = hygiene_tenant("hyg-sqlold");
    let _ = record(sql_provider.reconcile(&legacy, None).await, &mut errors);
    let old_pw = "HygieneLegacy0Password0Of0The0User";
    scan.add("Cloud SQL legacy DATABASE_PASSWORD", old_pw);
    sql.legacy_tenant_user("dt-hyg-sqlold", "dt_hyg_sqlold", old_pw)
        .await;
    let old = SecretData::new().with("DATABASE_PASSWORD", old_pw);
    let mut migrated = false;
    for _ in 0..5 {
        if let Some(r) = record(
            sql_provider.reconcile(&legacy, Some(&old)).await,
            &mut errors,
        ) && r.ready
        {
            migrated = true;
            break;
        }
    }
    assert!(migrated, "the legacy tenant was migrated: {errors:#?}");
    // The operator's own user's password (set through the Admin API, used over SQL).
    let admin_passwords = sql.passwords();
    assert!(
        !admin_passwords.is_empty(),
        "the operator's user was set up"
    );
    for pw in &admin_passwords {
        scan.add("Cloud SQL admin password", pw);
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("SqlInstancesService"),
        "the SDK's request tracing was captured"
    );
    assert!(!errors.is_empty(), "the error path was taken");
    assert_no_leaks(&scan, &logs, &errors);
}

/// A TRACE-level subscriber for this thread writing into a buffer, with the Google SDKs'
/// request tracing switched on.
fn capture_with_sdk_tracing() -> (Captured, tracing::subscriber::DefaultGuard) {
    // The Google SDKs (Cloud SQL, Cloud Storage) trace every request, with its Debug form,
    // when this variable is `true` (google-cloud-gax-internal, `GOOGLE_CLOUD_RUST_LOGGING`;
    // the same switch as `ClientBuilder::with_tracing`), which the providers'
    // configuration does not expose.
    // SAFETY: set before this test builds any client; no test in this binary reads or
    // writes the variable otherwise, and every test sets the same value.
    unsafe { std::env::set_var("GOOGLE_CLOUD_RUST_LOGGING", "true") };
    // Libraries that log through the `log` crate (tokio-postgres logs the statements it
    // runs at DEBUG) are captured too: their records go to this thread's subscriber.
    let _ = tracing_log::LogTracer::init();
    let captured = Captured::default();
    let writer = captured.clone();
    // The operator's own rule for what is never recorded (the SDKs' request and response
    // dumps), at the most detailed level any RUST_LOG can ask for.
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_filter(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_filter(dealertenant_operator::logging::no_sdk_dumps());
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (captured, guard)
}

fn assert_no_leaks(scan: &Scanner, logs: &str, errors: &[String]) {
    assert!(
        logs.contains("TRACE") && logs.contains("DEBUG"),
        "the detailed levels were captured"
    );
    if let Some(path) = std::env::var_os("DT_HYGIENE_DUMP") {
        std::fs::write(path, logs).unwrap();
    }
    let in_logs = scan.leaks(logs);
    assert!(in_logs.is_empty(), "secrets in the logs: {in_logs:?}");
    for e in errors {
        let found = scan.leaks(e);
        assert!(
            found.is_empty(),
            "secrets {found:?} in an error ({} characters)",
            e.len()
        );
    }
}

/// One reconcile of a fresh tenant that is expected to fail; its error is recorded.
async fn life_once(p: &dyn Provider, tenant: &str, errors: &mut Vec<String>) -> bool {
    match p.reconcile(&hygiene_tenant(tenant), None).await {
        Ok(_) => false,
        Err(e) => {
            errors.push(format!("{e} {e:?}"));
            true
        }
    }
}
