//! Compact caches of the owned objects. A pass needs little of an owned object: whether it
//! is there, whether it still is as the operator applied it, and for two kinds a few fields
//! (the namespace's owner and phase, the Deployment's rollout). So a cache keeps, per
//! object, a 128-bit digest of its name (`Key`), hashes of its resourceVersion, of its
//! applied digest (`dealerdesk.de/applied-hash`) and of its content, and those few fields:
//! 158 bytes, where the object whole cost about 3 KB. The objects themselves pass through.
//!
//! "As applied" is decided without the object: the content hash (everything but the
//! status, [`super::triggers::fingerprints`]) is compared with the content last found to
//! be as applied, from the answer to an apply or a direct read in a pass. A change by
//! anybody else changes the content, and the next pass reads the object and compares it
//! field by field. An object first seen (at start) counts as applied when its managed
//! fields say nobody but the Kubernetes controllers changed it after the operator's last
//! apply ([`applied_last`]); otherwise the next pass reads it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, NamespaceStatus, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use kube::ResourceExt;
use kube::runtime::watcher;

use super::apply::ApiFor;
use super::triggers;
use crate::desired::names;

/// A hash of a short string (a resourceVersion, a digest); 0 stands for none.
pub fn short_hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish().max(1)
}

/// A kind the operator caches: what a pass reads of it besides its name.
pub trait Cached: ApiFor + Default {
    /// The fields a pass reads.
    type View: Clone + Default + Send + Sync + 'static;
    fn view(&self) -> Self::View;
    /// An object that holds the name and `view` (what a pass may read), nothing else.
    fn restore(meta: ObjectMeta, view: &Self::View) -> Self {
        let mut k = Self::default();
        *k.meta_mut() = meta;
        Self::fill(&mut k, view);
        k
    }
    fn fill(_: &mut Self, _: &Self::View) {}
}

macro_rules! plain {
    ($($k:ty),*) => {$(
        impl Cached for $k {
            type View = ();
            fn view(&self) {}
        }
    )*};
}
plain!(
    ResourceQuota,
    LimitRange,
    NetworkPolicy,
    ServiceAccount,
    Service,
    PodDisruptionBudget,
    RoleBinding
);

/// What a pass reads of the tenant namespace: whose it is ([`super::identity`]) and its
/// phase.
#[derive(Clone, Debug, Default)]
pub struct NamespaceView {
    owner_uid: Option<Box<str>>,
    retained: Option<Box<str>>,
    managed_by: Option<Box<str>>,
    retained_from: Option<Box<str>>,
    deleting: Option<Time>,
    phase: Option<Box<str>>,
}

impl Cached for Namespace {
    type View = NamespaceView;
    fn view(&self) -> NamespaceView {
        let label = |k: &str| self.labels().get(k).map(|v| v.as_str().into());
        NamespaceView {
            owner_uid: label(names::TENANT_UID_LABEL),
            retained: label(names::RETAINED_LABEL),
            managed_by: label("app.kubernetes.io/managed-by"),
            retained_from: self
                .annotations()
                .get(names::RETAINED_FROM_ANNOTATION)
                .map(|v| v.as_str().into()),
            deleting: self.metadata.deletion_timestamp.clone(),
            phase: self
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .map(Into::into),
        }
    }
    fn fill(ns: &mut Self, v: &NamespaceView) {
        let mut labels = std::collections::BTreeMap::new();
        for (k, value) in [
            (names::TENANT_UID_LABEL, &v.owner_uid),
            (names::RETAINED_LABEL, &v.retained),
            ("app.kubernetes.io/managed-by", &v.managed_by),
        ] {
            if let Some(value) = value {
                labels.insert(k.to_string(), value.to_string());
            }
        }
        if !labels.is_empty() {
            ns.metadata.labels = Some(labels);
        }
        if let Some(from) = &v.retained_from {
            ns.annotations_mut()
                .insert(names::RETAINED_FROM_ANNOTATION.into(), from.to_string());
        }
        ns.metadata.deletion_timestamp = v.deleting.clone();
        ns.status = v.phase.as_ref().map(|p| NamespaceStatus {
            phase: Some(p.to_string()),
            ..Default::default()
        });
    }
}

