//! The sidecar's HTTP/1 framing (crates/sidecar/src/http1.rs), fed what a client or an app may
//! send. Besides no panic, what keeps a proxy from being smuggled through:
//! - a request head is where the parser says it is: the bytes after it change nothing, and no
//!   part of it is taken for a head (the sidecar parses its buffer again as more arrives);
//! - the head the app gets parses, is origin-form HTTP/1.1 without hop-by-hop headers, and
//!   frames the body exactly as the sidecar does (one framing, never Content-Length beside
//!   Transfer-Encoding);
//! - a response head passed to the client frames its body as the sidecar relays it;
//! - a chunked body ends where a strict reference decoder says, whatever the split of its bytes.
#![no_main]

use asyncpool_sidecar::http1::{self, Chunked, Framing, Request};
use libfuzzer_sys::fuzz_target;

const PEER: &str = "10.0.0.7";
const UPSTREAM: &str = "127.0.0.1:8000";
/// Room for every header the sidecar forwards and the ones it adds.
const MAX_FORWARDED_HEADERS: usize = 256;
/// Trailer bytes the reference accepts when its verdict binds the sidecar: under the sidecar's
/// own bound, so that a body the reference takes is within the sidecar's bound too.
const REFERENCE_MAX_TRAILERS: usize = 4 * 1024;
/// Likewise for a chunk-size line: RFC 9112 sets no bound on extensions, and a proxy may well
/// refuse to read one forever, so the sidecar is held to the reference on sane lines only.
const REFERENCE_MAX_LINE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let body = match check_request(data) {
        Some(request) if request.framing == Framing::Chunked => &data[request.head_len..],
        Some(_) => &[],
        // Not a request: as a chunked body on its own.
        None => data,
    };
    check_chunked(body);
    check_response(data, false);
    check_response(data, true);
});

/// The headers that frame a message, as its next reader sees them.
#[derive(Default)]
struct SeenHeaders<'a> {
    lengths: Vec<&'a [u8]>,
    encodings: Vec<&'a [u8]>,
    hosts: usize,
    forwarded_for: Vec<&'a [u8]>,
    connection: Vec<&'a [u8]>,
    upgrade: Vec<&'a [u8]>,
}

fn seen_headers<'a>(headers: &[httparse::Header<'a>]) -> SeenHeaders<'a> {
    let mut seen = SeenHeaders::default();
    for header in headers {
        match header.name.to_ascii_lowercase().as_str() {
            "content-length" => seen.lengths.push(header.value),
            "transfer-encoding" => seen.encodings.push(header.value),
            "host" => seen.hosts += 1,
            "x-forwarded-for" => seen.forwarded_for.push(header.value),
            "connection" => seen.connection.push(header.value),
            "upgrade" => seen.upgrade.push(header.value),
            name @ ("te"
            | "trailer"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization") => panic!("hop-by-hop header {name} passed on"),
            _ => {}
        }
    }
    seen
}

/// Whether the next reader, given these headers, frames the body as `framing`.
fn assert_frames_as(seen: &SeenHeaders<'_>, framing: Framing, head: &[u8]) {
    let head = String::from_utf8_lossy(head);
    let lengths_are = |n: u64| {
        seen.lengths
            .iter()
            .all(|value| std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) == Some(n))
    };
    match framing {
        Framing::Chunked => assert!(
            seen.lengths.is_empty() && seen.encodings == [b"chunked"],
            "chunked, but the head passed on says otherwise: {head:?}"
        ),
        Framing::Length(n) => assert!(
            seen.encodings.is_empty() && !seen.lengths.is_empty() && lengths_are(n),
            "{n} bytes long, but the head passed on says otherwise: {head:?}"
        ),
        Framing::Empty => assert!(
            seen.encodings.is_empty() && lengths_are(0),
            "no body, but the head passed on says otherwise: {head:?}"
        ),
        Framing::UntilClose => assert!(
            seen.encodings.is_empty() && seen.lengths.is_empty(),
            "delimited by the close, but the head passed on says otherwise: {head:?}"
        ),
    }
}

