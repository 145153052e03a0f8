//! A stateful fake of the Kubernetes API server for multi-pass reconciler tests: it keeps
//! what the operator applies, emulates the parts of kube-apiserver and the controllers the
//! operator relies on (server-side apply echoes the object with uid, resourceVersion and
//! generation; a Namespace is Active; the Deployment controller reports the rollout
//! complete; a SelfSubjectAccessReview is allowed; a JSON patch that removes the last finalizer of a deleted object removes it),
//! and can fail any numbered request before or after performing it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dealertenant_operator::api::DealerTenant;
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::controller::context::Writers;
use dealertenant_operator::controller::{Context, Error, Stores, reconcile};
use dealertenant_operator::providers::Providers;
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::fake_provider::{Fault, Injector};

/// The cluster's state between passes.
pub struct World {
    /// The DealerTenant as stored; `Null` once it is gone.
    pub tenant: Value,
    /// Every other object by its API path.
    pub objects: BTreeMap<String, Value>,
    /// Requests that changed something, per pass.
    pub writes: usize,
    /// Every request line of the last pass.
    pub log: Vec<String>,
    /// Every request body sent outside Secrets, over all passes (to look for leaks).
    pub bodies: Vec<String>,
}

impl World {
    pub fn new(tenant: &DealerTenant) -> Arc<Mutex<World>> {
        let mut t = serde_json::to_value(tenant).unwrap();
        t["metadata"]["uid"] = json!("tenant-uid");
        t["metadata"]["generation"] = json!(1);
        Arc::new(Mutex::new(World {
            tenant: t,
            objects: BTreeMap::new(),
            writes: 0,
            log: Vec::new(),
            bodies: Vec::new(),
        }))
    }

    pub fn tenant(&self) -> Option<DealerTenant> {
        (!self.tenant.is_null()).then(|| serde_json::from_value(self.tenant.clone()).unwrap())
    }

