//! The reconciler against a mocked Kubernetes API server (tower-test), asserting the exact
//! calls it makes: the first pass applies the owned objects and writes status once, an
//! unchanged tenant costs nothing, a paused tenant costs nothing, deletion follows policy.

use std::sync::{Arc, Mutex};

use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::controller::cache::{CacheWriter, Cached};
use dealertenant_operator::controller::context::Writers;
use dealertenant_operator::controller::{Context, Error, Stores, reconcile};
use dealertenant_operator::desired;
use dealertenant_operator::providers::Providers;
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::watcher;
use serde_json::{Value, json};

/// One request the operator sent.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// How the fake API server answers `DELETE` of a namespace.
#[derive(Clone, Copy)]
enum NamespaceDelete {
    Gone,
    Terminating,
}

/// A fake API server that answers like kube-apiserver for the calls the operator makes:
/// server-side apply echoes the object with server-set fields, JSON patches of the tenant
/// return the patched tenant, Events are created, GETs of unknown objects are 404.
struct FakeApi {
    calls: Arc<Mutex<Vec<Call>>>,
    tenant: Value,
    ns_delete: NamespaceDelete,
    fail_path: Option<&'static str>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    fn answer(&self, call: &Call) -> (StatusCode, Value) {
        if self.fail_path.is_some_and(|p| call.path.ends_with(p)) && call.method == "PATCH" {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                status_body(500, "InternalError", "etcd is unhappy"),
            );
        }
        match call.method.as_str() {
            "PATCH" if call.path.ends_with("/status") => {
                let mut t = self.tenant.clone();
                t["status"] = call.body["status"].clone();
                (StatusCode::OK, t)
            }
            "PATCH" if call.content_type == "application/json-patch+json" => {
                let mut t = self.tenant.clone();
                // The API server reads an absent field as null, which the finalizer's
                // `test` operation relies on.
                if t["metadata"].get("finalizers").is_none() {
                    t["metadata"]["finalizers"] = Value::Null;
                }
                let patch: json_patch::Patch = serde_json::from_value(call.body.clone()).unwrap();
                json_patch::patch(&mut t, &patch).unwrap();
                (StatusCode::OK, t)
            }
            "PATCH" => {
                let mut obj = call.body.clone();
                obj["metadata"]["uid"] = json!("server-uid");
                obj["metadata"]["resourceVersion"] = json!("1");
                obj["metadata"]["generation"] = json!(1);
                if obj["kind"] == "Namespace" {
                    obj["status"] = json!({"phase": "Active"});
                }
                (StatusCode::OK, obj)
            }
            // The authorizer has seen the RoleBinding the pass just wrote.
            "POST" if call.path.ends_with("/selfsubjectaccessreviews") => {
                let mut review = call.body.clone();
                review["status"] = json!({"allowed": true});
                (StatusCode::CREATED, review)
            }
            "POST" => (StatusCode::CREATED, call.body.clone()),
            "DELETE" => match self.ns_delete {
                NamespaceDelete::Gone => (
                    StatusCode::NOT_FOUND,
                    status_body(404, "NotFound", "namespaces not found"),
                ),
                NamespaceDelete::Terminating => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "tenant-acme", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                           "status": {"phase": "Terminating"}}),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", "not found"),
            ),
        }
    }
}

struct Harness {
    ctx: Arc<Context>,
    calls: Arc<Mutex<Vec<Call>>>,
    server: tokio::task::JoinHandle<()>,
}

fn harness(
    tenant: &DealerTenant,
    writers_setup: impl FnOnce(&mut Writers),
    ns_delete: NamespaceDelete,
    fail_path: Option<&'static str>,
) -> Harness {
    harness_with(
        tenant,
        writers_setup,
        ns_delete,
        fail_path,
        Providers::default(),
    )
}

