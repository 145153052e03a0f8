//! What the operator's caches cost per tenant, counted by the allocator: the owned
//! objects' compact caches ([`dealertenant_operator::controller::cache`]) and the
//! DealerTenant watch cache, filled with what a tenant that is Ready looks like on a real
//! API server (every component off, as in `tests/bench.rs`). The target is at most
//! 64 MiB RSS at 10,000 tenants; what these caches hold is the part of the RSS that grows
//! with the tenant count, and it must not creep back to whole objects.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use dealertenant_operator::api::{DealerTenant, DealerTenantSpec};
use dealertenant_operator::config::OperatorConfig;
use dealertenant_operator::controller::Stores;
use dealertenant_operator::controller::apply::stamped;
use dealertenant_operator::controller::cache::{CacheWriter, Cached};
use dealertenant_operator::desired;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::json;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TENANTS: usize = 1000;

fn tenant(i: usize) -> DealerTenant {
    let spec: DealerTenantSpec = serde_json::from_value(json!({
        "displayName": format!("bench-{i:05}"), "region": "europe-west3", "server": {"replicas": 0},
        "database": {"enabled": false}, "storage": {"enabled": false},
        "search": {"enabled": false}, "email": {"enabled": false},
    }))
    .unwrap();
    let mut t = DealerTenant::new(&format!("bench-{i:05}"), spec);
    t.metadata.uid = Some(format!("0b6f1a3e-6c1d-4e53-9a43-{i:012}"));
    t.metadata.generation = Some(1);
    t.metadata.resource_version = Some(format!("{}", 100_000 + i));
    t
}

/// As the API server holds it: uid, resourceVersion, creation time, managed fields.
fn served<K: Resource>(mut obj: K, i: usize, n: usize) -> K {
    let m = obj.meta_mut();
    m.uid = Some(format!("5c0ffee0-0000-4000-8000-{:012}", i * 100 + n));
    m.resource_version = Some(format!("{}", 200_000 + i * 100 + n));
    m.generation = Some(1);
    m.creation_timestamp = Some(Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()));
    m.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("dealertenant-operator".into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(
            json!({"f:metadata": {"f:labels": {}}, "f:spec": {}}),
        )),
        time: obj_time(),
        ..Default::default()
    }]);
    obj
}

fn obj_time() -> Option<Time> {
    Some(Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()))
}

fn put<K: Cached>(w: &mut CacheWriter<K>, obj: K) {
    let (v, _) = stamped(&obj).unwrap();
    let obj: K = serde_json::from_value(v).unwrap();
    w.apply_watcher_event(&watcher::Event::Apply(obj));
}

/// A Ready tenant's status, as the operator writes it with every component off.
fn ready_status(name: &str) -> serde_json::Value {
    let cond = |t: &str, reason: &str, message: &str| {
        json!({"type": t, "status": "True", "reason": reason, "message": message,
               "observedGeneration": 1, "lastTransitionTime": "2026-12-06T22:06:59Z"})
    };
    json!({
        "observedGeneration": 1, "phase": "Ready", "namespace": format!("tenant-{name}"),
        "components": "none",
        "conditions": [
            cond("Ready", "AllComponentsReady", "every enabled component is ready"),
            cond("NamespaceReady", "Active", &format!("namespace tenant-{name} is active")),
            cond("ServerReady", "Available", "0/0 replicas available"),
            cond("ResidencyCompliant", "InEU", "0 external resources checked; every reported location is an EU region"),
        ],
        "processors": [{"id": "google-cloud", "name": "Google Cloud", "entity": "Google Cloud EMEA Ltd.",
                        "country": "IE", "thirdCountry": false, "components": ["hosting"],
                        "purpose": "hosting, database and file storage",
                        "safeguard": "EU processor; data hosted in EU regions only",
                        "dataCategories": ["customer contact data", "vehicle and sales records", "correspondence"]}],
    })
}

