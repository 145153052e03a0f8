//! The reconciler with every external component: providers are called in order, their
//! Secrets reach the server, a converged tenant costs nothing, deletion follows policy, and
//! a crash at any request (of the API server or a provider) never leaves a duplicate.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::{OperatorConfig, ThirdCountryPolicy};
use dealertenant_operator::providers::{Component, Provider, Providers};
use support::fake_kube::{World, pass};
use support::fake_provider::{FakeProvider, Fault, Injector};

struct Stack {
    world: Arc<std::sync::Mutex<World>>,
    fakes: Vec<Arc<FakeProvider>>,
    providers: Providers,
    injector: Arc<Injector>,
    config: OperatorConfig,
}

fn stack(spec: &str) -> Stack {
    let spec: DealerTenantSpec = serde_saphyr::from_str(spec).unwrap();
    let tenant = DealerTenant::new("acme", spec);
    let injector = Injector::new();
    let fakes: Vec<_> = Component::ORDER
        .iter()
        .map(|c| FakeProvider::new(*c, "europe-west3", injector.clone()))
        .collect();
    let providers = Providers::new(
        fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    Stack {
        world: World::new(&tenant),
        fakes,
        providers,
        injector,
        config: OperatorConfig::default(),
    }
}

impl Stack {
    /// Runs passes until a pass writes nothing and the tenant is Ready (or gone); returns
    /// the number of passes.
    async fn converge(&self, max: usize) -> usize {
        for n in 1..=max {
            let Some(_result) =
                pass(&self.world, &self.config, &self.providers, &self.injector).await
            else {
                return n;
            };
            let w = self.world.lock().unwrap();
            let phase = w
                .tenant()
                .and_then(|t| t.status)
                .and_then(|s| s.phase)
                .map(|p| p.to_string());
            if w.writes == 0 && phase.as_deref() == Some("Ready") {
                return n;
            }
        }
        let w = self.world.lock().unwrap();
        panic!(
            "no convergence in {max} passes; status: {}; last pass: {:?}",
            w.tenant["status"], w.log
        );
    }

    fn fake(&self, c: Component) -> &Arc<FakeProvider> {
        self.fakes.iter().find(|f| f.component() == c).unwrap()
    }

    /// Runs up to `n` passes; stops early once the tenant is gone.
    async fn passes(&self, n: usize) {
        for _ in 0..n {
            if pass(&self.world, &self.config, &self.providers, &self.injector)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    fn secret(&self, component: &str) -> Option<String> {
        let w = self.world.lock().unwrap();
        let s = w.object(&format!(
            "/api/v1/namespaces/tenant-acme/secrets/{component}"
        ))?;
        let fake = self
            .fakes
            .iter()
            .find(|f| f.component().key() == component)
            .unwrap();
        let b64 = s["data"][fake.credential_key()].as_str()?;
        Some(String::from_utf8(base64_decode(b64)).unwrap())
    }

    fn assert_one_resource_each_and_secrets_current(&self) {
        for f in &self.fakes {
            let resources = f.resources.lock().unwrap().clone();
            assert_eq!(resources.len(), 1, "{}: {resources:?}", f.component());
            let creates = f.creates.lock().unwrap().clone();
            assert_eq!(creates.len(), 1, "{}: created {creates:?}", f.component());
            let current = resources.values().next().unwrap().clone();
            assert_eq!(
                self.secret(f.component().key()),
                Some(current),
                "{} Secret is stale",
                f.component()
            );
        }
    }
}

fn condition<'a>(
    status: &'a dealertenant_operator::api::DealerTenantStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn base64_decode(s: &str) -> Vec<u8> {
    // k8s-openapi's ByteString serializes as standard base64.
    let v: k8s_openapi::ByteString =
        serde_json::from_value(serde_json::Value::String(s.into())).unwrap();
    v.0
}

const SPEC: &str = "{displayName: Acme, region: europe-west3, server: {replicas: 0}}";

#[tokio::test]
async fn every_component_becomes_ready_with_its_secret_and_then_costs_nothing() {
    let s = stack(SPEC);
    s.converge(5).await;
    s.assert_one_resource_each_and_secrets_current();
    let writes: usize = s
        .fakes
        .iter()
        .map(|f| f.writes.load(Ordering::SeqCst))
        .sum();
    assert_eq!(writes, 4, "one create per component");

    {
        let w = s.world.lock().unwrap();
        let status = w.tenant().unwrap().status.unwrap();
        for c in [
            "Ready",
            "NamespaceReady",
            "ServerReady",
            "DatabaseReady",
            "StorageReady",
            "SearchReady",
            "EmailReady",
        ] {
            let cond = status
                .conditions
                .iter()
                .find(|x| x.type_ == c)
                .unwrap_or_else(|| panic!("{c}"));
            assert_eq!(cond.status, "True", "{c}: {}", cond.message);
        }
        assert_eq!(status.external_resources.len(), 4);
        let dep = w
            .object("/apis/apps/v1/namespaces/tenant-acme/deployments/server")
            .unwrap();
        let env_from: Vec<_> = dep["spec"]["template"]["spec"]["containers"][0]["envFrom"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["secretRef"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(env_from, ["database", "storage", "search", "email"]);
    }

    // One more pass: no write anywhere.
    pass(&s.world, &s.config, &s.providers, &s.injector)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.world.lock().unwrap().writes, 0);
    let writes: usize = s
        .fakes
        .iter()
        .map(|f| f.writes.load(Ordering::SeqCst))
        .sum();
    assert_eq!(writes, 4);
}

/// What the operator stops wanting is removed: once the last component is switched off,
/// the server no longer reads any component Secret (the fake API server's apply replaces
/// the object with what was sent, as server-side apply does for the only field manager).
#[tokio::test]
async fn switching_every_component_off_removes_the_servers_secret_references() {
    let s = stack(SPEC);
    s.converge(5).await;
    {
        let mut w = s.world.lock().unwrap();
        for c in ["database", "storage", "search", "email"] {
            w.tenant["spec"][c]["enabled"] = serde_json::json!(false);
        }
    }
    s.converge(5).await;
    let w = s.world.lock().unwrap();
    let dep = w
        .object("/apis/apps/v1/namespaces/tenant-acme/deployments/server")
        .unwrap();
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container
            .get("envFrom")
            .is_none_or(|e| e.as_array().is_some_and(|a| a.is_empty())),
        "envFrom was left behind: {container}"
    );
}

#[tokio::test]
async fn deleting_a_secret_rotates_that_credential_only() {
    let s = stack(SPEC);
    s.converge(5).await;
    let before = s.secret("database").unwrap();
    let storage_before = s.secret("storage").unwrap();
    s.world
        .lock()
        .unwrap()
        .objects
        .remove("/api/v1/namespaces/tenant-acme/secrets/database");
    s.converge(5).await;
    let after = s.secret("database").unwrap();
    assert_ne!(before, after);
    assert_eq!(s.secret("storage").unwrap(), storage_before);
    s.assert_one_resource_each_and_secrets_current();
}

/// The pod template's hash of the Secrets, and the Secret's list of IDs to retire.
fn rotation_marks(s: &Stack, component: &str) -> (String, Option<String>) {
    let w = s.world.lock().unwrap();
    let d = w
        .object("/apis/apps/v1/namespaces/tenant-acme/deployments/server")
        .unwrap();
    let hash = d["spec"]["template"]["metadata"]["annotations"]["dealerdesk.de/secrets-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = w
        .object(&format!(
            "/api/v1/namespaces/tenant-acme/secrets/{component}"
        ))
        .unwrap();
    let listed = secret["metadata"]["annotations"]["dealerdesk.de/retire-after-rollout"]
        .as_str()
        .map(str::to_string);
    (hash, listed)
}

/// Sets the server Deployment's status as the Deployment controller would while it has
/// (`done`) or has not yet observed the current template.
fn set_rollout(s: &Stack, done: bool) {
    let mut w = s.world.lock().unwrap();
    let d = w
        .objects
        .get_mut("/apis/apps/v1/namespaces/tenant-acme/deployments/server")
        .unwrap();
    let generation = d["metadata"]["generation"].as_i64().unwrap();
    d["status"]["observedGeneration"] =
        serde_json::json!(if done { generation } else { generation - 1 });
}

#[tokio::test]
async fn a_rotation_retires_the_old_credential_only_after_the_rollout() {
    let s = stack(SPEC);
    s.fake(Component::Search)
        .rotates
        .store(true, Ordering::SeqCst);
    s.converge(5).await;
    let (hash_before, listed) = rotation_marks(&s, "search");
    assert_eq!(listed, None);
    let before = s.secret("search").unwrap();

    // Deleting the Secret asks for a new credential: issued, the Secret written with the
    // old one's ID to retire, and the pod template's hash changed so that Pods roll.
    s.world
        .lock()
        .unwrap()
        .objects
        .remove("/api/v1/namespaces/tenant-acme/secrets/search");
    s.passes(1).await;
    let after = s.secret("search").unwrap();
    assert_ne!(before, after);
    let (hash_rotated, listed) = rotation_marks(&s, "search");
    assert_ne!(hash_rotated, hash_before, "a new Secret must roll the Pods");
    let listed = listed.expect("the replaced credential is listed on the Secret");
    let fake = s.fake(Component::Search);
    assert_eq!(
        fake.still_valid
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect::<Vec<_>>(),
        std::slice::from_ref(&before),
        "the old credential keeps working while the Pods roll"
    );
    assert!(!listed.contains(&before), "only IDs, never a credential");
    assert!(fake.retired.lock().unwrap().is_empty());

    // The Deployment controller has not observed the new template: nothing is retired,
    // and the pass writes nothing.
    set_rollout(&s, false);
    s.passes(1).await;
    assert!(fake.retired.lock().unwrap().is_empty());
    assert_eq!(fake.still_valid.lock().unwrap().len(), 1);
    assert_eq!(
        rotation_marks(&s, "search").1.as_deref(),
        Some(listed.as_str())
    );

    // Rolled out: the old credential is retired and the list goes from the Secret.
    set_rollout(&s, true);
    s.passes(1).await;
    assert_eq!(*fake.retired.lock().unwrap(), [listed]);
    assert!(fake.still_valid.lock().unwrap().is_empty());
    assert_eq!(rotation_marks(&s, "search"), (hash_rotated, None));
    assert_eq!(s.secret("search").unwrap(), after);

    // Converged again: a pass costs nothing.
    s.passes(1).await;
    assert_eq!(s.world.lock().unwrap().writes, 0);
    s.assert_one_resource_each_and_secrets_current();
}

#[tokio::test]
async fn switched_off_components_are_neither_called_nor_required() {
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, email: {enabled: false}, search: {enabled: false}}",
    );
    s.converge(5).await;
    let by = |c: Component| {
        s.fakes
            .iter()
            .find(|f| f.component() == c)
            .unwrap()
            .resources
            .lock()
            .unwrap()
            .len()
    };
    assert_eq!((by(Component::Database), by(Component::Storage)), (1, 1));
    assert_eq!((by(Component::Search), by(Component::Email)), (0, 0));
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != "EmailReady" && c.type_ != "SearchReady")
    );
}

