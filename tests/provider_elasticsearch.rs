mod support;

// The Elasticsearch provider against the stateful double in `support/elasticsearch.rs`:
// creation and the Secret, a second pass without writes, drift, rotation, tenant isolation
// by key, deletion, error classification without credentials, residency, and crash safety
// by failing every request of a pass in turn, before or after it is performed.

use std::sync::atomic::{AtomicUsize, Ordering};

use dealertenant_operator::providers::search::SearchConfig;
use dealertenant_operator::providers::search::elasticsearch::{
    ElasticsearchProvider, UID_META, role_body, secret_keys, tenant_descriptor,
};
use dealertenant_operator::providers::{
    Provider, ProviderError, Reconciled, SecretData, TenantInfo,
};
use serde_json::json;
use support::elasticsearch::{Call, EsDouble, OPERATOR_PASSWORD, OPERATOR_USER};

fn tenant(name: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: format!("uid-{name}"),
        region: "europe-west3".into(),
        namespace: format!("tenant-{name}"),
        annotations: Default::default(),
    }
}

/// A file holding `content` (a mounted Secret, for the provider); one file per content,
/// replaced atomically, so parallel tests never read a half-written file and no file is
/// left behind per test.
fn secret_file(content: &str) -> String {
    use std::hash::{Hash, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut h);
    let dir = std::env::temp_dir();
    let path = dir.join(format!("dt-es-test-{:016x}", h.finish()));
    let tmp = dir.join(format!(
        "dt-es-test-tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&tmp, format!("{content}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

/// The operator as a user with HTTP Basic (the form that can issue tenant keys).
fn config(es: &EsDouble) -> SearchConfig {
    SearchConfig {
        endpoint: es.url(),
        region: "europe-west3".into(),
        username: Some(OPERATOR_USER.into()),
        password_file: Some(secret_file(OPERATOR_PASSWORD)),
        ..SearchConfig::default()
    }
}

/// The operator with its own API key.
fn api_key_config(es: &EsDouble) -> SearchConfig {
    SearchConfig {
        endpoint: es.url(),
        region: "europe-west3".into(),
        api_key_file: Some(secret_file(&es.operator_api_key())),
        ..SearchConfig::default()
    }
}

fn provider(cfg: &SearchConfig) -> ElasticsearchProvider {
    ElasticsearchProvider::from_config(cfg).unwrap()
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn writes(calls: &[Call]) -> Vec<String> {
    lines(
        &calls
            .iter()
            .filter(|c| c.is_write())
            .cloned()
            .collect::<Vec<_>>(),
    )
}

fn key_of(s: &SecretData) -> &str {
    s.get(secret_keys::API_KEY).unwrap()
}

fn id_of(s: &SecretData) -> &str {
    s.get(secret_keys::API_KEY_ID).unwrap()
}

/// Exactly one index, role and valid key for the tenant, matching `secret`, which works.
async fn assert_converged(es: &EsDouble, name: &str, secret: &SecretData) {
    assert_eq!(es.index_names(), [name], "indices");
    assert_eq!(es.role_names(), [name], "roles");
    let valid = es.valid_keys(name);
    assert_eq!(valid.len(), 1, "valid keys: {valid:?}");
    assert_eq!(valid[0].id, id_of(secret));
    assert_eq!(es.search_as(key_of(secret), name).await, 200);
}

#[tokio::test]
async fn first_reconcile_creates_index_role_key_and_secret() {
    let es = EsDouble::start().await;
    let cfg = config(&es);
    let p = provider(&cfg);
    let r = p.reconcile(&tenant("acme"), None).await.unwrap();

    assert!(r.ready, "{}", r.message);
    let secret = r.secret.expect("credentials are issued on the first pass");
    let mut keys: Vec<_> = secret.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ELASTICSEARCH_API_KEY",
            "ELASTICSEARCH_API_KEY_ID",
            "ELASTICSEARCH_INDEX",
            "ELASTICSEARCH_URL"
        ]
    );
    assert_eq!(secret.get(secret_keys::URL), Some(es.url().as_str()));
    assert_eq!(secret.get(secret_keys::INDEX), Some("dt-acme"));

    let index = es.index("dt-acme").expect("index created");
    assert_eq!((index.shards, index.replicas), (1, 1));
    let role = es.role("dt-acme").expect("role created");
    assert_eq!(role["cluster"], json!([]));
    assert_eq!(role["indices"][0]["names"], json!(["dt-acme"]));
    assert_eq!(role["metadata"]["tenant"], json!("acme"));
    let valid = es.valid_keys("dt-acme");
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[0].id, id_of(&secret));
    assert_eq!(valid[0].encoded(), key_of(&secret));
    assert_eq!(valid[0].metadata["tenant"], json!("acme"));
    assert_eq!(
        valid[0].role_descriptors["dt-acme"]["indices"],
        tenant_descriptor("dt-acme")["indices"]
    );

    // The creates are exactly the three resources.
    let creates: Vec<String> = lines(
        &es.calls()
            .into_iter()
            .filter(|c| c.is_create())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        creates,
        [
            "PUT /dt-acme",
            "PUT /_security/role/dt-acme",
            "POST /_security/api_key"
        ]
    );
    let create = es
        .calls()
        .into_iter()
        .find(|c| c.line() == "PUT /dt-acme")
        .unwrap();
    assert_eq!(
        create.body,
        json!({"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 1}},
               "mappings": {"_meta": {"dealerdesk.de/tenant-uid": "uid-acme"}}})
    );
    // Index, role and key are bound to the tenant's UID.
    assert_eq!(
        es.index("dt-acme").unwrap().meta,
        Some(json!({"dealerdesk.de/tenant-uid": "uid-acme"}))
    );
    assert_eq!(role["metadata"][UID_META], json!("uid-acme"));
    assert_eq!(valid[0].metadata[UID_META], json!("uid-acme"));

    // What is reported, with the deployment's region.
    let kinds: Vec<_> = r.resources.iter().map(|x| x.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ElasticsearchIndex",
            "ElasticsearchRole",
            "ElasticsearchApiKey"
        ]
    );
    for res in &r.resources {
        assert_eq!(res.location.as_deref(), Some("europe-west3"));
        assert_eq!(res.processor, "elastic");
        assert_eq!(res.name, "dt-acme");
    }
    assert_eq!(r.resources[0].id.as_deref(), Some(index.uuid.as_str()));
    assert_eq!(r.resources[2].id.as_deref(), Some(id_of(&secret)));
    // Reported resources are the planned ones, with the service's IDs.
    let planned = cfg.plan(&tenant("acme"), "elastic");
    for (want, got) in planned.iter().zip(&r.resources) {
        assert_eq!(
            (&want.kind, &want.name, &want.location),
            (&got.kind, &got.name, &got.location)
        );
    }

    // The key works for the tenant's data.
    assert_eq!(es.search_as(key_of(&secret), "dt-acme").await, 200);
    assert_eq!(es.index_doc_as(key_of(&secret), "dt-acme").await, 201);
    // Nothing in the message or the report's Debug output is a credential.
    assert!(!r.message.contains(key_of(&secret)));
    assert!(!format!("{secret:?}").contains(key_of(&secret)));
}

