//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one acts. Expiry is judged on this replica's own clock, from when it last saw the
//! lease record change (as client-go does), so clock skew between nodes does not matter.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Timing of the election.
#[derive(Debug, Clone)]
pub struct LeaseTiming {
    /// How long a lease holds without renewal; a follower takes over after this much silence.
    pub duration: Duration,
    /// How often the leader renews; a leader that cannot renew within `duration` steps down.
    pub renew_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Competes for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

#[derive(Debug, PartialEq, Clone)]
struct Record {
    holder: Option<String>,
    renewed: Option<MicroTime>,
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// Runs forever: publishes `true` on `leading` while this replica holds the lease. Errors
    /// talking to the API server are retried; a leader that could not renew for a whole lease
    /// duration publishes `false` before anyone else can take over.
    pub async fn run(&self, leading: watch::Sender<bool>) {
        let mut seen: Option<(Record, Instant)> = None;
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew(&mut seen).await {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
                    if !*leading.borrow() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    }
                    leading.send_replace(true);
                }
                Ok(false) => {
                    if *leading.borrow() {
                        tracing::warn!(lease = %self.name, "lost the lease to another replica");
                    }
                    last_renewal = None;
                    leading.send_replace(false);
                }
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "lease update failed; retrying");
                    // Step down early enough that a follower never acts while we still do.
                    let deadline = self.timing.duration.saturating_sub(self.timing.renew_every);
                    if last_renewal.is_some_and(|t| t.elapsed() >= deadline) {
                        leading.send_replace(false);
                        last_renewal = None;
                    }
                }
            }
            let pause = if *leading.borrow() {
                self.timing.renew_every
            } else {
                // Followers check a little more often than the leader renews, to take over fast.
                self.timing.renew_every / 2
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Releases the lease on shutdown so a follower takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(&self.name).await?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
            spec.holder_identity = None;
            spec.renew_time = None;
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await?;
        }
        Ok(())
    }

    async fn try_acquire_or_renew(
        &self,
        seen: &mut Option<(Record, Instant)>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let duration_seconds = i32::try_from(self.timing.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let record = Record {
            holder: spec.holder_identity.clone(),
            renewed: spec.renew_time.clone(),
        };
        let observed_at = match seen {
            Some((previous, at)) if *previous == record => *at,
            _ => {
                *seen = Some((record.clone(), Instant::now()));
                Instant::now()
            }
        };
        let ours = record.holder.as_deref() == Some(self.identity.as_str());
        let held_by_other = record.holder.as_deref().is_some_and(|h| !h.is_empty()) && !ours;
        let their_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.duration, Duration::from_secs);
        if held_by_other && observed_at.elapsed() < their_duration {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now);
        // `replace` carries the resourceVersion we read: if another replica wrote in between,
        // the API server refuses with a conflict and we stay a follower this round.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }
}
