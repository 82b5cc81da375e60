//! The operator end to end on the local cluster: a real API server, controller-manager and
//! scheduler, kwok pods on 127.x addresses, real sidecar processes on those addresses, and the
//! operator binary as a process. Pools use short windows so that each test takes seconds.

use asyncpool_testkit::cluster as support;

use std::time::Duration;

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::fleet::Fleet;
use asyncpool_testkit::fleet::FleetMode;
use asyncpool_testkit::fleet::WorkerKind;
use asyncpool_testkit::operator::OperatorProcess;
use asyncpool_testkit::real_pool::ReplicaHistory;
use asyncpool_testkit::redis::RedisServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{
    TestNamespace, client, eventually, fleet, fleet_of, free_port, install_crd, kubectl,
    test_pool as pool,
};
use tokio::time::Instant;

struct Setup {
    client: Client,
    ns: TestNamespace,
    pools: Api<AsyncWorkerPool>,
    deployments: Api<Deployment>,
}

async fn setup(prefix: &str) -> Setup {
    setup_with_labels(prefix, &[]).await
}

async fn setup_with_labels(prefix: &str, labels: &[(&str, &str)]) -> Setup {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::with_labels(&client, prefix, labels).await;
    Setup {
        pools: Api::namespaced(client.clone(), &ns.name),
        deployments: Api::namespaced(client.clone(), &ns.name),
        client,
        ns,
    }
}

impl Setup {
    /// One operator replica for this test's namespace, without leader election.
    async fn operator(&self) -> OperatorProcess {
        OperatorProcess::start(&self.ns.name, "solo", &["--leader-elect=false"]).await
    }

    async fn create_pool(&self, name: &str, extra: serde_json::Value) {
        self.pools
            .create(&PostParams::default(), &pool(name, extra))
            .await
            .expect("create pool");
    }

    /// Creates a pool with sidecars for its pods, gives it `load` and waits until `replicas`
    /// workers run and report.
    async fn loaded_pool(
        &self,
        name: &str,
        extra: serde_json::Value,
        load: u64,
        replicas: i32,
    ) -> Fleet {
        self.create_pool(name, extra).await;
        let fleet = fleet(&self.client, &self.ns.name, name);
        fleet.set_total_load(load);
        wait_replicas(&self.deployments, name, replicas, Duration::from_secs(15)).await;
        let want = usize::try_from(replicas).unwrap_or(0);
        eventually(
            "every worker reporting",
            Duration::from_secs(15),
            || async { (fleet.live() == want).then_some(()) },
        )
        .await;
        fleet
    }

    /// Names of the pool's pods that are not on their way out.
    async fn live_pods(&self, pool: &str) -> Option<Vec<String>> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let list = pods
            .list(&ListParams::default().labels(&format!("asyncpool.dev/pool={pool}")))
            .await
            .ok()?;
        Some(
            list.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect(),
        )
    }
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> Option<i32> {
    deployments.get_opt(name).await.ok()??.spec?.replicas
}

async fn wait_replicas(deployments: &Api<Deployment>, name: &str, want: i32, limit: Duration) {
    eventually(
        &format!("Deployment {name} at {want} replicas"),
        limit,
        || async move { (replicas(deployments, name).await == Some(want)).then_some(()) },
    )
    .await;
}