#[tokio::test]
async fn second_reconcile_with_the_secret_writes_nothing() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let secret = p.reconcile(&t, None).await.unwrap().secret.unwrap();

    let n = es.call_count();
    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    let calls = es.calls_since(n);
    assert!(r.ready);
    assert!(r.secret.is_none(), "no new credentials");
    assert_eq!(writes(&calls), Vec::<String>::new(), "{:?}", lines(&calls));
    assert!(!calls.is_empty(), "it still observes");
    assert_eq!(r.resources[2].id.as_deref(), Some(id_of(&secret)));
    assert_converged(&es, "dt-acme", &secret).await;
}

#[tokio::test]
async fn drift_is_repaired_and_then_left_alone() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let secret = p.reconcile(&t, None).await.unwrap().secret.unwrap();

    // Replicas changed and the role widened behind the operator's back.
    es.set_replicas("dt-acme", 3);
    let mut wide = role_body("dt-acme", "acme", "uid-acme");
    wide["indices"][0]["names"] = json!(["*"]);
    wide["indices"][0]["privileges"] = json!(["all"]);
    wide["cluster"] = json!(["monitor"]);
    es.put_role("dt-acme", &wide);

    let n = es.call_count();
    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none());
    assert_eq!(
        writes(&es.calls_since(n)),
        ["PUT /dt-acme/_settings", "PUT /_security/role/dt-acme"]
    );
    assert_eq!(es.index("dt-acme").unwrap().replicas, 1);
    let role = es.role("dt-acme").unwrap();
    assert_eq!(role["indices"][0]["names"], json!(["dt-acme"]));
    assert_eq!(role["cluster"], json!([]));

    // A changed configuration is applied the same way.
    let cfg2 = SearchConfig {
        replicas: 2,
        ..config(&es)
    };
    let n = es.call_count();
    provider(&cfg2).reconcile(&t, Some(&secret)).await.unwrap();
    let w = es.calls_since(n);
    assert_eq!(writes(&w), ["PUT /dt-acme/_settings"]);
    assert_eq!(
        w.iter().find(|c| c.is_write()).unwrap().body,
        json!({"index": {"number_of_replicas": 2}})
    );
    assert_eq!(es.index("dt-acme").unwrap().replicas, 2);

    let n = es.call_count();
    provider(&cfg2).reconcile(&t, Some(&secret)).await.unwrap();
    assert_eq!(writes(&es.calls_since(n)), Vec::<String>::new());
    assert_converged(&es, "dt-acme", &secret).await;
}

#[tokio::test]
async fn a_different_shard_count_is_a_permanent_error() {
    let es = EsDouble::start().await;
    es.put_index("dt-acme", 3, 1);
    let e = provider(&config(&es))
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("3 primary shards"), "{e}");
    assert!(writes(&es.calls()).is_empty(), "{:?}", lines(&es.calls()));
}

