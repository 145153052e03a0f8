//! The Postmark provider against the stateful double of Postmark's Account API
//! (`support::postmark`), which validates every request against the vendored API
//! description: life cycle, no writes when in sync, drift repair, credential reissue,
//! deletion (also when Postmark blocks it), error classification and crash safety by
//! failure injection.

mod support;

use std::path::PathBuf;

use dealertenant_operator::providers::email::postmark::{
    DeliveryType, PostmarkConfig, PostmarkProvider, SECRET_SERVER_ID, SECRET_SERVER_TOKEN,
    server_name,
};
use dealertenant_operator::providers::{Provider, ProviderError, SecretData, TenantInfo};
use serde_json::{Value, json};
use support::postmark::{Fault, PostmarkDouble, new_token};

const HOOK: &str = "https://hooks.dealerdesk.example/postmark/inbound";
const INBOUND: &str = "inbound.dealerdesk.example";

fn tenant(name: &str) -> TenantInfo {
    TenantInfo {
        name: name.into(),
        uid: "uid-1".into(),
        region: "europe-west3".into(),
        namespace: format!("tenant-{name}"),
        annotations: Default::default(),
    }
}

/// The account token in a file (as a mounted Secret), removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "postmark-account-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        Self(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Env {
    double: PostmarkDouble,
    provider: PostmarkProvider,
    cfg: PostmarkConfig,
    _token: TokenFile,
}

fn config(endpoint: &str, token_file: &TokenFile) -> PostmarkConfig {
    PostmarkConfig {
        endpoint: endpoint.into(),
        account_token_env: "DEALERDESK_TEST_UNSET_POSTMARK_ACCOUNT_TOKEN".into(),
        account_token_file: Some(token_file.0.display().to_string()),
        inbound_hook_url: Some(HOOK.into()),
        inbound_domain: Some(INBOUND.into()),
        ..PostmarkConfig::default()
    }
}

async fn env_with(change: impl FnOnce(&mut PostmarkConfig)) -> Env {
    let double = PostmarkDouble::start().await;
    // The inbound domains' DNS: a wildcard MX record for inbound.postmarkapp.com, so that
    // Postmark accepts every tenant's `<tenant>.<INBOUND>`.
    double.add_mx(&format!("*.{INBOUND}"));
    let token = TokenFile::new(double.account_token());
    let mut cfg = config(double.url(), &token);
    change(&mut cfg);
    let provider = PostmarkProvider::from_config(&cfg).expect("provider from config");
    Env {
        double,
        provider,
        cfg,
        _token: token,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

/// No request broke the API description, and the double's answers did not either.
fn assert_clean(double: &PostmarkDouble) {
    let v = double.violations();
    assert!(v.is_empty(), "API description violations: {v:#?}");
}

fn assert_secret_works(double: &PostmarkDouble, secret: &SecretData, name: &str) {
    let keys: Vec<&str> = secret.keys().collect();
    assert_eq!(keys, [SECRET_SERVER_ID, SECRET_SERVER_TOKEN]);
    let servers = double.servers_named(name);
    assert_eq!(servers.len(), 1, "exactly one server named {name}");
    let token = secret.get(SECRET_SERVER_TOKEN).unwrap();
    assert!(double.server_token_works(token));
    assert!(servers[0].api_tokens.iter().any(|t| t == token));
    assert_eq!(
        secret.get(SECRET_SERVER_ID).unwrap(),
        servers[0].id.to_string()
    );
}

fn assert_settings(double: &PostmarkDouble, name: &str, hook: &str, domain: &str) {
    let s = &double.servers_named(name)[0];
    assert!(!s.track_opens, "open tracking off");
    assert_eq!(s.track_links, "None", "link tracking off");
    assert_eq!(s.color, "blue");
    assert_eq!(s.inbound_hook_url, hook);
    assert_eq!(s.inbound_domain, domain);
}

fn message_of(e: &ProviderError) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------------
// Life cycle.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn first_reconcile_creates_the_server_and_issues_the_secret() {
    let e = env().await;
    let r = e.provider.reconcile(&tenant("acme"), None).await.unwrap();
    assert!(r.ready);
    let secret = r.secret.expect("credentials issued on first creation");
    assert_secret_works(&e.double, &secret, "dealerdesk-acme");
    assert_settings(
        &e.double,
        "dealerdesk-acme",
        HOOK,
        "acme.inbound.dealerdesk.example",
    );
    assert_eq!(
        e.double.servers_named("dealerdesk-acme")[0].delivery_type,
        "Live"
    );

    let calls = e.double.calls();
    let lines: Vec<String> = calls.iter().map(|c| c.line()).collect();
    let id = secret.get(SECRET_SERVER_ID).unwrap();
    assert_eq!(
        lines,
        [
            "GET /servers".to_string(),
            "POST /servers".to_string(),
            format!("PUT /servers/{id}")
        ]
    );
    assert_eq!(calls[0].query, "count=500&offset=0&name=dealerdesk-acme");
    // The create leaves the inbound domain out (Postmark would refuse the whole server over
    // it); the edit right after sets it.
    assert_eq!(
        calls[1].body,
        json!({
            "Name": "dealerdesk-acme",
            "Color": "blue",
            "DeliveryType": "Live",
            "TrackOpens": false,
            "TrackLinks": "None",
            "InboundHookUrl": HOOK,
        })
    );
    assert_eq!(
        calls[2].body,
        json!({"InboundDomain": "acme.inbound.dealerdesk.example"})
    );
    assert_eq!(r.reason, None);

    assert_eq!(r.resources.len(), 1);
    let res = &r.resources[0];
    assert_eq!(res.kind, "PostmarkServer");
    assert_eq!(res.name, "dealerdesk-acme");
    assert_eq!(res.location.as_deref(), Some("us"));
    assert_eq!(res.processor, "postmark");
    assert_eq!(res.id.as_deref(), secret.get(SECRET_SERVER_ID));
    assert!(!r.message.contains(secret.get(SECRET_SERVER_TOKEN).unwrap()));
    assert_clean(&e.double);
}

#[tokio::test]
async fn second_reconcile_with_the_secret_writes_nothing() {
    let e = env().await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let mark = e.double.mark();
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.ready);
    assert!(r.secret.is_none(), "no credentials reissued");
    assert_eq!(e.double.writes_since(mark).len(), 0);
    assert!(!e.double.calls_since(mark).is_empty(), "it did look");
    assert!(r.message.contains("in sync"), "{}", r.message);
    assert_eq!(e.double.servers().len(), 1);
    assert_clean(&e.double);
}

