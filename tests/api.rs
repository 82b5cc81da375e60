//! The AsyncWorkerPool API on a real API server: the CRD installs, documents itself, accepts a
//! valid pool and refuses invalid ones at apply time with a message that says what to fix; the
//! operator's client reaches the API server over one HTTP/2 connection.

use asyncpool_testkit::cluster as support;

use asyncpool::crd::AsyncWorkerPool;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::{TestNamespace, client, install_crd, kubectl};

/// (case, changes as (path, value), expected part of the API server's message)
type Case = (&'static str, Vec<(&'static str, Value)>, &'static str);

fn valid_pool(name: &str) -> Value {
    json!({
        "apiVersion": "asyncpool.dev/v1alpha1",
        "kind": "AsyncWorkerPool",
        "metadata": {"name": name},
        "spec": {
            "minReplicas": 1,
            "maxReplicas": 5,
            "concurrency": 10,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}
            }
        }
    })
}

/// Sets `value` at a `/`-separated path under the object, creating objects on the way;
/// `Value::Null` removes the field.
fn set(object: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts.pop().expect("non-empty path");
    let mut cursor = object;
    for part in parts {
        cursor = cursor
            .as_object_mut()
            .expect("object on the path")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    let map = cursor
        .as_object_mut()
        .expect("object at the end of the path");
    if value.is_null() {
        map.remove(last);
    } else {
        map.insert(last.to_owned(), value);
    }
}

#[tokio::test]
async fn crd_is_established_and_explains_its_fields() {
    let client = client().await;
    install_crd(&client).await;

    let explain = kubectl(&["explain", "awp.spec"]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain.status.success(),
        "kubectl explain failed: {}",
        String::from_utf8_lossy(&explain.stderr)
    );
    for expected in [
        "AsyncWorkerPool",
        "maxReplicas",
        "Most workers to run",
        "concurrency",
        "supervision",
    ] {
        assert!(
            text.contains(expected),
            "kubectl explain awp.spec lacks {expected:?}:\n{text}"
        );
    }
    let nested = kubectl(&["explain", "awp.spec.scaling.panicWindow"]);
    let text = String::from_utf8_lossy(&nested.stdout);
    assert!(
        text.contains("catches bursts"),
        "nested field docs missing:\n{text}"
    );
}

#[tokio::test]
async fn valid_example_is_accepted_and_listed_with_printer_columns() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "api-valid").await;

    let example = support::repo_root().join("samples/chat-api.yaml");
    let apply = kubectl(&[
        "apply",
        "-n",
        &ns.name,
        "-f",
        example.to_str().expect("utf-8 path"),
    ]);
    assert!(
        apply.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&apply.stderr)
    );

    let pools: Api<AsyncWorkerPool> = Api::namespaced(client.clone(), &ns.name);
    let stored = pools.get("chat-api").await.expect("pool stored");
    assert_eq!(stored.spec.max_replicas, 20);
    // Defaults come from the schema, so every stored pool is complete.
    assert_eq!(stored.spec.scaling.tolerance_percent, 10);
    assert_eq!(stored.spec.scaling.max_scale_down_rate, 2.0);

    let get = kubectl(&["get", "awp", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&get.stdout);
    let header = table.lines().next().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "DESIRED", "READY", "LOAD", "STATUS", "AGE"],
        "table:\n{table}"
    );
    assert!(table.contains("chat-api"), "table:\n{table}");

    let wide = kubectl(&["get", "asyncworkerpools", "-n", &ns.name, "-o", "wide"]);
    let header = String::from_utf8_lossy(&wide.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    for column in ["MESSAGE", "MIN", "MAX", "PAUSED"] {
        assert!(
            header.contains(column),
            "wide output lacks {column}: {header}"
        );
    }

    let category = kubectl(&["get", "asyncpool", "-n", &ns.name, "-o", "name"]);
    assert!(
        String::from_utf8_lossy(&category.stdout).contains("chat-api"),
        "category asyncpool lists the pool"
    );
}

