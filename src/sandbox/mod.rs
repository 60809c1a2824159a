//! The sandbox gateway: a local HTTP server on loopback that speaks the hosted CodeFormer
//! gateway's protocol (`pixazo-codeformer-api.md`), so that tests, the demo and the benchmarks
//! drive the real client over real HTTP.
//!
//! It owns everything a job goes through on the gateway's side: validation of the submit call,
//! the QUEUED → PROCESSING → COMPLETED | FAILED | ERROR timeline, fetching the input, writing a
//! real PNG of exactly the documented output size, charging a wallet, serving outputs and static
//! input files, pushing webhook callbacks, and injecting the faults a client must survive.
//!
//! Invariants it keeps:
//! - Only COMPLETED jobs are charged, at exactly 0.0021 USD per output megapixel (decimal
//!   arithmetic; 1 MP = 10^6 pixels). FAILED and ERROR jobs cost nothing.
//! - Every answer carries a `Content-Length`; a "dropped" request gets no byte at all.
//! - Randomness (outcomes, processing times, faults) comes from [`SandboxConfig::seed`], keyed
//!   by the order of requests and jobs, so a sequential client sees the same run for the same
//!   seed.
//! - Hostile input never panics the server: request heads are capped at 16 KiB and bodies at
//!   1 MiB (413), and every parse error is a 4xx answer.
//!
//! ```no_run
//! use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::start(SandboxConfig::default())?;
//! println!("point --base-url at {}", sandbox.base_url());
//! // ... run a client against it ...
//! println!("{} jobs completed", sandbox.stats().completed);
//! sandbox.shutdown();
//! # Ok::<(), codeformer_ledger::sandbox::SandboxError>(())
//! ```

mod faults;
mod files;
mod http;
mod jobs;
mod paths;
mod protocol;
mod render;
mod routes;
mod s3;
mod stats;
mod webhooks;

pub use s3::{S3_ACCESS_KEY, S3_SECRET_KEY};
pub use stats::SandboxStats;

use rust_decimal::Decimal;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The API paths of the gateway, as the client calls them.
pub const SUBMIT_PATH: &str = "/codeformer-image-restoration/v1/codeformer/generate";
/// Prefix of the status path; the request id follows.
pub const STATUS_PATH_PREFIX: &str = "/v2/requests/status/";
/// The header that carries the API key.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// How the sandbox behaves. Start from [`SandboxConfig::default`] and change what a test needs.
/// Its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct SandboxConfig {
    /// Where to listen; must be a loopback address. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// When set, every API request without this `Ocp-Apim-Subscription-Key` gets 401.
    /// Static files, outputs and the `/sandbox/` endpoints need no key.
    pub api_key: Option<String>,
    /// Files served at `GET /static/<relative path>`, with single-range support (206).
    pub static_dir: Option<PathBuf>,
    /// Time a job spends QUEUED, in milliseconds.
    pub queue_ms: u64,
    /// Time a job spends PROCESSING, uniform in `[min, max]` milliseconds (seeded). A job whose
    /// fetch and rendering take longer stays PROCESSING until that work is done.
    pub processing_ms: (u64, u64),
    /// Added to every API answer, in milliseconds.
    pub latency_ms: u64,
    /// Share of jobs that end FAILED (0..=1).
    pub fail_rate: f64,
    /// Share of jobs that end ERROR (0..=1).
    pub error_rate: f64,
    /// Share of API requests answered 500 without being carried out (0..=1).
    pub flaky_rate: f64,
    /// Share of API requests whose connection is closed without a single byte of answer
    /// (0..=1). The request is carried out first: a dropped submission still creates, and may
    /// bill, its job, which is the case a client has to record as uncertain.
    pub drop_rate: f64,
    /// Above this many API requests per second (token bucket, bursts of one second's worth):
    /// 429 with `Retry-After`.
    pub rate_limit_rps: Option<f64>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Balance in USD; `None` is an unlimited wallet. A submission whose estimated cost the
    /// balance, minus what in-flight jobs may cost, cannot cover gets 402. The estimate needs
    /// the input's size, so with a wallet the submit call reads the input's header first
    /// (from disk when the input is one of this sandbox's own static files, so that a submit
    /// never waits for a second HTTP worker).
    pub wallet_usd: Option<Decimal>,
    /// `true`: the output is a nearest-neighbour upscale of the decoded input. `false` ("fast
    /// mode"): a flat PNG of the exact output size, read from the input's header only.
    pub render: bool,
    /// Allow callbacks to plain `http://` URLs (loopback tests). Otherwise `X-Webhook-URL` must
    /// be https, and an http one gets 400 as on the real gateway.
    pub allow_http_webhooks: bool,
    /// Deliver every callback twice, as network retries on the real gateway may.
    pub duplicate_callbacks: bool,
    /// Share of callbacks never delivered (0..=1).
    pub drop_callbacks: f64,
    /// Where outputs are written; by default a temporary directory owned by the [`Sandbox`].
    pub output_dir: Option<PathBuf>,
    /// HTTP worker threads, each serving one connection at a time (keep-alive included).
    pub workers: usize,
    /// Buckets of the S3-compatible object store at `/s3/BUCKET/KEY` ([`Sandbox::s3_endpoint`]),
    /// empty at start; requests must be presigned with [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`].
    /// Any other bucket is answered `NoSuchBucket`.
    pub s3_buckets: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            static_dir: None,
            queue_ms: 50,
            processing_ms: (100, 100),
            latency_ms: 0,
            fail_rate: 0.0,
            error_rate: 0.0,
            flaky_rate: 0.0,
            drop_rate: 0.0,
            rate_limit_rps: None,
            seed: 0,
            wallet_usd: None,
            render: true,
            allow_http_webhooks: false,
            duplicate_callbacks: false,
            drop_callbacks: 0.0,
            output_dir: None,
            workers: 16,
            s3_buckets: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("addr", &self.addr)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("static_dir", &self.static_dir)
            .field("queue_ms", &self.queue_ms)
            .field("processing_ms", &self.processing_ms)
            .field("latency_ms", &self.latency_ms)
            .field("fail_rate", &self.fail_rate)
            .field("error_rate", &self.error_rate)
            .field("flaky_rate", &self.flaky_rate)
            .field("drop_rate", &self.drop_rate)
            .field("rate_limit_rps", &self.rate_limit_rps)
            .field("seed", &self.seed)
            .field("wallet_usd", &self.wallet_usd)
            .field("render", &self.render)
            .field("allow_http_webhooks", &self.allow_http_webhooks)
            .field("duplicate_callbacks", &self.duplicate_callbacks)
            .field("drop_callbacks", &self.drop_callbacks)
            .field("output_dir", &self.output_dir)
            .field("workers", &self.workers)
            .field("s3_buckets", &self.s3_buckets)
            .finish()
    }
}

