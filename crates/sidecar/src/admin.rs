//! The admin port: the queue contract (`docs/sidecar-contract.md`), Prometheus metrics, health,
//! the drain trigger and the report endpoint.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::drain::{Drain, Phase};
use crate::limiter::Limiter;
use crate::proxy::Stats;
use crate::server_builder;
use crate::source::Source;
use crate::source::report::Report;
use asyncpool_contract::queue::{
    QueueSnapshot, Scope, WATCH_HEARTBEAT, WATCH_MIN_INTERVAL, moves_at_once, on_the_clock,
    watch_query,
};
/// Bound on a report's body and on the time to send it.
const MAX_REPORT_BYTES: usize = 4096;
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

type AdminBody =
    Either<Full<Bytes>, StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>>;

pub struct Admin {
    pub source: Source,
    pub drain: Arc<Drain>,
    pub limiter: Arc<Limiter>,
    pub stats: Arc<Stats>,
    pub drain_token: Option<String>,
    /// How long `GET /wait-for-drain` waits at most.
    pub drain_wait: Duration,
    /// `GET /wait-for-drain` requests not answered yet.
    pub waiters: AtomicUsize,
    /// The app that the serving port proxies to, when the pod serves HTTP (the `proxy` source):
    /// the pod is ready only while it accepts connections. A worker fed by reports or Redis may
    /// serve nothing, so then readiness is the sidecar's alone.
    pub app_readiness: Option<String>,
}

