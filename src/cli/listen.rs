//! `listen`: receive webhook callbacks over HTTP until Ctrl-C or SIGTERM.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::exit;
use codeformer_ledger::webhooks::{ListenConfig, ListenError, ListenStats, Listener};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

/// Receive webhook callbacks over HTTP and record them in the ledger.
///
/// A small blocking HTTP receiver that can run beside an engine: each POSTed callback body is
/// recorded as `ingest` records it, and only then answered 200, so a callback the gateway
/// sees accepted is on disk. A malformed body gets 400 (nothing recorded), a body over
/// --max-body 413, and with --path-token any path but /callback/TOKEN (or an attempt's own
/// /callback/TOKEN/a/JOB-ATTEMPT) gets 404 or 401. A callback is a hint: a final status
/// only makes its job's status call due, and that answer moves the job.
/// Idle or slow clients cannot hold it up: a connection that has not sent its request head
/// within --header-timeout is closed, and beyond --max-connections new ones get 503.
///
/// It speaks plain HTTP: put it behind your HTTPS reverse proxy (the gateway calls back to
/// https URLs only) and give the public URL to --webhook-url. Prints LISTEN_ADDR=<ip:port> on
/// stdout once it listens, one line per request on stderr, and stops on Ctrl-C.
///
/// Examples:
///   export CODEFORMER_LISTEN_TOKEN=$(openssl rand -hex 16)
///   codeformer-ledger listen --addr 127.0.0.1:8789
///   codeformer-ledger batch photos.csv \
///       --webhook-url https://hooks.example.com/callback/$CODEFORMER_LISTEN_TOKEN
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ListenArgs {
    /// Address to listen on, e.g. 127.0.0.1:8789 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub addr: SocketAddr,

    /// Accept callbacks only at /callback/TOKEN (letters, digits, - . _ ~).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CODEFORMER_LISTEN_TOKEN",
        hide_env_values = true
    )]
    pub path_token: Option<String>,

    /// Largest body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = codeformer_ledger::webhooks::DEFAULT_MAX_BODY)]
    pub max_body: usize,

    /// Close a connection that has not sent its whole request head in this time (at most 10s).
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration, default_value = "5s")]
    pub header_timeout: std::time::Duration,

    /// Connections open at once; beyond this, new ones are answered 503 (Retry-After: 1).
    #[arg(long, value_name = "N", default_value_t = codeformer_ledger::webhooks::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Do not log each request on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl ListenArgs {
    fn config(&self) -> Result<ListenConfig, CliError> {
        let mut config = ListenConfig::new(self.addr);
        config.path_token = self.path_token.clone().filter(|t| !t.is_empty());
        config.max_body = self.max_body;
        config.header_timeout = self.header_timeout;
        config.max_connections = self.max_connections;
        if !self.quiet {
            config.log = Some(Arc::new(|line: &str| eprintln!("listen: {line}")));
        }
        config.validate().map_err(start_error)?;
        Ok(config)
    }
}

pub fn run(global: &Global, args: ListenArgs) -> CmdResult {
    let config = args.config()?;
    let token = config.path_token.is_some();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .map_err(|e| CliError::error(format!("cannot install the Ctrl-C handler: {e}")))?;
    let listener = Listener::start(&global.ledger, config).map_err(start_error)?;
    let printed = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTEN_ADDR={}", listener.addr()).and_then(|_| out.flush())
    };
    if let Err(e) = printed {
        return Err(CliError::error(format!("cannot write to stdout: {e}")));
    }
    eprintln!(
        "listening on http://{}{} for {} (at most {} connections); stop with Ctrl-C",
        listener.addr(),
        if token {
            "/callback/<token>"
        } else {
            " (any path)"
        },
        global.ledger.display(),
        listener.max_connections()
    );
    let _ = stop_rx.recv();
    let stats = listener.stop();
    eprintln!("listen stopped: {}", summary(&stats));
    Ok(exit::DONE)
}

fn summary(s: &ListenStats) -> String {
    format!(
        "{} applied, {} confirming, {} adopting, {} duplicate, {} stale, {} orphan, {} wrong path, {} malformed, {} refused, {} failed",
        s.applied,
        s.confirming,
        s.adopting,
        s.duplicate,
        s.stale,
        s.orphan,
        s.wrong_path,
        s.malformed,
        s.refused,
        s.failed
    )
}

/// Bad values are the user's to fix (exit 2); anything else is an error (exit 1).
fn start_error(e: ListenError) -> CliError {
    match e {
        ListenError::Config(message) => CliError::usage(message),
        ListenError::Bind { addr, source } => CliError::error(format!(
            "cannot listen on {addr}: {source}; pick another address with --addr"
        )),
        ListenError::Ledger(e) => e.into(),
        other => CliError::error(other.to_string()),
    }
}
