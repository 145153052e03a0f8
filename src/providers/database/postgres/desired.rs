//! The desired state of a tenant's role, database and schema `public`, as observed state
//! and the statements that repair it (pure: no I/O).

use std::fmt;

use super::errors::refused;
use crate::providers::ProviderError;

/// The server's `server_version_num` (e.g. 170004), and what it changes for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version(pub(super) i32);

impl Version {
    /// PostgreSQL 16 gave each membership grant its own `INHERIT` and `SET` options (GRANT
    /// .. WITH INHERIT TRUE, SET TRUE) and a CREATEROLE admin only `ADMIN OPTION`, without
    /// either, in the roles it creates (PostgreSQL 16 release notes; "Role Membership",
    /// <https://www.postgresql.org/docs/16/role-membership.html>).
    pub(super) fn has_membership_options(self) -> bool {
        self.0 >= 160000
    }

    /// SQL over role `r`: whether the admin (`current_user`) holds the membership it needs.
    /// 16+: the role's privileges (`USAGE`: drop what it owns, end its sessions) and `SET`
    /// (make it a database's owner); `MEMBER` would already be true with the bare `ADMIN
    /// OPTION` grant. Before 16: `MEMBER` (the `SET` mode does not exist; membership is
    /// everything, inheritance the admin's own `INHERIT` attribute).
    pub(super) fn admin_membership_sql(self) -> &'static str {
        if self.has_membership_options() {
            "(pg_has_role(current_user, r.oid, 'USAGE') AND pg_has_role(current_user, r.oid, 'SET'))"
        } else {
            "pg_has_role(current_user, r.oid, 'MEMBER')"
        }
    }
}

/// A tenant role as `pg_roles` and `pg_auth_members` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RoleState {
    pub(super) oid: u32,
    pub(super) can_login: bool,
    pub(super) superuser: bool,
    pub(super) createdb: bool,
    pub(super) createrole: bool,
    pub(super) inherit: bool,
    pub(super) replication: bool,
    pub(super) bypassrls: bool,
    /// No `VALID UNTIL`, or `infinity`.
    pub(super) valid_forever: bool,
    /// Roles it is a member of (it should be a member of none).
    pub(super) member_of: Vec<String>,
    /// Roles that are members of it, apart from the admin (there should be none).
    pub(super) members: Vec<String>,
    /// Whether the admin login is a member (always true for a superuser).
    pub(super) admin_is_member: bool,
}

impl RoleState {
    /// A role exactly as this provider creates it.
    #[cfg(test)]
    fn healthy(oid: u32) -> Self {
        Self {
            oid,
            can_login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            inherit: false,
            replication: false,
            bypassrls: false,
            valid_forever: true,
            member_of: vec![],
            members: vec![],
            admin_is_member: true,
        }
    }
}

/// A tenant database as `pg_database` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DatabaseState {
    pub(super) oid: u32,
    pub(super) owner: String,
    /// Every grantee in the ACL (with the default ACL when it is NULL); `PUBLIC` for 0.
    pub(super) grantees: Vec<String>,
    /// Grantees holding `CONNECT`.
    pub(super) connect_grantees: Vec<String>,
    /// `COMMENT ON DATABASE`: `dealerdesk.de/tenant-uid=<uid>` of the tenant it is for.
    pub(super) comment: Option<String>,
}

/// The comment that binds a database to the tenant with UID `uid`.
pub(super) fn owner_comment(uid: &str) -> String {
    format!("{UID_COMMENT_PREFIX}{uid}")
}

/// The tenant UID a database's comment names, if any.
pub(super) fn owner_of(db: &DatabaseState) -> Option<&str> {
    db.comment
        .as_deref()
        .and_then(|c| c.strip_prefix(UID_COMMENT_PREFIX))
        .filter(|u| !u.is_empty())
}

pub(super) const UID_COMMENT_PREFIX: &str = "dealerdesk.de/tenant-uid=";

pub(super) fn comment_database(role_ident: &str, name: &str, uid: &str) -> Statement {
    Statement::plain(
        format!(
            "COMMENT ON DATABASE {role_ident} IS {}",
            literal(&owner_comment(uid))
        ),
        format!("bind database {name} to its tenant's UID"),
    )
}

