//! The sidecar contract of many pods from one process, for the scale benchmark: one listener on
//! the admin port of every local address, which tells pods apart by the address each connection
//! came to (kwok gives every pod its own address: 127.20.x.y, or 10.244.x.y made local in the
//! scale benchmark's cluster). It answers `GET /queue`, follows
//! `GET /queue?watch=true` with a line at each change and a heartbeat as a sidecar does, and
//! serves a small `/metrics`, with the load the harness sets per pod address. With traffic, a
//! pod's load is requests of a fixed service time passing through it: its counters move all the
//! time and its watch streams write at the pace the reader asks for (every 20 ms without one),
//! as a busy sidecar's do. It is not a sidecar (no proxy, no admission, no drain): only what the
//! operator reads, at the cost of a task and a socket per watching reader, so that ten thousand
//! pods fit in one process.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use asyncpool_contract::queue::{
    CONTRACT_VERSION, QueueSnapshot, Scope, WATCH_MIN_INTERVAL, on_the_clock, watch_query,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 16_384;
/// Longest request head read; anything longer is answered 431 and closed.
const MAX_HEAD: usize = 4096;
/// A client that sends no complete request head in this time is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts of what was served, for the benchmark's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// `GET /queue` answered.
    pub polls: u64,
    /// Watch streams opened.
    pub watches: u64,
    /// Lines sent on watch streams (changes and heartbeats).
    pub lines: u64,
    /// Requests for an address no pod has (answered 503, as a sidecar that is not up yet).
    pub unknown: u64,
}

#[derive(Default)]
struct Counters {
    polls: AtomicU64,
    watches: AtomicU64,
    lines: AtomicU64,
    unknown: AtomicU64,
}

/// One pod's load since it last changed, and its counters then.
#[derive(Debug, Clone, Copy)]
struct PodLoad {
    load: u64,
    since: Instant,
    /// Where in its wobble the pod starts: pods wobble independently of each other, as
    /// independent requests do, so a pool's sum varies by about the square root of its pods,
    /// not by their number.
    phase: usize,
    arrived: f64,
    busy_seconds: f64,
}

impl PodLoad {
    fn new(load: u64, address: IpAddr) -> Self {
        let bits = match address {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) as u64,
        };
        Self {
            load,
            since: Instant::now(),
            // A multiplicative hash: neighbouring addresses land on unrelated phases.
            phase: (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 62) as usize,
            arrived: 0.0,
            busy_seconds: 0.0,
        }
    }

    /// The figures at `now`: with traffic of `service` each, `load` requests are in the app on
    /// average, so `load / service` arrive and complete every second (Little's law). The
    /// requests in the app wobble by one around it from one half second to the next, as
    /// traffic's do: nearly every line differs from the last, by less than moves a scaler.
    fn snapshot(&self, now: Instant, service: Option<Duration>) -> QueueSnapshot {
        let capacity = 10;
        let elapsed = now.duration_since(self.since);
        let load = match service {
            Some(_) if self.load > 0 => {
                let half_seconds = (elapsed.as_millis() / 500) as usize;
                (self.load + [1, 2, 1, 0][(half_seconds + self.phase) % 4]).saturating_sub(1)
            }
            _ => self.load,
        };
        let (arrived, busy_seconds) = match service {
            Some(service) => {
                let elapsed = elapsed.as_secs_f64();
                (
                    self.arrived + self.load as f64 * elapsed / service.as_secs_f64(),
                    self.busy_seconds + self.load as f64 * elapsed,
                )
            }
            None => (self.arrived, self.busy_seconds),
        };
        QueueSnapshot {
            version: CONTRACT_VERSION,
            queued: load.saturating_sub(capacity),
            in_flight: load.min(capacity),
            capacity,
            arrived_total: arrived as u64,
            completed_total: arrived as u64,
            busy_seconds_total: busy_seconds,
            oldest_in_flight_seconds: 0.0,
            draining: false,
            scope: Scope::Pod,
        }
    }

    /// A new load from now on, the counters carried over.
    fn changed_to(&self, load: u64, service: Option<Duration>) -> Self {
        let now = Instant::now();
        let at_change = self.snapshot(now, service);
        Self {
            load,
            since: now,
            phase: self.phase,
            arrived: at_change.arrived_total as f64,
            busy_seconds: at_change.busy_seconds_total,
        }
    }
}

struct Shared {
    /// Each pod address's load; a watch stream follows its receiver.
    pods: RwLock<HashMap<IpAddr, watch::Sender<PodLoad>>>,
    heartbeat: Duration,
    /// Each request's time in the app when the pods carry traffic; `None`: counters stand still.
    service: Option<Duration>,
    counters: Counters,
}

/// A running set of fake sidecars; stops serving when dropped.
pub struct FakeSidecars {
    shared: Arc<Shared>,
    address: SocketAddr,
    accept: JoinHandle<()>,
}

