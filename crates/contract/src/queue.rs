//! The queue contract, version 1: the JSON object that `GET /queue` answers and that
//! `GET /queue?watch=true` streams one per line. Documented in `docs/sidecar-contract.md`.
//!
//! Both sides use these types: the sidecar serializes them, the operator parses them with
//! [`QueueSnapshot::parse`], which refuses anything out of range so that garbage becomes
//! missing data rather than a zero.

use serde::{Deserialize, Serialize};

/// The contract version this build speaks.
pub const CONTRACT_VERSION: u32 = 1;

/// Least time between two lines of a watch stream (`GET /queue?watch=true`): changes in between
/// are coalesced into the next line, which bounds the stream to 50 lines/s however busy the pod.
pub const WATCH_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// A watch stream writes the current snapshot at least this often, changed or not, so that a
/// reader can tell a quiet pod from a dead stream. Also the longest pace a reader may ask for.
pub const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// A watch stream's pace: a duration from [`WATCH_MIN_INTERVAL`] (every change) to
/// [`WATCH_HEARTBEAT`].
pub fn parse_watch_pace(value: &str) -> Result<std::time::Duration, String> {
    let pace = crate::duration::parse_duration(value)?;
    if !(WATCH_MIN_INTERVAL..=WATCH_HEARTBEAT).contains(&pace) {
        return Err(format!(
            "{pace:?} is outside {WATCH_MIN_INTERVAL:?}..={WATCH_HEARTBEAT:?}"
        ));
    }
    Ok(pace)
}

/// The first instant at or after `after` at which the wall clock reads a whole multiple of
/// `every`. Watch streams write their paced lines and heartbeats there, so that every sidecar's
/// lines of a second reach the operator together: it wakes once for all of them instead of once
/// for each (clocks kept by NTP agree to milliseconds). A step of the wall clock moves one line.
pub fn on_the_clock(after: std::time::Instant, every: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let wall_after = match after.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall.saturating_sub(now - after),
    };
    after + until_multiple(wall_after, every)
}

/// From `time` to the next whole multiple of `every` (zero on one).
fn until_multiple(time: std::time::Duration, every: std::time::Duration) -> std::time::Duration {
    let every = every.as_nanos().max(1);
    let past = time.as_nanos() % every;
    let wait = if past == 0 { 0 } else { every - past };
    std::time::Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// `GET /queue`'s query: `None` for one snapshot, `Some(pace)` for a watch stream (`watch=true`,
/// with an optional `pace=<duration>` between 20 ms and 2 s). Other parameters are ignored, so
/// that readers may add their own.
pub fn watch_query(query: Option<&str>) -> Result<Option<Option<std::time::Duration>>, String> {
    let mut watch = false;
    let mut pace = None;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            None if pair == "watch" => watch = true,
            Some(("watch", "true" | "1")) => watch = true,
            Some(("pace", value)) => {
                pace = Some(parse_watch_pace(value).map_err(|e| format!("pace: {e}"))?);
            }
            _ => {}
        }
    }
    Ok(watch.then_some(pace))
}

/// Whether a paced watch stream (`GET /queue?watch=true&pace=1s`) writes `now` at once rather
/// than at its pace, having last written `last`: the figures appeared or went missing, the
/// drain began, the capacity or scope changed, or the load (queued + in flight) moved by half
/// the capacity, and by at least two requests, since the last line. A request or two in or out
/// is what steady traffic does all the time; a burst moves the load by far more.
pub fn moves_at_once(
    last: Option<&Result<QueueSnapshot, String>>,
    now: &Result<QueueSnapshot, String>,
) -> bool {
    let (Some(Ok(last)), Ok(now)) = (last, now) else {
        return last.is_none_or(|last| last.is_ok() != now.is_ok());
    };
    now.moved_from(last)
}

/// The smallest move of the load that moves a scaler, for a worker of `capacity`: half of it,
/// and at least two requests. A request or two in or out is what steady traffic does all the
/// time; a burst moves the load by far more.
pub fn load_step(capacity: u64) -> u64 {
    capacity.div_ceil(2).max(2)
}

/// Upper bound on any gauge or counter a sane sidecar reports; larger values are garbage.
const MAX_COUNT: u64 = 1 << 53;

/// Whether the figures describe this pod alone or the whole pool (an external queue such as
/// a Redis list is the same for every pod, so the operator must not add it up per pod).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    #[default]
    Pod,
    Pool,
}

