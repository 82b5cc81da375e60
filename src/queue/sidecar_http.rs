//! The few bytes of HTTP/1.1 the operator speaks to sidecars: one `GET`, a response head parsed
//! with httparse, then the body framed by Content-Length, chunked encoding or the connection's
//! end, read as it arrives. A general client holds buffers of 8 KiB and more per connection;
//! at one watch stream per worker pod that was most of the operator's memory at ten thousand
//! pods. Here a connection holds no buffer while it waits: it waits until the socket is
//! readable, and only then takes one. Anything malformed or oversized is an error, never a
//! guess.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes read at a time at least: a snapshot line is about 250.
const READ_SIZE: usize = 512;
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("connection failed: {0}")]
    Io(String),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("connection closed early")]
    Closed,
}

impl From<std::io::Error> for HttpError {
    fn from(error: std::io::Error) -> Self {
        HttpError::Io(error.to_string())
    }
}

enum Framing {
    Length(u64),
    /// Data left in the current chunk; `None` between chunks (a size line comes next).
    Chunked(Option<u64>),
    /// A chunk's data has all been handed over; its CRLF comes next.
    ChunkEnd,
    /// The last chunk came; trailer lines come next, up to an empty one.
    Trailers,
    UntilClose,
    Done,
}

/// A response whose body is read piece by piece.
pub struct Response {
    pub status: u16,
    stream: TcpStream,
    buffer: BytesMut,
    framing: Framing,
}

/// Sends `GET path` on `stream` and reads the response head.
pub async fn get(mut stream: TcpStream, host: &str, path: &str) -> Result<Response, HttpError> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = BytesMut::new();
    loop {
        match parse_head(&buffer)? {
            Some((status, framing, length)) => {
                buffer.advance(length);
                return Ok(Response {
                    status,
                    stream,
                    buffer,
                    framing,
                });
            }
            None if buffer.len() < MAX_HEAD => {
                if read_more(&mut stream, &mut buffer).await? == 0 {
                    return Err(HttpError::Closed);
                }
            }
            None => return Err(HttpError::Malformed("head too long")),
        }
    }
}

/// The status, the body's framing and the head's length once `buffer` holds a whole head;
/// `None` while it is partial. Apart from `get` so that the header array is not kept in every
/// reader's future across its reads (a kilobyte per watched pod).
fn parse_head(buffer: &[u8]) -> Result<Option<(u16, Framing, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    match head.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => {
            let status = head.code.ok_or(HttpError::Malformed("no status"))?;
            Ok(Some((status, framing(head.headers)?, length)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HttpError::Malformed("not an HTTP/1.1 response head")),
    }
}

/// The values of the headers called `name`, in order.
fn values<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim())
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, HttpError> {
    if let Some(coding) = values(headers, "transfer-encoding").last() {
        // Chunked must be the final coding (RFC 9112 6.1); no other coding is expected here.
        return if coding.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked(None))
        } else {
            Err(HttpError::Malformed("unsupported transfer-encoding"))
        };
    }
    let mut lengths = values(headers, "content-length");
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(Framing::UntilClose),
        (Some(length), None) => length
            .parse()
            .map(Framing::Length)
            .map_err(|_| HttpError::Malformed("invalid content-length")),
        (Some(_), Some(_)) => Err(HttpError::Malformed("more than one content-length")),
    }
}

/// Reads what has arrived onto `buffer`; 0 at the end of the stream.
async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<usize, HttpError> {
    std::future::poll_fn(|cx| poll_read_more(stream, buffer, cx)).await
}

/// [`read_more`] as a poll. An empty buffer gives its memory back before the wait: an idle
/// watch stream (all of them, between lines) holds none.
fn poll_read_more(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, HttpError>> {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = BytesMut::new();
    }
    ready!(stream.poll_read_ready(cx))?;
    buffer.reserve(READ_SIZE);
    // Through `AsyncRead` rather than `try_read_buf`: a read that leaves part of the buffer
    // empty tells tokio the socket is drained, so the next wait sleeps at once instead of
    // after a read that finds nothing (a second system call for every watch line).
    Poll::Ready(Ok(ready!(tokio_util::io::poll_read_buf(
        Pin::new(stream),
        cx,
        buffer
    ))?))
}

impl Response {
    /// The next piece of the body; `None` once it has all arrived.
    pub async fn data(&mut self) -> Result<Option<Bytes>, HttpError> {
        std::future::poll_fn(|cx| self.poll_data(cx)).await
    }

