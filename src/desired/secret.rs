//! A component's Secret in the tenant namespace: the connection details its provider
//! issued. It carries no owner reference: under `Retain` credentials outlive the tenant.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names;
use crate::providers::SecretData;

/// Label naming the component a Secret belongs to.
pub const COMPONENT_LABEL: &str = "dealerdesk.de/component";

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
}
