//! The serving port: an HTTP/1.1 reverse proxy to the app on localhost, through the limiter.
//!
//! Bodies are streamed both ways frame by frame (an SSE or chunked LLM reply reaches the client
//! chunk by chunk; an upload is read from the client only as fast as the app reads it), and an
//! admitted request keeps its slot until its response body has been passed on entirely.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::drain::{Drain, Phase};
use crate::limiter::{Limiter, Permit, Refused};
use crate::server_builder;

/// Bound on connecting to the app; a dead app must turn into a quick 502, not a hung request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled app connections idle longer than this are dropped rather than reused: uvicorn closes
/// idle keep-alive connections after 5 s, and reusing one as it closes fails the request.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// What clients are told to wait before retrying a refused request.
const RETRY_AFTER_SECONDS: &str = "1";

/// A response the proxy sends: the app's body streamed through, or a short one of its own.
pub type ResponseBody = Either<Streamed, Full<Bytes>>;

/// Counters of the proxy's own outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub queue_timeouts: AtomicU64,
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
/// connections is the thread's own (its connections are driven by the thread's runtime).
pub struct Proxy {
    limiter: Arc<Limiter>,
    pool: Arc<Pool>,
    queue_timeout: Duration,
    stats: Arc<Stats>,
}

impl Proxy {
    pub fn new(
        limiter: Arc<Limiter>,
        upstream: String,
        queue_timeout: Duration,
        max_idle: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Proxy {
            limiter,
            pool: Arc::new(Pool {
                upstream,
                idle: Mutex::new(Vec::new()),
                max_idle,
            }),
            queue_timeout,
            stats,
        }
    }

