//! The serving port: an HTTP/1.1 reverse proxy to the app on localhost, through the limiter.
//!
//! One task per client connection reads each request head, waits for its admission, and drives
//! an app connection of its own (from its thread's pool of keep-alive connections) for the whole
//! exchange: the head is rewritten straight from the parsed bytes (`http1`), and bodies pass
//! through unchanged both ways as they arrive, so an SSE or chunked LLM reply reaches the client
//! chunk by chunk, an upload is read from the client only as fast as the app reads it, and the
//! bytes are copied once on their way. An admitted request keeps its slot until the last byte of
//! its response is written. A client that leaves while queued or while the app works is noticed
//! (its connection reads end-of-file), its place given up and its app connection closed, which
//! cancels the work in an ASGI app.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::drain::{Drain, Phase};
use crate::http1::{self, Body, Framing, HeadError};
use crate::limiter::{Limiter, Refused};
use crate::{MAX_HEADER_BYTES, MAX_READ_BUFFER};

/// Bound on connecting to the app; a dead app must turn into a quick 503, not a hung request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled app connections idle longer than this are dropped rather than reused: uvicorn closes
/// idle keep-alive connections after 5 s, and reusing one as it closes fails the request.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// A client connection idle between requests longer than this is closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// Bound on an app's response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size: a typical request or response in one read, a body in few.
const READ_SIZE: usize = 16 * 1024;

/// Counters of the proxy's own outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub queue_timeouts: AtomicU64,
    /// Requests whose body stopped arriving for `--body-timeout`.
    pub body_timeouts: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Client connections open on the serving port that were accepted before the drain's grace
    /// ended (those accepted later only get a 503).
    connections: AtomicUsize,
}

impl Stats {
    /// Client connections still open; after a drain they close once their last response has
    /// been written, so none open means no response is still on its way out.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Counts a client connection for as long as its task lives.
struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(Arc::clone(stats))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One proxy per serving thread: the limiter and the counters are shared, the pool of app
/// connections is the thread's own.
pub struct Proxy {
    limiter: Arc<Limiter>,
    pool: Pool,
    queue_timeout: Duration,
    body_timeout: Duration,
    stats: Arc<Stats>,
}

/// A response of the proxy's own.
struct OwnReply {
    status: &'static str,
    body: &'static str,
    retry_after: bool,
}

/// Refusals a client should retry (elsewhere) after `Retry-After`.
const fn unavailable(body: &'static str) -> OwnReply {
    OwnReply {
        status: "503 Service Unavailable",
        body,
        retry_after: true,
    }
}

const QUEUE_FULL: OwnReply = unavailable("queue full\n");
const DRAINING: OwnReply = unavailable("draining\n");
const QUEUE_TIMEOUT: OwnReply = unavailable("queue timeout\n");
/// The app could not be reached (it crashed, or is restarting): nothing of the request reached
/// it, so the client may safely send it again, elsewhere, whatever its method. A 503, as Envoy
/// answers an upstream connect failure, so that clients and load balancers retry it.
const APP_UNREACHABLE: OwnReply = unavailable("app unavailable\n");
const BAD_GATEWAY: OwnReply = OwnReply {
    status: "502 Bad Gateway",
    body: "upstream unavailable\n",
    retry_after: false,
};
const BAD_REQUEST: OwnReply = OwnReply {
    status: "400 Bad Request",
    body: "",
    retry_after: false,
};
const BODY_TIMEOUT: OwnReply = OwnReply {
    status: "408 Request Timeout",
    body: "request body timed out\n",
    retry_after: false,
};
/// RFC 9110 §15.6.2: a method the server does not support (405 would have to list the others).
const CONNECT_REFUSED: OwnReply = OwnReply {
    status: "501 Not Implemented",
    body: "CONNECT is not served: this is a reverse proxy for one app\n",
    retry_after: false,
};
const HEAD_TOO_LARGE: OwnReply = OwnReply {
    status: "431 Request Header Fields Too Large",
    body: "",
    retry_after: false,
};

impl OwnReply {
    fn bytes(&self, close: bool, with_body: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            self.status,
            self.body.len()
        );
        if self.retry_after {
            // What clients are told to wait before retrying a refused request.
            out.push_str("retry-after: 1\r\n");
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        if with_body {
            out.push_str(self.body);
        }
        out.into_bytes()
    }
}

/// What a client connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// What reading a request head gave.
enum HeadRead {
    Request(http1::Request),
    /// End of file, timeout, idle at the drain, or a refusal already written: close.
    Closed,
}

/// How an exchange with the app ended.
enum Relayed {
    /// The response was passed on whole; whether the app connection can serve another request.
    Complete {
        app_reusable: bool,
        close_client: bool,
    },
    /// The app accepted an upgrade: the two connections are now one tunnel.
    Upgraded,
    /// The app closed or broke before its response head; `retryable` when nothing of the
    /// request was lost with it (a pooled connection the app had closed).
    NoResponse { retryable: bool },
    /// Failed mid-response (either side): both connections are in an unknown state.
    Broken,
    /// The client's body stopped arriving for the body timeout; `answer` while no response head
    /// has gone to the client yet, so that a 408 can still be written.
    BodyStalled { answer: bool },
}

impl Proxy {
    pub fn new(
        limiter: Arc<Limiter>,
        upstream: String,
        queue_timeout: Duration,
        body_timeout: Duration,
        max_idle: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Proxy {
            limiter,
            pool: Pool {
                upstream,
                idle: Mutex::new(Vec::new()),
                max_idle,
            },
            queue_timeout,
            body_timeout,
            stats,
        }
    }

