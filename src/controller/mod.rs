//! The controller: watches DealerTenants and everything they own, and reconciles each.

pub mod access;
pub mod apply;
pub mod assemble;
pub mod cache;
pub mod cleanup;
pub mod components;
pub mod context;
pub mod error;
pub mod holdings;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod publish;
pub mod queue;
pub mod receipt;
pub mod reconcile;
pub mod status;
pub mod triggers;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, reflector, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

pub use context::{Context, Stores};
pub use error::Error;
pub use reconcile::reconcile;

use crate::api::DealerTenant;
use crate::config::OperatorConfig;
use crate::desired::names;

/// How long the controller waits after the last event about a tenant before a pass.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// What a tenant's pass decides on, as one hash: a change of anything else (its status,
/// written by this operator) triggers no pass.
fn decides_on(t: &DealerTenant) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.metadata.uid.hash(&mut h);
    t.metadata.generation.hash(&mut h);
    t.metadata.labels.hash(&mut h);
    t.metadata.annotations.hash(&mut h);
    t.metadata.finalizers.hash(&mut h);
    t.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The annotation in which `kubectl apply` keeps its copy of the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// After a failure: back off per tenant, faster for transient errors.
pub fn error_policy(tenant: Arc<DealerTenant>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Error::CleanupPending(what) = err.root() {
        info!(
            tenant = tenant.tenant_name(),
            "{what}; checking again shortly"
        );
        return Action::requeue(std::time::Duration::from_secs(5));
    }
    let kind = if err.is_transient() {
        "transient"
    } else {
        "permanent"
    };
    ctx.metrics
        .failures
        .get_or_create(&metrics::ErrorLabels { kind: kind.into() })
        .inc();
    ctx.metrics
        .errors
        .get_or_create(&metrics::ReasonLabels {
            reason: err.metric_reason().into(),
        })
        .inc();
    let attempt = ctx.note_failure(tenant.tenant_name());
    let delay = error::backoff(attempt, err.is_transient());
    warn!(tenant = tenant.tenant_name(), error = %err, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// A watch of one owned kind, filtered to what this operator manages, feeding a compact
/// cache ([`cache`]): the objects pass through, only what a pass decides on is kept. Every
/// event reaches the cache; only changes of what a pass decides on trigger one
/// ([`triggers::decides_on`]), and not the echo of the operator's own write: the pass that
/// wrote it saw the answer.
///
/// It yields the tenants to look at (`to_tenant`), for `Controller::reconcile_on`. With
/// `watches_stream` every queued request also held a boxed reference to the object that
/// changed, with its API group, version, kind and plural as strings, until the pass ran:
/// heaptrack put kube's scheduler first among the heap's users at the 1,000-tenant
/// benchmark's peak (2.4 MiB of 8.5). A failed watch is retried with backoff and shows in
/// the watch health ([`watched`], `/healthz`); it triggers no pass.
fn owned<K>(
    ctx: &Context,
    mut writer: cache::CacheWriter<K>,
    to_tenant: impl Fn(K) -> Option<ObjectRef<DealerTenant>> + Send + 'static,
) -> impl futures::Stream<Item = ObjectRef<DealerTenant>> + Send + 'static
where
    K: cache::Cached,
{
    let api: Api<K> = Api::all(ctx.client.clone());
    let (written, health) = (ctx.written.clone(), ctx.metrics.watches.clone());
    let cfg = watcher::Config::default()
        .labels(&names::managed_selector())
        .page_size(LIST_PAGE_SIZE);
    let cache = writer.as_reader();
    watcher(api, cfg)
        .inspect(move |event| watched(&health, &K::kind(&()), event.is_ok()))
        .default_backoff()
        .map_ok(move |event| {
            let trigger = writer.apply_watcher_event(&event);
            let object = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    let (namespace, name) = (o.namespace(), o.name_any());
                    let key = apply::describe::<K>(namespace.as_deref(), &name);
                    // The echo of the operator's own write: the cache shows it now, as
                    // applied, and what was kept of the write is dropped.
                    match written.take_echo(&key, o.resource_version().as_deref()) {
                        Some(content) => {
                            if content != 0 {
                                cache.verify(namespace.as_deref(), &name, content);
                            }
                            None
                        }
                        None => Some(o),
                    }
                }
                watcher::Event::Delete(o) => Some(o),
                _ => None,
            };
            futures::stream::iter(object.filter(|_| trigger).map(Ok))
        })
        .try_flatten()
        .filter_map(move |object: Result<K, watcher::Error>| {
            futures::future::ready(match object {
                Ok(o) => to_tenant(o),
                Err(e) => {
                    tracing::debug!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    None
                }
            })
        })
}