async fn condition(
    pools: &Api<AsyncWorkerPool>,
    name: &str,
    type_: &str,
) -> Option<(String, String)> {
    let pool = pools.get(name).await.ok()?;
    let c = pool
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

async fn wait_condition(
    pools: &Api<AsyncWorkerPool>,
    name: &str,
    type_: &str,
    status: &str,
    limit: Duration,
) -> String {
    eventually(
        &format!("{type_}={status} on {name}"),
        limit,
        || async move {
            let (s, reason) = condition(pools, name, type_).await?;
            (s == status).then_some(reason)
        },
    )
    .await
}

#[tokio::test]
async fn pool_becomes_a_deployment_and_service_that_scale_with_load() {
    let s = setup("e2e-scale").await;
    let _operator = s.operator().await;
    s.create_pool("chat", json!({})).await;
    let fleet = fleet(&s.client, &s.ns.name, "chat");

    wait_replicas(&s.deployments, "chat", 1, Duration::from_secs(20)).await;
    let deployment = s.deployments.get("chat").await.expect("deployment");
    let containers: Vec<String> = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(containers, ["app", "asyncpool-sidecar"]);
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns.name);
    let service = eventually("the Service", Duration::from_secs(10), || async {
        services.get_opt("chat").await.ok()?
    })
    .await;
    assert!(service.metadata.owner_references.unwrap()[0].controller == Some(true));

    // kubectl wait works on the standard conditions.
    fleet.set_total_load(0);
    let wait = kubectl(&[
        "wait",
        "-n",
        &s.ns.name,
        "--for=condition=Ready",
        "awp/chat",
        "--timeout=30s",
    ]);
    assert!(
        wait.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&wait.stderr)
    );

    // A burst: 45 queued + in flight needs 5 workers at 10 each.
    let burst = Instant::now();
    fleet.set_total_load(45);
    wait_replicas(&s.deployments, "chat", 5, Duration::from_secs(10)).await;
    let reaction = burst.elapsed();
    assert!(
        reaction < Duration::from_secs(5),
        "scale-up took {reaction:?}"
    );

    // Far more load than max allows: never above max.
    fleet.set_total_load(500);
    wait_replicas(&s.deployments, "chat", 6, Duration::from_secs(10)).await;
    let status = eventually("status shows the load", Duration::from_secs(10), || async {
        let status = s.pools.get("chat").await.ok()?.status?;
        (status.desired_replicas == 6 && status.load == Some(500.0)).then_some(status)
    })
    .await;
    assert_eq!(status.selector.as_deref(), Some("asyncpool.dev/pool=chat"));

    // Load falls: no scale-down before the 3 s delay, then down to min and never below.
    let calm = Instant::now();
    fleet.set_total_load(0);
    let mut lowest = i32::MAX;
    let mut first_drop = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let now = replicas(&s.deployments, "chat").await.unwrap_or(6);
        if now < 6 && first_drop.is_none() {
            first_drop = Some(calm.elapsed());
        }
        lowest = lowest.min(now);
        if now == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_drop = first_drop.expect("the pool scaled down");
    assert!(
        first_drop >= Duration::from_secs(3),
        "scaled down after {first_drop:?}, before the 3 s delay"
    );
    assert_eq!(
        lowest, 1,
        "the pool should end at min and never go below it"
    );
    // It stays at min.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&s.deployments, "chat").await, Some(1));

    // Events go out once the status' settle time has passed.
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(
        "ScaledUp and ScaledDown Events",
        Duration::from_secs(10),
        || async {
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect();
            (reasons.iter().any(|r| r == "ScaledUp") && reasons.iter().any(|r| r == "ScaledDown"))
                .then_some(())
        },
    )
    .await;
}