fn harness_with(
    tenant: &DealerTenant,
    writers_setup: impl FnOnce(&mut Writers),
    ns_delete: NamespaceDelete,
    fail_path: Option<&'static str>,
    providers: Providers,
) -> Harness {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let fake = FakeApi {
        calls: calls.clone(),
        tenant: serde_json::to_value(tenant).unwrap(),
        ns_delete,
        fail_path,
    };
    let server = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, answer) = fake.answer(&call);
            fake.calls.lock().unwrap().push(call);
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    let (stores, mut writers) = Stores::new();
    writers_setup(&mut writers);
    let ctx = Arc::new(Context::new(
        client,
        OperatorConfig::default(),
        stores,
        providers,
    ));
    Harness { ctx, calls, server }
}

impl Harness {
    async fn run(
        self,
        tenant: DealerTenant,
    ) -> (Result<kube::runtime::controller::Action, Error>, Vec<Call>) {
        let result = reconcile(Arc::new(tenant), self.ctx).await;
        // The context (and with it the client) is gone: the fake server stops.
        tokio::time::timeout(std::time::Duration::from_secs(5), self.server)
            .await
            .unwrap()
            .unwrap();
        let calls = self.calls.lock().unwrap().clone();
        (result, calls)
    }
}

/// Components switched off: these tests are about the in-cluster objects.
const NO_COMPONENTS: &str = "database: {enabled: false}, storage: {enabled: false}, search: {enabled: false}, email: {enabled: false}";

fn tenant(spec: &str) -> DealerTenant {
    let spec = format!("{{{NO_COMPONENTS}, {}", spec.trim_start_matches('{'));
    let spec: DealerTenantSpec = serde_saphyr::from_str(&spec).unwrap();
    let mut t = DealerTenant::new("acme", spec);
    t.metadata.uid = Some("tenant-uid".into());
    t.metadata.generation = Some(1);
    t.metadata.resource_version = Some("7".into());
    t
}

