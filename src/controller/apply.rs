//! The only place in-cluster objects are written: server-side apply, skipped when the
//! cached object already holds every field we want.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::Error;
use crate::desired::{compare, names::FIELD_MANAGER};

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
    k8s_openapi::api::core::v1::Secret
);

impl ApiFor for k8s_openapi::api::core::v1::Namespace {
    fn api_for(client: &Client, _: Option<&str>) -> Api<Self> {
        Api::all(client.clone())
    }
}

/// Looks `desired` up in the cache; applies it unless the cached copy already satisfies it.
pub async fn ensure<K: ApiFor>(
    client: &Client,
    store: &Store<K>,
    desired: &K,
) -> Result<Ensured<K>, Error> {
    let name = desired.name_any();
    let namespace = desired.namespace();
    let mut key = ObjectRef::<K>::new(&name);
    if let Some(ns) = namespace.as_deref() {
        key = key.within(ns);
    }
    let want = serde_json::to_value(desired).map_err(|e| Error::Serialize("desired object", e))?;
    if let Some(cached) = store.get(&key) {
        let have =
            serde_json::to_value(&*cached).map_err(|e| Error::Serialize("cached object", e))?;
        if compare::is_satisfied(&want, &have) {
            return Ok(Ensured {
                object: (*cached).clone(),
                wrote: false,
            });
        }
    }
    let api = K::api_for(client, namespace.as_deref());
    let what = describe::<K>(namespace.as_deref(), &name);
    let object = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&want),
        )
        .await
        .map_err(|e| Error::kube(format!("apply {what}"), e))?;
    tracing::debug!(object = %what, "applied");
    Ok(Ensured {
        object,
        wrote: true,
    })
}

/// Deletes a namespaced object that should no longer exist, if the cache says it does.
pub async fn remove_stale<K>(
    client: &Client,
    store: &Store<K>,
    namespace: &str,
    name: &str,
) -> Result<bool, Error>
where
    K: ApiFor,
{
    if store
        .get(&ObjectRef::<K>::new(name).within(namespace))
        .is_none()
    {
        return Ok(false);
    }
    let api = K::api_for(client, Some(namespace));
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
