//! The public contract: the `DealerTenant` types, the EU region list, and offline validation.

pub mod regions;
pub mod tenant;
pub mod validate;

pub use tenant::*;

/// The CRD as YAML, exactly what `dealertenant-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&DealerTenant::crd()).expect("the CRD serializes to YAML")
}
