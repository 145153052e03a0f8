//! The benchmark's second run: N tenants with database (Cloud SQL), search (Elasticsearch)
//! and email (Postmark) on, each served by its test double on 127.0.0.1, and the operator
//! binary in its own process, configured by its configuration file as in production.
//!
//! ```sh
//! DEALERTENANT_BENCH=100 DEALERTENANT_BENCH_PROVIDERS=1 cargo test --test bench
//! ```
//!
//! - The Cloud SQL Admin API double imposes the project's request quota
//!   (<https://cloud.google.com/sql/docs/quotas#fixed-limits>: 180 requests per minute), and
//!   the operator is configured with the same `database.cloudsql.requestsPerMinute`.
//!   `DEALERTENANT_BENCH_SQL_QUOTA` sets both (default 180); a higher quota on both sides
//!   keeps the run short, and what is measured is the ratio to it.
//! - Elasticsearch and Postmark publish no numeric request quota (Postmark says only that
//!   rate limiting answers 429), so their doubles count calls and impose none.
//! - Storage stays off: its double (`tests/support/gcs.rs`) is a stub of the SDK's
//!   transport inside the test process (bucket management speaks gRPC, and no local server
//!   implements it), so it cannot serve an operator running as its own process.
//!
//! Reported per N: time until all are Ready; provider calls per tenant by service while
//! onboarding and in one resync round; 429s; the quota-bound onboarding rate (the quota
//! divided by the Admin API requests one tenant needed, as the double counted them) and the
//! achieved one (N tenants over the minutes from the first create until all are Ready);
//! their ratio is also the share of the quota the operator used while onboarding. Then the
//! operator's peak RSS and CPU seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dealertenant_operator::api::DealerTenant;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::{
    ETCD_PORT, PORT, RESYNC_SECONDS, cloudsql, cluster, cpu_seconds, elasticsearch, postmark,
    reconciles, spawn, status_kib, wait_ready,
};

/// Set to run this benchmark instead of the components-off one.
pub const ENV: &str = "DEALERTENANT_BENCH_PROVIDERS";
/// The Cloud SQL Admin API quota, requests per minute, in the double and the operator.
const QUOTA_ENV: &str = "DEALERTENANT_BENCH_SQL_QUOTA";
/// The documented default quota.
const DOCUMENTED_QUOTA: u32 = 180;
const PROJECT: &str = "dd-bench";
/// The operator signs in to Elasticsearch as a user: an API key may create only keys
/// without privileges.
const ES_PASSWORD_ENV: &str = "DEALERTENANT_BENCH_ES_PASSWORD";
const POSTMARK_TOKEN_ENV: &str = "DEALERTENANT_BENCH_POSTMARK_TOKEN";

#[derive(Debug, Serialize)]
struct Row {
    tenants: usize,
    /// Admin API quota in the double and `requestsPerMinute` of the operator.
    sql_quota_per_minute: u32,
    seconds_to_ready: f64,
    seconds_to_submit: f64,
    /// Admin API requests per tenant until all were Ready (admitted ones).
    sql_calls_per_tenant: f64,
    /// Admin API requests by method until all were Ready, per tenant.
    sql_calls_by_method: BTreeMap<String, f64>,
    es_calls_per_tenant: f64,
    postmark_calls_per_tenant: f64,
    sql_429: u64,
    postmark_429: u64,
    /// The same, in one resync round of every tenant.
    sql_calls_per_tenant_resync: f64,
    es_calls_per_tenant_resync: f64,
    postmark_calls_per_tenant_resync: f64,
    sql_429_resync: u64,
    reconciles_per_tenant_first: f64,
    /// quota / `sql_calls_per_tenant`: tenants per minute the quota allows.
    quota_bound_per_minute: f64,
    /// N / minutes from the first create until all are Ready.
    achieved_per_minute: f64,
    /// achieved / quota-bound: also the Admin API requests sent over those the quota
    /// allowed in the same time.
    fraction_of_quota_bound: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

pub fn main(runtime: &tokio::runtime::Runtime, sizes: &[usize]) {
    let quota: u32 = std::env::var(QUOTA_ENV).map_or(DOCUMENTED_QUOTA, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{QUOTA_ENV}: requests per minute, such as 600"))
    });
    let rows: Vec<Row> = sizes
        .iter()
        .map(|&n| runtime.block_on(bench(n, quota)))
        .collect();
    super::write_report("bench-providers", &markdown(&rows), &rows);
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| tenants | Admin API quota /min | to Ready (s) | calls/tenant onboarding: Cloud SQL / ES / Postmark | calls/tenant resync: Cloud SQL / ES / Postmark | 429s: Cloud SQL / Postmark | quota-bound tenants/min | achieved tenants/min | fraction of quota-bound | reconciles/tenant onboarding | peak RSS MiB | CPU s |\n\
         |---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} / {} | {:.1} | {:.1} | {:.0} % | {:.2} | {:.1} | {:.1} |\n",
            r.tenants,
            r.sql_quota_per_minute,
            r.seconds_to_ready,
            r.sql_calls_per_tenant,
            r.es_calls_per_tenant,
            r.postmark_calls_per_tenant,
            r.sql_calls_per_tenant_resync,
            r.es_calls_per_tenant_resync,
            r.postmark_calls_per_tenant_resync,
            r.sql_429 + r.sql_429_resync,
            r.postmark_429,
            r.quota_bound_per_minute,
            r.achieved_per_minute,
            r.fraction_of_quota_bound * 100.0,
            r.reconciles_per_tenant_first,
            r.peak_rss_mib,
            r.cpu_seconds,
        ));
    }
    if let Some(r) = rows.first() {
        let methods: Vec<String> = r
            .sql_calls_by_method
            .iter()
            .map(|(m, v)| format!("{m} {v:.2}"))
            .collect();
        out.push_str(&format!(
            "\nAdmin API requests per tenant while onboarding ({} tenants): {}\n",
            r.tenants,
            methods.join(", ")
        ));
    }
    out
}

