//! The work queue's depth, tracked beside kube-runtime's controller, whose scheduler is not
//! exposed: how many tenants are due for a pass that has not started yet.
//!
//! A tenant is due from the moment a watch event triggers it (the tenant's own or an owned
//! object's, as the controller's mappers name it), or its requeue time (the `Action` its
//! last pass returned, or the error policy's backoff) has come; it stops being due when its
//! pass starts. Like the controller's scheduler, it counts each tenant once however many
//! triggers arrive, and an earlier time wins over a later requeue. A trigger while the
//! tenant's pass runs makes it due again (the controller runs it once more after that pass).
//! A trigger for a tenant that is gone is dropped when the controller reports it missing.
//!
//! Cheap at 10,000 tenants: a tenant is a 64-bit hash of its name, not a string; a scrape
//! reads a count and moves only the requeues whose time has come (O(log n) each).

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use crate::api::DealerTenant;

/// A tenant, by a hash of its name (tenants are cluster-scoped: the name is the key).
type Key = u64;

fn key(name: &str) -> Key {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

#[derive(Default, Debug)]
struct Inner {
    /// Tenants known to the queue: `None` when due, `Some(at)` when a requeue is scheduled
    /// for `at`. A tenant whose pass runs (and that was not triggered since) is absent.
    tenants: HashMap<Key, Option<Instant>>,
    /// The scheduled requeues, by time: exactly the `Some` entries of `tenants`.
    timers: BTreeSet<(Instant, Key)>,
    /// How many entries of `tenants` are `None`.
    due: usize,
}

impl Inner {
    /// Requeues whose time has come are due now.
    fn settle(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.tenants.get_mut(&k)
                && *slot == Some(at)
            {
                *slot = None;
                self.due += 1;
            }
        }
    }

    /// `k` is due (a watch event).
    fn trigger(&mut self, k: Key) {
        match self.tenants.insert(k, None) {
            None => self.due += 1,
            Some(None) => {}
            Some(Some(at)) => {
                self.timers.remove(&(at, k));
                self.due += 1;
            }
        }
    }

    /// `k`'s pass starts: no longer due, no requeue pending.
    fn start(&mut self, k: Key) {
        match self.tenants.remove(&k) {
            Some(None) => self.due -= 1,
            Some(Some(at)) => {
                self.timers.remove(&(at, k));
            }
            None => {}
        }
    }

    /// `k`'s pass asked to run again at `at`; an earlier trigger or requeue wins.
    fn requeue(&mut self, k: Key, at: Instant) {
        match self.tenants.get_mut(&k) {
            Some(None) => {}
            Some(Some(old)) if *old <= at => {}
            Some(Some(old)) => {
                self.timers.remove(&(*old, k));
                *old = at;
                self.timers.insert((at, k));
            }
            None => {
                self.tenants.insert(k, Some(at));
                self.timers.insert((at, k));
            }
        }
    }

    fn forget(&mut self, k: Key) {
        self.start(k);
    }
}

/// The tracker; `/metrics` shows its depth as `dealertenant_workqueue_depth`.
#[derive(Default, Debug)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tenants due for a pass that has not started.
    pub fn depth(&self) -> usize {
        self.depth_at(Instant::now())
    }

    fn depth_at(&self, now: Instant) -> usize {
        let mut q = self.lock();
        q.settle(now);
        q.due
    }

    /// Tenants with a requeue scheduled that is not due yet.
    pub fn scheduled(&self) -> usize {
        let mut q = self.lock();
        q.settle(Instant::now());
        q.timers.len()
    }

    /// A watch event triggered a pass of the tenant `name`.
    pub fn triggered(&self, name: &str) {
        self.lock().trigger(key(name));
    }

    /// The controller's mapper `mapper`, noting each tenant it triggers.
    pub fn via<K: 'static>(
        self: &Arc<Self>,
        mapper: fn(K) -> Option<ObjectRef<DealerTenant>>,
    ) -> impl Fn(K) -> Option<ObjectRef<DealerTenant>> + Send + Sync + 'static {
        let queue = self.clone();
        move |obj| {
            let tenant = mapper(obj);
            if let Some(t) = &tenant {
                queue.triggered(&t.name);
            }
            tenant
        }
    }

    /// The pass of `name` starts; [`Pass::finish`] with its result.
    pub fn start(self: &Arc<Self>, name: &str) -> Pass {
        let k = key(name);
        self.lock().start(k);
        Pass {
            queue: self.clone(),
            key: k,
        }
    }

    /// The error policy asked for `action` after a failed pass of `name`.
    pub fn requeued(&self, name: &str, action: &Action) {
        if let Some(after) = requeue_after(action) {
            self.lock().requeue(key(name), Instant::now() + after);
        }
    }

    /// The controller dropped `name`'s request (the tenant is gone).
    pub fn forget(&self, name: &str) {
        self.lock().forget(key(name));
    }

    /// Forgets everything (the controller stopped).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }
}

/// A pass that has started.
#[must_use]
pub struct Pass {
    queue: Arc<WorkQueue>,
    key: Key,
}

impl Pass {
    /// The pass ended with `result`: a returned `Action` that requeues schedules the tenant
    /// (a failure is the error policy's, [`WorkQueue::requeued`]).
    pub fn finish<E>(self, result: &Result<Action, E>) {
        if let Ok(action) = result
            && let Some(after) = requeue_after(action)
        {
            self.queue.lock().requeue(self.key, Instant::now() + after);
        }
    }
}

/// When `action` asks for the next pass. kube-runtime keeps the field private; its `Debug`
/// form (`Action { requeue_after: Some(300s) }`) says it (a test checks that this still
/// parses).
pub fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    parse_duration_debug(inner)
}

