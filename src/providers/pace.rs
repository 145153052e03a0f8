//! Pacing of requests to a quota-bound API, process-wide, whatever the tenant: a burst (a
//! resync of thousands of tenants, the end of an outage) is spread out instead of earning
//! 429s.
//! - Cloud Storage allows roughly one bucket create or delete every two seconds per project
//!   (<https://cloud.google.com/storage/quotas#buckets>): `storage.minCreateDeleteIntervalMs`.
//! - The Cloud SQL Admin API allows 180 requests per minute per project and user
//!   (<https://cloud.google.com/sql/docs/quotas#fixed-limits>):
//!   `database.cloudsql.requestsPerMinute`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one request start at least `interval` after the previous one. Waiters are served
/// in arrival order (tokio's mutex is fair).
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// One limiter per (project, interval) for the whole process, so that two provider values
/// for the same project (a rebuilt provider, tests aside) still share the budget.
type Registry = HashMap<(String, u64), Arc<Pacer>>;
static SHARED: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

impl Pacer {
    /// A limiter of its own (tests; the operator uses [`Pacer::shared`]).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The process-wide pacer of `project` (a key naming the API and the project).
    pub fn shared(project: &str, interval: Duration) -> Arc<Self> {
        let key = (project.to_string(), interval.as_millis() as u64);
        let mut map = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| Arc::new(Self::new(interval)))
            .clone()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits until the next request may start, and books that start.
    pub async fn wait_turn(&self) {
        if self.interval.is_zero() {
            return;
        }
        let mut last = self.last.lock().await;
        if let Some(previous) = *last {
            tokio::time::sleep_until(previous + self.interval).await;
        }
        *last = Some(Instant::now());
    }
}

/// `.paced(&pacer)` on a request future: it starts (is first polled) at its turn.
pub trait Paced: std::future::Future + Sized {
    fn paced(self, pacer: &Pacer) -> impl std::future::Future<Output = Self::Output> {
        async move {
            pacer.wait_turn().await;
            self.await
        }
    }
}

impl<F: std::future::Future> Paced for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_are_spaced_by_the_interval() {
        let limiter = Arc::new(Pacer::new(Duration::from_millis(2000)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                l.wait_turn().await;
                Instant::now()
            }));
        }
        let mut at: Vec<Duration> = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap() - start);
        }
        at.sort();
        assert_eq!(
            at,
            [0, 2000, 4000, 6000].map(Duration::from_millis).to_vec(),
            "four turns, two seconds apart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_after_a_pause_does_not_wait() {
        let limiter = Pacer::new(Duration::from_millis(2000));
        limiter.wait_turn().await;
        tokio::time::sleep(Duration::from_millis(5000)).await;
        let before = Instant::now();
        limiter.wait_turn().await;
        assert_eq!(Instant::now(), before);
        // Only the remainder is waited: 500 ms after a turn, the next waits 1500 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = Instant::now();
        limiter.wait_turn().await;
        assert_eq!(Instant::now() - before, Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_never_waits() {
        let limiter = Pacer::new(Duration::ZERO);
        let before = Instant::now();
        for _ in 0..10 {
            limiter.wait_turn().await;
        }
        assert_eq!(Instant::now(), before);
    }

    #[test]
    fn shared_is_per_project() {
        let a = Pacer::shared("limiter-test-a", Duration::from_secs(2));
        let a2 = Pacer::shared("limiter-test-a", Duration::from_secs(2));
        let b = Pacer::shared("limiter-test-b", Duration::from_secs(2));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
