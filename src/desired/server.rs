//! The tenant's application server: ServiceAccount, Deployment, Service and, with more than
//! one replica, a PodDisruptionBudget.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretEnvSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{meta, names};
use crate::api::DealerTenant;
use crate::config::OperatorConfig;
use crate::providers::SecretData;

/// Pod template annotation holding [`secrets_hash`] of the component Secrets the server
/// reads: a changed Secret changes the template, so the Deployment rolls out Pods with
/// the new credentials.
pub const SECRETS_HASH_ANNOTATION: &str = "dealerdesk.de/secrets-hash";

/// SHA-256 (hex) over the names and data of the component Secrets the server reads,
/// independent of their order. Only the hash leaves: no secret material does. Every name,
/// key and value is length-prefixed, so that no two different sets encode alike.
pub fn secrets_hash(secrets: &[(String, SecretData)]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(String, SecretData)> = secrets.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for (name, data) in sorted {
        field(name.as_bytes());
        let map = data.clone().into_map();
        field(&(map.len() as u64).to_be_bytes());
        for (k, v) in &map {
            field(k.as_bytes());
            field(v.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the pod template's [`SECRETS_HASH_ANNOTATION`] (removes it when `hash` is `None`).
pub fn set_secrets_hash(d: &mut Deployment, hash: Option<String>) {
    let Some(spec) = d.spec.as_mut() else {
        return;
    };
    let meta = spec.template.metadata.get_or_insert_default();
    match hash {
        Some(h) => {
            meta.annotations
                .get_or_insert_default()
                .insert(SECRETS_HASH_ANNOTATION.into(), h);
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(SECRETS_HASH_ANNOTATION);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
        }
    }
}

/// The server's identity; no API token is mounted into its Pods.
pub fn service_account(tenant: &str, owner: &OwnerReference) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(names::SERVER, tenant, owner),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The server Deployment, hardened to the `restricted` Pod Security Standard.
pub fn deployment(
    t: &DealerTenant,
    owner: &OwnerReference,
    cfg: &OperatorConfig,
    component_secrets: &[String],
) -> Deployment {
    let tenant = t.tenant_name();
    let spec = &t.spec.server;
    let selector = names::server_selector(tenant);
    let mut pod_labels = names::common_labels(tenant);
    pod_labels.extend(selector.clone());
    let probe = |initial: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(cfg.server.health_path.clone()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        ..Default::default()
    };
    let env = vec![
        env("TENANT_NAME", tenant),
        env("TENANT_REGION", &t.spec.region),
        env("PORT", &cfg.server.port.to_string()),
    ];
    let env_from: Vec<EnvFromSource> = component_secrets
        .iter()
        .map(|s| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    let container = Container {
        name: "server".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| cfg.server.image.clone()),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: cfg.server.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| cfg.server.resources.clone()),
        ),
        readiness_probe: Some(probe(2, 10)),
        liveness_probe: Some(probe(10, 20)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(names::SERVER, tenant, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names::SERVER.into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(runtime_default()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ClusterIP Service on port 80 in front of the server's `http` port.
pub fn service(tenant: &str, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(names::SERVER, tenant, owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names::server_selector(tenant)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one server Pod down at a time, when there is more than one.
pub fn pdb(t: &DealerTenant, owner: &OwnerReference) -> Option<PodDisruptionBudget> {
    let tenant = t.tenant_name();
    (t.spec.server.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(names::SERVER, tenant, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names::server_selector(tenant)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{owner_reference, testing::tenant};

    fn build(spec: &str, secrets: &[String]) -> Deployment {
        let t = tenant("acme", spec);
        deployment(
            &t,
            &owner_reference(&t),
            &OperatorConfig::default(),
            secrets,
        )
    }

    #[test]
    fn deployment_is_restricted() {
        let d = build("{displayName: A, region: europe-west3}", &[]);
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("server"));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert!(c.env_from.is_none());
    }

    #[test]
    fn image_replicas_and_resources_follow_spec_then_config() {
        let d = build("{displayName: A, region: europe-west3}", &[]);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image, OperatorConfig::default().server.image.into());
        assert_eq!(
            c.resources,
            Some(OperatorConfig::default().server.resources)
        );

        let d = build(
            "{displayName: A, region: europe-west3, server: {image: x/y:2, replicas: 0, resources: {limits: {cpu: '1'}}}}",
            &[],
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(0));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("x/y:2"));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0,
            "1"
        );
        let env: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert!(env.contains(&("TENANT_REGION", Some("europe-west3"))));
    }

    #[test]
    fn component_secrets_become_environment() {
        let d = build(
            "{displayName: A, region: europe-west3}",
            &["database".into(), "storage".into()],
        );
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let names: Vec<_> = c
            .env_from
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.secret_ref.as_ref().unwrap().name.clone())
            .collect();
        assert_eq!(names, ["database", "storage"]);
    }

    #[test]
    fn selector_matches_pod_labels_and_service() {
        let t = tenant("acme", "{displayName: A, region: europe-west3}");
        let owner = owner_reference(&t);
        let d = deployment(&t, &owner, &OperatorConfig::default(), &[]);
        let spec = d.spec.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        let sel = spec.selector.match_labels.unwrap();
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(service("acme", &owner).spec.unwrap().selector.unwrap(), sel);
    }

    #[test]
    fn pdb_only_with_more_than_one_replica() {
        for (replicas, want) in [(0, false), (1, false), (2, true), (10, true)] {
            let t = tenant(
                "acme",
                &format!(
                    "{{displayName: A, region: europe-west3, server: {{replicas: {replicas}}}}}"
                ),
            );
            assert_eq!(pdb(&t, &owner_reference(&t)).is_some(), want, "{replicas}");
        }
    }

    #[test]
    fn the_secrets_hash_follows_the_data_and_shows_none_of_it() {
        let db = |pw: &str| SecretData::new().with("DATABASE_PASSWORD", pw);
        let es = SecretData::new().with("ELASTICSEARCH_API_KEY", "ZW5j");
        let a = secrets_hash(&[
            ("database".into(), db("s3cr3t")),
            ("search".into(), es.clone()),
        ]);
        // Deterministic and independent of order.
        let b = secrets_hash(&[
            ("search".into(), es.clone()),
            ("database".into(), db("s3cr3t")),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.contains("s3cr3t") && !a.contains("ZW5j"));
        // A new password is a new hash, so the template changes and the Pods roll.
        assert_ne!(
            a,
            secrets_hash(&[("database".into(), db("other")), ("search".into(), es)])
        );
        // Moving a byte between key and value is a different set.
        assert_ne!(
            secrets_hash(&[("x".into(), SecretData::new().with("AB", "C"))]),
            secrets_hash(&[("x".into(), SecretData::new().with("A", "BC"))])
        );

        let mut d = build(
            "{displayName: A, region: europe-west3}",
            &["database".into()],
        );
        set_secrets_hash(&mut d, Some(a.clone()));
        let annotations = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .clone()
        };
        assert_eq!(annotations(&d).unwrap()[SECRETS_HASH_ANNOTATION], a);
        set_secrets_hash(&mut d, None);
        assert_eq!(annotations(&d), None);
    }
}
