//! The only place in-cluster objects are written: server-side apply, skipped when the
//! object carries the digest of what we want (so a field dropped from the desired state is
//! removed, too) and holds every field we want: known from the cache when its content is
//! the one last found to be as applied ([`super::cache`]), else from a direct read.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cache::{Cache, Cached, short_hash};
use super::context::Context;
use super::error::Error;
use super::triggers;
use crate::desired::compare;
use crate::desired::names::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};

/// What `ensure` found or made.
#[derive(Debug)]
pub struct Ensured<K> {
    /// The object as the API server has it (from the cache or the apply response).
    pub object: K,
    /// Whether a write was needed.
    pub wrote: bool,
}

/// Kinds the operator applies.
pub trait Managed:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<K> Managed for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The API handle for a desired object: namespaced or cluster-wide, as its kind is.
pub trait ApiFor: Managed {
    fn api_for(client: &Client, namespace: Option<&str>) -> Api<Self>;
}

macro_rules! namespaced {
    ($($k:ty),*) => {$(
        impl ApiFor for $k {
            fn api_for(client: &Client, namespace: Option<&str>) -> Api<Self> {
                Api::namespaced(client.clone(), namespace.unwrap_or_default())
            }
        }
    )*};
}
namespaced!(
    k8s_openapi::api::core::v1::ResourceQuota,
    k8s_openapi::api::core::v1::LimitRange,
    k8s_openapi::api::networking::v1::NetworkPolicy,
    k8s_openapi::api::core::v1::ServiceAccount,
    k8s_openapi::api::apps::v1::Deployment,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::policy::v1::PodDisruptionBudget,
    k8s_openapi::api::rbac::v1::RoleBinding,
    k8s_openapi::api::core::v1::Secret
);

impl ApiFor for k8s_openapi::api::core::v1::Namespace {
    fn api_for(client: &Client, _: Option<&str>) -> Api<Self> {
        Api::all(client.clone())
    }
}

/// What this process applied and has not yet seen in its cache, by object: the digest it
/// applied and the resourceVersion the API server answered with. A watch cache lags behind
/// the writes that caused it: without this, the pass that the write's own watch event
/// triggers would find the old object and apply again. And that watch event (the same
/// resourceVersion) tells the operator nothing new, so it need not start a pass at all.
#[derive(Default)]
pub struct Written {
    entries: Mutex<HashMap<String, Write>>,
}

/// One write of this process, as hashes ([`short_hash`]; 0 for none): the digest applied,
/// the resourceVersion of the answer and its content hash
/// ([`triggers::Fingerprints::content`]).
struct Write {
    digest: u64,
    resource_version: u64,
    content: u64,
}

impl Written {
    /// The hash of the digest this process last applied to `key`.
    fn get(&self, key: &str) -> Option<u64> {
        self.lock().get(key).map(|w| w.digest)
    }
    /// The hash of the resourceVersion this process's last write of `key` produced.
    fn resource_version(&self, key: &str) -> Option<u64> {
        self.lock().get(key).map(|w| w.resource_version)
    }
    /// The content hash of what this process's last apply of `key` produced.
    fn content(&self, key: &str) -> Option<u64> {
        self.lock().get(key).map(|w| w.content).filter(|c| *c != 0)
    }
    fn remember(&self, key: String, digest: &str, resource_version: &str, content: u64) {
        self.lock().insert(
            key,
            Write {
                digest: short_hash(digest),
                resource_version: short_hash(resource_version),
                content,
            },
        );
    }
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
    /// Whether `resource_version` of the object `key` (as [`describe`] names it) is the
    /// one this process's own write produced; if so the write is forgotten, as the watch
    /// cache shows it now and nothing needs to know about it any more. Returns the content
    /// hash of the write (0 for a write other than an apply).
    pub fn take_echo(&self, key: &str, resource_version: Option<&str>) -> Option<u64> {
        let rv = short_hash(resource_version?);
        let mut entries = self.lock();
        let content = entries
            .get(key)
            .filter(|w| w.resource_version == rv)
            .map(|w| w.content)?;
        entries.remove(key);
        Some(content)
    }
    /// Remembers that `resource_version` of `key` is the answer to a write of this process
    /// other than an apply (the finalizer patch).
    pub fn remember_echo(&self, key: String, resource_version: String) {
        self.lock().insert(
            key,
            Write {
                digest: 0,
                resource_version: short_hash(&resource_version),
                content: 0,
            },
        );
    }
    /// Forgets everything written in `namespace` (the tenant is gone).
    pub fn forget_namespace(&self, namespace: &str) {
        let prefix = format!(" {namespace}/");
        let itself = format!("Namespace {namespace}");
        self.lock()
            .retain(|k, _| !k.contains(&prefix) && *k != itself);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Write>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The desired object as JSON, stamped with the digest of everything else in it.
/// Server-side apply with one field manager removes what an apply no longer sends, so a
/// changed digest (also when a field was dropped) is all that must be noticed.
pub fn stamped<K: Serialize>(desired: &K) -> Result<(Value, String), Error> {
    let mut want =
        serde_json::to_value(desired).map_err(|e| Error::Serialize("desired object", e))?;
    // serde_json's maps are sorted, so the text (and the digest) is canonical.
    let text = serde_json::to_string(&want).map_err(|e| Error::Serialize("desired object", e))?;
    let digest: String = Sha256::digest(text.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(meta) = want.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                APPLIED_HASH_ANNOTATION.into(),
                Value::String(digest.clone()),
            );
        }
    }
    Ok((want, digest))
}