#[tokio::test]
async fn third_country_processors_denied_keeps_email_out_with_a_reason() {
    let mut s = stack(SPEC);
    s.config.third_country_processors = ThirdCountryPolicy::Deny;
    s.passes(3).await;
    let email = s.fake(Component::Email);
    assert_eq!(email.resources.lock().unwrap().len(), 0);
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    let cond = condition(&status, "EmailReady");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "ThirdCountryProcessorDenied")
    );
    assert!(cond.message.contains("ActiveCampaign"), "{}", cond.message);
    assert_eq!(status.phase.unwrap().to_string(), "Failed");
}

async fn delete_tenant(s: &Stack) {
    let mut w = s.world.lock().unwrap();
    w.tenant["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-27T00:00:00Z");
}

#[tokio::test]
async fn delete_policy_erases_every_component_and_the_namespace() {
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    delete_tenant(&s).await;
    s.passes(5).await;
    let w = s.world.lock().unwrap();
    assert!(
        w.tenant.is_null(),
        "tenant still there: {}",
        w.tenant["status"]
    );
    assert!(
        w.objects.keys().all(|p| !p.contains("tenant-acme")),
        "{:?}",
        w.objects.keys()
    );
    for f in &s.fakes {
        assert!(
            f.resources.lock().unwrap().is_empty(),
            "{} not erased",
            f.component()
        );
    }
}

