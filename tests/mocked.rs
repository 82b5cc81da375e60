//! The mocked-API tier: the reconcile pipeline and the leader lease against kube's `tower-test`
//! mock service, answered by the test kit's in-memory API (`asyncpool_testkit::mock_api`). It
//! covers what only the end-to-end tests covered before, without a cluster: the writes the
//! operator makes, and their order.

use std::sync::Arc;
use std::time::Duration;

use asyncpool::crd::{AsyncWorkerPool, AsyncWorkerPoolStatus};
use asyncpool::leader::{LeaderElector, LeaseTiming};
use asyncpool::pool::PoolKey;
use asyncpool::reconcile::{
    Context, PodIndex, Round, Settings, Submission, decision_round, reconcile,
};
use asyncpool_contract::pod::POOL_LABEL;
use asyncpool_testkit::mock_api::{MockApi, Recorded};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};

const POOL: &str = "/apis/asyncpool.dev/v1alpha1/namespaces/team/asyncworkerpools/chat";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/team/deployments/chat";
const SERVICE: &str = "/api/v1/namespaces/team/services/chat";
const PODS: &str = "/api/v1/namespaces/team/pods";

/// The pool `chat` in namespace `team`, with `spec` merged over a minimal valid one.
fn pool(spec: Value) -> AsyncWorkerPool {
    let mut object = json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": "chat", "namespace": "team", "uid": "pool-uid", "generation": 1},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 10,
            "concurrency": 10,
            "template": {
                "metadata": {"labels": {"app": "chat"}},
                "spec": {"containers": [{"name": "app", "image": "example/chat:1"}]}
            }
        }
    });
    for (key, value) in spec.as_object().expect("spec fields") {
        object["spec"][key] = value.clone();
    }
    serde_json::from_value(object).expect("a valid pool")
}

/// The pool as the mocked API holds it now (with the status the operator wrote).
fn stored_pool(api: &MockApi) -> AsyncWorkerPool {
    serde_json::from_value(api.object(POOL).expect("the pool exists")).expect("a pool")
}

fn describe(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One reconcile, and the status it handed over written.
async fn reconcile_once(pool: AsyncWorkerPool, ctx: &Arc<Context>) {
    reconcile(Arc::new(pool), ctx.clone())
        .await
        .expect("reconcile succeeds");
    ctx.statuses.flush().await;
}

#[tokio::test]
async fn an_unchanged_pool_makes_no_write() {
    let api = MockApi::default();
    let ctx = Arc::new(Context::for_tests(api.client(), Settings::default()));
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());

    reconcile_once(stored_pool(&api), &ctx).await;
    let first = api.writes();
    for path in [DEPLOYMENT, SERVICE] {
        assert!(
            first.iter().any(|w| w.path == path),
            "the first reconcile creates {path}: {}",
            describe(&first)
        );
    }
    // The second one sees what the first made (the status may still settle once).
    reconcile_once(stored_pool(&api), &ctx).await;

    api.clear_requests();
    for _ in 0..3 {
        reconcile_once(stored_pool(&api), &ctx).await;
    }
    let writes = api.writes();
    assert!(
        writes.is_empty(),
        "an unchanged pool wrote: {}",
        describe(&writes)
    );
    assert!(
        !api.requests().is_empty(),
        "the reconciles read the pool's objects"
    );
}

#[tokio::test]
async fn a_foreign_deployment_is_never_applied_over() {
    let api = MockApi::default();
    let ctx = Arc::new(Context::for_tests(api.client(), Settings::default()));
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());
    let foreign = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": "team", "labels": {"team": "other"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "other"}},
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "other", "image": "example/other:1"}]}
            }
        }
    });
    api.insert(DEPLOYMENT, foreign.clone());

    for _ in 0..2 {
        reconcile_once(stored_pool(&api), &ctx).await;
    }
    let writes = api.writes();
    assert!(
        writes
            .iter()
            .all(|w| w.path != DEPLOYMENT && w.path != SERVICE),
        "the operator wrote over objects it does not own: {}",
        describe(&writes)
    );
    let after = api.object(DEPLOYMENT).expect("still there");
    assert_eq!(
        after["spec"], foreign["spec"],
        "the foreign Deployment changed"
    );
    let status = &stored_pool(&api).status.expect("a status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NotOwned")
    );
    assert!(
        ready.message.contains("Deployment chat"),
        "{}",
        ready.message
    );
}