#[tokio::test]
async fn an_index_created_concurrently_counts_as_existing() {
    let es = EsDouble::start().await;
    es.race_index_create();
    let r = provider(&config(&es))
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap();
    let put = es
        .calls()
        .into_iter()
        .filter(|c| c.line() == "PUT /dt-acme")
        .count();
    assert_eq!(put, 1, "{:?}", lines(&es.calls()));
    assert_converged(&es, "dt-acme", &r.secret.unwrap()).await;
}

#[tokio::test]
async fn missing_secret_rotates_and_the_old_key_stops_working() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let first = p.reconcile(&t, None).await.unwrap().secret.unwrap();

    let second = p
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .expect("a missing Secret means new credentials");
    assert_ne!(id_of(&first), id_of(&second));
    assert_eq!(es.search_as(key_of(&first), "dt-acme").await, 401);
    assert_eq!(es.search_as(key_of(&second), "dt-acme").await, 200);
    assert_eq!(
        es.keys_named("dt-acme").len(),
        2,
        "the old one is invalidated"
    );
    assert_converged(&es, "dt-acme", &second).await;
}

#[tokio::test]
async fn a_secret_whose_key_no_longer_works_is_replaced() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let s1 = p.reconcile(&t, None).await.unwrap().secret.unwrap();

    // Invalidated out of band.
    es.invalidate_key(id_of(&s1));
    let s2 = p
        .reconcile(&t, Some(&s1))
        .await
        .unwrap()
        .secret
        .expect("reissued");
    assert_ne!(id_of(&s1), id_of(&s2));
    assert_converged(&es, "dt-acme", &s2).await;

    // The Secret's key value is wrong although its ID is right.
    let broken = s2.clone().with(secret_keys::API_KEY, "bm9wZTpub3Bl");
    let s3 = p
        .reconcile(&t, Some(&broken))
        .await
        .unwrap()
        .secret
        .expect("reissued");
    assert_ne!(id_of(&s3), id_of(&s2));
    assert_converged(&es, "dt-acme", &s3).await;

    // The key's descriptors widened to "everything its creator may do".
    es.invalidate_key(id_of(&s3));
    let wide = es.mint_key("dt-acme", &json!({}));
    let held = s3
        .clone()
        .with(secret_keys::API_KEY_ID, wide.id.clone())
        .with(secret_keys::API_KEY, wide.encoded());
    let s4 = p
        .reconcile(&t, Some(&held))
        .await
        .unwrap()
        .secret
        .expect("reissued");
    assert_ne!(id_of(&s4), wide.id);
    assert_eq!(es.search_as(&wide.encoded(), "dt-acme").await, 401);
    assert_converged(&es, "dt-acme", &s4).await;
}

#[tokio::test]
async fn stray_keys_of_the_same_name_are_invalidated() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let secret = p.reconcile(&t, None).await.unwrap().secret.unwrap();
    let stray = es.mint_key("dt-acme", &json!({"dt-acme": tenant_descriptor("dt-acme")}));

    let n = es.call_count();
    let r = p.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none(), "the tenant's own key is kept");
    assert_eq!(writes(&es.calls_since(n)), ["DELETE /_security/api_key"]);
    assert_eq!(es.search_as(&stray.encoded(), "dt-acme").await, 401);
    assert_converged(&es, "dt-acme", &secret).await;
}

#[tokio::test]
async fn a_moved_endpoint_updates_the_secret_without_a_new_key() {
    let es = EsDouble::start().await;
    let t = tenant("acme");
    let secret = provider(&config(&es))
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let moved = SearchConfig {
        endpoint: format!("{}/", es.url()),
        ..config(&es)
    };
    let n = es.call_count();
    let updated = provider(&moved)
        .reconcile(&t, Some(&secret))
        .await
        .unwrap()
        .secret
        .expect("the URL changed");
    assert!(writes(&es.calls_since(n)).is_empty());
    assert_eq!(
        updated.get(secret_keys::URL),
        Some(format!("{}/", es.url()).as_str())
    );
    assert_eq!(id_of(&updated), id_of(&secret));
    assert_eq!(key_of(&updated), key_of(&secret));
}

