//! `run` and `batch`: drive the engine until nothing is unfinished.

use super::common::{stop_error, ParamArgs};
use super::options::{Checked, EngineArgs, RunConfig};
use super::{CliError, CmdResult, Global};
use codeformer_ledger::engine::{self, EngineOptions, Progress, ProgressSink, RunSummary};
use codeformer_ledger::ledger::{JobState, Ledger, NewJob};
use codeformer_ledger::manifest;
use codeformer_ledger::money;
use rust_decimal::Decimal;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Resume: send planned jobs, poll, download, run hooks, until nothing is unfinished.
///
/// Safe to run again at any time: nothing is sent twice.
///
/// Examples:
///   codeformer-ledger run
///   codeformer-ledger run --batch portraits --budget 5 --deadline 30m
///   codeformer-ledger run --retry failed,error --concurrency 8
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// Only this batch's jobs [default: every job in the ledger].
    #[arg(long, value_name = "NAME")]
    pub batch: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Send the jobs in these states again, as new attempts: failed, error, rejected, stalled (comma-separated).
    #[arg(long, value_name = "STATES", value_delimiter = ',', value_parser = retry_state)]
    pub retry: Vec<JobState>,
    /// Send `uncertain` jobs again. They may already exist at the gateway, so this can pay twice.
    #[arg(long)]
    pub resubmit_uncertain: bool,
}

