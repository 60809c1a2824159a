//! Receiving webhook callbacks: a small blocking HTTP server (`listen`) that records each
//! delivery in the ledger before it answers.
//!
//! Invariants it keeps:
//! - durable before acknowledged: a 200 is sent only after the delivery's transaction has
//!   committed with `synchronous = FULL`, so a callback the gateway sees accepted is on disk;
//! - a request that is refused (wrong path or token, not a POST, a body over the limit, a
//!   malformed body) writes nothing to the ledger, and a ledger failure answers 500 so that
//!   the gateway may deliver the callback again;
//! - each transaction is one delivery, so an engine writing to the same ledger waits for at
//!   most a few milliseconds; and while the engine holds the write lock a delivery tries
//!   again every 2 ms for up to 4 s, so it answers within the gateway's few seconds even
//!   while an engine runs (beyond that it answers 500 and the gateway may send it again).
//!
//! It speaks plain HTTP on the address it is given and is meant to sit behind the user's
//! HTTPS reverse proxy (the gateway calls back to https URLs only).
//!
//! ```no_run
//! use codeformer_ledger::webhooks::{ListenConfig, Listener};
//!
//! let mut config = ListenConfig::new("127.0.0.1:8789".parse()?);
//! config.path_token = Some("7f3a9c0e5d2b4a61".into());
//! let listener = Listener::start("restore.db".as_ref(), config)?;
//! println!("callbacks go to http://{}/callback/<token>", listener.addr());
//! // ... until it is time to stop ...
//! let stats = listener.stop();
//! println!("{} applied", stats.applied);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod http;

use crate::ledger::{DeliveryError, DeliveryKind, DeliveryOutcome, Ledger, LedgerError};
use serde::Serialize;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use http::{MAX_HEAD_BYTES, REQUEST_TIMEOUT};

/// The default largest body accepted, in bytes. A callback is well under 2 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The largest body limit that can be configured.
pub const MAX_MAX_BODY: usize = 16 * 1024 * 1024;

/// The path prefix callbacks are POSTed to when a token is set: `/callback/<token>`.
pub const CALLBACK_PREFIX: &str = "/callback/";

/// The longest a delivery waits for an engine's write lock before it is answered 500. The
/// gateway wants an answer within a few seconds, and may deliver a failed callback again.
const LEDGER_WAIT: Duration = Duration::from_secs(4);

/// Connections accepted and waiting for a worker; beyond this, new ones get 503 at once.
const BACKLOG: usize = 64;

/// A line of the receiver's log, one per request.
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How the receiver behaves.
#[derive(Clone)]
pub struct ListenConfig {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// When set, only POSTs to `/callback/<token>` are accepted; other paths get 404, and
    /// `/callback/` with another token gets 401. Without it, any path is accepted.
    pub path_token: Option<String>,
    /// Bodies above this many bytes get 413.
    pub max_body: usize,
    /// Requests served at the same time (each worker has its own ledger connection).
    pub workers: usize,
    /// Called with one line per request; `None` logs nothing.
    pub log: Option<LogFn>,
}

impl ListenConfig {
    pub fn new(addr: SocketAddr) -> Self {
        ListenConfig {
            addr,
            path_token: None,
            max_body: DEFAULT_MAX_BODY,
            workers: 4,
            log: None,
        }
    }

    /// Checks the values; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), ListenError> {
        if let Some(token) = &self.path_token {
            let url_safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
            if token.is_empty() || !token.chars().all(url_safe) {
                return Err(ListenError::Config(
                    "the path token must be a non-empty run of letters, digits, `-`, `.`, `_` or `~` (e.g. from `openssl rand -hex 16`)".into(),
                ));
            }
        }
        if self.max_body == 0 || self.max_body > MAX_MAX_BODY {
            return Err(ListenError::Config(format!(
                "the body limit {} is outside 1..={MAX_MAX_BODY} bytes",
                self.max_body
            )));
        }
        if self.workers == 0 {
            return Err(ListenError::Config("at least one worker is needed".into()));
        }
        Ok(())
    }
}

impl std::fmt::Debug for ListenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenConfig")
            .field("addr", &self.addr)
            .field("path_token", &self.path_token.as_ref().map(|_| "<hidden>"))
            .field("max_body", &self.max_body)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Errors of starting the receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A configuration value is wrong.
    #[error("{0}")]
    Config(String),
    /// The address could not be bound, or a thread could not be started.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What the receiver has answered since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListenStats {
    pub applied: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub orphan: u64,
    /// Bodies answered 400 (not recorded).
    pub malformed: u64,
    /// Requests refused before their body was looked at: wrong path or token, not a POST,
    /// too big, too slow, over the backlog (401, 404, 405, 408, 413, 431, 503, ...).
    pub refused: u64,
    /// Deliveries the ledger could not record (500; the gateway may send them again).
    pub failed: u64,
}

