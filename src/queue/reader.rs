//! Reading every worker's sidecar: one task per pod keeps the latest snapshot, from a watch
//! stream (`GET /queue?watch=true`) when the sidecar offers one, else by polling `GET /queue`.
//! A pod that does not answer, answers garbage or answers out-of-range values has no reading:
//! missing data, never zero. A change that moves the scaler (a load step of half a worker's
//! concurrency, a drain, a gap) wakes the pool's reconcile at once, which is how the reaction
//! time gets close to a network round trip instead of a polling interval; smaller changes are
//! planned at the next decision round. A stream that goes silent is found by one sweep over
//! every reading a second rather than by a timer in each stream (ten thousand streams each
//! re-arming a timer at every line cost more than their reading, and a timer held by each is a
//! megabyte): the sweep records it as failed, and past the idle timeout starts its reader over,
//! polling.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};

use super::sidecar_http;
use crate::pool::PoolKey;
use asyncpool_contract::queue::{QueueSnapshot, WATCH_HEARTBEAT};

/// Largest body or line accepted from a sidecar; anything longer is garbage.
const MAX_BODY: usize = 64 * 1024;

/// How sidecars are read.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The port of the sidecar contract.
    pub port: u16,
    /// Try the watch stream first; without it every pod is polled.
    pub watch: bool,
    /// The pace asked of watch streams: a change that does not move the scaler (a busy pod's
    /// counters move with every request) reaches the operator within this, coalesced; a load
    /// step, a drain or a gap at once. Bounds the lines a busy fleet sends to about one per
    /// busy pod a second by default.
    pub watch_pace: Duration,
    /// About how many paced lines a second all streams together may send: past this many
    /// streams at `watch_pace`, each stream's pace is stretched, up to the heartbeat's 2 s
    /// ([`stream_pace`]). 0: never stretched.
    pub watch_line_budget: u32,
    /// Time between polls of one pod (also the pace at which a broken watch is retried).
    pub poll_interval: Duration,
    /// Longest a connect or a poll may take.
    pub request_timeout: Duration,
    /// A watch stream silent for this long is given up for polls (the sidecar sends a heartbeat
    /// every 2 s); the sweep finds it within a second of that.
    pub watch_idle_timeout: Duration,
    /// A reading older than this no longer counts; the sweep records it as failed (and wakes
    /// its pool) within a second of that.
    pub stale_after: Duration,
    /// Polls in flight at once across all pods.
    pub max_concurrent_polls: usize,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            port: asyncpool_contract::pod::ADMIN_PORT,
            watch: true,
            watch_pace: Duration::from_secs(1),
            watch_line_budget: 5_000,
            poll_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            watch_idle_timeout: Duration::from_secs(6),
            stale_after: Duration::from_secs(3),
            max_concurrent_polls: 64,
        }
    }
}

/// The latest thing learned about one pod's sidecar.
#[derive(Debug, Clone)]
pub enum Reading {
    /// A valid snapshot, when it arrived, and the longest its sidecar may hold back a change
    /// after it (a watch stream's pace; zero for a poll, which is current only when made).
    Snapshot {
        snapshot: QueueSnapshot,
        at: Instant,
        held_back: Duration,
    },
    /// The watch stream's last line, at `since`, is older than `stale_after`: no data.
    Silent { since: Instant },
    /// The last attempt failed; why, in words.
    Failed { error: String },
}

impl Reading {
    /// A snapshot read just now.
    fn fresh(snapshot: QueueSnapshot, held_back: Duration) -> Self {
        Reading::Snapshot {
            snapshot,
            at: Instant::now(),
            held_back,
        }
    }
}

/// A pod's usable snapshot and how long before now its figures were last known current.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub snapshot: QueueSnapshot,
    /// Time since the reading, but no more than its sidecar may hold back a change: a paced
    /// stream that wrote nothing since is still current up to that long ago.
    pub age: Duration,
}

#[cfg(test)]
impl Current {
    /// A snapshot current at this moment.
    pub fn just_read(snapshot: QueueSnapshot) -> Self {
        Self {
            snapshot,
            age: Duration::ZERO,
        }
    }
}

/// Why a pod has no snapshot to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No read of the pod's sidecar has finished since its reader started: connecting (an
    /// operator that just started has thousands to open), not silent.
    NotReadYet,
    /// The last read failed, or its snapshot is stale; why, in words.
    Failed(String),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotReadYet => f.write_str("not read yet"),
            Unavailable::Failed(why) => f.write_str(why),
        }
    }
}

/// How a read failed, in a bounded set for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP error: {0}")]
    Http(String),
    #[error("answered status {0}")]
    Status(u16),
    #[error("invalid answer: {0}")]
    Invalid(String),
}

impl ReadError {
    pub fn category(&self) -> &'static str {
        match self {
            ReadError::Connect(..) => "connect",
            ReadError::Timeout => "timeout",
            ReadError::Http(_) => "http",
            ReadError::Status(_) => "status",
            ReadError::Invalid(_) => "invalid",
        }
    }
}

/// Observes read outcomes (the operator's metrics implement it).
pub trait ReadObserver: Send + Sync + 'static {
    fn read_ok(&self, latency: Duration, watch: bool);
    fn read_failed(&self, category: &'static str);
}

struct Running {
    address: IpAddr,
    task: AbortHandle,
}

/// Changes recorded so far across all pools: a pool's version is the change that last touched
/// it, so a pool removed and read again never repeats a version a plan remembers.
type ChangeCounter = AtomicU64;

/// One pool's latest readings, shared by its pod readers: a reader records into its own pool's
/// slot, with no lookup of the pool per line.
struct PoolSlot {
    pool: PoolKey,
    readings: Mutex<PoolReadings>,
}

#[derive(Default)]
struct PoolReadings {
    pods: HashMap<Arc<str>, Reading>,
    version: u64,
    /// When a reading that moves the scaler first woke the pool since a reconcile last took
    /// it ([`SidecarReaders::take_wake`]): where the operator's reaction time starts.
    woken_at: Option<Instant>,
}

impl PoolReadings {
    /// Marks the pool's readings changed.
    fn touch(&mut self, counter: &ChangeCounter) {
        self.version = counter.fetch_add(1, Ordering::Relaxed) + 1;
    }
}

/// A pool's readers by pod name, and the readings they record.
struct PoolReaders {
    slot: Arc<PoolSlot>,
    running: HashMap<Arc<str>, Running>,
}

