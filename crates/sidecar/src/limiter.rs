//! FIFO admission: at most `capacity` requests in the app at once, the rest queued in arrival
//! order up to `max_queue`, refused beyond that. Pure bookkeeping (no I/O), so that the
//! semantics and the counters of the contract are unit-tested here and the proxy only wires it.
//!
//! Invariant: `arrived_total - completed_total == queued + in_flight` at every instant. A
//! request refused at the bound or while closed counts as arrived and completed at once, a
//! queued request that leaves (timeout, client gone) counts as completed when it leaves.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::watch;

use asyncpool_contract::queue::{CONTRACT_VERSION, QueueSnapshot, Scope};

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("queue full")]
    QueueFull,
    #[error("draining")]
    Closed,
}

/// Counters that the contract does not carry but `/metrics` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Refused because the queue was at `max_queue`.
    pub refused_full: u64,
    /// Refused because the limiter was closed by a drain.
    pub refused_closed: u64,
    /// Left the queue before admission (queue timeout or client gone).
    pub abandoned: u64,
}

#[derive(Debug)]
struct State {
    capacity: usize,
    max_queue: usize,
    closed: bool,
    next_id: u64,
    /// Admitted requests by ticket id, with the instant they entered the app. Ids grow with
    /// admission order, so the first entry is the oldest one.
    in_flight: BTreeMap<u64, Instant>,
    /// Waiting requests in arrival order, with the waker of the task that awaits admission.
    queue: VecDeque<(u64, Option<Waker>)>,
    arrived_total: u64,
    completed_total: u64,
    /// Busy nanoseconds of completed requests; running ones are added at snapshot time.
    /// Integers, so that the busy total never steps back by a rounding error (the operator
    /// would read that as a restart).
    busy_completed_nanos: u128,
    /// Sum of the start offsets (nanoseconds since `epoch`) of the in-flight requests, so that
    /// their running busy time is `n × now - sum` without walking them.
    in_flight_start_nanos: u128,
    outcomes: Outcomes,
}

/// The admission limiter. Cheap to share: wrap it in an [`Arc`].
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    epoch: Instant,
    /// Bumped on every change of the figures, for the watch stream and for drain waits.
    changed: watch::Sender<u64>,
}

