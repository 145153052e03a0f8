//! High availability on a real API server: two operator processes, one Lease.
//!
//! The suite starts a control plane of its own (`../shared/kube/start` on 127.0.0.1:17443,
//! etcd on 13379/13380; `DEALERTENANT_HA_KUBE_PORT` / `DEALERTENANT_HA_ETCD_PORT` override),
//! so that no other operator (tests/e2e.rs runs one on `.ci/test`'s control plane at the
//! same time) reconciles its tenants or competes for its Lease. It is skipped, loudly, only
//! when the start script does not exist.
//!
//! Both processes run as the user `dealertenant-operator` with exactly `deploy/base/rbac.yaml`'s
//! rights, with `POD_NAME` `ha-a` and `ha-b`; the API server's audit log tells them apart by
//! the user agent the operator sends (`dealertenant-operator/VERSION (POD_NAME)`).
//!
//! 1. One of them takes the Lease; the other's `dealertenant_leader` is 0 and its `/readyz`
//!    200 (a follower that knows it is one is ready).
//! 2. Three tenants become Ready; in the audit log only the leader wrote anything but the
//!    Lease, and the follower started no reconcile pass.
//! 3. `kill -9` of the leader: the follower holds the Lease within its duration plus slack,
//!    and reconciles a tenant created after the kill.
//! 4. A third process `ha-c` follows. SIGTERM to the leader: it exits 0 within the drain
//!    deadline, having released the Lease, and `ha-c` holds it within a few seconds (well
//!    before the released Lease would have run out).
//! 5. The Lease is taken from `ha-c` behind its back: it stops at once and exits non-zero.
//!
//! A second test, on a control plane of its own (127.0.0.1:21443, etcd 17379/17380;
//! `DEALERTENANT_DRAIN_KUBE_PORT` / `DEALERTENANT_DRAIN_ETCD_PORT` override), drains a pass
//! that is in flight at SIGTERM: one operator process with email on, served by the Postmark
//! double (`tests/support/postmark.rs`), which holds `POST /servers` back.
//!
//! 1. The create takes 4 s and SIGTERM comes while the double holds it (by then its
//!    `/metrics` counts the name lookup among its requests to Postmark): the process exits 0
//!    before the drain deadline, the create was answered, the pass went on to write the
//!    tenant's `email` Secret (with the new server's ID and token) and its server Deployment,
//!    the Lease was released, and the audit log has no write of the process after its last
//!    Lease write (the release).
//! 2. The create takes longer than [`DRAIN_DEADLINE`]: the pass is cut at the deadline (no
//!    Secret), and the process still releases the Lease and exits 0, no sooner than the
//!    deadline and within 10 s after it.
//!
//! A third test, on a control plane of its own (127.0.0.1:17443 as the first, after it;
//! `DEALERTENANT_QUEUE_KUBE_PORT` / `DEALERTENANT_QUEUE_ETCD_PORT` override), watches
//! `dealertenant_workqueue_depth` while one operator onboards 100 tenants: it rises above 0
//! and never past 100 (each tenant counts once, however many watch events trigger it), and
//! is 0 again once every tenant is Ready.
//!
//! The tests take turns ([`SERIAL`]): two control planes and three operators at once on
//! a small CI machine would make the timings above a test of the machine.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dealertenant_operator::api::{DealerTenant, Phase};
use dealertenant_operator::controller::DRAIN_DEADLINE;
use dealertenant_operator::controller::leader::LEASE_DURATION;
use dealertenant_operator::desired::names;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{self, ControlPlane, OPERATOR_NAMESPACE, OPERATOR_USER};
use support::postmark::PostmarkDouble;

const LEASE: &str = "dealertenant-operator";
/// Slack on top of the Lease duration for a takeover after `kill -9`: the follower's poll,
/// the crate's random wait (up to 1 s) and a loaded CI machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(8);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// A follower takes a released Lease within this (it looks every 2 s).
const HANDOVER_LIMIT: Duration = Duration::from_secs(6);
/// A leader whose Lease was taken exits within this (it reads the Lease every 2 s).
const LOSS_LIMIT: Duration = Duration::from_secs(6);
const TEST_USER_AGENT: &str = "dealertenant-ha-test";
/// How long the Postmark double holds `POST /servers` in the drain test's first case: well
/// within [`DRAIN_DEADLINE`].
const SLOW_CREATE: Duration = Duration::from_secs(4);
/// The environment variable the drain test's operator reads the Postmark account token from.
const POSTMARK_TOKEN_ENV: &str = "DEALERTENANT_HA_POSTMARK_TOKEN";