#[tokio::test]
async fn sandbox_servers_are_created_as_sandbox() {
    let e = env_with(|c| {
        c.delivery_type = DeliveryType::Sandbox;
        c.inbound_hook_url = None;
        c.inbound_domain = None;
    })
    .await;
    let r = e.provider.reconcile(&tenant("acme"), None).await.unwrap();
    let s = &e.double.servers_named("dealerdesk-acme")[0];
    assert_eq!(s.delivery_type, "Sandbox");
    assert_eq!(s.inbound_hook_url, "");
    let post = e
        .double
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(post.body["DeliveryType"], "Sandbox");
    assert!(post.body.get("InboundHookUrl").is_none());
    assert!(post.body.get("InboundDomain").is_none());
    let mark = e.double.mark();
    e.provider
        .reconcile(&tenant("acme"), r.secret.as_ref())
        .await
        .unwrap();
    assert!(e.double.writes_since(mark).is_empty());
    assert_clean(&e.double);
}

#[tokio::test]
async fn drifted_settings_are_brought_back_with_one_edit() {
    let e = env().await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    e.double.modify(id, |s| {
        s.track_opens = true;
        s.track_links = "HtmlAndTextTracking".into();
        s.color = "red".into();
        s.inbound_hook_url = "https://elsewhere.example/hook".into();
        s.inbound_domain = String::new();
        // Not managed: left alone.
        s.bounce_hook_url = "https://bounces.example/".into();
    });

    let mark = e.double.mark();
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    let writes = e.double.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].line(), format!("PUT /servers/{id}"));
    assert_eq!(
        writes[0].body,
        json!({
            "Color": "blue",
            "TrackOpens": false,
            "TrackLinks": "None",
            "InboundHookUrl": HOOK,
            "InboundDomain": "acme.inbound.dealerdesk.example",
        })
    );
    assert!(r.secret.is_none(), "the token did not change");
    assert!(r.message.contains("repaired"), "{}", r.message);
    assert_settings(
        &e.double,
        "dealerdesk-acme",
        HOOK,
        "acme.inbound.dealerdesk.example",
    );
    assert_eq!(
        e.double.server(id).unwrap().bounce_hook_url,
        "https://bounces.example/"
    );

    let mark = e.double.mark();
    e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(e.double.writes_since(mark).is_empty(), "quiet after repair");
    assert_clean(&e.double);
}

#[tokio::test]
async fn an_inbound_hook_set_by_hand_is_removed_when_none_is_configured() {
    let e = env_with(|c| c.inbound_hook_url = None).await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    e.double.modify(id, |s| {
        s.inbound_hook_url = "https://unknown.example/in".into()
    });
    let mark = e.double.mark();
    e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    let writes = e.double.writes_since(mark);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].body, json!({"InboundHookUrl": ""}));
    assert_eq!(e.double.server(id).unwrap().inbound_hook_url, "");
    assert_clean(&e.double);
}