/// Each pool's readers: a pool's sync touches its own readers only.
type Pools = Mutex<HashMap<PoolKey, PoolReaders>>;

/// What every reader shares: the settings, the bound on polls in flight, the metrics, the
/// change count and the channel that wakes pools (one pointer in each reader's task).
struct Shared {
    config: ReaderConfig,
    polls: Semaphore,
    observer: Arc<dyn ReadObserver>,
    counter: ChangeCounter,
    changes: mpsc::UnboundedSender<PoolKey>,
    /// Where the readers run ([`ReaderThread`]).
    runtime: tokio::runtime::Handle,
    /// Pods read, across all pools: what the line budget is shared among.
    pods: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The pace to ask of a stream opened now ([`stream_pace`]).
    fn stream_pace(&self) -> Duration {
        stream_pace(&self.config, self.pods.load(Ordering::Relaxed))
    }
}

/// The pace asked of each of `streams` watch streams: the configured pace, stretched so that
/// they all send about the line budget's lines a second, and never past the heartbeat (a
/// quiet stream sends that often anyway). In whole milliseconds, as the request states it. A
/// fleet of busy workers costs the operator a few microseconds per line (the read, its wake,
/// the parse); the budget is what bounds that cost at ten thousand pods, while smaller fleets
/// keep the configured pace.
fn stream_pace(config: &ReaderConfig, streams: usize) -> Duration {
    let longest = WATCH_HEARTBEAT.max(config.watch_pace);
    if config.watch_line_budget == 0 {
        return config.watch_pace;
    }
    let spread = u64::try_from(streams)
        .unwrap_or(u64::MAX)
        .saturating_mul(1_000)
        .div_ceil(u64::from(config.watch_line_budget));
    Duration::from_millis(spread).clamp(config.watch_pace, longest)
}

/// How often to plan from readings that come at `pace` where `configured_pace` was asked for:
/// `every`, thinned by as much as the line budget stretched the pace, but never to less often
/// than the lines come. Planning a fleet more often than its lines arrive re-plans the same
/// readings; a load step is sent at once and wakes its pool whatever the pace, so only what
/// time alone moves (a window ending) waits up to the longer period.
fn round_period(every: Duration, configured_pace: Duration, pace: Duration) -> Duration {
    if configured_pace.is_zero() || pace <= configured_pace {
        return every;
    }
    let thinned = every.mul_f64(pace.as_secs_f64() / configured_pace.as_secs_f64());
    thinned.min(pace).max(every)
}

/// Whether a stream opened at `pace` is to be opened again at `target`: they differ by more
/// than a quarter (streams opened while an operator starts, or a fleet grows, see fewer pods
/// than there are).
fn mispaced(pace: Duration, target: Duration) -> bool {
    pace * 4 < target * 3 || pace * 3 > target * 4
}

/// Streams opened again at their pace per sweep at most: at ten thousand streams opened too
/// early, a few seconds of sweeps, not one storm of connections.
const REPACE_PER_SWEEP: usize = 1_000;

/// All per-pod reader tasks, and their latest readings.
pub struct SidecarReaders {
    shared: Arc<Shared>,
    pools: Arc<Pools>,
    /// The sweep that records silent streams and gives them up ([`sweep_silent`]).
    sweeper: AbortHandle,
    /// Declared last: dropped after the tasks are aborted, it ends their thread.
    _thread: Option<ReaderThread>,
}