fn with_finalizer(mut t: DealerTenant) -> DealerTenant {
    t.metadata.finalizers = Some(vec!["dealerdesk.de/cleanup".into()]);
    t
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

/// The calls about the tenant's owned objects: not those about the DealerTenant itself
/// (its finalizer and status) nor its Events.
fn object_lines(calls: &[Call]) -> Vec<String> {
    lines(calls)
        .into_iter()
        .filter(|l| !l.contains("dealertenants") && !l.contains("events"))
        .collect()
}

const TENANT_PATH: &str = "/apis/dealerdesk.de/v1alpha1/dealertenants/acme";
/// The direct read that confirms the tenant namespace is absent from the API server too.
const NS_GET: &str = "GET /api/v1/namespaces/tenant-acme";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const RECEIPT: &str = "/api/v1/namespaces/dealertenant-system/configmaps/erasure-acme-tenantui";

/// The erasure receipt a call wrote.
fn receipt_of(call: &Call) -> Value {
    serde_json::from_str(call.body["data"]["receipt.json"].as_str().unwrap()).unwrap()
}

fn owned_object_paths(with_pdb: bool) -> Vec<String> {
    let mut v = vec![
        "PATCH /api/v1/namespaces/tenant-acme".to_string(),
        // The operator's rights in the namespace, then the wait until they hold.
        "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/tenant-acme/rolebindings/dealertenant-operator".into(),
        "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
        "PATCH /api/v1/namespaces/tenant-acme/resourcequotas/tenant-quota".into(),
        "PATCH /api/v1/namespaces/tenant-acme/limitranges/tenant-limits".into(),
        "PATCH /apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/default-deny-ingress".into(),
        "PATCH /apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/allow-same-namespace".into(),
        "PATCH /apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/allow-ingress-controller".into(),
        "PATCH /apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/default-deny-egress".into(),
        "PATCH /apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/allow-egress".into(),
        "PATCH /api/v1/namespaces/tenant-acme/serviceaccounts/server".into(),
        "PATCH /api/v1/namespaces/tenant-acme/services/server".into(),
        "PATCH /apis/apps/v1/namespaces/tenant-acme/deployments/server".into(),
    ];
    if with_pdb {
        v.push("PATCH /apis/policy/v1/namespaces/tenant-acme/poddisruptionbudgets/server".into());
    }
    v
}

/// `obj` as the operator applies it: with the digest of what it applied.
fn stamp<K: serde::Serialize + serde::de::DeserializeOwned>(obj: K) -> K {
    let (stamped, _) = dealertenant_operator::controller::apply::stamped(&obj).unwrap();
    serde_json::from_value(stamped).unwrap()
}

/// Fills the caches with what the API server holds after a successful pass: the desired
/// objects plus server-set fields, a Deployment whose rollout is complete.
fn converged(t: &DealerTenant) -> impl FnOnce(&mut Writers) {
    let d = desired::build(t, &OperatorConfig::default(), &[]);
    move |w: &mut Writers| {
        fn put<K: Cached>(w: &mut CacheWriter<K>, mut obj: K) {
            obj.meta_mut().uid = Some("server-uid".into());
            obj.meta_mut().generation = Some(1);
            w.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let mut ns = stamp(d.namespace);
        ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        });
        ns.labels_mut()
            .insert("kubernetes.io/metadata.name".into(), "tenant-acme".into());
        put(&mut w.namespaces, ns);
        put(
            &mut w.role_bindings,
            stamp(desired::access::role_binding(
                "acme",
                &desired::owner_reference(t),
                &desired::access::installed_operator("dealertenant-system"),
            )),
        );
        put(&mut w.quotas, stamp(d.quota));
        put(&mut w.limits, stamp(d.limits));
        for np in d.network_policies {
            put(&mut w.network_policies, stamp(np));
        }
        put(&mut w.service_accounts, stamp(d.service_account));
        put(&mut w.services, stamp(d.service));
        let mut dep = stamp(d.deployment);
        let replicas = dep.spec.as_ref().unwrap().replicas.unwrap();
        dep.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            available_replicas: Some(replicas),
            ready_replicas: Some(replicas),
            ..Default::default()
        });
        put(&mut w.deployments, dep);
        if let Some(pdb) = d.pdb {
            put(&mut w.pdbs, stamp(pdb));
        }
    }
}

use kube::ResourceExt;

#[tokio::test]
async fn a_new_tenant_gets_the_finalizer_and_is_built_in_the_same_pass() {
    let t = tenant("{displayName: Acme, region: europe-west3}");
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    // The finalizer first (nothing is built before erasure is guaranteed), then the pass
    // goes on with the tenant as the API server answered: no second pass is needed.
    let mut want = vec![format!("PATCH {TENANT_PATH}"), NS_GET.to_string()];
    want.extend(owned_object_paths(false));
    assert_eq!(lines(&calls), want);
    assert_eq!(calls[0].content_type, "application/json-patch+json");
    assert!(calls[0].body.to_string().contains("dealerdesk.de/cleanup"));
    assert!(calls[0].body.to_string().contains("\"test\""));
}

#[tokio::test]
async fn the_first_pass_applies_exactly_the_owned_objects_and_waits_for_the_rollout() {
    let t = with_finalizer(tenant("{displayName: Acme, region: europe-west3}"));
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    // The namespace is not in the cache: its absence is confirmed with the API server
    // first (a retained namespace of another tenant must not be taken for a free name).
    // No status yet: the only open point is the Deployment just applied, whose status
    // change starts the next pass; a "Provisioning" status would be overwritten by it.
    let mut want = vec![NS_GET.to_string()];
    want.extend(owned_object_paths(false));
    assert_eq!(lines(&calls), want);
    assert_eq!(
        format!("{:?}", result.unwrap()),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(60))
        )
    );
    let calls = &calls[1..];
    for c in calls.iter().filter(|c| c.method == "PATCH") {
        assert_eq!(c.content_type, "application/apply-patch+yaml", "{}", c.path);
        assert!(
            c.query.contains("fieldManager=dealertenant-operator"),
            "{}",
            c.query
        );
        assert!(c.query.contains("force=true"), "{}", c.query);
        assert!(
            c.body["metadata"]["annotations"]["dealerdesk.de/applied-hash"].is_string(),
            "{}",
            c.path
        );
    }
    // The namespace is not owned (Retain keeps it); everything in it is. It is bound to
    // the tenant's UID.
    assert!(calls[0].body["metadata"].get("ownerReferences").is_none());
    assert_eq!(
        calls[0].body["metadata"]["labels"]["dealerdesk.de/tenant-uid"],
        "tenant-uid"
    );
    assert_eq!(
        calls[1].body["metadata"]["ownerReferences"][0]["uid"],
        "tenant-uid"
    );
}