/// Postmark refuses an inbound domain without an MX record for inbound.postmarkapp.com
/// (ErrorCode 610): the server is created and its token issued all the same, and the
/// condition says what to fix; once the record exists, the next pass sets the domain.
#[tokio::test]
async fn an_inbound_domain_without_its_mx_record_does_not_block_the_server() {
    let e = env().await;
    e.double.remove_mx(&format!("*.{INBOUND}"));
    let t = tenant("acme");
    let domain = "acme.inbound.dealerdesk.example";

    let r = e.provider.reconcile(&t, None).await.expect("not an error");
    assert!(!r.ready);
    assert_eq!(r.reason, Some("InboundDomainRejected"));
    assert!(r.message.contains(domain), "{}", r.message);
    assert!(r.message.contains("ErrorCode 610"), "{}", r.message);
    assert!(
        r.message.contains("MX record") && r.message.contains("inbound.postmarkapp.com"),
        "{}",
        r.message
    );
    let secret = r
        .secret
        .expect("the Secret is issued although the domain was refused");
    assert!(!r.message.contains(secret.get(SECRET_SERVER_TOKEN).unwrap()));
    assert_secret_works(&e.double, &secret, "dealerdesk-acme");
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].id.as_deref(), secret.get(SECRET_SERVER_ID));
    // Everything but the domain is in place.
    assert_settings(&e.double, "dealerdesk-acme", HOOK, "");

    // Still no record: the domain is tried again, nothing else changes, no second server.
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(!r.ready);
    assert_eq!(r.reason, Some("InboundDomainRejected"));
    assert!(r.secret.is_none());
    assert_eq!(e.double.servers().len(), 1);

    // The record is added: the next pass sets the domain and the condition clears.
    e.double.add_mx(domain);
    let mark = e.double.mark();
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.ready, "{}", r.message);
    assert_eq!(r.reason, None);
    let writes = e.double.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].body, json!({"InboundDomain": domain}));
    assert_settings(&e.double, "dealerdesk-acme", HOOK, domain);
    assert_clean(&e.double);
}

