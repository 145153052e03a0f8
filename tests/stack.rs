mod support;

// The whole stack of one tenant with the real providers, each against a local stand-in: a
// REAL PostgreSQL server (`.ci/start-postgres`), the Cloud Storage stub
// (`support::gcs`), the Elasticsearch double (`support::elasticsearch`) and the Postmark
// double (`support::postmark`), driven by operator passes over the fake Kubernetes API
// server (`support::fake_kube`).
//
// Every component reaches Ready with its Secret holding exactly the documented keys, and a
// further pass makes no write: not at the API server, not at any double, and not at
// PostgreSQL (whose admin login is made read-only for that pass, so the server itself
// rejects any write). Deletion under `Delete` erases every external resource and leaves a
// complete receipt; under `Retain` everything stays where it is.
//
// A second scenario runs the database on Cloud SQL instead (the Cloud SQL Admin API double,
// `support::cloudsql`), with the same checks.
//
// Without a reachable PostgreSQL server the PostgreSQL tests print a SKIP notice and pass,
// unless the environment variable `CI` is set: then they fail (as
// tests/provider_postgres.rs does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::providers::database::cloudsql::{self, CloudSqlConfig};
use dealertenant_operator::providers::database::postgres::{
    self, KEY_HOST, KEY_NAME, KEY_PASSWORD, KEY_PORT, KEY_USER, PostgresConfig, SslMode,
    database_name,
};
use dealertenant_operator::providers::database::{DatabaseConfig, DatabaseProviderKind};
use dealertenant_operator::providers::email::postmark::{
    PostmarkConfig, PostmarkProvider, SECRET_SERVER_ID, SECRET_SERVER_TOKEN, server_name,
};
use dealertenant_operator::providers::search::SearchConfig;
use dealertenant_operator::providers::search::elasticsearch::{ElasticsearchProvider, secret_keys};
use dealertenant_operator::providers::storage::desired::{KEY_BUCKET, KEY_LOCATION, KEY_PROJECT};
use dealertenant_operator::providers::storage::{StorageConfig, StorageProvider};
use dealertenant_operator::providers::{Provider, Providers};
use serde_json::Value;
use support::cloudsql::CloudSqlDouble;
use support::elasticsearch::{EsDouble, OPERATOR_PASSWORD, OPERATOR_USER};
use support::fake_kube::{World, pass};
use support::fake_provider::Injector;
use support::gcs::{FakeGcs, PROJECT_ID};
use support::postmark::PostmarkDouble;

const REGION: &str = "europe-west3";
const BUCKET_PREFIX: &str = "dd-test";
const SERVER_PREFIX: &str = "dealerdesk";
/// The Cloud SQL double's project (the operator's).
const CLOUDSQL_PROJECT: &str = "dd-test";
/// The fake API server gives every tenant this uid (see `World::new`).
const TENANT_UID: &str = "tenant-uid";

// ---------------------------------------------------------------------------------------
// The PostgreSQL test server.

use support::pg::{PgServer, connect, server as pg_server};

fn suffix() -> String {
    (0..8)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect()
}

/// This test's admin login (`CREATEDB CREATEROLE`, no superuser, as on Cloud SQL) and the
/// tenant's database and role. Dropped on drop, also when the test panics, so the shared
/// server keeps nothing of the test.
struct PgEnv {
    srv: PgServer,
    su: tokio_postgres::Client,
    admin: String,
    password_file: PathBuf,
    tenant_db: String,
}

impl PgEnv {
    async fn new(srv: &PgServer, tenant: &str) -> PgEnv {
        let su = connect(srv.port, "postgres", &srv.password, "postgres")
            .await
            .unwrap();
        let s = suffix();
        let admin = format!("stkadm_{s}");
        let admin_password = format!("adm{}", s.repeat(4));
        su.batch_execute(&format!(
            "CREATE ROLE {admin} LOGIN CREATEDB CREATEROLE PASSWORD '{admin_password}'"
        ))
        .await
        .unwrap();
        let password_file = std::env::temp_dir().join(format!("dealertenant-stack-pg-{s}"));
        std::fs::write(&password_file, format!("{admin_password}\n")).unwrap();
        PgEnv {
            srv: srv.clone(),
            su,
            admin,
            password_file,
            tenant_db: database_name(tenant),
        }
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port: self.srv.port,
            admin_user: self.admin.clone(),
            admin_password_env: format!("DEALERTENANT_TEST_UNSET_{}", self.admin),
            admin_password_file: Some(self.password_file.to_string_lossy().into_owned()),
            admin_database: "postgres".into(),
            region: REGION.into(),
            connect_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            ssl_mode: SslMode::Require,
            ca_file: None,
        }
    }

    /// Makes the server reject every write of the admin login's new sessions (the
    /// provider connects per call, so this covers every statement of the next pass).
    async fn read_only(&self, on: bool) {
        support::pg::set_read_only(&self.su, &self.admin, on).await;
    }

    /// How many databases and roles of the tenant's name exist: `(databases, roles)`.
    async fn tenant_objects(&self) -> (i64, i64) {
        let count = |sql: &'static str| async move {
            self.su
                .query_one(sql, &[&self.tenant_db])
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        (
            count("SELECT count(*) FROM pg_database WHERE datname = $1").await,
            count("SELECT count(*) FROM pg_roles WHERE rolname = $1").await,
        )
    }
}

