//! The operator's connection to the API server: one HTTP/2 connection that every request and
//! watch stream shares, as client-go's does. kube's own client speaks HTTP/1.1, a connection per
//! request in flight: when a tenth of 1,000 pools change at once, sixty-odd reconciles write at
//! the same moment, each opens (and the API server handshakes) a TLS connection of its own, and
//! the connections idle on for a minute and a half, holding their buffers. Where the server
//! offers only HTTP/1.1 (a proxy in front of it), ALPN falls back to that.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use tower::util::BoxService;

/// A connection that has been quiet this long is pinged; one whose ping goes unanswered this
/// long is closed, and the next request opens another. A single connection that silently died
/// (a node's conntrack entry dropped, a load balancer's idle timeout) would otherwise stall
/// every request and watch at once; client-go checks its HTTP/2 connection the same way.
const PING_WHEN_IDLE: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a response may arrive before the operator reads it, per request and over the
/// connection. Unread data waits in the operator's memory, not in the kernel's socket buffers
/// as over HTTP/1.1, and the four caches' first lists (pages of a hundred pods) can arrive
/// faster than they are parsed: hyper's defaults, 2 and 5 MiB, would let that much pile up. A
/// quarter MiB a stream is 250 MB/s at a millisecond's round trip.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The request stack of [`Connection::builder`], boxed: its layers' types are kube's and
/// hyper's.
pub type ApiService =
    BoxService<http::Request<Body>, http::Response<hyper::body::Incoming>, tower::BoxError>;

type Http = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The connection to the API server of `config` (in-cluster or a kubeconfig, as kube infers
/// it), opened by the first request; every client built on it shares it.
#[derive(Clone)]
pub struct Connection {
    http: Http,
    config: kube::Config,
}

impl Connection {
    pub fn new(config: kube::Config) -> Result<Self, kube::Error> {
        Ok(Self {
            http: http_client(&config)?,
            config,
        })
    }

    /// A client builder on this connection; callers add their layers and build.
    pub fn builder(&self) -> Result<ClientBuilder<ApiService>, kube::Error> {
        let config = &self.config;
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(
                config
                    .default_retry
                    .then(|| RetryLayer::new(RetryPolicy::server_retry())),
            )
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(tower::BoxError::from)
            .service(self.http.clone());
        Ok(ClientBuilder::new(
            BoxService::new(service),
            config.default_namespace.clone(),
        ))
    }
}

fn http_client(config: &kube::Config) -> Result<Http, kube::Error> {
    let mut tcp = HttpConnector::new();
    // The scheme is the TLS connector's business.
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    tcp.set_nodelay(true);
    let tls =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config.rustls_client_config()?);
    let tls = tls.https_or_http();
    let tls = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?;
            tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => tls,
    };
    let connector = tls.enable_all_versions().wrap_connector(tcp);
    Ok(HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_WHEN_IDLE)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector))
}
