//! In-process double of Cloud Storage's gRPC API (google.storage.v2), plugged in through the
//! SDK's own seam: it implements `google_cloud_storage::stub::StorageControl`, and tests
//! build the client with `StorageControl::from_stub`. No emulator speaks the v2 bucket API,
//! so this double does not listen on a port; nothing leaves the process.
//!
//! Behaviour follows the published documentation:
//! - Bucket API reference, google.storage.v2 (storage.proto, mirrored in the crate's
//!   `model` docs): `CreateBucket` takes `parent` empty or `projects/_`, the owner in
//!   `bucket.project`, the name in `bucket_id`, and refuses a populated `bucket.name`;
//!   buckets report `project` by number (`projects/123...`); `UpdateBucket` needs a field
//!   mask; `location` is immutable.
//! - Bucket names (<https://cloud.google.com/storage/docs/buckets#naming>): 3-63 lowercase
//!   letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit, not
//!   starting with `goog`; the namespace is global, so a taken name answers ALREADY_EXISTS
//!   (HTTP 409, <https://cloud.google.com/storage/docs/json_api/v1/status-codes#409-conflict>)
//!   with "Your previous request to create the named bucket succeeded and you already own
//!   it." for the caller's own bucket and "The requested bucket name is not available..."
//!   for someone else's.
//! - Locations (<https://cloud.google.com/storage/docs/locations>): the service echoes the
//!   location upper-case (`europe-west3` is reported as `EUROPE-WEST3`), default `US`.
//! - Missing buckets and objects: NOT_FOUND (404) "The specified bucket does not exist." /
//!   "No such object: ..."; a bucket of another project the caller may not read:
//!   PERMISSION_DENIED (403) "... does not have storage.buckets.get access to the Google
//!   Cloud Storage bucket. Permission 'storage.buckets.get' denied on resource (or it may
//!   not exist)."
//! - Deleting buckets (<https://cloud.google.com/storage/docs/deleting-buckets>): a bucket
//!   holding live or noncurrent objects is refused with FAILED_PRECONDITION (HTTP 409 "The
//!   bucket you tried to delete is not empty."). Cloud Storage also refuses bucket deletes
//!   with FAILED_PRECONDITION for reasons other than contents (the retry-strategy page,
//!   <https://cloud.google.com/storage/docs/retry-strategy>, lists FAILED_PRECONDITION /
//!   412 among the errors not to retry); [`FakeGcs::block_delete`] stands for any of those,
//!   with the text a test gives.
//! - Object versioning (<https://cloud.google.com/storage/docs/object-versioning>):
//!   deleting the live version of an object in a versioned bucket keeps it as a noncurrent
//!   version; deleting a given generation removes it.
//! - Soft delete (<https://cloud.google.com/storage/docs/soft-delete>): default retention
//!   7 days; a retention must be 0 (off) or between 7 and 90 days, otherwise
//!   INVALID_ARGUMENT.
//!
//! It records every call (method, target, detail, virtual time) and can fail the k-th call
//! either before performing it (UNAVAILABLE, nothing happened) or after performing it (the
//! answer is lost: DEADLINE_EXCEEDED, as when the connection drops).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use google_cloud_gax::error::rpc::{Code, Status};
use google_cloud_gax::options::RequestOptions;
use google_cloud_gax::response::Response;
use google_cloud_storage::Error;
use google_cloud_storage::client::StorageControl;
use google_cloud_storage::model::bucket::iam_config::UniformBucketLevelAccess;
use google_cloud_storage::model::bucket::{IamConfig, SoftDeletePolicy};
use google_cloud_storage::model::{
    Bucket, CreateBucketRequest, DeleteBucketRequest, DeleteObjectRequest, GetBucketRequest,
    ListBucketsRequest, ListBucketsResponse, ListObjectsRequest, ListObjectsResponse, Object,
    UpdateBucketRequest,
};
use tokio::time::Instant;

