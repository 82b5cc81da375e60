//! The `AsyncWorkerPool` API (group `asyncpool.dev`, version `v1alpha1`).
//!
//! Only types live here, no client calls. The doc comments become the schema descriptions that
//! `kubectl explain` shows, so they are written for the people who apply pools. Validation that a
//! person must see at `kubectl apply` time is expressed as OpenAPI bounds and CEL rules, so the
//! API server refuses a bad pool with a message instead of the operator logging about it later.

// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::borrow::Cow;

use asyncpool_contract::pod::{ADMIN_PORT, SERVE_PORT, SIDECAR_CONTAINER};
// The source kinds are the contract's, so the value in a pool's spec is one the sidecar accepts.
pub use asyncpool_contract::{RedisKind, SourceKind};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A pool of async worker pods (uvicorn, asyncio, any event-loop server) that asyncpool keeps
/// sized to its load. The operator runs the template as a Deployment with a sidecar injected into
/// every pod, reads the queue length each sidecar reports, and scales between minReplicas and
/// maxReplicas.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "asyncpool.dev",
    version = "v1alpha1",
    kind = "AsyncWorkerPool",
    plural = "asyncworkerpools",
    shortname = "awp",
    category = "asyncpool",
    namespaced,
    doc = "A pool of async worker pods that asyncpool keeps sized to the load their sidecars report.",
    status = "AsyncWorkerPoolStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Replicas the autoscaler wants now"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Worker pods that are ready"
    ),
    printcolumn(
        name = "Load",
        type_ = "number",
        json_path = ".status.load",
        description = "Requests queued plus in flight across the pool"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the pool is or is not ready (the Ready condition's reason)"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "The Ready condition's message: what to fix when the pool is not ready",
        priority = "1"
    ),
    printcolumn(
        name = "Min",
        type_ = "integer",
        json_path = ".spec.minReplicas",
        priority = "1"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.maxReplicas",
        priority = "1"
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("minReplicas must not be greater than maxReplicas"),
    validation = Rule::new("!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)")
        .message("replicas must lie between minReplicas and maxReplicas"),
    validation = Rule::new("self.minReplicas >= 1 || self.queue.source == 'redis'")
        .message("minReplicas must be at least 1 unless queue.source is redis: proxy and report queues are measured inside the workers, so at zero nothing would see new work"),
    validation = Rule::new("!has(self.queue.maxQueue) || self.queue.maxQueue >= self.concurrency")
        .message("queue.maxQueue must be at least concurrency"),
    validation = Rule::new("!has(self.scaling.fallbackReplicas) || (self.scaling.fallbackReplicas >= self.minReplicas && self.scaling.fallbackReplicas <= self.maxReplicas)")
        .message("scaling.fallbackReplicas must lie between minReplicas and maxReplicas"),
)]
pub struct AsyncWorkerPoolSpec {
    /// The worker pod: the app container(s), as in a Deployment. asyncpool injects its sidecar
    /// next to them and routes traffic through it; the app must listen on `port` on localhost.
    #[x_kube(validation = Rule::new("has(self.spec) && size(self.spec.containers) > 0")
        .message("template.spec.containers must list at least the app container"))]
    #[x_kube(validation = Rule::new(format!(
        "!has(self.spec) || (self.spec.containers.all(c, c.name != '{SIDECAR_CONTAINER}') && \
         (!has(self.spec.initContainers) || self.spec.initContainers.all(c, c.name != '{SIDECAR_CONTAINER}')))"))
        .message(kube::core::Message::Message(format!(
            "template.spec: a container named {SIDECAR_CONTAINER} clashes with the injected sidecar; rename it"))))]
    #[x_kube(validation = Rule::new(format!(
        "!has(self.spec) || self.spec.containers.all(c, !has(c.ports) || \
         c.ports.all(p, p.containerPort != {SERVE_PORT} && p.containerPort != {ADMIN_PORT}))"))
        .message(kube::core::Message::Message(format!(
            "template.spec.containers: ports {SERVE_PORT} and {ADMIN_PORT} are the sidecar's; move the app to spec.port"))))]
    pub template: PodTemplateSpec,

    /// Fewest workers to keep, even when idle. 0 (scale to zero) needs `queue.source: redis`:
    /// while no worker runs, the operator reads the Redis queue itself to wake the pool.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,

    /// Most workers to run, however long the queue grows.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,

    /// Size requested through the scale subresource (`kubectl scale awp/NAME --replicas=N`).
    /// While `paused` it pins the pool at exactly this size. While autoscaling, a change moves
    /// the pool to it at once and autoscaling carries on from there. Must lie within
    /// [minReplicas, maxReplicas].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// Requests one worker runs at once (the coroutines a worker's event loop serves together).
    /// The sidecar admits this many into the app and queues the rest.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 100000))]
    pub concurrency: i32,

    /// TCP port the app listens on inside the pod; the sidecar forwards to 127.0.0.1:port.
    #[serde(default = "default_app_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new(format!("self != {SERVE_PORT} && self != {ADMIN_PORT}"))
        .message(kube::core::Message::Message(format!("port must not be {SERVE_PORT} or {ADMIN_PORT}: the sidecar serves on those ports"))))]
    pub port: i32,

    /// Where the queue is measured and what one worker should carry.
    #[serde(default)]
    pub queue: QueueSpec,

    /// How fast and how far the pool moves. The defaults suit most services.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Worker supervision: hung and worn-out workers, and how long a worker may take to drain.
    #[serde(default)]
    pub supervision: SupervisionSpec,

    /// Stops autoscaling and holds the current size (or `replicas`, when set). Workers are still
    /// supervised and the Deployment still follows the template.
    #[serde(default)]
    pub paused: bool,

    /// Overrides for the injected sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
}

