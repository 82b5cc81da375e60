//! Wiring: leader election, the caches, the controller, the sidecar readers and the operator's
//! own HTTP endpoints (served by `endpoints`). Behaviour lives in `reconcile`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream_shim::UnboundedReceiverStream;

use crate::crd::AsyncWorkerPool;
use crate::leader::{LeaderElector, LeaseTiming};
use crate::metrics::Metrics;
use crate::pool::PoolKey;
use crate::queue::external::ExternalQueues;
use crate::queue::reader::{ReaderConfig, SidecarReaders};
use crate::reconcile::{
    self, Caches, Context, LiveDeployment, LiveService, PodIndex, PoolStore, Round, Settings,
    StatusDesk,
};
use asyncpool_contract::pod::POOL_LABEL;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub timing: LeaseTiming,
}

/// Everything the operator process is configured with.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    pub settings: Settings,
    pub reader: ReaderConfig,
    /// `None` runs without election (a single replica).
    pub leader: Option<LeaderConfig>,
    /// Address of `/metrics`, `/livez` and `/readyz`.
    pub http_listen: SocketAddr,
    /// How many pools reconcile at once.
    pub concurrency: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot serve the operator's HTTP endpoints on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("lost the leader lease; exiting so that a fresh process rejoins as a follower")]
    LostLease,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The operator's API clients.
pub struct Clients {
    /// Everything but the lease; rate-limited (`api_rate`).
    pub api: Client,
    /// The writes that carry out a pool's plan: the rate limit's urgent lane.
    pub urgent: Client,
    /// The leader lease alone, outside the rate limit: a backlog must never cost the lease.
    pub lease: Client,
}

/// Runs until `shutdown` resolves (then stops gracefully and releases the lease) or the lease
/// is lost.
pub async fn run(
    clients: Clients,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let Clients {
        api: client,
        urgent,
        lease,
    } = clients;
    let ready = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| OperatorError::Listen(config.http_listen, e))?;
    tokio::spawn(crate::endpoints::serve(
        listener,
        metrics.clone(),
        ready.clone(),
    ));

    let shutdown = shutdown.shared();
    let (leading_tx, mut leading) = watch::channel(config.leader.is_none());
    let elector = config.leader.as_ref().map(|leader| {
        let leases: Api<Lease> = Api::namespaced(lease.clone(), &leader.lease_namespace);
        Arc::new(LeaderElector::new(
            leases,
            &leader.lease_name,
            &leader.identity,
            leader.timing.clone(),
        ))
    });
    if let Some(elector) = &elector {
        // A follower is healthy and ready: it stands by with nothing to serve.
        ready.store(true, Ordering::SeqCst);
        let elector = elector.clone();
        tokio::spawn(async move { elector.run(leading_tx).await });
        tracing::info!("waiting for the leader lease");
        tokio::select! {
            _ = leading.wait_for(|l| *l) => {}
            _ = shutdown.clone() => return Ok(()),
        }
        ready.store(false, Ordering::SeqCst);
    }
    metrics.leader.set(1);

    let lost_lease = {
        let mut leading = leading.clone();
        async move {
            // Resolves when leadership ends (or the elector is gone).
            let _ = leading.wait_for(|l| !*l).await;
        }
    };
    let result = tokio::select! {
        _ = run_controller(client.clone(), urgent, &config, metrics.clone(), ready.clone(), shutdown.clone()) => Ok(()),
        _ = lost_lease, if config.leader.is_some() => Err(OperatorError::LostLease),
    };
    metrics.leader.set(0);
    if let Some(elector) = elector
        && result.is_ok()
        && let Err(error) = elector.release().await
    {
        tracing::warn!(%error, "could not release the lease; a follower takes over once it expires");
    }
    result
}

/// What the pool cache keeps: everything reconcile reads. The field managers (a tree per
/// writer, several KiB a pool) and the copy `kubectl apply` keeps of the whole manifest are
/// read by nobody here; status is written by server-side apply, which needs neither.
fn trim_pool(pool: &mut AsyncWorkerPool) {
    pool.managed_fields_mut().clear();
    pool.annotations_mut().remove(LAST_APPLIED);
}

/// Where client-side `kubectl apply` keeps the manifest it applied last.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Objects per page of the caches' lists. A page is held whole twice over while it is read
/// (its JSON, then every object parsed with its field managers) before the caches trim what
/// they keep, and the four caches list at once: at client-go's and kube's 500, the operator's
/// first seconds at 3,000 pools swung between 57 and 133 MiB before it opened a single watch
/// stream (it holds 121 MiB at rest, streams included). A fifth of that costs one list
/// request per hundred pods: listing 10,380 pods took about 7 s instead of about 4.
const LIST_PAGE_SIZE: u32 = 100;

/// Longest a stopping operator spends writing the statuses its reconciles handed over.
const STATUS_FLUSH_LIMIT: Duration = Duration::from_secs(2);

fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

