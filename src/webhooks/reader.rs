//! The receiver's one reading thread: it accepts connections and reads every one of them at
//! once, with non-blocking sockets and `poll(2)`, until a whole request has arrived; only then
//! does a worker (and its ledger connection) see it. So an idle or slow client holds a file
//! descriptor and a few bytes of buffer, never a worker: a callback is answered as soon as it
//! arrives, however many such clients are connected.
//!
//! Invariants it keeps:
//! - connections are capped: beyond [`ListenConfig::max_connections`] (those being read, and
//!   those handed to workers), a new one is answered 503 with `Retry-After` and closed;
//! - a connection that has not sent a whole request head within
//!   [`ListenConfig::header_timeout`] is closed (silently if it sent nothing, with 408 if it
//!   sent part of one), and a whole request must arrive within [`REQUEST_TIMEOUT`] (408);
//! - every refusal that needs no ledger (wrong path or token, not a POST, a bad head, a body
//!   over the limit, too slow, too many connections) is answered here, and writes nothing;
//! - after a refusal, what the client still sends is read and dropped for up to a second
//!   (closing with unread data would reset the connection and could lose the answer), on
//!   this thread too, so refusals never hold a worker either.

use super::{Delivery, ListenConfig, ListenStats, CALLBACK_PREFIX};
use crate::http_server::chunked::Dechunk;
use crate::http_server::request::{self, Framing, Head};
use crate::http_server::{self as http, Refusal, REQUEST_TIMEOUT};
use crate::ledger::CallbackPath;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the loop looks at the stop flag while nothing happens.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// How long, and how much, a refused connection is read and dropped before it is closed.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 4 * 1024 * 1024;
/// Refused connections being drained beyond the cap; past this they are closed at once.
const DRAINING_EXTRA: usize = 256;
/// Connections accepted in one turn of the loop, so reading the others is not starved.
const ACCEPTS_PER_TURN: usize = 256;

/// What the reading thread shares with the listener and its workers.
pub(super) struct Shared {
    pub config: Arc<ListenConfig>,
    pub stats: Arc<Mutex<ListenStats>>,
    pub stop: Arc<AtomicBool>,
    /// Connections being read here or served by a worker: what the cap counts.
    pub open: Arc<AtomicUsize>,
    /// The effective cap (the configured one, lowered to what the file limit allows).
    pub max_connections: usize,
}

impl Shared {
    fn log(&self, line: &str) {
        if let Some(log) = &self.config.log {
            log(line);
        }
    }

    fn refused(&self) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
    }
}

enum Phase {
    /// Waiting for the whole head.
    Head,
    /// The head is in; the body starts at `at` in the buffer.
    Body {
        head: Head,
        at: usize,
        framing: Framing,
        /// A chunked body's decoding so far.
        chunks: Dechunk,
    },
    /// Answered and refused: what arrives is dropped until EOF or `until`.
    Draining { until: Instant, left: usize },
}

struct Conn {
    stream: TcpStream,
    opened: Instant,
    buf: Vec<u8>,
    phase: Phase,
    /// Whether it counts towards the cap (a connection refused with 503 does not).
    counted: bool,
}

/// What became of a connection after it was read.
enum Next {
    Keep,
    /// A whole request: give it to a worker.
    Deliver {
        method: String,
        target: String,
        body: Vec<u8>,
        path: Option<CallbackPath>,
    },
    Close,
}

