//! The worker side at scale: every Running pod of the bench's namespace is served by the fake
//! sidecars (`asyncpool_testkit::fake_sidecars`). A pool's load is its total, spread over its
//! pods as its Service spreads requests: a pool that grows carries the same load on more pods,
//! so it settles at the size its load needs rather than growing with every pod it adds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use asyncpool_contract::pod::{ADMIN_PORT, POOL_LABEL};
use asyncpool_contract::queue::WATCH_HEARTBEAT;
use asyncpool_testkit::bench::BenchResult;
use asyncpool_testkit::fake_sidecars::{FakeSidecars, Served};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

struct State {
    /// Total load of each pool; a pool not named carries `default_load` on each of its pods.
    pool_load: HashMap<String, u64>,
    default_load: u64,
    /// Served pods: name → (pool, address).
    pods: HashMap<String, (String, IpAddr)>,
    /// Each pool's served pods, by name.
    members: HashMap<String, BTreeMap<String, IpAddr>>,
    /// Every pod the API server holds, terminating ones too.
    present: HashSet<String>,
}

impl State {
    /// Spreads `pool`'s load over its pods again: an equal share each, the remainder one more
    /// on the first pods.
    fn spread(&self, sidecars: &FakeSidecars, pool: &str) {
        let Some(members) = self.members.get(pool) else {
            return;
        };
        let Some(&total) = self.pool_load.get(pool) else {
            for ip in members.values() {
                sidecars.set_load(*ip, self.default_load);
            }
            return;
        };
        let count = members.len().max(1) as u64;
        for (i, ip) in members.values().enumerate() {
            let share = total / count + u64::from((i as u64) < total % count);
            sidecars.set_load(*ip, share);
        }
    }
}

pub struct Fleet {
    sidecars: Arc<FakeSidecars>,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fleet {
    /// Serves the pods of `namespace` on every local address's admin port, each reporting
    /// `default_load` until its pool's load is set; with a `service` time, each pod's load is
    /// traffic of requests that long (its counters move).
    pub async fn start(
        client: &Client,
        namespace: &str,
        default_load: u64,
        service: Option<Duration>,
    ) -> BenchResult<Self> {
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ADMIN_PORT);
        let sidecars = FakeSidecars::start(bind, WATCH_HEARTBEAT, service);
        let sidecars = Arc::new(sidecars.await.map_err(|e| {
            format!("cannot listen on {bind} for the fake sidecars (is a sidecar running?): {e}")
        })?);
        let state = Arc::new(Mutex::new(State {
            pool_load: HashMap::new(),
            default_load,
            pods: HashMap::new(),
            members: HashMap::new(),
            present: HashSet::new(),
        }));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn(follow(pods, sidecars.clone(), state.clone()));
        Ok(Self {
            sidecars,
            state,
            task,
        })
    }

    /// Sets `pool`'s total load, spread over its pods now and as they come and go.
    pub fn set_pool_load(&self, pool: &str, total: u64) {
        let mut state = lock(&self.state);
        state.pool_load.insert(pool.to_owned(), total);
        state.spread(&self.sidecars, pool);
    }

    /// Pods served now.
    pub fn pods(&self) -> usize {
        lock(&self.state).pods.len()
    }

    /// Pods the API server holds now, terminating ones too.
    pub fn present(&self) -> usize {
        lock(&self.state).present.len()
    }

    pub fn served(&self) -> Served {
        self.sidecars.served()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(pods: Api<Pod>, sidecars: Arc<FakeSidecars>, state: Arc<Mutex<State>>) {
    let events = watcher(pods, watcher::Config::default().labels(POOL_LABEL)).default_backoff();
    let mut events = pin!(events);
    // The pods a relist (after a watch gap) found; those it did not are gone.
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        if let (watcher::Event::InitApply(pod), Some(seen)) = (&event, relisted.as_mut()) {
            seen.insert(pod.name_any());
        }
        match &event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                lock(&state).present.insert(pod.name_any());
            }
            watcher::Event::Delete(pod) => {
                lock(&state).present.remove(&pod.name_any());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let serving = pod.metadata.deletion_timestamp.is_none()
                    && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let address = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                let pool = pod.labels().get(POOL_LABEL).cloned().unwrap_or_default();
                match (serving, address) {
                    (true, Some(ip)) => {
                        let mut state = lock(&state);
                        let name = pod.name_any();
                        state.pods.insert(name.clone(), (pool.clone(), ip));
                        let members = state.members.entry(pool.clone()).or_default();
                        if members.insert(name, ip) != Some(ip) {
                            state.spread(&sidecars, &pool);
                        }
                    }
                    _ => stop_serving(&sidecars, &state, &pod.name_any()),
                }
            }
            watcher::Event::Delete(pod) => stop_serving(&sidecars, &state, &pod.name_any()),
            watcher::Event::Init => relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let seen = relisted.take().unwrap_or_default();
                let gone: Vec<String> = lock(&state)
                    .pods
                    .keys()
                    .filter(|name| !seen.contains(*name))
                    .cloned()
                    .collect();
                for pod in gone {
                    stop_serving(&sidecars, &state, &pod);
                }
                lock(&state).present.retain(|name| seen.contains(name));
            }
        }
    }
}

/// Stops serving a pod's address, unless a newer pod got the same address meanwhile, and
/// spreads its pool's load over the pods left.
fn stop_serving(sidecars: &FakeSidecars, state: &Mutex<State>, pod: &str) {
    let mut state = lock(state);
    let Some((pool, ip)) = state.pods.remove(pod) else {
        return;
    };
    if !state.pods.values().any(|(_, other)| *other == ip) {
        sidecars.remove(ip);
    }
    if let Some(members) = state.members.get_mut(&pool) {
        members.remove(pod);
    }
    state.spread(sidecars, &pool);
}
