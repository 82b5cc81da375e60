//! The operator's own HTTP endpoints: `/metrics` for Prometheus, `/livez` and `/readyz` for the
//! kubelet's probes (ready once the caches hold a full list).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Pause after a failed accept, doubling while accepts keep failing: running out of file
/// descriptors must not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                stream
            }
            Err(error) => {
                tracing::warn!(%error, pause = ?backoff, "accepting an HTTP connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (status, body) =
                        respond(request.uri().path(), &metrics, ready.load(Ordering::SeqCst));
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    async move { Ok::<_, Infallible>(response) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The answer to a GET of `path`.
fn respond(path: &str, metrics: &Metrics, ready: bool) -> (StatusCode, String) {
    match path {
        "/metrics" => (StatusCode::OK, metrics.encode()),
        "/livez" => (StatusCode::OK, "ok\n".into()),
        "/readyz" if ready => (StatusCode::OK, "ok\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced\n".into(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_caches_and_liveness_the_process() {
        let metrics = Metrics::default();
        assert_eq!(respond("/livez", &metrics, false).0, StatusCode::OK);
        assert_eq!(
            respond("/readyz", &metrics, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond("/readyz", &metrics, true).0, StatusCode::OK);
        assert_eq!(respond("/nope", &metrics, true).0, StatusCode::NOT_FOUND);
        metrics.leader.set(1);
        let (status, text) = respond("/metrics", &metrics, true);
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("asyncpool_leader 1"), "{text}");
    }

    #[tokio::test]
    async fn the_endpoints_answer_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let ready = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(serve(listener, Arc::new(Metrics::default()), ready.clone()));
        let get = |path: &'static str| asyncpool_testkit::http::get(address, path);
        assert_eq!(get("/readyz").await.map(|a| a.0), Some(503));
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get("/readyz").await.map(|a| a.0), Some(200));
        assert_eq!(get("/livez").await, Some((200, "ok\n".to_owned())));
        server.abort();
    }
}
