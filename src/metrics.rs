//! The operator's Prometheus metrics. Every label takes values from a bounded set (error
//! categories, decision kinds) or names a pool, whose series are removed when the pool goes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pool::PoolKey;
use crate::queue::reader::ReadObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolReplicaLabels {
    pub namespace: String,
    pub pool: String,
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_errors: Family<CategoryLabel, Counter>,
    pub reconcile_seconds: Histogram,
    /// One decision round over every pool.
    pub decision_round_seconds: Histogram,
    /// Pools the last decision round left alone because they were at rest.
    pub pools_at_rest: Gauge,
    /// Each API request's wait for the client's rate limit (`api_rate`).
    pub api_wait_seconds: Histogram,
    /// Each API request's time from the rate limit to its response head, by verb.
    pub api_request_seconds: Family<VerbLabel, Histogram>,
    pub decisions: Family<KindLabel, Counter>,
    /// From a sidecar reading that moves the scaler to each stage of its reconcile.
    pub reaction_seconds: Family<StageLabel, Histogram>,
    pub pool_load: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    pub pool_replicas: Family<PoolReplicaLabels, Gauge>,
    pub read_seconds: Family<ModeLabel, Histogram>,
    pub read_errors: Family<CategoryLabel, Counter>,
    pub leader: Gauge,
    /// Pools with series, so that a deleted pool's are dropped even if reconcile never kept
    /// any other memory of it (a pool that was only ever refused, say); with the figures last
    /// set, so that unchanged figures (every round, for every pool) cost a lookup, not a label
    /// set per series.
    recorded_pools: Mutex<HashMap<PoolKey, PoolFigures>>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("asyncpool");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        let reconcile_errors = Family::<CategoryLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            reconcile_errors.clone(),
        );
        let reconcile_seconds = latency_histogram();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_seconds.clone(),
        );
        let decision_round_seconds = latency_histogram();
        registry.register(
            "decision_round_duration_seconds",
            "Time one decision round over every pool took",
            decision_round_seconds.clone(),
        );
        let pools_at_rest = Gauge::default();
        registry.register(
            "pools_at_rest",
            "Pools the last decision round skipped: nothing they are planned from changed, and \
             their scaler is at a fixed point",
            pools_at_rest.clone(),
        );
        // From 10 µs: almost every request waits not at all.
        let api_wait_seconds = Histogram::new(exponential_buckets(0.00001, 4.0, 10));
        registry.register(
            "api_client_wait_duration_seconds",
            "Time an API request waited for the client's rate limit (--kube-api-qps, \
             --kube-api-burst)",
            api_wait_seconds.clone(),
        );
        let api_request_seconds = Family::<VerbLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from an API request leaving the client's rate limit to its response head, \
             retries included, by HTTP method (WATCH: the stream's start)",
            api_request_seconds.clone(),
        );
        let decisions = Family::<KindLabel, Counter>::default();
        registry.register(
            "decisions",
            "Scaling decisions carried out by a reconcile, by kind",
            decisions.clone(),
        );
        let reaction_seconds = Family::<StageLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "reaction_duration_seconds",
            "From a sidecar reading that moves the scaler to its pool's reconcile starting \
             (stage=started) and to the Deployment's new replicas written (stage=scaled)",
            reaction_seconds.clone(),
        );
        let pool_load = Family::<PoolLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "pool_load",
            "Requests queued plus in flight in a pool",
            pool_load.clone(),
        );
        let pool_replicas = Family::<PoolReplicaLabels, Gauge>::default();
        registry.register(
            "pool_replicas",
            "Replicas of a pool: desired, current, ready, and the spec's min and max",
            pool_replicas.clone(),
        );
        let read_seconds = Family::<ModeLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "sidecar_read_duration_seconds",
            "Time to read a sidecar (poll or first watch line)",
            read_seconds.clone(),
        );
        let read_errors = Family::<CategoryLabel, Counter>::default();
        registry.register(
            "sidecar_read_errors",
            "Failed sidecar reads by category",
            read_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica holds the leader lease (1) or not (0)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            decision_round_seconds,
            pools_at_rest,
            api_wait_seconds,
            api_request_seconds,
            decisions,
            reaction_seconds,
            pool_load,
            pool_replicas,
            read_seconds,
            read_errors,
            leader,
            recorded_pools: Mutex::default(),
        }
    }
}