/// The operator's `asyncpool_pools_at_rest` gauge.
async fn pools_at_rest(operator: &OperatorProcess) -> Option<f64> {
    let text = operator.metrics().await?;
    text.lines()
        .find_map(|line| line.strip_prefix("asyncpool_pools_at_rest "))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn a_pool_at_rest_is_left_alone_and_still_reacts_at_once() {
    let s = setup("e2e-rest").await;
    let operator = s.operator().await;
    // Idle: nothing in flight, so nothing its sidecars say moves (requests in flight would
    // move their busy time and age every second).
    let fleet = s.loaded_pool("calm", json!({}), 0, 1).await;
    let at_rest = |want: f64| {
        let operator = &operator;
        move || async move { (pools_at_rest(operator).await == Some(want)).then_some(()) }
    };
    // Once its windows have levelled (4 s here), the rounds leave the pool alone.
    eventually("the pool at rest", Duration::from_secs(30), at_rest(1.0)).await;
    // A load change wakes it at once: 45 needs 5 workers.
    let burst = Instant::now();
    fleet.set_total_load(45);
    wait_replicas(&s.deployments, "calm", 5, Duration::from_secs(10)).await;
    assert!(
        burst.elapsed() < Duration::from_secs(5),
        "scale-up from rest took {:?}",
        burst.elapsed()
    );
    eventually("the pool busy", Duration::from_secs(5), at_rest(0.0)).await;
    // Idle again: back to its minimum after the scale-down delay, and at rest there.
    fleet.set_total_load(0);
    wait_replicas(&s.deployments, "calm", 1, Duration::from_secs(30)).await;
    eventually(
        "the pool at rest again",
        Duration::from_secs(30),
        at_rest(1.0),
    )
    .await;
}

#[tokio::test]
async fn silent_or_garbage_sidecars_hold_the_size_and_fallback_applies() {
    let s = setup("e2e-missing").await;
    let _operator = s.operator().await;
    let spec = json!({"scaling": {"fallbackReplicas": 5}});
    let fleet = s.loaded_pool("jobs", spec, 30, 3).await;
    wait_condition(
        &s.pools,
        "jobs",
        "MetricsAvailable",
        "True",
        Duration::from_secs(10),
    )
    .await;

    for mode in [FleetMode::Garbage, FleetMode::Silent] {
        fleet.set_mode(mode);
        let reason = wait_condition(
            &s.pools,
            "jobs",
            "MetricsAvailable",
            "False",
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(reason, "NoReadings", "{mode:?}");
        // After the 2 s metrics timeout the fallback raises the pool; it never shrinks it.
        wait_replicas(&s.deployments, "jobs", 5, Duration::from_secs(15)).await;
        let hold_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < hold_until {
            assert_eq!(
                replicas(&s.deployments, "jobs").await,
                Some(5),
                "missing data changed the size ({mode:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fleet.set_mode(FleetMode::Workers);
        wait_condition(
            &s.pools,
            "jobs",
            "MetricsAvailable",
            "True",
            Duration::from_secs(15),
        )
        .await;
    }
    // Recovered: the load decides again (30 → 3 workers, after the scale-down delay).
    wait_replicas(&s.deployments, "jobs", 3, Duration::from_secs(40)).await;
}

#[tokio::test]
async fn pause_and_kubectl_scale_behave_as_documented() {
    let s = setup("e2e-pause").await;
    let _operator = s.operator().await;
    let fleet = s.loaded_pool("api", json!({}), 20, 2).await;

    // Paused: load no longer moves the size.
    s.pools
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    wait_condition(&s.pools, "api", "Paused", "True", Duration::from_secs(10)).await;
    fleet.set_total_load(60);
    let hold_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < hold_until {
        assert_eq!(
            replicas(&s.deployments, "api").await,
            Some(2),
            "a paused pool changed size"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kubectl scale while paused pins the size exactly.
    let scale = kubectl(&["scale", "-n", &s.ns.name, "awp/api", "--replicas=4"]);
    assert!(
        scale.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&scale.stderr)
    );
    wait_replicas(&s.deployments, "api", 4, Duration::from_secs(10)).await;
    let scale_view = kubectl(&[
        "get",
        "--raw",
        &format!(
            "/apis/asyncpool.dev/v1alpha1/namespaces/{}/asyncworkerpools/api/scale",
            s.ns.name
        ),
    ]);
    let scale_view: serde_json::Value =
        serde_json::from_slice(&scale_view.stdout).expect("scale JSON");
    assert_eq!(scale_view["spec"]["replicas"], 4);
    assert_eq!(scale_view["status"]["selector"], "asyncpool.dev/pool=api");

    // Unpaused: autoscaling resumes from there and follows the load (60 → 6).
    s.pools
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .expect("unpause");
    wait_replicas(&s.deployments, "api", 6, Duration::from_secs(15)).await;

    // kubectl scale while autoscaling moves the pool at once; the load takes over from there
    // (30 → 3 workers, once the scale-down delay has passed).
    fleet.set_total_load(30);
    eventually(
        "the pool sees the lower load",
        Duration::from_secs(15),
        || async {
            let load = s.pools.get("api").await.ok()?.status?.load?;
            (load == 30.0).then_some(())
        },
    )
    .await;
    let history = ReplicaHistory::start(&s.deployments, "api").await;
    let scale = kubectl(&["scale", "-n", &s.ns.name, "awp/api", "--replicas=5"]);
    assert!(scale.status.success());
    // The request shows as a move to 5 even where the load had already taken the pool down
    // (the status reports the lower load up to its write interval late); only then to 3.
    eventually(
        "the Deployment moved to the requested 5",
        Duration::from_secs(15),
        || async { history.values().contains(&5).then_some(()) },
    )
    .await;
    wait_replicas(&s.deployments, "api", 3, Duration::from_secs(30)).await;
    let seen = history.values();
    let at_five = seen.iter().position(|r| *r == 5);
    assert!(
        at_five.is_some_and(|i| seen[i..].iter().all(|r| *r <= 5)),
        "expected a move to 5 and only scale-downs after it: {seen:?}"
    );
}

#[tokio::test]
async fn template_changes_roll_out_and_deleting_the_pool_removes_everything() {
    let s = setup("e2e-lifecycle").await;
    let _operator = s.operator().await;
    s.create_pool("web", json!({})).await;
    wait_replicas(&s.deployments, "web", 1, Duration::from_secs(20)).await;

    s.pools
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "example/app:2"}]}}}})),
        )
        .await
        .expect("change the template");
    eventually(
        "the new image in the Deployment",
        Duration::from_secs(10),
        || async {
            let d = s.deployments.get("web").await.ok()?;
            let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
            (image == "example/app:2").then_some(())
        },
    )
    .await;

    s.pools
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete pool");
    let services: Api<Service> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(
        "Deployment and Service garbage-collected",
        Duration::from_secs(30),
        || async {
            let gone = s.deployments.get_opt("web").await.ok()?.is_none()
                && services.get_opt("web").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_deployment_that_is_not_ours_is_reported_not_adopted() {
    let s = setup("e2e-foreign").await;
    let _operator = s.operator().await;
    let foreign: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {"metadata": {"labels": {"app": "shop"}}, "spec": {"containers": [{"name": "shop", "image": "shop:1"}]}}
        }
    }))
    .expect("deployment");
    s.deployments
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign deployment");
    s.create_pool("shop", json!({})).await;

    let reason = wait_condition(&s.pools, "shop", "Ready", "False", Duration::from_secs(15)).await;
    assert_eq!(reason, "NotOwned");
    let untouched = s.deployments.get("shop").await.expect("deployment");
    assert_eq!(untouched.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(
        untouched.metadata.owner_references.is_none(),
        "the foreign Deployment was adopted"
    );
    let containers = untouched.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(
        containers.len(),
        1,
        "the sidecar was injected into a foreign Deployment"
    );
}