impl ListenStats {
    /// Deliveries recorded in the ledger.
    pub fn recorded(&self) -> u64 {
        self.applied + self.duplicate + self.stale + self.orphan
    }

    fn count(&mut self, kind: DeliveryKind) {
        match kind {
            DeliveryKind::Applied => self.applied += 1,
            DeliveryKind::Duplicate => self.duplicate += 1,
            DeliveryKind::Stale => self.stale += 1,
            DeliveryKind::Orphan => self.orphan += 1,
        }
    }
}

/// A running receiver. Stop it with [`Listener::stop`]; dropping it stops it too.
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ListenStats>>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Opens the ledger (creating it if missing), binds the address and starts serving.
    pub fn start(ledger_path: &Path, config: ListenConfig) -> Result<Listener, ListenError> {
        config.validate()?;
        // One connection per worker, opened here so that a bad ledger fails the start.
        let mut ledgers = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let mut ledger = Ledger::open(ledger_path)?;
            ledger.configure_receiver(LEDGER_WAIT)?;
            ledgers.push(ledger);
        }
        let asked = config.addr;
        let bind = |source| ListenError::Bind {
            addr: asked,
            source,
        };
        let socket = TcpListener::bind(config.addr).map_err(bind)?;
        let addr = socket.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ListenStats::default()));
        let config = Arc::new(config);
        let (tx, rx) = mpsc::sync_channel::<TcpStream>(BACKLOG);
        let rx = Arc::new(Mutex::new(rx));
        let mut listener = Listener {
            addr,
            stop: stop.clone(),
            stats: stats.clone(),
            acceptor: None,
            workers: Vec::new(),
        };
        for (i, ledger) in ledgers.into_iter().enumerate() {
            let worker = Worker {
                ledger,
                config: config.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("listen-{i}"))
                .spawn(move || worker.run(&rx))
                .map_err(bind)?;
            listener.workers.push(handle);
        }
        let acceptor = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("listen-accept".into())
                .spawn(move || accept_loop(&socket, &tx, &stop, &stats))
                .map_err(bind)?
        };
        listener.acceptor = Some(acceptor);
        Ok(listener)
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it has answered so far.
    pub fn stats(&self) -> ListenStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops accepting, finishes the deliveries being recorded, closes connections whose
    /// request has not fully arrived (nothing of it was recorded), and returns the final
    /// counts.
    pub fn stop(mut self) -> ListenStats {
        self.shut_down();
        self.stats()
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // The acceptor is blocked in accept(): a connection of our own wakes it up.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = acceptor.join();
        }
        // The acceptor dropped the sender: the workers end once the queue is empty.
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept_loop(
    socket: &TcpListener,
    tx: &SyncSender<TcpStream>,
    stop: &AtomicBool,
    stats: &Mutex<ListenStats>,
) {
    for stream in socket.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of file descriptors and the like: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        match tx.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(stream)) => {
                stats.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let body = serde_json::json!({"error": "busy; send it again later"}).to_string();
                let _ = http::respond(&stream, 503, &[("Retry-After", "1")], body.as_bytes());
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// One worker thread: its own ledger connection, serving one connection at a time.
struct Worker {
    ledger: Ledger,
    config: Arc<ListenConfig>,
    stats: Arc<Mutex<ListenStats>>,
    stop: Arc<AtomicBool>,
}

/// An answer to send: status, JSON body, and a line for the log.
struct Answer {
    status: u16,
    body: serde_json::Value,
    log: String,
}

impl Answer {
    fn refuse(status: u16, message: impl Into<String>) -> Answer {
        let message = message.into();
        Answer {
            status,
            log: message.clone(),
            body: serde_json::json!({ "error": message }),
        }
    }
}

impl Worker {
    fn run(mut self, rx: &Mutex<Receiver<TcpStream>>) {
        loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(stream) = next else { return };
            self.serve(&stream);
        }
    }

    fn serve(&mut self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let stop = self.stop.clone();
        let timed = http::Timed::new(stream, deadline, &stop);
        let (head, mut body) = match http::read_head(timed) {
            Ok(read) => read,
            Err(http::Refusal::Gone) => return,
            Err(http::Refusal::Answer(status, message)) => {
                let answer = self.refused(Answer::refuse(status, message));
                self.send(stream, "-", "-", answer, true);
                return;
            }
        };
        let target = redact(&head.target, self.config.path_token.as_deref());
        let (answer, unread) = self.handle(&head, &mut body, stream);
        self.send(stream, &head.method, &target, answer, unread);
    }

    /// The answer, and whether the body was left unread.
    fn handle(
        &mut self,
        head: &http::Head,
        body: &mut http::BodyReader<'_>,
        stream: &TcpStream,
    ) -> (Answer, bool) {
        if let Some(refusal) = self.check_path(&head.path) {
            return (self.refused(refusal), true);
        }
        if head.method != "POST" {
            return (
                self.refused(Answer::refuse(405, "callbacks are POSTed")),
                true,
            );
        }
        let bytes = match http::read_body(head, body, stream, self.config.max_body) {
            Ok(bytes) => bytes,
            Err(http::Refusal::Answer(status, message)) => {
                return (self.refused(Answer::refuse(status, message)), true)
            }
            Err(http::Refusal::Gone) => {
                return (
                    self.refused(Answer::refuse(400, "the body ended early")),
                    true,
                )
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            let answer = Answer::refuse(400, "malformed callback body: it is not UTF-8 text");
            return (self.malformed(answer), false);
        };
        let answer = match self.ledger.record_delivery(&text) {
            Ok(outcome) => {
                self.stats_mut().count(outcome.kind);
                recorded(&outcome)
            }
            Err(DeliveryError::Malformed(reason)) => self.malformed(Answer::refuse(
                400,
                format!("malformed callback body: {reason}"),
            )),
            Err(e) => {
                self.stats_mut().failed += 1;
                Answer::refuse(500, format!("the ledger could not record it: {e}"))
            }
        };
        (answer, false)
    }

    fn send(&self, stream: &TcpStream, method: &str, target: &str, answer: Answer, unread: bool) {
        let line = format!("{method} {target} {} {}", answer.status, answer.log);
        let allow: &[(&str, &str)] = if answer.status == 405 {
            &[("Allow", "POST")]
        } else {
            &[]
        };
        let body = answer.body.to_string();
        match http::respond(stream, answer.status, allow, body.as_bytes()) {
            Ok(()) => self.log(&line),
            Err(e) => self.log(&format!("{line} (answer not sent: {e})")),
        }
        if unread {
            http::linger(stream);
        }
    }

    /// `None` when the path is acceptable.
    fn check_path(&self, path: &str) -> Option<Answer> {
        let token = self.config.path_token.as_deref()?;
        let Some(given) = path.strip_prefix(CALLBACK_PREFIX) else {
            return Some(Answer::refuse(404, "no such path"));
        };
        if same_secret(given.as_bytes(), token.as_bytes()) {
            None
        } else {
            Some(Answer::refuse(401, "wrong or missing path token"))
        }
    }

    fn refused(&self, answer: Answer) -> Answer {
        self.stats_mut().refused += 1;
        answer
    }

    fn malformed(&self, answer: Answer) -> Answer {
        self.stats_mut().malformed += 1;
        answer
    }

    fn stats_mut(&self) -> std::sync::MutexGuard<'_, ListenStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, line: &str) {
        if let Some(log) = &self.config.log {
            log(line);
        }
    }
}