/// The readers' own thread, with a single-threaded runtime. Every sidecar writes its paced
/// line on the same tick of the clock, so ten thousand lines arrive within a millisecond or
/// two; on the operator's multi-threaded runtime each burst had its workers waking and
/// stealing tasks from each other, up to a third of the operator's CPU at rest at 10,000 pods
/// (docs/benchmarks.md). One thread that does nothing but read takes the burst more cheaply.
/// The thread ends, with every task left on it, when this is dropped.
struct ReaderThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ReaderThread {
    fn start() -> std::io::Result<Self> {
        let (started, handle) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sidecar-readers".into())
            .spawn(move || {
                // Built here, not by the caller: a runtime may not be dropped from async code,
                // which the caller may be.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = started.send(Ok(runtime.handle().clone()));
                        // Ends when the sender is dropped (or sends).
                        let _ = runtime.block_on(stopped);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })?;
        // Blocks for the runtime's start only, once per operator.
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the readers' thread ended at start"))??;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// How often the sweep looks for readings gone stale.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder cannot leave these maps half-updated (single inserts and removes).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SidecarReaders {
    /// Readers that announce every changed reading on `changes` (the pool whose pod changed).
    /// They run on a thread of their own ([`ReaderThread`]), or on the caller's runtime if that
    /// thread cannot start.
    pub fn new(
        config: ReaderConfig,
        changes: mpsc::UnboundedSender<PoolKey>,
        observer: Arc<dyn ReadObserver>,
    ) -> Self {
        let thread = ReaderThread::start()
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot start the sidecar readers' thread; reading on the operator's runtime");
            })
            .ok();
        let runtime = thread
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |t| t.handle.clone());
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            pods: Default::default(),
            polls: Semaphore::new(config.max_concurrent_polls.max(1)),
            config,
            observer,
            counter: ChangeCounter::default(),
            changes,
        });
        let pools: Arc<Pools> = Arc::default();
        let sweeper = runtime
            .spawn({
                let (shared, pools) = (shared.clone(), pools.clone());
                async move {
                    let mut every = tokio::time::interval(SWEEP_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        sweep_silent(&pools, &shared, Instant::now());
                    }
                }
            })
            .abort_handle();
        Self {
            shared,
            pools,
            sweeper,
            _thread: thread,
        }
    }

    /// Makes the set of read pods of `pool` exactly `pods` (name and address): starts readers
    /// for new pods or new addresses, stops the ones for pods that are gone.
    pub fn sync_pool(&self, pool: &PoolKey, pods: &[(Arc<str>, IpAddr)]) {
        let mut pools = lock(&self.pools);
        if pods.is_empty() && !pools.contains_key(pool) {
            return;
        }
        let wanted: HashMap<&str, IpAddr> = pods.iter().map(|(n, ip)| (&**n, *ip)).collect();
        let readers = pools.entry(pool.clone()).or_insert_with(|| PoolReaders {
            slot: Arc::new(PoolSlot {
                pool: pool.clone(),
                readings: Mutex::default(),
            }),
            running: HashMap::new(),
        });
        let slot = &readers.slot;
        readers.running.retain(|pod, reader| {
            let keep = wanted.get(&**pod) == Some(&reader.address);
            if !keep {
                reader.task.abort();
                self.shared.pods.fetch_sub(1, Ordering::Relaxed);
                let mut readings = lock(&slot.readings);
                readings.pods.remove(pod);
                readings.touch(&self.shared.counter);
            }
            keep
        });
        for (name, address) in pods {
            if readers.running.contains_key(name) {
                continue;
            }
            let task = start_reader(&self.shared, &readers.slot, name, *address, Instant::now());
            self.shared.pods.fetch_add(1, Ordering::Relaxed);
            readers.running.insert(
                name.clone(),
                Running {
                    address: *address,
                    task,
                },
            );
        }
        if readers.running.is_empty() {
            pools.remove(pool);
        }
    }

    /// Stops reading every pod of a pool (the pool is gone, or this replica stopped leading).
    pub fn forget_pool(&self, pool: &PoolKey) {
        self.sync_pool(pool, &[]);
    }

    /// The pool's readings slot, if any of its pods is read.
    fn slot(&self, pool: &PoolKey) -> Option<Arc<PoolSlot>> {
        lock(&self.pools)
            .get(pool)
            .map(|readers| readers.slot.clone())
    }

    /// The current snapshot of each named pod, in order; why not where data is missing or
    /// stale.
    pub fn snapshots<'a>(
        &self,
        pool: &PoolKey,
        pods: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Result<Current, Unavailable>> {
        let slot = self.slot(pool);
        let readings = slot.as_ref().map(|slot| lock(&slot.readings));
        let now = Instant::now();
        pods.into_iter()
            .map(
                |pod| match readings.as_ref().and_then(|r| r.pods.get(pod)) {
                    Some(Reading::Snapshot {
                        snapshot,
                        at,
                        held_back,
                    }) if now.duration_since(*at) <= self.shared.config.stale_after => {
                        Ok(Current {
                            snapshot: snapshot.clone(),
                            age: now.duration_since(*at).min(*held_back),
                        })
                    }
                    Some(Reading::Snapshot { at, held_back, .. }) => Err(Unavailable::Failed(
                        stale(now.duration_since(*at), !held_back.is_zero()),
                    )),
                    Some(Reading::Silent { since }) => {
                        Err(Unavailable::Failed(stale(now.duration_since(*since), true)))
                    }
                    Some(Reading::Failed { error }) => Err(Unavailable::Failed(error.clone())),
                    None => Err(Unavailable::NotReadYet),
                },
            )
            .collect()
    }

    /// How often the pools read here are worth planning, for a planner that would plan every
    /// `every` ([`round_period`]): as often at the configured pace, less often when the line
    /// budget stretched it.
    pub fn round_period(&self, every: Duration) -> Duration {
        let config = &self.shared.config;
        if !config.watch {
            return every;
        }
        round_period(every, config.watch_pace, self.shared.stream_pace())
    }

    /// A number that changes whenever anything recorded about `pool`'s sidecars changes, other
    /// than the time of a repeated reading (0: nothing recorded). Equal versions mean equal
    /// [`SidecarReaders::snapshots`], as long as none has gone stale; the sweep records a reading
    /// that old as a failure within a second, so that this holds.
    pub fn version(&self, pool: &PoolKey) -> u64 {
        self.slot(pool)
            .map_or(0, |slot| lock(&slot.readings).version)
    }

    /// When a reading that moves the scaler first woke `pool` since the last call, if one did:
    /// a reconcile takes it as it starts, to time the operator's reaction.
    pub fn take_wake(&self, pool: &PoolKey) -> Option<Instant> {
        self.slot(pool)
            .and_then(|slot| lock(&slot.readings).woken_at.take())
    }
}

impl Drop for SidecarReaders {
    fn drop(&mut self) {
        self.sweeper.abort();
        for reader in lock(&self.pools)
            .values()
            .flat_map(|readers| readers.running.values())
        {
            reader.task.abort();
        }
    }
}

/// Why a reading this old no longer counts: a watch stream's went silent, a poll's is simply
/// old.
fn stale(age: Duration, watched: bool) -> String {
    if !watched {
        format!("last reading is {:.1}s old", age.as_secs_f64())
    } else {
        format!(
            "no line from the watch stream for {:.1}s",
            age.as_secs_f64()
        )
    }
}

/// Records every reading older than `stale_after` as failed (a watch stream's as silent), and
/// wakes its pool; starts the reader of every stream silent for `watch_idle_timeout` over,
/// polling, with the stream tried again ten polls later (as a stream that ends). A pool's
/// version then moves when one of its pods goes silent (a decision round plans it again, where
/// a pool at rest would otherwise be left alone), and its reconcile runs at once, as it does for
/// any change a sidecar reports. The readers' tasks keep no timer for this. Streams opened at
/// a pace the line budget no longer gives ([`mispaced`]) are opened again at its pace.
fn sweep_silent(pools: &Pools, shared: &Arc<Shared>, now: Instant) {
    let config = &shared.config;
    let target = shared.stream_pace();
    let mut repaced = 0;
    let mut silent = Vec::new();
    for PoolReaders { slot, running } in lock(pools).values_mut() {
        let mut readings = lock(&slot.readings);
        let mut went_stale = false;
        for (pod, reading) in readings.pods.iter_mut() {
            match reading {
                Reading::Snapshot { at, held_back, .. } => {
                    let (at, held_back) = (*at, held_back);
                    let age = now.saturating_duration_since(at);
                    if age <= config.stale_after {
                        // A stream whose pace the line budget now puts elsewhere is opened
                        // again at the budget's pace; the reading holds meanwhile, marked with
                        // that pace so that it is not opened twice.
                        if !held_back.is_zero()
                            && repaced < REPACE_PER_SWEEP
                            && mispaced(*held_back, target)
                            && let Some(stream) = running.get_mut(pod)
                        {
                            stream.task.abort();
                            stream.task = start_reader(shared, slot, pod, stream.address, now);
                            *held_back = target;
                            repaced += 1;
                        }
                        continue;
                    }
                    *reading = if held_back.is_zero() {
                        Reading::Failed {
                            error: stale(age, false),
                        }
                    } else {
                        Reading::Silent { since: at }
                    };
                    went_stale = true;
                }
                Reading::Silent { since } => {
                    let silence = now.saturating_duration_since(*since);
                    if silence < config.watch_idle_timeout {
                        continue;
                    }
                    if let Some(stream) = running.get_mut(pod) {
                        tracing::debug!(pool = %slot.pool.name, %pod, "watch stream silent; polling");
                        stream.task.abort();
                        let watch_from = now + config.poll_interval * 10;
                        stream.task = start_reader(shared, slot, pod, stream.address, watch_from);
                    }
                    // Given up once: from here on the reader's polls record what they find.
                    *reading = Reading::Failed {
                        error: stale(silence, true),
                    };
                }
                Reading::Failed { .. } => {}
            }
        }
        if went_stale {
            readings.touch(&shared.counter);
            readings.woken_at.get_or_insert(now);
            silent.push(slot.pool.clone());
        }
    }
    for pool in silent {
        // The receiver is gone only while the operator shuts down.
        let _ = shared.changes.send(pool);
    }
}