    /// Accepts connections until the task is dropped. After the drain's grace, idle
    /// connections close and busy ones close once their exchange is done.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: Arc<Drain>,
        header_timeout: Duration,
    ) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut phase = drain.subscribe();
            // A connection accepted after the grace is not closed unanswered: its request gets
            // the 503 "draining" with `Connection: close`, which clients retry elsewhere. It
            // carries no admitted work, so the exit does not wait for it.
            let accepted_after_grace = *phase.borrow_and_update() == Phase::Closed;
            let open = (!accepted_after_grace).then(|| OpenConnection::new(&self.stats));
            let proxy = Arc::clone(&self);
            tokio::spawn(async move {
                let _open = open;
                proxy.connection(stream, peer, phase, header_timeout).await;
            });
        }
    }

    /// Serves one client connection: request after request until either side closes.
    async fn connection(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        phase: watch::Receiver<Phase>,
        header_timeout: Duration,
    ) {
        // Waits that outlive a request, made once per connection rather than once per request:
        // the end of the drain's grace, and the keep-alive deadline (moved on only when more
        // than half of it has gone, so a busy connection does not touch the timer each time).
        let mut idle = Box::pin(tokio::time::sleep(KEEP_ALIVE_IDLE));
        let mut closing_phase = phase.clone();
        let mut closing: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let _ = closing_phase
                .wait_for(|phase| *phase == Phase::Closed)
                .await;
        });
        let mut buffers = Buffers {
            peer: peer.ip().to_string(),
            request: BytesMut::with_capacity(READ_SIZE),
            response: BytesMut::with_capacity(READ_SIZE),
            head: Vec::with_capacity(1024),
        };
        let mut first = true;
        loop {
            let now = tokio::time::Instant::now();
            let deadline = first.then(|| now + header_timeout);
            if idle.deadline() < now + KEEP_ALIVE_IDLE / 2 {
                idle.as_mut().reset(now + KEEP_ALIVE_IDLE);
            }
            let waits = IdleWaits {
                idle: &mut idle,
                closing: &mut closing,
            };
            let head = match self
                .read_head(
                    &mut client,
                    &mut buffers,
                    peer,
                    waits,
                    header_timeout,
                    deadline,
                )
                .await
            {
                HeadRead::Request(head) => head,
                HeadRead::Closed => return,
            };
            first = false;
            buffers.request.advance(head.head_len);
            let next = self
                .exchange(&mut client, &mut buffers, &head, &phase)
                .await;
            if next == Next::Close || *phase.borrow() == Phase::Closed {
                let _ = client.shutdown().await;
                return;
            }
        }
    }

    /// Reads the next request head into the request buffer and its rewrite into the head
    /// buffer. A head must arrive within `header_timeout` of its first byte (of the accept, for
    /// the first one, through `deadline`): a client trickling a head (slowloris) is cut off.
    /// Between requests a connection may idle for half of [`KEEP_ALIVE_IDLE`] to all of it, and is
    /// closed at once when the drain's grace ends.
    async fn read_head(
        &self,
        client: &mut TcpStream,
        buffers: &mut Buffers,
        peer: SocketAddr,
        waits: IdleWaits<'_>,
        header_timeout: Duration,
        mut deadline: Option<tokio::time::Instant>,
    ) -> HeadRead {
        let buf = &mut buffers.request;
        loop {
            if !buf.is_empty() {
                let refusal = match http1::request(
                    buf,
                    &buffers.peer,
                    &self.pool.upstream,
                    &mut buffers.head,
                ) {
                    Ok(Some(head)) => return HeadRead::Request(head),
                    Ok(None) if buf.len() >= MAX_HEADER_BYTES => Some(HEAD_TOO_LARGE),
                    Ok(None) => None,
                    Err(HeadError::TooManyHeaders) => Some(HEAD_TOO_LARGE),
                    Err(HeadError::Connect) => Some(CONNECT_REFUSED),
                    Err(HeadError::Malformed(why)) => {
                        tracing::debug!(%peer, why, "refused a malformed request");
                        Some(BAD_REQUEST)
                    }
                };
                if let Some(refusal) = refusal {
                    let _ = client.write_all(&refusal.bytes(true, true)).await;
                    return HeadRead::Closed;
                }
                // Part of a head: the rest must follow within the timeout.
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + header_timeout);
            }
            reserve(buf);
            let read = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, client.read_buf(buf)).await,
                None => tokio::select! {
                    read = client.read_buf(buf) => Ok(read),
                    () = waits.idle.as_mut() => return HeadRead::Closed,
                    () = waits.closing.as_mut() => return HeadRead::Closed,
                },
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + header_timeout);
                }
                _ => return HeadRead::Closed,
            }
        }
    }

    /// One request: admission, then the exchange with the app; says whether the client
    /// connection can carry another request.
    async fn exchange(
        &self,
        client: &mut TcpStream,
        buffers: &mut Buffers,
        head: &http1::Request,
        phase: &watch::Receiver<Phase>,
    ) -> Next {
        // Our own answers leave a request body unread: the connection cannot carry another.
        let keep_after_own = head.keep_alive && head.framing == Framing::Empty;
        let own = |reply: &OwnReply, close: bool| reply.bytes(close, !head.is_head);
        let ticket = match self.limiter.arrive() {
            Ok(ticket) => ticket,
            Err(Refused::QueueFull) => {
                return reply(client, &own(&QUEUE_FULL, !keep_after_own), keep_after_own).await;
            }
            // Draining: the client should take its retry to another pod, on a new connection.
            Err(Refused::Closed) => return reply(client, &own(&DRAINING, true), false).await,
        };
        let permit = match ticket.try_admitted() {
            // A free slot at arrival: no queue, no timer.
            Ok(permit) => permit,
            Err(ticket) => {
                let waited = {
                    let (mut client_read, _) = client.split();
                    tokio::select! {
                        admitted = tokio::time::timeout(self.queue_timeout, ticket.admitted()) => admitted.ok(),
                        // Leaving drops the ticket, which leaves the queue.
                        () = watch_departure(&mut client_read, &mut buffers.request) => return Next::Close,
                    }
                };
                match waited {
                    Some(permit) => permit,
                    None => {
                        self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                        let bytes = own(&QUEUE_TIMEOUT, !keep_after_own);
                        return reply(client, &bytes, keep_after_own).await;
                    }
                }
            }
        };
        let mut pooled = true;
        let mut prepared = false;
        loop {
            let (mut app, was_pooled) = match self.pool.checkout(pooled).await {
                Ok(app) => app,
                Err(error) => {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, upstream = %self.pool.upstream, "upstream request failed");
                    drop(permit);
                    let bytes = own(&APP_UNREACHABLE, !keep_after_own);
                    return reply(client, &bytes, keep_after_own).await;
                }
            };
            let relayed = relay(
                client,
                &mut app,
                buffers,
                head,
                phase,
                prepared,
                self.body_timeout,
            )
            .await;
            match relayed {
                Relayed::Complete {
                    app_reusable,
                    close_client,
                } => {
                    drop(permit);
                    if app_reusable {
                        self.pool.give_back(app);
                    }
                    return if close_client {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    };
                }
                Relayed::Upgraded => {
                    // What the client sent after its upgrade request belongs to the new protocol.
                    if !buffers.request.is_empty() && app.write_all(&buffers.request).await.is_err()
                    {
                        return Next::Close;
                    }
                    buffers.request.clear();
                    if let Err(error) = tokio::io::copy_bidirectional(client, &mut app).await {
                        tracing::debug!(%error, "upgraded connection ended with an error");
                    }
                    // The tunnel held its slot for its whole life, like any request in the app.
                    drop(permit);
                    return Next::Close;
                }
                Relayed::Broken => return Next::Close,
                Relayed::BodyStalled { answer } => {
                    // The slot goes to the next request; the app connection, mid-body, goes too.
                    drop(permit);
                    self.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("a request body stopped arriving; answered 408");
                    if answer {
                        let _ = client.write_all(&own(&BODY_TIMEOUT, true)).await;
                    }
                    return Next::Close;
                }
                Relayed::NoResponse { retryable: true } if was_pooled => {
                    // The app had closed the pooled connection: the same bytes on a fresh one.
                    pooled = false;
                    prepared = true;
                }
                Relayed::NoResponse { .. } => {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.pool.upstream, "upstream closed without a response");
                    drop(permit);
                    return reply(client, &own(&BAD_GATEWAY, true), false).await;
                }
            }
        }
    }
}

