//! Reconciling one pool, as a pipeline: observe → validate → decide → build → apply → status →
//! events. Each step either hands the next one what it needs or stops with a reason that ends
//! up in the pool's conditions (for problems a user must fix) or in a `ReconcileError` (for
//! problems that a retry can fix).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::crd::{AsyncWorkerPool, AsyncWorkerPoolStatus};
use crate::metrics::{CategoryLabel, KindLabel, Metrics, PoolFigures, ResultLabel};
use crate::planner::{self, Plan, PlanInput, Rest, RestStamp, Sources, WorkerPod};
use crate::pool::EffectiveSpec;
use crate::pool::PoolKey;
use crate::queue::external::ExternalQueues;
use crate::queue::reader::SidecarReaders;
use asyncpool_contract::queue::QueueSnapshot;
use asyncpool_contract::redis::RedisTls;

use crate::resources::{self, FIELD_MANAGER};
use crate::scaling::{DecisionKind, MetricsState};
use crate::status::{self, Judgement, merge_conditions};

mod live;
mod pod_index;
mod pool_store;
mod status_desk;
pub use live::{LiveDeployment, LiveService};
pub use pod_index::PodIndex;
pub use pool_store::PoolStore;
pub use status_desk::{StatusDesk, Submission};

/// Annotation holding a hash of what the operator last applied, so that an unchanged pool
/// costs no API write.
const APPLIED_HASH: &str = "asyncpool.dev/applied-hash";
/// Kubernetes removes the pods with the lowest cost first when a ReplicaSet shrinks.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost that marks a worker to go first.
const VICTIM_COST: &str = "-1000";
/// Longest a scale-down waits for the victims' marks to show in the pod cache.
const MARK_PROPAGATION_LIMIT: Duration = Duration::from_secs(2);
/// A pool whose plan is carried out is reconciled again after this long even if nothing
/// changed: a safety net under the watches and the decision rounds, not how it follows load.
const RESYNC: Duration = Duration::from_secs(300);

/// Operator-wide settings that reconcile needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of the injected sidecar, unless a pool overrides it.
    pub sidecar_image: String,
    /// How often every pool's plan is looked at from memory (a decision round), so that time
    /// windows advance without changes; a pool is reconciled only when its plan asks for
    /// something the cluster does not show.
    pub tick: Duration,
    /// Least time between two status writes that only change the load figure.
    pub status_interval: Duration,
    /// Whom a `rediss://` queue's certificate may come from: the operator's own reads use it,
    /// and its private CA bundle, if any, goes to the sidecars of `rediss://` pools.
    pub redis_tls: RedisTls,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sidecar_image: crate::resources::DEFAULT_SIDECAR_IMAGE.into(),
            tick: Duration::from_secs(1),
            status_interval: Duration::from_secs(2),
            redis_tls: RedisTls::public_roots(),
        }
    }
}

/// Shared state of all reconciles.
/// Label-scoped caches of what the pools own, kept by the controller's watches.
pub struct Caches {
    pub pods: PodIndex,
    pub deployments: Store<LiveDeployment>,
    pub services: Store<LiveService>,
    /// True once every cache above holds its first full list.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Caches {
    /// Waits until every cache holds its first full list (returns at once if whoever fills
    /// them has stopped: the operator is shutting down).
    async fn synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|synced| *synced).await;
    }
}

/// What every reconcile shares: the infrastructure, built once at start, and the per-pool
/// memory in its own store.
pub struct Context {
    pub client: Client,
    /// For the writes that carry out a plan (a Deployment, the marks on workers to go): they go
    /// ahead of status writes and Events in the client's rate limit.
    pub urgent: Client,
    pub caches: Caches,
    pub readers: SidecarReaders,
    /// Queues the operator reads itself (Redis queues of pools with no ready worker).
    pub external: ExternalQueues,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// What the operator remembers per pool between reconciles.
    pub pools: PoolStore,
    /// Writes the statuses reconciles hand over.
    pub statuses: StatusDesk,
}

impl Context {
    /// A context whose caches are empty and never filled, and whose readers and external
    /// queues read nothing: for running the pipeline against a mocked or a test API server,
    /// where every object comes from the API (the caches only save calls).
    pub fn for_tests(client: Client, settings: Settings) -> Self {
        let (changes, _) = tokio::sync::mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: None,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            caches: Caches {
                pods: PodIndex::default(),
                deployments: kube::runtime::reflector::store().0,
                services: kube::runtime::reflector::store().0,
                synced: tokio::sync::watch::channel(true).1,
            },
            readers: SidecarReaders::new(
                crate::queue::reader::ReaderConfig::default(),
                changes.clone(),
                metrics.clone(),
            ),
            external: ExternalQueues::new(changes, client.clone(), settings.redis_tls.clone()),
            statuses: StatusDesk::start(client.clone(), recorder.clone(), metrics.clone()),
            recorder,
            urgent: client.clone(),
            client,
            settings,
            metrics,
            pools: PoolStore::default(),
        }
    }

    /// Drops everything kept for pools that no longer exist.
    pub fn forget_pools_except(&self, live: &HashSet<PoolKey>) {
        self.statuses.forget_except(live);
        for pool in self.pools.forget_except(live) {
            self.readers.forget_pool(&pool);
            self.external.stop(&pool);
            tracing::info!(namespace = %pool.namespace, pool = %pool.name, "pool deleted; forgot it");
        }
        // Apart from the memory: a pool that was only ever refused has series but no memory.
        self.metrics.forget_pools_except(live);
    }
}