#[tokio::test]
async fn retain_policy_keeps_every_component_the_namespace_and_the_secrets() {
    let s = stack(SPEC);
    s.converge(5).await;
    delete_tenant(&s).await;
    s.passes(5).await;
    assert!(s.world.lock().unwrap().tenant.is_null());
    s.assert_one_resource_each_and_secrets_current();
    let w = s.world.lock().unwrap();
    let ns = w.object("/api/v1/namespaces/tenant-acme").unwrap();
    assert_eq!(ns["metadata"]["labels"]["dealerdesk.de/retained"], "true");
}

/// Fails every request of a full provisioning, one at a time, before and after it is
/// performed; every time the tenant must converge with exactly one resource per component
/// and Secrets that hold the current credentials.
#[tokio::test]
async fn a_crash_at_any_call_leaves_no_duplicate_and_converges() {
    let clean = stack(SPEC);
    clean.converge(5).await;
    let total = clean.injector.calls();
    assert!(total > 20, "a full provisioning makes {total} calls");
    for n in 1..=total {
        for fault in [Fault::Before, Fault::After] {
            let s = stack(SPEC);
            s.injector.arm(n, fault);
            s.converge(8).await;
            s.assert_one_resource_each_and_secrets_current();
        }
    }
}

/// A provider that always fails the same way.
struct Broken(Component, dealertenant_operator::providers::ProviderError);