/// The tests of this suite run one after the other (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_takes_over_and_hands_over() {
    let _serial = SERIAL.lock().await;
    let port = env_port("DEALERTENANT_HA_KUBE_PORT", 17443);
    let etcd_port = env_port("DEALERTENANT_HA_ETCD_PORT", 13379);
    let Some(plane) = ControlPlane::start(port, etcd_port) else {
        let _ = writeln!(
            std::io::stderr(),
            "\n***  ha SKIPPED: {} does not exist; no high-availability check ran.  ***\n",
            cluster::start_script().display()
        );
        return;
    };
    let admin = cluster::client(&plane.admin_kubeconfig(), TEST_USER_AGENT).await;
    cluster::prepare_for_operator(&admin).await;
    wait_until_rbac_is_active(&plane.operator_kubeconfig()).await;

    let logs = plane.dir.clone();
    let mut a = Operator::spawn("ha-a", &plane.operator_kubeconfig(), &logs);
    let mut b = Operator::spawn("ha-b", &plane.operator_kubeconfig(), &logs);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let tenants: Api<DealerTenant> = Api::all(admin.clone());

    // 1. One leader, one ready follower.
    let first = poll(STEP_TIMEOUT, "the Lease to have a holder", async || {
        holder(&leases).await.filter(|h| h == "ha-a" || h == "ha-b")
    })
    .await;
    let (leader, follower) = if first == "ha-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    eprintln!(
        "ha: {} leads, {} follows",
        leader.identity, follower.identity
    );
    for op in [&*leader, &*follower] {
        poll(
            STEP_TIMEOUT,
            &format!("/readyz of {}", op.identity),
            async || http_get(op.metrics, "/readyz").filter(|r| r.contains(" 200 ")),
        )
        .await;
    }
    assert_eq!(metric(leader.metrics, "dealertenant_leader"), Some(1));
    assert_eq!(metric(follower.metrics, "dealertenant_leader"), Some(0));

    // 2. Only the leader writes.
    let names: Vec<String> = (1..=3).map(|i| format!("ha-{i}")).collect();
    for name in &names {
        create_tenant(&tenants, name).await;
    }
    for name in &names {
        wait_ready(&tenants, name).await;
    }
    assert_eq!(
        metric(follower.metrics, "dealertenant_reconciles_total"),
        Some(0),
        "the follower started reconcile passes"
    );
    let requests = audit(&plane.audit_log());
    let by = writes_by_agent(&requests);
    print_writes("while both run", &by);
    let leader_writes = by.get(&leader.user_agent()).cloned().unwrap_or_default();
    let follower_writes = by.get(&follower.user_agent()).cloned().unwrap_or_default();
    eprintln!(
        "ha: writes by the leader {}: {}; by the follower {}: {} ({:?}); reconcile passes of \
         the follower: 0",
        leader.identity,
        leader_writes.values().sum::<u64>(),
        follower.identity,
        follower_writes.values().sum::<u64>(),
        follower_writes
    );
    for resource in ["dealertenants", "namespaces"] {
        assert!(
            leader_writes.keys().any(|r| r.starts_with(resource)),
            "the leader wrote no {resource}: {leader_writes:?}"
        );
    }
    let not_lease: Vec<_> = follower_writes
        .iter()
        .filter(|(r, _)| *r != "leases")
        .collect();
    assert!(
        not_lease.is_empty(),
        "the follower {} wrote more than its Lease: {not_lease:?}",
        follower.identity
    );
    let unknown: Vec<&String> = by
        .keys()
        .filter(|agent| {
            *agent != &leader.user_agent()
                && *agent != &follower.user_agent()
                && agent.as_str() != TEST_USER_AGENT
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "writes as {OPERATOR_USER} from unknown user agents: {unknown:?}"
    );

    // 3. kill -9 of the leader: the follower takes over and reconciles a new tenant.
    let killed = leader.identity.clone();
    let killed_at = Instant::now();
    leader.kill();
    create_tenant(&tenants, "ha-after").await;
    let successor = follower.identity.clone();
    let takeover_limit = Duration::from_secs(LEASE_DURATION) + TAKEOVER_SLACK;
    poll(
        takeover_limit,
        &format!("{successor} to take the Lease after {killed} was killed"),
        async || holder(&leases).await.filter(|h| *h == successor),
    )
    .await;
    let takeover = killed_at.elapsed();
    wait_ready(&tenants, "ha-after").await;
    let after_ready = killed_at.elapsed();
    assert_eq!(metric(follower.metrics, "dealertenant_leader"), Some(1));
    eprintln!(
        "ha: {killed} killed (SIGKILL); {successor} held the Lease after {:.1}s (limit {}s: \
         Lease duration {LEASE_DURATION}s + {}s), and the tenant created after the kill was \
         Ready after {:.1}s",
        takeover.as_secs_f64(),
        takeover_limit.as_secs(),
        TAKEOVER_SLACK.as_secs(),
        after_ready.as_secs_f64()
    );

    // 4. SIGTERM with a follower waiting: drain, release, exit 0; the follower takes over.
    let mut c = Operator::spawn("ha-c", &plane.operator_kubeconfig(), &logs);
    poll(STEP_TIMEOUT, "/readyz of ha-c (a follower)", async || {
        http_get(c.metrics, "/readyz").filter(|r| r.contains(" 200 "))
    })
    .await;
    assert_eq!(metric(c.metrics, "dealertenant_leader"), Some(0));
    let terminated_at = Instant::now();
    follower.terminate();
    poll(
        HANDOVER_LIMIT,
        &format!("ha-c to take the Lease released by {successor}"),
        async || holder(&leases).await.filter(|h| h == "ha-c"),
    )
    .await;
    let handover = terminated_at.elapsed();
    let limit = DRAIN_DEADLINE + Duration::from_secs(10);
    let status = follower.wait_exit(limit);
    let exited_after = terminated_at.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "{successor} did not exit within {}s of SIGTERM; log {}",
            limit.as_secs(),
            follower.log.display()
        )
    });
    assert!(
        status.success(),
        "{successor} exited with {status} after SIGTERM; log {}",
        follower.log.display()
    );
    let log = std::fs::read_to_string(&follower.log).unwrap_or_default();
    assert!(
        log.contains("released the Lease"),
        "{successor} did not release the Lease on SIGTERM; log {}",
        follower.log.display()
    );
    eprintln!(
        "ha: SIGTERM to {successor}: exited 0 (by {:.1}s), released the Lease; ha-c held it \
         {:.1}s after the signal (limit {}s; the Lease lasts {LEASE_DURATION}s)",
        exited_after.as_secs_f64(),
        handover.as_secs_f64(),
        HANDOVER_LIMIT.as_secs()
    );
    create_tenant(&tenants, "ha-handover").await;
    wait_ready(&tenants, "ha-handover").await;

    // 5. The Lease taken behind the leader's back: it stops at once and exits non-zero.
    let stolen_at = Instant::now();
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder",
                "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
                "leaseDurationSeconds": LEASE_DURATION,
            }})),
        )
        .await
        .expect("take the Lease");
    let status = c.wait_exit(LOSS_LIMIT).unwrap_or_else(|| {
        panic!(
            "ha-c still runs {}s after it lost the Lease; log {}",
            LOSS_LIMIT.as_secs(),
            c.log.display()
        )
    });
    assert!(
        !status.success(),
        "ha-c exited 0 after losing the Lease; log {}",
        c.log.display()
    );
    eprintln!(
        "ha: the Lease taken from ha-c: it exited ({status}) after {:.1}s",
        stolen_at.elapsed().as_secs_f64()
    );
    assert_no_forbidden(&audit(&plane.audit_log()));
    // The control plane, with the tenants, goes when `plane` is dropped.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_a_pass_in_flight_and_cuts_one_past_the_deadline() {
    let _serial = SERIAL.lock().await;
    let port = env_port("DEALERTENANT_DRAIN_KUBE_PORT", 21443);
    let etcd_port = env_port("DEALERTENANT_DRAIN_ETCD_PORT", 17379);
    let Some(plane) = ControlPlane::start(port, etcd_port) else {
        let _ = writeln!(
            std::io::stderr(),
            "\n***  ha drain SKIPPED: {} does not exist; no drain check ran.  ***\n",
            cluster::start_script().display()
        );
        return;
    };
    let admin = cluster::client(&plane.admin_kubeconfig(), TEST_USER_AGENT).await;
    cluster::prepare_for_operator(&admin).await;
    wait_until_rbac_is_active(&plane.operator_kubeconfig()).await;
    let postmark = PostmarkDouble::start().await;
    let config = plane.dir.join("drain-config.yaml");
    std::fs::write(
        &config,
        format!(
            "email:\n  postmark:\n    endpoint: {}\n    accountTokenEnv: {POSTMARK_TOKEN_ENV}\n",
            postmark.url()
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let env = [(POSTMARK_TOKEN_ENV, postmark.account_token())];
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let tenants: Api<DealerTenant> = Api::all(admin.clone());
    let limit = DRAIN_DEADLINE + Duration::from_secs(10);

    // 1. SIGTERM while Postmark is creating the tenant's server: the pass is finished.
    postmark.set_delay(Some("POST"), Some(SLOW_CREATE));
    let mut a = Operator::spawn_with(
        "drain-a",
        &plane.operator_kubeconfig(),
        &plane.dir,
        Some(&config),
        &env,
    );
    let (exited, log) =
        terminate_in_flight(&mut a, "drain-1", &leases, &tenants, &postmark, limit).await;
    assert!(
        exited < DRAIN_DEADLINE,
        "drain-a exited {:.1}s after SIGTERM: its pass was held to the deadline, not finished; \
         log {}",
        exited.as_secs_f64(),
        a.log.display()
    );
    assert!(
        !log.contains("did not finish within"),
        "drain-a cut its pass; log {}",
        a.log.display()
    );
    // The provider call completed: answered, and the server exists.
    assert_eq!(postmark.in_flight(), 0, "a Postmark request is still held");
    let creates: Vec<u16> = postmark
        .calls()
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.status)
        .collect();
    assert_eq!(creates, [200], "POST /servers answers");
    let servers = postmark.servers();
    assert_eq!(servers.len(), 1, "Postmark servers: {servers:?}");
    // What the pass writes after the call landed: the Secret, then the server Deployment.
    let namespace = names::namespace("drain-1");
    let secret = Api::<Secret>::namespaced(admin.clone(), &namespace)
        .get_opt("email")
        .await
        .expect("read the Secret")
        .unwrap_or_else(|| {
            panic!(
                "no Secret {namespace}/email: the pass in flight at SIGTERM did not finish; \
                 log {}",
                a.log.display()
            )
        });
    let data = secret.data.unwrap_or_default();
    let value = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    assert_eq!(
        value("POSTMARK_SERVER_ID"),
        Some(servers[0].id.to_string()),
        "the Secret names the server the held create made"
    );
    assert!(
        value("POSTMARK_SERVER_TOKEN").is_some_and(|t| servers[0].api_tokens.contains(&t)),
        "the Secret does not hold the server's token"
    );
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &namespace)
        .get_opt(names::SERVER)
        .await
        .expect("read the Deployment");
    assert!(
        deployment.is_some(),
        "no Deployment {namespace}/{}: the pass stopped after the Secret",
        names::SERVER
    );
    let requests = audit(&plane.audit_log());
    let written = assert_nothing_written_after_release(&requests, &a, &leases).await;
    for resource in ["secrets", "deployments"] {
        assert!(
            written.iter().any(|r| r == resource),
            "the audit log has no write of {resource} by drain-a: {written:?}"
        );
    }
    eprintln!(
        "ha drain: SIGTERM while POST /servers was held {}s: drain-a finished the pass (Secret \
         and Deployment written), released the Lease and exited 0 after {:.1}s",
        SLOW_CREATE.as_secs(),
        exited.as_secs_f64()
    );

    // 2. A pass longer than the deadline: cut at it; the Lease is still released, exit 0.
    postmark.set_delay(Some("POST"), Some(DRAIN_DEADLINE + Duration::from_secs(15)));
    let mut b = Operator::spawn_with(
        "drain-b",
        &plane.operator_kubeconfig(),
        &plane.dir,
        Some(&config),
        &env,
    );
    let (exited, log) =
        terminate_in_flight(&mut b, "drain-2", &leases, &tenants, &postmark, limit).await;
    assert!(
        exited >= DRAIN_DEADLINE,
        "drain-b exited {:.1}s after SIGTERM, before the drain deadline ({}s) with a pass in \
         flight; log {}",
        exited.as_secs_f64(),
        DRAIN_DEADLINE.as_secs(),
        b.log.display()
    );
    assert!(
        log.contains("did not finish within"),
        "drain-b does not say that it cut its pass; log {}",
        b.log.display()
    );
    let namespace = names::namespace("drain-2");
    let secret = Api::<Secret>::namespaced(admin.clone(), &namespace)
        .get_opt("email")
        .await
        .expect("read the Secret");
    assert!(
        secret.is_none(),
        "Secret {namespace}/email written by a pass that was to be cut at the deadline"
    );
    assert_nothing_written_after_release(&audit(&plane.audit_log()), &b, &leases).await;
    eprintln!(
        "ha drain: SIGTERM with a pass held past the deadline: drain-b cut it after {}s, \
         released the Lease and exited 0 after {:.1}s",
        DRAIN_DEADLINE.as_secs(),
        exited.as_secs_f64()
    );
    assert_no_forbidden(&audit(&plane.audit_log()));
    let violations = postmark.violations();
    assert!(violations.is_empty(), "Postmark requests: {violations:?}");
}

