//! `jobs` and `show`: the ledger's view, read only, offline.

use super::{CmdResult, Format, Global};
use codeformer_ledger::ledger::{JobFilter, JobRow, JobState};
use codeformer_ledger::money;
use std::io::{BufWriter, Seek, Write};

/// List jobs (read only; works while an engine runs).
///
/// Examples:
///   codeformer-ledger jobs --state failed,error
///   codeformer-ledger jobs --batch portraits --format csv > jobs.csv
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct JobsArgs {
    /// Only jobs in these states (comma-separated).
    #[arg(long, value_name = "S", value_delimiter = ',', value_parser = state)]
    pub state: Vec<JobState>,
    /// Only this batch's jobs.
    #[arg(long, value_name = "B")]
    pub batch: Option<String>,
    /// At most this many jobs.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// One job and every event of it, in order.
///
/// JOB is a job id, an idempotency key or a gateway request id. Example:
///   codeformer-ledger show 12 --format json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ShowArgs {
    #[arg(value_name = "JOB")]
    pub job: String,
    /// table for reading, or json (the job, its tags, outputs and events). A job with its
    /// events is not one table, so there is no csv: `jobs --format csv` lists jobs.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ShowFormat,
}

/// The formats of `show`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowFormat {
    Table,
    Json,
}

fn state(text: &str) -> Result<JobState, String> {
    text.trim().parse()
}

fn cost(value: Option<rust_decimal::Decimal>) -> String {
    value.map(money::exact).unwrap_or_default()
}

/// The JSON form of a job, with stable snake_case fields and money as exact strings.
pub fn job_json(job: &JobRow) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "key": job.key,
        "batch": job.batch,
        "state": job.state.as_str(),
        "attempt": job.attempt,
        "image_url": job.image_url,
        "fidelity": job.fidelity.normalize().to_string(),
        "upscale": job.upscale,
        "background_enhance": job.background_enhance,
        "face_upsample": job.face_upsample,
        "webhook": job.webhook,
        "webhook_url": job.webhook_url,
        "webhook_mode": job.webhook_mode,
        "input_width": job.input_width,
        "input_height": job.input_height,
        "output_width": job.output_width,
        "output_height": job.output_height,
        "request_id": job.request_id,
        "remote_status": job.remote_status,
        "polls": job.polls,
        "post": job.post,
        "reason": job.reason,
        "error": job.error,
        "price_per_mp": job.price_per_mp.map(money::exact),
        "estimated_cost": job.estimated_cost.map(money::exact),
        "actual_cost": job.actual_cost.map(money::exact),
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    })
}

pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub fn list(global: &Global, args: JobsArgs) -> CmdResult {
    let ledger = global.open_ledger_read_only()?;
    let filter = JobFilter {
        states: args.state,
        batch: args.batch,
        limit: args.limit,
    };
    // The listing is spooled (in memory, on disk past 8 MiB) and printed only once it is
    // whole: an error halfway leaves stdout empty, never half a JSON array or CSV table.
    let mut out = BufWriter::new(tempfile::spooled_tempfile(8 << 20));
    match args.format {
        Format::Table => {
            writeln!(
                out,
                "{:>7}  {:<10}  {:>3}  {:<14}  {:<40}  {:>10}  {:>10}",
                "id", "state", "try", "batch", "image", "estimate", "charged"
            )?;
        }
        Format::Csv => writeln!(
            out,
            "id,key,batch,state,attempt,image_url,request_id,estimated_cost,actual_cost,updated_at"
        )?,
        Format::Json => write!(out, "[")?,
    }
    let mut first = true;
    let mut io_error = None;
    ledger.for_each_job(&filter, |job| {
        let result = match args.format {
            Format::Table => writeln!(
                out,
                "{:>7}  {:<10}  {:>3}  {:<14}  {:<40}  {:>10}  {:>10}",
                job.id,
                job.state.as_str(),
                job.attempt,
                shorten(job.batch.as_deref().unwrap_or("-"), 14),
                shorten(&job.image_url, 40),
                job.estimated_cost
                    .map(money::display)
                    .unwrap_or_else(|| "?".into()),
                job.actual_cost
                    .map(money::display)
                    .unwrap_or_else(|| "-".into()),
            ),
            Format::Csv => writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                job.id,
                csv_field(&job.key),
                csv_field(job.batch.as_deref().unwrap_or("")),
                job.state,
                job.attempt,
                csv_field(&job.image_url),
                csv_field(job.request_id.as_deref().unwrap_or("")),
                cost(job.estimated_cost),
                cost(job.actual_cost),
                job.updated_at
            ),
            Format::Json => {
                let sep = if first { "\n" } else { ",\n" };
                first = false;
                write!(out, "{sep}{}", job_json(&job))
            }
        };
        if let Err(e) = result {
            io_error.get_or_insert(e);
        }
        Ok(())
    })?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    if args.format == Format::Json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    }
    let mut spool = out.into_inner().map_err(|e| e.into_error())?;
    spool.seek(std::io::SeekFrom::Start(0))?;
    let mut stdout = std::io::stdout().lock();
    std::io::copy(&mut spool, &mut stdout)?;
    stdout.flush()?;
    Ok(codeformer_ledger::exit::DONE)
}