/// Where the queue is measured and the load one worker should carry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.source != 'redis' || has(self.redis)")
        .message("queue.redis is required when queue.source is redis"),
    validation = Rule::new("self.source == 'redis' || !has(self.redis)")
        .message("queue.redis is only used when queue.source is redis"),
)]
pub struct QueueSpec {
    /// `proxy` (default): the sidecar is a reverse proxy in front of the app and measures requests
    /// queued and in flight itself. `redis`: the length of a Redis list, or a stream's pending
    /// entries for a consumer group. `report`: the app posts its own queued and in-flight
    /// figures to the sidecar (pull-style asyncio task loops).
    #[serde(default)]
    pub source: SourceKind,

    /// Load (requests queued plus in flight) one worker should carry. Desired workers =
    /// ceil(pool load / targetPerWorker). Defaults to 70 % of `concurrency` (at least 1):
    /// requests are spread at random over the workers, and a pool sized to be exactly full
    /// queues on its busier ones and on every rise while new workers start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_per_worker: Option<i32>,

    /// Requests one sidecar may hold waiting beyond `concurrency`; past it clients get 503 with
    /// Retry-After. Defaults to 10 × concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queue: Option<i32>,

    /// Longest a request may wait in a sidecar's queue before it is answered 503.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: GoDuration,

    /// The Redis queue, for `source: redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisQueue>,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            source: SourceKind::default(),
            target_per_worker: None,
            max_queue: None,
            queue_timeout: default_queue_timeout(),
            redis: None,
        }
    }
}

