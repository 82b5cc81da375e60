//! The worker pods the operator watches, indexed by pool: a reconcile reads its own pool's pods
//! without scanning every worker pod of the cluster (at 1,000 pools of 10,000 pods, a scan per
//! reconcile was 10,000 pods looked at to find ten). Fed by the pod watcher's events, as kube's
//! reflector store is, and read by reconciles. Each pod is kept as the few facts reconcile
//! reads ([`IndexedPod`]), not as the Pod object: a Pod, even trimmed, is several KiB.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::DELETION_COST;
use crate::planner::WorkerPod;
use crate::pool::PoolKey;
use asyncpool_contract::pod::POOL_LABEL;

/// Restarts after which a container that is not ready counts as crash-looping.
const CRASH_RESTARTS: i32 = 3;

/// What the operator keeps of one worker pod.
#[derive(Debug, Clone)]
pub(crate) struct IndexedPod {
    pub(crate) worker: WorkerPod,
    /// Being deleted, or finished (Succeeded or Failed): no longer one of the pool's workers.
    pub(crate) leaving: bool,
    /// Its deletion-cost annotation (the mark of a worker chosen to go first).
    pub(crate) deletion_cost: Option<String>,
}

impl IndexedPod {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        Self {
            worker: worker_pod(pod),
            leaving: pod.metadata.deletion_timestamp.is_some() || finished,
            deletion_cost: pod.annotations().get(DELETION_COST).cloned(),
        }
    }
}

fn worker_pod(pod: &Pod) -> WorkerPod {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let crash_looping = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|containers| {
            containers.iter().any(|c| {
                let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
                waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff")
                    || (!c.ready && c.restart_count >= CRASH_RESTARTS)
            })
        });
    WorkerPod {
        name: pod.name_any(),
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        ready,
        crash_looping,
        template: pod.labels().get("pod-template-hash").cloned(),
    }
}

/// A pod's namespace and name.
type PodName = (String, String);

/// One pool's pods by name, and the index's change count when they last changed.
#[derive(Default)]
struct PoolPods {
    pods: BTreeMap<String, Arc<IndexedPod>>,
    version: u64,
    /// Its workers (the pods not leaving), made on first read after a change: a busy pool is
    /// planned every second, and its pods change far less often.
    workers: OnceLock<Arc<[WorkerPod]>>,
}

impl PoolPods {
    fn changed(&mut self, change: u64) {
        self.version = change;
        self.workers = OnceLock::new();
    }
}

#[derive(Default)]
struct Pods {
    by_pool: HashMap<PoolKey, PoolPods>,
    /// The pool each pod is filed under, so that a pod whose label changes leaves its old pool.
    pool_of: HashMap<PodName, PoolKey>,
}

impl Pods {
    /// Files `pod`; `change` is a number no earlier change of the index had.
    fn insert(&mut self, pod: &Pod, change: u64) {
        let Some((name, pool)) = keys(pod) else {
            return;
        };
        if let Some(previous) = self.pool_of.get(&name)
            && previous != &pool
        {
            let previous = previous.clone();
            self.remove_from(&previous, &name.1, change);
        }
        let entry = self.by_pool.entry(pool.clone()).or_default();
        entry
            .pods
            .insert(name.1.clone(), Arc::new(IndexedPod::of(pod)));
        entry.changed(change);
        self.pool_of.insert(name, pool);
    }

    fn remove(&mut self, pod: &Pod, change: u64) {
        let name = (pod.namespace().unwrap_or_default(), pod.name_any());
        if let Some(pool) = self.pool_of.remove(&name) {
            self.remove_from(&pool, &name.1, change);
        }
    }

    fn remove_from(&mut self, pool: &PoolKey, pod: &str, change: u64) {
        if let Some(entry) = self.by_pool.get_mut(pool) {
            entry.pods.remove(pod);
            entry.changed(change);
            if entry.pods.is_empty() {
                self.by_pool.remove(pool);
            }
        }
    }
}

/// The pod's own key and its pool's; `None` for a pod that names no pool (the watch selects on
/// the label, so only an object without a namespace or with an empty label).
fn keys(pod: &Pod) -> Option<(PodName, PoolKey)> {
    let namespace = pod.namespace()?;
    let pool = pod.labels().get(POOL_LABEL).filter(|p| !p.is_empty())?;
    Some((
        (namespace.clone(), pod.name_any()),
        PoolKey {
            namespace,
            name: pool.clone(),
        },
    ))
}

