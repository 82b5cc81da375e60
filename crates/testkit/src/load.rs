//! An open-loop load of real requests against one address (a Service's ClusterIP, a pod), each on
//! a fresh connection as a load balancer's client would open it, with every outcome counted.
//! Open loop: requests start on a fixed schedule whatever the answers, so a stall shows up as
//! failures or latency rather than as a slower sender.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;

/// What to send and how often.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Short requests per second, each `GET short_path`.
    pub rate: u32,
    pub short_path: String,
    /// Streaming responses started per second, each `GET stream_path`; a stream is whole when
    /// its body ends with `stream_last_event`.
    pub stream_rate: f64,
    pub stream_path: String,
    pub stream_last_event: String,
    /// How long one request may take before it counts as lost.
    pub timeout: Duration,
}

/// Every request's outcome. `refused` counts only the sidecar's documented answer to a full queue
/// (503 "queue full"); any other failure, including a 503 "draining", is `lost`. `unreachable`
/// tells how many of the lost were the sidecar's 503 "app unavailable" (its app could not be
/// reached: nothing of the request reached it), which only a dead app excuses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub sent: u64,
    pub succeeded: u64,
    pub refused: u64,
    pub lost: u64,
    /// Of `lost`, the 503 "app unavailable" answers.
    pub unreachable: u64,
    pub streams_sent: u64,
    pub streams_whole: u64,
    pub streams_cut: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests sent {} / succeeded {} / refused with 503 {} / lost {} ({} of them 503 app unavailable); streams sent {} / whole {} / cut {}",
            self.sent,
            self.succeeded,
            self.refused,
            self.lost,
            self.unreachable,
            self.streams_sent,
            self.streams_whole,
            self.streams_cut
        )?;
        if !self.failures.is_empty() {
            write!(f, "; first failures: {:?}", self.failures)?;
        }
        Ok(())
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    /// The documented 503 for a full queue.
    Refused,
    /// The sidecar's 503 "app unavailable": lost, but nothing reached the app.
    Unreachable,
    /// Anything else: no answer, an error, a wrong status, a cut stream.
    Lost,
}

/// One finished request: when it was sent, whether it was a stream, how it ended.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub sent: tokio::time::Instant,
    pub stream: bool,
    pub ending: Ending,
}

impl LoadReport {
    /// The counts of the requests in `outcomes` (without failure texts).
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Self {
        let mut report = Self::default();
        for outcome in outcomes {
            match (outcome.stream, outcome.ending) {
                (false, ending) => {
                    report.sent += 1;
                    match ending {
                        Ending::Succeeded => report.succeeded += 1,
                        Ending::Refused => report.refused += 1,
                        Ending::Unreachable => {
                            report.lost += 1;
                            report.unreachable += 1;
                        }
                        Ending::Lost => report.lost += 1,
                    }
                }
                (true, ending) => {
                    report.streams_sent += 1;
                    match ending {
                        Ending::Succeeded => report.streams_whole += 1,
                        Ending::Refused | Ending::Unreachable | Ending::Lost => {
                            report.streams_cut += 1
                        }
                    }
                }
            }
        }
        report
    }
}

/// A running load; `stop` ends the schedule, waits for every request it started and reports.
pub struct Load {
    report: Arc<Mutex<LoadReport>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    schedule: tokio::task::JoinHandle<JoinSet<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

enum Kind {
    Short,
    Stream,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Self {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::clone(&report);
        let ended = Arc::clone(&outcomes);
        let schedule = tokio::spawn(async move {
            let mut requests = JoinSet::new();
            let spec = Arc::new(spec);
            let began = tokio::time::Instant::now();
            let tick = Duration::from_secs_f64(1.0 / f64::from(spec.rate.max(1)));
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let streams_every = (f64::from(spec.rate) / spec.stream_rate.max(1e-9)).round() as u64;
            let mut count: u64 = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                count += 1;
                let kind = if spec.stream_rate > 0.0 && count.is_multiple_of(streams_every.max(1)) {
                    Kind::Stream
                } else {
                    Kind::Short
                };
                requests.spawn(one(
                    Arc::clone(&spec),
                    kind,
                    Arc::clone(&shared),
                    Arc::clone(&ended),
                    began,
                ));
            }
            requests
        });
        Self {
            report,
            outcomes,
            schedule,
            stop,
        }
    }

