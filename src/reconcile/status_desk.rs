//! Pool statuses are written here, off the reconcile. A reconcile hands its pool's next status
//! over and gives its slot to the next pool; waiting on the write instead held the slot while,
//! with a hundred pools changing at once, the write queued behind their resizes (at 1,000 pools,
//! reconciles started a median 761 ms after the reading in such a round).
//!
//! Each pool has at most one status waiting (a newer one that differs in more than its figures
//! takes its place) and one write in flight. A status waits a short settle time before it is
//! written, so that what follows a resize within it (the Deployment showing the new size ends
//! the Scaling condition a hundred milliseconds later) goes out as one write, not two; a few
//! writes run at once. A failed write is retried with a per-pool back-off unless a newer status
//! replaces it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::crd::AsyncWorkerPoolStatus;
use crate::metrics::{CategoryLabel, Metrics};
use crate::pool::PoolKey;
use crate::resources::FIELD_MANAGER;
use crate::status::Warning;

/// How long a status waits for what follows it before it is written: the Deployment showing a
/// resize reaches the operator within a few hundred milliseconds even while a hundred pools
/// change at once, and a status shown half a second late costs a user nothing.
pub(super) const SETTLE: Duration = Duration::from_millis(500);

/// Status writes in flight at once: enough to keep up with a thousand pools' changes, few enough
/// that they never crowd out the resizes at the API server.
const WRITERS: usize = 4;

/// A status to write, with the Warning Events its new conditions call for (sent once it is
/// written).
pub struct Submission {
    pub status: AsyncWorkerPoolStatus,
    pub warnings: Vec<Warning>,
    /// The pool, for the Events.
    pub reference: ObjectReference,
}

struct Waiting {
    submission: Submission,
    due: Instant,
    /// Failed writes in a row of this pool's status.
    failures: u32,
}

#[derive(Default)]
struct Desk {
    waiting: HashMap<PoolKey, Waiting>,
    in_flight: HashSet<PoolKey>,
    closed: bool,
}

struct Shared {
    desk: Mutex<Desk>,
    /// Something was handed over or the desk closed.
    wake: Notify,
    /// A write ended with nothing left waiting or in flight.
    idle: Notify,
}

impl Shared {
    fn desk(&self) -> MutexGuard<'_, Desk> {
        // Only plain data sits behind the lock: a panicking holder left nothing half-done.
        self.desk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where reconciles hand over their pools' statuses; the writer task ends when this is dropped.
pub struct StatusDesk {
    shared: Arc<Shared>,
}

impl StatusDesk {
    /// Starts the writer task (within a Tokio runtime).
    pub fn start(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            desk: Mutex::default(),
            wake: Notify::new(),
            idle: Notify::new(),
        });
        let writer = Writer {
            shared: shared.clone(),
            client,
            recorder,
            metrics,
        };
        tokio::spawn(writer.run());
        Self { shared }
    }

    /// Hands over the pool's next status. A status still waiting keeps its turn (and its
    /// back-off after a failed write), and stays unless `supersedes(waiting, next)`: the noise
    /// of figures in the reconciles that follow a resize must not take the place of the status
    /// that reports it. Either way the later of the two scale times is kept. Returns whether
    /// the status was taken.
    pub fn submit(
        &self,
        key: &PoolKey,
        mut submission: Submission,
        supersedes: impl FnOnce(&AsyncWorkerPoolStatus, &AsyncWorkerPoolStatus) -> bool,
    ) -> bool {
        let mut desk = self.shared.desk();
        if let Some(waiting) = desk.waiting.get_mut(key) {
            let scaled = later(
                waiting.submission.status.last_scale_time.take(),
                submission.status.last_scale_time.take(),
            );
            waiting
                .submission
                .status
                .last_scale_time
                .clone_from(&scaled);
            submission.status.last_scale_time = scaled;
            let taken = supersedes(&waiting.submission.status, &submission.status);
            if taken {
                waiting.submission = submission;
            }
            return taken;
        }
        desk.waiting.insert(
            key.clone(),
            Waiting {
                submission,
                due: Instant::now() + SETTLE,
                failures: 0,
            },
        );
        drop(desk);
        self.shared.wake.notify_one();
        true
    }

    /// Whether a status of the pool waits or is being written.
    pub fn holds(&self, key: &PoolKey) -> bool {
        let desk = self.shared.desk();
        desk.waiting.contains_key(key) || desk.in_flight.contains(key)
    }

    /// Forgets what waits for pools that no longer exist.
    pub fn forget_except(&self, live: &HashSet<PoolKey>) {
        self.shared
            .desk()
            .waiting
            .retain(|key, _| live.contains(key));
    }

    /// Writes everything waiting now, without its settle time or back-off, and returns once
    /// nothing waits or is in flight (for tests, and before a process hands over).
    pub async fn flush(&self) {
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut desk = self.shared.desk();
                if desk.waiting.is_empty() && desk.in_flight.is_empty() {
                    return;
                }
                let now = Instant::now();
                for waiting in desk.waiting.values_mut() {
                    waiting.due = now;
                }
            }
            self.shared.wake.notify_one();
            idle.await;
        }
    }
}