#[tokio::test]
async fn invalid_pools_are_refused_with_a_message_that_says_what_to_fix() {
    // Also: the simulator's reading of a pool file refuses each one the same way.
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "api-invalid").await;
    let pools: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<AsyncWorkerPool>(&()),
    );

    let cases: Vec<Case> = vec![
        (
            "min above max",
            vec![("spec/minReplicas", json!(6))],
            "minReplicas must not be greater than maxReplicas",
        ),
        (
            "negative min",
            vec![("spec/minReplicas", json!(-1))],
            "spec.minReplicas: Invalid value",
        ),
        (
            "zero max",
            vec![("spec/maxReplicas", json!(0))],
            "spec.maxReplicas: Invalid value",
        ),
        (
            "max missing",
            vec![("spec/maxReplicas", Value::Null)],
            "spec.maxReplicas: Required value",
        ),
        (
            "zero concurrency",
            vec![("spec/concurrency", json!(0))],
            "spec.concurrency: Invalid value",
        ),
        (
            "zero target",
            vec![("spec/queue/targetPerWorker", json!(0))],
            "spec.queue.targetPerWorker: Invalid value",
        ),
        (
            "negative target",
            vec![("spec/queue/targetPerWorker", json!(-5))],
            "spec.queue.targetPerWorker: Invalid value",
        ),
        (
            "unknown source",
            vec![("spec/queue/source", json!("kafka"))],
            "spec.queue.source: Unsupported value: \"kafka\"",
        ),
        (
            "missing template",
            vec![("spec/template", Value::Null)],
            "spec.template: Required value",
        ),
        (
            "template without containers",
            vec![("spec/template/spec/containers", json!([]))],
            "template.spec.containers must list at least the app container",
        ),
        (
            "bad duration",
            vec![("spec/scaling/stableWindow", json!("1 minute"))],
            "must be a duration such as 500ms, 30s, 2m or 1h30m",
        ),
        (
            "duration without unit",
            vec![("spec/supervision/drainTimeout", json!("30"))],
            "spec.supervision.drainTimeout: Invalid value",
        ),
        (
            "jitter above maxRequests",
            vec![
                ("spec/supervision/maxRequests", json!(100)),
                ("spec/supervision/maxRequestsJitter", json!(101)),
            ],
            "maxRequestsJitter must be between 0 and maxRequests",
        ),
        (
            "jitter without maxRequests",
            vec![("spec/supervision/maxRequestsJitter", json!(10))],
            "maxRequestsJitter must be between 0 and maxRequests",
        ),
        (
            "negative jitter",
            vec![
                ("spec/supervision/maxRequests", json!(100)),
                ("spec/supervision/maxRequestsJitter", json!(-1)),
            ],
            "spec.supervision.maxRequestsJitter: Invalid value",
        ),
        (
            "redis source without redis",
            vec![("spec/queue/source", json!("redis"))],
            "queue.redis is required when queue.source is redis",
        ),
        (
            "redis settings on proxy source",
            vec![(
                "spec/queue/redis",
                json!({"url": "redis://r:6379", "key": "jobs"}),
            )],
            "queue.redis is only used when queue.source is redis",
        ),
        (
            "stream without group",
            vec![
                ("spec/queue/source", json!("redis")),
                (
                    "spec/queue/redis",
                    json!({"url": "redis://r:6379", "key": "jobs", "kind": "stream"}),
                ),
            ],
            "queue.redis.group is required for a stream",
        ),
        (
            "redis url without scheme",
            vec![
                ("spec/queue/source", json!("redis")),
                ("spec/queue/redis", json!({"url": "r:6379", "key": "jobs"})),
            ],
            "queue.redis.url must start with redis://",
        ),
        (
            "panic window longer than stable window",
            vec![("spec/scaling/panicWindow", json!("2m"))],
            "panicWindow must not be longer than scaling.stableWindow",
        ),
        (
            "app on the sidecar's port",
            vec![("spec/port", json!(8080))],
            "port must not be 8080 or 9090",
        ),
        (
            "zero workers with the proxy source",
            vec![("spec/minReplicas", json!(0))],
            "minReplicas must be at least 1 unless queue.source is redis",
        ),
        (
            "zero workers with the report source",
            vec![
                ("spec/minReplicas", json!(0)),
                ("spec/queue/source", json!("report")),
            ],
            "minReplicas must be at least 1 unless queue.source is redis",
        ),
        (
            "redis password Secret without a name",
            vec![
                ("spec/queue/source", json!("redis")),
                (
                    "spec/queue/redis",
                    json!({"url": "redis://r:6379", "key": "jobs", "passwordSecretRef": {"name": "", "key": "password"}}),
                ),
            ],
            "passwordSecretRef needs a Secret name and cannot be optional",
        ),
        (
            "optional redis password Secret",
            vec![
                ("spec/queue/source", json!("redis")),
                (
                    "spec/queue/redis",
                    json!({"url": "redis://r:6379", "key": "jobs", "passwordSecretRef": {"name": "auth", "key": "password", "optional": true}}),
                ),
            ],
            "passwordSecretRef needs a Secret name and cannot be optional",
        ),
        (
            "redis url of another scheme",
            vec![
                ("spec/queue/source", json!("redis")),
                (
                    "spec/queue/redis",
                    json!({"url": "redis+sentinel://r:26379", "key": "jobs"}),
                ),
            ],
            "queue.redis.url must start with redis:// or rediss://",
        ),
        (
            "replicas outside min and max",
            vec![("spec/replicas", json!(9))],
            "replicas must lie between minReplicas and maxReplicas",
        ),
        (
            "queue bound below concurrency",
            vec![("spec/queue/maxQueue", json!(3))],
            "queue.maxQueue must be at least concurrency",
        ),
        (
            "tolerance of 100 percent",
            vec![("spec/scaling/tolerancePercent", json!(100))],
            "spec.scaling.tolerancePercent: Invalid value",
        ),
        (
            "scale-up rate below 1",
            vec![("spec/scaling/maxScaleUpRate", json!(0.5))],
            "spec.scaling.maxScaleUpRate: Invalid value",
        ),
        (
            "scale-down rate of exactly 1",
            vec![("spec/scaling/maxScaleDownRate", json!(1.0))],
            "maxScaleDownRate must be greater than 1",
        ),
        (
            "panic window under a second",
            vec![("spec/scaling/panicWindow", json!("200ms"))],
            "scaling windows must lie between 1s and 1h",
        ),
        (
            "fallback above max",
            vec![("spec/scaling/fallbackReplicas", json!(50))],
            "fallbackReplicas must lie between minReplicas and maxReplicas",
        ),
        (
            "concurrency as a string",
            vec![("spec/concurrency", json!("ten"))],
            "spec.concurrency: Invalid value",
        ),
        (
            "a container named like the injected sidecar",
            vec![(
                "spec/template/spec/containers",
                json!([{"name": "app", "image": "app:1"}, {"name": "asyncpool-sidecar", "image": "mine:1"}]),
            )],
            "a container named asyncpool-sidecar clashes with the injected sidecar",
        ),
        (
            "an init container named like the injected sidecar",
            vec![(
                "spec/template/spec/initContainers",
                json!([{"name": "asyncpool-sidecar", "image": "mine:1"}]),
            )],
            "a container named asyncpool-sidecar clashes with the injected sidecar",
        ),
        (
            "an app container on the sidecar's admin port",
            vec![(
                "spec/template/spec/containers",
                json!([{"name": "app", "image": "app:1", "ports": [{"containerPort": 9090}]}]),
            )],
            "ports 8080 and 9090 are the sidecar's",
        ),
    ];
    assert!(cases.len() >= 12);

    let mut failures = Vec::new();
    for (index, (case, changes, expected)) in cases.iter().enumerate() {
        let mut pool = valid_pool(&format!("invalid-{index}"));
        for (path, value) in changes {
            set(&mut pool, path, value.clone());
        }
        // The same pool read without a cluster (kubectl asyncpool simulate -f): refused too,
        // and in the API server's own words.
        let local = asyncpool::manifest::validate(&mut pool.clone());
        let pool: DynamicObject = serde_json::from_value(pool).expect("pool object");
        match pools.create(&PostParams::default(), &pool).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status)) if status.message.contains(expected) => {
                if local.is_empty() {
                    failures.push(format!("{case}: accepted by manifest::validate"));
                }
                for cause in &local {
                    if !status.message.contains(&cause.to_string()) {
                        failures.push(format!(
                            "{case}: manifest::validate says {:?}, the API server {:?}",
                            cause.to_string(),
                            status.message
                        ));
                    }
                }
            }
            Err(error) => failures.push(format!("{case}: expected {expected:?}, got {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The same base pool is accepted, so each refusal above is due to its one change.
    let mut base = valid_pool("valid-base");
    assert_eq!(asyncpool::manifest::validate(&mut base.clone()), []);
    let base: DynamicObject = serde_json::from_value(base.take()).expect("pool object");
    pools
        .create(&PostParams::default(), &base)
        .await
        .expect("the base pool is valid");

    // TLS (rediss://) passes the rule that refuses other schemes above.
    let mut tls = valid_pool("valid-rediss");
    set(&mut tls, "spec/queue/source", json!("redis"));
    set(
        &mut tls,
        "spec/queue/redis",
        json!({"url": "rediss://reader@r:6380/0", "key": "jobs"}),
    );
    assert_eq!(asyncpool::manifest::validate(&mut tls.clone()), []);
    let tls: DynamicObject = serde_json::from_value(tls).expect("pool object");
    pools
        .create(&PostParams::default(), &tls)
        .await
        .expect("a rediss:// pool is valid");
}

/// Requests in flight at once share one HTTP/2 connection (kube's own client opens an HTTP/1.1
/// connection for each), those of every client built on it (the operator's two lanes) too, from
/// a cold start, when all of them find no connection open yet.
#[tokio::test]
async fn the_operators_requests_share_one_http2_connection() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use hyper_util::client::legacy::connect::HttpInfo;

    type Seen = Arc<Mutex<Vec<(http::Version, Option<std::net::SocketAddr>)>>>;
    let seen: Seen = Arc::default();
    let record = {
        let seen = seen.clone();
        move |response: http::Response<hyper::body::Incoming>| {
            let local = response
                .extensions()
                .get::<HttpInfo>()
                .map(HttpInfo::local_addr);
            seen.lock().unwrap().push((response.version(), local));
            response
        }
    };
    let connection = asyncpool::api_client::Connection::new(support::config().await)
        .expect("a connection to the test cluster");
    let client = || {
        connection
            .builder()
            .expect("a client for the test cluster")
            .with_layer(&tower::util::MapResponseLayer::new(record.clone()))
            .build()
    };
    let (first, second) = (client(), client());

    const EACH: usize = 12;
    let requests = (0..EACH).flat_map(|_| [first.apiserver_version(), second.apiserver_version()]);
    for answer in futures::future::join_all(requests).await {
        answer.expect("the API server answers");
    }

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        2 * EACH,
        "every response passed the recording layer"
    );
    assert!(
        seen.iter()
            .all(|(version, _)| *version == http::Version::HTTP_2),
        "responses came over {:?}",
        seen.iter().map(|(v, _)| *v).collect::<Vec<_>>()
    );
    let connections: HashSet<_> = seen.iter().map(|(_, local)| *local).collect();
    assert_eq!(
        connections.len(),
        1,
        "the requests came over these local addresses: {connections:?}"
    );
    assert!(
        connections.iter().all(Option::is_some),
        "every response names its connection"
    );
}
