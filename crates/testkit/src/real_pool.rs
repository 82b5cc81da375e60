//! Pools whose workers run on the local cluster's real nodes: a namespace that enforces Pod
//! Security `restricted`, pools of the test app behind the real sidecar image, and an open-loop
//! load through the pool's Service (kube-proxy), as `tests/real_nodes.rs` and `tests/faults.rs`
//! use them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cluster::{TestNamespace, client, eventually, install_crd, kubeconfig_path};
use crate::load::{Load, LoadReport, LoadSpec};
use crate::operator::OperatorProcess;
use crate::real_node::{self, app_container, placement, product_image};

/// One test's namespace on the real nodes and the APIs it uses.
pub struct RealPools {
    pub client: Client,
    pub ns: TestNamespace,
    pub pools: Api<AsyncWorkerPool>,
    pub pods: Api<Pod>,
    pub deployments: Api<Deployment>,
}

/// A pool's pod as the tests look at it.
#[derive(Clone, Debug)]
pub struct Worker {
    pub name: String,
    pub ready: bool,
    pub deleting: bool,
    pub ip: Option<String>,
    /// The real node it runs on (`real-node-I`).
    pub node: Option<String>,
    /// Restarts of its most restarted container.
    pub restarts: i32,
}

/// A pod spec for the real nodes whose one container is `app`.
pub fn pod_spec_running(app: Value) -> Value {
    let mut spec = placement();
    spec["containers"] = json!([app]);
    spec
}

impl RealPools {
    pub async fn setup(prefix: &str) -> Self {
        let client = client().await;
        real_node::ready_nodes(&client).await;
        install_crd(&client).await;
        let ns = TestNamespace::with_labels(
            &client,
            prefix,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
        Self {
            pools: Api::namespaced(client.clone(), &ns.name),
            pods: Api::namespaced(client.clone(), &ns.name),
            deployments: Api::namespaced(client.clone(), &ns.name),
            client,
            ns,
        }
    }

    /// The operator as a process on the host, injecting the real sidecar image, without leader
    /// election.
    pub async fn operator(&self) -> OperatorProcess {
        self.operator_as(kubeconfig_path(), "solo", &["--leader-elect=false"])
            .await
    }

    /// The operator authenticated by `kubeconfig`, with `identity` and `extra` flags.
    pub async fn operator_as(
        &self,
        kubeconfig: &Path,
        identity: &str,
        extra: &[&str],
    ) -> OperatorProcess {
        let image = product_image("sidecar");
        let mut flags = vec!["--sidecar-image", image.as_str()];
        flags.extend_from_slice(extra);
        OperatorProcess::start_with_kubeconfig(&self.ns.name, identity, &flags, kubeconfig).await
    }

    /// A pool of `replicas` workers of the test app, proxied by the sidecar.
    pub async fn create_pool(&self, name: &str, replicas: i32, supervision: Value) {
        self.create(
            name,
            json!({"minReplicas": replicas, "maxReplicas": replicas, "supervision": supervision}),
        )
        .await;
    }

    /// A pool between `min` and `max` workers that wants one worker per 5 requests in the app.
    pub async fn create_pool_scaling(&self, name: &str, min: i32, max: i32) {
        self.create(
            name,
            json!({"minReplicas": min, "maxReplicas": max, "queue": {"source": "proxy", "targetPerWorker": 5}}),
        )
        .await;
    }

    /// A pool of the test app with the tests' defaults, overridden field by field by `spec`.
    pub async fn create(&self, name: &str, spec: Value) {
        let template_spec = pod_spec_running(app_container());
        let mut full = json!({
            "concurrency": 20,
            "queue": {"source": "proxy", "targetPerWorker": 20},
            "scaling": {"stableWindow": "4s", "panicWindow": "1s", "scaleDownDelay": "1s", "metricsTimeout": "2s"},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec},
        });
        crate::merge_patch(&mut full, &spec);
        let pool: AsyncWorkerPool = serde_json::from_value(json!({
            "apiVersion": "asyncpool.dev/v1alpha1",
            "kind": "AsyncWorkerPool",
            "metadata": {"name": name},
            "spec": full,
        }))
        .expect("pool object");
        self.pools
            .create(&PostParams::default(), &pool)
            .await
            .expect("create pool");
    }