/// Objects per page of a watch's list: the objects of one page are held at once, so a
/// small page keeps the peak of a (re)list low; kube's default is 500.
const LIST_PAGE_SIZE: u32 = 100;

/// Records whether a watch delivered or failed, for `/healthz`.
fn watched(health: &metrics::WatchHealth, kind: &str, ok: bool) {
    if ok {
        health.ok(kind);
    } else {
        health.failed(kind);
    }
}

/// Creates the operator's namespace when it is missing (development clusters).
pub async fn ensure_operator_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }))?;
    api.patch(
        name,
        &PatchParams::apply(names::FIELD_MANAGER),
        &Patch::Apply(&ns),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot create namespace {name}: {e}"))?;
    Ok(())
}

/// Applies the DealerTenant CRD (server-side apply) and waits until it is established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use kube::api::{Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = DealerTenant::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot install the CRD {name}: {e}"))?;
    let established = kube::runtime::wait::conditions::is_crd_established();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        kube::runtime::wait::await_condition(crds, &name, established),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the CRD {name} was not established within 30s"))??;
    info!(crd = %name, "CRD installed");
    Ok(())
}

/// How long in-flight passes may run on after SIGTERM/SIGINT before they are stopped; under
/// the Deployment's `terminationGracePeriodSeconds` (30), with time left to release the
/// Lease.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called,
/// so a signal that arrives before the future is first polled is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = which,
            "shutting down: no new passes; in-flight passes may finish within {}s",
            DRAIN_DEADLINE.as_secs()
        );
    })
}

