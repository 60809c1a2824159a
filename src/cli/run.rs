//! `run` and `batch`: drive the engine until nothing is unfinished.

use super::submit::{stop_error, ParamArgs};
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

/// Options of the engine, shared by `run` and `batch`.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Where outputs are written [default: the batch's folder from an earlier run, else the
    /// config file's out_dir, else ./restored].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Output file names, from {key}, {job}, {stem} (of the input URL), {upscale}, {date},
    /// {attempt}; a name already taken by another file gets " (2)" [default: {stem}-{job}].
    #[arg(long, value_name = "PATTERN", value_parser = name_pattern)]
    pub name_pattern: Option<String>,
    /// HTTP requests in flight at most [default: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
    /// Never send a job if what is charged, plus the estimates in flight, plus its own estimate would exceed this many USD.
    #[arg(long, value_name = "USD", value_parser = super::parse_budget, allow_hyphen_values = true)]
    pub budget: Option<Decimal>,
    /// Stop polling jobs still unfinished this long after they were sent (they become `stalled`), e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub deadline: Option<Duration>,
    /// The longest wait between two polls of one job (the schedule adapts below it) [default: 5s].
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// How often jobs that expect webhook callbacks are still polled, as a fallback for lost
    /// callbacks [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub callback_fallback: Option<Duration>,
    /// A Lua hook file (repeatable; run in the order given). Remembered per batch, so a
    /// resume runs the same hooks.
    #[arg(long = "hook", value_name = "FILE")]
    pub hooks: Vec<PathBuf>,
    /// Give hooks the full Lua standard library (io, os, require). Only for scripts you trust.
    #[arg(long)]
    pub trusted_hooks: bool,
    /// Wall-clock limit of one hook call.
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration, default_value = "10s")]
    pub hook_timeout: Duration,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
}

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

