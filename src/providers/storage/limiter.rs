//! Spacing of bucket creates and deletes. Cloud Storage allows roughly one bucket create or
//! delete every two seconds per project
//! (<https://cloud.google.com/storage/quotas#buckets>); going faster earns 429s. Every
//! create and delete of the process waits for its turn here, whatever the tenant.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one bucket create or delete start at least `interval` after the previous one.
/// Waiters are served in arrival order (tokio's mutex is fair).
#[derive(Debug)]
pub struct CreateDeleteLimiter {
    interval: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// One limiter per (project, interval) for the whole process, so that two provider values
/// for the same project (a rebuilt provider, tests aside) still share the budget.
type Registry = HashMap<(String, u64), Arc<CreateDeleteLimiter>>;
static SHARED: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

impl CreateDeleteLimiter {
    /// A limiter of its own (tests; the operator uses [`CreateDeleteLimiter::shared`]).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The process-wide limiter of `project`.
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

    /// Waits until the next create or delete may start, and books that start.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_are_spaced_by_the_interval() {
        let limiter = Arc::new(CreateDeleteLimiter::new(Duration::from_millis(2000)));
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
        let limiter = CreateDeleteLimiter::new(Duration::from_millis(2000));
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
        let limiter = CreateDeleteLimiter::new(Duration::ZERO);
        let before = Instant::now();
        for _ in 0..10 {
            limiter.wait_turn().await;
        }
        assert_eq!(Instant::now(), before);
    }

    #[test]
    fn shared_is_per_project() {
        let a = CreateDeleteLimiter::shared("limiter-test-a", Duration::from_secs(2));
        let a2 = CreateDeleteLimiter::shared("limiter-test-a", Duration::from_secs(2));
        let b = CreateDeleteLimiter::shared("limiter-test-b", Duration::from_secs(2));
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