/// One reading of a worker's queue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSnapshot {
    /// Contract version; readers refuse versions they do not know.
    pub version: u32,
    /// Requests admitted to the sidecar's queue but not yet passed to the app.
    pub queued: u64,
    /// Requests the app is serving now.
    pub in_flight: u64,
    /// Requests the sidecar lets into the app at once (the pool's `concurrency`).
    pub capacity: u64,
    /// Requests that ever arrived (monotonic).
    pub arrived_total: u64,
    /// Requests that ever completed, successfully or not (monotonic).
    pub completed_total: u64,
    /// Sum over completed and running requests of the seconds each spent in the app (monotonic).
    pub busy_seconds_total: f64,
    /// Age of the oldest request the app is serving now, 0 when idle.
    pub oldest_in_flight_seconds: f64,
    /// True once a drain started: the pod is finishing its work and admits nothing new.
    pub draining: bool,
    /// Pod-local figures (proxy and report sources) or pool-wide ones (redis source).
    #[serde(default)]
    pub scope: Scope,
}

/// Why a sidecar answer was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContractError {
    #[error("not a queue snapshot: {0}")]
    Malformed(String),
    #[error("unsupported contract version {0} (this build speaks {CONTRACT_VERSION})")]
    Version(u32),
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
}

impl QueueSnapshot {
    /// A pod-scoped reading with `queued` waiting and `in_flight` running of 10, and nothing
    /// else counted yet: the unit tests' starting point (struct update for the rest).
    #[cfg(any(test, feature = "testing"))]
    pub fn of_pod(queued: u64, in_flight: u64) -> Self {
        Self {
            version: CONTRACT_VERSION,
            queued,
            in_flight,
            capacity: 10,
            arrived_total: 0,
            completed_total: 0,
            busy_seconds_total: 0.0,
            oldest_in_flight_seconds: 0.0,
            draining: false,
            scope: Scope::Pod,
        }
    }

    /// A pod's load: what waits plus what runs.
    pub fn load(&self) -> u64 {
        self.queued + self.in_flight
    }

    /// Whether this reading moves the scaler away from `last` (see [`moves_at_once`]): the
    /// drain began or ended, the capacity or scope changed, or the load moved by half the
    /// capacity, and by at least two requests.
    pub fn moved_from(&self, last: &QueueSnapshot) -> bool {
        last.draining != self.draining
            || last.capacity != self.capacity
            || last.scope != self.scope
            || last.load().abs_diff(self.load()) >= load_step(self.capacity)
    }