fn recorded(outcome: &DeliveryOutcome) -> Answer {
    let job = outcome
        .job_id
        .map(|id| format!("job {id}"))
        .unwrap_or_else(|| "no job".into());
    Answer {
        status: 200,
        log: format!(
            "{} {} {} ({job}): {}",
            outcome.kind, outcome.request_id, outcome.status, outcome.detail
        ),
        body: serde_json::json!({
            "outcome": outcome.kind,
            "request_id": outcome.request_id,
            "job_id": outcome.job_id,
        }),
    }
}

/// Compares a secret in time that does not depend on where the first difference is.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The URL for the log, with the token replaced.
fn redact(url: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => url.replace(token, "<token>"),
        None => url.to_string(),
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
    fn bad_configuration_is_named() {
        let mut config = ListenConfig::new("127.0.0.1:0".parse().unwrap());
        config.path_token = Some("has/slash".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("path token"));
        config.path_token = Some("fine-Token_1.2~".into());
        assert!(config.validate().is_ok());
        config.max_body = 0;
        assert!(config.validate().unwrap_err().to_string().contains("limit"));
        assert!(!format!("{config:?}").contains("fine-Token"));
    }

    #[test]
    fn the_token_never_reaches_the_log() {
        assert_eq!(
            redact("/callback/s3cret?x=1", Some("s3cret")),
            "/callback/<token>?x=1"
        );
    }
}