/// A failure that a retry may fix; its category is a bounded metrics label.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the pool has no namespace")]
    NoNamespace,
    #[error("reading the {what}: {source}")]
    Observe {
        what: &'static str,
        source: kube::Error,
    },
    #[error("applying the {what}: {source}")]
    Apply {
        what: &'static str,
        source: kube::Error,
    },
    #[error("building the {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// Whether only a change to the pool can fix this: the API server refused, as invalid, what
    /// the pool's spec makes the operator build (a template it rejects, say). Retrying the same
    /// request cannot succeed; the next change to the pool triggers a reconcile anyway.
    pub fn needs_a_spec_change(&self) -> bool {
        match self {
            ReconcileError::NoNamespace | ReconcileError::Serialize { .. } => true,
            ReconcileError::Apply {
                source: kube::Error::Api(status),
                ..
            } => status.code == 422,
            _ => false,
        }
    }

    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::NoNamespace => "invalid_object",
            ReconcileError::Observe { .. } => "observe",
            ReconcileError::Apply { .. } => "apply",
            ReconcileError::Serialize { .. } => "serialize",
        }
    }
}

/// Step 1's result: the cluster's current state for this pool.
struct Observed {
    deployment: Option<Arc<LiveDeployment>>,
    service: Option<Arc<LiveService>>,
    /// Same-named objects that belong to someone else.
    foreign: Vec<String>,
    pods: Arc<[WorkerPod]>,
    /// Its pods being deleted that may still serve: what the proxies still route to them (late
    /// when the control plane is slow) is the pool's load too.
    draining: Arc<[WorkerPod]>,
}

pub async fn reconcile(
    pool: Arc<AsyncWorkerPool>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    // Every log line of this reconcile names its pool.
    let span = tracing::info_span!(
        "reconcile",
        namespace = pool.namespace().as_deref().unwrap_or(""),
        pool = %pool.name_any()
    );
    let result = reconcile_pool(&pool, &ctx).instrument(span).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = ResultLabel {
        result: if result.is_ok() { "ok" } else { "error" },
    };
    ctx.metrics.reconciles.get_or_create(&label).inc();
    if result.is_ok() {
        ctx.pools.record_success(|| PoolKey::of(&pool));
    }
    if let Err(error) = &result {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&CategoryLabel {
                category: error.category(),
            })
            .inc();
    }
    result
}

/// First retry after a failure, and the longest wait between retries.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait before retry `failures` (1 for the first failure in a row): doubling, capped.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// How a failed reconcile is retried. A spec the user must fix waits for the pool to change;
/// anything else (the API server unreachable, a conflict) is retried with a per-pool exponential
/// back-off, so one broken pool does not hammer the API server. Either way the pool gets a
/// Warning Event on the first failure of a run, with the error.
pub fn error_policy(
    pool: Arc<AsyncWorkerPool>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    // Without a namespace there is no pool to count against; it still backs off.
    let key = PoolKey::of(&pool).unwrap_or_else(|| PoolKey {
        namespace: String::new(),
        name: pool.name_any(),
    });
    let failures = ctx.pools.record_failure(key);
    let user_must_fix = error.needs_a_spec_change();
    tracing::warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), %error, category = error.category(), failures, user_must_fix, "reconcile failed");
    if failures == 1 {
        let warning = status::Warning {
            reason: "ReconcileFailed",
            note: error.to_string(),
        };
        let (pool, ctx) = (pool.clone(), ctx.clone());
        tokio::spawn(async move {
            status_desk::publish_warning(&ctx.recorder, &pool.object_ref(&()), warning).await;
        });
    }
    if user_must_fix {
        Action::await_change()
    } else {
        Action::requeue(retry_delay(failures))
    }
}

async fn reconcile_pool(pool: &AsyncWorkerPool, ctx: &Context) -> Result<Action, ReconcileError> {
    let key = PoolKey::of(pool).ok_or(ReconcileError::NoNamespace)?;
    let _in_flight = ctx.pools.reconciling(&key);
    let namespace = key.namespace.clone();
    // A pool on its way out: the garbage collector removes what it owns, and an apply now
    // would re-create a Service or Deployment already collected (foreground deletion).
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    // Planned before the caches hold a full list, a pool would see no pods (and report that),
    // and each missing Deployment and Service would cost a GET: after a restart, thousands.
    ctx.caches.synced().await;
    let woken_at = ctx.readers.take_wake(&key);
    if let Some(woken_at) = woken_at {
        ctx.metrics.reaction_reached("started", woken_at);
    }
    let observed = observe(pool, &key, ctx).await?;
    let effective = match accept(pool, &observed) {
        Ok(effective) => effective,
        Err((refusal, next)) => return Ok(refuse(pool, ctx, &key, &observed, refusal, next)),
    };

    let own_reading = own_queue_reading(pool, &key, ctx, &observed, &effective);
    let plan = decide(pool, &key, ctx, &observed, &effective, own_reading);
    // Counted here, not in the decision rounds: the decisions a reconcile carries out.
    if let Some(decision) = &plan.decision {
        ctx.metrics
            .decisions
            .get_or_create(&KindLabel {
                kind: decision.kind.as_str(),
            })
            .inc();
    }

    let deployment = resources::deployment(
        pool,
        &effective,
        &ctx.settings.sidecar_image,
        ctx.settings.redis_tls.private_ca_pem(),
        plan.replicas,
    );
    let service = resources::service(pool);
    let (deployment, service) = match (deployment, service) {
        (Ok(d), Ok(s)) => (d, s),
        (Err(problem), _) | (_, Err(problem)) => {
            let refusal = status::refused("InvalidTemplate", problem.to_string());
            return Ok(refuse(
                pool,
                ctx,
                &key,
                &observed,
                refusal,
                Action::await_change(),
            ));
        }
    };

    let scaled_from = live_replicas(&observed);
    let scaled = scaled_from.is_some_and(|from| from != plan.replicas);
    mark_victims(ctx, &namespace, &plan.victims).await?;
    let written =
        write_deployment(ctx, &namespace, deployment, observed.deployment.as_deref()).await?;
    if let Some(written) = written {
        if let (Some(woken_at), true) = (woken_at, scaled) {
            ctx.metrics.reaction_reached("scaled", woken_at);
        }
        ctx.pools.wrote_deployment(&key, written.into());
    }
    apply_if_changed(
        &ctx.client,
        &namespace,
        service,
        observed.service.as_deref(),
        "Service",
        |_, _| false,
    )
    .await?;

    let judgements = judge(pool, &observed, &plan);
    let report = StatusReport {
        observed: &observed,
        plan: Some(&plan),
        judgements: &judgements,
        urgent: scaled,
    };
    write_status(pool, ctx, &key, report);
    ctx.pools.set_carried_out(&key, true);

    if let (true, Some(from)) = (scaled, scaled_from) {
        publish_scale_event(pool, ctx, from, &plan);
    }
    Ok(Action::requeue(RESYNC))
}