#[async_trait::async_trait]
impl Provider for Broken {
    fn component(&self) -> Component {
        self.0
    }
    async fn reconcile(
        &self,
        _: &dealertenant_operator::providers::TenantInfo,
        _: Option<&dealertenant_operator::providers::SecretData>,
    ) -> Result<
        dealertenant_operator::providers::Reconciled,
        dealertenant_operator::providers::ProviderError,
    > {
        Err(self.1.clone())
    }
    async fn delete(
        &self,
        _: &dealertenant_operator::providers::TenantInfo,
    ) -> Result<
        dealertenant_operator::providers::Erased,
        dealertenant_operator::providers::ProviderError,
    > {
        Err(self.1.clone())
    }
}

fn with_broken_storage(s: &mut Stack, err: dealertenant_operator::providers::ProviderError) {
    let mut list: Vec<Arc<dyn Provider>> = s
        .fakes
        .iter()
        .filter(|f| f.component() != Component::Storage)
        .map(|f| f.clone() as Arc<dyn Provider>)
        .collect();
    list.push(Arc::new(Broken(Component::Storage, err)));
    s.providers = Providers::new(list);
}

#[tokio::test]
async fn a_permanent_provider_error_is_a_clear_condition_not_a_hot_loop() {
    use dealertenant_operator::providers::ProviderError;
    let mut s = stack(SPEC);
    with_broken_storage(
        &mut s,
        ProviderError::Refused {
            service: "Cloud Storage",
            message: "HTTP 403: project quota exceeded".into(),
        },
    );
    let mut last = None;
    for _ in 0..3 {
        last = pass(&s.world, &s.config, &s.providers, &s.injector).await;
    }
    // Permanent: the pass succeeds (no error-policy retry loop) and waits for the resync.
    let action = last
        .unwrap()
        .expect("a permanent provider error is not a reconcile error");
    // The resync (600 s) with its jitter: up to 10 % earlier, never later.
    let resync = (540..=600)
        .map(|s| {
            format!(
                "{:?}",
                kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(s))
            )
        })
        .collect::<Vec<_>>();
    let secs = format!("{action:?}");
    let after: f64 = secs
        .split("Some(")
        .nth(1)
        .and_then(|r| r.strip_suffix("s) }"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a requeue: {secs}; expected one of {}", resync[0]));
    assert!((540.0..=600.0).contains(&after), "{secs}");
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    let cond = condition(&status, "StorageReady");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "ProviderRefused")
    );
    assert!(cond.message.contains("quota exceeded"));
    assert_eq!(status.phase.unwrap().to_string(), "Failed");
    // The other components went ahead.
    let db = condition(&status, "DatabaseReady");
    assert_eq!(db.status, "True");
    // The last pass changed nothing: no status churn either.
    assert_eq!(s.world.lock().unwrap().writes, 0);
}

