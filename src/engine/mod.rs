//! The engine: a plain loop that sends planned jobs, polls the ones at the gateway, downloads
//! outputs and runs hooks, until nothing is left to do.
//!
//! One thread (the caller's) owns the ledger and records every result; `concurrency` worker
//! threads do the HTTP. Before a submission is sent its intent is committed; its answer is
//! committed as soon as it arrives, so a process killed at any instant leaves a ledger from
//! which the next run continues without sending anything twice. Polls are picked from an index
//! on the next-poll time, so a loop step costs the same however many jobs have finished.
//!
//! The shape (see also `docs/architecture.md`):
//! - every change of a job is a [`crate::lifecycle::step`]: a pure function of where the job
//!   stands and what was learned (an answer, a status, a download, a hook's verdict, a cap,
//!   the deadline) that gives the next state, the work to schedule and the charge to record.
//!   The engine adds what the answer carried and when the job is next polled, and writes it
//!   as a [`crate::ledger::JobUpdate`]; callbacks (`ledger/deliveries.rs`) use the same step.
//! - the loop (`main_loop`) reads as its steps: take the workers' results (`answers.rs`),
//!   stall overdue jobs, run owed hooks, dispatch (`dispatch.rs`), report progress, wait;
//! - the engine's own state (`control.rs`) is its `Mode` (sending, paused until, draining with
//!   the reason, halted with the reason), the requests allowed in flight, and an outage of
//!   the gateway; in-flight work is typed (`InFlight`), and workers (`worker.rs`) bring back
//!   typed results, errors included;
//! - the run ends with a [`RunSummary`]: what it did and how the jobs stand. The commands map
//!   it to an exit code ([`crate::exit::of_run`]); the engine knows no exit codes.

mod answers;
mod control;
mod dispatch;
mod post;
mod schedule;
mod worker;

pub use crate::digest::hex;
pub use post::{job_view_full, LuaHooks};
pub use schedule::{backoff, PollSchedule};
pub use worker::{check_name_pattern, render_name, stem_of, DEFAULT_NAME_PATTERN};

use crate::clock;
use crate::gateway::{Gateway, RemoteStatus};
use crate::ledger::{Event, JobRow, JobState, Ledger, LedgerError, Post};
use crate::lifecycle::Learned;
use crate::money;
use control::{InFlight, Mode, Outage, Pass};
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Done, Task, Workers};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Only this batch's jobs; all jobs when `None`.
    pub batch: Option<String>,
    /// Where outputs are written.
    pub out_dir: PathBuf,
    /// Batches whose outputs go to their own folder instead of `out_dir`.
    pub batch_dirs: std::collections::HashMap<String, PathBuf>,
    /// HTTP requests in flight at most.
    pub concurrency: usize,
    /// The longest wait between two polls of one job.
    pub poll_interval: Duration,
    /// Spend cap in USD for the jobs in scope.
    pub budget: Option<Decimal>,
    /// Caps remembered by batches, each kept over its own jobs (for a run over every batch;
    /// a run of one batch has its cap in `budget`).
    pub batch_budgets: HashMap<String, Decimal>,
    /// Jobs still unfinished this long after they were sent become `stalled`.
    pub deadline: Option<Duration>,
    /// States whose jobs get a new attempt before the run.
    pub retry: Vec<JobState>,
    /// Send `uncertain` jobs again (they may be charged twice).
    pub resubmit_uncertain: bool,
    /// Set from outside (Ctrl-C) to stop sending and return.
    pub stop: Arc<AtomicBool>,
    /// Consecutive failures to reach the gateway after which the run gives up.
    pub max_unreachable: u32,
    /// Output file names: `{key}`, `{job}`, `{stem}`, `{upscale}`, `{date}`, `{attempt}`.
    pub name_pattern: String,
    /// The wait between two polls of a job that expects webhook callbacks: its callbacks
    /// carry the news, and these rare polls only catch the ones that never arrive.
    pub callback_fallback: Duration,
    /// The bucket of local inputs: a job whose image is an object locator is sent with a
    /// fresh presigned URL of it (see `Engine::params_to_send`).
    pub storage: Option<crate::storage::Storage>,
    /// A known quota of requests a second to the gateway (`--max-rps`): the request budget
    /// never goes above it; without it the budget learns the rate from 429s alone.
    pub max_rps: Option<f64>,
}

