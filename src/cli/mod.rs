//! The command line: one file per command, each with its clap `Args` and a `run`. Arguments
//! are parsed in two stages: clap structs that do no I/O, then a resolved [`Global`] (ledger
//! path, gateway, key) that the commands use.

pub mod common;
pub mod config;
pub mod demo;
pub mod docs;
pub mod doctor;
pub mod estimate;
pub mod hooks;
pub mod ingest;
pub mod jobs;
pub mod ledger;
pub mod listen;
pub mod options;
pub mod prices;
pub mod reconcile;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod submit;
pub mod upload;
pub mod verify;

use clap::{Parser, Subcommand};
use codeformer_ledger::exit;
use codeformer_ledger::gateway::{ApiKey, Gateway, GatewayConfig, NetConfig, DEFAULT_BASE_URL};
use codeformer_ledger::ledger::{Ledger, LedgerError};
use codeformer_ledger::KEY_ENV;
use std::fmt;
use std::path::PathBuf;

/// An offline-first job ledger for the hosted CodeFormer face-restoration API.
///
/// Every submission, poll, answer and cost estimate goes into a SQLite ledger first, so a
/// batch survives crashes, lost networks, rate limits and empty wallets, and `report` can
/// audit exactly what was spent.
///
/// Start with `codeformer-ledger demo`, which runs the whole pipeline against a local
/// sandbox gateway.
#[derive(Parser, Debug)]
#[command(name = "codeformer-ledger", version, max_term_width = 100)]
pub struct Cli {
    /// The ledger file [default: the user's data directory, codeformer-ledger/ledger.db].
    #[arg(long, global = true, env = "CODEFORMER_LEDGER", value_name = "PATH")]
    pub ledger: Option<PathBuf>,

    /// The gateway's base URL [default: https://gateway.pixazo.ai].
    #[arg(long, global = true, env = "PIXAZO_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,

    /// The config file [default: the user's config directory, codeformer-ledger/config.toml].
    #[arg(
        long,
        global = true,
        env = "CODEFORMER_LEDGER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Read the API key from this file instead of the PIXAZO_API_KEY environment variable.
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Send local files and folders through this S3-compatible bucket: each file is uploaded
    /// once, as PREFIX/<sha256>.<ext>, and the gateway gets a presigned URL of it [config: upload].
    #[arg(long, global = true, value_name = "s3://BUCKET/PREFIX")]
    pub upload: Option<String>,

    /// The S3 endpoint [default: AWS's, for AWS_REGION (default us-east-1)].
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Path-style bucket addressing (ENDPOINT/BUCKET/KEY), as MinIO and local servers need.
    #[arg(long, global = true)]
    pub s3_path_style: bool,

    /// How long a presigned URL given to the gateway stays valid (at most 7d) [default: 24h].
    #[arg(long, global = true, value_name = "DUR", value_parser = parse_duration)]
    pub url_ttl: Option<std::time::Duration>,

    /// Also trust the CA certificates (PEM) in this file, for the gateway, downloads, image
    /// probes and any proxy (beside the machine's store and SSL_CERT_FILE / SSL_CERT_DIR).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Do not fsync downloaded outputs and their folder before recording them (for an output
    /// folder on tmpfs, where it buys nothing).
    #[arg(long, global = true)]
    pub no_fsync_outputs: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Submit(submit::SubmitArgs),
    Batch(run::BatchArgs),
    Run(run::RunArgs),
    Estimate(estimate::EstimateArgs),
    Jobs(jobs::JobsArgs),
    Show(jobs::ShowArgs),
    Report(report::ReportArgs),
    Reconcile(reconcile::ReconcileArgs),
    Ledger(ledger::LedgerArgs),
    Ingest(ingest::IngestArgs),
    Listen(listen::ListenArgs),
    Hooks(hooks::HooksArgs),
    Prices(prices::PricesArgs),
    Sandbox(sandbox::SandboxArgs),
    Demo(demo::DemoArgs),
    Verify(verify::VerifyArgs),
    Doctor(doctor::DoctorArgs),
    Config(config::ConfigArgs),
    Uploads(upload::UploadsArgs),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
}

