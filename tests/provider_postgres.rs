//! The `postgres` database provider against a REAL PostgreSQL server on 127.0.0.1.
//!
//! Every test runs twice, against PostgreSQL 15 (`pg15::<test>`, `.ci/start-postgres`, port
//! 55432) and PostgreSQL 17 (`pg17::<test>`, `.ci/start-postgres-17`, port 55433), whose
//! role membership rules differ (16 changed them); superuser `postgres`, password
//! `operator-test-admin` (overrides: see `support::pg`). Without a reachable server a test
//! prints a SKIP notice and passes, unless the environment variable `CI` is set: then it
//! fails, so CI cannot skip silently.
//!
//! Each test makes its own admin login (a superuser, or a CREATEDB CREATEROLE role as on
//! Cloud SQL) and tenants with a random suffix, so tests run in parallel on one server.
//! "The pass writes nothing" is proven by the server itself: the admin login gets
//! `default_transaction_read_only = on`, under which PostgreSQL rejects every CREATE,
//! ALTER, GRANT, REVOKE and DROP.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dealertenant_operator::providers::database::postgres::{
    self, KEY_HOST, KEY_NAME, KEY_PASSWORD, KEY_PORT, KEY_USER, PostgresConfig, PostgresProvider,
    SslMode, database_name,
};
use dealertenant_operator::providers::{Provider, ProviderError, SecretData, TenantInfo};
use support::pgproxy::{Fault, PgProxy};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

// ---------------------------------------------------------------------------------------
// The server and per-test fixtures.

use support::pg::{PgServer as Server, Target, connect};

/// The test server (see `support::pg`), with this binary's log captured first.
async fn server(target: Target) -> Option<Server> {
    captured_log();
    support::pg::server_at(target).await
}

/// Every test of this suite, once per server: `pg15::<test>` and `pg17::<test>`. A test is
/// an `async fn <test>(srv: Server)`; it is skipped (or fails under `CI`) when its server
/// is not running.
macro_rules! on_every_server {
    ($($test:ident),* $(,)?) => {
        mod pg15 {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(srv) = super::server(super::Target::Pg15).await {
                        super::$test(srv).await;
                    }
                }
            )*
        }
        mod pg17 {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(srv) = super::server(super::Target::Pg17).await {
                        super::$test(srv).await;
                    }
                }
            )*
        }
    };
}

on_every_server!(
    first_pass_creates_second_pass_writes_nothing_delete_erases,
    non_superuser_admin_manages_tenants_like_cloud_sql,
    a_non_superuser_admin_takes_the_membership_it_needs,
    a_foreign_session_in_the_database_delays_deletion_but_does_not_block_it,
    tls_is_on_by_default_and_verify_full_checks_the_certificate,
    tenants_are_isolated_from_each_other_and_from_the_admin,
    a_missing_secret_rotates_the_password,
    a_retained_database_is_bound_to_its_tenants_uid,
    drift_is_repaired_and_then_nothing_is_written,
    a_changed_password_is_set_back_from_the_secret,
    crash_states_converge_to_one_database_and_one_role,
    a_crash_before_any_statement_converges,
    a_crash_after_any_statement_converges,
    a_crash_before_any_statement_converges_with_a_non_superuser_admin,
    a_crash_after_any_statement_converges_with_a_non_superuser_admin,
    errors_are_classified_and_carry_no_credential,
    a_region_outside_the_eu_sends_nothing,
    passwords_reach_neither_the_server_log_nor_tracing,
);

