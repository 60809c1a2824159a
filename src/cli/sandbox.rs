//! `codeformer-ledger sandbox`: runs the local sandbox gateway until Ctrl-C or SIGTERM.
//!
//! Arguments are parsed in two stages: [`SandboxArgs`] holds what clap read (no I/O), and
//! [`SandboxArgs::config`] turns it into a validated [`SandboxConfig`], reading the API key
//! from its file or the environment. The key is never a flag value, so it never shows in the
//! process list, and it is never printed.

use super::{CliError, CmdResult};
use codeformer_ledger::exit;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig, SandboxError};
use rust_decimal::Decimal;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Environment variable holding the key the sandbox requires, when no key file is given.
pub const KEY_ENV: &str = "PIXAZO_SANDBOX_KEY";

/// Run the local sandbox gateway: the CodeFormer API on loopback, with faults on request.
///
/// Prints `PIXAZO_BASE_URL=<url>` and `SANDBOX_STATIC_URL=<url>` on stdout (and
/// `AWS_ENDPOINT_URL=<url>` with --s3-bucket), then serves until Ctrl-C or SIGTERM. Point
/// `--base-url` at the first; files of `--static-dir` are served under the second.
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Address to listen on; loopback only (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub addr: SocketAddr,

    /// File holding the API key to require in Ocp-Apim-Subscription-Key. Without it the key
    /// comes from env PIXAZO_SANDBOX_KEY; with neither, no key is checked
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Directory served at /static/ (input images), with Range support [default: none]
    #[arg(long, value_name = "DIR")]
    pub static_dir: Option<PathBuf>,

    /// Directory the outputs are written to [default: a temporary directory, removed on exit]
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Milliseconds a job stays QUEUED
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub queue_ms: u64,

    /// Milliseconds a job stays PROCESSING: N, or MIN-MAX for a seeded uniform spread
    #[arg(long, value_name = "N|MIN-MAX", default_value = "100", value_parser = parse_processing)]
    pub processing_ms: (u64, u64),

    /// Milliseconds added to every API answer
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Share of jobs that end FAILED, 0 to 1
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,

    /// Share of jobs that end ERROR (not charged), 0 to 1
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Share of API requests answered 500 without being carried out, 0 to 1
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub flaky_rate: f64,

    /// Share of API requests carried out whose connection is then closed without an answer,
    /// 0 to 1
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub drop_rate: f64,

    /// API requests per second above which the answer is 429 with Retry-After [default: no
    /// limit]
    #[arg(long, value_name = "RPS", value_parser = parse_rps)]
    pub rate_limit: Option<f64>,

    /// Seed of every random choice (outcomes, processing times, faults)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Wallet balance in USD; a submission it cannot cover gets 402. Refill it with POST
    /// /sandbox/wallet {"add": "1.50"} [default: unlimited]
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    pub wallet: Option<Decimal>,

    /// Fast mode: outputs are flat PNGs of the exact size, made from the input's header only
    #[arg(long)]
    pub fast: bool,

    /// Allow webhook callbacks to plain http:// URLs (the real gateway requires https)
    #[arg(long)]
    pub allow_http_webhooks: bool,

    /// Deliver every webhook callback twice
    #[arg(long)]
    pub duplicate_callbacks: bool,

    /// Share of webhook callbacks never delivered, 0 to 1
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub drop_callbacks: f64,

    /// HTTP worker threads (each serves one connection at a time)
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,

    /// A bucket of the S3-compatible store at /s3/ (repeatable), for --upload s3://NAME/…
    /// with --s3-endpoint <AWS_ENDPOINT_URL printed> --s3-path-style. It takes requests
    /// presigned with AWS_ACCESS_KEY_ID=SANDBOXACCESSKEY0001 and
    /// AWS_SECRET_ACCESS_KEY=sandbox-secret-key-for-local-uploads (sandbox values) only
    #[arg(long, value_name = "NAME")]
    pub s3_bucket: Vec<String>,
}

impl SandboxArgs {
    /// The validated configuration, with the API key read from its file or the environment.
    pub fn config(&self) -> Result<SandboxConfig, CliError> {
        let env_key = std::env::var(KEY_ENV).ok();
        let config = SandboxConfig {
            addr: self.addr,
            api_key: self.api_key(env_key)?,
            static_dir: self.static_dir.clone(),
            queue_ms: self.queue_ms,
            processing_ms: self.processing_ms,
            latency_ms: self.latency_ms,
            fail_rate: self.fail_rate,
            error_rate: self.error_rate,
            flaky_rate: self.flaky_rate,
            drop_rate: self.drop_rate,
            rate_limit_rps: self.rate_limit,
            seed: self.seed,
            wallet_usd: self.wallet,
            render: !self.fast,
            allow_http_webhooks: self.allow_http_webhooks,
            duplicate_callbacks: self.duplicate_callbacks,
            drop_callbacks: self.drop_callbacks,
            output_dir: self.output_dir.clone(),
            workers: self.workers as usize,
            s3_buckets: self.s3_bucket.clone(),
        };
        config.validate().map_err(start_error)?;
        Ok(config)
    }

    /// The key from `--api-key-file`, else from the environment's value; `None`: no key.
    fn api_key(&self, env_value: Option<String>) -> Result<Option<String>, CliError> {
        let Some(path) = &self.api_key_file else {
            return Ok(env_value
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the API key file {}: {e}",
                path.display()
            ))
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(CliError::usage(format!(
                "the API key file {} is empty; write the key the sandbox should require into it",
                path.display()
            )));
        }
        Ok(Some(key.to_string()))
    }
}

