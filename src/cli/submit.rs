//! `submit`: record, estimate and send one job.

use super::common::{size, stop_error, ParamArgs};
use super::options::Checked;
use super::{CliError, CmdResult, Global};
use codeformer_ledger::engine;
use codeformer_ledger::ledger::{JobState, LedgerError, NewJob};
use codeformer_ledger::params;

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
    /// With --wait: a known quota of API requests a second [default: the config file's
    /// max_rps, else learned from the gateway's 429 answers].
    #[arg(long, value_name = "N", value_parser = super::parse_rps, requires = "wait")]
    pub max_rps: Option<f64>,
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
    let params = args.params.params(image, &global.base_url)?;
    // The run of --wait, checked before the job is recorded: exit 2 leaves the ledger as it was.
    let wait = match args.wait {
        true => Some(Checked::for_wait(
            &global.config,
            args.out_dir.clone(),
            args.poll_interval,
            args.max_rps,
        )?),
        false => None,
    };
    let gateway = global.gateway()?;
    if args.max_rps.is_some() {
        gateway.budget().set_ceiling(args.max_rps);
    }
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
    super::upload::upload_needed(global, &mut ledger, None, Some(row.id), 1, false)?;
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
    if let Some(checked) = wait {
        drop(lock);
        return super::run::run_checked(global, args.batch.as_deref(), checked, Vec::new(), false);
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