/// Starts the reader of one pod: its watch stream from `watch_from` on, polls until then.
fn start_reader(
    shared: &Arc<Shared>,
    slot: &Arc<PoolSlot>,
    pod: &Arc<str>,
    address: IpAddr,
    watch_from: Instant,
) -> AbortHandle {
    let reader = PodReader {
        slot: slot.clone(),
        pod: pod.clone(),
        shared: shared.clone(),
    };
    let address = SocketAddr::new(address, shared.config.port);
    shared
        .runtime
        .spawn(read_pod(reader, address, watch_from))
        .abort_handle()
}

/// What one pod's reader records into, and whom it wakes.
struct PodReader {
    slot: Arc<PoolSlot>,
    pod: Arc<str>,
    shared: Arc<Shared>,
}

impl PodReader {
    /// Marks the recorded snapshot current again, as its stream repeated the line it came from;
    /// false when there is none to renew (the sweep found the stream silent since), and the
    /// line must be read afresh.
    fn renew(&self) -> bool {
        let mut readings = lock(&self.slot.readings);
        match readings.pods.get_mut(&*self.pod) {
            Some(Reading::Snapshot { at, .. }) => {
                *at = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Records a line of the pod's watch stream, paced at `pace`, read `latency` after the
    /// request (zero after the first); false for a repeated line with no snapshot left to
    /// renew, which the caller then parses and hands over again.
    fn watched(&self, line: Line, latency: Duration, pace: Duration) -> bool {
        let recorded = match line {
            Line::New(snapshot) => {
                self.record(Reading::fresh(snapshot, pace));
                true
            }
            Line::Repeat => self.renew(),
        };
        if recorded {
            self.shared.observer.read_ok(latency, true);
        }
        recorded
    }

    /// Stores a reading and announces the pool when what the scaler sees changed.
    fn record(&self, reading: Reading) {
        let changed = {
            let mut readings = lock(&self.slot.readings);
            let previous = readings.pods.get_mut(&*self.pod);
            // What moves the scaler wakes the pool at once: the rule by which a paced stream
            // sends a line at once (`moves_at_once`). Anything else a plan reads (a request or
            // two in or out, counters) is a new version, planned at the next decision round;
            // under traffic nearly every line differs from the last in that way.
            let (changed, differs) = match (previous.as_deref(), &reading) {
                (
                    Some(Reading::Snapshot { snapshot: old, .. }),
                    Reading::Snapshot { snapshot: new, .. },
                ) => (new.moved_from(old), old != new),
                (Some(Reading::Failed { .. }), Reading::Failed { .. }) => (false, false),
                _ => (true, true),
            };
            match previous {
                Some(slot) => *slot = reading,
                None => {
                    readings.pods.insert(self.pod.clone(), reading);
                }
            }
            if differs {
                readings.touch(&self.shared.counter);
            }
            if changed {
                readings.woken_at.get_or_insert_with(Instant::now);
            }
            changed
        };
        if changed {
            // The receiver is gone only while the operator shuts down.
            let _ = self.shared.changes.send(self.slot.pool.clone());
        }
    }
}

/// A line of a watch stream, as handed to its reader.
enum Line {
    /// A snapshot parsed from a line that differs from the one before.
    New(QueueSnapshot),
    /// The line before, again (a heartbeat): the snapshot recorded from it still holds.
    Repeat,
}

/// Follows one pod's sidecar for as long as the task lives: its watch stream, or polls while
/// the stream does not work. The task's state is mostly the watch stream's (the stream is where
/// a reader spends its life); the connects and polls live in boxes of their own while they run,
/// since ten thousand readers make every hundred bytes of it a megabyte. (An async block, not
/// an async fn: a fn's future keeps its arguments twice, as arguments and as locals.)
#[allow(clippy::manual_async_fn)]
fn read_pod(
    reader: PodReader,
    address: SocketAddr,
    mut next_watch_attempt: Instant,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        loop {
            if reader.shared.config.watch && Instant::now() >= next_watch_attempt {
                let ended = watch_stream(&address, &reader).await;
                // Until the watch works again, polling keeps the data fresh. A sidecar that is not
                // listening yet (its pod is starting) is asked again at the next poll, so that a
                // new worker is followed by its stream as soon as it is up; one that answered but
                // refused or ended the stream, after ten polls.
                next_watch_attempt = match &ended {
                    ReadError::Connect(..) => Instant::now(),
                    _ => Instant::now() + reader.shared.config.poll_interval * 10,
                };
                tracing::debug!(pool = %reader.slot.pool.name, pod = %reader.pod, error = %ended, "watch stream ended; polling");
            }
            Box::pin(poll_and_wait(&reader, address)).await;
        }
    }
}

/// One poll of the pod's sidecar, recorded, then the wait until the next one is due.
async fn poll_and_wait(reader: &PodReader, address: SocketAddr) {
    let Shared {
        config,
        polls,
        observer,
        ..
    } = &*reader.shared;
    let started = Instant::now();
    let result = {
        let _permit = polls.acquire().await;
        poll_once(address, config).await
    };
    match result {
        Ok(snapshot) => {
            observer.read_ok(started.elapsed(), false);
            reader.record(Reading::fresh(snapshot, Duration::ZERO));
        }
        Err(error) => {
            observer.read_failed(error.category());
            reader.record(Reading::Failed {
                error: error.to_string(),
            });
        }
    }
    tokio::time::sleep_until(started + config.poll_interval).await;
}

async fn connect(address: SocketAddr, config: &ReaderConfig) -> Result<TcpStream, ReadError> {
    let stream = timeout(config.request_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ReadError::Timeout)?
        .map_err(|e| ReadError::Connect(address, e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `GET path`, and the response once its head has arrived.
async fn get(
    address: SocketAddr,
    path: &str,
    config: &ReaderConfig,
) -> Result<sidecar_http::Response, ReadError> {
    let stream = connect(address, config).await?;
    sidecar_http::get(stream, &address.to_string(), path)
        .await
        .map_err(|e| ReadError::Http(e.to_string()))
}

/// One `GET /queue`.
async fn poll_once(address: SocketAddr, config: &ReaderConfig) -> Result<QueueSnapshot, ReadError> {
    let work = async {
        let mut response = get(address, "/queue", config).await?;
        if !(200..300).contains(&response.status) {
            return Err(ReadError::Status(response.status));
        }
        let mut body = BytesMut::new();
        while let Some(piece) = response
            .data()
            .await
            .map_err(|e| ReadError::Invalid(e.to_string()))?
        {
            body.extend_from_slice(&piece);
            if body.len() > MAX_BODY {
                return Err(ReadError::Invalid("body too long".into()));
            }
        }
        QueueSnapshot::parse(&body).map_err(|e| ReadError::Invalid(e.to_string()))
    };
    timeout(config.request_timeout, work)
        .await
        .map_err(|_| ReadError::Timeout)?
}

/// The watch request: the pace in whole milliseconds, which every sidecar parses.
fn watch_target(pace: Duration) -> String {
    format!("/queue?watch=true&pace={}ms", pace.as_millis())
}

fn line_hash(line: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(line);
    hasher.finish()
}

/// A watch stream past its first line: the response, what has arrived of the next line, and
/// the hash of the last. A heartbeat repeats the last line and is not parsed again; the hash is
/// kept rather than the line or its snapshot (the reader has recorded that), as ten thousand
/// streams each holding one would cost megabytes.
struct Watch {
    response: sidecar_http::Response,
    buffer: BytesMut,
    last_line: Option<u64>,
    /// The pace the stream was asked for.
    pace: Duration,
}

impl Watch {
    /// The next piece of the stream, onto the buffer. The body's state is in the response, not
    /// in a future: a read dropped at the first line's deadline loses nothing, and a stream
    /// waiting for its next line holds no future of its own.
    fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), ReadError>> {
        let data = ready!(self.response.poll_data(cx))
            .map_err(|e| ReadError::Http(e.to_string()))?
            .ok_or_else(|| ReadError::Http("stream closed".into()))?;
        self.buffer.extend_from_slice(&data);
        Poll::Ready(Ok(()))
    }

    /// Hands every whole line on the buffer to `reader`, each with `latency`; how many.
    fn take_lines(&mut self, reader: &PodReader, latency: Duration) -> Result<usize, ReadError> {
        let mut taken = 0;
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            taken += 1;
            let hash = line_hash(line);
            if self.last_line == Some(hash) && reader.watched(Line::Repeat, latency, self.pace) {
                continue;
            }
            let snapshot =
                QueueSnapshot::parse(line).map_err(|e| ReadError::Invalid(e.to_string()))?;
            self.last_line = Some(hash);
            reader.watched(Line::New(snapshot), latency, self.pace);
        }
        if self.buffer.is_empty() {
            // Lines come whole, a second or more apart: hold no memory between them.
            self.buffer = BytesMut::new();
        } else if self.buffer.remaining() > MAX_BODY {
            return Err(ReadError::Invalid("line too long".into()));
        }
        Ok(taken)
    }
}

/// Opens `GET /queue?watch=true` and reads its first line, which the sidecar writes at once:
/// all of it within the request timeout, as a poll. The first line goes to `reader` with how
/// long it took since the request.
async fn open_watch(address: SocketAddr, reader: &PodReader) -> Result<Watch, ReadError> {
    let config = &reader.shared.config;
    let started = Instant::now();
    let deadline = started + config.request_timeout;
    let pace = reader.shared.stream_pace();
    let target = watch_target(pace);
    let response = tokio::time::timeout_at(deadline, get(address, &target, config))
        .await
        .map_err(|_| ReadError::Timeout)??;
    if !(200..300).contains(&response.status) {
        return Err(ReadError::Status(response.status));
    }
    let mut watch = Watch {
        response,
        buffer: BytesMut::new(),
        last_line: None,
        pace,
    };
    loop {
        let read = std::future::poll_fn(|cx| watch.poll_read(cx));
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| ReadError::Timeout)??;
        if watch.take_lines(reader, started.elapsed())? > 0 {
            return Ok(watch);
        }
    }
}

/// Follows the pod's watch stream, handing each line to `reader`, until it breaks or sends
/// garbage: why it ended. A stream that goes silent is the sweep's to give up. Opening it runs
/// once a stream, in a box of its own; following it is where the reader spends its life.
#[allow(clippy::manual_async_fn)] // as `read_pod`: its arguments held once
fn watch_stream<'a>(
    address: &'a SocketAddr,
    reader: &'a PodReader,
) -> impl Future<Output = ReadError> + 'a {
    async move {
        let mut watch = match Box::pin(open_watch(*address, reader)).await {
            Ok(watch) => watch,
            Err(error) => return error,
        };
        loop {
            let taken = match std::future::poll_fn(|cx| watch.poll_read(cx)).await {
                Ok(()) => watch.take_lines(reader, Duration::ZERO),
                Err(error) => Err(error),
            };
            if let Err(error) = taken {
                return error;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct NoMetrics;
    impl ReadObserver for NoMetrics {
        fn read_ok(&self, _: Duration, _: bool) {}
        fn read_failed(&self, _: &'static str) {}
    }

    const SNAPSHOT: &str = r#"{"version":1,"queued":3,"inFlight":2,"capacity":10,"arrivedTotal":5,"completedTotal":0,"busySecondsTotal":0.5,"oldestInFlightSeconds":0.1,"draining":false}"#;

    /// A one-route HTTP server on loopback that answers every request with `response`.
    async fn serve(response: String) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        address
    }

    fn http(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// The pool every test reads.
    fn test_pool() -> PoolKey {
        PoolKey {
            namespace: "ns".into(),
            name: "p".into(),
        }
    }

    fn config(port: u16) -> ReaderConfig {
        ReaderConfig {
            port,
            watch: false,
            poll_interval: Duration::from_millis(20),
            request_timeout: Duration::from_millis(300),
            ..ReaderConfig::default()
        }
    }

    async fn first_result(address: SocketAddr) -> Result<QueueSnapshot, String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config(address.port()), tx, Arc::new(NoMetrics));
        let pool = test_pool();
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        let announced = timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reading is announced");
        assert_eq!(announced, Some(pool.clone()));
        readers
            .snapshots(&pool, ["pod-a"])
            .remove(0)
            .map(|current| current.snapshot)
            .map_err(|why| why.to_string())
    }

    #[tokio::test]
    async fn valid_answer_is_a_reading() {
        let address = serve(http("200 OK", SNAPSHOT)).await;
        let snapshot = first_result(address).await.expect("valid snapshot");
        assert_eq!(snapshot.load(), 5);
    }

    #[tokio::test]
    async fn garbage_error_status_and_silence_are_missing_data() {
        for response in [
            http("200 OK", "{\"queued\": \"lots\"}"),
            http("200 OK", &SNAPSHOT.replace("\"queued\":3", "\"queued\":-3")),
            http("503 Service Unavailable", "draining"),
            "garbage\r\n\r\n".to_owned(),
        ] {
            let address = serve(response.clone()).await;
            assert!(
                first_result(address).await.is_err(),
                "accepted {response:?}"
            );
        }
        // A listener that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let result = first_result(address).await;
        assert!(result.unwrap_err().contains("timed out"));
        drop(listener);
    }

    #[tokio::test]
    async fn a_sidecar_that_starts_late_is_followed_by_its_stream_at_once() {
        // Nothing listens yet: the pod's sidecar is still starting.
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = reserved.local_addr().unwrap();
        drop(reserved);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let config = ReaderConfig {
            watch: true,
            ..config(address.port())
        };
        let readers = SidecarReaders::new(config, tx, Arc::new(NoMetrics));
        let pool = test_pool();
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the failed read is announced");

        // The sidecar comes up. Polls are refused, so a reading can only come from the stream.
        let listener = TcpListener::bind(address).await.unwrap();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    if String::from_utf8_lossy(&request[..n]).contains("watch=true") {
                        let line = format!("{SNAPSHOT}\n");
                        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                        let chunk = format!("{head}{:x}\r\n{line}\r\n", line.len());
                        let _ = socket.write_all(chunk.as_bytes()).await;
                        // Held open, as a stream is, until the test ends.
                        let _ = socket.read(&mut request).await;
                    } else {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let refused = http("503 Service Unavailable", "starting");
                        let _ = socket.write_all(refused.as_bytes()).await;
                    }
                });
            }
        });
        timeout(Duration::from_secs(5), async {
            while readers.snapshots(&pool, ["pod-a"])[0].is_err() {
                rx.recv().await;
            }
        })
        .await
        .expect("a reading from the stream");
        // At most the poll of the round in which the sidecar came up; the watch was retried
        // at the next one (not ten polls later, as after a refused stream).
        assert!(polls.load(std::sync::atomic::Ordering::SeqCst) <= 1);
    }

    /// Counts the lines and polls read.
    #[derive(Default)]
    struct CountReads(std::sync::atomic::AtomicUsize);
    impl ReadObserver for CountReads {
        fn read_ok(&self, _: Duration, _: bool) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn read_failed(&self, _: &'static str) {}
    }

    #[tokio::test]
    async fn a_pools_version_moves_with_what_its_readings_say_and_a_silent_stream_goes_stale() {
        // A sidecar whose watch stream sends the lines the test gives it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (lines, mut to_send) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            while let Some(line) = to_send.recv().await {
                let line = format!("{line}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                let _ = socket.write_all(chunk.as_bytes()).await;
            }
        });
        let (tx, mut woken) = mpsc::unbounded_channel();
        let reads = Arc::new(CountReads::default());
        let config = ReaderConfig {
            watch: true,
            // Long enough that no step below is slower, even on a loaded machine.
            stale_after: Duration::from_secs(2),
            watch_idle_timeout: Duration::from_secs(30),
            ..config(address.port())
        };
        let readers = SidecarReaders::new(config, tx, reads.clone());
        let pool = test_pool();
        assert_eq!(readers.version(&pool), 0, "nothing read yet");
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        let read = |count: usize| {
            let reads = reads.clone();
            async move {
                timeout(Duration::from_secs(5), async {
                    while reads.0.load(std::sync::atomic::Ordering::SeqCst) < count {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the line was read");
            }
        };

        lines.send(SNAPSHOT.to_owned()).unwrap();
        read(1).await;
        let first = readers.version(&pool);
        assert!(first > 0);
        assert!(woken.try_recv().is_ok(), "a first reading wakes the pool");
        let wake = readers.take_wake(&pool).expect("the wake is timed");
        assert!(readers.take_wake(&pool).is_none(), "a wake is taken once");
        // A heartbeat repeats the line: nothing changed.
        lines.send(SNAPSHOT.to_owned()).unwrap();
        read(2).await;
        assert_eq!(readers.version(&pool), first);
        // A figure the scaler does not wake for, but a plan reads: a new version, no wake.
        lines
            .send(SNAPSHOT.replace(
                "\"oldestInFlightSeconds\":0.1",
                "\"oldestInFlightSeconds\":7.5",
            ))
            .unwrap();
        read(3).await;
        let second = readers.version(&pool);
        assert!(second > first);
        assert!(woken.try_recv().is_err(), "woken for an unchanged load");
        assert!(readers.snapshots(&pool, ["pod-a"])[0].is_ok());
        // A request more in flight (5 → 6 of 10): planned at the next round, no wake.
        lines
            .send(SNAPSHOT.replace("\"inFlight\":2", "\"inFlight\":3"))
            .unwrap();
        read(4).await;
        let third = readers.version(&pool);
        assert!(third > second);
        assert!(woken.try_recv().is_err(), "woken for one request more");
        assert!(
            readers.take_wake(&pool).is_none(),
            "a wake timed for no wake"
        );
        // Half the concurrency more (6 → 11): at once.
        let step = SNAPSHOT.replace("\"inFlight\":2", "\"inFlight\":8");
        lines.send(step.clone()).unwrap();
        read(5).await;
        assert!(woken.try_recv().is_ok(), "not woken for a load step");
        assert!(
            readers.take_wake(&pool).is_some_and(|at| at > wake),
            "the load step's wake is timed from when it came"
        );
        let second = readers.version(&pool);

        // Silence: at stale_after the reading is recorded as failed, and the pool woken.
        timeout(Duration::from_secs(5), woken.recv())
            .await
            .expect("the stale reading is announced");
        let stale = readers.snapshots(&pool, ["pod-a"]).remove(0);
        assert!(
            matches!(&stale, Err(Unavailable::Failed(why)) if why.contains("no line")),
            "{stale:?}"
        );
        assert!(readers.version(&pool) > second);
        // The stream recovers with the line it sent last: that line's reading was given up, so
        // it is read afresh rather than taken as a heartbeat.
        lines.send(step).unwrap();
        timeout(Duration::from_secs(5), woken.recv())
            .await
            .expect("the fresh reading is announced");
        assert!(readers.snapshots(&pool, ["pod-a"])[0].is_ok());
    }

    /// A sidecar whose watch stream sends its head (and its first line if `first_line`), then
    /// nothing, its connection held open; its polls answer.
    /// A sidecar whose watch streams send their first line (or none) and then nothing; each
    /// watch request's line comes out of the receiver.
    async fn sidecar_whose_stream_stalls(
        first_line: bool,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (watches, watched) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                if request.contains("watch=true") {
                    let _ = watches.send(request.lines().next().unwrap_or_default().to_owned());
                    let mut head =
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
                    if first_line {
                        let line = format!("{SNAPSHOT}\n");
                        head.push_str(&format!("{:x}\r\n{line}\r\n", line.len()));
                    }
                    let _ = socket.write_all(head.as_bytes()).await;
                    held.push(socket);
                } else {
                    let _ = socket.write_all(http("200 OK", SNAPSHOT).as_bytes()).await;
                }
            }
        });
        (address, watched)
    }

    #[tokio::test]
    async fn a_stream_silent_past_its_idle_timeout_is_given_up_for_polls() {
        // A sidecar whose watch stream sends one line and then nothing.
        let (address, _watches) = sidecar_whose_stream_stalls(true).await;
        #[derive(Default)]
        struct Reads {
            lines: std::sync::atomic::AtomicUsize,
            polls: std::sync::atomic::AtomicUsize,
        }
        impl ReadObserver for Reads {
            fn read_ok(&self, _: Duration, watch: bool) {
                let count = if watch { &self.lines } else { &self.polls };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            fn read_failed(&self, _: &'static str) {}
        }
        let reads = Arc::new(Reads::default());
        let idle = Duration::from_millis(800);
        let config = ReaderConfig {
            watch: true,
            watch_idle_timeout: idle,
            stale_after: Duration::from_millis(300),
            // The stream is tried again ten intervals after it is given up: not within the test.
            poll_interval: Duration::from_secs(1),
            ..config(address.port())
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config, tx, reads.clone());
        let pool = test_pool();
        let started = Instant::now();
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        timeout(Duration::from_secs(5), async {
            while reads.polls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the silent stream is given up and the pod polled");
        assert_eq!(reads.lines.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            started.elapsed() >= idle,
            "given up after {:?}, before its idle timeout",
            started.elapsed()
        );
        assert!(readers.snapshots(&pool, ["pod-a"])[0].is_ok(), "polled");
    }

    #[tokio::test]
    async fn a_stream_that_never_sends_its_first_line_is_given_up_for_polls() {
        // A sidecar whose watch stream answers its head and then nothing (the contract has the
        // first line written at once).
        let (address, _watches) = sidecar_whose_stream_stalls(false).await;
        let request_timeout = Duration::from_millis(300);
        let config = ReaderConfig {
            watch: true,
            request_timeout,
            // Neither the idle timeout nor the sweep is what gives this stream up.
            watch_idle_timeout: Duration::from_secs(60),
            stale_after: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            ..config(address.port())
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config, tx, Arc::new(NoMetrics));
        let pool = test_pool();
        let started = Instant::now();
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        // The first reading, the poll's, announces the pool.
        let announced = timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            announced.expect("the stream is given up and the pod polled"),
            Some(pool.clone())
        );
        assert!(readers.snapshots(&pool, ["pod-a"])[0].is_ok());
        assert!(
            started.elapsed() >= request_timeout,
            "given up after {:?}, before the request timeout",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn syncing_one_pool_leaves_the_others_readers_alone() {
        let address = serve(http("200 OK", SNAPSHOT)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config(address.port()), tx, Arc::new(NoMetrics));
        let pool = |name: &str| PoolKey {
            namespace: "ns".into(),
            name: name.into(),
        };
        readers.sync_pool(&pool("a"), &[("a-1".into(), address.ip())]);
        readers.sync_pool(&pool("b"), &[("b-1".into(), address.ip())]);
        for _ in 0..2 {
            timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        }
        readers.sync_pool(&pool("a"), &[]);
        assert!(readers.snapshots(&pool("a"), ["a-1"])[0].is_err());
        assert!(readers.snapshots(&pool("b"), ["b-1"])[0].is_ok());
        let pools = lock(&readers.pools);
        assert_eq!(pools.len(), 1, "pool a keeps no entry, nor any reading");
        assert!(pools.contains_key(&pool("b")));
    }

    #[tokio::test]
    async fn pods_that_leave_are_forgotten() {
        let address = serve(http("200 OK", SNAPSHOT)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config(address.port()), tx, Arc::new(NoMetrics));
        let pool = test_pool();
        readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
        timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        readers.forget_pool(&pool);
        let after = readers.snapshots(&pool, ["pod-a"]);
        assert_eq!(after[0], Err(Unavailable::NotReadYet));
    }

    #[test]
    fn the_line_budget_stretches_the_pace_of_a_large_fleet_only() {
        let budget = |watch_pace, watch_line_budget| ReaderConfig {
            watch_pace,
            watch_line_budget,
            ..ReaderConfig::default()
        };
        let paced = budget(Duration::from_secs(1), 5_000);
        assert_eq!(stream_pace(&paced, 0), Duration::from_secs(1));
        assert_eq!(stream_pace(&paced, 1_000), Duration::from_secs(1));
        assert_eq!(stream_pace(&paced, 7_500), Duration::from_millis(1_500));
        assert_eq!(stream_pace(&paced, 7_501), Duration::from_millis(1_501));
        // Never past the heartbeat: a quiet stream sends that often anyway.
        assert_eq!(stream_pace(&paced, 10_380), Duration::from_secs(2));
        assert_eq!(stream_pace(&paced, usize::MAX), Duration::from_secs(2));
        let unpaced = budget(Duration::from_millis(20), 5_000);
        assert_eq!(stream_pace(&unpaced, 50), Duration::from_millis(20));
        assert_eq!(stream_pace(&unpaced, 1_000), Duration::from_millis(200));
        let unbounded = budget(Duration::from_millis(20), 0);
        assert_eq!(stream_pace(&unbounded, 100_000), Duration::from_millis(20));
    }

    #[test]
    fn a_stream_is_mispaced_past_a_quarter_either_way() {
        let ms = Duration::from_millis;
        assert!(mispaced(ms(1_000), ms(2_000)));
        assert!(mispaced(ms(2_000), ms(1_000)));
        assert!(!mispaced(ms(1_600), ms(2_000)));
        assert!(!mispaced(ms(2_000), ms(1_500)));
        assert!(!mispaced(ms(1_000), ms(1_000)));
    }

    #[tokio::test]
    async fn streams_are_opened_again_at_the_pace_a_growing_fleet_gets() {
        const TICK: Duration = Duration::from_millis(500);
        let (address, mut watches) = sidecar_whose_stream_stalls(true).await;
        let config = ReaderConfig {
            watch: true,
            // One line a second for all: one stream at 1 s, three at the 2 s longest.
            watch_line_budget: 1,
            ..config(address.port())
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let readers = SidecarReaders::new(config, tx, Arc::new(NoMetrics));
        let pool = test_pool();
        let pods: Vec<(Arc<str>, IpAddr)> = ["pod-a", "pod-b", "pod-c"]
            .into_iter()
            .map(|name| (name.into(), address.ip()))
            .collect();
        let mut next_watch = async || {
            let request = timeout(Duration::from_secs(5), watches.recv()).await;
            request.expect("a watch request").expect("the sidecar runs")
        };

        readers.sync_pool(&pool, &pods[..1]);
        assert!(next_watch().await.contains("pace=1000ms"));
        assert_eq!(readers.round_period(TICK), TICK);
        readers.sync_pool(&pool, &pods);
        // Rounds thin out as the pace stretches.
        assert_eq!(readers.round_period(TICK), TICK * 2);
        // The two new streams, and the first opened again by the sweep, at the new pace.
        for _ in 0..3 {
            let request = next_watch().await;
            assert!(request.contains("pace=2000ms"), "{request}");
        }
    }

    #[test]
    fn rounds_thin_out_only_by_the_stretch_of_the_pace() {
        let (second, tick) = (Duration::from_secs(1), Duration::from_millis(500));
        // At the pace asked for, or quicker (the heartbeat's cap), rounds come every tick.
        assert_eq!(round_period(second, second, second), second);
        assert_eq!(round_period(tick, second, Duration::from_millis(700)), tick);
        assert_eq!(round_period(tick, Duration::ZERO, second), tick);
        // The pace stretched by half, or doubled: so are the rounds.
        assert_eq!(
            round_period(second, second, Duration::from_millis(1_500)),
            Duration::from_millis(1_500)
        );
        assert_eq!(round_period(tick, second, 2 * second), second);
        // Never less often than the lines come, never more often than the tick.
        assert_eq!(
            round_period(tick, Duration::from_millis(200), second),
            second
        );
        assert_eq!(
            round_period(
                second,
                Duration::from_millis(200),
                Duration::from_millis(400)
            ),
            second
        );
    }

    #[test]
    fn readers_read_on_their_own_thread_until_dropped() {
        // A sidecar on a plain thread: one watch line, then it waits for the reader to hang up.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (hung_up, closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut socket, _) = listener.accept().unwrap();
            let (mut request, mut piece) = (Vec::new(), [0u8; 1024]);
            while !request.windows(4).any(|end| end == b"\r\n\r\n") {
                let n = socket.read(&mut piece).unwrap();
                assert!(n > 0, "the request head comes whole");
                request.extend_from_slice(&piece[..n]);
            }
            let line = format!("{SNAPSHOT}\n");
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            write!(socket, "{head}{:x}\r\n{line}\r\n", line.len()).unwrap();
            while socket.read(&mut piece).is_ok_and(|n| n > 0) {}
            hung_up.send(()).unwrap();
        });
        let pool = test_pool();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let readers = caller.block_on(async {
            let config = ReaderConfig {
                watch: true,
                ..config(address.port())
            };
            let readers = SidecarReaders::new(config, tx, Arc::new(NoMetrics));
            readers.sync_pool(&pool, &[("pod-a".into(), address.ip())]);
            readers
        });

        // The caller's runtime runs nothing from here on; the stream is read all the same.
        let (announce, announced) = std::sync::mpsc::channel();
        std::thread::spawn(move || announce.send(rx.blocking_recv()));
        let announced = announced.recv_timeout(Duration::from_secs(5));
        assert_eq!(announced, Ok(Some(pool.clone())));
        let reading = readers.snapshots(&pool, ["pod-a"]).remove(0);
        assert_eq!(reading.map(|current| current.snapshot.load()), Ok(5));

        drop(readers);
        closed
            .recv_timeout(Duration::from_secs(5))
            .expect("the stream is closed with the readers");
    }

    #[test]
    fn a_readers_task_stays_small() {
        // Ten thousand readers make every hundred bytes of a reader's state a megabyte: what
        // runs rarely (opening a stream, polls) is boxed while it runs, not kept in every task;
        // the stream's read keeps its state in the response rather than in a future; the stream
        // holds the hash of its last line, not its snapshot, and no timer (the sweep finds a
        // silent one); the readers share one pointer to what they all use. Up to 280 bytes,
        // the runtime's task (a 32-byte header, 24 bytes beside the future, a 48-byte trailer,
        // aligned to 128) is a 384-byte block.
        let (tx, _rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            config: ReaderConfig::default(),
            polls: Semaphore::new(1),
            observer: Arc::new(NoMetrics),
            counter: ChangeCounter::default(),
            changes: tx,
            runtime: runtime.handle().clone(),
            pods: Default::default(),
        });
        let reader = PodReader {
            slot: Arc::new(PoolSlot {
                pool: test_pool(),
                readings: Mutex::default(),
            }),
            pod: "p-1".into(),
            shared,
        };
        let task = read_pod(
            reader,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Instant::now(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 280, "a reader's task holds {size} bytes");
    }
}