/// A ready, running worker pod of the pool, without an address (so no reader starts for it).
fn worker(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team", "labels": {POOL_LABEL: "chat"}},
        "spec": {"containers": [{"name": "app", "image": "example/chat:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .expect("a pod")
}

#[tokio::test]
async fn victims_are_marked_before_replicas_drop() {
    let api = MockApi::default();
    // The pod cache as the controller's watch would keep it: a marked pod shows there.
    let pods = PodIndex::default();
    let watch = pods.clone();
    let client = api.client_with_hook(Box::new(move |request, object| {
        if request.path.starts_with(PODS)
            && let Some(pod) = object.and_then(|o| serde_json::from_value::<Pod>(o.clone()).ok())
        {
            watch.apply(&watcher::Event::Apply(pod));
        }
    }));
    let mut context = Context::for_tests(client, Settings::default());
    context.caches.pods = pods.clone();
    let ctx = Arc::new(context);

    // `kubectl scale --replicas 3`, handled: the Deployment runs three workers.
    api.insert(
        POOL,
        serde_json::to_value(pool(json!({"replicas": 3}))).unwrap(),
    );
    reconcile_once(stored_pool(&api), &ctx).await;
    assert_eq!(
        api.object(DEPLOYMENT).expect("created")["spec"]["replicas"],
        3
    );
    for name in ["chat-a", "chat-b", "chat-c"] {
        let pod = worker(name);
        api.insert(
            &format!("{PODS}/{name}"),
            serde_json::to_value(&pod).unwrap(),
        );
        pods.apply(&watcher::Event::Apply(pod));
    }

    // Then `kubectl scale --replicas 1`.
    api.clear_requests();
    let mut scaled = stored_pool(&api);
    scaled.spec.replicas = Some(1);
    reconcile_once(scaled, &ctx).await;

    let writes = api.writes();
    let marks: Vec<usize> = writes
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            w.path.starts_with(PODS)
                && w.body["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                    .is_string()
        })
        .map(|(i, _)| i)
        .collect();
    let drop = writes
        .iter()
        .position(|w| w.path == DEPLOYMENT && w.body["spec"]["replicas"] == 1)
        .unwrap_or_else(|| panic!("no drop to 1 replica: {}", describe(&writes)));
    assert_eq!(marks.len(), 2, "two victims marked: {}", describe(&writes));
    assert!(
        marks.iter().all(|&m| m < drop),
        "a victim was marked after the replicas dropped: {}",
        describe(&writes)
    );
}

#[tokio::test]
async fn a_resize_alone_patches_the_size_and_anything_else_applies_the_whole_deployment() {
    let api = MockApi::default();
    let ctx = Arc::new(Context::for_tests(api.client(), Settings::default()));
    api.insert(
        POOL,
        serde_json::to_value(pool(json!({"replicas": 3}))).unwrap(),
    );
    reconcile_once(stored_pool(&api), &ctx).await;
    let created = api.object(DEPLOYMENT).expect("created");
    assert_eq!(created["spec"]["replicas"], 3);

    // `kubectl scale --replicas 5`: the size alone goes out, without the pod template.
    api.clear_requests();
    let mut scaled = stored_pool(&api);
    scaled.spec.replicas = Some(5);
    api.insert(POOL, serde_json::to_value(&scaled).unwrap());
    reconcile_once(stored_pool(&api), &ctx).await;
    let writes: Vec<Recorded> = api
        .writes()
        .into_iter()
        .filter(|w| w.path == DEPLOYMENT)
        .collect();
    assert_eq!(writes.len(), 1, "one write: {}", describe(&writes));
    assert_eq!(writes[0].body["spec"]["replicas"], 5);
    assert!(
        writes[0].body["spec"].get("template").is_none(),
        "the size went out with the whole object: {}",
        writes[0].body
    );
    let resized = api.object(DEPLOYMENT).expect("still there");
    assert_eq!(resized["spec"]["replicas"], 5);
    assert_eq!(resized["spec"]["template"], created["spec"]["template"]);

    // The hash it left is the one a whole apply leaves: the next reconcile writes nothing.
    api.clear_requests();
    reconcile_once(stored_pool(&api), &ctx).await;
    assert!(
        api.writes().iter().all(|w| w.path != DEPLOYMENT),
        "the resized Deployment was written again: {}",
        describe(&api.writes())
    );

    // A new image and a new size together: the whole object is applied.
    let mut changed = stored_pool(&api);
    changed.spec.replicas = Some(2);
    changed
        .spec
        .template
        .spec
        .as_mut()
        .expect("a pod spec")
        .containers[0]
        .image = Some("example/chat:2".into());
    api.insert(POOL, serde_json::to_value(&changed).unwrap());
    api.clear_requests();
    reconcile_once(stored_pool(&api), &ctx).await;
    let applied = api.object(DEPLOYMENT).expect("still there");
    assert_eq!(applied["spec"]["replicas"], 2);
    let containers = applied["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .clone();
    assert!(
        containers.iter().any(|c| c["image"] == "example/chat:2"),
        "the new image was not applied: {containers:?}"
    );
}

/// A status to hand to the desk directly.
fn submission(status: AsyncWorkerPoolStatus) -> Submission {
    Submission {
        status,
        warnings: Vec::new(),
        reference: ObjectReference::default(),
    }
}

fn chat() -> PoolKey {
    PoolKey {
        namespace: "team".into(),
        name: "chat".into(),
    }
}

fn status_writes(api: &MockApi) -> Vec<Recorded> {
    let path = format!("{POOL}/status");
    api.writes()
        .into_iter()
        .filter(|w| w.path == path)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn statuses_handed_over_within_the_settle_time_are_written_once_keeping_the_scale() {
    let api = MockApi::default();
    let ctx = Context::for_tests(api.client(), Settings::default());
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());
    let scaled_at = Time(Timestamp::from_second(1_800_000_000).expect("a time"));
    // A resize, then what the next reconcile saw: the Deployment at the new size.
    ctx.statuses.submit(
        &chat(),
        submission(AsyncWorkerPoolStatus {
            desired_replicas: 5,
            last_scale_time: Some(scaled_at.clone()),
            ..AsyncWorkerPoolStatus::default()
        }),
        |_, _| true,
    );
    ctx.statuses.submit(
        &chat(),
        submission(AsyncWorkerPoolStatus {
            desired_replicas: 5,
            replicas: 5,
            ..AsyncWorkerPoolStatus::default()
        }),
        |_, _| true,
    );
    // The settle time passes (paused time: nothing else moves meanwhile).
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctx.statuses.flush().await;

    let writes = status_writes(&api);
    assert_eq!(writes.len(), 1, "{}", describe(&writes));
    let status = stored_pool(&api).status.expect("a status");
    assert_eq!((status.desired_replicas, status.replicas), (5, 5));
    assert_eq!(status.last_scale_time, Some(scaled_at));
}

#[tokio::test(start_paused = true)]
async fn a_failed_status_write_is_retried() {
    let api = MockApi::default();
    let ctx = Context::for_tests(api.client(), Settings::default());
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());
    api.fail(&format!("{POOL}/status"), 1);
    let status = AsyncWorkerPoolStatus {
        desired_replicas: 3,
        ..AsyncWorkerPoolStatus::default()
    };
    ctx.statuses
        .submit(&chat(), submission(status.clone()), |_, _| true);
    ctx.statuses.flush().await;
    assert_eq!(
        status_writes(&api).len(),
        2,
        "one failed write and its retry"
    );
    assert_eq!(stored_pool(&api).status, Some(status));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_status_stays_unless_the_next_one_supersedes_it() {
    let api = MockApi::default();
    let ctx = Context::for_tests(api.client(), Settings::default());
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());
    let with_load = |load: f64| AsyncWorkerPoolStatus {
        desired_replicas: 3,
        load: Some(load),
        ..AsyncWorkerPoolStatus::default()
    };
    assert!(
        ctx.statuses
            .submit(&chat(), submission(with_load(30.0)), |_, _| true)
    );
    // Noise in the figures does not take its place.
    assert!(
        !ctx.statuses
            .submit(&chat(), submission(with_load(23.0)), |_, _| false)
    );
    ctx.statuses.flush().await;
    assert_eq!(status_writes(&api).len(), 1);
    assert_eq!(stored_pool(&api).status, Some(with_load(30.0)));
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/team/leases/asyncpool-operator";

fn elector(api: &MockApi, identity: &str) -> LeaderElector {
    let leases: Api<Lease> = Api::namespaced(api.client(), "team");
    let timing = LeaseTiming {
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    LeaderElector::new(leases, "asyncpool-operator", identity, timing)
}

fn holder(api: &MockApi) -> Option<String> {
    api.object(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Lets the elector's loop run `seconds` of (paused, auto-advancing) time.
async fn run_for(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_acquired_then_renewed() {
    let api = MockApi::default();
    let (leading, mut is_leader) = tokio::sync::watch::channel(false);
    let me = elector(&api, "operator-a");
    let task = tokio::spawn(async move { me.run(leading).await });

    is_leader.wait_for(|l| *l).await.expect("becomes leader");
    assert_eq!(holder(&api).as_deref(), Some("operator-a"));
    let acquired = api.object(LEASE).unwrap()["spec"]["renewTime"].clone();

    run_for(12).await;
    let renewals: Vec<Recorded> = api
        .writes()
        .into_iter()
        .filter(|w| w.path == LEASE && w.method == http::Method::PUT)
        .collect();
    assert!(
        renewals.len() >= 2,
        "renewed every 5 s: {}",
        describe(&renewals)
    );
    assert!(*is_leader.borrow(), "still the leader");
    assert_eq!(holder(&api).as_deref(), Some("operator-a"));
    assert_ne!(
        api.object(LEASE).unwrap()["spec"]["renewTime"],
        acquired,
        "the renew time moved"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_respected_until_it_expires_then_taken_over() {
    let api = MockApi::default();
    api.insert(
        LEASE,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "asyncpool-operator", "namespace": "team"},
            "spec": {
                "holderIdentity": "operator-b",
                "leaseDurationSeconds": 15,
                "renewTime": "2026-12-03T07:00:00.000000Z",
                "leaseTransitions": 4
            }
        }),
    );
    let (leading, is_leader) = tokio::sync::watch::channel(false);
    let me = elector(&api, "operator-a");
    let task = tokio::spawn(async move { me.run(leading).await });

    // The holder's lease runs 15 s from when this replica first saw it unchanged.
    run_for(10).await;
    assert!(!*is_leader.borrow(), "took a lease another replica holds");
    assert!(
        api.writes().is_empty(),
        "wrote a held lease: {}",
        describe(&api.writes())
    );
    assert_eq!(holder(&api).as_deref(), Some("operator-b"));

    // operator-b never renews: the lease expires and operator-a takes it over.
    run_for(10).await;
    assert!(*is_leader.borrow(), "did not take over an expired lease");
    let lease = api.object(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "operator-a");
    assert_eq!(lease["spec"]["leaseTransitions"], 5);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_write_that_loses_the_race_leaves_the_replica_a_follower() {
    let api = MockApi::default();
    let (leading, is_leader) = tokio::sync::watch::channel(false);
    // Another replica creates the lease between this one's read and its create: the hook
    // plays that replica, and the create answers 409.
    let rival = api.clone();
    let leases: Api<Lease> = Api::namespaced(
        api.client_with_hook(Box::new(move |request, _| {
            if request.method == http::Method::GET && rival.object(LEASE).is_none() {
                rival.insert(
                    LEASE,
                    json!({
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": "asyncpool-operator", "namespace": "team"},
                        "spec": {"holderIdentity": "operator-b", "leaseDurationSeconds": 15}
                    }),
                );
            }
        })),
        "team",
    );
    let racer = LeaderElector::new(
        leases,
        "asyncpool-operator",
        "operator-a",
        LeaseTiming::default(),
    );
    let task = tokio::spawn(async move { racer.run(leading).await });

    run_for(3).await;
    assert!(!*is_leader.borrow(), "leader after losing the create race");
    let creates: Vec<Recorded> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .collect();
    assert_eq!(
        creates.len(),
        1,
        "one create, refused: {}",
        describe(&creates)
    );
    assert_eq!(holder(&api).as_deref(), Some("operator-b"));
    task.abort();
}

/// A context whose Deployment and Service caches are filled from the mocked API on demand, as
/// the controller's watches would keep them.
struct CachedContext {
    ctx: Arc<Context>,
    deployments: kube::runtime::reflector::store::Writer<asyncpool::reconcile::LiveDeployment>,
    services: kube::runtime::reflector::store::Writer<asyncpool::reconcile::LiveService>,
}

impl CachedContext {
    fn new(api: &MockApi) -> Self {
        let mut context = Context::for_tests(api.client(), Settings::default());
        let (deployment_store, deployments) = kube::runtime::reflector::store();
        let (service_store, services) = kube::runtime::reflector::store();
        context.caches.deployments = deployment_store;
        context.caches.services = service_store;
        Self {
            ctx: Arc::new(context),
            deployments,
            services,
        }
    }

    /// The watches deliver what the API holds now.
    fn sync(&mut self, api: &MockApi) {
        if let Some(deployment) = api.object(DEPLOYMENT) {
            let deployment = serde_json::from_value(deployment).expect("a Deployment");
            self.deployments
                .apply_watcher_event(&watcher::Event::Apply(deployment));
        }
        if let Some(service) = api.object(SERVICE) {
            let service = serde_json::from_value(service).expect("a Service");
            self.services
                .apply_watcher_event(&watcher::Event::Apply(service));
        }
    }
}

/// The cache shows a write some milliseconds after it returns (far longer on a busy control
/// plane). A reconcile or a round in between must plan from the write, not from the size
/// before it: acting on that would write the old size back.
#[tokio::test]
async fn a_write_the_cache_does_not_show_yet_is_planned_from_and_not_repeated() {
    let api = MockApi::default();
    let mut cached = CachedContext::new(&api);
    api.insert(
        POOL,
        serde_json::to_value(pool(json!({"replicas": 3}))).unwrap(),
    );
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    cached.sync(&api);
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    cached.sync(&api);

    // `kubectl scale --replicas 5`, carried out; the cache still shows three.
    let mut scaled = stored_pool(&api);
    scaled.spec.replicas = Some(5);
    api.insert(POOL, serde_json::to_value(&scaled).unwrap());
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    assert_eq!(
        api.object(DEPLOYMENT).expect("there")["spec"]["replicas"],
        5
    );
    api.clear_requests();
    for _ in 0..2 {
        reconcile_once(stored_pool(&api), &cached.ctx).await;
        assert_eq!(
            stored_pool(&api).status.expect("a status").desired_replicas,
            5,
            "a reconcile planned from the size before its write"
        );
        assert_eq!(
            decision_round(&stored_pool(&api), &cached.ctx),
            Round::InSync,
            "a round planned from the cache a write behind"
        );
    }
    let deployment_writes: Vec<Recorded> = api
        .writes()
        .into_iter()
        .filter(|w| w.path == DEPLOYMENT)
        .collect();
    assert!(
        deployment_writes.is_empty(),
        "the Deployment was written again before the cache showed it: {}",
        describe(&deployment_writes)
    );
    assert_eq!(
        api.object(DEPLOYMENT).expect("there")["spec"]["replicas"],
        5
    );

    // The cache catches up: nothing changes, nothing is written.
    cached.sync(&api);
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    assert!(api.writes().iter().all(|w| w.path != DEPLOYMENT));
}

#[tokio::test]
async fn a_decision_round_asks_for_a_reconcile_only_when_the_plan_moved() {
    let api = MockApi::default();
    let mut cached = CachedContext::new(&api);
    api.insert(POOL, serde_json::to_value(pool(json!({}))).unwrap());
    assert_eq!(
        decision_round(&stored_pool(&api), &cached.ctx),
        Round::NotCarriedOut,
        "a pool the controller has not reconciled yet is not the rounds' business"
    );

    reconcile_once(stored_pool(&api), &cached.ctx).await;
    cached.sync(&api);
    // A second reconcile sees its own status (the first may settle once).
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    api.clear_requests();
    for _ in 0..3 {
        assert_eq!(
            decision_round(&stored_pool(&api), &cached.ctx),
            Round::InSync,
            "a pool at rest needs no reconcile"
        );
    }
    assert!(
        api.requests().is_empty(),
        "a decision round made API calls: {}",
        describe(&api.requests())
    );

    // Someone scales the Deployment behind the operator's back: what the pool shows no longer
    // matches (with nothing to read, the scaler holds the size it finds).
    let mut deployment = api.object(DEPLOYMENT).expect("the Deployment");
    deployment["spec"]["replicas"] = json!(4);
    api.insert(DEPLOYMENT, deployment);
    cached.sync(&api);
    assert_eq!(
        decision_round(&stored_pool(&api), &cached.ctx),
        Round::ReconcileDue
    );
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    cached.sync(&api);
    assert_eq!(
        stored_pool(&api).status.expect("a status").desired_replicas,
        4,
        "the reconcile reported the size it now plans"
    );
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    assert_eq!(
        decision_round(&stored_pool(&api), &cached.ctx),
        Round::InSync
    );

    // A spec the operator refuses takes the pool out of the rounds until it is fixed.
    let mut refused = stored_pool(&api);
    refused.spec.min_replicas = 5;
    refused.spec.max_replicas = 2;
    api.insert(POOL, serde_json::to_value(&refused).unwrap());
    reconcile_once(stored_pool(&api), &cached.ctx).await;
    assert_eq!(
        decision_round(&stored_pool(&api), &cached.ctx),
        Round::NotCarriedOut
    );
}
