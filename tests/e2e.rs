//! End-to-end test of the operator against the real cluster that `KUBECONFIG` names.
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test --test e2e -- --nocapture
//! ```
//!
//! Without `KUBECONFIG` (unset or empty) the test prints a notice and passes, so CI stays
//! green without a cluster.
//!
//! What the cluster needs:
//! - a Kubernetes 1.36 API server with kube-controller-manager (namespace, garbage collector,
//!   Deployment, ReplicaSet, disruption and resource-quota controllers). Nodes are not
//!   needed: server Pods are created and stay Pending.
//! - a caller that may create CustomResourceDefinitions and cluster-scoped objects
//!   (Namespaces, DealerTenants) and everything inside a namespace; cluster-admin is simplest.
//! - no other dealertenant-operator running against the cluster, since two would fight over
//!   the same tenants.
//!
//! What the test does: it server-side applies the DealerTenant CRD (and leaves it installed),
//! starts the operator binary cargo built for this test as a child process (its log goes to
//! `dealertenant-e2e-<run id>.log` in the temp directory; the path is printed at the start
//! and on failure), then drives tenants named `e2e-<run id>-<suffix>` through their life.
//! The tenants switch their external components (database, storage, email, search) off:
//! the suite is about the in-cluster part, and the default configuration has no provider
//! for those.
//!
//! The last phase installs the ValidatingAdmissionPolicy `dealertenants.dealerdesk.de` and
//! its binding, generated for `thirdCountryProcessors: deny` (no parameter), checks that the
//! API server refuses tenants with email on, deletes and re-applies them, and checks again. Should an object of that name already exist
//! that this suite did not write, the phase fails without touching it rather than replace
//! and then delete it.
//!
//! At the end, also when a check fails, it deletes the policy's binding and the policy
//! (first, since a binding left behind governs every tenant), every tenant and
//! `tenant-e2e-<run id>-*` namespace it created, and `dealertenant-system` if this run
//! created it, and stops the operator.
//!
//! All scenarios run in order inside one test function: `cargo test` runs test functions
//! in parallel threads, and only one operator process may run at a time.
//!
//! Least privilege and API traffic, on the test control plane (`.ci/test` starts one and
//! sets these; see `../shared/kube/README.md`):
//! - `DEALERTENANT_E2E_OPERATOR_KUBECONFIG`: a kubeconfig of the user `dealertenant-operator`,
//!   which has no rights of its own. The suite (as the admin of `KUBECONFIG`) server-side
//!   applies `deploy/base/rbac.yaml` and binds that user to exactly its ClusterRole and its Role
//!   (`dealertenant-operator-e2e-user`; left installed, like the CRD), and the operator runs
//!   with this kubeconfig: missing RBAC fails the run, and the run fails if the API server
//!   refused the operator any request (403 in the audit log). Without it the operator runs
//!   with `KUBECONFIG`, as before.
//! - `DEALERTENANT_E2E_AUDIT_LOG`: the API server's audit log of that user's requests. With
//!   it, a last phase measures the operator at scale: it restarts the operator with
//!   `resyncSeconds: 20`, creates `DEALERTENANT_E2E_SCALE_TENANTS` (default 100; 0 skips the
//!   phase) tenants without components or replicas, waits until all are Ready and 10 s more,
//!   prints a Markdown table of API writes and reads per tenant (from the audit log),
//!   Warning Events and reconciles (`dealertenant_reconciles_total` on `/metrics`), watches
//!   one resync round, deletes the tenants, and then asserts: writes per tenant <= its 9
//!   owned objects + 3, reconciles per tenant <= 4, no Warning Event, no write in the
//!   resync round.
//! - `DEALERTENANT_E2E_OPERATOR_BIN`: run this operator binary instead of the one cargo
//!   built for the test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use dealertenant_operator::api::{DealerTenant, DeletionPolicy, FINALIZER, Phase};
use dealertenant_operator::config::{OperatorConfig, ThirdCountryPolicy};
use dealertenant_operator::desired::admission::{self, POLICY_NAME};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[path = "support/audit.rs"]
mod audit;
#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod cluster;
use cluster::{apply_manifest, install_crd};
#[allow(dead_code)]
#[path = "support/cloudsql.rs"]
mod cloudsql;
#[allow(dead_code)]
#[path = "support/cloudsql_pg.rs"]
mod cloudsql_pg;
#[allow(dead_code)]
#[path = "support/pg.rs"]
mod pg;
#[path = "e2e/platform.rs"]
mod platform;
#[path = "e2e/rotation.rs"]
mod rotation;
#[path = "e2e/security.rs"]
mod security;

/// Field manager of every write this test makes.
const FIELD_MANAGER: &str = "dealertenant-e2e";
/// Label naming the tenant an object belongs to.
const TENANT_LABEL: &str = "dealerdesk.de/tenant";
/// Interval between two looks at the cluster.
const POLL: Duration = Duration::from_secs(1);
/// How long the operator (and the controllers it relies on) may take for one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the ReplicaSet controller may take to create a server Pod.
const POD_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the namespace controller may take to empty and delete a namespace.
const NAMESPACE_GONE_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound for the cleanup at the end.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);
/// The operator's default namespace, where it writes erasure receipts when a tenant is
/// deleted.
const OPERATOR_NAMESPACE: &str = "dealertenant-system";
/// How long kube-controller-manager may take to type-check a new admission policy.
const TYPE_CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the API server may take to enforce a new admission policy binding.
const POLICY_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Kubeconfig of the operator's own, unprivileged user; the suite grants it
/// `deploy/base/rbac.yaml`'s roles and runs the operator with it.
const OPERATOR_KUBECONFIG_ENV: &str = "DEALERTENANT_E2E_OPERATOR_KUBECONFIG";
/// The API server's audit log of the operator user's requests.
const AUDIT_LOG_ENV: &str = "DEALERTENANT_E2E_AUDIT_LOG";
/// The operator binary to run instead of the one cargo built with this test (a release
/// build, or a copy safe from a concurrent build into the same target directory).
const OPERATOR_BIN_ENV: &str = "DEALERTENANT_E2E_OPERATOR_BIN";
/// Number of tenants of the scale phase; 0 skips it.
const SCALE_TENANTS_ENV: &str = "DEALERTENANT_E2E_SCALE_TENANTS";
const DEFAULT_SCALE_TENANTS: usize = 100;
/// The operator user, as the test control plane's token file names it.
const OPERATOR_USER: &str = "dealertenant-operator";
/// Name of the bindings that grant [`OPERATOR_USER`] the roles of `deploy/base/rbac.yaml`.
const OPERATOR_USER_BINDING: &str = "dealertenant-operator-e2e-user";
/// How long a new RoleBinding may take to reach the API server's authorizer.
const RBAC_ACTIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// `resyncSeconds` of the operator in the scale phase.
const SCALE_RESYNC_SECONDS: u64 = 20;
/// How long the scale phase lets the operator settle after the last tenant became Ready,
/// before it counts: longer than any debounce of the operator's.
const SETTLE: Duration = Duration::from_secs(10);
/// Objects the operator owns per tenant with `replicas: 0` and every component off:
/// Namespace, ResourceQuota, LimitRange, 5 NetworkPolicies, ServiceAccount, Service,
/// Deployment.
const OWNED_OBJECTS: u64 = 12;
/// Target: API writes per tenant until it is Ready and settled (the owned objects, the
/// finalizer, one status write and one Event fit).
const MAX_WRITES_PER_TENANT: u64 = OWNED_OBJECTS + 3;
/// Target: reconcile passes per tenant until it is Ready and settled.
const MAX_RECONCILES_PER_TENANT: u64 = 4;

#[tokio::test]
async fn dealertenant_operator_end_to_end() {
    let Some(kubeconfig) = kubeconfig() else {
        // Written to stderr directly rather than with eprintln!, which the test harness
        // captures: the notice shows in CI logs without --nocapture.
        let _ = writeln!(
            std::io::stderr(),
            "\n\
             ************************************************************************\n\
             ***  e2e SKIPPED: KUBECONFIG is not set.                             ***\n\
             ***  No end-to-end check ran: nothing was tested against a cluster.  ***\n\
             ***  `bash .ci/test` starts a control plane and sets it; or run:     ***\n\
             ***    KUBECONFIG=~/.kube/config cargo test --test e2e -- --nocapture ***\n\
             ************************************************************************\n"
        );
        return;
    };
    let e2e = E2e::start(&kubeconfig).await;

    e2e.the_operator_reports_ready_once_its_caches_are_filled()
        .await;
    e2e.api_server_rejects_invalid_tenants().await;
    // Both tenants converge concurrently while the first is checked.
    let ready = e2e
        .create_tenant(
            "ready",
            without_components(json!({
                "displayName": "Autohaus Müller GmbH & Co. KG",
                "region": "europe-west3",
                "server": {"replicas": 0},
            })),
        )
        .await;
    let pods = e2e
        .create_tenant(
            "pods",
            without_components(json!({
                "displayName": "Autohaus Schmidt",
                "region": "europe-west1",
                "server": {"replicas": 1},
                "deletionPolicy": "Delete",
            })),
        )
        .await;

    e2e.a_tenant_without_replicas_becomes_ready(&ready).await;
    e2e.printer_columns_show_region_and_readiness(&ready).await;
    e2e.region_is_immutable(&ready).await;
    e2e.the_operator_cannot_leave_its_namespaces(&ready).await;
    e2e.a_removed_field_disappears(&ready).await;
    e2e.server_pods_pass_pod_security(&pods).await;
    e2e.a_disruption_budget_follows_replicas(&pods).await;
    e2e.a_paused_tenant_is_left_alone(&ready).await;
    e2e.deletion_policy_delete_erases_the_namespace(&pods).await;
    e2e.deletion_policy_retain_keeps_the_namespace(&ready).await;
    e2e.a_reused_name_adopts_only_by_uid().await;
    e2e.a_location_read_back_outside_the_eu_is_a_violation()
        .await;
    match PgE2e::find(&e2e.run_id).await {
        Some(pg) => {
            e2e.database_credentials_are_written_once(&pg).await;
            e2e.deleting_a_database_secret_rotates_with_one_rollout(&pg)
                .await;
            e2e.the_dev_install_reaches_ready_and_trace_explains_it(&pg)
                .await;
        }
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "e2e: notice: no PostgreSQL test server (run .ci/start-postgres); skipping the \
                 database credential scenario"
            );
        }
    }
    // Last: while the policy is bound, it governs every tenant in the cluster.
    e2e.admission_policy_denies_third_country_processors().await;
    e2e.the_crd_cannot_be_deleted_by_accident().await;
    e2e.no_request_was_forbidden();

    // Last, with an operator of its own: it counts the operator's requests.
    let scale = scale_tenants();
    match (&e2e.audit_log, scale) {
        (_, 0) => eprintln!("e2e: scale phase skipped ({SCALE_TENANTS_ENV}=0)"),
        (None, _) => {
            let _ = writeln!(
                std::io::stderr(),
                "e2e: notice: {AUDIT_LOG_ENV} is not set; skipping the scale phase, which counts \
                 the operator's API requests in the API server's audit log"
            );
        }
        (Some(_), n) => e2e.at_scale_writes_settle_and_resync_is_quiet(n).await,
    }
    e2e.every_grant_is_used();
    eprintln!("e2e: all checks passed");
}

fn scale_tenants() -> usize {
    match std::env::var(SCALE_TENANTS_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SCALE_TENANTS_ENV}={v}: {e}")),
        _ => DEFAULT_SCALE_TENANTS,
    }
}

/// A path from the environment; unset or empty is `None`.
fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A tenant of the scale phase: no replicas, no components, namespace deleted with it.
fn scale_spec() -> Value {
    without_components(json!({
        "displayName": "Autohaus Skala",
        "region": "europe-west3",
        "server": {"replicas": 0},
        "deletionPolicy": "Delete",
    }))
}

/// What the scale phase measured.
struct ScaleReport {
    names: Vec<String>,
    /// From the first create until all were Ready.
    ready_after: Duration,
    /// Requests from the first create until settled.
    converge: audit::Summary,
    /// Reconcile passes from the first create until settled.
    reconciles: u64,
    /// Warning Events by tenant.
    warnings: BTreeMap<String, Vec<String>>,
    /// Length of the resync round watched.
    round: Duration,
    round_requests: audit::Summary,
    round_reconciles: u64,
}