impl SandboxConfig {
    /// Checks the values that [`Sandbox::start`] cannot work with.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let rates = [
            ("fail_rate", self.fail_rate),
            ("error_rate", self.error_rate),
            ("flaky_rate", self.flaky_rate),
            ("drop_rate", self.drop_rate),
            ("drop_callbacks", self.drop_callbacks),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SandboxError::Config(format!(
                    "{name} is {rate}; a rate must be between 0 and 1"
                )));
            }
        }
        if self.processing_ms.0 > self.processing_ms.1 {
            return Err(SandboxError::Config(format!(
                "processing_ms minimum {} is above its maximum {}",
                self.processing_ms.0, self.processing_ms.1
            )));
        }
        if let Some(rps) = self.rate_limit_rps {
            if !(rps.is_finite() && rps > 0.0) {
                return Err(SandboxError::Config(format!(
                    "rate_limit_rps is {rps}; it must be a positive number"
                )));
            }
        }
        if self.workers == 0 {
            return Err(SandboxError::Config("workers must be at least 1".into()));
        }
        for bucket in &self.s3_buckets {
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(SandboxError::Config(format!(
                    "s3 bucket `{bucket}` is not a bucket name (3-63 characters: a-z, 0-9, `-`, `.`)"
                )));
            }
        }
        if !self.addr.ip().is_loopback() {
            return Err(SandboxError::NotLoopback(self.addr));
        }
        if let Some(dir) = &self.static_dir {
            if !dir.is_dir() {
                return Err(SandboxError::StaticDir(dir.clone()));
            }
        }
        Ok(())
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A configuration value is out of range.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The sandbox only listens on loopback addresses.
    #[error("{0} is not a loopback address; the sandbox listens on 127.0.0.1 or ::1 only")]
    NotLoopback(SocketAddr),
    /// The address could not be bound (in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The static directory does not exist or is not a directory.
    #[error("static directory {} does not exist or is not a directory", .0.display())]
    StaticDir(PathBuf),
    /// The output directory could not be created.
    #[error("cannot create output directory {}: {source}", path.display())]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A thread could not be spawned.
    #[error("cannot start sandbox thread: {0}")]
    Thread(std::io::Error),
}