impl Limiter {
    pub fn new(capacity: usize, max_queue: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Limiter {
            state: Mutex::new(State {
                capacity,
                max_queue,
                closed: false,
                next_id: 0,
                in_flight: BTreeMap::new(),
                queue: VecDeque::new(),
                arrived_total: 0,
                completed_total: 0,
                busy_completed_nanos: 0,
                in_flight_start_nanos: 0,
                outcomes: Outcomes::default(),
            }),
            epoch: Instant::now(),
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters half-updated in a way that
        // matters more than losing the sidecar, so a poisoned lock is simply taken over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        // Waking nobody still costs a pass over the channel's waiter lists, on every arrival and
        // release; a subscriber reads the current figures when it subscribes anyway.
        if self.changed.receiver_count() > 0 {
            self.changed
                .send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// A receiver that sees a new value after every change of the figures.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers an arrival. Admitted at once when a slot is free and nobody waits, queued
    /// otherwise; refused when the queue is full or the limiter is closed.
    pub fn arrive(self: &Arc<Self>) -> Result<Ticket, Refused> {
        let result = {
            let mut state = self.lock();
            state.arrived_total += 1;
            let id = state.next_id;
            state.next_id += 1;
            if state.closed {
                state.completed_total += 1;
                state.outcomes.refused_closed += 1;
                Err(Refused::Closed)
            } else if state.queue.is_empty() && state.in_flight.len() < state.capacity {
                self.admit(&mut state, id, Instant::now());
                Ok((id, true))
            } else if state.queue.len() < state.max_queue {
                state.queue.push_back((id, None));
                Ok((id, false))
            } else {
                state.completed_total += 1;
                state.outcomes.refused_full += 1;
                Err(Refused::QueueFull)
            }
        };
        self.notify();
        result.map(|(id, admitted)| Ticket {
            limiter: Some(Arc::clone(self)),
            id,
            admitted,
        })
    }

    fn admit(&self, state: &mut State, id: u64, now: Instant) {
        state.in_flight.insert(id, now);
        state.in_flight_start_nanos += now.duration_since(self.epoch).as_nanos();
    }

    /// Ends an admitted request and hands its slot to the head of the queue.
    fn release(&self, id: u64) {
        let mut wake = Vec::new();
        {
            let mut state = self.lock();
            let now = Instant::now();
            if let Some(start) = state.in_flight.remove(&id) {
                state.completed_total += 1;
                state.busy_completed_nanos += now.duration_since(start).as_nanos();
                state.in_flight_start_nanos = state
                    .in_flight_start_nanos
                    .saturating_sub(start.duration_since(self.epoch).as_nanos());
            }
            while state.in_flight.len() < state.capacity {
                let Some((next, waker)) = state.queue.pop_front() else {
                    break;
                };
                self.admit(&mut state, next, now);
                wake.extend(waker);
            }
        }
        for waker in wake {
            waker.wake();
        }
        self.notify();
    }

    /// Removes a request that is still queued. False when it had already been admitted.
    fn leave_queue(&self, id: u64) -> bool {
        let left = {
            let mut state = self.lock();
            match state.queue.iter().position(|(queued, _)| *queued == id) {
                Some(index) => {
                    state.queue.remove(index);
                    state.completed_total += 1;
                    state.outcomes.abandoned += 1;
                    true
                }
                None => false,
            }
        };
        if left {
            self.notify();
        }
        left
    }

    /// Refuses every later arrival; what is queued or in flight goes on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify();
    }

    /// True when nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && state.in_flight.is_empty()
    }

    /// Requests that arrived so far, refused ones included.
    pub fn arrived_total(&self) -> u64 {
        self.lock().arrived_total
    }

    pub fn outcomes(&self) -> Outcomes {
        self.lock().outcomes
    }

    /// The contract's figures now (`draining` is the caller's to set).
    pub fn snapshot(&self) -> QueueSnapshot {
        let state = self.lock();
        let now = Instant::now();
        let now_offset = now.duration_since(self.epoch).as_nanos();
        let running = (state.in_flight.len() as u128 * now_offset)
            .saturating_sub(state.in_flight_start_nanos);
        let oldest = state
            .in_flight
            .values()
            .next()
            .map_or(0.0, |start| now.duration_since(*start).as_secs_f64());
        QueueSnapshot {
            version: CONTRACT_VERSION,
            queued: state.queue.len() as u64,
            in_flight: state.in_flight.len() as u64,
            capacity: state.capacity as u64,
            arrived_total: state.arrived_total,
            completed_total: state.completed_total,
            busy_seconds_total: (state.busy_completed_nanos + running) as f64 / 1e9,
            oldest_in_flight_seconds: oldest,
            draining: false,
            scope: Scope::Pod,
        }
    }
}

/// A request that arrived and was not refused: queued or already admitted. Await
/// [`Ticket::admitted`] for a [`Permit`]; dropping the ticket (or the future) takes the request
/// out of the queue, which is how a queue timeout or a client that went away cancels it.
#[derive(Debug)]
pub struct Ticket {
    limiter: Option<Arc<Limiter>>,
    id: u64,
    /// Admitted at arrival (a free slot, nobody waiting).
    admitted: bool,
}

impl Ticket {
    /// The permit at once if the request was admitted at arrival, else the ticket back.
    pub fn try_admitted(mut self) -> Result<Permit, Ticket> {
        if !self.admitted {
            return Err(self);
        }
        Ok(Permit {
            limiter: self.limiter.take(),
            id: self.id,
        })
    }