/// An inbound domain in use by another server anywhere on Postmark (ErrorCode 602): the
/// other drifted settings are still repaired, the domain is reported, not fatal.
#[tokio::test]
async fn an_inbound_domain_in_use_elsewhere_is_reported_and_the_rest_repaired() {
    let e = env().await;
    let t = tenant("acme");
    let domain = "acme.inbound.dealerdesk.example";
    e.double.claim_domain(domain);

    let r = e.provider.reconcile(&t, None).await.unwrap();
    assert!(!r.ready);
    assert_eq!(r.reason, Some("InboundDomainRejected"));
    assert!(r.message.contains("ErrorCode 602"), "{}", r.message);
    assert!(
        r.message.contains("another Postmark server"),
        "{}",
        r.message
    );
    let secret = r.secret.expect("Secret issued");
    assert_secret_works(&e.double, &secret, "dealerdesk-acme");

    // Drift besides the domain: the edit is refused for the domain, and sent again without.
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    e.double.modify(id, |s| s.color = "red".into());
    let mark = e.double.mark();
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert_eq!(r.reason, Some("InboundDomainRejected"));
    let writes = e.double.writes_since(mark);
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert_eq!(writes[0].status, 422);
    assert_eq!(writes[1].body, json!({"Color": "blue"}));
    assert_eq!(writes[1].status, 200);
    assert_settings(&e.double, "dealerdesk-acme", HOOK, "");

    e.double.release_domain(domain);
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.ready);
    assert_settings(&e.double, "dealerdesk-acme", HOOK, domain);
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_lost_secret_is_reissued_from_the_existing_server() {
    let e = env().await;
    let t = tenant("acme");
    let first = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let mark = e.double.mark();
    // The tenant's Secret was deleted. Postmark's Account API cannot rotate a server token
    // (see the provider), so the current one is read back and issued again: no new server.
    let r = e.provider.reconcile(&t, None).await.unwrap();
    let again = r.secret.expect("credentials reissued");
    assert_secret_works(&e.double, &again, "dealerdesk-acme");
    assert_eq!(again, first);
    assert!(e.double.writes_since(mark).is_empty(), "no create, no edit");
    assert_eq!(e.double.servers().len(), 1);
    assert!(r.message.contains("issued"), "{}", r.message);
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_secret_whose_token_was_replaced_in_postmark_is_reissued() {
    let e = env().await;
    let t = tenant("acme");
    let old = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    // A person replaced the server's token in Postmark's UI: the old one stops working.
    let replacement = new_token();
    e.double
        .modify(id, |s| s.api_tokens = vec![replacement.clone()]);
    assert!(
        !e.double
            .server_token_works(old.get(SECRET_SERVER_TOKEN).unwrap())
    );

    let r = e.provider.reconcile(&t, Some(&old)).await.unwrap();
    let new = r.secret.expect("the stale Secret is replaced");
    assert_eq!(new.get(SECRET_SERVER_TOKEN), Some(replacement.as_str()));
    assert_secret_works(&e.double, &new, "dealerdesk-acme");
    let mark = e.double.mark();
    assert!(
        e.provider
            .reconcile(&t, Some(&new))
            .await
            .unwrap()
            .secret
            .is_none()
    );
    assert!(e.double.writes_since(mark).is_empty());
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_server_renamed_by_hand_is_found_through_the_secret_and_renamed_back() {
    let e = env().await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    e.double.modify(id, |s| s.name = "Acme (old)".into());

    let mark = e.double.mark();
    let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
    assert!(r.secret.is_none());
    let writes = e.double.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].body, json!({"Name": "dealerdesk-acme"}));
    assert_eq!(e.double.servers().len(), 1, "no second server");
    assert_eq!(e.double.server(id).unwrap().name, "dealerdesk-acme");
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_secret_pointing_at_a_foreign_server_is_not_adopted() {
    let e = env().await;
    let foreign = e.double.seed("someone-else");
    let forged = SecretData::new()
        .with(SECRET_SERVER_ID, foreign.id.to_string())
        .with(SECRET_SERVER_TOKEN, "not-its-token");
    let r = e
        .provider
        .reconcile(&tenant("acme"), Some(&forged))
        .await
        .unwrap();
    assert!(r.secret.is_some());
    assert_eq!(e.double.server(foreign.id).unwrap().name, "someone-else");
    assert_eq!(e.double.servers_named("dealerdesk-acme").len(), 1);
    assert_clean(&e.double);
}

#[tokio::test]
async fn only_the_exact_name_counts() {
    let e = env().await;
    let near: Vec<u64> = [
        "dealerdesk-acme2",
        "x-dealerdesk-acme",
        "dealerdesk-acme-old",
    ]
    .iter()
    .map(|n| e.double.seed(n).id)
    .collect();
    let r = e.provider.reconcile(&tenant("acme"), None).await.unwrap();
    let secret = r.secret.unwrap();
    assert_secret_works(&e.double, &secret, "dealerdesk-acme");
    assert!(!near.contains(&secret.get(SECRET_SERVER_ID).unwrap().parse().unwrap()));
    assert_eq!(e.double.servers().len(), 4);

    let erased = e.provider.delete(&tenant("acme")).await.unwrap();
    assert_eq!(erased.resources.len(), 1);
    assert_eq!(e.double.servers().len(), 3, "the similar names are kept");
    assert_clean(&e.double);
}

#[tokio::test]
async fn the_lookup_pages_through_a_large_account() {
    let e = env().await;
    for i in 0..1100 {
        e.double.seed(&format!("dealerdesk-acme-{i:04}"));
    }
    let existing = e.double.seed("dealerdesk-acme");
    let mark = e.double.mark();
    let r = e.provider.reconcile(&tenant("acme"), None).await.unwrap();
    let secret = r.secret.unwrap();
    assert_eq!(
        secret.get(SECRET_SERVER_ID).unwrap(),
        existing.id.to_string()
    );
    let calls = e.double.calls_since(mark);
    assert!(
        calls.iter().all(|c| c.method != "POST"),
        "found, not created"
    );
    assert_eq!(e.double.servers().len(), 1101);
    let queries: Vec<&str> = calls.iter().map(|c| c.query.as_str()).collect();
    assert_eq!(
        queries[..3],
        [
            "count=500&offset=0&name=dealerdesk-acme",
            "count=500&offset=500&name=dealerdesk-acme",
            "count=500&offset=1000&name=dealerdesk-acme",
        ]
    );
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_changed_delivery_type_is_refused_not_rewritten() {
    let e = env().await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = e.double.servers_named("dealerdesk-acme")[0].id;
    e.double.modify(id, |s| s.delivery_type = "Sandbox".into());
    let mark = e.double.mark();
    let err = e.provider.reconcile(&t, Some(&secret)).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderRefused");
    assert!(message_of(&err).contains("delivery type"), "{err}");
    assert!(e.double.writes_since(mark).is_empty());
    assert_clean(&e.double);
}

#[tokio::test]
async fn location_is_reported_as_us_and_no_residency_check_blocks_postmark() {
    // Postmark has no EU hosting; whether a third-country processor may be used is the
    // reconciler's policy, checked before any provider call. The provider reports where
    // the data is.
    let e = env().await;
    let t = tenant("acme");
    let r = e.provider.reconcile(&t, None).await.unwrap();
    let plan = e.cfg.plan(&t, "postmark");
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].location.as_deref(), Some("us"));
    assert_eq!(r.resources[0].location, plan[0].location);
    assert_eq!(r.resources[0].name, plan[0].name);
    assert_eq!(plan[0].processor, "postmark");
    assert_clean(&e.double);
}

