//! The options of the commands that run the engine (`run`, `batch`, `submit --wait`,
//! `hooks retry`) and the output folder of `doctor`, resolved in one place and in two stages.
//!
//! [`EngineArgs`] is what clap parses, with no I/O. [`Checked`] is stage one, done before the
//! ledger is opened: every flag against the config file (flag > config file > built-in
//! default; the global `--ledger`/`--base-url` have their environment variables in between,
//! resolved by `Global`), the output folder created and written to, hook files found and
//! compiled, so that exit 2 leaves the ledger as it was. [`RunConfig`] is stage two, with the
//! ledger open and nothing written yet: what a batch remembers (its output folder, hooks and
//! cap) takes its place in the order, and the result is the engine's [`EngineOptions`].
//!
//! The order of each value, in full:
//! - output folder: `--out-dir` > the batch's remembered folder > config `out_dir` > `./restored`;
//! - hooks: `--hook` > config `hooks` > the batch's remembered hooks;
//! - cap: `--budget`/`--no-budget` > the batch's remembered cap > config `budget` > none;
//! - concurrency, poll interval, max rps, name pattern: the flag > the config file > the default.

use super::common::{hook_file, start_hooks, usable_out_dir};
use super::config::{Config, DEFAULT_CONCURRENCY, DEFAULT_OUT_DIR, DEFAULT_POLL_INTERVAL};
use super::CliError;
use codeformer_ledger::engine::{self, EngineOptions};
use codeformer_ledger::ledger::{JobState, Ledger};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The engine's options as the command line gives them (`run`, `batch`; `submit --wait`
/// gives two, see [`Checked::for_wait`]). Parsing them does no I/O.
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
    /// With a batch (`batch`, `run --batch`) the cap is remembered for it: later runs of the
    /// batch keep it until another --budget replaces it or --no-budget lifts it. Without a
    /// batch it applies to this run only, over every job in the ledger.
    #[arg(long, value_name = "USD", value_parser = super::parse_budget, allow_hyphen_values = true)]
    pub budget: Option<Decimal>,
    /// Lift the batch's remembered cap (and the config file's budget) for this and later runs.
    #[arg(long, conflicts_with = "budget")]
    pub no_budget: bool,
    /// Stop polling jobs still unfinished this long after they were sent (they become `stalled`), e.g. 30m.
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub deadline: Option<Duration>,
    /// The longest wait between two polls of one job (the schedule adapts below it) [default: 5s].
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// A known quota of API requests a second (submissions and status calls together): the
    /// request budget never goes above it [default: learned from the gateway's 429 answers].
    #[arg(long, value_name = "N", value_parser = super::parse_rps)]
    pub max_rps: Option<f64>,
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
    /// Delete each local input's object from the bucket once its job's output is downloaded
    /// (objects another unfinished job needs are kept).
    #[arg(long)]
    pub delete_uploads: bool,
}

impl EngineArgs {
    /// Every option unset, so that the config file and the batch's remembered settings apply
    /// as they do for `run` (the engine run of `submit --wait`).
    fn unset() -> Self {
        EngineArgs {
            out_dir: None,
            name_pattern: None,
            concurrency: None,
            budget: None,
            no_budget: false,
            deadline: None,
            poll_interval: None,
            max_rps: None,
            callback_fallback: None,
            hooks: Vec::new(),
            trusted_hooks: false,
            hook_timeout: Duration::from_secs(10),
            quiet: false,
            delete_uploads: false,
        }
    }
}

fn name_pattern(text: &str) -> Result<String, String> {
    engine::check_name_pattern(text).map(|_| text.to_string())
}

/// Where outputs go, for every command that writes or touches them: the flag, else the
/// batch's remembered folder, else the config file's `out_dir`, else `./restored`.
pub fn out_dir(config: &Config, flag: Option<&Path>, remembered: Option<&str>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| remembered.map(PathBuf::from))
        .or_else(|| config.file.out_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT_DIR))
}

/// Stage one: the command line against the config file, checked before the ledger is opened:
/// hook files exist, are files and compile, the given output folder can be created and
/// written, every value is in range.
pub struct Checked {
    /// `--out-dir`, created and canonical.
    out_dir: Option<PathBuf>,
    hooks: Option<Vec<PathBuf>>,
    /// The given hooks, loaded (so compiled) with the given output folder.
    started: Option<engine::LuaHooks>,
    budget: BudgetFlag,
    config_budget: Option<Decimal>,
    /// The config file's folder: below a batch's remembered one, above the default.
    config_out_dir: Option<PathBuf>,
    trusted_hooks: bool,
    hook_timeout: Duration,
    concurrency: usize,
    poll_interval: Duration,
    max_rps: Option<f64>,
    name_pattern: Option<String>,
    deadline: Option<Duration>,
    callback_fallback: Option<Duration>,
    quiet: bool,
    delete_uploads: bool,
}

/// What the command line says about the cap.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BudgetFlag {
    /// Nothing: a batch keeps its remembered cap.
    Keep,
    Set(Decimal),
    Lift,
}