#[tokio::test]
async fn a_rollout_not_yet_observed_is_reported_once_without_a_warning() {
    let t = with_finalizer(tenant("{displayName: Acme, region: europe-west3}"));
    let not_observed = |w: &mut Writers| {
        converged(&t)(w);
        // The converged Deployment, without a status.
        let mut d = stamp(desired::build(&t, &OperatorConfig::default(), &[]).deployment);
        d.metadata.uid = Some("server-uid".into());
        d.metadata.generation = Some(1);
        w.deployments.apply_watcher_event(&watcher::Event::Apply(d));
    };
    let h = harness(&t, not_observed, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("PATCH {TENANT_PATH}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let status = &calls[0].body["status"];
    assert_eq!(status["phase"], "Provisioning");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["namespace"], "tenant-acme");
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(cond("Ready")["status"], "False");
    assert_eq!(cond("Ready")["reason"], "RolloutPending");
    assert_eq!(cond("NamespaceReady")["status"], "True");
    assert_eq!(cond("ServerReady")["status"], "False");
    assert_eq!(cond("ServerReady")["observedGeneration"], 1);
    let event = &calls[1].body;
    assert_eq!(event["reason"], "RolloutPending");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["name"], "acme");
}

#[tokio::test]
async fn more_than_one_replica_adds_a_disruption_budget() {
    let t = with_finalizer(tenant(
        "{displayName: Acme, region: europe-west3, server: {replicas: 3}}",
    ));
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    let objects: Vec<_> = object_lines(&calls)
        .into_iter()
        .filter(|l| l != NS_GET)
        .collect();
    assert_eq!(objects, owned_object_paths(true));
}

#[tokio::test]
async fn a_converged_tenant_becomes_ready_then_costs_no_call_at_all() {
    let t = with_finalizer(tenant(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}}",
    ));
    // Pass 1: everything is in place (replicas 0 needs no Pod): one status write, one Event.
    let h = harness(&t, converged(&t), NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t.clone()).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("PATCH {TENANT_PATH}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let status = calls[0].body["status"].clone();
    assert_eq!(status["phase"], "Ready");
    assert_eq!(calls[1].body["reason"], "AllComponentsReady");
    assert_eq!(calls[1].body["type"], "Normal");

    // Pass 2: the same tenant with that status: not a single request.
    let mut t2 = t.clone();
    t2.status = Some(serde_json::from_value(status).unwrap());
    let h = harness(&t2, converged(&t2), NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t2).await;
    result.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new());
}

#[tokio::test]
async fn drift_is_repaired_by_applying_only_the_drifted_object() {
    let t = with_finalizer(tenant(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}}",
    ));
    let mut drifted = t.clone();
    drifted.spec.server.replicas = 4; // someone scaled the Deployment by hand
    let fill = converged(&drifted);
    let h = harness(
        &t,
        |w| {
            fill(w);
        },
        NamespaceDelete::Gone,
        None,
    );
    let (result, calls) = h.run(t).await;
    result.unwrap();
    let objects = object_lines(&calls);
    // replicas 4 -> 0 also drops the PDB that 4 replicas had.
    assert_eq!(
        objects,
        [
            "PATCH /apis/apps/v1/namespaces/tenant-acme/deployments/server".to_string(),
            "DELETE /apis/policy/v1/namespaces/tenant-acme/poddisruptionbudgets/server".to_string(),
        ]
    );
    let dep = calls
        .iter()
        .find(|c| c.path.ends_with("deployments/server"))
        .unwrap();
    assert_eq!(dep.body["spec"]["replicas"], 0);
}