/// The work queue's depth on a real API server: 100 tenants created one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_fills_while_tenants_arrive_and_drains() {
    const DEPTH: &str = "dealertenant_workqueue_depth";
    const TENANTS: usize = 100;
    let _serial = SERIAL.lock().await;
    let port = env_port("DEALERTENANT_QUEUE_KUBE_PORT", 17443);
    let etcd_port = env_port("DEALERTENANT_QUEUE_ETCD_PORT", 13379);
    let Some(plane) = ControlPlane::start(port, etcd_port) else {
        let _ = writeln!(
            std::io::stderr(),
            "\n***  ha queue SKIPPED: {} does not exist; no work-queue check ran.  ***\n",
            cluster::start_script().display()
        );
        return;
    };
    let admin = cluster::client(&plane.admin_kubeconfig(), TEST_USER_AGENT).await;
    cluster::prepare_for_operator(&admin).await;
    wait_until_rbac_is_active(&plane.operator_kubeconfig()).await;
    let tenants: Api<DealerTenant> = Api::all(admin.clone());
    let op = Operator::spawn("queue-a", &plane.operator_kubeconfig(), &plane.dir);
    poll(STEP_TIMEOUT, "/readyz of queue-a", async || {
        http_get(op.metrics, "/readyz").filter(|r| r.contains(" 200 "))
    })
    .await;
    assert_eq!(metric(op.metrics, DEPTH), Some(0), "nothing is due yet");

    // Sample the depth while the tenants arrive and converge.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, addr) = (stop.clone(), op.metrics);
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(depth) = metric(addr, DEPTH) {
                    peak = peak.max(depth);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, samples)
        })
    };
    let started = Instant::now();
    let names: Vec<String> = (1..=TENANTS).map(|i| format!("queue-{i:03}")).collect();
    for name in &names {
        create_tenant(&tenants, name).await;
    }
    for name in &names {
        wait_ready(&tenants, name).await;
    }
    let ready = started.elapsed();
    poll(
        Duration::from_secs(90),
        "the work queue to drain",
        async || (metric(op.metrics, DEPTH) == Some(0)).then_some(()),
    )
    .await;
    let drained = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = sampler.join().expect("the sampler");
    eprintln!(
        "ha queue: {TENANTS} tenants Ready after {:.1}s, queue empty after {:.1}s; depth \
         peaked at {peak} ({samples} samples)",
        ready.as_secs_f64(),
        drained.as_secs_f64()
    );
    assert!(samples > 10, "too few samples of {DEPTH}: {samples}");
    assert!(
        peak > 0,
        "{DEPTH} never rose above 0 while {TENANTS} tenants arrived"
    );
    assert!(
        peak <= TENANTS as u64,
        "{DEPTH} peaked at {peak} with {TENANTS} tenants: a tenant counted twice"
    );
}