/// `total`, `min`, `avg` and `max` of per-tenant numbers.
fn spread(values: &[u64]) -> (u64, u64, f64, u64) {
    let total: u64 = values.iter().sum();
    let min = values.iter().copied().min().unwrap_or_default();
    let max = values.iter().copied().max().unwrap_or_default();
    let avg = total as f64 / values.len().max(1) as f64;
    (total, min, avg, max)
}

impl ScaleReport {
    fn n(&self) -> u64 {
        self.names.len() as u64
    }

    fn per_tenant(&self, summary: &audit::Summary, f: impl Fn(&audit::Counts) -> u64) -> Vec<u64> {
        self.names.iter().map(|t| f(&summary.tenant(t))).collect()
    }

    /// Every resource a tenant's writes went to.
    fn written_resources(&self, summary: &audit::Summary) -> BTreeSet<String> {
        self.names
            .iter()
            .flat_map(|t| summary.tenant(t).writes.into_keys())
            .collect()
    }

    fn warning_count(&self, tenant: &str) -> u64 {
        self.warnings.get(tenant).map_or(0, |w| w.len() as u64)
    }

    fn markdown(&self) -> String {
        let n = self.n();
        let mut out = format!(
            "\n### Operator at scale: {n} tenants (no components, replicas 0)\n\n\
             All Ready {}s after the first create; counted until {}s later. Writes and reads \
             are the operator's API requests in the audit log.\n\n\
             | measure | target | total | min/tenant | avg/tenant | max/tenant |\n\
             |---|---|---:|---:|---:|---:|\n",
            self.ready_after.as_secs(),
            SETTLE.as_secs()
        );
        let mut row = |measure: &str, target: &str, values: &[u64]| {
            let (total, min, avg, max) = spread(values);
            out.push_str(&format!(
                "| {measure} | {target} | {total} | {min} | {avg:.2} | {max} |\n"
            ));
        };
        row(
            "API writes",
            &format!("<= {MAX_WRITES_PER_TENANT}"),
            &self.per_tenant(&self.converge, audit::Counts::total_writes),
        );
        for resource in self.written_resources(&self.converge) {
            row(
                &format!("writes `{resource}`"),
                "",
                &self.per_tenant(&self.converge, |c| c.writes_of(&resource)),
            );
        }
        row(
            "API reads",
            "",
            &self.per_tenant(&self.converge, audit::Counts::total_reads),
        );
        row(
            "refused requests (>= 400)",
            "",
            &self.per_tenant(&self.converge, |c| c.failed.values().sum()),
        );
        let warnings: Vec<u64> = self.names.iter().map(|t| self.warning_count(t)).collect();
        row("Warning Events", "0", &warnings);
        row(
            &format!("resync round ({}s): writes", self.round.as_secs()),
            "0",
            &self.per_tenant(&self.round_requests, audit::Counts::total_writes),
        );
        row(
            "resync round: reads",
            "",
            &self.per_tenant(&self.round_requests, audit::Counts::total_reads),
        );
        out.push_str(&format!(
            "| reconciles (`dealertenant_reconciles_total`) | <= {MAX_RECONCILES_PER_TENANT} | {} | | {:.2} | |\n\
             | resync round: reconciles | >= 1 | {} | | {:.2} | |\n\
             | writes about no tenant | | {} | | | |\n\
             | reads about no tenant (lists, watches) | | {} | | | |\n",
            self.reconciles,
            self.reconciles as f64 / n.max(1) as f64,
            self.round_reconciles,
            self.round_reconciles as f64 / n.max(1) as f64,
            self.converge.other.total_writes(),
            self.converge.other.total_reads(),
        ));

        let resources: Vec<String> = self.written_resources(&self.converge).into_iter().collect();
        out.push_str("\nPer tenant, until settled:\n\n| tenant | writes |");
        for r in &resources {
            out.push_str(&format!(" `{r}` |"));
        }
        out.push_str(" reads | Warning Events | resync writes |\n|---|---:|");
        out.push_str(&"---:|".repeat(resources.len() + 3));
        out.push('\n');
        for t in &self.names {
            let c = self.converge.tenant(t);
            out.push_str(&format!("| {t} | {} |", c.total_writes()));
            for r in &resources {
                out.push_str(&format!(" {} |", c.writes_of(r)));
            }
            out.push_str(&format!(
                " {} | {} | {} |\n",
                c.total_reads(),
                self.warning_count(t),
                self.round_requests.tenant(t).total_writes()
            ));
        }
        let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
        for w in self.warnings.values().flatten() {
            *reasons.entry(w.as_str()).or_default() += 1;
        }
        if !reasons.is_empty() {
            out.push_str("\nWarning Events (reason (series count): note → tenants):\n\n");
            for (reason, count) in reasons {
                out.push_str(&format!("- {reason} → {count}\n"));
            }
        }
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        for t in &self.names {
            for (what, count) in self.converge.tenant(t).failed {
                *refused.entry(what).or_default() += count;
            }
        }
        if !refused.is_empty() {
            out.push_str("\nRefused requests (verb resource: status → count):\n\n");
            for (what, count) in refused {
                out.push_str(&format!("- {what} → {count}\n"));
            }
        }
        out
    }

    /// The targets missed, one line each.
    fn failures(&self) -> Vec<String> {
        let n = self.n();
        let mut failures = Vec::new();
        let over: Vec<(String, u64)> = self
            .names
            .iter()
            .map(|t| (t.clone(), self.converge.tenant(t).total_writes()))
            .filter(|(_, w)| *w > MAX_WRITES_PER_TENANT)
            .collect();
        if let Some((worst, writes)) = over.iter().max_by_key(|(_, w)| *w) {
            failures.push(format!(
                "{} of {n} tenants needed more than {MAX_WRITES_PER_TENANT} API writes \
                 ({OWNED_OBJECTS} owned objects + 3); most: {worst} with {writes}: {:?}",
                over.len(),
                self.converge.tenant(worst).writes
            ));
        }
        if self.reconciles > MAX_RECONCILES_PER_TENANT * n {
            failures.push(format!(
                "{} reconcile passes for {n} tenants ({:.2} per tenant; target <= \
                 {MAX_RECONCILES_PER_TENANT})",
                self.reconciles,
                self.reconciles as f64 / n as f64
            ));
        }
        let warned: u64 = self.warnings.values().map(|w| w.len() as u64).sum();
        if warned > 0 {
            let (tenant, events) = self.warnings.iter().next().expect("a Warning Event");
            failures.push(format!(
                "{warned} Warning Events about {} tenants, e.g. {tenant}: {events:?}",
                self.warnings.len()
            ));
        }
        let mut round_writes: BTreeMap<String, u64> = BTreeMap::new();
        for t in &self.names {
            for (resource, count) in self.round_requests.tenant(t).writes {
                *round_writes.entry(resource).or_default() += count;
            }
        }
        if !round_writes.is_empty() {
            failures.push(format!(
                "the resync round wrote {} times (target 0): {round_writes:?}",
                round_writes.values().sum::<u64>()
            ));
        }
        if self.round_reconciles < n {
            failures.push(format!(
                "no full resync round in {}s (resyncSeconds {SCALE_RESYNC_SECONDS}): {} \
                 reconcile passes for {n} tenants",
                self.round.as_secs(),
                self.round_reconciles
            ));
        }
        failures
    }
}

/// Switches the external components off. The operator runs with its built-in default
/// configuration, which has no provider for them, and an enabled component without a
/// provider keeps a tenant from becoming Ready; this suite is about the in-cluster part.
fn without_components(mut spec: Value) -> Value {
    for component in ["database", "storage", "email", "search"] {
        spec[component] = json!({"enabled": false});
    }
    spec
}

/// A tenant for the admission phase: no replicas, every external component off except
/// email, which is on or off as asked.
fn tenant_with_email(enabled: bool) -> Value {
    let mut spec = without_components(json!({
        "displayName": "Autohaus Weber",
        "region": "europe-west3",
        "server": {"replicas": 0},
    }));
    spec["email"] = json!({"enabled": enabled});
    spec
}

