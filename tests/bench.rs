//! The scale benchmark: the operator against a real API server (a fresh control plane from
//! `../shared/kube/start` per size, 127.0.0.1:20443), N tenants with every component off and
//! no replicas. Measures, per N: time until all are Ready, API writes and reconcile passes
//! per tenant for the first pass and for one resync round (from the audit log and
//! `/metrics`), the operator's peak RSS and CPU seconds. Prints a Markdown table and writes
//! it with a JSON copy to `target/bench/`.
//!
//! ```sh
//! DEALERTENANT_BENCH=100,1000 cargo test --test bench
//! ```
//! Without `DEALERTENANT_BENCH` it only checks itself: its arithmetic and the quota of the
//! Cloud SQL double (it is a test target, so CI builds and runs it).
//! `DEALERTENANT_BENCH_OPERATOR_BIN` measures another operator binary (a release build).
//!
//! `DEALERTENANT_BENCH_PROVIDERS=1` makes it the second run instead: database, search and
//! email on, served by the test doubles on 127.0.0.1, with the Cloud SQL Admin API quota
//! imposed (see `tests/bench/providers.rs`).

#[allow(dead_code, unused_imports)]
#[path = "support/audit.rs"]
mod audit;
#[allow(dead_code)]
#[path = "support/cloudsql.rs"]
mod cloudsql;
#[allow(dead_code)]
#[path = "support/cloudsql_pg.rs"]
mod cloudsql_pg;
#[allow(dead_code)]
#[path = "support/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "support/elasticsearch.rs"]
mod elasticsearch;
#[allow(dead_code)]
#[path = "support/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "support/postmark.rs"]
mod postmark;
#[path = "bench/providers.rs"]
mod providers;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dealertenant_operator::api::DealerTenant;
use futures::StreamExt;
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;

const PORT: u16 = 20443;
const ETCD_PORT: u16 = 16379;
/// Resync interval of the benchmarked operator; the resync round is measured over
/// 1.1 times this (the jitter) plus a margin.
const RESYNC_SECONDS: u64 = 60;

#[derive(Debug, Serialize)]
struct Row {
    tenants: usize,
    /// Seconds from the first create until every tenant is Ready.
    seconds_to_ready: f64,
    /// Seconds the creates took (kubectl-like submission, 16 at a time).
    seconds_to_submit: f64,
    writes_per_tenant_first: f64,
    writes_per_tenant_max_first: u64,
    reconciles_per_tenant_first: f64,
    writes_in_resync: u64,
    reconciles_per_tenant_resync: f64,
    /// p99 of the reconcile duration in the first passes and in the resync round, from
    /// the operator's histogram (interpolated inside its bucket, as Prometheus'
    /// `histogram_quantile` does). With every component off, a reconcile is all
    /// in-cluster work; first passes wait for the API server's writes (about 15 each).
    reconcile_p99_ms_first: f64,
    reconcile_p99_ms_resync: f64,
    peak_rss_mib: f64,
    rss_mib_after_resync: f64,
    idle_rss_mib: f64,
    /// The anonymous part of the RSS (heap, stacks), sampled every 500 ms: its peak, and
    /// at idle. The rest is file-backed: the binary's code pages (shared, reclaimable),
    /// the same at any size.
    peak_anon_rss_mib: f64,
    idle_anon_rss_mib: f64,
    cpu_seconds: f64,
}

fn main() {
    // The one piece of arithmetic worth checking on every CI run (which runs this target
    // without DEALERTENANT_BENCH): 100 samples, 90 under 1 ms, 9 under 2 ms, 1 under 4 ms.
    let text = "x_bucket{le=\"0.001\"} 90\nx_bucket{le=\"0.002\"} 99\nx_bucket{le=\"0.004\"} 100\nx_bucket{le=\"+Inf\"} 100\n";
    let all = buckets(text, "x");
    assert_eq!(quantile(&all, 0.99), Some(0.002));
    assert_eq!(quantile(&all, 0.995), Some(0.003));
    assert_eq!(quantile(&buckets("", "x"), 0.99), None);
    // The last 10 samples alone: 9 under 2 ms, 1 under 4 ms.
    let first = buckets(&text.replace("99", "90").replace("100", "90"), "x");
    assert_eq!(quantile(&minus(&all, &first), 0.9), Some(0.002));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(providers::self_check());
    let Ok(sizes) = std::env::var("DEALERTENANT_BENCH") else {
        eprintln!(
            "bench: set DEALERTENANT_BENCH=100,1000 to run the benchmark (see tests/bench.rs)"
        );
        return;
    };
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("DEALERTENANT_BENCH: sizes like 100,1000")
        })
        .collect();
    if std::env::var_os(providers::ENV).is_some() {
        providers::main(&runtime, &sizes);
        return;
    }
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(runtime.block_on(bench(n)));
    }
    write_report("bench", &markdown(&rows), &rows);
}

