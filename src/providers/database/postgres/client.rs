//! The wire: sessions, reads and writes, and the observations of the server's catalogs.

use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Socket};

use super::desired::{DatabaseState, RoleState, SchemaState, Statement, Version};
use super::errors::{Failure, decode, refused};
use super::{APPLICATION_NAME, PostgresProvider};
use crate::processors::ids;
use crate::providers::{ExternalResource, ProviderError};

impl PostgresProvider {
    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.connect_timeout_seconds.max(1))
    }

    /// Client-side limit for one statement: the server's limit plus a margin.
    pub(super) fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.statement_timeout_seconds.max(1) + 5)
    }

    pub(super) fn pg_config(
        &self,
        dbname: &str,
        user: &str,
        password: &str,
    ) -> tokio_postgres::Config {
        let statement_ms = self.cfg.statement_timeout_seconds.max(1) * 1000;
        let lock_ms = (statement_ms / 4).max(1000);
        let mut c = tokio_postgres::Config::new();
        c.host(&self.cfg.host)
            .port(self.cfg.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .application_name(APPLICATION_NAME)
            .ssl_mode(match self.tls {
                Some(_) => SslMode::Require,
                None => SslMode::Disable,
            })
            .connect_timeout(self.connect_timeout())
            .options(format!(
                "-c statement_timeout={statement_ms} -c lock_timeout={lock_ms}"
            ));
        c
    }

    /// Opens a session. The whole login (TCP, startup, authentication) is bounded by the
    /// connect timeout; tokio-postgres itself bounds only the TCP connect.
    pub(super) async fn open(
        &self,
        dbname: &str,
        user: &str,
        password: &str,
    ) -> Result<Client, Failure> {
        let config = self.pg_config(dbname, user, password);
        let connecting = async {
            match &self.tls {
                Some(tls) => connect(&config, tls.clone()).await,
                None => connect(&config, NoTls).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout(), connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(Failure::Pg(e)),
            Err(_) => Err(Failure::Timeout(self.connect_timeout())),
        }
    }

    pub(super) async fn admin_session(&self, dbname: &str) -> Result<Client, ProviderError> {
        self.open(dbname, &self.cfg.admin_user, &self.admin_password)
            .await
            .map_err(|f| {
                f.classify(
                    &format!("connect to database {dbname} as admin"),
                    &[&self.admin_password],
                )
            })
    }

    /// Runs one read with text parameters, in a single round trip (no prepared statement,
    /// so nothing to close afterwards; fine behind a transaction-pooling proxy too).
    pub(super) async fn read(
        &self,
        client: &Client,
        sql: &str,
        params: &[&str],
        what: &str,
    ) -> Result<Vec<Row>, ProviderError> {
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
            .collect();
        match tokio::time::timeout(self.query_timeout(), client.query_typed(sql, &typed)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(Failure::Pg(e).classify(what, &[])),
            Err(_) => Err(Failure::Timeout(self.query_timeout()).classify(what, &[])),
        }
    }

    /// Runs one write statement (simple protocol, autocommit).
    pub(super) async fn write(
        &self,
        client: &Client,
        stmt: &Statement,
    ) -> Result<(), ProviderError> {
        self.try_write(client, stmt).await.map_err(|f| {
            let secrets: Vec<&str> = stmt.secrets.iter().map(String::as_str).collect();
            f.classify(&stmt.what, &secrets)
        })
    }

    pub(super) async fn try_write(&self, client: &Client, stmt: &Statement) -> Result<(), Failure> {
        // `what` never holds a secret; the SQL text is not logged (it may hold a verifier).
        tracing::info!(action = %stmt.what, "PostgreSQL write");
        match tokio::time::timeout(self.query_timeout(), client.batch_execute(&stmt.sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Pg(e)),
            Err(_) => Err(Failure::Timeout(self.query_timeout())),
        }
    }

    pub(super) async fn observe_role(
        &self,
        client: &Client,
        name: &str,
        version: Version,
    ) -> Result<Option<RoleState>, ProviderError> {
        let rows = self
            .read(
                client,
                &role_query(version),
                &[name],
                &format!("read role {name}"),
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(RoleState {
                    oid: r.try_get::<_, u32>(0).map_err(decode)?,
                    can_login: r.try_get(1).map_err(decode)?,
                    superuser: r.try_get(2).map_err(decode)?,
                    createdb: r.try_get(3).map_err(decode)?,
                    createrole: r.try_get(4).map_err(decode)?,
                    inherit: r.try_get(5).map_err(decode)?,
                    replication: r.try_get(6).map_err(decode)?,
                    bypassrls: r.try_get(7).map_err(decode)?,
                    valid_forever: r.try_get(8).map_err(decode)?,
                    member_of: r.try_get(9).map_err(decode)?,
                    members: r.try_get(10).map_err(decode)?,
                    admin_is_member: r.try_get(11).map_err(decode)?,
                })
            })
            .transpose()
    }

    pub(super) async fn observe_database(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<Option<DatabaseState>, ProviderError> {
        let rows = self
            .read(
                client,
                DATABASE_QUERY,
                &[name],
                &format!("read database {name}"),
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(DatabaseState {
                    oid: r.try_get::<_, u32>(0).map_err(decode)?,
                    owner: r.try_get(1).map_err(decode)?,
                    grantees: r.try_get(2).map_err(decode)?,
                    connect_grantees: r.try_get(3).map_err(decode)?,
                    comment: r.try_get(4).map_err(decode)?,
                })
            })
            .transpose()
    }

    pub(super) async fn observe_schema(
        &self,
        client: &Client,
        db: &str,
    ) -> Result<Option<SchemaState>, ProviderError> {
        let rows = self
            .read(
                client,
                SCHEMA_QUERY,
                &[],
                &format!("read schema public in {db}"),
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(SchemaState {
                    owner: r.try_get(0).map_err(decode)?,
                    public_can_create: r.try_get(1).map_err(decode)?,
                    admin_owns: r.try_get(2).map_err(decode)?,
                })
            })
            .transpose()
    }

    /// `server_version_num` (e.g. 150018).
    pub(super) async fn server_version(&self, client: &Client) -> Result<Version, ProviderError> {
        let rows = self
            .read(
                client,
                "SELECT current_setting('server_version_num')::int4",
                &[],
                "read server version",
            )
            .await?;
        rows.first()
            .ok_or_else(|| refused("read server version: no row"))?
            .try_get(0)
            .map(Version)
            .map_err(decode)
    }

    /// Whether the Secret's password logs the tenant in. `Ok(None)` when the server does
    /// not let the operator try (e.g. `pg_hba.conf` admits tenants only from their pods).
    pub(super) async fn password_works(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<bool>, ProviderError> {
        match self.open(name, name, password).await {
            Ok(client) => {
                drop(client);
                Ok(Some(true))
            }
            Err(Failure::Pg(e)) => match e.as_db_error().map(|d| d.code().clone()) {
                Some(code) if code == SqlState::INVALID_PASSWORD => Ok(Some(false)),
                Some(code) if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    tracing::debug!(role = %name, "cannot verify the tenant password from here");
                    Ok(None)
                }
                _ => Err(Failure::Pg(e).classify(&format!("log in as {name}"), &[password])),
            },
            Err(f) => Err(f.classify(&format!("log in as {name}"), &[password])),
        }
    }

    /// What the admin login finds before a pass (the `cloudsql` provider asks this before
    /// it hands the tenant to [`Provider::reconcile`](crate::providers::Provider)):
    /// `Ok(None)` when the server refuses the admin's password (SQLSTATE 28P01), else the
    /// server's version and the roles the role `name` is a member of (`None`: no such role).
    pub async fn probe(&self, name: &str) -> Result<Option<Probe>, ProviderError> {
        let admin = match self
            .open(
                &self.cfg.admin_database,
                &self.cfg.admin_user,
                &self.admin_password,
            )
            .await
        {
            Ok(client) => client,
            Err(Failure::Pg(e))
                if e.as_db_error().map(|d| d.code()) == Some(&SqlState::INVALID_PASSWORD) =>
            {
                return Ok(None);
            }
            Err(f) => {
                return Err(f.classify(
                    &format!("connect to database {} as admin", self.cfg.admin_database),
                    &[&self.admin_password],
                ));
            }
        };
        let version = self.server_version(&admin).await?;
        let rows = self
            .read(
                &admin,
                "SELECT ARRAY(SELECT g.rolname::text FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) \
                 FROM pg_roles r WHERE r.rolname = $1",
                &[name],
                &format!("read memberships of role {name}"),
            )
            .await?;
        let member_of = rows
            .first()
            .map(|r| r.try_get::<_, Vec<String>>(0).map_err(decode))
            .transpose()?;
        Ok(Some(Probe {
            version_num: version.0,
            member_of,
        }))
    }

    /// Runs `statements` in order, in database `db`, as the admin or as `login` (user and
    /// password): for providers that build on this one (the `cloudsql` migration of
    /// built-in users). Each is `(sql, what)`; `what` names it in logs and errors, and every
    /// string of `secrets` is scrubbed from an error.
    pub async fn execute(
        &self,
        db: &str,
        login: Option<(&str, &str)>,
        statements: &[(String, String)],
        secrets: &[&str],
    ) -> Result<(), ProviderError> {
        let (user, password) =
            login.unwrap_or((self.cfg.admin_user.as_str(), self.admin_password.as_str()));
        let mut scrub: Vec<&str> = secrets.to_vec();
        scrub.extend([password, self.admin_password.as_str()]);
        let client = self
            .open(db, user, password)
            .await
            .map_err(|f| f.classify(&format!("connect to database {db} as {user}"), &scrub))?;
        for (sql, what) in statements {
            let stmt = Statement {
                sql: sql.clone(),
                what: what.clone(),
                secrets: scrub.iter().map(|s| s.to_string()).collect(),
            };
            self.try_write(&client, &stmt)
                .await
                .map_err(|f| f.classify(what, &scrub))?;
        }
        Ok(())
    }

    pub(super) fn resource(&self, kind: &str, name: &str, oid: u32) -> ExternalResource {
        ExternalResource::new(kind, name, Some(self.cfg.region.clone()), ids::GOOGLE_CLOUD)
            .with_id(oid.to_string())
    }
}