/// Schema `public` inside the tenant database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SchemaState {
    pub(super) owner: String,
    pub(super) public_can_create: bool,
    /// Whether the admin has the owner's rights (may change it).
    pub(super) admin_owns: bool,
}

/// One write statement with a description for logs and errors (never holding a secret) and
/// the secrets it carries (scrubbed from any error message).
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) what: String,
    pub(super) secrets: Vec<String>,
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The SQL is shown only when it carries no secret.
        let sql = if self.secrets.is_empty() {
            self.sql.as_str()
        } else {
            "<carries a password verifier>"
        };
        f.debug_struct("Statement")
            .field("what", &self.what)
            .field("sql", &sql)
            .finish()
    }
}

impl Statement {
    pub(super) fn plain(sql: String, what: String) -> Self {
        Self {
            sql,
            what,
            secrets: Vec::new(),
        }
    }
}

/// The admin's membership in a tenant role: from PostgreSQL 16 on with `INHERIT` (to
/// act with the role's privileges: drop what it owns, end its sessions) and `SET` (to make
/// it a database's owner), which a CREATEROLE admin does not get with the `ADMIN OPTION`
/// grant PostgreSQL 16+ gives it in the roles it creates. (A second grant, by the admin
/// itself; the server keeps one per grantor.) Before 16 membership has no options: the
/// admin's own `INHERIT` attribute makes it inherit.
pub(super) fn grant_role_to_admin(role_ident: &str, name: &str, version: Version) -> Statement {
    let options = if version.has_membership_options() {
        " WITH INHERIT TRUE, SET TRUE"
    } else {
        ""
    };
    Statement::plain(
        format!("GRANT {role_ident} TO CURRENT_USER{options}"),
        format!("make the admin a member of role {name}"),
    )
}

/// The admin takes the database for a moment (see `reconcile`, step 3).
pub(super) fn take_database(role_ident: &str, name: &str) -> Statement {
    Statement::plain(
        format!("ALTER DATABASE {role_ident} OWNER TO CURRENT_USER"),
        format!("let the admin hold database {name} to change its schema public"),
    )
}

pub(super) fn create_database(role_ident: &str, name: &str) -> Statement {
    Statement::plain(
        format!(
            "CREATE DATABASE {role_ident} OWNER {role_ident} TEMPLATE template0 ENCODING 'UTF8'"
        ),
        format!("create database {name}"),
    )
}

/// Statements that bring a drifted role back; only the drifted attributes are named (a
/// non-superuser admin may not even mention SUPERUSER or REPLICATION).
pub(super) fn role_repairs(role_ident: &str, name: &str, r: &RoleState) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut attrs: Vec<&str> = Vec::new();
    for (drifted, fix) in [
        (!r.can_login, "LOGIN"),
        (r.superuser, "NOSUPERUSER"),
        (r.createdb, "NOCREATEDB"),
        (r.createrole, "NOCREATEROLE"),
        (r.inherit, "NOINHERIT"),
        (r.replication, "NOREPLICATION"),
        (r.bypassrls, "NOBYPASSRLS"),
    ] {
        if drifted {
            attrs.push(fix);
        }
    }
    if !r.valid_forever {
        attrs.push("VALID UNTIL 'infinity'");
    }
    if !attrs.is_empty() {
        out.push(Statement::plain(
            format!("ALTER ROLE {role_ident} {}", attrs.join(" ")),
            format!("reset attributes of role {name} ({})", attrs.join(" ")),
        ));
    }
    for g in &r.member_of {
        out.push(Statement::plain(
            format!("REVOKE {} FROM {role_ident}", quote_ident(g)),
            format!("revoke membership of role {name} in {g}"),
        ));
    }
    for m in &r.members {
        out.push(Statement::plain(
            format!("REVOKE {role_ident} FROM {}", quote_ident(m)),
            format!("revoke membership of {m} in role {name}"),
        ));
    }
    out
}