    /// Accepts connections until the task is dropped. After the drain's grace, connections are
    /// shut down gracefully: requests under way (running or queued) finish, idle ones close.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: Arc<Drain>,
        header_timeout: Duration,
    ) {
        let builder = server_builder(header_timeout);
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
            let proxy = Arc::clone(&self);
            let mut phase = drain.subscribe();
            let connection = builder
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| Arc::clone(&proxy).handle(request, peer)),
                )
                .with_upgrades();
            // A connection accepted after the grace is not closed unanswered: its request gets
            // the 503 "draining" with `Connection: close`, which clients retry elsewhere. It
            // carries no admitted work, so the exit does not wait for it.
            let accepted_after_grace = *phase.borrow_and_update() == Phase::Closed;
            let open = (!accepted_after_grace).then(|| OpenConnection::new(&self.stats));
            tokio::spawn(async move {
                let _open = open;
                tokio::pin!(connection);
                if !accepted_after_grace {
                    let closed = phase.wait_for(|phase| *phase == Phase::Closed);
                    tokio::select! {
                        result = connection.as_mut() => return log_connection_end(result),
                        _ = closed => connection.as_mut().graceful_shutdown(),
                    }
                }
                log_connection_end(connection.await);
            });
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let ticket = match self.limiter.arrive() {
            Ok(ticket) => ticket,
            Err(Refused::QueueFull) => return Ok(unavailable("queue full\n", false)),
            // Draining: the client should take its retry to another pod, on a new connection.
            Err(Refused::Closed) => return Ok(unavailable("draining\n", true)),
        };
        let permit = match ticket.try_admitted() {
            // A free slot at arrival: no queue, no timer.
            Ok(permit) => permit,
            // Dropping this future (the client went away) drops the ticket, which leaves the queue.
            Err(ticket) => {
                match tokio::time::timeout(self.queue_timeout, ticket.admitted()).await {
                    Ok(permit) => permit,
                    Err(_) => {
                        self.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Ok(unavailable("queue timeout\n", false));
                    }
                }
            }
        };
        Ok(self.forward(request, peer, permit).await)
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        permit: Permit,
    ) -> Response<ResponseBody> {
        let upgrade = upgrade_protocol(request.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let request = rewrite_request(request, peer, upgrade, &self.pool.upstream);
        let sent = match client_upgrade {
            None => self.pool.send(request).await,
            Some(client_upgrade) => match self.pool.send_upgradeable(request).await {
                Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, upstream_upgrade, permit));
                    let (mut parts, _) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers, true);
                    return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                }
                // The app declined the upgrade: an ordinary response on a connection not reused.
                Ok(response) => Ok((response, None)),
                Err(error) => Err(error),
            },
        };
        match sent {
            Ok((response, reuse)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                let body = Streamed {
                    inner: body,
                    done: Some(Done {
                        _permit: permit,
                        reuse: reuse.map(|sender| (Arc::clone(&self.pool), sender)),
                    }),
                };
                Response::from_parts(parts, Either::Left(body))
            }
            Err(error) => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, upstream = %self.pool.upstream, "upstream request failed");
                text(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
            }
        }
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Clients that vanish, time out on headers or send garbage: routine at debug level.
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// Carries the bytes of an upgraded connection (WebSocket) both ways; the request keeps its
/// slot for the life of the tunnel, like any request still running in the app.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    permit: Permit,
) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
    drop(permit);
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn unavailable(body: &'static str, close: bool) -> Response<ResponseBody> {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, body);
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The protocol a request asks to upgrade to, if it does so properly (`Connection: upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
    if keep_upgrade && let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// Turns the client's request into the app's: origin-form URI, HTTP/1.1, hop-by-hop headers
/// dropped (the upgrade pair kept for an upgrade), X-Forwarded-For and -Proto set.
fn rewrite_request(
    request: Request<Incoming>,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
    upstream: &str,
) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    // An absolute-form target (`GET http://host/path`) becomes origin-form for the app.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if let Some(authority) = parts.uri.authority()
            && !parts.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    if !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(upstream)
    {
        // HTTP/1.0 clients may omit Host; HTTP/1.1 apps (h11) refuse a request without one.
        parts.headers.insert(header::HOST, host);
    }
    let client_ip = peer.ip().to_string();
    let previous: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = if previous.is_empty() {
        client_ip
    } else {
        format!("{}, {client_ip}", previous.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    // A proxy in front of this one (an ingress ending TLS) knows the scheme better than we do.
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    Request::from_parts(parts, body)
}

/// Keep-alive connections to the app, at most `max_idle` of them kept idle (the concurrency:
/// more are never in use at once, upgrades aside).
struct Pool {
    upstream: String,
    idle: Mutex<Vec<(Instant, client::SendRequest<Incoming>)>>,
    max_idle: usize,
}

type PoolError = Box<dyn std::error::Error + Send + Sync>;

impl Pool {
    fn checkout(&self) -> Option<client::SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((since, sender)) = idle.pop() {
            if since.elapsed() < POOL_IDLE && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, sender: client::SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((Instant::now(), sender));
        }
    }

    async fn connect(&self) -> Result<TcpStream, PoolError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.upstream))
            .await
            .map_err(|_| "connect timed out")??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn open(&self) -> Result<client::SendRequest<Incoming>, PoolError> {
        let (sender, connection) = client::handshake(TokioIo::new(self.connect().await?)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends on a pooled connection, or a new one. A pooled connection that the app closed in
    /// the meantime hands the request back unsent, and it is retried on a fresh connection.
    async fn send(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Option<client::SendRequest<Incoming>>), PoolError> {
        while let Some(mut sender) = self.checkout() {
            // Just given back, the connection may need a moment to be idle again.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Some(sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        let mut sender = self.open().await?;
        let response = sender.send_request(request).await?;
        Ok((response, Some(sender)))
    }

    /// Sends an upgrade request on a dedicated connection that can be taken over.
    async fn send_upgradeable(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, PoolError> {
        let (mut sender, connection) =
            client::handshake(TokioIo::new(self.connect().await?)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream upgrade connection ended with an error");
            }
        });
        Ok(sender.send_request(request).await?)
    }
}

/// What a finished response releases: its slot, and its app connection back to the pool.
struct Done {
    _permit: Permit,
    reuse: Option<(Arc<Pool>, client::SendRequest<Incoming>)>,
}

/// The app's response body, passed through frame by frame.
pub struct Streamed {
    inner: Incoming,
    done: Option<Done>,
}

impl Streamed {
    /// Releases the slot; the connection goes back to the pool only after a complete body.
    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take()
            && complete
            && let Some((pool, sender)) = done.reuse
        {
            pool.give_back(sender);
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(true),
            Some(Err(_)) => this.finish(false),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(true),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is never polled; a client gone mid-body leaves the
        // app connection in an unknown state, so it is not reused.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_headers_and_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn keeps_the_upgrade_pair_for_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            upgrade_protocol(&headers),
            Some(HeaderValue::from_static("websocket"))
        );
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(headers.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn an_upgrade_header_without_connection_upgrade_is_no_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&headers), None);
    }
}
