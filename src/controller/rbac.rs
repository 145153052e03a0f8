//! The API permissions the operator's code uses, in one list. `deploy/rbac.yaml` must grant
//! exactly these (tests/deploy.rs compares them), so the ClusterRole stays least-privilege.

/// `(apiGroup, resource, verbs)`.
pub const REQUIRED: &[(&str, &str, &[&str])] = &[
    // Watched; finalizer added and removed with JSON patches.
    (
        "dealerdesk.de",
        "dealertenants",
        &["get", "list", "watch", "patch"],
    ),
    // Status written with server-side apply.
    ("dealerdesk.de", "dealertenants/status", &["patch"]),
    // Owner references with blockOwnerDeletion need this.
    ("dealerdesk.de", "dealertenants/finalizers", &["update"]),
    // Applied (create + patch), watched, deleted under `Delete`.
    (
        "",
        "namespaces",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "resourcequotas",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "",
        "limitranges",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "",
        "serviceaccounts",
        &["get", "list", "watch", "create", "patch"],
    ),
    ("", "services", &["get", "list", "watch", "create", "patch"]),
    // Component Secrets: the providers' connection details.
    ("", "secrets", &["get", "list", "watch", "create", "patch"]),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch"],
    ),
    // Removed again when the server scales down to one replica.
    (
        "policy",
        "poddisruptionbudgets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // Events about tenants.
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// Permissions in the operator's own namespace (a Role there): erasure receipts, and the
/// leader Lease (`kube-lease-manager` reads it, creates it when missing, and takes, renews
/// and releases it with patches; `controller::leader` reads it back).
pub const IN_OPERATOR_NAMESPACE: &[(&str, &str, &[&str])] = &[
    ("", "configmaps", &["get", "create", "patch"]),
    ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
];
