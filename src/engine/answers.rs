//! What the workers bring back, recorded: each answer is turned into a [`lifecycle::step`]
//! (the job's next state, its work and its charge), to which the answer adds what it
//! carried (a request id, output URLs, an error text) and when the job is next polled.

use super::worker::{Done, TaskResult};
use super::{backoff, now_ms, Engine, EngineError, StopReason, MAX_RATE_LIMIT_WAIT};
use crate::clock;
use crate::gateway::{
    DownloadError, Exchange, PollOutcome, RemoteJob, RemoteStatus, SubmitOutcome,
};
use crate::ledger::{
    Change, Downloaded, Event, Expect, Field, JobRow, JobState, JobUpdate, OutputRow, Post, Probed,
    ProbedJob, StatusSeen, Write,
};
use crate::lifecycle::{
    self, At, Charge, Learned, Reported, Step, SubmitAnswer, Verdict, Via, Work,
};
use rust_decimal::Decimal;
use std::time::Duration;

/// Status calls answered 404 in a row after which a job is no longer polled: the gateway
/// forgot its request id (`Learned::Forgotten`).
pub const MAX_NOT_FOUND: u32 = 3;

/// A recorded poll answer, and the final state it reached, if any.
pub(super) struct PollItem {
    pub(super) update: JobUpdate,
    pub(super) step: Option<Step>,
    /// The status it brought, by which the job's waiting callbacks are judged.
    pub(super) seen: Option<StatusSeen>,
}

/// The change after a poll answer that no longer concerns the job: none, but a confirming
/// call that brought nothing usable for a stalled or uncertain job (its next poll stays due)
/// is not made again.
fn unscheduled(job: &JobRow) -> Change {
    if job.state.is_remote_pending() || at(job).owes_download {
        return Change::default();
    }
    Change {
        next_poll_at: Field::Clear,
        expect: Some(Expect {
            state: job.state,
            attempt: job.attempt,
        }),
        ..Change::default()
    }
}

/// What a poll's status answer says about the job's request id, for its waiting callbacks.
fn seen_of(job: &JobRow, exchange: &Exchange<PollOutcome>) -> Option<StatusSeen> {
    let PollOutcome::Status(remote) = &exchange.outcome else {
        return None;
    };
    let sent = clock::now() - chrono::Duration::milliseconds(exchange.latency_ms as i64);
    Some(StatusSeen {
        job_id: job.id,
        request_id: job.request_id.clone()?,
        status: remote.status.clone(),
        media_urls: remote.media_urls.clone(),
        asked_at: clock::stamp(sent),
    })
}

/// What one loop step took from the workers, written in one transaction by
/// [`Engine::commit_taken`] before the step sends anything (group commit).
#[derive(Default)]
pub(super) struct Taken {
    writes: Vec<Write>,
    /// The estimate of each download's attempt, in the order of its [`Write::Download`].
    estimates: Vec<Decimal>,
    /// Request ids just accepted: a callback can beat the 202 to the ledger.
    accepted: Vec<String>,
    /// Jobs whose submission's answer was lost: the ghost's callback may already be here.
    ghosts: Vec<i64>,
}

impl Taken {
    fn poll(&mut self, item: PollItem) {
        let free = item.step.is_some_and(|s| s.charge == Charge::Free);
        let (job_id, attempt) = (item.update.job_id, item.update.attempt);
        self.writes.push(Write::Update(item.update));
        // The callbacks this answer confirms or refutes, judged in the same transaction.
        self.writes.extend(item.seen.map(Write::Confirm));
        if free {
            self.writes.push(Write::NoCharge {
                job_id,
                attempt,
                why: "ERROR jobs are not charged",
            });
        }
    }
}

/// How long ago a job was sent (zero when unknown).
pub(super) fn elapsed_since_sent(job: &JobRow) -> Duration {
    job.submitted_at
        .as_deref()
        .and_then(clock::parse_remote)
        .map(|t| (clock::now() - t).to_std().unwrap_or_default())
        .unwrap_or_default()
}

/// Where a job stands for the lifecycle.
pub(super) fn at(job: &JobRow) -> At {
    At::new(job.state, job.owes() == Some(Post::Download))
}