#[tokio::test]
async fn a_transient_provider_error_is_retried_with_backoff_and_shown() {
    use dealertenant_operator::providers::ProviderError;
    let mut s = stack(SPEC);
    with_broken_storage(
        &mut s,
        ProviderError::Unavailable {
            service: "Cloud Storage",
            message: "HTTP 503: backend error".into(),
        },
    );
    pass(&s.world, &s.config, &s.providers, &s.injector).await;
    let err = pass(&s.world, &s.config, &s.providers, &s.injector)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    let cond = condition(&status, "StorageReady");
    assert_eq!(cond.reason, "ProviderUnavailable");
    assert_eq!(status.phase.unwrap().to_string(), "Provisioning");
    // Once the service is back, the tenant converges.
    let fakes = s.fakes.clone();
    s.providers = Providers::new(
        fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    s.converge(5).await;
    s.assert_one_resource_each_and_secrets_current();
}

#[tokio::test]
async fn a_location_reported_outside_the_eu_flips_residency_compliant() {
    let mut s = stack(SPEC);
    let injector = s.injector.clone();
    let mut list: Vec<Arc<dyn Provider>> = s
        .fakes
        .iter()
        .filter(|f| f.component() != Component::Storage)
        .map(|f| f.clone() as Arc<dyn Provider>)
        .collect();
    // A bucket that the service reports in the United States.
    list.push(FakeProvider::new(
        Component::Storage,
        "US-CENTRAL1",
        injector,
    ));
    s.providers = Providers::new(list);
    s.passes(3).await;
    let w = s.world.lock().unwrap();
    let status = w.tenant().unwrap().status.unwrap();
    let cond = condition(&status, "ResidencyCompliant");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "ResidencyViolation")
    );
    assert!(
        cond.message.contains("storage-acme in US-CENTRAL1"),
        "{}",
        cond.message
    );
    assert_ne!(status.phase.unwrap().to_string(), "Ready");
    // The provider's error does not make the bucket vanish from the register: it is
    // still listed, with the location the service reported.
    let bucket = status
        .external_resources
        .iter()
        .find(|r| r.name == "storage-acme")
        .expect("the bucket stays in status.externalResources");
    assert_eq!(bucket.location.as_deref(), Some("US-CENTRAL1"));
    assert!(
        status
            .processors
            .iter()
            .any(|p| p.components.iter().any(|c| c == "storage"))
    );
    assert!(
        w.bodies
            .iter()
            .any(|b| b.contains("\"type\":\"Warning\"") && b.contains("ResidencyViolation")),
        "a Warning Event names the violation"
    );
}

#[tokio::test]
async fn status_lists_the_processors_that_hold_the_tenants_data() {
    let s = stack(SPEC);
    s.converge(5).await;
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    let ids: Vec<_> = status.processors.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["google-cloud", "postmark", "elastic"]);
    let postmark = &status.processors[1];
    assert!(postmark.third_country);
    assert_eq!(postmark.country, "US");
    assert_eq!(postmark.components, ["email"]);
    let google = &status.processors[0];
    assert_eq!(google.components, ["hosting", "database", "storage"]);
    let cond = condition(&status, "ResidencyCompliant");
    assert_eq!(cond.status, "True");

    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, email: {enabled: false}}",
    );
    s.converge(5).await;
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    assert!(
        status
            .processors
            .iter()
            .all(|p| p.id != "postmark" && !p.third_country)
    );
}