/// Accepts and reads until the stop flag is set; whole requests go to `workers`.
pub(super) fn run(socket: TcpListener, shared: Shared, workers: Sender<Delivery>) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let wait = conns
            .iter()
            .map(|c| deadline(c, &shared.config).saturating_duration_since(now))
            .fold(STOP_CHECK, Duration::min);
        fds.clear();
        fds.push(readiness::fd_of_listener(&socket));
        fds.extend(conns.iter().map(|c| readiness::fd_of(&c.stream)));
        let ready = readiness::wait(&fds, wait);
        if ready.first().copied().unwrap_or(false) {
            accept(&socket, &shared, &mut conns);
        }
        let now = Instant::now();
        // Backwards, so that `swap_remove` only ever moves in a connection already looked at,
        // and `ready[i + 1]` stays the readiness of `conns[i]` (those accepted this turn were
        // not polled: `ready` is shorter).
        for i in (0..conns.len()).rev() {
            let next = if ready.get(i + 1).copied().unwrap_or(false) {
                read(&mut conns[i], &shared)
            } else {
                Next::Keep
            };
            let next = match next {
                Next::Keep if now >= deadline(&conns[i], &shared.config) => {
                    expire(&mut conns[i], &shared)
                }
                next => next,
            };
            match next {
                Next::Keep => {}
                Next::Close => close(conns.swap_remove(i), &shared),
                Next::Deliver {
                    method,
                    target,
                    body,
                    path,
                } => {
                    // It stays counted until the worker has answered it.
                    let stream = conns.swap_remove(i).stream;
                    let delivery = Delivery {
                        stream,
                        method,
                        target,
                        body,
                        path,
                    };
                    if workers.send(delivery).is_err() {
                        shared.open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
    for conn in conns {
        close(conn, &shared);
    }
}

/// When the connection must have made progress by.
fn deadline(conn: &Conn, config: &ListenConfig) -> Instant {
    match &conn.phase {
        Phase::Head => conn.opened + config.header_timeout.min(REQUEST_TIMEOUT),
        Phase::Body { .. } => conn.opened + REQUEST_TIMEOUT,
        Phase::Draining { until, .. } => *until,
    }
}

fn close(conn: Conn, shared: &Shared) {
    if conn.counted {
        shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept(socket: &TcpListener, shared: &Shared, conns: &mut Vec<Conn>) {
    for _ in 0..ACCEPTS_PER_TURN {
        let stream = match socket.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                // Out of file descriptors and the like (the cap is kept below the open-file
                // limit, so rare): the listener stays readable, so pause instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            opened: Instant::now(),
            buf: Vec::new(),
            phase: Phase::Head,
            counted: false,
        };
        if shared.open.load(Ordering::SeqCst) >= shared.max_connections {
            let draining = conns.iter().filter(|c| !c.counted).count();
            let message = format!(
                "too many connections (the limit is {}); send it again later",
                shared.max_connections
            );
            refuse(&mut conn, shared, Refusal::new(503, message), "-", "-");
            if draining < DRAINING_EXTRA {
                conns.push(conn);
            }
            continue;
        }
        shared.open.fetch_add(1, Ordering::SeqCst);
        conn.counted = true;
        conns.push(conn);
    }
}

/// Reads what has arrived and moves the connection on.
fn read(conn: &mut Conn, shared: &Shared) -> Next {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut stream = &conn.stream;
        match stream.read(&mut chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                if let Phase::Draining { left, .. } = &mut conn.phase {
                    *left = left.saturating_sub(n);
                    if *left == 0 {
                        return Next::Close;
                    }
                    continue;
                }
                conn.buf.extend_from_slice(&chunk[..n]);
                if !worth_parsing(conn, n) {
                    continue;
                }
                match advance(conn, shared) {
                    Next::Keep => {}
                    other => return other,
                }
                if matches!(conn.phase, Phase::Draining { .. }) {
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

/// Whether the `n` bytes just received can have completed (or broken) the head: a head is
/// parsed again only when its end may have arrived or it has reached its size limit, so a
/// client sending a byte at a time does not make each byte cost a parse of all the others.
fn worth_parsing(conn: &Conn, n: usize) -> bool {
    if !matches!(conn.phase, Phase::Head) || conn.buf.len() >= http::MAX_HEAD_BYTES {
        return true;
    }
    let from = conn.buf.len().saturating_sub(n + 3);
    conn.buf[from..]
        .windows(2)
        .any(|w| w == b"\n\n" || w == b"\n\r")
}

/// Looks at the bytes received so far: a whole head, a whole body, or a refusal.
fn advance(conn: &mut Conn, shared: &Shared) -> Next {
    if let Phase::Head = conn.phase {
        match request::parse_head(&conn.buf) {
            Ok(None) => return Next::Keep,
            Ok(Some((head, len))) => {
                let target = redact(&head.target, shared.config.path_token.as_deref());
                if let Err(refusal) = check(&head, &shared.config) {
                    refuse(conn, shared, refusal, &head.method, &target);
                    return Next::Keep;
                }
                let framing = match request::framing(&head, shared.config.max_body) {
                    Ok(framing) => framing,
                    Err(refusal) => {
                        refuse(conn, shared, refusal, &head.method, &target);
                        return Next::Keep;
                    }
                };
                if head.expects_continue() {
                    // Small enough for an idle socket's send buffer, like an answer.
                    let mut stream = &conn.stream;
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                conn.phase = Phase::Body {
                    head,
                    at: len,
                    framing,
                    chunks: Dechunk::default(),
                };
            }
            Err(refusal) => {
                refuse(conn, shared, refusal, "-", "-");
                return Next::Keep;
            }
        }
    }
    let Phase::Body {
        head,
        at,
        framing,
        chunks,
    } = &mut conn.phase
    else {
        return Next::Keep;
    };
    // Chunk framing and trailers around a body within the limit fit in this much more.
    let most = shared.config.max_body.saturating_add(http::MAX_HEAD_BYTES);
    let received = &conn.buf[*at..];
    let body = if received.len() > most {
        Err(http::too_big(shared.config.max_body))
    } else {
        request::body(*framing, chunks, received, shared.config.max_body)
    };
    match body {
        Ok(None) => Next::Keep,
        Ok(Some(body)) => Next::Deliver {
            method: head.method.clone(),
            target: redact(&head.target, shared.config.path_token.as_deref()),
            body,
            path: CallbackPath::parse_tail(&head.path),
        },
        Err(refusal) => {
            let (method, target) = (
                head.method.clone(),
                redact(&head.target, shared.config.path_token.as_deref()),
            );
            refuse(conn, shared, refusal, &method, &target);
            Next::Keep
        }
    }
}

/// A connection past its deadline: closed, with 408 if a request had started to arrive.
fn expire(conn: &mut Conn, shared: &Shared) -> Next {
    match &conn.phase {
        Phase::Draining { .. } => Next::Close,
        Phase::Head if conn.buf.is_empty() => Next::Close,
        Phase::Head => {
            let refusal = Refusal::new(408, "the request head took too long to arrive");
            refuse(conn, shared, refusal, "-", "-");
            Next::Close
        }
        Phase::Body { head, .. } => {
            let (method, target) = (
                head.method.clone(),
                redact(&head.target, shared.config.path_token.as_deref()),
            );
            let refusal = Refusal::new(408, "the request took too long to arrive");
            refuse(conn, shared, refusal, &method, &target);
            Next::Close
        }
    }
}

/// Answers a refusal, closes the sending side, and starts dropping what still arrives.
fn refuse(conn: &mut Conn, shared: &Shared, refusal: Refusal, method: &str, target: &str) {
    shared.refused();
    let allow: &[(&str, &str)] = match refusal.status {
        405 => &[("Allow", "POST")],
        503 => &[("Retry-After", "1")],
        _ => &[],
    };
    let body = serde_json::json!({ "error": refusal.message }).to_string();
    let bytes = http::answer(refusal.status, allow, body.as_bytes());
    // An answer this small fits an idle socket's send buffer: one write sends it whole.
    let mut stream = &conn.stream;
    let line = format!("{method} {target} {} {}", refusal.status, refusal.message);
    match stream.write(&bytes) {
        Ok(n) if n == bytes.len() => shared.log(&line),
        Ok(_) => shared.log(&format!(
            "{line} (answer cut short: the client reads nothing)"
        )),
        Err(e) => shared.log(&format!("{line} (answer not sent: {e})")),
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
    conn.buf = Vec::new();
    conn.phase = Phase::Draining {
        until: Instant::now() + DRAIN_TIME,
        left: DRAIN_BYTES,
    };
}

/// Whether the path, token and method are acceptable.
fn check(head: &Head, config: &ListenConfig) -> Result<(), Refusal> {
    if let Some(token) = config.path_token.as_deref() {
        let Some(given) = head.path.strip_prefix(CALLBACK_PREFIX) else {
            return Err(Refusal::new(404, "no such path"));
        };
        // `/callback/TOKEN`, or an attempt's own `/callback/TOKEN/a/<job>-<attempt>`.
        let given = match given.split_once('/') {
            Some((token, rest))
                if rest.split('/').count() == 2
                    && CallbackPath::parse_tail(&format!("/{rest}")).is_some() =>
            {
                token
            }
            Some(_) => return Err(Refusal::new(404, "no such path")),
            None => given,
        };
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            return Err(Refusal::new(401, "wrong or missing path token"));
        }
    }
    if head.method != "POST" {
        return Err(Refusal::new(405, "callbacks are POSTed"));
    }
    Ok(())
}

/// Compares a secret in time that does not depend on where the first difference is.
pub(super) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The URL for the log, with the token replaced.
pub(super) fn redact(url: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => url.replace(token, "<token>"),
        None => url.to_string(),
    }
}

/// Waiting until sockets can be read: `poll(2)` where there is one.
mod readiness {
    use std::time::Duration;

    #[cfg(unix)]
    pub type Fd = std::os::fd::RawFd;
    #[cfg(not(unix))]
    pub type Fd = ();

    #[cfg(unix)]
    pub fn fd_of(stream: &std::net::TcpStream) -> Fd {
        std::os::fd::AsRawFd::as_raw_fd(stream)
    }

    #[cfg(unix)]
    pub fn fd_of_listener(socket: &std::net::TcpListener) -> Fd {
        std::os::fd::AsRawFd::as_raw_fd(socket)
    }

    /// Which of `fds` can be read (or have hung up) within `timeout`.
    #[cfg(unix)]
    pub fn wait(fds: &[Fd], timeout: Duration) -> Vec<bool> {
        let mut polls: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Rounded up, so that a deadline a fraction of a millisecond away is not spun on.
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `polls` is a valid array of `polls.len()` pollfd structures, alive for the
        // whole call.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, millis) };
        if ready <= 0 {
            return vec![false; fds.len()];
        }
        polls.iter().map(|p| p.revents != 0).collect()
    }

    #[cfg(not(unix))]
    pub fn fd_of(_: &std::net::TcpStream) -> Fd {}

    #[cfg(not(unix))]
    pub fn fd_of_listener(_: &std::net::TcpListener) -> Fd {}

    /// Without `poll`, every socket is tried after a short sleep.
    #[cfg(not(unix))]
    pub fn wait(fds: &[Fd], timeout: Duration) -> Vec<bool> {
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
        vec![true; fds.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same_secret(b"abc123", b"abc123"));
        assert!(!same_secret(b"abc12", b"abc123"));
        assert!(!same_secret(b"abc124", b"abc123"));
        assert!(!same_secret(b"", b"abc123"));
    }

    #[test]
    fn the_token_never_reaches_the_log() {
        assert_eq!(
            redact("/callback/s3cret?x=1", Some("s3cret")),
            "/callback/<token>?x=1"
        );
    }
}