/// Enqueue a manifest (text, CSV or JSON Lines), then run it to the end.
///
/// A manifest is plain text (one image URL a line, # comments), CSV with a header, or JSON
/// Lines, with the columns image, fidelity, upscale, background_enhance, face_upsample,
/// width, height, key, tags. Every row is validated first; nothing is recorded if one is bad
/// (unless --skip-invalid). Running the same manifest again adds nothing.
///
/// Examples:
///   codeformer-ledger batch photos.txt --budget 2
///   codeformer-ledger batch shoot.csv --name shoot-2026-11 --upscale 4 --tag client=acme
///   codeformer-ledger batch photos.jsonl --enqueue-only
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct BatchArgs {
    /// The manifest file.
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// The batch's name [default: the manifest's file name without extension].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Record the jobs and stop: nothing is sent (works offline).
    #[arg(long)]
    pub enqueue_only: bool,
    /// Record the valid rows and list the bad ones, instead of refusing the whole manifest.
    #[arg(long)]
    pub skip_invalid: bool,
    #[command(flatten)]
    pub params: ParamArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn retry_state(text: &str) -> Result<JobState, String> {
    let state: JobState = text.trim().parse()?;
    if !state.is_retryable() {
        return Err(format!(
            "`{text}` cannot be retried (retry failed, error, rejected or stalled)"
        ));
    }
    Ok(state)
}

pub fn run(global: &Global, args: RunArgs) -> CmdResult {
    let checked = Checked::check(&global.config, &args.engine)?;
    run_checked(
        global,
        args.batch.as_deref(),
        checked,
        args.retry,
        args.resubmit_uncertain,
    )
}

/// `run` with its options checked already (`submit --wait` checks them before it records
/// the job).
pub fn run_checked(
    global: &Global,
    batch: Option<&str>,
    checked: Checked,
    retry: Vec<JobState>,
    resubmit_uncertain: bool,
) -> CmdResult {
    let gateway = global.gateway()?;
    let mut ledger = global.open_ledger()?;
    let _lock = ledger.lock_engine()?;
    let mut plan = RunConfig::resolve(&ledger, batch, checked)?;
    plan.retry = retry;
    plan.resubmit_uncertain = resubmit_uncertain;
    plan.remember(&mut ledger)?;
    drive(global, &mut ledger, &gateway, plan)
}

pub fn batch(global: &Global, args: BatchArgs) -> CmdResult {
    let defaults = args
        .params
        .params("https://placeholder.invalid/", &global.base_url)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => batch_name(&args.manifest),
    };
    let (jobs, lines) = if args.manifest.is_dir() {
        folder_jobs(global, &args, &defaults, &name)?
    } else {
        manifest_jobs(global, &args, &defaults, &name)?
    };
    let checked = Checked::check(&global.config, &args.engine)?;
    let gateway = global.gateway()?;
    if !args.enqueue_only {
        super::upload::storage_for(global, super::upload::any_local(&jobs))?;
    }
    let mut ledger = global.open_ledger()?;
    // Everything is checked before the first write: exit 2 leaves the ledger as it was.
    let plan = RunConfig::resolve(&ledger, Some(&name), checked)?;
    refuse_key_conflicts(&ledger, &jobs, &lines, &args.manifest)?;
    let report = ledger.enqueue_reporting(&jobs)?;
    plan.remember(&mut ledger)?;
    print_enqueued(&name, &report);
    if args.enqueue_only {
        println!("enqueued only; {} sends them", resume_hint(&ledger, &name)?);
        return Ok(codeformer_ledger::exit::DONE);
    }
    let _lock = match ledger.lock_engine() {
        Ok(lock) => lock,
        Err(codeformer_ledger::ledger::LedgerError::Busy { pid, .. }) => {
            return Err(CliError {
                code: codeformer_ledger::exit::LEDGER_BUSY,
                message: format!(
                    "the rows are recorded, but another engine (pid {pid}) holds the ledger; when it is done, {} sends them",
                    resume_hint(&ledger, &name)?
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    drive(global, &mut ledger, &gateway, plan)
}

/// The jobs of a manifest's rows, with their line numbers. Local paths are read here (relative
/// ones from the manifest's folder), or refused naming `--upload` when no bucket is configured.
fn manifest_jobs(
    global: &Global,
    args: &BatchArgs,
    defaults: &codeformer_ledger::params::JobParams,
    name: &str,
) -> Result<(Vec<NewJob>, Vec<usize>), CliError> {
    let read = manifest::read_manifest(&args.manifest, defaults)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let mut errors: Vec<String> = read.errors.iter().map(|e| e.to_string()).collect();
    let mut jobs = Vec::new();
    let mut lines = Vec::new();
    for row in read.rows {
        let mut tags = args.params.tags_or(&global.config);
        for (k, v) in row.tags {
            tags.retain(|(key, _)| *key != k);
            tags.push((k, v));
        }
        let mut job = if row.local {
            let at = format!("{}:{}: image: ", args.manifest.display(), row.line);
            if global.upload.is_none() {
                errors.push(at + &super::upload::needs_upload(&row.params.image));
                continue;
            }
            let path = super::upload::manifest_path(&args.manifest, &row.params.image);
            let file = match codeformer_ledger::storage::local::read_file(
                &row.params.image,
                &path,
                None,
            ) {
                Ok(file) => file,
                Err(e) => {
                    errors.push(at + &e);
                    continue;
                }
            };
            let mut job = super::upload::local_job(global, file, row.params)?;
            if row.size.is_some() {
                job.size = row.size;
                job.size_source = Some("manifest");
            }
            job
        } else {
            let mut job = NewJob::new(row.params);
            job.size = row.size;
            job.size_source = row.size.map(|_| "manifest");
            job
        };
        job.key = row.key;
        job.batch = Some(name.to_string());
        job.tags = tags;
        jobs.push(job);
        lines.push(row.line);
    }
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        if !args.skip_invalid {
            return Err(CliError::usage(format!(
                "{} invalid row(s) in {}; nothing was recorded (fix them, or pass --skip-invalid):\n{}",
                errors.len(),
                args.manifest.display(),
                list.join("\n")
            )));
        }
        eprintln!(
            "skipped {} invalid row(s):\n{}",
            errors.len(),
            list.join("\n")
        );
    }
    Ok((jobs, lines))
}

/// The jobs of a folder's image files (recursively, by content), numbered in name order.
fn folder_jobs(
    global: &Global,
    args: &BatchArgs,
    defaults: &codeformer_ledger::params::JobParams,
    name: &str,
) -> Result<(Vec<NewJob>, Vec<usize>), CliError> {
    if global.upload.is_none() {
        return Err(CliError::usage(format!(
            "{} is a folder of local files: {}",
            args.manifest.display(),
            codeformer_ledger::params::LOCAL_FILE_FIX
        )));
    }
    let (files, scan) = super::upload::read_folder(&args.manifest)?;
    let skipped = scan.skipped();
    println!(
        "folder {}: {} image file(s){}",
        args.manifest.display(),
        files.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(", {skipped}")
        }
    );
    let mut jobs = Vec::with_capacity(files.len());
    for file in files {
        let mut job = super::upload::local_job(global, file, defaults.clone())?;
        job.batch = Some(name.to_string());
        job.tags = args.params.tags_or(&global.config);
        jobs.push(job);
    }
    let lines = (1..=jobs.len()).collect();
    Ok((jobs, lines))
}

/// Refuses rows whose key already names a job with other parameters, naming each row.
fn refuse_key_conflicts(
    ledger: &Ledger,
    jobs: &[NewJob],
    lines: &[usize],
    manifest: &Path,
) -> Result<(), CliError> {
    let conflicts = ledger.key_conflicts(jobs)?;
    if conflicts.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "  {}:{}: key: `{}` already names job {} ({}), not this row's {}",
                manifest.display(),
                lines.get(c.index).copied().unwrap_or(0),
                c.key,
                c.job_id,
                c.existing,
                c.given
            )
        })
        .collect();
    Err(CliError::usage(format!(
        "{} row(s) of {} reuse a key of a job with other parameters; nothing was recorded (a key names one job: give these rows other keys, or none):\n{}",
        conflicts.len(),
        manifest.display(),
        list.join("\n")
    )))
}