fn suffix() -> String {
    (0..8)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Admin {
    /// A superuser.
    Super,
    /// `CREATEDB CREATEROLE`, no superuser (as Cloud SQL's `postgres`).
    CreateRole,
    /// Only `LOGIN` (to see permission errors).
    Powerless,
}

/// One test's admin login and tenants.
struct Env {
    srv: Server,
    su: Client,
    admin: String,
    admin_password: String,
    password_file: PathBuf,
    suffix: String,
}

impl Env {
    async fn new(srv: &Server, kind: Admin) -> Env {
        let su = connect(srv.port, "postgres", &srv.password, "postgres")
            .await
            .unwrap();
        let suffix = suffix();
        let admin = format!("opadm_{suffix}");
        let admin_password = format!("adm{}", suffix.repeat(4));
        let attrs = match kind {
            Admin::Super => "SUPERUSER",
            Admin::CreateRole => "CREATEDB CREATEROLE",
            Admin::Powerless => "",
        };
        su.batch_execute(&format!(
            "CREATE ROLE {admin} LOGIN {attrs} PASSWORD '{admin_password}'"
        ))
        .await
        .unwrap();
        let password_file = std::env::temp_dir().join(format!("dealertenant-pg-{suffix}"));
        std::fs::write(&password_file, format!("{admin_password}\n")).unwrap();
        Env {
            srv: srv.clone(),
            su,
            admin,
            admin_password,
            password_file,
            suffix,
        }
    }

    /// The provider's configuration for the test server: TLS without verification (the
    /// default, `require`).
    fn config(&self) -> PostgresConfig {
        PostgresConfig {
            ssl_mode: SslMode::Require,
            ..self.config_on(self.srv.port)
        }
    }

    /// The same for another port, without TLS: the fault-injecting proxy (`support::pgproxy`)
    /// speaks plain PostgreSQL only, as do the Cloud SQL and AlloyDB Auth Proxies that
    /// `sslMode: disable` is for.
    fn config_on(&self, port: u16) -> PostgresConfig {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port,
            admin_user: self.admin.clone(),
            admin_password_env: format!("DEALERTENANT_TEST_UNSET_{}", self.suffix),
            admin_password_file: Some(self.password_file.to_string_lossy().into_owned()),
            admin_database: "postgres".into(),
            region: "europe-west3".into(),
            connect_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            ssl_mode: SslMode::Disable,
            ca_file: None,
        }
    }

    fn provider(&self) -> PostgresProvider {
        postgres::from_config(&self.config()).unwrap()
    }

    fn tenant(&self, label: &str) -> TenantInfo {
        let name = format!("t-{label}-{}", self.suffix);
        TenantInfo {
            namespace: format!("tenant-{name}"),
            name,
            uid: "00000000-0000-0000-0000-000000000000".into(),
            region: "europe-west3".into(),
            annotations: Default::default(),
        }
    }

    /// Makes the server reject every write of the admin login's new sessions.
    async fn read_only(&self, on: bool) {
        support::pg::set_read_only(&self.su, &self.admin, on).await;
    }

    /// A pass with this Secret makes no write and returns no Secret.
    async fn assert_pass_writes_nothing(
        &self,
        p: &PostgresProvider,
        t: &TenantInfo,
        secret: &SecretData,
    ) {
        self.read_only(true).await;
        let r = p.reconcile(t, Some(secret)).await;
        self.read_only(false).await;
        let r = r.unwrap_or_else(|e| panic!("a steady pass tried to write: {e}"));
        assert!(r.ready);
        assert!(r.secret.is_none(), "a steady pass reissued the Secret");
    }

    async fn exec(&self, sql: &str) {
        self.su
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn exec_in(&self, db: &str, sql: &str) {
        let c = connect(self.srv.port, "postgres", &self.srv.password, db)
            .await
            .unwrap();
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn count(&self, sql: &str, name: &str) -> i64 {
        self.su.query_one(sql, &[&name]).await.unwrap().get(0)
    }

    /// Exactly one role and one database of the tenant (by name and by prefix), or none.
    async fn assert_exists(&self, t: &TenantInfo, expected: i64) {
        let name = database_name(&t.name);
        let like = format!("{}%", name.replace('_', "\\_"));
        for (sql, what) in [
            ("SELECT count(*) FROM pg_roles WHERE rolname = $1", "roles"),
            (
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                "databases",
            ),
            (
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
                "roles like",
            ),
            (
                "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
                "dbs like",
            ),
        ] {
            let arg = if sql.contains("LIKE") { &like } else { &name };
            assert_eq!(self.count(sql, arg).await, expected, "{what} of {name}");
        }
    }

    /// The tenant's role and database are exactly as the provider promises, and the
    /// Secret logs in and can create a table.
    async fn assert_healthy(&self, t: &TenantInfo, secret: &SecretData) {
        let name = database_name(&t.name);
        self.assert_exists(t, 1).await;
        let row = self
            .su
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit,
                        rolreplication, rolbypassrls,
                        (rolvaliduntil IS NULL OR rolvaliduntil = 'infinity'),
                        (SELECT count(*) FROM pg_auth_members WHERE member = r.oid),
                        (SELECT count(*) FROM pg_auth_members m JOIN pg_roles u
                           ON u.oid = m.member WHERE m.roleid = r.oid AND u.rolname <> $2)
                 FROM pg_roles r WHERE rolname = $1",
                &[&name, &self.admin],
            )
            .await
            .unwrap();
        let attrs: Vec<bool> = (0..8).map(|i| row.get(i)).collect();
        assert_eq!(
            attrs,
            [true, false, false, false, false, false, false, true],
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
        );
        assert_eq!(row.get::<_, i64>(8), 0, "{name} is a member of some role");
        assert_eq!(row.get::<_, i64>(9), 0, "some role is a member of {name}");

        let row = self
            .su
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text,
                        ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                   ELSE pg_get_userbyid(a.grantee)::text END
                              FROM aclexplode(coalesce(datacl, acldefault('d', datdba))) a
                              ORDER BY 1),
                        has_database_privilege($1, oid, 'CONNECT')
                 FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name, "database owner");
        assert_eq!(
            row.get::<_, Vec<String>>(1),
            std::slice::from_ref(&name),
            "only the owner holds privileges on the database"
        );
        assert!(row.get::<_, bool>(2), "{name} may connect");

        let inside = connect(self.srv.port, "postgres", &self.srv.password, &name)
            .await
            .unwrap();
        let row = inside
            .query_one(
                "SELECT pg_get_userbyid(nspowner)::text,
                        EXISTS (SELECT 1 FROM aclexplode(coalesce(nspacl,
                                  acldefault('n', nspowner))) a
                                WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
                 FROM pg_namespace WHERE nspname = 'public'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name, "owner of schema public");
        assert!(!row.get::<_, bool>(1), "PUBLIC may create in schema public");

        let me = self.login(secret).await.expect("the Secret logs in");
        let table = format!("t_{}", suffix());
        me.batch_execute(&format!(
            "CREATE TABLE {table} (id int); INSERT INTO {table} VALUES (1); DROP TABLE {table}"
        ))
        .await
        .expect("the tenant creates tables in its database");
    }

    /// Logs in with a Secret, straight to the server.
    async fn login(&self, secret: &SecretData) -> Result<Client, tokio_postgres::Error> {
        assert_eq!(secret.get(KEY_HOST), Some("127.0.0.1"));
        let port: u16 = secret.get(KEY_PORT).unwrap().parse().unwrap();
        connect(
            port,
            secret.get(KEY_USER).unwrap(),
            secret.get(KEY_PASSWORD).unwrap(),
            secret.get(KEY_NAME).unwrap(),
        )
        .await
    }

    /// A login role like any other user of the server (no tenant).
    async fn probe_role(&self) -> (String, String) {
        let name = format!("probe_{}", suffix());
        let password = format!("probe{}", suffix());
        self.exec(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
            .await;
        (name, password)
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_file(&self.password_file);
        self.su
            .batch_execute(&format!(
                "DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}",
                self.admin
            ))
            .await
            .unwrap();
    }
}

fn code(e: &tokio_postgres::Error) -> Option<SqlState> {
    e.code().cloned()
}

/// First pass over a tenant: creates it and returns its Secret.
async fn create(p: &PostgresProvider, t: &TenantInfo) -> SecretData {
    let r = p.reconcile(t, None).await.expect("first reconcile");
    assert!(r.ready);
    r.secret.expect("the first pass issues credentials")
}

// ---------------------------------------------------------------------------------------
// Life cycle.

async fn first_pass_creates_second_pass_writes_nothing_delete_erases(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let t = env.tenant("life");
    let name = database_name(&t.name);

    let r = p.reconcile(&t, None).await.unwrap();
    assert!(r.ready);
    let secret = r.secret.expect("credentials on first creation");
    assert_eq!(
        secret.keys().collect::<Vec<_>>(),
        [KEY_HOST, KEY_NAME, KEY_PASSWORD, KEY_PORT, KEY_USER]
    );
    assert_eq!(secret.get(KEY_NAME), Some(name.as_str()));
    assert_eq!(secret.get(KEY_USER), Some(name.as_str()));
    assert_eq!(secret.get(KEY_PORT), Some(srv.port.to_string().as_str()));
    let password = secret.get(KEY_PASSWORD).unwrap().to_string();
    assert_eq!(password.len(), 32);
    assert!(!r.message.contains(&password));
    let kinds: Vec<(&str, &str, Option<&str>)> = r
        .resources
        .iter()
        .map(|x| (x.kind.as_str(), x.name.as_str(), x.location.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Database", name.as_str(), Some("europe-west3")),
            ("DatabaseRole", name.as_str(), Some("europe-west3")),
        ]
    );
    assert!(r.resources.iter().all(|x| x.id.is_some()));
    env.assert_healthy(&t, &secret).await;

    // The server stores a SCRAM verifier, never the password.
    let stored: String = env
        .su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains(&password));

    // The steady pass: the server would reject any write.
    env.assert_pass_writes_nothing(&p, &t, &secret).await;
    // ... and that check can fail: a pass that must write (rotation) is rejected.
    env.read_only(true).await;
    let e = p.reconcile(&t, None).await.unwrap_err();
    env.read_only(false).await;
    assert!(e.to_string().contains("read-only transaction"), "{e}");
    env.assert_healthy(&t, &secret).await;

    // Delete erases both and reports them.
    let erased = p.delete(&t).await.unwrap();
    let kinds: Vec<(&str, &str)> = erased
        .resources
        .iter()
        .map(|x| (x.kind.as_str(), x.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("Database", name.as_str()), ("DatabaseRole", name.as_str())]
    );
    assert_eq!(erased.resources[0].id, r.resources[0].id);
    assert_eq!(erased.resources[1].id, r.resources[1].id);
    env.assert_exists(&t, 0).await;
    assert!(env.login(&secret).await.is_err());

    // Absent is done, and reading it writes nothing.
    env.read_only(true).await;
    let again = p.delete(&t).await;
    env.read_only(false).await;
    assert!(again.unwrap().resources.is_empty());
    env.cleanup().await;
}