fn kubeconfig() -> Option<String> {
    std::env::var("KUBECONFIG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// One run: the client, the operator process, and what to clean up. Dropping it (also
/// while a failed check unwinds) deletes what the run created and stops the operator.
struct E2e {
    client: Client,
    run_id: String,
    log: PathBuf,
    /// Kubeconfig the operator runs with ([`OPERATOR_KUBECONFIG_ENV`]); `KUBECONFIG` if none.
    operator_kubeconfig: Option<PathBuf>,
    /// [`AUDIT_LOG_ENV`], and where in it the operator's requests of this run start.
    audit_log: Option<PathBuf>,
    audit_start: u64,
    operator: Mutex<Option<Operator>>,
    created: Mutex<Vec<String>>,
    admission: Mutex<AdmissionState>,
}

/// What the admission phase put into the cluster, for the cleanup.
#[derive(Default)]
struct AdmissionState {
    /// The policy or its binding may exist.
    applied: bool,
    /// This run created [`OPERATOR_NAMESPACE`].
    created_namespace: bool,
}

impl E2e {
    /// Connects, installs the CRD and starts the operator.
    async fn start(kubeconfig: &str) -> Self {
        let client = Client::try_default()
            .await
            .unwrap_or_else(|e| panic!("cannot build a client from KUBECONFIG={kubeconfig}: {e}"));
        let version = client.apiserver_version().await.unwrap_or_else(|e| {
            panic!("the API server named by KUBECONFIG={kubeconfig} does not answer: {e}")
        });
        let run_id = random_id();
        let log = std::env::temp_dir().join(format!("dealertenant-e2e-{run_id}.log"));
        eprintln!(
            "e2e: run {run_id} against Kubernetes {}; operator log: {}",
            version.git_version,
            log.display()
        );
        let operator_kubeconfig = env_path(OPERATOR_KUBECONFIG_ENV);
        let audit_log = env_path(AUDIT_LOG_ENV);
        match &operator_kubeconfig {
            Some(path) => eprintln!(
                "e2e: the operator runs as user {OPERATOR_USER} ({OPERATOR_KUBECONFIG_ENV}={}) \
                 with the rights of deploy/base/rbac.yaml",
                path.display()
            ),
            None => eprintln!(
                "e2e: notice: {OPERATOR_KUBECONFIG_ENV} is not set; the operator runs with \
                 KUBECONFIG's rights, so its RBAC is not checked"
            ),
        }
        let mut e2e = Self {
            client,
            run_id,
            log,
            operator_kubeconfig,
            audit_log,
            audit_start: 0,
            operator: Mutex::new(None),
            created: Mutex::new(Vec::new()),
            admission: Mutex::new(AdmissionState::default()),
        };
        install_crd(&e2e.client).await;
        // The operator keeps erasure receipts there; it must exist before it starts.
        e2e.ensure_operator_namespace().await;
        if let Some(path) = &e2e.operator_kubeconfig {
            grant_operator_rbac(&e2e.client).await;
            wait_until_rbac_is_active(path).await;
            security::install_guard(&e2e.client).await;
        }
        if let Some(path) = &e2e.audit_log {
            e2e.audit_start = audit::end_of(path)
                .unwrap_or_else(|e| panic!("{AUDIT_LOG_ENV}={}: {e}", path.display()));
        }
        let operator = Operator::spawn(
            &e2e.log,
            &OperatorOptions {
                kubeconfig: e2e.operator_kubeconfig.as_deref(),
                config: None,
                append: false,
            },
        );
        *e2e.operator.lock().unwrap_or_else(PoisonError::into_inner) = Some(operator);
        e2e
    }

    /// Stops the running operator and starts another with `config`, appending to the same
    /// log. Returns the new operator's metrics address.
    fn restart_operator(&self, config: &Path) -> SocketAddr {
        let mut slot = self.operator.lock().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        let operator = Operator::spawn(
            &self.log,
            &OperatorOptions {
                kubeconfig: self.operator_kubeconfig.as_deref(),
                config: Some(config),
                append: true,
            },
        );
        let metrics = operator.metrics;
        *slot = Some(operator);
        metrics
    }

    /// With an audit log: fails if the API server refused the operator any request since it
    /// started (403: RBAC misses something it does).
    fn no_request_was_forbidden(&self) {
        let Some(path) = &self.audit_log else { return };
        let (mut requests, _) = audit::read_from(path, self.audit_start)
            .unwrap_or_else(|e| panic!("read audit log {}: {e}", path.display()));
        // The least-privilege probes are refused on purpose.
        requests.retain(|r| r.user_agent != security::PROBE_AGENT);
        let summary = audit::Summary::of(&requests);
        eprintln!(
            "e2e: the operator made {} requests ({} writes) in the scenarios",
            requests.len(),
            summary.other.total_writes()
                + summary
                    .tenants
                    .values()
                    .map(audit::Counts::total_writes)
                    .sum::<u64>()
        );
        let forbidden: Vec<String> = summary
            .forbidden
            .iter()
            .map(|r| format!("{} {}", r.verb, r.request_uri))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the API server refused the operator (user {OPERATOR_USER}, rights of \
             deploy/base/rbac.yaml) {} request(s) with 403 Forbidden:\n{}\noperator log: {}",
            forbidden.len(),
            forbidden.join("\n"),
            self.log.display()
        );
    }

    fn tenants(&self) -> Api<DealerTenant> {
        Api::all(self.client.clone())
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    fn in_namespace<K>(&self, tenant: &DealerTenant) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &namespace_of(tenant))
    }

    /// `e2e-<run id>-<suffix>`.
    fn name(&self, suffix: &str) -> String {
        format!("e2e-{}-{suffix}", self.run_id)
    }

    /// Creates a tenant, remembering its name for the cleanup even if the API server
    /// refuses it.
    async fn try_create(&self, name: &str, spec: Value) -> kube::Result<DealerTenant> {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.to_string());
        let tenant: DealerTenant = serde_json::from_value(json!({
            "apiVersion": "dealerdesk.de/v1alpha1",
            "kind": "DealerTenant",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("the test's manifest is a DealerTenant");
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.tenants().create(&params, &tenant).await
    }

    async fn create_tenant(&self, suffix: &str, spec: Value) -> DealerTenant {
        let name = self.name(suffix);
        assert!(name.len() <= 40, "{name} is too long for a tenant");
        eprintln!("e2e: creating tenant {name}");
        self.try_create(&name, spec)
            .await
            .unwrap_or_else(|e| panic!("create tenant {name}: {e}"))
    }

    /// JSON-merge-patches the tenant's spec.
    async fn patch_spec(&self, name: &str, spec: Value) -> DealerTenant {
        eprintln!("e2e: patching tenant {name} with spec {spec}");
        self.tenants()
            .patch(name, &merge_params(), &Patch::Merge(json!({"spec": &spec})))
            .await
            .unwrap_or_else(|e| panic!("patch tenant {name} with spec {spec}: {e}"))
    }

    async fn delete_tenant(&self, name: &str) {
        eprintln!("e2e: deleting tenant {name}");
        self.tenants()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete tenant {name}: {e}"));
    }

    /// Fails at once when the operator has exited: nothing would converge any more.
    fn assert_operator_running(&self) {
        let exited = self
            .operator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(Operator::exited);
        if let Some(status) = exited {
            // Dropping `E2e` prints the end of the log.
            panic!(
                "the operator exited early ({status}); its log: {}",
                self.log.display()
            );
        }
    }

    /// Calls `check` every second until it yields a value; `None` after `timeout`.
    async fn poll<T>(
        &self,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_operator_running();
            if let Some(value) = check().await {
                return Some(value);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Like [`Self::poll`], but a timeout fails the test with the tenant's current state,
    /// its namespace's, and the operator log.
    async fn wait_for<T>(
        &self,
        tenant: &str,
        what: &str,
        timeout: Duration,
        check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        eprintln!("e2e: waiting for {what}");
        let started = Instant::now();
        match self.poll(timeout, check).await {
            Some(value) => {
                eprintln!("e2e:   done after {}s", started.elapsed().as_secs());
                value
            }
            None => {
                let ns = format!("tenant-{tenant}");
                panic!(
                    "timed out after {}s waiting for {what}\n\
                     tenant {tenant}: {}\n\
                     namespace {ns}: {}\n\
                     operator log: {}",
                    timeout.as_secs(),
                    self.tenant_json(tenant).await,
                    self.namespace_json(&ns).await,
                    self.log.display()
                )
            }
        }
    }

    /// Waits until the tenant satisfies `pred` and returns it.
    async fn wait_tenant(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&DealerTenant) -> bool,
    ) -> DealerTenant {
        let api = self.tenants();
        let what = format!("tenant {name}: {what}");
        self.wait_for(name, &what, STEP_TIMEOUT, async || {
            api.get(name).await.ok().filter(|t| pred(t))
        })
        .await
    }

    async fn wait_tenant_gone(&self, name: &str, timeout: Duration) {
        let api = self.tenants();
        let what = format!("tenant {name} to be gone");
        self.wait_for(name, &what, timeout, async || gone(&api, name).await)
            .await;
    }

    async fn tenant_json(&self, name: &str) -> String {
        match self.tenants().get_opt(name).await {
            Ok(Some(t)) => pretty(&json!({
                "generation": t.metadata.generation,
                "deletionTimestamp": t.metadata.deletion_timestamp,
                "finalizers": t.metadata.finalizers,
                "spec": t.spec,
                "status": t.status,
            })),
            Ok(None) => "<does not exist>".into(),
            Err(e) => format!("<cannot read it: {e}>"),
        }
    }

    async fn namespace_json(&self, name: &str) -> String {
        match self.namespaces().get_opt(name).await {
            Ok(Some(ns)) => pretty(&json!({
                "labels": ns.metadata.labels,
                "deletionTimestamp": ns.metadata.deletion_timestamp,
                "finalizers": ns.metadata.finalizers,
                "spec": ns.spec,
                "status": ns.status,
            })),
            Ok(None) => "<does not exist>".into(),
            Err(e) => format!("<cannot read it: {e}>"),
        }
    }

    /// Reads an object in the tenant's namespace and checks that the tenant controls it.
    async fn assert_owned<K>(&self, tenant: &DealerTenant, name: &str) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&());
        let ns = namespace_of(tenant);
        let obj: K = self
            .in_namespace(tenant)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {ns}/{name}: {e}"));
        let owner = obj
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} has no controller owner reference"));
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.clone(),
                Some(owner.uid.clone())
            ),
            ("DealerTenant", tenant.name_any(), tenant.uid()),
            "{kind} {ns}/{name}: owner reference"
        );
        assert_eq!(
            obj.labels().get(TENANT_LABEL),
            Some(&tenant.name_any()),
            "{kind} {ns}/{name}: label {TENANT_LABEL}"
        );
        obj
    }

    // ---- scenarios ----

    /// The CRD's schema and CEL rules make the API server itself refuse a region outside
    /// the EU and a name too long for the derived names.
    async fn api_server_rejects_invalid_tenants(&self) {
        eprintln!("e2e: the API server rejects a non-EU region and a too long name");
        let london = self
            .try_create(
                &self.name("london"),
                json!({"displayName": "London Motors Ltd", "region": "europe-west2"}),
            )
            .await;
        expect_invalid(
            london,
            "supported values",
            "a tenant in europe-west2 (London)",
        );

        let long = self.name("this-name-is-much-too-long-for-a-tenant");
        assert!(long.len() > 40, "{long}");
        let too_long = self
            .try_create(
                &long,
                json!({"displayName": "Long Name", "region": "europe-west3"}),
            )
            .await;
        expect_invalid(
            too_long,
            "DNS-1123",
            &format!("a tenant name of {} characters", long.len()),
        );
    }

    /// With no replicas to wait for, a tenant becomes Ready on a cluster without nodes,
    /// with its namespace and every object in it.
    async fn a_tenant_without_replicas_becomes_ready(&self, t: &DealerTenant) {
        let name = t.name_any();
        let ns = namespace_of(t);
        let ready = self.wait_tenant(&name, "Ready", is_ready).await;
        let status = ready.status.as_ref().expect("a Ready tenant has a status");
        assert_eq!(
            status.namespace.as_deref(),
            Some(ns.as_str()),
            "status.namespace"
        );
        for type_ in ["Ready", "NamespaceReady", "ServerReady"] {
            let c = condition(&ready, type_)
                .unwrap_or_else(|| panic!("tenant {name} has no {type_} condition"));
            assert_eq!(c.status, "True", "{type_}: {c:?}");
            assert_eq!(c.observed_generation, ready.metadata.generation, "{c:?}");
        }

        let namespace = self
            .namespaces()
            .get(&ns)
            .await
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        for (key, value) in [
            (TENANT_LABEL, name.as_str()),
            ("app.kubernetes.io/managed-by", "dealertenant-operator"),
            ("pod-security.kubernetes.io/enforce", "restricted"),
        ] {
            assert_eq!(
                namespace.labels().get(key).map(String::as_str),
                Some(value),
                "namespace {ns}: label {key}"
            );
        }
        assert!(
            namespace.owner_references().is_empty(),
            "namespace {ns} must not be owned by the tenant (Retain keeps it): {:?}",
            namespace.owner_references()
        );

        self.assert_owned::<ResourceQuota>(t, "tenant-quota").await;
        self.assert_owned::<LimitRange>(t, "tenant-limits").await;
        for policy in [
            "default-deny-ingress",
            "allow-same-namespace",
            "allow-ingress-controller",
            "default-deny-egress",
            "allow-egress",
        ] {
            self.assert_owned::<NetworkPolicy>(t, policy).await;
        }
        // Egress: denied by default, and nothing the API server stored lets a Pod reach
        // the cloud metadata server or another namespace.
        let policies: Api<NetworkPolicy> = self.in_namespace(t);
        let allow = policies.get("allow-egress").await.expect("allow-egress");
        let spec = allow.spec.expect("a spec");
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Egress".to_string()][..])
        );
        for rule in spec.egress.iter().flatten() {
            for peer in rule.to.iter().flatten() {
                if let Some(ns) = &peer.namespace_selector {
                    assert_eq!(
                        ns.match_labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/metadata.name"))
                            .map(String::as_str),
                        Some("kube-system"),
                        "egress to another namespace than DNS's: {peer:?}"
                    );
                }
                if let Some(block) = &peer.ip_block {
                    assert!(
                        block.cidr == "169.254.169.254/32"
                            || block
                                .except
                                .iter()
                                .flatten()
                                .any(|e| e == "169.254.169.254/32")
                            || !block.cidr.starts_with("0.0.0.0")
                                && !block.cidr.starts_with("169.254"),
                        "{block:?}"
                    );
                }
            }
        }
        self.assert_owned::<ServiceAccount>(t, "server").await;
        self.assert_owned::<Service>(t, "server").await;
        let deployment = self.assert_owned::<Deployment>(t, "server").await;
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(0));
        self.assert_no_pdb(t).await;
    }

    /// `kubectl get dt` columns, read from the API server's Table output.
    async fn printer_columns_show_region_and_readiness(&self, t: &DealerTenant) {
        let name = t.name_any();
        eprintln!("e2e: printer columns of tenant {name}");
        let request =
            http::Request::get(format!("/apis/dealerdesk.de/v1alpha1/dealertenants/{name}"))
                .header(
                    http::header::ACCEPT,
                    "application/json;as=Table;v=v1;g=meta.k8s.io",
                )
                .body(Vec::new())
                .expect("a valid request");
        let table: Value = self
            .client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("GET tenant {name} as a Table: {e}"));
        assert_eq!(table["kind"], "Table", "{table:#}");
        let columns: Vec<(&str, i64)> = table["columnDefinitions"]
            .as_array()
            .unwrap_or_else(|| panic!("no columnDefinitions: {table:#}"))
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or_default();
                (name, c["priority"].as_i64().unwrap_or(0))
            })
            .collect();
        let with_priority = |priority: i64| -> Vec<&str> {
            columns
                .iter()
                .filter(|(_, p)| *p == priority)
                .map(|(n, _)| *n)
                .collect()
        };
        assert_eq!(
            with_priority(0),
            ["Name", "Region", "Ready", "Phase", "Reason", "Age"],
            "columns of `kubectl get dt`"
        );
        assert_eq!(
            with_priority(1),
            [
                "Display Name",
                "Namespace",
                "Components",
                "Deletion",
                "Paused"
            ],
            "extra columns of `kubectl get dt -o wide`"
        );

        let cells = table["rows"][0]["cells"]
            .as_array()
            .unwrap_or_else(|| panic!("no row: {table:#}"));
        assert_eq!(cells.len(), columns.len(), "{table:#}");
        let cell = |column: &str| {
            let i = columns.iter().position(|(n, _)| *n == column).unwrap();
            &cells[i]
        };
        for (column, want) in [
            ("Name", json!(name)),
            ("Region", json!(t.spec.region)),
            ("Ready", json!("True")),
            ("Phase", json!("Ready")),
            ("Display Name", json!(t.spec.display_name)),
            ("Reason", json!("AllComponentsReady")),
            ("Namespace", json!(namespace_of(t))),
            // The "ready" tenant has every component off.
            ("Components", json!("none")),
            ("Deletion", json!("Retain")),
            ("Paused", json!(false)),
        ] {
            assert_eq!(
                cell(column),
                &want,
                "column {column}; row {:#}",
                table["rows"][0]
            );
        }
        assert!(cell("Age").is_string(), "Age: {}", cell("Age"));

        kubectl_shows_the_columns(&name, &t.spec.region);
    }

    /// A transition rule keeps `spec.region` as it was created.
    async fn region_is_immutable(&self, t: &DealerTenant) {
        let name = t.name_any();
        eprintln!("e2e: the region of tenant {name} is immutable");
        let moved = self
            .tenants()
            .patch(
                &name,
                &merge_params(),
                &Patch::Merge(json!({"spec": {"region": "europe-west1"}})),
            )
            .await;
        expect_invalid(
            moved,
            "region is immutable",
            &format!(
                "moving tenant {name} from {} to europe-west1",
                t.spec.region
            ),
        );
        let now = self
            .tenants()
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("get tenant {name}: {e}"));
        assert_eq!(now.spec.region, t.spec.region);
    }

    /// The server Pod template passes Pod Security Admission `restricted`, which the
    /// tenant namespace enforces: the ReplicaSet controller manages to create a Pod.
    async fn server_pods_pass_pod_security(&self, t: &DealerTenant) {
        let name = t.name_any();
        // No node will ever run the Pod: the tenant says so instead of becoming Ready.
        let waiting = self
            .wait_tenant(&name, "ServerReady=False, reason Progressing", |t| {
                observed(t)
                    && condition(t, "ServerReady")
                        .is_some_and(|c| c.status == "False" && c.reason == "Progressing")
            })
            .await;
        assert_eq!(phase(&waiting), Some(Phase::Provisioning));
        let ready = condition(&waiting, "Ready").expect("a Ready condition");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Progressing")
        );

        let pods: Api<Pod> = self.in_namespace(t);
        let replica_sets: Api<ReplicaSet> = self.in_namespace(t);
        let by_tenant = ListParams::default().labels(&format!("{TENANT_LABEL}={name}"));
        eprintln!("e2e: waiting for a server Pod of tenant {name}");
        let pod = self
            .poll(POD_TIMEOUT, async || {
                let sets = replica_sets.list(&ListParams::default()).await.ok()?;
                if let Some(refused) = failed_creates(&sets.items)
                    .into_iter()
                    .find(|m| m.contains("PodSecurity"))
                {
                    panic!(
                        "Pod Security Admission refused the server Pod of tenant {name}: {refused}"
                    );
                }
                pods.list(&by_tenant).await.ok()?.items.into_iter().next()
            })
            .await;

        match pod {
            Some(pod) => {
                eprintln!("e2e:   Pod {} was admitted", pod.name_any());
                // An earlier attempt may have failed for a passing reason (the quota
                // controller had not yet computed the new ResourceQuota's usage); the
                // ReplicaSet controller clears that condition on its next good sync.
                let clean = self
                    .poll(Duration::from_secs(30), async || {
                        let sets = replica_sets.list(&ListParams::default()).await.ok()?;
                        failed_creates(&sets.items).is_empty().then_some(())
                    })
                    .await;
                if clean.is_none() {
                    let sets = replica_sets.list(&ListParams::default()).await;
                    let failures = sets.map(|s| failed_creates(&s.items));
                    panic!(
                        "a ReplicaSet of tenant {name} still reports FailedCreate: {failures:?}"
                    );
                }
            }
            None => {
                // A refusal by Pod Security Admission shows as a FailedCreate condition on
                // the ReplicaSet, which is what this scenario is about. No Pod without such
                // a condition means the ReplicaSet controller has not got round to it yet
                // (it backs off exponentially after earlier failures, e.g. while the new
                // ResourceQuota's usage was still unknown): slow, but no evidence of a
                // refusal. That is acceptable only if the ReplicaSet exists at all.
                let sets = replica_sets
                    .list(&ListParams::default())
                    .await
                    .unwrap_or_else(|e| panic!("list ReplicaSets of tenant {name}: {e}"));
                let failures = failed_creates(&sets.items);
                assert!(
                    failures.is_empty(),
                    "the ReplicaSet controller could not create the server Pod of tenant {name}: {failures:?}"
                );
                assert!(
                    !sets.items.is_empty(),
                    "no ReplicaSet for the server Deployment of tenant {name} after {}s",
                    POD_TIMEOUT.as_secs()
                );
                eprintln!(
                    "e2e: notice: no server Pod of tenant {name} after {}s, but its ReplicaSet \
                     exists and reports no FailedCreate; accepting",
                    POD_TIMEOUT.as_secs()
                );
            }
        }
    }

    /// A PodDisruptionBudget exists exactly while the server runs more than one replica.
    async fn a_disruption_budget_follows_replicas(&self, t: &DealerTenant) {
        let name = t.name_any();
        self.assert_no_pdb(t).await;
        let pdbs: Api<PodDisruptionBudget> = self.in_namespace(t);

        self.patch_spec(&name, json!({"server": {"replicas": 2}}))
            .await;
        self.wait_for(
            &name,
            "a PodDisruptionBudget with 2 replicas",
            STEP_TIMEOUT,
            async || pdbs.get_opt("server").await.ok().flatten(),
        )
        .await;
        self.assert_owned::<PodDisruptionBudget>(t, "server").await;

        self.patch_spec(&name, json!({"server": {"replicas": 1}}))
            .await;
        self.wait_for(
            &name,
            "the PodDisruptionBudget to go with 1 replica",
            STEP_TIMEOUT,
            async || gone(&pdbs, "server").await,
        )
        .await;
    }

    /// A paused tenant is not repaired; unpausing repairs it.
    async fn a_paused_tenant_is_left_alone(&self, t: &DealerTenant) {
        let name = t.name_any();
        let deployments: Api<Deployment> = self.in_namespace(t);

        self.patch_spec(&name, json!({"paused": true})).await;
        let paused = self
            .wait_tenant(&name, "phase Paused", |t| {
                observed(t) && phase(t) == Some(Phase::Paused)
            })
            .await;
        let ready = condition(&paused, "Ready").expect("a Ready condition");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Paused")
        );

        eprintln!("e2e: deleting Deployment server of paused tenant {name} by hand");
        deployments
            .delete("server", &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("delete Deployment server of tenant {name}: {e}"));
        self.wait_for(
            &name,
            "Deployment server to be deleted",
            Duration::from_secs(30),
            async || gone(&deployments, "server").await,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        self.assert_operator_running();
        let recreated = deployments
            .get_opt("server")
            .await
            .unwrap_or_else(|e| panic!("get Deployment server of tenant {name}: {e}"));
        assert!(
            recreated.is_none(),
            "the operator recreated the Deployment of paused tenant {name}; log: {}",
            self.log.display()
        );
        let still = self
            .tenants()
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("get tenant {name}: {e}"));
        assert_eq!(
            phase(&still),
            Some(Phase::Paused),
            "{}",
            self.tenant_json(&name).await
        );

        self.patch_spec(&name, json!({"paused": false})).await;
        self.wait_for(
            &name,
            "Deployment server to be recreated after unpausing",
            STEP_TIMEOUT,
            async || deployments.get_opt("server").await.ok().flatten(),
        )
        .await;
        self.assert_owned::<Deployment>(t, "server").await;
        self.wait_tenant(&name, "Ready again after unpausing", is_ready)
            .await;
    }

    /// `deletionPolicy: Delete` erases the namespace before the tenant goes.
    async fn deletion_policy_delete_erases_the_namespace(&self, t: &DealerTenant) {
        let name = t.name_any();
        let ns = namespace_of(t);
        assert_eq!(t.spec.deletion_policy, DeletionPolicy::Delete);
        self.delete_tenant(&name).await;
        let (tenants, namespaces) = (self.tenants(), self.namespaces());
        self.wait_for(
            &name,
            &format!("tenant {name} and namespace {ns} to be gone"),
            NAMESPACE_GONE_TIMEOUT,
            async || {
                let tenant_gone = gone(&tenants, &name).await.is_some();
                let namespace_gone = gone(&namespaces, &ns).await.is_some();
                (tenant_gone && namespace_gone).then_some(())
            },
        )
        .await;
    }

    /// `deletionPolicy: Retain` (the default) lets the tenant go and keeps its namespace,
    /// labelled as retained.
    async fn deletion_policy_retain_keeps_the_namespace(&self, t: &DealerTenant) {
        let name = t.name_any();
        let ns = namespace_of(t);
        assert_eq!(t.spec.deletion_policy, DeletionPolicy::Retain);
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, STEP_TIMEOUT).await;

        let kept = self
            .namespaces()
            .get_opt(&ns)
            .await
            .unwrap_or_else(|e| panic!("get namespace {ns}: {e}"))
            .unwrap_or_else(|| panic!("deletionPolicy Retain, yet namespace {ns} is gone"));
        assert!(
            kept.metadata.deletion_timestamp.is_none(),
            "deletionPolicy Retain, yet namespace {ns} is being deleted"
        );
        assert_eq!(
            kept.labels()
                .get("dealerdesk.de/retained")
                .map(String::as_str),
            Some("true"),
            "namespace {ns}: label dealerdesk.de/retained; labels {:?}",
            kept.labels()
        );

        eprintln!("e2e: deleting retained namespace {ns}");
        self.namespaces()
            .delete(&ns, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete namespace {ns}: {e}"));
    }

    /// The ValidatingAdmissionPolicy, generated for `thirdCountryProcessors: deny`, makes the API server itself refuse a tenant with email on, both when it is
    /// created and when email is switched on later; a tenant with email off is accepted and
    /// stays deletable (the policy exempts objects being deleted, so the operator can
    /// remove its finalizer). Removes the policy again at the end; the cleanup does so too
    /// when a check fails.
    async fn admission_policy_denies_third_country_processors(&self) {
        eprintln!("e2e: the admission policy denies third-country processors");
        self.install_admission_policy().await;
        let refusal = self.wait_until_email_is_refused().await;
        eprintln!("e2e:   the API server said: {refusal}");
        // Deleted and applied again (this API server may then no longer find a policy's
        // parameter object; this policy has none): every rule still holds.
        eprintln!("e2e: deleting and re-applying the admission policy");
        self.remove_admission_policy().await;
        self.install_admission_policy().await;
        let refusal = self.wait_until_email_is_refused().await;
        eprintln!("e2e:   after re-applying, the API server said: {refusal}");
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
        let stored = policies.get(POLICY_NAME).await.expect("the policy");
        let spec = stored.spec.expect("a spec");
        assert!(
            spec.param_kind.is_none(),
            "the policy must have no parameter"
        );
        assert_eq!(
            spec.validations.map(|v| v.len()),
            Some(admission::validations(ThirdCountryPolicy::Deny).len())
        );

        let off = self
            .create_tenant("vap-off", tenant_with_email(false))
            .await;
        let name = off.name_any();
        // With the finalizer, deleting the tenant needs an UPDATE by the operator.
        self.wait_tenant(&name, &format!("finalizer {FINALIZER}"), |t| {
            t.finalizers().iter().any(|f| f == FINALIZER)
        })
        .await;
        eprintln!("e2e: switching email on for tenant {name}");
        let switched = self
            .tenants()
            .patch(
                &name,
                &merge_params(),
                &Patch::Merge(json!({"spec": {"email": {"enabled": true}}})),
            )
            .await;
        expect_third_country_refusal(switched, &format!("switching email on for tenant {name}"));
        let still = self
            .tenants()
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("get tenant {name}: {e}"));
        assert_eq!(
            json!(still.spec)["email"]["enabled"],
            json!(false),
            "tenant {name}: spec.email after the refused update"
        );

        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, STEP_TIMEOUT).await;
        self.remove_admission_policy().await;
    }

    /// Server-side applies the policy generated for `thirdCountryProcessors: deny`, checks
    /// that it type-checks, and only then binds it.
    async fn install_admission_policy(&self) {
        let (policy, binding) = admission::objects(ThirdCountryPolicy::Deny);
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.client.clone());
        // Replacing and then deleting someone else's policy would be worse than failing.
        assert_absent_or_ours(&bindings, POLICY_NAME).await;
        assert_absent_or_ours(&policies, POLICY_NAME).await;

        // From here on the cleanup deletes them, whatever happens.
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applied = true;
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        eprintln!("e2e: applying ValidatingAdmissionPolicy {POLICY_NAME}");
        policies
            .patch(POLICY_NAME, &apply, &Patch::Apply(&policy))
            .await
            .unwrap_or_else(|e| {
                panic!("server-side apply ValidatingAdmissionPolicy {POLICY_NAME}: {e}")
            });
        self.assert_policy_type_checks(&policies).await;
        eprintln!("e2e: applying ValidatingAdmissionPolicyBinding {POLICY_NAME}");
        bindings
            .patch(POLICY_NAME, &apply, &Patch::Apply(&binding))
            .await
            .unwrap_or_else(|e| {
                panic!("server-side apply ValidatingAdmissionPolicyBinding {POLICY_NAME}: {e}")
            });
    }

    /// Creates [`OPERATOR_NAMESPACE`] unless it exists, remembering that for the cleanup,
    /// which deletes it only if this run created it.
    async fn ensure_operator_namespace(&self) {
        let namespaces = self.namespaces();
        let existing = namespaces
            .get_opt(OPERATOR_NAMESPACE)
            .await
            .unwrap_or_else(|e| panic!("get namespace {OPERATOR_NAMESPACE}: {e}"));
        match existing {
            Some(ns) if ns.metadata.deletion_timestamp.is_none() => {
                eprintln!("e2e: namespace {OPERATOR_NAMESPACE} exists");
                return;
            }
            Some(_) => {
                // Left by an earlier run and still being emptied: it takes no new objects.
                eprintln!("e2e: waiting for terminating namespace {OPERATOR_NAMESPACE} to be gone");
                let deleted = self
                    .poll(NAMESPACE_GONE_TIMEOUT, async || {
                        gone(&namespaces, OPERATOR_NAMESPACE).await
                    })
                    .await;
                assert!(
                    deleted.is_some(),
                    "namespace {OPERATOR_NAMESPACE} is still terminating after {}s: {}",
                    NAMESPACE_GONE_TIMEOUT.as_secs(),
                    self.namespace_json(OPERATOR_NAMESPACE).await
                );
            }
            None => {}
        }
        eprintln!("e2e: creating namespace {OPERATOR_NAMESPACE}");
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": OPERATOR_NAMESPACE},
        }))
        .expect("the test's manifest is a Namespace");
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match namespaces.create(&params, &ns).await {
            Ok(_) => {
                self.admission
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .created_namespace = true;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => eprintln!(
                "e2e: namespace {OPERATOR_NAMESPACE} was created meanwhile; the cleanup keeps it"
            ),
            Err(e) => panic!("create namespace {OPERATOR_NAMESPACE}: {e}"),
        }
    }

    /// kube-controller-manager type-checks a policy's expressions against the API server's
    /// schemas and reports what does not check in `status.typeChecking`; fails with those
    /// warnings. Without a status for the current generation after a while, goes on with a
    /// notice (the check then happens only by the refusals that follow).
    async fn assert_policy_type_checks(&self, policies: &Api<ValidatingAdmissionPolicy>) {
        eprintln!("e2e: waiting for the type check of ValidatingAdmissionPolicy {POLICY_NAME}");
        let checked = self
            .poll(TYPE_CHECK_TIMEOUT, async || {
                let policy = policies.get(POLICY_NAME).await.ok()?;
                let observed = policy.status.as_ref()?.observed_generation?;
                (Some(observed) == policy.metadata.generation).then_some(policy)
            })
            .await;
        let Some(policy) = checked else {
            eprintln!(
                "e2e: notice: ValidatingAdmissionPolicy {POLICY_NAME} has no status.observedGeneration \
                 for its generation after {}s (kube-controller-manager's \
                 validatingadmissionpolicy-status controller sets it); going on without the type check",
                TYPE_CHECK_TIMEOUT.as_secs()
            );
            return;
        };
        let warnings: Vec<String> = policy
            .status
            .and_then(|s| s.type_checking)
            .and_then(|t| t.expression_warnings)
            .unwrap_or_default()
            .into_iter()
            .map(|w| format!("{}: {}", w.field_ref, w.warning))
            .collect();
        assert!(
            warnings.is_empty(),
            "ValidatingAdmissionPolicy {POLICY_NAME}: expressions that do not type-check on this \
             API server:\n{}",
            warnings.join("\n")
        );
        eprintln!("e2e:   no type-check warnings");
    }

    /// A new binding takes effect once the API server has loaded it: tries to create a tenant
    /// with email on until the policy refuses one, deleting each that still gets in. Returns
    /// the refusal's message.
    async fn wait_until_email_is_refused(&self) -> String {
        eprintln!("e2e: waiting for the admission policy to refuse a tenant with email on");
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            self.assert_operator_running();
            attempt += 1;
            let name = self.name(&format!("vap-email-{attempt}"));
            let last = match self.try_create(&name, tenant_with_email(true)).await {
                Err(e) => match third_country_refusal(&e) {
                    Some(message) => {
                        eprintln!("e2e:   refused after {}s", started.elapsed().as_secs());
                        return message.to_string();
                    }
                    None => format!("tenant {name} was refused for another reason: {e}"),
                },
                Ok(_) => {
                    eprintln!("e2e:   tenant {name} was accepted: the policy is not enforced yet");
                    self.delete_tenant(&name).await;
                    self.wait_tenant_gone(&name, STEP_TIMEOUT).await;
                    format!("tenant {name} was accepted")
                }
            };
            if started.elapsed() >= POLICY_ACTIVE_TIMEOUT {
                let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
                let status = match policies.get_opt(POLICY_NAME).await {
                    Ok(Some(p)) => pretty(&json!(p.status)),
                    Ok(None) => "<does not exist>".into(),
                    Err(e) => format!("<cannot read it: {e}>"),
                };
                panic!(
                    "ValidatingAdmissionPolicy {POLICY_NAME} refused no tenant with email on \
                     within {}s; last attempt: {last}\n\
                     policy status: {status}\n\
                     operator log: {}",
                    POLICY_ACTIVE_TIMEOUT.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the binding and the policy, and fails if that does not work: a
    /// binding left behind with failurePolicy Fail would govern every later tenant. The
    /// namespace, if this run created it, goes in the cleanup, after the tenants (the
    /// operator writes their erasure receipts into it).
    async fn remove_admission_policy(&self) {
        eprintln!("e2e: removing ValidatingAdmissionPolicy {POLICY_NAME} and its binding");
        let problems = delete_admission_objects(&self.client).await;
        assert!(
            problems.is_empty(),
            "removing the admission policy: {}",
            problems.join("; ")
        );
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applied = false;
    }

    // ---- at scale ----

    /// `n` tenants without components or replicas, with an operator of its own whose
    /// `resyncSeconds` is [`SCALE_RESYNC_SECONDS`]: counts the operator's API writes per
    /// tenant until they are Ready and settled, their Warning Events and the reconcile
    /// passes, then the writes of one resync round; prints the numbers, deletes the tenants
    /// (deletionPolicy Delete), and only then asserts the targets.
    async fn at_scale_writes_settle_and_resync_is_quiet(&self, n: usize) {
        let audit_log = self
            .audit_log
            .clone()
            .expect("the scale phase reads the audit log");
        let read_audit = |offset: u64| {
            audit::read_from(&audit_log, offset)
                .unwrap_or_else(|e| panic!("read audit log {}: {e}", audit_log.display()))
        };
        eprintln!(
            "e2e: at scale: {n} tenants; restarting the operator with resyncSeconds {SCALE_RESYNC_SECONDS}"
        );
        let config = self.write_scale_config();
        let metrics = self.restart_operator(&config);
        let reconciles_before = self.wait_for_metrics(metrics).await;
        let start = audit::end_of(&audit_log)
            .unwrap_or_else(|e| panic!("audit log {}: {e}", audit_log.display()));

        let names: Vec<String> = (1..=n).map(|i| self.name(&format!("s{i:03}"))).collect();
        let started = Instant::now();
        for name in &names {
            self.try_create(name, scale_spec())
                .await
                .unwrap_or_else(|e| panic!("create tenant {name}: {e}"));
        }
        eprintln!(
            "e2e: created {n} tenants in {}s",
            started.elapsed().as_secs()
        );
        self.wait_all_ready(&names, started).await;
        let ready_after = started.elapsed();
        eprintln!("e2e: letting the operator settle for {}s", SETTLE.as_secs());
        tokio::time::sleep(SETTLE).await;
        self.assert_operator_running();
        let reconciles_settled = reconciles_total(metrics)
            .unwrap_or_else(|| panic!("the operator's /metrics on {metrics} does not answer"));
        let (requests, round_start) = read_audit(start);
        let warnings = self.warning_events(&names).await;

        // Every tenant is due again resyncSeconds after its last pass.
        let round = Duration::from_secs(SCALE_RESYNC_SECONDS) + SETTLE;
        eprintln!("e2e: watching one resync round ({}s)", round.as_secs());
        tokio::time::sleep(round).await;
        self.assert_operator_running();
        let reconciles_round = reconciles_total(metrics)
            .unwrap_or_else(|| panic!("the operator's /metrics on {metrics} does not answer"));
        let (round_requests, deletion_start) = read_audit(round_start);

        let report = ScaleReport {
            names: names.clone(),
            ready_after,
            converge: audit::Summary::of(&requests),
            reconciles: reconciles_settled.saturating_sub(reconciles_before),
            warnings,
            round,
            round_requests: audit::Summary::of(&round_requests),
            round_reconciles: reconciles_round.saturating_sub(reconciles_settled),
        };
        // Straight to stderr: the numbers show in CI logs also when the test passes.
        let _ = writeln!(std::io::stderr(), "{}", report.markdown());
        let failures = report.failures();

        let deleting = Instant::now();
        self.delete_all_at_scale(&names, &failures).await;
        let (deletion_requests, _) = read_audit(deletion_start);
        let deletion = audit::Summary::of(&deletion_requests);
        let deletion_writes: u64 = names
            .iter()
            .map(|t| deletion.tenant(t).total_writes())
            .sum();
        let _ = writeln!(
            std::io::stderr(),
            "e2e: deleting {n} tenants and their namespaces took {}s and {deletion_writes} \
             operator writes ({:.1} per tenant)\n",
            deleting.elapsed().as_secs(),
            deletion_writes as f64 / n as f64
        );

        assert!(
            failures.is_empty(),
            "the operator misses its targets at scale ({n} tenants; numbers above; operator \
             log {}):\n- {}",
            self.log.display(),
            failures.join("\n- ")
        );
    }

    /// The built-in default configuration with `resyncSeconds` [`SCALE_RESYNC_SECONDS`].
    fn write_scale_config(&self) -> PathBuf {
        let config = OperatorConfig {
            resync_seconds: SCALE_RESYNC_SECONDS,
            ..OperatorConfig::default()
        };
        let yaml = serde_saphyr::to_string(&config).expect("the configuration serializes");
        let path =
            std::env::temp_dir().join(format!("dealertenant-e2e-{}-config.yaml", self.run_id));
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Waits until the operator serves its metrics; returns the reconcile count.
    async fn wait_for_metrics(&self, metrics: SocketAddr) -> u64 {
        let found = self
            .poll(Duration::from_secs(60), async || reconciles_total(metrics))
            .await;
        found.unwrap_or_else(|| {
            panic!(
                "the operator serves no dealertenant_reconciles_total on http://{metrics}/metrics \
                 after 60s; log: {}",
                self.log.display()
            )
        })
    }

    /// Waits until every tenant of `names` is Ready, reporting progress.
    async fn wait_all_ready(&self, names: &[String], started: Instant) {
        let timeout = Duration::from_secs(300).max(Duration::from_secs(3) * names.len() as u32);
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        eprintln!(
            "e2e: waiting for {} tenants to be Ready (at most {}s)",
            names.len(),
            timeout.as_secs()
        );
        let api = self.tenants();
        let mut last_report = Instant::now();
        let mut not_ready: Vec<String> = names.to_vec();
        let all = self
            .poll(timeout, async || {
                let list = api.list(&ListParams::default()).await.ok()?;
                let ready: BTreeSet<String> = list
                    .items
                    .iter()
                    .filter(|t| wanted.contains(t.name_any().as_str()) && is_ready(t))
                    .map(ResourceExt::name_any)
                    .collect();
                not_ready = names
                    .iter()
                    .filter(|n| !ready.contains(*n))
                    .cloned()
                    .collect();
                if last_report.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "e2e:   {}/{} Ready after {}s",
                        ready.len(),
                        names.len(),
                        started.elapsed().as_secs()
                    );
                    last_report = Instant::now();
                }
                not_ready.is_empty().then_some(())
            })
            .await;
        if all.is_none() {
            let first = &not_ready[0];
            panic!(
                "{} of {} tenants are not Ready after {}s, e.g. {first}: {}\noperator log: {}",
                not_ready.len(),
                names.len(),
                timeout.as_secs(),
                self.tenant_json(first).await,
                self.log.display()
            );
        }
        eprintln!(
            "e2e:   all {} Ready after {}s",
            names.len(),
            started.elapsed().as_secs()
        );
    }

    /// Warning Events (events.k8s.io) about the tenants: `reason: note` by tenant. Events
    /// about a cluster-scoped object are in namespace `default`.
    async fn warning_events(&self, names: &[String]) -> BTreeMap<String, Vec<String>> {
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), "default");
        let list = events
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list Events in namespace default: {e}"));
        let mut warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for event in list.items {
            let Some(regarding) = event.regarding.as_ref() else {
                continue;
            };
            let tenant = regarding.name.clone().unwrap_or_default();
            if regarding.kind.as_deref() != Some("DealerTenant")
                || !wanted.contains(tenant.as_str())
                || event.type_.as_deref() != Some("Warning")
            {
                continue;
            }
            let count = event.series.as_ref().map_or(1, |s| s.count);
            warnings.entry(tenant).or_default().push(format!(
                "{} (x{count}): {}",
                event.reason.as_deref().unwrap_or("-"),
                event.note.as_deref().unwrap_or("")
            ));
        }
        warnings
    }

    /// Deletes the tenants and waits until they and their namespaces are gone. A timeout
    /// fails the test, also naming the scale targets `failures` already missed.
    async fn delete_all_at_scale(&self, names: &[String], failures: &[String]) {
        eprintln!("e2e: deleting {} tenants", names.len());
        for name in names {
            match self.tenants().delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => panic!("delete tenant {name}: {e}"),
            }
        }
        let timeout = Duration::from_secs(300).max(Duration::from_secs(4) * names.len() as u32);
        let wanted: BTreeSet<String> = names.iter().cloned().collect();
        let namespaces: BTreeSet<String> = names.iter().map(|n| format!("tenant-{n}")).collect();
        let (tenants, ns_api) = (self.tenants(), self.namespaces());
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut left = (names.len(), names.len());
        let done = self
            .poll(timeout, async || {
                let t = tenants.list(&ListParams::default()).await.ok()?;
                let ns = ns_api.list(&ListParams::default()).await.ok()?;
                left = (
                    t.items
                        .iter()
                        .filter(|t| wanted.contains(&t.name_any()))
                        .count(),
                    ns.items
                        .iter()
                        .filter(|n| namespaces.contains(&n.name_any()))
                        .count(),
                );
                if last_report.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "e2e:   after {}s: {} tenants and {} namespaces left",
                        started.elapsed().as_secs(),
                        left.0,
                        left.1
                    );
                    last_report = Instant::now();
                }
                (left == (0, 0)).then_some(())
            })
            .await;
        assert!(
            done.is_some(),
            "{} tenants and {} namespaces are still there {}s after the tenants were deleted \
             (deletionPolicy Delete); operator log: {}{}",
            left.0,
            left.1,
            timeout.as_secs(),
            self.log.display(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(
                    "\nbefore that, the scale targets were missed:\n- {}",
                    failures.join("\n- ")
                )
            }
        );
        eprintln!("e2e:   all gone after {}s", started.elapsed().as_secs());
    }

    async fn assert_no_pdb(&self, t: &DealerTenant) {
        let pdb = self
            .in_namespace::<PodDisruptionBudget>(t)
            .get_opt("server")
            .await
            .unwrap_or_else(|e| panic!("get PodDisruptionBudget of tenant {}: {e}", t.name_any()));
        assert!(
            pdb.is_none(),
            "tenant {} with {} replica(s) must have no PodDisruptionBudget",
            t.name_any(),
            t.spec.server.replicas
        );
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e failed; operator log {}, last lines:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        let operator = self
            .operator
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let tenants = std::mem::take(
            self.created
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let admission = std::mem::take(
            self.admission
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let namespace_prefix = format!("tenant-e2e-{}-", self.run_id);
        // Drop cannot await, and the test's runtime cannot be blocked on from inside: clean
        // up on a thread of its own, with its own runtime and client.
        let cleanup = std::thread::spawn(move || {
            let mut operator = operator;
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    // The timer must be made inside the runtime.
                    let work = async {
                        let work = clean_up(&tenants, &namespace_prefix, &admission, &mut operator);
                        tokio::time::timeout(CLEANUP_TIMEOUT, work).await
                    };
                    if rt.block_on(work).is_err() {
                        eprintln!("e2e cleanup: gave up after {}s", CLEANUP_TIMEOUT.as_secs());
                    }
                }
                Err(e) => eprintln!("e2e cleanup: no runtime: {e}"),
            }
            // Dropping the operator (if still here) stops it.
            drop(operator);
        });
        if cleanup.join().is_err() {
            eprintln!("e2e cleanup: panicked");
        }
    }
}

