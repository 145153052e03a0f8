//! Pure parts of the storage provider: resource names, the bucket a tenant gets, drift
//! against it and the update that repairs it, the Secret's contents.

use std::collections::BTreeMap;

use google_cloud_storage::model::bucket::iam_config::UniformBucketLevelAccess;
use google_cloud_storage::model::bucket::{IamConfig, SoftDeletePolicy, Versioning};
use google_cloud_storage::model::{Bucket, CreateBucketRequest, UpdateBucketRequest};

use super::StorageConfig;
use crate::providers::{Restorable, SecretData, TenantInfo};

/// `<prefix>-<tenant>`: at most 22 + 1 + 40 = 63 characters, GCS's limit.
pub fn bucket_name(prefix: &str, tenant: &str) -> String {
    format!("{prefix}-{tenant}")
}

/// Label with the tenant's name.
pub const LABEL_TENANT: &str = "tenant";
pub use crate::providers::google::{LABEL_TENANT_UID, uid_label_value};
/// Label that marks buckets this operator manages.
pub use crate::providers::{LABEL_MANAGED_BY, MANAGED_BY};
/// `iam_config.public_access_prevention` value that forbids public access.
pub const ENFORCED: &str = "enforced";

/// Secret keys.
pub const KEY_BUCKET: &str = "STORAGE_BUCKET";
pub const KEY_LOCATION: &str = "STORAGE_LOCATION";
pub const KEY_PROJECT: &str = "STORAGE_PROJECT";

/// Field-mask paths of the settings the operator enforces.
pub const MASK_LABELS: &str = "labels";
pub const MASK_IAM: &str = "iam_config";
pub const MASK_SOFT_DELETE: &str = "soft_delete_policy";
pub const MASK_VERSIONING: &str = "versioning";

const DAY: i64 = 86_400;

/// gRPC resource name of a bucket: `projects/_/buckets/<name>` (buckets are global).
pub fn resource_name(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

/// `projects/<project>`.
pub fn project_resource(project: &str) -> String {
    format!("projects/{project}")
}

/// The short name of a bucket the service returned.
pub fn bucket_id(b: &Bucket) -> &str {
    if !b.bucket_id.is_empty() {
        &b.bucket_id
    } else {
        b.name.rsplit('/').next().unwrap_or_default()
    }
}

/// The labels the operator puts on a tenant's bucket: its name, ours, and (when known) the
/// tenant's UID.
pub fn desired_labels(tenant: &TenantInfo) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_TENANT.to_string(), tenant.name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    if !tenant.uid.is_empty() {
        l.insert(LABEL_TENANT_UID.to_string(), uid_label_value(&tenant.uid));
    }
    l
}

/// The tenant UID the bucket is bound to, if any (buckets made before the label existed
/// have none).
pub fn owner_of(b: &Bucket) -> Option<&str> {
    b.labels
        .get(LABEL_TENANT_UID)
        .map(String::as_str)
        .filter(|u| !u.is_empty())
}

/// The UID of another tenant the bucket is bound to: `None` when it is unbound (legacy) or
/// bound to `tenant`.
pub fn bound_elsewhere<'a>(b: &'a Bucket, tenant: &TenantInfo) -> Option<&'a str> {
    owner_of(b).filter(|owner| *owner != uid_label_value(&tenant.uid))
}

/// Whether the bucket carries the tenant's label.
pub fn labelled_for(b: &Bucket, tenant: &TenantInfo) -> bool {
    b.labels.get(LABEL_TENANT) == Some(&tenant.name)
}

fn desired_iam() -> IamConfig {
    IamConfig::new()
        .set_uniform_bucket_level_access(UniformBucketLevelAccess::new().set_enabled(true))
        .set_public_access_prevention(ENFORCED)
}

fn desired_soft_delete(cfg: &StorageConfig) -> SoftDeletePolicy {
    SoftDeletePolicy::new().set_retention_duration(google_cloud_wkt::Duration::clamp(
        i64::from(cfg.soft_delete_days) * DAY,
        0,
    ))
}

