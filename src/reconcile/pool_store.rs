//! What the operator remembers about each pool between reconciles: the planner's memory (load
//! windows, the scaler's state, last status write), the failed reconciles in a row that the
//! retry backs off with, which pools have their plan carried out (the decision rounds'
//! business), and the Deployments it wrote that the cache does not show yet. Kept apart from the
//! shared infrastructure in `reconcile::Context`, and forgotten when the pool is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::LiveDeployment;
use crate::planner::PoolMemory;
use crate::pool::PoolKey;

pub struct PoolStore {
    /// The operator's clock starts here: the planner works on durations since.
    origin: Instant,
    /// `None` where a plan dropped what it had (the entry goes with the pool).
    memory: Mutex<HashMap<PoolKey, Option<PoolMemory>>>,
    failures: Mutex<HashMap<PoolKey, u32>>,
    carried_out: Mutex<HashSet<PoolKey>>,
    /// Pools with a reconcile in flight.
    reconciling: Mutex<HashSet<PoolKey>>,
    /// Each pool's Deployment as the operator's last write returned it, until the cache shows
    /// that write's generation (see [`PoolStore::freshest_deployment`]).
    written: Mutex<HashMap<PoolKey, Arc<LiveDeployment>>>,
}

impl Default for PoolStore {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            memory: Mutex::default(),
            failures: Mutex::default(),
            carried_out: Mutex::default(),
            reconciling: Mutex::default(),
            written: Mutex::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only plain data sits behind these locks, so a panicking holder left nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PoolStore {
    /// Time since the operator started, the planner's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs `f` with the pool's memory (`None` before its first plan); what `f` leaves is kept.
    pub(crate) fn with_memory<R>(
        &self,
        key: &PoolKey,
        f: impl FnOnce(&mut Option<PoolMemory>) -> R,
    ) -> R {
        let mut memory = lock(&self.memory);
        // In place when the pool has a memory: every decision round comes here for every pool.
        if let Some(entry) = memory.get_mut(key) {
            return f(entry);
        }
        let mut entry = None;
        let result = f(&mut entry);
        if entry.is_some() {
            memory.insert(key.clone(), entry);
        }
        result
    }

    /// Counts a failed reconcile of the pool; returns the failures in a row, this one included.
    pub fn record_failure(&self, key: PoolKey) -> u32 {
        let mut failures = lock(&self.failures);
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// A reconcile of the pool succeeded: its retry starts from the first delay again.
    pub fn record_success(&self, key: impl FnOnce() -> Option<PoolKey>) {
        let mut failures = lock(&self.failures);
        // Almost always empty: no key is built on the hot path unless a pool failed before.
        if !failures.is_empty()
            && let Some(key) = key()
        {
            failures.remove(&key);
        }
    }

    /// Whether the pool's last reconcile failed (its retry is backed off).
    pub fn failing(&self, key: &PoolKey) -> bool {
        lock(&self.failures).contains_key(key)
    }

    /// Records whether the pool's last reconcile carried its plan out (`false`: it refused the
    /// pool, which waits for a change of spec or of the objects in its way).
    pub fn set_carried_out(&self, key: &PoolKey, carried_out: bool) {
        let mut set = lock(&self.carried_out);
        if carried_out {
            if !set.contains(key) {
                set.insert(key.clone());
            }
        } else {
            set.remove(key);
        }
    }

    pub fn carried_out(&self, key: &PoolKey) -> bool {
        lock(&self.carried_out).contains(key)
    }

    /// Marks the pool's reconcile in flight until the guard is dropped (however it ends).
    pub fn reconciling(&self, key: &PoolKey) -> Reconciling<'_> {
        lock(&self.reconciling).insert(key.clone());
        Reconciling {
            store: self,
            key: key.clone(),
        }
    }

    /// Whether a reconcile of the pool is in flight.
    pub fn is_reconciling(&self, key: &PoolKey) -> bool {
        lock(&self.reconciling).contains(key)
    }

    /// Keeps the Deployment as the API server returned it from the operator's write (what the
    /// cache keeps of it), until the cache shows its generation.
    pub fn wrote_deployment(&self, key: &PoolKey, written: LiveDeployment) {
        lock(&self.written).insert(key.clone(), Arc::new(written));
    }

    /// The pool's Deployment as the cache shows it, unless the operator has since written a
    /// spec the cache does not show yet: then as that write returned it. A plan made from a
    /// cache a write behind would take the old size for the present one, and write it again.
    pub fn freshest_deployment(
        &self,
        key: &PoolKey,
        cached: Arc<LiveDeployment>,
    ) -> Arc<LiveDeployment> {
        let mut written = lock(&self.written);
        // Empty unless a write is on its way to the cache (milliseconds on an idle cluster).
        if written.is_empty() {
            return cached;
        }
        match written.get(key) {
            Some(ours) if shows_older_spec(&cached, ours) => ours.clone(),
            Some(_) => {
                written.remove(key);
                cached
            }
            None => cached,
        }
    }

    /// Drops what is kept for pools not in `live`; returns those that had a memory.
    pub fn forget_except(&self, live: &HashSet<PoolKey>) -> Vec<PoolKey> {
        lock(&self.written).retain(|k, _| live.contains(k));
        lock(&self.failures).retain(|k, _| live.contains(k));
        lock(&self.carried_out).retain(|k| live.contains(k));
        let mut memory = lock(&self.memory);
        let gone: Vec<PoolKey> = memory
            .iter()
            .filter(|(k, m)| m.is_some() && !live.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        memory.retain(|k, _| live.contains(k));
        gone
    }
}

/// Whether `cached` is the same Deployment as `written` at an older spec: a lower
/// `metadata.generation`, which the API server raises on every change of spec. (Resource
/// versions are opaque and may not be compared for order; generations may.) A write that
/// changed no spec (metadata alone) keeps its generation and is not told apart: the cache is
/// used. So is a Deployment of another uid, and one changed by someone else after the write.
fn shows_older_spec(cached: &LiveDeployment, written: &LiveDeployment) -> bool {
    cached.metadata.uid == written.metadata.uid
        && matches!(
            (cached.metadata.generation, written.metadata.generation),
            (Some(cached), Some(written)) if cached < written
        )
}

/// A reconcile in flight; see [`PoolStore::reconciling`].
pub struct Reconciling<'a> {
    store: &'a PoolStore,
    key: PoolKey,
}

impl Drop for Reconciling<'_> {
    fn drop(&mut self) {
        lock(&self.store.reconciling).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Scaler;

    fn memory() -> PoolMemory {
        PoolMemory {
            scaler: Scaler::new(Duration::ZERO, 1),
            last_status_submitted: None,
            recycling: None,
            surge: None,
            rest: None,
            handled_request: None,
        }
    }

    fn key(name: &str) -> PoolKey {
        PoolKey {
            namespace: "team".into(),
            name: name.into(),
        }
    }

    #[test]
    fn memory_left_by_a_plan_is_kept_and_forgotten_with_the_pool() {
        let store = PoolStore::default();
        store.with_memory(&key("a"), |entry| {
            assert!(entry.is_none(), "no memory before the first plan");
            *entry = Some(memory());
        });
        assert!(store.with_memory(&key("a"), |memory| memory.is_some()));
        assert!(store.with_memory(&key("b"), |memory| memory.is_none()));
        assert_eq!(
            store.forget_except(&HashSet::from([key("b")])),
            vec![key("a")]
        );
        assert!(store.with_memory(&key("a"), |memory| memory.is_none()));
    }

    #[test]
    fn failures_count_in_a_row_until_a_success_or_the_pool_goes() {
        let store = PoolStore::default();
        assert_eq!(store.record_failure(key("a")), 1);
        assert_eq!(store.record_failure(key("a")), 2);
        assert_eq!(store.record_failure(key("b")), 1);
        store.record_success(|| Some(key("a")));
        assert_eq!(store.record_failure(key("a")), 1);
        store.forget_except(&HashSet::from([key("a")]));
        assert_eq!(store.record_failure(key("b")), 1, "b was forgotten");
        assert!(store.failing(&key("b")));
        assert!(!store.failing(&key("c")));
    }

    #[test]
    fn a_reconcile_is_in_flight_until_its_guard_goes() {
        let store = PoolStore::default();
        assert!(!store.is_reconciling(&key("a")));
        let guard = store.reconciling(&key("a"));
        assert!(store.is_reconciling(&key("a")));
        assert!(!store.is_reconciling(&key("b")));
        drop(guard);
        assert!(!store.is_reconciling(&key("a")));
    }

    #[test]
    fn a_refusal_takes_a_pool_out_of_the_rounds_until_it_is_carried_out_again() {
        let store = PoolStore::default();
        assert!(
            !store.carried_out(&key("a")),
            "not before its first reconcile"
        );
        store.set_carried_out(&key("a"), true);
        store.set_carried_out(&key("b"), true);
        assert!(store.carried_out(&key("a")));
        store.set_carried_out(&key("a"), false);
        assert!(!store.carried_out(&key("a")));
        assert!(store.carried_out(&key("b")));
        store.forget_except(&HashSet::new());
        assert!(!store.carried_out(&key("b")), "forgotten with the pool");
    }

    fn deployment(uid: &str, generation: i64, replicas: i32) -> LiveDeployment {
        LiveDeployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                uid: Some(uid.into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(super::super::live::LiveDeploymentSpec {
                replicas: Some(replicas),
            }),
            ..Default::default()
        }
    }

    fn replicas_of(deployment: &LiveDeployment) -> Option<i32> {
        deployment.replicas()
    }

    #[test]
    fn a_written_deployment_stands_in_for_the_cache_until_the_cache_shows_it() {
        let store = PoolStore::default();
        let at = |uid, generation, replicas| Arc::new(deployment(uid, generation, replicas));
        // Nothing written: the cache as it is.
        let shown = store.freshest_deployment(&key("a"), at("u1", 4, 3));
        assert_eq!(replicas_of(&shown), Some(3));

        store.wrote_deployment(&key("a"), deployment("u1", 5, 4));
        // The cache a write behind: the write's answer, every time it is asked.
        for _ in 0..2 {
            let behind = store.freshest_deployment(&key("a"), at("u1", 4, 3));
            assert_eq!(replicas_of(&behind), Some(4));
        }
        // Another pool's cache is its own.
        let other = store.freshest_deployment(&key("b"), at("u2", 1, 1));
        assert_eq!(replicas_of(&other), Some(1));
        // Caught up (or past it, someone else wrote since): the cache, and the write is dropped.
        let caught_up = store.freshest_deployment(&key("a"), at("u1", 6, 7));
        assert_eq!(replicas_of(&caught_up), Some(7));
        let after = store.freshest_deployment(&key("a"), at("u1", 4, 3));
        assert_eq!(
            replicas_of(&after),
            Some(3),
            "the write was kept once shown"
        );

        // A Deployment re-created under the same name starts at generation 1 again.
        store.wrote_deployment(&key("a"), deployment("u1", 9, 4));
        let recreated = store.freshest_deployment(&key("a"), at("u3", 1, 2));
        assert_eq!(replicas_of(&recreated), Some(2));

        // Forgotten with the pool.
        store.wrote_deployment(&key("c"), deployment("u4", 9, 4));
        store.forget_except(&HashSet::new());
        let fresh = store.freshest_deployment(&key("c"), at("u4", 2, 1));
        assert_eq!(replicas_of(&fresh), Some(1));
    }
}