/// The caller's project, by ID (what the operator is configured with) and by number (what
/// buckets report).
pub const PROJECT_ID: &str = "dd-test";
pub const PROJECT_NUMBER: &str = "projects/123456789012";
/// Somebody else's project.
pub const OTHER_PROJECT: &str = "projects/999999999999";

const DAY: i64 = 86_400;

/// Methods that change something.
pub const WRITES: &[&str] = &[
    "create_bucket",
    "update_bucket",
    "delete_bucket",
    "delete_object",
];

/// How an injected failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is not performed; the client gets UNAVAILABLE.
    Before,
    /// The request is performed; the client gets DEADLINE_EXCEEDED instead of the answer.
    After,
}

/// One call the double received.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    /// Bucket (short name), or the parent for listings.
    pub target: String,
    /// Method specific: the update mask, the object and generation, ...
    pub detail: String,
    /// Virtual time of arrival (tokio's clock, so paused time works).
    pub at: Instant,
    /// Whether the service performed it (false when a fault hit before).
    pub performed: bool,
    /// Whether the client got an error.
    pub failed: bool,
}

#[derive(Clone, Debug)]
struct StoredObject {
    name: String,
    generation: i64,
    live: bool,
}

#[derive(Clone, Debug)]
struct Stored {
    bucket: Bucket,
    /// False for another project's bucket the caller may not read.
    readable: bool,
    objects: Vec<StoredObject>,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, Stored>,
    calls: Vec<Call>,
    count: usize,
    fault: Option<(usize, Fault)>,
    fail_all: Option<(Code, String)>,
    /// Buckets whose delete is refused with FAILED_PRECONDITION and this text (not the
    /// not-empty one).
    delete_blocked: BTreeMap<String, String>,
    report_location: Option<String>,
    hide_next_get: BTreeSet<String>,
    late_objects: usize,
    next_generation: i64,
}

/// The double. Clones share state: keep one to inspect, give one to the client.
#[derive(Clone, Default)]
pub struct FakeGcs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FakeGcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeGcs")
    }
}

fn err(code: Code, message: impl Into<String>) -> Error {
    Error::service(Status::default().set_code(code).set_message(message))
}

fn not_found_bucket() -> Error {
    err(Code::NotFound, "The specified bucket does not exist.")
}

fn denied(id: &str) -> Error {
    err(
        Code::PermissionDenied,
        format!(
            "operator@dd-test.iam.gserviceaccount.com does not have storage.buckets.get access to the Google Cloud Storage bucket {id}. Permission 'storage.buckets.get' denied on resource (or it may not exist)."
        ),
    )
}

/// `projects/_/buckets/<id>` -> `<id>`.
fn parse_bucket(name: &str) -> Result<String, Error> {
    name.strip_prefix("projects/_/buckets/")
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            err(
                Code::InvalidArgument,
                format!("Invalid bucket resource name: {name}"),
            )
        })
}

fn valid_bucket_name(id: &str) -> bool {
    let b = id.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !id.starts_with("goog")
}

fn retention_seconds(p: &Option<SoftDeletePolicy>) -> i64 {
    p.as_ref()
        .and_then(|p| p.retention_duration.as_ref())
        .map(|d| d.seconds())
        .unwrap_or(0)
}

fn check_soft_delete(p: &Option<SoftDeletePolicy>) -> Result<(), Error> {
    let s = retention_seconds(p);
    if s == 0 || (7 * DAY..=90 * DAY).contains(&s) {
        Ok(())
    } else {
        Err(err(
            Code::InvalidArgument,
            "The soft delete retention duration must be 0 or between 7 and 90 days.",
        ))
    }
}