/// Deletes the admission policy's binding and the policy (first: a binding
/// left behind would govern every tenant), then every tenant of the run, letting the
/// operator finalize them for a while, then stops the operator, releases whatever is still
/// stuck on its finalizer, and deletes the run's namespaces. Best effort: reports problems,
/// never fails.
async fn clean_up(
    tenants: &[String],
    namespace_prefix: &str,
    admission: &AdmissionState,
    operator: &mut Option<Operator>,
) {
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("e2e cleanup: no client: {e}");
            return;
        }
    };
    if admission.applied {
        eprintln!("e2e cleanup: removing ValidatingAdmissionPolicy {POLICY_NAME} and its binding");
        for problem in delete_admission_objects(&client).await {
            eprintln!("e2e cleanup: {problem}");
        }
    }
    let api: Api<DealerTenant> = Api::all(client.clone());
    let mut left: Vec<&str> = Vec::new();
    for name in tenants {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => left.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                eprintln!("e2e cleanup: delete tenant {name}: {e}");
                left.push(name);
            }
        }
    }
    let operator_running = operator.as_mut().is_some_and(|o| o.exited().is_none());
    if operator_running && !left.is_empty() {
        eprintln!("e2e cleanup: waiting for the operator to finalize {left:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
            let mut remaining = Vec::new();
            for name in left {
                if gone(&api, name).await.is_none() {
                    remaining.push(name);
                }
            }
            left = remaining;
        }
    }
    drop(operator.take());
    for name in left {
        eprintln!("e2e cleanup: removing the finalizers of tenant {name}");
        let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
        match api.patch(name, &merge_params(), &release).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => eprintln!("e2e cleanup: release tenant {name}: {e}"),
        }
    }
    // The operator's erasure receipts of this run's tenants.
    let receipts: Api<ConfigMap> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let receipt_prefix = format!("erasure-{}", namespace_prefix.trim_start_matches("tenant-"));
    if let Ok(list) = receipts
        .list(&ListParams::default().labels("dealerdesk.de/erasure-receipt"))
        .await
    {
        for cm in list
            .items
            .into_iter()
            .filter(|cm| cm.name_any().starts_with(&receipt_prefix))
        {
            if let Err(e) = receipts
                .delete(&cm.name_any(), &DeleteParams::default())
                .await
            {
                eprintln!("e2e cleanup: delete receipt {}: {e}", cm.name_any());
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client);
    match namespaces.list(&ListParams::default()).await {
        Ok(list) => {
            let leftovers = list.items.into_iter().filter(|ns| {
                ns.name_any().starts_with(namespace_prefix)
                    && ns.metadata.deletion_timestamp.is_none()
            });
            for ns in leftovers {
                let ns = ns.name_any();
                eprintln!("e2e cleanup: deleting namespace {ns}");
                if let Err(e) = namespaces.delete(&ns, &DeleteParams::default()).await {
                    eprintln!("e2e cleanup: delete namespace {ns}: {e}");
                }
            }
        }
        Err(e) => eprintln!("e2e cleanup: list namespaces: {e}"),
    }
    if admission.created_namespace {
        eprintln!("e2e cleanup: deleting namespace {OPERATOR_NAMESPACE}, which this run created");
        match namespaces
            .delete(OPERATOR_NAMESPACE, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => eprintln!("e2e cleanup: delete namespace {OPERATOR_NAMESPACE}: {e}"),
        }
    }
}

/// Deletes the admission policy's binding, then the policy, then its parameter ConfigMap,
/// each even if an earlier one fails. Returns what could not be deleted; what is already
/// gone is fine.
async fn delete_admission_objects(client: &Client) -> Vec<String> {
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let results = [
        (
            format!("ValidatingAdmissionPolicyBinding {POLICY_NAME}"),
            delete_if_present(&bindings, POLICY_NAME).await,
        ),
        (
            format!("ValidatingAdmissionPolicy {POLICY_NAME}"),
            delete_if_present(&policies, POLICY_NAME).await,
        ),
    ];
    results
        .into_iter()
        .filter_map(|(what, result)| result.err().map(|e| format!("delete {what}: {e}")))
        .collect()
}

/// Deletes an object; one that does not exist counts as deleted.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fails unless the object is absent or this suite wrote it (an earlier run that could
/// not clean up): the admission phase replaces and then deletes it.
async fn assert_absent_or_ours<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let existing = api
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {kind} {name}: {e}"));
    let Some(obj) = existing else { return };
    let managers: Vec<&str> = obj
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    assert!(
        managers.contains(&FIELD_MANAGER),
        "{kind} {name} already exists and this suite did not write it (field managers: \
         {managers:?}); the admission phase would replace and then delete it. Remove it, or \
         run the suite against a cluster without it."
    );
    eprintln!("e2e: {kind} {name} is left from an earlier run; replacing it");
}