    /// [`Response::data`] as a poll. Where the body stands is kept in the response itself, not
    /// in a future: a poll left pending and dropped loses nothing, and a watch stream waiting
    /// for its next line holds no future of a few hundred bytes (times ten thousand streams).
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, HttpError>> {
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(Ok(None)),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Poll::Ready(Ok(None));
                }
                Framing::Length(left) | Framing::Chunked(Some(left)) if !self.buffer.is_empty() => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buffer.len());
                    let piece = self.buffer.split_to(take).freeze();
                    let left = left - take as u64;
                    self.framing = match self.framing {
                        Framing::Chunked(_) if left == 0 => Framing::ChunkEnd,
                        Framing::Chunked(_) => Framing::Chunked(Some(left)),
                        _ => Framing::Length(left),
                    };
                    return Poll::Ready(Ok(Some(piece)));
                }
                Framing::ChunkEnd => match self.take_line(2)? {
                    Some(line) if line.is_empty() => self.framing = Framing::Chunked(None),
                    Some(_) => {
                        return Poll::Ready(Err(HttpError::Malformed(
                            "chunk data longer than its size",
                        )));
                    }
                    None => ready!(self.poll_more_or_closed(cx))?,
                },
                Framing::Chunked(None) => match self.take_line(MAX_CHUNK_LINE)? {
                    Some(line) => {
                        self.framing = match chunk_size(&line)? {
                            0 => Framing::Trailers,
                            size => Framing::Chunked(Some(size)),
                        };
                    }
                    None => ready!(self.poll_more_or_closed(cx))?,
                },
                Framing::Trailers => match self.take_line(MAX_CHUNK_LINE)? {
                    Some(line) if line.is_empty() => {
                        self.framing = Framing::Done;
                        return Poll::Ready(Ok(None));
                    }
                    Some(_) => {}
                    None => ready!(self.poll_more_or_closed(cx))?,
                },
                Framing::UntilClose if !self.buffer.is_empty() => {
                    return Poll::Ready(Ok(Some(self.buffer.split().freeze())));
                }
                Framing::UntilClose => {
                    if ready!(poll_read_more(&mut self.stream, &mut self.buffer, cx))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(Ok(None));
                    }
                }
                Framing::Length(_) | Framing::Chunked(Some(_)) => {
                    ready!(self.poll_more_or_closed(cx))?;
                }
            }
        }
    }

    /// More of the body read onto the buffer; an error if the connection ended instead.
    fn poll_more_or_closed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        match ready!(poll_read_more(&mut self.stream, &mut self.buffer, cx))? {
            0 => Poll::Ready(Err(HttpError::Closed)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// One CRLF-terminated line (without its end) off the buffer, at most `max` bytes long;
    /// `None` while the buffer holds no whole line.
    fn take_line(&mut self, max: usize) -> Result<Option<BytesMut>, HttpError> {
        if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
            let mut line = self.buffer.split_to(end + 2);
            line.truncate(end);
            return Ok(Some(line));
        }
        if self.buffer.len() > max {
            return Err(HttpError::Malformed("line too long"));
        }
        Ok(None)
    }
}

/// The size of a chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .map_err(|_| HttpError::Malformed("invalid chunk size"))?
        .trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HttpError::Malformed("invalid chunk size"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| HttpError::Malformed("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Both ends of a loopback TCP connection: the client's, the server's.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    /// The response to one GET, from `wire` as the server sent it (the request goes unread).
    async fn exchange(wire: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
        let (client, mut server) = connection().await;
        let wire = wire.to_vec();
        // Written beside the reading: a response longer than the socket's buffers must not
        // wait for a reader that has not started.
        tokio::spawn(async move {
            // A client that refuses the head early may close before the rest is written.
            drop(server.write_all(&wire).await);
            drop(server.shutdown().await);
            // Keep the server's end open until the client has read (no reset).
            let mut rest = Vec::new();
            drop(server.read_to_end(&mut rest).await);
        });
        let mut response = get(client, "pod", "/queue").await?;
        let mut body = Vec::new();
        while let Some(piece) = response.data().await? {
            body.extend_from_slice(&piece);
        }
        Ok((response.status, body))
    }

    #[tokio::test]
    async fn bodies_by_length_by_chunks_and_until_close() {
        let length = exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA").await;
        assert_eq!(length, Ok((200, b"hello".to_vec())));
        let chunked = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
        )
        .await;
        assert_eq!(chunked, Ok((200, b"abcde".to_vec())));
        let until_close = exchange(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndraining\n").await;
        assert_eq!(until_close, Ok((503, b"draining\n".to_vec())));
    }

    #[tokio::test]
    async fn malformed_responses_are_errors() {
        for wire in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            // Cut short: the body, a chunk, the head.
            b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ncontent-",
        ] {
            assert!(
                exchange(wire).await.is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\nx-padding: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            exchange(&huge).await,
            Err(HttpError::Malformed("head too long"))
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(exchange(&many).await.is_err(), "accepted too many headers");
    }

    #[tokio::test]
    async fn a_read_left_pending_and_dropped_loses_nothing() {
        let (client, mut server) = connection().await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1")
            .await
            .expect("write");
        let mut response = get(client, "pod", "/queue?watch=true").await.expect("head");
        // Half a chunk-size line has arrived: the read waits, and is given up (a watch stream
        // does so at its idle deadline).
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(response.poll_data(&mut cx).is_pending());
        server
            .write_all(b"0\r\n0123456789abcdef\r\n0\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(
            response.data().await.expect("piece").as_deref(),
            Some(&b"0123456789abcdef"[..])
        );
        assert_eq!(response.data().await, Ok(None));
    }

    #[tokio::test]
    async fn a_stream_hands_over_each_piece_as_it_arrives() {
        let (client, mut server) = connection().await;
        let reading = tokio::spawn(async move {
            let mut response = get(client, "pod", "/queue?watch=true").await?;
            let first = response.data().await?;
            let second = response.data().await?;
            Ok::<_, HttpError>((response.status, first, second))
        });
        let mut request = [0u8; 256];
        let n = server.read(&mut request).await.expect("the request");
        assert!(request[..n].starts_with(b"GET /queue?watch=true HTTP/1.1\r\nhost: pod\r\n"));
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\none\n\r\n")
            .await
            .expect("write");
        // Each chunk's data is its own piece, whenever it arrives.
        server.write_all(b"4\r\ntwo\n\r\n").await.expect("write");
        let (status, first, second) = reading.await.expect("task").expect("pieces");
        assert_eq!(status, 200);
        assert_eq!(first.as_deref(), Some(&b"one\n"[..]));
        assert_eq!(second.as_deref(), Some(&b"two\n"[..]));
    }
}