/// Step 2: whether the operator acts on the pool at all. A spec it cannot carry out, or
/// same-named objects of someone else, are refused with conditions that say what to fix, and
/// how the pool is looked at again.
fn accept(
    pool: &AsyncWorkerPool,
    observed: &Observed,
) -> Result<EffectiveSpec, (Vec<Judgement>, Action)> {
    let effective = EffectiveSpec::from_spec(&pool.spec, pool.spec.paused).map_err(|problem| {
        (
            status::refused("InvalidSpec", problem.to_string()),
            Action::await_change(),
        )
    })?;
    if !observed.foreign.is_empty() {
        let message = format!(
            "{} already exist and are not owned by this pool; rename the pool or remove them",
            observed.foreign.join(" and ")
        );
        // Nothing of ours changes when the other objects go: look again now and then.
        let again = Action::requeue(Duration::from_secs(30));
        return Err((status::refused("NotOwned", message), again));
    }
    Ok(effective)
}

/// The Deployment's `spec.replicas`, when the Deployment exists.
fn live_replicas(observed: &Observed) -> Option<i32> {
    observed
        .deployment
        .as_deref()
        .and_then(LiveDeployment::replicas)
}

/// What a decision round found for one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The cluster shows what the pool's plan asks for, or a reconcile of the pool is in
    /// flight (it plans for itself).
    InSync,
    /// Left alone: its last plan was at rest and nothing it is planned from has changed since.
    Resting,
    /// The plan asks for a size, a mark or a status the cluster does not show: reconcile it.
    ReconcileDue,
    /// Not the rounds' business: a pool being deleted, refused, failing (its retry is backed
    /// off) or not yet reconciled once.
    NotCarriedOut,
}

/// One decision round of a pool, from memory alone (the caches and the latest sidecar
/// readings; no API call): the scaler takes its sample for this second, and the plan is
/// compared with what the cluster shows. Time alone moves a plan (windows roll, a scale-down
/// delay runs out, a worker's oldest request grows past its timeout), so every pool the
/// operator acts on gets a round every tick; only those whose plan moved are reconciled.
/// A pool whose last plan was at rest (`Plan::at_rest`), with the cluster showing it, is left
/// alone until the pool, its objects, its pods or its readings change: at rest, a round costs
/// a few lookups rather than a plan.
pub fn decision_round(pool: &AsyncWorkerPool, ctx: &Context) -> Round {
    let Some(key) = PoolKey::of(pool) else {
        return Round::NotCarriedOut;
    };
    if pool.metadata.deletion_timestamp.is_some()
        || ctx.pools.failing(&key)
        || !ctx.pools.carried_out(&key)
    {
        return Round::NotCarriedOut;
    }
    // A reconcile in flight plans for itself. One that hangs (the API server or etcd is
    // unreachable) must not have rounds deciding meanwhile: what the workers see then (traffic
    // routed by endpoints nobody can update) is not the pool's load, and a decision taken on it
    // would be carried out the moment the API server answers.
    if ctx.pools.is_reconciling(&key) {
        return Round::InSync;
    }
    // An object missing from the caches: the reconcile looks it up (or creates it).
    let Some((deployment, service)) = cached_objects(&key, ctx) else {
        return Round::ReconcileDue;
    };
    let sources = Sources {
        pool: pool.metadata.resource_version.as_deref(),
        deployment: deployment.metadata.resource_version.as_deref(),
        service: service.metadata.resource_version.as_deref(),
        pods: ctx.caches.pods.version_of(&key),
        readings: ctx.readers.version(&key),
    };
    let now = ctx.pools.now();
    let resting = ctx.pools.with_memory(&key, |memory| {
        match memory.as_mut().and_then(|m| m.rest.as_mut()) {
            Some(rest) if rest.stamp.matches(sources) => {
                rest.unchanged_until = Some(now);
                true
            }
            _ => false,
        }
    });
    if resting {
        return Round::Resting;
    }
    let observed = assemble(
        pool,
        &key,
        ctx,
        Some(deployment.clone()),
        Some(service.clone()),
    );
    let Ok(effective) = accept(pool, &observed) else {
        return Round::ReconcileDue;
    };
    let own_reading = own_queue_reading(pool, &key, ctx, &observed, &effective);
    let plan = decide(pool, &key, ctx, &observed, &effective, own_reading);
    let live = live_replicas(&observed);
    if live != Some(plan.replicas) || !plan.victims.is_empty() {
        return Round::ReconcileDue;
    }
    let judgements = judge(pool, &observed, &plan);
    let none_yet = AsyncWorkerPoolStatus::default();
    let previous = pool.status.as_ref().unwrap_or(&none_yet);
    let next = next_status(
        pool,
        previous,
        &key,
        &observed,
        Some(&plan),
        &judgements,
        false,
    );
    ctx.metrics
        .record_pool(&key, &figures(pool, &next, Some(&plan)));
    let change = status_change(previous, &next, load_step(pool, previous.load));
    // At rest only with the status showing the plan: a figure held back by the status
    // throttle still needs the round that writes it.
    let rest = (plan.at_rest && change == StatusChange::None).then(|| Rest {
        stamp: RestStamp::of(sources),
        unchanged_until: None,
    });
    ctx.pools.with_memory(&key, |memory| {
        if let Some(memory) = memory {
            memory.rest = rest;
        }
    });
    match change {
        StatusChange::None => Round::InSync,
        StatusChange::FiguresOnly if status_submitted_recently(ctx, &key) => Round::InSync,
        // The status desk writes one soon; what still differs after it shows is seen then.
        _ if ctx.statuses.holds(&key) => Round::InSync,
        StatusChange::FiguresOnly | StatusChange::Conditions => Round::ReconcileDue,
    }
}