/// The caches keep hashes, not objects: a hand edit that leaves the operator's digest in
/// place is seen as a changed content, and the next pass reads the object and compares it
/// field by field before it writes.
#[tokio::test]
async fn a_hand_edit_that_keeps_the_digest_is_read_and_repaired() {
    let t = with_finalizer(tenant(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}}",
    ));
    let fill = converged(&t);
    let scaled = |w: &mut Writers| {
        fill(w);
        // `kubectl scale` after the operator's apply: the annotation still holds its digest.
        let mut d = stamp(desired::build(&t, &OperatorConfig::default(), &[]).deployment);
        d.metadata.uid = Some("server-uid".into());
        d.metadata.generation = Some(2);
        d.spec.as_mut().unwrap().replicas = Some(3);
        w.deployments.apply_watcher_event(&watcher::Event::Apply(d));
    };
    let h = harness(&t, scaled, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    let objects = object_lines(&calls);
    assert_eq!(
        objects,
        [
            "GET /apis/apps/v1/namespaces/tenant-acme/deployments/server".to_string(),
            "PATCH /apis/apps/v1/namespaces/tenant-acme/deployments/server".to_string(),
        ]
    );
    let dep = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path.ends_with("deployments/server"))
        .unwrap();
    assert_eq!(dep.body["spec"]["replicas"], 0);
}

#[tokio::test]
async fn pausing_writes_only_the_status_and_a_paused_tenant_costs_nothing() {
    let mut t = with_finalizer(tenant(
        "{displayName: Acme, region: europe-west3, paused: true}",
    ));
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t.clone()).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("PATCH {TENANT_PATH}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let status = calls[0].body["status"].clone();
    assert_eq!(status["phase"], "Paused");
    assert_eq!(status["conditions"][0]["reason"], "Paused");

    t.status = Some(serde_json::from_value(status).unwrap());
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new());

    // Paused without our finalizer: not even the finalizer is added.
    let mut fresh = tenant("{displayName: Acme, region: europe-west3, paused: true}");
    fresh.status = Some(serde_json::from_value(calls_status_paused()).unwrap());
    let h = harness(&fresh, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(fresh).await;
    result.unwrap();
    assert!(calls.is_empty(), "{:?}", lines(&calls));
}