impl Drop for PgEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.password_file);
        let (port, password) = (self.srv.port, self.srv.password.clone());
        let statements = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.tenant_db),
            format!("DROP ROLE IF EXISTS {}", self.tenant_db),
            format!("DROP OWNED BY {}", self.admin),
            format!("DROP ROLE IF EXISTS {}", self.admin),
        ];
        // Drop runs outside any async context we may block: use a runtime of its own.
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let su = connect(port, "postgres", &password, "postgres").await?;
                    for sql in &statements {
                        su.batch_execute(sql).await?;
                    }
                    Ok::<_, tokio_postgres::Error>(())
                })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of the test's PostgreSQL objects failed: {e}"),
            Err(_) => eprintln!("cleanup of the test's PostgreSQL objects panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The stack.

/// A file holding `content` (a mounted Secret), removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(what: &str, content: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "dealertenant-stack-{what}-{}-{}",
            std::process::id(),
            suffix()
        ));
        std::fs::write(&path, format!("{content}\n")).unwrap();
        Self(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Stack {
    name: String,
    world: Arc<Mutex<World>>,
    config: OperatorConfig,
    providers: Providers,
    injector: Arc<Injector>,
    db: Db,
    gcs: FakeGcs,
    es: EsDouble,
    postmark: PostmarkDouble,
    _files: Vec<SecretFile>,
}

/// Where the tenant's database lives.
enum Db {
    /// A database and login role on the real PostgreSQL server.
    Postgres(Box<PgEnv>),
    /// A Cloud SQL instance at the Admin API double.
    CloudSql(CloudSqlDouble),
}

/// Which database provider a stack runs.
enum DbChoice {
    Postgres(PgServer),
    CloudSql,
}

/// Write calls each double has received: `(gcs, elasticsearch, postmark, cloudsql)`.
type Writes = (usize, usize, usize, usize);

async fn stack(db: DbChoice, deletion_policy: &str) -> Stack {
    // A DNS label of at most 40 characters, unique per run: the PostgreSQL server is shared.
    let name = format!("stack-{}", suffix());
    let db = match db {
        DbChoice::Postgres(srv) => Db::Postgres(Box::new(PgEnv::new(&srv, &name).await)),
        DbChoice::CloudSql => Db::CloudSql(CloudSqlDouble::start(CLOUDSQL_PROJECT).await),
    };
    let gcs = FakeGcs::new();
    let es = EsDouble::start().await;
    let postmark = PostmarkDouble::start().await;
    // Deleting servers is allowed (the account setting Postmark can switch off).
    postmark.set_delete_enabled(true);
    let es_password = SecretFile::new("es-password", OPERATOR_PASSWORD);
    let postmark_token = SecretFile::new("postmark-token", postmark.account_token());

    // One configuration for the operator and the providers, so that what the operator
    // plans and records (plan, processors, receipts) is what the providers do.
    let mut config = OperatorConfig::default();
    config.database = match &db {
        Db::Postgres(pg) => DatabaseConfig {
            provider: DatabaseProviderKind::Postgres,
            postgres: pg.config(),
            ..DatabaseConfig::default()
        },
        Db::CloudSql(d) => DatabaseConfig {
            provider: DatabaseProviderKind::Cloudsql,
            cloudsql: CloudSqlConfig {
                project: CLOUDSQL_PROJECT.into(),
                endpoint: Some(d.endpoint()),
                anonymous_credentials: true,
                timeout_seconds: 10,
                sql_endpoint: Some(d.sql_endpoint()),
                admin_user: d.admin_user(),
                ..CloudSqlConfig::default()
            },
            ..DatabaseConfig::default()
        },
    };
    config.storage = StorageConfig {
        project: PROJECT_ID.into(),
        bucket_prefix: BUCKET_PREFIX.into(),
        min_create_delete_interval_ms: 0,
        ..StorageConfig::default()
    };
    config.search = SearchConfig {
        endpoint: es.url(),
        region: REGION.into(),
        username: Some(OPERATOR_USER.into()),
        password_file: Some(es_password.path()),
        ..SearchConfig::default()
    };
    config.email.postmark = PostmarkConfig {
        endpoint: postmark.url().into(),
        account_token_env: "DEALERDESK_TEST_UNSET_POSTMARK_ACCOUNT_TOKEN".into(),
        account_token_file: Some(postmark_token.path()),
        server_name_prefix: SERVER_PREFIX.into(),
        ..PostmarkConfig::default()
    };

    let database: Arc<dyn Provider> = match config.database.provider {
        DatabaseProviderKind::Postgres => {
            Arc::new(postgres::from_config(&config.database.postgres).unwrap())
        }
        DatabaseProviderKind::Cloudsql => Arc::new(
            cloudsql::from_config(&config.database.cloudsql)
                .await
                .unwrap(),
        ),
    };
    let providers = Providers::new(vec![
        database,
        Arc::new(StorageProvider::new(config.storage.clone(), gcs.client())),
        Arc::new(ElasticsearchProvider::from_config(&config.search).unwrap()),
        Arc::new(PostmarkProvider::from_config(&config.email.postmark).unwrap()),
    ]);

    let spec: DealerTenantSpec = serde_saphyr::from_str(&format!(
        "{{displayName: Stack Test, region: {REGION}, server: {{replicas: 0}}, \
         deletionPolicy: {deletion_policy}, database: {{enabled: true}}, \
         storage: {{enabled: true}}, search: {{enabled: true}}, email: {{enabled: true}}}}"
    ))
    .unwrap();
    let tenant = DealerTenant::new(&name, spec);
    Stack {
        world: World::new(&tenant),
        name,
        config,
        providers,
        injector: Injector::new(),
        db,
        gcs,
        es,
        postmark,
        _files: vec![es_password, postmark_token],
    }
}

fn decode(b64: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

impl Stack {
    fn namespace(&self) -> String {
        format!("tenant-{}", self.name)
    }
    fn bucket(&self) -> String {
        format!("{BUCKET_PREFIX}-{}", self.name)
    }
    fn index(&self) -> String {
        format!("dt-{}", self.name)
    }
    fn server(&self) -> String {
        server_name(SERVER_PREFIX, &self.name)
    }

    /// One operator pass; `None` once the tenant is gone.
    async fn pass(&self) -> Option<Result<(), String>> {
        pass(&self.world, &self.config, &self.providers, &self.injector)
            .await
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
    }

    /// Runs passes until one writes nothing to the API server and the tenant is Ready;
    /// returns the number of passes.
    async fn converge(&self, max: usize) -> usize {
        for n in 1..=max {
            let result = self.pass().await.expect("the tenant exists");
            let w = self.world.lock().unwrap();
            let phase = w.tenant["status"]["phase"].as_str().unwrap_or_default();
            if result.is_ok() && w.writes == 0 && phase == "Ready" {
                return n;
            }
        }
        let w = self.world.lock().unwrap();
        panic!(
            "no convergence in {max} passes; status: {:#}; last pass: {:?}",
            w.tenant["status"], w.log
        );
    }

    fn status(&self) -> Value {
        self.world.lock().unwrap().tenant["status"].clone()
    }

    /// A Secret of the tenant namespace, decoded.
    fn secret(&self, component: &str) -> BTreeMap<String, String> {
        let w = self.world.lock().unwrap();
        let path = format!(
            "/api/v1/namespaces/{}/secrets/{component}",
            self.namespace()
        );
        let s = w
            .object(&path)
            .unwrap_or_else(|| panic!("no Secret {path}"));
        s["data"]
            .as_object()
            .unwrap_or_else(|| panic!("Secret {component} has no data: {s}"))
            .iter()
            .map(|(k, v)| (k.clone(), decode(v.as_str().unwrap())))
            .collect()
    }

    fn writes(&self) -> Writes {
        (
            self.gcs.writes().len(),
            self.es.calls().iter().filter(|c| c.is_write()).count(),
            self.postmark.writes_since(0).len(),
            match &self.db {
                Db::Postgres(_) => 0, // proven by the server: see `read_only`
                Db::CloudSql(d) => d.writes().len(),
            },
        )
    }

    /// PostgreSQL: makes the admin login read-only (no-op for Cloud SQL, whose double
    /// counts writes).
    async fn db_read_only(&self, on: bool) {
        if let Db::Postgres(pg) = &self.db {
            pg.read_only(on).await;
        }
    }

    /// The tenant's database name (and user name).
    fn db_name(&self) -> String {
        database_name(&self.name)
    }

    /// The Cloud SQL instance name.
    fn instance(&self) -> String {
        cloudsql::instance_name("dt", &self.name)
    }

    /// The database's external resources as the status should list them: `(kind, name)`.
    fn db_resources(&self) -> Vec<(&'static str, String)> {
        let db = self.db_name();
        match &self.db {
            Db::Postgres(_) => vec![("Database", db.clone()), ("DatabaseRole", db)],
            Db::CloudSql(_) => {
                let inst = self.instance();
                vec![
                    ("CloudSqlInstance", inst.clone()),
                    ("Database", format!("{inst}/{db}")),
                    ("DatabaseUser", format!("{inst}/{db}")),
                ]
            }
        }
    }

    /// The documented keys of the database Secret (README, "Components").
    fn db_keys(&self) -> BTreeSet<&'static str> {
        let mut k = set(&[
            "DATABASE_HOST",
            "DATABASE_PORT",
            "DATABASE_NAME",
            "DATABASE_USER",
            "DATABASE_PASSWORD",
        ]);
        if let Db::CloudSql(_) = &self.db {
            k.insert("DATABASE_INSTANCE");
            k.insert("DATABASE_SSLMODE");
        }
        k
    }

    /// The database Secret's values, beyond the password.
    fn assert_db_secret(&self, s: &BTreeMap<String, String>) {
        let db = self.db_name();
        assert_eq!(s[KEY_NAME], db);
        assert_eq!(s[KEY_USER], db);
        assert_eq!(s[KEY_PASSWORD].len(), 32, "a 32-character password");
        match &self.db {
            Db::Postgres(pg) => {
                assert_eq!(s[KEY_HOST], "127.0.0.1");
                assert_eq!(s[KEY_PORT], pg.srv.port.to_string());
            }
            Db::CloudSql(_) => {
                assert!(!s[KEY_HOST].is_empty());
                assert_eq!(s[KEY_PORT], "5432");
                assert_eq!(
                    s["DATABASE_INSTANCE"],
                    cloudsql::connection_name(CLOUDSQL_PROJECT, REGION, &self.instance())
                );
            }
        }
    }

    /// The tenant's database exists and its Secret logs in.
    async fn assert_db_works(&self, s: &BTreeMap<String, String>) {
        match &self.db {
            Db::Postgres(pg) => {
                assert_eq!(pg.tenant_objects().await, (1, 1), "database and role");
                pg_login(s)
                    .await
                    .unwrap_or_else(|e| panic!("the database Secret does not log in: {e}"));
            }
            Db::CloudSql(d) => {
                let inst = self.instance();
                assert_eq!(d.instance(&inst).unwrap()["state"], "RUNNABLE");
                // The login goes to the tenant's database, made over SQL.
                assert!(
                    d.login(&inst, &s[KEY_USER], &s[KEY_PASSWORD]).await,
                    "the database Secret logs in"
                );
                assert!(d.violations().is_empty(), "{:#?}", d.violations());
            }
        }
    }

    /// The tenant's database is erased and its Secret no longer logs in.
    async fn assert_db_gone(&self, s: &BTreeMap<String, String>) {
        match &self.db {
            Db::Postgres(pg) => {
                assert_eq!(pg.tenant_objects().await, (0, 0), "database and role");
                assert!(pg_login(s).await.is_err());
            }
            Db::CloudSql(d) => {
                let inst = self.instance();
                assert!(d.instance(&inst).is_none(), "instance {inst}");
                assert!(d.databases().iter().all(|(i, _)| *i != inst));
                assert!(d.users().iter().all(|(i, _)| *i != inst));
                assert!(!d.login(&inst, &s[KEY_USER], &s[KEY_PASSWORD]).await);
                assert!(!d.pg().role_exists(&s[KEY_USER]).await, "role gone");
                assert!(d.violations().is_empty(), "{:#?}", d.violations());
            }
        }
    }

    /// Marks the tenant deleted and runs passes until it is gone (its finalizer removed).
    async fn delete(&self, max: usize) {
        self.world.lock().unwrap().tenant["metadata"]["deletionTimestamp"] =
            serde_json::json!("2026-11-27T00:00:00Z");
        for _ in 0..max {
            if self.pass().await.is_none() {
                return;
            }
        }
        panic!(
            "the tenant is still there after {max} passes: {:#}",
            self.status()
        );
    }

    /// The erasure receipt: `erasure-<tenant>-<first 8 alphanumerics of the uid>` in the
    /// operator's namespace (the default, `dealertenant-system`).
    fn receipt(&self) -> Value {
        assert_eq!(self.config.operator_namespace, "dealertenant-system");
        let short: String = TENANT_UID
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        assert_eq!(short, "tenantui");
        let path = format!(
            "/api/v1/namespaces/dealertenant-system/configmaps/erasure-{}-{short}",
            self.name
        );
        let w = self.world.lock().unwrap();
        let cm = w
            .object(&path)
            .unwrap_or_else(|| panic!("no receipt ConfigMap {path}"));
        serde_json::from_str(cm["data"]["receipt.json"].as_str().unwrap()).unwrap()
    }

    /// Every external resource exists at its service, and the Secrets still reach them.
    async fn assert_everything_exists(&self, secrets: &Secrets) {
        self.assert_db_works(&secrets.database).await;
        assert!(self.gcs.bucket(&self.bucket()).is_some(), "bucket");
        let index = self.index();
        assert!(self.es.index(&index).is_some(), "index");
        assert!(self.es.role(&index).is_some(), "role");
        let valid: Vec<String> = self
            .es
            .valid_keys(&index)
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(
            valid,
            [secrets.search[secret_keys::API_KEY_ID].clone()],
            "valid keys"
        );
        assert_eq!(
            self.es
                .search_as(&secrets.search[secret_keys::API_KEY], &index)
                .await,
            200
        );
        let servers = self.postmark.servers_named(&self.server());
        assert_eq!(servers.len(), 1, "Postmark servers");
        assert_eq!(
            servers[0].id.to_string(),
            secrets.email[SECRET_SERVER_ID],
            "Postmark server ID"
        );
        assert!(
            self.postmark
                .server_token_works(&secrets.email[SECRET_SERVER_TOKEN])
        );
    }
}

/// The four component Secrets, decoded.
struct Secrets {
    database: BTreeMap<String, String>,
    storage: BTreeMap<String, String>,
    search: BTreeMap<String, String>,
    email: BTreeMap<String, String>,
}

fn keys(m: &BTreeMap<String, String>) -> BTreeSet<&str> {
    m.keys().map(String::as_str).collect()
}

fn set<'a>(v: &[&'a str]) -> BTreeSet<&'a str> {
    v.iter().copied().collect()
}