fn print_enqueued(name: &str, report: &codeformer_ledger::ledger::EnqueueReport) {
    let rows = report.items.len();
    let added = report.items.iter().filter(|e| e.added).count();
    let joined = report.items.iter().filter(|e| e.joined).count();
    let already = rows - added - joined;
    let mut line = format!("batch {name}: {rows} row(s), {added} added");
    if joined > 0 {
        line.push_str(&format!(
            ", {joined} reused earlier jobs (joined this batch; not sent or paid again)"
        ));
    }
    line.push_str(&format!(", {already} already in the ledger"));
    println!("{line}");
    for c in &report.tag_conflicts {
        println!(
            "job {}: tag {} keeps its value `{}`; this manifest gives `{}` (not applied)",
            c.job_id, c.key, c.kept, c.given
        );
    }
}

/// The command that resumes a batch, with what the batch remembers (its cap, hooks and
/// output folder), so that the hint is complete as printed.
pub fn resume_hint(ledger: &Ledger, batch: &str) -> Result<String, CliError> {
    let mut kept = Vec::new();
    if let Some(cap) = ledger.batch_budget(batch)? {
        kept.push(format!("its cap of {} USD", money::exact(cap)));
    }
    if let Some((hooks, out_dir)) = ledger.batch_settings(batch)? {
        if !hooks.is_empty() {
            kept.push(format!("its hook(s) {}", hooks.join(", ")));
        }
        if let Some(dir) = out_dir {
            kept.push(format!("its output folder {dir}"));
        }
    }
    let command = format!("`codeformer-ledger run --batch {batch}`");
    Ok(if kept.is_empty() {
        command
    } else {
        format!("{command} (which keeps {})", kept.join(", "))
    })
}

fn batch_name(manifest: &Path) -> String {
    manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "batch".into())
}

