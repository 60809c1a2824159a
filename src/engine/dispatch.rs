//! Dispatching: which due jobs are polled or downloaded, which planned jobs are probed,
//! judged by `on_submit` hooks, held by a cap, or sent, each pass bounded by the requests
//! allowed in flight.

use super::answers::{at, elapsed_since_sent};
use super::control::{InFlight, Pass};
use super::schedule;
use super::worker::{Task, Workers};
use super::{
    now_ms, render_name, Engine, EngineError, StopReason, SubmitVerdict, DEFAULT_NAME_PATTERN,
};
use crate::clock;
use crate::gateway::{Gateway, Ticket};
use crate::ledger::{Change, Event, Field, JobRow, JobState, JobUpdate, ProbedJob, SubmitRecord};
use crate::lifecycle::{self, Learned};
use crate::money;
use crate::params::JobParams;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Due jobs read beyond the room in flight, so that a short budget can pick among them (more
/// when the budget is what limits: a request is worth reading a few hundred rows).
const DUE_LOOKAHEAD: usize = 64;
const DUE_LOOKAHEAD_SHORT: usize = 1024;
/// A due poll this many poll intervals overdue goes before waiting submissions, whatever
/// else says.
const STARVED: u32 = 2;
/// How often the durations estimate learns which jobs are still running.
const ESTIMATE_EVERY: Duration = Duration::from_millis(250);

/// The callback URL one attempt is sent with: a URL ending in `/callback/TOKEN` (the path
/// `listen` serves) gets the attempt's own path `/callback/TOKEN/a/<job>-<attempt>`, so that a
/// callback names the attempt it is for even when the submission's answer was lost. Any
/// other URL is sent as given.
pub(super) fn attempt_callback_url(url: &str, job_id: i64, attempt: i64) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let (base, tail) = url.split_at(cut);
    let Some(at) = base.rfind(crate::webhooks::CALLBACK_PREFIX) else {
        return url.to_string();
    };
    let token = &base[at + crate::webhooks::CALLBACK_PREFIX.len()..];
    if token.is_empty() || token.contains('/') || !base[..at].contains("://") {
        return url.to_string();
    }
    let path = crate::ledger::CallbackPath { job_id, attempt };
    format!("{base}/{}{tail}", path.suffix())
}

/// A job a cap cannot cover, with its estimate and the reason it is held.
pub(super) struct Hold {
    pub(super) job: JobRow,
    pub(super) estimate: Option<Decimal>,
    pub(super) reason: String,
}

/// What one pass over the sendable jobs gathers before anything is written.
#[derive(Default)]
struct Sends {
    intents: Vec<(SubmitRecord, JobRow, JobParams, Ticket)>,
    /// A token of the request budget taken for the next job of the pass.
    spare: Option<Ticket>,
    to_hold: Vec<Hold>,
    /// A probe was handed to a worker.
    probed: bool,
    /// The cursor goes back here after the pass (a size was found in the cache).
    rewind: Option<i64>,
    /// Committed spend of each capped batch met in this pass, plus what this pass adds: the
    /// ledger's sum already counts what earlier passes sent.
    batch_spent: HashMap<String, Decimal>,
    /// The price in force, read for the pass's first intent.
    price: Option<Decimal>,
}

impl<'a> Engine<'a> {
    pub(super) fn dispatch(&mut self, workers: &Workers) -> Result<Pass, EngineError> {
        if self.mode.is_halted() {
            return Ok(Pass::default());
        }
        // Only a job that can be sent now waits for a token (not one held or draining).
        self.sends_waiting &= self.mode.may_send();
        let dispatched = self.dispatch_due(workers)?;
        let mut pass = Pass::default();
        if self.can_send() {
            pass = self.dispatch_sends(workers)?;
        }
        pass.dispatched |= dispatched;
        Ok(pass)
    }

