//! asyncpool's own policy in the simulator: the operator's [`Scaler`] and victim choice, the
//! same code the operator runs, driven on simulated time. The operator decides on every
//! sidecar change (its watch streams send at most one line per [`WATCH_MIN_INTERVAL`], and a
//! Redis source polls Redis every [`POLL_INTERVAL`]) and at least once per reconcile tick.

use std::time::Duration;

use super::world::{Autoscaler, World};
use crate::crd::RedisKind;
use crate::reconcile::Settings;
use crate::scaling::{
    Candidate, ExternalReading, Observation, PodReading, Policy, Scaler, choose_victims,
};
use asyncpool_contract::queue::WATCH_MIN_INTERVAL;
use asyncpool_contract::redis::POLL_INTERVAL;

pub struct Operator {
    policy: Policy,
    scaler: Scaler,
    initial: u32,
    last_look: Option<f64>,
    /// Shortest time between two looks triggered by changes.
    read_interval: f64,
    /// Longest time between two looks.
    tick: f64,
    /// A Redis queue the operator reads itself while no worker is ready.
    own_queue: Option<RedisKind>,
    /// The scaler's reason for every change of size.
    explained: Vec<(f64, String)>,
}

impl Operator {
    /// `shared` is the Redis kind when the pool's queue is in Redis.
    pub fn new(policy: Policy, initial: u32, shared: Option<RedisKind>) -> Self {
        let read_interval = match shared {
            Some(_) => POLL_INTERVAL,
            None => WATCH_MIN_INTERVAL,
        };
        Self {
            scaler: Scaler::new(Duration::ZERO, initial),
            policy,
            initial,
            last_look: None,
            read_interval: read_interval.as_secs_f64(),
            tick: Settings::default().tick.as_secs_f64(),
            own_queue: shared,
            explained: Vec::new(),
        }
    }
}

impl Autoscaler for Operator {
    fn initial_replicas(&self) -> u32 {
        self.initial
    }

    fn next_look(&self, changed_at: Option<f64>) -> f64 {
        let Some(last) = self.last_look else {
            return 0.0;
        };
        let tick = last + self.tick;
        match changed_at {
            Some(changed) => tick.min(changed.max(last + self.read_interval)),
            None => tick,
        }
    }

    fn look(&mut self, world: &mut World) -> u32 {
        let now = world.now();
        self.last_look = Some(now);
        let pods = world
            .live_pods()
            .map(|index| {
                let pod = &world.pods()[index];
                PodReading {
                    name: pod.name.as_str().into(),
                    snapshot: pod.is_ready().then(|| world.snapshot(index)),
                    age: Duration::ZERO,
                    unread: false,
                    ready: pod.is_ready(),
                }
            })
            .collect();
        let external = match self.own_queue {
            Some(kind) if world.ready_count() == 0 => {
                ExternalReading::Reading(world.shared_snapshot(kind))
            }
            _ => ExternalReading::NotConfigured,
        };
        let observation = Observation {
            now: Duration::from_secs_f64(now),
            current_replicas: world.replicas(),
            pods,
            external,
        };
        let decision = self.scaler.decide(&self.policy, &observation);
        if decision.changed {
            self.explained.push((now, decision.reason));
        }
        decision.replicas
    }

    fn explanations(&mut self) -> Vec<(f64, String)> {
        std::mem::take(&mut self.explained)
    }

    fn victims(&self, world: &World, count: usize) -> Vec<usize> {
        let live: Vec<usize> = world.live_pods().collect();
        let candidates: Vec<Candidate> = live
            .iter()
            .map(|&index| {
                let pod = &world.pods()[index];
                Candidate {
                    name: pod.name.as_str().into(),
                    ready: pod.is_ready(),
                    load: pod.is_ready().then(|| world.snapshot(index).load()),
                }
            })
            .collect();
        choose_victims(&candidates, count)
            .iter()
            .filter_map(|name| {
                let at = candidates.iter().position(|c| *c.name == **name)?;
                Some(live[at])
            })
            .collect()
    }
}