// --- observe -----------------------------------------------------------------------------------

fn controlled_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pool: &AsyncWorkerPool,
) -> bool {
    let uid = pool.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

async fn observe(
    pool: &AsyncWorkerPool,
    key: &PoolKey,
    ctx: &Context,
) -> Result<Observed, ReconcileError> {
    let (deployment, service) = tokio::try_join!(
        owned_object(&ctx.client, &ctx.caches.deployments, key, "Deployment"),
        owned_object(&ctx.client, &ctx.caches.services, key, "Service"),
    )?;
    let observed = assemble(pool, key, ctx, deployment, service);
    // A draining pod is read until it is gone: its sidecar reports what it still serves.
    let readable: Vec<(Arc<str>, IpAddr)> = observed
        .pods
        .iter()
        .chain(observed.draining.iter())
        .filter_map(|p| Some((p.name.clone(), p.ip?)))
        .collect();
    ctx.readers.sync_pool(key, &readable);
    Ok(observed)
}

/// The pool's Deployment and Service as the caches hold them, `None` when they lack either (a
/// decision round makes no API call; the reconcile looks them up).
fn cached_objects(key: &PoolKey, ctx: &Context) -> Option<(Arc<LiveDeployment>, Arc<LiveService>)> {
    let deployment = ctx
        .caches
        .deployments
        .get(&ObjectRef::new(&key.name).within(&key.namespace))?;
    let service = ctx
        .caches
        .services
        .get(&ObjectRef::new(&key.name).within(&key.namespace))?;
    Some((deployment, service))
}

/// Step 1's result from the pool's objects and its pods in the index.
fn assemble(
    pool: &AsyncWorkerPool,
    key: &PoolKey,
    ctx: &Context,
    deployment: Option<Arc<LiveDeployment>>,
    service: Option<Arc<LiveService>>,
) -> Observed {
    let mut foreign = Vec::new();
    let deployment = match deployment {
        Some(d) if !controlled_by(&d.metadata, pool) => {
            foreign.push(format!("Deployment {}", key.name));
            None
        }
        other => other.map(|d| ctx.pools.freshest_deployment(key, d)),
    };
    let service = match service {
        Some(s) if !controlled_by(&s.metadata, pool) => {
            foreign.push(format!("Service {}", key.name));
            None
        }
        other => other,
    };
    Observed {
        deployment,
        service,
        foreign,
        pods: ctx.caches.pods.workers_of(key),
        draining: ctx.caches.pods.draining_of(key),
    }
}

/// The pool's object of kind `K`: from the label-scoped cache when it holds it (so an unchanged
/// pool costs no API call), else from the API server, which also finds a same-named object
/// that is not ours (the cache only sees labelled ones).
async fn owned_object<K>(
    client: &Client,
    cache: &Store<K>,
    key: &PoolKey,
    what: &'static str,
) -> Result<Option<Arc<K>>, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let reference = ObjectRef::new(&key.name).within(&key.namespace);
    if let Some(cached) = cache.get(&reference) {
        return Ok(Some(cached));
    }
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    api.get_opt(&key.name)
        .await
        .map(|found| found.map(Arc::new))
        .map_err(|source| ReconcileError::Observe { what, source })
}

// --- decide ------------------------------------------------------------------------------------

/// The pool's queue as the operator reads it itself ([`ExternalQueues`]): for a Redis queue
/// while no worker is ready, since no sidecar can then tell that work is waiting. `None` when
/// the workers' sidecars are the source (the poller, if one ran, stops).
fn own_queue_reading(
    pool: &AsyncWorkerPool,
    key: &PoolKey,
    ctx: &Context,
    observed: &Observed,
    effective: &EffectiveSpec,
) -> Option<Result<QueueSnapshot, String>> {
    let no_ready_worker = !observed.pods.iter().any(|p| p.ready);
    match effective.sidecar.redis_target() {
        Some(target) if no_ready_worker && !pool.spec.paused => {
            let capacity = u64::from(effective.sidecar.concurrency);
            let secret = effective
                .sidecar
                .redis
                .as_ref()
                .and_then(|redis| redis.password_secret_ref.as_ref());
            Some(ctx.external.reading(key, &target, secret, capacity))
        }
        _ => {
            ctx.external.stop(key);
            None
        }
    }
}

