//! The tenant's credentials: the password plan of a pass, the SCRAM verifiers the server
//! receives instead of passwords, and the Secret.

use std::fmt;

use super::config::PostgresConfig;
use super::desired::{Statement, literal};
use crate::providers::SecretData;
use crate::providers::secret::random_password;

/// Secret keys.
pub const KEY_HOST: &str = "DATABASE_HOST";
pub const KEY_PORT: &str = "DATABASE_PORT";
pub const KEY_NAME: &str = "DATABASE_NAME";
pub const KEY_USER: &str = "DATABASE_USER";
pub const KEY_PASSWORD: &str = "DATABASE_PASSWORD";

/// What to do about the password on this pass.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct CredentialPlan {
    pub(super) password: String,
    /// Set the password at the server unconditionally (it is new).
    pub(super) rotate: bool,
    /// Return Secret data (new password, or the Secret's other keys are out of date).
    pub(super) issue: bool,
}

impl fmt::Debug for CredentialPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialPlan")
            .field("rotate", &self.rotate)
            .field("issue", &self.issue)
            .finish_non_exhaustive()
    }
}

/// Keeps the Secret's password when it looks like one of ours (32+ letters and digits);
/// otherwise (no Secret, or a malformed one) a new password is generated and set.
pub(super) fn credential_plan(
    secret: Option<&SecretData>,
    cfg: &PostgresConfig,
    name: &str,
) -> CredentialPlan {
    match secret
        .and_then(|s| s.get(KEY_PASSWORD))
        .filter(|p| well_formed_password(p))
    {
        Some(password) => {
            let desired = secret_data(cfg, name, password);
            CredentialPlan {
                password: password.to_string(),
                rotate: false,
                issue: secret != Some(&desired),
            }
        }
        None => CredentialPlan {
            password: random_password(),
            rotate: true,
            issue: true,
        },
    }
}

pub(super) fn well_formed_password(p: &str) -> bool {
    p.len() >= 32 && p.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The tenant's Secret.
pub fn secret_data(cfg: &PostgresConfig, name: &str, password: &str) -> SecretData {
    SecretData::new()
        .with(KEY_HOST, cfg.host.clone())
        .with(KEY_PORT, cfg.port.to_string())
        .with(KEY_NAME, name)
        .with(KEY_USER, name)
        .with(KEY_PASSWORD, password)
}

pub(super) const ROLE_ATTRIBUTES: &str =
    "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS";

/// `CREATE ROLE` with the password as a SCRAM-SHA-256 verifier (never in plain text).
pub(super) fn create_role(role_ident: &str, name: &str, password: &str) -> Statement {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    Statement {
        sql: format!(
            "CREATE ROLE {role_ident} {ROLE_ATTRIBUTES} VALID UNTIL 'infinity' PASSWORD {}",
            literal(&verifier)
        ),
        what: format!("create role {name}"),
        secrets: vec![password.to_string(), verifier],
    }
}

/// `ALTER ROLE .. PASSWORD` with a SCRAM-SHA-256 verifier.
pub(super) fn set_password(role_ident: &str, name: &str, password: &str) -> Statement {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    Statement {
        sql: format!("ALTER ROLE {role_ident} PASSWORD {}", literal(&verifier)),
        what: format!("set password of role {name}"),
        secrets: vec![password.to_string(), verifier],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::database::postgres::config::test_config as cfg;

    #[test]
    fn create_role_sends_a_verifier_not_the_password() {
        let password = random_password();
        let stmt = create_role("\"dt_acme\"", "dt_acme", &password);
        assert!(stmt.sql.starts_with(
            "CREATE ROLE \"dt_acme\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
             NOREPLICATION NOBYPASSRLS VALID UNTIL 'infinity' PASSWORD 'SCRAM-SHA-256$4096:"
        ));
        assert!(!stmt.sql.contains(&password));
        assert!(!stmt.what.contains(&password));
        assert!(stmt.secrets.contains(&password));
        let shown = format!("{stmt:?}");
        assert!(!shown.contains(&password) && !shown.contains("SCRAM-SHA-256$"));

        let alter = set_password("\"dt_acme\"", "dt_acme", &password);
        assert!(
            alter
                .sql
                .starts_with("ALTER ROLE \"dt_acme\" PASSWORD 'SCRAM-SHA-256$")
        );
        assert!(!alter.sql.contains(&password));
        // A fresh salt each time.
        assert_ne!(
            alter.sql,
            set_password("\"dt_acme\"", "dt_acme", &password).sql
        );
    }

    #[test]
    fn secret_has_the_five_keys() {
        let s = secret_data(&cfg(), "dt_acme", "pw");
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [KEY_HOST, KEY_NAME, KEY_PASSWORD, KEY_PORT, KEY_USER]
        );
        assert_eq!(s.get(KEY_HOST), Some("db.internal"));
        assert_eq!(s.get(KEY_PORT), Some("6543"));
        assert_eq!(s.get(KEY_NAME), Some("dt_acme"));
        assert_eq!(s.get(KEY_USER), Some("dt_acme"));
    }

    #[test]
    fn credential_plan_keeps_a_good_secret_and_rotates_otherwise() {
        let c = cfg();
        let none = credential_plan(None, &c, "dt_acme");
        assert!(none.rotate && none.issue && well_formed_password(&none.password));
        assert!(!format!("{none:?}").contains(&none.password));

        let pw = random_password();
        let good = secret_data(&c, "dt_acme", &pw);
        let kept = credential_plan(Some(&good), &c, "dt_acme");
        assert_eq!((kept.rotate, kept.issue), (false, false));
        assert_eq!(kept.password, pw);

        // Server moved: same password, Secret reissued with the new host, no rotation.
        let moved = good.clone().with(KEY_HOST, "old.internal");
        let p = credential_plan(Some(&moved), &c, "dt_acme");
        assert_eq!(
            (p.rotate, p.issue, p.password.as_str()),
            (false, true, pw.as_str())
        );

        // A weak or missing password in the Secret: rotate.
        for bad in [
            good.clone().with(KEY_PASSWORD, "short"),
            good.clone().with(KEY_PASSWORD, format!("{pw} x")),
            SecretData::new().with(KEY_USER, "dt_acme"),
        ] {
            let p = credential_plan(Some(&bad), &c, "dt_acme");
            assert!(p.rotate && p.issue);
            assert_ne!(p.password, pw);
        }
    }
}