/// A queue kept in Redis, shared by the whole pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.kind != 'stream' || has(self.group)")
        .message("queue.redis.group is required for a stream: pending entries are counted per consumer group"),
    validation = Rule::new("!has(self.passwordSecretRef) || (size(self.passwordSecretRef.name) > 0 && !(has(self.passwordSecretRef.optional) && self.passwordSecretRef.optional))")
        .message("queue.redis.passwordSecretRef needs a Secret name and cannot be optional: the password is needed to read the queue"),
)]
pub struct RedisQueue {
    /// Redis URL, `redis://[[user]:password@]host[:port][/db]`, e.g.
    /// `redis://redis.default.svc:6379/0`, or `rediss://…` for TLS: the certificate must be
    /// valid for the host and issued by a public root CA or by a CA of the operator's bundle
    /// (Helm value `redis.caBundle`). Read by every worker's sidecar, and by the operator while
    /// the pool has no ready worker.
    #[x_kube(validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://')")
        .message("queue.redis.url must start with redis:// or rediss://"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Key of the list or stream.
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    /// `list` (length of the list) or `stream` (pending entries of `group`).
    #[serde(default)]
    pub kind: RedisKind,
    /// Consumer group whose pending entries count, for a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub group: Option<String>,
    /// The key of a Secret in the pool's namespace that holds the Redis password, so that it
    /// stays out of the pool's spec (and out of Git). It replaces a password in `url`. The
    /// sidecars get it as an environment variable; the operator reads it to read the queue
    /// while the pool has no ready worker, which needs `rbac.redisPasswordSecrets` in the
    /// Helm chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<k8s_openapi::api::core::v1::SecretKeySelector>,
}

/// How fast and how far the pool moves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.panicWindow) <= duration(self.stableWindow)")
        .message("scaling.panicWindow must not be longer than scaling.stableWindow"),
    validation = Rule::new("duration(self.panicWindow) >= duration('1s') && duration(self.stableWindow) <= duration('1h')")
        .message("scaling windows must lie between 1s and 1h"),
    validation = Rule::new("duration(self.scaleDownDelay) <= duration('1h') && duration(self.metricsTimeout) <= duration('1h')")
        .message("scaling.scaleDownDelay and scaling.metricsTimeout must be at most 1h"),
    validation = Rule::new("self.maxScaleUpRate > 1.0 && self.maxScaleDownRate > 1.0")
        .message("scaling.maxScaleUpRate and scaling.maxScaleDownRate must be greater than 1"),
)]
pub struct ScalingSpec {
    /// Window over which load is averaged for ordinary decisions.
    #[serde(default = "default_stable_window")]
    pub stable_window: GoDuration,
    /// Short window that catches bursts: when it asks for `panicThreshold` times the ready
    /// workers, the pool scales up at once for the load there now, backlog included, and holds
    /// that size until a panic window passes without a burst.
    #[serde(default = "default_panic_window")]
    pub panic_window: GoDuration,
    /// Ratio of wanted to current workers, in percent, at which the panic window takes over.
    #[serde(default = "default_panic_threshold_percent")]
    #[schemars(range(min = 110, max = 10000))]
    pub panic_threshold_percent: i32,
    /// Scale-downs smaller than this percentage of the current size are ignored, to avoid
    /// flapping. Scale-ups always happen.
    #[serde(default = "default_tolerance_percent")]
    #[schemars(range(min = 0, max = 99))]
    pub tolerance_percent: i32,
    /// How long load must stay low before the pool shrinks: the largest recommendation within
    /// this window wins.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: GoDuration,
    /// Largest growth per second, as a multiple of the current size (at least 4 pods per second
    /// are always allowed).
    #[serde(default = "default_max_scale_up_rate")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_scale_up_rate: f64,
    /// Largest shrink per second, as a divisor of the current size (2 lets a pool at most halve
    /// each second).
    #[serde(default = "default_max_scale_down_rate")]
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_scale_down_rate: f64,
    /// Size to run at when no worker has reported for `metricsTimeout`. It only ever raises the
    /// size: missing data never shrinks a pool. Unset: hold the current size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub fallback_replicas: Option<i32>,
    /// How long every worker may fail to report before `fallbackReplicas` applies.
    #[serde(default = "default_metrics_timeout")]
    pub metrics_timeout: GoDuration,
    /// Also size the pool by Little's law from the sidecars' counters (arrival rate × mean
    /// service time), so that a growing arrival rate is met before the queue builds.
    #[serde(default = "default_true")]
    pub rate_aware: bool,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            stable_window: default_stable_window(),
            panic_window: default_panic_window(),
            panic_threshold_percent: default_panic_threshold_percent(),
            tolerance_percent: default_tolerance_percent(),
            scale_down_delay: default_scale_down_delay(),
            max_scale_up_rate: default_max_scale_up_rate(),
            max_scale_down_rate: default_max_scale_down_rate(),
            fallback_replicas: None,
            metrics_timeout: default_metrics_timeout(),
            rate_aware: true,
        }
    }
}

/// Worker supervision, as a Gunicorn master does it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.maxRequestsJitter == 0 || (has(self.maxRequests) && self.maxRequestsJitter <= self.maxRequests)")
        .message("supervision.maxRequestsJitter must be between 0 and maxRequests, and needs maxRequests"),
)]
pub struct SupervisionSpec {
    /// A worker whose oldest in-flight request is older than this is hung and gets recycled.
    /// Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_timeout: Option<GoDuration>,
    /// A worker that served this many requests is recycled (surge first, one at a time), like
    /// Gunicorn's max_requests. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<i64>,
    /// Random extra requests added per worker to maxRequests, so workers do not all recycle at
    /// once.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_requests_jitter: i64,
    /// Longest a worker may take to finish its admitted requests when it is stopped. The pod's
    /// termination grace period is derived from it.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: GoDuration,
}