fn receipt(s: &Stack) -> serde_json::Value {
    let w = s.world.lock().unwrap();
    let cm = w
        .object("/api/v1/namespaces/dealertenant-system/configmaps/erasure-acme-tenantui")
        .expect("a receipt ConfigMap in the operator namespace");
    serde_json::from_str(cm["data"]["receipt.json"].as_str().unwrap()).unwrap()
}

fn outcome<'a>(r: &'a serde_json::Value, component: &str) -> &'a serde_json::Value {
    r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["component"] == component)
        .unwrap_or_else(|| panic!("{component}: {r}"))
}

#[tokio::test]
async fn erasure_under_delete_leaves_a_complete_receipt() {
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    delete_tenant(&s).await;
    s.passes(5).await;
    let r = receipt(&s);
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["tenant"], "acme");
    assert_eq!(r["tenantUid"], "tenant-uid");
    for c in ["database", "storage", "search", "email", "namespace"] {
        let e = outcome(&r, c);
        assert_eq!(e["outcome"], "Erased", "{c}: {e}");
        assert!(e["at"].as_str().unwrap().starts_with("20"), "{e}");
        assert!(
            !e["resources"].as_array().unwrap().is_empty(),
            "{c} names what was erased"
        );
    }
    assert_eq!(outcome(&r, "email")["processor"], "postmark");
    assert_eq!(outcome(&r, "email")["processorCountry"], "US");
    // No personal data: the display name is not in it.
    assert!(!r.to_string().contains("Acme"));
}

#[tokio::test]
async fn a_receipt_says_restorable_where_the_service_keeps_deleted_data() {
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    let storage = s
        .fakes
        .iter()
        .find(|f| f.component() == Component::Storage)
        .unwrap();
    *storage.restorable_until.lock().unwrap() = Some("2026-12-09T10:00:00Z".into());
    delete_tenant(&s).await;
    s.passes(5).await;
    let r = receipt(&s);
    // Deleted as far as the operator can: the tenant goes, the receipt is final...
    assert_eq!(r["complete"], true, "{r}");
    assert!(s.world.lock().unwrap().tenant().is_none());
    // ...and it does not say "erased" for what the service can still restore.
    let e = outcome(&r, "storage");
    assert_eq!(e["outcome"], "Restorable", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("restorable until 2026-12-09T10:00:00Z"),
        "{e}"
    );
    assert_eq!(outcome(&r, "database")["outcome"], "Erased");
}

