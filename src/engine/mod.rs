//! The engine: a plain loop over an explicit state machine that sends planned jobs, polls the
//! ones at the gateway, downloads outputs and runs hooks, until nothing is left to do.
//!
//! One thread (the caller's) owns the ledger and records every result; `concurrency` worker
//! threads do the HTTP. Before a submission is sent its intent is committed; its answer is
//! committed as soon as it arrives, so a process killed at any instant leaves a ledger from
//! which the next run continues without sending anything twice. Polls are picked from an index
//! on the next-poll time, so a loop step costs the same however many jobs have finished.

mod post;
mod schedule;
mod worker;

pub use post::{job_view_full, LuaHooks};
pub use schedule::{backoff, PollSchedule};
pub use worker::{check_name_pattern, hex, render_name, stem_of, DEFAULT_NAME_PATTERN};

use crate::clock;
use crate::gateway::{Gateway, PollOutcome, RemoteStatus, SubmitOutcome};
use crate::ledger::{Change, Event, JobRow, JobState, Ledger, LedgerError, SubmitRecord};
use crate::money;
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Done, Task, TaskResult, Workers};

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

    /// The exit code the design gives this outcome.
    pub fn exit_code(&self) -> u8 {
        match &self.stop {
            Some(StopReason::Budget { .. } | StopReason::InsufficientBalance { .. }) => {
                crate::exit::BUDGET
            }
            Some(_) => crate::exit::ERROR,
            None if self.hook_blocked > 0
                || self.not_uploaded > 0
                || self.failed_hooks > 0
                || self.owing_downloads > 0
                || !self.owing_hooks.is_empty() =>
            {
                crate::exit::SOME_FAILED
            }
            None if [
                JobState::Failed,
                JobState::Error,
                JobState::Rejected,
                JobState::Stalled,
                JobState::Uncertain,
            ]
            .iter()
            .any(|s| self.count(*s) > 0) =>
            {
                crate::exit::SOME_FAILED
            }
            None => crate::exit::DONE,
        }
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
    let record = engine.intent(&job);
    if let Some(batch) = job.batch.clone() {
        let batch = batch.as_str();
        // A batch's cap holds every job of it, however it is sent.
        if let Some(cap) = engine.ledger.batch_budget(batch)? {
            let spent = engine.ledger.committed_spend(Some(batch))?;
            match record.estimate {
                Some(estimate) if spent + estimate <= cap => {}
                estimate => {
                    let reason = engine.hold_reason(estimate, spent, cap, Some(batch));
                    engine.hold(vec![(job, estimate, reason)])?;
                    let (_, rest, _) = engine.ledger.held_estimates(Some(batch))?;
                    return Ok(Some(StopReason::Budget {
                        needed: (spent + rest - cap).max(Decimal::ZERO),
                    }));
                }
            }
        }
    }
    engine
        .ledger
        .mark_submitting(std::slice::from_ref(&record))?;
    let result = worker::perform(gateway, Task::Submit { params }, job.attempt);
    engine.handle(Done {
        job_id: job.id,
        attempt: job.attempt,
        result,
    })?;
    Ok(engine.stop.clone())
}

/// A recorded poll answer: the job, its attempt, the change, the event, and the final state
/// it reached, if any.
type PollItem = (i64, i64, Change, Event, Option<JobState>);

struct Engine<'a> {
    ledger: &'a mut Ledger,
    gateway: &'a Gateway,
    options: &'a EngineOptions,
    hooks: Option<&'a mut dyn PostProcessor>,
    schedule: PollSchedule,
    in_flight: HashMap<i64, &'static str>,
    /// Jobs passed over for sending in this run (held, or their size could not be probed).
    passed: HashSet<i64>,
    unprobeable: HashSet<i64>,
    failures: HashMap<i64, u32>,
    send_cursor: i64,
    send_paused_until: Option<Instant>,
    sending: bool,
    limit: usize,
    successes_since_429: u32,
    unreachable: u32,
    unreachable_since: Option<Instant>,
    /// Nothing new is dispatched: the key was refused, the gateway is gone, or Ctrl-C.
    halted: bool,
    spent: Decimal,
    held_estimates: HashMap<i64, Option<Decimal>>,
    stop: Option<StopReason>,
    summary: RunSummary,
    last_deadline_check: Instant,
    last_progress: Instant,
    /// Time between progress counts: a count reads every job in scope, so on a large ledger
    /// it is made less often, to stay a small part of the loop (about 2% of its time).
    progress_every: Duration,
    total_in_scope: u64,
    hook_blocked: u64,
    /// The last dispatch held jobs for the budget and sent none: there may be more to look
    /// at right away.
    held_some: bool,
    /// Sending is paused by a 429 until then.
    rate_limited_until: Option<Instant>,
    /// Jobs in a final state when the run started.
    done_at_start: Option<u64>,
}