impl<'a> Engine<'a> {
    /// Records one result on its own.
    pub(super) fn handle(&mut self, done: Done) -> Result<(), EngineError> {
        let mut taken = Taken::default();
        let job = self.ledger.job(done.job_id)?;
        let result = self.take(done, job, &mut taken);
        let committed = self.commit_taken(taken);
        result.and(committed)
    }

    /// Turns one result into the writes it owes, added to `taken`. `job` is the result's job
    /// as the ledger holds it (read before any of the step's writes; `None` if it is gone).
    pub(super) fn take(
        &mut self,
        done: Done,
        job: Option<JobRow>,
        taken: &mut Taken,
    ) -> Result<(), EngineError> {
        self.in_flight.remove(&done.job_id);
        if matches!(done.result, TaskResult::Poll(_)) {
            self.summary.polls += 1;
        }
        let Some(job) = job else {
            return Ok(());
        };
        let attempt = done.attempt;
        match done.result {
            TaskResult::Probe(result) => self.on_probe(job, attempt, result, taken),
            TaskResult::Submit(exchange) => self.on_submit(job, attempt, exchange, taken),
            TaskResult::Poll(exchange) => {
                if let Some(item) = self.poll_record(job, attempt, exchange)? {
                    taken.poll(item);
                }
                Ok(())
            }
            TaskResult::Download(result) => self.on_download(job, attempt, result, taken),
        }
    }

    /// Commits what was taken in one transaction; then the charges count against the budget
    /// and callbacks that came before their job's 202 are adopted.
    pub(super) fn commit_taken(&mut self, taken: Taken) -> Result<(), EngineError> {
        if taken.writes.is_empty() {
            return Ok(());
        }
        let charges = self.ledger.write_group(taken.writes)?;
        for (charge, estimate) in charges.into_iter().zip(taken.estimates) {
            if let Some(charge) = charge {
                self.spent += charge - estimate;
                self.summary.charged += charge;
            }
        }
        self.ledger.adopt_orphans_of(&taken.accepted)?;
        // Only now, with the answers recorded: the callbacks of lost submissions' ghosts.
        for job_id in taken.ghosts {
            self.ledger.adopt_ghosts(Some(job_id))?;
        }
        Ok(())
    }

    fn on_probe(
        &mut self,
        job: JobRow,
        attempt: i64,
        result: Result<crate::gateway::probe::Probe, crate::gateway::probe::ProbeError>,
        taken: &mut Taken,
    ) -> Result<(), EngineError> {
        let job_id = job.id;
        taken.writes.push(match result {
            Ok(probe) => Write::Probe(Probed {
                size: (probe.size.width, probe.size.height),
                format: probe.size.format,
                bytes_read: probe.bytes_read,
                job: Some(ProbedJob {
                    job_id,
                    attempt,
                    upscale: job.upscale,
                }),
                url: job.image_url,
            }),
            Err(reason) => {
                self.unprobeable.insert(job_id);
                Write::Event(
                    Event::new(Some(job_id), Some(attempt), "estimate").detail(format!(
                        "the input size could not be read from {}: {reason}",
                        job.image_url
                    )),
                )
            }
        });
        self.send_cursor = self.send_cursor.min(job_id - 1);
        Ok(())
    }

    /// The columns a step sets whatever the answer carried: the state, the end of the
    /// attempt, and the post-processing owed. Polls are scheduled by the caller.
    pub(super) fn change_of(&self, from: JobState, step: &Step) -> Change {
        let mut change = Change {
            state: step.moves_to(from),
            finished: step.finished,
            ..Change::default()
        };
        match step.work {
            Work::Download => {
                change.post = Field::Set(Post::Download);
                change.next_poll_at = Field::Set(now_ms());
            }
            Work::Finish => {
                change.next_poll_at = Field::Clear;
                change.post = Field::set_or_clear(self.post_after(step.next));
            }
            _ => {}
        }
        change
    }

