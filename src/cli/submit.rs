//! `submit`: record, estimate and send one job.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::engine::{self, StopReason};
use codeformer_ledger::ledger::{JobState, LedgerError, NewJob};
use codeformer_ledger::params::{self, JobParams, WebhookMode};
use rust_decimal::Decimal;

/// The API parameters shared by `submit` and `batch` (defaults for every manifest row).
#[derive(clap::Args, Debug, Clone)]
pub struct ParamArgs {
    /// CodeFormer fidelity, 0..1: lower gives better-looking faces, higher stays closer to the input.
    #[arg(long, value_name = "F", value_parser = fidelity, default_value = "0.5")]
    pub fidelity: Decimal,
    /// Enlargement factor: 2 doubles width and height (cost grows with its square).
    #[arg(long, value_name = "N", value_parser = upscale, default_value = "2")]
    pub upscale: u32,
    /// Do not enhance the background (Real-ESRGAN).
    #[arg(long)]
    pub no_background_enhance: bool,
    /// Do not upsample restored faces.
    #[arg(long)]
    pub no_face_upsample: bool,
    /// Body field `webhook`: a URL the gateway notifies when the job completes.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Header X-Webhook-URL: an https endpoint that receives callbacks.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Header X-Webhook-Mode: one callback at the end (terminal) or one per status poll (sync).
    #[arg(long, value_name = "MODE", value_parser = webhook_mode)]
    pub webhook_mode: Option<WebhookMode>,
    /// Tag the job(s) KEY=VALUE, for reports by client or project (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = tag)]
    pub tags: Vec<(String, String)>,
}

impl ParamArgs {
    /// The tags given, or the config file's when none are.
    pub fn tags_or(&self, config: &super::config::Config) -> Vec<(String, String)> {
        if self.tags.is_empty() {
            config
                .file
                .tags
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect()
        } else {
            self.tags.clone()
        }
    }

    pub fn params(&self, image: &str) -> Result<JobParams, CliError> {
        let params = JobParams {
            image: image.to_string(),
            fidelity: self.fidelity,
            upscale: self.upscale,
            background_enhance: !self.no_background_enhance,
            face_upsample: !self.no_face_upsample,
            webhook: self.webhook.clone(),
            webhook_events_filter: None,
            webhook_url: self.webhook_url.clone(),
            webhook_mode: self.webhook_mode,
        };
        params
            .validate()
            .map_err(|e| CliError::usage(e.to_string()))?;
        Ok(params)
    }
}

/// Record, estimate and send one job.
///
/// The job is validated, written to the ledger, its cost estimated (from the image's header
/// bytes, or --size), and sent. If the gateway cannot be reached the job stays planned and
/// the next `run` sends it. Examples:
///
///   codeformer-ledger submit https://example.com/face.jpg --upscale 2 --tag client=acme
///   codeformer-ledger submit https://example.com/face.jpg --size 1024x768 --fidelity 0.7
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SubmitArgs {
    /// The input image: a publicly fetchable http(s) URL.
    #[arg(value_name = "IMAGE_URL")]
    pub image_url: String,
    #[command(flatten)]
    pub params: ParamArgs,
    /// The input's size, when known, for an estimate without the network.
    #[arg(long, value_name = "WxH", value_parser = size)]
    pub size: Option<(u32, u32)>,
    /// Idempotency key: a job with this key is recorded once [default: a hash of URL and parameters].
    #[arg(long, value_name = "K")]
    pub key: Option<String>,
    /// Put the job in this batch.
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
    /// Record only; send nothing (works offline; `run` sends it later).
    #[arg(long)]
    pub no_send: bool,
    /// After sending, run the engine (like `run`) until it is done: over the job's batch
    /// with --batch, else over every unfinished job in the ledger.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: where outputs are written [default: the batch's folder from an earlier
    /// run, else the config file's out_dir, else ./restored].
    #[arg(long, value_name = "DIR", requires = "wait")]
    pub out_dir: Option<std::path::PathBuf>,
    /// With --wait: the longest wait between two polls [default: the config file's
    /// poll_interval, else 5s].
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration, requires = "wait")]
    pub poll_interval: Option<std::time::Duration>,
}