#[tokio::test]
async fn a_tenant_key_reaches_its_own_index_and_nothing_else() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let a = p
        .reconcile(&tenant("a"), None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let b = p
        .reconcile(&tenant("b"), None)
        .await
        .unwrap()
        .secret
        .unwrap();

    assert_eq!(es.search_as(key_of(&a), "dt-a").await, 200);
    assert_eq!(es.index_doc_as(key_of(&a), "dt-a").await, 201);
    assert_eq!(es.search_as(key_of(&a), "dt-b").await, 403);
    assert_eq!(es.index_doc_as(key_of(&a), "dt-b").await, 403);
    assert_eq!(es.search_as(key_of(&b), "dt-b").await, 200);
    assert_eq!(es.search_as(key_of(&b), "dt-a").await, 403);
    // No administration with a tenant key: no index management, no security APIs.
    assert_eq!(es.status_as("DELETE", key_of(&a), "dt-a").await, 403);
    assert_eq!(es.status_as("PUT", key_of(&a), "dt-c").await, 403);
    assert_eq!(
        es.status_as("GET", key_of(&a), "_security/api_key?name=dt-b")
            .await,
        403
    );
    assert_eq!(
        es.status_as("POST", key_of(&a), "_security/api_key").await,
        403
    );
    assert_eq!(
        es.status_as("GET", key_of(&a), "_security/role/dt-b").await,
        403
    );
    // A made-up key gets nowhere.
    assert_eq!(es.search_as("bm9wZTpub3Bl", "dt-a").await, 401);
}

#[tokio::test]
async fn delete_removes_everything_and_is_idempotent() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let r = p.reconcile(&t, None).await.unwrap();
    let secret = r.secret.unwrap();
    let uuid = es.index("dt-acme").unwrap().uuid;
    // Another tenant is left alone.
    let other = p
        .reconcile(&tenant("other"), None)
        .await
        .unwrap()
        .secret
        .unwrap();

    let erased = p.delete(&t).await.unwrap();
    let got: Vec<_> = erased
        .resources
        .iter()
        .map(|x| (x.kind.as_str(), x.name.as_str(), x.id.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("ElasticsearchApiKey", "dt-acme", Some(id_of(&secret))),
            ("ElasticsearchIndex", "dt-acme", Some(uuid.as_str())),
            ("ElasticsearchRole", "dt-acme", None),
        ]
    );
    for x in &erased.resources {
        assert_eq!(x.location.as_deref(), Some("europe-west3"));
    }
    assert!(es.index("dt-acme").is_none());
    assert!(es.role("dt-acme").is_none());
    assert!(es.valid_keys("dt-acme").is_empty());
    assert_eq!(es.search_as(key_of(&secret), "dt-acme").await, 401);

    // Again: nothing left, nothing erased, no error.
    let again = p.delete(&t).await.unwrap();
    assert!(again.resources.is_empty(), "{:?}", again.resources);

    assert_converged_other(&es, &other).await;
}

async fn assert_converged_other(es: &EsDouble, other: &SecretData) {
    assert!(es.index("dt-other").is_some());
    assert!(es.role("dt-other").is_some());
    assert_eq!(es.search_as(key_of(other), "dt-other").await, 200);
}

#[tokio::test]
async fn delete_of_an_unknown_tenant_is_ok() {
    let es = EsDouble::start().await;
    let erased = provider(&config(&es))
        .delete(&tenant("ghost"))
        .await
        .unwrap();
    assert!(erased.resources.is_empty());
    assert!(es.calls().iter().all(|c| !c.is_create()));
}

// --- tenant UIDs: retained data ---------------------------------------------------------

const ADOPT: &str = "dealerdesk.de/adopt-retained";

fn assert_foreign(e: &ProviderError, owner: &str) {
    assert!(matches!(e, ProviderError::Foreign { .. }), "{e}");
    assert_eq!(e.reason(), "RetainedDataExists");
    let text = e.to_string();
    assert!(text.contains(owner), "{text}");
    assert!(text.contains(&format!("{ADOPT}: {owner}")), "{text}");
    assert!(text.contains("delete the index dt-acme"), "{text}");
}