/// A pool on the Redis list `jobs`, able to go to zero, and sidecars for its pods that read the
/// list at `worker_url`.
async fn redis_pool(s: &Setup, name: &str, redis: serde_json::Value, worker_url: String) -> Fleet {
    let mut spec = json!({
        "minReplicas": 0,
        "maxReplicas": 4,
        "queue": {"source": "redis", "redis": {"key": "jobs"}},
        "scaling": {"fallbackReplicas": 1},
    });
    asyncpool_testkit::merge_patch(&mut spec["queue"]["redis"], &redis);
    s.create_pool(name, spec).await;
    fleet_of(
        &s.client,
        &s.ns.name,
        name,
        WorkerKind::Redis {
            url: worker_url,
            key: "jobs".into(),
        },
    )
}

/// Waits until the pool's condition `type_` has `reason`.
async fn wait_reason(s: &Setup, name: &str, type_: &str, reason: &str, limit: Duration) {
    eventually(
        &format!("{type_} with reason {reason} on {name}"),
        limit,
        || async {
            let (_, found) = condition(&s.pools, name, type_).await?;
            (found == reason).then_some(())
        },
    )
    .await;
}

/// Pushes 25 jobs, which need 3 workers at 10 per worker.
async fn push_25_jobs(redis: &RedisServer) {
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(std::iter::repeat_n("job", 25));
    assert_eq!(redis.command(&push).await.as_deref(), Ok(":25"));
}