/// Worker pods by pool; cheap to clone (every clone reads and writes the same index).
#[derive(Clone)]
pub struct PodIndex {
    pods: Arc<RwLock<Pods>>,
    /// What a relist has delivered so far; swapped in whole when it is done, so that a reader
    /// never sees half a list.
    relist: Arc<RwLock<Option<Pods>>>,
    ready: watch::Sender<bool>,
    /// Changes applied so far, across relists: each pool's version is the change that last
    /// touched its pods.
    changes: Arc<AtomicU64>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            relist: Arc::default(),
            ready: watch::channel(false).0,
            changes: Arc::default(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Writers only insert or remove whole entries, so a panicking holder left nothing half-done.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl PodIndex {
    /// Applies one event of the pod watcher.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let change = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
        match event {
            watcher::Event::Apply(pod) => write(&self.pods).insert(pod, change),
            watcher::Event::Delete(pod) => write(&self.pods).remove(pod, change),
            watcher::Event::Init => *write(&self.relist) = Some(Pods::default()),
            watcher::Event::InitApply(pod) => {
                write(&self.relist)
                    .get_or_insert_with(Pods::default)
                    .insert(pod, change);
            }
            watcher::Event::InitDone => {
                let listed = write(&self.relist).take().unwrap_or_default();
                *write(&self.pods) = listed;
                self.ready.send_replace(true);
            }
        }
    }

    /// The workers of `pool` (its pods not leaving), by name.
    pub(crate) fn workers_of(&self, pool: &PoolKey) -> Arc<[WorkerPod]> {
        read(&self.pods).by_pool.get(pool).map_or_else(
            || Arc::from([]),
            |entry| {
                entry
                    .workers
                    .get_or_init(|| {
                        entry
                            .pods
                            .values()
                            .filter(|p| !p.leaving)
                            .map(|p| p.worker.clone())
                            .collect()
                    })
                    .clone()
            },
        )
    }

    /// A number that changes whenever the pods of `pool` change (0: it has none).
    pub(crate) fn version_of(&self, pool: &PoolKey) -> u64 {
        read(&self.pods)
            .by_pool
            .get(pool)
            .map_or(0, |entry| entry.version)
    }

    /// One pod, wherever it is filed.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<IndexedPod>> {
        let pods = read(&self.pods);
        let key = (namespace.to_owned(), name.to_owned());
        let pool = pods.pool_of.get(&key)?;
        pods.by_pool.get(pool)?.pods.get(name).cloned()
    }

    /// How many pods the index holds.
    pub fn len(&self) -> usize {
        read(&self.pods).pool_of.len()
    }

    /// Whether the index holds no pod.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once the first full list has been applied; `false` if the writer side is gone
    /// first (which, holding a sender, it never is while `self` lives).
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.subscribe();
        ready.wait_for(|ready| *ready).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use watcher::Event;