    fn on_submit(
        &mut self,
        job: JobRow,
        attempt: i64,
        exchange: Exchange<SubmitOutcome>,
        taken: &mut Taken,
    ) -> Result<(), EngineError> {
        let job_id = job.id;
        let step = lifecycle::step(
            at(&job),
            Learned::Submit(SubmitAnswer::of(&exchange.outcome)),
        );
        self.control_after_submit(&job, &exchange.outcome)?;
        let event = Event::new(Some(job_id), Some(attempt), "submit_answer")
            .http(exchange.http_status, exchange.latency_ms)
            .body(exchange.body.clone());
        let mut change = Change::default();
        if step.verdict == Verdict::Applied {
            change = self.change_of(job.state, &step);
            self.submit_details(&job, &exchange.outcome, &mut change);
        }
        taken.writes.push(Write::Update(JobUpdate::new(
            job_id, attempt, change, event,
        )));
        if let SubmitOutcome::Accepted { request_id, .. } = exchange.outcome {
            // A callback can beat the 202 to the ledger; it was kept as an orphan.
            taken.accepted.push(request_id);
        }
        if step.moves_to(job.state) == Some(JobState::Uncertain) {
            // The answer was lost, but the ghost's callback may already be here.
            taken.ghosts.push(job_id);
        }
        if step.charge == Charge::Free {
            taken.writes.push(Write::NoCharge {
                job_id,
                attempt,
                why: "rejected submissions are not charged",
            });
        }
        Ok(())
    }

    /// What a submission's answer adds to its step: the request id, the first poll, why it
    /// was not sent.
    fn submit_details(&self, job: &JobRow, outcome: &SubmitOutcome, change: &mut Change) {
        let reason = match outcome {
            SubmitOutcome::Accepted {
                request_id, status, ..
            } => {
                // An undocumented status in the 202 is kept as said; the job is at the
                // gateway all the same, and its polls tell the rest.
                change.request_id = Some(request_id.clone());
                change.remote_status = Some(RemoteStatus::parse(status).as_str().to_string());
                let delay = self.next_poll_delay(job, Duration::ZERO, 0);
                change.next_poll_at = Field::Set(now_ms() + delay.as_millis() as i64);
                return;
            }
            SubmitOutcome::Rejected { status, message } => {
                change.error = Field::Set(message.clone());
                format!("the gateway refused the submission (HTTP {status}): {message}")
            }
            SubmitOutcome::Unauthorized { .. } => "not sent: HTTP 401".to_string(),
            SubmitOutcome::Forbidden { .. } => "not sent: HTTP 403".to_string(),
            SubmitOutcome::InsufficientBalance { message } => {
                format!("insufficient balance (HTTP 402): {message}")
            }
            SubmitOutcome::RateLimited { .. } => {
                "not sent: HTTP 429, will be sent again".to_string()
            }
            SubmitOutcome::NotSent { reason } | SubmitOutcome::Insecure { reason } => {
                format!("not sent: {reason}")
            }
            SubmitOutcome::NotTheApi { answer } => {
                format!("not sent: the base URL does not lead to the API ({answer})")
            }
            SubmitOutcome::UnusableAcceptance { reason } => format!(
                "the gateway may have created this job, but {reason}; it may be billed, so it is not resent on its own (run --resubmit-uncertain)"
            ),
            SubmitOutcome::Unknown { reason } => format!(
                "the submission's outcome is unknown ({reason}); the job may exist and be billed, so it is not resent on its own (run --resubmit-uncertain)"
            ),
        };
        change.reason = Field::Set(reason);
    }

    /// What a submission's answer means for the run: the budget's count, the send cursor,
    /// the rate limit, and whether sending stops.
    fn control_after_submit(
        &mut self,
        job: &JobRow,
        outcome: &SubmitOutcome,
    ) -> Result<(), EngineError> {
        if let Some(reason) = self.submit_stop(outcome) {
            self.stop_with(reason);
        }
        match outcome {
            SubmitOutcome::Accepted { .. } => {
                self.reachable();
                self.note_success();
                return Ok(());
            }
            SubmitOutcome::Unknown { .. } | SubmitOutcome::UnusableAcceptance { .. } => {
                return Ok(());
            }
            SubmitOutcome::Rejected { .. } => self.reachable(),
            SubmitOutcome::InsufficientBalance { .. } => {
                self.reachable();
                self.passed.insert(job.id);
            }
            SubmitOutcome::RateLimited { retry_after } => {
                self.reachable();
                self.on_rate_limited(*retry_after)?;
            }
            SubmitOutcome::NotSent { reason } => self.on_unreachable(reason),
            SubmitOutcome::Unauthorized { .. }
            | SubmitOutcome::Forbidden { .. }
            | SubmitOutcome::Insecure { .. }
            | SubmitOutcome::NotTheApi { .. } => {}
        }
        // Not at the gateway: its estimate no longer counts against the budget.
        self.spent -= job.estimated_cost.unwrap_or_default();
        if SubmitAnswer::of(outcome) == SubmitAnswer::NotCreated {
            self.send_cursor = self.send_cursor.min(job.id - 1);
        }
        Ok(())
    }

