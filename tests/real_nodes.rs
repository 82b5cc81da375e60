//! Pools on the local cluster's real nodes (`ASYNCPOOL_REAL_NODES`, `scripts/real-node`): the
//! workers run the test app's and the sidecar's real images under a real kubelet, containerd and
//! runc, in a namespace that enforces Pod Security `restricted`; readiness comes from the
//! kubelet's probes of the sidecar; traffic goes through the pool's Service and kube-proxy. The
//! promise under test: taking workers away under a steady load loses no request and cuts no
//! stream, even streams longer than the drain's grace.

use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::cluster::{TestNamespace, client, eventually, install_crd};
use asyncpool_testkit::helm::{RELEASE, Release};
use asyncpool_testkit::load::{Load, LoadReport, LoadSpec};
use asyncpool_testkit::operator::OperatorProcess;
use asyncpool_testkit::real_node::{self, app_container, placement, product_image};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct RealSetup {
    client: Client,
    ns: TestNamespace,
    pools: Api<AsyncWorkerPool>,
    pods: Api<Pod>,
}

async fn setup(prefix: &str) -> RealSetup {
    let client = client().await;
    real_node::ready_nodes(&client).await;
    install_crd(&client).await;
    let ns = TestNamespace::with_labels(
        &client,
        prefix,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    RealSetup {
        pools: Api::namespaced(client.clone(), &ns.name),
        pods: Api::namespaced(client.clone(), &ns.name),
        client,
        ns,
    }
}

impl RealSetup {
    /// The operator as a process on the host, injecting the real sidecar image.
    async fn operator(&self) -> OperatorProcess {
        let image = product_image("sidecar");
        OperatorProcess::start(
            &self.ns.name,
            "solo",
            &["--leader-elect=false", "--sidecar-image", &image],
        )
        .await
    }

    /// A pool of `replicas` workers of the test app on the real nodes, proxied by the sidecar.
    async fn create_pool(&self, name: &str, replicas: i32, supervision: Value) {
        self.create(
            name,
            json!({"minReplicas": replicas, "maxReplicas": replicas, "supervision": supervision}),
        )
        .await;
    }

    /// A pool between `min` and `max` workers that wants one worker per 5 requests in the app.
    async fn create_pool_scaling(&self, name: &str, min: i32, max: i32) {
        self.create(
            name,
            json!({"minReplicas": min, "maxReplicas": max, "queue": {"source": "proxy", "targetPerWorker": 5}}),
        )
        .await;
    }

    async fn create(&self, name: &str, spec: Value) {
        let mut template_spec = placement();
        template_spec["containers"] = json!([app_container()]);
        let mut full = json!({
            "concurrency": 20,
            "queue": {"source": "proxy", "targetPerWorker": 20},
            "scaling": {"stableWindow": "4s", "panicWindow": "1s", "scaleDownDelay": "1s", "metricsTimeout": "2s"},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec},
        });
        for (key, value) in spec.as_object().expect("spec fields") {
            full[key] = value.clone();
        }
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

    async fn resize(&self, name: &str, replicas: i32) {
        self.pools
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"minReplicas": replicas, "maxReplicas": replicas}})),
            )
            .await
            .expect("resize pool");
    }

    /// The pool's pods: (name, ready, deleting, pod IP).
    async fn pods_of(&self, pool: &str) -> Option<Vec<(String, bool, bool, Option<String>)>> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&format!("asyncpool.dev/pool={pool}")))
            .await
            .ok()?;
        Some(
            list.items
                .into_iter()
                .map(|pod| {
                    let ready = real_node::pod_ready(&pod);
                    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                    let deleting = pod.metadata.deletion_timestamp.is_some();
                    (pod.metadata.name.unwrap_or_default(), ready, deleting, ip)
                })
                .collect(),
        )
    }

    /// Waits until exactly `want` pods exist (none on its way out) and all are Ready.
    async fn wait_ready(&self, pool: &str, want: usize, limit: Duration) {
        eventually(
            &format!("{want} ready workers of {pool}, and no other"),
            limit,
            || async {
                let pods = self.pods_of(pool).await?;
                (pods.len() == want
                    && pods
                        .iter()
                        .all(|(_, ready, deleting, _)| *ready && !deleting))
                .then_some(())
            },
        )
        .await;
    }

    /// Starts the load once the pool's Service answers through kube-proxy, which programs a new
    /// Service's endpoints up to a second after they are ready.
    async fn service_load(&self, pool: &str, rate: u32, stream_rate: f64) -> Load {
        self.load_through_service(pool, rate, "/sleep?s=0.05", stream_rate)
            .await
    }

    /// Short requests only, `rate` a second of `path`.
    async fn service_load_of(&self, pool: &str, rate: u32, path: &str) -> Load {
        self.load_through_service(pool, rate, path, 0.0).await
    }

    async fn load_through_service(
        &self,
        pool: &str,
        rate: u32,
        path: &str,
        stream_rate: f64,
    ) -> Load {
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
                    asyncpool_testkit::http::send(
                        target,
                        "GET",
                        "/hello",
                        &[],
                        bytes::Bytes::new(),
                    ),
                )
                .await;
                matches!(reply, Ok(Ok(ref r)) if r.status == 200).then_some(())
            },
        )
        .await;
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
}