async fn run_controller(
    client: Client,
    urgent: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = config.namespace.as_deref();
    let pools: Api<AsyncWorkerPool> = api(&client, namespace);
    let pods: Api<Pod> = api(&client, namespace);

    let pod_index = PodIndex::default();
    // The index keeps a few facts of each pod; the objects themselves pass through.
    let pod_events = watcher(pods, list_config().labels(POOL_LABEL))
        .inspect_ok({
            let index = pod_index.clone();
            move |event| index.apply(event)
        })
        .default_backoff()
        .touched_objects();
    let (deployment_store, deployment_writer) = reflector::store();
    // Deployments and Services are parsed into the few fields reconcile reads (reconcile/live.rs).
    let deployment_events = watcher(
        api::<LiveDeployment>(&client, namespace),
        list_config().labels(POOL_LABEL),
    )
    .reflect(deployment_writer)
    .default_backoff()
    .touched_objects();
    let (service_store, service_writer) = reflector::store();
    let service_events = watcher(
        api::<LiveService>(&client, namespace),
        list_config().labels(POOL_LABEL),
    )
    .reflect(service_writer)
    .default_backoff()
    .touched_objects();

    let (changes_tx, changes_rx) = mpsc::unbounded_channel::<PoolKey>();
    let due = changes_tx.clone();
    let external = ExternalQueues::new(
        changes_tx.clone(),
        client.clone(),
        config.settings.redis_tls.clone(),
    );
    let readers = SidecarReaders::new(config.reader.clone(), changes_tx, metrics.clone());
    let reporter = Reporter {
        controller: "asyncpool-operator".into(),
        instance: config.leader.as_ref().map(|l| l.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let (synced_tx, synced_rx) = watch::channel(false);
    let caches = Caches {
        pods: pod_index.clone(),
        deployments: deployment_store.clone(),
        services: service_store.clone(),
        synced: synced_rx,
    };
    let context = Arc::new(Context {
        client: client.clone(),
        urgent,
        caches,
        readers,
        external,
        settings: config.settings.clone(),
        statuses: StatusDesk::start(client.clone(), recorder.clone(), metrics.clone()),
        metrics,
        recorder,
        pools: PoolStore::default(),
    });

    let triggers = UnboundedReceiverStream(changes_rx)
        .map(|pool| ObjectRef::<AsyncWorkerPool>::new(&pool.name).within(&pool.namespace));
    let (pool_store, pool_writer) = reflector::store();
    let pool_events = watcher(pools, list_config().any_semantic())
        .modify(trim_pool)
        .reflect(pool_writer)
        .default_backoff()
        .applied_objects();
    let controller = Controller::for_stream(pool_events, pool_store.clone())
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .watches_stream(pod_events, |pod: Pod| {
            let pool = pod.labels().get(POOL_LABEL)?.clone();
            Some(ObjectRef::new(&pool).within(&pod.namespace()?))
        })
        .reconcile_on(triggers)
        .with_config(kube::runtime::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown);

    // Ready, and reconciling, once every cache holds a full list.
    let readiness = {
        let pool_store = pool_store.clone();
        let ready = ready.clone();
        async move {
            if synced(&pool_store).await
                && pod_index.wait_until_ready().await
                && synced(&deployment_store).await
                && synced(&service_store).await
            {
                synced_tx.send_replace(true);
                ready.store(true, Ordering::SeqCst);
                tracing::info!("caches synced; ready");
            }
        }
    };
    tokio::spawn(readiness);

    // Pools deleted between reconciles leave readers and memory behind; sweep them.
    let sweeper = {
        let context = context.clone();
        let pool_store = pool_store.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                let live: HashSet<PoolKey> = pool_store
                    .state()
                    .iter()
                    .filter_map(|p| PoolKey::of(p))
                    .collect();
                context.forget_pools_except(&live);
            }
        }
    };
    let sweeper = tokio::spawn(sweeper);
    let rounds = tokio::spawn(decision_rounds(context.clone(), pool_store.clone(), due));

    controller
        .run(
            reconcile::reconcile,
            reconcile::error_policy,
            context.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    sweeper.abort();
    rounds.abort();
    // What reconciles reported last, written before the lease goes (bounded: the API server
    // may be what is failing).
    let _ = tokio::time::timeout(STATUS_FLUSH_LIMIT, context.statuses.flush()).await;
    ready.store(false, Ordering::SeqCst);
}

/// Every tick, a decision round for every pool (`reconcile::decision_round`): the scalers
/// sample and plan from memory, and only the pools whose plan moved are reconciled. A pool at
/// rest costs a round, not a reconcile; a change a sidecar reports wakes its pool at once and
/// does not wait for a round. Where the line budget stretched the sidecars' pace, rounds come
/// as much less often (`SidecarReaders::round_period`).
async fn decision_rounds(
    context: Arc<Context>,
    pools: reflector::Store<AsyncWorkerPool>,
    due: mpsc::UnboundedSender<PoolKey>,
) {
    /// Pools per slice of a round between yields, so a round over thousands of pools does not
    /// hold a runtime thread that sidecar readers need.
    const SLICE: usize = 64;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let started = std::time::Instant::now();
        // A round that overran its period is followed by the next at once, not by a catch-up.
        next = tokio::time::Instant::from_std(started)
            + context.readers.round_period(context.settings.tick);
        let mut resting = 0i64;
        for slice in pools.state().chunks(SLICE) {
            for pool in slice {
                match reconcile::decision_round(pool, &context) {
                    Round::ReconcileDue => {
                        if let Some(key) = PoolKey::of(pool) {
                            // The receiver is gone only while the operator shuts down.
                            let _ = due.send(key);
                        }
                    }
                    Round::Resting => resting += 1,
                    Round::InSync | Round::NotCarriedOut => {}
                }
            }
            tokio::task::yield_now().await;
        }
        context
            .metrics
            .decision_round_seconds
            .observe(started.elapsed().as_secs_f64());
        context.metrics.pools_at_rest.set(resting);
    }
}

/// Whether a cache has received its first full list. The controller waits on the pool cache
/// too, and a store wakes only one of several waiters, so this asks again on a short timer
/// instead of waiting once.
async fn synced<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            // The writer is gone: the controller stopped.
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
}

/// A `Stream` over an unbounded receiver (what tokio-stream's wrapper does, without the crate).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct UnboundedReceiverStream<T>(pub tokio::sync::mpsc::UnboundedReceiver<T>);

    impl<T> futures::Stream for UnboundedReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
