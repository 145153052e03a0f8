//! The PostgreSQL side of the Cloud SQL double: every instance of the double is served by
//! the real PostgreSQL 17 test server (`.ci/start-postgres-17`, see `pg.rs`), so what the
//! Admin API does to users and databases is done to real roles and databases there, and
//! the operator's SQL goes to a real server (`sqlEndpoint` in its configuration).
//!
//! Cloud SQL's documented behaviour ("About PostgreSQL users and roles",
//! <https://cloud.google.com/sql/docs/postgres/users>; "Create and manage users",
//! <https://cloud.google.com/sql/docs/postgres/create-manage-users>):
//! - a user made with `users.insert` (a built-in user) "is granted the `cloudsqlsuperuser`
//!   role" and has the `CREATEROLE`, `CREATEDB` and `LOGIN` attributes; it is not a
//!   superuser. The double creates `cloudsqlsuperuser` (`NOLOGIN CREATEROLE CREATEDB`) when
//!   the server lacks it, and each built-in user as `LOGIN CREATEROLE CREATEDB IN ROLE
//!   cloudsqlsuperuser`;
//! - `users.update` sets the password, `users.delete` drops the role;
//! - a database made with `databases.insert` belongs to `cloudsqlsuperuser`;
//! - deleting an instance deletes everything in it.
//!
//! One server stands in for every instance, so the double keeps apart what instances of
//! the same test share by name: a built-in user is dropped only when no instance of the
//! double still has it, and the tenant's role and database (named `dt_<tenant>` after the
//! instance's `tenant` label, and the role `dt_<tenant>_next`) go with the instance. Doubles of one test process take turns
//! ([`PgSide::exclusive`]): tests reuse tenant names, and two instances of one name would be
//! one role on the shared server.

use std::sync::{Arc, OnceLock};

use tokio_postgres::Client;

use super::pg;

/// The group role of Cloud SQL's built-in users.
pub const CLOUDSQLSUPERUSER: &str = "cloudsqlsuperuser";

/// One change the Admin API made that the server must see.
#[derive(Clone, Debug)]
pub enum SqlAction {
    /// `users.insert`: a built-in user (or a new password when another instance of the
    /// double already has a user of that name).
    CreateUser { name: String, password: String },
    /// `users.update`.
    SetPassword { name: String, password: String },
    /// `users.delete` (only when no other instance has the user): `DROP ROLE`, which the
    /// server refuses while the role owns anything or holds privileges.
    DeleteUser { name: String },
    /// `databases.insert`.
    CreateDatabase { name: String },
    /// The instance is gone: its tenant's database and role, and its built-in users no
    /// other instance has.
    DropInstance {
        tenant: Option<String>,
        users: Vec<String>,
    },
}

/// The server behind the double.
#[derive(Clone)]
pub struct PgSide {
    pub server: pg::PgServer,
}

fn turn() -> Arc<tokio::sync::Mutex<()>> {
    static TURN: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    TURN.get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
        .clone()
}

