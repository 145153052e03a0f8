//! Rotation without an outage, on the real API server with the real PostgreSQL: deleting a
//! tenant's database Secret asks for new credentials. The operator sets a new password,
//! writes the Secret, and the pod template's hash of the Secrets changes exactly once, so
//! that the Deployment rolls the Pods onto the new Secret; the hash shows no secret.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use super::{E2e, PgE2e, STEP_TIMEOUT, is_ready, secret_value};

/// The pod template annotation that carries the hash of the Secrets the server reads.
const HASH: &str = "dealerdesk.de/secrets-hash";

fn template_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(HASH)
        .cloned()
}

impl E2e {
    pub(super) async fn deleting_a_database_secret_rotates_with_one_rollout(&self, pg: &PgE2e) {
        // The operator does not watch Secrets: a short resync notices the deleted one.
        let config = format!("{}resyncSeconds: 10\n", pg.config(&pg.password_file));
        let good = self.write_config("pg-rotate", &config);
        let metrics = self.restart_operator(&good);
        self.wait_for_metrics(metrics).await;
        let spec = json!({
            "displayName": "Autohaus Rotation", "region": "europe-west3", "server": {"replicas": 0},
            "deletionPolicy": "Delete",
            "storage": {"enabled": false}, "search": {"enabled": false}, "email": {"enabled": false},
        });
        let t = self.create_tenant("rot", spec).await;
        let name = t.name_any();
        let role = format!("dt_{}", name.replace('-', "_"));
        let secrets: Api<Secret> = self.in_namespace(&t);
        let deployments: Api<Deployment> = self.in_namespace(&t);
        self.wait_tenant(&name, "Ready with its database", is_ready)
            .await;
        let old = secret_value(&secrets.get("database").await.unwrap(), "DATABASE_PASSWORD");
        let before = deployments.get("server").await.unwrap();
        let old_hash = template_hash(&before).expect("the pod template carries the hash");
        assert_eq!(old_hash.len(), 64, "{old_hash}");
        assert!(!old_hash.contains(&old));

        // Deleting the Secret asks for new credentials.
        eprintln!("e2e: deleting the database Secret of {name}");
        secrets
            .delete("database", &DeleteParams::default())
            .await
            .unwrap();
        let new = self
            .wait_for(&name, "a new database Secret", STEP_TIMEOUT, async || {
                let s = secrets.get_opt("database").await.ok().flatten()?;
                let pw = secret_value(&s, "DATABASE_PASSWORD");
                (pw != old).then_some(pw)
            })
            .await;
        pg.login(&role, &new).await.expect("the new password works");
        assert!(
            pg.login(&role, &old).await.is_err(),
            "the old password still works"
        );
        let rolled = self
            .wait_for(
                &name,
                "the pod template's new hash",
                STEP_TIMEOUT,
                async || {
                    let d = deployments.get("server").await.ok()?;
                    (template_hash(&d)? != old_hash).then_some(d)
                },
            )
            .await;
        self.wait_tenant(&name, "Ready after the rotation", is_ready)
            .await;
        // Settled: the template changed exactly once (one generation, one new ReplicaSet).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = deployments.get("server").await.unwrap();
        assert_eq!(template_hash(&after), template_hash(&rolled));
        assert!(!template_hash(&after).unwrap().contains(&new));
        assert_eq!(
            after.metadata.generation,
            before.metadata.generation.map(|g| g + 1),
            "exactly one pod-template change"
        );

        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, super::NAMESPACE_GONE_TIMEOUT)
            .await;
        self.restart_operator_with(None);
    }
}
