//! The `DealerTenant` custom resource: spec, status and the CRD generated from them.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::regions;

/// API group of every resource this operator defines.
pub const GROUP: &str = "dealerdesk.de";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The finalizer that guards cleanup.
pub const FINALIZER: &str = "dealerdesk.de/cleanup";
/// Longest tenant name: every derived name (namespace `tenant-<name>`, bucket,
/// Postmark server, index) has to fit its target system's limit.
pub const MAX_NAME_LEN: usize = 40;
/// Most replicas a tenant server may ask for.
pub const MAX_REPLICAS: i32 = 10;

/// One customer (a car dealer): its own namespace and server, database, storage bucket,
/// email server and search index, all hosted in one EU region.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dealerdesk.de",
    version = "v1alpha1",
    kind = "DealerTenant",
    plural = "dealertenants",
    singular = "dealertenant",
    shortname = "dt",
    category = "dealerdesk",
    status = "DealerTenantStatus",
    derive = "PartialEq",
    doc = "A customer's complete, isolated stack, hosted only in an EU region of Google Cloud.",
    validation = Rule::new(
        "self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
    ).message("metadata.name must be a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit) of at most 40 characters"),
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName", priority = 1),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace", priority = 1),
    printcolumn(name = "Components", type_ = "string", json_path = ".status.components", priority = 1),
    printcolumn(name = "Deletion", type_ = "string", json_path = ".spec.deletionPolicy", priority = 1),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DealerTenantSpec {
    /// The customer's name as people write it, e.g. "Autohaus Müller GmbH & Co. KG".
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,

    /// Google Cloud region for every resource of this tenant; only regions in EU member
    /// states. Immutable: moving a tenant is a migration, not an edit.
    #[schemars(schema_with = "region_schema")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("region is immutable: moving a tenant between regions is a migration, not an edit"))]
    pub region: String,

    /// The tenant's own application server.
    #[serde(default)]
    pub server: ServerSpec,

    /// What happens to the tenant's data when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// When true the operator changes nothing for this tenant (not even deletion).
    #[serde(default)]
    pub paused: bool,

    /// The tenant's own database.
    #[serde(default)]
    pub database: ComponentSpec,

    /// The tenant's own storage bucket.
    #[serde(default)]
    pub storage: ComponentSpec,

    /// The tenant's own email server.
    #[serde(default)]
    pub email: ComponentSpec,

    /// The tenant's own search index.
    #[serde(default)]
    pub search: ComponentSpec,
}

/// `spec.region`: a string restricted to the EU region list.
fn region_schema(_: &mut SchemaGenerator) -> Schema {
    let ids: Vec<&str> = regions::eu_region_ids().collect();
    json_schema!({
        "type": "string",
        "description": "Google Cloud region in an EU member state (lowercase region ID).",
        "enum": ids,
    })
}

/// The pattern the API server's own types use for a `resource.Quantity` string.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// `spec.server.resources`: requests and limits as maps of quantities, in the form
/// controller-gen emits for `corev1.ResourceRequirements` (int-or-string with the quantity
/// pattern), without the type's long prose and without DRA `claims`.
fn resources_schema(_: &mut SchemaGenerator) -> Schema {
    let quantity = serde_json::json!({
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": true,
    });
    let map = |what: &str| {
        serde_json::json!({
            "type": "object",
            "description": format!("{what} per resource name (cpu, memory, ephemeral-storage)."),
            "additionalProperties": quantity.clone(),
        })
    };
    json_schema!({
        "type": "object",
        "description": "Compute resources of each server container, as in a Pod's container spec.",
        "properties": {
            "limits": map("Maximum amounts"),
            "requests": map("Guaranteed amounts"),
        },
    })
}

/// The tenant's application server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Container image; the operator's configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Number of server Pods, 0 to 10.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,

    /// CPU and memory for each server container; the operator's defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    1
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: default_replicas(),
            resources: None,
        }
    }
}

/// What deleting a DealerTenant does to the data it holds.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep everything that holds customer data or the credentials to it.
    #[default]
    Retain,
    /// Erase the tenant everywhere.
    Delete,
}

/// An external component of the tenant's stack. Every component is on by default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Whether the tenant gets this component.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DealerTenantStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for humans: Provisioning, Ready, Paused, Failed, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The tenant's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// One glance at the enabled components, for `kubectl get -o wide`:
    /// `database=Ready storage=Provisioning`, or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<String>,

    /// External resources that hold this tenant's data, with the location each service
    /// reports and its processor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_resources: Vec<crate::providers::ExternalResource>,

    /// The processors that hold this tenant's data (from what is enabled and provisioned):
    /// the register entry of each, and which components it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<crate::processors::TenantProcessor>,

    /// `Ready` and one condition per component, by the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Short summary of a tenant's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Components are being created or are not ready yet.
    Provisioning,
    /// Every enabled component is ready.
    Ready,
    /// `spec.paused` is true; nothing is changed.
    Paused,
    /// A permanent error needs a person.
    Failed,
    /// The tenant is being deleted.
    Deleting,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl DealerTenant {
    /// The tenant's name (cluster-scoped, so unique).
    pub fn tenant_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}