/// Waits until `op` leads, creates `tenant` with email on, sends SIGTERM while the double
/// holds its `POST /servers`, and waits for the exit. The process must release the Lease and exit 0 within `limit`.
/// Returns the time from the signal to the exit, and the log.
async fn terminate_in_flight(
    op: &mut Operator,
    tenant: &str,
    leases: &Api<Lease>,
    tenants: &Api<DealerTenant>,
    postmark: &PostmarkDouble,
    limit: Duration,
) -> (Duration, String) {
    let identity = op.identity.clone();
    poll(STEP_TIMEOUT, &format!("{identity} to lead"), async || {
        holder(leases).await.filter(|h| *h == identity)
    })
    .await;
    create_tenant_with(tenants, tenant, true).await;
    poll(
        STEP_TIMEOUT,
        &format!("{identity}'s POST /servers for {tenant} to be held"),
        async || (postmark.in_flight() > 0).then_some(()),
    )
    .await;
    // The operator counts its requests to Postmark (the name lookup before the create) on
    // /metrics: the providers and the metrics share one set of counters.
    let sample = "dealertenant_provider_requests_total{component=\"email\",processor=\"postmark\",method=\"GET\",status_class=\"2xx\"}";
    let metrics = http_get(op.metrics, "/metrics").unwrap_or_default();
    assert!(
        metrics.lines().any(|l| l.starts_with(sample)),
        "{identity}'s /metrics lacks {sample}:\n{metrics}"
    );
    let signalled = Instant::now();
    op.terminate();
    let status = op.wait_exit(limit);
    let exited = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "{identity} did not exit within {}s of SIGTERM; log {}",
            limit.as_secs(),
            op.log.display()
        )
    });
    assert!(
        status.success(),
        "{identity} exited with {status} after SIGTERM; log {}",
        op.log.display()
    );
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    assert!(
        log.contains("released the Lease"),
        "{identity} did not release the Lease on SIGTERM; log {}",
        op.log.display()
    );
    (exited, log)
}

