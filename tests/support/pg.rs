//! The real PostgreSQL test server that `.ci/start-postgres` runs on 127.0.0.1 (port
//! `DEALERTENANT_TEST_PG_PORT`, default 55432; superuser password
//! `DEALERTENANT_TEST_PG_PASSWORD`, default `operator-test-admin`).

use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// Where the test server listens and its superuser password.
#[derive(Clone)]
pub struct PgServer {
    pub port: u16,
    pub password: String,
}

/// The test server, or `None` (after a SKIP notice) when it is not reachable and `CI` is
/// not set; with `CI` set an unreachable server fails the test.
pub async fn server() -> Option<PgServer> {
    let port = std::env::var("DEALERTENANT_TEST_PG_PORT")
        .ok()
        .map(|p| {
            p.parse()
                .expect("DEALERTENANT_TEST_PG_PORT is a port number")
        })
        .unwrap_or(55432);
    let password = std::env::var("DEALERTENANT_TEST_PG_PASSWORD")
        .unwrap_or_else(|_| "operator-test-admin".to_string());
    match connect(port, "postgres", &password, "postgres").await {
        Ok(_) => Some(PgServer { port, password }),
        Err(e) if e.as_db_error().is_none() => {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            let notice = format!(
                "PostgreSQL test server not reachable on 127.0.0.1:{port} ({e}{cause}); \
                 start it with .ci/start-postgres"
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