/// The `kind` label values of `asyncpool_pool_replicas`.
const REPLICA_KINDS: [&str; 5] = ["desired", "current", "ready", "min", "max"];

/// One pool's figures for `/metrics`. `min` and `max` are the spec's bounds, so alerts and
/// dashboards can tell a pool held at its ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolFigures {
    pub load: Option<f64>,
    pub desired: i32,
    pub current: i32,
    pub ready: i32,
    pub min: i32,
    pub max: i32,
}

impl Metrics {
    /// The text exposition for `/metrics`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// One stage of a reaction that began when a reading woke its pool at `woken_at`.
    pub fn reaction_reached(&self, stage: &'static str, woken_at: tokio::time::Instant) {
        self.reaction_seconds
            .get_or_create(&StageLabel { stage })
            .observe(woken_at.elapsed().as_secs_f64());
    }

    pub fn record_pool(&self, pool: &PoolKey, figures: &PoolFigures) {
        let mut recorded = self
            .recorded_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match recorded.get_mut(pool) {
            Some(last) if last == figures => return,
            Some(last) => *last = *figures,
            // Clone the key only the first time.
            None => {
                recorded.insert(pool.clone(), *figures);
            }
        }
        drop(recorded);
        let labels = PoolLabels {
            namespace: pool.namespace.clone(),
            pool: pool.name.clone(),
        };
        match figures.load {
            Some(load) => {
                self.pool_load.get_or_create(&labels).set(load);
            }
            None => {
                self.pool_load.remove(&labels);
            }
        }
        let values = [
            figures.desired,
            figures.current,
            figures.ready,
            figures.min,
            figures.max,
        ];
        for (kind, value) in REPLICA_KINDS.into_iter().zip(values) {
            self.pool_replicas
                .get_or_create(&PoolReplicaLabels {
                    namespace: pool.namespace.clone(),
                    pool: pool.name.clone(),
                    kind,
                })
                .set(i64::from(value));
        }
    }

    /// Drops the series of every pool not in `live`.
    pub fn forget_pools_except(&self, live: &HashSet<PoolKey>) {
        let gone: Vec<PoolKey> = {
            let mut recorded = self
                .recorded_pools
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let gone = recorded
                .keys()
                .filter(|k| !live.contains(k))
                .cloned()
                .collect();
            recorded.retain(|k, _| live.contains(k));
            gone
        };
        for pool in gone {
            self.forget_pool(&pool);
        }
    }

    /// Drops a deleted pool's series so that memory and cardinality follow the live pools.
    fn forget_pool(&self, pool: &PoolKey) {
        let labels = PoolLabels {
            namespace: pool.namespace.clone(),
            pool: pool.name.clone(),
        };
        self.pool_load.remove(&labels);
        for kind in REPLICA_KINDS {
            self.pool_replicas.remove(&PoolReplicaLabels {
                namespace: pool.namespace.clone(),
                pool: pool.name.clone(),
                kind,
            });
        }
    }
}

impl ReadObserver for Metrics {
    fn read_ok(&self, latency: Duration, watch: bool) {
        // A watch stream reports its first line's latency only; later lines carry none.
        if latency > Duration::ZERO {
            let mode = if watch { "watch" } else { "poll" };
            self.read_seconds
                .get_or_create(&ModeLabel { mode })
                .observe(latency.as_secs_f64());
        }
    }

    fn read_failed(&self, category: &'static str) {
        self.read_errors
            .get_or_create(&CategoryLabel { category })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_series_appear_and_go() {
        let metrics = Metrics::default();
        let pool = PoolKey {
            namespace: "team".into(),
            name: "chat".into(),
        };
        let figures = PoolFigures {
            load: Some(57.0),
            desired: 6,
            current: 5,
            ready: 5,
            min: 1,
            max: 10,
        };
        metrics.record_pool(&pool, &figures);
        let text = metrics.encode();
        assert!(
            text.contains(r#"asyncpool_pool_load{namespace="team",pool="chat"} 57.0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"asyncpool_pool_replicas{namespace="team",pool="chat",kind="desired"} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"asyncpool_pool_replicas{namespace="team",pool="chat",kind="max"} 10"#),
            "{text}"
        );
        metrics.forget_pools_except(&HashSet::from([pool.clone()]));
        assert!(
            metrics.encode().contains(r#"pool="chat""#),
            "a live pool lost its series"
        );
        metrics.forget_pools_except(&HashSet::new());
        assert!(!metrics.encode().contains(r#"pool="chat""#));
    }
}
