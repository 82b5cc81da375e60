//! The examples in samples/, for real: the LLM gateway and its fake model under uvicorn behind
//! the real sidecar, the Redis worker against a real redis-server, and every example manifest
//! checked as the API server would check it (no cluster). Needs `eval "$(scripts/test-deps)"`:
//! the venv of tests/apps/requirements.txt, which pins what the examples' requirements pin.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncpool::crd::AsyncWorkerPool;
use asyncpool_testkit::redis::RedisServer;
use asyncpool_testkit::sidecar::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const UP: Duration = Duration::from_secs(30);

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The LLM gateway: fake_model.py and gateway.py under uvicorn, the sidecar in front.

/// The fake model's first-token delay in these tests; its per-token delay is per test.
const FIRST_TOKEN_DELAY: &str = "0.1";

struct Llm {
    model: Proc,
    model_addr: SocketAddr,
    _gateway: Proc,
    sidecar: Sidecar,
}

fn uvicorn(app: &str, port: u16) -> Command {
    let mut command = Command::new(python());
    command
        .args(["-m", "uvicorn", app, "--host", "127.0.0.1", "--log-level"])
        .args(["warning", "--port", &port.to_string(), "--app-dir"])
        .arg(example("llm-gateway"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

impl Llm {
    /// The fake model (a token every `token_delay` seconds), the gateway awaiting it, and the
    /// sidecar admitting `concurrency` requests into the gateway at once.
    async fn start(token_delay: &str, concurrency: &str) -> Llm {
        let model_addr = loopback(free_port());
        let mut model = Proc::spawn(
            "fake model",
            uvicorn("fake_model:app", model_addr.port())
                .env("FIRST_TOKEN_DELAY", FIRST_TOKEN_DELAY)
                .env("TOKEN_DELAY", token_delay),
        );
        let gateway_addr = loopback(free_port());
        let mut gateway = Proc::spawn(
            "gateway",
            uvicorn("gateway:app", gateway_addr.port())
                .env("MODEL_URL", format!("http://{model_addr}")),
        );
        model.wait_answering(model_addr, "/healthz", UP).await;
        gateway.wait_answering(gateway_addr, "/healthz", UP).await;
        let upstream = gateway_addr.to_string();
        let sidecar =
            Sidecar::start(&["--upstream", &upstream, "--concurrency", concurrency]).await;
        Llm {
            model,
            model_addr,
            _gateway: gateway,
            sidecar,
        }
    }

    /// The fake model's counters: generations active, completed and cancelled.
    async fn model_stats(&self) -> (u64, u64, u64) {
        let stats = get(self.model_addr, "/stats")
            .await
            .expect("model stats")
            .json();
        let field = |name: &str| stats[name].as_u64().expect("a count");
        (field("active"), field("completed"), field("cancelled"))
    }

    /// The sidecar's figures: requests in flight (in the gateway) and queued.
    async fn load(&self) -> (u64, u64) {
        let q = self.sidecar.queue().await;
        (
            q["inFlight"].as_u64().unwrap(),
            q["queued"].as_u64().unwrap(),
        )
    }
}

/// A chat request from the user, as the gateway takes it.
fn chat(content: &str, stream: bool, max_tokens: usize) -> Bytes {
    let body = json!({
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        "max_tokens": max_tokens,
    });
    Bytes::from(body.to_string())
}

/// A chat request, its answer read whole.
async fn post_chat(addr: SocketAddr, body: Bytes) -> Reply {
    let json = [("content-type", "application/json")];
    request_with(addr, "POST", "/v1/chat/completions", &json, body)
        .await
        .expect("an answer")
}

/// What the fake model answers for a user message: its prompt (`user: <content>`) echoed back,
/// a word per token, at most `max_tokens` of them.
fn echo(content: &str, max_tokens: usize) -> (String, &'static str) {
    let words: Vec<&str> = std::iter::once("user:")
        .chain(content.split_whitespace())
        .collect();
    let finish = if words.len() > max_tokens {
        "length"
    } else {
        "stop"
    };
    (words[..words.len().min(max_tokens)].join(" "), finish)
}

/// A streamed chat completion being read event by event, each stamped when it was complete.
struct SseStream {
    status: u16,
    content_type: String,
    body: Incoming,
    buffer: Vec<u8>,
    start: Instant,
    connection: tokio::task::JoinHandle<()>,
}

impl SseStream {
    async fn open(addr: SocketAddr, body: Bytes) -> SseStream {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::post("/v1/chat/completions")
            .header("host", "llm-gateway")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let start = Instant::now();
        let response = sender.send_request(request).await.expect("response head");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        SseStream {
            status: response.status().as_u16(),
            content_type,
            body: response.into_body(),
            buffer: Vec::new(),
            start,
            connection,
        }
    }

    /// The next event's `data:` payload and when it was complete, or None at the end of the body.
    async fn next_event(&mut self) -> Option<(Duration, String)> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("UTF-8 event");
                let data = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Some((self.start.elapsed(), data));
            }
            let frame = self.body.frame().await?.expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// Every event to the end of the body, and when the body ended.
    async fn events(mut self) -> (Vec<(Duration, String)>, Duration) {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        assert!(
            self.buffer.is_empty(),
            "the stream ended inside an event: {:?}",
            String::from_utf8_lossy(&self.buffer)
        );
        (events, self.start.elapsed())
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        // Closes the connection: the client is gone.
        self.connection.abort();
    }
}

/// Checks a complete SSE answer and returns the completion text and finish reason.
fn completion_of(events: &[(Duration, String)]) -> (String, String) {
    let (last, chunks) = events.split_last().expect("no event at all");
    assert_eq!(last.1, "[DONE]", "the stream does not end with [DONE]");
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|(_, data)| serde_json::from_str(data).expect("a JSON chunk"))
        .collect();
    let (end, tokens) = chunks.split_last().expect("no chunk before [DONE]");
    assert!(!tokens.is_empty(), "no token: {chunks:?}");
    assert_eq!(tokens[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["id"], chunks[0]["id"], "one id for the whole stream");
    }
    for token in tokens {
        assert_eq!(token["choices"][0]["finish_reason"], Value::Null, "{token}");
        text += token["choices"][0]["delta"]["content"]
            .as_str()
            .expect("a token's content");
    }
    assert_eq!(end["choices"][0]["delta"], json!({}), "{end}");
    let finish = end["choices"][0]["finish_reason"].as_str().expect("finish");
    (text, finish.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_gateway_streams_tokens_through_the_sidecar_as_the_model_sends_them() {
    // A token every 100 ms: the 10 tokens of the stream come over 0.9 s.
    let llm = Llm::start("0.1", "2").await;
    let content = "the quick brown fox jumps over the lazy dog twice today";
    let (expected, finish) = echo(content, 10);
    assert_eq!(finish, "length");

    let stream = SseStream::open(llm.sidecar.addr, chat(content, true, 10)).await;
    assert_eq!(stream.status, 200);
    assert!(
        stream.content_type.starts_with("text/event-stream"),
        "{}",
        stream.content_type
    );
    let (events, ended) = stream.events().await;
    let (text, finish) = completion_of(&events);
    assert_eq!(text, expected);
    assert_eq!(finish, "length");
    assert_eq!(events.len(), 12, "10 tokens, the end chunk and [DONE]");
    // Relayed as they come: the first token reached the client while the model still had 0.9 s
    // of tokens to send. A gateway or sidecar that buffered would deliver it at the end.
    let first = events[0].0;
    assert!(
        ended - first >= Duration::from_millis(600),
        "first event at {first:?}, end at {ended:?}: the stream was buffered"
    );

    let whole = post_chat(llm.sidecar.addr, {
        let mut body: Value = serde_json::from_slice(&chat(content, false, 50)).unwrap();
        body.as_object_mut().unwrap().remove("stream"); // the default: not streamed
        Bytes::from(body.to_string())
    })
    .await;
    assert_eq!(
        whole.status,
        200,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    assert_eq!(whole.headers["content-type"], "application/json");
    let answer = whole.json();
    let (expected, finish) = echo(content, 50);
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        expected.as_str()
    );
    assert_eq!(answer["choices"][0]["finish_reason"], finish);
    assert_eq!(answer["usage"]["completion_tokens"], 12, "{answer}");
    assert_eq!(answer["usage"]["total_tokens"], 24, "{answer}");

    // Both went through the sidecar, and both left it.
    wait_until("both requests to complete in the sidecar", UP, || async {
        let q = llm.sidecar.queue().await;
        q["arrivedTotal"] == 2 && q["completedTotal"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_in_flight_and_those_beyond_concurrency_wait_in_the_sidecar() {
    let llm = Llm::start("0.1", "2").await;
    let content = "one two three four five six seven eight nine ten eleven twelve thirteen";
    // Each stream lasts about 1.5 s; the sidecar lets two into the gateway at once.
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let addr = llm.sidecar.addr;
            tokio::spawn(async move {
                SseStream::open(addr, chat(content, true, 15))
                    .await
                    .events()
                    .await
            })
        })
        .collect();
    // In flight means in the gateway, awaiting the model: two model calls running.
    wait_until("2 streams in flight and 1 queued", UP, || async {
        llm.load().await == (2, 1) && llm.model_stats().await.0 == 2
    })
    .await;
    let (expected, _) = echo(content, 15);
    for stream in streams {
        let (events, _) = stream.await.expect("stream task");
        assert_eq!(completion_of(&events).0, expected);
    }
    wait_until("the sidecar to be empty", UP, || async {
        llm.load().await == (0, 0)
    })
    .await;
    let q = llm.sidecar.queue().await;
    assert_eq!(
        (q["arrivedTotal"].as_u64(), q["completedTotal"].as_u64()),
        (Some(3), Some(3)),
        "{q}"
    );
    assert_eq!(llm.model_stats().await, (0, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_cancels_the_model_call_and_a_model_down_is_a_502() {
    let mut llm = Llm::start("0.1", "2").await;
    // 100 tokens, 10 s: far longer than the test waits for the cancellation.
    let content: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let mut stream = SseStream::open(llm.sidecar.addr, chat(&content.join(" "), true, 100)).await;
    assert_eq!(stream.status, 200);
    let (_, first) = stream.next_event().await.expect("a first event");
    assert!(first.contains("\"role\": \"assistant\""), "{first}");
    assert_eq!(llm.model_stats().await, (1, 0, 0), "one model call running");

    drop(stream);
    wait_until(
        "the model call to be cancelled",
        Duration::from_secs(5),
        || async { llm.model_stats().await == (0, 0, 1) },
    )
    .await;
    wait_until(
        "the sidecar to free the slot",
        Duration::from_secs(5),
        || async { llm.load().await == (0, 0) },
    )
    .await;

    // The model goes away: the gateway says so with a 502, streamed or not, before any token.
    llm.model.child.kill().expect("kill the fake model");
    llm.model.child.wait().expect("reap the fake model");
    for stream in [true, false] {
        let reply = post_chat(llm.sidecar.addr, chat("hello", stream, 5)).await;
        assert_eq!(reply.status, 502, "stream: {stream}: {:?}", reply.body);
        let detail = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains("model"), "{detail}");
    }
}

// ---------------------------------------------------------------------------------------------
// The Redis worker: worker.py against a real redis-server.

struct Worker {
    proc: Proc,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(redis: &RedisServer, concurrency: &str) -> Worker {
        let mut command = Command::new(python());
        command
            .arg(example("redis-worker/worker.py"))
            .env("REDIS_URL", redis.url(0))
            .env("QUEUE_KEY", "jobs")
            .env("RESULTS_KEY", "jobs:done")
            .env("CONCURRENCY", concurrency)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("redis worker", &mut command);
        let stderr = proc.child.stderr.take().expect("the worker's stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("worker: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Worker { proc, log }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for a log line containing `needle`, failing if the worker exits first.
    async fn wait_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.logged(needle) {
            self.proc.assert_running();
            assert!(start.elapsed() < UP, "the worker never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn start_redis() -> RedisServer {
    RedisServer::start_on(free_port())
        .await
        .expect("redis-server")
}

async fn llen(redis: &RedisServer, key: &str) -> u64 {
    let reply = redis.command(&["LLEN", key]).await.expect("LLEN");
    reply
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("LLEN answered {reply}"))
}

/// The list's items (redis-cli, which the redis-server package brings along).
fn lrange(redis: &RedisServer, key: &str) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.addr.port().to_string(),
            "--raw",
        ])
        .args(["LRANGE", key, "0", "-1"])
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli: {out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn job(id: &str, seconds: f64) -> String {
    json!({"id": id, "seconds": seconds}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_worker_runs_concurrency_jobs_at_a_time_until_the_list_is_empty() {
    let redis = start_redis().await;
    let jobs: Vec<String> = (0..6).map(|i| job(&format!("job-{i}"), 0.5)).collect();
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(jobs.iter().map(String::as_str));
    assert_eq!(redis.command(&push).await.unwrap(), ":6");
    // What the pool scales on: the sidecar in redis mode reports the list.
    let url = redis.url(0);
    let sidecar = Sidecar::start(&[
        "--source",
        "redis",
        "--redis-url",
        &url,
        "--redis-key",
        "jobs",
    ])
    .await;
    wait_until("the sidecar to report 6 queued", UP, || async {
        get(sidecar.admin, "/queue")
            .await
            .is_ok_and(|r| r.status == 200 && r.json()["queued"] == 6)
    })
    .await;

    let mut worker = Worker::start(&redis, "3");
    let start = Instant::now();
    while llen(&redis, "jobs:done").await < 6 {
        worker.proc.assert_running();
        assert!(start.elapsed() < UP, "the worker did not finish the 6 jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(llen(&redis, "jobs").await, 0);
    wait_until("the sidecar to report an empty list", UP, || async {
        sidecar.queue().await["queued"] == 0
    })
    .await;

    let results: Vec<Value> = lrange(&redis, "jobs:done")
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON result"))
        .collect();
    let ids: BTreeSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let expected: BTreeSet<String> = (0..6).map(|i| format!("job-{i}")).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect());
    let spans: Vec<(f64, f64)> = results
        .iter()
        .map(|r| {
            (
                r["started"].as_f64().unwrap(),
                r["finished"].as_f64().unwrap(),
            )
        })
        .collect();
    for (started, finished) in &spans {
        assert!(
            finished - started >= 0.5,
            "a job did not await its 0.5 s: {results:?}"
        );
    }
    // Jobs at once, by the worker's own clock: exactly 3, the semaphore's bound, reached.
    let most = spans
        .iter()
        .map(|(t, _)| spans.iter().filter(|(s, f)| s <= t && t < f).count())
        .max()
        .unwrap();
    assert_eq!(most, 3, "jobs at once: {spans:?}");

    // Idle, it stops at once on SIGTERM.
    worker.proc.signal("TERM");
    let status = worker.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    assert!(worker.logged("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_redis_worker_finishes_the_job_in_hand_and_takes_no_new_one() {
    let redis = start_redis().await;
    redis
        .command(&["RPUSH", "jobs", &job("long", 2.0)])
        .await
        .unwrap();
    let mut worker = Worker::start(&redis, "2");
    worker.wait_log("job long: started").await;
    worker.proc.signal("TERM");
    worker.wait_log("SIGTERM: taking no new jobs").await;
    assert_eq!(
        llen(&redis, "jobs:done").await,
        0,
        "the job should still be running when the worker takes the signal"
    );
    // Pushed once the worker has stopped taking jobs: it must stay in the list, though the
    // worker has a free slot (and maybe a BLPOP waiting, which gets it and gives it back).
    let late = job("late", 0.1);
    redis.command(&["RPUSH", "jobs", &late]).await.unwrap();

    let status = worker.proc.wait_exit(UP).await;
    assert!(status.success(), "the worker exited with {status}");
    let done = lrange(&redis, "jobs:done");
    assert_eq!(done.len(), 1, "{done:?}");
    let result: Value = serde_json::from_str(&done[0]).unwrap();
    assert_eq!(result["id"], "long", "{result}");
    assert_eq!(lrange(&redis, "jobs"), [late], "the late job left the list");
    assert!(!worker.logged("job late"), "the worker took the late job");
}

// ---------------------------------------------------------------------------------------------
// The manifests, Dockerfiles and requirements, without a cluster.

/// Every example manifest: samples/*.yaml and samples/*/pool.yaml.
fn example_manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(example("")).expect("read samples/") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" {
            continue; // tools' caches
        }
        if path.is_dir() {
            let pool = path.join("pool.yaml");
            assert!(pool.exists(), "{} has no pool.yaml", path.display());
            files.push(pool);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn documents(text: &str, file: &Path) -> Vec<Value> {
    serde_saphyr::from_str_multiple(text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()))
}

fn checked_pool(document: Value, file: &Path) -> AsyncWorkerPool {
    asyncpool::manifest::check(document)
        .unwrap_or_else(|e| panic!("{} would be refused: {e}", file.display()))
}

/// The pool and the other objects (by kind and name) of an example's pool.yaml.
fn example_objects(dir: &str) -> (AsyncWorkerPool, BTreeMap<(String, String), Value>) {
    let file = example(&format!("{dir}/pool.yaml"));
    let mut pools = Vec::new();
    let mut others = BTreeMap::new();
    for document in documents(&read(&file), &file) {
        let kind = document["kind"].as_str().unwrap_or_default().to_string();
        if kind == "AsyncWorkerPool" {
            pools.push(checked_pool(document, &file));
        } else {
            let name = document["metadata"]["name"].as_str().unwrap().to_string();
            others.insert((kind, name), document);
        }
    }
    assert_eq!(pools.len(), 1, "{}: one pool", file.display());
    (pools.remove(0), others)
}

fn app_container(pool: &AsyncWorkerPool) -> &Container {
    let containers = &pool.spec.template.spec.as_ref().unwrap().containers;
    assert_eq!(containers.len(), 1, "one app container");
    &containers[0]
}

fn env_of<'a>(container: &'a Container, name: &str) -> &'a str {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
        .unwrap_or_else(|| panic!("{} has no {name}", container.name))
}

/// The value after `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> &'a str {
    let at = command.iter().position(|a| a == flag);
    at.and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("{flag} missing from {command:?}"))
}

#[test]
fn every_example_manifest_is_accepted_as_the_api_server_would() {
    let files = example_manifests();
    for expected in [
        "llm-gateway/pool.yaml",
        "redis-worker/pool.yaml",
        "chat-api.yaml",
    ] {
        assert!(
            files.contains(&example(expected)),
            "{expected} missing from {files:?}"
        );
    }
    for file in &files {
        let mut pools = 0;
        for document in documents(&read(file), file) {
            match document["kind"].as_str() {
                Some("AsyncWorkerPool") => {
                    checked_pool(document, file);
                    pools += 1;
                }
                Some("Deployment") => {
                    serde_json::from_value::<Deployment>(document)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                }
                Some("Service") => {
                    serde_json::from_value::<Service>(document)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                }
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
        }
        assert!(pools > 0, "{} holds no pool", file.display());
    }

    // The password variant shown in a comment is valid once uncommented.
    let file = example("redis-worker/pool.yaml");
    let text = read(&file);
    let variant = text.replace("# passwordSecretRef:", "passwordSecretRef:");
    assert_ne!(variant, text, "the passwordSecretRef comment is gone");
    let pool = asyncpool::manifest::load_pool(&variant, None)
        .unwrap_or_else(|e| panic!("the passwordSecretRef variant would be refused: {e}"));
    let secret = pool.spec.queue.redis.unwrap().password_secret_ref.unwrap();
    assert_eq!(secret.name, "redis-auth");
}

#[test]
fn the_llm_gateway_manifest_wires_the_gateway_to_the_model() {
    let (pool, others) = example_objects("llm-gateway");
    assert_eq!(pool.spec.queue.source.as_str(), "proxy");
    let app = app_container(&pool);
    let command = app.command.as_ref().expect("the app's command");
    assert_eq!(
        flag(command, "--host"),
        "127.0.0.1",
        "only the sidecar talks to the app"
    );
    assert_eq!(flag(command, "--port"), pool.spec.port.to_string());

    // MODEL_URL names the fake model's Service, whose port leads to the model's uvicorn.
    let url = env_of(app, "MODEL_URL");
    let (host, port) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once(':'))
        .unwrap_or_else(|| panic!("MODEL_URL {url} is not http://host:port"));
    let service: Service =
        serde_json::from_value(others[&("Service".to_string(), host.to_string())].clone()).unwrap();
    let spec = service.spec.unwrap();
    let service_port = spec
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port.to_string() == port)
        .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
    let deployment: Deployment = serde_json::from_value(
        others[&("Deployment".to_string(), "fake-model".to_string())].clone(),
    )
    .unwrap();
    let template = deployment.spec.unwrap().template;
    let labels = template.metadata.unwrap().labels.unwrap();
    for (key, value) in spec.selector.unwrap() {
        assert_eq!(
            labels.get(&key),
            Some(&value),
            "the Service does not select the model"
        );
    }
    let model = &template.spec.unwrap().containers[0];
    let container_port = model
        .ports
        .iter()
        .flatten()
        .find(|p| match service_port.target_port.as_ref().unwrap() {
            IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
            IntOrString::Int(number) => p.container_port == *number,
        })
        .expect("the Service's targetPort is a port of the model's container");
    let model_command = model.command.as_ref().expect("the model's command");
    assert_eq!(model_command[1], "fake_model:app");
    assert_eq!(
        flag(model_command, "--port"),
        container_port.container_port.to_string()
    );

    // A stream may run for drainTimeout after a drain starts; only a request older than any
    // stream means a hung worker.
    let supervision = &pool.spec.supervision;
    let drain = asyncpool_contract::duration::parse_duration(&supervision.drain_timeout.0).unwrap();
    let hung = supervision
        .worker_timeout
        .as_ref()
        .expect("a workerTimeout");
    assert!(asyncpool_contract::duration::parse_duration(&hung.0).unwrap() > drain);
}

#[test]
fn the_redis_worker_manifest_scales_from_zero_on_the_list_the_worker_reads() {
    let (pool, _) = example_objects("redis-worker");
    assert_eq!(pool.spec.min_replicas, 0);
    assert_eq!(pool.spec.queue.source.as_str(), "redis");
    let redis = pool.spec.queue.redis.as_ref().unwrap();
    let worker = app_container(&pool);
    assert_eq!(env_of(worker, "REDIS_URL"), redis.url);
    assert_eq!(env_of(worker, "QUEUE_KEY"), redis.key);
    assert_eq!(
        env_of(worker, "CONCURRENCY"),
        pool.spec.concurrency.to_string()
    );
}

/// The JSON array of a Dockerfile instruction in exec form (`CMD ["a", "b"]`).
fn exec_form(dockerfile: &str, instruction: &str) -> Option<Vec<String>> {
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))?;
    Some(serde_json::from_str(line).expect("exec form"))
}

#[test]
fn the_dockerfiles_copy_what_exists_run_as_nonroot_and_run_what_the_pools_run() {
    for (dir, app) in [("llm-gateway", "app"), ("redis-worker", "worker")] {
        let dockerfile = read(&example(&format!("{dir}/Dockerfile")));
        assert!(dockerfile.contains("\nFROM python:3.12-slim\n"), "{dir}");
        assert!(
            dockerfile.contains("\nUSER 65532:65532\n"),
            "{dir}: not root"
        );
        let mut copied = 0;
        for line in dockerfile.lines() {
            if let Some(args) = line.strip_prefix("COPY ") {
                let words: Vec<&str> = args.split_whitespace().collect();
                for source in &words[..words.len() - 1] {
                    assert!(
                        example(&format!("{dir}/{source}")).exists(),
                        "{dir}: COPY {source}"
                    );
                    copied += 1;
                }
            }
        }
        assert!(copied >= 2, "{dir}: requirements and code");
        let cmd =
            exec_form(&dockerfile, "CMD").expect("CMD in exec form, so signals reach the app");
        let (pool, _) = example_objects(dir);
        let container = app_container(&pool);
        assert_eq!(container.name, app);
        assert_eq!(
            container.command.as_ref().unwrap_or(&cmd),
            &cmd,
            "{dir}: the pool runs something else than the image"
        );
    }
}

#[test]
fn the_examples_pin_the_versions_the_tests_run() {
    let tested: BTreeSet<String> =
        read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/requirements.txt"))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
    for dir in ["llm-gateway", "redis-worker"] {
        let pins: Vec<String> = read(&example(&format!("{dir}/requirements.txt")))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        assert!(!pins.is_empty(), "{dir}");
        for pin in pins {
            assert!(pin.contains("=="), "{dir}: {pin} is not pinned");
            assert!(
                tested.contains(&pin),
                "{dir}: {pin} is not what tests/apps/requirements.txt pins"
            );
        }
    }
}