/// A pool whose Redis speaks TLS only, with a certificate a private CA signed and an ACL user:
/// the operator, given that CA (`--redis-ca-file`), reads the queue at zero and wakes the pool,
/// and hands the CA on to the pool's sidecars.
#[tokio::test]
async fn a_tls_redis_pool_wakes_from_zero_with_the_operators_ca_bundle() {
    let redis = RedisServer::start_tls(free_port(), free_port())
        .await
        .expect("redis-server with TLS");
    redis
        .add_user("reader", "r3ader-pw", &["~jobs", "+llen"])
        .await
        .expect("ACL SETUSER");
    let ca_file = redis.ca_file().expect("the CA of a TLS server");
    let ca = std::fs::read_to_string(&ca_file).expect("the CA");
    let s = setup("e2e-tls").await;
    let _operator = OperatorProcess::start(
        &s.ns.name,
        "solo",
        &[
            "--leader-elect=false",
            "--redis-ca-file",
            ca_file.to_str().expect("a UTF-8 path"),
        ],
    )
    .await;
    let url = format!("rediss://reader:r3ader-pw@localhost:{}", redis.addr.port());
    // The fleet's sidecars stand in for the pods' after the wake-up: they read the same list on
    // the harness's plain port, as only the operator's TLS is under test here.
    let _fleet = redis_pool(&s, "jobs", json!({"url": url}), redis.plain_url(0)).await;
    wait_reason(
        &s,
        "jobs",
        "MetricsAvailable",
        "QueueRead",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(replicas(&s.deployments, "jobs").await, Some(0));

    push_25_jobs(&redis).await;
    wait_replicas(&s.deployments, "jobs", 3, Duration::from_secs(15)).await;
    let deployment = s.deployments.get("jobs").await.expect("the Deployment");
    let sidecar = deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("a pod spec")
        .containers
        .into_iter()
        .find(|c| c.name == asyncpool_contract::pod::SIDECAR_CONTAINER)
        .expect("the sidecar");
    let injected = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ASYNCPOOL_REDIS_CA_PEM")
        .and_then(|e| e.value.clone());
    assert_eq!(injected.as_deref(), Some(ca.as_str()));
}

#[tokio::test]
async fn a_redis_pool_scales_from_zero_and_back_to_zero() {
    let mut redis = RedisServer::start_on(free_port())
        .await
        .expect("redis-server");
    let s = setup("e2e-zero").await;
    let _operator = s.operator().await;
    let _fleet = redis_pool(&s, "jobs", json!({"url": redis.url(0)}), redis.url(0)).await;
    // Nothing queued: the pool starts with no worker, and the operator reads its queue itself.
    wait_reason(
        &s,
        "jobs",
        "MetricsAvailable",
        "QueueRead",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(replicas(&s.deployments, "jobs").await, Some(0));
    let history = ReplicaHistory::start(&s.deployments, "jobs").await;

    // The operator's reading wakes the pool, then the sidecars report the same queue.
    push_25_jobs(&redis).await;
    wait_replicas(&s.deployments, "jobs", 3, Duration::from_secs(15)).await;
    wait_reason(
        &s,
        "jobs",
        "MetricsAvailable",
        "AllWorkersReport",
        Duration::from_secs(15),
    )
    .await;

    // The jobs are done: back to zero after the window.
    assert_eq!(redis.command(&["DEL", "jobs"]).await.as_deref(), Ok(":1"));
    wait_replicas(&s.deployments, "jobs", 0, Duration::from_secs(30)).await;
    let seen = history.values();
    assert!(seen.iter().all(|r| *r <= 3), "went past the load: {seen:?}");
    assert!(seen.contains(&3), "{seen:?}");

    // At zero with Redis gone, the queue is missing data, not an empty queue: the fallback
    // applies.
    redis.kill();
    wait_reason(
        &s,
        "jobs",
        "MetricsAvailable",
        "QueueUnreadable",
        Duration::from_secs(15),
    )
    .await;
    wait_replicas(&s.deployments, "jobs", 1, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_redis_password_in_a_secret_wakes_a_pool_from_zero() {
    let redis = RedisServer::start_with_password(free_port(), Some("s3cret"))
        .await
        .expect("redis-server");
    let s = setup("e2e-secret").await;
    let _operator = s.operator().await;
    // The pool's spec names the Secret, not the password.
    let spec = json!({
        "url": redis.url(0),
        "passwordSecretRef": {"name": "redis-auth", "key": "password"},
    });
    let worker_url = format!("redis://:s3cret@{}", redis.addr);
    let _fleet = redis_pool(&s, "jobs", spec, worker_url).await;
    // No Secret yet: the status names what is missing.
    eventually(
        "the missing Secret reported",
        Duration::from_secs(15),
        || async {
            let pool = s.pools.get("jobs").await.ok()?;
            let c = pool
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "MetricsAvailable")?;
            (c.reason == "QueueUnreadable" && c.message.contains("Secret redis-auth not found"))
                .then_some(())
        },
    )
    .await;

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "redis-auth"},
        "stringData": {"password": "s3cret"},
    }))
    .expect("secret object");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    wait_reason(
        &s,
        "jobs",
        "MetricsAvailable",
        "QueueRead",
        Duration::from_secs(20),
    )
    .await;
    push_25_jobs(&redis).await;
    wait_replicas(&s.deployments, "jobs", 3, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn workers_are_admitted_where_pod_security_is_restricted() {
    let s = setup_with_labels(
        "e2e-restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let _operator = s.operator().await;
    // The app container meets the restricted standard; the injected sidecar must too, or the
    // ReplicaSet's pods are refused.
    s.create_pool(
        "locked",
        json!({
            "minReplicas": 2,
            "template": {"spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app",
                    "image": "example/app:1",
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                }],
            }},
        }),
    )
    .await;
    wait_replicas(&s.deployments, "locked", 2, Duration::from_secs(15)).await;
    eventually(
        "2 worker pods admitted",
        Duration::from_secs(20),
        || async { (s.live_pods("locked").await?.len() == 2).then_some(()) },
    )
    .await;

    // An app container that does not meet it: the pool says why no worker comes up.
    s.create_pool("open", json!({})).await;
    let reason = wait_condition(
        &s.pools,
        "open",
        "Degraded",
        "True",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(reason, "PodsRefused");
    let pool = s.pools.get("open").await.expect("pool");
    let message = pool
        .status
        .and_then(|st| st.conditions.into_iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(message.contains("PodSecurity"), "{message}");
    assert_eq!(s.live_pods("open").await, Some(vec![]));
}

#[tokio::test]
async fn a_restarted_operator_does_not_flap() {
    let s = setup("e2e-restart").await;
    let mut operator = OperatorProcess::start(&s.ns.name, "first", &["--leader-elect=false"]).await;
    let _fleet = s.loaded_pool("steady", json!({}), 40, 4).await;
    let metrics_condition = || async {
        let status = s.pools.get("steady").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "MetricsAvailable")
    };
    let before = eventually("workers reporting", Duration::from_secs(10), || async {
        metrics_condition().await.filter(|c| c.status == "True")
    })
    .await;

    operator.kill();
    let _restarted = OperatorProcess::start(&s.ns.name, "second", &["--leader-elect=false"]).await;
    // Over the next stable window the size may move by at most one step, and here it should hold.
    let history = ReplicaHistory::start(&s.deployments, "steady").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = history.values();
    assert!(
        seen.len() <= 2,
        "replicas flapped after the restart: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&4),
        "replicas after the restart: {seen:?}"
    );
    // Readers connecting after the restart are no gap in the data: the condition never flipped
    // (its transition time stands) and nobody was warned of missing readings.
    let after = metrics_condition().await.expect("MetricsAvailable");
    assert_eq!(
        (after.status.as_str(), &after.last_transition_time),
        ("True", &before.last_transition_time),
        "{after:?}"
    );
    let warned = support::operator_events(&s.client, &s.ns.name, "steady").await;
    assert!(
        !warned.iter().any(|(reason, _)| reason == "NoReadings"),
        "{warned:?}"
    );
}