/// How to start the operator.
struct OperatorOptions<'a> {
    /// `KUBECONFIG` of the operator; the test's own when `None`.
    kubeconfig: Option<&'a Path>,
    /// `--config`; the built-in default configuration when `None`.
    config: Option<&'a Path>,
    /// Append to the log rather than start it afresh.
    append: bool,
}

/// The operator binary cargo built for this test, running `run`. Dropping it kills it.
struct Operator {
    child: Child,
    /// Where it serves `/metrics`.
    metrics: SocketAddr,
}

impl Operator {
    fn spawn(log: &Path, options: &OperatorOptions) -> Self {
        let stdout = if options.append {
            File::options().append(true).create(true).open(log)
        } else {
            File::create(log)
        };
        let mut stdout =
            stdout.unwrap_or_else(|e| panic!("open operator log {}: {e}", log.display()));
        if options.append {
            let _ = writeln!(stdout, "\n===== e2e: operator restarted =====\n");
        }
        let stderr = stdout.try_clone().expect("a second handle to the log file");
        // Any free port: nothing else on the machine may hold the default one.
        let metrics = free_port();
        let binary = env_path(OPERATOR_BIN_ENV)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dealertenant-operator")));
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .args(["--metrics-addr", &metrics.to_string()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // One identity across restarts: a restarted operator takes its own Lease back
            // at once instead of waiting for it to run out.
            .env("POD_NAME", "e2e-operator")
            .env_remove("DEALERTENANT_CONFIG")
            .env_remove("DEALERTENANT_LOG_JSON")
            .env_remove("DEALERTENANT_METRICS_ADDR");
        if let Some(config) = options.config {
            command.arg("--config").arg(config);
        }
        if let Some(kubeconfig) = options.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start the operator: {e}"));
        eprintln!(
            "e2e: operator {} started (pid {}, metrics on {metrics})",
            binary.display(),
            child.id()
        );
        Self { child, metrics }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("find a free port on 127.0.0.1: {e}"))
}

/// `dealertenant_reconciles_total` from the operator's `/metrics`; `None` while it does
/// not answer.
fn reconciles_total(metrics: SocketAddr) -> Option<u64> {
    metric_value(&metrics_text(metrics)?, "dealertenant_reconciles_total")
}

/// The operator's `/metrics` page.
fn metrics_text(metrics: SocketAddr) -> Option<String> {
    http_get(metrics, "/metrics")
}

/// The value of a sample without labels in an OpenMetrics text.
fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        let value: f64 = value.split_whitespace().next()?.parse().ok()?;
        Some(value as u64)
    })
}