#[tokio::test]
async fn a_retained_index_is_bound_to_its_tenants_uid() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let old = tenant("acme");
    let old_secret = p.reconcile(&old, None).await.unwrap().secret.unwrap();
    assert_eq!(es.index_doc_as(key_of(&old_secret), "dt-acme").await, 201);
    let uuid = es.index("dt-acme").unwrap().uuid;
    // The tenant's own key cannot rebind its index (explicit mapping updates need
    // `manage`).
    assert_eq!(
        es.status_as("PUT", key_of(&old_secret), "dt-acme/_mapping")
            .await,
        403
    );

    // Another customer, same name, another UID: refused before any write, no key issued,
    // not even with the retained tenant's Secret at hand (a retained namespace).
    let mut newcomer = old.clone();
    newcomer.uid = "uid-acme-newcomer".into();
    for held in [None, Some(&old_secret)] {
        let n = es.call_count();
        let e = p.reconcile(&newcomer, held).await.unwrap_err();
        assert_foreign(&e, &old.uid);
        let calls = es.calls_since(n);
        assert!(writes(&calls).is_empty(), "{:?}", lines(&calls));
    }
    // Adopting some other UID changes nothing either.
    newcomer
        .annotations
        .insert(ADOPT.into(), "uid-someone-else".into());
    let n = es.call_count();
    let e = p.reconcile(&newcomer, None).await.unwrap_err();
    assert_foreign(&e, &old.uid);
    assert!(writes(&es.calls_since(n)).is_empty());
    // Its deletion leaves the retained index, role and key alone.
    let n = es.call_count();
    let erased = p.delete(&newcomer).await.unwrap();
    assert!(erased.resources.is_empty(), "{:?}", erased.resources);
    assert!(writes(&es.calls_since(n)).is_empty());
    assert_converged(&es, "dt-acme", &old_secret).await;
    assert_eq!(es.index("dt-acme").unwrap().docs, 1);

    // Adopting exactly that UID hands it over, data and all, with a new key; the retained
    // tenant's key is invalidated (the data belongs to the adopter now), even though its
    // Secret was handed in.
    newcomer.annotations.insert(ADOPT.into(), old.uid.clone());
    let n = es.call_count();
    let r = p.reconcile(&newcomer, Some(&old_secret)).await.unwrap();
    assert!(r.message.contains("adopted"), "{}", r.message);
    let new_secret = r.secret.expect("adoption issues a new key");
    assert_ne!(id_of(&new_secret), id_of(&old_secret));
    assert!(
        writes(&es.calls_since(n)).contains(&"PUT /dt-acme/_mapping".to_string()),
        "{:?}",
        lines(&es.calls_since(n))
    );
    let index = es.index("dt-acme").unwrap();
    assert_eq!((index.uuid.as_str(), index.docs), (uuid.as_str(), 1));
    assert_eq!(index.meta, Some(json!({UID_META: newcomer.uid})));
    assert_eq!(
        es.role("dt-acme").unwrap()["metadata"][UID_META],
        json!(newcomer.uid)
    );
    assert_converged(&es, "dt-acme", &new_secret).await;
    assert_eq!(
        es.valid_keys("dt-acme")[0].metadata[UID_META],
        json!(newcomer.uid)
    );
    assert_eq!(es.search_as(key_of(&old_secret), "dt-acme").await, 401);
    // A second pass writes nothing.
    let n = es.call_count();
    let again = p.reconcile(&newcomer, Some(&new_secret)).await.unwrap();
    assert!(again.secret.is_none());
    assert!(writes(&es.calls_since(n)).is_empty());

    // Now bound to the adopter: the old UID is the stranger, for reconcile and delete.
    let n = es.call_count();
    let e = p.reconcile(&old, Some(&old_secret)).await.unwrap_err();
    assert_foreign(&e, &newcomer.uid);
    assert!(p.delete(&old).await.unwrap().resources.is_empty());
    assert!(writes(&es.calls_since(n)).is_empty());
    assert_converged(&es, "dt-acme", &new_secret).await;

    // The adopter's own deletion erases everything.
    let erased = p.delete(&newcomer).await.unwrap();
    assert_eq!(erased.resources.len(), 3, "{:?}", erased.resources);
    assert!(es.index_names().is_empty() && es.role_names().is_empty());
}

#[tokio::test]
async fn an_index_of_an_earlier_version_is_bound_on_the_next_pass() {
    let es = EsDouble::start().await;
    es.put_index("dt-acme", 1, 1);
    es.set_index_meta("dt-acme", Some(json!({"kept": "x"})));
    let p = provider(&config(&es));
    let t = tenant("acme");
    let r = p.reconcile(&t, None).await.unwrap();
    assert!(
        writes(&es.calls()).contains(&"PUT /dt-acme/_mapping".to_string()),
        "{:?}",
        lines(&es.calls())
    );
    assert_eq!(
        es.index("dt-acme").unwrap().meta,
        Some(json!({"kept": "x", UID_META: "uid-acme"}))
    );
    let secret = converge(&es, &p, &t, r.secret).await;
    assert_converged(&es, "dt-acme", &secret).await;
}

#[tokio::test]
async fn a_failure_at_any_request_of_an_adoption_heals() {
    let old = tenant("acme");
    let mut newcomer = old.clone();
    newcomer.uid = "uid-acme-newcomer".into();
    newcomer.annotations.insert(ADOPT.into(), old.uid.clone());
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    p.reconcile(&old, None).await.unwrap();
    let n = es.call_count();
    p.reconcile(&newcomer, None).await.unwrap();
    let total = es.call_count() - n;

    for performed in [false, true] {
        for k in 1..=total {
            let es = EsDouble::start().await;
            let p = provider(&config(&es));
            let old_secret = p.reconcile(&old, None).await.unwrap().secret.unwrap();
            es.fail_request(k, performed);
            let r = p.reconcile(&newcomer, Some(&old_secret)).await;
            es.clear_fault();
            if let Err(e) = &r {
                assert!(e.is_transient(), "k={k}: {e}");
            }
            // The component Secret still holds the retained tenant's key until a new one
            // is issued.
            let held = r.ok().and_then(|r| r.secret).unwrap_or(old_secret.clone());
            let secret = converge(&es, &p, &newcomer, Some(held)).await;
            assert_converged(&es, "dt-acme", &secret).await;
            assert_eq!(
                es.index("dt-acme").unwrap().meta,
                Some(json!({UID_META: newcomer.uid})),
                "k={k}"
            );
            assert_eq!(
                es.search_as(key_of(&old_secret), "dt-acme").await,
                401,
                "k={k}"
            );
        }
    }
}