    /// Polls and downloads that are due, as many as there is room for. Downloads go first
    /// (they draw nothing from the request budget); polls in the order a short budget serves
    /// them, each with a token of it, and a poll the learned schedule says is too early is
    /// moved to its time instead.
    fn dispatch_due(&mut self, workers: &Workers) -> Result<bool, EngineError> {
        let free = self.limit.saturating_sub(self.in_flight.len());
        if free == 0 {
            return Ok(false);
        }
        let lookahead = match self.gateway.budget().limiting_rate() {
            Some(_) => DUE_LOOKAHEAD_SHORT,
            None => DUE_LOOKAHEAD,
        };
        let due = self.ledger.due(
            self.scope(),
            now_ms(),
            free + self.in_flight.len() + lookahead,
        )?;
        let mut dispatched = false;
        let mut polls = Vec::new();
        for job in due {
            if self.in_flight.len() >= self.limit {
                break;
            }
            if self.in_flight.contains_key(&job.id) {
                continue;
            }
            if !at(&job).owes_download && wants_status_call(&job) {
                polls.push(job);
            } else {
                dispatched |= self.dispatch_one_due(&job, workers)?;
            }
        }
        Ok(self.dispatch_polls(polls, workers)? || dispatched)
    }

    fn dispatch_polls(
        &mut self,
        polls: Vec<JobRow>,
        workers: &Workers,
    ) -> Result<bool, EngineError> {
        let now = now_ms();
        let keys: Vec<schedule::DuePoll> = polls
            .iter()
            .map(|j| schedule::DuePoll {
                elapsed: elapsed_since_sent(j),
                last: self.last_polled.get(&(j.id, j.attempt)).copied(),
                due_at: j.next_poll_at.unwrap_or(now),
            })
            .collect();
        let rate = self.gateway.budget().limiting_rate();
        if self.last_estimate.elapsed() >= ESTIMATE_EVERY {
            self.last_estimate = std::time::Instant::now();
            self.schedule
                .still_running(self.last_polled.values().copied());
        }
        let mut deferred = Vec::new();
        let mut dispatched = false;
        for i in schedule::poll_order(&self.schedule, &keys) {
            let job = &polls[i];
            if self.in_flight.len() >= self.limit {
                break;
            }
            if let Some(wait) = self.too_early(job, keys[i].elapsed) {
                deferred.push((job.id, now + wait.as_millis() as i64));
                continue;
            }
            let sends_wait = rate.is_some() && self.sends_waiting;
            if let Some(rate) = rate.filter(|_| sends_wait) {
                if !self.poll_goes_first(&keys[i], now, rate) {
                    // It waits with the submissions.
                    continue;
                }
            }
            if !schedule::poll_next(self.polls_since_send, true, sends_wait) {
                break;
            }
            let ticket = match self.gateway.budget().try_take() {
                Ok(ticket) => ticket,
                Err(wait) => {
                    self.token_wait = Some(wait);
                    break;
                }
            };
            let Some(request_id) = job.request_id.clone() else {
                continue;
            };
            self.in_flight.insert(job.id, InFlight::Poll);
            self.polls_since_send = self.polls_since_send.saturating_add(1);
            workers.send(job.id, job.attempt, Task::Poll { request_id, ticket });
            dispatched = true;
        }
        self.ledger.defer_polls(&deferred)?;
        Ok(dispatched)
    }

    /// Whether a due poll goes before the submissions that wait for a short budget (`rate`
    /// requests a second; see `schedule::polls_first`): when polls come first and its job is
    /// likely done (which takes a few completions to tell) or it is a poll interval overdue;
    /// and in any case once it is [`STARVED`] poll intervals overdue.
    fn poll_goes_first(&self, poll: &schedule::DuePoll, now: i64, rate: f64) -> bool {
        let overdue = Duration::from_millis((now - poll.due_at).max(0) as u64);
        if overdue >= self.options.poll_interval * STARVED {
            return true;
        }
        let long = self.schedule.long_job();
        if !long.is_some_and(|long| schedule::polls_first(self.at_gateway, rate, long)) {
            return false;
        }
        let likely = self.schedule.learned()
            && self.schedule.p_done(poll.elapsed, poll.last) >= schedule::LIKELY;
        likely || overdue >= self.options.poll_interval
    }

    /// How much later a due poll should come, when the learned schedule says it is too early:
    /// a job never polled waits for its first poll, any job for the low quantile. Jobs that
    /// expect callbacks keep their fallback polls.
    fn too_early(&self, job: &JobRow, elapsed: Duration) -> Option<Duration> {
        if job.expects_callbacks {
            return None;
        }
        let target = if job.polls == 0 {
            self.schedule.first_poll()?
        } else {
            self.schedule.not_before()?
        };
        let wait = target.checked_sub(elapsed)?;
        (wait > Duration::from_millis(50)).then_some(wait)
    }