async fn non_superuser_admin_manages_tenants_like_cloud_sql(srv: Server) {
    let env = Env::new(&srv, Admin::CreateRole).await;
    let p = env.provider();
    let t = env.tenant("nosu");
    let name = database_name(&t.name);

    let secret = create(&p, &t).await;
    env.assert_healthy(&t, &secret).await;
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    // Drift a CREATEROLE admin may repair.
    env.exec(&format!(
        "GRANT CONNECT ON DATABASE {name} TO PUBLIC; ALTER ROLE {name} INHERIT CREATEDB"
    ))
    .await;
    env.exec_in(&name, "GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await;
    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none());
    assert!(r.message.contains("repaired"), "{}", r.message);
    env.assert_healthy(&t, &secret).await;
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    // Rotation works for it too.
    let r = p.reconcile(&t, None).await.unwrap();
    let new = r.secret.unwrap();
    assert_eq!(
        code(&env.login(&secret).await.err().unwrap()),
        Some(SqlState::INVALID_PASSWORD)
    );
    env.assert_healthy(&t, &new).await;

    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 2);
    env.assert_exists(&t, 0).await;
    assert!(p.delete(&t).await.unwrap().resources.is_empty());
    env.cleanup().await;
}

/// A CREATEROLE admin gets from PostgreSQL 16 on only `ADMIN OPTION` (no `INHERIT`, no
/// `SET`) in the roles it creates, so `pg_has_role(.., 'MEMBER')` says yes while `CREATE
/// DATABASE .. OWNER` fails (42501 "must be able to SET ROLE"). The provider grants itself
/// what it needs, checks it with `USAGE` and `SET`, re-grants it after drift, and with it
/// ends the tenant's sessions on deletion.
async fn a_non_superuser_admin_takes_the_membership_it_needs(srv: Server) {
    let env = Env::new(&srv, Admin::CreateRole).await;
    let p = env.provider();
    let t = env.tenant("member");
    let name = database_name(&t.name);
    let admin = env.admin.clone();

    let secret = create(&p, &t).await;
    env.assert_healthy(&t, &secret).await;
    env.assert_pass_writes_nothing(&p, &t, &secret).await;
    let has = |mode: &'static str| {
        let (su, name, admin) = (&env.su, name.clone(), admin.clone());
        async move {
            su.query_one(
                "SELECT pg_has_role($1::text::name, $2::text::name, $3)",
                &[&admin, &name, &mode],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        }
    };
    assert!(has("USAGE").await, "the admin has the privileges of {name}");
    let v16 = srv.target != Target::Pg15;
    if v16 {
        assert!(has("SET").await, "the admin may SET ROLE {name}");
    }

    // Someone takes the grant back: the next pass grants it again (with the options on 16+).
    let revoke = if v16 {
        format!("REVOKE {name} FROM {admin} GRANTED BY {admin}")
    } else {
        format!("REVOKE {name} FROM {admin}")
    };
    env.exec(&revoke).await;
    assert!(!has("USAGE").await);
    if v16 {
        // What the server leaves: the ADMIN OPTION grant of role creation, which passes
        // the old MEMBER check.
        assert!(has("MEMBER").await);
    }
    p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(has("USAGE").await);
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    // The tenant's open session does not stop the deletion: the admin may end it.
    let session = env.login(&secret).await.unwrap();
    session.batch_execute("SELECT 1").await.unwrap();
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 2);
    env.assert_exists(&t, 0).await;
    assert!(session.batch_execute("SELECT 1").await.is_err());
    env.cleanup().await;
}