// --- errors ------------------------------------------------------------------------------

#[tokio::test]
async fn overload_and_outages_are_transient() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    for status in [429, 503] {
        es.respond_with(Some(status));
        let e = p.reconcile(&tenant("acme"), None).await.unwrap_err();
        assert!(e.is_transient(), "{status}: {e}");
        assert!(e.to_string().contains(&format!("HTTP {status}")), "{e}");
        let e = p.delete(&tenant("acme")).await.unwrap_err();
        assert!(e.is_transient(), "{status}: {e}");
    }
    es.respond_with(None);
    assert!(p.reconcile(&tenant("acme"), None).await.is_ok());
}

/// Every request is counted once, by what the service answered: `2xx`/`4xx` as it goes,
/// `429` apart from the other 4xx, `5xx`, and `error` when nothing answered.
#[tokio::test]
async fn requests_are_counted_by_status_class() {
    use dealertenant_operator::providers::Component;
    use dealertenant_operator::providers::requests::RequestMetrics;
    let es = EsDouble::start().await;
    let m = RequestMetrics::default();
    let p = provider(&config(&es)).observed_by(&m);
    let count = |class: &str| m.count(Component::Search, class);
    let total = || {
        ["2xx", "3xx", "4xx", "429", "5xx", "error"]
            .map(count)
            .iter()
            .sum::<u64>()
    };
    p.reconcile(&tenant("acme"), None).await.unwrap();
    let first = es.call_count() as u64;
    assert!(first >= 3, "{first} requests");
    assert_eq!(total(), first, "one count per request");
    assert!(count("2xx") >= 2);
    assert_eq!(count("429") + count("5xx") + count("error"), 0);
    for (status, class) in [(429, "429"), (503, "5xx")] {
        es.respond_with(Some(status));
        let before = es.call_count() as u64;
        p.reconcile(&tenant("acme"), None).await.unwrap_err();
        let sent = es.call_count() as u64 - before;
        assert!(sent >= 1);
        assert_eq!(count(class), sent, "{status}");
    }
    assert_eq!(
        count("4xx"),
        first - count("2xx"),
        "429 is not counted as 4xx"
    );
    es.respond_with(None);
    // Nothing listens: the request fails without an answer.
    let closed = SearchConfig {
        endpoint: format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }),
        ..config(&es)
    };
    provider(&closed)
        .observed_by(&m)
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert_eq!(count("error"), 1);
    assert_eq!(total(), es.call_count() as u64 + 1);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cfg = SearchConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        username: Some(OPERATOR_USER.into()),
        password_file: Some(secret_file(OPERATOR_PASSWORD)),
        ..SearchConfig::default()
    };
    let e = provider(&cfg)
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(!e.to_string().contains(OPERATOR_PASSWORD));
}

fn assert_no_credential(e: &ProviderError, secrets: &[&str]) {
    let text = format!("{e} {e:?}");
    for s in secrets {
        assert!(!text.contains(s), "credential in {text}");
    }
}

#[tokio::test]
async fn refused_credentials_are_permanent_and_not_repeated() {
    let es = EsDouble::start().await;
    let cfg = SearchConfig {
        password_file: Some(secret_file("wrong-Pw-77Hq")),
        ..config(&es)
    };
    let e = provider(&cfg)
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.reason(), "ProviderRefused");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(e.to_string().contains("security_exception"), "{e}");
    assert_no_credential(&e, &["wrong-Pw-77Hq"]);
    assert!(es.index_names().is_empty());
}

#[tokio::test]
async fn errors_that_echo_credentials_are_scrubbed() {
    use base64::Engine as _;
    let es = EsDouble::start().await;
    es.echo_credentials(true);
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{OPERATOR_USER}:{OPERATOR_PASSWORD}"));
    for status in [401, 403] {
        es.respond_with(Some(status));
        let e = provider(&config(&es))
            .reconcile(&tenant("acme"), None)
            .await
            .unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert!(
            e.to_string().contains("<redacted>"),
            "the double echoed: {e}"
        );
        assert_no_credential(&e, &[OPERATOR_PASSWORD, &basic]);
    }
    // The same with the operator's API key.
    let key = es.operator_api_key();
    es.respond_with(Some(401));
    let e = provider(&api_key_config(&es))
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("<redacted>"), "{e}");
    assert_no_credential(&e, &[&key, "opKeySecretZz91Qa7Wc3Xe"]);
}

#[tokio::test]
async fn forbidden_is_permanent_with_the_services_reason() {
    let es = EsDouble::start().await;
    es.respond_with(Some(403));
    let e = provider(&config(&es))
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert!(e.to_string().contains("is unauthorized"), "{e}");
}