    /// Merges `spec` into the pool's spec.
    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.pools
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("patch pool");
    }

    /// Replaces the pool's template with one whose one container is `app`.
    pub async fn set_app(&self, name: &str, app: Value) {
        self.patch_spec(name, json!({"template": {"spec": pod_spec_running(app)}}))
            .await;
    }

    pub async fn resize(&self, name: &str, replicas: i32) {
        self.patch_spec(
            name,
            json!({"minReplicas": replicas, "maxReplicas": replicas}),
        )
        .await;
    }

    /// The pool's pods, or `None` when the API server does not answer.
    pub async fn workers(&self, pool: &str) -> Option<Vec<Worker>> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&format!("asyncpool.dev/pool={pool}")))
            .await
            .ok()?;
        Some(
            list.items
                .into_iter()
                .map(|pod| Worker {
                    ready: real_node::pod_ready(&pod),
                    ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                    deleting: pod.metadata.deletion_timestamp.is_some(),
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    restarts: pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|c| c.iter().map(|c| c.restart_count).max())
                        .unwrap_or(0),
                    name: pod.metadata.name.unwrap_or_default(),
                })
                .collect(),
        )
    }

    /// Waits until exactly `want` pods exist (none on its way out) and all are Ready.
    pub async fn wait_ready(&self, pool: &str, want: usize, limit: Duration) {
        eventually(
            &format!("{want} ready workers of {pool}, and no other"),
            limit,
            || async {
                let workers = self.workers(pool).await?;
                (workers.len() == want && workers.iter().all(|w| w.ready && !w.deleting))
                    .then_some(())
            },
        )
        .await;
    }

    /// Waits until the Deployment asks for `want` workers and exactly `want` Ready ones stay
    /// (workers on their way out may still be finishing their requests).
    pub async fn wait_staying(&self, pool: &str, want: i32, limit: Duration) {
        eventually(
            &format!("{pool} at {want} ready workers"),
            limit,
            || async {
                let staying: Vec<Worker> = self
                    .workers(pool)
                    .await?
                    .into_iter()
                    .filter(|w| !w.deleting)
                    .collect();
                (self.replicas(pool).await? == want
                    && staying.len() == want as usize
                    && staying.iter().all(|w| w.ready))
                .then_some(())
            },
        )
        .await;
    }

    /// The Deployment's `spec.replicas`, or `None` when the API server does not answer.
    pub async fn replicas(&self, pool: &str) -> Option<i32> {
        self.deployments.get_opt(pool).await.ok()??.spec?.replicas
    }

    /// Starts the load once the pool's Service answers through kube-proxy, which programs a new
    /// Service's endpoints up to a second after they are ready: `rate` requests a second of
    /// `/sleep?s=0.05` and `stream_rate` streams a second.
    pub async fn service_load(&self, pool: &str, rate: u32, stream_rate: f64) -> Load {
        self.load_through_service(pool, rate, "/sleep?s=0.05", stream_rate)
            .await
    }

    /// Short requests only, `rate` a second of `path`.
    pub async fn service_load_of(&self, pool: &str, rate: u32, path: &str) -> Load {
        self.load_through_service(pool, rate, path, 0.0).await
    }

    pub async fn load_through_service(
        &self,
        pool: &str,
        rate: u32,
        path: &str,
        stream_rate: f64,
    ) -> Load {
        let target = self.answering_service(pool).await;
        Load::start(LoadSpec {
            target,
            rate,
            short_path: path.into(),
            stream_rate,
            // 8 s: longer than the drain's 5 s grace, so a stream that starts before a worker is
            // told to go is still running when its grace ends.
            stream_path: "/stream?n=16&interval=0.5".into(),
            stream_last_event: "data: 15\n".into(),
            timeout: Duration::from_secs(30),
        })
    }

    /// The pool's Service address, once a request through it succeeds.
    pub async fn answering_service(&self, pool: &str) -> SocketAddr {
        let target = eventually("the pool's Service", Duration::from_secs(20), || {
            real_node::service_address(&self.client, &self.ns.name, pool)
        })
        .await;
        eventually(
            "the Service answering through kube-proxy",
            Duration::from_secs(20),
            || async {
                let reply = tokio::time::timeout(
                    Duration::from_secs(3),
                    crate::http::send(target, "GET", "/hello", &[], bytes::Bytes::new()),
                )
                .await;
                matches!(reply, Ok(Ok(ref r)) if r.status == 200).then_some(())
            },
        )
        .await;
        target
    }
}

/// Asserts that a load lost nothing, had no 503 and ran whole streams.
pub fn assert_nothing_lost(report: &LoadReport, at_least: u64) {
    println!("{report}");
    assert!(
        report.sent >= at_least,
        "too few requests to tell: {report}"
    );
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(
        report.refused, 0,
        "nothing should queue this long at this rate: {report}"
    );
    assert_eq!(report.streams_cut, 0, "{report}");
    assert!(report.streams_whole > 0, "no stream ran: {report}");
}

/// Every `spec.replicas` a Deployment goes through, with when it was seen, from a watch that
/// survives API server restarts (so that even a change lasting milliseconds is seen).
pub struct ReplicaHistory {
    seen: Arc<Mutex<Vec<(Instant, i32)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaHistory {
    pub async fn start(deployments: &Api<Deployment>, name: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(deployments.clone(), config)
            .default_backoff()
            .applied_objects();
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Some(replicas) = event.ok().and_then(|d| d.spec?.replicas) {
                    let mut seen = record.lock().expect("replica history");
                    if seen.last().map(|(_, r)| *r) != Some(replicas) {
                        seen.push((Instant::now(), replicas));
                    }
                }
            }
        });
        let history = Self { seen, task };
        // The watch's initial list records the current size; only then is it following.
        eventually(
            "the replica watch is running",
            Duration::from_secs(10),
            || async { (!history.values().is_empty()).then_some(()) },
        )
        .await;
        history
    }

    /// The sizes in the order seen.
    pub fn values(&self) -> Vec<i32> {
        self.timed().into_iter().map(|(_, r)| r).collect()
    }

    /// The sizes with when each was first seen.
    pub fn timed(&self) -> Vec<(Instant, i32)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The size at `at`.
    pub fn at(&self, at: Instant) -> Option<i32> {
        self.timed()
            .into_iter()
            .take_while(|(seen, _)| *seen <= at)
            .last()
            .map(|(_, r)| r)
    }

    /// The smallest size held at any moment since `from`.
    pub fn min_since(&self, from: Instant) -> Option<i32> {
        let timed = self.timed();
        let before = timed
            .iter()
            .take_while(|(seen, _)| *seen <= from)
            .last()
            .map(|(_, r)| *r);
        timed
            .iter()
            .filter(|(seen, _)| *seen > from)
            .map(|(_, r)| *r)
            .chain(before)
            .min()
    }
}

impl Drop for ReplicaHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}