/// Starts the sandbox, prints its URLs, and serves until Ctrl-C or SIGTERM.
pub fn run(args: SandboxArgs) -> CmdResult {
    let config = args.config()?;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .map_err(|e| CliError::error(format!("cannot install the Ctrl-C handler: {e}")))?;
    let key_checked = config.api_key.is_some();
    let s3 = !config.s3_buckets.is_empty();
    let sandbox = Sandbox::start(config).map_err(start_error)?;
    let printed = {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PIXAZO_BASE_URL={}", sandbox.base_url())
            .and_then(|_| writeln!(out, "SANDBOX_STATIC_URL={}", sandbox.static_url("")))
            .and_then(|_| match s3 {
                true => writeln!(out, "AWS_ENDPOINT_URL={}", sandbox.s3_endpoint()),
                false => Ok(()),
            })
            .and_then(|_| out.flush())
    };
    if let Err(e) = printed {
        return Err(CliError::error(format!("cannot write to stdout: {e}")));
    }
    eprintln!(
        "sandbox gateway listening ({}); stop it with Ctrl-C",
        if key_checked {
            "API key required"
        } else {
            "no API key checked"
        }
    );
    let _ = stop_rx.recv();
    let stats = sandbox.stats();
    sandbox.shutdown();
    eprintln!(
        "sandbox stopped: {} submissions, {} accepted, {} completed, {} failed, {} errored, {} USD charged",
        stats.submissions,
        stats.accepted,
        stats.completed,
        stats.failed,
        stats.errored,
        stats.charged_usd
    );
    Ok(exit::DONE)
}

/// Bad values are the user's to fix (exit 2); anything else is an error (exit 1).
fn start_error(e: SandboxError) -> CliError {
    match e {
        SandboxError::Config(_) | SandboxError::NotLoopback(_) | SandboxError::StaticDir(_) => {
            CliError::usage(e.to_string())
        }
        SandboxError::Bind { addr, source } => CliError::error(format!(
            "cannot listen on {addr}: {source}; pick another port with --addr 127.0.0.1:PORT"
        )),
        other => CliError::error(other.to_string()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number; a rate is between 0 and 1"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!(
            "{text} is outside 0..1; a rate is a share, e.g. 0.1 for 10%"
        ));
    }
    Ok(rate)
}

fn parse_rps(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps > 0.0 => Ok(rps),
        _ => Err(format!(
            "`{text}` is not a positive number of requests per second"
        )),
    }
}

fn parse_processing(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{text}` is not N or MIN-MAX milliseconds, e.g. 100 or 50-500");
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    if min > max {
        return Err(format!(
            "`{text}`: the minimum {min} is above the maximum {max}"
        ));
    }
    Ok((min, max))
}

fn parse_usd(text: &str) -> Result<Decimal, String> {
    Decimal::from_str(text.trim())
        .map_err(|_| format!("`{text}` is not an amount in USD, e.g. 5 or 0.25"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SandboxArgs,
    }

    fn parse(argv: &[&str]) -> Result<SandboxArgs, String> {
        let argv = std::iter::once("sandbox").chain(argv.iter().copied());
        Cli::try_parse_from(argv)
            .map(|cli| cli.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_make_a_working_configuration() {
        let config = parse(&[]).unwrap().api_key(None).unwrap();
        assert_eq!(config, None);
        let args = parse(&[]).unwrap();
        assert_eq!(args.addr.to_string(), "127.0.0.1:8787");
        assert_eq!(args.processing_ms, (100, 100));
        assert_eq!((args.queue_ms, args.workers), (50, 16));
        assert!(!args.fast);
    }

    #[test]
    fn values_are_validated_with_clear_errors() {
        assert!(parse(&["--fail-rate", "1.5"])
            .unwrap_err()
            .contains("outside 0..1"));
        assert!(parse(&["--drop-callbacks", "lots"])
            .unwrap_err()
            .contains("not a number"));
        assert!(parse(&["--processing-ms", "500-50"])
            .unwrap_err()
            .contains("minimum"));
        assert!(parse(&["--rate-limit", "0"])
            .unwrap_err()
            .contains("positive"));
        assert!(parse(&["--wallet", "ten"]).unwrap_err().contains("USD"));
        let args = parse(&["--processing-ms", "20-80", "--wallet", "0.25", "--fast"]).unwrap();
        assert_eq!(args.processing_ms, (20, 80));
        assert_eq!(args.wallet, Some(Decimal::new(25, 2)));
        let config = args.config().unwrap();
        assert!(!config.render);
        let remote = parse(&["--addr", "0.0.0.0:8787"]).unwrap();
        assert_eq!(remote.config().unwrap_err().code, exit::USAGE);
    }

    #[test]
    fn the_key_comes_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let with_file = parse(&["--api-key-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            with_file.api_key(Some("env".into())).unwrap().as_deref(),
            Some("s3cret")
        );
        let without = parse(&[]).unwrap();
        assert_eq!(
            without.api_key(Some("env".into())).unwrap().as_deref(),
            Some("env")
        );
        std::fs::write(&file, "\n").unwrap();
        let empty = with_file.api_key(None).unwrap_err();
        assert_eq!(empty.code, exit::USAGE);
        assert!(empty.message.contains("empty"));
        assert!(parse(&["--api-key", "x"]).is_err());
    }
}