/// Runs the controller until SIGINT/SIGTERM. With `election`, only while this process holds
/// the Lease: before, it serves `/healthz` and `/metrics` and waits; when it loses the Lease
/// while leading, it stops every pass at once and returns an error (the process exits
/// non-zero and its Pod restarts as a follower). On SIGTERM/SIGINT it takes no new work, lets
/// in-flight passes finish within [`DRAIN_DEADLINE`], releases the Lease and returns `Ok`.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    providers: crate::providers::Providers,
    metrics_addr: std::net::SocketAddr,
    election: Option<leader::Election>,
) -> anyhow::Result<()> {
    use futures::FutureExt;
    let shutdown = shutdown_signal()?.boxed().shared();
    let tenants: Api<DealerTenant> = Api::all(client.clone());
    // Fail fast with a clear message when the CRD is missing or we may not list tenants.
    if let Err(e) = tenants
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        anyhow::bail!(
            "cannot list DealerTenants ({e}); install the CRD with `kubectl apply -f crds/dealertenant.yaml` \
             and check the operator's RBAC (deploy/)"
        );
    }
    // Erasure receipts are kept in the operator's namespace: without it, no tenant could be
    // deleted. Say so now rather than at the first deletion.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.get_opt(&config.operator_namespace).await {
        Ok(Some(_)) => {}
        Ok(None) => anyhow::bail!(
            "namespace {ns} (operatorNamespace, where erasure receipts are kept) does not exist; \
             create it (`kubectl create namespace {ns}`), or start with --install-crd, which creates it",
            ns = config.operator_namespace
        ),
        Err(e) => anyhow::bail!("cannot read namespace {}: {e}", config.operator_namespace),
    }
    // The subject of the RoleBinding that grants the operator its rights in each tenant
    // namespace: itself, as the API server knows it.
    let operator = access::whoami(&client).await?;
    info!(kind = %operator.kind, name = %operator.name, "the operator's identity");
    let (stores, w) = Stores::new();
    let ctx =
        Arc::new(Context::new(client.clone(), config, stores, providers).with_operator(operator));
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {metrics_addr} for /metrics and /healthz: {e}")
        })?;
    let metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, metrics).await {
            warn!(error = %e, "metrics endpoint stopped");
        }
    });
    info!(%metrics_addr, "serving /metrics and /healthz");

    let mut leadership = match election {
        None => None,
        Some(election) => {
            info!(
                identity = %election.identity,
                lease = %election.lease_name,
                namespace = %election.namespace,
                "leader election: waiting for the Lease"
            );
            let mut leadership = leader::Leadership::start(client.clone(), election).await?;
            // A follower that has seen a live leader knows its role: ready.
            let ready = ctx.metrics.ready.clone();
            let following = move |_: &str| ready.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                acquired = leadership.acquired(following) => acquired?,
                () = shutdown.clone() => {
                    leadership.release().await;
                    info!("stopped before leading");
                    return Ok(());
                }
            }
            Some(leadership)
        }
    };
    // Leading: ready again once this process's caches are filled.
    ctx.metrics
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    ctx.metrics.leader.set(1);

    // The namespace carries no owner reference (so that `Retain` can keep it); it is
    // mapped to its tenant by label.
    fn by_tenant_label<K: Resource>(obj: K) -> Option<ObjectRef<DealerTenant>> {
        obj.labels()
            .get(names::TENANT_LABEL)
            .map(|t| ObjectRef::new(t))
    }
    // Objects in the tenant namespace are mapped to the (cluster-scoped) tenant that
    // controls them, by name and without a namespace. `owns_stream` would give the owner
    // the owned object's namespace, and `DealerTenant/x` and `DealerTenant/x` in
    // `tenant-x` would be two work items: two passes over one tenant at the same time.
    fn by_owner<K: Resource>(obj: K) -> Option<ObjectRef<DealerTenant>> {
        obj.owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "DealerTenant")
            .map(|o| ObjectRef::new(&o.name))
    }
    info!("starting dealertenant controller");
    // Bounded concurrency: providers have per-project rate limits (Cloud SQL 180/min).
    // The debounce lets the burst of watch events a pass's own writes cause arrive before
    // the next pass, so that one pass follows them, not one per event.
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(8)
        .debounce(DEBOUNCE);
    // A pass is triggered by what the operator decides on: spec (generation), annotations,
    // labels, finalizers and deletion. Not by its own status writes.
    let tenant_store = Writer::<DealerTenant>::default();
    let tenant_reader = tenant_store.as_reader();
    let tenant_reader_for_ready = tenant_reader.clone();
    // `/readyz`: once every cache, the tenants' included, has been filled.
    {
        let (stores, tenants, ready) = (
            ctx.stores.clone(),
            tenant_reader_for_ready.clone(),
            ctx.metrics.ready.clone(),
        );
        tokio::spawn(async move {
            stores.ready().await;
            let _ = tenants.wait_until_ready().await;
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            info!("every cache is filled; ready");
        });
    }
    // Tenants by phase and condition, for /metrics.
    {
        let (tenants, metrics) = (tenant_reader.clone(), ctx.metrics.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                every.tick().await;
                let all = tenants.state();
                metrics.count_tenants(all.iter().map(|t| t.status.as_ref()));
            }
        });
    }
    let tenant_stream = reflector(
        tenant_store,
        watcher(tenants, watcher::Config::default().any_semantic())
            .inspect({
                let health = ctx.metrics.watches.clone();
                move |event| watched(&health, "DealerTenant", event.is_ok())
            })
            // Never read, and large: who wrote which field (the status's conditions are
            // written by this operator), and kubectl's copy of the whole object.
            .modify(|t: &mut DealerTenant| {
                t.managed_fields_mut().clear();
                t.annotations_mut().remove(LAST_APPLIED);
            }),
    )
    .default_backoff()
    .touched_objects()
    // The cache now shows this: the status this process wrote need not be kept besides.
    .inspect_ok({
        let ctx = ctx.clone();
        move |t| ctx.seen_tenant(t)
    })
    .predicate_filter(decides_on, Default::default())
    // The finalizer this operator just added: the pass that added it went on.
    .try_filter({
        let written = ctx.written.clone();
        move |t| {
            let key = reconcile::tenant_key(&t.name_any());
            futures::future::ready(
                written
                    .take_echo(&key, t.resource_version().as_deref())
                    .is_none(),
            )
        }
    })
    .inspect_ok({
        let q = ctx.metrics.workqueue.clone();
        move |t| q.triggered(&t.name_any())
    });
    let metrics = ctx.metrics.clone();
    let q = ctx.metrics.workqueue.clone();
    let controller = Controller::for_stream(tenant_stream, tenant_reader)
        .with_config(controller_config)
        .reconcile_on(owned::<Namespace>(
            &ctx,
            w.namespaces,
            q.via(by_tenant_label),
        ))
        .reconcile_on(owned::<RoleBinding>(&ctx, w.role_bindings, q.via(by_owner)))
        .reconcile_on(owned::<ResourceQuota>(&ctx, w.quotas, q.via(by_owner)))
        .reconcile_on(owned::<LimitRange>(&ctx, w.limits, q.via(by_owner)))
        .reconcile_on(owned::<NetworkPolicy>(
            &ctx,
            w.network_policies,
            q.via(by_owner),
        ))
        .reconcile_on(owned::<ServiceAccount>(
            &ctx,
            w.service_accounts,
            q.via(by_owner),
        ))
        .reconcile_on(owned::<Deployment>(&ctx, w.deployments, q.via(by_owner)))
        .reconcile_on(owned::<Service>(&ctx, w.services, q.via(by_owner)))
        .reconcile_on(owned::<PodDisruptionBudget>(&ctx, w.pdbs, q.via(by_owner)))
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |tenant, ctx: Arc<Context>| async move {
                // No pass before every cache has been filled: an object missing from a
                // cache that has not listed yet is not missing.
                ctx.stores.ready().await;
                let started = std::time::Instant::now();
                let metrics = ctx.metrics.clone();
                metrics.passes_in_flight.inc();
                let pass = metrics.workqueue.start(tenant.tenant_name());
                let result = reconcile(tenant, ctx).await;
                pass.finish(&result);
                metrics.passes_in_flight.dec();
                metrics
                    .reconcile_duration
                    .observe(started.elapsed().as_secs_f64());
                result
            },
            |tenant, err: &Error, ctx: Arc<Context>| {
                let action = error_policy(tenant.clone(), err, ctx.clone());
                ctx.metrics
                    .workqueue
                    .requeued(tenant.tenant_name(), &action);
                action
            },
            ctx,
        )
        .for_each(move |res| {
            if let Err(kube::runtime::controller::Error::ObjectNotFound(gone)) = &res {
                q.forget(&gone.name);
            }
            async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(tenant = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile error"),
                }
            }
        });
    let drained = async {
        shutdown.clone().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    let lost = async {
        match leadership.as_mut() {
            Some(l) => l.lost().await,
            None => futures::future::pending().await,
        }
    };
    // Dropping the controller future stops every pass at its next await point.
    let outcome = tokio::select! {
        () = controller => {
            info!("controller stopped");
            Ok(())
        }
        () = drained => {
            warn!(
                "in-flight passes did not finish within {}s of the signal; stopping them",
                DRAIN_DEADLINE.as_secs()
            );
            Ok(())
        }
        why = lost => Err(why),
    };
    metrics.leader.set(0);
    metrics.workqueue.clear();
    metrics
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            if let Some(l) = leadership {
                l.release().await;
            }
            Ok(())
        }
        Err(why) => {
            tracing::error!(reason = %why, "lost leadership: stopped every pass");
            anyhow::bail!(
                "lost leadership ({why}); exiting so that this replica restarts as a follower"
            )
        }
    }
}