/// Prints the table and writes it to `target/bench/<stem>.md`, the rows to `<stem>.json`.
fn write_report(stem: &str, md: &str, rows: &impl Serialize) {
    println!("{md}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join(format!("{stem}.md")), md).expect("write the table");
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(rows).expect("rows serialize"),
    )
    .expect("write the JSON");
    eprintln!(
        "bench: wrote {0}/{stem}.md and {0}/{stem}.json",
        dir.display()
    );
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| tenants | to Ready (s) | submit (s) | writes/tenant first pass (max) | reconciles/tenant first | resync writes | reconciles/tenant resync | reconcile p99 first / resync (ms) | peak RSS MiB | RSS after resync MiB | idle RSS MiB | anon RSS peak / idle MiB | CPU s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} ({}) | {:.2} | {} | {:.2} | {:.0} / {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |\n",
            r.tenants,
            r.seconds_to_ready,
            r.seconds_to_submit,
            r.writes_per_tenant_first,
            r.writes_per_tenant_max_first,
            r.reconciles_per_tenant_first,
            r.writes_in_resync,
            r.reconciles_per_tenant_resync,
            r.reconcile_p99_ms_first,
            r.reconcile_p99_ms_resync,
            r.peak_rss_mib,
            r.rss_mib_after_resync,
            r.idle_rss_mib,
            r.peak_anon_rss_mib,
            r.idle_anon_rss_mib,
            r.cpu_seconds
        ));
    }
    out
}

async fn bench(n: usize) -> Row {
    let plane = cluster::ControlPlane::start(PORT, ETCD_PORT)
        .expect("../shared/kube/start is needed for the benchmark");
    let admin = cluster::client(&plane.admin_kubeconfig(), "dealertenant-bench").await;
    cluster::prepare_for_operator(&admin).await;
    let config = plane.dir.join("bench-config.yaml");
    std::fs::write(&config, format!("resyncSeconds: {RESYNC_SECONDS}\n")).unwrap();
    let mut operator = spawn(&plane.operator_kubeconfig(), &config, &plane.dir, &[]);
    wait_ready(operator.metrics).await;
    let idle_rss = status_kib(operator.child.id(), "VmRSS") as f64 / 1024.0;
    let idle_anon = status_kib(operator.child.id(), "RssAnon") as f64 / 1024.0;
    let anon = PeakSampler::start(operator.child.id(), "RssAnon");
    let start_offset = audit::end_of(&plane.audit_log()).unwrap();

    let tenants: Api<DealerTenant> = Api::all(admin.clone());
    let started = Instant::now();
    let names = create_tenants(&tenants, n, false).await;
    let submitted = started.elapsed();
    loop {
        let list = tenants.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60 + n as u64),
            "{ready}/{n} Ready after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let to_ready = started.elapsed();
    eprintln!("bench: {n} tenants Ready after {to_ready:?}");
    // Let the last passes' echoes settle, then count the first pass.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (first, resync_offset) = audit::read_from(&plane.audit_log(), start_offset).unwrap();
    let first = audit::Summary::of(&first);
    let writes: Vec<u64> = names
        .iter()
        .map(|t| {
            first
                .tenants
                .get(t)
                .map(audit::Counts::total_writes)
                .unwrap_or(0)
        })
        .collect();
    let reconciles_first = reconciles(operator.metrics);
    let histogram_first = histogram(operator.metrics, RECONCILE_HISTOGRAM);
    // One resync round.
    tokio::time::sleep(Duration::from_secs(RESYNC_SECONDS * 11 / 10 + 10)).await;
    let (resync, _) = audit::read_from(&plane.audit_log(), resync_offset).unwrap();
    let resync = audit::Summary::of(&resync);
    let writes_in_resync: u64 = names
        .iter()
        .map(|t| {
            resync
                .tenants
                .get(t)
                .map(audit::Counts::total_writes)
                .unwrap_or(0)
        })
        .sum();
    let reconciles_resync = reconciles(operator.metrics) - reconciles_first;
    let histogram_all = histogram(operator.metrics, RECONCILE_HISTOGRAM);
    let pid = operator.child.id();
    let row = Row {
        tenants: n,
        seconds_to_ready: to_ready.as_secs_f64(),
        seconds_to_submit: submitted.as_secs_f64(),
        writes_per_tenant_first: writes.iter().sum::<u64>() as f64 / n as f64,
        writes_per_tenant_max_first: writes.iter().copied().max().unwrap_or(0),
        reconciles_per_tenant_first: reconciles_first as f64 / n as f64,
        writes_in_resync,
        reconciles_per_tenant_resync: reconciles_resync as f64 / n as f64,
        reconcile_p99_ms_first: quantile(&histogram_first, 0.99).unwrap_or(f64::NAN) * 1000.0,
        reconcile_p99_ms_resync: quantile(&minus(&histogram_all, &histogram_first), 0.99)
            .unwrap_or(f64::NAN)
            * 1000.0,
        peak_rss_mib: status_kib(pid, "VmHWM") as f64 / 1024.0,
        rss_mib_after_resync: status_kib(pid, "VmRSS") as f64 / 1024.0,
        idle_rss_mib: idle_rss,
        peak_anon_rss_mib: anon.stop() as f64 / 1024.0,
        idle_anon_rss_mib: idle_anon,
        cpu_seconds: cpu_seconds(pid),
    };
    eprintln!("bench: {row:?}");
    let _ = operator.child.kill();
    let _ = operator.child.wait();
    drop(plane);
    row
}