impl EngineOptions {
    pub fn new(out_dir: PathBuf) -> Self {
        EngineOptions {
            batch: None,
            out_dir,
            batch_dirs: std::collections::HashMap::new(),
            concurrency: 4,
            poll_interval: Duration::from_secs(5),
            budget: None,
            batch_budgets: HashMap::new(),
            deadline: None,
            retry: Vec::new(),
            resubmit_uncertain: false,
            stop: Arc::new(AtomicBool::new(false)),
            max_unreachable: 4,
            name_pattern: DEFAULT_NAME_PATTERN.to_string(),
            callback_fallback: Duration::from_secs(60),
            storage: None,
            max_rps: None,
        }
    }
}

/// Why a run stopped before everything was done.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Jobs are held by the budget; `needed` more USD would let them all be sent.
    Budget { needed: Decimal },
    /// The gateway answered 402; the rest are held.
    InsufficientBalance { message: String },
    /// The gateway refused the key (401/403).
    Unauthorized { message: String },
    /// The gateway could not be reached; the rest stay planned.
    Unreachable { message: String },
    /// The base URL does not lead to the API (a wrong path, a plain web server): sending
    /// stopped at once and the jobs not created stay planned.
    Misconfigured { message: String },
    /// Stopped from outside (Ctrl-C).
    Interrupted,
}

/// What a run did, and how the jobs in its scope stand.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub counts: Vec<(JobState, i64)>,
    pub sent: u64,
    pub polls: u64,
    pub downloads: u64,
    pub charged: Decimal,
    pub stop: Option<StopReason>,
    /// Jobs found `submitting` at start and made `uncertain`.
    pub recovered_uncertain: Vec<i64>,
    /// Jobs not sent because an `on_submit` hook failed.
    pub hook_blocked: u64,
    /// Completed jobs whose outputs could not be downloaded in this run.
    pub owing_downloads: i64,
    /// Jobs (per batch) that still owe hooks because this run had none loaded.
    pub owing_hooks: Vec<(Option<String>, i64)>,
    /// Hook runs in scope whose latest outcome is a failure (`hooks failed` lists them).
    pub failed_hooks: i64,
    /// Passes over jobs not sent because their local input is not in the bucket.
    pub not_uploaded: u64,
}

impl RunSummary {
    pub fn count(&self, state: JobState) -> i64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

/// The longest the engine waits on a 429's `Retry-After` before asking again.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);

/// A snapshot for progress displays: jobs counted by where they stand, not HTTP requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Jobs in a final state (completed, failed, error, rejected, stalled, skipped).
    pub done: u64,
    /// Every job in scope.
    pub total: u64,
    /// Jobs finished since this run started (an ETA needs at least one).
    pub done_this_run: u64,
    /// Jobs at the gateway, waiting (QUEUED) or being worked on (PROCESSING).
    pub queued: u64,
    pub processing: u64,
    pub completed: u64,
    /// FAILED at the gateway.
    pub failed: u64,
    /// ERROR at the gateway (not charged).
    pub errored: u64,
    /// Rejected, stalled or uncertain.
    pub other_trouble: u64,
    /// Held by the budget or a 402.
    pub held: u64,
    /// What the budget counts: charged so far plus the estimates of jobs sent and not yet
    /// charged, in USD.
    pub spent: Decimal,
    /// The gateway answered 429: nothing is sent for this long.
    pub rate_limited: Option<Duration>,
    /// Requests a second the request budget allows, when it is what limits the run.
    pub request_rate: Option<f64>,
}

/// Called with progress snapshots, at most a few times a second.
pub trait ProgressSink {
    fn update(&mut self, progress: &Progress);
}

impl ProgressSink for () {
    fn update(&mut self, _: &Progress) {}
}

/// What `on_submit` hooks decided about a job.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitVerdict {
    Keep,
    Change(crate::params::JobParams),
    Skip(String),
    /// A hook failed: the job is not sent in this run and stays planned.
    Failed(String),
}