/// A session the admin may not end (here a superuser's) in the tenant's database: the
/// deletion ends what it may (the tenant's own sessions), leaves that one alone, reports a
/// transient error (55006, retry later) instead of failing for good, and completes once
/// the session is gone. (Before: pg_terminate_backend and DROP DATABASE .. WITH (FORCE)
/// failed with 42501, a permanent error.)
async fn a_foreign_session_in_the_database_delays_deletion_but_does_not_block_it(srv: Server) {
    let env = Env::new(&srv, Admin::CreateRole).await;
    let p = env.provider();
    let t = env.tenant("busy");
    let name = database_name(&t.name);
    let secret = create(&p, &t).await;

    let foreign = connect(srv.port, "postgres", &srv.password, &name)
        .await
        .unwrap();
    let foreign_pid: i32 = foreign
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tenant_session = env.login(&secret).await.unwrap();

    let e = p.delete(&t).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("55006"), "{e}");
    assert!(!e.to_string().contains(&env.admin_password));
    // The foreign session lives on; the tenant's was ended and it cannot log in again.
    foreign.batch_execute("SELECT 1").await.unwrap();
    assert!(tenant_session.batch_execute("SELECT 1").await.is_err());
    assert!(env.login(&secret).await.is_err());
    env.assert_exists(&t, 1).await;

    // Once the session is gone, the next pass erases both.
    drop(foreign);
    for _ in 0..50 {
        let left = env
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::text::int4",
                &foreign_pid.to_string(),
            )
            .await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let erased = p.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 2);
    env.assert_exists(&t, 0).await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// TLS.

/// Against a server with a self-signed certificate that refuses the admin's plain logins:
/// `disable` is refused by the server (permanent), the default `require` works,
/// `verify-full` works with the CA that signed the certificate and fails for good, with a
/// clear message, with another CA; a server without TLS fails `require` for good.
async fn tls_is_on_by_default_and_verify_full_checks_the_certificate(srv: Server) {
    let env = Env::new(&srv, Admin::CreateRole).await;
    support::pg::require_tls_for(&env.su, &env.admin).await;
    let t = env.tenant("tls");

    // The server refuses the admin without TLS.
    let plain = postgres::from_config(&env.config_on(srv.port)).unwrap();
    let e = plain.reconcile(&t, None).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("no encryption"), "{e}");
    env.assert_exists(&t, 0).await;

    // require (the default): encrypted, so admitted.
    assert_eq!(PostgresConfig::default().ssl_mode, SslMode::Require);
    let p = env.provider();
    let secret = create(&p, &t).await;
    env.assert_healthy(&t, &secret).await;

    // verify-full with the server's CA: the steady pass works and writes nothing.
    let verified = postgres::from_config(&PostgresConfig {
        ssl_mode: SslMode::VerifyFull,
        ca_file: Some(srv.ca_file.to_string_lossy().into_owned()),
        ..env.config()
    })
    .unwrap();
    env.assert_pass_writes_nothing(&verified, &t, &secret).await;

    // verify-full with a CA that did not sign the certificate: permanent, and says why.
    let wrong_ca = support::pg::unrelated_ca();
    let unverified = postgres::from_config(&PostgresConfig {
        ssl_mode: SslMode::VerifyFull,
        ca_file: Some(wrong_ca.to_string_lossy().into_owned()),
        ..env.config()
    })
    .unwrap();
    let e = unverified.reconcile(&t, Some(&secret)).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("caFile"), "{text}");
    assert!(!text.contains(&env.admin_password));
    assert!(
        unverified
            .delete(&t)
            .await
            .unwrap_err()
            .to_string()
            .contains("caFile")
    );

    // A CA file that is missing or holds no certificate: not configured, at start-up.
    for bad in [
        wrong_ca.with_extension("absent"),
        wrong_ca.with_file_name("ca.key"),
    ] {
        let e = postgres::from_config(&PostgresConfig {
            ssl_mode: SslMode::VerifyFull,
            ca_file: Some(bad.to_string_lossy().into_owned()),
            ..env.config()
        })
        .unwrap_err();
        assert_eq!(e.reason(), "NotConfigured", "{e}");
    }

    // A server that offers no TLS (the proxy answers the TLS request with "no").
    let proxy = PgProxy::start(srv.port).await;
    let no_tls = postgres::from_config(&PostgresConfig {
        ssl_mode: SslMode::Require,
        ..env.config_on(proxy.port)
    })
    .unwrap();
    let e = no_tls.reconcile(&t, Some(&secret)).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("offers no TLS"), "{e}");
    assert_eq!(proxy.requests(), 0);

    verified.delete(&t).await.unwrap();
    env.assert_exists(&t, 0).await;
    let _ = std::fs::remove_dir_all(wrong_ca.parent().unwrap());
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Isolation.