/// What a command that did not finish cleanly tells the user, with the exit code to leave with.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad usage or input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    /// Any other error (exit 1).
    pub fn error(message: impl Into<String>) -> Self {
        CliError {
            code: exit::ERROR,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<LedgerError> for CliError {
    fn from(e: LedgerError) -> Self {
        if let LedgerError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return CliError::error(
                    "the disk holding the ledger is full: the last change was not recorded, \
                     and everything recorded before it is intact. Free some space, then run again",
                );
            }
        }
        let code = match e {
            LedgerError::Busy { .. } => exit::LEDGER_BUSY,
            LedgerError::NoSuchJob(_)
            | LedgerError::PriceNotRemovable { .. }
            | LedgerError::KeyConflict { .. } => exit::USAGE,
            _ => exit::ERROR,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`): a clean exit.
            return CliError {
                code: exit::DONE,
                message: String::new(),
            };
        }
        CliError::error(e.to_string())
    }
}

impl From<codeformer_ledger::engine::EngineError> for CliError {
    fn from(e: codeformer_ledger::engine::EngineError) -> Self {
        match e {
            codeformer_ledger::engine::EngineError::Ledger(l) => l.into(),
            other => CliError::error(other.to_string()),
        }
    }
}

/// A command's outcome: the exit code on success, or an error to print.
pub type CmdResult = Result<u8, CliError>;

/// The resolved global options.
pub struct Global {
    pub ledger: PathBuf,
    pub base_url: String,
    pub config: config::Config,
    pub sources: config::Sources,
    api_key_file: Option<PathBuf>,
    /// Where local inputs are uploaded (`--upload` or the config file's `upload`).
    pub upload: Option<codeformer_ledger::storage::StorageConfig>,
    /// `--ca-cert`, else the config file's `ca_cert`.
    pub ca_cert: Option<PathBuf>,
    pub ca_cert_from_flag: bool,
    /// Whether outputs are fsynced before they are recorded.
    pub fsync_outputs: bool,
    pub fsync_from_flag: bool,
    /// The trust store and proxy, read once on first use and shared by every agent.
    net: std::sync::OnceLock<NetConfig>,
}

impl Global {
    pub fn resolve(cli: &Cli) -> Result<Global, CliError> {
        let config = config::Config::load(cli.config.as_deref())?;
        let (ledger, ledger_source) = match (&cli.ledger, &config.file.ledger) {
            (Some(path), _) => (
                path.clone(),
                config::flag_or_env(&path.to_string_lossy(), "CODEFORMER_LEDGER", "--ledger"),
            ),
            (None, Some(path)) => (path.clone(), "config file".to_string()),
            (None, None) => (
                dirs::data_dir()
                    .ok_or_else(|| {
                        CliError::usage(
                            "no data directory is known for this user; pass --ledger PATH",
                        )
                    })?
                    .join("codeformer-ledger")
                    .join("ledger.db"),
                "built-in default".to_string(),
            ),
        };
        let (given, base_source) = match (&cli.base_url, &config.file.base_url) {
            (Some(url), _) => (
                url.clone(),
                config::flag_or_env(url, "PIXAZO_BASE_URL", "--base-url"),
            ),
            (None, Some(url)) => (url.clone(), "config file".to_string()),
            (None, None) => (DEFAULT_BASE_URL.to_string(), "built-in default".to_string()),
        };
        let base_url = given.trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "base URL `{given}` ({base_source}) is not an http(s) URL"
            )));
        }
        let upload = upload::resolve(cli, &config)?;
        let ca_cert = cli.ca_cert.clone().or_else(|| config.file.ca_cert.clone());
        if let Some(path) = &ca_cert {
            NetConfig::check_ca_file(path).map_err(|e| CliError::usage(e.to_string()))?;
        }
        let fsync_outputs = !cli.no_fsync_outputs && config.file.fsync_outputs.unwrap_or(true);
        Ok(Global {
            upload,
            ledger,
            base_url,
            ca_cert,
            ca_cert_from_flag: cli.ca_cert.is_some(),
            fsync_outputs,
            fsync_from_flag: cli.no_fsync_outputs,
            config,
            sources: config::Sources {
                ledger: ledger_source,
                base_url: base_source,
            },
            api_key_file: cli.api_key_file.clone(),
            net: std::sync::OnceLock::new(),
        })
    }

    /// Where the key comes from, without its value.
    pub fn key_source(&self) -> String {
        match &self.api_key_file {
            Some(file) => format!("--api-key-file {}", file.display()),
            None => format!("environment {KEY_ENV}"),
        }
    }

    /// The API key, from --api-key-file or the environment; `None` when neither gives one.
    pub fn api_key(&self) -> Result<Option<ApiKey>, CliError> {
        if let Some(file) = &self.api_key_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::usage(format!("--api-key-file {}: {e}", file.display())))?;
            return ApiKey::new(&text).map(Some).ok_or_else(|| {
                CliError::usage(format!(
                    "--api-key-file {}: the file is empty",
                    file.display()
                ))
            });
        }
        Ok(std::env::var(KEY_ENV).ok().and_then(|k| ApiKey::new(&k)))
    }

    /// The trust store and proxy every outgoing request uses.
    /// Read once per process: the machine's store is a few hundred certificates to parse.
    pub fn net(&self) -> Result<NetConfig, CliError> {
        if let Some(net) = self.net.get() {
            return Ok(net.clone());
        }
        let net = NetConfig::from_env(self.ca_cert.as_deref())
            .map_err(|e| CliError::usage(e.to_string()))?;
        Ok(self.net.get_or_init(|| net).clone())
    }

    pub fn gateway(&self) -> Result<Gateway, CliError> {
        let mut config = GatewayConfig::with_setup(&self.base_url, self.api_key()?, self.net()?);
        config.fsync_outputs = self.fsync_outputs;
        let gateway = Gateway::new(config);
        // Every command's API calls draw from the budget; the config file's quota bounds it.
        gateway.budget().set_ceiling(self.config.max_rps()?);
        Ok(gateway)
    }

    /// The bucket of local inputs, when `--upload` is configured. Its requests go through the
    /// gateway client's file agent, so that agent's TLS and proxy settings apply.
    pub fn storage(&self) -> Result<Option<codeformer_ledger::storage::Storage>, CliError> {
        let Some(config) = &self.upload else {
            return Ok(None);
        };
        let agent = Gateway::new(GatewayConfig::with_setup(&self.base_url, None, self.net()?))
            .file_agent()
            .clone();
        codeformer_ledger::storage::Storage::new(config.clone(), agent)
            .map(Some)
            .map_err(|e| CliError::usage(e.to_string()))
    }

    pub fn open_ledger(&self) -> Result<Ledger, CliError> {
        Ok(Ledger::open(&self.ledger)?)
    }

    pub fn open_ledger_read_only(&self) -> Result<Ledger, CliError> {
        Ok(Ledger::open_read_only(&self.ledger)?)
    }
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Sandbox(args) => return sandbox::run(args),
        Command::Completions(args) => return docs::completions(args),
        Command::Man(args) => return docs::man(args),
        _ => {}
    }
    let global = Global::resolve(&cli)?;
    match cli.command {
        Command::Submit(args) => submit::run(&global, args),
        Command::Batch(args) => run::batch(&global, args),
        Command::Run(args) => run::run(&global, args),
        Command::Estimate(args) => estimate::run(&global, args),
        Command::Jobs(args) => jobs::list(&global, args),
        Command::Show(args) => jobs::show(&global, args),
        Command::Report(args) => report::run(&global, args),
        Command::Reconcile(args) => reconcile::run(&global, args),
        Command::Ledger(args) => ledger::run(&global, args),
        Command::Ingest(args) => ingest::run(&global, args),
        Command::Listen(args) => listen::run(&global, args),
        Command::Hooks(args) => hooks::run(&global, args),
        Command::Prices(args) => prices::run(&global, args),
        Command::Demo(args) => demo::run(&global, args),
        Command::Verify(args) => verify::run(&global, args),
        Command::Doctor(args) => doctor::run(&global, args),
        Command::Config(args) => config::run(&global, args),
        Command::Uploads(args) => upload::run(&global, args),
        Command::Sandbox(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
    }
}

/// Output formats shared by the listing commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Parses a rate of requests a second (`--max-rps`): a positive number, fractions allowed.
pub fn parse_rps(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps > 0.0 && rps <= 100_000.0 => Ok(rps),
        Ok(_) => Err(format!(
            "`{text}` is not a usable rate: give requests a second above 0 (e.g. 10 or 0.5)"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a number of requests a second (e.g. 10)"
        )),
    }
}

/// Parses a duration such as `90s`, `15m`, `2h`, `1d` or `500ms`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 90s, 15m, 2h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 365.0 * 86400.0 {
        return Err(format!("`{text}` is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// Parses a USD amount for clap.
pub fn parse_budget(text: &str) -> Result<rust_decimal::Decimal, String> {
    codeformer_ledger::money::parse_usd("budget", text).map_err(|e| e.to_string())
}