    /// Resolves once the request is admitted into the app.
    pub fn admitted(self) -> Admission {
        Admission { ticket: self }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take()
            && !limiter.leave_queue(self.id)
        {
            // Admitted between the last poll and the drop: the slot must go to the next one.
            limiter.release(self.id);
        }
    }
}

/// The future returned by [`Ticket::admitted`].
#[derive(Debug)]
pub struct Admission {
    ticket: Ticket,
}

impl Future for Admission {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let id = self.ticket.id;
        let Some(limiter) = self.ticket.limiter.clone() else {
            // Only reachable by polling after completion, which futures must not do.
            return Poll::Pending;
        };
        let mut state = limiter.lock();
        if state.in_flight.contains_key(&id) {
            drop(state);
            self.ticket.limiter = None;
            return Poll::Ready(Permit {
                limiter: Some(limiter),
                id,
            });
        }
        if let Some(entry) = state.queue.iter_mut().find(|(queued, _)| *queued == id) {
            match &mut entry.1 {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

/// An admitted request's slot, released on drop (when the response has been streamed out).
#[derive(Debug)]
pub struct Permit {
    limiter: Option<Arc<Limiter>>,
    id: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.release(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn check_invariant(limiter: &Limiter) -> QueueSnapshot {
        let s = limiter.snapshot();
        assert_eq!(
            s.arrived_total - s.completed_total,
            s.queued + s.in_flight,
            "{s:?}"
        );
        assert!(s.validate().is_ok(), "{s:?}");
        s
    }

    #[test]
    fn admits_up_to_capacity_then_queues_then_refuses() {
        let limiter = Arc::new(Limiter::new(2, 3));
        let a = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        let b = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        let mut queued: Vec<_> = (0..3).map(|_| limiter.arrive().unwrap()).collect();
        assert_eq!(limiter.arrive().unwrap_err(), Refused::QueueFull);
        let s = check_invariant(&limiter);
        assert_eq!(
            (s.queued, s.in_flight, s.capacity, s.arrived_total),
            (3, 2, 2, 6)
        );
        assert_eq!(limiter.outcomes().refused_full, 1);
        let first = queued.remove(0).admitted();
        futures::pin_mut!(first);
        assert!(first.as_mut().now_or_never().is_none());
        drop(a);
        assert!(first.now_or_never().is_some());
        drop(b);
        check_invariant(&limiter);
    }

    #[tokio::test]
    async fn queued_requests_start_in_arrival_order() {
        let limiter = Arc::new(Limiter::new(1, 100));
        let first = limiter.arrive().unwrap().admitted().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let ticket = limiter.arrive().unwrap();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let permit = ticket.admitted().await;
                tx.send(i).unwrap();
                tokio::task::yield_now().await;
                drop(permit);
            }));
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        drop(tx);
        let mut order = Vec::new();
        while let Some(i) = rx.recv().await {
            order.push(i);
        }
        assert_eq!(order, (0..20).collect::<Vec<_>>());
        let s = check_invariant(&limiter);
        assert_eq!((s.completed_total, s.queued, s.in_flight), (21, 0, 0));
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue_and_keeps_the_order() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let running = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        let gone = limiter.arrive().unwrap();
        let next = limiter.arrive().unwrap();
        drop(gone);
        let s = check_invariant(&limiter);
        assert_eq!((s.queued, s.completed_total), (1, 1));
        assert_eq!(limiter.outcomes().abandoned, 1);
        drop(running);
        assert!(next.admitted().now_or_never().is_some());
        assert!(limiter.is_idle());
        check_invariant(&limiter);
    }

    #[test]
    fn a_ticket_dropped_after_admission_frees_its_slot() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let running = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        let admitted_but_never_polled = limiter.arrive().unwrap();
        let third = limiter.arrive().unwrap();
        drop(running);
        drop(admitted_but_never_polled);
        assert!(third.admitted().now_or_never().is_some());
        assert!(limiter.is_idle());
        let s = check_invariant(&limiter);
        assert_eq!(s.completed_total, 3);
    }

