//! Wiring: leader election, the caches, the controller, the sidecar readers and the operator's
//! own HTTP endpoints (served by `endpoints`). Behaviour lives in `reconcile`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
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
use crate::reconcile::{self, Caches, Context, PodIndex, PoolStore, Settings};
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

/// Runs until `shutdown` resolves (then stops gracefully and releases the lease) or the lease
/// is lost.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let metrics = Arc::new(Metrics::default());
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
        let leases: Api<Lease> = Api::namespaced(client.clone(), &leader.lease_namespace);
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
        _ = run_controller(client.clone(), &config, metrics.clone(), ready.clone(), shutdown.clone()) => Ok(()),
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

/// The trimmed form of a pod that the cache keeps: what reconcile reads and nothing else, so
/// memory stays flat as pods grow.
fn trim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    // The one annotation reconcile reads: whether a worker is already marked to go first.
    pod.annotations_mut()
        .retain(|key, _| key == crate::reconcile::DELETION_COST);
    pod.metadata.owner_references = None;
    pod.spec = None;
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            conditions: status.conditions.map(|conditions| {
                conditions
                    .into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|mut c| {
                        c.message = None;
                        c
                    })
                    .collect()
            }),
            container_statuses: status.container_statuses.map(|containers| {
                containers
                    .into_iter()
                    .map(|mut c| {
                        c.last_state = None;
                        c.image_id = String::new();
                        c.container_id = None;
                        c.resources = None;
                        c.volume_mounts = None;
                        c
                    })
                    .collect()
            }),
            ..PodStatus::default()
        });
    }
}

async fn run_controller(
    client: Client,
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = config.namespace.as_deref();
    let pools: Api<AsyncWorkerPool> = api(&client, namespace);
    let pods: Api<Pod> = api(&client, namespace);

    let pod_index = PodIndex::default();
    let pod_events = watcher(pods, watcher::Config::default().labels(POOL_LABEL))
        .modify(trim_pod)
        .inspect_ok({
            let index = pod_index.clone();
            move |event| index.apply(event)
        })
        .default_backoff()
        .touched_objects();
    let (deployment_store, deployment_writer) = reflector::store();
    let deployment_events = watcher(
        api::<Deployment>(&client, namespace),
        watcher::Config::default().labels(POOL_LABEL),
    )
    .modify(|d: &mut Deployment| d.managed_fields_mut().clear())
    .reflect(deployment_writer)
    .default_backoff()
    .touched_objects();
    let (service_store, service_writer) = reflector::store();
    let service_events = watcher(
        api::<Service>(&client, namespace),
        watcher::Config::default().labels(POOL_LABEL),
    )
    .modify(|s: &mut Service| s.managed_fields_mut().clear())
    .reflect(service_writer)
    .default_backoff()
    .touched_objects();

    let (changes_tx, changes_rx) = mpsc::unbounded_channel::<PoolKey>();
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
    let caches = Caches {
        pods: pod_index.clone(),
        deployments: deployment_store.clone(),
        services: service_store.clone(),
    };
    let context = Arc::new(Context {
        client: client.clone(),
        caches,
        readers,
        external,
        settings: config.settings.clone(),
        metrics,
        recorder,
        pools: PoolStore::default(),
    });

    let triggers = UnboundedReceiverStream(changes_rx)
        .map(|pool| ObjectRef::<AsyncWorkerPool>::new(&pool.name).within(&pool.namespace));
    let controller = Controller::new(pools, watcher::Config::default().any_semantic())
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .watches_stream(pod_events, |pod: Pod| {
            let pool = pod.labels().get(POOL_LABEL)?.clone();
            Some(ObjectRef::new(&pool).within(&pod.namespace()?))
        })
        .reconcile_on(triggers)
        .with_config(kube::runtime::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown);
    let pool_store = controller.store();

    // Ready once the pool and pod caches hold a full list.
    let readiness = {
        let pool_store = pool_store.clone();
        let ready = ready.clone();
        async move {
            if synced(&pool_store).await
                && pod_index.wait_until_ready().await
                && synced(&deployment_store).await
                && synced(&service_store).await
            {
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

    controller
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
    sweeper.abort();
    ready.store(false, Ordering::SeqCst);
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
