//! `report` source: the app posts its own queued and in-flight figures (a pull-style asyncio task
//! loop has no requests passing through the proxy). The sidecar keeps the contract's counters
//! monotonic across the app's restarts and derives the ones the app does not send.

use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::watch;

use asyncpool_contract::queue::{CONTRACT_VERSION, QueueSnapshot, Scope};

/// Largest count accepted, the contract's own bound.
const MAX_COUNT: u64 = 1 << 53;

/// The body of `POST /report`. `queued` and `inFlight` are required; the totals are optional
/// and go together (the app's own counters, any origin, may restart from zero).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    pub queued: u64,
    pub in_flight: u64,
    pub arrived_total: Option<u64>,
    pub completed_total: Option<u64>,
    pub busy_seconds_total: Option<f64>,
    pub oldest_in_flight_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("not a report: {0}")]
    Malformed(String),
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
    #[error("arrivedTotal and completedTotal must be sent together")]
    HalfTotals,
}

impl Report {
    pub fn parse(body: &[u8]) -> Result<Self, ReportError> {
        let report: Report =
            serde_json::from_slice(body).map_err(|e| ReportError::Malformed(e.to_string()))?;
        for (value, name) in [(report.queued, "queued"), (report.in_flight, "inFlight")] {
            if value > MAX_COUNT {
                return Err(ReportError::OutOfRange(name));
            }
        }
        match (report.arrived_total, report.completed_total) {
            (Some(arrived), Some(completed)) => {
                if arrived > MAX_COUNT || completed > MAX_COUNT {
                    return Err(ReportError::OutOfRange("arrivedTotal/completedTotal"));
                }
                if completed > arrived {
                    return Err(ReportError::OutOfRange(
                        "completedTotal exceeds arrivedTotal",
                    ));
                }
            }
            (None, None) => {}
            _ => return Err(ReportError::HalfTotals),
        }
        for (value, name) in [
            (report.busy_seconds_total, "busySecondsTotal"),
            (report.oldest_in_flight_seconds, "oldestInFlightSeconds"),
        ] {
            if let Some(value) = value
                && (!value.is_finite() || value < 0.0)
            {
                return Err(ReportError::OutOfRange(name));
            }
        }
        Ok(report)
    }
}

/// The last report folded into monotonic counters.
#[derive(Debug, Default)]
struct State {
    /// None until the first report: the figures are missing data, not zeros.
    last: Option<Last>,
    arrived_total: u64,
    completed_total: u64,
    busy_seconds_total: f64,
}

#[derive(Debug)]
struct Last {
    at: Instant,
    report: Report,
}

