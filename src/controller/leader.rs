//! Leader election on a `coordination.k8s.io/v1` Lease (crate `kube-lease-manager`): of the
//! operator's replicas only the holder of the Lease runs the controller.
//!
//! - The Lease lives in the operator's namespace; its holder identity is the Pod name
//!   (`POD_NAME`), else the host name with a random suffix.
//! - It lasts [`LEASE_DURATION`] seconds and the holder renews it [`LEASE_GRACE`] seconds
//!   before it runs out. A follower takes it over when it has run out, or within a few
//!   seconds when the holder released it (on SIGTERM): the crate's follower would sleep
//!   until the Lease runs out, so a follower that sees it released competes anew.
//! - The crate keeps retrying a failed renewal and reports the loss only once it can read
//!   the Lease again, so the leader also watches the Lease itself ([`Leadership::lost`]): it
//!   gives up leadership when the Lease names another holder, or when it has not seen its
//!   own renewal for so long that a follower may take over within [`SAFETY_MARGIN`].

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

/// Seconds a Lease is valid after its last renewal.
pub const LEASE_DURATION: u64 = 15;
/// The holder renews this many seconds before the Lease runs out (every ~10 s).
pub const LEASE_GRACE: u64 = 5;
/// The leader stops this long before its Lease could run out without a renewal it has seen.
const SAFETY_MARGIN: Duration = Duration::from_secs(3);
/// How often the leader reads its Lease back, and a follower looks at who holds it.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long releasing the Lease on shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Lease is and who this process is.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
}

/// This process's holder identity: `POD_NAME` (the Deployment sets it from the downward
/// API), else the host name and a random suffix, so that two processes on one machine never
/// share an identity.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.trim().is_empty()
    {
        return pod.trim().to_string();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dealertenant-operator".into());
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(6)
        .collect::<String>()
        .to_lowercase();
    format!("{host}-{suffix}")
}

/// Builds a Lease manager (creating the Lease when it is missing) and starts its task.
async fn compete(
    client: &Client,
    election: &Election,
) -> anyhow::Result<(watch::Receiver<bool>, Task)> {
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(LEASE_DURATION)
        .with_grace(LEASE_GRACE)
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read or create Lease {}/{} for leader election: {e}; check the \
                 operator's Role in deploy/rbac.yaml",
                election.namespace,
                election.lease_name
            )
        })?;
    Ok(manager.watch().await)
}

/// Who holds a Lease, and until when (by its renew time and duration).
fn holder_of(lease: &Lease) -> Option<(String, SystemTime)> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone()?;
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    let duration = Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
    Some((holder, renewed + duration))
}

type Task = tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>;

/// The state of the election for this process.
pub struct Leadership {
    election: Election,
    client: Client,
    api: Api<Lease>,
    leading: watch::Receiver<bool>,
    task: Task,
}

impl Leadership {
    /// Creates the Lease when it is missing and starts competing for it.
    pub async fn start(client: Client, election: Election) -> anyhow::Result<Self> {
        let (leading, task) = compete(&client, &election).await?;
        let api = Api::namespaced(client.clone(), &election.namespace);
        Ok(Self {
            election,
            client,
            api,
            leading,
            task,
        })
    }

    /// Waits until this process holds the Lease. Meanwhile looks at who does every few
    /// seconds; `follower` is called with the holder whenever a live holder other than this
    /// process is seen (the process then knows it is a follower).
    pub async fn acquired(&mut self, mut follower: impl FnMut(&str)) -> anyhow::Result<()> {
        let mut last_holder: Option<String> = None;
        loop {
            if *self.leading.borrow_and_update() {
                info!(identity = %self.election.identity, lease = %self.election.lease_name, "acquired the Lease: leading");
                return Ok(());
            }
            if let Ok(Some(lease)) = self.api.get_opt(&self.election.lease_name).await {
                match holder_of(&lease) {
                    Some((holder, until))
                        if holder != self.election.identity && until > SystemTime::now() =>
                    {
                        if last_holder.as_deref() != Some(holder.as_str()) {
                            info!(identity = %self.election.identity, leader = %holder, "following");
                            last_holder = Some(holder.clone());
                        }
                        follower(&holder);
                    }
                    // Released by its holder (on SIGTERM). The crate's follower sleeps
                    // until the Lease would have run out; competing anew takes it now.
                    None if last_holder.is_some() => {
                        info!(identity = %self.election.identity, "the Lease was released; taking it over");
                        last_holder = None;
                        self.compete_anew().await?;
                        continue;
                    }
                    _ => {}
                }
            }
            tokio::select! {
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        return Err(self.ended().await);
                    }
                }
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }

