//! What a pool's spec means once defaults are filled in: the effective sidecar settings and the
//! scaling policy. Pure: the API server already refused what its schema can express, and what
//! is left (parsing durations) is checked here so that reconcile never works from a guess.

use std::time::Duration;

use kube::ResourceExt;

use crate::crd::{
    AsyncWorkerPool, AsyncWorkerPoolSpec, GoDuration, RedisKind, RedisQueue, SourceKind,
};
use crate::scaling::{Policy, Supervision};
use asyncpool_contract::duration::parse_duration;
use asyncpool_contract::redis::RedisTarget;

/// Identifies a pool: namespace and name. Everything kept per pool (reconcile's memory, the
/// sidecar readers, metrics series) is keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub namespace: String,
    pub name: String,
}

impl PoolKey {
    /// The key of `pool`; `None` for an object without a namespace (never a stored pool).
    pub fn of(pool: &AsyncWorkerPool) -> Option<Self> {
        Some(Self {
            namespace: pool.namespace()?,
            name: pool.name_any(),
        })
    }
}

/// `queue.targetPerWorker` when unset, as a share of `concurrency`: with requests spread at
/// random over the workers, a pool sized to be exactly full queues on its busier workers, and
/// 70 % keeps the wait short at the least cost (`docs/benchmarks.md`, scaling quality).
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;

/// A spec that the schema let through but that cannot be acted on.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.{field}: {problem}")]
pub struct SpecError {
    pub field: &'static str,
    pub problem: String,
}

/// The sidecar's settings for one pool, as injected into every worker pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSettings {
    pub source: SourceKind,
    pub app_port: u16,
    pub concurrency: u32,
    pub max_queue: u32,
    pub queue_timeout: GoDuration,
    pub drain_timeout: Duration,
    pub drain_timeout_text: GoDuration,
    pub redis: Option<RedisQueue>,
}

impl SidecarSettings {
    /// The Redis queue to read, for the `redis` source.
    pub fn redis_target(&self) -> Option<RedisTarget> {
        let redis = self
            .redis
            .as_ref()
            .filter(|_| self.source == SourceKind::Redis)?;
        Some(RedisTarget {
            url: redis.url.clone(),
            key: redis.key.clone(),
            group: match redis.kind {
                RedisKind::List => None,
                RedisKind::Stream => redis.group.clone(),
            },
            // Resolved from `password_secret_ref` by whoever reads the queue.
            password: None,
        })
    }
}

/// Everything reconcile needs from a spec, checked once.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveSpec {
    pub sidecar: SidecarSettings,
    pub policy: Policy,
    pub supervision: Supervision,
}

fn duration(field: &'static str, value: &GoDuration) -> Result<Duration, SpecError> {
    parse_duration(&value.0).map_err(|problem| SpecError { field, problem })
}

fn non_negative(field: &'static str, value: i32) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError {
        field,
        problem: format!("{value} is negative"),
    })
}

/// The Deployment's replicas when it is first created: the size requested through the scale
/// subresource, else the minimum, within the bounds.
pub fn initial_replicas(spec: &AsyncWorkerPoolSpec) -> i32 {
    spec.replicas
        .unwrap_or(spec.min_replicas)
        .clamp(spec.min_replicas, spec.max_replicas.max(spec.min_replicas))
}

