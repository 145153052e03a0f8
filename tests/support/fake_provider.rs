//! An in-memory provider for reconciler tests: it keeps resources by their deterministic
//! name, issues a credential per resource, and can fail any numbered call either before
//! performing it or after (the "crash after the create succeeded" case). It follows the
//! contract of `dealertenant_operator::providers::Provider`, not any one service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dealertenant_operator::providers::{
    Component, Erased, ExternalResource, Provider, ProviderError, Reconciled, Restorable, Rotating,
    SecretData, TenantInfo,
};

/// Where an injected failure strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call is not performed; the caller gets an error.
    Before,
    /// The call is performed; the caller gets an error instead of the answer.
    After,
}

/// Numbers every call of the fake API server and the fake providers, and fails one.
#[derive(Default)]
pub struct Injector {
    count: AtomicUsize,
    fail_at: Mutex<Option<(usize, Fault)>>,
}

impl Injector {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fail call number `n` (1-based) with `fault`.
    pub fn arm(&self, n: usize, fault: Fault) {
        *self.fail_at.lock().unwrap() = Some((n, fault));
    }

    /// Counts one call; says whether (and how) it fails.
    pub fn next(&self) -> Option<Fault> {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let mut armed = self.fail_at.lock().unwrap();
        match *armed {
            Some((at, fault)) if at == n => {
                *armed = None;
                Some(fault)
            }
            _ => None,
        }
    }

    pub fn calls(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Resources by name, each with its current credential.
pub struct FakeProvider {
    component: Component,
    location: String,
    pub resources: Mutex<BTreeMap<String, String>>,
    pub writes: AtomicUsize,
    /// Every create, in order, kept for good: a second create of one name is a duplicate
    /// that a test can see, even after the first was erased.
    pub creates: Mutex<Vec<String>>,
    /// When set, a delete reports the resource as kept restorable until this time (as GCS
    /// soft delete does).
    pub restorable_until: Mutex<Option<String>>,
    /// When set, the fake rotates as a service with several credentials per name does
    /// (Elasticsearch API keys): a reissue keeps the replaced credential working, listed
    /// in `still_valid` by ID and reported to retire, until `retire` revokes it.
    pub rotates: AtomicBool,
    /// Replaced credentials that still work: ID -> credential.
    pub still_valid: Mutex<BTreeMap<String, String>>,
    /// IDs revoked by `retire`, in order.
    pub retired: Mutex<Vec<String>>,
    injector: Arc<Injector>,
}

impl FakeProvider {
    pub fn new(component: Component, location: &str, injector: Arc<Injector>) -> Arc<Self> {
        Arc::new(Self {
            component,
            location: location.into(),
            resources: Mutex::new(BTreeMap::new()),
            writes: AtomicUsize::new(0),
            creates: Mutex::new(Vec::new()),
            restorable_until: Mutex::new(None),
            rotates: AtomicBool::new(false),
            still_valid: Mutex::new(BTreeMap::new()),
            retired: Mutex::new(Vec::new()),
            injector,
        })
    }

    fn name(&self, t: &TenantInfo) -> String {
        format!("{}-{}", self.component.key(), t.name)
    }

    /// The Secret key that carries the credential.
    /// The resource as the service reports it, held by the component's real processor.
    fn resource(&self, name: &str) -> ExternalResource {
        let processor = dealertenant_operator::providers::processor_of(
            self.component,
            &dealertenant_operator::config::OperatorConfig::default(),
        );
        ExternalResource::new("Fake", name, Some(self.location.clone()), processor)
    }

    pub fn credential_key(&self) -> String {
        format!("{}_CREDENTIAL", self.component.key().to_uppercase())
    }

    fn call<T>(&self, op: impl FnOnce() -> T) -> Result<T, ProviderError> {
        let unavailable = || ProviderError::Unavailable {
            service: "fake",
            message: "injected failure".into(),
        };
        match self.injector.next() {
            Some(Fault::Before) => Err(unavailable()),
            Some(Fault::After) => {
                op();
                Err(unavailable())
            }
            None => Ok(op()),
        }
    }

    fn issue(&self, name: &str) -> String {
        let credential = format!("cred-{}-{}", name, fastrand::u64(..));
        let before = self
            .resources
            .lock()
            .unwrap()
            .insert(name.to_string(), credential.clone());
        if before.is_none() {
            self.creates.lock().unwrap().push(name.to_string());
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        credential
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    fn component(&self) -> Component {
        self.component
    }

    async fn reconcile(
        &self,
        t: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Reconciled, ProviderError> {
        let name = self.name(t);
        let existing = self.call(|| self.resources.lock().unwrap().get(&name).cloned())?;
        let key = self.credential_key();
        let credential = match (existing, secret.and_then(|s| s.get(&key))) {
            (Some(current), Some(held)) if current == held => None,
            // Absent: create. Present but the Secret is missing or stale: reissue.
            _ => Some(self.call(|| self.issue(&name))?),
        };
        // As the real providers do: a location read back outside the EU is an error that
        // names the resource (layer 4 of residency), after which nothing more is written.
        if !dealertenant_operator::api::regions::is_eu_region(&self.location)
            && self.component != Component::Email
        {
            return Err(ProviderError::Residency {
                resource: format!("Fake {name}"),
                location: self.location.clone(),
            });
        }
        Ok(Reconciled {
            ready: true,
            reason: None,
            message: format!("{name} is ready"),
            secret: credential.map(|c| SecretData::new().with(&key, c)),
            resources: vec![self.resource(&name)],
            recheck_after: None,
        })
    }

    async fn reconcile_rotating(
        &self,
        t: &TenantInfo,
        secret: Option<&SecretData>,
    ) -> Result<Rotating, ProviderError> {
        if !self.rotates.load(Ordering::SeqCst) {
            return Ok(Rotating {
                reconciled: self.reconcile(t, secret).await?,
                retire: Vec::new(),
            });
        }
        let name = self.name(t);
        let before = self.resources.lock().unwrap().get(&name).cloned();
        let reconciled = self.reconcile(t, secret).await?;
        let mut still_valid = self.still_valid.lock().unwrap();
        if reconciled.secret.is_some()
            && let Some(old) = before
        {
            let id = format!(
                "{name}-{}",
                still_valid.len() + self.retired.lock().unwrap().len()
            );
            still_valid.insert(id, old);
        }
        Ok(Rotating {
            reconciled,
            retire: still_valid.keys().cloned().collect(),
        })
    }

    async fn retire(&self, _t: &TenantInfo, ids: &[String]) -> Result<(), ProviderError> {
        self.call(|| {
            let mut still_valid = self.still_valid.lock().unwrap();
            for id in ids {
                if still_valid.remove(id).is_some() {
                    self.retired.lock().unwrap().push(id.clone());
                }
            }
        })
    }

    async fn delete(&self, t: &TenantInfo) -> Result<Erased, ProviderError> {
        let name = self.name(t);
        let removed = self.call(|| self.resources.lock().unwrap().remove(&name))?;
        let until = self.restorable_until.lock().unwrap().clone();
        Ok(Erased {
            restorable: match (&removed, until) {
                (Some(_), Some(until)) => vec![Restorable {
                    what: format!("soft-deleted {name}"),
                    until: Some(until),
                }],
                _ => Vec::new(),
            },
            resources: removed
                .map(|_| vec![self.resource(&name)])
                .unwrap_or_default(),
        })
    }
}