#[tokio::test]
async fn a_partial_erasure_keeps_the_finalizer_and_names_who_still_holds_data() {
    use dealertenant_operator::providers::ProviderError;
    let mut s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    with_broken_storage(
        &mut s,
        ProviderError::Refused {
            service: "Cloud Storage",
            message: "HTTP 403: permission denied".into(),
        },
    );
    delete_tenant(&s).await;
    s.passes(3).await;
    let tenant = s
        .world
        .lock()
        .unwrap()
        .tenant()
        .expect("the finalizer keeps the tenant");
    let status = tenant.status.unwrap();
    let ready = condition(&status, "Ready");
    assert_eq!(ready.reason, "ErasureIncomplete");
    assert!(
        ready.message.contains("storage at google-cloud"),
        "{}",
        ready.message
    );
    let storage = condition(&status, "StorageReady");
    assert!(
        storage.message.contains("permission denied"),
        "{}",
        storage.message
    );

    let r = receipt(&s);
    assert_eq!(r["complete"], false);
    assert_eq!(outcome(&r, "storage")["outcome"], "Failed");
    assert_eq!(outcome(&r, "database")["outcome"], "Erased");
    assert_eq!(outcome(&r, "namespace")["outcome"], "Kept");
    assert!(
        s.world
            .lock()
            .unwrap()
            .object("/api/v1/namespaces/tenant-acme")
            .is_some(),
        "the namespace waits for the processors"
    );

    // Fixed: the next passes finish, and the receipt keeps the earlier erasures.
    let fakes = s.fakes.clone();
    s.providers = Providers::new(
        fakes
            .iter()
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    s.passes(4).await;
    let r = receipt(&s);
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(
        outcome(&r, "database")["outcome"],
        "Erased",
        "an earlier erasure is not forgotten"
    );
    assert_eq!(outcome(&r, "storage")["outcome"], "Erased");
}

#[tokio::test]
async fn retain_leaves_a_receipt_of_what_was_kept_and_where() {
    let s = stack(SPEC);
    s.converge(5).await;
    delete_tenant(&s).await;
    s.passes(3).await;
    let r = receipt(&s);
    assert_eq!(r["deletionPolicy"], "Retain");
    for c in ["database", "storage", "search", "email", "namespace"] {
        assert_eq!(outcome(&r, c)["outcome"], "Kept", "{c}");
    }
    // What the service reported, as the status recorded it.
    let bucket = &outcome(&r, "storage")["resources"][0];
    assert_eq!(bucket["name"], "storage-acme");
    assert_eq!(bucket["component"], "storage");
    assert_eq!(bucket["location"], "europe-west3");
}

#[tokio::test]
async fn switched_off_components_are_not_called_on_erasure_unless_they_hold_data() {
    // Never provisioned: deleting the tenant calls no provider for it.
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete, email: {enabled: false}, search: {enabled: false}}",
    );
    s.converge(5).await;
    let before = s.injector.calls();
    delete_tenant(&s).await;
    s.passes(5).await;
    assert!(s.world.lock().unwrap().tenant.is_null());
    let r = receipt(&s);
    let components: Vec<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["component"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["storage", "database", "namespace"]);
    assert!(s.injector.calls() > before);

    // Provisioned, then switched off: it still holds data, so erasure reaches it.
    let s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    s.world.lock().unwrap().tenant["spec"]["email"]["enabled"] = serde_json::json!(false);
    s.converge(5).await;
    let status = s.world.lock().unwrap().tenant().unwrap().status.unwrap();
    let postmark = status.processors.iter().find(|p| p.id == "postmark");
    assert_eq!(
        postmark.map(|p| p.components.clone()),
        Some(vec!["email".to_string()]),
        "Postmark still holds data"
    );
    assert!(
        status
            .external_resources
            .iter()
            .any(|r| r.processor == "postmark")
    );
    assert!(status.conditions.iter().all(|c| c.type_ != "EmailReady"));
    delete_tenant(&s).await;
    s.passes(5).await;
    let email = s.fake(Component::Email);
    assert!(
        email.resources.lock().unwrap().is_empty(),
        "the email server was erased"
    );
    assert_eq!(outcome(&receipt(&s), "email")["outcome"], "Erased");
}

#[tokio::test]
async fn a_component_without_a_provider_blocks_erasure_only_if_it_holds_data() {
    let mut s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    // No email provider (no Postmark token, say): the tenant never got an email server.
    let fakes = s.fakes.clone();
    s.providers = Providers::new(
        fakes
            .iter()
            .filter(|f| f.component() != Component::Email)
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    s.passes(4).await;
    delete_tenant(&s).await;
    s.passes(5).await;
    assert!(
        s.world.lock().unwrap().tenant.is_null(),
        "nothing to erase at the email processor: deletion completes"
    );

    // The status shows an email server (made by an operator that had the provider): erasure
    // cannot finish without the provider, and says so.
    let mut s = stack(
        "{displayName: Acme, region: europe-west3, server: {replicas: 0}, deletionPolicy: Delete}",
    );
    s.converge(5).await;
    let fakes = s.fakes.clone();
    s.providers = Providers::new(
        fakes
            .iter()
            .filter(|f| f.component() != Component::Email)
            .map(|f| f.clone() as Arc<dyn Provider>)
            .collect(),
    );
    delete_tenant(&s).await;
    s.passes(3).await;
    assert!(
        s.world.lock().unwrap().tenant().is_some(),
        "the finalizer stays"
    );
    assert_eq!(outcome(&receipt(&s), "email")["outcome"], "Failed");
}