    /// The counts so far (requests still in flight are not in them yet).
    pub fn so_far(&self) -> LoadReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub async fn stop(self) -> LoadReport {
        self.stop_with_outcomes().await.0
    }

    /// As `stop`, with every request's outcome, so that a test can count the requests sent
    /// in any span of time.
    pub async fn stop_with_outcomes(self) -> (LoadReport, Vec<Outcome>) {
        let _ = self.stop.send(true);
        let mut requests = self.schedule.await.expect("the load's schedule");
        while requests.join_next().await.is_some() {}
        let report = self.report.lock().expect("load report").clone();
        let outcomes = self.outcomes.lock().expect("load outcomes").clone();
        (report, outcomes)
    }
}

async fn one(
    spec: Arc<LoadSpec>,
    kind: Kind,
    report: Arc<Mutex<LoadReport>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    began: tokio::time::Instant,
) {
    let sent = tokio::time::Instant::now();
    let sent_at = sent.duration_since(began);
    let path = match kind {
        Kind::Short => &spec.short_path,
        Kind::Stream => &spec.stream_path,
    };
    if let Ok(mut r) = report.lock() {
        match kind {
            Kind::Short => r.sent += 1,
            Kind::Stream => r.streams_sent += 1,
        }
    }
    let outcome = tokio::time::timeout(
        spec.timeout,
        crate::http::send(spec.target, "GET", path, &[], Bytes::new()),
    )
    .await;
    let Ok(mut r) = report.lock() else { return };
    let (ending, failure) = match (&kind, outcome) {
        (_, Err(_)) => (
            Ending::Lost,
            Some(format!("{path}: no answer in {:?}", spec.timeout)),
        ),
        (_, Ok(Err(error))) => (Ending::Lost, Some(format!("{path}: {error}"))),
        (Kind::Short, Ok(Ok(reply))) if reply.status == 200 => {
            r.succeeded += 1;
            (Ending::Succeeded, None)
        }
        (Kind::Short, Ok(Ok(reply)))
            if reply.status == 503 && &reply.body[..] == b"queue full\n" =>
        {
            r.refused += 1;
            (Ending::Refused, None)
        }
        (Kind::Short, Ok(Ok(reply)))
            if reply.status == 503 && &reply.body[..] == b"app unavailable\n" =>
        {
            r.unreachable += 1;
            (
                Ending::Unreachable,
                Some(format!("{path}: 503 app unavailable")),
            )
        }
        (Kind::Stream, Ok(Ok(reply)))
            if reply.status == 200
                && String::from_utf8_lossy(&reply.body).contains(&spec.stream_last_event) =>
        {
            r.streams_whole += 1;
            (Ending::Succeeded, None)
        }
        (_, Ok(Ok(reply))) => (
            Ending::Lost,
            Some(format!(
                "{path}: {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(80)])
            )),
        ),
    };
    if let Ok(mut outcomes) = outcomes.lock() {
        outcomes.push(Outcome {
            sent,
            stream: matches!(kind, Kind::Stream),
            ending,
        });
    }
    if let Some(failure) = failure {
        match kind {
            Kind::Short => r.lost += 1,
            Kind::Stream => r.streams_cut += 1,
        }
        if r.failures.len() < 5 {
            // The wall clock too, to find the moment in the cluster's and operators' logs.
            r.failures.push(format!(
                "{failure} (sent at {:.1} s, failed at {})",
                sent_at.as_secs_f64(),
                k8s_openapi::jiff::Timestamp::now()
            ));
        }
    }
}