/// What the hook step of the engine needs; see [`crate::hooks`] and [`LuaHooks`].
pub trait PostProcessor {
    /// Whether any hook will run after a job ends in `state`.
    fn wants(&self, state: JobState) -> bool;
    /// Whether `on_submit` hooks exist.
    fn wants_submit(&self) -> bool;
    /// Runs the `on_submit` hooks a job has not yet passed.
    fn on_submit(
        &mut self,
        ledger: &mut Ledger,
        job: &JobRow,
    ) -> Result<SubmitVerdict, LedgerError>;
    /// Runs the owed hooks of a job; the ledger records each run.
    fn run_job_hooks(&mut self, ledger: &mut Ledger, job: &JobRow) -> Result<(), LedgerError>;
    /// Runs `on_batch_done` once a batch has nothing unfinished.
    fn batch_done(&mut self, ledger: &mut Ledger, batch: &str) -> Result<(), LedgerError>;
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Runs until nothing in scope is left to do, or a stop reason.
pub fn run<'a>(
    ledger: &'a mut Ledger,
    gateway: &'a Gateway,
    options: &'a EngineOptions,
    hooks: Option<&'a mut dyn PostProcessor>,
    progress: &mut dyn ProgressSink,
) -> Result<RunSummary, EngineError> {
    let mut engine = Engine::new(ledger, gateway, options, hooks)?;
    engine.prepare()?;
    engine.main_loop(progress)?;
    engine.finish()
}

/// Sends one job now on the calling thread (the `submit` command), recording intent and answer.
/// `storage` is the bucket of local inputs, if any.
pub fn send_now(
    ledger: &mut Ledger,
    gateway: &Gateway,
    storage: Option<&crate::storage::Storage>,
    job_id: i64,
) -> Result<Option<StopReason>, EngineError> {
    let mut options = EngineOptions::new(PathBuf::from("."));
    options.storage = storage.cloned();
    let mut engine = Engine::new(ledger, gateway, &options, None)?;
    let Some(job) = engine.ledger.job(job_id)? else {
        return Ok(None);
    };
    if job.state != JobState::Planned {
        return Ok(None);
    }
    if job.input_size().is_none() {
        let url = job.image_url.clone();
        let result = worker::perform(gateway, Task::Probe { url }, job.attempt);
        engine.handle(Done {
            job_id: job.id,
            attempt: job.attempt,
            result,
        })?;
    }
    let job = engine.ledger.job(job_id)?.expect("job just read");
    let Some(params) = engine.params_to_send(&job)? else {
        return Ok(None);
    };
    let record = engine.intent(&job, engine.price_now());
    if let Some(stop) = engine.held_by_batch_cap(&job, &record)? {
        return Ok(Some(stop));
    }
    engine
        .ledger
        .mark_submitting(std::slice::from_ref(&record))?;
    let ticket = gateway.budget().take();
    let result = worker::perform(gateway, Task::Submit { params, ticket }, job.attempt);
    engine.handle(Done {
        job_id: job.id,
        attempt: job.attempt,
        result,
    })?;
    Ok(engine.mode.stop_reason().cloned())
}

struct Engine<'a> {
    ledger: &'a mut Ledger,
    gateway: &'a Gateway,
    options: &'a EngineOptions,
    hooks: Option<&'a mut dyn PostProcessor>,
    schedule: PollSchedule,
    in_flight: HashMap<i64, InFlight>,
    /// Jobs passed over for sending in this run (held, or their size could not be probed).
    passed: HashSet<i64>,
    unprobeable: HashSet<i64>,
    failures: HashMap<i64, u32>,
    send_cursor: i64,
    /// Whether it sends, and why not.
    mode: Mode,
    limit: usize,
    successes_since_429: u32,
    /// Connections failing in a row, if they do.
    outage: Option<Outage>,
    spent: Decimal,
    held_estimates: HashMap<i64, Option<Decimal>>,
    summary: RunSummary,
    last_deadline_check: Instant,
    last_progress: Instant,
    /// Time between progress counts: a count reads every job in scope, so on a large ledger
    /// it is made less often, to stay a small part of the loop (about 2% of its time).
    progress_every: Duration,
    total_in_scope: u64,
    hook_blocked: u64,
    /// Sending is paused by a 429 until then.
    rate_limited_until: Option<Instant>,
    /// Jobs in a final state when the run started.
    done_at_start: Option<u64>,
    /// Polls handed out since the last submission, and whether submissions wait: when the
    /// budget is short, polls go first, but not forever (see `schedule::poll_next`).
    polls_since_send: u32,
    sends_waiting: bool,
    /// How long until the budget has a token, when a take last found none.
    token_wait: Option<Duration>,
    /// Status calls answered 404 in a row, per job.
    not_found: HashMap<i64, u32>,
    /// How long after it was sent each job's (and attempt's) last poll in this run found it
    /// still at the gateway: a short budget weighs its next poll by it.
    last_polled: HashMap<(i64, i64), Duration>,
    /// When the schedule last learned which jobs are still running.
    last_estimate: Instant,
    /// Jobs queued or processing at the gateway, at the last progress count.
    at_gateway: u64,
}