async fn tenants_are_isolated_from_each_other_and_from_the_admin(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let (ta, tb) = (env.tenant("iso-a"), env.tenant("iso-b"));
    let (a, b) = (database_name(&ta.name), database_name(&tb.name));
    let sa = create(&p, &ta).await;
    let sb = create(&p, &tb).await;
    let (pa, pb) = (
        sa.get(KEY_PASSWORD).unwrap().to_string(),
        sb.get(KEY_PASSWORD).unwrap().to_string(),
    );

    // A's credentials on B's database: no CONNECT privilege.
    let Err(e) = connect(srv.port, &a, &pa, &b).await else {
        panic!("A reached B's database");
    };
    assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // And the other way round.
    let e = connect(srv.port, &b, &pb, &a).await.err().unwrap();
    assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // Any other login of the server neither.
    let (probe, probe_pw) = env.probe_role().await;
    let e = connect(srv.port, &probe, &probe_pw, &a)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    // A password opens only its own role.
    for (user, pw) in [(&b, &pa), (&"postgres".to_string(), &pa), (&env.admin, &pa)] {
        let e = connect(srv.port, user, pw, &a).await.err().unwrap();
        assert_eq!(code(&e), Some(SqlState::INVALID_PASSWORD), "{user}: {e}");
    }

    // A in its own database: tables yes, everything above the database no.
    let me = env.login(&sa).await.unwrap();
    me.batch_execute("CREATE TABLE invoices (id int primary key); INSERT INTO invoices VALUES (1)")
        .await
        .unwrap();
    let denied = [
        "SET ROLE postgres".to_string(),
        format!("SET ROLE {}", env.admin),
        format!("SET ROLE {b}"),
        "SET SESSION AUTHORIZATION postgres".to_string(),
        format!("SET SESSION AUTHORIZATION {b}"),
        format!("ALTER ROLE {b} PASSWORD 'taken-over-0123456789'"),
        "ALTER ROLE postgres PASSWORD 'taken-over-0123456789'".to_string(),
        format!("ALTER ROLE {a} SUPERUSER"),
        format!("ALTER ROLE {a} CREATEDB"),
        format!("GRANT {b} TO {a}"),
        format!("GRANT postgres TO {a}"),
        "CREATE ROLE intruder LOGIN".to_string(),
        "CREATE DATABASE intruder".to_string(),
        "COPY invoices TO PROGRAM 'id'".to_string(),
        "SELECT pg_read_file('/etc/passwd')".to_string(),
    ];
    for sql in &denied {
        let e = me
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("tenant A could run: {sql}"));
        assert_eq!(
            code(&e),
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
    }
    // Still plain A afterwards.
    let who: String = me
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, a);

    // B's data is B's: B sees its database empty, A's table does not exist there.
    let them = env.login(&sb).await.unwrap();
    let e = them
        .query("SELECT * FROM invoices", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), Some(SqlState::UNDEFINED_TABLE));

    p.delete(&ta).await.unwrap();
    p.delete(&tb).await.unwrap();
    env.exec(&format!("DROP ROLE {probe}")).await;
    env.assert_exists(&ta, 0).await;
    env.assert_exists(&tb, 0).await;
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Rotation and drift.

async fn a_missing_secret_rotates_the_password(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let t = env.tenant("rot");
    let old = create(&p, &t).await;
    let me = env.login(&old).await.unwrap();
    me.batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('data')")
        .await
        .unwrap();
    drop(me);

    let r = p.reconcile(&t, None).await.unwrap();
    let new = r.secret.expect("rotation issues a new Secret");
    assert_ne!(new.get(KEY_PASSWORD), old.get(KEY_PASSWORD));
    assert!(r.message.contains("credentials issued"));
    let Err(e) = env.login(&old).await else {
        panic!("the old password still works");
    };
    assert_eq!(code(&e), Some(SqlState::INVALID_PASSWORD));
    let me = env.login(&new).await.unwrap();
    let v: String = me
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "data", "rotation keeps the data");
    env.assert_healthy(&t, &new).await;
    env.assert_pass_writes_nothing(&p, &t, &new).await;

    p.delete(&t).await.unwrap();
    env.cleanup().await;
}

/// Names are reused, UIDs are not: a database bound to a deleted (retained) tenant's UID
/// is refused to a new tenant of the same name, credentials included, is not erased by
/// it, and is handed over only to a tenant that adopts exactly that UID.
async fn a_retained_database_is_bound_to_its_tenants_uid(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let old = env.tenant("uid");
    let old_secret = create(&p, &old).await;
    let me = env.login(&old_secret).await.unwrap();
    me.batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('customer A')")
        .await
        .unwrap();
    drop(me);

    // Another customer, same name, no Secret: nothing is written, the old password works.
    let mut newcomer = old.clone();
    newcomer.uid = "11111111-1111-1111-1111-111111111111".into();
    let err = p.reconcile(&newcomer, None).await.unwrap_err();
    assert!(matches!(err, ProviderError::Foreign { .. }), "{err}");
    assert_eq!(err.reason(), "RetainedDataExists");
    assert!(err.to_string().contains(&old.uid), "{err}");
    env.login(&old_secret)
        .await
        .expect("the retained tenant's password was not changed");
    // Adopting some other UID changes nothing either.
    newcomer.annotations.insert(
        "dealerdesk.de/adopt-retained".into(),
        "22222222-2222-2222-2222-222222222222".into(),
    );
    assert!(p.reconcile(&newcomer, None).await.is_err());
    // Its deletion leaves the retained data alone.
    let erased = p.delete(&newcomer).await.unwrap();
    assert!(erased.resources.is_empty(), "{:?}", erased.resources);
    env.login(&old_secret)
        .await
        .expect("the database is still there");

    // Adopting exactly that UID hands it over, data and all, with new credentials.
    newcomer
        .annotations
        .insert("dealerdesk.de/adopt-retained".into(), old.uid.clone());
    let r = p.reconcile(&newcomer, None).await.unwrap();
    let new_secret = r.secret.expect("adoption issues credentials");
    let me = env.login(&new_secret).await.unwrap();
    let v: String = me
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "customer A");
    drop(me);
    // Now bound to the adopter: the old UID is the stranger.
    assert!(p.reconcile(&old, Some(&old_secret)).await.is_err());
    env.assert_pass_writes_nothing(&p, &newcomer, &new_secret)
        .await;

    p.delete(&newcomer).await.unwrap();
    env.cleanup().await;
}

