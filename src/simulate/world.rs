//! The simulated pool: worker pods with the sidecar's admission rules, a Service spreading
//! requests over the ready ones (or a shared Redis queue they pull from), pods that take a
//! while to start and drain on their way out, and a Deployment whose replicas an autoscaler
//! sets. Discrete events on simulated time; deterministic for a given seed.
//!
//! What a pod does follows the sidecar (`crates/sidecar/src/limiter.rs`, `crates/sidecar/src/drain.rs`):
//! `concurrency` requests in the app at once, the rest in FIFO order up to `max_queue`, 503 past
//! the bound, 503 after `queue_timeout` in the queue. A deleted pod leaves the Service at once,
//! finishes what it admitted and queued, and is gone once idle after the drain grace, or at
//! the drain timeout, which cuts what is left.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::trace::Request;
use crate::crd::RedisKind;
use asyncpool_contract::queue::{CONTRACT_VERSION, QueueSnapshot, Scope};

/// How requests reach the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Through a Service to one ready pod each, queueing in that pod's sidecar (the `proxy` and
    /// `report` sources).
    Service(Balancer),
    /// Into one shared Redis queue that every ready worker pulls from (the `redis` source).
    Shared(RedisKind),
}

/// How a Service picks a ready pod for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balancer {
    /// Uniformly at random: kube-proxy in iptables or nftables mode.
    #[default]
    Random,
    /// In turn: kube-proxy in IPVS mode with `rr`.
    RoundRobin,
    /// The pod with the least load: Envoy's least-request, Knative's activator.
    LeastLoaded,
}

/// How long a new pod takes from creation to ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartupDelay {
    Fixed(f64),
    Uniform { min: f64, max: f64 },
}

impl StartupDelay {
    pub fn mean(&self) -> f64 {
        match *self {
            StartupDelay::Fixed(seconds) => seconds,
            StartupDelay::Uniform { min, max } => (min + max) / 2.0,
        }
    }