    fn pod(namespace: &str, name: &str, pool: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some([(POOL_LABEL.to_owned(), pool.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn key(namespace: &str, name: &str) -> PoolKey {
        PoolKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn names(index: &PodIndex, pool: &PoolKey) -> Vec<String> {
        index
            .workers_of(pool)
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    #[test]
    fn workers_follow_every_change_and_leave_out_the_leaving() {
        let index = PodIndex::default();
        let web = key("a", "web");
        index.apply(&Event::Apply(pod("a", "web-1", "web")));
        assert_eq!(names(&index, &web), ["web-1"]);
        index.apply(&Event::Apply(pod("a", "web-2", "web")));
        assert_eq!(names(&index, &web), ["web-1", "web-2"]);
        let mut deleting = pod("a", "web-1", "web");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        index.apply(&Event::Apply(deleting));
        assert_eq!(names(&index, &web), ["web-2"]);
        index.apply(&Event::Delete(pod("a", "web-2", "web")));
        assert!(names(&index, &web).is_empty());
    }

    #[test]
    fn each_pool_sees_its_own_pods_only() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("a", "web-1", "web")));
        index.apply(&Event::Apply(pod("a", "web-2", "web")));
        index.apply(&Event::Apply(pod("a", "api-1", "api")));
        // The same pool name in another namespace is another pool.
        index.apply(&Event::Apply(pod("b", "web-9", "web")));
        assert_eq!(names(&index, &key("a", "web")), ["web-1", "web-2"]);
        assert_eq!(names(&index, &key("a", "api")), ["api-1"]);
        assert_eq!(names(&index, &key("b", "web")), ["web-9"]);
        assert!(index.workers_of(&key("c", "web")).is_empty());
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn an_update_replaces_and_a_delete_removes() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("a", "web-1", "web")));
        let mut updated = pod("a", "web-1", "web");
        updated.metadata.annotations =
            Some([(DELETION_COST.to_owned(), "-1000".to_owned())].into());
        index.apply(&Event::Apply(updated));
        let stored = index.get("a", "web-1").expect("the pod");
        assert_eq!(stored.deletion_cost.as_deref(), Some("-1000"));
        assert_eq!(index.len(), 1);

        index.apply(&Event::Delete(pod("a", "web-1", "web")));
        assert!(index.get("a", "web-1").is_none());
        assert!(index.workers_of(&key("a", "web")).is_empty());
        assert!(index.is_empty());
        // A delete of something never seen changes nothing.
        index.apply(&Event::Delete(pod("a", "ghost", "web")));
        assert!(index.is_empty());
    }

    #[test]
    fn a_pod_relabelled_to_another_pool_leaves_the_first() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("a", "w-1", "web")));
        index.apply(&Event::Apply(pod("a", "w-1", "api")));
        assert!(index.workers_of(&key("a", "web")).is_empty());
        assert_eq!(names(&index, &key("a", "api")), ["w-1"]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_pools_version_moves_with_its_own_pods_only() {
        let index = PodIndex::default();
        let (web, api) = (key("a", "web"), key("a", "api"));
        assert_eq!(index.version_of(&web), 0);
        index.apply(&Event::Apply(pod("a", "w-1", "web")));
        index.apply(&Event::Apply(pod("a", "x-1", "api")));
        let before = index.version_of(&web);
        assert!(before > 0);
        // Another pool's change leaves it alone; any change of its own moves it.
        index.apply(&Event::Apply(pod("a", "x-2", "api")));
        assert_eq!(index.version_of(&web), before);
        index.apply(&Event::Apply(pod("a", "w-1", "web")));
        let updated = index.version_of(&web);
        assert!(updated > before);
        index.apply(&Event::Apply(pod("a", "x-1", "web")));
        assert!(index.version_of(&web) > updated, "a pod relabelled into it");
        assert!(index.version_of(&api) > updated, "and out of the other");
        // A relist gives every pool a version it never had.
        let listed = index.version_of(&web);
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "w-1", "web")));
        index.apply(&Event::InitApply(pod("a", "x-1", "web")));
        index.apply(&Event::InitDone);
        assert!(index.version_of(&web) > listed);
        index.apply(&Event::Delete(pod("a", "w-1", "web")));
        index.apply(&Event::Delete(pod("a", "x-1", "web")));
        assert_eq!(index.version_of(&web), 0, "no pods left");
    }

    #[test]
    fn a_relist_replaces_the_whole_index_at_once_and_makes_it_ready() {
        let index = PodIndex::default();
        assert!(still_waiting(&index), "ready before the first list");
        index.apply(&Event::Apply(pod("a", "old-1", "web")));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "new-1", "web")));
        // Until the list is done, readers see what was there before.
        assert_eq!(names(&index, &key("a", "web")), ["old-1"]);
        index.apply(&Event::InitApply(pod("a", "new-2", "api")));
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, &key("a", "web")), ["new-1"]);
        assert_eq!(names(&index, &key("a", "api")), ["new-2"]);
        assert!(index.get("a", "old-1").is_none());
        assert!(!still_waiting(&index), "not ready after the first list");
    }

    #[test]
    fn a_pod_is_kept_as_the_facts_reconcile_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "namespace": "a", "name": "web-1",
                "labels": {POOL_LABEL: "web", "pod-template-hash": "abc"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "app", "image": "app", "imageID": "", "ready": false,
                    "restartCount": 3, "state": {"running": {}}
                }]
            }
        }))
        .unwrap();
        let kept = IndexedPod::of(&pod);
        assert_eq!(kept.worker.name, "web-1");
        assert_eq!(kept.worker.ip, Some("10.0.0.7".parse().unwrap()));
        assert!(kept.worker.ready);
        assert!(kept.worker.crash_looping, "not ready after 3 restarts");
        assert_eq!(kept.worker.template.as_deref(), Some("abc"));
        assert!(kept.leaving, "being deleted");
        assert_eq!(kept.deletion_cost, None);

        let mut finished = pod.clone();
        finished.metadata.deletion_timestamp = None;
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(IndexedPod::of(&finished).leaving);
        finished.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(!IndexedPod::of(&finished).leaving);
    }

    /// Whether waiting for readiness would block now.
    fn still_waiting(index: &PodIndex) -> bool {
        futures::FutureExt::now_or_never(index.wait_until_ready()).is_none()
    }
}