    /// Why a submission's answer stops sending, if it does.
    fn submit_stop(&self, outcome: &SubmitOutcome) -> Option<StopReason> {
        Some(match outcome {
            SubmitOutcome::Unauthorized { message } | SubmitOutcome::Forbidden { message } => {
                let code = if matches!(outcome, SubmitOutcome::Unauthorized { .. }) {
                    401
                } else {
                    403
                };
                StopReason::Unauthorized {
                    message: format!(
                        "the gateway refused the API key (HTTP {code}: {message}); set {} to a valid key (or pass --api-key-file) and run again",
                        crate::KEY_ENV
                    ),
                }
            }
            SubmitOutcome::InsufficientBalance { message } => StopReason::InsufficientBalance {
                message: message.clone(),
            },
            // A failed TLS handshake proves the request never left: the job stays planned, and
            // the run stops at once, since every other job would meet the same certificate.
            SubmitOutcome::Insecure { reason } => StopReason::Unreachable {
                message: format!(
                    "{reason}. The jobs not sent stay planned, and the next `run` sends them"
                ),
            },
            SubmitOutcome::NotTheApi { answer } => StopReason::Misconfigured {
                message: self.misconfigured(&format!("a submission got {answer}"),
                    "Nothing was created: the jobs not sent stay planned, and a run with the right URL sends each once."),
            },
            SubmitOutcome::UnusableAcceptance { reason } => StopReason::Misconfigured {
                message: self.misconfigured(&format!("the answer to a submission is unusable: {reason}"),
                    "That job is uncertain (it may exist and be billed); sending stopped there, and the jobs not sent stay planned."),
            },
            _ => return None,
        })
    }

    pub(super) fn poll_record(
        &mut self,
        job: JobRow,
        attempt: i64,
        exchange: Exchange<PollOutcome>,
    ) -> Result<Option<PollItem>, EngineError> {
        let job_id = job.id;
        let learned = self.poll_learned(&job, attempt, &exchange.outcome);
        let step = lifecycle::step(at(&job), learned);
        let seen = seen_of(&job, &exchange);
        self.refuse_unknown_ghost(&job, &exchange.outcome)?;
        if job.attempt != attempt || step.verdict == Verdict::Ignored {
            // The job moved on meanwhile (a callback finished it); keep the answer on record.
            let event = Event::new(Some(job_id), Some(attempt), "poll")
                .http(exchange.http_status, exchange.latency_ms)
                .detail("answer after the job had already moved on")
                .body(exchange.body);
            return Ok(Some(PollItem {
                update: JobUpdate::new(job_id, attempt, unscheduled(&job), event),
                step: None,
                seen,
            }));
        }
        let mut event = Event::new(Some(job_id), Some(attempt), "poll")
            .http(exchange.http_status, exchange.latency_ms)
            .body(exchange.body.clone());
        let mut change = self.change_of(job.state, &step);
        change.count_poll = true;
        change.expect = Some(Expect {
            state: job.state,
            attempt,
        });
        match exchange.outcome {
            _ if learned == Learned::Forgotten => self.forgotten(&job, &mut change, &mut event),
            PollOutcome::Status(remote) => {
                self.polled_status(&job, &step, &remote, &mut change, &mut event)
            }
            outcome => self.poll_without_status(
                job_id,
                outcome,
                exchange.http_status,
                &mut change,
                &mut event,
            )?,
        }
        Ok(Some(PollItem {
            update: JobUpdate::new(job_id, attempt, change, event),
            step: Some(step),
            seen,
        }))
    }

    /// The request id an uncertain attempt's callback brought is not the gateway's (404): it
    /// is not adopted.
    fn refuse_unknown_ghost(
        &mut self,
        job: &JobRow,
        outcome: &PollOutcome,
    ) -> Result<(), EngineError> {
        if job.state != JobState::Uncertain || !matches!(outcome, PollOutcome::NotFound) {
            return Ok(());
        }
        if let Some(request_id) = &job.request_id {
            self.ledger
                .refuse_adoption(job.id, job.attempt, request_id)?;
        }
        Ok(())
    }