/// Counters of the three doubles at one moment.
#[derive(Clone, Copy, Default)]
struct Counts {
    sql: u64,
    sql_429: u64,
    es: u64,
    postmark: u64,
    postmark_429: u64,
}

struct Doubles {
    sql: cloudsql::CloudSqlDouble,
    es: elasticsearch::EsDouble,
    postmark: postmark::PostmarkDouble,
}

impl Doubles {
    fn counts(&self) -> Counts {
        let pm = self.postmark.calls();
        Counts {
            sql: self.sql.request_count(),
            sql_429: self.sql.rate_limited(),
            es: self.es.call_count() as u64,
            postmark: pm.len() as u64,
            postmark_429: pm.iter().filter(|c| c.status == 429).count() as u64,
        }
    }

    /// Problems the doubles found in the operator's requests: none expected.
    fn violations(&self) -> Vec<String> {
        let mut all = self.sql.violations();
        all.extend(self.postmark.violations());
        all
    }
}

async fn bench(n: usize, quota: u32) -> Row {
    let doubles = Doubles {
        sql: cloudsql::CloudSqlDouble::start(PROJECT).await,
        es: elasticsearch::EsDouble::start().await,
        postmark: postmark::PostmarkDouble::start().await,
    };
    doubles.sql.set_requests_per_minute(Some(quota));
    let plane = cluster::ControlPlane::start(PORT, ETCD_PORT)
        .expect("../shared/kube/start is needed for the benchmark");
    let admin = cluster::client(&plane.admin_kubeconfig(), "dealertenant-bench").await;
    cluster::prepare_for_operator(&admin).await;
    let config = plane.dir.join("bench-providers-config.yaml");
    std::fs::write(
        &config,
        format!(
            "resyncSeconds: {RESYNC_SECONDS}\n\
             database:\n  provider: cloudsql\n  cloudsql:\n    project: {PROJECT}\n    \
             endpoint: {}\n    anonymousCredentials: true\n    deletionProtection: false\n    \
             requestsPerMinute: {quota}\n    sqlEndpoint: {}\n    adminUser: {}\n\
             search:\n  endpoint: {}\n  region: europe-west3\n  username: {}\n  \
             passwordEnv: {ES_PASSWORD_ENV}\n\
             email:\n  postmark:\n    endpoint: {}\n    accountTokenEnv: {POSTMARK_TOKEN_ENV}\n",
            doubles.sql.endpoint(),
            doubles.sql.sql_endpoint(),
            doubles.sql.admin_user(),
            doubles.es.url(),
            elasticsearch::OPERATOR_USER,
            doubles.postmark.url(),
        ),
    )
    .unwrap();
    let mut operator = spawn(
        &plane.operator_kubeconfig(),
        &config,
        &plane.dir,
        &[
            (ES_PASSWORD_ENV, elasticsearch::OPERATOR_PASSWORD),
            (POSTMARK_TOKEN_ENV, doubles.postmark.account_token()),
        ],
    );
    wait_ready(operator.metrics).await;
    let before = doubles.counts();

    let tenants: Api<DealerTenant> = Api::all(admin.clone());
    let started = Instant::now();
    super::create_tenants(&tenants, n, true).await;
    let submitted = started.elapsed();
    // Onboarding cannot beat the quota: allow three times the time it needs at the
    // documented ~10 requests per tenant, and two minutes.
    let deadline = Duration::from_secs(120 + 3 * 60 * 10 * n as u64 / u64::from(quota));
    loop {
        let list = tenants.list(&ListParams::default()).await.unwrap();
        let ready = list.items.iter().filter(|t| is_ready(t)).count();
        if ready == n {
            break;
        }
        if started.elapsed() > deadline {
            let log = std::fs::read_to_string(plane.dir.join("operator.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{}/{n} Ready after {:?}; violations {:?}; operator log (last lines, newest first):\n{}",
                ready,
                started.elapsed(),
                doubles.violations(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let to_ready = started.elapsed();
    let onboarded = doubles.counts();
    let reconciles_first = reconciles(operator.metrics);
    eprintln!("bench: {n} tenants with providers Ready after {to_ready:?}");
    let sql_by_method = by_method(&doubles.sql.calls(), n);
    // One resync round.
    tokio::time::sleep(Duration::from_secs(RESYNC_SECONDS * 11 / 10 + 10)).await;
    let resynced = doubles.counts();
    let violations = doubles.violations();
    assert!(violations.is_empty(), "{violations:?}");

    let per = |v: u64| v as f64 / n as f64;
    let sql_calls = onboarded.sql - before.sql - (onboarded.sql_429 - before.sql_429);
    let sql_per_tenant = per(sql_calls);
    let quota_bound = f64::from(quota) / sql_per_tenant;
    let achieved = n as f64 / (to_ready.as_secs_f64() / 60.0);
    let pid = operator.child.id();
    let row = Row {
        tenants: n,
        sql_quota_per_minute: quota,
        seconds_to_ready: to_ready.as_secs_f64(),
        seconds_to_submit: submitted.as_secs_f64(),
        sql_calls_per_tenant: sql_per_tenant,
        sql_calls_by_method: sql_by_method,
        es_calls_per_tenant: per(onboarded.es - before.es),
        postmark_calls_per_tenant: per(onboarded.postmark - before.postmark),
        sql_429: onboarded.sql_429 - before.sql_429,
        postmark_429: resynced.postmark_429 - before.postmark_429,
        sql_calls_per_tenant_resync: per(resynced.sql
            - onboarded.sql
            - (resynced.sql_429 - onboarded.sql_429)),
        es_calls_per_tenant_resync: per(resynced.es - onboarded.es),
        postmark_calls_per_tenant_resync: per(resynced.postmark - onboarded.postmark),
        sql_429_resync: resynced.sql_429 - onboarded.sql_429,
        reconciles_per_tenant_first: reconciles_first as f64 / n as f64,
        quota_bound_per_minute: quota_bound,
        achieved_per_minute: achieved,
        fraction_of_quota_bound: achieved / quota_bound,
        peak_rss_mib: status_kib(pid, "VmHWM") as f64 / 1024.0,
        cpu_seconds: cpu_seconds(pid),
    };
    eprintln!("bench: {row:?}");
    let _ = operator.child.kill();
    let _ = operator.child.wait();
    drop(plane);
    row
}

/// Whether the tenant's Ready condition is True.
fn is_ready(t: &DealerTenant) -> bool {
    t.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Admin API requests per tenant by discovery method (`sql.instances.get` ...).
fn by_method(calls: &[cloudsql::Call], n: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in calls {
        *out.entry(c.id.trim_start_matches("sql.").to_string())
            .or_insert(0.0) += 1.0 / n as f64;
    }
    out
}

/// Runs on every CI run of this target: the Admin API double's quota answers the request
/// over it with Google's `429 RESOURCE_EXHAUSTED`, and lifted it serves again.
pub async fn self_check() {
    let sql = cloudsql::CloudSqlDouble::start(PROJECT).await;
    sql.set_requests_per_minute(Some(3));
    // `instances.get` of an instance that does not exist: 404 while under the quota.
    let path = format!("/v1/projects/{PROJECT}/instances/none");
    let addr = sql.addr;
    let answers = tokio::task::spawn_blocking(move || {
        (0..4)
            .map(|_| super::get(addr, &path).unwrap_or_default())
            .collect::<Vec<_>>()
    })
    .await
    .expect("the requests ran");
    for a in &answers[..3] {
        assert!(a.contains(" 404 "), "under the quota: {a}");
    }
    assert!(
        answers[3].contains(" 429 ") && answers[3].contains("RESOURCE_EXHAUSTED"),
        "over the quota: {}",
        answers[3]
    );
    assert_eq!(sql.rate_limited(), 1);
    assert!(sql.violations().is_empty(), "{:?}", sql.violations());
    sql.set_requests_per_minute(None);
    let path = format!("/v1/projects/{PROJECT}/instances/none");
    let after = tokio::task::spawn_blocking(move || super::get(addr, &path).unwrap_or_default())
        .await
        .expect("the request ran");
    assert!(after.contains(" 404 "), "without a quota: {after}");
}