impl Checked {
    pub fn check(config: &Config, args: &EngineArgs) -> Result<Checked, CliError> {
        let out_dir = match args.out_dir.clone() {
            Some(dir) => Some(usable_out_dir(&dir)?),
            None => None,
        };
        let listed = if args.hooks.is_empty() {
            config.file.hooks.clone().unwrap_or_default()
        } else {
            args.hooks.clone()
        };
        let hooks: Option<Vec<PathBuf>> = if listed.is_empty() {
            None
        } else {
            Some(
                listed
                    .iter()
                    .map(|h| hook_file(h))
                    .collect::<Result<_, _>>()?,
            )
        };
        let started = compile_given(&hooks, &out_dir, args)?;
        let budget = match (args.budget, args.no_budget) {
            (Some(cap), _) => BudgetFlag::Set(cap),
            (None, true) => BudgetFlag::Lift,
            (None, false) => BudgetFlag::Keep,
        };
        Ok(Checked {
            out_dir,
            hooks,
            started,
            budget,
            config_budget: config.budget()?,
            config_out_dir: config.file.out_dir.clone(),
            trusted_hooks: args.trusted_hooks,
            hook_timeout: args.hook_timeout,
            concurrency: args
                .concurrency
                .or(config.file.concurrency)
                .unwrap_or(DEFAULT_CONCURRENCY) as usize,
            poll_interval: match args.poll_interval {
                Some(d) => d,
                None => config.poll_interval()?.unwrap_or(DEFAULT_POLL_INTERVAL),
            },
            max_rps: match args.max_rps {
                Some(rps) => Some(rps),
                None => config.max_rps()?,
            },
            name_pattern: args
                .name_pattern
                .clone()
                .or(config.file.name_pattern.clone()),
            deadline: args.deadline,
            callback_fallback: args.callback_fallback,
            quiet: args.quiet,
            delete_uploads: args.delete_uploads,
        })
    }
}

impl Checked {
    /// The run of `submit --wait`: `run`'s options with every flag unset but these two,
    /// checked before the job is recorded. The config file's output folder is checked now
    /// too (a batch's remembered one, once the ledger is open).
    pub fn for_wait(
        config: &Config,
        out_dir: Option<PathBuf>,
        poll_interval: Option<Duration>,
        max_rps: Option<f64>,
    ) -> Result<Checked, CliError> {
        let mut args = EngineArgs::unset();
        args.out_dir = out_dir;
        args.poll_interval = poll_interval;
        args.max_rps = max_rps;
        if let (None, Some(dir)) = (&args.out_dir, &config.file.out_dir) {
            usable_out_dir(dir)?;
        }
        Checked::check(config, &args)
    }
}

/// Loads the given hooks now, before the ledger is opened: a script that does not compile is
/// refused before anything is written, even a new ledger file. Without a given output folder
/// they compile in a scratch one, and start again once the folder is known.
fn compile_given(
    hooks: &Option<Vec<PathBuf>>,
    out_dir: &Option<PathBuf>,
    args: &EngineArgs,
) -> Result<Option<engine::LuaHooks>, CliError> {
    match (hooks, out_dir) {
        (Some(files), Some(dir)) => {
            start_hooks(files.clone(), dir, args.trusted_hooks, args.hook_timeout)
        }
        (Some(files), None) => {
            let scratch = tempfile::tempdir()?;
            start_hooks(
                files.clone(),
                scratch.path(),
                args.trusted_hooks,
                args.hook_timeout,
            )?;
            Ok(None)
        }
        (None, _) => Ok(None),
    }
}