/// Plans with the pool's memory and its sidecars' latest readings (planner.rs is the logic).
fn decide(
    pool: &AsyncWorkerPool,
    key: &PoolKey,
    ctx: &Context,
    observed: &Observed,
    effective: &EffectiveSpec,
    own_reading: Option<Result<QueueSnapshot, String>>,
) -> Plan {
    let readings = ctx
        .readers
        .snapshots(key, observed.pods.iter().map(|p| &*p.name));
    let draining_readings = ctx
        .readers
        .snapshots(key, observed.draining.iter().map(|p| &*p.name));
    let input = PlanInput {
        pool,
        effective,
        deployment_replicas: live_replicas(observed),
        pods: &observed.pods,
        readings,
        draining: &observed.draining,
        draining_readings,
        own_reading,
        now: ctx.pools.now(),
    };
    ctx.pools
        .with_memory(key, |memory| planner::plan(input, memory))
}

// --- apply -------------------------------------------------------------------------------------

fn content_hash<T: Serialize>(object: &T, what: &'static str) -> Result<String, ReconcileError> {
    let bytes =
        serde_json::to_vec(object).map_err(|source| ReconcileError::Serialize { what, source })?;
    Ok(format!("{:016x}", fnv1a(&bytes)))
}

/// FNV-1a, 64 bits: the applied-hash annotation must mean the same to every operator version
/// (the standard library's hasher may change between Rust releases, and a changed hash re-applies
/// every pool once). It detects changes; it guards against no adversary.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Server-side applies `desired` unless the live object already carries the same content and
/// has not `drifted` from it (someone changed a field we own behind our back, e.g. `kubectl
/// scale deployment`: the hash annotation alone would not show it). Returns the object as the
/// API server wrote it, `None` when nothing was written.
async fn apply_if_changed<K, L>(
    client: &Client,
    namespace: &str,
    mut desired: K,
    live: Option<&L>,
    what: &'static str,
    drifted: impl Fn(&L, &K) -> bool,
) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    L: Resource,
{
    let hash = content_hash(&desired, what)?;
    if live
        .is_some_and(|l| l.annotations().get(APPLIED_HASH) == Some(&hash) && !drifted(l, &desired))
    {
        return Ok(None);
    }
    desired.annotations_mut().insert(APPLIED_HASH.into(), hash);
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = desired.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map(Some)
    .map_err(|source| ReconcileError::Apply { what, source })
}

/// Writes the pool's Deployment where it differs from `desired`. A change of size alone (what
/// nearly every decision is) goes as a merge patch of `spec.replicas` and the applied hash,
/// which spares the API server merging the whole pod template against its managers' field
/// sets (the operator's write of a resize fell from about 11.5 to 9.6 ms median on an idle
/// cluster; on a saturated one it waits as long either way). Anything else is applied whole,
/// which also takes `spec.replicas` back into the apply's field set. Returns the Deployment as
/// written, `None` when nothing was.
async fn write_deployment(
    ctx: &Context,
    namespace: &str,
    desired: Deployment,
    live: Option<&LiveDeployment>,
) -> Result<Option<Deployment>, ReconcileError> {
    if let Some(live) = live
        && let Some((from, to)) = live.replicas().zip(deployment_replicas(&desired))
        && from != to
    {
        // The live object is what we applied last, at its present size: only the size moves.
        let mut at_live_size = desired.clone();
        if let Some(spec) = at_live_size.spec.as_mut() {
            spec.replicas = Some(from);
        }
        if live.annotations().get(APPLIED_HASH) == Some(&content_hash(&at_live_size, "Deployment")?)
        {
            let hash = content_hash(&desired, "Deployment")?;
            let patch = serde_json::json!({
                "metadata": {"annotations": {APPLIED_HASH: hash}},
                "spec": {"replicas": to},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let api: Api<Deployment> = Api::namespaced(ctx.urgent.clone(), namespace);
            return api
                .patch(&desired.name_any(), &params, &Patch::Merge(&patch))
                .await
                .map(Some)
                .map_err(|source| ReconcileError::Apply {
                    what: "Deployment",
                    source,
                });
        }
    }
    apply_if_changed(
        &ctx.urgent,
        namespace,
        desired,
        live,
        "Deployment",
        |live, desired| live.replicas() != deployment_replicas(desired),
    )
    .await
}

fn deployment_replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref()?.replicas
}

/// Gives the victims the lowest deletion cost and waits, briefly, until the pod cache shows the
/// marks. The ReplicaSet controller ranks pods from its own watch-fed cache: lowering the replica
/// count before a mark has reached such a cache could remove a busy worker instead of an idle
/// one. Workers marked in an earlier round are not patched again.
async fn mark_victims(
    ctx: &Context,
    namespace: &str,
    victims: &[String],
) -> Result<(), ReconcileError> {
    let pods: Api<Pod> = Api::namespaced(ctx.urgent.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: VICTIM_COST}}});
    let unmarked: Vec<&String> = victims
        .iter()
        .filter(|victim| !marked_in_cache(ctx, namespace, victim))
        .collect();
    for victim in &unmarked {
        match pods
            .patch(victim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Gone already: one fewer to remove.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Apply {
                    what: "Pod deletion cost",
                    source,
                });
            }
        }
    }
    let deadline = Instant::now() + MARK_PROPAGATION_LIMIT;
    while unmarked
        .iter()
        .any(|victim| !marked_in_cache(ctx, namespace, victim))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Whether the pod cache shows `pod` marked to go first (or no longer holds it: it is gone).
