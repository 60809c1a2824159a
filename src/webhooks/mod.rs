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
//!   while an engine runs (beyond that it answers 500 and the gateway may send it again);
//! - idle and slow clients cannot starve it: one thread reads every connection at once
//!   (`reader.rs`) and a worker only ever sees a whole request, idle connections are closed
//!   after [`ListenConfig::header_timeout`], and connections are capped
//!   ([`ListenConfig::max_connections`]; 503 beyond).
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

mod reader;

use crate::ledger::{
    CallbackPath, DeliveryError, DeliveryKind, DeliveryOutcome, Ledger, LedgerError,
};
use serde::Serialize;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::http_server::{MAX_HEAD_BYTES, REQUEST_TIMEOUT};

/// The default largest body accepted, in bytes. A callback is well under 2 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The largest body limit that can be configured.
pub const MAX_MAX_BODY: usize = 16 * 1024 * 1024;

/// The path prefix callbacks are POSTed to when a token is set: `/callback/<token>`.
pub const CALLBACK_PREFIX: &str = "/callback/";

/// The longest a delivery waits for an engine's write lock before it is answered 500. The
/// gateway wants an answer within a few seconds, and may deliver a failed callback again.
const LEDGER_WAIT: Duration = Duration::from_secs(4);

/// The default time a connection has to send its whole request head. A gateway sends its
/// callback as soon as it has connected; only idle or stalled clients take longer.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The default cap on connections open at once (being read, or being answered).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// File descriptors kept free for everything but connections (ledger files, logs, ...).
const FD_RESERVE: usize = 64;

/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A line of the receiver's log, one per request.
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How the receiver behaves.
#[derive(Clone)]
pub struct ListenConfig {
    /// Where to listen; port 0 picks a free port.
    pub addr: SocketAddr,
    /// When set, only POSTs to `/callback/<token>` (or an attempt's own
    /// `/callback/<token>/a/<job>-<attempt>`) are accepted; other paths get 404, and
    /// `/callback/` with another token gets 401. Without it, any path is accepted.
    pub path_token: Option<String>,
    /// Bodies above this many bytes get 413.
    pub max_body: usize,
    /// Deliveries recorded at the same time (each worker has its own ledger connection).
    pub workers: usize,
    /// A connection that has not sent a whole request head in this time is closed (with 408
    /// if it sent part of one). At most [`REQUEST_TIMEOUT`], which bounds the whole request.
    pub header_timeout: Duration,
    /// Connections open at once; beyond this a new one is answered 503 and closed.
    pub max_connections: usize,
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
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
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
        if self.header_timeout.is_zero() || self.header_timeout > REQUEST_TIMEOUT {
            return Err(ListenError::Config(format!(
                "the header timeout {:?} is outside 1ms..={}s",
                self.header_timeout,
                REQUEST_TIMEOUT.as_secs()
            )));
        }
        if self.max_connections == 0 {
            return Err(ListenError::Config(
                "the connection limit must be at least 1".into(),
            ));
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
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
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
    /// Final statuses recorded as hints, each making its job's status call due now.
    pub confirming: u64,
    /// Unknown request ids on an uncertain attempt's path, waiting for their status call.
    pub adopting: u64,
    /// Bodies on the path of another attempt than their request id's (nothing changed).
    pub wrong_path: u64,
    /// Bodies answered 400 (not recorded).
    pub malformed: u64,
    /// Requests refused before their body was looked at: wrong path or token, not a POST,
    /// too big, too slow, too many connections (401, 404, 405, 408, 413, 431, 503, ...).
    pub refused: u64,
    /// Deliveries the ledger could not record (500; the gateway may send them again).
    pub failed: u64,
}

impl ListenStats {
    /// Deliveries recorded in the ledger.
    pub fn recorded(&self) -> u64 {
        self.applied
            + self.duplicate
            + self.stale
            + self.orphan
            + self.confirming
            + self.adopting
            + self.wrong_path
    }