/// The Lease has no holder, and in the audit log no write of `op` ends after its last
/// Lease write (the release) began. Returns the resources `op` wrote, Leases aside.
async fn assert_nothing_written_after_release(
    requests: &[Request],
    op: &Operator,
    leases: &Api<Lease>,
) -> Vec<String> {
    assert_eq!(
        holder(leases).await,
        None,
        "{} exited and the Lease still names a holder",
        op.identity
    );
    let agent = op.user_agent();
    let writes: Vec<&Request> = requests
        .iter()
        .filter(|r| r.user_agent == agent && r.is_write())
        .collect();
    let release = writes
        .iter()
        .rev()
        .find(|r| r.resource == "leases")
        .unwrap_or_else(|| panic!("no Lease write by {agent} in the audit log"));
    let late: Vec<String> = writes
        .iter()
        .filter(|r| r.resource != "leases" && r.completed > release.received)
        .map(|r| format!("{} {} at {}", r.verb, r.uri, r.completed))
        .collect();
    assert!(
        late.is_empty(),
        "{} wrote after it released the Lease at {}:\n{}",
        op.identity,
        release.received,
        late.join("\n")
    );
    let mut resources: Vec<String> = writes
        .iter()
        .filter(|r| r.resource != "leases")
        .map(|r| r.resource.clone())
        .collect();
    resources.sort();
    resources.dedup();
    resources
}

