//! The sidecar in proxy mode against a real uvicorn app (tests/apps/slow_app.py).
//! Needs `eval "$(scripts/test-deps)"` (uvicorn in a venv).

use std::time::{Duration, Instant};

use asyncpool_testkit::sidecar::*;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UP: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_never_sees_more_than_concurrency() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "4"]).await;
    let requests: Vec<_> = (0..40)
        .map(|i| tokio::spawn(get(sidecar.addr, &format!("/sleep?s=0.2&id={i}"))))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
    let stats = app.stats().await;
    assert_eq!(stats["served"], 40);
    assert_eq!(
        stats["max"], 4,
        "the app saw more (or fewer) than 4 requests at once: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_start_in_arrival_order() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "1"]).await;
    let mut requests = Vec::new();
    for i in 0..8 {
        requests.push(tokio::spawn(get(
            sidecar.addr,
            &format!("/sleep?s=0.1&id={i}"),
        )));
        // The next request is sent only once the sidecar counted this one: a known arrival order.
        wait_until("the request to arrive", UP, || async {
            sidecar.queue().await["arrivedTotal"] == i + 1
        })
        .await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
    let order: Vec<String> = app.stats().await["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(
        order, expected,
        "the app did not start the requests in arrival order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_answers_503_with_retry_after() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "1", "--max-queue", "2"]).await;
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get(sidecar.addr, "/sleep?s=1.5")))
        .collect();
    wait_until("1 in flight and 2 queued", UP, || async {
        let q = sidecar.queue().await;
        q["inFlight"] == 1 && q["queued"] == 2
    })
    .await;
    let start = Instant::now();
    let refused = get(sidecar.addr, "/sleep?s=0").await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers.get("retry-after").unwrap(), "1");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the 503 was not fast: {:?}",
        start.elapsed()
    );
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics.contains("asyncpool_sidecar_refused_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_the_timeout_gets_503() {
    let app = App::start().await;
    let sidecar =
        Sidecar::in_front_of(&app, &["--concurrency", "1", "--queue-timeout", "300ms"]).await;
    let long = tokio::spawn(get(sidecar.addr, "/sleep?s=2"));
    wait_until("the long request to run", UP, || async {
        sidecar.queue().await["inFlight"] == 1
    })
    .await;
    let start = Instant::now();
    let timed_out = get(sidecar.addr, "/sleep?s=0&id=late").await.unwrap();
    let waited = start.elapsed();
    assert_eq!(timed_out.status, 503);
    assert!(timed_out.headers.contains_key("retry-after"));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "the queue timeout fired after {waited:?}"
    );
    assert_eq!(long.await.unwrap().unwrap().status, 200);
    let order = app.stats().await["order"].to_string();
    assert!(
        !order.contains("late"),
        "the timed-out request reached the app: {order}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_left_is_cancelled() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "1"]).await;
    let long = tokio::spawn(get(sidecar.addr, "/sleep?s=1.5"));
    wait_until("the long request to run", UP, || async {
        sidecar.queue().await["inFlight"] == 1
    })
    .await;
    let mut gone = TcpStream::connect(sidecar.addr).await.unwrap();
    gone.write_all(b"GET /sleep?s=0&id=gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("the request to be queued", UP, || async {
        sidecar.queue().await["queued"] == 1
    })
    .await;
    drop(gone);
    wait_until("the queue to empty", Duration::from_secs(1), || async {
        sidecar.queue().await["queued"] == 0
    })
    .await;
    assert_eq!(long.await.unwrap().unwrap().status, 200);
    let queue = sidecar.queue().await;
    assert_eq!(queue["completedTotal"], 2, "{queue}");
    let order = app.stats().await["order"].to_string();
    assert!(
        !order.contains("gone"),
        "the cancelled request reached the app: {order}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/stream?n=5&interval=0.3")
        .header("host", "app")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let start = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((start.elapsed(), data));
        }
    }
    let first = &chunks[0];
    let end = chunks.last().unwrap().0;
    assert!(first.1.starts_with(b"data: 0"), "{:?}", first.1);
    // The app sleeps 0.3 s after each of 5 events: the body lasts ≥ 1.5 s; the first event
    // must not wait for it.
    assert!(
        end - first.0 >= Duration::from_millis(1000),
        "first chunk at {:?}, end at {end:?}: the response was buffered",
        first.0
    );
    let all: Vec<u8> = chunks.iter().flat_map(|(_, data)| data.to_vec()).collect();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        (0..5).map(|i| format!("data: {i}\n\n")).collect::<String>()
    );
}