async fn drift_is_repaired_and_then_nothing_is_written(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let t = env.tenant("drift");
    let name = database_name(&t.name);
    let secret = create(&p, &t).await;
    let (probe, probe_pw) = env.probe_role().await;
    let admin = env.admin.clone();

    // Everything the provider watches, drifted at once.
    env.exec(&format!(
        "GRANT ALL ON DATABASE {name} TO PUBLIC;
         GRANT CONNECT ON DATABASE {name} TO {probe};
         ALTER ROLE {name} SUPERUSER CREATEDB CREATEROLE INHERIT BYPASSRLS VALID UNTIL '2000-01-01';
         GRANT pg_read_all_data TO {name};
         GRANT {name} TO {probe}"
    ))
    .await;
    env.exec_in(
        &name,
        &format!("GRANT CREATE ON SCHEMA public TO PUBLIC; ALTER SCHEMA public OWNER TO {admin}"),
    )
    .await;
    env.exec(&format!("ALTER DATABASE {name} OWNER TO {admin}"))
        .await;
    // The drift is real: the probe gets in and can become the tenant; the tenant cannot.
    let c = connect(srv.port, &probe, &probe_pw, &name).await.unwrap();
    c.batch_execute(&format!("SET ROLE {name}")).await.unwrap();
    drop(c);
    assert_eq!(
        code(&env.login(&secret).await.err().unwrap()),
        Some(SqlState::INVALID_PASSWORD),
        "an expired role cannot log in"
    );

    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none(), "repairs keep the Secret");
    assert!(r.message.contains("repaired"), "{}", r.message);
    env.assert_healthy(&t, &secret).await;
    let e = connect(srv.port, &probe, &probe_pw, &name)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE));
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    // CONNECT revoked from the owner itself comes back.
    env.exec(&format!("REVOKE CONNECT ON DATABASE {name} FROM {name}"))
        .await;
    assert!(env.login(&secret).await.is_err());
    p.reconcile(&t, Some(&secret)).await.unwrap();
    env.assert_healthy(&t, &secret).await;
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    p.delete(&t).await.unwrap();
    env.exec(&format!("DROP ROLE {probe}")).await;
    env.cleanup().await;
}

async fn a_changed_password_is_set_back_from_the_secret(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let t = env.tenant("pw");
    let name = database_name(&t.name);
    let secret = create(&p, &t).await;

    env.exec(&format!(
        "ALTER ROLE {name} PASSWORD 'changed-by-hand-0123456789'"
    ))
    .await;
    assert!(env.login(&secret).await.is_err());
    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none(), "the Secret stays valid");
    assert!(r.message.contains("set password"), "{}", r.message);
    env.assert_healthy(&t, &secret).await;
    env.assert_pass_writes_nothing(&p, &t, &secret).await;

    // A Secret whose password is not one of ours (too weak) is replaced.
    let weak = secret.clone().with(KEY_PASSWORD, "password");
    let r = p.reconcile(&t, Some(&weak)).await.unwrap();
    let new = r.secret.expect("a weak Secret is reissued");
    env.assert_healthy(&t, &new).await;

    p.delete(&t).await.unwrap();
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Crash safety.

/// After a failed pass: at most two more passes reach a healthy tenant whose last pass
/// writes nothing. Returns the final Secret.
async fn converge(
    env: &Env,
    p: &PostgresProvider,
    t: &TenantInfo,
    secret: Option<SecretData>,
) -> SecretData {
    let r = p
        .reconcile(t, secret.as_ref())
        .await
        .unwrap_or_else(|e| panic!("the pass after the crash failed: {e}"));
    let secret = match (r.secret, secret) {
        (Some(new), _) => new,
        (None, Some(old)) => old,
        (None, None) => panic!("no Secret and none issued"),
    };
    env.assert_exists(t, 1).await;
    env.assert_healthy(t, &secret).await;
    env.assert_pass_writes_nothing(p, t, &secret).await;
    secret
}

async fn crash_states_converge_to_one_database_and_one_role(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let p = env.provider();
    let admin = env.admin.clone();
    let t = env.tenant("crash");
    let name = database_name(&t.name);
    let secret = create(&p, &t).await;

    // Role, but no database (crash between CREATE ROLE and CREATE DATABASE).
    env.exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    converge(&env, &p, &t, Some(secret.clone())).await;
    // ... and the same without a Secret.
    env.exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    let secret = converge(&env, &p, &t, None).await;

    // Database, but no role.
    let drop_role =
        format!("REASSIGN OWNED BY {name} TO {admin}; DROP OWNED BY {name}; DROP ROLE {name}");
    env.exec_in(&name, &format!("REASSIGN OWNED BY {name} TO {admin}"))
        .await;
    env.exec(&drop_role).await;
    assert_eq!(
        env.count("SELECT count(*) FROM pg_roles WHERE rolname = $1", &name)
            .await,
        0
    );
    let kept = converge(&env, &p, &t, Some(secret.clone())).await;
    assert_eq!(
        kept, secret,
        "the role comes back with the Secret's password"
    );
    env.exec_in(&name, &format!("REASSIGN OWNED BY {name} TO {admin}"))
        .await;
    env.exec(&drop_role).await;
    let secret = converge(&env, &p, &t, None).await;

    // Role with an unknown password and no Secret (crash after ALTER ROLE .. PASSWORD,
    // before the Secret was written).
    env.exec(&format!(
        "ALTER ROLE {name} PASSWORD 'lost-in-the-crash-0123456789'"
    ))
    .await;
    let new = converge(&env, &p, &t, None).await;
    assert_ne!(new.get(KEY_PASSWORD), secret.get(KEY_PASSWORD));
    assert!(env.login(&secret).await.is_err());

    p.delete(&t).await.unwrap();
    env.assert_exists(&t, 0).await;
    env.cleanup().await;
}