    pub fn object(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    /// The caches a restarted operator would fill from its watches.
    fn fill(&self, w: &mut Writers) {
        fn put<K: dealertenant_operator::controller::cache::Cached>(
            w: &mut dealertenant_operator::controller::cache::CacheWriter<K>,
            v: &Value,
        ) {
            w.apply_watcher_event(&watcher::Event::Apply(
                serde_json::from_value(v.clone()).unwrap(),
            ));
        }
        for v in self.objects.values() {
            match v["kind"].as_str().unwrap_or_default() {
                "Namespace" => put(&mut w.namespaces, v),
                "ResourceQuota" => put(&mut w.quotas, v),
                "LimitRange" => put(&mut w.limits, v),
                "NetworkPolicy" => put(&mut w.network_policies, v),
                "ServiceAccount" => put(&mut w.service_accounts, v),
                "Service" => put(&mut w.services, v),
                "Deployment" => put(&mut w.deployments, v),
                "PodDisruptionBudget" => put(&mut w.pdbs, v),
                "RoleBinding" => put(&mut w.role_bindings, v),
                "Secret" => {}    // read with GET, never cached
                "ConfigMap" => {} // erasure receipts: read with GET, not cached
                other => panic!("unexpected kind {other}"),
            }
        }
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let not_found = (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
        let is_tenant = path.starts_with("/apis/dealerdesk.de/");
        if path.starts_with("/apis/events.k8s.io/") {
            // Events are created, and patched when they repeat (a series).
            return (StatusCode::OK, body);
        }
        match method {
            "PATCH" if is_tenant && path.ends_with("/status") => {
                if self.tenant.is_null() {
                    return not_found;
                }
                self.tenant["status"] = body["status"].clone();
                self.writes += 1;
                (StatusCode::OK, self.tenant.clone())
            }
            "PATCH" if is_tenant => {
                if self.tenant.is_null() {
                    return not_found;
                }
                assert_eq!(content_type, "application/json-patch+json");
                if self.tenant["metadata"].get("finalizers").is_none() {
                    self.tenant["metadata"]["finalizers"] = Value::Null;
                }
                let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
                json_patch::patch(&mut self.tenant, &patch).unwrap();
                self.writes += 1;
                let answer = self.tenant.clone();
                let no_finalizers = self.tenant["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty());
                if no_finalizers && !self.tenant["metadata"]["deletionTimestamp"].is_null() {
                    self.tenant = Value::Null;
                }
                (StatusCode::OK, answer)
            }
            "PATCH" => {
                let mut obj = body;
                let old = self.objects.get(path);
                let generation = match old {
                    Some(o) if o["spec"] == obj["spec"] => {
                        o["metadata"]["generation"].as_i64().unwrap_or(1)
                    }
                    Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
                    None => 1,
                };
                obj["metadata"]["uid"] = json!(format!("uid-{path}"));
                obj["metadata"]["resourceVersion"] = json!("1");
                obj["metadata"]["generation"] = json!(generation);
                match obj["kind"].as_str() {
                    Some("Namespace") => obj["status"] = json!({"phase": "Active"}),
                    Some("Deployment") => {
                        let r = obj["spec"]["replicas"].clone();
                        obj["status"] = json!({"observedGeneration": generation, "replicas": r,
                            "updatedReplicas": r, "availableReplicas": r, "readyReplicas": r});
                    }
                    _ => {}
                }
                self.objects.insert(path.to_string(), obj.clone());
                self.writes += 1;
                (StatusCode::OK, obj)
            }
            "DELETE" => match self.objects.remove(path) {
                Some(obj) => {
                    if obj["kind"] == "Namespace" {
                        let prefix =
                            format!("/namespaces/{}/", obj["metadata"]["name"].as_str().unwrap());
                        self.objects.retain(|p, _| !p.contains(&prefix));
                    }
                    self.writes += 1;
                    (StatusCode::OK, obj)
                }
                None => not_found,
            },
            // The authorizer has seen the RoleBinding the pass just wrote.
            "POST" if path.ends_with("/selfsubjectaccessreviews") => {
                let mut review = body;
                review["status"] = json!({"allowed": true});
                (StatusCode::CREATED, review)
            }
            "POST" => (StatusCode::CREATED, body),
            "GET" => self
                .objects
                .get(path)
                .map(|o| (StatusCode::OK, o.clone()))
                .unwrap_or(not_found),
            _ => not_found,
        }
    }
}

/// One operator pass (a fresh process: caches rebuilt from the world) over the tenant.
pub async fn pass(
    world: &Arc<Mutex<World>>,
    config: &OperatorConfig,
    providers: &Providers,
    injector: &Arc<Injector>,
) -> Option<Result<Action, Error>> {
    let tenant = world.lock().unwrap().tenant()?;
    {
        let mut w = world.lock().unwrap();
        w.writes = 0;
        w.log.clear();
    }
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server_world = world.clone();
    let server_injector = injector.clone();
    let server = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let ct = parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let fault = server_injector.next();
            let (code, answer) = {
                let mut w = server_world.lock().unwrap();
                w.log.push(format!("{} {}", parts.method, parts.uri.path()));
                if !parts.uri.path().contains("/secrets/") {
                    w.bodies.push(body.to_string());
                }
                match fault {
                    Some(Fault::Before) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "reason": "InternalError", "message": "injected"}),
                    ),
                    Some(Fault::After) => {
                        w.handle(parts.method.as_str(), parts.uri.path(), &ct, body);
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "reason": "InternalError", "message": "injected"}),
                        )
                    }
                    None => w.handle(parts.method.as_str(), parts.uri.path(), &ct, body),
                }
            };
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
    world.lock().unwrap().fill(&mut writers);
    let ctx = Arc::new(Context::new(
        client,
        config.clone(),
        stores,
        providers.clone(),
    ));
    // On the heap, as in the controller's runner: the pass future of a debug build is large,
    // and a test thread's stack is 2 MiB.
    let result = Box::pin(reconcile(Arc::new(tenant), ctx)).await;
    server.await.unwrap();
    Some(result)
}