/// A plain identifier (what the double accepts as a user or database name).
fn ident(name: &str) -> Option<&str> {
    (!name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'))
    .then_some(name)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The password as the server stores it (a SCRAM-SHA-256 verifier): never in plain text in
/// a statement, which tokio-postgres logs at DEBUG (the secret-hygiene test captures it).
fn verifier(password: &str) -> String {
    literal(&postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

impl PgSide {
    /// The test server of `target` (PostgreSQL 17 unless a test asks for 15); panics (with
    /// how to start it) when it is not running: the Cloud SQL suites need it.
    pub async fn start(target: pg::Target) -> Self {
        let server = pg::server_at(target).await.unwrap_or_else(|| {
            panic!(
                "the Cloud SQL double needs the PostgreSQL {} test server (.ci/start-postgres*)",
                target.major()
            )
        });
        let side = Self { server };
        side.superuser()
            .await
            .batch_execute(&format!(
                "DO $$BEGIN CREATE ROLE {CLOUDSQLSUPERUSER} NOLOGIN CREATEROLE CREATEDB;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$"
            ))
            .await
            .expect("create cloudsqlsuperuser");
        side
    }

    /// Waits until no other double of this process uses the server.
    pub async fn exclusive() -> tokio::sync::OwnedMutexGuard<()> {
        turn().lock_owned().await
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    pub async fn superuser(&self) -> Client {
        self.connect("postgres", &self.server.password, "postgres")
            .await
            .expect("superuser login to the PostgreSQL 17 test server")
    }

    /// A session as `user` (plain: the test server lets every role but the TLS-only ones
    /// in without TLS).
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        pg::connect(self.server.port, user, password, db).await
    }

    /// Whether the server has a role `name`.
    pub async fn role_exists(&self, name: &str) -> bool {
        self.superuser()
            .await
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .expect("read pg_roles")
            .is_some()
    }

    /// Applies `actions` in order. Failures panic: the double's server must follow.
    pub async fn apply(&self, actions: Vec<SqlAction>) {
        if actions.is_empty() {
            return;
        }
        let su = self.superuser().await;
        for a in actions {
            let sql = match &a {
                SqlAction::CreateUser { name, password } => ident(name).map(|n| {
                    format!(
                        "DO $$BEGIN CREATE ROLE {n} LOGIN CREATEROLE CREATEDB IN ROLE {CLOUDSQLSUPERUSER};
                         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$;
                         ALTER ROLE {n} PASSWORD {}",
                        verifier(password)
                    )
                }),
                SqlAction::SetPassword { name, password } => {
                    ident(name).map(|n| format!("ALTER ROLE {n} PASSWORD {}", verifier(password)))
                }
                SqlAction::DeleteUser { name } => ident(name).map(|n| {
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {};
                         DROP ROLE IF EXISTS {n}",
                        literal(n)
                    )
                }),
                SqlAction::CreateDatabase { name } => ident(name).map(|n| {
                    format!("CREATE DATABASE {n} OWNER {CLOUDSQLSUPERUSER} TEMPLATE template0")
                }),
                SqlAction::DropInstance { tenant, users } => {
                    let mut sql = String::new();
                    if let Some(t) = tenant {
                        let db = format!("dt_{}", t.replace('-', "_"));
                        if let Some(db) = ident(&db) {
                            sql.push_str(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE);"));
                            sql.push_str(&drop_role(db));
                            // The successor the operator makes while it replaces a
                            // built-in tenant user.
                            sql.push_str(&drop_role(&format!("{db}_next")));
                        }
                    }
                    for u in users.iter().filter_map(|u| ident(u)) {
                        sql.push_str(&drop_role(u));
                    }
                    Some(sql)
                }
            };
            let Some(sql) = sql else { continue };
            for stmt in split(&sql) {
                su.batch_execute(&stmt)
                    .await
                    .unwrap_or_else(|e| panic!("double's server: {a:?}: {e}"));
            }
        }
    }

    /// Drops what `actions` describe without the async context of a test (from `Drop`).
    pub fn apply_blocking(&self, actions: Vec<SqlAction>) {
        let side = self.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(side.apply(actions));
        })
        .join();
    }
}

/// Ends the role's sessions, drops what it owns and its privileges in `postgres`, then the
/// role; nothing when it does not exist.
fn drop_role(n: &str) -> String {
    format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {l};
         DO $$BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {l}) THEN
           EXECUTE 'DROP OWNED BY {n}'; END IF; END$$;
         DROP ROLE IF EXISTS {n};",
        l = literal(n)
    )
}

/// The statements of `sql`, split at `;` outside `$$` quotes (`CREATE DATABASE` and `DROP
/// DATABASE` cannot run in the implicit transaction of a multi-statement string).
fn split(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in sql.split_inclusive(';') {
        cur.push_str(part);
        if cur.matches("$$").count() % 2 == 1 {
            continue;
        }
        let s = cur.trim().trim_end_matches(';').trim().to_string();
        if !s.is_empty() {
            out.push(s);
        }
        cur.clear();
    }
    let s = cur.trim().trim_end_matches(';').trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}