/// Server-side applies every object of `deploy/base/rbac.yaml` and binds [`OPERATOR_USER`] as
/// its bindings bind the operator's ServiceAccount: the same roles, in the same places. The
/// tenant role is bound by the operator itself, per tenant namespace.
async fn grant_operator_rbac(client: &Client) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/rbac.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut bindings = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if matches!(kind, "ClusterRoleBinding" | "RoleBinding") {
            bindings.push(doc.clone());
        }
        apply_manifest(client, doc).await;
    }
    assert!(
        bindings.iter().any(|b| b["kind"] == "ClusterRoleBinding"
            && b["roleRef"]["name"] == "dealertenant-operator"),
        "{} binds no ClusterRole dealertenant-operator",
        path.display()
    );
    for mut binding in bindings {
        binding["metadata"]["name"] = json!(OPERATOR_USER_BINDING);
        binding["subjects"] = json!([{
            "kind": "User",
            "apiGroup": "rbac.authorization.k8s.io",
            "name": OPERATOR_USER,
        }]);
        apply_manifest(client, binding).await;
    }
}

/// Waits until the API server's authorizer lets the operator user do what the new
/// bindings grant (list tenants cluster-wide, read ConfigMaps in its namespace).
async fn wait_until_rbac_is_active(kubeconfig: &Path) {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    let client = Client::try_from(config)
        .unwrap_or_else(|e| panic!("client for {}: {e}", kubeconfig.display()));
    let tenants: Api<DealerTenant> = Api::all(client.clone());
    let receipts: Api<ConfigMap> = Api::namespaced(client, OPERATOR_NAMESPACE);
    let one = ListParams::default().limit(1);
    let deadline = Instant::now() + RBAC_ACTIVE_TIMEOUT;
    loop {
        let last = match (
            tenants.list(&one).await,
            receipts.get_opt("dealertenant-e2e-rbac-probe").await,
        ) {
            (Ok(_), Ok(_)) => return,
            (Err(e), _) | (_, Err(e)) => e,
        };
        assert!(
            Instant::now() < deadline,
            "user {OPERATOR_USER} still lacks the rights of deploy/base/rbac.yaml {}s after they \
             were bound: {last}",
            RBAC_ACTIVE_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `kubectl get dt <name>` prints the default columns; skipped when kubectl is absent.
fn kubectl_shows_the_columns(name: &str, region: &str) {
    let output = match Command::new("kubectl")
        .args(["get", "dt", name, "--request-timeout=30s"])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("e2e: notice: kubectl is not on PATH; skipping the `kubectl get dt` check");
            return;
        }
        Err(e) => panic!("run kubectl: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl get dt {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["NAME", "REGION", "READY", "PHASE", "REASON", "AGE"] {
        assert!(
            header.contains(&column),
            "kubectl get dt: no {column} column in\n{stdout}"
        );
    }
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for value in [name, region, "True", "Ready"] {
        assert!(
            row.contains(&value),
            "kubectl get dt: no {value} in\n{stdout}"
        );
    }
}

/// Asserts that the API server refused a write as invalid (422) and said why.
fn expect_invalid(result: kube::Result<DealerTenant>, reason: &str, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 422 => assert!(
            status
                .message
                .to_lowercase()
                .contains(&reason.to_lowercase()),
            "{what}: refused, but the message does not mention {reason:?}: {}",
            status.message
        ),
        Err(e) => panic!("{what}: expected 422 Unprocessable Entity, got: {e}"),
        Ok(t) => panic!(
            "{what}: the API server accepted it (tenant {}); the CRD does not validate it",
            t.name_any()
        ),
    }
}

/// The message of a refusal by the admission policy's third-country rule, if `error` is one.
fn third_country_refusal(error: &kube::Error) -> Option<&str> {
    match error {
        kube::Error::Api(s)
            if matches!(s.code, 403 | 422)
                && (s.message.contains("third-country")
                    || s.message.contains("thirdCountryProcessors")) =>
        {
            Some(&s.message)
        }
        _ => None,
    }
}

/// Asserts that the admission policy refused a write for its third-country rule.
fn expect_third_country_refusal(result: kube::Result<DealerTenant>, what: &str) {
    match result {
        Err(e) => assert!(
            third_country_refusal(&e).is_some(),
            "{what}: expected a refusal by ValidatingAdmissionPolicy {POLICY_NAME} \
             (thirdCountryProcessors: deny), got: {e}"
        ),
        Ok(t) => panic!(
            "{what}: the API server accepted it (spec.email: {}); ValidatingAdmissionPolicy \
             {POLICY_NAME} does not enforce thirdCountryProcessors: deny",
            json!(t.spec)["email"]
        ),
    }
}

/// `Some(())` once the object is gone; a failed read does not count as gone.
async fn gone<K>(api: &Api<K>, name: &str) -> Option<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    matches!(api.get_opt(name).await, Ok(None)).then_some(())
}

