//! RESP2 replies as the Redis reader gets them from a server it cannot trust: no panic, no hang,
//! bounded sizes (a huge declared length is refused, not allocated), the same answer whether the
//! bytes arrive at once or one by one, and a reply encoded again parses back to itself.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use asyncpool_contract::redis::Reply;
use asyncpool_contract::redis::fuzzing::{MAX_DEPTH, MAX_ELEMENTS, MAX_REPLY_BYTES, read_reply};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// Records the largest single allocation, so that a length taken from the input and allocated
/// before its bytes arrived shows up even when it is far below libFuzzer's malloc limit.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only sizes are recorded.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Hands its bytes out one at a time and is not ready before each: the most fragmented arrival
/// a socket can produce, every split point at once.
struct Trickle<'a> {
    bytes: &'a [u8],
    ready: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        if let Some((&first, rest)) = self.bytes.split_first()
            && buf.remaining() > 0
        {
            buf.put_slice(&[first]);
            self.bytes = rest;
        }
        Poll::Ready(Ok(()))
    }
}

/// Polls `future` to completion with a waker that does nothing: the readers here never wait on
/// anything but the next poll. None if it is still pending after `max_polls` (a hang).
fn complete<F: Future>(future: F, max_polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    (0..max_polls).find_map(|_| match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    })
}

/// The canonical RESP2 encoding of a reply.
fn encode(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Simple(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
        Reply::Error(text) => out.extend_from_slice(format!("-{text}\r\n").as_bytes()),
        Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        Reply::Bulk(Some(bytes)) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        Reply::Array(Some(items)) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// The reader's bounds hold for a reply it accepted.
fn check_bounds(reply: &Reply, depth: u8) {
    assert!(depth <= MAX_DEPTH, "reply nested {depth} deep");
    match reply {
        Reply::Simple(text) | Reply::Error(text) => {
            assert!(text.len() <= MAX_REPLY_BYTES, "{}-byte line", text.len());
        }
        Reply::Bulk(Some(bytes)) => {
            assert!(
                bytes.len() <= MAX_REPLY_BYTES,
                "{}-byte bulk string accepted (bound {MAX_REPLY_BYTES})",
                bytes.len()
            );
        }
        Reply::Array(Some(items)) => {
            assert!(
                items.len() as i64 <= MAX_ELEMENTS,
                "{} elements",
                items.len()
            );
            for item in items {
                check_bounds(item, depth + 1);
            }
        }
        Reply::Integer(_) | Reply::Bulk(None) | Reply::Array(None) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // At once, as from a socket that had the whole reply buffered.
    LARGEST.store(0, Ordering::Relaxed);
    let mut whole = BufReader::new(data);
    let at_once = complete(read_reply(&mut whole), 1).expect("bytes in memory need one poll");
    let largest = LARGEST.load(Ordering::Relaxed);
    let consumed_at_once = data.len() - whole.buffer().len() - whole.get_ref().len();
    // A bulk string is allocated whole before it is read, so up to the bound; anything else in
    // proportion to what actually arrived (an array's elements take 3 bytes each at least).
    let allowed = (MAX_REPLY_BYTES + 2).max(64 * data.len());
    assert!(
        largest <= allowed,
        "allocated {largest} bytes at once for a {}-byte input (allowed {allowed})",
        data.len()
    );

    // One byte at a time, not ready before each: two polls a byte, and two for the end.
    let mut trickle = BufReader::new(Trickle {
        bytes: data,
        ready: false,
    });
    let piecewise = complete(read_reply(&mut trickle), 2 * data.len() + 8)
        .expect("the reader hung on input that arrived in pieces");
    assert_eq!(piecewise, at_once, "the split changed the answer");

    let Ok(reply) = at_once else { return };
    let consumed_piecewise = data.len() - trickle.buffer().len() - trickle.get_ref().bytes.len();
    assert_eq!(
        consumed_piecewise, consumed_at_once,
        "the split changed where the reply ends"
    );
    assert!(consumed_at_once <= data.len());
    check_bounds(&reply, 0);

    let mut encoded = Vec::new();
    encode(&reply, &mut encoded);
    let mut again = BufReader::new(&encoded[..]);
    let reparsed = complete(read_reply(&mut again), 1).expect("bytes in memory need one poll");
    assert_eq!(reparsed, Ok(reply), "the encoded reply parses differently");
    assert!(
        again.buffer().is_empty() && again.get_ref().is_empty(),
        "the encoded reply was not read to its end"
    );
});
