//! What a run comes to: per policy the queue wait, the requests refused, the pod-seconds paid,
//! the scale events; as a table for people and JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use super::bound::Bound;
use super::trace::Trace;
use super::world::{Fate, Run};

/// Nearest-rank percentiles of the queue wait, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Waits {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Waits {
    /// Over `waits`, which it sorts.
    pub fn of(waits: &mut [f64]) -> Self {
        if waits.is_empty() {
            return Self::default();
        }
        waits.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = (p * waits.len() as f64).ceil() as usize;
            waits[index.clamp(1, waits.len()) - 1]
        };
        Self {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: waits[waits.len() - 1],
            mean: waits.iter().sum::<f64>() / waits.len() as f64,
        }
    }
}

/// One policy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub policy: String,
    /// Queue waits of every admitted request (served, timed out or cut).
    pub wait_seconds: Waits,
    pub served: usize,
    /// 503 on arrival: a full queue, or no ready pod.
    pub refused: usize,
    /// 503 after the whole queue timeout.
    pub timed_out: usize,
    /// Cut by a drain timeout.
    pub cut: usize,
    /// Pods × seconds from each pod's creation to its end (start-up and drain included).
    pub pod_seconds: f64,
    pub mean_replicas: f64,
    pub peak_replicas: u32,
    /// Changes of the Deployment's replicas.
    pub scale_events: usize,
    /// When the Deployment first grew, in seconds from the trace's start.
    pub first_scale_up_seconds: Option<f64>,
    /// The run's length: the end of the trace's work, or later if requests ended later.
    pub horizon_seconds: f64,
    /// Why the size changed, when the policy can say (asyncpool's reasons).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Explained>,
    #[serde(skip)]
    pub timeline: Timeline,
}

/// One change of size and its reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    pub at_seconds: f64,
    pub reason: String,
}

/// Series for the plot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// The Deployment's replicas from each change on.
    pub replicas: Vec<(f64, u32)>,
    /// The highest wait of the requests arriving in each bucket of [`BUCKET_SECONDS`]; `None`
    /// for a bucket without admitted requests.
    pub max_wait: Vec<Option<f64>>,
}

/// Width of the plot's wait buckets, in seconds of trace.
pub const fn bucket_seconds(horizon: f64, buckets: usize) -> f64 {
    horizon / buckets as f64
}

/// Buckets the plot's series are cut into.
pub const PLOT_BUCKETS: usize = 400;

impl PolicyReport {
    pub fn from_run(policy: &str, trace: &Trace, run: &Run, plot_horizon: f64) -> Self {
        let mut waits = Vec::with_capacity(run.fates.len());
        let (mut served, mut refused, mut timed_out, mut cut) = (0, 0, 0, 0);
        let bucket = bucket_seconds(plot_horizon, PLOT_BUCKETS);
        let mut max_wait = vec![None; PLOT_BUCKETS];
        for (request, fate) in trace.requests().iter().zip(&run.fates) {
            let wait = match *fate {
                Fate::Served { wait, .. } => {
                    served += 1;
                    wait
                }
                Fate::TimedOut { wait } => {
                    timed_out += 1;
                    wait
                }
                Fate::Cut { wait } => {
                    cut += 1;
                    wait
                }
                Fate::Refused | Fate::Pending => {
                    refused += 1;
                    continue;
                }
            };
            waits.push(wait);
            let slot = ((request.arrival / bucket) as usize).min(PLOT_BUCKETS - 1);
            let highest: &mut Option<f64> = &mut max_wait[slot];
            *highest = Some(highest.map_or(wait, |h| h.max(wait)));
        }
        let pod_seconds = run
            .pod_lives
            .iter()
            .map(|(created, gone)| (gone - created).max(0.0))
            .sum::<f64>();
        let horizon = run.horizon.max(f64::MIN_POSITIVE);
        Self {
            policy: policy.to_owned(),
            wait_seconds: Waits::of(&mut waits),
            served,
            refused,
            timed_out,
            cut,
            pod_seconds,
            mean_replicas: pod_seconds / horizon,
            peak_replicas: run.replicas.iter().map(|(_, r)| *r).max().unwrap_or(0),
            scale_events: run.replicas.len().saturating_sub(1),
            first_scale_up_seconds: first_rise(&run.replicas),
            horizon_seconds: run.horizon,
            decisions: Vec::new(),
            timeline: Timeline {
                replicas: run.replicas.clone(),
                max_wait,
            },
        }
    }

    /// The clairvoyant bound as a policy line: no wait, nothing refused.
    pub fn from_bound(trace: &Trace, bound: &Bound, horizon: f64) -> Self {
        let served = trace.requests().len();
        Self {
            policy: "clairvoyant".to_owned(),
            wait_seconds: Waits::default(),
            served,
            refused: 0,
            timed_out: 0,
            cut: 0,
            pod_seconds: bound.pod_seconds,
            mean_replicas: bound.pod_seconds / horizon.max(f64::MIN_POSITIVE),
            peak_replicas: bound.peak_replicas,
            scale_events: bound.replicas.len().saturating_sub(1),
            first_scale_up_seconds: bound.first_start.filter(|_| bound.replicas.len() > 1),
            horizon_seconds: horizon,
            decisions: Vec::new(),
            timeline: Timeline {
                replicas: bound.replicas.clone(),
                max_wait: vec![Some(0.0); PLOT_BUCKETS],
            },
        }
    }
}