impl<'a> Engine<'a> {
    fn new(
        ledger: &'a mut Ledger,
        gateway: &'a Gateway,
        options: &'a EngineOptions,
        hooks: Option<&'a mut dyn PostProcessor>,
    ) -> Result<Self, EngineError> {
        if options.max_rps.is_some() {
            gateway.budget().set_ceiling(options.max_rps);
        }
        Ok(Engine {
            ledger,
            gateway,
            options,
            hooks,
            schedule: PollSchedule::new(options.poll_interval),
            in_flight: HashMap::new(),
            passed: HashSet::new(),
            unprobeable: HashSet::new(),
            failures: HashMap::new(),
            send_cursor: 0,
            mode: Mode::Sending,
            limit: options.concurrency.max(1),
            successes_since_429: 0,
            outage: None,
            // Summed once, in `prepare`, after interrupted submissions are settled: the sum
            // reads every attempt in scope.
            spent: Decimal::ZERO,
            held_estimates: HashMap::new(),
            summary: RunSummary::default(),
            last_deadline_check: Instant::now() - Duration::from_secs(60),
            last_progress: Instant::now() - Duration::from_secs(60),
            progress_every: Duration::from_millis(200),
            total_in_scope: 0,
            hook_blocked: 0,
            rate_limited_until: None,
            done_at_start: None,
            polls_since_send: 0,
            sends_waiting: false,
            token_wait: None,
            not_found: HashMap::new(),
            last_polled: HashMap::new(),
            last_estimate: Instant::now(),
            at_gateway: 0,
        })
    }