fn env_port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the operator user may do what its bindings grant.
async fn wait_until_rbac_is_active(kubeconfig: &Path) {
    let client = cluster::client(kubeconfig, TEST_USER_AGENT).await;
    let tenants: Api<DealerTenant> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, OPERATOR_NAMESPACE);
    poll(Duration::from_secs(30), "RBAC to be active", async || {
        let one = kube::api::ListParams::default().limit(1);
        match (tenants.list(&one).await, leases.get_opt("probe").await) {
            (Ok(_), Ok(_)) => Some(()),
            _ => None,
        }
    })
    .await;
}

async fn create_tenant(tenants: &Api<DealerTenant>, name: &str) {
    create_tenant_with(tenants, name, false).await;
}

async fn create_tenant_with(tenants: &Api<DealerTenant>, name: &str, email: bool) {
    let t: DealerTenant = serde_json::from_value(json!({
        "apiVersion": "dealerdesk.de/v1alpha1",
        "kind": "DealerTenant",
        "metadata": {"name": name},
        "spec": {
            "displayName": format!("HA {name}"),
            "region": "europe-west3",
            "server": {"replicas": 0},
            "database": {"enabled": false},
            "storage": {"enabled": false},
            "search": {"enabled": false},
            "email": {"enabled": email},
        },
    }))
    .expect("a tenant");
    tenants
        .create(&PostParams::default(), &t)
        .await
        .unwrap_or_else(|e| panic!("create tenant {name}: {e}"));
}