/// Messages of the `ReplicaFailure` conditions with reason `FailedCreate`: the
/// ReplicaSet controller could not create a Pod (an admission plugin refused it).
fn failed_creates(replica_sets: &[ReplicaSet]) -> Vec<String> {
    replica_sets
        .iter()
        .filter_map(|rs| rs.status.as_ref()?.conditions.as_ref())
        .flatten()
        .filter(|c| {
            c.type_ == "ReplicaFailure"
                && c.status == "True"
                && c.reason.as_deref() == Some("FailedCreate")
        })
        .map(|c| c.message.clone().unwrap_or_default())
        .collect()
}

fn namespace_of(t: &DealerTenant) -> String {
    format!("tenant-{}", t.name_any())
}

fn condition<'a>(t: &'a DealerTenant, type_: &str) -> Option<&'a Condition> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn phase(t: &DealerTenant) -> Option<Phase> {
    t.status.as_ref()?.phase
}

/// The status describes the current spec.
fn observed(t: &DealerTenant) -> bool {
    t.metadata.generation.is_some()
        && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
}

fn is_ready(t: &DealerTenant) -> bool {
    observed(t)
        && phase(t) == Some(Phase::Ready)
        && condition(t, "Ready").is_some_and(|c| c.status == "True")
}

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Six random lowercase letters and digits.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The last lines of the operator log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Issue "Correct on a real API server": identity, removals, credentials written once.

/// Label and annotations that tie data to a tenant's UID.
const UID_LABEL: &str = "dealerdesk.de/tenant-uid";
const ADOPT_ANNOTATION: &str = "dealerdesk.de/adopt-retained";
const RETAINED_FROM: &str = "dealerdesk.de/retained-from-uid";

impl E2e {
    /// A new tenant that reuses a retained tenant's name adopts nothing: it changes
    /// nothing and says `RetainedDataExists`, naming the old UID; with the annotation
    /// naming exactly that UID it takes the namespace over, and the retained marks go.
    async fn a_reused_name_adopts_only_by_uid(&self) {
        let spec = without_components(json!({
            "displayName": "Autohaus Alt", "region": "europe-west3", "server": {"replicas": 0},
        }));
        let first = self.create_tenant("reuse", spec).await;
        let name = first.name_any();
        let ns = namespace_of(&first);
        self.wait_tenant(&name, "Ready", is_ready).await;
        let old_uid = first.uid().expect("a uid");
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, STEP_TIMEOUT).await;
        let retained = self
            .namespaces()
            .get(&ns)
            .await
            .expect("the retained namespace");
        assert_eq!(
            retained.labels().get(UID_LABEL),
            Some(&old_uid),
            "{:?}",
            retained.labels()
        );

        // Another customer under the same name.
        let second = self
            .create_tenant(
                "reuse",
                without_components(json!({
                    "displayName": "Autohaus Neu", "region": "europe-west3", "server": {"replicas": 0},
                })),
            )
            .await;
        let new_uid = second.uid().expect("a uid");
        assert_ne!(new_uid, old_uid);
        let refused = self
            .wait_tenant(&name, "Ready=False RetainedDataExists", |t| {
                condition(t, "Ready").is_some_and(|c| c.reason == "RetainedDataExists")
            })
            .await;
        let message = &condition(&refused, "Ready").unwrap().message;
        assert!(message.contains(&old_uid), "{message}");
        assert!(message.contains(ADOPT_ANNOTATION), "{message}");
        // Nothing was changed: same resourceVersion, still retained, still the old UID.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = self
            .namespaces()
            .get(&ns)
            .await
            .expect("the retained namespace");
        assert_eq!(
            after.resource_version(),
            retained.resource_version(),
            "the namespace was written"
        );
        assert_eq!(after.labels().get(UID_LABEL), Some(&old_uid));
        // The old tenant's owned objects went with it (garbage collection); the new one
        // created none of its own in the namespace.
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &ns);
        let quota = quotas
            .get_opt("tenant-quota")
            .await
            .expect("read the quota");
        assert!(
            quota.is_none(),
            "an object was created in the retained namespace: {:?}",
            quota.map(|q| q.metadata)
        );

        // A wrong UID adopts nothing; the right one adopts.
        self.annotate(
            &name,
            ADOPT_ANNOTATION,
            "00000000-0000-0000-0000-000000000000",
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let still = self.namespaces().get(&ns).await.unwrap();
        assert_eq!(still.labels().get(UID_LABEL), Some(&old_uid));
        self.annotate(&name, ADOPT_ANNOTATION, &old_uid).await;
        self.wait_tenant(&name, "Ready after adoption", is_ready)
            .await;
        let adopted = self.namespaces().get(&ns).await.unwrap();
        assert_eq!(adopted.labels().get(UID_LABEL), Some(&new_uid));
        assert!(
            adopted.labels().get("dealerdesk.de/retained").is_none(),
            "{:?}",
            adopted.labels()
        );
        assert!(
            adopted.annotations().get(RETAINED_FROM).is_none(),
            "{:?}",
            adopted.annotations()
        );

        self.patch_spec(&name, json!({"deletionPolicy": "Delete"}))
            .await;
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, NAMESPACE_GONE_TIMEOUT).await;
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) {
        eprintln!("e2e: annotating tenant {name} {key}={value}");
        self.tenants()
            .patch(
                name,
                &merge_params(),
                &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
            )
            .await
            .unwrap_or_else(|e| panic!("annotate tenant {name}: {e}"));
    }

    /// A field the operator stops wanting is removed, not left behind: a CPU limit set on
    /// the tenant and then removed disappears from the server's Deployment.
    async fn a_removed_field_disappears(&self, t: &DealerTenant) {
        let name = t.name_any();
        let deployments: Api<Deployment> = self.in_namespace(t);
        let cpu_limit = |d: &Deployment| -> Option<String> {
            d.spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("cpu")
                .map(|q| q.0.clone())
        };
        self.patch_spec(
            &name,
            json!({"server": {"resources": {"limits": {"cpu": "700m", "memory": "512Mi"}}}}),
        )
        .await;
        self.wait_for(
            &name,
            "the Deployment to get a 700m CPU limit",
            STEP_TIMEOUT,
            async || {
                deployments
                    .get("server")
                    .await
                    .ok()
                    .filter(|d| cpu_limit(d).as_deref() == Some("700m"))
            },
        )
        .await;
        self.patch_spec(
            &name,
            json!({"server": {"resources": {"limits": {"cpu": null}}}}),
        )
        .await;
        let d = self
            .wait_for(
                &name,
                "the CPU limit to be removed from the Deployment",
                STEP_TIMEOUT,
                async || {
                    deployments
                        .get("server")
                        .await
                        .ok()
                        .filter(|d| cpu_limit(d).is_none())
                },
            )
            .await;
        let memory = d.spec.unwrap().template.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap()
            .limits
            .unwrap()
            .get("memory")
            .map(|q| q.0.clone());
        assert_eq!(memory.as_deref(), Some("512Mi"), "the other limit stays");
    }

    /// With the `postgres` provider on the CI's PostgreSQL: a new tenant's password is set
    /// exactly once (PostgreSQL's statement log), an operator restart mid-provisioning and
    /// on a converged tenant changes no credential, and a database whose provider failed in
    /// a pass is still erased under `Delete`.
    async fn database_credentials_are_written_once(&self, pg: &PgE2e) {
        let good = self.write_config("pg-good", &pg.config(&pg.password_file));
        let bad = self.write_config("pg-bad", &pg.config(&pg.wrong_password_file));
        let metrics = self.restart_operator(&good);
        self.wait_for_metrics(metrics).await;
        let spec = json!({
            "displayName": "Autohaus Datenbank", "region": "europe-west3", "server": {"replicas": 0},
            "deletionPolicy": "Delete",
            "storage": {"enabled": false}, "search": {"enabled": false}, "email": {"enabled": false},
        });
        let t = self.create_tenant("db", spec.clone()).await;
        let name = t.name_any();
        let role = format!("dt_{}", name.replace('-', "_"));
        let secrets: Api<Secret> = self.in_namespace(&t);
        // Restart while it is being provisioned: as soon as its Secret exists.
        self.wait_for(&name, "the database Secret", STEP_TIMEOUT, async || {
            secrets.get_opt("database").await.ok().flatten()
        })
        .await;
        let metrics = self.restart_operator(&good);
        self.wait_for_metrics(metrics).await;
        self.wait_tenant(&name, "Ready with its database", is_ready)
            .await;
        let secret = secrets.get("database").await.unwrap();
        let password = secret_value(&secret, "DATABASE_PASSWORD");
        pg.assert_password_set_once(&role, &password).await;

        // Restart on a converged tenant: no credential changes.
        let metrics = self.restart_operator(&good);
        let before = self.wait_for_metrics(metrics).await;
        self.poll(Duration::from_secs(30), async || {
            reconciles_total(metrics)
                .filter(|n| *n > before.max(1))
                .map(|_| ())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = secrets.get("database").await.unwrap();
        assert_eq!(
            again.resource_version(),
            secret.resource_version(),
            "the Secret was rewritten"
        );
        pg.assert_password_set_once(&role, &password).await;

        // A pass in which the provider fails keeps the database in the register...
        let metrics = self.restart_operator(&bad);
        self.wait_for_metrics(metrics).await;
        let failed = self
            .wait_tenant(&name, "DatabaseReady=False", |t| {
                condition(t, "DatabaseReady").is_some_and(|c| c.status == "False")
            })
            .await;
        let holds_db = |t: &DealerTenant| {
            t.status.as_ref().is_some_and(|s| {
                s.processors
                    .iter()
                    .any(|p| p.components.iter().any(|c| c == "database"))
            })
        };
        assert!(holds_db(&failed), "{}", self.tenant_json(&name).await);
        // ...and so deletion still erases it.
        let metrics = self.restart_operator(&good);
        self.wait_for_metrics(metrics).await;
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, NAMESPACE_GONE_TIMEOUT).await;
        assert!(
            !pg.database_exists(&role).await,
            "database {role} survived erasure"
        );
        assert!(pg.login(&role, &password).await.is_err());
        self.restart_operator_with(None);
    }

    /// Stops the running operator and starts another with `config` (the built-in default
    /// configuration when `None`).
    fn restart_operator_with(&self, config: Option<&Path>) -> SocketAddr {
        let mut slot = self.operator.lock().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        let operator = Operator::spawn(
            &self.log,
            &OperatorOptions {
                kubeconfig: self.operator_kubeconfig.as_deref(),
                config,
                append: true,
            },
        );
        let metrics = operator.metrics;
        *slot = Some(operator);
        metrics
    }

    fn write_config(&self, what: &str, yaml: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("dealertenant-e2e-{}-{what}.yaml", self.run_id));
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

fn secret_value(s: &Secret, key: &str) -> String {
    let v = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("no {key}"));
    String::from_utf8(v.0.clone()).unwrap()
}