impl Default for SupervisionSpec {
    fn default() -> Self {
        Self {
            worker_timeout: None,
            max_requests: None,
            max_requests_jitter: 0,
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// Overrides for the injected sidecar container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image; defaults to the one the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Compute resources of the sidecar container. Default: requests of 50m CPU and 32Mi of
    /// memory, no limits (a CPU limit throttles every request that passes through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// Observed state of a pool.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AsyncWorkerPoolStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Worker pods that exist (the Deployment's status.replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Workers the autoscaler wants now.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Requests queued plus in flight across the pool, as a decision read it; rewritten once it
    /// moves beyond the noise of steady traffic (three times its square root) and half a
    /// worker's concurrency, falls to zero, or with any other status change. Absent while no
    /// worker reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// When the pool last changed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Label selector of the worker pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The last `spec.replicas` the operator acted on, so that a `kubectl scale` is applied once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_replicas_request: Option<i32>,
    /// Ready, Scaling, MetricsAvailable, Degraded and Paused.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A duration in Go's notation (`500ms`, `30s`, `2m`, `1h30m`), as Kubernetes users write them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl GoDuration {
    fn new(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$')",
                "message": "must be a duration such as 500ms, 30s, 2m or 1h30m"
            }]
        })
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_concurrency() -> i32 {
    10
}
fn default_app_port() -> i32 {
    8000
}
fn default_queue_timeout() -> GoDuration {
    GoDuration::new("30s")
}
fn default_stable_window() -> GoDuration {
    GoDuration::new("60s")
}
fn default_panic_window() -> GoDuration {
    GoDuration::new("6s")
}
fn default_panic_threshold_percent() -> i32 {
    200
}
fn default_tolerance_percent() -> i32 {
    10
}
fn default_scale_down_delay() -> GoDuration {
    GoDuration::new("30s")
}
fn default_max_scale_up_rate() -> f64 {
    10.0
}
fn default_max_scale_down_rate() -> f64 {
    2.0
}
fn default_metrics_timeout() -> GoDuration {
    GoDuration::new("10s")
}
fn default_drain_timeout() -> GoDuration {
    GoDuration::new("30s")
}
fn default_true() -> bool {
    true
}

/// The CRD as committed under `crds/`: generated from the types above. Descriptions inside the
/// embedded pod template are dropped (they repeat the core API's docs and would push the CRD
/// past the size that client-side `kubectl apply` can store in its annotation).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = AsyncWorkerPool::crd();
    for version in &mut crd.spec.versions {
        let template = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|spec| spec.properties.as_mut())
            .and_then(|p| p.get_mut("template"));
        if let Some(template) = template {
            let own_description = template.description.take();
            strip_descriptions(template);
            template.description = own_description;
            bound_containers(template);
        }
    }
    crd
}

/// Most containers (and init containers) a pool's template may list, and ports per container.
const MAX_CONTAINERS: i64 = 64;
const MAX_PORTS: i64 = 64;

/// Bounds the template's container lists, their names (a DNS label, as Kubernetes requires) and
/// ports: the API server estimates the cost of the template's CEL rules from these bounds, and
/// refuses rules over unbounded lists.
fn bound_containers(
    template: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    let Some(pod) = template
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("spec"))
        .and_then(|spec| spec.properties.as_mut())
    else {
        return;
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = pod.get_mut(list) else {
            continue;
        };
        containers.max_items = Some(MAX_CONTAINERS);
        let Some(JSONSchemaPropsOrArray::Schema(container)) = containers.items.as_mut() else {
            continue;
        };
        let Some(fields) = container.properties.as_mut() else {
            continue;
        };
        if let Some(name) = fields.get_mut("name") {
            name.max_length = Some(63);
        }
        if let Some(ports) = fields.get_mut("ports") {
            ports.max_items = Some(MAX_PORTS);
        }
    }
}

fn strip_descriptions(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    schema.description = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(child);
    }
    if let Some(items) = schema.items.as_mut() {
        match items {
            JSONSchemaPropsOrArray::Schema(s) => strip_descriptions(s),
            JSONSchemaPropsOrArray::Schemas(list) => list.iter_mut().for_each(strip_descriptions),
        }
    }
    if let Some(extra) = schema.additional_properties.as_mut()
        && let k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s) = extra
    {
        strip_descriptions(s);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(strip_descriptions);
    }
}

/// The CRD as YAML, exactly as committed in `crds/asyncworkerpools.yaml`.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(&crd())?;
    Ok(format!(
        "# Generated by `cargo run --bin crdgen` from src/crd.rs. Do not edit.\n---\n{body}"
    ))
}