/// Runs the engine with the resolved options and prints the outcome.
pub fn drive(
    global: &Global,
    ledger: &mut Ledger,
    gateway: &codeformer_ledger::gateway::Gateway,
    mut plan: RunConfig,
) -> CmdResult {
    announce_budget(
        plan.batch.as_deref(),
        plan.budget,
        plan.budget_is_the_batch,
        &plan.batch_budgets,
    );
    // Local inputs: every object the run needs goes into the bucket before anything is sent.
    super::upload::upload_needed(
        global,
        ledger,
        plan.batch.as_deref(),
        None,
        plan.concurrency(),
        plan.quiet,
    )?;
    plan.storage = global.storage().unwrap_or(None);
    let options = plan.engine_options(ledger)?;
    let out_dir = plan.out_dir.clone();
    let mut hooks = plan.hooks.take();
    let stop = options.stop.clone();
    let _ = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed));
    let mut progress = Display::new(plan.quiet);
    let post = hooks.as_mut().map(|h| h as &mut dyn engine::PostProcessor);
    let summary = engine::run(ledger, gateway, &options, post, &mut progress)?;
    progress.finish();
    if let Some(name) = &options.batch {
        place_reused_outputs(ledger, name, &out_dir)?;
        for (owner, n) in ledger.members_pending(name)? {
            let how = match &owner {
                Some(owner) => format!("`codeformer-ledger run --batch {owner}`"),
                None => "`codeformer-ledger run`".to_string(),
            };
            println!(
                "{n} reused job(s) of batch {name} are still unfinished in {}; {how} finishes them, then `codeformer-ledger run --batch {name}` places their outputs here",
                owner.as_deref().map_or("no batch".to_string(), |o| format!("batch {o}"))
            );
        }
    }
    print_summary(ledger, &summary, &out_dir)?;
    if plan.delete_uploads {
        let n = super::upload::delete_downloaded(global, ledger, options.batch.as_deref())?;
        if n > 0 {
            println!("{n} uploaded object(s) deleted from the bucket (--delete-uploads)");
        }
    }
    if summary.not_uploaded > 0 {
        println!(
            "some jobs with local inputs were not sent: their files are not in the bucket; run again with --upload s3://BUCKET/PREFIX and the bucket's credentials"
        );
    }
    print_retry_hint(&summary, options.batch.as_deref());
    match &summary.stop {
        Some(reason) => Err(explain_stop(ledger, &options, reason)?),
        None => Ok(codeformer_ledger::exit::of_run(&summary)),
    }
}

/// The message of a stopped run, with what the held jobs need when a cap or a 402 held them.
fn explain_stop(
    ledger: &Ledger,
    options: &EngineOptions,
    reason: &engine::StopReason,
) -> Result<CliError, CliError> {
    let batch = options.batch.as_deref();
    let mut error = stop_error(reason);
    match (reason, batch) {
        (engine::StopReason::Interrupted, Some(batch)) => {
            error.message = format!(
                "interrupted; what was in flight is recorded. {} resumes",
                resume_hint(ledger, batch)?
            );
        }
        (engine::StopReason::Interrupted, None) => {
            if let Some(cap) = options.budget {
                error.message = format!(
                    "interrupted; what was in flight is recorded. `codeformer-ledger run --budget {}` resumes with this run's cap (a cap without --batch is not remembered)",
                    money::exact(cap)
                );
            }
        }
        (engine::StopReason::Budget { needed }, Some(batch)) => {
            error.message = format!(
                "stopped by batch {batch}'s cap: the held jobs need {} USD more; `codeformer-ledger run --batch {batch} --budget NEW` raises the cap (remembered for the batch), `--no-budget` lifts it",
                money::exact(*needed)
            );
        }
        (engine::StopReason::Budget { needed }, None) if options.budget.is_none() => {
            error.message = format!(
                "stopped by the batches' caps: the held jobs need {} USD more; `codeformer-ledger run --batch NAME --budget NEW` raises a batch's cap, `--no-budget` lifts it",
                money::exact(*needed)
            );
        }
        _ => {}
    }
    let (held, total, unknown) = ledger.held_estimates(batch)?;
    match reason {
        engine::StopReason::InsufficientBalance { .. } if held > 0 => {
            let unknown = match unknown {
                0 => String::new(),
                n => format!(" ({n} of them not yet estimated)"),
            };
            error.message.push_str(&format!(
                ". The {held} held job(s) need {} USD{unknown}",
                money::exact(total)
            ));
        }
        engine::StopReason::Budget { needed } if unknown > 0 => {
            let why = format!(
                "{unknown} held job(s) have no estimate (their input size could not be read), so no budget can cover them; give their sizes (submit --size, or manifest columns width,height), or send them without --budget"
            );
            if needed.is_zero() {
                error.message = format!("stopped by the budget cap: {why}");
            } else {
                error.message.push_str(&format!("; {why}"));
            }
        }
        _ => {}
    }
    Ok(error)
}