/// What a pass reads of the server Deployment: its age and its rollout.
#[derive(Clone, Debug, Default)]
pub struct DeploymentView {
    generation: Option<i64>,
    created: Option<Time>,
    observed_generation: Option<i64>,
    replicas: Option<i32>,
    updated_replicas: Option<i32>,
    available_replicas: Option<i32>,
}

impl Cached for Deployment {
    type View = DeploymentView;
    fn view(&self) -> DeploymentView {
        let st = self.status.as_ref();
        DeploymentView {
            generation: self.metadata.generation,
            created: self.metadata.creation_timestamp.clone(),
            observed_generation: st.and_then(|s| s.observed_generation),
            replicas: st.and_then(|s| s.replicas),
            updated_replicas: st.and_then(|s| s.updated_replicas),
            available_replicas: st.and_then(|s| s.available_replicas),
        }
    }
    fn fill(d: &mut Self, v: &DeploymentView) {
        d.metadata.generation = v.generation;
        d.metadata.creation_timestamp = v.created.clone();
        let status = DeploymentStatus {
            observed_generation: v.observed_generation,
            replicas: v.replicas,
            updated_replicas: v.updated_replicas,
            available_replicas: v.available_replicas,
            ..Default::default()
        };
        d.status = (status != DeploymentStatus::default()).then_some(status);
    }
}

/// What is kept of one object.
#[derive(Clone, Debug)]
struct Entry<V> {
    resource_version: u64,
    /// [`short_hash`] of the applied digest; 0 without one.
    applied: u64,
    content: u64,
    trigger: u64,
    /// The content last found to be as applied; 0 for none.
    verified: u64,
    view: V,
}

impl<V> Entry<V> {
    fn of<K: Cached<View = V>>(obj: &K) -> Self {
        let f = triggers::fingerprints(obj);
        Entry {
            resource_version: obj.resource_version().as_deref().map_or(0, short_hash),
            applied: obj
                .annotations()
                .get(names::APPLIED_HASH_ANNOTATION)
                .map_or(0, |d| short_hash(d)),
            // Unreadable (never for these kinds): a content that is never verified.
            content: f.map_or(0, |f| f.content),
            trigger: f.map_or_else(|| fastrand::u64(..), |f| f.trigger),
            verified: 0,
            view: obj.view(),
        }
    }
}

type Map<V> = HashMap<Key, Entry<V>>;

/// An object's place, `namespace/name`, as the first 128 bits of its SHA-256: 16 bytes in
/// the map where the name itself took a 16-byte pointer and a 32 to 64-byte allocation,
/// for each of about 12 objects per tenant. A pass asks by name and already has it, so the
/// cache needs no name back; and no two names meet in one entry (a collision of SHA-256's
/// first 128 bits is out of reach, deliberate or not), so one tenant's entry never
/// answers for another's object.
type Key = u128;

fn key(namespace: Option<&str>, name: &str) -> Key {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // A cluster-wide object's key differs from any namespaced one's; neither a namespace
    // nor a name holds a `/`.
    if let Some(ns) = namespace {
        h.update(ns.as_bytes());
        h.update(b"/");
    }
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

struct Shared<V> {
    map: RwLock<Map<V>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// The read side of a cache, shared by every pass.
pub struct Cache<K: Cached> {
    shared: Arc<Shared<K::View>>,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Cached> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _kind: PhantomData,
        }
    }
}

/// What a cache knows of one object.
#[derive(Debug)]
pub struct Seen<K> {
    /// The name and the fields a pass reads ([`Cached::View`]); nothing else.
    pub object: K,
    resource_version: u64,
    applied: u64,
    pub content: u64,
    verified: u64,
}