    /// Resolves, with the reason, when this process may no longer act as the leader: the
    /// crate reports the loss, the Lease names another holder, or this process has not seen
    /// a renewal that keeps the Lease valid for at least [`SAFETY_MARGIN`] more.
    pub async fn lost(&mut self) -> String {
        // The crate has just renewed it; a read that fails right away keeps this bound.
        let mut valid_until = SystemTime::now() + Duration::from_secs(LEASE_DURATION);
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        return "the leader election task ended".into();
                    }
                    if !*self.leading.borrow_and_update() {
                        return "the Lease was taken over".into();
                    }
                }
                _ = ticker.tick() => {
                    match self.api.get_opt(&self.election.lease_name).await {
                        Ok(Some(lease)) => match holder_of(&lease) {
                            Some((holder, until)) if holder == self.election.identity => {
                                valid_until = until;
                            }
                            Some((holder, _)) => {
                                return format!("the Lease is held by {holder}");
                            }
                            None => return "the Lease has no holder".into(),
                        },
                        Ok(None) => return "the Lease was deleted".into(),
                        Err(e) => warn!(error = %e, "cannot read the Lease; still leading until it runs out"),
                    }
                    if SystemTime::now() + SAFETY_MARGIN >= valid_until {
                        return "the Lease was not renewed in time".into();
                    }
                }
            }
        }
    }

    /// Stops the crate's task (which releases the Lease if it has just taken it) and starts
    /// another, which looks at the Lease at once.
    async fn compete_anew(&mut self) -> anyhow::Result<()> {
        let (leading, task) = compete(&self.client, &self.election).await?;
        let old = std::mem::replace(&mut self.task, task);
        drop(std::mem::replace(&mut self.leading, leading));
        if tokio::time::timeout(RELEASE_TIMEOUT, old).await.is_err() {
            warn!("the previous leader election task did not end");
        }
        Ok(())
    }

    /// Releases the Lease (when held) so that a follower takes over at once, and stops
    /// competing for it.
    pub async fn release(self) {
        let Self { leading, task, .. } = self;
        // Closing the channel makes the crate's task release the Lease and end.
        drop(leading);
        match tokio::time::timeout(RELEASE_TIMEOUT, task).await {
            Ok(Ok(Ok(_))) => info!("released the Lease"),
            Ok(Ok(Err(e))) => {
                warn!(error = %e, "could not release the Lease; it runs out by itself")
            }
            Ok(Err(e)) => warn!(error = %e, "the leader election task failed"),
            Err(_) => warn!(
                "releasing the Lease took longer than {}s; it runs out by itself",
                RELEASE_TIMEOUT.as_secs()
            ),
        }
    }

    /// The error the crate's task ended with.
    async fn ended(&mut self) -> anyhow::Error {
        match (&mut self.task).await {
            Ok(Ok(_)) => anyhow::anyhow!("the leader election task ended"),
            Ok(Err(e)) => anyhow::anyhow!("leader election failed: {e}"),
            Err(e) => anyhow::anyhow!("the leader election task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn the_pod_name_is_the_identity_else_host_and_suffix() {
        // POD_NAME is read, not set, here: tests run in parallel.
        let id = identity();
        match std::env::var("POD_NAME") {
            Ok(p) if !p.trim().is_empty() => assert_eq!(id, p.trim()),
            _ => {
                let (_, suffix) = id.rsplit_once('-').expect("a suffix");
                assert_eq!(suffix.len(), 6, "{id}");
                assert_ne!(
                    identity(),
                    id,
                    "two processes on one host get two identities"
                );
            }
        }
    }

    #[test]
    fn a_lease_without_holder_or_renewal_has_no_holder() {
        let mut lease = Lease::default();
        assert_eq!(holder_of(&lease), None);
        let now = k8s_openapi::jiff::Timestamp::now();
        lease.spec = Some(LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        });
        let (holder, until) = holder_of(&lease).expect("a holder");
        assert_eq!(holder, "a");
        let expected: SystemTime = SystemTime::from(now) + Duration::from_secs(15);
        assert_eq!(until, expected);
        lease.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(holder_of(&lease), None);
    }
}