fn assert_nothing_lost(report: &LoadReport, at_least: u64) {
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

#[tokio::test]
async fn scale_down_through_the_service_loses_no_request_and_cuts_no_stream() {
    let s = setup("rn-drain").await;
    let _operator = s.operator().await;
    s.create_pool("web", 3, json!({"drainTimeout": "20s"}))
        .await;
    // Readiness comes from the kubelet probing each sidecar's /readyz, which needs the app.
    s.wait_ready("web", 3, Duration::from_secs(90)).await;

    let load = s.service_load("web", 40, 1.0).await;
    eventually("the load flowing", Duration::from_secs(10), || async {
        (load.so_far().succeeded >= 40).then_some(())
    })
    .await;
    // Two of three workers go while requests and streams keep arriving through kube-proxy.
    s.resize("web", 1).await;
    s.wait_ready("web", 1, Duration::from_secs(60)).await;
    // Load on the one left, so that what was routed late to a leaving worker has shown.
    let after = load.so_far().sent + 80;
    eventually(
        "two more seconds of load",
        Duration::from_secs(10),
        || async { (load.so_far().sent >= after).then_some(()) },
    )
    .await;
    let report = load.stop().await;
    assert_nothing_lost(&report, 200);
}

#[tokio::test]
async fn a_hung_worker_is_replaced_without_losing_the_load() {
    let s = setup("rn-hung").await;
    let _operator = s.operator().await;
    // The hung worker's drain ends at its timeout, which must leave a stream that starts at the
    // end of the 5 s grace its 8 s: 15 s.
    s.create_pool(
        "api",
        2,
        json!({"workerTimeout": "5s", "drainTimeout": "15s"}),
    )
    .await;
    s.wait_ready("api", 2, Duration::from_secs(90)).await;
    let pods = s.pods_of("api").await.expect("pods");
    let (hung, _, _, ip) = pods.first().expect("a worker").clone();
    let ip = ip.expect("pod IP");

    let load = s.service_load("api", 30, 0.5).await;
    // One request that never finishes in time, sent to one worker directly: its oldest
    // in-flight request passes the pool's workerTimeout and the worker counts as hung.
    let stuck_target = format!("{ip}:8080").parse().expect("pod address");
    let stuck = tokio::spawn(asyncpool_testkit::http::send(
        stuck_target,
        "GET",
        "/sleep?s=600",
        &[],
        bytes::Bytes::new(),
    ));
    eventually(
        "the hung worker replaced by a fresh one",
        Duration::from_secs(60),
        || async {
            let pods = s.pods_of("api").await?;
            let fresh = pods
                .iter()
                .filter(|(name, ready, deleting, _)| *ready && !deleting && *name != hung)
                .count();
            (fresh == 2 && pods.iter().all(|(name, ..)| *name != hung)).then_some(())
        },
    )
    .await;
    let report = load.stop().await;
    // The stuck request itself is what the hung worker's drain timeout gives up on.
    let stuck = stuck.await.expect("stuck request task");
    assert!(
        stuck.as_ref().map_or(true, |reply| reply.status != 200),
        "the stuck request cannot have completed: {stuck:?}"
    );
    assert_nothing_lost(&report, 200);
}

#[tokio::test]
async fn the_operator_runs_from_its_image_installed_with_the_chart() {
    let s = setup("rn-chart").await;
    let n = s.ns.name.as_str();
    // One operator pod on a real node, from the image scripts/images built, reading the workers'
    // sidecars over the pod network and the API server through the `kubernetes` Service.
    let watch = format!("watchNamespace={n}");
    let _release = Release::install(
        n,
        &[
            &watch,
            "replicaCount=1",
            "image.pullPolicy=Never",
            "nodeSelector.asyncpool\\.dev/node=real",
            "tolerations[0].key=asyncpool.dev/real-node",
            "tolerations[0].operator=Exists",
            "tolerations[0].effect=NoSchedule",
        ],
    );
    eventually(
        "the operator pod Ready on a real node",
        Duration::from_secs(90),
        || async {
            let list = s
                .pods
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
                )))
                .await
                .ok()?;
            list.items.iter().any(real_node::pod_ready).then_some(())
        },
    )
    .await;

    // A pool that scales on what its sidecars report: 1 worker at rest, 3 under the load.
    s.create_pool_scaling("chat", 1, 3).await;
    s.wait_ready("chat", 1, Duration::from_secs(90)).await;
    let load = s.service_load_of("chat", 40, "/sleep?s=0.5").await;
    s.wait_ready("chat", 3, Duration::from_secs(90)).await;
    let report = load.stop().await;
    println!("{report}");
    assert_eq!(report.lost, 0, "{report}");
    let pool = s.pools.get("chat").await.expect("pool");
    let status = pool.status.expect("pool status");
    assert_eq!(status.replicas, 3, "{status:?}");
}