fn check_request(data: &[u8]) -> Option<Request> {
    let mut out = Vec::new();
    let Ok(Some(request)) = http1::request(data, PEER, UPSTREAM, &mut out) else {
        return None;
    };
    let head_len = request.head_len;
    assert!(
        head_len > 0 && head_len <= data.len(),
        "head of {head_len} bytes"
    );
    assert_ne!(
        request.framing,
        Framing::UntilClose,
        "a request delimited by the close"
    );

    let mut again = Vec::new();
    assert_eq!(
        http1::request(&data[..head_len], PEER, UPSTREAM, &mut again),
        Ok(Some(request.clone())),
        "what follows the head changed it"
    );
    assert_eq!(again, out, "what follows the head changed its rewrite");
    for cut in [head_len - 1, head_len / 2] {
        assert_eq!(
            http1::request(&data[..cut], PEER, UPSTREAM, &mut again),
            Ok(None),
            "the first {cut} bytes of a {head_len}-byte head"
        );
    }

    let mut headers = [httparse::EMPTY_HEADER; MAX_FORWARDED_HEADERS];
    let mut forwarded = httparse::Request::new(&mut headers);
    let parsed = forwarded.parse(&out);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(out.len())),
        "the app's head does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(forwarded.version, Some(1), "not HTTP/1.1 to the app");
    let target = forwarded.path.unwrap_or_default();
    assert!(
        target.starts_with('/') || (target == "*" && forwarded.method == Some("OPTIONS")),
        "target {target:?} is not origin-form"
    );
    let seen = seen_headers(forwarded.headers);
    assert_frames_as(&seen, request.framing, &out);
    assert!(seen.hosts >= 1, "no Host for the app");
    assert!(
        seen.forwarded_for.len() == 1 && seen.forwarded_for[0].ends_with(PEER.as_bytes()),
        "X-Forwarded-For does not end with the client"
    );
    if request.upgrade {
        assert!(seen.connection == [b"upgrade"] && seen.upgrade.len() == 1);
    } else {
        assert!(
            seen.connection.is_empty() && seen.upgrade.is_empty(),
            "an upgrade's headers passed on without an upgrade"
        );
    }
    Some(request)
}

fn check_response(data: &[u8], request_is_head: bool) {
    let mut out = Vec::new();
    let Ok(Some(response)) = http1::response(data, request_is_head, &mut out) else {
        return;
    };
    assert!(response.head_len > 0 && response.head_len <= data.len());
    // What the relay adds to the head (proxy.rs): the chunked framing it keeps, a blank line.
    if response.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_FORWARDED_HEADERS];
    let mut forwarded = httparse::Response::new(&mut headers);
    let parsed = forwarded.parse(&out);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(out.len())),
        "the client's head does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(forwarded.code, Some(response.status));
    let seen = seen_headers(forwarded.headers);
    let bodiless = request_is_head || matches!(response.status, 100..=199 | 204 | 304);
    if bodiless {
        // A HEAD response keeps the length of the body it does not carry.
        assert_eq!(response.framing, Framing::Empty);
        assert!(seen.encodings.is_empty());
    } else {
        assert_frames_as(&seen, response.framing, &out);
    }
}