    fn dispatch_one_due(&mut self, job: &JobRow, workers: &Workers) -> Result<bool, EngineError> {
        if at(job).owes_download {
            self.in_flight.insert(job.id, InFlight::Download);
            let task = self.download_task(job)?;
            workers.send(job.id, job.attempt, task);
            return Ok(true);
        }
        if job.state.is_remote_pending() {
            // No request id: nothing can be polled.
            return Ok(false);
        }
        // Nothing to poll any more (a callback or another process finished it).
        self.ledger.record(vec![JobUpdate::new(
            job.id,
            job.attempt,
            Change {
                next_poll_at: Field::Clear,
                ..Change::default()
            },
            Event::new(Some(job.id), Some(job.attempt), "unscheduled")
                .detail(format!("no poll needed in state {}", job.state)),
        )])?;
        Ok(false)
    }

    fn download_task(&self, job: &JobRow) -> Result<Task, EngineError> {
        let (dir, name) = self.output_place(job)?;
        Ok(Task::Download {
            urls: job.output_urls.clone(),
            dir,
            name,
        })
    }

    /// Where a job's outputs go: the batch's (or the run's) output folder and a name from the
    /// pattern. A local input is named after its file's stem and placed at its path below the
    /// input folder, so a folder's outputs mirror its tree; with the default pattern its name
    /// is the stem alone.
    pub(super) fn output_place(&self, job: &JobRow) -> Result<(PathBuf, String), EngineError> {
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
        let relative = Path::new(&upload.relative_path);
        if let Some(parent) = relative.parent() {
            for part in parent.components() {
                if let Component::Normal(part) = part {
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

    /// The one place a job's stored input becomes what is sent: an object locator
    /// (`s3://BUCKET/KEY`, a local file) turns into a presigned GET URL signed now, so every
    /// send, a resend too, gets a fresh one; any other image is sent as recorded. `None` when
    /// the job cannot be sent in this run: its object is not known to be in the bucket (the
    /// upload before the run failed or never happened) or no bucket is configured. The
    /// recorded submission body keeps the locator, never a signed URL.
    pub(super) fn params_to_send(
        &mut self,
        job: &JobRow,
    ) -> Result<Option<JobParams>, EngineError> {
        let mut params = job.params();
        if let Some(url) = &params.webhook_url {
            params.webhook_url = Some(attempt_callback_url(url, job.id, job.attempt));
        }
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

    /// One pass over the sendable jobs after the cursor: each is probed for its size, judged
    /// by the hooks, held by a cap, or sent.
    fn dispatch_sends(&mut self, workers: &Workers) -> Result<Pass, EngineError> {
        let free = self.limit.saturating_sub(self.in_flight.len());
        let candidates = self
            .ledger
            .sendable(self.scope(), self.send_cursor, free * 2 + 8)?;
        if candidates.is_empty() {
            self.sends_waiting = false;
            return Ok(Pass::default());
        }
        self.sends_waiting = false;
        let mut sends = Sends::default();
        for job in candidates {
            if sends.intents.len() + self.in_flight.len() >= self.limit {
                break;
            }
            if self.in_flight.contains_key(&job.id) || self.passed.contains(&job.id) {
                self.send_cursor = self.send_cursor.max(job.id);
                continue;
            }
            if sends.spare.is_none() {
                match self.gateway.budget().try_take() {
                    Ok(ticket) => sends.spare = Some(ticket),
                    Err(wait) => {
                        // A job waits for a token: the next polls leave room for it.
                        self.token_wait = Some(wait);
                        self.sends_waiting = true;
                        break;
                    }
                }
            }
            self.send_cursor = self.send_cursor.max(job.id);
            if self.probe_first(&job, workers, &mut sends)? {
                continue;
            }
            let Some(job) = self.judge(job)? else {
                continue;
            };
            let Some(params) = self.params_to_send(&job)? else {
                self.passed.insert(job.id);
                continue;
            };
            self.send_or_hold(job, params, &mut sends)?;
        }
        if let Some(rewind) = sends.rewind {
            self.send_cursor = self.send_cursor.min(rewind);
        }
        if let Some(ticket) = sends.spare.take() {
            self.gateway.budget().give_back(ticket);
        }
        let held_only = !sends.to_hold.is_empty() && sends.intents.is_empty();
        self.hold(std::mem::take(&mut sends.to_hold))?;
        let sent = self.send(sends.intents, workers)?;
        Ok(Pass {
            dispatched: sends.probed || sent,
            held_only,
        })
    }

    /// A job whose size is unknown gets it from the cache, or is probed first; `true` when
    /// it is not to be sent in this pass.
    fn probe_first(
        &mut self,
        job: &JobRow,
        workers: &Workers,
        sends: &mut Sends,
    ) -> Result<bool, EngineError> {
        if job.input_size().is_some() || self.unprobeable.contains(&job.id) {
            return Ok(false);
        }
        if let Some(size) = self.ledger.cached_size(&job.image_url)? {
            self.ledger.record_probe(
                &job.image_url,
                size,
                "cached",
                0,
                Some(ProbedJob {
                    job_id: job.id,
                    attempt: job.attempt,
                    upscale: job.upscale,
                }),
            )?;
            // Come back to it on the next pass, after later jobs moved the cursor.
            sends.rewind.get_or_insert(job.id - 1);
            return Ok(true);
        }
        self.in_flight.insert(job.id, InFlight::Probe);
        workers.send(
            job.id,
            job.attempt,
            Task::Probe {
                url: job.image_url.clone(),
            },
        );
        sends.probed = true;
        Ok(true)
    }

    /// The run's cap, then the job's batch's cap: a job either fits both and is to be sent,
    /// or is held with the reason.
    fn send_or_hold(
        &mut self,
        job: JobRow,
        params: JobParams,
        sends: &mut Sends,
    ) -> Result<(), EngineError> {
        let price = *sends.price.get_or_insert_with(|| self.price_now());
        let record = self.intent(&job, price);
        if let Some(budget) = self.options.budget {
            match record.estimate {
                Some(estimate) if self.spent + estimate <= budget => {}
                estimate => {
                    let reason = self.hold_reason(estimate, self.spent, budget, self.scope());
                    sends.to_hold.push(Hold {
                        job,
                        estimate,
                        reason,
                    });
                    return Ok(());
                }
            }
        }
        if let Some(reason) = self.over_batch_cap(&job, record.estimate, sends)? {
            sends.to_hold.push(Hold {
                job,
                estimate: record.estimate,
                reason,
            });
            return Ok(());
        }
        let Some(ticket) = sends.spare.take() else {
            return Ok(());
        };
        self.spent += record.estimate.unwrap_or_default();
        sends.intents.push((record, job, params, ticket));
        Ok(())
    }

    /// Why the job's batch's own cap holds it, if it does; else its estimate counts
    /// against that cap for the rest of the pass.
    fn over_batch_cap(
        &mut self,
        job: &JobRow,
        estimate: Option<Decimal>,
        sends: &mut Sends,
    ) -> Result<Option<String>, EngineError> {
        let capped = job
            .batch
            .as_ref()
            .and_then(|b| self.options.batch_budgets.get_key_value(b));
        let Some((name, &cap)) = capped else {
            return Ok(None);
        };
        let spent = match sends.batch_spent.get(name) {
            Some(spent) => *spent,
            None => self.ledger.committed_spend(Some(name))?,
        };
        match estimate {
            Some(estimate) if spent + estimate <= cap => {
                sends.batch_spent.insert(name.clone(), spent + estimate);
                Ok(None)
            }
            estimate => {
                sends.batch_spent.insert(name.clone(), spent);
                Ok(Some(self.hold_reason(estimate, spent, cap, Some(name))))
            }
        }
    }

    /// A batch's cap holds every job of it, however it is sent (`submit` too): the job is
    /// held, and the run stops for the budget with what the batch needs.
    pub(super) fn held_by_batch_cap(
        &mut self,
        job: &JobRow,
        record: &SubmitRecord,
    ) -> Result<Option<StopReason>, EngineError> {
        let Some(batch) = job.batch.as_deref() else {
            return Ok(None);
        };
        let Some(cap) = self.ledger.batch_budget(batch)? else {
            return Ok(None);
        };
        let spent = self.ledger.committed_spend(Some(batch))?;
        match record.estimate {
            Some(estimate) if spent + estimate <= cap => Ok(None),
            estimate => {
                let reason = self.hold_reason(estimate, spent, cap, Some(batch));
                self.hold(vec![Hold {
                    job: job.clone(),
                    estimate,
                    reason,
                }])?;
                let (_, rest, _) = self.ledger.held_estimates(Some(batch))?;
                Ok(Some(StopReason::Budget {
                    needed: (spent + rest - cap).max(Decimal::ZERO),
                }))
            }
        }
    }

    /// Commits the intents, then hands the submissions to the workers.
    fn send(
        &mut self,
        intents: Vec<(SubmitRecord, JobRow, JobParams, Ticket)>,
        workers: &Workers,
    ) -> Result<bool, EngineError> {
        if intents.is_empty() {
            return Ok(false);
        }
        let records: Vec<SubmitRecord> = intents.iter().map(|(r, ..)| r.clone()).collect();
        self.ledger.mark_submitting(&records)?;
        for (record, job, params, ticket) in intents {
            self.in_flight.insert(job.id, InFlight::Submit);
            self.summary.sent += 1;
            self.polls_since_send = 0;
            workers.send(
                record.job_id,
                record.attempt,
                Task::Submit { params, ticket },
            );
        }
        Ok(true)
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
                let update = self.state_change(&job, Learned::HookSkipped, &reason);
                self.ledger.record(vec![update])?;
                Ok(None)
            }
            SubmitVerdict::Failed(reason) => {
                self.passed.insert(job.id);
                self.hook_blocked += 1;
                let update = self.state_change(
                    &job,
                    Learned::HookFailed,
                    &format!("not sent: {reason}; fix the hook, then `run` again"),
                );
                self.ledger.record(vec![update])?;
                Ok(None)
            }
        }
    }

    /// What is recorded before `job` is sent at `price` (USD per megapixel).
    pub(super) fn intent(&self, job: &JobRow, price: Decimal) -> SubmitRecord {
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

    pub(super) fn price_now(&self) -> Decimal {
        self.ledger
            .current_price()
            .map(|p| p.per_megapixel)
            .unwrap_or_else(|_| money::Price::default_rate().per_megapixel)
    }

    /// Why a job is held by a cap (the run's, or its batch's when `batch` is given).
    pub(super) fn hold_reason(
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
    pub(super) fn hold(&mut self, jobs: Vec<Hold>) -> Result<(), EngineError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        for Hold {
            job,
            estimate,
            reason,
        } in jobs
        {
            self.passed.insert(job.id);
            self.held_estimates.insert(job.id, estimate);
            items.push(self.state_change(&job, Learned::OverBudget, &reason));
        }
        self.ledger.record(items)?;
        Ok(())
    }

    /// A job's step for a reason of this run (a hook's verdict, a cap, the deadline), with
    /// the `state` event that gives the reason.
    pub(super) fn state_change(&self, job: &JobRow, learned: Learned, reason: &str) -> JobUpdate {
        let step = lifecycle::step(at(job), learned);
        let mut change = self.change_of(job.state, &step);
        change.reason = Field::Set(reason.to_string());
        JobUpdate::new(
            job.id,
            job.attempt,
            change,
            Event::new(Some(job.id), Some(job.attempt), learned.event_kind())
                .detail(format!("{} -> {}: {reason}", job.state, step.next)),
        )
    }

    /// After a 402, the jobs still planned are held with the reason, as a budget cap holds them.
    pub(super) fn hold_unsent_after_402(&mut self) -> Result<(), EngineError> {
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
                .map(|j| self.state_change(j, Learned::OverBudget, reason))
                .collect();
            if !items.is_empty() {
                self.ledger.record(items)?;
            }
            after = last;
        }
    }
}

/// A job whose next step is a status call: one at the gateway, or a stalled job whose callback
/// (or an uncertain attempt whose ghost's callback) made a confirming call due.
fn wants_status_call(job: &JobRow) -> bool {
    let confirming = matches!(job.state, JobState::Stalled | JobState::Uncertain);
    (job.state.is_remote_pending() || confirming) && job.request_id.is_some()
}

#[cfg(test)]
mod tests {
    use super::attempt_callback_url;

    #[test]
    fn each_attempt_gets_its_own_callback_path_under_listen_s_prefix() {
        assert_eq!(
            attempt_callback_url("https://h.example/callback/tok", 7, 2),
            "https://h.example/callback/tok/a/7-2"
        );
        assert_eq!(
            attempt_callback_url("https://h.example/x/callback/tok?via=proxy", 7, 1),
            "https://h.example/x/callback/tok/a/7-1?via=proxy"
        );
        for other in [
            "https://h.example/hooks/codeformer",
            "https://h.example/callback/",
            "https://h.example/callback/tok/more",
        ] {
            assert_eq!(attempt_callback_url(other, 7, 1), other);
        }
    }
}
