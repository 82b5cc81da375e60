//! The worker pods the operator watches, indexed by pool: a reconcile reads its own pool's pods
//! without scanning every worker pod of the cluster (at 1,000 pools of 10,000 pods, a scan per
//! reconcile was 10,000 pods looked at to find ten). Fed by the pod watcher's events, as kube's
//! reflector store is, and read by reconciles. Each pod is kept as the few facts reconcile
//! reads ([`IndexedPod`]), not as the Pod object: a Pod, even trimmed, is several KiB.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Being deleted and not finished: its sidecar drains, and serves what the proxies still
    /// route to it until they drop it.
    pub(crate) draining: bool,
    /// Its deletion-cost annotation (the mark of a worker chosen to go first).
    pub(crate) deletion_cost: Option<String>,
}

impl IndexedPod {
    /// What is kept of `pod`, filed as `name`; its template's hash shared with `sibling`'s
    /// where they are the same (a pool's pods come from one or two templates).
    fn of(pod: &Pod, name: Arc<str>, sibling: Option<&IndexedPod>) -> Self {
        let template = pod.labels().get("pod-template-hash").map(|hash| {
            match sibling.and_then(|s| s.worker.template.as_ref()) {
                Some(shared) if **shared == **hash => shared.clone(),
                _ => Arc::from(hash.as_str()),
            }
        });
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        Self {
            worker: worker_pod(pod, name, template),
            leaving: pod.metadata.deletion_timestamp.is_some() || finished,
            draining: pod.metadata.deletion_timestamp.is_some() && !finished,
            deletion_cost: pod.annotations().get(DELETION_COST).cloned(),
        }
    }
}

fn worker_pod(pod: &Pod, name: Arc<str>, template: Option<Arc<str>>) -> WorkerPod {
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
        name,
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        ready,
        crash_looping,
        template,
    }
}

/// A pod's namespace and name. Both are shared: the namespace by every pod in it, the name with
/// the pod's entry in its pool (at ten thousand pods, every copy of every name is a megabyte).
type PodName = (Arc<str>, Arc<str>);

/// One pool's pods by name, and the index's change count when they last changed.
#[derive(Default)]
struct PoolPods {
    pods: BTreeMap<Arc<str>, Arc<IndexedPod>>,
    version: u64,
    /// Its workers (the pods not leaving), made on first read after a change: a busy pool is
    /// planned every second, and its pods change far less often.
    workers: OnceLock<Arc<[WorkerPod]>>,
    /// Its pods being deleted that may still serve, made the same way.
    draining: OnceLock<Arc<[WorkerPod]>>,
}

impl PoolPods {
    fn changed(&mut self, change: u64) {
        self.version = change;
        self.workers = OnceLock::new();
        self.draining = OnceLock::new();
    }

    /// The pods that pass `filter`, made once per change into `cache`.
    fn selected(
        &self,
        cache: &OnceLock<Arc<[WorkerPod]>>,
        filter: fn(&IndexedPod) -> bool,
    ) -> Arc<[WorkerPod]> {
        cache
            .get_or_init(|| {
                self.pods
                    .values()
                    .filter(|p| filter(p))
                    .map(|p| p.worker.clone())
                    .collect()
            })
            .clone()
    }
}

#[derive(Default)]
struct Pods {
    by_pool: HashMap<Arc<PoolKey>, PoolPods>,
    /// The pool each pod is filed under, so that a pod whose label changes leaves its old pool.
    pool_of: HashMap<PodName, Arc<PoolKey>>,
    /// Every namespace a pod was seen in, each held once.
    namespaces: HashSet<Arc<str>>,
}

impl Pods {
    /// Files `pod`; `change` is a number no earlier change of the index had.
    fn insert(&mut self, pod: &Pod, change: u64) {
        let Some((namespace, name, pool)) = keys(pod) else {
            return;
        };
        let namespace = self.shared_namespace(namespace);
        let name = (namespace, Arc::<str>::from(name));
        if let Some(previous) = self.pool_of.get(&name)
            && **previous != pool
        {
            let previous = previous.clone();
            self.remove_from(&previous, &name.1, change);
        }
        let pool = self.shared_pool(pool);
        let entry = self.by_pool.entry(pool.clone()).or_default();
        let (name_in_pool, sibling) = match entry.pods.get_key_value(&name.1) {
            Some((filed, previous)) => (filed.clone(), Some(previous.clone())),
            None => (name.1.clone(), entry.pods.values().next().cloned()),
        };
        let kept = IndexedPod::of(pod, name_in_pool.clone(), sibling.as_deref());
        entry.pods.insert(name_in_pool.clone(), Arc::new(kept));
        entry.changed(change);
        self.pool_of.insert((name.0, name_in_pool), pool);
    }

