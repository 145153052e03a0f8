//! The operator's rights inside one tenant namespace: a RoleBinding of the operator's own
//! identity to the fixed ClusterRole [`TENANT_ROLE`]. Cluster-wide, the operator can only
//! read (never a Secret) and create namespaces; everything it writes inside a namespace it
//! may write because of this binding, which goes away with the namespace.

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{meta, names};

/// The ClusterRole bound in every tenant namespace (`deploy/base/rbac.yaml`). The operator may
/// bind this role and no other (`bind` limited by `resourceNames`).
pub const TENANT_ROLE: &str = "dealertenant-operator-tenant";
/// Name of the RoleBinding in the tenant namespace.
pub const BINDING: &str = "dealertenant-operator";

/// The RBAC subject a Kubernetes username stands for: a ServiceAccount for
/// `system:serviceaccount:<namespace>:<name>`, else a User.
pub fn subject_of(username: &str) -> Subject {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, name)) => Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(namespace.into()),
            api_group: None,
        },
        None => Subject {
            kind: "User".into(),
            name: username.into(),
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        },
    }
}

/// The operator's identity as `deploy/` installs it: its ServiceAccount in `namespace`.
/// What `plan` shows; the running operator binds whatever identity the API server says
/// it has.
pub fn installed_operator(namespace: &str) -> Subject {
    subject_of(&format!(
        "system:serviceaccount:{namespace}:{}",
        names::MANAGED_BY
    ))
}

/// The binding that lets `operator` write the tenant's objects in its namespace.
pub fn role_binding(tenant: &str, owner: &OwnerReference, operator: &Subject) -> RoleBinding {
    let mut metadata = meta(BINDING, tenant, owner);
    metadata.namespace = Some(names::namespace(tenant));
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: TENANT_ROLE.into(),
        },
        subjects: Some(vec![operator.clone()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_username_is_bound_as_that_service_account() {
        let s = subject_of("system:serviceaccount:dealertenant-system:dealertenant-operator");
        assert_eq!(s.kind, "ServiceAccount");
        assert_eq!(s.name, "dealertenant-operator");
        assert_eq!(s.namespace.as_deref(), Some("dealertenant-system"));
        assert_eq!(installed_operator("dealertenant-system"), s);
        let u = subject_of("dealertenant-operator");
        assert_eq!(u.kind, "User");
        assert_eq!(u.api_group.as_deref(), Some("rbac.authorization.k8s.io"));
    }

    #[test]
    fn the_binding_names_the_fixed_role_and_only_the_operator() {
        let t =
            crate::desired::testing::tenant("acme", "{displayName: Acme, region: europe-west3}");
        let owner = crate::desired::owner_reference(&t);
        let rb = role_binding("acme", &owner, &subject_of("op"));
        assert_eq!(rb.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, TENANT_ROLE);
        assert_eq!(rb.subjects.as_ref().unwrap().len(), 1);
        assert_eq!(rb.metadata.owner_references.unwrap()[0].uid, "uid-acme");
    }
}