impl RunArgs {
    pub fn for_wait(batch: Option<String>, out_dir: PathBuf, poll_interval: Duration) -> Self {
        RunArgs {
            batch,
            engine: EngineArgs {
                out_dir: Some(out_dir),
                name_pattern: None,
                concurrency: None,
                budget: None,
                deadline: None,
                poll_interval: Some(poll_interval),
                callback_fallback: None,
                hooks: Vec::new(),
                trusted_hooks: false,
                hook_timeout: Duration::from_secs(10),
                quiet: false,
            },
            retry: Vec::new(),
            resubmit_uncertain: false,
        }
    }
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

fn name_pattern(text: &str) -> Result<String, String> {
    engine::check_name_pattern(text).map(|_| text.to_string())
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
    let mut ledger = global.open_ledger()?;
    let _lock = ledger.lock_engine()?;
    let gateway = global.gateway()?;
    drive(
        global,
        &mut ledger,
        &gateway,
        args.batch,
        &args.engine,
        args.retry,
        args.resubmit_uncertain,
    )
}

pub fn batch(global: &Global, args: BatchArgs) -> CmdResult {
    let defaults = args.params.params("https://placeholder.invalid/")?;
    let read = manifest::read_manifest(&args.manifest, &defaults)
        .map_err(|e| CliError::usage(e.to_string()))?;
    if !read.errors.is_empty() {
        let list: Vec<String> = read.errors.iter().map(|e| format!("  {e}")).collect();
        if !args.skip_invalid {
            return Err(CliError::usage(format!(
                "{} invalid row(s) in {}; nothing was recorded (fix them, or pass --skip-invalid):\n{}",
                read.errors.len(),
                args.manifest.display(),
                list.join("\n")
            )));
        }
        eprintln!(
            "skipped {} invalid row(s):\n{}",
            read.errors.len(),
            list.join("\n")
        );
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => batch_name(&args.manifest),
    };
    let jobs: Vec<NewJob> = read
        .rows
        .into_iter()
        .map(|row| {
            let mut tags = args.params.tags_or(&global.config);
            for (k, v) in row.tags {
                tags.retain(|(key, _)| *key != k);
                tags.push((k, v));
            }
            NewJob {
                params: row.params,
                key: row.key,
                batch: Some(name.clone()),
                size: row.size,
                size_source: row.size.map(|_| "manifest"),
                tags,
            }
        })
        .collect();
    let mut ledger = global.open_ledger()?;
    let enqueued = ledger.enqueue(&jobs)?;
    let added = enqueued.iter().filter(|e| e.added).count();
    println!(
        "batch {name}: {} row(s), {added} added, {} already in the ledger",
        enqueued.len(),
        enqueued.len() - added
    );
    if args.enqueue_only {
        println!("enqueued only; `codeformer-ledger run --batch {name}` sends them");
        return Ok(codeformer_ledger::exit::DONE);
    }
    let _lock = match ledger.lock_engine() {
        Ok(lock) => lock,
        Err(codeformer_ledger::ledger::LedgerError::Busy { pid, .. }) => {
            return Err(CliError {
                code: codeformer_ledger::exit::LEDGER_BUSY,
                message: format!(
                    "the rows are recorded, but another engine (pid {pid}) holds the ledger; when it is done, `codeformer-ledger run --batch {name}` sends them"
                ),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let gateway = global.gateway()?;
    drive(
        global,
        &mut ledger,
        &gateway,
        Some(name),
        &args.engine,
        Vec::new(),
        false,
    )
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
    batch: Option<String>,
    args: &EngineArgs,
    retry: Vec<JobState>,
    resubmit_uncertain: bool,
) -> CmdResult {
    let remembered = match &batch {
        Some(name) => ledger.batch_settings(name)?,
        None => None,
    };
    let config = &global.config;
    let out_dir = args
        .out_dir
        .clone()
        .or_else(|| {
            remembered
                .as_ref()
                .and_then(|(_, dir)| dir.as_ref().map(PathBuf::from))
        })
        .or_else(|| config.file.out_dir.clone())
        .unwrap_or_else(|| PathBuf::from(super::config::DEFAULT_OUT_DIR));
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        CliError::error(format!(
            "cannot create the output folder {}: {e}",
            out_dir.display()
        ))
    })?;
    let out_dir = out_dir.canonicalize()?;
    let given_hooks: Vec<PathBuf> = if args.hooks.is_empty() {
        config.file.hooks.clone().unwrap_or_default()
    } else {
        args.hooks.clone()
    };
    let remembered_hooks: Vec<PathBuf> = remembered
        .map(|(hooks, _)| hooks.into_iter().map(PathBuf::from).collect())
        .unwrap_or_default();
    let hook_files: Vec<PathBuf> = if !args.hooks.is_empty() || remembered_hooks.is_empty() {
        given_hooks
            .iter()
            .map(|h| {
                h.canonicalize()
                    .map_err(|e| CliError::usage(format!("--hook {}: {e}", h.display())))
            })
            .collect::<Result<_, _>>()?
    } else {
        remembered_hooks
    };
    if let Some(name) = &batch {
        let names: Vec<String> = hook_files
            .iter()
            .map(|h| h.to_string_lossy().into_owned())
            .collect();
        ledger.upsert_batch(
            name,
            (!names.is_empty()).then_some(&names[..]),
            Some(&out_dir.to_string_lossy()),
        )?;
    }
    let mut hooks = start_hooks(hook_files, &out_dir, args.trusted_hooks, args.hook_timeout)?;
    let mut options = EngineOptions::new(out_dir.clone());
    if batch.is_none() && args.out_dir.is_none() {
        // A run over every batch downloads each batch's outputs into its own folder.
        options.batch_dirs = ledger.batch_out_dirs()?;
    }
    options.batch = batch;
    options.concurrency = args
        .concurrency
        .or(config.file.concurrency)
        .unwrap_or(super::config::DEFAULT_CONCURRENCY) as usize;
    options.budget = args.budget.or(config.budget()?);
    options.deadline = args.deadline;
    options.poll_interval = args
        .poll_interval
        .or(config.poll_interval()?)
        .unwrap_or(super::config::DEFAULT_POLL_INTERVAL);
    if let Some(pattern) = args
        .name_pattern
        .clone()
        .or(config.file.name_pattern.clone())
    {
        options.name_pattern = pattern;
    }
    if let Some(fallback) = args.callback_fallback {
        options.callback_fallback = fallback;
    }
    options.retry = retry;
    options.resubmit_uncertain = resubmit_uncertain;
    let stop = options.stop.clone();
    let _ = ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed));
    let mut progress = Display::new(args.quiet);
    let post = hooks.as_mut().map(|h| h as &mut dyn engine::PostProcessor);
    let summary = engine::run(ledger, gateway, &options, post, &mut progress)?;
    progress.finish();
    print_summary(&summary, &out_dir);
    match &summary.stop {
        Some(reason) => Err(explain_stop(ledger, options.batch.as_deref(), reason)?),
        None => Ok(summary.exit_code()),
    }
}

/// The message of a stopped run, with what the held jobs need when a cap or a 402 held them.
fn explain_stop(
    ledger: &Ledger,
    batch: Option<&str>,
    reason: &engine::StopReason,
) -> Result<CliError, CliError> {
    let mut error = stop_error(reason);
    if let (engine::StopReason::Interrupted, Some(batch)) = (reason, batch) {
        error.message = format!(
            "interrupted; what was in flight is recorded. `codeformer-ledger run --batch {batch}` resumes"
        );
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

/// Starts the hook worker for these files; a file that does not compile is a usage error.
pub fn start_hooks(
    files: Vec<PathBuf>,
    out_dir: &Path,
    trusted: bool,
    timeout: Duration,
) -> Result<Option<engine::LuaHooks>, CliError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut config = codeformer_ledger::hooks::HookConfig::new(files, out_dir);
    config.trusted = trusted;
    config.timeout = timeout;
    engine::LuaHooks::start(config)
        .map(Some)
        .map_err(|e| CliError::usage(e.to_string()))
}

fn print_summary(summary: &RunSummary, out_dir: &Path) {
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
                "{n} job(s) of batch {name} still owe their hooks; `codeformer-ledger run --batch {name}` runs the hooks remembered for it"
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
}

/// Progress on a terminal (a bar) or in a log (a line every few seconds).
struct Display {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_line: Option<Instant>,
}

impl Display {
    fn new(quiet: bool) -> Self {
        if quiet {
            return Display {
                bar: None,
                plain: false,
                last_line: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} done · {msg} · ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            return Display {
                bar: Some(bar),
                plain: false,
                last_line: None,
            };
        }
        Display {
            bar: None,
            plain: true,
            last_line: None,
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl ProgressSink for Display {
    fn update(&mut self, p: &Progress) {
        let msg = format!(
            "{} in flight · {} failed · {} USD committed",
            p.in_flight,
            p.failed,
            money::exact(p.spent)
        );
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(msg);
        } else if self.plain
            && self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_line = Some(Instant::now());
            eprintln!("{}/{} done · {msg}", p.done, p.total);
        }
    }
}
