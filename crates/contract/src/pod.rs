//! The worker pod as both sides see it: the sidecar's container name, its ports, the label that
//! ties a pod to its pool, and the environment variables the operator injects into the sidecar
//! (each is also the sidecar flag of the same name: `ASYNCPOOL_MAX_QUEUE` is `--max-queue`).

/// Label that ties worker pods, the Deployment and the Service to their pool.
pub const POOL_LABEL: &str = "asyncpool.dev/pool";
/// The injected container's name.
pub const SIDECAR_CONTAINER: &str = "asyncpool-sidecar";
/// Port where the sidecar serves the app's traffic; the app must listen elsewhere.
pub const SERVE_PORT: u16 = 8080;
/// Port of the queue contract (`/queue`, `/metrics`, probes, drain).
pub const ADMIN_PORT: u16 = 9090;
/// The sidecar's admin container port by name (probes, the chart's PodMonitor).
pub const ADMIN_PORT_NAME: &str = "admin";

/// The sidecar's environment variables.
pub mod env {
    pub const LISTEN: &str = "ASYNCPOOL_LISTEN";
    pub const ADMIN_LISTEN: &str = "ASYNCPOOL_ADMIN_LISTEN";
    pub const UPSTREAM: &str = "ASYNCPOOL_UPSTREAM";
    pub const CONCURRENCY: &str = "ASYNCPOOL_CONCURRENCY";
    pub const MAX_QUEUE: &str = "ASYNCPOOL_MAX_QUEUE";
    pub const QUEUE_TIMEOUT: &str = "ASYNCPOOL_QUEUE_TIMEOUT";
    pub const DRAIN_GRACE: &str = "ASYNCPOOL_DRAIN_GRACE";
    pub const DRAIN_QUIET: &str = "ASYNCPOOL_DRAIN_QUIET";
    pub const DRAIN_TIMEOUT: &str = "ASYNCPOOL_DRAIN_TIMEOUT";
    pub const DRAIN_TOKEN: &str = "ASYNCPOOL_DRAIN_TOKEN";
    pub const SOURCE: &str = "ASYNCPOOL_SOURCE";
    pub const REDIS_URL: &str = "ASYNCPOOL_REDIS_URL";
    pub const REDIS_KEY: &str = "ASYNCPOOL_REDIS_KEY";
    pub const REDIS_KIND: &str = "ASYNCPOOL_REDIS_KIND";
    pub const REDIS_GROUP: &str = "ASYNCPOOL_REDIS_GROUP";
    pub const REDIS_PASSWORD: &str = "ASYNCPOOL_REDIS_PASSWORD";
    pub const REDIS_CA_FILE: &str = "ASYNCPOOL_REDIS_CA_FILE";
    /// The operator's private CA bundle itself (PEM text), for a `rediss://` pool.
    pub const REDIS_CA_PEM: &str = "ASYNCPOOL_REDIS_CA_PEM";
    pub const LOG_FORMAT: &str = "ASYNCPOOL_LOG_FORMAT";
    pub const THREADS: &str = "ASYNCPOOL_THREADS";
    pub const HEADER_TIMEOUT: &str = "ASYNCPOOL_HEADER_TIMEOUT";
    pub const BODY_TIMEOUT: &str = "ASYNCPOOL_BODY_TIMEOUT";
}