/// (a) The request is not performed; the connection drops.
async fn a_crash_before_any_statement_converges(srv: Server) {
    crash_at_every_request(&srv, Fault::DropBefore, Admin::Super).await;
}

/// (b) The request is performed (committed) but the answer is lost.
async fn a_crash_after_any_statement_converges(srv: Server) {
    crash_at_every_request(&srv, Fault::DropAfter, Admin::Super).await;
}

/// The same with a non-superuser admin, whose passes have more steps (membership in the
/// tenant role, holding the database while schema public changes hands).
async fn a_crash_before_any_statement_converges_with_a_non_superuser_admin(srv: Server) {
    crash_at_every_request(&srv, Fault::DropBefore, Admin::CreateRole).await;
}

async fn a_crash_after_any_statement_converges_with_a_non_superuser_admin(srv: Server) {
    crash_at_every_request(&srv, Fault::DropAfter, Admin::CreateRole).await;
}

/// For each kind of pass (first creation, rotation, deletion) and every request k of it:
/// fail the k-th request, check the pass reports a transient error, then run clean passes
/// and check they converge to exactly one healthy database and role (or none, after
/// deletion) with a working Secret and a last pass that writes nothing.
async fn crash_at_every_request(srv: &Server, fault: Fault, admin: Admin) {
    let env = Env::new(srv, admin).await;
    let proxy = PgProxy::start(srv.port).await;
    let p = postgres::from_config(&env.config_on(proxy.port)).unwrap();
    let f = if fault == Fault::DropBefore { "a" } else { "b" };

    // Clean runs through the proxy count the requests of each kind of pass.
    let t0 = env.tenant(&format!("f0{f}"));
    proxy.reset();
    create(&p, &t0).await;
    let (n_create, create_log) = (proxy.requests(), proxy.log());
    proxy.reset();
    p.reconcile(&t0, None).await.unwrap();
    let (n_rotate, rotate_log) = (proxy.requests(), proxy.log());
    proxy.reset();
    p.delete(&t0).await.unwrap();
    let (n_delete, delete_log) = (proxy.requests(), proxy.log());
    // The faults below land on every statement of these passes, the writes included.
    let has = |log: &[String], what: &str| log.iter().any(|l| l.contains(what));
    let mut creating = vec![
        "CREATE ROLE",
        "CREATE DATABASE",
        "ALTER SCHEMA",
        "REVOKE ALL ON DATABASE",
    ];
    if admin == Admin::CreateRole {
        creating.push("TO CURRENT_USER");
        if srv.target == Target::Pg15 {
            // Before 16 the admin inherits nothing through schema public's owner,
            // pg_database_owner, from a NOINHERIT database owner: it holds the database for
            // the change (and then gives it back, with CONNECT). From 16 on its INHERIT
            // grant in the tenant role suffices.
            creating.extend(["OWNER TO CURRENT_USER", "GRANT CONNECT"]);
        }
    }
    for what in creating {
        assert!(has(&create_log, what), "{what} in {create_log:#?}");
    }
    assert!(has(&rotate_log, "PASSWORD"), "{rotate_log:#?}");
    for what in [
        "NOLOGIN",
        "pg_terminate_backend",
        "DROP DATABASE",
        "DROP OWNED",
        "DROP ROLE",
    ] {
        assert!(has(&delete_log, what), "{what} in {delete_log:#?}");
    }

    // First creation, crashed at every request.
    for k in 1..=n_create {
        let t = env.tenant(&format!("c{k}{f}"));
        proxy.fail(k, fault);
        let e = p.reconcile(&t, None).await.err().unwrap_or_else(|| {
            panic!(
                "{fault:?} at request {k} of {n_create}: the pass succeeded; \
                 baseline {create_log:#?}, this pass {:#?}",
                proxy.log()
            )
        });
        assert!(proxy.fired());
        assert!(e.is_transient(), "{fault:?} at {k}: {e}");
        converge(&env, &p, &t, None).await;
        p.delete(&t).await.unwrap();
        env.assert_exists(&t, 0).await;
    }

    // Rotation (Secret deleted), crashed at every request.
    let t = env.tenant(&format!("r{f}"));
    create(&p, &t).await;
    for k in 1..=n_rotate {
        proxy.fail(k, fault);
        let e = p.reconcile(&t, None).await.err().unwrap_or_else(|| {
            panic!(
                "{fault:?} at request {k} of {n_rotate}: the pass succeeded; \
                 baseline {rotate_log:#?}, this pass {:#?}",
                proxy.log()
            )
        });
        assert!(e.is_transient(), "{e}");
        converge(&env, &p, &t, None).await;
    }
    p.delete(&t).await.unwrap();

    // Deletion, crashed at every request.
    for k in 1..=n_delete {
        let t = env.tenant(&format!("d{k}{f}"));
        create(&p, &t).await;
        proxy.fail(k, fault);
        let e = p.delete(&t).await.err().unwrap_or_else(|| {
            panic!(
                "{fault:?} at request {k} of {n_delete}: the deletion succeeded; \
                 baseline {delete_log:#?}, this pass {:#?}",
                proxy.log()
            )
        });
        assert!(e.is_transient(), "{e}");
        p.delete(&t).await.unwrap();
        env.assert_exists(&t, 0).await;
        assert!(p.delete(&t).await.unwrap().resources.is_empty());
    }
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Errors and residency.

async fn errors_are_classified_and_carry_no_credential(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let t = env.tenant("err");

    // Wrong admin password: permanent, and the password is not in the message.
    let wrong = format!("wrong{}", suffix());
    std::fs::write(&env.password_file, &wrong).unwrap();
    let e = env.provider().reconcile(&t, None).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("28P01"), "{e}");
    assert!(!e.to_string().contains(&wrong) && !format!("{e:?}").contains(&wrong));
    std::fs::write(&env.password_file, &env.admin_password).unwrap();

    // Nothing listening: transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = postgres::from_config(&env.config_on(closed)).unwrap();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(!e.to_string().contains(&env.admin_password));
    assert!(p.delete(&t).await.unwrap_err().is_transient());

    // A server that accepts and never answers: the connect timeout, transient.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = hole.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let p = postgres::from_config(&PostgresConfig {
        connect_timeout_seconds: 1,
        ..env.config_on(hole_port)
    })
    .unwrap();
    let started = std::time::Instant::now();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    accept.abort();

    // Missing admin password: not configured.
    let e = postgres::from_config(&PostgresConfig {
        admin_password_file: None,
        ..env.config()
    })
    .unwrap_err();
    assert_eq!(e.reason(), "NotConfigured");

    // An admin without CREATEROLE: permission denied is permanent.
    let weak = Env::new(&srv, Admin::Powerless).await;
    let e = weak.provider().reconcile(&t, None).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("42501"), "{e}");
    assert!(!e.to_string().contains(&weak.admin_password));
    weak.assert_exists(&t, 0).await;
    weak.cleanup().await;

    // A tenant that owns objects in another database: deletion is blocked, with a way out.
    let p = env.provider();
    let secret = create(&p, &t).await;
    let name = database_name(&t.name);
    let other = format!("other_{}", env.suffix);
    env.exec(&format!("CREATE DATABASE {other}")).await;
    env.exec_in(&other, "GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await;
    let c = connect(srv.port, &name, secret.get(KEY_PASSWORD).unwrap(), &other)
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE left_behind (id int)")
        .await
        .unwrap();
    drop(c);
    let e = p.delete(&t).await.unwrap_err();
    assert_eq!(e.reason(), "DeletionBlocked", "{e}");
    assert!(e.to_string().contains("DROP OWNED BY"), "{e}");
    env.exec_in(&other, &format!("DROP OWNED BY {name}")).await;
    p.delete(&t).await.unwrap();
    env.assert_exists(&t, 0).await;
    env.exec(&format!("DROP DATABASE {other}")).await;
    env.cleanup().await;
}