/// Makes the cluster hold `desired`: nothing when the cache shows the object with the
/// digest of `desired` and a content found to be as applied, else one server-side apply.
/// When the cache shows the digest but a changed content, or disagrees while this process
/// applied the same digest before (the cache may just be behind), a direct GET decides
/// field by field before anything is written.
pub async fn ensure<K: Cached>(
    ctx: &Context,
    store: &Cache<K>,
    desired: &K,
) -> Result<Ensured<K>, Error> {
    let name = desired.name_any();
    let namespace = desired.namespace();
    let what = describe::<K>(namespace.as_deref(), &name);
    let (want, digest) = stamped(desired)?;
    let seen = store.get(namespace.as_deref(), &name);
    let carries = seen.as_ref().is_some_and(|s| s.carries(&digest));
    if let Some(s) = seen
        && carries
        && (s.verified() || ctx.written.content(&what) == Some(s.content))
    {
        store.verify(namespace.as_deref(), &name, s.content);
        ctx.written.forget(&what);
        return Ok(Ensured {
            object: s.object,
            wrote: false,
        });
    }
    let api = K::api_for(&ctx.client, namespace.as_deref());
    if carries || ctx.written.get(&what) == Some(short_hash(&digest)) {
        // Changed since it was last found as applied, or this process applied exactly
        // this before and the cache has not caught up (or somebody changed or deleted the
        // object since). Ask the API server.
        let fresh = api
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(format!("get {what}"), e))?;
        if let Some(f) = fresh
            && satisfies(&want, &f)?
        {
            if let Some(fp) = triggers::fingerprints(&f) {
                store.verify(namespace.as_deref(), &name, fp.content);
            }
            return Ok(Ensured {
                object: f,
                wrote: false,
            });
        }
    }
    let object = server_side_apply(&api, &name, &want, &what).await?;
    ctx.written.remember(
        what.clone(),
        &digest,
        &object.resource_version().unwrap_or_default(),
        triggers::fingerprints(&object).map_or(0, |f| f.content),
    );
    Ok(Ensured {
        object,
        wrote: true,
    })
}

/// Makes the cluster hold `desired` for a kind the operator does not cache (Secrets):
/// `current` is what a GET in this pass returned, so it is not behind, and no watch echoes
/// the write. Compared field by field.
pub async fn ensure_uncached<K: ApiFor>(
    ctx: &Context,
    current: Option<&K>,
    desired: &K,
) -> Result<Ensured<K>, Error> {
    let name = desired.name_any();
    let namespace = desired.namespace();
    let what = describe::<K>(namespace.as_deref(), &name);
    let (want, _) = stamped(desired)?;
    if let Some(c) = current
        && satisfies(&want, c)?
    {
        return Ok(Ensured {
            object: c.clone(),
            wrote: false,
        });
    }
    let api = K::api_for(&ctx.client, namespace.as_deref());
    let object = server_side_apply(&api, &name, &want, &what).await?;
    Ok(Ensured {
        object,
        wrote: true,
    })
}