    /// What a poll's answer teaches the lifecycle: a status, a failed poll, or, after
    /// [`MAX_NOT_FOUND`] 404s in a row, that the gateway forgot the request id.
    fn poll_learned(&mut self, job: &JobRow, attempt: i64, outcome: &PollOutcome) -> Learned {
        match outcome {
            PollOutcome::Status(remote) => {
                self.not_found.remove(&job.id);
                Learned::Status(Via::Poll, Reported::of(&remote.status))
            }
            PollOutcome::NotFound if job.attempt == attempt => {
                let count = self.not_found.entry(job.id).or_insert(0);
                *count += 1;
                if *count >= MAX_NOT_FOUND {
                    Learned::Forgotten
                } else {
                    Learned::PollFailed
                }
            }
            _ => Learned::PollFailed,
        }
    }

    /// The reason of a job whose request id the gateway forgot.
    fn forgotten(&mut self, job: &JobRow, change: &mut Change, event: &mut Event) {
        self.not_found.remove(&job.id);
        self.reachable();
        let reason = format!(
            "the gateway answered HTTP 404 to {MAX_NOT_FOUND} status calls in a row: it no longer knows request {}; no longer polled, and it may have been charged (charge unknown)",
            job.request_id.as_deref().unwrap_or("?")
        );
        event.detail = Some(reason.clone());
        change.reason = Field::Set(reason);
    }

    /// A status a poll brought: recorded as said, and the job polled again until it ends.
    fn polled_status(
        &mut self,
        job: &JobRow,
        step: &Step,
        remote: &RemoteJob,
        change: &mut Change,
        event: &mut Event,
    ) {
        self.reachable();
        self.note_success();
        event.remote_status = Some(remote.status.as_str().to_string());
        change.remote_status = Some(remote.status.as_str().to_string());
        let elapsed = elapsed_since_sent(job);
        if step.work != Work::PollLater {
            self.failures.remove(&job.id);
        }
        if step.work == Work::Poll {
            self.last_polled.insert((job.id, job.attempt), elapsed);
        } else {
            self.last_polled.remove(&(job.id, job.attempt));
        }
        match step.work {
            Work::Poll => {
                let delay = self.next_poll_delay(job, elapsed, job.polls as u32 + 1);
                change.next_poll_at = Field::Set(now_ms() + delay.as_millis() as i64);
            }
            Work::Download => {
                // The gateway's own times when it gives both: a poll sees a completion late.
                let took = match (remote.created_at, remote.completed_at) {
                    (Some(created), Some(done)) if done >= created => {
                        (done - created).to_std().unwrap_or(elapsed)
                    }
                    _ => elapsed,
                };
                self.schedule.observe(took);
                change.output_urls = Some(remote.media_urls.clone());
            }
            Work::Finish => {
                change.error =
                    Field::Set(remote.error.clone().unwrap_or_else(|| {
                        format!("the gateway reported {}", remote.status.as_str())
                    }));
                if step.charge == Charge::Free {
                    self.spent -= job.estimated_cost.unwrap_or_default();
                }
            }
            _ => {
                // Not finished, and not free: only a documented ERROR is. Polled again, less
                // often, until it says something documented or the deadline stalls it.
                event.detail = Some(format!(
                    "status {:?} is not one the API documents; the job stays {} and is polled again (it may be charged)",
                    remote.status.as_str(),
                    job.state
                ));
                change.next_poll_at = Field::Set(now_ms() + self.poll_backoff(job.id));
            }
        }
    }

    /// The wait before polling a job again after an answer without news, growing with the
    /// failures in a row.
    fn poll_backoff(&mut self, job_id: i64) -> i64 {
        let failures = self.failures.entry(job_id).or_insert(0);
        *failures += 1;
        let delay = backoff(
            *failures,
            self.schedule.min.max(Duration::from_millis(50)),
            self.options.poll_interval.max(Duration::from_secs(30)),
        );
        delay.as_millis() as i64
    }