fn calls_status_paused() -> Value {
    json!({"observedGeneration": 1, "phase": "Paused", "components": "none", "conditions": [{
        "type": "Ready", "status": "False", "reason": "Paused",
        "message": "spec.paused is true: the operator changes nothing for this tenant",
        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
}

fn deleting(spec: &str) -> DealerTenant {
    let mut t = with_finalizer(tenant(spec));
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    t
}

#[tokio::test]
async fn deleting_under_retain_keeps_the_namespace_and_releases_the_finalizer() {
    let t = deleting("{displayName: Acme, region: europe-west3, deletionPolicy: Retain}");
    let h = harness(&t, converged(&t), NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            "PATCH /api/v1/namespaces/tenant-acme".to_string(),
            format!("GET {RECEIPT}"),
            format!("PATCH {RECEIPT}"),
            // One Event per processor, then the receipt.
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
            format!("PATCH {TENANT_PATH}"),
        ]
    );
    assert!(calls.iter().all(|c| c.method != "DELETE"));
    assert_eq!(
        calls[0].body["metadata"]["labels"]["dealerdesk.de/retained"],
        "true"
    );
    let receipt = receipt_of(&calls[2]);
    assert_eq!(receipt["deletionPolicy"], "Retain");
    assert_eq!(receipt["complete"], true);
    assert_eq!(receipt["entries"][0]["component"], "namespace");
    assert_eq!(receipt["entries"][0]["outcome"], "Kept");
    assert_eq!(calls[3].body["reason"], "ProcessorKept");
    assert_eq!(calls[4].body["reason"], "Retained");
    assert!(
        calls[4].body["note"]
            .as_str()
            .unwrap()
            .contains("kept: namespace")
    );
    assert_eq!(calls[5].content_type, "application/json-patch+json");
    assert!(calls[5].body.to_string().contains("remove"));
}

#[tokio::test]
async fn deleting_under_delete_erases_the_namespace_then_releases_the_finalizer() {
    let t = deleting("{displayName: Acme, region: europe-west3, deletionPolicy: Delete}");
    let h = harness(&t, converged(&t), NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            "DELETE /api/v1/namespaces/tenant-acme".to_string(),
            format!("GET {RECEIPT}"),
            format!("PATCH {RECEIPT}"),
            // One Event per processor, then the receipt.
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
            format!("PATCH {TENANT_PATH}"),
        ]
    );
    let receipt = receipt_of(&calls[2]);
    assert_eq!(
        (
            receipt["deletionPolicy"].as_str(),
            receipt["complete"].as_bool()
        ),
        (Some("Delete"), Some(true))
    );
    assert_eq!(receipt["entries"][0]["component"], "namespace");
    assert_eq!(receipt["entries"][0]["outcome"], "Erased");
    assert_eq!(receipt["entries"][0]["processorCountry"], "IE");
    assert_eq!(calls[3].body["reason"], "ProcessorErased");
    assert_eq!(calls[4].body["reason"], "Erased");
}

#[tokio::test]
async fn deletion_waits_for_a_terminating_namespace_and_keeps_the_finalizer() {
    let t = deleting("{displayName: Acme, region: europe-west3, deletionPolicy: Delete}");
    let h = harness(&t, converged(&t), NamespaceDelete::Terminating, None);
    let (result, calls) = h.run(t).await;
    let err = result.unwrap_err();
    assert!(matches!(err.root(), Error::CleanupPending(_)), "{err}");
    assert_eq!(
        lines(&calls),
        [
            "DELETE /api/v1/namespaces/tenant-acme".to_string(),
            format!("GET {RECEIPT}"),
            format!("PATCH {RECEIPT}"),
            format!("PATCH {TENANT_PATH}/status"),
            format!("POST {EVENTS}"),
        ]
    );
    assert_eq!(receipt_of(&calls[2])["complete"], false);
    assert_eq!(calls[3].body["status"]["phase"], "Deleting");
}

#[tokio::test]
async fn a_non_eu_region_that_slipped_past_the_api_server_builds_nothing() {
    // As if someone had edited the CRD's enum by hand.
    let t = with_finalizer(tenant("{displayName: Acme, region: europe-west2}"));
    let h = harness(&t, |_| {}, NamespaceDelete::Gone, None);
    let (result, calls) = h.run(t).await;
    result.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("PATCH {TENANT_PATH}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let status = &calls[0].body["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
    assert!(
        status["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("London, United Kingdom")
    );
    assert_eq!(calls[1].body["type"], "Warning");
}

#[tokio::test]
async fn an_api_error_is_recorded_in_status_and_returned_as_transient() {
    let t = with_finalizer(tenant("{displayName: Acme, region: europe-west3}"));
    let h = harness(
        &t,
        |_| {},
        NamespaceDelete::Gone,
        Some("deployments/server"),
    );
    let (result, calls) = h.run(t).await;
    let err = result.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let status = calls.iter().find(|c| c.path.ends_with("/status")).unwrap();
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "ApplyFailed"
    );
    assert!(
        status.body["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Deployment tenant-acme/server")
    );
    let event = calls.iter().find(|c| c.path == EVENTS).unwrap();
    assert_eq!(event.body["type"], "Warning");
}