/// The create request for `tenant`'s bucket. `parent` stays `projects/_` and the owning
/// project goes into `bucket.project`, as the v2 API requires.
pub fn create_request(cfg: &StorageConfig, tenant: &TenantInfo) -> CreateBucketRequest {
    let bucket = Bucket::new()
        .set_project(project_resource(&cfg.project))
        .set_location(tenant.region.clone())
        .set_labels(desired_labels(tenant))
        .set_iam_config(desired_iam())
        .set_soft_delete_policy(desired_soft_delete(cfg))
        .set_versioning(Versioning::new().set_enabled(cfg.versioning));
    CreateBucketRequest::new()
        .set_parent("projects/_")
        .set_bucket_id(bucket_name(&cfg.bucket_prefix, &tenant.name))
        .set_bucket(bucket)
}

/// Soft-delete retention the bucket reports, in seconds (absent = off).
pub fn soft_delete_seconds(b: &Bucket) -> i64 {
    b.soft_delete_policy
        .as_ref()
        .and_then(|p| p.retention_duration.as_ref())
        .map(|d| d.seconds())
        .unwrap_or(0)
}

/// The mask paths of the enforced settings that differ from what `tenant` should have.
/// Empty when the bucket is as it should be.
pub fn drift(cfg: &StorageConfig, tenant: &TenantInfo, b: &Bucket) -> Vec<&'static str> {
    let mut paths = Vec::new();
    if desired_labels(tenant)
        .iter()
        .any(|(k, v)| b.labels.get(k) != Some(v))
    {
        paths.push(MASK_LABELS);
    }
    let iam = b.iam_config.clone().unwrap_or_default();
    let ubla = iam
        .uniform_bucket_level_access
        .as_ref()
        .is_some_and(|u| u.enabled);
    if !ubla || !iam.public_access_prevention.eq_ignore_ascii_case(ENFORCED) {
        paths.push(MASK_IAM);
    }
    if soft_delete_seconds(b) != i64::from(cfg.soft_delete_days) * DAY {
        paths.push(MASK_SOFT_DELETE);
    }
    let versioning = b.versioning.as_ref().is_some_and(|v| v.enabled);
    if versioning != cfg.versioning {
        paths.push(MASK_VERSIONING);
    }
    paths
}

/// The update that sets the drifted `paths` back. Labels are merged: labels others put on
/// the bucket stay.
pub fn update_request(
    cfg: &StorageConfig,
    tenant: &TenantInfo,
    current: &Bucket,
    paths: &[&'static str],
) -> UpdateBucketRequest {
    let mut bucket = Bucket::new().set_name(resource_name(bucket_id(current)));
    for path in paths {
        bucket = match *path {
            MASK_LABELS => {
                let mut labels: BTreeMap<String, String> = current
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                labels.extend(desired_labels(tenant));
                bucket.set_labels(labels)
            }
            MASK_IAM => bucket.set_iam_config(desired_iam()),
            MASK_SOFT_DELETE => bucket.set_soft_delete_policy(desired_soft_delete(cfg)),
            MASK_VERSIONING => bucket.set_versioning(Versioning::new().set_enabled(cfg.versioning)),
            _ => bucket,
        };
    }
    UpdateBucketRequest::new()
        .set_bucket(bucket)
        .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(paths.iter().copied()))
}

/// Pure: what deleting `b` at `deleted_at` leaves restorable: with soft delete on, the
/// soft-deleted bucket, until `deleted_at` plus the bucket's retention
/// (<https://cloud.google.com/storage/docs/soft-delete>). `None` with soft delete off.
pub fn soft_deleted(b: &Bucket, deleted_at: jiff::Timestamp) -> Option<Restorable> {
    let seconds = soft_delete_seconds(b);
    if seconds <= 0 {
        return None;
    }
    let until =
        jiff::Timestamp::from_second(deleted_at.as_second().saturating_add(seconds)).ok()?;
    Some(Restorable {
        what: format!("soft-deleted bucket {}", bucket_id(b)),
        until: Some(until.to_string()),
    })
}