// ---------------------------------------------------------------------------------------
// Deletion.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_erases_the_server_and_reports_it() {
    let e = env().await;
    let t = tenant("acme");
    let secret = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id = secret.get(SECRET_SERVER_ID).unwrap().to_string();
    let erased = e.provider.delete(&t).await.unwrap();
    assert_eq!(erased.resources.len(), 1);
    let r = &erased.resources[0];
    assert_eq!(
        (r.kind.as_str(), r.name.as_str(), r.id.as_deref()),
        ("PostmarkServer", "dealerdesk-acme", Some(id.as_str()))
    );
    assert_eq!(r.location.as_deref(), Some("us"));
    assert!(e.double.servers().is_empty());
    assert!(
        !e.double
            .server_token_works(secret.get(SECRET_SERVER_TOKEN).unwrap())
    );

    let mark = e.double.mark();
    let again = e.provider.delete(&t).await.unwrap();
    assert!(again.resources.is_empty());
    assert!(e.double.writes_since(mark).is_empty());
    assert_clean(&e.double);
}

#[tokio::test]
async fn delete_of_an_absent_tenant_is_ok() {
    let e = env().await;
    e.double.seed("dealerdesk-other");
    let erased = e.provider.delete(&tenant("acme")).await.unwrap();
    assert!(erased.resources.is_empty());
    assert_eq!(e.double.servers().len(), 1);
    assert!(e.double.calls().iter().all(|c| !c.is_write()));
    assert_clean(&e.double);
}

#[tokio::test]
async fn delete_blocked_by_postmark_explains_the_way_out() {
    let e = env().await;
    let t = tenant("acme");
    e.provider.reconcile(&t, None).await.unwrap();
    e.double.set_delete_enabled(false);
    let err = e.provider.delete(&t).await.unwrap_err();
    assert_eq!(err.reason(), "DeletionBlocked");
    assert!(!err.is_transient());
    let m = message_of(&err);
    assert!(m.contains("604"), "{m}");
    assert!(m.contains("support"), "{m}");
    assert!(m.contains("dealerdesk.de/abandon: email"), "{m}");
    assert!(!m.contains(e.double.account_token()));
    assert_eq!(e.double.servers_named("dealerdesk-acme").len(), 1, "kept");

    // Once support has enabled deletion, the same call goes through.
    e.double.set_delete_enabled(true);
    assert_eq!(e.provider.delete(&t).await.unwrap().resources.len(), 1);
    assert!(e.double.servers().is_empty());
    assert_clean(&e.double);
}

#[tokio::test]
async fn delete_answered_403_is_blocked_too() {
    let e = env().await;
    let t = tenant("acme");
    e.provider.reconcile(&t, None).await.unwrap();
    e.double.force(
        Some("DELETE"),
        Some((403, json!({"ErrorCode": 604, "Message": "Forbidden"}))),
    );
    let err = e.provider.delete(&t).await.unwrap_err();
    assert_eq!(err.reason(), "DeletionBlocked");
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_server_gone_before_its_delete_counts_as_gone() {
    for answer in [
        (
            404,
            json!({"ErrorCode": 601, "Message": "Server does not exist."}),
        ),
        (
            422,
            json!({"ErrorCode": 601, "Message": "Server does not exist."}),
        ),
    ] {
        let e = env().await;
        let t = tenant("acme");
        e.provider.reconcile(&t, None).await.unwrap();
        e.double.force(Some("DELETE"), Some(answer));
        let erased = e.provider.delete(&t).await.unwrap();
        assert!(erased.resources.is_empty());
        assert_clean(&e.double);
    }
}

// ---------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_account_token_is_permanent_and_never_shown() {
    let double = PostmarkDouble::start().await;
    let wrong = "wrong-account-token-5c1d7e";
    let file = TokenFile::new(wrong);
    let provider = PostmarkProvider::from_config(&config(double.url(), &file)).unwrap();
    let t = tenant("acme");
    let err = provider.reconcile(&t, None).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderRefused");
    assert!(!err.is_transient());
    let m = message_of(&err);
    assert!(m.contains("401"), "{m}");
    assert!(!m.contains(wrong), "{m}");
    assert!(!format!("{err:?}").contains(wrong));
    assert!(!format!("{provider:?}").contains(wrong));
    let err = provider.delete(&t).await.unwrap_err();
    assert_eq!(err.reason(), "ProviderRefused");
    assert!(!message_of(&err).contains(wrong));
    assert!(double.servers().is_empty());
    assert_clean(&double);
}