    #[test]
    fn try_admitted_is_immediate_only_for_a_free_slot() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let permit = limiter.arrive().unwrap().try_admitted().unwrap();
        let queued = limiter.arrive().unwrap().try_admitted().unwrap_err();
        assert_eq!(limiter.snapshot().queued, 1);
        drop(permit);
        let second = queued.admitted().now_or_never().unwrap();
        drop(second);
        let s = check_invariant(&limiter);
        assert_eq!((s.completed_total, s.in_flight), (2, 0));
    }

    #[test]
    fn zero_max_queue_refuses_as_soon_as_slots_are_full() {
        let limiter = Arc::new(Limiter::new(1, 0));
        let _running = limiter.arrive().unwrap();
        assert_eq!(limiter.arrive().unwrap_err(), Refused::QueueFull);
        check_invariant(&limiter);
    }

    #[test]
    fn closing_refuses_new_arrivals_but_keeps_the_queued_ones() {
        let limiter = Arc::new(Limiter::new(1, 10));
        let running = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        let queued = limiter.arrive().unwrap();
        limiter.close();
        assert_eq!(limiter.arrive().unwrap_err(), Refused::Closed);
        assert_eq!(limiter.outcomes().refused_closed, 1);
        drop(running);
        let permit = queued.admitted().now_or_never().unwrap();
        assert!(!limiter.is_idle());
        drop(permit);
        assert!(limiter.is_idle());
        check_invariant(&limiter);
    }

    #[test]
    fn busy_seconds_and_oldest_age_track_running_requests() {
        let limiter = Arc::new(Limiter::new(4, 0));
        assert_eq!(limiter.snapshot().oldest_in_flight_seconds, 0.0);
        let a = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let s = check_invariant(&limiter);
        assert!(s.oldest_in_flight_seconds >= 0.059, "{s:?}");
        // a ran ≥ 60 ms, b ≥ 30 ms, both still running.
        assert!(s.busy_seconds_total >= 0.089, "{s:?}");
        drop(a);
        let after = check_invariant(&limiter);
        assert!(after.busy_seconds_total >= s.busy_seconds_total);
        assert!(after.oldest_in_flight_seconds < s.oldest_in_flight_seconds);
        drop(b);
        let idle = check_invariant(&limiter);
        assert_eq!(idle.oldest_in_flight_seconds, 0.0);
        assert!(idle.busy_seconds_total >= after.busy_seconds_total);
    }

    #[test]
    fn every_change_is_signalled() {
        let limiter = Arc::new(Limiter::new(1, 1));
        let mut rx = limiter.subscribe();
        let permit = limiter.arrive().unwrap().admitted().now_or_never().unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        drop(permit);
        assert!(rx.has_changed().unwrap());
    }

    proptest::proptest! {
        /// Any interleaving of arrivals, admissions, cancellations and completions keeps the
        /// bounds and the invariant.
        #[test]
        fn bounds_and_invariant_hold(ops in proptest::collection::vec(0u8..4, 0..200),
                                     capacity in 1usize..4, max_queue in 0usize..4) {
            let limiter = Arc::new(Limiter::new(capacity, max_queue));
            let mut tickets = VecDeque::new();
            let mut permits = VecDeque::new();
            for op in ops {
                match op {
                    0 => if let Ok(t) = limiter.arrive() { tickets.push_back(t) },
                    1 => if let Some(p) = tickets.pop_front().and_then(|t| t.admitted().now_or_never()) {
                        permits.push_back(p);
                    },
                    2 => { tickets.pop_back(); },
                    _ => { permits.pop_front(); },
                }
                let s = limiter.snapshot();
                proptest::prop_assert!(s.in_flight as usize <= capacity);
                proptest::prop_assert!(s.queued as usize <= max_queue);
                proptest::prop_assert_eq!(s.arrived_total - s.completed_total, s.queued + s.in_flight);
            }
        }
    }
}