struct Operator {
    child: Child,
    metrics: SocketAddr,
}

/// Starts the operator binary with `config`, and `env` besides (credentials of doubles).
fn spawn(kubeconfig: &Path, config: &Path, dir: &Path, env: &[(&str, &str)]) -> Operator {
    let binary = std::env::var_os("DEALERTENANT_BENCH_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dealertenant-operator")));
    let metrics = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let log = std::fs::File::create(dir.join("operator.log")).unwrap();
    let child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args(["--metrics-addr", &metrics.to_string()])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "bench")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the operator");
    Operator { child, metrics }
}

async fn wait_ready(metrics: SocketAddr) {
    for _ in 0..120 {
        if get(metrics, "/readyz").is_some_and(|r| r.contains(" 200 ")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the operator did not become ready");
}

fn reconciles(metrics: SocketAddr) -> u64 {
    get(metrics, "/metrics")
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("dealertenant_reconciles_total "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

const RECONCILE_HISTOGRAM: &str = "dealertenant_reconcile_duration_seconds";

/// Cumulative buckets `(le, count)` of histogram `name`, ascending.
type Buckets = Vec<(f64, f64)>;

fn histogram(metrics: SocketAddr, name: &str) -> Buckets {
    buckets(&get(metrics, "/metrics").unwrap_or_default(), name)
}

/// The buckets of histogram `name` in a Prometheus text exposition.
fn buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// What was observed between two snapshots of one histogram.
fn minus(later: &Buckets, earlier: &Buckets) -> Buckets {
    later
        .iter()
        .map(|(le, count)| {
            let before = earlier
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - before)
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets`: the bucket that holds it, linearly
/// interpolated, as `histogram_quantile` does. `None` without samples.
fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    None
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`: the peak).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The peak of a `/proc/<pid>/status` field that the kernel keeps no peak of
/// (`RssAnon`), sampled every 500 ms on a thread of its own.
struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    fn start(pid: u32, field: &'static str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, field));
                    std::thread::sleep(Duration::from_millis(500));
                }
                peak.max(status_kib(pid, field))
            }
        });
        Self { stop, thread }
    }

    /// The peak in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// User plus system CPU seconds of `pid` (clock ticks of 1/100 s, as on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15; here, counted from field 3, indices 11 and 12.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Creates `n` tenants `bench-00000`, ..., 16 at a time (as kubectl would submit them), with
/// database, search and email on or off (storage always off: its double cannot serve the
/// operator's process) and no replicas; returns their names.
async fn create_tenants(tenants: &Api<DealerTenant>, n: usize, components: bool) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:05}")).collect();
    futures::stream::iter(names.iter().map(|name| {
        let tenants = tenants.clone();
        async move {
            let t: DealerTenant = serde_json::from_value(json!({
                "apiVersion": "dealerdesk.de/v1alpha1", "kind": "DealerTenant",
                "metadata": {"name": name},
                "spec": {"displayName": name, "region": "europe-west3", "server": {"replicas": 0},
                         "database": {"enabled": components}, "storage": {"enabled": false},
                         "search": {"enabled": components}, "email": {"enabled": components}},
            }))
            .unwrap();
            tenants
                .create(&PostParams::default(), &t)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    names
}