#[tokio::test]
async fn a_name_taken_by_another_server_is_refused_with_postmarks_code() {
    let e = env().await;
    // Same name but for case: not ours, and Postmark refuses the duplicate (603).
    let other = e.double.seed("DealerDesk-Acme");
    let err = e
        .provider
        .reconcile(&tenant("acme"), None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ProviderRefused");
    let m = message_of(&err);
    assert!(m.contains("422") && m.contains("ErrorCode 603"), "{m}");
    assert!(m.contains("Server name already exists"), "{m}");
    assert_eq!(e.double.servers().len(), 1);
    assert_eq!(e.double.server(other.id).unwrap().name, "DealerDesk-Acme");
    assert_clean(&e.double);
}

/// Every request is counted once, by what Postmark answered: `429` apart from the other
/// 4xx, `5xx`, and `error` when the connection was cut before an answer.
#[tokio::test]
async fn requests_are_counted_by_status_class() {
    use dealertenant_operator::providers::Component;
    use dealertenant_operator::providers::requests::RequestMetrics;
    let e = env().await;
    let m = RequestMetrics::default();
    let p = PostmarkProvider::from_config(&e.cfg)
        .unwrap()
        .observed_by(&m);
    let count = |class: &str| m.count(Component::Email, class);
    let t = tenant("acme");
    p.reconcile(&t, None).await.unwrap();
    let first = e.double.mark() as u64;
    assert!(first >= 2, "{first} requests");
    assert_eq!(count("2xx") + count("4xx"), first);
    e.double.set_rate_limited(true);
    let mark = e.double.mark();
    p.reconcile(&t, None).await.unwrap_err();
    let throttled = e.double.calls_since(mark).len() as u64;
    assert!(throttled >= 1);
    assert_eq!(count("429"), throttled);
    e.double.set_rate_limited(false);
    e.double.fail_nth(1, Fault::NotPerformed);
    p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(count("5xx"), 1);
    e.double.fail_nth(1, Fault::PerformedThenDropped);
    p.reconcile(&t, None).await.unwrap_err();
    assert_eq!(count("error"), 1);
    assert_eq!(
        ["2xx", "3xx", "4xx", "429", "5xx", "error"]
            .map(count)
            .iter()
            .sum::<u64>(),
        e.double.mark() as u64,
        "one count per request"
    );
    assert_clean(&e.double);
}

#[tokio::test]
async fn rate_limiting_and_server_errors_are_transient() {
    let e = env().await;
    let t = tenant("acme");
    e.double.set_rate_limited(true);
    let err = e.provider.reconcile(&t, None).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(message_of(&err).contains("429"));
    e.double.set_rate_limited(false);

    for (status, body) in [
        (500, json!({"ErrorCode": 0, "Message": "Internal error"})),
        (502, json!("bad gateway")),
        (503, json!({"ErrorCode": 100, "Message": "Maintenance"})),
    ] {
        e.double.force(None, Some((status, body)));
        let err = e.provider.reconcile(&t, None).await.unwrap_err();
        assert!(err.is_transient(), "{status}: {err}");
        assert!(message_of(&err).contains(&status.to_string()));
        let err = e.provider.delete(&t).await.unwrap_err();
        assert!(err.is_transient(), "{status}: {err}");
    }
    e.double.force(None, None);
    assert!(
        e.double.servers().is_empty(),
        "nothing was created meanwhile"
    );
    assert!(
        e.provider
            .reconcile(&t, None)
            .await
            .unwrap()
            .secret
            .is_some()
    );
    assert_clean(&e.double);
}

#[tokio::test]
async fn client_errors_are_permanent_with_postmarks_message() {
    let e = env().await;
    let t = tenant("acme");
    for (status, body, expect) in [
        (
            422,
            json!({"ErrorCode": 607, "Message": "Invalid Server color."}),
            "ErrorCode 607: Invalid Server color.",
        ),
        (
            403,
            json!({"ErrorCode": 0, "Message": "Forbidden"}),
            "HTTP 403",
        ),
    ] {
        e.double.force(None, Some((status, body)));
        let err = e.provider.reconcile(&t, None).await.unwrap_err();
        assert_eq!(err.reason(), "ProviderRefused", "{status}");
        assert!(!err.is_transient());
        let m = message_of(&err);
        assert!(m.contains(expect), "{m}");
        assert!(!m.contains(e.double.account_token()));
    }
    assert_clean(&e.double);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let file = TokenFile::new("some-account-token");
    let provider =
        PostmarkProvider::from_config(&config(&format!("http://{addr}"), &file)).unwrap();
    let err = provider.reconcile(&tenant("acme"), None).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!message_of(&err).contains("some-account-token"));
    assert!(
        provider
            .delete(&tenant("acme"))
            .await
            .unwrap_err()
            .is_transient()
    );
}

#[tokio::test]
async fn missing_credentials_are_a_configuration_error() {
    let cfg = PostmarkConfig {
        account_token_env: "DEALERDESK_TEST_UNSET_POSTMARK_ACCOUNT_TOKEN".into(),
        account_token_file: None,
        ..PostmarkConfig::default()
    };
    let err = PostmarkProvider::from_config(&cfg).unwrap_err();
    assert_eq!(err.reason(), "NotConfigured");
    let cfg = PostmarkConfig {
        account_token_file: Some("/nonexistent/postmark/token".into()),
        ..cfg
    };
    assert_eq!(
        PostmarkProvider::from_config(&cfg).unwrap_err().reason(),
        "NotConfigured"
    );
}