async fn wait_ready(tenants: &Api<DealerTenant>, name: &str) {
    poll(STEP_TIMEOUT, &format!("tenant {name} Ready"), async || {
        let t = tenants.get_opt(name).await.ok().flatten()?;
        let status = t.status.as_ref()?;
        (status.observed_generation == t.metadata.generation
            && status.phase == Some(Phase::Ready)
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"))
        .then_some(())
    })
    .await;
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn poll<T>(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One operator process of this suite. Dropping it kills it.
struct Operator {
    identity: String,
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    fn spawn(identity: &str, kubeconfig: &Path, logs: &Path) -> Self {
        Self::spawn_with(identity, kubeconfig, logs, None, &[])
    }

    /// With a configuration file and more environment variables.
    fn spawn_with(
        identity: &str,
        kubeconfig: &Path,
        logs: &Path,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let log = logs.join(format!("operator-{identity}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("a second handle");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dealertenant-operator"));
        command.arg("run");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args(["--metrics-addr", &metrics.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("DEALERTENANT_CONFIG")
            .env_remove("DEALERTENANT_LOG_JSON")
            .env_remove("DEALERTENANT_METRICS_ADDR")
            .env_remove("DEALERTENANT_LEADER_ELECTION")
            .env_remove("DEALERTENANT_LEASE_NAME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start the operator: {e}"));
        eprintln!(
            "ha: operator {identity} started (pid {}, metrics {metrics}, log {})",
            child.id(),
            log.display()
        );
        Self {
            identity: identity.into(),
            child,
            metrics,
            log,
        }
    }

    fn user_agent(&self) -> String {
        format!(
            "dealertenant-operator/{} ({})",
            env!("CARGO_PKG_VERSION"),
            self.identity
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One completed request of the operator user, from the audit log.
#[derive(Debug)]
struct Request {
    verb: String,
    resource: String,
    user_agent: String,
    code: u16,
    uri: String,
    /// `requestReceivedTimestamp` and `stageTimestamp` (when the answer was complete).
    received: Timestamp,
    completed: Timestamp,
}

impl Request {
    /// A SelfSubjectReview ("who am I", every process asks at start) or access review is
    /// a question: the API server stores nothing.
    fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) && !self.resource.ends_with("reviews")
    }
}

fn audit(path: &Path) -> Vec<Request> {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == OPERATOR_USER)
        .map(|e| {
            let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
            let resource = match e["objectRef"]["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_string(),
            };
            Request {
                verb: e["verb"].as_str().unwrap_or_default().into(),
                resource,
                user_agent: e["userAgent"].as_str().unwrap_or_default().into(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
                uri: e["requestURI"].as_str().unwrap_or_default().into(),
                received: timestamp(&e["requestReceivedTimestamp"]),
                completed: timestamp(&e["stageTimestamp"]),
            }
        })
        .collect()
}

fn timestamp(v: &Value) -> Timestamp {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an audit event without a valid timestamp: {v}"))
}

/// Writes per user agent and resource.
fn writes_by_agent(requests: &[Request]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut by: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in requests.iter().filter(|r| r.is_write()) {
        *by.entry(r.user_agent.clone())
            .or_default()
            .entry(r.resource.clone())
            .or_default() += 1;
    }
    by
}

fn print_writes(when: &str, by: &BTreeMap<String, BTreeMap<String, u64>>) {
    let mut out = format!(
        "\nha: API writes by user agent ({when}):\n\n| user agent | resource | writes |\n|---|---|---|\n"
    );
    for (agent, resources) in by {
        for (resource, n) in resources {
            out.push_str(&format!("| {agent} | {resource} | {n} |\n"));
        }
    }
    let _ = writeln!(std::io::stderr(), "{out}");
}

fn assert_no_forbidden(requests: &[Request]) {
    let forbidden: Vec<String> = requests
        .iter()
        .filter(|r| r.code == 403 && r.user_agent != TEST_USER_AGENT)
        .map(|r| format!("{} {} ({})", r.verb, r.uri, r.user_agent))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the API server refused the operator (rights of deploy/base/rbac.yaml):\n{}",
        forbidden.join("\n")
    );
}

/// A sample without labels from the operator's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let text = http_get(addr, "/metrics")?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// The whole HTTP answer of `GET path` on `addr`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