impl Drop for StatusDesk {
    fn drop(&mut self) {
        self.shared.desk().closed = true;
        self.shared.wake.notify_one();
    }
}

fn later<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// How a write ended: `None` when done with, or the submission again when the write failed and
/// may be retried, with the failures in a row so far (this one included).
type Retry = Option<(Submission, u32)>;

struct Writer {
    shared: Arc<Shared>,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(self) {
        let mut writes: JoinSet<Retry> = JoinSet::new();
        // Whose write each task is: a task that panicked returns nothing, and its pool must
        // not stay "in flight" for good.
        let mut writing: HashMap<tokio::task::Id, PoolKey> = HashMap::new();
        loop {
            let next_due = {
                let mut desk = self.shared.desk();
                if desk.closed {
                    return;
                }
                let now = Instant::now();
                while writes.len() < WRITERS {
                    let Some(key) = due_now(&desk, now) else {
                        break;
                    };
                    let Some(waiting) = desk.waiting.remove(&key) else {
                        break;
                    };
                    desk.in_flight.insert(key.clone());
                    let task =
                        writes.spawn(self.write(key.clone(), waiting.submission, waiting.failures));
                    writing.insert(task.id(), key);
                }
                desk.waiting
                    .iter()
                    .filter(|(key, _)| !desk.in_flight.contains(*key))
                    .map(|(_, waiting)| waiting.due)
                    .min()
            };
            // With every writer busy, the next write starts once one ends (`writes`).
            let room = writes.len() < WRITERS;
            let until_due = async {
                match next_due {
                    Some(due) if room => tokio::time::sleep_until(due).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = until_due => {}
                Some(ended) = writes.join_next_with_id(), if !writes.is_empty() => {
                    let (id, retry) = match ended {
                        Ok((id, retry)) => (id, retry),
                        Err(error) => {
                            tracing::error!(%error, "a status write failed unexpectedly");
                            (error.id(), None)
                        }
                    };
                    if let Some(key) = writing.remove(&id) {
                        self.ended(key, retry);
                    }
                }
            }
        }
    }

    /// Back from a write: a failed one waits out its back-off unless a newer status came.
    fn ended(&self, key: PoolKey, retry: Retry) {
        let mut desk = self.shared.desk();
        desk.in_flight.remove(&key);
        if let Some((submission, failures)) = retry {
            // A newer status waiting takes the failed one's place.
            desk.waiting.entry(key).or_insert_with(|| Waiting {
                submission,
                due: Instant::now() + super::retry_delay(failures),
                failures,
            });
        }
        if desk.waiting.is_empty() && desk.in_flight.is_empty() {
            self.shared.idle.notify_waiters();
        }
    }

    fn write(
        &self,
        key: PoolKey,
        submission: Submission,
        failures: u32,
    ) -> impl std::future::Future<Output = Retry> + Send + 'static {
        let (client, recorder, metrics) = (
            self.client.clone(),
            self.recorder.clone(),
            self.metrics.clone(),
        );
        async move {
            let api: Api<crate::crd::AsyncWorkerPool> = Api::namespaced(client, &key.namespace);
            let patch = serde_json::json!({
                "apiVersion": "asyncpool.dev/v1alpha1",
                "kind": "AsyncWorkerPool",
                "status": &submission.status,
            });
            let result = api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await;
            match result {
                Ok(_) => {
                    for warning in submission.warnings {
                        publish_warning(&recorder, &submission.reference, warning).await;
                    }
                    None
                }
                // The pool is gone: nothing to report on.
                Err(kube::Error::Api(status)) if status.code == 404 => None,
                Err(error) => {
                    metrics
                        .reconcile_errors
                        .get_or_create(&CategoryLabel { category: "status" })
                        .inc();
                    let failures = failures.saturating_add(1);
                    tracing::warn!(namespace = %key.namespace, pool = %key.name, %error, failures, "could not write the pool's status; retrying");
                    Some((submission, failures))
                }
            }
        }
    }
}

/// The pool whose status has waited longest past its due time, if any is due and has no write
/// in flight.
fn due_now(desk: &Desk, now: Instant) -> Option<PoolKey> {
    desk.waiting
        .iter()
        .filter(|(key, waiting)| waiting.due <= now && !desk.in_flight.contains(*key))
        .min_by_key(|(_, waiting)| waiting.due)
        .map(|(key, _)| key.clone())
}

/// A Warning Event for a problem the user must fix (kubectl describe, event exporters, alerts).
pub(super) async fn publish_warning(
    recorder: &Recorder,
    reference: &ObjectReference,
    warning: Warning,
) {
    tracing::warn!(
        namespace = ?reference.namespace,
        pool = ?reference.name,
        reason = warning.reason,
        note = %warning.note,
        "pool needs attention"
    );
    let event = Event {
        type_: EventType::Warning,
        reason: warning.reason.into(),
        note: Some(warning.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Best effort, like every Event.
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::debug!(%error, "could not publish the warning event");
    }
}