fn first_rise(series: &[(f64, u32)]) -> Option<f64> {
    series
        .windows(2)
        .find(|pair| pair[1].1 > pair[0].1)
        .map(|pair| pair[1].0)
}

/// The trace in figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub requests: usize,
    /// From the first to the last arrival.
    pub duration_seconds: f64,
    pub mean_arrivals_per_second: f64,
    /// The busiest second.
    pub peak_arrivals_per_second: u64,
    pub mean_service_seconds: f64,
    /// Most requests in service at once if none waited.
    pub peak_demand: u64,
    #[serde(skip)]
    pub arrivals: Vec<u64>,
}

impl TraceSummary {
    pub fn of(trace: &Trace, peak_demand: u64, plot_horizon: f64) -> Self {
        let requests = trace.requests();
        let first = requests.first().map_or(0.0, |r| r.arrival);
        let last = requests.last().map_or(0.0, |r| r.arrival);
        let duration = last - first;
        let mut per_second: Vec<u64> = Vec::new();
        let bucket = bucket_seconds(plot_horizon, PLOT_BUCKETS);
        let mut arrivals = vec![0; PLOT_BUCKETS];
        for request in requests {
            let second = request.arrival as usize;
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
            arrivals[((request.arrival / bucket) as usize).min(PLOT_BUCKETS - 1)] += 1;
        }
        Self {
            requests: requests.len(),
            duration_seconds: duration,
            mean_arrivals_per_second: requests.len() as f64 / duration.max(1.0),
            peak_arrivals_per_second: per_second.into_iter().max().unwrap_or(0),
            mean_service_seconds: requests.iter().map(|r| r.service).sum::<f64>()
                / requests.len().max(1) as f64,
            peak_demand,
            arrivals,
        }
    }
}

/// Everything one `simulate` run found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub pool: String,
    pub trace: TraceSummary,
    /// The start-up delay of a new pod, as given.
    pub startup_delay: String,
    pub seed: u64,
    pub policies: Vec<PolicyReport>,
    /// The horizon the plot spans.
    #[serde(skip)]
    pub plot_horizon: f64,
}

impl Comparison {
    pub fn to_json(&self) -> String {
        // Plain data with finite floats and string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let t = &self.trace;
        let _ = writeln!(
            out,
            "pool {}: {} requests over {}, mean {:.1}/s, peak {}/s, mean service {}, start-up \
             delay {}, seed {}",
            self.pool,
            t.requests,
            seconds(t.duration_seconds),
            t.mean_arrivals_per_second,
            t.peak_arrivals_per_second,
            seconds(t.mean_service_seconds),
            self.startup_delay,
            self.seed
        );
        let _ = writeln!(out);
        let bound = self
            .policies
            .iter()
            .find(|p| p.policy == "clairvoyant")
            .map(|p| p.pod_seconds);
        let header = [
            "policy",
            "wait p50",
            "p95",
            "p99",
            "max",
            "refused",
            "pod-seconds",
            "× bound",
            "mean pods",
            "peak",
            "scale events",
            "first up",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for p in &self.policies {
            let w = &p.wait_seconds;
            rows.push(vec![
                p.policy.clone(),
                seconds(w.p50),
                seconds(w.p95),
                seconds(w.p99),
                seconds(w.max),
                (p.refused + p.timed_out + p.cut).to_string(),
                format!("{:.0}", p.pod_seconds),
                bound
                    .filter(|b| *b > 0.0)
                    .map_or("–".into(), |b| format!("{:.2}", p.pod_seconds / b)),
                format!("{:.1}", p.mean_replicas),
                p.peak_replicas.to_string(),
                p.scale_events.to_string(),
                p.first_scale_up_seconds
                    .map_or("–".into(), |s| seconds(s).to_string()),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    let pad = widths[c] - cell.chars().count();
                    if c == 0 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        for policy in self.policies.iter().filter(|p| !p.decisions.is_empty()) {
            let _ = writeln!(
                out,
                "\n{} changed size {} times:",
                policy.policy,
                policy.decisions.len()
            );
            for decision in &policy.decisions {
                let _ = writeln!(
                    out,
                    "  {:>9}  {}",
                    seconds(decision.at_seconds),
                    decision.reason
                );
            }
        }
        let _ = writeln!(
            out,
            "\nwait: time in the sidecar's queue of admitted requests; refused: 503s (full queue, \
             queue timeout, cut drains); × bound: pod-seconds over the clairvoyant bound's"
        );
        out
    }
}

/// Seconds for a table: ms below 10 s.
fn seconds(value: f64) -> String {
    if value < 10.0 {
        format!("{:.0} ms", value * 1000.0)
    } else {
        format!("{value:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut waits: Vec<f64> = (1..=100).map(f64::from).collect();
        waits.reverse();
        let w = Waits::of(&mut waits);
        assert_eq!((w.p50, w.p95, w.p99, w.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(w.mean, 50.5);
        let w = Waits::of(&mut [0.0, 1.0, 1.5]);
        assert_eq!((w.p50, w.p99, w.max), (1.0, 1.5, 1.5));
        assert_eq!(Waits::of(&mut []), Waits::default());
    }

    #[test]
    fn first_rise_skips_falls() {
        assert_eq!(first_rise(&[(0.0, 3), (5.0, 2), (9.0, 4)]), Some(9.0));
        assert_eq!(first_rise(&[(0.0, 3)]), None);
    }
}
