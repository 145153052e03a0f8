//! A real Kubernetes control plane of a test's own (`../shared/kube/start`, see its README),
//! and what a suite needs on it to run the operator as its own least-privileged user: the
//! CRD, the operator namespace, `deploy/base/rbac.yaml` bound to the user `dealertenant-operator`.
//!
//! `tests/e2e.rs` runs against the control plane `.ci/test` starts (on 16443); a suite that
//! needs a cluster to itself (no other operator reconciling its tenants) starts one here on
//! other ports and stops it when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dealertenant_operator::api::DealerTenant;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};

/// The unprivileged user of `operator.kubeconfig`.
pub const OPERATOR_USER: &str = "dealertenant-operator";
pub const OPERATOR_NAMESPACE: &str = "dealertenant-system";
const FIELD_MANAGER: &str = "dealertenant-tests";

/// `../shared/kube/start` beside the repository, or `KUBE_START`.
pub fn start_script() -> PathBuf {
    std::env::var_os("KUBE_START")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/kube/start"))
}

/// A control plane in a directory of its own; stopped (and the directory removed unless the
/// test failed) when dropped.
pub struct ControlPlane {
    pub dir: PathBuf,
    stop: PathBuf,
}

impl ControlPlane {
    /// Starts a fresh control plane with its API server on `port` and etcd on `etcd_port`
    /// (and the one above). `None` when the start script does not exist.
    pub fn start(port: u16, etcd_port: u16) -> Option<Self> {
        let script = start_script();
        if !script.exists() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "dealertenant-kube-{port}-{}",
            std::iter::repeat_with(fastrand::alphanumeric)
                .take(8)
                .collect::<String>()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let plane = Self {
            stop: script.with_file_name("stop"),
            dir,
        };
        let started = Instant::now();
        let status = Command::new(&script)
            .arg(&plane.dir)
            .env("KUBE_FRESH", "1")
            .env("KUBE_PORT", port.to_string())
            .env("KUBE_ETCD_PORT", etcd_port.to_string())
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} did not start a control plane on port {port} (etcd {etcd_port}): {status}; \
             logs in {}",
            script.display(),
            plane.dir.join("logs").display()
        );
        eprintln!(
            "cluster: control plane on 127.0.0.1:{port} up after {}s ({})",
            started.elapsed().as_secs(),
            plane.dir.display()
        );
        Some(plane)
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.join("operator.kubeconfig")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(&self.stop)
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!(
                "cluster: kept {} (audit.log, logs/) for inspection",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The configuration of a kubeconfig file, sending `user_agent`.
pub async fn config(kubeconfig: &Path, user_agent: &str) -> kube::Config {
    let file = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(user_agent).expect("a valid user agent"),
    ));
    config
}

/// A client from a kubeconfig file, sending `user_agent`.
pub async fn client(kubeconfig: &Path, user_agent: &str) -> Client {
    Client::try_from(config(kubeconfig, user_agent).await)
        .unwrap_or_else(|e| panic!("client for {}: {e}", kubeconfig.display()))
}

/// Server-side applies the CRD this build generates and waits until it is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = DealerTenant::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("server-side apply CRD {name}: {e}"));
    let established = await_condition(crds, &name, conditions::is_crd_established());
    match tokio::time::timeout(Duration::from_secs(60), established).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("watch CRD {name}: {e}"),
        Err(_) => panic!("CRD {name} is not Established after 60s"),
    }
}

/// Server-side applies one manifest of any kind the API server serves.
pub async fn apply_manifest(client: &Client, manifest: Value) {
    let obj: DynamicObject = serde_json::from_value(manifest.clone())
        .unwrap_or_else(|e| panic!("not a Kubernetes object ({e}): {manifest}"));
    let types = obj
        .types
        .clone()
        .unwrap_or_else(|| panic!("no apiVersion/kind: {manifest}"));
    let gvk = GroupVersionKind::try_from(&types)
        .unwrap_or_else(|e| panic!("apiVersion {}: {e}", types.api_version));
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
    let name = obj.name_any();
    let api: Api<DynamicObject> = match (capabilities.scope, obj.namespace()) {
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("server-side apply {} {name}: {e}", types.kind));
}

/// The operator namespace, the CRD, and `deploy/base/rbac.yaml`'s ClusterRole and Role bound to
/// [`OPERATOR_USER`] (exactly those rights).
pub async fn prepare_for_operator(admin: &Client) {
    install_crd(admin).await;
    apply_manifest(
        admin,
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": OPERATOR_NAMESPACE,
                         "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        }),
    )
    .await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/rbac.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    // Bound as deploy/ binds the operator's ServiceAccount: the same roles in the same
    // places (the tenant role is bound by the operator itself, per tenant namespace).
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if matches!(kind.as_str(), "ClusterRoleBinding" | "RoleBinding") {
            let mut binding = doc.clone();
            binding["metadata"]["name"] = json!("dealertenant-tests-operator-user");
            binding["subjects"] = json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                          "name": OPERATOR_USER}]);
            apply_manifest(admin, doc).await;
            apply_manifest(admin, binding).await;
        } else {
            apply_manifest(admin, doc).await;
        }
    }
}