    pub fn shortest(&self) -> f64 {
        match *self {
            StartupDelay::Fixed(seconds) => seconds,
            StartupDelay::Uniform { min, .. } => min,
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        match *self {
            StartupDelay::Fixed(seconds) => seconds,
            StartupDelay::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
        }
    }
}

/// What the pool's workers do, from the pool's spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Workers {
    pub concurrency: u32,
    pub max_queue: u32,
    pub queue_timeout: f64,
    /// After a drain starts, how long the sidecar stays up even when idle.
    pub drain_grace: f64,
    /// After a drain starts, when whatever is left is cut.
    pub drain_timeout: f64,
    pub dispatch: Dispatch,
    pub startup: StartupDelay,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// Not yet decided.
    Pending,
    /// Admitted to the app after waiting `wait` seconds; done once `done` is set.
    Served { wait: f64, done: bool },
    /// 503 on arrival: the pod's queue was full, or no pod was ready.
    Refused,
    /// 503 after waiting the whole queue timeout.
    TimedOut { wait: f64 },
    /// Still queued or running when its pod's drain timed out.
    Cut { wait: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Starting,
    Ready,
    /// Deleted: out of the Service, finishing its work. `closed` once the drain grace is over.
    Draining {
        since: f64,
        closed: bool,
    },
    Gone {
        at: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Waiting {
    request: usize,
    arrival: f64,
}

/// One worker pod and its sidecar's figures.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub created: f64,
    /// When it became ready (or will, while starting).
    pub ready_at: f64,
    pub phase: Phase,
    queue: VecDeque<Waiting>,
    running: BTreeSet<usize>,
    /// Slot-seconds of work up to `busy_since`; only ever grows, as the sidecar's counter does
    /// (a counter that goes back reads as a restarted sidecar).
    busy_total: f64,
    busy_since: f64,
    arrived_total: u64,
    completed_total: u64,
    /// Load × seconds since the last [`World::take_average_load`], up to `area_since`.
    load_area: f64,
    area_since: f64,
    taken_at: f64,
}

impl Pod {
    fn new(index: usize, now: f64, ready_at: f64) -> Self {
        Self {
            name: format!("worker-{index}"),
            created: now,
            ready_at,
            phase: if ready_at <= now {
                Phase::Ready
            } else {
                Phase::Starting
            },
            queue: VecDeque::new(),
            running: BTreeSet::new(),
            busy_total: 0.0,
            busy_since: now,
            arrived_total: 0,
            completed_total: 0,
            load_area: 0.0,
            area_since: now,
            taken_at: now,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Not deleted: counted by the Deployment (starting or ready).
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }

    pub fn in_flight(&self) -> u64 {
        self.running.len() as u64
    }

    /// Queued plus in flight.
    pub fn load(&self) -> u64 {
        self.queue.len() as u64 + self.in_flight()
    }

    /// Brings the load integral up to `now`; call before every change of the load.
    fn integrate(&mut self, now: f64) {
        self.load_area += self.load() as f64 * (now - self.area_since).max(0.0);
        self.area_since = now;
    }

    /// Brings the busy total up to `now`; call before every change of what runs.
    fn account_busy(&mut self, now: f64) {
        self.busy_total += self.running.len() as f64 * (now - self.busy_since).max(0.0);
        self.busy_since = now;
    }

    fn busy_seconds_at(&self, now: f64) -> f64 {
        self.busy_total + self.running.len() as f64 * (now - self.busy_since).max(0.0)
    }

    fn start(&mut self, now: f64, request: usize) {
        self.integrate(now);
        self.account_busy(now);
        self.running.insert(request);
    }

    fn has_room(&self, concurrency: u32) -> bool {
        self.running.len() < concurrency as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// A request leaves the app.
    Done {
        pod: usize,
        request: usize,
    },
    Ready(usize),
    /// A queued request's time is up, if it is still queued.
    QueueDeadline(usize),
    GraceOver(usize),
    DrainDeadline(usize),
}

#[derive(Debug, Clone, Copy)]
struct Timed {
    at: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.total_cmp(&other.at).then(self.seq.cmp(&other.seq))
    }
}

/// An autoscaler driving the simulated Deployment.
pub trait Autoscaler {
    /// The Deployment's replicas when the run starts (those pods start ready).
    fn initial_replicas(&self) -> u32;
    /// When it next looks at the pool; `changed_at` is when the pool's figures first changed
    /// since its last look, if they did.
    fn next_look(&self, changed_at: Option<f64>) -> f64;
    /// Looks at the pool at `world.now()` and returns the Deployment's replicas.
    fn look(&mut self, world: &mut World) -> u32;
    /// The pods to delete first when the replicas drop by `count`.
    fn victims(&self, world: &World, count: usize) -> Vec<usize> {
        world.replica_set_victims(count)
    }
    /// Why it changed the size, when it can say: (time, reason), one per change.
    fn explanations(&mut self) -> Vec<(f64, String)> {
        Vec::new()
    }
}

/// How long after the trace's work ends a run goes on for requests still waiting; what is
/// unserved then stays unserved.
const LONGEST_TAIL: f64 = 24.0 * 3600.0;

/// A run's record: what became of every request, every pod's life, the replicas over time.
#[derive(Debug, Clone)]
pub struct Run {
    pub fates: Vec<Fate>,
    /// (created, gone) per pod; `gone` is the horizon for pods still there at the end.
    pub pod_lives: Vec<(f64, f64)>,
    /// The Deployment's replicas from each change on, starting at time 0.
    pub replicas: Vec<(f64, u32)>,
    /// When the run ended: the trace's end of work or the last request's resolution, later.
    pub horizon: f64,
}

/// The simulated pool.
pub struct World<'t> {
    workers: Workers,
    trace: &'t [Request],
    end_of_work: f64,
    now: f64,
    next_arrival: usize,
    events: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    pods: Vec<Pod>,
    /// Ready pods, in the order they became ready.
    endpoints: Vec<usize>,
    shared: VecDeque<Waiting>,
    replicas: u32,
    rng: ChaCha8Rng,
    fates: Vec<Fate>,
    unresolved: usize,
    last_resolution: f64,
    round_robin: usize,
    changed_at: Option<f64>,
    replica_log: Vec<(f64, u32)>,
}

impl<'t> World<'t> {
    pub fn new(workers: Workers, trace: &'t [Request], end_of_work: f64, seed: u64) -> Self {
        Self {
            workers,
            trace,
            end_of_work,
            now: 0.0,
            next_arrival: 0,
            events: BinaryHeap::new(),
            seq: 0,
            pods: Vec::new(),
            endpoints: Vec::new(),
            shared: VecDeque::new(),
            replicas: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            fates: vec![Fate::Pending; trace.len()],
            unresolved: trace.len(),
            last_resolution: 0.0,
            round_robin: 0,
            changed_at: None,
            replica_log: Vec::new(),
        }
    }

    /// Runs the trace through the pool under `autoscaler`. `progress` hears the fraction of
    /// the trace's work done, now and then.
    pub fn run(mut self, autoscaler: &mut dyn Autoscaler, progress: &mut dyn FnMut(f64)) -> Run {
        let initial = autoscaler.initial_replicas();
        self.replicas = initial;
        for _ in 0..initial {
            self.create_pod(true);
        }
        // They were created one start-up delay before the run (their pod-seconds count from 0).
        let startup = self.workers.startup.mean();
        for pod in &mut self.pods {
            pod.created = -startup;
        }
        self.replica_log.push((0.0, initial));
        let mut reported = 0.0;
        loop {
            let next_event = self.events.peek().map_or(f64::INFINITY, |e| e.0.at);
            let next_arrival = self
                .trace
                .get(self.next_arrival)
                .map_or(f64::INFINITY, |r| r.arrival);
            let next_look = autoscaler.next_look(self.changed_at).max(self.now);
            let next = next_event.min(next_arrival).min(next_look);
            if !next.is_finite() {
                // Nothing can happen any more: what is still pending stays unserved.
                break;
            }
            if next > self.end_of_work + LONGEST_TAIL {
                // A pool that cannot serve what waits (paused at zero, say) would look on
                // for ever.
                self.now = self.now.max(self.end_of_work + LONGEST_TAIL);
                break;
            }
            if self.unresolved == 0 {
                let horizon = self.end_of_work.max(self.last_resolution);
                if next > horizon {
                    self.now = horizon.max(self.now);
                    break;
                }
            }
            self.now = next;
            // Completions first (they free slots), then arrivals, then the autoscaler's look.
            if next_event <= next_arrival && next_event <= next_look {
                if let Some(Reverse(timed)) = self.events.pop() {
                    self.handle(timed.event);
                }
            } else if next_arrival <= next_look {
                self.arrive(self.next_arrival);
                self.next_arrival += 1;
            } else {
                self.changed_at = None;
                let replicas = autoscaler.look(&mut self);
                self.set_replicas(replicas, autoscaler);
            }
            let done = self.now / self.end_of_work.max(f64::MIN_POSITIVE);
            if done - reported >= 0.01 {
                reported = done;
                progress(done.min(1.0));
            }
        }
        let horizon = self.now;
        Run {
            pod_lives: self
                .pods
                .iter()
                .map(|pod| match pod.phase {
                    Phase::Gone { at } => (pod.created.max(0.0), at.min(horizon)),
                    _ => (pod.created.max(0.0), horizon),
                })
                .collect(),
            fates: self.fates,
            replicas: self.replica_log,
            horizon,
        }
    }

    // --- what autoscalers see ------------------------------------------------------------------

    pub fn now(&self) -> f64 {
        self.now
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The Deployment's `spec.replicas`.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Indices of the pods the Deployment counts (starting or ready), oldest first.
    pub fn live_pods(&self) -> impl Iterator<Item = usize> + '_ {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| pod.is_live())
            .map(|(index, _)| index)
    }

    pub fn ready_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The pod's sidecar answer now: its own figures, or the shared queue's for a Redis pool.
    pub fn snapshot(&self, pod: usize) -> QueueSnapshot {
        match self.workers.dispatch {
            Dispatch::Shared(kind) => self.shared_snapshot(kind),
            Dispatch::Service(_) => {
                let pod = &self.pods[pod];
                QueueSnapshot {
                    version: CONTRACT_VERSION,
                    queued: pod.queue.len() as u64,
                    in_flight: pod.in_flight(),
                    capacity: u64::from(self.workers.concurrency),
                    arrived_total: pod.arrived_total,
                    completed_total: pod.completed_total,
                    busy_seconds_total: pod.busy_seconds_at(self.now),
                    oldest_in_flight_seconds: 0.0,
                    draining: false,
                    scope: Scope::Pod,
                }
            }
        }
    }

    /// The shared queue as the Redis source reports it: a list's length (what workers popped
    /// is invisible), or a stream group's lag plus its pending entries.
    pub fn shared_snapshot(&self, kind: RedisKind) -> QueueSnapshot {
        let in_flight = match kind {
            RedisKind::List => 0,
            RedisKind::Stream => self.pods.iter().map(Pod::in_flight).sum(),
        };
        asyncpool_contract::redis::snapshot(
            (self.shared.len() as u64, in_flight),
            u64::from(self.workers.concurrency),
        )
    }

    /// The pool's load as one queue-length metric: pod loads added up (live pods), or the
    /// shared queue's reading.
    pub fn total_load(&self) -> f64 {
        match self.workers.dispatch {
            Dispatch::Shared(kind) => self.shared_snapshot(kind).load() as f64,
            Dispatch::Service(_) => self.live_pods().map(|i| self.pods[i].load() as f64).sum(),
        }
    }

    /// The ready pods' mean load per second since the last call, added up: what Knative's
    /// queue-proxies report (a time-weighted average including queued requests). A shared
    /// queue adds its length now.
    pub fn take_average_load(&mut self) -> f64 {
        let now = self.now;
        let mut total = 0.0;
        for pod in self.pods.iter_mut() {
            pod.integrate(now);
            let seconds = now - pod.taken_at;
            if pod.is_ready() && seconds > 0.0 {
                total += pod.load_area / seconds;
            }
            pod.load_area = 0.0;
            pod.taken_at = now;
        }
        if let Dispatch::Shared(kind) = self.workers.dispatch {
            total += self.shared_snapshot(kind).queued as f64;
        }
        total
    }

    /// Kubernetes' own choice when a ReplicaSet shrinks (`ActivePodsWithRanks`): pods not yet
    /// ready first, then the most recently ready, then the youngest.
    pub fn replica_set_victims(&self, count: usize) -> Vec<usize> {
        let mut live: Vec<usize> = self.live_pods().collect();
        live.sort_by(|&a, &b| {
            let (a, b) = (&self.pods[a], &self.pods[b]);
            a.is_ready()
                .cmp(&b.is_ready())
                .then(b.ready_at.total_cmp(&a.ready_at))
                .then(b.created.total_cmp(&a.created))
        });
        live.truncate(count);
        live
    }

    // --- the Deployment ------------------------------------------------------------------------

    fn set_replicas(&mut self, replicas: u32, autoscaler: &dyn Autoscaler) {
        if replicas != self.replicas {
            self.replicas = replicas;
            self.replica_log.push((self.now, replicas));
        }
        let live = self.live_pods().count();
        let wanted = replicas as usize;
        if live < wanted {
            for _ in live..wanted {
                self.create_pod(false);
            }
        } else if live > wanted {
            for victim in autoscaler.victims(self, live - wanted) {
                self.delete_pod(victim);
            }
        }
    }

    fn create_pod(&mut self, ready_now: bool) {
        let index = self.pods.len();
        let delay = if ready_now {
            0.0
        } else {
            self.workers.startup.sample(&mut self.rng)
        };
        let pod = Pod::new(index, self.now, self.now + delay);
        if pod.is_ready() {
            self.pods.push(pod);
            self.became_ready(index);
        } else {
            self.pods.push(pod);
            self.schedule(self.now + delay, Event::Ready(index));
        }
        self.changed();
    }

    fn delete_pod(&mut self, index: usize) {
        let now = self.now;
        let grace = self.workers.drain_grace;
        let timeout = self.workers.drain_timeout;
        let pod = &mut self.pods[index];
        match pod.phase {
            Phase::Starting => pod.phase = Phase::Gone { at: now },
            Phase::Ready => {
                pod.phase = Phase::Draining {
                    since: now,
                    closed: false,
                };
                self.endpoints.retain(|&e| e != index);
                self.schedule(now + grace, Event::GraceOver(index));
                self.schedule(now + timeout, Event::DrainDeadline(index));
            }
            Phase::Draining { .. } | Phase::Gone { .. } => {}
        }
        self.changed();
    }

    // --- events --------------------------------------------------------------------------------

    fn schedule(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Timed {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn changed(&mut self) {
        self.changed_at.get_or_insert(self.now);
    }

    fn resolve(&mut self, request: usize, fate: Fate) {
        self.fates[request] = fate;
        self.unresolved -= 1;
        self.last_resolution = self.last_resolution.max(self.now);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Done { pod, request } => self.finish(pod, request),
            Event::Ready(pod) => {
                if self.pods[pod].phase == Phase::Starting {
                    self.pods[pod].phase = Phase::Ready;
                    self.became_ready(pod);
                    self.changed();
                }
            }
            Event::QueueDeadline(pod) => {
                self.expire(pod);
                self.retire_if_drained(pod);
            }
            Event::GraceOver(pod) => {
                if let Phase::Draining { since, .. } = self.pods[pod].phase {
                    self.pods[pod].phase = Phase::Draining {
                        since,
                        closed: true,
                    };
                    self.retire_if_drained(pod);
                }
            }
            Event::DrainDeadline(pod) => self.cut(pod),
        }
    }

    fn became_ready(&mut self, pod: usize) {
        self.endpoints.push(pod);
        if let Dispatch::Shared(_) = self.workers.dispatch {
            self.pull(pod);
        }
    }

    fn arrive(&mut self, request: usize) {
        self.changed();
        let arrival = self.trace[request].arrival;
        let waiting = Waiting { request, arrival };
        let balancer = match self.workers.dispatch {
            Dispatch::Shared(_) => {
                self.shared.push_back(waiting);
                if let Some(pod) = self.least_loaded_with_room() {
                    self.pull(pod);
                }
                return;
            }
            Dispatch::Service(balancer) => balancer,
        };
        let Some(pod) = self.pick(balancer) else {
            self.resolve(request, Fate::Refused);
            return;
        };
        self.expire(pod);
        let concurrency = self.workers.concurrency;
        let max_queue = self.workers.max_queue as usize;
        let now = self.now;
        let p = &mut self.pods[pod];
        p.arrived_total += 1;
        if p.queue.is_empty() && p.has_room(concurrency) {
            self.begin(pod, waiting);
        } else if p.queue.len() < max_queue {
            p.integrate(now);
            p.queue.push_back(waiting);
            let deadline = arrival + self.workers.queue_timeout;
            self.schedule(deadline, Event::QueueDeadline(pod));
        } else {
            // The limiter counts a refusal as arrived and completed at once.
            p.completed_total += 1;
            self.resolve(request, Fate::Refused);
        }
    }

    fn pick(&mut self, balancer: Balancer) -> Option<usize> {
        let count = self.endpoints.len();
        if count == 0 {
            return None;
        }
        let index = match balancer {
            Balancer::Random => self.rng.random_range(0..count),
            Balancer::RoundRobin => {
                self.round_robin = self.round_robin.wrapping_add(1);
                self.round_robin % count
            }
            Balancer::LeastLoaded => {
                let pods = &self.pods;
                (0..count).min_by_key(|&i| pods[self.endpoints[i]].load())?
            }
        };
        Some(self.endpoints[index])
    }

    /// Puts a request into the app on `pod` now.
    fn begin(&mut self, pod: usize, waiting: Waiting) {
        let now = self.now;
        let service = self.trace[waiting.request].service;
        self.pods[pod].start(now, waiting.request);
        self.fates[waiting.request] = Fate::Served {
            wait: now - waiting.arrival,
            done: false,
        };
        self.schedule(
            now + service,
            Event::Done {
                pod,
                request: waiting.request,
            },
        );
    }

    fn finish(&mut self, pod: usize, request: usize) {
        let now = self.now;
        let p = &mut self.pods[pod];
        p.integrate(now);
        p.account_busy(now);
        if !p.running.remove(&request) {
            return; // cut by the drain timeout
        }
        p.completed_total += 1;
        if let Fate::Served { wait, .. } = self.fates[request] {
            self.resolve(request, Fate::Served { wait, done: true });
        }
        self.changed();
        match self.workers.dispatch {
            Dispatch::Service(_) => {
                self.expire(pod);
                if let Some(next) = self.pods[pod].queue.pop_front() {
                    self.pods[pod].integrate(now);
                    self.begin(pod, next);
                }
            }
            Dispatch::Shared(_) => {
                if self.pods[pod].is_ready() {
                    self.pull(pod);
                }
            }
        }
        self.retire_if_drained(pod);
    }

    /// Drops the queued requests whose queue timeout has passed (the sidecar answers them 503).
    fn expire(&mut self, pod: usize) {
        let now = self.now;
        let timeout = self.workers.queue_timeout;
        while let Some(head) = self.pods[pod].queue.front().copied() {
            if head.arrival + timeout > now {
                break;
            }
            let p = &mut self.pods[pod];
            p.integrate(now);
            p.queue.pop_front();
            p.completed_total += 1;
            self.resolve(head.request, Fate::TimedOut { wait: timeout });
            self.changed();
        }
    }

    fn pull(&mut self, pod: usize) {
        let concurrency = self.workers.concurrency;
        while self.pods[pod].has_room(concurrency) {
            let Some(next) = self.shared.pop_front() else {
                break;
            };
            self.begin(pod, next);
        }
    }

    fn least_loaded_with_room(&self) -> Option<usize> {
        let concurrency = self.workers.concurrency;
        self.endpoints
            .iter()
            .copied()
            .filter(|&pod| self.pods[pod].has_room(concurrency))
            .min_by_key(|&pod| self.pods[pod].in_flight())
    }

    fn retire_if_drained(&mut self, pod: usize) {
        let p = &mut self.pods[pod];
        if let Phase::Draining { closed: true, .. } = p.phase
            && p.load() == 0
        {
            p.phase = Phase::Gone { at: self.now };
        }
    }

    /// The drain timeout: what is still queued or running is cut, and the pod is gone.
    fn cut(&mut self, pod: usize) {
        if !matches!(self.pods[pod].phase, Phase::Draining { .. }) {
            return;
        }
        let now = self.now;
        let p = &mut self.pods[pod];
        p.integrate(now);
        let queued: Vec<Waiting> = p.queue.drain(..).collect();
        let running: Vec<usize> = std::mem::take(&mut p.running).into_iter().collect();
        p.phase = Phase::Gone { at: now };
        for waiting in queued {
            self.resolve(
                waiting.request,
                Fate::Cut {
                    wait: now - waiting.arrival,
                },
            );
        }
        for request in running {
            let wait = match self.fates[request] {
                Fate::Served { wait, .. } => wait,
                _ => 0.0,
            };
            self.resolve(request, Fate::Cut { wait });
        }
    }
}
