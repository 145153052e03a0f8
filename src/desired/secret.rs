//! A component's Secret in the tenant namespace: the connection details its provider
//! issued. It carries no owner reference: under `Retain` credentials outlive the tenant.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names;
use crate::providers::SecretData;

/// Label naming the component a Secret belongs to.
pub const COMPONENT_LABEL: &str = "dealerdesk.de/component";

/// Annotation on a component Secret naming, comma-separated, the IDs of credentials a
/// rotation replaced and that still work, so that the Pods that run with the old Secret
/// keep working. The reconciler retires them once the server Deployment has rolled out
/// with this Secret, then drops the annotation. IDs only: they are not secrets.
pub const RETIRE_ANNOTATION: &str = "dealerdesk.de/retire-after-rollout";

/// The IDs in a Secret's [`RETIRE_ANNOTATION`], sorted and without repeats.
pub fn retiring(secret: &Secret) -> Vec<String> {
    let ids: std::collections::BTreeSet<String> = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETIRE_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    ids.into_iter().collect()
}

/// `secret` with [`RETIRE_ANNOTATION`] listing `ids` (sorted, without repeats); without
/// the annotation when there are none.
pub fn with_retiring(mut secret: Secret, ids: &[String]) -> Secret {
    let ids: std::collections::BTreeSet<&str> = ids
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let annotations = secret.metadata.annotations.get_or_insert_default();
    if ids.is_empty() {
        annotations.remove(RETIRE_ANNOTATION);
    } else {
        let list: Vec<&str> = ids.into_iter().collect();
        annotations.insert(RETIRE_ANNOTATION.into(), list.join(","));
    }
    if annotations.is_empty() {
        secret.metadata.annotations = None;
    }
    secret
}

/// The Secret `<component>` in `tenant-<name>` holding `data`, labelled with the UID of
/// the tenant the credentials were issued to.
pub fn component_secret(tenant: &str, uid: &str, component: &str, data: &SecretData) -> Secret {
    let mut labels = names::common_labels(tenant);
    labels.insert(names::TENANT_UID_LABEL.into(), uid.into());
    labels.insert(COMPONENT_LABEL.into(), component.into());
    Secret {
        metadata: ObjectMeta {
            name: Some(component.into()),
            namespace: Some(names::namespace(tenant)),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.clone()
                .into_map()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The data of a Secret read from the cluster.
pub fn secret_data(secret: &Secret) -> SecretData {
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        map.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in secret.string_data.iter().flatten() {
        map.insert(k.clone(), v.clone());
    }
    SecretData::from_map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_is_not_owned() {
        let data = SecretData::new()
            .with("DATABASE_PASSWORD", "pw")
            .with("DATABASE_NAME", "dt_acme");
        let s = component_secret("acme", "u-1", "database", &data);
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(s.metadata.name.as_deref(), Some("database"));
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[COMPONENT_LABEL],
            "database"
        );
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[names::TENANT_UID_LABEL],
            "u-1"
        );
        assert_eq!(secret_data(&s), data);
    }

    #[test]
    fn the_ids_to_retire_round_trip_through_the_annotation() {
        let s = component_secret("acme", "u-1", "search", &SecretData::new());
        assert!(retiring(&s).is_empty());
        let ids = ["k2".to_string(), "k1".into(), "k2".into(), " ".into()];
        let marked = with_retiring(s.clone(), &ids);
        assert_eq!(
            marked.metadata.annotations.as_ref().unwrap()[RETIRE_ANNOTATION],
            "k1,k2"
        );
        assert_eq!(retiring(&marked), ["k1", "k2"]);
        // Nothing to retire: no annotation at all (the Secret is as before).
        assert_eq!(with_retiring(marked, &[]), s);
    }
}