/// Stage two: a run's inputs, all resolved and checked, before anything is written;
/// [`RunConfig::remember`] writes what a batch keeps, [`RunConfig::engine_options`] gives the
/// engine its options.
pub struct RunConfig {
    pub batch: Option<String>,
    pub out_dir: PathBuf,
    /// `--out-dir` was given: a run over every batch then writes every output there.
    out_dir_given: bool,
    hook_files: Vec<PathBuf>,
    pub hooks: Option<engine::LuaHooks>,
    /// The cap of this run.
    pub budget: Option<Decimal>,
    /// A new cap to remember for the batch (`Some(None)` lifts it), with the flag that set it.
    budget_change: Option<(Option<Decimal>, &'static str)>,
    /// The cap is the batch's (given now or remembered), not the config file's.
    pub budget_is_the_batch: bool,
    /// Caps of every batch, for a run over the whole ledger.
    pub batch_budgets: HashMap<String, Decimal>,
    concurrency: usize,
    poll_interval: Duration,
    max_rps: Option<f64>,
    name_pattern: Option<String>,
    deadline: Option<Duration>,
    callback_fallback: Option<Duration>,
    pub quiet: bool,
    /// `--delete-uploads`: objects of downloaded jobs are deleted from the bucket after the run.
    pub delete_uploads: bool,
    /// The bucket of local inputs (`--upload`), set by the command before the run.
    pub storage: Option<codeformer_ledger::storage::Storage>,
    /// `run --retry`: the states sent again as new attempts.
    pub retry: Vec<JobState>,
    /// `run --resubmit-uncertain`.
    pub resubmit_uncertain: bool,
}

impl RunConfig {
    pub fn resolve(
        ledger: &Ledger,
        batch: Option<&str>,
        given: Checked,
    ) -> Result<RunConfig, CliError> {
        let remembered = match batch {
            Some(name) => ledger.batch_settings(name)?,
            None => None,
        };
        let out_dir_given = given.out_dir.is_some();
        let out_dir = match given.out_dir.clone() {
            Some(dir) => dir,
            None => {
                let dir = remembered
                    .as_ref()
                    .and_then(|(_, dir)| dir.as_ref().map(PathBuf::from))
                    .or_else(|| given.config_out_dir.clone())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT_DIR));
                usable_out_dir(&dir)?
            }
        };
        let remembered_hooks: Vec<PathBuf> = remembered
            .map(|(hooks, _)| hooks.into_iter().map(PathBuf::from).collect())
            .unwrap_or_default();
        let hook_files = given.hooks.clone().unwrap_or(remembered_hooks);
        // Compiled before anything is written, so that a script that does not load stops the
        // command first (given hooks were loaded already, with the given folder).
        let hooks = match given.started {
            Some(started) => Some(started),
            None => start_hooks(
                hook_files.clone(),
                &out_dir,
                given.trusted_hooks,
                given.hook_timeout,
            )?,
        };
        let (budget, budget_change, budget_is_the_batch) =
            resolve_budget(ledger, batch, given.budget, given.config_budget)?;
        let batch_budgets = match batch {
            Some(_) => Default::default(),
            None => ledger.batch_budgets()?,
        };
        Ok(RunConfig {
            batch: batch.map(str::to_string),
            out_dir,
            out_dir_given,
            hook_files,
            hooks,
            budget,
            budget_change,
            budget_is_the_batch,
            batch_budgets,
            concurrency: given.concurrency,
            poll_interval: given.poll_interval,
            max_rps: given.max_rps,
            name_pattern: given.name_pattern,
            deadline: given.deadline,
            callback_fallback: given.callback_fallback,
            quiet: given.quiet,
            delete_uploads: given.delete_uploads,
            storage: None,
            retry: Vec::new(),
            resubmit_uncertain: false,
        })
    }

    /// Writes what the batch keeps for later runs: its output folder, hooks and cap.
    pub fn remember(&self, ledger: &mut Ledger) -> Result<(), CliError> {
        let Some(name) = &self.batch else {
            return Ok(());
        };
        let names: Vec<String> = self
            .hook_files
            .iter()
            .map(|h| h.to_string_lossy().into_owned())
            .collect();
        ledger.upsert_batch(
            name,
            (!names.is_empty()).then_some(&names[..]),
            Some(&self.out_dir.to_string_lossy()),
        )?;
        if let Some((cap, flag)) = self.budget_change {
            ledger.set_batch_budget(name, cap, flag)?;
        }
        Ok(())
    }

    /// How many requests may be under way at once (sends, polls, downloads, uploads).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The engine's options. A run over every batch without `--out-dir` downloads each
    /// batch's outputs into that batch's own folder.
    pub fn engine_options(&self, ledger: &Ledger) -> Result<EngineOptions, CliError> {
        let mut options = EngineOptions::new(self.out_dir.clone());
        if self.batch.is_none() && !self.out_dir_given {
            options.batch_dirs = ledger.batch_out_dirs()?;
        }
        options.batch = self.batch.clone();
        options.concurrency = self.concurrency;
        options.budget = self.budget;
        options.batch_budgets = self.batch_budgets.clone();
        options.deadline = self.deadline;
        options.poll_interval = self.poll_interval;
        options.max_rps = self.max_rps;
        if let Some(pattern) = &self.name_pattern {
            options.name_pattern = pattern.clone();
        }
        if let Some(fallback) = self.callback_fallback {
            options.callback_fallback = fallback;
        }
        options.retry = self.retry.clone();
        options.resubmit_uncertain = self.resubmit_uncertain;
        options.storage = self.storage.clone();
        Ok(options)
    }
}

/// The run's cap, a change to remember for the batch, and whether the cap is the batch's.
#[allow(clippy::type_complexity)]
fn resolve_budget(
    ledger: &Ledger,
    batch: Option<&str>,
    flag: BudgetFlag,
    config_budget: Option<Decimal>,
) -> Result<
    (
        Option<Decimal>,
        Option<(Option<Decimal>, &'static str)>,
        bool,
    ),
    CliError,
> {
    Ok(match (batch, flag) {
        (Some(_), BudgetFlag::Set(cap)) => (Some(cap), Some((Some(cap), "--budget")), true),
        (Some(_), BudgetFlag::Lift) => (None, Some((None, "--no-budget")), false),
        (Some(name), BudgetFlag::Keep) => match ledger.batch_budget(name)? {
            Some(cap) => (Some(cap), None, true),
            None => (config_budget, None, false),
        },
        (None, BudgetFlag::Set(cap)) => (Some(cap), None, false),
        (None, BudgetFlag::Lift) => (None, None, false),
        (None, BudgetFlag::Keep) => (config_budget, None, false),
    })
}