async fn a_region_outside_the_eu_sends_nothing(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;
    let proxy = PgProxy::start(srv.port).await;
    let t = env.tenant("us");
    let p = postgres::from_config(&PostgresConfig {
        region: "us-central1".into(),
        ..env.config_on(proxy.port)
    })
    .unwrap();
    let e = p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(e.reason(), "ResidencyViolation", "{e}");
    assert_eq!(proxy.connections(), 0, "a connection was opened");
    env.assert_exists(&t, 0).await;

    // The same through the EU region works through the proxy (the check above can fail).
    let p = postgres::from_config(&env.config_on(proxy.port)).unwrap();
    create(&p, &t).await;
    assert!(proxy.connections() > 0);
    p.delete(&t).await.unwrap();
    env.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// Passwords stay out of the server's log and the operator's log.

/// The operator's log (tracing) of every test in this binary. A global subscriber, set
/// before any provider code runs in any test: scoped subscribers miss events when
/// callsites are first hit on other test threads.
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

fn captured_log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        captured
    })
}

async fn passwords_reach_neither_the_server_log_nor_tracing(srv: Server) {
    let env = Env::new(&srv, Admin::Super).await;

    let p = env.provider();
    let t = env.tenant("log");
    let name = database_name(&t.name);
    let first = create(&p, &t).await;
    let second = p.reconcile(&t, None).await.unwrap().secret.unwrap();
    env.exec(&format!(
        "ALTER ROLE {name} PASSWORD 'changed-by-hand-0123456789'"
    ))
    .await;
    p.reconcile(&t, Some(&second)).await.unwrap();
    p.delete(&t).await.unwrap();
    let passwords = [
        first.get(KEY_PASSWORD).unwrap().to_string(),
        second.get(KEY_PASSWORD).unwrap().to_string(),
    ];

    let ours = String::from_utf8(captured_log().0.lock().unwrap().clone()).unwrap();
    assert!(ours.contains(&format!("create role {name}")), "{ours}");
    assert!(
        ours.contains(&format!("set password of role {name}")),
        "{ours}"
    );
    assert!(ours.contains(&format!("drop role {name}")), "{ours}");
    for pw in &passwords {
        assert!(
            !ours.contains(pw.as_str()),
            "a password in the operator's log"
        );
    }
    assert!(
        !ours.contains("SCRAM-SHA-256$"),
        "a verifier in the operator's log"
    );

    // The test server logs every statement (.ci/start-postgres): the provider's appear,
    // the passwords do not.
    let row = env
        .su
        .query_one(
            "SELECT pg_current_logfile(), current_setting('log_statement')",
            &[],
        )
        .await
        .unwrap();
    let (file, level): (Option<String>, String) = (row.get(0), row.get(1));
    match file {
        Some(file) if level == "all" => {
            let log: String = env
                .su
                .query_one("SELECT pg_read_file($1)", &[&file])
                .await
                .unwrap()
                .get(0);
            assert!(log.contains(&format!("CREATE ROLE \"{name}\"")));
            assert!(log.contains(&format!("ALTER ROLE \"{name}\" PASSWORD 'SCRAM-SHA-256$")));
            for pw in &passwords {
                assert!(!log.contains(pw.as_str()), "a password in the server log");
            }
        }
        _ => eprintln!(
            "NOTICE: the server does not log statements to a file (not started by \
             .ci/start-postgres?); server-log check skipped"
        ),
    }
    env.cleanup().await;
}