impl<'a> Engine<'a> {
    fn new(
        ledger: &'a mut Ledger,
        gateway: &'a Gateway,
        options: &'a EngineOptions,
        hooks: Option<&'a mut dyn PostProcessor>,
    ) -> Result<Self, EngineError> {
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
            send_paused_until: None,
            sending: true,
            limit: options.concurrency.max(1),
            successes_since_429: 0,
            unreachable: 0,
            unreachable_since: None,
            halted: false,
            // Summed once, in `prepare`, after interrupted submissions are settled: the sum
            // reads every attempt in scope.
            spent: Decimal::ZERO,
            held_estimates: HashMap::new(),
            stop: None,
            summary: RunSummary::default(),
            last_deadline_check: Instant::now() - Duration::from_secs(60),
            last_progress: Instant::now() - Duration::from_secs(60),
            progress_every: Duration::from_millis(200),
            total_in_scope: 0,
            hook_blocked: 0,
            held_some: false,
            rate_limited_until: None,
            done_at_start: None,
        })
    }

    fn scope(&self) -> Option<&'a str> {
        self.options.batch.as_deref()
    }

    /// Start-up: interrupted submissions become uncertain; retries become new attempts.
    fn prepare(&mut self) -> Result<(), EngineError> {
        self.summary.recovered_uncertain = self.ledger.recover_interrupted()?;
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
                    "pid {}, batch {}, concurrency {}, budget {}, poll interval {} ms",
                    std::process::id(),
                    self.scope().unwrap_or("(all)"),
                    self.limit,
                    self.options
                        .budget
                        .map(money::exact)
                        .unwrap_or_else(|| "none".into()),
                    self.options.poll_interval.as_millis()
                ),
            )])?;
        Ok(())
    }

    fn main_loop(&mut self, progress: &mut dyn ProgressSink) -> Result<(), EngineError> {
        let (done_tx, done_rx) = mpsc::channel();
        let workers = Workers::start(self.options.concurrency.max(1), self.gateway, done_tx);
        loop {
            if self.options.stop.load(Ordering::Relaxed) && !self.halted {
                self.stop = None;
                self.stop_with(StopReason::Interrupted);
            }
            self.drain(&done_rx)?;
            self.check_deadline()?;
            self.run_hooks()?;
            let dispatched = self.dispatch(&workers)?;
            self.report_progress(progress)?;
            if self.in_flight.is_empty() && !dispatched && (self.halted || self.nothing_left()?) {
                // A last snapshot, so a display ends on the final counts.
                self.last_progress = Instant::now() - Duration::from_secs(3600);
                self.report_progress(progress)?;
                break;
            }
            let wait = self.wait_time()?;
            match done_rx.recv_timeout(wait) {
                Ok(done) => self.handle(done)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(workers);
        Ok(())
    }

    fn drain(&mut self, rx: &mpsc::Receiver<Done>) -> Result<(), EngineError> {
        let mut polls = Vec::new();
        while let Ok(done) = rx.try_recv() {
            if matches!(done.result, TaskResult::Poll(_)) {
                polls.push(done);
            } else {
                self.handle(done)?;
            }
        }
        if !polls.is_empty() {
            let mut items = Vec::with_capacity(polls.len());
            for done in polls {
                self.in_flight.remove(&done.job_id);
                if let TaskResult::Poll(exchange) = done.result {
                    if let Some(item) = self.poll_record(done.job_id, done.attempt, exchange)? {
                        items.push(item);
                    }
                }
            }
            self.commit_polls(items)?;
        }
        Ok(())
    }

    fn nothing_left(&mut self) -> Result<bool, EngineError> {
        if self.ledger.unfinished(self.scope())? == 0 {
            return Ok(true);
        }
        // What is left may be only jobs this run cannot send (held, unprobeable) or owes
        // nothing to yet (polls in the future).
        let now = now_ms();
        let due_soon = self.ledger.next_due(self.scope())?.is_some();
        let sendable = self.sending && self.sendable_not_passed()?;
        let hooks_owed =
            !self.ledger.owing_hooks(self.scope(), 1)?.is_empty() && self.hooks.is_some();
        let _ = now;
        Ok(!due_soon && !sendable && !hooks_owed)
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

    fn wait_time(&mut self) -> Result<Duration, EngineError> {
        let cap = Duration::from_millis(250);
        if self.in_flight.len() >= self.limit {
            return Ok(cap);
        }
        if self.held_some {
            // Holding is ledger work only; the next candidates need no wait.
            return Ok(Duration::from_millis(1));
        }
        let mut wait = cap;
        if let Some(due) = self.ledger.next_due(self.scope())? {
            let until = Duration::from_millis((due - now_ms()).max(0) as u64);
            wait = wait.min(until);
        }
        if let Some(until) = self.send_paused_until {
            wait = wait.min(until.saturating_duration_since(Instant::now()));
        }
        Ok(wait.max(Duration::from_millis(1)))
    }

    // ---- dispatch ----

    fn dispatch(&mut self, workers: &Workers) -> Result<bool, EngineError> {
        self.held_some = false;
        if self.halted {
            return Ok(false);
        }
        let mut dispatched = false;
        let free = self.limit.saturating_sub(self.in_flight.len());
        if free > 0 {
            let due = self
                .ledger
                .due(self.scope(), now_ms(), free + self.in_flight.len())?;
            for job in due {
                if self.in_flight.len() >= self.limit {
                    break;
                }
                if self.in_flight.contains_key(&job.id) {
                    continue;
                }
                if job.post.as_deref() == Some("download") && job.state == JobState::Completed {
                    self.in_flight.insert(job.id, "download");
                    let (dir, name) = self.output_place(&job)?;
                    workers.send(
                        job.id,
                        job.attempt,
                        Task::Download {
                            urls: job.output_urls.clone(),
                            dir,
                            name,
                        },
                    );
                    dispatched = true;
                } else if job.state.is_remote_pending() {
                    if let Some(request_id) = job.request_id.clone() {
                        self.in_flight.insert(job.id, "poll");
                        workers.send(job.id, job.attempt, Task::Poll { request_id });
                        dispatched = true;
                    }
                } else {
                    // Nothing to poll any more (a callback or another process finished it).
                    self.ledger.record(vec![(
                        job.id,
                        job.attempt,
                        Change {
                            next_poll_at: Some(None),
                            ..Change::default()
                        },
                        Event::new(Some(job.id), Some(job.attempt), "unscheduled")
                            .detail(format!("no poll needed in state {}", job.state)),
                    )])?;
                }
            }
        }
        if self.can_send() {
            dispatched |= self.dispatch_sends(workers)?;
        }
        Ok(dispatched)
    }

    fn can_send(&mut self) -> bool {
        if !self.sending || self.in_flight.len() >= self.limit {
            return false;
        }
        match self.send_paused_until {
            Some(until) if Instant::now() < until => false,
            _ => {
                self.send_paused_until = None;
                true
            }
        }
    }

    fn dispatch_sends(&mut self, workers: &Workers) -> Result<bool, EngineError> {
        let free = self.limit.saturating_sub(self.in_flight.len());
        let candidates = self
            .ledger
            .sendable(self.scope(), self.send_cursor, free * 2 + 8)?;
        if candidates.is_empty() {
            return Ok(false);
        }
        let mut intents = Vec::new();
        let mut to_hold = Vec::new();
        let mut dispatched = false;
        let mut rewind = None;
        // Committed spend of each capped batch met in this pass, plus what this pass adds: the
        // ledger's sum already counts what earlier passes sent.
        let mut batch_spent: HashMap<String, Decimal> = HashMap::new();
        for job in candidates {
            if intents.len() + self.in_flight.len() >= self.limit {
                break;
            }
            self.send_cursor = self.send_cursor.max(job.id);
            if self.in_flight.contains_key(&job.id) || self.passed.contains(&job.id) {
                continue;
            }
            if job.input_size().is_none() && !self.unprobeable.contains(&job.id) {
                if let Some(size) = self.ledger.cached_size(&job.image_url)? {
                    self.ledger.record_probe(
                        &job.image_url,
                        size,
                        "cached",
                        0,
                        Some((job.id, job.attempt, job.upscale)),
                    )?;
                    // Come back to it on the next pass, after later jobs moved the cursor.
                    rewind.get_or_insert(job.id - 1);
                    continue;
                }
                self.in_flight.insert(job.id, "probe");
                workers.send(
                    job.id,
                    job.attempt,
                    Task::Probe {
                        url: job.image_url.clone(),
                    },
                );
                dispatched = true;
                continue;
            }
            let Some(job) = self.judge(job)? else {
                continue;
            };
            let Some(params) = self.params_to_send(&job)? else {
                self.passed.insert(job.id);
                continue;
            };
            let record = self.intent(&job);
            if let Some(budget) = self.options.budget {
                match record.estimate {
                    Some(estimate) if self.spent + estimate <= budget => {}
                    estimate => {
                        let reason = self.hold_reason(estimate, self.spent, budget, self.scope());
                        to_hold.push((job, estimate, reason));
                        continue;
                    }
                }
            }
            let capped = job
                .batch
                .as_ref()
                .and_then(|b| self.options.batch_budgets.get_key_value(b));
            if let Some((name, &cap)) = capped {
                let spent = match batch_spent.get(name) {
                    Some(spent) => *spent,
                    None => self.ledger.committed_spend(Some(name))?,
                };
                match record.estimate {
                    Some(estimate) if spent + estimate <= cap => {
                        batch_spent.insert(name.clone(), spent + estimate);
                    }
                    estimate => {
                        batch_spent.insert(name.clone(), spent);
                        let reason = self.hold_reason(estimate, spent, cap, Some(name));
                        to_hold.push((job, estimate, reason));
                        continue;
                    }
                }
            }
            self.spent += record.estimate.unwrap_or_default();
            intents.push((record, job, params));
        }
        if let Some(rewind) = rewind {
            self.send_cursor = self.send_cursor.min(rewind);
        }
        self.held_some = !to_hold.is_empty() && intents.is_empty();
        self.hold(to_hold)?;
        if !intents.is_empty() {
            let records: Vec<SubmitRecord> = intents.iter().map(|(r, _, _)| r.clone()).collect();
            self.ledger.mark_submitting(&records)?;
            for (record, job, params) in intents {
                self.in_flight.insert(job.id, "submit");
                self.summary.sent += 1;
                workers.send(record.job_id, record.attempt, Task::Submit { params });
            }
            dispatched = true;
        }
        Ok(dispatched)
    }

    /// Lets `on_submit` hooks change or skip a job; `None` when it is not to be sent now.
    fn judge(&mut self, job: JobRow) -> Result<Option<JobRow>, EngineError> {
        let Some(hooks) = self.hooks.as_mut().filter(|h| h.wants_submit()) else {
            return Ok(Some(job));
        };
        match hooks.on_submit(self.ledger, &job)? {
            SubmitVerdict::Keep => Ok(Some(job)),
            SubmitVerdict::Change(params) => {
                self.ledger.update_params(
                    job.id,
                    job.attempt,
                    &params,
                    "on_submit changed the parameters",
                )?;
                Ok(self.ledger.job(job.id)?)
            }
            SubmitVerdict::Skip(reason) => {
                let (id, attempt, mut change, event) =
                    self.state_change(&job, JobState::Skipped, &reason);
                change.finished = true;
                self.ledger.record(vec![(id, attempt, change, event)])?;
                Ok(None)
            }
            SubmitVerdict::Failed(reason) => {
                self.passed.insert(job.id);
                self.hook_blocked += 1;
                let (id, attempt, change, event) = self.state_change(
                    &job,
                    JobState::Planned,
                    &format!("not sent: {reason}; fix the hook, then `run` again"),
                );
                self.ledger.record(vec![(id, attempt, change, event)])?;
                Ok(None)
            }
        }
    }

    /// The one place a job's stored input becomes what is sent: an object locator
    /// (`s3://BUCKET/KEY`, a local file) turns into a presigned GET URL signed now, so every
    /// send, a resend too, gets a fresh one; any other image is sent as recorded. `None` when
    /// the job cannot be sent in this run: its object is not known to be in the bucket (the
    /// upload before the run failed or never happened) or no bucket is configured. The
    /// recorded submission body keeps the locator, never a signed URL.
    fn params_to_send(
        &mut self,
        job: &JobRow,
    ) -> Result<Option<crate::params::JobParams>, EngineError> {
        let mut params = job.params();
        if !crate::storage::is_locator(&params.image) {
            return Ok(Some(params));
        }
        let ready = match &self.options.storage {
            Some(storage) if self.ledger.object_present(&params.image)? => storage,
            _ => {
                self.summary.not_uploaded += 1;
                return Ok(None);
            }
        };
        params.image = ready.url_to_send(&params.image);
        Ok(Some(params))
    }

    /// Where a job's outputs go: the batch's (or the run's) output folder and a name from the
    /// pattern. A local input is named after its file's stem and placed at its path below the
    /// input folder, so a folder's outputs mirror its tree; with the default pattern its name
    /// is the stem alone.
    fn output_place(&self, job: &JobRow) -> Result<(PathBuf, String), EngineError> {
        let mut dir = job
            .batch
            .as_ref()
            .and_then(|b| self.options.batch_dirs.get(b))
            .unwrap_or(&self.options.out_dir)
            .clone();
        let date = clock::now().format("%Y-%m-%d").to_string();
        let upload = if crate::storage::is_locator(&job.image_url) {
            self.ledger.upload_of(job.id)?
        } else {
            None
        };
        let Some(upload) = upload else {
            return Ok((dir, render_name(&self.options.name_pattern, job, &date)));
        };
        let relative = std::path::Path::new(&upload.relative_path);
        if let Some(parent) = relative.parent() {
            for part in parent.components() {
                if let std::path::Component::Normal(part) = part {
                    dir.push(part);
                }
            }
        }
        let mut named = job.clone();
        named.image_url = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pattern = if self.options.name_pattern == DEFAULT_NAME_PATTERN {
            "{stem}"
        } else {
            self.options.name_pattern.as_str()
        };
        Ok((dir, render_name(pattern, &named, &date)))
    }

    fn intent(&self, job: &JobRow) -> SubmitRecord {
        let price = self.price_now();
        let estimate = job.input_size().map(|(w, h)| {
            let (ow, oh) = money::output_size(w, h, job.upscale);
            money::Price {
                per_megapixel: price,
                ..money::Price::default_rate()
            }
            .cost(ow, oh)
        });
        SubmitRecord {
            job_id: job.id,
            attempt: job.attempt,
            body: Gateway::submit_body(&job.params()),
            price,
            estimate,
        }
    }

    fn price_now(&self) -> Decimal {
        self.ledger
            .current_price()
            .map(|p| p.per_megapixel)
            .unwrap_or_else(|_| money::Price::default_rate().per_megapixel)
    }

    /// Why a job is held by a cap (the run's, or its batch's when `batch` is given).
    fn hold_reason(
        &self,
        estimate: Option<Decimal>,
        spent: Decimal,
        cap: Decimal,
        batch: Option<&str>,
    ) -> String {
        let cap = match batch {
            Some(name) => format!("batch {name}'s cap of {} USD", money::exact(cap)),
            None => format!("the {} USD cap", money::exact(cap)),
        };
        match estimate {
            Some(e) => format!(
                "budget: {} USD spent (charged + in flight) + {} USD for this job would exceed {cap}",
                money::exact(spent),
                money::exact(e),
            ),
            None => "budget: the cost of this job cannot be estimated (its size is unknown; give --size or manifest width,height)".to_string(),
        }
    }

    /// Holds jobs that a cap cannot cover, each with its reason.
    fn hold(&mut self, jobs: Vec<(JobRow, Option<Decimal>, String)>) -> Result<(), EngineError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        for (job, estimate, reason) in jobs {
            self.passed.insert(job.id);
            self.held_estimates.insert(job.id, estimate);
            items.push(self.state_change(&job, JobState::Held, &reason));
        }
        self.ledger.record(items)?;
        Ok(())
    }

    fn state_change(
        &self,
        job: &JobRow,
        state: JobState,
        reason: &str,
    ) -> (i64, i64, Change, Event) {
        (
            job.id,
            job.attempt,
            Change {
                state: Some(state),
                reason: Some(Some(reason.to_string())),
                ..Change::default()
            },
            Event::new(Some(job.id), Some(job.attempt), "state")
                .detail(format!("{} -> {state}: {reason}", job.state)),
        )
    }

    // ---- results ----

    fn handle(&mut self, done: Done) -> Result<(), EngineError> {
        self.in_flight.remove(&done.job_id);
        match done.result {
            TaskResult::Probe(result) => self.on_probe(done.job_id, done.attempt, result),
            TaskResult::Submit(exchange) => self.on_submit(done.job_id, done.attempt, exchange),
            TaskResult::Poll(exchange) => {
                let item = self.poll_record(done.job_id, done.attempt, exchange)?;
                self.commit_polls(item.into_iter().collect())
            }
            TaskResult::Download(result) => self.on_download(done.job_id, done.attempt, result),
        }
    }

    fn on_probe(
        &mut self,
        job_id: i64,
        attempt: i64,
        result: Result<crate::probe::Probe, String>,
    ) -> Result<(), EngineError> {
        let Some(job) = self.ledger.job(job_id)? else {
            return Ok(());
        };
        match result {
            Ok(probe) => {
                self.ledger.record_probe(
                    &job.image_url,
                    (probe.size.width, probe.size.height),
                    &probe.size.format,
                    probe.bytes_read,
                    Some((job_id, attempt, job.upscale)),
                )?;
            }
            Err(reason) => {
                self.unprobeable.insert(job_id);
                self.ledger
                    .append(vec![Event::new(Some(job_id), Some(attempt), "estimate")
                        .detail(format!(
                            "the input size could not be read from {}: {reason}",
                            job.image_url
                        ))])?;
            }
        }
        self.send_cursor = self.send_cursor.min(job_id - 1);
        Ok(())
    }

    fn on_submit(
        &mut self,
        job_id: i64,
        attempt: i64,
        exchange: crate::gateway::Exchange<SubmitOutcome>,
    ) -> Result<(), EngineError> {
        let Some(job) = self.ledger.job(job_id)? else {
            return Ok(());
        };
        let estimate = job.estimated_cost.unwrap_or_default();
        let event = Event::new(Some(job_id), Some(attempt), "submit_answer")
            .http(exchange.http_status, exchange.latency_ms)
            .body(exchange.body.clone());
        let mut change = Change::default();
        let mut final_state = None;
        match &exchange.outcome {
            SubmitOutcome::Accepted {
                request_id, status, ..
            } => {
                self.reachable();
                self.note_success();
                // An undocumented status in the 202 is kept as said; the job is at the
                // gateway all the same, and its polls tell the rest.
                let remote = RemoteStatus::parse(status);
                change.state = Some(if remote == RemoteStatus::Processing {
                    JobState::Processing
                } else {
                    JobState::Queued
                });
                change.request_id = Some(request_id.clone());
                change.remote_status = Some(remote.as_str().to_string());
                let delay = self.next_poll_delay(&job, Duration::ZERO, 0);
                change.next_poll_at = Some(Some(now_ms() + delay.as_millis() as i64));
            }
            SubmitOutcome::Rejected { status, message } => {
                self.reachable();
                change.state = Some(JobState::Rejected);
                change.reason = Some(Some(format!(
                    "the gateway refused the submission (HTTP {status}): {message}"
                )));
                change.error = Some(Some(message.clone()));
                change.finished = true;
                self.spent -= estimate;
                final_state = Some(JobState::Rejected);
            }
            SubmitOutcome::Unauthorized { message } | SubmitOutcome::Forbidden { message } => {
                let code = if matches!(exchange.outcome, SubmitOutcome::Unauthorized { .. }) {
                    401
                } else {
                    403
                };
                change.state = Some(JobState::Planned);
                change.reason = Some(Some(format!("not sent: HTTP {code}")));
                self.spent -= estimate;
                self.send_cursor = self.send_cursor.min(job_id - 1);
                self.stop_with(StopReason::Unauthorized {
                    message: format!(
                        "the gateway refused the API key (HTTP {code}: {message}); set {} to a valid key (or pass --api-key-file) and run again",
                        crate::KEY_ENV
                    ),
                });
            }
            SubmitOutcome::InsufficientBalance { message } => {
                self.reachable();
                change.state = Some(JobState::Held);
                change.reason = Some(Some(format!("insufficient balance (HTTP 402): {message}")));
                self.spent -= estimate;
                self.passed.insert(job_id);
                self.stop_with(StopReason::InsufficientBalance {
                    message: message.clone(),
                });
            }
            SubmitOutcome::RateLimited { retry_after } => {
                self.reachable();
                change.state = Some(JobState::Planned);
                change.reason = Some(Some("not sent: HTTP 429, will be sent again".into()));
                self.spent -= estimate;
                self.send_cursor = self.send_cursor.min(job_id - 1);
                self.on_rate_limited(*retry_after)?;
            }
            SubmitOutcome::NotSent { reason } => {
                change.state = Some(JobState::Planned);
                change.reason = Some(Some(format!("not sent: {reason}")));
                self.spent -= estimate;
                self.send_cursor = self.send_cursor.min(job_id - 1);
                self.on_unreachable(reason);
            }
            SubmitOutcome::NotTheApi { answer } => {
                change.state = Some(JobState::Planned);
                change.reason = Some(Some(format!(
                    "not sent: the base URL does not lead to the API ({answer})"
                )));
                self.spent -= estimate;
                self.send_cursor = self.send_cursor.min(job_id - 1);
                let message = self.misconfigured(&format!("a submission got {answer}"),
                    "Nothing was created: the jobs not sent stay planned, and a run with the right URL sends each once.");
                self.stop_with(StopReason::Misconfigured { message });
            }
            SubmitOutcome::UnusableAcceptance { reason } => {
                change.state = Some(JobState::Uncertain);
                change.reason = Some(Some(format!(
                    "the gateway may have created this job, but {reason}; it may be billed, so it is not resent on its own (run --resubmit-uncertain)"
                )));
                final_state = Some(JobState::Uncertain);
                let message = self.misconfigured(&format!("the answer to a submission is unusable: {reason}"),
                    "That job is uncertain (it may exist and be billed); sending stopped there, and the jobs not sent stay planned.");
                self.stop_with(StopReason::Misconfigured { message });
            }
            SubmitOutcome::Unknown { reason } => {
                change.state = Some(JobState::Uncertain);
                change.reason = Some(Some(format!(
                    "the submission's outcome is unknown ({reason}); the job may exist and be billed, so it is not resent on its own (run --resubmit-uncertain)"
                )));
                final_state = Some(JobState::Uncertain);
            }
        }
        if let Some(state) = final_state {
            if state != JobState::Uncertain {
                change.post = Some(self.post_after(state));
            }
        }
        self.ledger.record(vec![(job_id, attempt, change, event)])?;
        if let SubmitOutcome::Accepted { request_id, .. } = &exchange.outcome {
            // A callback can beat the 202 to the ledger; it was kept as an orphan.
            self.ledger.adopt_orphans(request_id)?;
        }
        if final_state == Some(JobState::Rejected) {
            self.ledger.record_no_charge(
                job_id,
                attempt,
                "rejected submissions are not charged",
            )?;
        }
        Ok(())
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
        } else {
            self.schedule.next_delay(elapsed, polls)
        }
    }

    fn post_after(&self, state: JobState) -> Option<&'static str> {
        match &self.hooks {
            Some(h) if h.wants(state) => Some("hooks"),
            _ => None,
        }
    }

    fn poll_record(
        &mut self,
        job_id: i64,
        attempt: i64,
        exchange: crate::gateway::Exchange<PollOutcome>,
    ) -> Result<Option<PollItem>, EngineError> {
        self.summary.polls += 1;
        let Some(job) = self.ledger.job(job_id)? else {
            return Ok(None);
        };
        if job.attempt != attempt || !job.state.is_remote_pending() {
            // The job moved on meanwhile (a callback finished it); keep the answer on record.
            let event = Event::new(Some(job_id), Some(attempt), "poll")
                .http(exchange.http_status, exchange.latency_ms)
                .detail("answer after the job had already moved on")
                .body(exchange.body);
            return Ok(Some((job_id, attempt, Change::default(), event, None)));
        }
        let mut event = Event::new(Some(job_id), Some(attempt), "poll")
            .http(exchange.http_status, exchange.latency_ms)
            .body(exchange.body.clone());
        let mut change = Change {
            count_poll: true,
            expect: Some((job.state, attempt)),
            ..Change::default()
        };
        let mut final_state = None;
        let elapsed = job
            .submitted_at
            .as_deref()
            .and_then(clock::parse_remote)
            .map(|t| (clock::now() - t).to_std().unwrap_or_default())
            .unwrap_or_default();
        match exchange.outcome {
            PollOutcome::Status(remote) => {
                self.reachable();
                self.note_success();
                event.remote_status = Some(remote.status.as_str().to_string());
                change.remote_status = Some(remote.status.as_str().to_string());
                match JobState::for_remote(&remote.status) {
                    Some(state @ (JobState::Queued | JobState::Processing)) => {
                        self.failures.remove(&job_id);
                        change.state = Some(state);
                        let delay = self.next_poll_delay(&job, elapsed, job.polls as u32 + 1);
                        change.next_poll_at = Some(Some(now_ms() + delay.as_millis() as i64));
                    }
                    Some(JobState::Completed) => {
                        self.failures.remove(&job_id);
                        self.schedule.observe(elapsed);
                        change.state = Some(JobState::Completed);
                        change.output_urls = Some(remote.media_urls.clone());
                        change.post = Some(Some("download"));
                        change.next_poll_at = Some(Some(now_ms()));
                        change.finished = true;
                        final_state = Some(JobState::Completed);
                    }
                    Some(state) => {
                        self.failures.remove(&job_id);
                        change.state = Some(state);
                        change.error = Some(Some(remote.error.clone().unwrap_or_else(|| {
                            format!("the gateway reported {}", remote.status.as_str())
                        })));
                        change.next_poll_at = Some(None);
                        change.post = Some(self.post_after(state));
                        change.finished = true;
                        if state == JobState::Error {
                            self.spent -= job.estimated_cost.unwrap_or_default();
                        }
                        final_state = Some(state);
                    }
                    None => {
                        // Not finished, and not free: only a documented ERROR is. Polled
                        // again, less often, until it says something documented or the
                        // deadline stalls it.
                        event.detail = Some(format!(
                            "status {:?} is not one the API documents; the job stays {} and is polled again (it may be charged)",
                            remote.status.as_str(),
                            job.state
                        ));
                        let failures = self.failures.entry(job_id).or_insert(0);
                        *failures += 1;
                        let delay = backoff(
                            *failures,
                            self.schedule.min.max(Duration::from_millis(50)),
                            self.options.poll_interval.max(Duration::from_secs(30)),
                        );
                        change.next_poll_at = Some(Some(now_ms() + delay.as_millis() as i64));
                    }
                }
            }
            PollOutcome::RateLimited { retry_after } => {
                self.on_rate_limited(retry_after)?;
                let delay = retry_after
                    .unwrap_or(self.options.poll_interval)
                    .min(MAX_RATE_LIMIT_WAIT)
                    .max(self.schedule.min);
                change.next_poll_at = Some(Some(now_ms() + delay.as_millis() as i64));
            }
            PollOutcome::Unauthorized { status } => {
                change.next_poll_at = Some(Some(
                    now_ms() + self.options.poll_interval.as_millis() as i64,
                ));
                self.stop_with(StopReason::Unauthorized {
                    message: format!(
                        "the gateway refused the API key when polling (HTTP {status}); set {} to a valid key and run again",
                        crate::KEY_ENV
                    ),
                });
            }
            PollOutcome::NotTheApi { answer } => {
                event.detail = Some(format!("the base URL does not lead to the API: {answer}"));
                change.next_poll_at = Some(Some(
                    now_ms() + self.options.poll_interval.as_millis() as i64,
                ));
                let message = self.misconfigured(&format!("a status call got {answer}"),
                    "The jobs at the gateway are kept as they were and are polled by a run with the right URL.");
                self.stop_with(StopReason::Misconfigured { message });
            }
            PollOutcome::NotFound
            | PollOutcome::Transient { .. }
            | PollOutcome::Unreachable { .. }
            | PollOutcome::BadAnswer { .. } => {
                let reason = match &exchange.outcome {
                    PollOutcome::NotFound => {
                        "the gateway does not know this request id (HTTP 404)".to_string()
                    }
                    PollOutcome::Transient { reason } | PollOutcome::Unreachable { reason } => {
                        reason.clone()
                    }
                    PollOutcome::BadAnswer { reason } => format!("bad answer: {reason}"),
                    _ => String::new(),
                };
                if matches!(exchange.outcome, PollOutcome::Unreachable { .. }) {
                    self.on_unreachable(&reason);
                } else if exchange.http_status.is_some() {
                    self.reachable();
                }
                event.detail = Some(reason);
                let failures = self.failures.entry(job_id).or_insert(0);
                *failures += 1;
                let delay = backoff(
                    *failures,
                    self.schedule.min.max(Duration::from_millis(50)),
                    self.options.poll_interval.max(Duration::from_secs(30)),
                );
                change.next_poll_at = Some(Some(now_ms() + delay.as_millis() as i64));
            }
        }
        Ok(Some((job_id, attempt, change, event, final_state)))
    }

    fn commit_polls(&mut self, items: Vec<PollItem>) -> Result<(), EngineError> {
        let errors: Vec<(i64, i64)> = items
            .iter()
            .filter(|i| i.4 == Some(JobState::Error))
            .map(|i| (i.0, i.1))
            .collect();
        self.ledger.record(
            items
                .into_iter()
                .map(|(j, a, c, e, _)| (j, a, c, e))
                .collect(),
        )?;
        for (job_id, attempt) in errors {
            self.ledger
                .record_no_charge(job_id, attempt, "ERROR jobs are not charged")?;
        }
        Ok(())
    }

    fn on_download(
        &mut self,
        job_id: i64,
        attempt: i64,
        result: Result<Vec<crate::ledger::OutputRow>, String>,
    ) -> Result<(), EngineError> {
        let Some(job) = self.ledger.job(job_id)? else {
            return Ok(());
        };
        match result {
            Ok(files) => {
                self.summary.downloads += 1;
                let post = self.post_after(JobState::Completed);
                if let Some(charge) = self.ledger.record_download(job_id, attempt, &files, post)? {
                    self.spent += charge - job.estimated_cost.unwrap_or_default();
                    self.summary.charged += charge;
                }
            }
            Err(reason) => {
                let failures = self.failures.entry(job_id).or_insert(0);
                *failures += 1;
                let delay = backoff(
                    *failures,
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                );
                let item = (
                    job_id,
                    attempt,
                    Change {
                        next_poll_at: Some(Some(now_ms() + delay.as_millis() as i64)),
                        error: Some(Some(format!("download failed: {reason}"))),
                        ..Change::default()
                    },
                    Event::new(Some(job_id), Some(attempt), "download_failed").detail(reason),
                );
                self.ledger.record(vec![item])?;
                if *self.failures.get(&job_id).unwrap_or(&0) >= 5 {
                    // Keep the job owing its download for a later run, but stop trying now.
                    self.ledger.record(vec![(
                        job_id,
                        attempt,
                        Change {
                            next_poll_at: Some(None),
                            ..Change::default()
                        },
                        Event::new(Some(job_id), Some(attempt), "download_deferred")
                            .detail("5 downloads failed; `run` tries again"),
                    )])?;
                }
            }
        }
        Ok(())
    }

    // ---- control ----

    fn note_success(&mut self) {
        self.successes_since_429 += 1;
        if self.successes_since_429 >= 20 && self.limit < self.options.concurrency.max(1) {
            self.limit += 1;
            self.successes_since_429 = 0;
        }
    }

    /// A 429: fewer requests at once, and no sending until `Retry-After` (capped) has passed.
    /// A wait long enough to notice is recorded, and shown by the progress display.
    fn on_rate_limited(&mut self, retry_after: Option<Duration>) -> Result<(), EngineError> {
        self.successes_since_429 = 0;
        self.limit = (self.limit / 2).max(1);
        let pause = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(MAX_RATE_LIMIT_WAIT);
        let until = Instant::now() + pause;
        self.send_paused_until = Some(self.send_paused_until.map_or(until, |u| u.max(until)));
        let extends = self
            .rate_limited_until
            .is_none_or(|u| until > u + Duration::from_secs(1));
        self.rate_limited_until = Some(self.rate_limited_until.map_or(until, |u| u.max(until)));
        if pause >= Duration::from_secs(2) && extends {
            let asked = retry_after
                .map(|d| format!("Retry-After {} s", d.as_secs()))
                .unwrap_or_else(|| "no Retry-After".into());
            self.ledger
                .append(vec![Event::new(None, None, "rate_limited").detail(
                    format!(
                    "rate limited by the gateway: waiting {} s ({asked}; waits are capped at {} s)",
                    pause.as_secs(),
                    MAX_RATE_LIMIT_WAIT.as_secs()
                ),
                )])?;
        }
        Ok(())
    }

    fn reachable(&mut self) {
        self.unreachable = 0;
        self.unreachable_since = None;
    }

    /// A connection could not be made. After `max_unreachable` such failures in a row, spread
    /// over at least a few seconds (a burst of parallel requests failing at once is one
    /// outage, not many), the run gives up and leaves the rest for the next one.
    fn on_unreachable(&mut self, reason: &str) {
        self.unreachable += 1;
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        let pause = backoff(
            self.unreachable,
            Duration::from_millis(250),
            Duration::from_secs(5),
        );
        self.send_paused_until = Some(Instant::now() + pause);
        if self.unreachable >= self.options.max_unreachable
            && since.elapsed() >= Duration::from_secs(2)
        {
            self.stop_with(StopReason::Unreachable {
                message: format!(
                    "the gateway at {} cannot be reached ({reason}); unsent jobs stay planned and the next `run` sends them",
                    self.gateway.config().base_url
                ),
            });
        }
    }

    fn stop_with(&mut self, reason: StopReason) {
        self.sending = false;
        // A refused key or a gone gateway fails every request alike: stop once what is in
        // flight returns. A budget or an empty wallet only stops sending; the jobs already at
        // the gateway are still polled and downloaded to the end.
        if matches!(
            reason,
            StopReason::Unauthorized { .. }
                | StopReason::Unreachable { .. }
                | StopReason::Misconfigured { .. }
                | StopReason::Interrupted
        ) {
            self.halted = true;
        }
        if self.stop.is_none() {
            self.stop = Some(reason);
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
        let overdue = self.ledger.overdue(&clock::stamp(cutoff), self.scope())?;
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
            let (id, attempt, mut change, event) =
                self.state_change(&job, JobState::Stalled, &reason);
            change.next_poll_at = Some(None);
            change.finished = true;
            change.post = Some(self.post_after(JobState::Stalled));
            items.push((id, attempt, change, event));
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
        });
        Ok(())
    }

    /// After a 402, the jobs still planned are held with the reason, as a budget cap holds them.
    fn hold_unsent_after_402(&mut self) -> Result<(), EngineError> {
        let reason = "insufficient balance (HTTP 402) on an earlier job: not sent; top up the wallet, then `run` again";
        // A page at a time: the jobs not yet sent may be most of a large ledger.
        let mut after = 0;
        loop {
            let page = self.ledger.sendable(self.scope(), after, 512)?;
            let Some(last) = page.last().map(|j| j.id) else {
                return Ok(());
            };
            let items: Vec<_> = page
                .iter()
                .filter(|j| j.state == JobState::Planned && !self.passed.contains(&j.id))
                .map(|j| self.state_change(j, JobState::Held, reason))
                .collect();
            if !items.is_empty() {
                self.ledger.record(items)?;
            }
            after = last;
        }
    }

    fn finish(mut self) -> Result<RunSummary, EngineError> {
        if matches!(self.stop, Some(StopReason::InsufficientBalance { .. })) {
            self.hold_unsent_after_402()?;
        }
        if let (Some(hooks), Some(batch)) = (self.hooks.as_mut(), self.options.batch.as_deref()) {
            if self.ledger.unfinished(Some(batch))? == 0 && self.stop.is_none() {
                hooks.batch_done(self.ledger, batch)?;
            }
        }
        if self.stop.is_none() && self.options.budget.is_some() {
            // Summed in SQL: the held jobs may be most of a large ledger.
            let (held, rest, _) = self.ledger.held_estimates(self.scope())?;
            if held > 0 {
                let budget = self.options.budget.unwrap_or_default();
                let committed = self.ledger.committed_spend(self.scope())?;
                self.stop = Some(StopReason::Budget {
                    needed: (committed + rest - budget).max(Decimal::ZERO),
                });
            }
        }
        if self.stop.is_none() && !self.options.batch_budgets.is_empty() {
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
            if held_any {
                self.stop = Some(StopReason::Budget { needed });
            }
        }
        self.summary.counts = self.ledger.count_by_state(self.scope())?;
        self.summary.hook_blocked = self.hook_blocked;
        self.summary.failed_hooks = self.ledger.failed_hook_count(self.scope())?;
        self.summary.owing_downloads = self.ledger.owing_downloads(self.scope())?;
        if self.hooks.is_none() {
            self.summary.owing_hooks = self.ledger.owing_hooks_by_batch(self.scope())?;
        }
        self.summary.stop = self.stop.clone();
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
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