#[test]
fn the_caches_cost_a_few_kib_per_tenant() {
    let cfg = OperatorConfig::default();
    let tenants: Vec<DealerTenant> = (0..TENANTS).map(tenant).collect();

    let before = LIVE.load(Ordering::Relaxed);
    let (stores, mut w) = Stores::new();
    for (i, t) in tenants.iter().enumerate() {
        let d = desired::build(t, &cfg, &[]);
        let mut ns = served(d.namespace, i, 0);
        ns.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        });
        put(&mut w.namespaces, ns);
        put(
            &mut w.role_bindings,
            served(
                desired::access::role_binding(
                    t.metadata.name.as_deref().unwrap(),
                    &desired::owner_reference(t),
                    &desired::access::installed_operator("dealertenant-system"),
                ),
                i,
                1,
            ),
        );
        put(&mut w.quotas, served(d.quota, i, 2));
        put(&mut w.limits, served(d.limits, i, 3));
        for (n, np) in d.network_policies.into_iter().enumerate() {
            put(&mut w.network_policies, served(np, i, 4 + n));
        }
        put(&mut w.service_accounts, served(d.service_account, i, 10));
        put(&mut w.services, served(d.service, i, 11));
        put(&mut w.deployments, served(d.deployment, i, 12));
    }
    let owned = (LIVE.load(Ordering::Relaxed) - before) as f64 / TENANTS as f64;
    let objects = stores.network_policies.len() + 7 * stores.namespaces.len();

    // For comparison: the same objects in kube's stores, whole but for their managed
    // fields (what the operator kept before).
    let before = LIVE.load(Ordering::Relaxed);
    let whole = whole_objects(&tenants, &cfg);
    let whole_cost = (LIVE.load(Ordering::Relaxed) - before) as f64 / TENANTS as f64;
    drop(whole);

    let before = LIVE.load(Ordering::Relaxed);
    let mut tenant_cache = Writer::<DealerTenant>::default();
    for t in &tenants {
        let mut t = t.clone();
        t.status = Some(
            serde_json::from_value(ready_status(t.metadata.name.as_deref().unwrap())).unwrap(),
        );
        t.metadata.finalizers = Some(vec!["dealerdesk.de/cleanup".into()]);
        tenant_cache.apply_watcher_event(&watcher::Event::Apply(t));
    }
    let tenant = (LIVE.load(Ordering::Relaxed) - before) as f64 / TENANTS as f64;

    println!(
        "memory: per tenant: owned objects' caches {owned:.0} B ({:.0} B per object, {} objects), \
         DealerTenant cache {tenant:.0} B; whole objects in kube's stores {whole_cost:.0} B \
         (bytes requested from the allocator)",
        owned * TENANTS as f64 / objects as f64,
        objects / TENANTS
    );
    assert!(
        owned < 2000.0,
        "the owned caches cost {owned:.0} B per tenant"
    );
    assert!(
        tenant < 6000.0,
        "the DealerTenant cache costs {tenant:.0} B per tenant"
    );
    drop(stores);
}

/// The owned objects in kube's stores, whole but without managed fields.
fn whole_objects(tenants: &[DealerTenant], cfg: &OperatorConfig) -> Vec<Box<dyn std::any::Any>> {
    fn fill<K>(objs: Vec<K>) -> Box<dyn std::any::Any>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut w = Writer::<K>::default();
        for mut o in objs {
            o.meta_mut().managed_fields = None;
            w.apply_watcher_event(&watcher::Event::Apply(o));
        }
        Box::new(w)
    }
    let (mut ns, mut rb, mut q, mut l, mut np, mut sa, mut svc, mut dep) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for (i, t) in tenants.iter().enumerate() {
        let d = desired::build(t, cfg, &[]);
        ns.push(served(d.namespace, i, 0));
        rb.push(served(
            desired::access::role_binding(
                t.metadata.name.as_deref().unwrap(),
                &desired::owner_reference(t),
                &desired::access::installed_operator("dealertenant-system"),
            ),
            i,
            1,
        ));
        q.push(served(d.quota, i, 2));
        l.push(served(d.limits, i, 3));
        for (n, p) in d.network_policies.into_iter().enumerate() {
            np.push(served(p, i, 4 + n));
        }
        sa.push(served(d.service_account, i, 10));
        svc.push(served(d.service, i, 11));
        dep.push(served(d.deployment, i, 12));
    }
    vec![
        fill(ns),
        fill(rb),
        fill(q),
        fill(l),
        fill(np),
        fill(sa),
        fill(svc),
        fill(dep),
    ]
}