pub fn fidelity(text: &str) -> Result<Decimal, String> {
    params::parse_fidelity(text).map_err(|e| e.message)
}
pub fn upscale(text: &str) -> Result<u32, String> {
    params::parse_upscale(text).map_err(|e| e.message)
}
pub fn size(text: &str) -> Result<(u32, u32), String> {
    params::parse_size(text).map_err(|e| e.message)
}
pub fn tag(text: &str) -> Result<(String, String), String> {
    params::parse_tag(text).map_err(|e| e.message)
}
pub fn webhook_mode(text: &str) -> Result<WebhookMode, String> {
    text.parse::<WebhookMode>().map_err(|e| e.message)
}

/// The local file `submit PATH` names, read; `None` for a URL. Without `--upload` a path is
/// refused naming it.
fn local_input(
    global: &Global,
    args: &SubmitArgs,
) -> Result<Option<codeformer_ledger::storage::local::LocalFile>, CliError> {
    if !params::is_local_path(&args.image_url) {
        return Ok(None);
    }
    if global.upload.is_none() {
        return Err(CliError::usage(format!(
            "image: {}",
            super::upload::needs_upload(&args.image_url)
        )));
    }
    codeformer_ledger::storage::local::read_file(
        &args.image_url,
        std::path::Path::new(&args.image_url),
        None,
    )
    .map(Some)
    .map_err(CliError::usage)
}

pub fn run(global: &Global, args: SubmitArgs) -> CmdResult {
    let placeholder = "https://local.invalid/";
    let image = if params::is_local_path(&args.image_url) {
        placeholder
    } else {
        args.image_url.as_str()
    };
    let params = args.params.params(image)?;
    if args.wait {
        // Checked before the job is recorded: exit 2 leaves the ledger as it was.
        if let Some(dir) = args
            .out_dir
            .as_ref()
            .or(global.config.file.out_dir.as_ref())
        {
            super::run::usable_out_dir(dir)?;
        }
    }
    let gateway = global.gateway()?;
    let mut job = match local_input(global, &args)? {
        Some(file) => super::upload::local_job(global, file, params)?,
        None => NewJob::new(params),
    };
    if args.size.is_some() || job.size.is_none() {
        job.size = args.size;
        job.size_source = args.size.map(|_| "given");
    }
    job.key = args.key.clone();
    job.batch = args.batch.clone();
    job.tags = args.params.tags_or(&global.config);
    if !args.no_send {
        super::upload::storage_for(global, job.local.is_some())?;
    }
    let mut ledger = global.open_ledger()?;
    let enqueued = ledger.enqueue(std::slice::from_ref(&job))?[0];
    let row = ledger.job(enqueued.id)?.expect("job just recorded");
    if enqueued.added {
        println!("job {} recorded (key {})", row.id, row.key);
    } else if row.state == JobState::Planned && !args.no_send {
        // Recorded earlier and never sent (offline, or an earlier submit could not send it).
        println!(
            "job {} (key {}) is already in the ledger, planned; sending it",
            row.id, row.key
        );
    } else {
        println!(
            "job {} (key {}) is already in the ledger, {}; nothing added",
            row.id, row.key, row.state
        );
        return Ok(codeformer_ledger::exit::DONE);
    }
    if args.no_send {
        println!("not sent (--no-send); `codeformer-ledger run` sends it");
        return Ok(codeformer_ledger::exit::DONE);
    }
    let lock = match ledger.lock_engine() {
        Ok(lock) => lock,
        Err(LedgerError::Busy { pid, .. }) => {
            println!("{}", beside_engine(&pid, row.batch.as_deref()));
            return Ok(codeformer_ledger::exit::DONE);
        }
        Err(e) => return Err(e.into()),
    };
    super::upload::upload_needed(global, &mut ledger, None, Some(row.id), false)?;
    let storage = global.storage()?;
    let stop = engine::send_now(&mut ledger, &gateway, storage.as_ref(), row.id)?;
    let row = ledger.job(row.id)?.expect("job just recorded");
    if let Some(reason) = stop {
        println!("job {} not sent; it stays {}", row.id, row.state);
        return Err(stop_error(&reason));
    }
    if row.state == JobState::Planned {
        return Err(not_sent(global, &row));
    }
    print_outcome(&row, args.wait);
    if args.wait {
        drop(lock);
        let mut run_args = super::run::RunArgs::for_wait(args.batch);
        run_args.engine.out_dir = args.out_dir;
        run_args.engine.poll_interval = args.poll_interval;
        return super::run::run(global, run_args);
    }
    Ok(match row.state {
        JobState::Rejected | JobState::Uncertain => codeformer_ledger::exit::SOME_FAILED,
        _ => codeformer_ledger::exit::DONE,
    })
}