/// The CI's PostgreSQL (`.ci/start-postgres`) as the `postgres` provider's server.
struct PgE2e {
    port: u16,
    password: String,
    log: PathBuf,
    password_file: PathBuf,
    wrong_password_file: PathBuf,
}

impl PgE2e {
    /// Found when `.ci/start-postgres` ran; `None` (and a notice) otherwise.
    async fn find(run_id: &str) -> Option<Self> {
        let port: u16 = std::env::var("DEALERTENANT_TEST_PG_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(55432);
        let password = std::env::var("DEALERTENANT_TEST_PG_PASSWORD")
            .unwrap_or_else(|_| "operator-test-admin".into());
        let dir = std::env::var("DEALERTENANT_TEST_PG_DIR")
            .unwrap_or_else(|_| "/tmp/dealertenant-pg".into());
        let log = PathBuf::from(dir).join("server.log");
        let pg = Self {
            port,
            password: password.clone(),
            log,
            password_file: std::env::temp_dir().join(format!("dealertenant-e2e-{run_id}-pg")),
            wrong_password_file: std::env::temp_dir()
                .join(format!("dealertenant-e2e-{run_id}-pg-wrong")),
        };
        if pg.connect("postgres", &password, "postgres").await.is_err() || !pg.log.exists() {
            return None;
        }
        std::fs::write(&pg.password_file, format!("{password}\n")).unwrap();
        std::fs::write(&pg.wrong_password_file, "not-the-password\n").unwrap();
        Some(pg)
    }

    fn config(&self, password_file: &Path) -> String {
        format!(
            "database:\n  provider: postgres\n  postgres:\n    host: 127.0.0.1\n    port: {}\n    \
             adminUser: postgres\n    adminPasswordFile: {}\n    region: europe-west3\n",
            self.port,
            password_file.display()
        )
    }

    /// A session of `user` on database `db`.
    async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Logs in as the tenant's role into its database, as the application would.
    async fn login(&self, role: &str, password: &str) -> Result<(), tokio_postgres::Error> {
        let client = self.connect(role, password, role).await?;
        client.simple_query("SELECT 1").await.map(|_| ())
    }

    async fn database_exists(&self, name: &str) -> bool {
        let su = self
            .connect("postgres", &self.password, "postgres")
            .await
            .expect("superuser login");
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    }

    /// The server's statement log lines that name `role`.
    fn statements_about(&self, role: &str) -> String {
        let quoted = format!("\"{role}\"");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("statement:") && l.contains(&quoted))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Exactly one statement ever set `role`'s password, and `password` logs in.
    async fn assert_password_set_once(&self, role: &str, password: &str) {
        assert_eq!(
            self.password_statements(role),
            1,
            "{}",
            self.statements_about(role)
        );
        self.login(role, password)
            .await
            .unwrap_or_else(|e| panic!("the Secret's password for {role} does not work: {e}"));
    }

    /// How many statements set `role`'s password (its creation with one included).
    fn password_statements(&self, role: &str) -> usize {
        self.statements_about(role)
            .lines()
            .filter(|l| {
                l.contains(" PASSWORD ") && (l.contains("CREATE ROLE") || l.contains("ALTER ROLE"))
            })
            .count()
    }
}

impl E2e {
    /// Layer 4 of residency on the real API server: a Cloud SQL instance that the service
    /// (the Cloud SQL Admin double on 127.0.0.1) reports in `us-central1` sets
    /// `ResidencyCompliant=False` naming it, keeps it in the register with that location,
    /// and counts in `dealertenant_residency_violations_total`.
    async fn a_location_read_back_outside_the_eu_is_a_violation(&self) {
        let double = cloudsql::CloudSqlDouble::start("dd-e2e").await;
        double.report_region("us-central1");
        let config = self.write_config(
            "cloudsql-us",
            &format!(
                "database:\n  provider: cloudsql\n  cloudsql:\n    project: dd-e2e\n    \
                 endpoint: {}\n    anonymousCredentials: true\n    deletionProtection: false\n",
                double.endpoint()
            ),
        );
        let metrics = self.restart_operator(&config);
        self.wait_for_metrics(metrics).await;
        let t = self
            .create_tenant(
                "res",
                json!({
                    "displayName": "Autohaus Übersee", "region": "europe-west3",
                    "server": {"replicas": 0},
                    "storage": {"enabled": false}, "search": {"enabled": false},
                    "email": {"enabled": false},
                }),
            )
            .await;
        let name = t.name_any();
        let flagged = self
            .wait_tenant(&name, "ResidencyCompliant=False", |t| {
                condition(t, "ResidencyCompliant")
                    .is_some_and(|c| c.status == "False" && c.reason == "ResidencyViolation")
            })
            .await;
        let message = &condition(&flagged, "ResidencyCompliant").unwrap().message;
        assert!(message.contains("us-central1"), "{message}");
        let status = flagged.status.clone().unwrap();
        assert!(
            status
                .external_resources
                .iter()
                .any(|r| r.location.as_deref() == Some("us-central1")),
            "{:?}",
            status.external_resources
        );
        let counted = self
            .poll(Duration::from_secs(30), async || {
                let text = metrics_text(metrics)?;
                text.lines()
                    .find(|l| {
                        l.starts_with("dealertenant_residency_violations_total{")
                            && l.contains("component=\"database\"")
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .filter(|v| *v >= 1.0)
            })
            .await;
        assert!(
            counted.is_some(),
            "dealertenant_residency_violations_total{{component=\"database\"}} did not move"
        );
        // Retain: the instance is left for a person; the tenant goes.
        self.delete_tenant(&name).await;
        self.wait_tenant_gone(&name, STEP_TIMEOUT).await;
        self.restart_operator_with(None);
    }
}

impl E2e {
    /// `deploy/cluster/crd-protection.yaml` on the real API server: deleting the CRD (a
    /// dry run, which runs admission) is refused until the CRD is annotated
    /// `dealerdesk.de/allow-delete: "true"`.
    async fn the_crd_cannot_be_deleted_by_accident(&self) {
        eprintln!("e2e: the CRD deletion guard");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster/crd-protection.yaml");
        let text = std::fs::read_to_string(&path).expect("deploy/cluster/crd-protection.yaml");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML documents");
        let name = docs[0]["metadata"]["name"]
            .as_str()
            .expect("the policy's name")
            .to_string();
        for doc in docs {
            apply_manifest(&self.client, doc).await;
        }
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.client.clone());
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd = DealerTenant::crd().name_any();
        let dry_run = DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        };
        let refused = self
            .poll(POLICY_ACTIVE_TIMEOUT, async || {
                match crds.delete(&crd, &dry_run).await {
                    Err(kube::Error::Api(s))
                        if s.message.contains("deletes every DealerTenant") =>
                    {
                        Some(s.message)
                    }
                    _ => None,
                }
            })
            .await;
        let refused = refused.unwrap_or_else(|| {
            panic!(
                "a (dry-run) deletion of CRD {crd} was not refused within {POLICY_ACTIVE_TIMEOUT:?}"
            )
        });
        eprintln!("e2e:   the API server said: {refused}");
        let annotate = |value: Value| {
            Patch::Merge(
                json!({"metadata": {"annotations": {"dealerdesk.de/allow-delete": value}}}),
            )
        };
        crds.patch(&crd, &merge_params(), &annotate(json!("true")))
            .await
            .unwrap_or_else(|e| panic!("annotate CRD {crd}: {e}"));
        let allowed = self
            .poll(POLICY_ACTIVE_TIMEOUT, async || {
                crds.delete(&crd, &dry_run).await.ok().map(|_| ())
            })
            .await;
        crds.patch(&crd, &merge_params(), &annotate(Value::Null))
            .await
            .unwrap_or_else(|e| panic!("remove the annotation from CRD {crd}: {e}"));
        assert!(
            allowed.is_some(),
            "the annotated CRD's (dry-run) deletion was still refused"
        );
        for result in [
            delete_if_present(&bindings, &name).await,
            delete_if_present(&policies, &name).await,
        ] {
            result.unwrap_or_else(|e| panic!("remove the CRD guard {name}: {e}"));
        }
    }
}

impl E2e {
    /// `/readyz` answers 200 once every watch cache has been filled.
    async fn the_operator_reports_ready_once_its_caches_are_filled(&self) {
        let metrics = self
            .operator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|o| o.metrics)
            .expect("a running operator");
        let ready = self
            .poll(Duration::from_secs(60), async || {
                http_get(metrics, "/readyz")
                    .filter(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
            })
            .await;
        assert!(
            ready.is_some(),
            "/readyz of the operator on {metrics} never answered 200"
        );
        eprintln!("e2e: the operator is ready (/readyz 200)");
    }
}

/// The whole HTTP answer of `GET path` on `addr`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    // HTTP/1.0: the server closes the connection after the response, unchunked.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