/// Says which cap the run keeps, and that a cap without a batch is for this run only.
fn announce_budget(
    batch: Option<&str>,
    budget: Option<Decimal>,
    the_batch: bool,
    batch_budgets: &std::collections::HashMap<String, Decimal>,
) {
    match (batch, budget) {
        (Some(name), Some(cap)) if the_batch => eprintln!(
            "budget: {} USD for batch {name} (remembered for the batch)",
            money::exact(cap)
        ),
        (Some(name), Some(cap)) => eprintln!(
            "budget: {} USD for batch {name}, from the config file (not remembered)",
            money::exact(cap)
        ),
        (None, Some(cap)) => eprintln!(
            "budget: {} USD for this run, over every job in the ledger (not remembered: a batch's cap is set with `batch` or `run --batch NAME --budget`)",
            money::exact(cap)
        ),
        _ => {}
    }
    if batch.is_none() && !batch_budgets.is_empty() {
        let mut caps: Vec<String> = batch_budgets
            .iter()
            .map(|(name, cap)| format!("{name} {} USD", money::exact(*cap)))
            .collect();
        caps.sort();
        eprintln!("batches keep their own caps: {}", caps.join(", "));
    }
}

/// Copies the outputs of the batch's reused jobs (completed in an earlier batch) into its
/// folder, once each, and records the copies. A hard link where the file system allows one.
fn place_reused_outputs(ledger: &mut Ledger, batch: &str, out_dir: &Path) -> Result<(), CliError> {
    for member in ledger.members_to_place(batch)? {
        let mut copies = Vec::new();
        for output in &member.outputs {
            let source = PathBuf::from(&output.path);
            let Some(name) = source.file_name() else {
                continue;
            };
            if source.parent() == Some(out_dir) {
                copies.push(codeformer_ledger::ledger::PlacedCopy {
                    idx: output.idx,
                    path: output.path.clone(),
                    bytes: output.bytes,
                    sha256: output.sha256.clone(),
                });
                continue;
            }
            let target = free_name(out_dir, name);
            let placed = std::fs::hard_link(&source, &target)
                .or_else(|_| std::fs::copy(&source, &target).map(|_| ()));
            if let Err(e) = placed {
                eprintln!(
                    "job {}: could not place its output {} in {}: {e}; `run --batch {batch}` tries again",
                    member.job.id,
                    source.display(),
                    out_dir.display()
                );
                copies.clear();
                break;
            }
            copies.push(codeformer_ledger::ledger::PlacedCopy {
                idx: output.idx,
                path: target.to_string_lossy().into_owned(),
                bytes: output.bytes,
                sha256: output.sha256.clone(),
            });
        }
        if !copies.is_empty() {
            ledger.record_member_outputs(batch, member.job.id, member.job.attempt, &copies)?;
        }
    }
    Ok(())
}