/// The component Secret: where the tenant's bucket is. No credentials: the tenant server
/// reaches the bucket through its own workload identity.
pub fn secret_data(cfg: &StorageConfig, tenant: &TenantInfo) -> SecretData {
    SecretData::new()
        .with(KEY_BUCKET, bucket_name(&cfg.bucket_prefix, &tenant.name))
        .with(KEY_LOCATION, tenant.region.to_ascii_lowercase())
        .with(KEY_PROJECT, cfg.project.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantInfo {
        TenantInfo {
            name: "acme".into(),
            uid: "u-1".into(),
            region: "europe-west3".into(),
            namespace: "tenant-acme".into(),
            annotations: Default::default(),
        }
    }

    fn cfg() -> StorageConfig {
        StorageConfig {
            project: "dd-test".into(),
            bucket_prefix: "dd-test".into(),
            ..StorageConfig::default()
        }
    }

    /// What GCS answers for a bucket created from `create_request`.
    fn as_created(req: &CreateBucketRequest) -> Bucket {
        let mut b = req.bucket.clone().unwrap();
        b.name = resource_name(&req.bucket_id);
        b.bucket_id = req.bucket_id.clone();
        b.project = "projects/123456789012".into();
        b.location = b.location.to_ascii_uppercase();
        b
    }

    #[test]
    fn names() {
        assert_eq!(resource_name("dd-acme"), "projects/_/buckets/dd-acme");
        assert_eq!(project_resource("p"), "projects/p");
        let b = Bucket::new().set_name("projects/_/buckets/dd-acme");
        assert_eq!(bucket_id(&b), "dd-acme");
        let b = Bucket::new().set_bucket_id("x");
        assert_eq!(bucket_id(&b), "x");
    }

    #[test]
    fn create_request_carries_every_setting() {
        let req = create_request(&cfg(), &tenant());
        assert_eq!(req.parent, "projects/_");
        assert_eq!(req.bucket_id, "dd-test-acme");
        let b = req.bucket.as_ref().unwrap();
        assert!(b.name.is_empty(), "bucket.name must stay empty on create");
        assert_eq!(b.project, "projects/dd-test");
        assert_eq!(b.location, "europe-west3");
        assert_eq!(b.labels.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            b.labels.get("managed-by").map(String::as_str),
            Some("dealertenant-operator")
        );
        let iam = b.iam_config.as_ref().unwrap();
        assert!(iam.uniform_bucket_level_access.as_ref().unwrap().enabled);
        assert_eq!(iam.public_access_prevention, "enforced");
        assert_eq!(soft_delete_seconds(b), 7 * 86_400);
        assert!(!b.versioning.as_ref().unwrap().enabled);

        let c = StorageConfig {
            soft_delete_days: 0,
            versioning: true,
            ..cfg()
        };
        let b = create_request(&c, &tenant()).bucket.unwrap();
        assert_eq!(soft_delete_seconds(&b), 0);
        assert!(b.versioning.unwrap().enabled);
    }

    #[test]
    fn a_fresh_bucket_has_no_drift() {
        let b = as_created(&create_request(&cfg(), &tenant()));
        assert!(drift(&cfg(), &tenant(), &b).is_empty());
        // An absent soft-delete policy means off.
        let c = StorageConfig {
            soft_delete_days: 0,
            ..cfg()
        };
        let mut b = as_created(&create_request(&c, &tenant()));
        b.soft_delete_policy = None;
        assert!(drift(&c, &tenant(), &b).is_empty());
    }

    #[test]
    fn each_setting_drifts_alone() {
        let fresh = as_created(&create_request(&cfg(), &tenant()));

        let mut b = fresh.clone();
        b.labels.remove("managed-by");
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_LABELS]);
        let mut b = fresh.clone();
        b.labels.insert("tenant".into(), "other".into());
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_LABELS]);
        let mut b = fresh.clone();
        b.labels.insert("team".into(), "sales".into());
        assert!(
            drift(&cfg(), &tenant(), &b).is_empty(),
            "extra labels are fine"
        );

        let mut b = fresh.clone();
        b.iam_config = Some(desired_iam().set_public_access_prevention("inherited"));
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_IAM]);
        let mut b = fresh.clone();
        b.iam_config =
            Some(desired_iam().set_uniform_bucket_level_access(
                UniformBucketLevelAccess::new().set_enabled(false),
            ));
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_IAM]);
        let mut b = fresh.clone();
        b.iam_config = None;
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_IAM]);

        let mut b = fresh.clone();
        b.soft_delete_policy = Some(
            SoftDeletePolicy::new()
                .set_retention_duration(google_cloud_wkt::Duration::clamp(30 * DAY, 0)),
        );
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_SOFT_DELETE]);

        let mut b = fresh.clone();
        b.versioning = Some(Versioning::new().set_enabled(true));
        assert_eq!(drift(&cfg(), &tenant(), &b), [MASK_VERSIONING]);
    }

    #[test]
    fn update_sets_only_the_masked_fields_and_keeps_foreign_labels() {
        let mut current = as_created(&create_request(&cfg(), &tenant()));
        current.labels.insert("team".into(), "sales".into());
        current.labels.remove("managed-by");
        current.versioning = Some(Versioning::new().set_enabled(true));
        let paths = drift(&cfg(), &tenant(), &current);
        assert_eq!(paths, [MASK_LABELS, MASK_VERSIONING]);
        let req = update_request(&cfg(), &tenant(), &current, &paths);
        assert_eq!(
            req.update_mask.as_ref().unwrap().paths,
            ["labels", "versioning"]
        );
        let b = req.bucket.unwrap();
        assert_eq!(b.name, "projects/_/buckets/dd-test-acme");
        assert_eq!(b.labels.len(), 4);
        assert_eq!(b.labels["team"], "sales");
        assert_eq!(b.labels["managed-by"], "dealertenant-operator");
        assert!(!b.versioning.unwrap().enabled);
        assert!(b.iam_config.is_none(), "unmasked fields are not sent");
        assert!(b.soft_delete_policy.is_none());
    }

    #[test]
    fn secret_has_the_three_keys() {
        let t = TenantInfo {
            region: "EUROPE-WEST3".into(),
            ..tenant()
        };
        let s = secret_data(&cfg(), &t);
        assert_eq!(s.get(KEY_BUCKET), Some("dd-test-acme"));
        assert_eq!(s.get(KEY_LOCATION), Some("europe-west3"));
        assert_eq!(s.get(KEY_PROJECT), Some("dd-test"));
        assert_eq!(s.keys().count(), 3);
    }

    #[test]
    fn buckets_are_bound_to_the_tenant_uid() {
        let uid = "5a70ad95-0c70-4dba-b433-bea48aafe77e";
        let b = as_created(&create_request(&cfg(), &tenant()));
        assert_eq!(b.labels[LABEL_TENANT_UID], "u-1");
        assert_eq!(owner_of(&b), Some("u-1"));
        assert_eq!(bound_elsewhere(&b, &tenant()), None);
        let other = TenantInfo {
            uid: uid.into(),
            ..tenant()
        };
        assert_eq!(bound_elsewhere(&b, &other), Some("u-1"));
        // Adopted: a label drift; the update carries the adopter's UID.
        assert_eq!(drift(&cfg(), &other, &b), [MASK_LABELS]);
        let req = update_request(&cfg(), &other, &b, &[MASK_LABELS]);
        assert_eq!(req.bucket.unwrap().labels[LABEL_TENANT_UID], uid);
        // Made before the label: bound to nobody, the label is added.
        let mut legacy = b.clone();
        legacy.labels.remove(LABEL_TENANT_UID);
        assert_eq!(bound_elsewhere(&legacy, &other), None);
        assert_eq!(drift(&cfg(), &tenant(), &legacy), [MASK_LABELS]);
        // Offline (no UID): no label.
        let offline = TenantInfo {
            uid: String::new(),
            ..tenant()
        };
        assert!(!desired_labels(&offline).contains_key(LABEL_TENANT_UID));
    }

    #[test]
    fn labels() {
        let b = as_created(&create_request(&cfg(), &tenant()));
        assert!(labelled_for(&b, &tenant()));
        let other = TenantInfo {
            name: "other".into(),
            ..tenant()
        };
        assert!(!labelled_for(&b, &other));
    }

    #[test]
    fn a_soft_deleted_bucket_is_restorable_for_its_retention() {
        let req = create_request(&cfg(), &tenant());
        let b = as_created(&req);
        let at: jiff::Timestamp = "2026-12-02T10:00:00.5Z".parse().unwrap();
        let r = soft_deleted(&b, at).unwrap();
        assert_eq!(r.what, "soft-deleted bucket dd-test-acme");
        assert_eq!(r.until.as_deref(), Some("2026-12-09T10:00:00Z"));
        let mut off = b.clone();
        off.soft_delete_policy = None;
        assert_eq!(soft_deleted(&off, at), None);
    }
}