fn normalise_iam(iam: Option<IamConfig>) -> IamConfig {
    let mut iam = iam.unwrap_or_default();
    if iam.public_access_prevention.is_empty() {
        iam.public_access_prevention = "inherited".into();
    }
    if iam.uniform_bucket_level_access.is_none() {
        iam.uniform_bucket_level_access = Some(UniformBucketLevelAccess::new().set_enabled(false));
    }
    iam
}

impl FakeGcs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client on this double, through the SDK's stub seam.
    pub fn client(&self) -> StorageControl {
        StorageControl::from_stub(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- inspection -------------------------------------------------------------------

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls that change something and were performed or attempted.
    pub fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| WRITES.contains(&c.method))
            .collect()
    }

    pub fn methods(&self) -> Vec<&'static str> {
        self.calls().iter().map(|c| c.method).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Every bucket the double holds, any project.
    pub fn bucket_names(&self) -> Vec<String> {
        self.lock().buckets.keys().cloned().collect()
    }

    pub fn bucket(&self, id: &str) -> Option<Bucket> {
        self.lock().buckets.get(id).map(|s| s.bucket.clone())
    }

    /// `(name, generation, live)` of every object version in the bucket.
    pub fn objects(&self, id: &str) -> Vec<(String, i64, bool)> {
        self.lock()
            .buckets
            .get(id)
            .map(|s| {
                s.objects
                    .iter()
                    .map(|o| (o.name.clone(), o.generation, o.live))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- arrangement ------------------------------------------------------------------

    /// Fails the `k`-th call from now (1 = the next one).
    pub fn fail_nth(&self, k: usize, fault: Fault) {
        let mut s = self.lock();
        let at = s.count + k;
        s.fault = Some((at, fault));
    }

    /// Every call fails with `code` until [`FakeGcs::heal`].
    pub fn fail_all(&self, code: Code, message: &str) {
        self.lock().fail_all = Some((code, message.to_string()));
    }

    pub fn heal(&self) {
        let mut s = self.lock();
        s.fail_all = None;
        s.fault = None;
    }

    /// Buckets created from now on report `location` instead of the requested one.
    pub fn report_location(&self, location: &str) {
        self.lock().report_location = Some(location.to_string());
    }

    /// The next get of `id` answers NOT_FOUND although the bucket exists (a create by a
    /// concurrent pass that lands between our get and our create).
    pub fn hide_next_get(&self, id: &str) {
        self.lock().hide_next_get.insert(id.to_string());
    }

    /// The next `n` bucket deletes find a fresh object written just before (a client still
    /// writing while the bucket is deleted).
    pub fn late_objects(&self, n: usize) {
        self.lock().late_objects = n;
    }

    /// Refuses every delete of bucket `id` with FAILED_PRECONDITION and `message` (a
    /// refusal that is not about the bucket's contents); `None` lifts it.
    pub fn block_delete(&self, id: &str, message: Option<&str>) {
        let mut s = self.lock();
        match message {
            Some(m) => s.delete_blocked.insert(id.to_string(), m.to_string()),
            None => s.delete_blocked.remove(id),
        };
    }

    /// Puts a bucket of another project under `id`. `readable` is whether the caller may
    /// read its metadata.
    pub fn insert_foreign(&self, id: &str, readable: bool, labels: &[(&str, &str)]) {
        let bucket = Bucket::new()
            .set_name(format!("projects/_/buckets/{id}"))
            .set_bucket_id(id)
            .set_project(OTHER_PROJECT)
            .set_location("EUROPE-WEST3")
            .set_labels(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.lock().buckets.insert(
            id.to_string(),
            Stored {
                bucket,
                readable,
                objects: Vec::new(),
            },
        );
    }

    /// Changes a stored bucket behind the operator's back (drift).
    pub fn mutate(&self, id: &str, f: impl FnOnce(&mut Bucket)) {
        let mut s = self.lock();
        let stored = s.buckets.get_mut(id).expect("no such bucket");
        f(&mut stored.bucket);
        stored.bucket.metageneration += 1;
    }

    /// Writes an object as a client would (a new generation; the previous live version
    /// becomes noncurrent in a versioned bucket, or is replaced).
    pub fn put_object(&self, id: &str, object: &str) {
        let mut s = self.lock();
        s.next_generation += 1;
        let generation = 1_700_000_000_000_000 + s.next_generation;
        let stored = s.buckets.get_mut(id).expect("no such bucket");
        let versioned = stored.bucket.versioning.as_ref().is_some_and(|v| v.enabled);
        if versioned {
            for o in stored.objects.iter_mut().filter(|o| o.name == object) {
                o.live = false;
            }
        } else {
            stored.objects.retain(|o| o.name != object);
        }
        stored.objects.push(StoredObject {
            name: object.to_string(),
            generation,
            live: true,
        });
    }

    // ----- the call machinery ---------------------------------------------------------

    fn call<T>(
        &self,
        method: &'static str,
        target: &str,
        detail: String,
        perform: impl FnOnce(&mut State) -> Result<T, Error>,
    ) -> google_cloud_gax::Result<Response<T>> {
        let mut s = self.lock();
        s.count += 1;
        let n = s.count;
        let mut record = Call {
            method,
            target: target.to_string(),
            detail,
            at: Instant::now(),
            performed: false,
            failed: true,
        };
        if let Some((code, message)) = s.fail_all.clone() {
            s.calls.push(record);
            return Err(err(code, message));
        }
        let fault = match s.fault {
            Some((k, f)) if k == n => {
                s.fault = None;
                Some(f)
            }
            _ => None,
        };
        if fault == Some(Fault::Before) {
            s.calls.push(record);
            return Err(err(
                Code::Unavailable,
                "injected: the service is unavailable",
            ));
        }
        let result = perform(&mut s);
        record.performed = true;
        record.failed = result.is_err() || fault.is_some();
        s.calls.push(record);
        if fault == Some(Fault::After) {
            return Err(Error::timeout("injected: the answer was lost"));
        }
        result.map(Response::from)
    }
}

impl google_cloud_storage::stub::StorageControl for FakeGcs {
    async fn get_bucket(
        &self,
        req: GetBucketRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<Bucket>> {
        let id = parse_bucket(&req.name)?;
        self.call("get_bucket", &id.clone(), String::new(), move |s| {
            if s.hide_next_get.remove(&id) {
                return Err(not_found_bucket());
            }
            match s.buckets.get(&id) {
                None => Err(not_found_bucket()),
                Some(b) if !b.readable => Err(denied(&id)),
                Some(b) => Ok(b.bucket.clone()),
            }
        })
    }

    async fn create_bucket(
        &self,
        req: CreateBucketRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<Bucket>> {
        let id = req.bucket_id.clone();
        self.call("create_bucket", &id.clone(), String::new(), move |s| {
            if !(req.parent.is_empty() || req.parent == "projects/_") {
                return Err(err(
                    Code::InvalidArgument,
                    "parent must be empty or projects/_; put the project in bucket.project",
                ));
            }
            if !valid_bucket_name(&id) {
                return Err(err(Code::InvalidArgument, format!("Invalid bucket name: '{id}'")));
            }
            let asked = req.bucket.clone().unwrap_or_default();
            if !asked.name.is_empty() {
                return Err(err(
                    Code::InvalidArgument,
                    "bucket.name must be empty; the name goes in bucket_id",
                ));
            }
            if asked.project != format!("projects/{PROJECT_ID}") && asked.project != PROJECT_NUMBER
            {
                return Err(err(
                    Code::PermissionDenied,
                    "The caller does not have storage.buckets.create access to the project.",
                ));
            }
            check_soft_delete(&asked.soft_delete_policy)?;
            if let Some(existing) = s.buckets.get(&id) {
                let message = if existing.bucket.project == PROJECT_NUMBER {
                    "Your previous request to create the named bucket succeeded and you already own it."
                } else {
                    "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again."
                };
                return Err(err(Code::AlreadyExists, message));
            }
            let requested = if asked.location.is_empty() {
                "US".to_string()
            } else {
                asked.location.to_ascii_uppercase()
            };
            let location = s.report_location.clone().unwrap_or(requested);
            let mut bucket = asked;
            bucket.name = format!("projects/_/buckets/{id}");
            bucket.bucket_id = id.clone();
            bucket.project = PROJECT_NUMBER.into();
            bucket.location = location;
            bucket.location_type = "region".into();
            bucket.storage_class = "STANDARD".into();
            bucket.metageneration = 1;
            bucket.iam_config = Some(normalise_iam(bucket.iam_config.take()));
            if bucket.soft_delete_policy.is_none() {
                bucket.soft_delete_policy = Some(SoftDeletePolicy::new().set_retention_duration(
                    google_cloud_wkt::Duration::clamp(7 * DAY, 0),
                ));
            }
            s.buckets.insert(
                id,
                Stored {
                    bucket: bucket.clone(),
                    readable: true,
                    objects: Vec::new(),
                },
            );
            Ok(bucket)
        })
    }

    async fn update_bucket(
        &self,
        req: UpdateBucketRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<Bucket>> {
        let patch = req.bucket.clone().unwrap_or_default();
        let id = parse_bucket(&patch.name)?;
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        self.call("update_bucket", &id.clone(), paths.join(","), move |s| {
            if paths.is_empty() {
                return Err(err(
                    Code::InvalidArgument,
                    "update_mask: not specifying any fields is an error",
                ));
            }
            let stored = match s.buckets.get_mut(&id) {
                None => return Err(not_found_bucket()),
                Some(b) if !b.readable => return Err(denied(&id)),
                Some(b) => b,
            };
            let mut next = stored.bucket.clone();
            for path in &paths {
                match path.as_str() {
                    "labels" => next.labels = patch.labels.clone(),
                    "iam_config" => next.iam_config = Some(normalise_iam(patch.iam_config.clone())),
                    "soft_delete_policy" => {
                        check_soft_delete(&patch.soft_delete_policy)?;
                        next.soft_delete_policy = patch.soft_delete_policy.clone();
                    }
                    "versioning" => next.versioning = patch.versioning.clone(),
                    "location" => {
                        return Err(err(Code::InvalidArgument, "location is immutable"));
                    }
                    other => {
                        return Err(err(
                            Code::InvalidArgument,
                            format!("unsupported update_mask path {other}"),
                        ));
                    }
                }
            }
            next.metageneration += 1;
            stored.bucket = next.clone();
            Ok(next)
        })
    }

    async fn delete_bucket(
        &self,
        req: DeleteBucketRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<()>> {
        let id = parse_bucket(&req.name)?;
        self.call("delete_bucket", &id.clone(), String::new(), move |s| {
            let late = s.late_objects > 0;
            if late {
                s.late_objects -= 1;
                s.next_generation += 1;
            }
            let generation = 1_700_000_000_000_000 + s.next_generation;
            match s.buckets.get_mut(&id) {
                None => return Err(not_found_bucket()),
                Some(b) if !b.readable => return Err(denied(&id)),
                Some(b) => {
                    if late {
                        b.objects.push(StoredObject {
                            name: format!("late-{generation}"),
                            generation,
                            live: true,
                        });
                    }
                    if !b.objects.is_empty() {
                        return Err(err(
                            Code::FailedPrecondition,
                            "The bucket you tried to delete is not empty.",
                        ));
                    }
                    if let Some(why) = s.delete_blocked.get(&id) {
                        return Err(err(Code::FailedPrecondition, why.clone()));
                    }
                }
            }
            s.buckets.remove(&id);
            Ok(())
        })
    }

    async fn list_buckets(
        &self,
        req: ListBucketsRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<ListBucketsResponse>> {
        let parent = req.parent.clone();
        self.call("list_buckets", &parent, req.prefix.clone(), move |s| {
            if req.parent != format!("projects/{PROJECT_ID}") && req.parent != PROJECT_NUMBER {
                return Err(err(
                    Code::PermissionDenied,
                    "The caller does not have storage.buckets.list access to the project.",
                ));
            }
            let all: Vec<Bucket> = s
                .buckets
                .values()
                .filter(|b| b.bucket.project == PROJECT_NUMBER)
                .filter(|b| b.bucket.bucket_id.starts_with(&req.prefix))
                .map(|b| b.bucket.clone())
                .collect();
            let size = if req.page_size > 0 {
                req.page_size.min(1000) as usize
            } else {
                1000
            };
            let start: usize = req.page_token.parse().unwrap_or(0);
            let end = (start + size).min(all.len());
            let next = if end < all.len() {
                end.to_string()
            } else {
                String::new()
            };
            Ok(ListBucketsResponse::new()
                .set_buckets(all[start.min(end)..end].to_vec())
                .set_next_page_token(next))
        })
    }

    async fn list_objects(
        &self,
        req: ListObjectsRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<ListObjectsResponse>> {
        let id = parse_bucket(&req.parent)?;
        let detail = format!("versions={}", req.versions);
        self.call("list_objects", &id.clone(), detail, move |s| {
            let stored = match s.buckets.get(&id) {
                None => return Err(not_found_bucket()),
                Some(b) if !b.readable => return Err(denied(&id)),
                Some(b) => b,
            };
            let mut all: Vec<&StoredObject> = stored
                .objects
                .iter()
                .filter(|o| req.versions || o.live)
                .collect();
            all.sort_by(|a, b| (&a.name, a.generation).cmp(&(&b.name, b.generation)));
            let size = if req.page_size > 0 {
                req.page_size.min(1000) as usize
            } else {
                1000
            };
            let start: usize = req.page_token.parse().unwrap_or(0);
            let end = (start + size).min(all.len());
            let next = if end < all.len() {
                end.to_string()
            } else {
                String::new()
            };
            let objects = all[start.min(end)..end].iter().map(|o| {
                Object::new()
                    .set_name(o.name.clone())
                    .set_bucket(format!("projects/_/buckets/{id}"))
                    .set_generation(o.generation)
            });
            Ok(ListObjectsResponse::new()
                .set_objects(objects)
                .set_next_page_token(next))
        })
    }

    async fn delete_object(
        &self,
        req: DeleteObjectRequest,
        _options: RequestOptions,
    ) -> google_cloud_gax::Result<Response<()>> {
        let id = parse_bucket(&req.bucket)?;
        let detail = format!("{}#{}", req.object, req.generation);
        self.call("delete_object", &id.clone(), detail, move |s| {
            let stored = match s.buckets.get_mut(&id) {
                None => return Err(not_found_bucket()),
                Some(b) if !b.readable => return Err(denied(&id)),
                Some(b) => b,
            };
            let no_such = || {
                err(
                    Code::NotFound,
                    format!("No such object: {id}/{}", req.object),
                )
            };
            if req.generation == 0 {
                let versioned = stored.bucket.versioning.as_ref().is_some_and(|v| v.enabled);
                let live = stored
                    .objects
                    .iter_mut()
                    .find(|o| o.name == req.object && o.live)
                    .ok_or_else(no_such)?;
                if versioned {
                    live.live = false;
                } else {
                    let generation = live.generation;
                    stored
                        .objects
                        .retain(|o| !(o.name == req.object && o.generation == generation));
                }
            } else {
                let before = stored.objects.len();
                stored
                    .objects
                    .retain(|o| !(o.name == req.object && o.generation == req.generation));
                if stored.objects.len() == before {
                    return Err(no_such());
                }
            }
            Ok(())
        })
    }
}