/// What happens to a job recorded while another engine holds the ledger. That engine sends
/// it only if its run covers the job (a `run` over every job, or over the job's batch, that
/// has not yet decided to stop), so the message promises no more than `run` does.
fn beside_engine(pid: &str, batch: Option<&str>) -> String {
    let covers = match batch {
        Some(b) => format!("a `run` over every job or over batch {b}"),
        None => "a `run` over every job".to_string(),
    };
    format!(
        "not sent now: another engine (pid {pid}) holds the ledger. If it is {covers}, it sends this job; \
         otherwise `codeformer-ledger run{}` sends it once that engine is done",
        batch.map(|b| format!(" --batch {b}")).unwrap_or_default()
    )
}

/// The error of a job that could not be sent (the gateway was not reached): it stays planned.
fn not_sent(global: &Global, row: &codeformer_ledger::ledger::JobRow) -> CliError {
    let reason = row.reason.as_deref().unwrap_or("no answer");
    let reason = reason.strip_prefix("not sent: ").unwrap_or(reason);
    CliError::error(format!(
        "job {} not sent: the gateway at {} cannot be reached ({reason}); the job stays planned and `codeformer-ledger run` sends it (check --base-url / PIXAZO_BASE_URL and the network)",
        row.id, global.base_url
    ))
}

fn print_outcome(row: &codeformer_ledger::ledger::JobRow, wait: bool) {
    let estimate = row
        .estimated_cost
        .map(|c| format!("estimate {} USD", codeformer_ledger::money::exact(c)))
        .unwrap_or_else(|| "no estimate (size unknown)".into());
    match row.state {
        JobState::Queued | JobState::Processing => println!(
            "sent: request {} {}; {estimate}; {}",
            row.request_id.as_deref().unwrap_or("?"),
            row.remote_status.as_deref().unwrap_or("QUEUED"),
            if wait {
                "waiting for it"
            } else {
                "`codeformer-ledger run` polls and downloads it"
            }
        ),
        state => println!(
            "{state}: {}",
            row.reason.as_deref().or(row.error.as_deref()).unwrap_or("")
        ),
    }
}

/// The message and exit code for a run that stopped early.
pub fn stop_error(reason: &StopReason) -> CliError {
    let code = match reason {
        StopReason::Budget { .. } | StopReason::InsufficientBalance { .. } => {
            codeformer_ledger::exit::BUDGET
        }
        _ => codeformer_ledger::exit::ERROR,
    };
    let message = match reason {
        StopReason::Budget { needed } => format!(
            "stopped by the budget cap: the held jobs need {} USD more; raise --budget and run again",
            codeformer_ledger::money::exact(*needed)
        ),
        StopReason::InsufficientBalance { message } => format!(
            "the gateway's wallet cannot pay for the next job (HTTP 402: {message}); it and the jobs not yet sent are held. Top up the wallet, then run again"
        ),
        StopReason::Unauthorized { message } => message.clone(),
        StopReason::Unreachable { message } | StopReason::Misconfigured { message } => {
            message.clone()
        }
        StopReason::Interrupted => {
            "interrupted; what was in flight is recorded. `codeformer-ledger run` resumes".into()
        }
    };
    CliError { code, message }
}