fn marked_in_cache(ctx: &Context, namespace: &str, pod: &str) -> bool {
    ctx.caches
        .pods
        .get(namespace, pod)
        .is_none_or(|cached| cached.deletion_cost.as_deref() == Some(VICTIM_COST))
}

// --- status ------------------------------------------------------------------------------------

/// The conditions, judged by the pure status module from what this reconcile saw and planned.
fn judge(pool: &AsyncWorkerPool, observed: &Observed, plan: &Plan) -> Vec<Judgement> {
    let deployment = observed.deployment.as_deref();
    // Pods the API server refuses (Pod Security, quotas, admission webhooks) never show up as
    // workers; the Deployment's ReplicaFailure condition says why.
    let refused = deployment
        .and_then(|d| d.status.as_ref()?.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        })
        .map(|c| {
            let reason = c.reason.as_deref().unwrap_or("ReplicaFailure");
            let message = c.message.as_deref().unwrap_or("no message");
            format!("{reason}: {message}")
        });
    if plan
        .decision
        .as_ref()
        .is_some_and(|d| d.kind == DecisionKind::Fallback)
    {
        tracing::info!(pool = %pool.name_any(), "fallback replicas in effect");
    }
    status::judge(&status::Facts {
        ready_workers: observed.pods.iter().filter(|p| p.ready).count(),
        wanted: plan.replicas,
        current: deployment.and_then(|d| d.spec.as_ref()?.replicas),
        decision: plan
            .decision
            .as_ref()
            .map(|d| (d.reason.as_str(), d.metrics)),
        own_read: plan
            .own_read
            .as_ref()
            .map(|r| r.as_ref().map_err(String::as_str).copied()),
        crash_looping: plan
            .degraded
            .as_deref()
            .map(|message| status::CrashLooping {
                message,
                held: plan.template_crash_loops,
            }),
        refused,
        paused: pool.spec.paused,
        rollout: deployment.map_or(status::Rollout::Done, status::rollout_of),
    })
}

/// The one way out of the pipeline for a pool the operator will not act on: its refusal
/// (`status::refused`) reported, past the throttle; then `next`.
fn refuse(
    pool: &AsyncWorkerPool,
    ctx: &Context,
    key: &PoolKey,
    observed: &Observed,
    refusal: Vec<Judgement>,
    next: Action,
) -> Action {
    ctx.pools.set_carried_out(key, false);
    let report = StatusReport {
        observed,
        plan: None,
        judgements: &refusal,
        urgent: true,
    };
    write_status(pool, ctx, key, report);
    next
}

/// What one reconcile reports in the pool's status.
struct StatusReport<'a> {
    observed: &'a Observed,
    /// What was planned, or `None` when the operator refused to act on the pool.
    plan: Option<&'a Plan>,
    judgements: &'a [Judgement],
    /// Past the throttle of figure-only changes: a scale or a refusal.
    urgent: bool,
}

/// Hands the pool's next status to the status desk, which writes it off the reconcile (and sends
/// the Warning Events its new conditions call for once it is written).
fn write_status(pool: &AsyncWorkerPool, ctx: &Context, key: &PoolKey, report: StatusReport<'_>) {
    let StatusReport {
        observed,
        plan,
        judgements,
        urgent,
    } = report;
    let previous = pool.status.clone().unwrap_or_default();
    let next = next_status(pool, &previous, key, observed, plan, judgements, urgent);
    ctx.metrics.record_pool(key, &figures(pool, &next, plan));
    let change = status_change(&previous, &next, load_step(pool, previous.load));
    if change == StatusChange::None {
        return;
    }
    // Load figures, and condition messages that quote them, move every second under traffic;
    // a status that differs only there is written at a bounded rate.
    if change == StatusChange::FiguresOnly && !urgent && status_submitted_recently(ctx, key) {
        return;
    }
    let submission = status_desk::Submission {
        warnings: status::new_warnings(&previous.conditions, judgements),
        reference: pool.object_ref(&()),
        status: next,
    };
    let taken = ctx.statuses.submit(key, submission, |waiting, next| {
        supersedes(waiting, next, urgent, load_step(pool, waiting.load))
    });
    if taken {
        ctx.pools.with_memory(key, |memory| {
            if let Some(entry) = memory {
                entry.last_status_submitted = Some(Instant::now());
            }
        });
    }
}

/// Whether `next` takes the place of a status still waiting at the status desk: a scale or a
/// refusal (`urgent`) does, and so do other conditions; figures alone do not, so that a status
/// under traffic is written rather than replaced again and again.
fn supersedes(
    waiting: &AsyncWorkerPoolStatus,
    next: &AsyncWorkerPoolStatus,
    urgent: bool,
    load_step: f64,
) -> bool {
    urgent || status_change(waiting, next, load_step) == StatusChange::Conditions
}

/// The status this round would report, after `previous` (the pool's status, or the default).
fn next_status(
    pool: &AsyncWorkerPool,
    previous: &AsyncWorkerPoolStatus,
    key: &PoolKey,
    observed: &Observed,
    plan: Option<&Plan>,
    judgements: &[Judgement],
    urgent: bool,
) -> AsyncWorkerPoolStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let deployment_status = observed.deployment.as_ref().and_then(|d| d.status.as_ref());
    let awaiting = plan
        .and_then(|p| p.decision.as_ref())
        .is_some_and(|d| matches!(d.metrics, MetricsState::Awaiting { .. }));
    let mut conditions = merge_conditions(
        &previous.conditions,
        judgements,
        pool.metadata.generation,
        &now,
    );
    if awaiting {
        status::keep_last_readings(&previous.conditions, &mut conditions);
    }
    AsyncWorkerPoolStatus {
        observed_generation: pool.metadata.generation,
        replicas: deployment_status.and_then(|s| s.replicas).unwrap_or(0),
        ready_replicas: deployment_status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        desired_replicas: plan.map_or(previous.desired_replicas, |p| p.replicas),
        load: if awaiting {
            previous.load
        } else {
            plan.and_then(|p| p.decision.as_ref()?.observed_load)
        },
        last_scale_time: if urgent && plan.is_some() {
            Some(now.clone())
        } else {
            previous.last_scale_time.clone()
        },
        selector: Some(resources::selector_string(&key.name)),
        handled_replicas_request: plan
            .map_or(previous.handled_replicas_request, |p| p.handled_request),
        conditions,
    }
}

