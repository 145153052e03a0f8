//! Moving a tenant off the built-in user an earlier version made for it.
//!
//! A built-in user is a member of `cloudsqlsuperuser` with `CREATEROLE` and `CREATEDB`. On
//! PostgreSQL 15 the `postgres` provider's repairs take that away (`REVOKE`, `ALTER ROLE`).
//! From 16 on PostgreSQL refuses both for a role the admin did not create (it holds no
//! `ADMIN OPTION` on it), so the tenant's login `L` is replaced by a successor `L_next`
//! made over SQL, in steps that each leave a state the next pass recognises:
//! 1. the admin creates `L_next` (`LOGIN` only, the tenant's password as a SCRAM
//!    verifier) and lets itself and `L` act as it;
//! 2. as `L` (the tenant's password): `REASSIGN OWNED BY L TO L_next` and `DROP OWNED BY L`
//!    in the tenant's database and in `postgres`;
//! 3. the admin takes `L_next` from `L` again (`REVOKE`);
//! 4. Cloud SQL deletes `L` (`users.delete`);
//! 5. the admin renames `L_next` to `L`.
//!
//! The application keeps its Secret: the successor gets the same password. Its sessions
//! as the old `L` lose their tables at step 3 and end at step 4; it logs in again (as the
//! renamed role) once step 5 is done, normally in the same pass.

use crate::providers::ProviderError;
use crate::providers::database::postgres::{PostgresProvider, Probe};

use super::client::CloudSqlProvider;
use super::errors::{SERVICE, operation_done, running};
use super::role::CLOUDSQLSUPERUSER;

/// Where the migration of a tenant stands after this pass's steps.
pub(super) enum Migration {
    /// Nothing (more) to do: the tenant's login is a role made over SQL (or, on 15, one the
    /// repairs lower).
    Done,
    /// A step waits for Cloud SQL.
    Waiting(String),
    /// It cannot go on: the message says why and what to do.
    Blocked(String),
}

/// The successor's name: `<name>_next` (the tenant names are at most 43 characters).
pub(super) fn successor(name: &str) -> String {
    format!("{name}_next")
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl CloudSqlProvider {
    /// Takes the migration of tenant role `name` (database `db`, as `probe` shows the role)
    /// as far as it goes in this pass. `password` is the tenant's, from its Secret.
    pub(super) async fn migrate(
        &self,
        sql: &PostgresProvider,
        inst: &str,
        name: &str,
        password: Option<&str>,
        probe: &Probe,
    ) -> Result<Migration, ProviderError> {
        let plain = |n: &str| {
            n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        };
        if !plain(name) {
            return Ok(Migration::Blocked(format!(
                "role {name}: not a plain identifier"
            )));
        }
        let next = successor(name);
        let refused = || ProviderError::Unavailable {
            service: SERVICE,
            message: format!("instance {inst} refused the operator's user; retried next pass"),
        };
        let built_in = probe
            .member_of
            .as_ref()
            .is_some_and(|m| m.iter().any(|g| g == CLOUDSQLSUPERUSER));
        if !built_in && probe.member_of.is_some() {
            return Ok(Migration::Done);
        }
        let next_exists = sql
            .probe(&next)
            .await?
            .ok_or_else(refused)?
            .member_of
            .is_some();
        if !built_in && !next_exists {
            return Ok(Migration::Done);
        }
        if built_in {
            if probe.version_num < 160000 && !next_exists {
                return Ok(Migration::Done);
            }
            let Some(password) = password else {
                return Ok(Migration::Blocked(format!(
                    "user {name} on instance {inst} is a built-in Cloud SQL user made by an \
                     earlier version of the operator: a member of {CLOUDSQLSUPERUSER} \
                     (CREATEROLE, CREATEDB), so the application's credential can administer \
                     the instance. The operator replaces it with a role made over SQL, which \
                     needs the tenant's current password: the database Secret has none. Set \
                     one (gcloud sql users set-password {name} --instance {inst}) and put it \
                     into the Secret as DATABASE_PASSWORD"
                )));
            };
            if let Some(waiting) = self.wait_for_operations(inst).await? {
                return Ok(waiting);
            }
            tracing::info!(instance = %inst, role = %name, "replacing a built-in tenant user");
            self.replace_owner(sql, name, &next, password, next_exists)
                .await?;
            // 4. Cloud SQL deletes the built-in user.
            let what = format!("delete the built-in user {name} on instance {inst}");
            if let Some(op) = self.delete_user(inst, name, &what).await?
                && !operation_done(&what, &op)?
            {
                return Ok(Migration::Waiting(format!(
                    "the built-in user {name} is being replaced by a role made over SQL on \
                     instance {inst} (operation {})",
                    op.name
                )));
            }
        } else if let Some(waiting) = self.wait_for_operations(inst).await? {
            // `name` is gone and its successor waits for the name; the delete may still
            // run.
            return Ok(waiting);
        }
        // 5. The successor takes the name.
        sql.execute(
            "postgres",
            None,
            &[(
                format!("ALTER ROLE {next} RENAME TO {name}"),
                format!("rename role {next} to {name}"),
            )],
            &[],
        )
        .await?;
        tracing::info!(instance = %inst, role = %name, "built-in tenant user replaced");
        Ok(Migration::Done)
    }

    /// Steps 1 to 3: the successor, and the tenant's objects moved to it.
    async fn replace_owner(
        &self,
        sql: &PostgresProvider,
        name: &str,
        next: &str,
        password: &str,
        next_exists: bool,
    ) -> Result<(), ProviderError> {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let mut first = Vec::new();
        if !next_exists {
            first.push((
                format!(
                    "CREATE ROLE {next} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
                     NOREPLICATION NOBYPASSRLS VALID UNTIL 'infinity' PASSWORD {}",
                    literal(&verifier)
                ),
                format!("create role {next}"),
            ));
        }
        first.push((
            format!("GRANT {next} TO CURRENT_USER WITH INHERIT TRUE, SET TRUE"),
            format!("make the admin a member of role {next}"),
        ));
        first.push((
            format!("GRANT {next} TO {name} WITH INHERIT TRUE, SET TRUE"),
            format!("let {name} hand its objects to {next}"),
        ));
        sql.execute("postgres", None, &first, &[password, &verifier])
            .await?;
        let hand_over = [
            (
                format!("REASSIGN OWNED BY {name} TO {next}"),
                format!("hand the objects of {name} to {next}"),
            ),
            (
                format!("DROP OWNED BY {name}"),
                format!("drop the privileges left to {name}"),
            ),
        ];
        for db in [name, "postgres"] {
            sql.execute(db, Some((name, password)), &hand_over, &[password])
                .await?;
        }
        sql.execute(
            "postgres",
            None,
            &[(
                format!("REVOKE {next} FROM {name}"),
                format!("take role {next} from {name}"),
            )],
            &[],
        )
        .await
    }

    /// `Some` while an operation runs on `inst` (Cloud SQL runs one at a time).
    async fn wait_for_operations(&self, inst: &str) -> Result<Option<Migration>, ProviderError> {
        let ops = self.list_operations(inst).await?;
        Ok(running(&ops).map(|op| {
            Migration::Waiting(format!(
                "waiting for operation {} ({}) on instance {inst}",
                op.name,
                op.operation_type.name().unwrap_or("UNKNOWN")
            ))
        }))
    }
}