/// What a connection idle between requests also waits for.
struct IdleWaits<'a> {
    idle: &'a mut Pin<Box<tokio::time::Sleep>>,
    closing: &'a mut Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// A client connection's buffers, reused request after request.
struct Buffers {
    /// The client's address as `X-Forwarded-For` names it.
    peer: String,
    /// Bytes read from the client not yet passed on (a head, part of a body, a next request).
    request: BytesMut,
    /// Bytes read from the app not yet passed on.
    response: BytesMut,
    /// A rewritten head (the request's, then the response's) and what goes out with it.
    head: Vec<u8>,
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
}

async fn reply(client: &mut TcpStream, bytes: &[u8], keep_alive: bool) -> Next {
    match client.write_all(bytes).await {
        Ok(()) if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Resolves when the client closes its side (or its connection fails). Bytes it sends meanwhile
/// (a pipelined request, or the body of this one) are kept in `buf` up to a bound; past it the
/// watch stops and this never resolves.
async fn watch_departure<R: AsyncRead + Unpin>(client: &mut R, buf: &mut BytesMut) {
    while buf.len() < MAX_READ_BUFFER {
        reserve(buf);
        match client.read_buf(buf).await {
            Ok(n) if n > 0 => continue,
            _ => return,
        }
    }
    std::future::pending::<()>().await
}

/// One exchange with the app on `app`: the request head (already rewritten in the head buffer)
/// and body go one way, the response the other, at the same time (the app may answer before it
/// has read the whole body, and an interim `100 Continue` must reach the client before it sends
/// the body). `prepared`: the head buffer already holds the whole request, sent before on a
/// connection that turned out closed.
async fn relay(
    client: &mut TcpStream,
    app: &mut TcpStream,
    buffers: &mut Buffers,
    head: &http1::Request,
    phase: &watch::Receiver<Phase>,
    prepared: bool,
    body_timeout: Duration,
) -> Relayed {
    let Buffers {
        request: buf,
        response: rbuf,
        head: out,
        ..
    } = buffers;
    let mut body = Body::new(head.framing);
    // The head and whatever of the body is here already, in one write.
    let body_done = if prepared {
        true
    } else {
        let Ok((taken, done)) = body.advance(buf, None) else {
            return Relayed::Broken;
        };
        out.extend_from_slice(&buf[..taken]);
        buf.advance(taken);
        done
    };
    if app.write_all(out).await.is_err() {
        return Relayed::NoResponse {
            retryable: body_done,
        };
    }
    // The request went whole in that write: a retry on another connection loses nothing.
    let whole_in_first_write = body_done;

    let body_sent = AtomicBool::new(body_done);
    let head_sent = AtomicBool::new(false);
    let (mut client_read, mut client_write) = client.split();
    let (mut app_read, mut app_write) = app.split();
    let client_side = async {
        if !body_done {
            loop {
                reserve(buf);
                // A body that stops arriving would hold its slot for as long as the client
                // likes: each read must bring something within the body timeout.
                match tokio::time::timeout(body_timeout, client_read.read_buf(buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    // The client left mid-body.
                    Ok(_) => return Relayed::Broken,
                    Err(_) => {
                        return Relayed::BodyStalled {
                            answer: !head_sent.load(Ordering::Relaxed),
                        };
                    }
                }
                let Ok((taken, done)) = body.advance(buf, None) else {
                    return Relayed::Broken;
                };
                if app_write.write_all(&buf[..taken]).await.is_err() {
                    // The app stopped reading; its response tells the rest.
                    return std::future::pending().await;
                }
                buf.advance(taken);
                if done {
                    body_sent.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        watch_departure(&mut client_read, buf).await;
        Relayed::Broken
    };
    let response = relay_response(
        &mut app_read,
        &mut client_write,
        rbuf,
        out,
        head,
        phase,
        (&body_sent, &head_sent),
    );
    tokio::select! {
        // The client left, broke its body or let it stall: the app connection goes, cancelling
        // the work.
        relayed = client_side => relayed,
        relayed = response => match relayed {
            Relayed::Complete { app_reusable, close_client } => {
                let body_whole = body_sent.load(Ordering::Relaxed);
                Relayed::Complete {
                    app_reusable: app_reusable && body_whole,
                    // A body the app did not wait for is still on its way: the client
                    // connection cannot be read for a next request.
                    close_client: close_client || !body_whole,
                }
            }
            Relayed::NoResponse { retryable } => Relayed::NoResponse {
                retryable: retryable && whole_in_first_write,
            },
            other => other,
        },
    }
}

/// Passes the app's response to the client: interim responses, the head rewritten, the body as
/// it arrives. `out` is reused for the response head. `sent` says whether the request body went
/// whole (read), and records when the response head is on its way to the client (written).
async fn relay_response<A, C>(
    app: &mut A,
    client: &mut C,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    head: &http1::Request,
    phase: &watch::Receiver<Phase>,
    sent: (&AtomicBool, &AtomicBool),
) -> Relayed
where
    A: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let (body_sent, head_sent) = sent;
    rbuf.clear();
    let response = loop {
        let parsed = match http1::response(rbuf, head.is_head, out) {
            Ok(parsed) => parsed,
            Err(_) => return Relayed::Broken,
        };
        match parsed {
            Some(response) if (100..200).contains(&response.status) && response.status != 101 => {
                // An interim response (100 Continue, 103 Early Hints): passed on, then the real one.
                out.extend_from_slice(b"\r\n");
                if client.write_all(out).await.is_err() {
                    return Relayed::Broken;
                }
                rbuf.advance(response.head_len);
            }
            Some(response) => break response,
            None if rbuf.len() >= MAX_RESPONSE_HEAD => return Relayed::Broken,
            None => {
                reserve(rbuf);
                match app.read_buf(rbuf).await {
                    Ok(n) if n > 0 => {}
                    // Nothing at all came back: the app closed a pooled connection, or died.
                    _ if rbuf.is_empty() => return Relayed::NoResponse { retryable: true },
                    _ => return Relayed::Broken,
                }
            }
        }
    };
    rbuf.advance(response.head_len);

    if response.status == 101 {
        let Some(upgrade) = response.upgrade.filter(|_| head.upgrade) else {
            return Relayed::Broken;
        };
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(&upgrade);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(rbuf);
        rbuf.clear();
        head_sent.store(true, Ordering::Relaxed);
        if client.write_all(out).await.is_err() {
            return Relayed::Broken;
        }
        return Relayed::Upgraded;
    }

    // An HTTP/1.0 client cannot read chunks: it gets the data, delimited by the close.
    let dechunk = head.http10 && response.framing == Framing::Chunked;
    // A request body the app answered before reading is still on its way: the connection cannot
    // be read for a next request, which the client is told. Draining, every response closes its
    // connection: the client's next request opens a new one, which the proxies route elsewhere
    // once they have dropped this pod (and the drain sees its traffic stop).
    let close_client = !head.keep_alive
        || !body_sent.load(Ordering::Relaxed)
        || dechunk
        || response.framing == Framing::UntilClose
        || *phase.borrow() != Phase::Serving;
    if response.framing == Framing::Chunked && !dechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    } else if head.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let mut body = Body::new(response.framing);
    let mut data = Vec::new();
    // The head and the body's first bytes, in one write.
    let Ok((taken, mut done)) = body.advance(rbuf, dechunk.then_some(&mut data)) else {
        return Relayed::Broken;
    };
    if dechunk {
        out.extend_from_slice(&data);
    } else {
        out.extend_from_slice(&rbuf[..taken]);
    }
    rbuf.advance(taken);
    head_sent.store(true, Ordering::Relaxed);
    if client.write_all(out).await.is_err() {
        return Relayed::Broken;
    }
    while !done {
        rbuf.clear();
        reserve(rbuf);
        match app.read_buf(rbuf).await {
            Ok(n) if n > 0 => {}
            // A body delimited by the close has ended; any other is cut short.
            _ if response.framing == Framing::UntilClose => {
                return Relayed::Complete {
                    app_reusable: false,
                    close_client: true,
                };
            }
            _ => return Relayed::Broken,
        }
        data.clear();
        let Ok((taken, ended)) = body.advance(rbuf, dechunk.then_some(&mut data)) else {
            return Relayed::Broken;
        };
        done = ended;
        let part = if dechunk { &data[..] } else { &rbuf[..taken] };
        if client.write_all(part).await.is_err() {
            return Relayed::Broken;
        }
        rbuf.advance(taken);
    }
    Relayed::Complete {
        // Bytes after the response (the app answering twice) mean a connection out of step.
        app_reusable: !response.app_closes && rbuf.is_empty(),
        close_client,
    }
}

/// Keep-alive connections to the app, at most `max_idle` of them kept idle (the concurrency:
/// more are never in use at once, upgrades aside).
struct Pool {
    upstream: String,
    idle: Mutex<Vec<(Instant, TcpStream)>>,
    max_idle: usize,
}

type PoolError = Box<dyn std::error::Error + Send + Sync>;

impl Pool {
    /// An idle connection that is still open (when `pooled`), or a new one; and which it was.
    async fn checkout(&self, pooled: bool) -> Result<(TcpStream, bool), PoolError> {
        if !pooled {
            return self.connect().await;
        }
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some((since, stream)) = candidate else {
                break;
            };
            // A connection the app closed reads end-of-file at once; one with data waiting
            // is out of step. Either is dropped.
            let mut probe = [0u8; 1];
            let open = matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if since.elapsed() < POOL_IDLE && open {
                return Ok((stream, true));
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<(TcpStream, bool), PoolError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.upstream))
            .await
            .map_err(|_| "connect timed out")??;
        let _ = stream.set_nodelay(true);
        Ok((stream, false))
    }

    fn give_back(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((Instant::now(), stream));
        }
    }
}