/// The pool's figures for the metrics: the load this plan read (the status keeps the last one
/// read while the pool awaits its first readings; the metrics show none).
fn figures(
    pool: &AsyncWorkerPool,
    status: &AsyncWorkerPoolStatus,
    plan: Option<&Plan>,
) -> PoolFigures {
    PoolFigures {
        load: plan.and_then(|p| p.decision.as_ref()?.observed_load),
        desired: status.desired_replicas,
        current: status.replicas,
        ready: status.ready_replicas,
        min: pool.spec.min_replicas,
        max: pool.spec.max_replicas,
    }
}

/// How a status differs from the one the pool shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusChange {
    /// Nothing, or only the noise of steady traffic: the load within a step of the one shown
    /// (see `load_step`) and the Scaling message's reasoning.
    None,
    /// Only load and replica figures, or condition messages that quote them.
    FiguresOnly,
    /// Anything else: sizes asked for, conditions, the generation observed.
    Conditions,
}

/// The smallest move of a pool's load from `shown` that its status shows: beyond the noise of
/// steady traffic (requests in the app at a steady rate vary like a Poisson count, by about the
/// square root of their number; three times that), and at least half a worker's concurrency
/// and two requests, the step that moves a scaler (a paced sidecar sends it at once). Writing
/// each wobble would write every busy pool's status at the throttle's pace (at 1,000 pools,
/// 500 writes a second). The live figure is the `asyncpool_pool_load` metric.
fn load_step(pool: &AsyncWorkerPool, shown: Option<f64>) -> f64 {
    let noise = 3.0 * shown.unwrap_or(0.0).max(0.0).sqrt();
    let capacity = u64::try_from(pool.spec.concurrency).unwrap_or(1);
    (asyncpool_contract::queue::load_step(capacity) as f64).max(noise)
}

fn status_change(
    previous: &AsyncWorkerPoolStatus,
    next: &AsyncWorkerPoolStatus,
    load_step: f64,
) -> StatusChange {
    if next == previous {
        return StatusChange::None;
    }
    // Compared in place: a busy pool's status is compared every second. Each condition type
    // appears once, in a stable order.
    let same_but_figures = next.observed_generation == previous.observed_generation
        && next.desired_replicas == previous.desired_replicas
        && next.last_scale_time == previous.last_scale_time
        && next.selector == previous.selector
        && next.handled_replicas_request == previous.handled_replicas_request
        && next.conditions.len() == previous.conditions.len();
    let conditions_match = |messages_may_differ: &dyn Fn(&Condition) -> bool| {
        next.conditions
            .iter()
            .zip(&previous.conditions)
            .all(|(n, p)| {
                n.type_ == p.type_
                    && n.status == p.status
                    && n.reason == p.reason
                    && n.last_transition_time == p.last_transition_time
                    && n.observed_generation == p.observed_generation
                    && (n.message == p.message || messages_may_differ(n))
            })
    };
    // A pool gone idle says so: no traffic has no noise.
    let load_within_noise = match (next.load, previous.load) {
        (Some(next), Some(previous)) => {
            (next - previous).abs() < load_step && (next != 0.0 || previous == 0.0)
        }
        (next, previous) => next == previous,
    };
    let same_figures = load_within_noise
        && next.replicas == previous.replicas
        && next.ready_replicas == previous.ready_replicas;
    // The Scaling message quotes the last decision's reasoning, whose figures (means, rates)
    // wobble with the load: it goes out with the next change that is one.
    if same_but_figures && same_figures && conditions_match(&|n| n.type_ == status::SCALING) {
        StatusChange::None
    } else if same_but_figures && conditions_match(&|_| true) {
        StatusChange::FiguresOnly
    } else {
        StatusChange::Conditions
    }
}

/// Whether the status desk took a status of the pool within the status interval (the throttle
/// of figure-only changes).
fn status_submitted_recently(ctx: &Context, key: &PoolKey) -> bool {
    ctx.pools.with_memory(key, |memory| {
        memory
            .as_ref()
            .and_then(|entry| entry.last_status_submitted)
            .is_some_and(|t| t.elapsed() < ctx.settings.status_interval)
    })
}

// --- events ------------------------------------------------------------------------------------