// ---------------------------------------------------------------------------------------
// Crash safety by failure injection.
// ---------------------------------------------------------------------------------------

const FAULTS: [Fault; 3] = [
    Fault::NotPerformed,
    Fault::PerformedThen500,
    Fault::PerformedThenDropped,
];

/// Runs reconcile without faults until it succeeds (at most 3 passes), keeping the Secret
/// the way the reconciler would write it; returns the final Secret.
async fn converge(e: &Env, t: &TenantInfo, mut secret: Option<SecretData>) -> SecretData {
    for _ in 0..3 {
        match e.provider.reconcile(t, secret.as_ref()).await {
            Ok(r) => {
                if let Some(s) = r.secret {
                    secret = Some(s);
                }
                return secret.expect("a Secret after convergence");
            }
            Err(err) => assert!(err.is_transient(), "unexpected permanent error: {err}"),
        }
    }
    panic!("reconcile did not converge in 3 passes");
}

/// Scenario setup: `None` for a new tenant; or an existing, drifted server whose Secret
/// was lost (exercises the edit and the token read).
async fn crash_scenario(drifted: bool) {
    let t = tenant("acme");
    let name = server_name("dealerdesk", "acme");
    for fault in FAULTS {
        for k in 1.. {
            let e = env().await;
            if drifted {
                e.provider.reconcile(&t, None).await.unwrap();
                let id = e.double.servers_named(&name)[0].id;
                e.double.modify(id, |s| {
                    s.track_opens = true;
                    s.inbound_domain = String::new();
                });
            }
            e.double.fail_nth(k, fault);
            let first = e.provider.reconcile(&t, None).await;
            if e.double.fault_pending() {
                // Fewer than k requests: every position was covered.
                e.double.clear_fault();
                assert!(first.is_ok());
                assert!(k > 2, "{fault:?}: at least two requests per pass");
                break;
            }
            let mut secret = None;
            match first {
                Ok(r) => secret = r.secret,
                Err(err) => assert!(err.is_transient(), "{fault:?} k={k}: {err}"),
            }
            let secret = converge(&e, &t, secret).await;
            assert_eq!(
                e.double.servers_named(&name).len(),
                1,
                "{fault:?} k={k}: exactly one server"
            );
            assert_eq!(e.double.servers().len(), 1, "{fault:?} k={k}");
            assert_secret_works(&e.double, &secret, &name);
            assert_settings(&e.double, &name, HOOK, "acme.inbound.dealerdesk.example");
            let mark = e.double.mark();
            let r = e.provider.reconcile(&t, Some(&secret)).await.unwrap();
            assert!(r.secret.is_none(), "{fault:?} k={k}");
            assert!(e.double.writes_since(mark).is_empty(), "{fault:?} k={k}");
            assert_clean(&e.double);
        }
    }
}

#[tokio::test]
async fn a_failure_at_any_request_of_a_create_leaves_exactly_one_server() {
    crash_scenario(false).await;
}

#[tokio::test]
async fn a_failure_at_any_request_of_a_repair_leaves_exactly_one_server() {
    crash_scenario(true).await;
}