    /// A poll that brought no status: the job is polled again later, and the run may stop.
    fn poll_without_status(
        &mut self,
        job_id: i64,
        outcome: PollOutcome,
        http_status: Option<u16>,
        change: &mut Change,
        event: &mut Event,
    ) -> Result<(), EngineError> {
        let every = self.options.poll_interval.as_millis() as i64;
        let unreachable = matches!(outcome, PollOutcome::Unreachable { .. });
        let reason = match outcome {
            PollOutcome::Status(_) => return Ok(()),
            PollOutcome::RateLimited { retry_after } => {
                self.on_rate_limited(retry_after)?;
                let delay = retry_after
                    .unwrap_or(self.options.poll_interval)
                    .min(MAX_RATE_LIMIT_WAIT)
                    .max(self.schedule.min);
                change.next_poll_at = Field::Set(now_ms() + delay.as_millis() as i64);
                return Ok(());
            }
            PollOutcome::Unauthorized { status } => {
                change.next_poll_at = Field::Set(now_ms() + every);
                self.stop_with(StopReason::Unauthorized {
                    message: format!(
                        "the gateway refused the API key when polling (HTTP {status}); set {} to a valid key and run again",
                        crate::KEY_ENV
                    ),
                });
                return Ok(());
            }
            PollOutcome::NotTheApi { answer } => {
                event.detail = Some(format!("the base URL does not lead to the API: {answer}"));
                change.next_poll_at = Field::Set(now_ms() + every);
                let message = self.misconfigured(&format!("a status call got {answer}"),
                    "The jobs at the gateway are kept as they were and are polled by a run with the right URL.");
                self.stop_with(StopReason::Misconfigured { message });
                return Ok(());
            }
            PollOutcome::NotFound => {
                "the gateway does not know this request id (HTTP 404)".to_string()
            }
            PollOutcome::Unreachable { reason } => {
                self.on_unreachable(&reason);
                reason
            }
            PollOutcome::Transient { reason } => reason,
            PollOutcome::BadAnswer { reason } => format!("bad answer: {reason}"),
        };
        if !unreachable && http_status.is_some() {
            self.reachable();
        }
        event.detail = Some(reason);
        change.next_poll_at = Field::Set(now_ms() + self.poll_backoff(job_id));
        Ok(())
    }

    fn on_download(
        &mut self,
        job: JobRow,
        attempt: i64,
        result: Result<Vec<OutputRow>, DownloadError>,
        taken: &mut Taken,
    ) -> Result<(), EngineError> {
        let job_id = job.id;
        let learned = match result {
            Ok(_) => Learned::Downloaded,
            Err(_) => Learned::DownloadFailed,
        };
        let step = lifecycle::step(at(&job), learned);
        if step.verdict == Verdict::Ignored {
            return Ok(());
        }
        match result {
            Ok(files) => {
                self.summary.downloads += 1;
                taken.writes.push(Write::Download(Downloaded {
                    job_id,
                    attempt,
                    files,
                    post_after: self.post_after(JobState::Completed),
                }));
                taken.estimates.push(job.estimated_cost.unwrap_or_default());
            }
            Err(error) => self.download_failed(job_id, attempt, error.to_string(), taken),
        }
        Ok(())
    }

    /// A download that failed is tried again after a backoff; after 5 failures the job keeps
    /// owing it, for a later run.
    fn download_failed(&mut self, job_id: i64, attempt: i64, reason: String, taken: &mut Taken) {
        let failures = self.failures.entry(job_id).or_insert(0);
        *failures += 1;
        let failures = *failures;
        let delay = backoff(
            failures,
            Duration::from_millis(200),
            Duration::from_secs(60),
        );
        let item = JobUpdate::new(
            job_id,
            attempt,
            Change {
                next_poll_at: Field::Set(now_ms() + delay.as_millis() as i64),
                error: Field::Set(format!("download failed: {reason}")),
                ..Change::default()
            },
            Event::new(Some(job_id), Some(attempt), "download_failed").detail(reason),
        );
        taken.writes.push(Write::Update(item));
        if failures >= 5 {
            // Keep the job owing its download for a later run, but stop trying now.
            taken.writes.push(Write::Update(JobUpdate::new(
                job_id,
                attempt,
                Change {
                    next_poll_at: Field::Clear,
                    ..Change::default()
                },
                Event::new(Some(job_id), Some(attempt), "download_deferred")
                    .detail("5 downloads failed; `run` tries again"),
            )));
        }
    }
}