/// State shared by the HTTP workers, the scheduler, the renderers and the webhook sender.
pub(crate) struct Shared {
    pub config: SandboxConfig,
    pub base_url: String,
    pub output_dir: PathBuf,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<Mutex<stats::Counters>>,
    /// TCP connections the server accepted.
    pub connections: Arc<AtomicU64>,
    pub wallet: Mutex<jobs::Wallet>,
    pub jobs: jobs::JobTable,
    pub bucket: Option<Mutex<faults::TokenBucket>>,
    pub request_seq: AtomicU64,
    pub webhooks: webhooks::Outbox,
    pub fetcher: render::Fetcher,
    pub s3: s3::Store,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running sandbox gateway. Dropping it stops it too.
pub struct Sandbox {
    shared: Arc<Shared>,
    server: Option<http::Server>,
    threads: Vec<JoinHandle<()>>,
    // Dropped after the threads are joined, so no renderer writes into a removed directory.
    _output_tmp: Option<tempfile::TempDir>,
}

/// How long the sandbox waits on its own outgoing HTTP calls (input fetches, callbacks).
pub(crate) const OUTGOING_TIMEOUT: Duration = Duration::from_secs(10);

/// Threads that turn fetched inputs into outputs. Rendering is CPU bound and the machine may be
/// small; fetching is I/O bound, so a few more than one.
const RENDER_THREADS: usize = 3;

impl Sandbox {
    /// Binds the address, spawns the server, scheduler, renderer and webhook threads, and
    /// returns at once.
    pub fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.validate()?;
        let (output_dir, output_tmp) = match &config.output_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| SandboxError::OutputDir {
                    path: dir.clone(),
                    source,
                })?;
                (dir.clone(), None)
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("codeformer-sandbox-")
                    .tempdir()
                    .map_err(|source| SandboxError::OutputDir {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let listener = TcpListener::bind(config.addr).map_err(|source| SandboxError::Bind {
            addr: config.addr,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: config.addr,
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            base_url: format!("http://{local}"),
            output_dir,
            stop: stop.clone(),
            stats: Arc::new(Mutex::new(stats::Counters::default())),
            connections: Arc::new(AtomicU64::new(0)),
            wallet: Mutex::new(jobs::Wallet::new(config.wallet_usd)),
            jobs: jobs::JobTable::default(),
            bucket: config
                .rate_limit_rps
                .map(|rps| Mutex::new(faults::TokenBucket::new(rps))),
            request_seq: AtomicU64::new(0),
            webhooks: webhooks::Outbox::default(),
            fetcher: render::Fetcher::new(),
            s3: s3::Store::new(&config.s3_buckets),
            config,
        });
        let mut sandbox = Sandbox {
            shared: shared.clone(),
            server: None,
            threads: Vec::new(),
            _output_tmp: output_tmp,
        };
        sandbox.spawn_background()?;
        let handler_shared = shared.clone();
        let handler: http::Handler = Arc::new(move |req| routes::handle(&handler_shared, req));
        let server = http::Server::spawn(
            listener,
            shared.config.workers,
            http::Limits::default(),
            stop,
            handler,
            shared.connections.clone(),
        )
        .map_err(SandboxError::Thread)?;
        sandbox.server = Some(server);
        Ok(sandbox)
    }

    fn spawn_background(&mut self) -> Result<(), SandboxError> {
        let shared = self.shared.clone();
        self.spawn("sandbox-scheduler", move || jobs::run_scheduler(&shared))?;
        for i in 0..RENDER_THREADS {
            let shared = self.shared.clone();
            self.spawn(&format!("sandbox-render-{i}"), move || {
                jobs::run_renderer(&shared)
            })?;
        }
        let shared = self.shared.clone();
        self.spawn("sandbox-webhooks", move || webhooks::run_sender(&shared))?;
        Ok(())
    }

    fn spawn(
        &mut self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), SandboxError> {
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(body)
            .map_err(SandboxError::Thread)?;
        self.threads.push(handle);
        Ok(())
    }

    /// The gateway's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The URL of a file under the static directory: `base_url + "/static/" + relative`, with
    /// characters that are not safe in a URL path percent-encoded (`relative` is a plain path).
    pub fn static_url(&self, relative: &str) -> String {
        format!(
            "{}/static/{}",
            self.shared.base_url,
            paths::encode_path(relative.trim_start_matches('/'))
        )
    }

    /// The endpoint of the sandbox's S3-compatible store, for `--s3-endpoint` with
    /// `--s3-path-style`: `base_url + "/s3"`.
    pub fn s3_endpoint(&self) -> String {
        format!("{}{}", self.shared.base_url, s3::S3_PATH)
    }

    /// The objects in one of the store's buckets, as (key, bytes), in key order.
    pub fn s3_objects(&self, bucket: &str) -> Vec<(String, u64)> {
        self.shared.s3.objects(bucket)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SandboxStats {
        routes::snapshot(&self.shared)
    }

    /// Adds money to the wallet. With an unlimited wallet (`wallet_usd: None`) it does nothing.
    pub fn add_funds(&self, usd: Decimal) {
        self.shared.wallet.lock().unwrap().add(usd);
    }

    /// Stops every thread and releases the port. Dropping the sandbox does the same.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop_all(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.jobs.wake_all();
        self.shared.webhooks.wake_all();
        if let Some(server) = self.server.take() {
            server.stop();
        }
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Sandbox>();
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = SandboxConfig {
            api_key: Some("s3cret".into()),
            ..SandboxConfig::default()
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("s3cret") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let refuse = |config: SandboxConfig| Sandbox::start(config).err().unwrap().to_string();
        assert!(refuse(SandboxConfig {
            fail_rate: 1.5,
            ..Default::default()
        })
        .contains("fail_rate"));
        assert!(refuse(SandboxConfig {
            processing_ms: (5, 1),
            ..Default::default()
        })
        .contains("processing_ms"));
        assert!(refuse(SandboxConfig {
            rate_limit_rps: Some(0.0),
            ..Default::default()
        })
        .contains("rate_limit_rps"));
        assert!(refuse(SandboxConfig {
            addr: "0.0.0.0:0".parse().unwrap(),
            ..Default::default()
        })
        .contains("loopback"));
    }
}