#[tokio::test]
async fn an_invalid_index_name_is_permanent_and_clear() {
    let es = EsDouble::start().await;
    let cfg = SearchConfig {
        index_prefix: "DT-".into(),
        ..config(&es)
    };
    let e = provider(&cfg)
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    let text = e.to_string();
    assert!(text.contains("invalid_index_name_exception"), "{text}");
    assert!(text.contains("must be lowercase"), "{text}");
    assert!(es.index_names().is_empty());
    assert!(es.role_names().is_empty());
}

#[tokio::test]
async fn an_operator_api_key_cannot_issue_tenant_keys_and_says_why() {
    let es = EsDouble::start().await;
    let p = provider(&api_key_config(&es));
    let e = p.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    let text = e.to_string();
    assert!(text.contains("derived api keys"), "{text}");
    assert!(text.contains("search.username"), "{text}");
    assert_no_credential(&e, &[&es.operator_api_key()]);
    // Index and role are managed all the same; no tenant key exists.
    assert!(es.index("dt-acme").is_some());
    assert!(es.role("dt-acme").is_some());
    assert!(es.keys_named("dt-acme").is_empty());
    // Deletion works with the API key.
    let erased = p.delete(&tenant("acme")).await.unwrap();
    assert_eq!(erased.resources.len(), 2);
    assert!(es.index_names().is_empty() && es.role_names().is_empty());
}

// --- residency ---------------------------------------------------------------------------

#[tokio::test]
async fn a_region_outside_the_eu_sends_nothing() {
    for region in ["us-central1", "europe-west2", "EU"] {
        let es = EsDouble::start().await;
        let cfg = SearchConfig {
            region: region.into(),
            ..config(&es)
        };
        let e = provider(&cfg)
            .reconcile(&tenant("acme"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProviderError::Residency { .. }),
            "{region}: {e}"
        );
        let calls = es.calls();
        assert!(
            calls.iter().all(|c| !c.is_create()),
            "{region}: {:?}",
            lines(&calls)
        );
        assert!(calls.is_empty(), "{region}: {:?}", lines(&calls));
    }
}

// --- crash safety ------------------------------------------------------------------------

fn index_name_of(t: &TenantInfo) -> String {
    format!("dt-{}", t.name)
}

/// Runs passes without faults until one succeeds and the next one writes nothing.
async fn converge(
    es: &EsDouble,
    p: &ElasticsearchProvider,
    t: &TenantInfo,
    mut secret: Option<SecretData>,
) -> SecretData {
    for _ in 0..4 {
        match p.reconcile(t, secret.as_ref()).await {
            Ok(Reconciled {
                secret: Some(s), ..
            }) => secret = Some(s),
            Ok(_) => {}
            Err(e) => panic!("a pass without faults failed: {e}"),
        }
        // Every successful pass leaves exactly one valid key, the one the Secret holds.
        let name = index_name_of(t);
        let valid = es.valid_keys(&name);
        assert_eq!(valid.len(), 1, "after a pass: {valid:?}");
        assert_eq!(Some(valid[0].id.as_str()), secret.as_ref().map(id_of));
        let n = es.call_count();
        let again = p.reconcile(t, secret.as_ref()).await.unwrap();
        if again.secret.is_none() && writes(&es.calls_since(n)).is_empty() {
            return secret.expect("a Secret was issued");
        }
        if let Some(s) = again.secret {
            secret = Some(s);
        }
    }
    panic!("did not converge");
}

#[tokio::test]
async fn a_failure_at_any_request_of_the_first_pass_heals() {
    // How many requests a clean first pass makes.
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    p.reconcile(&tenant("acme"), None).await.unwrap();
    let total = es.call_count();
    assert!(total >= 6, "{:?}", lines(&es.calls()));

    for performed in [false, true] {
        for k in 1..=total {
            let es = EsDouble::start().await;
            let p = provider(&config(&es));
            let t = tenant("acme");
            es.fail_request(k, performed);
            let first = p.reconcile(&t, None).await;
            es.clear_fault();
            let held = match first {
                Ok(r) => r.secret,
                Err(e) => {
                    assert!(e.is_transient(), "k={k} performed={performed}: {e}");
                    None
                }
            };
            let secret = converge(&es, &p, &t, held).await;
            assert_converged(&es, "dt-acme", &secret).await;
        }
    }
}

#[tokio::test]
async fn a_failure_during_rotation_heals() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    p.reconcile(&t, None).await.unwrap();
    let n = es.call_count();
    p.reconcile(&t, None).await.unwrap();
    let total = es.call_count() - n;

    for performed in [false, true] {
        for k in 1..=total {
            let es = EsDouble::start().await;
            let p = provider(&config(&es));
            let s1 = p.reconcile(&t, None).await.unwrap().secret.unwrap();
            es.fail_request(k, performed);
            let r = p.reconcile(&t, None).await;
            es.clear_fault();
            let held = r.ok().and_then(|r| r.secret);
            let secret = converge(&es, &p, &t, held).await;
            assert_converged(&es, "dt-acme", &secret).await;
            assert_eq!(es.search_as(key_of(&s1), "dt-acme").await, 401, "k={k}");
        }
    }
}

