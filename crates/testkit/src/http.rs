//! A minimal HTTP/1.1 client for loopback tools: one connection per request, a whole-exchange
//! timeout, and the status and body as text.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::net::TcpStream;

/// An answer: status code and body.
pub type Answer = (u16, String);

/// Sends one request; `None` when the peer cannot be reached or does not answer in time.
pub async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    limit: Duration,
) -> Option<Answer> {
    let work = async {
        let stream = TcpStream::connect(address).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, address.to_string());
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

pub async fn get(address: SocketAddr, path: &str) -> Option<Answer> {
    exchange(address, "GET", path, None, Duration::from_secs(2)).await
}

pub async fn post_json(address: SocketAddr, path: &str, body: String) -> Option<Answer> {
    exchange(address, "POST", path, Some(body), Duration::from_secs(2)).await
}