/// Counts a `/wait-for-drain` request while it waits, even if its client goes away.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long `/readyz` waits for the app to accept a connection (the kubelet's probe waits 1 s).
const APP_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, header_timeout: Duration) {
        let builder = server_builder(header_timeout);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let admin = Arc::clone(&self);
            let connection = builder.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.route(request, peer).await) }
                }),
            );
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }

    /// Ready unless draining, and, for a pod that serves HTTP, once its app accepts connections:
    /// a pod whose app has not bound its port yet (or has died) gets no traffic to answer 502 to.
    async fn readyz(&self) -> Response<AdminBody> {
        if self.drain.is_draining() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if let Some(app) = &self.app_readiness {
            let connected =
                tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await;
            if !matches!(connected, Ok(Ok(_))) {
                let mut response = full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the app does not accept connections on {app}\n"),
                );
                set_type(&mut response, "text/plain; charset=utf-8");
                return response;
            }
        }
        plain(StatusCode::OK, "ready\n")
    }

    /// The contract's figures now, with the drain state; an error means missing data.
    pub fn snapshot(&self) -> Result<QueueSnapshot, String> {
        let mut snapshot = self.source.snapshot()?;
        snapshot.draining = self.drain.is_draining();
        Ok(snapshot)
    }

    async fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let path = request.uri().path();
        let method = request.method();
        match (path, method) {
            ("/queue", &Method::GET) => match watch_query(request.uri().query()) {
                Ok(None) => self.queue(),
                Ok(Some(pace)) => self.watch(pace),
                Err(error) => json(StatusCode::BAD_REQUEST, error_line(&error)),
            },
            ("/metrics", &Method::GET) => {
                let mut response = full(StatusCode::OK, self.metrics());
                set_type(&mut response, "text/plain; version=0.0.4; charset=utf-8");
                response
            }
            ("/livez", &Method::GET) => plain(StatusCode::OK, "ok\n"),
            ("/readyz", &Method::GET) => self.readyz().await,
            ("/drain", &Method::POST) => self.post_drain(&request, peer),
            ("/wait-for-drain", &Method::GET) => self.wait_for_drain().await,
            ("/report", &Method::POST) => self.post_report(request, peer).await,
            ("/queue" | "/metrics" | "/livez" | "/readyz" | "/wait-for-drain", _) => {
                method_not_allowed("GET")
            }
            ("/drain" | "/report", _) => method_not_allowed("POST"),
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn queue(&self) -> Response<AdminBody> {
        match self.snapshot() {
            Ok(snapshot) => json(StatusCode::OK, snapshot_line(&snapshot)),
            Err(reason) => json(StatusCode::SERVICE_UNAVAILABLE, error_line(&reason)),
        }
    }

    /// One JSON object per line: at once, then on every change (coalesced to one line per
    /// [`WATCH_MIN_INTERVAL`]), and at least every [`WATCH_HEARTBEAT`]. With a `pace`, a change
    /// that does not move the scaler ([`moves_at_once`]) waits up to that long, coalesced with
    /// the changes after it: a busy pod's counters move with every request. Held lines and
    /// heartbeats go out [`on_the_clock`], with every other sidecar's.
    fn watch(self: Arc<Self>, pace: Option<Duration>) -> Response<AdminBody> {
        struct Watch {
            admin: Arc<Admin>,
            source: tokio::sync::watch::Receiver<u64>,
            phase: tokio::sync::watch::Receiver<Phase>,
            last_sent: Option<(Instant, Result<QueueSnapshot, String>)>,
        }
        let state = Watch {
            source: self.source.subscribe(),
            phase: self.drain.subscribe(),
            admin: self,
            last_sent: None,
        };
        let lines = futures::stream::unfold(state, move |mut watch| async move {
            if let Some((last, sent)) = &watch.last_sent {
                let mut held = false;
                loop {
                    let earliest = (*last + WATCH_MIN_INTERVAL).into_std();
                    let due = Instant::from_std(match pace {
                        Some(pace) if held => on_the_clock(earliest, pace),
                        _ => on_the_clock(earliest, WATCH_HEARTBEAT),
                    });
                    tokio::select! {
                        changed = watch.source.changed() => changed.ok()?,
                        changed = watch.phase.changed() => changed.ok()?,
                        _ = tokio::time::sleep_until(due) => break,
                    }
                    if pace.is_none() || moves_at_once(Some(sent), &watch.admin.snapshot()) {
                        tokio::time::sleep_until(*last + WATCH_MIN_INTERVAL).await;
                        break;
                    }
                    // Seen: the next line carries it, at the pace at the latest.
                    watch.source.borrow_and_update();
                    watch.phase.borrow_and_update();
                    held = true;
                }
            }
            // Everything up to now goes into this line.
            watch.source.borrow_and_update();
            watch.phase.borrow_and_update();
            let snapshot = watch.admin.snapshot();
            let line = match &snapshot {
                Ok(snapshot) => snapshot_line(snapshot),
                Err(reason) => error_line(reason),
            };
            watch.last_sent = Some((Instant::now(), snapshot));
            Some((Ok(Frame::data(line)), watch))
        });
        let mut response = Response::new(Either::Right(StreamBody::new(
            Box::pin(lines) as BoxStream<'static, _>
        )));
        set_type(&mut response, "application/x-ndjson");
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn metrics(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP asyncpool_sidecar_{name} {help}");
            let _ = writeln!(out, "# TYPE asyncpool_sidecar_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "asyncpool_sidecar_{name}{labels} {value}");
            }
        };
        let snapshot = self.snapshot();
        metric(
            "source_up",
            "gauge",
            "1 when the queue figures are available, 0 when they are missing data.",
            &[("", if snapshot.is_ok() { 1.0 } else { 0.0 })],
        );
        if let Ok(s) = &snapshot {
            let scope = match s.scope {
                Scope::Pod => "{scope=\"pod\"}",
                Scope::Pool => "{scope=\"pool\"}",
            };
            metric(
                "queued",
                "gauge",
                "Requests waiting for a slot.",
                &[(scope, s.queued as f64)],
            );
            metric(
                "in_flight",
                "gauge",
                "Requests the app is serving now.",
                &[(scope, s.in_flight as f64)],
            );
            metric(
                "capacity",
                "gauge",
                "Requests admitted into the app at once.",
                &[(scope, s.capacity as f64)],
            );
            metric(
                "arrived_total",
                "counter",
                "Requests that arrived.",
                &[(scope, s.arrived_total as f64)],
            );
            metric(
                "completed_total",
                "counter",
                "Requests that left, served or not.",
                &[(scope, s.completed_total as f64)],
            );
            metric(
                "busy_seconds_total",
                "counter",
                "Seconds requests spent in the app.",
                &[(scope, s.busy_seconds_total)],
            );
            metric(
                "oldest_in_flight_seconds",
                "gauge",
                "Age of the oldest request in the app.",
                &[(scope, s.oldest_in_flight_seconds)],
            );
        }
        metric(
            "draining",
            "gauge",
            "1 once a drain started.",
            &[("", if self.drain.is_draining() { 1.0 } else { 0.0 })],
        );
        let outcomes = self.limiter.outcomes();
        metric(
            "refused_total",
            "counter",
            "Requests answered 503 at once by the proxy.",
            &[
                ("{reason=\"queue_full\"}", outcomes.refused_full as f64),
                ("{reason=\"draining\"}", outcomes.refused_closed as f64),
            ],
        );
        let timeouts = self.stats.queue_timeouts.load(Ordering::Relaxed);
        metric(
            "abandoned_total",
            "counter",
            "Requests that left the proxy's queue before admission.",
            &[
                ("{reason=\"queue_timeout\"}", timeouts as f64),
                (
                    "{reason=\"client_gone\"}",
                    outcomes.abandoned.saturating_sub(timeouts) as f64,
                ),
            ],
        );
        metric(
            "body_timeouts_total",
            "counter",
            "Requests answered 408 (or cut) because their body stopped arriving for --body-timeout.",
            &[("", self.stats.body_timeouts.load(Ordering::Relaxed) as f64)],
        );
        metric(
            "upstream_errors_total",
            "counter",
            "Requests the app could not take: unreachable (503) or closed without a response (502).",
            &[(
                "",
                self.stats.upstream_errors.load(Ordering::Relaxed) as f64,
            )],
        );
        out
    }

    /// For the app container's preStop hook: answers once this pod has drained, so that the app
    /// gets its SIGTERM only after the last admitted request. It starts nothing itself (kubelet
    /// calls it from the node's address): the sidecar's own SIGTERM, sent at the same time, or
    /// an earlier `POST /drain` does.
    async fn wait_for_drain(&self) -> Response<AdminBody> {
        let _waiting = Waiting::new(&self.waiters);
        let deadline = Instant::now() + self.drain_wait;
        let mut phase = self.drain.subscribe();
        // A statement of its own: the borrow that `wait_for` returns must not live across an await.
        let started = matches!(
            tokio::time::timeout_at(deadline, phase.wait_for(|phase| *phase != Phase::Serving))
                .await,
            Ok(Ok(_))
        );
        if started && self.drain.wait_drained(deadline).await {
            plain(StatusCode::OK, "drained\n")
        } else {
            plain(StatusCode::GATEWAY_TIMEOUT, "not drained in time\n")
        }
    }

    /// Before exiting: lets pending `/wait-for-drain` answers go out (bounded).
    pub async fn release_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.waiters.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The answers are built; give the connections a moment to write them.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn post_drain(
        self: &Arc<Self>,
        request: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let authorized = is_loopback(peer.ip())
            || self.drain_token.as_deref().is_some_and(|token| {
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
            });
        if !authorized {
            tracing::warn!(%peer, "refused a drain request: not loopback and no valid token");
            return plain(
                StatusCode::FORBIDDEN,
                "drain is allowed from loopback or with the drain token\n",
            );
        }
        let started = self.drain.start("POST /drain");
        json(
            StatusCode::ACCEPTED,
            Bytes::from(format!("{{\"draining\":true,\"started\":{started}}}\n")),
        )
    }

    async fn post_report(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<AdminBody> {
        let Source::Report(report_source) = &self.source else {
            return plain(
                StatusCode::CONFLICT,
                "this sidecar does not run with --source report\n",
            );
        };
        if !is_loopback(peer.ip()) {
            return plain(
                StatusCode::FORBIDDEN,
                "reports are accepted from loopback only\n",
            );
        }
        let body = Limited::new(request.into_body(), MAX_REPORT_BYTES).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(_)) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "report too large or cut short\n",
                );
            }
            Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "report body too slow\n"),
        };
        match Report::parse(&body) {
            Ok(report) => {
                report_source.apply(report);
                self.queue()
            }
            Err(error) => json(StatusCode::BAD_REQUEST, error_line(&error.to_string())),
        }
    }
}

/// Loopback in the wide sense: any 127.0.0.0/8 address (pods in the test cluster listen on
/// 127.x addresses) and ::1, including IPv4-mapped IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn snapshot_line(snapshot: &QueueSnapshot) -> Bytes {
    let mut line = serde_json::to_vec(snapshot).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(reason: &str) -> Bytes {
    let mut line = serde_json::to_vec(&serde_json::json!({ "error": reason })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

fn set_type(response: &mut Response<AdminBody>, content_type: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}

fn plain(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut response = full(status, body);
    set_type(&mut response, "text/plain; charset=utf-8");
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<AdminBody> {
    let mut response = full(status, body);
    set_type(&mut response, "application/json");
    response
}

fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_all_of_127_slash_8() {
        for ip in ["127.0.0.1", "127.20.0.7", "::1", "::ffff:127.0.0.9"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "0.0.0.0",
            "128.0.0.1",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