/// Parses `Duration`'s `Debug` form: `300s`, `1.5s`, `250ms`, `10µs`, `7ns`.
fn parse_duration_debug(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// The depth as a gauge, computed when scraped.
#[derive(Debug, Clone)]
pub struct Depth(pub Arc<WorkQueue>);

impl EncodeMetric for Depth {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.depth() as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Inner {
        Inner::default()
    }

    #[test]
    fn triggers_count_once_per_tenant_until_the_pass_starts() {
        let mut q = queue();
        let (a, b) = (key("acme"), key("bolt"));
        q.trigger(a);
        q.trigger(a);
        q.trigger(b);
        assert_eq!(q.due, 2);
        q.start(a);
        assert_eq!(q.due, 1);
        // A trigger while a's pass runs: due again.
        q.trigger(a);
        assert_eq!(q.due, 2);
        q.start(a);
        q.start(b);
        assert_eq!(q.due, 0);
        assert!(q.tenants.is_empty() && q.timers.is_empty());
    }

    #[test]
    fn a_requeue_is_due_when_its_time_comes() {
        let mut q = queue();
        let t0 = Instant::now();
        let a = key("acme");
        q.trigger(a);
        q.start(a);
        q.requeue(a, t0 + Duration::from_secs(300));
        q.settle(t0 + Duration::from_secs(299));
        assert_eq!(q.due, 0);
        q.settle(t0 + Duration::from_secs(300));
        assert_eq!(q.due, 1);
        assert!(q.timers.is_empty());
        q.start(a);
        assert_eq!(q.due, 0);
    }

    #[test]
    fn the_earlier_time_wins() {
        let mut q = queue();
        let t0 = Instant::now();
        let a = key("acme");
        q.requeue(a, t0 + Duration::from_secs(300));
        // An earlier requeue replaces it; a later one does not.
        q.requeue(a, t0 + Duration::from_secs(5));
        q.requeue(a, t0 + Duration::from_secs(600));
        assert_eq!(q.timers.len(), 1);
        q.settle(t0 + Duration::from_secs(5));
        assert_eq!(q.due, 1);
        // Due already: a requeue does not postpone it.
        q.requeue(a, t0 + Duration::from_secs(900));
        assert_eq!((q.due, q.timers.len()), (1, 0));
        // A watch event before a scheduled requeue makes it due now, once.
        let b = key("bolt");
        q.requeue(b, t0 + Duration::from_secs(300));
        q.trigger(b);
        assert_eq!((q.due, q.timers.len()), (2, 0));
        q.settle(t0 + Duration::from_secs(1000));
        assert_eq!(q.due, 2);
    }

    #[test]
    fn a_gone_tenant_is_forgotten() {
        let mut q = queue();
        let a = key("acme");
        q.requeue(a, Instant::now() + Duration::from_secs(1));
        q.forget(a);
        q.trigger(key("bolt"));
        q.forget(key("bolt"));
        assert_eq!(q.due, 0);
        assert!(q.tenants.is_empty() && q.timers.is_empty());
    }

    /// 10,000 tenants: the first list triggers them all (each several times), the passes
    /// spread their resyncs over five minutes, and the depth follows the clock.
    #[test]
    fn ten_thousand_tenants() {
        let mut q = queue();
        let t0 = Instant::now();
        let keys: Vec<Key> = (0..10_000).map(|i| key(&format!("tenant-{i}"))).collect();
        for _ in 0..3 {
            keys.iter().for_each(|k| q.trigger(*k));
        }
        assert_eq!(q.due, 10_000);
        for (i, k) in keys.iter().enumerate() {
            q.start(*k);
            q.requeue(*k, t0 + Duration::from_millis(300_000 + 30 * i as u64));
        }
        assert_eq!((q.due, q.timers.len()), (0, 10_000));
        q.settle(t0 + Duration::from_secs(300 + 150));
        assert_eq!(q.due, 5_001, "the requeues of 0..=5000 are due");
        q.settle(t0 + Duration::from_secs(600));
        assert_eq!((q.due, q.timers.len()), (10_000, 0));
    }

    #[test]
    fn the_requeue_time_is_read_from_the_action() {
        for d in [
            Duration::from_secs(300),
            Duration::from_millis(1500),
            Duration::from_millis(250),
            Duration::from_secs_f64(287.123_456_789),
            Duration::from_micros(10),
        ] {
            let got = requeue_after(&Action::requeue(d)).expect("parses");
            let diff = got.as_secs_f64() - d.as_secs_f64();
            assert!(diff.abs() < 1e-6, "{d:?} read as {got:?}");
        }
        assert_eq!(requeue_after(&Action::await_change()), None);
    }

    #[test]
    fn passes_and_mappers_drive_the_depth() {
        let q = Arc::new(WorkQueue::default());
        let mapper = q.via(|name: String| Some(ObjectRef::new(&name)));
        let _ = mapper("acme".into());
        let _ = mapper("acme".into());
        let _ = mapper("bolt".into());
        assert_eq!(q.depth(), 2);
        let pass = q.start("acme");
        assert_eq!(q.depth(), 1);
        pass.finish::<()>(&Ok(Action::requeue(Duration::from_secs(60))));
        assert_eq!((q.depth(), q.scheduled()), (1, 1));
        q.start("bolt")
            .finish::<()>(&Ok(Action::requeue(Duration::ZERO)));
        assert_eq!(q.depth(), 1, "a requeue after zero is due at once");
        q.requeued("acme", &Action::requeue(Duration::ZERO));
        assert_eq!(q.depth(), 2);
        q.forget("acme");
        q.forget("bolt");
        assert_eq!((q.depth(), q.scheduled()), (0, 0));
    }
}