/// A minimal WebSocket client: handshake, one masked text frame, one frame back.
async fn websocket_echo(addr: std::net::SocketAddr, message: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = message.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x81, "not a final text frame");
    let mut echoed = vec![0u8; (header[1] & 0x7f) as usize];
    stream.read_exact(&mut echoed).await.unwrap();
    (stream, String::from_utf8(echoed).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let (socket, echoed) = websocket_echo(sidecar.addr, "hello through the sidecar").await;
    assert_eq!(echoed, "hello through the sidecar");
    // An open WebSocket holds its slot, like any request the app is still serving.
    assert_eq!(sidecar.queue().await["inFlight"], 1);
    drop(socket);
    wait_until("the slot to be released", UP, || async {
        sidecar.queue().await["inFlight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_forwarded_headers_and_drops_hop_by_hop_ones() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = request_with(
        sidecar.addr,
        "GET",
        "/sleep?s=0",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "keep-alive, x-drop"),
            ("x-drop", "1"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let seen = reply.json();
    assert_eq!(seen["xff"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["xfp"], "http");
    assert_eq!(
        seen["xdrop"],
        serde_json::Value::Null,
        "a header named in Connection was forwarded"
    );
    assert_eq!(seen["host"], sidecar.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_streamed_not_buffered() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 512; // 128 MiB
    let chunks = futures::stream::iter(0..CHUNKS).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![7u8; CHUNK])))
    });
    let stream = TcpStream::connect(sidecar.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/upload")
        .header("host", "app")
        .header("content-length", (CHUNK * CHUNKS).to_string())
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["bytes"], CHUNK * CHUNKS);
    let (peak_kib, _) = sidecar.proc.memory_kib();
    assert!(
        peak_kib < 40 * 1024,
        "the sidecar's peak RSS reached {peak_kib} KiB for a 128 MiB upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_figures_match_the_load_sent() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "5"]).await;
    let requests: Vec<_> = (0..30)
        .map(|_| tokio::spawn(get(sidecar.addr, "/sleep?s=1")))
        .collect();
    wait_until("30 arrivals", UP, || async {
        sidecar.queue().await["arrivedTotal"] == 30
    })
    .await;
    let under_load = sidecar.queue().await;
    let count = |field: &str| under_load[field].as_u64().unwrap();
    assert_eq!(count("capacity"), 5);
    assert_eq!(count("inFlight"), 5, "{under_load}");
    assert_eq!(
        count("queued") + count("inFlight") + count("completedTotal"),
        30,
        "{under_load}"
    );
    assert!(under_load["oldestInFlightSeconds"].as_f64().unwrap() > 0.0);
    assert_eq!(under_load["draining"], false);
    assert_eq!(under_load["scope"], "pod");
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
    let done = sidecar.queue().await;
    assert_eq!(
        (done["queued"].as_u64(), done["inFlight"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (
            done["arrivedTotal"].as_u64(),
            done["completedTotal"].as_u64()
        ),
        (Some(30), Some(30))
    );
    let busy = done["busySecondsTotal"].as_f64().unwrap();
    assert!(
        (30.0..40.0).contains(&busy),
        "30 requests of 1 s each, busySecondsTotal {busy}"
    );
    assert_eq!(done["oldestInFlightSeconds"], 0.0);
    assert_eq!(app.stats().await["max"], 5);
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    for line in [
        "asyncpool_sidecar_arrived_total{scope=\"pod\"} 30",
        "asyncpool_sidecar_completed_total{scope=\"pod\"} 30",
        "asyncpool_sidecar_queued{scope=\"pod\"} 0",
        "asyncpool_sidecar_capacity{scope=\"pod\"} 5",
        "asyncpool_sidecar_draining 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
}

/// Reads the watch stream line by line.
struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    _sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
}

impl Watch {
    async fn open(admin: std::net::SocketAddr) -> Watch {
        Watch::open_at(admin, "/queue?watch=true").await
    }

    async fn open_at(admin: std::net::SocketAddr, target: &str) -> Watch {
        let stream = TcpStream::connect(admin).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(target)
            .header("host", "admin")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        Watch {
            body: response.into_body(),
            buffer: Vec::new(),
            _sender: sender,
        }
    }

    async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                assert!(asyncpool_contract::queue::QueueSnapshot::parse(&line).is_ok());
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("watch stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_stream_delivers_a_change_within_50_ms() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let mut watch = Watch::open(sidecar.admin).await;
    assert_eq!(watch.next().await["arrivedTotal"], 0);
    let mut latencies = Vec::new();
    for i in 1..=11u64 {
        let start = Instant::now();
        let request = tokio::spawn(get(sidecar.addr, "/sleep?s=0.05"));
        loop {
            let line = watch.next().await;
            if line["arrivedTotal"] == i {
                latencies.push(start.elapsed());
                break;
            }
        }
        assert_eq!(request.await.unwrap().unwrap().status, 200);
        // Quiet again before the next change: each change is then a fresh one, not coalesced.
        loop {
            if watch.next().await["completedTotal"] == i {
                break;
            }
        }
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!("watch delivery latencies: {latencies:?}");
    assert!(
        median < Duration::from_millis(50),
        "median delivery of a change on the watch stream {median:?} (all: {latencies:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_watch_stream_sends_steady_traffic_at_its_pace_and_a_burst_at_once() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "8"]).await;
    let pace = Duration::from_millis(500);
    let mut watch = Watch::open_at(sidecar.admin, "/queue?watch=true&pace=500ms").await;
    assert_eq!(watch.next().await["arrivedTotal"], 0);

    // Steady traffic: one request at a time, so the load only steps between 0 and 1 while
    // the counters move with every request. Unpaced, that is a line every 20 ms.
    let mut traffic = {
        let addr = sidecar.addr;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                assert_eq!(get(addr, "/sleep?s=0.01").await.unwrap().status, 200);
                sent += 1;
            }
            sent
        })
    };
    let mut lines = Vec::new();
    let sent = loop {
        tokio::select! {
            line = watch.next() => lines.push(line),
            sent = &mut traffic => break sent.unwrap(),
        }
    };
    let arrived: Vec<u64> = lines
        .iter()
        .map(|l| l["arrivedTotal"].as_u64().unwrap())
        .collect();
    assert!(
        (2..=6).contains(&lines.len()),
        "2 s of traffic at a 500 ms pace sent {} lines (arrivals {arrived:?}): {lines:?}",
        lines.len()
    );
    assert!(
        arrived.windows(2).all(|w| w[0] < w[1]),
        "each line carries new counters: {arrived:?}"
    );

    // The last completions come at the pace, well before a heartbeat would carry them.
    let done = Instant::now();
    loop {
        let line = watch.next().await;
        if line["completedTotal"].as_u64() == Some(sent) {
            break;
        }
    }
    let flushed = done.elapsed();
    assert!(
        flushed < pace + Duration::from_millis(400),
        "the last counters came after {flushed:?}"
    );

    // A burst moves the load by half the concurrency or more: written at once.
    let start = Instant::now();
    let burst: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(sidecar.addr, "/sleep?s=1")))
        .collect();
    loop {
        if watch.next().await["inFlight"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
    }
    let seen = start.elapsed();
    assert!(
        seen < pace / 2,
        "a burst reached the paced stream after {seen:?}"
    );
    for request in burst {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_with_a_pace_out_of_range_is_refused_with_the_range() {
    let sidecar = Sidecar::start(&["--upstream", "127.0.0.1:9"]).await;
    let answer = get(sidecar.admin, "/queue?watch=true&pace=5s")
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    let body = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(
        body.contains("pace") && body.contains("20ms") && body.contains("2s"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_stream_sends_a_heartbeat() {
    let sidecar = Sidecar::start(&["--upstream", "127.0.0.1:9"]).await;
    let mut watch = Watch::open(sidecar.admin).await;
    watch.next().await;
    // Heartbeats go out on the wall clock's even seconds, every sidecar's together: the next
    // one within 2 s, and at most one in any 2 s after that.
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_millis(2500), watch.next())
            .await
            .expect("no heartbeat in 2.5 s");
        assert_eq!(line["arrivedTotal"], 0);
    }
    let start = Instant::now();
    tokio::time::timeout(Duration::from_millis(2500), watch.next())
        .await
        .expect("no heartbeat in 2.5 s");
    let apart = start.elapsed();
    assert!(
        apart >= Duration::from_millis(1500),
        "heartbeats {apart:?} apart, without a change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_admitted_request() {
    let app = App::start().await;
    let mut sidecar = Sidecar::in_front_of(
        &app,
        &[
            "--concurrency",
            "4",
            "--drain-grace",
            "300ms",
            // The grace ends at 300 ms although the requests below keep coming.
            "--drain-quiet",
            "0",
            "--drain-timeout",
            "20s",
        ],
    )
    .await;
    let load: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(sidecar.addr, "/sleep?s=0.5")))
        .collect();
    wait_until("20 arrivals", UP, || async {
        sidecar.queue().await["arrivedTotal"] == 20
    })
    .await;
    sidecar.proc.signal("TERM");
    wait_until("readiness to drop", UP, || async {
        get(sidecar.admin, "/readyz").await.map(|r| r.status) == Ok(503)
    })
    .await;
    assert_eq!(sidecar.queue().await["draining"], true);
    // Served during the grace, refused after it: 503 with Connection: close (or the port shut).
    let addr = sidecar.addr;
    let served_in_grace = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&served_in_grace);
    wait_until("new requests to be refused", UP, move || {
        let counter = std::sync::Arc::clone(&counter);
        async move {
            match get(addr, "/sleep?s=0").await {
                Ok(reply) if reply.status == 200 => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    false
                }
                Ok(reply) => {
                    reply.status == 503
                        && reply
                            .headers
                            .get("connection")
                            .is_some_and(|v| v == "close")
                }
                Err(_) => true,
            }
        }
    })
    .await;
    for request in load {
        let reply = request
            .await
            .unwrap()
            .expect("an admitted request was lost");
        assert_eq!(reply.status, 200);
    }
    let status = sidecar.proc.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "the sidecar did not exit 0 after draining"
    );
    let in_grace = served_in_grace.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(app.stats().await["served"], 20 + in_grace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_are_served_during_the_drain_grace() {
    let app = App::start().await;
    let mut sidecar = Sidecar::in_front_of(&app, &["--drain-grace", "3s"]).await;
    sidecar.proc.signal("TERM");
    wait_until("readiness to drop", UP, || async {
        get(sidecar.admin, "/readyz").await.map(|r| r.status) == Ok(503)
    })
    .await;
    let reply = get(sidecar.addr, "/sleep?s=0").await.unwrap();
    assert_eq!(reply.status, 200, "a request during the grace was refused");
    let status = sidecar.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

/// A proxy that has not dropped the pod yet (a slow control plane) keeps sending it requests
/// after `--drain-grace`: they are served, and the grace ends once none came for
/// `--drain-quiet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_keep_coming_keep_the_drain_grace_open() {
    let app = App::start().await;
    let quiet = Duration::from_millis(800);
    let mut sidecar = Sidecar::in_front_of(
        &app,
        &[
            "--drain-grace",
            "200ms",
            "--drain-quiet",
            "800ms",
            "--drain-timeout",
            "20s",
        ],
    )
    .await;
    // A keep-alive connection opened before the drain.
    let mut kept = TcpStream::connect(sidecar.addr).await.unwrap();
    sidecar.proc.signal("TERM");
    wait_until("readiness to drop", UP, || async {
        get(sidecar.admin, "/readyz").await.map(|r| r.status) == Ok(503)
    })
    .await;
    let draining_since = Instant::now();
    // Its next request is served and closes it: the client reconnects through the proxies,
    // which route it elsewhere once they have dropped this pod.
    kept.write_all(b"GET /sleep?s=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(UP, kept.read_to_end(&mut answer))
        .await
        .expect("the kept connection was not closed after its answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    // Ten times the least grace of requests, each on a new connection, 100 ms apart.
    let mut last_sent = Instant::now();
    while draining_since.elapsed() < Duration::from_secs(2) {
        last_sent = Instant::now();
        let reply = get(sidecar.addr, "/sleep?s=0").await.unwrap();
        assert_eq!(
            reply.status,
            200,
            "refused {:?} into the drain, while requests kept coming",
            draining_since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = sidecar.proc.wait_exit(UP).await;
    assert_eq!(status.code(), Some(0));
    let quiet_before_exit = last_sent.elapsed();
    assert!(
        quiet_before_exit >= quiet,
        "exited {quiet_before_exit:?} after the last request, before {quiet:?} of quiet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_drain_drains_and_stays_up() {
    let app = App::start().await;
    let mut sidecar =
        Sidecar::in_front_of(&app, &["--drain-grace", "100ms", "--drain-quiet", "0"]).await;
    let wrong_method = get(sidecar.admin, "/drain").await.unwrap();
    assert_eq!(wrong_method.status, 405);
    let reply = request(sidecar.admin, "POST", "/drain", Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["started"], true);
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, 503);
    let addr = sidecar.addr;
    wait_until("new requests to be refused", UP, || async move {
        get(addr, "/sleep?s=0").await.is_ok_and(|r| r.status == 503)
    })
    .await;
    // Past the grace every new connection's request is answered, not dropped unanswered: a 503
    // that closes the connection, so that the client retries on another pod.
    for _ in 0..5 {
        let refused = get(addr, "/sleep?s=0")
            .await
            .expect("refused, but answered");
        assert_eq!(refused.status, 503);
        assert_eq!(
            refused
                .headers
                .get("connection")
                .map(|value| value.as_bytes()),
            Some(&b"close"[..])
        );
    }
    let again = request(sidecar.admin, "POST", "/drain", Bytes::new())
        .await
        .unwrap();
    assert_eq!(again.json()["started"], false);
    // Still up and reporting: the operator deletes the pod once it reads draining and idle.
    sidecar.proc.assert_running();
    let queue = sidecar.queue().await;
    assert_eq!(
        (queue["draining"].as_bool(), queue["inFlight"].as_u64()),
        (Some(true), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clean_errors_and_others_are_still_served() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--header-timeout", "1s"]).await;

    // Slow clients first, so that they are still trickling during the checks below.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(sidecar.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        let mut closed = 0;
        'outer: for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for stream in slow.iter_mut() {
                if stream.write_all(b"X-A: b\r\n").await.is_err() {
                    closed += 1;
                }
            }
            if closed == slow.len() {
                break 'outer;
            }
        }
        (closed, start.elapsed())
    });

    let garbage = raw_exchange(
        sidecar.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        UP,
    )
    .await;
    assert!(
        garbage.is_empty() || garbage.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&garbage)
    );
    let malformed = raw_exchange(sidecar.addr, b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", UP).await;
    assert!(
        malformed.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&malformed)
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let oversized = raw_exchange(sidecar.addr, big_header.as_bytes(), UP).await;
    assert!(
        oversized.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&oversized)
    );

    // Others are served while the slow ones trickle.
    let served = get(sidecar.addr, "/sleep?s=0").await.unwrap();
    assert_eq!(served.status, 200);

    let (closed, after) = trickle.await.unwrap();
    assert_eq!(closed, 100, "slowloris connections were not closed");
    assert!(
        after < Duration::from_secs(4),
        "slowloris connections lived {after:?}"
    );
    assert_eq!(get(sidecar.addr, "/sleep?s=0").await.unwrap().status, 200);
    let (peak_kib, _) = sidecar.proc.memory_kib();
    assert!(peak_kib < 40 * 1024, "peak RSS {peak_kib} KiB");
    // None of it counted as load.
    assert_eq!(sidecar.queue().await["arrivedTotal"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_gives_a_503_to_retry_and_the_sidecar_stays_healthy() {
    let dead = RefusingPort::new();
    let upstream = dead.addr.to_string();
    let sidecar = Sidecar::start(&["--upstream", &upstream, "--concurrency", "2"]).await;
    let replies: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get(sidecar.addr, "/")))
        .collect();
    for reply in replies {
        let reply = reply.await.unwrap().unwrap();
        // Nothing reached the app: a refusal the client may retry elsewhere, not a failure.
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
    }
    let queue = sidecar.queue().await;
    assert_eq!(
        (queue["inFlight"].as_u64(), queue["completedTotal"].as_u64()),
        (Some(0), Some(10))
    );
    // Alive, but not ready: the pod takes no traffic while its app accepts no connections.
    assert_eq!(get(sidecar.admin, "/livez").await.unwrap().status, 200);
    let readyz = get(sidecar.admin, "/readyz").await.unwrap();
    assert_eq!(readyz.status, 503);
    assert!(
        String::from_utf8_lossy(&readyz.body).contains(&upstream),
        "{:?}",
        readyz.body
    );
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics.contains("asyncpool_sidecar_upstream_errors_total 10"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_unknown_paths_and_methods_cleanly() {
    let sidecar = Sidecar::start(&["--upstream", "127.0.0.1:9"]).await;
    assert_eq!(get(sidecar.admin, "/nope").await.unwrap().status, 404);
    let post_queue = request(sidecar.admin, "POST", "/queue", Bytes::new())
        .await
        .unwrap();
    assert_eq!(post_queue.status, 405);
    assert_eq!(post_queue.headers["allow"], "GET");
    // Not in report mode: a report is refused, not silently dropped.
    let report = request(
        sidecar.admin,
        "POST",
        "/report",
        Bytes::from_static(b"{\"queued\":1,\"inFlight\":0}"),
    )
    .await
    .unwrap();
    assert_eq!(report.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_drain_answers_after_the_last_admitted_request() {
    let app = App::start().await;
    let mut sidecar = Sidecar::in_front_of(&app, &["--drain-grace", "200ms"]).await;
    let started = Instant::now();
    let long = tokio::spawn(get(sidecar.addr, "/sleep?s=1"));
    wait_until("the request to run", UP, || async {
        sidecar.queue().await["inFlight"] == 1
    })
    .await;
    // The app container's preStop hook: it waits for a drain, which SIGTERM then starts.
    let hook = tokio::spawn(get(sidecar.admin, "/wait-for-drain"));
    sidecar.proc.signal("TERM");
    let answer = hook.await.unwrap();
    let answered_after = started.elapsed();
    let answer = answer.expect("the hook got no answer before the sidecar exited");
    assert_eq!(answer.status, 200);
    assert!(
        answered_after >= Duration::from_secs(1),
        "the hook returned after {answered_after:?}, before the admitted 1 s request completed"
    );
    assert_eq!(long.await.unwrap().unwrap().status, 200);
    assert_eq!(
        sidecar.proc.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = raw_exchange(
        sidecar.addr,
        b"GET /sleep?s=0.1&id=first HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /sleep?s=0&id=second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        UP,
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let first = text.find("\"first\"").expect("first answered");
    let second = text.find("\"second\"").expect("second answered");
    assert!(first < second, "answered out of order: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_gets_a_chunked_reply_as_plain_data() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = raw_exchange(
        sidecar.addr,
        b"GET /stream?n=3&interval=0 HTTP/1.0\r\n\r\n",
        UP,
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(
        body, "data: 0\n\ndata: 1\n\ndata: 2\n\n",
        "chunk framing leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_two_parsers_could_read_differently_is_refused() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = raw_exchange(
        sidecar.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /sleep?s=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        UP,
    )
    .await;
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        app.stats().await["served"],
        0,
        "the app saw a smuggled request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_the_app_works_frees_its_slot() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "1"]).await;
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("the request is in the app", UP, || async {
        sidecar.queue().await["inFlight"] == 1
    })
    .await;
    drop(client);
    // The slot comes back long before the app's 30 s would end, and serves the next request.
    wait_until("the slot is free again", Duration::from_secs(5), || async {
        sidecar.queue().await["inFlight"] == 0
    })
    .await;
    let started = Instant::now();
    assert_eq!(get(sidecar.addr, "/sleep?s=0").await.unwrap().status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_passed_on_before_the_body() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    // The client holds its body until the interim response, as curl and browsers do.
    let mut interim = vec![0u8; 64];
    let n = tokio::time::timeout(UP, client.read(&mut interim))
        .await
        .expect("an interim response in time")
        .unwrap();
    let interim = String::from_utf8_lossy(&interim[..n]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    client.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(UP, client.read_to_end(&mut rest))
        .await
        .expect("the response in time")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("{\"bytes\": 5}"), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_no_body_and_the_connection_goes_on() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = raw_exchange(
        sidecar.addr,
        b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        UP,
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    let (head_reply, get_reply) = text.split_once("\r\n\r\n").expect("two responses");
    assert!(head_reply.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        head_reply
            .to_ascii_lowercase()
            .contains("content-length: 2"),
        "{text}"
    );
    // The next bytes are the GET's response, not a body of the HEAD.
    assert!(get_reply.starts_with("HTTP/1.1 200"), "{text}");
    assert!(get_reply.ends_with("\r\n\r\nok"), "{text}");
}

/// An upstream that answers every connection's first request with `reply` as soon as the
/// request head has arrived (without reading any body), then keeps the connection open until
/// the peer closes it.
async fn scripted_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(reply).await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ended_by_the_apps_close_reaches_the_client_whole() {
    // An app that replies without a length and closes: a body delimited by the close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
                .await;
            // Dropping the stream closes it: the end of the body.
        }
    });
    let sidecar = Sidecar::start(&["--upstream", &closing.to_string()]).await;
    let reply = raw_exchange(sidecar.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", UP).await;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "until close");
    assert_eq!(sidecar.queue().await["inFlight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_answers_before_reading_the_upload_is_passed_on() {
    let upstream =
        scripted_upstream(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")
            .await;
    let sidecar = Sidecar::start(&["--upstream", &upstream.to_string()]).await;
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\npart")
        .await
        .unwrap();
    let mut reply = Vec::new();
    // The rest of the body is never sent: the sidecar must answer and close anyway, since the
    // connection cannot carry another request after an unread body.
    tokio::time::timeout(UP, client.read_to_end(&mut reply))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("too big\n"), "{text}");
    wait_until("the slot is released", UP, || async {
        sidecar.queue().await["inFlight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_whether_the_app_accepts_connections() {
    // The app's port, not listening yet: a pod whose app is still starting.
    let port = RefusingPort::new();
    let upstream = port.addr.to_string();
    let sidecar = Sidecar::start(&["--upstream", &upstream]).await;
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, 503);

    let app = port.listen();
    let accepting = tokio::spawn(async move {
        loop {
            let _ = app.accept().await;
        }
    });
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, 200);

    // The app goes away again: not ready again.
    accepting.abort();
    let _ = accepting.await;
    let _gone = RefusingPort::at(upstream.parse().unwrap());
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_frees_its_slot_while_a_slow_steady_one_goes_through() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &["--concurrency", "1", "--body-timeout", "1s"]).await;

    // An upload that sends a little and then nothing: it holds the only slot.
    let mut stalled = TcpStream::connect(sidecar.addr).await.unwrap();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let began = Instant::now();
    wait_until("the upload admitted", Duration::from_secs(5), || async {
        sidecar.queue().await["inFlight"] == 1
    })
    .await;
    // A request behind it waits for the slot, which the stalled body must give up.
    let behind = tokio::spawn(get(sidecar.addr, "/sleep?s=0"));

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer))
        .await
        .expect("the stalled upload still holds its connection after 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "cut before the body timeout: {:?}",
        began.elapsed()
    );
    assert_eq!(behind.await.unwrap().unwrap().status, 200);
    let metrics =
        String::from_utf8(get(sidecar.admin, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics.contains("asyncpool_sidecar_body_timeouts_total 1"),
        "{metrics}"
    );

    // A body that keeps coming, a part every 300 ms for 3 s, is not cut: the timeout is on
    // progress, not on the whole body.
    let mut steady = TcpStream::connect(sidecar.addr).await.unwrap();
    steady
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        steady.write_all(b"0123456789").await.unwrap();
    }
    let mut answer = Vec::new();
    steady.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"bytes": 100}"#), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_an_absolute_target_names_the_host() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;

    // A tunnel is not this proxy's job: 501, and nothing reaches the app.
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("the connection closes after the refusal")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    assert_eq!(app.stats().await["served"], 0);

    // An absolute-form target: the app gets origin form, and the target's host, not the header's.
    let mut client = TcpStream::connect(sidecar.addr).await.unwrap();
    client
        .write_all(
            b"GET http://api.example/sleep?s=0 HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("the answer ends with the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""host": "api.example""#), "{answer}");
}

/// The hostile-HTTP catalogue on the wire: each request a front proxy and an app could read
/// differently (RFC 9112 §6.3, §7.1, §5.2, §2.2) gets a clear 4xx or a clean close, never
/// reaches the app as two requests, and leaves the sidecar serving. `expected` lists the
/// acceptable answers' status lines ("" for a close without an answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smuggling_catalogue_gets_clean_answers_and_smuggles_nothing() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let smuggled = "GET /sleep?s=0&id=smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let many_headers: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
    let long_extension = format!("4;{}\r\nabcd\r\n0\r\n\r\n", "e".repeat(64 * 1024));
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &["HTTP/1.1 400"],
        ),
        (
            "conflicting Content-Lengths",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"
            ),
            &["HTTP/1.1 400"],
        ),
        (
            "a Content-Length list",
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 44\r\n\r\n{smuggled}"),
            &["HTTP/1.1 400"],
        ),
        (
            "a coding after chunked",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            &["HTTP/1.1 400", "HTTP/1.1 501"],
        ),
        (
            "obsolete line folding",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
            &["HTTP/1.1 400"],
        ),
        (
            "a space before the colon",
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length : 44\r\n\r\n{smuggled}"),
            &["HTTP/1.1 400"],
        ),
        (
            "an invalid chunk size",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
            ),
            &["HTTP/1.1 400", ""],
        ),
        (
            "a chunk size past 64 bits",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n{smuggled}"
            ),
            &["HTTP/1.1 400", ""],
        ),
        (
            "a chunk line longer than any sane extension",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{long_extension}"
            ),
            &["HTTP/1.1 400", ""],
        ),
        (
            "a bare CR in a chunk line",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\rX\r\nabcd\r\n0\r\n\r\n{smuggled}"
            ),
            &["HTTP/1.1 400", ""],
        ),
        (
            "300 headers",
            format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            &["HTTP/1.1 431"],
        ),
    ];
    let mut report = Vec::new();
    for (name, request, expected) in &cases {
        let reply = raw_exchange(sidecar.addr, request.as_bytes(), UP).await;
        let text = String::from_utf8_lossy(&reply);
        let status = text.lines().next().unwrap_or("");
        let ok = expected.iter().any(|e| {
            if e.is_empty() {
                reply.is_empty()
            } else {
                status.starts_with(e)
            }
        });
        report.push(format!("{name}: {status:?}"));
        assert!(ok, "{name}: got {status:?}, expected one of {expected:?}");
        // At most one response per connection: the smuggled request got none.
        assert!(
            text.matches("HTTP/1.1 ").count() <= 1,
            "{name}: more than one response: {text}"
        );
    }
    println!("{}", report.join("\n"));
    // The app never saw the smuggled request, and the sidecar still serves.
    let stats = app.stats().await;
    let order = stats["order"].as_array().cloned().unwrap_or_default();
    assert!(
        !order.iter().any(|id| id == "smuggled"),
        "the app saw a smuggled request: {stats}"
    );
    assert_eq!(get(sidecar.addr, "/sleep?s=0").await.unwrap().status, 200);
    let (peak_kib, _) = sidecar.proc.memory_kib();
    assert!(peak_kib < 40 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(sidecar.queue().await["inFlight"], 0);
}

/// A chunk extension (RFC 9112 §7.1.1) is legal and ignored: the body arrives whole. A request
/// ended by bare LFs is read the same way by the sidecar and by what it forwards to (it writes
/// its own CRLF head), so it is served once or refused, never read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_pass_and_bare_line_feeds_are_never_read_twice() {
    let app = App::start().await;
    let sidecar = Sidecar::in_front_of(&app, &[]).await;
    let reply = raw_exchange(
        sidecar.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;name=value\r\nabcd\r\n3;x\r\nefg\r\n0\r\n\r\n",
        UP,
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"bytes\": 7") || text.contains("\"bytes\":7"),
        "{text}"
    );

    let bare = raw_exchange(
        sidecar.addr,
        b"GET /sleep?s=0&id=bare HTTP/1.1\nHost: x\nConnection: close\n\n",
        UP,
    )
    .await;
    let text = String::from_utf8_lossy(&bare);
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    let stats = app.stats().await;
    let seen = stats["order"]
        .as_array()
        .map_or(0, |order| order.iter().filter(|id| *id == "bare").count());
    assert!(seen <= 1, "read twice: {stats}");
}

/// The app resets its connection in the middle of a streamed response: the client sees the
/// response end without its last chunk and the connection close, never a clean end of a body
/// that was cut, and the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_stream_is_a_cut_response_not_a_whole_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await;
            // SO_LINGER 0: the close is a reset, as a crashed worker's kernel sends it.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let sidecar = Sidecar::start(&["--upstream", &upstream.to_string()]).await;
    let reply = raw_exchange(sidecar.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", UP).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut body was ended cleanly: {text:?}"
    );
    // raw_exchange read to the end: the sidecar closed the connection.
    assert_eq!(sidecar.queue().await["inFlight"], 0);
    let reply = raw_exchange(sidecar.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", UP).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
}