    fn count(&mut self, kind: DeliveryKind) {
        match kind {
            DeliveryKind::Applied => self.applied += 1,
            DeliveryKind::Duplicate => self.duplicate += 1,
            DeliveryKind::Stale => self.stale += 1,
            DeliveryKind::Orphan => self.orphan += 1,
            DeliveryKind::Confirming => self.confirming += 1,
            DeliveryKind::Adopting => self.adopting += 1,
            DeliveryKind::WrongPath => self.wrong_path += 1,
            // Only a status call's answer judges a delivery so.
            DeliveryKind::Confirmed | DeliveryKind::Adopted | DeliveryKind::Unconfirmed => {}
        }
    }
}

/// A running receiver. Stop it with [`Listener::stop`]; dropping it stops it too.
pub struct Listener {
    addr: SocketAddr,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ListenStats>>,
    reader: Option<JoinHandle<()>>,
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
        socket.set_nonblocking(true).map_err(bind)?;
        deepen_backlog(&socket, config.max_connections);
        let addr = socket.local_addr().map_err(bind)?;
        let max_connections = fd_room(config.max_connections);
        if max_connections < config.max_connections {
            if let Some(log) = &config.log {
                log(&format!(
                    "the open-file limit allows {max_connections} connections, not {}; raise it with `ulimit -n`",
                    config.max_connections
                ));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ListenStats::default()));
        let open = Arc::new(AtomicUsize::new(0));
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel::<Delivery>();
        let rx = Arc::new(Mutex::new(rx));
        let mut listener = Listener {
            addr,
            max_connections,
            stop: stop.clone(),
            stats: stats.clone(),
            reader: None,
            workers: Vec::new(),
        };
        for (i, ledger) in ledgers.into_iter().enumerate() {
            let worker = Worker {
                ledger,
                config: config.clone(),
                stats: stats.clone(),
                open: open.clone(),
            };
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("listen-{i}"))
                .spawn(move || worker.run(&rx))
                .map_err(bind)?;
            listener.workers.push(handle);
        }
        let shared = reader::Shared {
            config,
            stats,
            stop,
            open,
            max_connections,
        };
        let reader = std::thread::Builder::new()
            .name("listen-read".into())
            .spawn(move || reader::run(socket, shared, tx))
            .map_err(bind)?;
        listener.reader = Some(reader);
        Ok(listener)
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection cap in force: the configured one, or less when the process's open-file
    /// limit cannot hold that many.
    pub fn max_connections(&self) -> usize {
        self.max_connections
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
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // The reader dropped the sender: the workers end once the queue is empty.
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

/// Lets the kernel queue as many connections as the cap allows (std asks for 128): a burst
/// of connections beyond the queue is dropped by the kernel and retried by the client only
/// after a second or more.
#[cfg(unix)]
fn deepen_backlog(socket: &TcpListener, cap: usize) {
    use std::os::fd::AsRawFd;
    let backlog = cap.clamp(128, 4096) as libc::c_int;
    // SAFETY: listen(2) on a socket we own, already bound and listening; on failure the
    // backlog std asked for stays.
    unsafe {
        libc::listen(socket.as_raw_fd(), backlog);
    }
}

#[cfg(not(unix))]
fn deepen_backlog(_: &TcpListener, _: usize) {}

/// How many connections the open-file limit leaves room for, raising the soft limit towards
/// the hard one first when `wanted` needs it.
#[cfg(unix)]
fn fd_room(wanted: usize) -> usize {
    let needed = (wanted + FD_RESERVE) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one rlimit structure given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
            let raised = libc::rlimit {
                rlim_cur: if limit.rlim_max == libc::RLIM_INFINITY {
                    needed
                } else {
                    needed.min(limit.rlim_max)
                },
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return wanted;
    }
    let room = (limit.rlim_cur as usize).saturating_sub(FD_RESERVE).max(1);
    wanted.min(room)
}

#[cfg(not(unix))]
fn fd_room(wanted: usize) -> usize {
    wanted
}

/// A whole request, read by the reader and ready to be recorded.
struct Delivery {
    stream: TcpStream,
    method: String,
    /// The target for the log (token redacted).
    target: String,
    body: Vec<u8>,
    /// The attempt whose own callback path it was POSTed to, if any.
    path: Option<CallbackPath>,
}

/// One worker thread: its own ledger connection, recording one delivery at a time.
struct Worker {
    ledger: Ledger,
    config: Arc<ListenConfig>,
    stats: Arc<Mutex<ListenStats>>,
    /// The reader's count of open connections; a delivery leaves it once answered.
    open: Arc<AtomicUsize>,
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
    fn run(mut self, rx: &Mutex<Receiver<Delivery>>) {
        loop {
            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(delivery) = next else { return };
            self.serve(delivery);
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn serve(&mut self, delivery: Delivery) {
        let stream = &delivery.stream;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let answer = self.record(delivery.body, delivery.path);
        let line = format!(
            "{} {} {} {}",
            delivery.method, delivery.target, answer.status, answer.log
        );
        let body = answer.body.to_string();
        let bytes = crate::http_server::answer(answer.status, &[], body.as_bytes());
        let mut writer = stream;
        let sent = writer
            .write_all(&bytes)
            .and_then(|_| writer.flush())
            .and_then(|_| stream.shutdown(Shutdown::Write));
        match sent {
            Ok(()) => self.log(&line),
            Err(e) => self.log(&format!("{line} (answer not sent: {e})")),
        }
    }

    fn record(&mut self, bytes: Vec<u8>, path: Option<CallbackPath>) -> Answer {
        let Ok(text) = String::from_utf8(bytes) else {
            let answer = Answer::refuse(400, "malformed callback body: it is not UTF-8 text");
            return self.malformed(answer);
        };
        match self.ledger.record_delivery_on(&text, path) {
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        config.max_body = DEFAULT_MAX_BODY;
        config.header_timeout = Duration::ZERO;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("header timeout"));
        config.header_timeout = DEFAULT_HEADER_TIMEOUT;
        config.max_connections = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connection limit"));
        assert!(!format!("{config:?}").contains("fine-Token"));
    }
}
