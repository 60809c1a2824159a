//! Jobs on the gateway side: the table of jobs, their timeline, the wallet, and the threads
//! that move them.
//!
//! A job is QUEUED for `queue_ms`, then PROCESSING for its seeded processing time, then final.
//! The scheduler thread owns every status change (so callbacks leave at the moment of the
//! transition); renderer threads fetch the input and write the output while the job is
//! PROCESSING, and a job whose work outlasts its processing time stays PROCESSING until the work
//! is done. The final status is decided by the work (an input that cannot be fetched or decoded
//! fails the job) and by the seeded `fail_rate`/`error_rate`, drawn when the job is created.
//!
//! Money: only COMPLETED jobs are charged, at the price of their actual output size, and the
//! charge leaves the wallet when the job completes. With a limited wallet, a submission
//! reserves its estimated cost until its job is final, so that jobs in flight cannot spend
//! the same balance twice.

use super::faults::{self, Stream};
use super::protocol::{self, ApiError, Status, StatusView, Submission, WebhookMode};
use super::render::{self, Content, InputInfo};
use super::webhooks::Callback;
use super::Shared;
use crate::clock;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The `error` text of a job that `fail_rate` made fail.
pub const INJECTED_FAILURE: &str =
    "Face restoration failed: the model could not process this image";
/// The `error` text of a job that `error_rate` made end in ERROR.
pub const INJECTED_ERROR: &str = "Internal server error while processing the request";

/// The balance, and what jobs in flight have reserved of it.
pub struct Wallet {
    balance: Option<Decimal>,
    reserved: Decimal,
}

impl Wallet {
    pub fn new(balance: Option<Decimal>) -> Self {
        Wallet {
            balance,
            reserved: Decimal::ZERO,
        }
    }

    pub fn balance(&self) -> Option<Decimal> {
        self.balance
    }

    pub fn add(&mut self, usd: Decimal) {
        if let Some(balance) = &mut self.balance {
            *balance += usd;
        }
    }

    /// Reserves `cost` (unknown: nothing) if what is left after the other reservations covers
    /// it and is positive.
    fn reserve(&mut self, cost: Option<Decimal>) -> Result<Decimal, ApiError> {
        let Some(balance) = self.balance else {
            return Ok(Decimal::ZERO);
        };
        let available = balance - self.reserved;
        let cost = cost.unwrap_or(Decimal::ZERO);
        if available <= Decimal::ZERO || cost > available {
            return Err(ApiError::insufficient_balance());
        }
        self.reserved += cost;
        Ok(cost)
    }