#[derive(Debug)]
pub struct ReportSource {
    capacity: u64,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl ReportSource {
    pub fn new(capacity: u64) -> Self {
        ReportSource {
            capacity,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Folds one report in. Counters the app sends advance by their difference from the last
    /// report (a decrease is an app restart: the new value counts from zero); counters it does
    /// not send are derived from the change of its load, and busy time from `inFlight` × time.
    pub fn apply(&self, report: Report) {
        self.apply_at(report, Instant::now());
    }

    fn apply_at(&self, report: Report, now: Instant) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let previous = state.last.take();
            match (&previous, report.arrived_total, report.completed_total) {
                (Some(Last { report: before, .. }), Some(arrived), Some(completed))
                    if before.arrived_total.is_some() =>
                {
                    let (arrived_before, completed_before) = (
                        before.arrived_total.unwrap_or(0),
                        before.completed_total.unwrap_or(0),
                    );
                    if arrived < arrived_before || completed < completed_before {
                        state.arrived_total += arrived;
                        state.completed_total += completed;
                    } else {
                        state.arrived_total += arrived - arrived_before;
                        state.completed_total += completed - completed_before;
                    }
                }
                (None, Some(arrived), Some(completed)) => {
                    state.arrived_total += arrived;
                    state.completed_total += completed;
                }
                _ => {
                    let before = previous
                        .as_ref()
                        .map_or(0, |last| last.report.queued + last.report.in_flight);
                    let load = report.queued + report.in_flight;
                    state.arrived_total += load.saturating_sub(before);
                    state.completed_total += before.saturating_sub(load);
                }
            }
            // A derived completed count can lag behind arrivals but must never pass them.
            state.completed_total = state.completed_total.min(state.arrived_total);
            match (&previous, report.busy_seconds_total) {
                (Some(Last { report: before, .. }), Some(busy))
                    if before.busy_seconds_total.is_some() =>
                {
                    let busy_before = before.busy_seconds_total.unwrap_or(0.0);
                    state.busy_seconds_total += if busy < busy_before {
                        busy
                    } else {
                        busy - busy_before
                    };
                }
                (None, Some(busy)) => state.busy_seconds_total += busy,
                (Some(last), _) => {
                    state.busy_seconds_total +=
                        last.report.in_flight as f64 * now.duration_since(last.at).as_secs_f64();
                }
                (None, None) => {}
            }
            state.last = Some(Last { at: now, report });
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The figures now, or None before the first report.
    pub fn snapshot(&self) -> Option<QueueSnapshot> {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> Option<QueueSnapshot> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let last = state.last.as_ref()?;
        // Between reports, busy time grows with what the app said runs, unless it sends its own.
        let running = if last.report.busy_seconds_total.is_some() {
            0.0
        } else {
            last.report.in_flight as f64 * now.duration_since(last.at).as_secs_f64()
        };
        let oldest = last
            .report
            .oldest_in_flight_seconds
            .map_or(0.0, |age| age + now.duration_since(last.at).as_secs_f64());
        Some(QueueSnapshot {
            version: CONTRACT_VERSION,
            queued: last.report.queued,
            in_flight: last.report.in_flight,
            capacity: self.capacity,
            arrived_total: state.arrived_total,
            completed_total: state.completed_total,
            busy_seconds_total: state.busy_seconds_total + running,
            oldest_in_flight_seconds: if last.report.in_flight == 0 {
                0.0
            } else {
                oldest
            },
            draining: false,
            scope: Scope::Pod,
        })
    }

    /// True when the app last reported nothing queued or running (or never reported).
    pub fn is_idle(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .last
            .as_ref()
            .is_none_or(|last| last.report.queued == 0 && last.report.in_flight == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(body: &str) -> Report {
        Report::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(report(r#"{"queued": 3, "inFlight": 2}"#).in_flight, 2);
        for bad in [
            "",
            "{}",
            r#"{"queued": 3}"#,
            r#"{"queued": -1, "inFlight": 0}"#,
            r#"{"queued": 1.5, "inFlight": 0}"#,
            r#"{"queued": 1, "inFlight": 0, "extra": 1}"#,
            r#"{"queued": 1, "inFlight": 0, "arrivedTotal": 5}"#,
            r#"{"queued": 1, "inFlight": 0, "arrivedTotal": 5, "completedTotal": 6}"#,
            r#"{"queued": 1, "inFlight": 0, "busySecondsTotal": -1}"#,
            r#"{"queued": 18014398509481984, "inFlight": 0}"#,
        ] {
            assert!(Report::parse(bad.as_bytes()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn missing_until_the_first_report() {
        let source = ReportSource::new(10);
        assert!(source.snapshot().is_none());
        assert!(source.is_idle());
        source.apply(report(r#"{"queued": 4, "inFlight": 6}"#));
        let s = source.snapshot().unwrap();
        assert_eq!(
            (s.queued, s.in_flight, s.capacity, s.scope),
            (4, 6, 10, Scope::Pod)
        );
        assert!(s.validate().is_ok());
        assert!(!source.is_idle());
    }

    #[test]
    fn derives_counters_from_load_changes() {
        let source = ReportSource::new(10);
        let t0 = Instant::now();
        source.apply_at(report(r#"{"queued": 0, "inFlight": 5}"#), t0);
        source.apply_at(
            report(r#"{"queued": 0, "inFlight": 2}"#),
            t0 + Duration::from_secs(2),
        );
        source.apply_at(
            report(r#"{"queued": 3, "inFlight": 4}"#),
            t0 + Duration::from_secs(3),
        );
        let s = source.snapshot_at(t0 + Duration::from_secs(4)).unwrap();
        assert_eq!((s.arrived_total, s.completed_total), (10, 3));
        assert_eq!(s.arrived_total - s.completed_total, s.queued + s.in_flight);
        // 5 × 2 s + 2 × 1 s + 4 × 1 s (still running).
        assert!((s.busy_seconds_total - 16.0).abs() < 1e-9, "{s:?}");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn reported_counters_stay_monotonic_across_an_app_restart() {
        let source = ReportSource::new(10);
        let t0 = Instant::now();
        let with_totals = |a: u64, c: u64, busy: f64| {
            report(&format!(
                r#"{{"queued": 0, "inFlight": 1, "arrivedTotal": {a}, "completedTotal": {c}, "busySecondsTotal": {busy}, "oldestInFlightSeconds": 1.0}}"#
            ))
        };
        source.apply_at(with_totals(100, 90, 50.0), t0);
        source.apply_at(with_totals(120, 119, 60.0), t0 + Duration::from_secs(1));
        let before = source.snapshot_at(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!((before.arrived_total, before.completed_total), (120, 119));
        assert_eq!(before.busy_seconds_total, 60.0);
        source.apply_at(with_totals(5, 4, 2.0), t0 + Duration::from_secs(2));
        let after = source.snapshot_at(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!((after.arrived_total, after.completed_total), (125, 123));
        assert_eq!(after.busy_seconds_total, 62.0);
        // The reported age keeps growing between reports.
        assert!((after.oldest_in_flight_seconds - 2.0).abs() < 1e-9);
        assert!(after.validate().is_ok());
    }
}