/// Logs in with the database Secret, straight to the server, and checks who it is.
async fn pg_login(s: &BTreeMap<String, String>) -> Result<(), String> {
    let client = connect(
        s[KEY_PORT].parse().unwrap(),
        &s[KEY_USER],
        &s[KEY_PASSWORD],
        &s[KEY_NAME],
    )
    .await
    .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(row.get::<_, String>(0), s[KEY_USER]);
    assert_eq!(row.get::<_, String>(1), s[KEY_NAME]);
    Ok(())
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_}: {status:#}"))
}

fn outcome<'a>(r: &'a Value, component: &str) -> &'a Value {
    r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == component)
        .unwrap_or_else(|| panic!("no entry for {component}: {r:#}"))
}

/// Converges a new tenant, checks everything the issue asks for, and proves that a further
/// pass writes nothing anywhere. Returns the Secrets.
async fn converge_and_check(s: &Stack) -> Secrets {
    let started = Instant::now();
    let passes = s.converge(8).await;
    eprintln!(
        "converged in {passes} passes, {:.2?} (tenant {})",
        started.elapsed(),
        s.name
    );

    // Every condition is True.
    let status = s.status();
    assert_eq!(status["phase"], "Ready", "{status:#}");
    for c in [
        "Ready",
        "NamespaceReady",
        "ServerReady",
        "ResidencyCompliant",
        "DatabaseReady",
        "StorageReady",
        "SearchReady",
        "EmailReady",
    ] {
        let cond = condition(&status, c);
        assert_eq!(cond["status"], "True", "{c}: {cond}");
    }

    // Each Secret holds exactly the documented keys (README), which are the providers'
    // constants, with the right values.
    let secrets = Secrets {
        database: s.secret("database"),
        storage: s.secret("storage"),
        search: s.secret("search"),
        email: s.secret("email"),
    };
    let mut db_keys = set(&[KEY_HOST, KEY_PORT, KEY_NAME, KEY_USER, KEY_PASSWORD]);
    if let Db::CloudSql(_) = &s.db {
        db_keys.insert("DATABASE_INSTANCE");
        db_keys.insert("DATABASE_SSLMODE");
    }
    assert_eq!(s.db_keys(), db_keys);
    assert_eq!(keys(&secrets.database), s.db_keys());
    assert_eq!(
        set(&[KEY_BUCKET, KEY_LOCATION, KEY_PROJECT]),
        set(&["STORAGE_BUCKET", "STORAGE_LOCATION", "STORAGE_PROJECT"])
    );
    assert_eq!(
        keys(&secrets.storage),
        set(&[KEY_BUCKET, KEY_LOCATION, KEY_PROJECT])
    );
    assert_eq!(
        set(&[
            secret_keys::URL,
            secret_keys::INDEX,
            secret_keys::API_KEY,
            secret_keys::API_KEY_ID
        ]),
        set(&[
            "ELASTICSEARCH_URL",
            "ELASTICSEARCH_INDEX",
            "ELASTICSEARCH_API_KEY",
            "ELASTICSEARCH_API_KEY_ID"
        ])
    );
    assert_eq!(
        keys(&secrets.search),
        set(&[
            secret_keys::URL,
            secret_keys::INDEX,
            secret_keys::API_KEY,
            secret_keys::API_KEY_ID
        ])
    );
    assert_eq!(
        set(&[SECRET_SERVER_TOKEN, SECRET_SERVER_ID]),
        set(&["POSTMARK_SERVER_TOKEN", "POSTMARK_SERVER_ID"])
    );
    assert_eq!(
        keys(&secrets.email),
        set(&[SECRET_SERVER_TOKEN, SECRET_SERVER_ID])
    );
    s.assert_db_secret(&secrets.database);
    assert_eq!(secrets.storage[KEY_BUCKET], s.bucket());
    assert_eq!(secrets.storage[KEY_LOCATION], REGION);
    assert_eq!(secrets.storage[KEY_PROJECT], PROJECT_ID);
    assert_eq!(secrets.search[secret_keys::URL], s.es.url());
    assert_eq!(secrets.search[secret_keys::INDEX], s.index());

    // The credentials work: at the database, at Elasticsearch, at Postmark.
    s.assert_everything_exists(&secrets).await;
    assert_eq!(
        s.es.index_doc_as(&secrets.search[secret_keys::API_KEY], &s.index())
            .await,
        201,
        "the search key writes to its index"
    );

    // The external resources, each with its service's ID and an EU location (Postmark
    // is a registered third-country processor: "us").
    type Row = (String, String, String, String);
    let resources: Vec<Row> = status["externalResources"]
        .as_array()
        .unwrap_or_else(|| panic!("no externalResources: {status:#}"))
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
                r["location"].as_str().unwrap_or("none").to_string(),
                r["processor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = |kind: &str, name: &str, location: &str, processor: &str| -> Row {
        (kind.into(), name.into(), location.into(), processor.into())
    };
    let mut expected: Vec<Row> = s
        .db_resources()
        .iter()
        .map(|(kind, name)| want(kind, name, REGION, "google-cloud"))
        .collect();
    expected.extend([
        want("Bucket", &s.bucket(), REGION, "google-cloud"),
        want("ElasticsearchIndex", &s.index(), REGION, "elastic"),
        want("ElasticsearchRole", &s.index(), REGION, "elastic"),
        want("ElasticsearchApiKey", &s.index(), REGION, "elastic"),
        want("PostmarkServer", &s.server(), "us", "postmark"),
    ]);
    let sorted = |mut v: Vec<Row>| {
        v.sort();
        v
    };
    assert_eq!(sorted(resources), sorted(expected), "{status:#}");
    for r in status["externalResources"].as_array().unwrap() {
        if r["kind"] != "ElasticsearchRole" {
            assert!(r["id"].is_string(), "no service ID: {r}");
        }
    }
    let ids: Vec<&str> = status["processors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["google-cloud", "postmark", "elastic"]);

    // One more pass: no write at the API server, at any double, or at PostgreSQL (whose
    // admin login cannot write during it).
    let before = s.writes();
    s.db_read_only(true).await;
    let again = s.pass().await.expect("the tenant exists");
    s.db_read_only(false).await;
    again.unwrap_or_else(|e| panic!("the steady pass failed: {e}; {:#}", s.status()));
    {
        let w = s.world.lock().unwrap();
        assert_eq!(w.writes, 0, "Kubernetes writes: {:?}", w.log);
    }
    assert_eq!(
        s.writes(),
        before,
        "provider writes (gcs, es, postmark, cloudsql)"
    );
    let status = s.status();
    assert_eq!(status["phase"], "Ready", "{status:#}");
    assert_eq!(
        condition(&status, "DatabaseReady")["status"],
        "True",
        "the database was not written to"
    );
    secrets
}

/// Deletes a converged tenant under `deletionPolicy: Delete` and checks that every
/// external resource, the namespace and the credentials are gone, with a complete receipt.
async fn delete_and_check_erased(s: &Stack, secrets: &Secrets) {
    let ids: BTreeMap<String, String> = s.status()["externalResources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["kind"].as_str()?.into(), r["id"].as_str()?.into())))
        .collect();

    s.delete(6).await;
    s.assert_db_gone(&secrets.database).await;
    assert!(s.gcs.bucket(&s.bucket()).is_none(), "bucket");
    let index = s.index();
    assert!(s.es.index(&index).is_none(), "index");
    assert!(s.es.role(&index).is_none(), "role");
    assert!(s.es.valid_keys(&index).is_empty(), "valid keys");
    assert_eq!(
        s.es.search_as(&secrets.search[secret_keys::API_KEY], &index)
            .await,
        401
    );
    assert!(s.postmark.servers_named(&s.server()).is_empty(), "server");
    assert!(
        !s.postmark
            .server_token_works(&secrets.email[SECRET_SERVER_TOKEN])
    );
    assert!(
        s.postmark.violations().is_empty(),
        "{:#?}",
        s.postmark.violations()
    );
    {
        let w = s.world.lock().unwrap();
        let ns = s.namespace();
        assert!(
            w.objects.keys().all(|p| !p.contains(&ns)),
            "{:?}",
            w.objects.keys()
        );
    }

    // The receipt: complete, every component erased, with the services' IDs.
    let r = s.receipt();
    assert_eq!(r["complete"], true, "{r:#}");
    assert_eq!(r["tenant"], s.name);
    assert_eq!(r["tenantUid"], TENANT_UID);
    assert_eq!(r["deletionPolicy"], "Delete");
    for c in ["database", "storage", "search", "email", "namespace"] {
        let e = outcome(&r, c);
        if c == "storage" {
            // Soft delete is on (7 days by default): the deleted bucket stays restorable.
            assert_eq!(e["outcome"], "Restorable", "{c}: {e:#}");
            let detail = e["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!(
                    "soft-deleted bucket {}, restorable until ",
                    s.bucket()
                )),
                "{detail}"
            );
        } else {
            assert_eq!(e["outcome"], "Erased", "{c}: {e:#}");
        }
        assert!(
            !e["resources"].as_array().unwrap().is_empty(),
            "{c} names what was erased"
        );
    }
    let erased: BTreeMap<String, Option<String>> = ["database", "storage", "search", "email"]
        .into_iter()
        .flat_map(|c| outcome(&r, c)["resources"].as_array().unwrap().clone())
        .map(|x| {
            (
                x["kind"].as_str().unwrap().to_string(),
                x["id"].as_str().map(str::to_string),
            )
        })
        .collect();
    let mut kinds: BTreeSet<&str> = s.db_resources().iter().map(|(k, _)| *k).collect();
    kinds.extend([
        "Bucket",
        "ElasticsearchApiKey",
        "ElasticsearchIndex",
        "ElasticsearchRole",
        "PostmarkServer",
    ]);
    assert_eq!(
        erased.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        kinds,
        "{r:#}"
    );
    for (kind, id) in &erased {
        if kind == "ElasticsearchRole" {
            continue; // roles have no ID of their own at Elasticsearch
        }
        assert!(id.is_some(), "{kind} has no provider ID in the receipt");
        assert_eq!(
            id.as_ref(),
            ids.get(kind),
            "{kind}: the receipt names the ID the status reported"
        );
    }
    assert_eq!(
        erased["ElasticsearchApiKey"].as_deref(),
        Some(secrets.search[secret_keys::API_KEY_ID].as_str())
    );
    assert_eq!(
        erased["PostmarkServer"].as_deref(),
        Some(secrets.email[SECRET_SERVER_ID].as_str())
    );
    assert_eq!(outcome(&r, "email")["processor"], "postmark");
    assert!(!r.to_string().contains("Stack Test"), "no display name");
}