    /// Parses and checks one snapshot. Anything that fails here is missing data, never zero.
    pub fn parse(body: &[u8]) -> Result<Self, ContractError> {
        let snapshot: QueueSnapshot =
            serde_json::from_slice(body).map_err(|e| ContractError::Malformed(e.to_string()))?;
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Range checks that the JSON types alone cannot express.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.version != CONTRACT_VERSION {
            return Err(ContractError::Version(self.version));
        }
        for (value, name) in [
            (self.queued, "queued"),
            (self.in_flight, "inFlight"),
            (self.capacity, "capacity"),
            (self.arrived_total, "arrivedTotal"),
            (self.completed_total, "completedTotal"),
        ] {
            if value > MAX_COUNT {
                return Err(ContractError::OutOfRange(name));
            }
        }
        for (value, name) in [
            (self.busy_seconds_total, "busySecondsTotal"),
            (self.oldest_in_flight_seconds, "oldestInFlightSeconds"),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(ContractError::OutOfRange(name));
            }
        }
        if self.completed_total > self.arrived_total {
            return Err(ContractError::OutOfRange(
                "completedTotal exceeds arrivedTotal",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"version": 1, "queued": 12, "inFlight": 10, "capacity": 10,
        "arrivedTotal": 48210, "completedTotal": 48188, "busySecondsTotal": 91822.5,
        "oldestInFlightSeconds": 3.2, "draining": false}"#;

    #[test]
    fn parses_the_documented_example() {
        let s = QueueSnapshot::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(s.load(), 22);
        assert_eq!(s.scope, Scope::Pod);
        let round = serde_json::to_vec(&s).unwrap();
        assert_eq!(QueueSnapshot::parse(&round).unwrap(), s);
    }

    #[test]
    fn what_the_sidecar_sends_is_read_back_exactly() {
        // Found by fuzzing (fuzz/corpus/queue_snapshot/float-round-trip): serde_json's default
        // float parsing read this value one ULP off.
        let sent = QueueSnapshot {
            busy_seconds_total: 2.7976931348623158e-8,
            oldest_in_flight_seconds: 1.7976931348623157e308,
            ..QueueSnapshot::of_pod(1, 2)
        };
        let line = serde_json::to_vec(&sent).unwrap();
        let read = QueueSnapshot::parse(&line).unwrap();
        assert_eq!(
            read.busy_seconds_total.to_bits(),
            sent.busy_seconds_total.to_bits()
        );
        assert_eq!(read, sent);
    }

    #[test]
    fn refuses_garbage_and_out_of_range_values() {
        let cases = [
            ("", "empty"),
            ("<html>502</html>", "html"),
            (r#"{"version":1}"#, "missing fields"),
            (
                &EXAMPLE.replace("\"queued\": 12", "\"queued\": -3"),
                "negative gauge",
            ),
            (
                &EXAMPLE.replace("\"queued\": 12", "\"queued\": 1.5"),
                "fractional gauge",
            ),
            (
                &EXAMPLE.replace("\"version\": 1", "\"version\": 2"),
                "future version",
            ),
            (&EXAMPLE.replace("91822.5", "-1.0"), "negative seconds"),
            (
                &EXAMPLE.replace("48188", "48211"),
                "completed beyond arrived",
            ),
            (
                &EXAMPLE.replace("\"queued\": 12", "\"queued\": 18014398509481984"),
                "absurd gauge",
            ),
        ];
        for (body, what) in cases {
            assert!(
                QueueSnapshot::parse(body.as_bytes()).is_err(),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn a_paced_stream_writes_at_once_only_what_moves_the_scaler() {
        let at = |queued, in_flight, capacity| {
            Ok(QueueSnapshot {
                capacity,
                ..QueueSnapshot::of_pod(queued, in_flight)
            })
        };
        let last = at(0, 6, 10);
        // Counters alone, or up to four requests in or out of ten: at the pace.
        let counted = Ok(QueueSnapshot {
            arrived_total: 500,
            busy_seconds_total: 12.5,
            ..QueueSnapshot {
                capacity: 10,
                ..QueueSnapshot::of_pod(0, 6)
            }
        });
        for quiet in [counted, at(0, 7, 10), at(0, 2, 10), at(3, 7, 10)] {
            assert!(!moves_at_once(Some(&last), &quiet), "{quiet:?}");
        }
        // Half the capacity (rounded up), a drain, a new capacity, a gap: at once.
        let draining = Ok(QueueSnapshot {
            draining: true,
            ..QueueSnapshot {
                capacity: 10,
                ..QueueSnapshot::of_pod(0, 6)
            }
        });
        for moved in [
            at(1, 10, 10),
            at(5, 6, 10),
            at(0, 1, 10),
            draining,
            at(0, 6, 12),
        ] {
            assert!(moves_at_once(Some(&last), &moved), "{moved:?}");
        }
        let missing = Err("redis unreachable".to_string());
        assert!(moves_at_once(Some(&last), &missing));
        assert!(moves_at_once(Some(&missing), &last));
        assert!(!moves_at_once(Some(&missing), &Err("still".into())));
        // The first line, and a worker of one: two requests, not one.
        assert!(moves_at_once(None, &last));
        assert!(!moves_at_once(Some(&at(0, 1, 1)), &at(0, 0, 1)));
        assert!(moves_at_once(Some(&at(0, 1, 1)), &at(2, 1, 1)));
        // A large worker moves at once only by half: 50 of 100.
        assert!(!moves_at_once(Some(&at(0, 50, 100)), &at(49, 50, 100)));
        assert!(moves_at_once(Some(&at(0, 50, 100)), &at(50, 50, 100)));
    }

    #[test]
    fn lines_go_out_on_whole_multiples_of_the_pace() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(until_multiple(ms(12_300), ms(1_000)), ms(700));
        assert_eq!(until_multiple(ms(12_000), ms(1_000)), ms(0));
        assert_eq!(until_multiple(ms(12_999), ms(2_000)), ms(1_001));
        assert_eq!(until_multiple(ms(5), ms(20)), ms(15));
        let start = std::time::Instant::now();
        let at = on_the_clock(start, ms(250));
        assert!(at >= start && at <= start + ms(250), "{:?}", at - start);
        // Two streams asking at different moments of one period meet at its end (to within
        // the time between this test's clock readings).
        let later = on_the_clock(start + ms(100), ms(250));
        let apart = later.saturating_duration_since(at);
        assert!(
            apart < ms(1) || apart.abs_diff(ms(250)) < ms(1),
            "{apart:?}"
        );
    }

    #[test]
    fn watch_queries() {
        assert_eq!(watch_query(Some("watch=true")), Ok(Some(None)));
        assert_eq!(watch_query(Some("a=b&watch=1")), Ok(Some(None)));
        assert_eq!(watch_query(Some("watch=false")), Ok(None));
        assert_eq!(watch_query(None), Ok(None));
        assert_eq!(
            watch_query(Some("watch&pace=1s")),
            Ok(Some(Some(std::time::Duration::from_secs(1))))
        );
        assert_eq!(
            watch_query(Some("pace=250ms&watch=true")),
            Ok(Some(Some(std::time::Duration::from_millis(250))))
        );
        // A pace without a watch is one snapshot, as before.
        assert_eq!(watch_query(Some("pace=1s")), Ok(None));
        for wrong in ["pace=1", "pace=fast", "pace=", "pace=10ms", "pace=3s"] {
            let error = watch_query(Some(&format!("watch=true&{wrong}"))).unwrap_err();
            assert!(error.starts_with("pace: "), "{wrong}: {error}");
        }
    }
}