impl FakeSidecars {
    /// Listens on `bind` (the wildcard address and the sidecar's admin port for the benchmark,
    /// so that every pod address reaches it) and sends a watch heartbeat every `heartbeat`. With
    /// a `service` time, each pod's load is traffic of requests that long.
    pub async fn start(
        bind: SocketAddr,
        heartbeat: Duration,
        service: Option<Duration>,
    ) -> io::Result<Self> {
        // Every reader of a restarted operator connects at once: at the default backlog of 1,024
        // the kernel drops the SYNs past it, and those readers wait a second for a retry.
        let socket = match bind {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(bind)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            pods: RwLock::default(),
            heartbeat,
            service,
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            shared,
            address,
            accept,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sets the load the pod at `ip` reports (queued plus in flight); a new address starts
    /// being served. Watch streams of that pod send a line at once when the load changed.
    pub fn set_load(&self, ip: IpAddr, load: u64) {
        let mut pods = self
            .shared
            .pods
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match pods.get(&ip) {
            Some(sender) => {
                sender.send_if_modified(|current| {
                    let changed = current.load != load;
                    if changed {
                        *current = current.changed_to(load, self.shared.service);
                    }
                    changed
                });
            }
            None => {
                pods.insert(ip, watch::channel(PodLoad::new(load, ip)).0);
            }
        }
    }

    /// Stops serving the pod at `ip`: its watch streams end, later requests get 503.
    pub fn remove(&self, ip: IpAddr) {
        self.shared
            .pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ip);
    }

    /// How many pod addresses are served.
    pub fn pods(&self) -> usize {
        self.shared
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// What was served so far.
    pub fn served(&self) -> Served {
        let c = &self.shared.counters;
        Served {
            polls: c.polls.load(Ordering::Relaxed),
            watches: c.watches.load(Ordering::Relaxed),
            lines: c.lines.load(Ordering::Relaxed),
            unknown: c.unknown.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FakeSidecars {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every watch stream: their senders go with the map.
        self.shared
            .pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, shared.clone()));
            }
            // Out of file descriptors, most likely: wait rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The request line's target, once a whole head has arrived; `None` for a head that is too
/// long, cut short or not HTTP.
async fn read_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(256);
    let mut buffer = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET").then(|| target.to_owned())
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let target = match tokio::time::timeout(HEAD_TIMEOUT, read_target(&mut stream)).await {
        Ok(Some(target)) => target,
        _ => {
            let _ = stream
                .write_all(&response("400 Bad Request", "text/plain", "bad request\n"))
                .await;
            return;
        }
    };
    let load = shared
        .pods
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&local.ip())
        .map(watch::Sender::subscribe);
    let Some(mut load) = load else {
        shared.counters.unknown.fetch_add(1, Ordering::Relaxed);
        let _ = stream
            .write_all(&response(
                "503 Service Unavailable",
                "text/plain",
                "no such pod\n",
            ))
            .await;
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let Ok(watch) = watch_query(Some(query)) else {
        // An invalid pace, refused as a sidecar does.
        let _ = stream
            .write_all(&response("400 Bad Request", "text/plain", "bad pace\n"))
            .await;
        return;
    };
    match path {
        "/queue" if watch.is_some() => {
            let pace = watch.flatten().unwrap_or(WATCH_MIN_INTERVAL);
            shared.counters.watches.fetch_add(1, Ordering::Relaxed);
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                let now = Instant::now();
                let current = *load.borrow_and_update();
                let line = format!(
                    "{}\n",
                    snapshot_json(&current.snapshot(now, shared.service))
                );
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                shared.counters.lines.fetch_add(1, Ordering::Relaxed);
                // Moving counters are written at the pace, a new load at once, both on the
                // clock as a sidecar does.
                let every = match shared.service {
                    Some(_) if current.load > 0 => pace,
                    _ => shared.heartbeat,
                };
                let next =
                    Instant::from_std(on_the_clock((now + WATCH_MIN_INTERVAL).into_std(), every));
                tokio::select! {
                    changed = load.changed() => {
                        if changed.is_err() {
                            // The pod is gone: end the stream as a stopping sidecar does.
                            let _ = stream.write_all(b"0\r\n\r\n").await;
                            return;
                        }
                        tokio::time::sleep_until(now + WATCH_MIN_INTERVAL).await;
                    }
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
        }
        "/queue" => {
            shared.counters.polls.fetch_add(1, Ordering::Relaxed);
            let body = snapshot_json(&load.borrow().snapshot(Instant::now(), shared.service));
            let _ = stream
                .write_all(&response("200 OK", "application/json", &body))
                .await;
        }
        "/metrics" => {
            let body = format!(
                "# TYPE asyncpool_sidecar_queue_load gauge\nasyncpool_sidecar_queue_load {}\n",
                load.borrow().load
            );
            let _ = stream
                .write_all(&response("200 OK", "text/plain; version=0.0.4", &body))
                .await;
        }
        _ => {
            let _ = stream
                .write_all(&response("404 Not Found", "text/plain", "not found\n"))
                .await;
        }
    }
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn snapshot_json(snapshot: &QueueSnapshot) -> String {
    serde_json::to_string(snapshot).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    async fn fake() -> FakeSidecars {
        FakeSidecars::start(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            Duration::from_secs(60),
            None,
        )
        .await
        .expect("listen")
    }

    fn at(fake: &FakeSidecars, ip: [u8; 4]) -> SocketAddr {
        SocketAddr::new(IpAddr::from(ip), fake.address().port())
    }

    async fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let reply = crate::http::send(address, "GET", path, &[], bytes::Bytes::new())
            .await
            .expect("an answer");
        (
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        )
    }

    #[tokio::test]
    async fn each_address_answers_its_own_pods_load() {
        let fake = fake().await;
        fake.set_load(IpAddr::from([127, 0, 0, 2]), 3);
        fake.set_load(IpAddr::from([127, 0, 0, 3]), 25);
        let (status, body) = get(at(&fake, [127, 0, 0, 2]), "/queue").await;
        assert_eq!(status, 200);
        assert_eq!(
            QueueSnapshot::parse(body.as_bytes()).expect("valid").load(),
            3
        );
        let (_, body) = get(at(&fake, [127, 0, 0, 3]), "/queue").await;
        let snapshot = QueueSnapshot::parse(body.as_bytes()).expect("valid");
        assert_eq!((snapshot.in_flight, snapshot.queued), (10, 15));
        // An address no pod has is a sidecar that is not up: refused, never a zero.
        let (status, _) = get(at(&fake, [127, 0, 0, 4]), "/queue").await;
        assert_eq!(status, 503);
        let (status, body) = get(at(&fake, [127, 0, 0, 2]), "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("asyncpool_sidecar_queue_load 3"), "{body}");
        assert_eq!(
            fake.served(),
            Served {
                polls: 2,
                watches: 0,
                lines: 0,
                unknown: 1
            }
        );
    }

    #[tokio::test]
    async fn a_watch_stream_sends_each_change_and_ends_with_its_pod() {
        let fake = fake().await;
        let ip = IpAddr::from([127, 0, 0, 5]);
        fake.set_load(ip, 1);
        let mut stream = TcpStream::connect(at(&fake, [127, 0, 0, 5]))
            .await
            .expect("connect");
        stream
            .write_all(b"GET /queue?watch=true HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut received = String::new();
        read_until(&mut stream, &mut received, "\"inFlight\":1").await;
        fake.set_load(ip, 7);
        read_until(&mut stream, &mut received, "\"inFlight\":7").await;
        // The same load again is no change: no line is sent for it.
        fake.set_load(ip, 7);
        fake.remove(ip);
        read_until(&mut stream, &mut received, "0\r\n\r\n").await;
        assert_eq!(received.matches("inFlight").count(), 2, "{received}");
        assert_eq!(fake.served().watches, 1);
        assert_eq!(fake.served().lines, 2);
    }

    #[tokio::test]
    async fn with_traffic_the_counters_move_and_a_stream_writes_at_its_pace() {
        let fake = FakeSidecars::start(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            Duration::from_secs(60),
            Some(Duration::from_millis(100)),
        )
        .await
        .expect("listen");
        let ip = IpAddr::from([127, 0, 0, 6]);
        // 5 requests of 100 ms always in the app: 50 arrive a second.
        fake.set_load(ip, 5);
        let mut stream = TcpStream::connect(at(&fake, [127, 0, 0, 6]))
            .await
            .expect("connect");
        stream
            .write_all(b"GET /queue?watch=true&pace=200ms HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut received = String::new();
        read_until(&mut stream, &mut received, "inFlight").await;
        let start = Instant::now();
        let mut buffer = [0u8; 1024];
        while received.matches("inFlight").count() < 6 {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "stream closed: {received}");
            received.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        let elapsed = start.elapsed();
        let arrived: Vec<u64> = received
            .split("\"arrivedTotal\":")
            .skip(1)
            .filter_map(|rest| rest.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(arrived.len(), 6, "{received}");
        assert!(arrived.windows(2).all(|w| w[0] < w[1]), "{arrived:?}");
        // Five lines after the first at the 200 ms pace (the first of them on the clock, which may
        // be soon), not the 20 ms of an unpaced stream.
        assert!(elapsed >= Duration::from_millis(750), "{elapsed:?}");
        let rate = (arrived[5] - arrived[0]) as f64 / elapsed.as_secs_f64();
        assert!((35.0..=60.0).contains(&rate), "{rate:.1} arrivals/s of 50");
        // A new load is written at once, not at the pace.
        fake.set_load(ip, 0);
        let changed = Instant::now();
        read_until(&mut stream, &mut received, "\"inFlight\":0").await;
        assert!(changed.elapsed() < Duration::from_millis(150));
    }

    /// Reads from `stream` into `received` until it holds `want`.
    async fn read_until(stream: &mut TcpStream, received: &mut String, want: &str) {
        let mut buffer = [0u8; 1024];
        while !received.contains(want) {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "stream closed before {want:?}: {received}");
            received.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
}