/// One server-side apply of `want` as the operator's field manager, taking over fields
/// another manager holds.
async fn server_side_apply<K: ApiFor>(
    api: &Api<K>,
    name: &str,
    want: &Value,
    what: &str,
) -> Result<K, Error> {
    let object = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(want),
        )
        .await
        .map_err(|e| Error::kube(format!("apply {what}"), e))?;
    tracing::debug!(object = %what, "applied");
    Ok(object)
}

fn satisfies<K: Serialize>(want: &Value, have: &K) -> Result<bool, Error> {
    let have = serde_json::to_value(have).map_err(|e| Error::Serialize("cached object", e))?;
    Ok(compare::is_satisfied(want, &have))
}

/// Deletes a namespaced object that should no longer exist, if the cache says it does.
pub async fn remove_stale<K>(
    ctx: &Context,
    store: &Cache<K>,
    namespace: &str,
    name: &str,
) -> Result<bool, Error>
where
    K: Cached,
{
    if !store.contains(Some(namespace), name) {
        return Ok(false);
    }
    let api = K::api_for(&ctx.client, Some(namespace));
    ctx.written.forget(&describe::<K>(Some(namespace), name));
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(
            format!("delete {}", describe::<K>(Some(namespace), name)),
            e,
        )),
    }
}

/// `Deployment tenant-acme/server`, for messages.
pub fn describe<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", K::kind(&())),
        None => format!("{} {name}", K::kind(&())),
    }
}

/// The object as it is now (what a pass reads of it, [`Cached::View`]): the cached copy, unless the cache lacks it or this process
/// wrote it since the cache last showed it; then a direct GET. Use before acting on an
/// absence or on contents (credentials) that a stale copy would get wrong.
pub async fn read<K: Cached>(
    ctx: &Context,
    store: &Cache<K>,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<K>, Error> {
    let what = describe::<K>(namespace, name);
    if let Some(c) = store.get(namespace, name) {
        // Not written since, or the cache already shows that write: the cache is current.
        let current = match ctx.written.resource_version(&what) {
            None => true,
            Some(mine) => c.has_version_hash(mine),
        };
        if current {
            return Ok(Some(c.object));
        }
    }
    get(ctx, namespace, name).await
}

/// The object as the API server has it now (a GET), for a kind the operator does not cache.
pub async fn get<K: ApiFor>(
    ctx: &Context,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<K>, Error> {
    K::api_for(&ctx.client, namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("get {}", describe::<K>(namespace, name)), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_echo_taken_is_forgotten() {
        let w = Written::default();
        w.remember_echo("DealerTenant a".into(), "7".into());
        assert_eq!(w.take_echo("DealerTenant a", Some("6")), None);
        assert_eq!(w.take_echo("DealerTenant a", Some("7")), Some(0));
        assert!(w.lock().is_empty());
        assert_eq!(w.take_echo("DealerTenant a", Some("7")), None);
        w.remember("Deployment t/server".into(), "d1", "8", 42);
        assert_eq!(w.take_echo("Deployment t/server", Some("7")), None);
        assert_eq!(w.take_echo("Deployment t/server", Some("8")), Some(42));
        assert!(w.lock().is_empty());
    }

    #[test]
    fn a_dropped_field_changes_the_digest_so_the_object_is_applied_again() {
        let with = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "30", "cpu": "4"}}});
        let without = json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "30"}}});
        let (applied, d1) = stamped(&with).unwrap();
        let (want, d2) = stamped(&without).unwrap();
        assert_ne!(d1, d2);
        // The cluster still holds the dropped key and the old digest: not satisfied, so
        // the apply (which no longer sends the key) removes it.
        assert!(!compare::is_satisfied(&want, &applied));
        // Unchanged: satisfied, no write.
        assert!(compare::is_satisfied(&applied, &applied));
        assert_eq!(
            applied["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
            json!(d1)
        );
    }
}