    /// The namespace as held by the index (one allocation for all its pods).
    fn shared_namespace(&mut self, namespace: String) -> Arc<str> {
        match self.namespaces.get(namespace.as_str()) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::<str>::from(namespace);
                self.namespaces.insert(shared.clone());
                shared
            }
        }
    }

    /// The pool's key as held by the index; a new one for a pool without pods yet.
    fn shared_pool(&self, pool: PoolKey) -> Arc<PoolKey> {
        self.by_pool
            .get_key_value(&pool)
            .map_or_else(|| Arc::new(pool), |(shared, _)| shared.clone())
    }

    fn remove(&mut self, pod: &Pod, change: u64) {
        let name = (
            Arc::from(pod.namespace().unwrap_or_default()),
            Arc::from(pod.name_any()),
        );
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
fn keys(pod: &Pod) -> Option<(String, String, PoolKey)> {
    let namespace = pod.namespace()?;
    let pool = pod.labels().get(POOL_LABEL).filter(|p| !p.is_empty())?;
    Some((
        namespace.clone(),
        pod.name_any(),
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
            |entry| entry.selected(&entry.workers, |p| !p.leaving),
        )
    }

    /// The pods of `pool` being deleted that may still serve (their sidecars drain), by name.
    pub(crate) fn draining_of(&self, pool: &PoolKey) -> Arc<[WorkerPod]> {
        read(&self.pods).by_pool.get(pool).map_or_else(
            || Arc::from([]),
            |entry| entry.selected(&entry.draining, |p| p.draining),
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
        let key: PodName = (namespace.into(), name.into());
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
            .map(|p| p.name.to_string())
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
        let draining = |index: &PodIndex| -> Vec<String> {
            let pods = index.draining_of(&web);
            pods.iter().map(|p| p.name.to_string()).collect()
        };
        assert_eq!(draining(&index), ["web-1"]);
        index.apply(&Event::Delete(pod("a", "web-2", "web")));
        assert!(names(&index, &web).is_empty());
        // Gone from the API, it drains no more.
        index.apply(&Event::Delete(pod("a", "web-1", "web")));
        assert!(draining(&index).is_empty());
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
    fn names_and_template_hashes_are_held_once() {
        let index = PodIndex::default();
        let of_template = |name: &str| {
            let mut pod = pod("a", name, "web");
            pod.labels_mut()
                .insert("pod-template-hash".into(), "abc".into());
            pod
        };
        index.apply(&Event::Apply(of_template("web-1")));
        index.apply(&Event::Apply(of_template("web-2")));
        let first = index.get("a", "web-1").expect("web-1");
        // An update keeps the name it was filed under.
        index.apply(&Event::Apply(of_template("web-1")));
        let updated = index.get("a", "web-1").expect("web-1");
        assert!(Arc::ptr_eq(&first.worker.name, &updated.worker.name));
        let workers = index.workers_of(&key("a", "web"));
        assert!(Arc::ptr_eq(&workers[0].name, &updated.worker.name));
        let (one, two) = (&workers[0].template, &workers[1].template);
        assert_eq!(one.as_deref(), Some("abc"));
        assert!(Arc::ptr_eq(
            one.as_ref().expect("hash"),
            two.as_ref().expect("hash")
        ));
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
        let kept = IndexedPod::of(&pod, "web-1".into(), None);
        assert_eq!(&*kept.worker.name, "web-1");
        assert_eq!(kept.worker.ip, Some("10.0.0.7".parse().unwrap()));
        assert!(kept.worker.ready);
        assert!(kept.worker.crash_looping, "not ready after 3 restarts");
        assert_eq!(kept.worker.template.as_deref(), Some("abc"));
        assert!(kept.leaving, "being deleted");
        assert_eq!(kept.deletion_cost, None);

        let mut finished = pod.clone();
        finished.metadata.deletion_timestamp = None;
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(IndexedPod::of(&finished, "web-1".into(), None).leaving);
        finished.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(!IndexedPod::of(&finished, "web-1".into(), None).leaving);
    }

    /// Whether waiting for readiness would block now.
    fn still_waiting(index: &PodIndex) -> bool {
        futures::FutureExt::now_or_never(index.wait_until_ready()).is_none()
    }
}