impl<K> Seen<K> {
    /// Whether the object carries the applied digest `digest`.
    pub fn carries(&self, digest: &str) -> bool {
        self.applied == short_hash(digest)
    }
    /// Whether its content is the one last found to be as applied.
    pub fn verified(&self) -> bool {
        self.verified != 0 && self.verified == self.content
    }
    /// Whether its resourceVersion is `rv`.
    pub fn is_version(&self, rv: &str) -> bool {
        self.resource_version == short_hash(rv)
    }
    /// Whether its resourceVersion's [`short_hash`] is `rv`.
    pub fn has_version_hash(&self, rv: u64) -> bool {
        self.resource_version == rv
    }
}

impl<K: Cached> Cache<K> {
    /// An empty cache and the writer that fills it.
    pub fn new() -> (Cache<K>, CacheWriter<K>) {
        let (ready, _) = tokio::sync::watch::channel(false);
        let cache = Cache {
            shared: Arc::new(Shared {
                map: RwLock::new(HashMap::new()),
                ready,
            }),
            _kind: PhantomData,
        };
        let writer = CacheWriter {
            cache: cache.clone(),
            buffer: None,
        };
        (cache, writer)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map<K::View>> {
        self.shared.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map<K::View>> {
        self.shared.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The object `namespace/name` as far as the cache knows it.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Seen<K>> {
        let map = self.read();
        let e = map.get(&key(namespace, name))?;
        let meta = ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            ..Default::default()
        };
        Some(Seen {
            object: K::restore(meta, &e.view),
            resource_version: e.resource_version,
            applied: e.applied,
            content: e.content,
            verified: e.verified,
        })
    }

    /// Whether the cache holds `namespace/name`.
    pub fn contains(&self, namespace: Option<&str>, name: &str) -> bool {
        self.read().contains_key(&key(namespace, name))
    }

    /// Records that `namespace/name` with content `content` was found to be as applied.
    pub fn verify(&self, namespace: Option<&str>, name: &str, content: u64) {
        if let Some(e) = self.write().get_mut(&key(namespace, name))
            && e.content == content
        {
            e.verified = content;
        }
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the cache has been filled by its first list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.shared.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// The writing side of a [`Cache`], fed by a watch.
pub struct CacheWriter<K: Cached> {
    cache: Cache<K>,
    /// A list in progress: it replaces the cache when it is complete.
    buffer: Option<Map<K::View>>,
}

impl<K: Cached> CacheWriter<K> {
    /// The cache this writer fills.
    pub fn as_reader(&self) -> Cache<K> {
        self.cache.clone()
    }

    /// Takes in one watch event; says whether it changed what a pass decides on (the
    /// trigger hash), as kube's `predicate_filter` would.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.buffer = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let (k, e, changed) = self.arrive(obj);
                if let Some(buffer) = self.buffer.as_mut() {
                    buffer.insert(k, e);
                } else {
                    self.cache.write().insert(k, e);
                }
                changed
            }
            watcher::Event::InitDone => {
                if let Some(buffer) = self.buffer.take() {
                    *self.cache.write() = buffer;
                }
                self.cache.shared.ready.send_replace(true);
                false
            }
            watcher::Event::Apply(obj) => {
                let (k, e, changed) = self.arrive(obj);
                self.cache.write().insert(k, e);
                changed
            }
            watcher::Event::Delete(obj) => {
                let k = key(obj.namespace().as_deref(), &obj.name_any());
                let gone = self.cache.write().remove(&k);
                let trigger = triggers::decides_on(obj);
                gone.is_none_or(|e| Some(e.trigger) != trigger)
            }
        }
    }

    /// The entry for `obj`, keeping what was verified of the object before, and whether
    /// its trigger hash changed.
    fn arrive(&self, obj: &K) -> (Key, Entry<K::View>, bool) {
        let k = key(obj.namespace().as_deref(), &obj.name_any());
        let mut e = Entry::of(obj);
        let before = self.cache.read().get(&k).map(|b| (b.trigger, b.verified));
        let changed = match before {
            Some((trigger, verified)) => {
                e.verified = verified;
                trigger != e.trigger
            }
            None => {
                if applied_last(&obj.meta().managed_fields) {
                    e.verified = e.content;
                }
                true
            }
        };
        (k, e, changed)
    }
}

/// Whether, by an object's managed fields, nobody changed it after the operator's last
/// apply but the Kubernetes controllers that write the status or annotations of their
/// own (the Deployment controller's revision). An object without managed fields at all
/// (a test's) counts as applied.
pub fn applied_last(managed: &Option<Vec<ManagedFieldsEntry>>) -> bool {
    let Some(entries) = managed.as_ref().filter(|m| !m.is_empty()) else {
        return true;
    };
    let ours = entries
        .iter()
        .filter(|m| m.manager.as_deref() == Some(names::FIELD_MANAGER))
        .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    let Some(ours) = ours else {
        return false;
    };
    entries
        .iter()
        .filter(|m| m.manager.as_deref() != Some(names::FIELD_MANAGER))
        .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|m| !only_others_annotations(m))
        .all(|m| m.time.as_ref().is_some_and(|t| t.0 < ours))
}