impl EffectiveSpec {
    pub fn from_spec(spec: &AsyncWorkerPoolSpec, paused: bool) -> Result<Self, SpecError> {
        let concurrency = non_negative("concurrency", spec.concurrency)?.max(1);
        let max_queue = match spec.queue.max_queue {
            Some(bound) => non_negative("queue.maxQueue", bound)?,
            None => concurrency.saturating_mul(10),
        };
        // At least one request per worker, as the schema asks of a target that is set.
        let target = spec.queue.target_per_worker.map_or(
            (DEFAULT_TARGET_UTILIZATION * f64::from(concurrency)).max(1.0),
            f64::from,
        );
        let scaling = &spec.scaling;
        let policy = Policy {
            min_replicas: non_negative("minReplicas", spec.min_replicas)?,
            max_replicas: non_negative("maxReplicas", spec.max_replicas)?,
            concurrency,
            target_per_worker: target,
            stable_window: duration("scaling.stableWindow", &scaling.stable_window)?,
            panic_window: duration("scaling.panicWindow", &scaling.panic_window)?,
            panic_threshold: f64::from(scaling.panic_threshold_percent) / 100.0,
            tolerance: f64::from(scaling.tolerance_percent) / 100.0,
            max_scale_up_rate: scaling.max_scale_up_rate,
            max_scale_down_rate: scaling.max_scale_down_rate,
            scale_down_delay: duration("scaling.scaleDownDelay", &scaling.scale_down_delay)?,
            fallback_replicas: scaling
                .fallback_replicas
                .map(|r| non_negative("scaling.fallbackReplicas", r))
                .transpose()?,
            missing_data_grace: duration("scaling.metricsTimeout", &scaling.metrics_timeout)?,
            rate_aware: scaling.rate_aware,
            paused,
        };
        policy.validate().map_err(|e| SpecError {
            field: "scaling",
            problem: e.to_string(),
        })?;
        let app_port = u16::try_from(spec.port).map_err(|_| SpecError {
            field: "port",
            problem: format!("{} is not a TCP port", spec.port),
        })?;
        duration("queue.queueTimeout", &spec.queue.queue_timeout)?;
        let drain_timeout = duration("supervision.drainTimeout", &spec.supervision.drain_timeout)?;
        let worker_timeout = spec
            .supervision
            .worker_timeout
            .as_ref()
            .map(|t| duration("supervision.workerTimeout", t))
            .transpose()?;
        if spec.queue.source == SourceKind::Redis {
            match &spec.queue.redis {
                Some(redis) if redis.kind == RedisKind::Stream && redis.group.is_none() => {
                    return Err(SpecError {
                        field: "queue.redis.group",
                        problem: "required for a stream".into(),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(SpecError {
                        field: "queue.redis",
                        problem: "required when queue.source is redis".into(),
                    });
                }
            }
        }
        Ok(Self {
            sidecar: SidecarSettings {
                source: spec.queue.source,
                app_port,
                concurrency,
                max_queue,
                queue_timeout: spec.queue.queue_timeout.clone(),
                drain_timeout,
                drain_timeout_text: spec.supervision.drain_timeout.clone(),
                redis: spec.queue.redis.clone(),
            },
            policy,
            supervision: Supervision {
                worker_timeout,
                max_requests: spec
                    .supervision
                    .max_requests
                    .and_then(|m| u64::try_from(m).ok()),
                max_requests_jitter: u64::try_from(spec.supervision.max_requests_jitter)
                    .unwrap_or(0),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AsyncWorkerPool;

    fn spec(yaml: &str) -> AsyncWorkerPoolSpec {
        let pool: AsyncWorkerPool = serde_saphyr::from_str(yaml).expect("valid yaml");
        pool.spec
    }

    const MINIMAL: &str = r#"
apiVersion: asyncpool.dev/v1alpha1
kind: AsyncWorkerPool
metadata: {name: p}
spec:
  maxReplicas: 8
  concurrency: 4
  template: {spec: {containers: [{name: app, image: app}]}}
"#;

    #[test]
    fn defaults_follow_concurrency() {
        let effective = EffectiveSpec::from_spec(&spec(MINIMAL), false).unwrap();
        assert!((effective.policy.target_per_worker - 2.8).abs() < 1e-9);
        assert_eq!(effective.sidecar.max_queue, 40);
        assert_eq!(effective.policy.min_replicas, 1);
        assert_eq!(effective.policy.stable_window, Duration::from_secs(60));
        assert_eq!(effective.policy.tolerance, 0.1);
        assert_eq!(effective.sidecar.drain_timeout, Duration::from_secs(30));
        assert_eq!(effective.sidecar.app_port, 8000);
    }

    #[test]
    fn explicit_values_win() {
        let yaml = MINIMAL.replace(
            "concurrency: 4",
            "concurrency: 4\n  queue: {targetPerWorker: 6, maxQueue: 9}\n  scaling: {panicWindow: 2s, tolerancePercent: 0}",
        );
        let effective = EffectiveSpec::from_spec(&spec(&yaml), true).unwrap();
        assert_eq!(effective.policy.target_per_worker, 6.0);
        assert_eq!(effective.sidecar.max_queue, 9);
        assert_eq!(effective.policy.panic_window, Duration::from_secs(2));
        assert_eq!(effective.policy.tolerance, 0.0);
        assert!(effective.policy.paused);
    }

    #[test]
    fn unparsable_duration_names_the_field() {
        let yaml = MINIMAL.replace(
            "concurrency: 4",
            "concurrency: 4\n  scaling: {stableWindow: soon}",
        );
        let error = EffectiveSpec::from_spec(&spec(&yaml), false).unwrap_err();
        assert_eq!(error.field, "scaling.stableWindow");
    }

    #[test]
    fn redis_source_needs_its_queue() {
        let yaml = MINIMAL.replace("concurrency: 4", "concurrency: 4\n  queue: {source: redis}");
        let error = EffectiveSpec::from_spec(&spec(&yaml), false).unwrap_err();
        assert_eq!(error.field, "queue.redis");
    }
}