/// Statements that make the database owned by the role, closed to everyone else, and open
/// to the role.
pub(super) fn database_repairs(role_ident: &str, name: &str, d: &DatabaseState) -> Vec<Statement> {
    let mut out = Vec::new();
    let owner_drifted = d.owner != name;
    if owner_drifted {
        out.push(Statement::plain(
            format!("ALTER DATABASE {role_ident} OWNER TO {role_ident}"),
            format!("give database {name} back to role {name} (was {})", d.owner),
        ));
    }
    // After an owner change the old owner's entries belong to the new owner.
    for g in d.grantees.iter().filter(|g| *g != name && **g != d.owner) {
        let grantee = if g == "PUBLIC" {
            "PUBLIC".to_string()
        } else {
            quote_ident(g)
        };
        out.push(Statement::plain(
            format!("REVOKE ALL ON DATABASE {role_ident} FROM {grantee}"),
            format!("revoke privileges on database {name} from {g}"),
        ));
    }
    // (An owner change moves the old owner's CONNECT, if it had one; grant anyway then.)
    if owner_drifted || !d.connect_grantees.iter().any(|g| g == name) {
        out.push(Statement::plain(
            format!("GRANT CONNECT ON DATABASE {role_ident} TO {role_ident}"),
            format!("grant connect on database {name} to role {name}"),
        ));
    }
    out
}