/// Whether a managed-fields entry owns nothing but annotations outside `dealerdesk.de/`.
fn only_others_annotations(m: &ManagedFieldsEntry) -> bool {
    let Some(fields) = m.fields_v1.as_ref().map(|f| &f.0) else {
        return false;
    };
    let Some(top) = fields.as_object() else {
        return false;
    };
    top.iter().all(|(k, v)| {
        k == "f:metadata"
            && v.as_object().is_some_and(|meta| {
                meta.iter().all(|(k, v)| {
                    k == "f:annotations"
                        && v.as_object().is_some_and(|a| {
                            a.keys()
                                .all(|k| k == "." || !k.starts_with("f:dealerdesk.de/"))
                        })
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    fn entry(
        manager: &str,
        subresource: Option<&str>,
        secs: i64,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(
                if manager == names::FIELD_MANAGER {
                    "Apply"
                } else {
                    "Update"
                }
                .into(),
            ),
            subresource: subresource.map(Into::into),
            time: Some(Time(jiff::Timestamp::from_second(secs).unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_later_change_by_somebody_else_makes_an_object_first_seen_unverified() {
        let ours = entry(names::FIELD_MANAGER, None, 100, json!({"f:spec": {}}));
        let status = entry(
            "kube-controller-manager",
            Some("status"),
            200,
            json!({"f:status": {}}),
        );
        let revision = entry(
            "kube-controller-manager",
            None,
            200,
            json!({"f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}}),
        );
        let edit = entry(
            "kubectl-edit",
            None,
            200,
            json!({"f:spec": {"f:replicas": {}}}),
        );
        let earlier_edit = entry(
            "kubectl-edit",
            None,
            50,
            json!({"f:spec": {"f:replicas": {}}}),
        );
        let same_second = entry("kubectl-edit", None, 100, json!({"f:spec": {}}));
        let our_annotation = entry(
            "kubectl-annotate",
            None,
            200,
            json!({"f:metadata": {"f:annotations": {"f:dealerdesk.de/applied-hash": {}}}}),
        );
        assert!(applied_last(&None));
        assert!(applied_last(&Some(vec![
            ours.clone(),
            status,
            revision,
            earlier_edit
        ])));
        assert!(!applied_last(&Some(vec![ours.clone(), edit.clone()])));
        assert!(!applied_last(&Some(vec![ours.clone(), same_second])));
        assert!(!applied_last(&Some(vec![ours, our_annotation])));
        // Never applied by the operator.
        assert!(!applied_last(&Some(vec![edit])));
    }

    fn quota(hard: &str, rv: &str) -> ResourceQuota {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "q", "namespace": "tenant-a", "resourceVersion": rv,
                         "annotations": {"dealerdesk.de/applied-hash": "d1"}},
            "spec": {"hard": {"pods": hard}},
        }))
        .unwrap()
    }

    #[test]
    fn a_changed_content_is_no_longer_verified_and_a_relist_keeps_what_was() {
        let (cache, mut w) = Cache::<ResourceQuota>::new();
        assert!(w.apply_watcher_event(&watcher::Event::Apply(quota("30", "1"))));
        let seen = cache.get(Some("tenant-a"), "q").unwrap();
        assert!(seen.carries("d1") && !seen.carries("d2"));
        assert!(seen.verified(), "first seen without managed fields");
        assert!(seen.is_version("1"));
        // The same content again (a resync of the watch): no trigger, still verified.
        assert!(!w.apply_watcher_event(&watcher::Event::Apply(quota("30", "2"))));
        assert!(cache.get(Some("tenant-a"), "q").unwrap().verified());
        // Edited by hand: a trigger, and no longer verified.
        assert!(w.apply_watcher_event(&watcher::Event::Apply(quota("31", "3"))));
        let edited = cache.get(Some("tenant-a"), "q").unwrap();
        assert!(edited.carries("d1") && !edited.verified());
        // A relist after a watch gap keeps that: the object is not first seen.
        w.apply_watcher_event(&watcher::Event::Init);
        assert!(!w.apply_watcher_event(&watcher::Event::InitApply(quota("31", "3"))));
        w.apply_watcher_event(&watcher::Event::InitDone);
        assert!(!cache.get(Some("tenant-a"), "q").unwrap().verified());
        // A pass read it and found it as applied.
        cache.verify(Some("tenant-a"), "q", edited.content);
        assert!(cache.get(Some("tenant-a"), "q").unwrap().verified());
        assert!(w.apply_watcher_event(&watcher::Event::Delete(quota("32", "4"))));
        assert!(cache.get(Some("tenant-a"), "q").is_none());
    }

    #[test]
    fn a_relist_drops_what_is_gone() {
        let (cache, mut w) = Cache::<ResourceQuota>::new();
        w.apply_watcher_event(&watcher::Event::Apply(quota("30", "1")));
        w.apply_watcher_event(&watcher::Event::Init);
        assert_eq!(cache.len(), 1, "kept until the list is complete");
        w.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_namespace_and_deployment_keep_what_a_pass_reads() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "tenant-a", "labels": {
                "dealerdesk.de/tenant-uid": "u1", "dealerdesk.de/retained": "true",
                "app.kubernetes.io/managed-by": "dealertenant-operator", "other": "x"},
                "annotations": {"dealerdesk.de/retained-from-uid": "u0"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Terminating"},
        }))
        .unwrap();
        let back = Namespace::restore(
            ObjectMeta {
                name: Some("tenant-a".into()),
                ..Default::default()
            },
            &ns.view(),
        );
        assert_eq!(
            super::super::identity::claim(Some(&back), "u1", None),
            super::super::identity::claim(Some(&ns), "u1", None)
        );
        assert_eq!(
            super::super::identity::owner_uid(&back),
            super::super::identity::owner_uid(&ns)
        );
        assert_eq!(back.status, ns.status);
        assert!(back.labels().get("other").is_none());
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "server", "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                       "availableReplicas": 1, "conditions": [{"type": "Available", "status": "False"}]},
        }))
        .unwrap();
        let back = Deployment::restore(ObjectMeta::default(), &d.view());
        assert_eq!(back.metadata.generation, Some(3));
        assert_eq!(
            back.metadata.creation_timestamp,
            d.metadata.creation_timestamp
        );
        let (a, b) = (back.status.unwrap(), d.status.unwrap());
        assert_eq!(
            (
                a.observed_generation,
                a.replicas,
                a.updated_replicas,
                a.available_replicas
            ),
            (
                b.observed_generation,
                b.replicas,
                b.updated_replicas,
                b.available_replicas
            )
        );
        assert!(back.spec.is_none());
    }
}