/// What a chunked body parser made of some bytes: where the body ends (if it did) and its data.
#[derive(Debug, PartialEq)]
enum Verdict {
    Done { end: usize, data: Vec<u8> },
    Incomplete,
    Invalid(&'static str),
}

/// Feeds `pieces` to one tracker in turn, as reads would.
fn track<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Verdict {
    let mut chunked = Chunked::default();
    let mut data = Vec::new();
    let mut end = 0;
    for piece in pieces {
        match chunked.advance(piece, Some(&mut data)) {
            Ok(progress) => {
                assert!(progress.consumed <= piece.len());
                assert_eq!(progress.done, chunked.is_done());
                end += progress.consumed;
                if progress.done {
                    return Verdict::Done { end, data };
                }
                assert_eq!(progress.consumed, piece.len(), "stopped short of the end");
            }
            Err(why) => return Verdict::Invalid(why),
        }
    }
    Verdict::Incomplete
}

/// The line from `at`: its content and where the next begins. A line ends with CR LF, or LF
/// alone (RFC 9112 §2.2 lets a recipient take it); a CR anywhere else is invalid.
fn line(body: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, &'static str> {
    let rest = &body[at..];
    let Some(lf) = rest.iter().position(|b| *b == b'\n') else {
        return match rest.iter().position(|b| *b == b'\r') {
            Some(cr) if cr + 1 < rest.len() => Err("bare CR"),
            _ => Ok(None),
        };
    };
    let content = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
    if content.contains(&b'\r') {
        return Err("bare CR");
    }
    Ok(Some((content, at + lf + 1)))
}

/// RFC 9112 §7.1, written for clarity: chunk sizes of 1 to 15 hex digits (the sidecar's
/// bound), extensions after `;` or whitespace ignored, size lines up to `max_line` bytes,
/// trailer sections up to `max_trailers`.
fn reference(body: &[u8], max_line: usize, max_trailers: usize) -> Verdict {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let (size_line, next) = match line(body, at) {
            Ok(Some(line)) => line,
            Ok(None) => return Verdict::Incomplete,
            Err(why) => return Verdict::Invalid(why),
        };
        if size_line.len() > max_line {
            return Verdict::Invalid("chunk size line too long");
        }
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let extension = &size_line[digits..];
        if digits == 0 || digits > 15 {
            return Verdict::Invalid("chunk size");
        }
        if !(extension.is_empty() || matches!(extension[0], b';' | b' ' | b'\t')) {
            return Verdict::Invalid("chunk size");
        }
        let size = size_line[..digits].iter().fold(0u64, |n, d| {
            n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
        });
        at = next;
        if size == 0 {
            let start = at;
            loop {
                let (trailer, next) = match line(body, at) {
                    Ok(Some(line)) => line,
                    Ok(None) => return Verdict::Incomplete,
                    Err(why) => return Verdict::Invalid(why),
                };
                at = next;
                if trailer.is_empty() {
                    return Verdict::Done { end: at, data };
                }
                if at - start > max_trailers {
                    return Verdict::Invalid("trailers too large");
                }
            }
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if body.len() - at < size {
            return Verdict::Incomplete;
        }
        data.extend_from_slice(&body[at..at + size]);
        at += size;
        match body.get(at..at + 2).unwrap_or(&body[at..]) {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n'] => at += 2,
            [] | [b'\r'] => return Verdict::Incomplete,
            _ => return Verdict::Invalid("chunk data longer than its size"),
        }
    }
}

fn check_chunked(body: &[u8]) {
    let at_once = track(std::iter::once(body));
    let bytewise = track(body.chunks(1));
    assert_eq!(at_once, bytewise, "the split changed the verdict");
    let Verdict::Done { end, data } = &at_once else {
        // What the reference takes within its bounds, the sidecar takes too.
        if let Verdict::Done { end, .. } =
            reference(body, REFERENCE_MAX_LINE, REFERENCE_MAX_TRAILERS)
        {
            panic!(
                "{:?} ends a valid chunked body, the sidecar says {at_once:?}",
                String::from_utf8_lossy(&body[..end])
            );
        }
        return;
    };
    // Where the sidecar ends a body, a strict decoder ends it too, with the same data: the app
    // behind it must not read the body's bytes as a different message.
    assert_eq!(
        reference(body, usize::MAX, usize::MAX),
        Verdict::Done {
            end: *end,
            data: data.clone()
        },
        "the sidecar ends the body at {end}: {:?}",
        String::from_utf8_lossy(&body[..*end])
    );
}