#[tokio::test]
async fn two_replicas_one_acts_and_the_other_takes_over() {
    let s = setup("e2e-leader").await;
    let lease_flags = ["--lease-duration", "3s", "--lease-renew", "1s"];
    let mut operators = vec![
        OperatorProcess::start(&s.ns.name, "alpha", &lease_flags).await,
        OperatorProcess::start(&s.ns.name, "beta", &lease_flags).await,
    ];
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns.name);
    let holder = eventually("a lease holder", Duration::from_secs(15), || async {
        leases
            .get_opt("asyncpool-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    let leader_index = operators
        .iter()
        .position(|o| o.identity == holder)
        .expect("holder is one of ours");
    let follower = operators.remove(1 - leader_index);
    let mut leader = operators.remove(0);

    // Exactly one acts: only the holder reports itself leader.
    let is_leader =
        |text: Option<String>| text.is_some_and(|t| t.lines().any(|l| l == "asyncpool_leader 1"));
    eventually(
        "the holder reports leader",
        Duration::from_secs(10),
        || async { is_leader(leader.metrics().await).then_some(()) },
    )
    .await;
    assert!(!is_leader(follower.metrics().await), "both replicas act");

    let fleet = s.loaded_pool("ha", json!({}), 20, 2).await;

    // The leader dies without releasing the lease; the follower takes over within the lease
    // duration (3 s) plus one check, and keeps scaling.
    leader.kill();
    let killed = Instant::now();
    let follower_identity = follower.identity.clone();
    eventually(
        "the follower holds the lease",
        Duration::from_secs(10),
        || {
            let leases = leases.clone();
            let expected = follower_identity.clone();
            async move {
                let holder = leases
                    .get_opt("asyncpool-operator")
                    .await
                    .ok()??
                    .spec?
                    .holder_identity?;
                (holder == expected).then_some(())
            }
        },
    )
    .await;
    let handover = killed.elapsed();
    assert!(
        handover < Duration::from_secs(6),
        "handover took {handover:?}"
    );
    fleet.set_total_load(40);
    wait_replicas(&s.deployments, "ha", 4, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn scale_down_removes_the_least_busy_workers() {
    let s = setup("e2e-victims").await;
    let _operator = s.operator().await;
    let fleet = s.loaded_pool("queue", json!({}), 25, 3).await;

    // One worker stays busy, the other two go idle: the idle ones must be the ones removed.
    let names: Vec<String> = fleet
        .endpoints()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let busy = names[1].clone();
    for name in &names {
        fleet.set_pod_load(name, Some(if *name == busy { 6 } else { 0 }));
    }
    wait_replicas(&s.deployments, "queue", 1, Duration::from_secs(40)).await;
    let left = eventually("one pod left", Duration::from_secs(30), || async {
        s.live_pods("queue").await.filter(|live| live.len() == 1)
    })
    .await;
    assert_eq!(left, [busy], "the busy worker was removed");
}

#[tokio::test]
async fn a_worn_out_worker_is_recycled_surge_first() {
    let s = setup("e2e-recycle").await;
    let _operator = s.operator().await;
    let spec = json!({"supervision": {"maxRequests": 100}});
    let fleet = s.loaded_pool("worn", spec, 15, 2).await;

    // One worker reports that it served its 100 requests: one extra worker comes first, then
    // the worn-out one goes, and the pool is back at its size.
    let history = ReplicaHistory::start(&s.deployments, "worn").await;
    let worn = fleet.endpoints()[0].0.clone();
    fleet.set_pod_completed(&worn, 100);
    eventually(
        "the worn-out worker replaced",
        Duration::from_secs(30),
        || async {
            let live = s.live_pods("worn").await?;
            (live.len() == 2 && !live.contains(&worn)).then_some(())
        },
    )
    .await;
    assert_eq!(replicas(&s.deployments, "worn").await, Some(2));
    assert_eq!(history.values(), [2, 3, 2], "surge first, then retire");
}