fn publish_scale_event(pool: &AsyncWorkerPool, ctx: &Context, from: i32, plan: &Plan) {
    let why = match (&plan.note, &plan.decision) {
        (Some(note), _) => note.clone(),
        (None, Some(decision)) => decision.reason.clone(),
        (None, None) => "requested through the scale subresource".to_owned(),
    };
    tracing::info!(
        namespace = ?pool.namespace(),
        pool = %pool.name_any(),
        from,
        to = plan.replicas,
        reason = %why,
        "scaled"
    );
    let event = Event {
        type_: EventType::Normal,
        reason: if plan.replicas > from {
            "ScaledUp"
        } else {
            "ScaledDown"
        }
        .into(),
        note: Some(format!("{from} → {} workers: {why}", plan.replicas)),
        action: "Scale".into(),
        secondary: None,
    };
    // Sent on the side: the reconcile's slot goes to the next pool instead of waiting on an
    // Event. And sent once the status' settle time has passed, as the status is: when a hundred
    // pools scale at once, the API server's first moments go to their resizes. Events are best
    // effort: a failure to record one must not fail the reconcile.
    let recorder = ctx.recorder.clone();
    let reference = pool.object_ref(&());
    tokio::spawn(async move {
        tokio::time::sleep(status_desk::SETTLE).await;
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "could not publish the scale event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn the_load_shown_moves_beyond_a_scalers_step_and_the_noise_of_traffic() {
        let pool = |concurrency: i32| {
            crate::manifest::load_pool(
                &format!(
                    "apiVersion: asyncpool.dev/v1alpha1\nkind: AsyncWorkerPool\n\
                     metadata: {{name: chat, namespace: team}}\n\
                     spec: {{minReplicas: 1, maxReplicas: 4, concurrency: {concurrency}, \
                     template: {{spec: {{containers: \
                     [{{name: app, image: chat:1}}]}}}}}}\n"
                ),
                None,
            )
            .expect("a valid pool")
        };
        // Half a worker's concurrency, two requests at least, while the load is small.
        assert_eq!(load_step(&pool(10), None), 5.0);
        assert_eq!(load_step(&pool(7), Some(1.0)), 4.0);
        assert_eq!(load_step(&pool(1), Some(0.0)), 2.0);
        // Three times the square root of a large load.
        assert_eq!(load_step(&pool(10), Some(900.0)), 90.0);
    }

    #[test]
    fn what_a_status_change_is() {
        /// A pool of concurrency 4 (or less).
        const STEP: f64 = 2.0;
        let status = |load: f64, scaling: &str, ready: &str, metrics: &str| AsyncWorkerPoolStatus {
            load: Some(load),
            desired_replicas: 4,
            conditions: vec![
                condition(status::SCALING, "False", "Stable", scaling),
                condition(status::READY, "True", "WorkersReady", ready),
                condition(
                    status::METRICS_AVAILABLE,
                    "True",
                    metrics,
                    "every worker reports",
                ),
            ],
            ..AsyncWorkerPoolStatus::default()
        };
        let before = status(
            20.0,
            "arrivals 10.1/s × 0.5 s; holding 4",
            "4 of 4",
            "AllWorkersReport",
        );
        assert_eq!(
            status_change(&before, &before.clone(), STEP),
            StatusChange::None
        );
        // The reasoning's wobble under steady traffic is no change.
        let wobble = status(
            20.0,
            "arrivals 9.9/s × 0.5 s; holding 4",
            "4 of 4",
            "AllWorkersReport",
        );
        assert_eq!(status_change(&before, &wobble, STEP), StatusChange::None);
        // So is a load within a step of the one shown, a figure beyond it is a change.
        let noise = status(
            21.5,
            "arrivals 9.9/s × 0.5 s; holding 4",
            "4 of 4",
            "AllWorkersReport",
        );
        assert_eq!(status_change(&before, &noise, STEP), StatusChange::None);
        // A pool gone idle is shown at once; one request after idling is noise.
        let idle = |load: f64| status(load, "holding 4", "4 of 4", "AllWorkersReport");
        assert_eq!(
            status_change(&idle(1.0), &idle(0.0), STEP),
            StatusChange::FiguresOnly
        );
        assert_eq!(
            status_change(&idle(0.0), &idle(1.0), STEP),
            StatusChange::None
        );
        let load = status(
            22.0,
            "arrivals 9.9/s × 0.5 s; holding 4",
            "4 of 4",
            "AllWorkersReport",
        );
        assert_eq!(
            status_change(&before, &load, STEP),
            StatusChange::FiguresOnly
        );
        let ready = status(
            20.0,
            "arrivals 10.1/s × 0.5 s; holding 4",
            "3 of 4",
            "AllWorkersReport",
        );
        assert_eq!(
            status_change(&before, &ready, STEP),
            StatusChange::FiguresOnly
        );
        // A reason is a condition change; so is a size asked for.
        let silent = status(
            20.0,
            "arrivals 10.1/s × 0.5 s; holding 4",
            "4 of 4",
            "SomeWorkersSilent",
        );
        assert_eq!(
            status_change(&before, &silent, STEP),
            StatusChange::Conditions
        );
        let mut grown = before.clone();
        grown.desired_replicas = 5;
        assert_eq!(
            status_change(&before, &grown, STEP),
            StatusChange::Conditions
        );

        // A status waiting at the desk gives way to a scale or to conditions, not to figures.
        assert!(!supersedes(&before, &load, false, STEP));
        assert!(!supersedes(&before, &ready, false, STEP));
        assert!(supersedes(&before, &load, true, STEP));
        assert!(supersedes(&before, &silent, false, STEP));
        assert!(supersedes(&before, &grown, false, STEP));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn only_what_the_api_server_refuses_as_invalid_waits_for_a_spec_change() {
        let api = |code: u16| ReconcileError::Apply {
            what: "Deployment",
            source: kube::Error::Api(Box::new(
                kube::core::Status::failure("refused", "Invalid").with_code(code),
            )),
        };
        assert!(api(422).needs_a_spec_change());
        assert!(
            !api(409).needs_a_spec_change(),
            "a conflict clears on retry"
        );
        assert!(!api(500).needs_a_spec_change());
        assert!(ReconcileError::NoNamespace.needs_a_spec_change());
    }

    #[test]
    fn the_applied_hash_is_fnv1a_and_stable() {
        // The published FNV-1a 64 test vectors: any change here re-applies every pool.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
