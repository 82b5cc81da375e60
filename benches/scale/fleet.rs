//! The worker side at scale: every Running pod of the bench's namespace is served by the fake
//! sidecars (`asyncpool_testkit::fake_sidecars`), reporting its pool's load per pod.

use std::collections::HashMap;
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
    /// Load per pod of each pool; pools not named report `default_load`.
    pool_load: HashMap<String, u64>,
    default_load: u64,
    /// Served pods: name → (pool, address).
    pods: HashMap<String, (String, IpAddr)>,
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
    /// Serves the pods of `namespace` on every local address's admin port; with a `service`
    /// time, each pod's load is traffic of requests that long (its counters move).
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
        }));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let task = tokio::spawn(follow(pods, sidecars.clone(), state.clone()));
        Ok(Self {
            sidecars,
            state,
            task,
        })
    }

    /// Sets the load each pod of `pool` reports, now and for its pods to come.
    pub fn set_pool_load(&self, pool: &str, load: u64) {
        let mut state = lock(&self.state);
        state.pool_load.insert(pool.to_owned(), load);
        for (pod_pool, ip) in state.pods.values() {
            if pod_pool == pool {
                self.sidecars.set_load(*ip, load);
            }
        }
    }

    /// Pods served now.
    pub fn pods(&self) -> usize {
        lock(&self.state).pods.len()
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
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
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
                        let load = state
                            .pool_load
                            .get(&pool)
                            .copied()
                            .unwrap_or(state.default_load);
                        sidecars.set_load(ip, load);
                        state.pods.insert(pod.name_any(), (pool, ip));
                    }
                    _ => stop_serving(&sidecars, &state, &pod.name_any()),
                }
            }
            watcher::Event::Delete(pod) => stop_serving(&sidecars, &state, &pod.name_any()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

/// Stops serving a pod's address, unless a newer pod got the same address meanwhile.
fn stop_serving(sidecars: &FakeSidecars, state: &Mutex<State>, pod: &str) {
    let mut state = lock(state);
    if let Some((_, ip)) = state.pods.remove(pod)
        && !state.pods.values().any(|(_, other)| *other == ip)
    {
        sidecars.remove(ip);
    }
}
