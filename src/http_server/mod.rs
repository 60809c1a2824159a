//! The pieces of a small blocking HTTP/1.1 server that the sandbox gateway
//! (`sandbox::http`, a thread per connection with keep-alive) and the webhook receiver
//! (`webhooks`, one `poll(2)` thread reading every connection, then workers) share: the
//! limits, refusals and their answers, the incremental request parser ([`request`]) and the
//! chunked-body decoder ([`chunked`]), and the linger after a refusal.
//!
//! Hand-written on `std::net` rather than taken from a general server because both need what
//! such servers hide: refusing a body by its declared size without reading it (tiny_http, for
//! one, drains whatever length a client declares, allocating it first), closing a connection
//! without an answer, counting the bytes of a file actually written, and a deadline on a
//! whole request so that a slow or idle client cannot hold a thread.
//!
//! Invariants: a request head is at most [`MAX_HEAD_BYTES`] (431 beyond), a request must
//! arrive whole within [`REQUEST_TIMEOUT`] of its connection's first byte (its head within
//! the header timeout), past its connection cap a server answers 503 with `Retry-After`
//! and closes, and every refusal is answered and then lingered on ([`linger`]), since closing
//! with unread data resets the connection and can lose the answer.
//!
//! What stays in each server, and why: the accept loops differ by design (the sandbox blocks
//! one worker per connection and keeps connections alive for its clients; `listen` must never
//! let a client hold a worker, so it reads every connection on one thread and hands only
//! whole requests on); the sandbox keeps its stricter stream parser of the head (505 for
//! other HTTP versions, 100 header fields, `Content-Length` lists, HTTP/1.0 keep-alive),
//! which its fault-injection tests pin, while `listen` parses heads with [`request`].

pub mod chunked;
pub mod request;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Largest request head (request line and header fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client may take to send its whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request is not read further: answer with this status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

pub(crate) fn too_big(max: usize) -> Refusal {
    Refusal::new(413, format!("the body is over the {max}-byte limit"))
}

/// A complete answer's bytes: a JSON body, and `Connection: close`.
pub fn answer(status: u16, extra_headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// After a refusal, on a blocking connection: stop sending and read and drop what the client
/// still sends, for at most `time` and `bytes`, so that the close does not reset the
/// connection before the client has read the answer. (`listen` does the same without
/// blocking, on its polling thread.)
pub fn linger(stream: &TcpStream, reader: &mut impl Read, time: Duration, bytes: usize) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 16 * 1024];
    let deadline = Instant::now() + time;
    let mut left = bytes;
    while left > 0 && Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