fn upload_json(u: &codeformer_ledger::ledger::UploadRow) -> serde_json::Value {
    serde_json::json!({
        "local_path": u.local_path,
        "resolved_path": u.resolved_path,
        "folder": u.folder,
        "bytes": u.bytes,
        "sha256": u.sha256,
        "object_key": u.object_key,
        "created_at": u.created_at,
        "uploaded_at": u.uploaded_at,
        "put_status": u.put_status,
        "deleted_at": u.deleted_at,
    })
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let tail: String = text
        .chars()
        .rev()
        .take(width - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

pub fn show(global: &Global, args: ShowArgs) -> CmdResult {
    let ledger = global.open_ledger_read_only()?;
    let job = ledger.find_job(&args.job)?;
    let events = ledger.events_of(job.id)?;
    let tags = ledger.tags_of(job.id)?;
    let outputs = ledger.outputs_of(job.id)?;
    let uploads = ledger.uploads_of(job.id)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    match args.format {
        ShowFormat::Json => {
            let value = serde_json::json!({
                "job": job_json(&job),
                "tags": tags.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "outputs": outputs,
                "uploads": uploads.iter().map(upload_json).collect::<Vec<_>>(),
                "events": events,
            });
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            )?;
        }
        ShowFormat::Table => {
            writeln!(
                out,
                "job {} ({}), attempt {}, {}",
                job.id, job.key, job.attempt, job.state
            )?;
            writeln!(out, "  image     {}", job.image_url)?;
            writeln!(
                out,
                "  params    fidelity {}, upscale {}, background_enhance {}, face_upsample {}",
                job.fidelity.normalize(),
                job.upscale,
                job.background_enhance,
                job.face_upsample
            )?;
            if let Some((w, h)) = job.input_size() {
                writeln!(
                    out,
                    "  input     {w}x{h} ({})",
                    job.size_source.as_deref().unwrap_or("?")
                )?;
            }
            if let Some(id) = &job.request_id {
                writeln!(out, "  request   {id}")?;
            }
            writeln!(
                out,
                "  cost      estimate {} · charged {}",
                job.estimated_cost
                    .map(money::exact)
                    .unwrap_or_else(|| "unknown".into()),
                job.actual_cost
                    .map(money::exact)
                    .unwrap_or_else(|| "-".into())
            )?;
            for (k, v) in &tags {
                writeln!(out, "  tag       {k}={v}")?;
            }
            for u in &uploads {
                let how = match (&u.uploaded_at, u.put_status, &u.deleted_at) {
                    (_, _, Some(at)) => format!("deleted {at}"),
                    (Some(at), Some(status), None) => format!("uploaded {at}, PUT HTTP {status}"),
                    (Some(at), None, None) => {
                        format!("in the bucket since {at} (not uploaded again)")
                    }
                    (None, _, None) => "not uploaded yet".to_string(),
                };
                writeln!(
                    out,
                    "  upload    {} ({}; {} bytes, sha256 {}) -> {}, {how}",
                    u.local_path, u.resolved_path, u.bytes, u.sha256, u.object_key
                )?;
            }
            for o in &outputs {
                writeln!(
                    out,
                    "  output    {} ({} bytes, sha256 {})",
                    o.path, o.bytes, o.sha256
                )?;
            }
            if let Some(reason) = job.reason.as_deref().or(job.error.as_deref()) {
                writeln!(out, "  note      {reason}")?;
            }
            writeln!(out, "events:")?;
            for e in &events {
                let http = e
                    .http_status
                    .map(|s| format!(" HTTP {s}"))
                    .unwrap_or_default();
                let remote = e
                    .remote_status
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                let latency = e.latency_ms.map(|l| format!(" {l}ms")).unwrap_or_default();
                writeln!(
                    out,
                    "  {} #{} {}{http}{remote}{latency} {}",
                    e.at,
                    e.attempt.unwrap_or(0),
                    e.kind,
                    e.detail.as_deref().unwrap_or("")
                )?;
            }
        }
    }
    out.flush()?;
    Ok(codeformer_ledger::exit::DONE)
}
