//! The one HTTP/1.1 client of the test kit, for loopback peers (sidecars, the operator's
//! endpoints, test apps): one connection per request, the whole reply.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

/// A whole reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request on a fresh connection and reads the whole reply, or says what failed.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// An answer: status code and body as text.
pub type Answer = (u16, String);

/// Sends one request; `None` when the peer cannot be reached or does not answer within `limit`.
pub async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    limit: Duration,
) -> Option<Answer> {
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("content-type", "application/json")]
    } else {
        &[]
    };
    let body = Bytes::from(body.unwrap_or_default());
    let reply = tokio::time::timeout(limit, send(address, method, path, headers, body))
        .await
        .ok()?
        .ok()?;
    Some((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

pub async fn get(address: SocketAddr, path: &str) -> Option<Answer> {
    exchange(address, "GET", path, None, Duration::from_secs(2)).await
}

pub async fn post_json(address: SocketAddr, path: &str, body: String) -> Option<Answer> {
    exchange(address, "POST", path, Some(body), Duration::from_secs(2)).await
}