/// Deletes a converged tenant under `deletionPolicy: Retain` and checks that nothing was
/// touched at any service, and that the receipt says what was kept.
async fn delete_and_check_kept(s: &Stack, secrets: &Secrets) {
    let before = s.writes();
    // PostgreSQL could not be written to while the tenant is deleted.
    s.db_read_only(true).await;
    s.delete(4).await;
    s.db_read_only(false).await;

    // Nothing was erased or changed at any service, and every credential still works.
    assert_eq!(
        s.writes(),
        before,
        "provider writes (gcs, es, postmark, cloudsql)"
    );
    s.assert_everything_exists(secrets).await;
    {
        let w = s.world.lock().unwrap();
        let ns = w
            .object(&format!("/api/v1/namespaces/{}", s.namespace()))
            .expect("the namespace is kept");
        assert_eq!(ns["metadata"]["labels"]["dealerdesk.de/retained"], "true");
    }
    assert_eq!(
        s.secret("database"),
        secrets.database,
        "database Secret kept"
    );
    assert_eq!(s.secret("storage"), secrets.storage, "storage Secret kept");
    assert_eq!(s.secret("search"), secrets.search, "search Secret kept");
    assert_eq!(s.secret("email"), secrets.email, "email Secret kept");

    let r = s.receipt();
    assert_eq!(r["complete"], true, "{r:#}");
    assert_eq!(r["deletionPolicy"], "Retain");
    for c in ["database", "storage", "search", "email", "namespace"] {
        assert_eq!(outcome(&r, c)["outcome"], "Kept", "{c}: {r:#}");
    }
    let named = |c: &str| -> Vec<(String, String)> {
        outcome(&r, c)["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                assert_eq!(x["location"], if c == "email" { "us" } else { REGION });
                (
                    x["kind"].as_str().unwrap().to_string(),
                    x["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let db: Vec<(String, String)> = s
        .db_resources()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    assert_eq!(named("database"), db);
    assert_eq!(named("storage"), [("Bucket".to_string(), s.bucket())]);
    assert_eq!(named("email"), [("PostmarkServer".to_string(), s.server())]);
    let search: BTreeSet<String> = named("search").into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        search,
        [
            "ElasticsearchIndex",
            "ElasticsearchRole",
            "ElasticsearchApiKey"
        ]
        .map(String::from)
        .into()
    );
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn every_component_reaches_ready_with_real_providers_and_a_second_pass_writes_nothing() {
    let Some(srv) = pg_server().await else { return };
    let started = Instant::now();
    let s = stack(DbChoice::Postgres(srv), "Delete").await;
    let secrets = converge_and_check(&s).await;
    // Deletion under Delete: every external resource is gone, and so is the namespace.
    delete_and_check_erased(&s, &secrets).await;
    eprintln!("whole test: {:.2?}", started.elapsed());
}

#[tokio::test]
async fn retain_keeps_every_external_resource_and_says_so_in_the_receipt() {
    let Some(srv) = pg_server().await else { return };
    let started = Instant::now();
    let s = stack(DbChoice::Postgres(srv), "Retain").await;
    let secrets = converge_and_check(&s).await;
    delete_and_check_kept(&s, &secrets).await;
    // `PgEnv` drops the retained database and role.
    eprintln!("whole test: {:.2?}", started.elapsed());
}

/// Runs `test` on a thread with the stack the operator's passes get (they are polled on its
/// main thread: 8 MiB), not a test thread's 2 MiB: the Cloud SQL client of a debug build,
/// traced for the request metrics, has frames of 100-200 KB.
fn on_pass_stack<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    let thread = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(test())
        })
        .expect("a thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn with_cloud_sql_every_component_reaches_ready_and_delete_erases_everything() {
    on_pass_stack(|| async {
        let started = Instant::now();
        let s = stack(DbChoice::CloudSql, "Delete").await;
        let secrets = converge_and_check(&s).await;
        delete_and_check_erased(&s, &secrets).await;
        eprintln!("whole test: {:.2?}", started.elapsed());
    });
}

#[test]
fn with_cloud_sql_retain_keeps_every_external_resource() {
    on_pass_stack(|| async {
        let started = Instant::now();
        let s = stack(DbChoice::CloudSql, "Retain").await;
        let secrets = converge_and_check(&s).await;
        delete_and_check_kept(&s, &secrets).await;
        eprintln!("whole test: {:.2?}", started.elapsed());
    });
}
