//! The real PostgreSQL test servers on 127.0.0.1: version 15 from `.ci/start-postgres` (port
//! `DEALERTENANT_TEST_PG_PORT`, default 55432, directory `DEALERTENANT_TEST_PG_DIR`, default
//! `/tmp/dealertenant-pg`) and version 17 from `.ci/start-postgres-17` (port
//! `DEALERTENANT_TEST_PG17_PORT`, default 55433, directory `DEALERTENANT_TEST_PG17_DIR`,
//! default `/tmp/dealertenant-pg17`). Both: superuser password
//! `DEALERTENANT_TEST_PG_PASSWORD`, default `operator-test-admin`; TLS on with the CA at
//! `<directory>/tls/ca.crt`; plain connections allowed except for members of the role
//! [`TLS_ONLY_ROLE`] (see `.ci/pg-tls`).

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// Members of this role may log in to the test servers only over TLS (pg_hba.conf
/// `hostnossl ... reject`): a server that refuses plain connections, for them.
pub const TLS_ONLY_ROLE: &str = "dealertenant_tls_only";

/// Which test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// PostgreSQL 15 (`.ci/start-postgres`).
    Pg15,
    /// PostgreSQL 17 (`.ci/start-postgres-17`): role membership as changed in 16.
    Pg17,
}

impl Target {
    fn port(self) -> u16 {
        let (var, default) = match self {
            Target::Pg15 => ("DEALERTENANT_TEST_PG_PORT", 55432),
            Target::Pg17 => ("DEALERTENANT_TEST_PG17_PORT", 55433),
        };
        std::env::var(var)
            .ok()
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("{var} is a port number"))
            })
            .unwrap_or(default)
    }

    fn dir(self) -> PathBuf {
        let (var, default) = match self {
            Target::Pg15 => ("DEALERTENANT_TEST_PG_DIR", "/tmp/dealertenant-pg"),
            Target::Pg17 => ("DEALERTENANT_TEST_PG17_DIR", "/tmp/dealertenant-pg17"),
        };
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    }

    fn script(self) -> &'static str {
        match self {
            Target::Pg15 => ".ci/start-postgres",
            Target::Pg17 => ".ci/start-postgres-17",
        }
    }

    /// The major version the server must run.
    pub fn major(self) -> i32 {
        match self {
            Target::Pg15 => 15,
            Target::Pg17 => 17,
        }
    }
}

/// Where the test server listens, its superuser password and its TLS CA.
#[derive(Clone)]
pub struct PgServer {
    pub target: Target,
    pub port: u16,
    pub password: String,
    /// The CA certificate that signed the server's certificate (for `verify-full`).
    pub ca_file: PathBuf,
}

/// The PostgreSQL 15 test server (see [`server_at`]).
pub async fn server() -> Option<PgServer> {
    server_at(Target::Pg15).await
}

/// The test server of `target`, or `None` (after a SKIP notice) when it is not reachable
/// and `CI` is not set; with `CI` set an unreachable server fails the test.
pub async fn server_at(target: Target) -> Option<PgServer> {
    let port = target.port();
    let script = target.script();
    let password = std::env::var("DEALERTENANT_TEST_PG_PASSWORD")
        .unwrap_or_else(|_| "operator-test-admin".to_string());
    match connect(port, "postgres", &password, "postgres").await {
        Ok(c) => {
            let version: i32 = c
                .query_one("SELECT current_setting('server_version_num')::int4", &[])
                .await
                .expect("read the server version")
                .get(0);
            assert_eq!(
                version / 10000,
                target.major(),
                "the server on port {port} is not PostgreSQL {} ({script})",
                target.major()
            );
            Some(PgServer {
                target,
                port,
                password,
                ca_file: target.dir().join("tls").join("ca.crt"),
            })
        }
        Err(e) if e.as_db_error().is_none() => {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            let notice = format!(
                "PostgreSQL {} test server not reachable on 127.0.0.1:{port} ({e}{cause}); \
                 start it with {script}",
                target.major()
            );
            if std::env::var_os("CI").is_some() {
                panic!("{notice} (CI is set, so the test fails instead of skipping)");
            }
            eprintln!("SKIP: {notice}");
            None
        }
        Err(e) => panic!("the test server on port {port} refused the superuser login: {e}"),
    }
}

/// A connection to the test server as `user` to database `db`.
pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(SslMode::Disable)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = c.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Makes the server reject every write of `role`'s new sessions (the providers connect per
/// call, so this covers every statement of the next pass), or lifts that again.
pub async fn set_read_only(superuser: &Client, role: &str, on: bool) {
    let sql = if on {
        format!("ALTER ROLE {role} SET default_transaction_read_only = on")
    } else {
        format!("ALTER ROLE {role} RESET default_transaction_read_only")
    };
    superuser.batch_execute(&sql).await.unwrap();
}

/// Makes `role` log in only over TLS (a member of [`TLS_ONLY_ROLE`]; `.ci/pg-tls` creates
/// that role, this does too when it is missing).
pub async fn require_tls_for(superuser: &Client, role: &str) {
    superuser
        .batch_execute(&format!(
            "DO $$BEGIN CREATE ROLE {TLS_ONLY_ROLE} NOLOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$;
             GRANT {TLS_ONLY_ROLE} TO {role}"
        ))
        .await
        .unwrap();
}

/// A certificate authority of its own (openssl), which signed neither test server's
/// certificate: its PEM file in a fresh directory.
pub fn unrelated_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dealertenant-wrong-ca-{}",
        (0..8).map(|_| fastrand::alphanumeric()).collect::<String>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not the test servers' CA"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl: {out:?}");
    dir.join("ca.crt")
}