/// `name` in `dir`, or `stem (2).ext`, `stem (3).ext` … when taken: nothing is overwritten.
fn free_name(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let path = Path::new(name);
    let stem = path.file_stem().unwrap_or(name).to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (2..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn print_summary(ledger: &Ledger, summary: &RunSummary, out_dir: &Path) -> Result<(), CliError> {
    if !summary.recovered_uncertain.is_empty() {
        println!(
            "{} job(s) were found mid-submission after a stop and are now uncertain (they may have been charged): {}",
            summary.recovered_uncertain.len(),
            summary
                .recovered_uncertain
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    println!(
        "jobs: {}; this run sent {}, polled {}, downloaded {}, charged {} USD; outputs in {}",
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        summary.sent,
        summary.polls,
        summary.downloads,
        money::exact(summary.charged),
        out_dir.display()
    );
    if summary.owing_downloads > 0 {
        println!(
            "{} completed job(s) could not be downloaded (see `codeformer-ledger jobs --state completed` and `show`); `run` tries again",
            summary.owing_downloads
        );
    }
    for (batch, n) in &summary.owing_hooks {
        match batch {
            Some(name) => println!(
                "{n} job(s) of batch {name} still owe their hooks; {} runs the hooks remembered for it",
                resume_hint(ledger, name)?
            ),
            None => println!(
                "{n} job(s) in no batch still owe hooks; `codeformer-ledger run --hook FILE` runs them"
            ),
        }
    }
    if summary.failed_hooks > 0 {
        println!(
            "{} hook run(s) failed; see `codeformer-ledger hooks failed`, fix the script, then `codeformer-ledger hooks retry`",
            summary.failed_hooks
        );
    }
    if summary.hook_blocked > 0 {
        println!(
            "{} job(s) were not sent because an on_submit hook failed; see `codeformer-ledger hooks failed`",
            summary.hook_blocked
        );
    }
    if summary.count(JobState::Uncertain) > 0 {
        println!(
            "{} job(s) are uncertain: see `codeformer-ledger jobs --state uncertain`; `run --resubmit-uncertain` sends them again (and may pay twice)",
            summary.count(JobState::Uncertain)
        );
    }
    Ok(())
}

/// The `--retry` command that would retry what failed, when something did.
fn print_retry_hint(summary: &RunSummary, batch: Option<&str>) {
    let states: Vec<&str> = [
        JobState::Failed,
        JobState::Error,
        JobState::Rejected,
        JobState::Stalled,
    ]
    .iter()
    .filter(|s| summary.count(**s) > 0)
    .map(|s| s.as_str())
    .collect();
    if states.is_empty() {
        return;
    }
    let n: i64 = states
        .iter()
        .filter_map(|s| s.parse::<JobState>().ok())
        .map(|s| summary.count(s))
        .sum();
    println!(
        "{n} job(s) ended {}; to send them again as new attempts: `codeformer-ledger run{} --retry {}`",
        states.join(" or "),
        batch.map(|b| format!(" --batch {b}")).unwrap_or_default(),
        states.join(",")
    );
}

/// Progress on a terminal (a bar) or in a log (a line every few seconds, and a last one).
struct Display {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_line: Option<Instant>,
    started: Instant,
    last: Option<Progress>,
    printed: Option<Progress>,
}

/// Time between two lines of progress in a log.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Display {
    fn new(quiet: bool) -> Self {
        let mut display = Display {
            bar: None,
            plain: false,
            last_line: None,
            started: Instant::now(),
            last: None,
            printed: None,
        };
        if quiet {
            return display;
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            display.bar = Some(bar);
        } else {
            display.plain = true;
        }
        display
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.plain && self.last != self.printed {
            if let Some(p) = &self.last {
                eprintln!("{}", progress_line(p, self.started.elapsed()));
            }
        }
    }
}

impl ProgressSink for Display {
    fn update(&mut self, p: &Progress) {
        let newly_rate_limited =
            p.rate_limited.is_some() && self.last.as_ref().is_none_or(|l| l.rate_limited.is_none());
        self.last = Some(p.clone());
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(progress_line(p, self.started.elapsed()));
        } else if self.plain
            && (newly_rate_limited || self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY))
        {
            self.last_line = Some(Instant::now());
            self.printed = Some(p.clone());
            eprintln!("{}", progress_line(p, self.started.elapsed()));
        }
    }
}

/// One line of progress: jobs by where they stand, what was spent, and an ETA once some jobs
/// finished in this run (or the wait a 429 imposes).
fn progress_line(p: &Progress, elapsed: Duration) -> String {
    let mut ends = vec![
        format!("{} completed", p.completed),
        format!("{} failed", p.failed),
        format!("{} error", p.errored),
    ];
    if p.other_trouble > 0 {
        ends.push(format!(
            "{} rejected, stalled or uncertain",
            p.other_trouble
        ));
    }
    if p.held > 0 {
        ends.push(format!("{} held", p.held));
    }
    let mut parts = vec![
        format!("{}/{} done", p.done, p.total),
        format!(
            "at the gateway {} queued, {} processing",
            p.queued, p.processing
        ),
        ends.join(", "),
        format!("{} USD spent", money::exact(p.spent)),
    ];
    if let Some(rate) = p.request_rate {
        parts.push(format!("request budget {} req/s", rate_text(rate)));
    }
    if let Some(wait) = p.rate_limited {
        parts.push(format!(
            "rate limited by the gateway: waiting {} s",
            wait.as_secs_f64().ceil() as u64
        ));
    } else if let Some(eta) = eta(p, elapsed) {
        parts.push(format!("ETA {}", human_duration(eta)));
    }
    parts.join(" · ")
}

/// A rate as the progress line shows it: one decimal below 10 a second, whole above.
fn rate_text(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// The time left at this run's pace; none before a job finished in this run.
fn eta(p: &Progress, elapsed: Duration) -> Option<Duration> {
    let left = p.total.saturating_sub(p.done);
    if p.done_this_run == 0 || left == 0 {
        return None;
    }
    Some(elapsed.mul_f64(left as f64 / p.done_this_run as f64))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