#[tokio::test]
async fn a_failure_at_any_request_of_a_delete_still_erases_everything() {
    let t = tenant("acme");
    for fault in FAULTS {
        for k in 1.. {
            let e = env().await;
            e.provider.reconcile(&t, None).await.unwrap();
            e.double.fail_nth(k, fault);
            let first = e.provider.delete(&t).await;
            if e.double.fault_pending() {
                e.double.clear_fault();
                assert!(first.is_ok());
                break;
            }
            if let Err(err) = first {
                assert!(err.is_transient(), "{fault:?} k={k}: {err}");
                let mut done = false;
                for _ in 0..3 {
                    if e.provider.delete(&t).await.is_ok() {
                        done = true;
                        break;
                    }
                }
                assert!(done, "{fault:?} k={k}: delete converges");
            }
            assert!(e.double.servers().is_empty(), "{fault:?} k={k}");
            assert_clean(&e.double);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The double's request validation is real.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_double_rejects_requests_that_break_the_api_description() {
    let double = PostmarkDouble::start().await;
    let existing = double.seed("dealerdesk-acme");
    let http = reqwest::Client::new();
    let token = double.account_token().to_string();
    let base = double.url().to_string();
    let good = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{base}{path}"))
            .header("X-Postmark-Account-Token", &token)
            .header("Accept", "application/json")
    };
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "unknown body field",
            good(reqwest::Method::POST, "/servers").json(&json!({"Name": "a", "TrackOpen": false})),
        ),
        (
            "wrong enum value",
            good(reqwest::Method::POST, "/servers")
                .json(&json!({"Name": "b", "TrackLinks": "Always"})),
        ),
        (
            "wrong DeliveryType value",
            good(reqwest::Method::POST, "/servers")
                .json(&json!({"Name": "c", "DeliveryType": "Staging"})),
        ),
        (
            "wrong type",
            good(reqwest::Method::POST, "/servers").json(&json!({"Name": "d", "TrackOpens": "no"})),
        ),
        (
            "camelCase field names",
            good(reqwest::Method::POST, "/servers")
                .json(&json!({"name": "e", "trackOpens": false})),
        ),
        (
            "DeliveryType in an edit",
            good(reqwest::Method::PUT, &format!("/servers/{}", existing.id))
                .json(&json!({"DeliveryType": "Sandbox"})),
        ),
        (
            "body not JSON",
            good(reqwest::Method::POST, "/servers")
                .header("Content-Type", "application/json")
                .body("Name=f"),
        ),
        (
            "missing Content-Type",
            good(reqwest::Method::POST, "/servers").body(r#"{"Name":"g"}"#),
        ),
        (
            "missing account token header",
            http.get(format!("{base}/servers?count=1&offset=0"))
                .header("Accept", "application/json"),
        ),
        (
            "missing Accept header",
            http.get(format!("{base}/servers?count=1&offset=0"))
                .header("X-Postmark-Account-Token", &token),
        ),
        (
            "missing required query parameter",
            good(reqwest::Method::GET, "/servers?count=1"),
        ),
        (
            "unknown query parameter",
            good(reqwest::Method::GET, "/servers?count=1&offset=0&limit=5"),
        ),
        (
            "query parameter of the wrong type",
            good(reqwest::Method::GET, "/servers?count=all&offset=0"),
        ),
        (
            "path parameter of the wrong type",
            good(reqwest::Method::DELETE, "/servers/dealerdesk-acme"),
        ),
        (
            "body on a delete",
            good(
                reqwest::Method::DELETE,
                &format!("/servers/{}", existing.id),
            )
            .json(&json!({"Force": true})),
        ),
        (
            "method the spec does not have",
            good(reqwest::Method::PATCH, &format!("/servers/{}", existing.id))
                .json(&json!({"Name": "x"})),
        ),
        (
            "path the spec does not have",
            good(reqwest::Method::GET, "/server"),
        ),
    ];
    for (what, req) in cases {
        let before = double.violations().len();
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 422, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["Message"]
                .as_str()
                .unwrap()
                .contains("violates the API description"),
            "{what}: {body}"
        );
        assert!(double.violations().len() > before, "{what}: recorded");
    }
    assert_eq!(double.servers(), vec![existing.clone()], "nothing changed");

    // Well-formed requests pass, DeliveryType included on create.
    let resp = good(reqwest::Method::POST, "/servers")
        .json(&json!({"Name": "ok", "DeliveryType": "Sandbox", "TrackLinks": "HtmlOnlyTracking"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = good(reqwest::Method::GET, "/servers?count=10&offset=0&name=ok")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Header names are case-insensitive.
    let resp = http
        .get(format!("{base}/servers?count=10&offset=0"))
        .header("x-postmark-account-token", &token)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn a_full_life_cycle_sends_only_valid_requests() {
    let e = env().await;
    let t = tenant("acme");
    let s = e
        .provider
        .reconcile(&t, None)
        .await
        .unwrap()
        .secret
        .unwrap();
    let id: u64 = s.get(SECRET_SERVER_ID).unwrap().parse().unwrap();
    e.double.modify(id, |s| {
        s.name = "renamed".into();
        s.track_opens = true;
    });
    // Renamed (found through the Secret's ID with GET /servers/{id}) and drifted (PUT):
    // with create, listing and delete, every operation of the spec is exercised.
    let r = e.provider.reconcile(&t, Some(&s)).await.unwrap();
    assert!(r.secret.is_none());
    assert_eq!(e.double.servers_named("dealerdesk-acme").len(), 1);
    e.provider.delete(&t).await.unwrap();
    let ops: std::collections::BTreeSet<String> = e
        .double
        .calls()
        .iter()
        .map(|c| {
            let path = if c.path.starts_with("/servers/") {
                "/servers/{serverid}"
            } else {
                c.path.as_str()
            };
            format!("{} {path}", c.method)
        })
        .collect();
    assert_eq!(
        ops.into_iter().collect::<Vec<_>>(),
        [
            "DELETE /servers/{serverid}",
            "GET /servers",
            "GET /servers/{serverid}",
            "POST /servers",
            "PUT /servers/{serverid}",
        ]
    );
    assert_clean(&e.double);
}