/// Statements for schema `public` in the tenant database.
pub(super) fn schema_repairs(role_ident: &str, name: &str, s: &SchemaState) -> Vec<Statement> {
    let mut out = Vec::new();
    if s.owner != name {
        out.push(Statement::plain(
            format!("ALTER SCHEMA public OWNER TO {role_ident}"),
            format!(
                "give schema public in {name} to role {name} (was {})",
                s.owner
            ),
        ));
    }
    if s.public_can_create {
        out.push(Statement::plain(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string(),
            format!("revoke create on schema public in {name} from PUBLIC"),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Quoting.

/// A tenant identifier, validated (`[a-z_][a-z0-9_]*`, at most 63 bytes) and quoted.
pub(super) fn ident(name: &str) -> Result<String, ProviderError> {
    let mut chars = name.chars();
    let plain = matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63;
    if plain {
        Ok(quote_ident(name))
    } else {
        Err(refused(&format!(
            "\"{name}\" is not a plain PostgreSQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
        )))
    }
}

/// Any identifier, double-quoted (inner quotes doubled), as PostgreSQL's `quote_ident`.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal (`standard_conforming_strings` is on since PostgreSQL 9.1: only the
/// single quote needs doubling).
pub(super) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::super::database_name;
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        assert_eq!(database_name("acme"), "dt_acme");
        assert_eq!(database_name("auto-haus-2"), "dt_auto_haus_2");
        assert_eq!(ident("dt_auto_haus_2").unwrap(), "\"dt_auto_haus_2\"");
        for bad in [
            "",
            "Dt_x",
            "dt-x",
            "dt x",
            "dt_x\"; DROP",
            "1dt",
            &"a".repeat(64),
        ] {
            assert!(ident(bad).is_err(), "{bad:?} accepted");
            assert!(!ident(bad).unwrap_err().is_transient());
        }
        assert!(ident(&"a".repeat(63)).is_ok());
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn the_admin_membership_depends_on_the_version() {
        let pg15 = Version(150018);
        let pg16 = Version(160000);
        assert_eq!(
            grant_role_to_admin("\"dt_a\"", "dt_a", pg15).sql,
            "GRANT \"dt_a\" TO CURRENT_USER"
        );
        assert_eq!(
            grant_role_to_admin("\"dt_a\"", "dt_a", pg16).sql,
            "GRANT \"dt_a\" TO CURRENT_USER WITH INHERIT TRUE, SET TRUE"
        );
        assert!(pg15.admin_membership_sql().contains("'MEMBER'"));
        let sql = Version(170004).admin_membership_sql();
        assert!(sql.contains("'USAGE'") && sql.contains("'SET'") && !sql.contains("MEMBER"));
    }

    #[test]
    fn healthy_state_needs_no_statement() {
        let role = RoleState::healthy(1);
        assert!(role_repairs("\"dt_a\"", "dt_a", &role).is_empty());
        let db = DatabaseState {
            oid: 2,
            owner: "dt_a".into(),
            grantees: vec!["dt_a".into()],
            connect_grantees: vec!["dt_a".into()],
            comment: None,
        };
        assert!(database_repairs("\"dt_a\"", "dt_a", &db).is_empty());
        let schema = SchemaState {
            owner: "dt_a".into(),
            public_can_create: false,
            admin_owns: true,
        };
        assert!(schema_repairs("\"dt_a\"", "dt_a", &schema).is_empty());
    }

    #[test]
    fn drifted_role_is_repaired_attribute_by_attribute() {
        let role = RoleState {
            can_login: false,
            createdb: true,
            inherit: true,
            valid_forever: false,
            member_of: vec!["pg_read_all_data".into()],
            members: vec!["dt_b".into()],
            ..RoleState::healthy(1)
        };
        let sql: Vec<String> = role_repairs("\"dt_a\"", "dt_a", &role)
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            sql,
            [
                "ALTER ROLE \"dt_a\" LOGIN NOCREATEDB NOINHERIT VALID UNTIL 'infinity'",
                "REVOKE \"pg_read_all_data\" FROM \"dt_a\"",
                "REVOKE \"dt_a\" FROM \"dt_b\"",
            ]
        );
        // Only what drifted: a superuser flag alone gives exactly NOSUPERUSER.
        let su = RoleState {
            superuser: true,
            ..RoleState::healthy(1)
        };
        assert_eq!(
            role_repairs("\"dt_a\"", "dt_a", &su)[0].sql,
            "ALTER ROLE \"dt_a\" NOSUPERUSER"
        );
    }

    #[test]
    fn drifted_database_is_closed_again() {
        // Fresh database: default ACL (PUBLIC has CONNECT and TEMPORARY).
        let fresh = DatabaseState {
            oid: 2,
            owner: "dt_a".into(),
            grantees: vec!["PUBLIC".into(), "dt_a".into()],
            connect_grantees: vec!["PUBLIC".into(), "dt_a".into()],
            comment: None,
        };
        let sql: Vec<String> = database_repairs("\"dt_a\"", "dt_a", &fresh)
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(sql, ["REVOKE ALL ON DATABASE \"dt_a\" FROM PUBLIC"]);

        // Someone else owns it and another tenant was let in.
        let stolen = DatabaseState {
            oid: 2,
            owner: "admin".into(),
            grantees: vec!["admin".into(), "dt_b".into()],
            connect_grantees: vec!["admin".into(), "dt_b".into()],
            comment: None,
        };
        let sql: Vec<String> = database_repairs("\"dt_a\"", "dt_a", &stolen)
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(
            sql,
            [
                "ALTER DATABASE \"dt_a\" OWNER TO \"dt_a\"",
                "REVOKE ALL ON DATABASE \"dt_a\" FROM \"dt_b\"",
                "GRANT CONNECT ON DATABASE \"dt_a\" TO \"dt_a\"",
            ]
        );

        // The owner lost CONNECT.
        let no_connect = DatabaseState {
            oid: 2,
            owner: "dt_a".into(),
            grantees: vec!["dt_a".into()],
            connect_grantees: vec![],
            comment: None,
        };
        assert_eq!(
            database_repairs("\"dt_a\"", "dt_a", &no_connect)[0].sql,
            "GRANT CONNECT ON DATABASE \"dt_a\" TO \"dt_a\""
        );
    }

    #[test]
    fn schema_public_is_given_to_the_role() {
        // PostgreSQL 15's initial state.
        let pg15 = SchemaState {
            owner: "pg_database_owner".into(),
            public_can_create: false,
            admin_owns: true,
        };
        let sql: Vec<String> = schema_repairs("\"dt_a\"", "dt_a", &pg15)
            .into_iter()
            .map(|s| s.sql)
            .collect();
        assert_eq!(sql, ["ALTER SCHEMA public OWNER TO \"dt_a\""]);
        // PostgreSQL 14 and older: PUBLIC may create.
        let pg14 = SchemaState {
            owner: "postgres".into(),
            public_can_create: true,
            admin_owns: true,
        };
        assert_eq!(schema_repairs("\"dt_a\"", "dt_a", &pg14).len(), 2);
    }
}