#[tokio::test]
async fn a_rotation_keeps_the_old_key_valid_until_it_is_retired() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let first = p.reconcile(&t, None).await.unwrap().secret.unwrap();
    let other = p
        .reconcile(&tenant("beta"), None)
        .await
        .unwrap()
        .secret
        .unwrap();

    // A deleted Secret asks for a new key: issued first, the old one still works (the
    // running Pods use it until they roll) and is reported to retire.
    let n = es.call_count();
    let rotated = p.reconcile_rotating(&t, None).await.unwrap();
    assert!(
        !writes(&es.calls_since(n)).contains(&"DELETE /_security/api_key".to_string()),
        "nothing is invalidated in the rotation pass: {:?}",
        lines(&es.calls_since(n))
    );
    let second = rotated.reconciled.secret.expect("new credentials");
    assert_ne!(id_of(&first), id_of(&second));
    assert_eq!(rotated.retire, [id_of(&first).to_string()]);
    assert_eq!(es.search_as(key_of(&first), "dt-acme").await, 200);
    assert_eq!(es.search_as(key_of(&second), "dt-acme").await, 200);

    // Later passes with the new Secret write nothing and still report the old key.
    let n = es.call_count();
    let again = p.reconcile_rotating(&t, Some(&second)).await.unwrap();
    assert!(again.reconciled.secret.is_none());
    assert_eq!(again.retire, rotated.retire);
    assert!(writes(&es.calls_since(n)).is_empty());
    assert_eq!(es.search_as(key_of(&first), "dt-acme").await, 200);

    // Retiring takes only this tenant's keys: an ID of another tenant's key is ignored.
    let mut ids = rotated.retire.clone();
    ids.push(id_of(&other).to_string());
    p.retire(&t, &ids).await.unwrap();
    assert_eq!(es.search_as(key_of(&first), "dt-acme").await, 401);
    assert_eq!(es.search_as(key_of(&other), "dt-beta").await, 200);
    let valid = es.valid_keys("dt-acme");
    assert_eq!(valid.len(), 1, "{valid:?}");
    assert_eq!(valid[0].id, id_of(&second));
    // Idempotent: retiring again is success and changes nothing.
    p.retire(&t, &rotated.retire).await.unwrap();
    let after = p.reconcile_rotating(&t, Some(&second)).await.unwrap();
    assert!(after.retire.is_empty() && after.reconciled.secret.is_none());
}

#[tokio::test]
async fn a_crash_between_the_new_key_and_the_secret_write_leaves_a_valid_key() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    let first = p.reconcile(&t, None).await.unwrap().secret.unwrap();
    let n = es.call_count();
    p.reconcile_rotating(&t, None).await.unwrap();
    let total = es.call_count() - n;

    for performed in [false, true] {
        for k in 0..=total {
            let es = EsDouble::start().await;
            let p = provider(&config(&es));
            let first = p.reconcile(&t, None).await.unwrap().secret.unwrap();
            // The rotation pass, failing at request k (0: it succeeds, and the operator
            // stops before it writes the Secret): the Secret still holds the old key.
            if k > 0 {
                es.fail_request(k, performed);
            }
            let _ = p.reconcile_rotating(&t, None).await;
            es.clear_fault();
            assert_eq!(
                es.search_as(key_of(&first), "dt-acme").await,
                200,
                "k={k} performed={performed}: the key the Pods hold must keep working"
            );
            // The next pass keeps the Secret's key and reports the orphan to retire.
            let next = p.reconcile_rotating(&t, Some(&first)).await.unwrap();
            assert!(next.reconciled.secret.is_none(), "k={k}");
            assert!(!next.retire.contains(&id_of(&first).to_string()), "k={k}");
            p.retire(&t, &next.retire).await.unwrap();
            assert_converged(&es, "dt-acme", &first).await;
        }
    }
    assert_eq!(es.search_as(key_of(&first), "dt-acme").await, 200);
}

#[tokio::test]
async fn a_failure_at_any_request_of_delete_heals() {
    let es = EsDouble::start().await;
    let p = provider(&config(&es));
    let t = tenant("acme");
    p.reconcile(&t, None).await.unwrap();
    let n = es.call_count();
    p.delete(&t).await.unwrap();
    let total = es.call_count() - n;

    for performed in [false, true] {
        for k in 1..=total {
            let es = EsDouble::start().await;
            let p = provider(&config(&es));
            let secret = p.reconcile(&t, None).await.unwrap().secret.unwrap();
            es.fail_request(k, performed);
            let first = p.delete(&t).await;
            es.clear_fault();
            if let Err(e) = &first {
                assert!(e.is_transient(), "k={k}: {e}");
            }
            p.delete(&t).await.unwrap();
            assert!(es.index_names().is_empty(), "k={k}");
            assert!(es.role_names().is_empty(), "k={k}");
            assert!(es.valid_keys("dt-acme").is_empty(), "k={k}");
            assert_eq!(es.search_as(key_of(&secret), "dt-acme").await, 401);
        }
    }
}
