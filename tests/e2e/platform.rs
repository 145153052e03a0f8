//! The platform team's view on the real API server: the dev install's operator
//! configuration (`examples/config/dev.yaml`, with CI's PostgreSQL standing in for the
//! in-cluster one) brings the dev example tenant to Ready; `trace` (and the kubectl
//! plugin) explain it, exit 0 when Ready and 1 when not; `describe`'s Events tell the
//! story once each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::{E2e, PgE2e, is_ready};

fn read_yaml(relative: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {relative}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parse {relative}: {e}"))
}

/// `trace` through the operator binary, or through the kubectl plugin binary.
fn trace(plugin: bool, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = if plugin {
        env!("CARGO_BIN_EXE_kubectl-dealertenant")
    } else {
        env!("CARGO_BIN_EXE_dealertenant-operator")
    };
    let out = Command::new(bin)
        .arg("trace")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl E2e {
    pub(super) async fn the_dev_install_reaches_ready_and_trace_explains_it(&self, pg: &PgE2e) {
        // The dev configuration, pointed at CI's PostgreSQL: only host, port and where the
        // admin password comes from change.
        let mut cfg = read_yaml("examples/config/dev.yaml");
        let postgres = &mut cfg["database"]["postgres"];
        postgres["host"] = json!("127.0.0.1");
        postgres["port"] = json!(pg.port);
        postgres["adminPasswordFile"] = json!(pg.password_file.display().to_string());
        let path = self.write_config(
            "dev",
            &serde_saphyr::to_string(&cfg).expect("the configuration serializes"),
        );
        let metrics = self.restart_operator(&path);
        self.wait_for_metrics(metrics).await;

        let example = read_yaml("examples/dev.yaml");
        let t = self.create_tenant("dev", example["spec"].clone()).await;
        let name = t.name_any();
        self.wait_tenant(&name, "Ready on the dev configuration", is_ready)
            .await;

        // trace: a tree, exit status 0 when Ready.
        let (code, text, err) = trace(false, &[&name]);
        eprintln!("e2e: dealertenant-operator trace {name}:\n{text}");
        assert_eq!(code, Some(0), "trace of a Ready tenant: {err}\n{text}");
        let role = format!("dt_{}", name.replace('-', "_"));
        for want in [
            format!("DealerTenant/{name}"),
            format!("├─ Namespace/tenant-{name}"),
            "├─ database (postgres)".to_string(),
            format!("Database/{role}  europe-west3"),
            "Disabled".to_string(),
        ] {
            assert!(text.contains(&want), "trace lacks {want:?}:\n{text}");
        }
        let (code, json_text, _) = trace(false, &[&name, "-o", "json"]);
        assert_eq!(code, Some(0));
        let tree: Value = serde_json::from_str(&json_text).expect("trace -o json is JSON");
        assert_eq!(tree["ready"], "True");
        let children: Vec<&str> = tree["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            children[2..],
            ["database", "storage", "search", "email"],
            "{json_text}"
        );
        let (code, wide, _) = trace(true, &[&name, "-o", "wide"]);
        assert_eq!(code, Some(0), "kubectl-dealertenant trace -o wide");
        assert!(wide.contains("MESSAGE"), "{wide}");
        self.kubectl_runs_the_plugin(&name);

        // /metrics: the database provider's operations, tenants by phase (counted every
        // 10 s), /healthz with every watch working.
        let wanted = [
            "dealertenant_provider_operations_total{component=\"database\",processor=\"google-cloud\",operation=\"reconcile\",outcome=\"ok\"}",
            "dealertenant_provider_operation_duration_seconds_count{component=\"database\"",
            "dealertenant_tenants{phase=\"Ready\"}",
            "dealertenant_tenant_conditions{type=\"DatabaseReady\",status=\"True\"}",
        ];
        let text = self
            .poll(std::time::Duration::from_secs(30), async || {
                super::metrics_text(metrics).filter(|t| wanted.iter().all(|w| t.contains(w)))
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "/metrics lacks one of {wanted:?}:\n{}",
                    super::metrics_text(metrics).unwrap_or_default()
                )
            });
        eprintln!(
            "e2e: /metrics: {}",
            text.lines()
                .filter(|l| l.starts_with("dealertenant_provider_operations_total")
                    || l.starts_with("dealertenant_tenants"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        assert_eq!(
            super::http_get(metrics, "/healthz").map(|r| r.contains("200")),
            Some(true),
            "/healthz"
        );

        // A tenant the dev install cannot serve: storage on. trace says why, exits 1.
        let mut spec = example["spec"].clone();
        spec["storage"] = json!({"enabled": true});
        spec["database"] = json!({"enabled": false});
        let unserved = self.create_tenant("dev-gcs", spec).await;
        let unserved_name = unserved.name_any();
        self.wait_tenant(&unserved_name, "StorageReady=False", |t| {
            super::condition(t, "StorageReady").is_some_and(|c| c.status == "False")
        })
        .await;
        let (code, text, _) = trace(false, &[&unserved_name]);
        eprintln!("e2e: dealertenant-operator trace {unserved_name}:\n{text}");
        assert_eq!(
            code,
            Some(1),
            "trace of a tenant that is not Ready:\n{text}"
        );
        assert!(
            text.contains("storage") && text.contains("last error: "),
            "{text}"
        );

        // describe's Events: the story once each.
        let reasons = self.event_reasons(&name).await;
        eprintln!("e2e: Events of {name}: {reasons:?}");
        for (reason, n) in &reasons {
            assert_eq!(*n, 1, "Event {reason} published {n} times: {reasons:?}");
        }
        for want in ["Provisioned", "AllComponentsReady"] {
            assert!(reasons.contains_key(want), "no {want} Event: {reasons:?}");
        }
        self.delete_tenant(&unserved_name).await;
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, super::NAMESPACE_GONE_TIMEOUT)
            .await;
        let reasons = self.event_reasons(&name).await;
        eprintln!("e2e: Events of {name} after deletion: {reasons:?}");
        for want in ["ProcessorErased", "Erased"] {
            assert!(
                reasons.contains_key(want),
                "no {want} Event after deletion: {reasons:?}"
            );
        }
        self.wait_tenant_gone(&unserved_name, super::NAMESPACE_GONE_TIMEOUT)
            .await;
    }

    /// `kubectl dealertenant trace`: kubectl finds the plugin on the PATH.
    fn kubectl_runs_the_plugin(&self, name: &str) {
        let plugin_dir: PathBuf = Path::new(env!("CARGO_BIN_EXE_kubectl-dealertenant"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            plugin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        match Command::new("kubectl")
            .args(["dealertenant", "trace", name])
            .env("PATH", path)
            .output()
        {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.contains("database (postgres)"),
                    "kubectl dealertenant trace {name}: {}\n{text}",
                    String::from_utf8_lossy(&out.stderr)
                );
                eprintln!("e2e: kubectl dealertenant trace {name}: ok");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("e2e: notice: kubectl is not on PATH; the plugin ran directly only");
            }
            Err(e) => panic!("run kubectl: {e}"),
        }
    }

    /// Events about tenant `name` by reason: how many Event objects (a repeat is a
    /// series on one object, so two objects of one reason are a duplicate).
    async fn event_reasons(&self, name: &str) -> BTreeMap<String, u32> {
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        let list = events
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list Events: {e}"));
        let mut by = BTreeMap::new();
        for e in list.items.iter().filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("DealerTenant") && r.name.as_deref() == Some(name)
            })
        }) {
            *by.entry(e.reason.clone().unwrap_or_default()).or_default() += 1;
        }
        by
    }
}