    fn settle(&mut self, reserved: Decimal, charge: Option<Decimal>) {
        self.reserved -= reserved;
        if let (Some(balance), Some(charge)) = (&mut self.balance, charge) {
            *balance -= charge;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planned {
    Complete,
    Fail,
    Error,
}

/// Where a job's callbacks go, and at which statuses.
struct Target {
    url: String,
    on_processing: bool,
    on_final: bool,
}

struct Job {
    image: String,
    upscale: u32,
    status: Status,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    planned: Planned,
    processing: Duration,
    /// When PROCESSING may end at the earliest.
    processing_until: Option<Instant>,
    reserved: Decimal,
    /// The renderer's result: the output size, or why the input could not be used. `None`
    /// until it is done, and for jobs planned to fail, which skip the work.
    work: Option<Result<(u32, u32), String>>,
    targets: Vec<Target>,
}

impl Job {
    fn view<'a>(&'a self, request_id: &'a str) -> StatusView<'a> {
        StatusView {
            request_id,
            status: self.status,
            error: self.error.as_deref(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Start,
    Finish,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Job>,
    /// Steps due, earliest first; the counter keeps equal instants in order of scheduling.
    timeline: BinaryHeap<Reverse<(Instant, u64, Step, String)>>,
    scheduled: u64,
    render_queue: VecDeque<String>,
    submitted: u64,
}

impl Jobs {
    fn schedule(&mut self, due: Instant, step: Step, id: &str) {
        self.scheduled += 1;
        self.timeline
            .push(Reverse((due, self.scheduled, step, id.to_string())));
    }
}

/// Every job of the sandbox, with the condition variables its threads wait on.
#[derive(Default)]
pub struct JobTable {
    state: Mutex<Jobs>,
    timeline_changed: Condvar,
    render_ready: Condvar,
}

impl JobTable {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.state.lock().unwrap()
    }

    /// Wakes every waiting thread so that it sees the stop flag. Taking the lock first makes
    /// sure no thread is between checking the flag and starting to wait.
    pub fn wake_all(&self) {
        let _jobs = self.lock();
        self.timeline_changed.notify_all();
        self.render_ready.notify_all();
    }
}

/// Creates a job for a valid submission, or refuses it with 402.
pub fn submit(shared: &Shared, submission: Submission) -> Result<String, ApiError> {
    let reserved = reserve(shared, &submission)?;
    let now = clock::now();
    let id = protocol::new_request_id(now);
    let config = &shared.config;
    let mut jobs = shared.jobs.lock();
    let seq = jobs.submitted;
    jobs.submitted += 1;
    let job = Job {
        targets: targets(&submission),
        image: submission.image,
        upscale: submission.upscale,
        status: Status::Queued,
        error: None,
        created_at: now,
        updated_at: now,
        completed_at: None,
        planned: planned(config.seed, seq, config.fail_rate, config.error_rate),
        processing: processing_time(config.seed, seq, config.processing_ms),
        processing_until: None,
        reserved,
        work: None,
    };
    jobs.by_id.insert(id.clone(), job);
    let due = Instant::now() + Duration::from_millis(config.queue_ms);
    jobs.schedule(due, Step::Start, &id);
    drop(jobs);
    shared.jobs.timeline_changed.notify_one();
    Ok(id)
}

/// The status document of a job, `None` if there is no such job.
pub fn status_document(shared: &Shared, request_id: &str) -> Option<serde_json::Value> {
    let jobs = shared.jobs.lock();
    let job = jobs.by_id.get(request_id)?;
    Some(protocol::status_json(
        &shared.base_url,
        &job.view(request_id),
    ))
}

/// The output file of a COMPLETED job.
pub fn output_file(shared: &Shared, request_id: &str) -> Option<PathBuf> {
    let jobs = shared.jobs.lock();
    let job = jobs.by_id.get(request_id)?;
    (job.status == Status::Completed).then(|| output_path(shared, request_id))
}

fn output_path(shared: &Shared, request_id: &str) -> PathBuf {
    shared.output_dir.join(format!("{request_id}.png"))
}

fn reserve(shared: &Shared, submission: &Submission) -> Result<Decimal, ApiError> {
    if shared.wallet.lock().unwrap().balance().is_none() {
        return Ok(Decimal::ZERO);
    }
    // Outside the wallet's lock: this reads the input's header over the network.
    let cost = estimate_cost(shared, &submission.image, submission.upscale);
    shared.wallet.lock().unwrap().reserve(cost)
}

/// The price of the job's output; `None` when the input cannot be read (the job will fail,
/// and failed jobs cost nothing).
fn estimate_cost(shared: &Shared, image: &str, upscale: u32) -> Option<Decimal> {
    // This runs in an HTTP worker: fetching one of our own static files over HTTP would need
    // a second worker, and with every worker in a submit the pool would wait on itself.
    let info = match own_static_file(shared, image) {
        Some(path) => read_local_info(shared, &path).ok()?,
        None => fetch_info(shared, image).ok()?,
    };
    let upscale = upscale as u128;
    let pixels = (info.width as u128 * upscale).checked_mul(info.height as u128 * upscale);
    Some(pixels.and_then(render::price).unwrap_or(Decimal::MAX))
}

fn planned(seed: u64, seq: u64, fail_rate: f64, error_rate: f64) -> Planned {
    let roll = faults::dice(seed, Stream::Outcome, seq).f64();
    if roll < fail_rate {
        Planned::Fail
    } else if roll < fail_rate + error_rate {
        Planned::Error
    } else {
        Planned::Complete
    }
}

fn processing_time(seed: u64, seq: u64, (min, max): (u64, u64)) -> Duration {
    let ms = faults::dice(seed, Stream::ProcessingTime, seq).u64(min..=max);
    Duration::from_millis(ms)
}

fn targets(submission: &Submission) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some((url, mode)) = &submission.webhook_header {
        // Sync calls back at every status change after the submission, plus the final one.
        // Not at QUEUED: that callback would leave before the 202 answer and reach the client
        // before it even knows the request id.
        targets.push(Target {
            url: url.clone(),
            on_processing: *mode == WebhookMode::Sync,
            on_final: true,
        });
    }
    if let Some(url) = &submission.webhook {
        // Without a filter the body webhook hears about completion only. With one, "start"
        // is the move to PROCESSING and "output"/"completed" the final status; "logs" has no
        // counterpart here.
        let filter = submission
            .webhook_events_filter
            .as_deref()
            .filter(|f| !f.is_empty());
        let (on_processing, on_final) = match filter {
            None => (false, true),
            Some(events) => (
                events.iter().any(|e| e == "start"),
                events.iter().any(|e| e == "completed" || e == "output"),
            ),
        };
        targets.push(Target {
            url: url.clone(),
            on_processing,
            on_final,
        });
    }
    targets
}

fn callbacks(
    shared: &Shared,
    request_id: &str,
    job: &Job,
    wanted: impl Fn(&Target) -> bool,
) -> Vec<Callback> {
    let urls: Vec<&str> = job
        .targets
        .iter()
        .filter(|t| wanted(t))
        .map(|t| t.url.as_str())
        .collect();
    if urls.is_empty() {
        return Vec::new();
    }
    let body = protocol::status_json(&shared.base_url, &job.view(request_id)).to_string();
    urls.into_iter()
        .map(|url| Callback {
            url: url.to_string(),
            body: body.clone(),
        })
        .collect()
}

/// The scheduler thread: applies every step when it is due.
pub fn run_scheduler(shared: &Shared) {
    let table = &shared.jobs;
    let mut jobs = table.lock();
    loop {
        if shared.stopping() {
            return;
        }
        let now = Instant::now();
        let next_due = jobs.timeline.peek().map(|Reverse((due, ..))| *due);
        match next_due {
            Some(due) if due <= now => {
                let Some(Reverse((_, _, step, id))) = jobs.timeline.pop() else {
                    continue;
                };
                let sent = match step {
                    Step::Start => start_processing(shared, &mut jobs, &id),
                    Step::Finish => finish(shared, &mut jobs, &id),
                };
                drop(jobs);
                shared.webhooks.push_all(sent);
                jobs = table.lock();
            }
            Some(due) => {
                jobs = table
                    .timeline_changed
                    .wait_timeout(jobs, due - now)
                    .unwrap()
                    .0
            }
            None => jobs = table.timeline_changed.wait(jobs).unwrap(),
        }
    }
}

fn start_processing(shared: &Shared, jobs: &mut Jobs, id: &str) -> Vec<Callback> {
    let Some(job) = jobs.by_id.get_mut(id) else {
        return Vec::new();
    };
    job.status = Status::Processing;
    job.updated_at = clock::now();
    job.processing_until = Some(Instant::now() + job.processing);
    let sent = callbacks(shared, id, job, |t| t.on_processing);
    jobs.render_queue.push_back(id.to_string());
    shared.jobs.render_ready.notify_one();
    sent
}

fn finish(shared: &Shared, jobs: &mut Jobs, id: &str) -> Vec<Callback> {
    let Some(job) = jobs.by_id.get_mut(id) else {
        return Vec::new();
    };
    let (status, error, size) = match (job.work.take(), job.planned) {
        (Some(Err(reason)), _) => (Status::Failed, Some(reason), None),
        (_, Planned::Fail) => (Status::Failed, Some(INJECTED_FAILURE.to_string()), None),
        (_, Planned::Error) => (Status::Error, Some(INJECTED_ERROR.to_string()), None),
        (Some(Ok(size)), Planned::Complete) => (Status::Completed, None, Some(size)),
        (None, Planned::Complete) => (Status::Error, Some(INJECTED_ERROR.to_string()), None),
    };
    let now = clock::now();
    job.status = status;
    job.error = error;
    job.updated_at = now;
    job.completed_at = Some(now);
    let charge = size.and_then(|(w, h)| render::price(w as u128 * h as u128));
    shared.wallet.lock().unwrap().settle(job.reserved, charge);
    job.reserved = Decimal::ZERO;
    {
        let mut counters = shared.stats.lock().unwrap();
        match status {
            Status::Completed => counters.stats.completed += 1,
            Status::Failed => counters.stats.failed += 1,
            _ => counters.stats.errored += 1,
        }
        if let Some(charge) = charge {
            counters.charge(id, charge);
        }
    }
    callbacks(shared, id, job, |t| t.on_final)
}

/// What a renderer needs of a job.
struct Task {
    id: String,
    image: String,
    upscale: u32,
    planned: Planned,
}

/// A renderer thread: does the work of jobs that started PROCESSING.
pub fn run_renderer(shared: &Shared) {
    while let Some(task) = next_task(shared) {
        let work = match task.planned {
            Planned::Complete => Some(produce(shared, &task)),
            Planned::Fail | Planned::Error => None,
        };
        let mut jobs = shared.jobs.lock();
        let Some(job) = jobs.by_id.get_mut(&task.id) else {
            continue;
        };
        job.work = work;
        let due = job.processing_until.unwrap_or_else(Instant::now);
        jobs.schedule(due.max(Instant::now()), Step::Finish, &task.id);
        drop(jobs);
        shared.jobs.timeline_changed.notify_one();
    }
}

fn next_task(shared: &Shared) -> Option<Task> {
    let mut jobs = shared.jobs.lock();
    loop {
        if shared.stopping() {
            return None;
        }
        if let Some(id) = jobs.render_queue.pop_front() {
            if let Some(job) = jobs.by_id.get(&id) {
                return Some(Task {
                    image: job.image.clone(),
                    upscale: job.upscale,
                    planned: job.planned,
                    id,
                });
            }
            continue;
        }
        jobs = shared.jobs.render_ready.wait(jobs).unwrap();
    }
}

/// Fetches the input and writes the output; the output size, or why the job fails.
fn produce(shared: &Shared, task: &Task) -> Result<(u32, u32), String> {
    let (size, content) = if shared.config.render {
        let bytes = fetch(shared, &task.image, None)?.bytes;
        let size = render::output_size(render::input_info(&bytes)?, task.upscale)?;
        let content = if size.0 as u64 * size.1 as u64 <= render::RENDER_MAX_OUTPUT_PIXELS {
            render::decode(&bytes)?
        } else {
            Content::Flat
        };
        (size, content)
    } else {
        let info = fetch_info(shared, &task.image)?;
        (render::output_size(info, task.upscale)?, Content::Flat)
    };
    let dest = output_path(shared, &task.id);
    render::write_output(&dest, &content, size, task.upscale, &shared.stop)?;
    Ok(size)
}

/// The input's dimensions from its first bytes, or from all of them if the header is longer.
fn fetch_info(shared: &Shared, url: &str) -> Result<InputInfo, String> {
    let head = fetch(shared, url, Some(render::HEADER_BYTES))?;
    match render::input_info(&head.bytes) {
        Ok(info) => Ok(info),
        Err(_) if !head.complete => render::input_info(&fetch(shared, url, None)?.bytes),
        Err(e) => Err(e),
    }
}

/// The file behind a URL of this sandbox's own static directory.
fn own_static_file(shared: &Shared, url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix(&shared.base_url)?
        .strip_prefix("/static/")?;
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let root = shared.config.static_dir.as_deref()?;
    super::paths::resolve_static(root, rest).map(|(path, _)| path)
}

fn read_local_info(shared: &Shared, path: &std::path::Path) -> Result<InputInfo, String> {
    use std::io::Read;
    let mut head = Vec::new();
    let file =
        std::fs::File::open(path).map_err(|e| format!("could not read the input image: {e}"))?;
    file.take(render::MAX_INPUT_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| format!("could not read the input image: {e}"))?;
    let mut counters = shared.stats.lock().unwrap();
    counters.stats.input_fetches += 1;
    counters.stats.input_bytes_fetched += head.len() as u64;
    drop(counters);
    render::input_info(&head)
}

fn fetch(shared: &Shared, url: &str, prefix: Option<u64>) -> Result<render::Fetched, String> {
    let result = shared.fetcher.get(url, prefix);
    let mut counters = shared.stats.lock().unwrap();
    counters.stats.input_fetches += 1;
    if let Ok(fetched) = &result {
        counters.stats.input_bytes_fetched += fetched.bytes.len() as u64;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallet_reserves_for_jobs_in_flight() {
        let mut wallet = Wallet::new(Some(Decimal::new(10, 3))); // 0.010
        let cost = Some(Decimal::new(84, 4)); // 0.0084
        let first = wallet.reserve(cost).unwrap();
        assert_eq!(wallet.reserve(cost).unwrap_err().status, 402);
        wallet.settle(first, cost);
        assert_eq!(wallet.balance(), Some(Decimal::new(16, 4)));
        wallet.add(Decimal::ONE);
        assert!(wallet.reserve(cost).is_ok());
        let mut empty = Wallet::new(Some(Decimal::ZERO));
        assert_eq!(empty.reserve(None).unwrap_err().status, 402);
        let mut unlimited = Wallet::new(None);
        assert_eq!(
            unlimited.reserve(Some(Decimal::MAX)).unwrap(),
            Decimal::ZERO
        );
    }

    #[test]
    fn outcomes_follow_the_rates_and_the_seed() {
        assert_eq!(planned(1, 0, 1.0, 0.0), Planned::Fail);
        assert_eq!(planned(1, 0, 0.0, 1.0), Planned::Error);
        assert_eq!(planned(1, 0, 0.0, 0.0), Planned::Complete);
        let run = |seed| {
            (0..50)
                .map(|i| planned(seed, i, 0.3, 0.3))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let t = processing_time(3, 9, (10, 20));
        assert!((10..=20).contains(&(t.as_millis() as u64)));
    }
}