/// What [`PostgresProvider::probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `server_version_num`, e.g. 170004.
    pub version_num: i32,
    /// The roles the asked-for role is a member of; `None`: there is no such role.
    pub member_of: Option<Vec<String>>,
}

/// Connects and runs the session's connection in the background.
async fn connect<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // The error's Display is its kind and the server's message; no statement.
            tracing::debug!(error = %e, "PostgreSQL session ended with an error");
        }
    });
    Ok(client)
}

/// The role query; what the admin needs of the role depends on the server's version (see
/// [`Version::admin_membership_sql`]).
fn role_query(version: Version) -> String {
    format!(
        "\
SELECT r.oid, r.rolcanlogin, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolinherit,
       r.rolreplication, r.rolbypassrls,
       (r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity') AS valid_forever,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       ARRAY(SELECT DISTINCT u.rolname::text FROM pg_auth_members m
             JOIN pg_roles u ON u.oid = m.member
             WHERE m.roleid = r.oid AND u.rolname <> current_user ORDER BY 1) AS members,
       {} AS admin_is_member
FROM pg_roles r WHERE r.rolname = $1",
        version.admin_membership_sql()
    )
}

pub(super) const DATABASE_QUERY: &str = "\
SELECT d.oid, o.rolname::text AS owner,
       ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                  ELSE coalesce(g.rolname::text, a.grantee::text) END
             FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
             LEFT JOIN pg_roles g ON g.oid = a.grantee ORDER BY 1) AS grantees,
       ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                  ELSE coalesce(g.rolname::text, a.grantee::text) END
             FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
             LEFT JOIN pg_roles g ON g.oid = a.grantee
             WHERE a.privilege_type = 'CONNECT' ORDER BY 1) AS connect_grantees,
       shobj_description(d.oid, 'pg_database') AS comment
FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba WHERE d.datname = $1";

pub(super) const SCHEMA_QUERY: &str = "\
SELECT o.rolname::text AS owner,
       EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'CREATE') AS public_can_create,
       pg_has_role(current_user, n.nspowner, 'USAGE') AS admin_owns
FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner WHERE n.nspname = 'public'";