    fn scope(&self) -> Option<&'a str> {
        self.options.batch.as_deref()
    }

    /// Start-up: interrupted submissions become uncertain; retries become new attempts.
    fn prepare(&mut self) -> Result<(), EngineError> {
        self.summary.recovered_uncertain = self.ledger.recover_interrupted()?;
        // Attempts whose ghost called back on their own path take its request id, to be
        // confirmed by a status call (so `--resubmit-uncertain` does not send them again).
        self.ledger.adopt_ghosts(None)?;
        let swept = worker::sweep_partials(&self.options.out_dir);
        if !swept.is_empty() {
            self.ledger
                .append(vec![Event::new(None, None, "cleanup").detail(format!(
                    "removed {} download(s) left unfinished by a stopped process: {}",
                    swept.len(),
                    swept.join(", ")
                ))])?;
        }
        if !self.options.retry.is_empty() {
            self.ledger
                .new_attempts(&self.options.retry, self.scope(), "run --retry")?;
        }
        if self.options.resubmit_uncertain {
            self.ledger.new_attempts(
                &[JobState::Uncertain],
                self.scope(),
                "run --resubmit-uncertain (the earlier attempt may have been charged)",
            )?;
        }
        self.ledger.reschedule_owed(self.scope(), now_ms())?;
        self.learn_from_history()?;
        let interval = self.options.poll_interval.as_millis() as i64;
        self.ledger
            .bring_polls_forward(self.scope(), now_ms() + interval)?;
        self.spent = self.ledger.committed_spend(self.scope())?;
        self.total_in_scope = self
            .ledger
            .count_by_state(self.scope())?
            .iter()
            .map(|(_, n)| *n as u64)
            .sum();
        self.ledger
            .append(vec![Event::new(None, None, "engine_start").detail(
                format!(
                    "pid {}, batch {}, concurrency {}, budget {}, poll interval {} ms, max rps {}",
                    std::process::id(),
                    self.scope().unwrap_or("(all)"),
                    self.limit,
                    self.options
                        .budget
                        .map(money::exact)
                        .unwrap_or_else(|| "none".into()),
                    self.options.poll_interval.as_millis(),
                    self.options
                        .max_rps
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "learned".into())
                ),
            )])?;
        Ok(())
    }

    fn main_loop(&mut self, progress: &mut dyn ProgressSink) -> Result<(), EngineError> {
        let (done_tx, done_rx) = mpsc::channel();
        let workers = Workers::start(self.options.concurrency.max(1), self.gateway, done_tx);
        loop {
            if self.options.stop.load(Ordering::Relaxed) && !self.mode.is_halted() {
                self.interrupt();
            }
            self.drain(None, &done_rx)?;
            self.check_deadline()?;
            self.run_hooks()?;
            let pass = self.dispatch(&workers)?;
            self.report_progress(progress)?;
            if self.in_flight.is_empty()
                && !pass.dispatched
                && (self.mode.is_halted() || self.nothing_left()?)
            {
                // A last snapshot, so a display ends on the final counts.
                self.last_progress = Instant::now() - Duration::from_secs(3600);
                self.report_progress(progress)?;
                break;
            }
            let wait = self.wait_time(pass)?;
            match done_rx.recv_timeout(wait) {
                Ok(done) => self.drain(Some(done), &done_rx)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(workers);
        Ok(())
    }

    /// Takes `first` and every result already back, and commits them in one transaction
    /// (group commit) before the step goes on to send anything. Their jobs are read in one
    /// statement first: taking a result writes nothing until the commit, so each job reads as
    /// it would have just before its own take. Bounded: only the tasks in flight can bring
    /// results.
    fn drain(&mut self, first: Option<Done>, rx: &mpsc::Receiver<Done>) -> Result<(), EngineError> {
        let results: Vec<Done> = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .collect();
        if results.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = results.iter().map(|done| done.job_id).collect();
        let jobs = self.ledger.jobs_by_id(&ids)?;
        let mut taken = answers::Taken::default();
        let mut result = Ok(());
        for done in results {
            let job = jobs.get(&done.job_id).cloned();
            result = self.take(done, job, &mut taken);
            if result.is_err() {
                break;
            }
        }
        // What was taken is committed even when a later result could not be.
        let committed = self.commit_taken(taken);
        result.and(committed)
    }

    fn nothing_left(&mut self) -> Result<bool, EngineError> {
        // A status call scheduled is work even for a job that is not unfinished: a stalled
        // job's callback, or an uncertain attempt's ghost, asked for it. Asked first: while
        // one is scheduled nothing else needs counting.
        if self.ledger.next_due(self.scope())?.is_some() {
            return Ok(false);
        }
        if self.ledger.unfinished(self.scope())? == 0 {
            return Ok(true);
        }
        // What is left may be only jobs this run cannot send (held, unprobeable) or owes
        // nothing to yet (polls in the future).
        let sendable = self.mode.may_send() && self.sendable_not_passed()?;
        let hooks_owed =
            !self.ledger.owing_hooks(self.scope(), 1)?.is_empty() && self.hooks.is_some();
        Ok(!sendable && !hooks_owed)
    }

    /// Whether a job this run has not passed over is ready to send. Reads sendable ids a page
    /// at a time, so neither time nor memory grows with the jobs held before the first one.
    fn sendable_not_passed(&self) -> Result<bool, EngineError> {
        let mut after = 0;
        loop {
            let ids = self.ledger.sendable_ids(self.scope(), after, 512)?;
            let Some(&last) = ids.last() else {
                return Ok(false);
            };
            if ids.iter().any(|id| !self.passed.contains(id)) {
                return Ok(true);
            }
            after = last;
        }
    }

    fn wait_time(&mut self, pass: Pass) -> Result<Duration, EngineError> {
        let cap = Duration::from_millis(250);
        if self.in_flight.len() >= self.limit {
            return Ok(cap);
        }
        if pass.held_only {
            // Holding is ledger work only; the next candidates need no wait.
            return Ok(Duration::from_millis(1));
        }
        let mut wait = cap;
        if let Some(due) = self.ledger.next_due(self.scope())? {
            let until = Duration::from_millis((due - now_ms()).max(0) as u64);
            wait = wait.min(until);
        }
        if let Mode::PausedUntil(until) = self.mode {
            wait = wait.min(until.saturating_duration_since(Instant::now()));
        }
        if let Some(token) = self.token_wait.take() {
            // The budget had no token: the next one, not the next due time, is what to wait for.
            return Ok(token.clamp(Duration::from_millis(1), cap));
        }
        Ok(wait.max(Duration::from_millis(1)))
    }

    /// The message of a run stopped because the base URL does not lead to the API.
    fn misconfigured(&self, what_came_back: &str, outcome: &str) -> String {
        let base = &self.gateway.config().base_url;
        format!(
            "the gateway at {base} does not answer as the CodeFormer API does: {what_came_back}. {outcome} Fix: {} (`codeformer-ledger doctor` checks it), then run again",
            crate::gateway::base_url_fix(base)
        )
    }

    /// The wait before the next poll of a job still at the gateway, sent `elapsed` ago and
    /// polled `polls` times. A job that expects callbacks is polled only as a fallback.
    fn next_poll_delay(&self, job: &JobRow, elapsed: Duration, polls: u32) -> Duration {
        if job.expects_callbacks {
            self.options.callback_fallback
        } else if !self.schedule.learned() {
            // Nothing learned yet: every poll interval, as the API's documentation advises. A
            // completion seen late still teaches its exact duration (the gateway's times).
            self.options.poll_interval
        } else {
            self.schedule.next_delay(elapsed, polls)
        }
    }

    fn post_after(&self, state: JobState) -> Option<Post> {
        match &self.hooks {
            Some(h) if h.wants(state) => Some(Post::Hooks),
            _ => None,
        }
    }

    fn check_deadline(&mut self) -> Result<(), EngineError> {
        let Some(deadline) = self.options.deadline else {
            return Ok(());
        };
        if self.last_deadline_check.elapsed() < Duration::from_millis(500) {
            return Ok(());
        }
        self.last_deadline_check = Instant::now();
        let cutoff = clock::now() - chrono::Duration::from_std(deadline).unwrap_or_default();
        let overdue = self
            .ledger
            .overdue(cutoff.timestamp_millis(), self.scope())?;
        let mut items = Vec::new();
        for job in overdue {
            if self.in_flight.contains_key(&job.id) {
                continue;
            }
            let said = match job.remote_status.as_deref().map(RemoteStatus::parse) {
                Some(RemoteStatus::Undocumented(text)) => format!(
                    " (the gateway last reported {text:?}, a status the API does not document)"
                ),
                _ => String::new(),
            };
            let reason = format!(
                "still {}{said} after the {}s deadline; no longer polled (the API has no cancel, so it may still be charged)",
                job.state,
                deadline.as_secs_f64()
            );
            items.push(self.state_change(&job, Learned::Deadline, &reason));
        }
        if !items.is_empty() {
            self.ledger.record(items)?;
        }
        Ok(())
    }

    fn run_hooks(&mut self) -> Result<(), EngineError> {
        let Some(hooks) = self.hooks.as_mut() else {
            return Ok(());
        };
        let jobs = self.ledger.owing_hooks(self.options.batch.as_deref(), 16)?;
        for job in jobs {
            hooks.run_job_hooks(self.ledger, &job)?;
        }
        Ok(())
    }

    fn report_progress(&mut self, sink: &mut dyn ProgressSink) -> Result<(), EngineError> {
        if self.last_progress.elapsed() < self.progress_every {
            return Ok(());
        }
        let started = Instant::now();
        let counts = self.ledger.count_by_state(self.scope())?;
        self.progress_every = (started.elapsed() * 50).max(Duration::from_millis(200));
        self.last_progress = Instant::now();
        let get = |s: JobState| {
            counts
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, n)| *n as u64)
                .unwrap_or(0)
        };
        let done: u64 = JobState::ALL
            .iter()
            .filter(|s| s.is_final())
            .map(|s| get(*s))
            .sum();
        let done_at_start = *self.done_at_start.get_or_insert(done);
        self.at_gateway = get(JobState::Queued) + get(JobState::Processing);
        let rate_limited = self
            .rate_limited_until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero());
        if rate_limited.is_none() {
            self.rate_limited_until = None;
        }
        sink.update(&Progress {
            done,
            total: counts
                .iter()
                .map(|(_, n)| *n as u64)
                .sum::<u64>()
                .max(self.total_in_scope),
            done_this_run: done.saturating_sub(done_at_start),
            queued: get(JobState::Queued),
            processing: get(JobState::Processing),
            completed: get(JobState::Completed),
            failed: get(JobState::Failed),
            errored: get(JobState::Error),
            other_trouble: get(JobState::Rejected)
                + get(JobState::Stalled)
                + get(JobState::Uncertain),
            held: get(JobState::Held),
            spent: self.spent,
            rate_limited,
            request_rate: self.gateway.budget().limiting_rate(),
        });
        Ok(())
    }

    /// Starts the schedule from the durations the last run against this gateway learned.
    fn learn_from_history(&mut self) -> Result<(), EngineError> {
        let gateway = &self.gateway.config().base_url;
        if let Some(ms) = self.ledger.learned_durations(gateway)? {
            let durations: Vec<Duration> = ms.into_iter().map(Duration::from_millis).collect();
            self.schedule.seed(&durations);
        }
        Ok(())
    }

    /// Records the durations this run learned, for the next run against this gateway.
    fn remember_durations(&mut self) -> Result<(), EngineError> {
        let Some(points) = self.schedule.summary() else {
            return Ok(());
        };
        let secs = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        let detail = format!(
            "job durations at {}: low quantile {:.1} s, median {:.1} s, high quantile {:.1} s ({} completions in this run); the next run starts its poll schedule from them",
            crate::ledger::history_origin(&self.gateway.config().base_url),
            secs(self.schedule.quantile(schedule::LOW_QUANTILE)),
            secs(self.schedule.quantile(0.5)),
            secs(self.schedule.quantile(schedule::HIGH_QUANTILE)),
            self.schedule.seen,
        );
        let ms = points.iter().map(|d| d.as_millis() as u64).collect();
        self.ledger.append(vec![crate::ledger::durations_event(
            &self.gateway.config().base_url,
            ms,
            detail,
        )])?;
        Ok(())
    }

    fn finish(mut self) -> Result<RunSummary, EngineError> {
        self.remember_durations()?;
        let mut stop = self.mode.stop_reason().cloned();
        if matches!(stop, Some(StopReason::InsufficientBalance { .. })) {
            self.hold_unsent_after_402()?;
        }
        if let (Some(hooks), Some(batch)) = (self.hooks.as_mut(), self.options.batch.as_deref()) {
            if self.ledger.unfinished(Some(batch))? == 0 && stop.is_none() {
                hooks.batch_done(self.ledger, batch)?;
            }
        }
        if stop.is_none() {
            stop = self.budget_stop()?;
        }
        self.summary.counts = self.ledger.count_by_state(self.scope())?;
        self.summary.hook_blocked = self.hook_blocked;
        self.summary.failed_hooks = self.ledger.failed_hook_count(self.scope())?;
        self.summary.owing_downloads = self.ledger.owing_downloads(self.scope())?;
        if self.hooks.is_none() {
            self.summary.owing_hooks = self.ledger.owing_hooks_by_batch(self.scope())?;
        }
        self.summary.stop = stop;
        self.ledger
            .append(vec![Event::new(None, None, "engine_stop").detail(format!(
                "sent {}, polls {}, downloads {}, charged {} USD, stop: {:?}",
                self.summary.sent,
                self.summary.polls,
                self.summary.downloads,
                money::exact(self.summary.charged),
                self.summary.stop
            ))])?;
        Ok(self.summary)
    }

    /// A run that ended with jobs held by a cap stops for the budget, with what more it needs.
    fn budget_stop(&self) -> Result<Option<StopReason>, EngineError> {
        if let Some(budget) = self.options.budget {
            // Summed in SQL: the held jobs may be most of a large ledger.
            let (held, rest, _) = self.ledger.held_estimates(self.scope())?;
            if held > 0 {
                let committed = self.ledger.committed_spend(self.scope())?;
                return Ok(Some(StopReason::Budget {
                    needed: (committed + rest - budget).max(Decimal::ZERO),
                }));
            }
        }
        // Each capped batch needs what its held jobs cost beyond its own cap.
        let mut held_any = false;
        let mut needed = Decimal::ZERO;
        for (name, cap) in &self.options.batch_budgets {
            let (held, rest, _) = self.ledger.held_estimates(Some(name))?;
            if held > 0 {
                held_any = true;
                let committed = self.ledger.committed_spend(Some(name))?;
                needed += (committed + rest - *cap).max(Decimal::ZERO);
            }
        }
        Ok(held_any.then_some(StopReason::Budget { needed }))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
