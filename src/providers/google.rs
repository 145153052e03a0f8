//! What the providers on Google Cloud (Cloud Storage, Cloud SQL) share: the tenant-UID label,
//! and one credentials loader: the key JSON from a file (a mounted Secret), else from an
//! environment variable, else nothing (the caller falls back to Application Default Credentials, such
//! as Workload Identity). Errors name the setting and never quote the key: a parse error
//! gives only its line and column.

use google_cloud_auth::credentials::{
    Credentials, external_account, service_account, user_account,
};

/// Label key (Cloud Storage buckets, Cloud SQL instances) whose value is the UID of the
/// tenant the resource belongs to: names are reused, UIDs are not.
pub const LABEL_TENANT_UID: &str = "dealerdesk-tenant-uid";

/// A tenant UID as a Google Cloud label value (Cloud Storage and Cloud SQL share the rules:
/// at most 63 lowercase letters, digits, `_` and `-`). A Kubernetes UID (a lowercase UUID)
/// is returned as it is; anything else is lowercased, other characters become `_`.
pub fn uid_label_value(uid: &str) -> String {
    uid.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// Where a provider's configuration says its key JSON is.
pub struct KeySource<'a> {
    /// The configuration section, e.g. `storage` or `database.cloudsql`, for messages.
    pub section: &'a str,
    /// `credentialsFile`: wins over the variable.
    pub file: Option<&'a str>,
    /// `credentialsEnv`: the variable's name.
    pub env: Option<&'a str>,
    /// Whether an unset (or empty) variable is an error (the name was configured) or
    /// means Application Default Credentials (the name is only a default).
    pub env_required: bool,
}

/// The credentials `source` names; `Ok(None)` means Application Default Credentials.
pub fn credentials(source: &KeySource<'_>) -> Result<Option<Credentials>, String> {
    let section = source.section;
    let (text, origin) = if let Some(path) = source.file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "{section}.credentialsFile {path}: cannot read it ({})",
                e.kind()
            )
        })?;
        (text, format!("{section}.credentialsFile {path}"))
    } else if let Some(var) = source.env {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v, format!("environment variable {var}")),
            _ if source.env_required => {
                return Err(format!(
                    "environment variable {var} ({section}.credentialsEnv) is not set"
                ));
            }
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{origin}: not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let kind = json
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    let built = match kind.as_str() {
        "service_account" => service_account::Builder::new(json).build(),
        "external_account" => external_account::Builder::new(json).build(),
        "authorized_user" => user_account::Builder::new(json).build(),
        _ => {
            return Err(format!(
                "{origin}: \"type\" must be service_account, external_account or authorized_user"
            ));
        }
    };
    built
        .map(Some)
        .map_err(|_| format!("{origin}: not a usable {kind} credential"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file in the temporary directory, removed when dropped.
    struct KeyFile(std::path::PathBuf);
    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    impl KeyFile {
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    fn file(name: &str, text: &str) -> KeyFile {
        let path = std::env::temp_dir().join(format!("dt-key-{}-{name}.json", std::process::id()));
        std::fs::write(&path, text).unwrap();
        KeyFile(path)
    }

    fn from_file(path: &str) -> Result<Option<Credentials>, String> {
        credentials(&KeySource {
            section: "storage",
            file: Some(path),
            env: Some("DT_TEST_UNUSED_KEY_VAR"),
            env_required: true,
        })
    }

    #[tokio::test]
    async fn a_service_account_key_file_is_used_and_wins_over_the_variable() {
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "dd-prod",
            "private_key_id": "k1",
            "private_key": "-----BEGIN PRIVATE KEY-----\nnot-checked-until-use\n-----END PRIVATE KEY-----\n",
            "client_email": "op@dd-prod.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        });
        let f = file("sa", &key.to_string());
        assert!(from_file(f.path()).unwrap().is_some());
    }

    #[test]
    fn errors_name_the_setting_and_never_quote_the_key() {
        let broken = file("broken", "{\"private_key\": \"SECRET-MATERIAL\" oops");
        let e = from_file(broken.path()).unwrap_err();
        assert!(e.starts_with("storage.credentialsFile "), "{e}");
        assert!(e.contains("not valid JSON (line 1"), "{e}");
        assert!(!e.contains("SECRET-MATERIAL"), "{e}");

        let unknown = file(
            "unknown",
            "{\"type\": \"gdch_service_account\", \"k\": \"SECRET-MATERIAL\"}",
        );
        let e = from_file(unknown.path()).unwrap_err();
        assert!(e.contains("\"type\" must be service_account"), "{e}");
        assert!(!e.contains("SECRET-MATERIAL"), "{e}");

        let e = from_file("/nonexistent/key.json").unwrap_err();
        assert_eq!(
            e,
            "storage.credentialsFile /nonexistent/key.json: cannot read it (entity not found)"
        );
    }

    #[test]
    fn a_uid_becomes_a_label_value() {
        let uid = "5a70ad95-0c70-4dba-b433-bea48aafe77e";
        assert_eq!(uid_label_value(uid), uid, "a Kubernetes UID fits as it is");
        assert_eq!(uid_label_value("A.b/C"), "a_b_c");
        assert_eq!(uid_label_value(&"x".repeat(70)).len(), 63);
    }

    #[test]
    fn an_unset_variable_is_an_error_only_when_it_was_named() {
        let source = |env_required| KeySource {
            section: "database.cloudsql",
            file: None,
            env: Some("DT_TEST_SURELY_UNSET_KEY_VAR"),
            env_required,
        };
        assert!(credentials(&source(false)).unwrap().is_none());
        assert_eq!(
            credentials(&source(true)).unwrap_err(),
            "environment variable DT_TEST_SURELY_UNSET_KEY_VAR (database.cloudsql.credentialsEnv) is not set"
        );
        let none = KeySource {
            section: "storage",
            file: None,
            env: None,
            env_required: true,
        };
        assert!(credentials(&none).unwrap().is_none());
    }
}
