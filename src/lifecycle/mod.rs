//! The job lifecycle as data: one pure function, [`step`], from where a job stands and what
//! was learned about it (a submission's answer, a status from a poll or a callback, a
//! download, a hook's verdict, a cap, a kill found at start-up, a deadline) to the state it
//! moves to, whether the news is applied, the work to schedule and the charge to record.
//!
//! The engine (polls, submissions, downloads, hooks, deadlines) and the webhook receiver
//! (`ledger/deliveries.rs`) both ask [`step`]; they add only what the answer carried (a
//! request id, output URLs, an error text) and when the next poll falls due. A callback is a
//! hint: its final status only makes the status call due (`Verdict::Hint`, `Work::Confirm`). The table in
//! `docs/architecture.md` is rendered from this function by a test, so the two cannot drift.

mod state;

pub use state::JobState;

use crate::gateway::{RemoteStatus, SubmitOutcome};
use std::fmt;

/// Where a job stands, as far as its next step depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct At {
    pub state: JobState,
    /// The job is completed and its outputs are still to be downloaded (`post = 'download'`).
    pub owes_download: bool,
}

impl At {
    pub fn new(state: JobState, owes_download: bool) -> At {
        At {
            state,
            owes_download: owes_download && state == JobState::Completed,
        }
    }

    /// Every position: each state, and a completed job that still owes its download.
    pub fn all() -> Vec<At> {
        let mut all: Vec<At> = JobState::ALL.iter().map(|s| At::new(*s, false)).collect();
        all.push(At::new(JobState::Completed, true));
        all
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.owes_download {
            write!(f, "{} (download owed)", self.state)
        } else {
            write!(f, "{}", self.state)
        }
    }
}

/// What a submission's answer means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubmitAnswer {
    /// 202 with status QUEUED (or one the API does not document: it is at the gateway).
    Queued,
    /// 202 with status PROCESSING.
    Processing,
    /// A 4xx that says the request is wrong: not created, never charged.
    Rejected,
    /// Not created, and safe to send again: 401, 403, 429, no connection, not the API.
    NotCreated,
    /// 402: not created; held until the wallet is topped up.
    NoBalance,
    /// It may have been created and billed: a 5xx, a timeout, an unusable acceptance.
    Unknown,
}

impl SubmitAnswer {
    pub const ALL: [SubmitAnswer; 6] = [
        SubmitAnswer::Queued,
        SubmitAnswer::Processing,
        SubmitAnswer::Rejected,
        SubmitAnswer::NotCreated,
        SubmitAnswer::NoBalance,
        SubmitAnswer::Unknown,
    ];

    pub fn of(outcome: &SubmitOutcome) -> SubmitAnswer {
        match outcome {
            SubmitOutcome::Accepted { status, .. } => {
                if RemoteStatus::parse(status) == RemoteStatus::Processing {
                    SubmitAnswer::Processing
                } else {
                    SubmitAnswer::Queued
                }
            }
            SubmitOutcome::Rejected { .. } => SubmitAnswer::Rejected,
            SubmitOutcome::Unauthorized { .. }
            | SubmitOutcome::Forbidden { .. }
            | SubmitOutcome::RateLimited { .. }
            | SubmitOutcome::NotSent { .. }
            | SubmitOutcome::Insecure { .. }
            | SubmitOutcome::NotTheApi { .. } => SubmitAnswer::NotCreated,
            SubmitOutcome::InsufficientBalance { .. } => SubmitAnswer::NoBalance,
            SubmitOutcome::Unknown { .. } | SubmitOutcome::UnusableAcceptance { .. } => {
                SubmitAnswer::Unknown
            }
        }
    }
}

/// A status the gateway reported, as far as it moves a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reported {
    Queued,
    Processing,
    Completed,
    Failed,
    Error,
    /// A status the API does not document (`CANCELLED`, `completed`, ...).
    Undocumented,
}

impl Reported {
    pub const ALL: [Reported; 6] = [
        Reported::Queued,
        Reported::Processing,
        Reported::Completed,
        Reported::Failed,
        Reported::Error,
        Reported::Undocumented,
    ];

    pub fn of(status: &RemoteStatus) -> Reported {
        match status {
            RemoteStatus::Queued => Reported::Queued,
            RemoteStatus::Processing => Reported::Processing,
            RemoteStatus::Completed => Reported::Completed,
            RemoteStatus::Failed => Reported::Failed,
            RemoteStatus::Error => Reported::Error,
            RemoteStatus::Undocumented(_) => Reported::Undocumented,
        }
    }

    /// The state the status stands for; `None` for an undocumented one.
    pub fn state(self) -> Option<JobState> {
        match self {
            Reported::Queued => Some(JobState::Queued),
            Reported::Processing => Some(JobState::Processing),
            Reported::Completed => Some(JobState::Completed),
            Reported::Failed => Some(JobState::Failed),
            Reported::Error => Some(JobState::Error),
            Reported::Undocumented => None,
        }
    }
}

/// Who reported a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The answer to this engine's status call, for the job's current attempt.
    Poll,
    /// A webhook callback (it may be late, repeated or out of order).
    Callback,
}

/// What was learned about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Learned {
    /// The answer to its submission.
    Submit(SubmitAnswer),
    /// A status reported by a poll or a callback.
    Status(Via, Reported),
    /// A poll that brought no status: 429, 404, 5xx, no connection, a malformed answer.
    PollFailed,
    /// Its outputs were downloaded.
    Downloaded,
    /// Its outputs could not be downloaded.
    DownloadFailed,
    /// An `on_submit` hook skipped it.
    HookSkipped,
    /// An `on_submit` hook failed: not sent in this run.
    HookFailed,
    /// A cap (the run's, its batch's) or an earlier 402 holds it.
    OverBudget,
    /// Found `submitting` at start-up: the process that sent it stopped before the answer.
    Killed,
    /// Still at the gateway after the run's deadline.
    Deadline,
    /// The gateway answered 404 to its status calls several times in a row: it no longer
    /// knows the request id. Nothing more can be learned by polling, and it may have been
    /// charged.
    Forgotten,
}

impl Learned {
    /// Every input, one of each kind.
    pub fn all() -> Vec<Learned> {
        let mut all: Vec<Learned> = SubmitAnswer::ALL
            .iter()
            .map(|a| Learned::Submit(*a))
            .collect();
        for via in [Via::Poll, Via::Callback] {
            all.extend(Reported::ALL.iter().map(|r| Learned::Status(via, *r)));
        }
        all.extend([
            Learned::PollFailed,
            Learned::Downloaded,
            Learned::DownloadFailed,
            Learned::HookSkipped,
            Learned::HookFailed,
            Learned::OverBudget,
            Learned::Killed,
            Learned::Deadline,
            Learned::Forgotten,
        ]);
        all
    }
}

impl Learned {
    /// The kind of the event that records this news.
    pub fn event_kind(self) -> &'static str {
        match self {
            Learned::Submit(_) => "submit_answer",
            Learned::Status(Via::Poll, _) | Learned::PollFailed => "poll",
            Learned::Status(Via::Callback, _) => "callback",
            Learned::Downloaded => "download",
            Learned::DownloadFailed => "download_failed",
            Learned::HookSkipped
            | Learned::HookFailed
            | Learned::OverBudget
            | Learned::Killed
            | Learned::Deadline
            | Learned::Forgotten => "state",
        }
    }

    /// The events a step writes: the news, then its charge if it records one.
    pub fn events(self, step: &Step) -> Vec<&'static str> {
        let mut kinds = vec![self.event_kind()];
        if step.charge != Charge::None {
            kinds.push("charge");
        }
        kinds
    }
}

impl fmt::Display for Learned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Learned::Submit(a) => write!(f, "submit answer {a:?}"),
            Learned::Status(Via::Poll, r) => write!(f, "poll {r:?}"),
            Learned::Status(Via::Callback, r) => write!(f, "callback {r:?}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Whether the news changes the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The step is written (its state may be the one the job had, as for a poll saying
    /// QUEUED again).
    Applied,
    /// The job already is where the news would put it: nothing changes.
    Duplicate,
    /// The news would not move the job forward (a status out of order, or one the API does
    /// not document): the state stays. A poll is still rescheduled.
    Stale,
    /// A callback's final status: a hint, never the truth. It is recorded and makes the job's
    /// status call due now (work `Confirm`); only that call's answer moves the job, downloads
    /// and charges.
    Hint,
    /// The news does not concern the job as it stands (it moved on): nothing changes.
    Ignored,
}

/// What the engine is to do next with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// The schedule stays as it was.
    Keep,
    /// Poll at the schedule's next delay (a callback job: at the fallback delay).
    Poll,
    /// Poll again after a backoff: the gateway said nothing usable.
    PollLater,
    /// Poll now: a callback said the job ended, and the gateway's answer confirms it or not.
    Confirm,
    /// Download the outputs now.
    Download,
    /// Download again after a backoff.
    RetryDownload,
    /// Stop polling; the hooks that follow this state are owed, if any.
    Finish,
    /// Send it again, in a later pass of this run or in the next run.
    Send,
    /// Nothing is scheduled: a later run, a top-up or a new attempt picks it up.
    Wait,
}

/// The charge this step records for the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charge {
    /// None now.
    None,
    /// 0 USD (ERROR and rejected submissions are not charged), once.
    Free,
    /// From the downloaded outputs' size, once.
    FromOutputs,
}

/// The outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step {
    pub next: JobState,
    pub verdict: Verdict,
    pub work: Work,
    pub charge: Charge,
    /// The attempt ends here (its `finished_at` is set).
    pub finished: bool,
}

impl Step {
    /// The state to write, when it is a change of state.
    pub fn moves_to(&self, from: JobState) -> Option<JobState> {
        (self.verdict == Verdict::Applied && self.next != from).then_some(self.next)
    }
}

fn applied(next: JobState, work: Work, charge: Charge, finished: bool) -> Step {
    Step {
        next,
        verdict: Verdict::Applied,
        work,
        charge,
        finished,
    }
}

fn unchanged(state: JobState, verdict: Verdict, work: Work) -> Step {
    Step {
        next: state,
        verdict,
        work,
        charge: Charge::None,
        finished: false,
    }
}

/// How far along the lifecycle a state is; a job never goes to a lower one. A submission
/// answered "not created" returns a job to planned or held, which is no step back: the
/// gateway never had it.
pub fn progress(state: JobState) -> u8 {
    match state {
        JobState::Planned | JobState::Held | JobState::Submitting => 0,
        JobState::Uncertain => 1,
        JobState::Queued => 2,
        JobState::Processing => 3,
        JobState::Stalled => 4,
        JobState::Completed
        | JobState::Failed
        | JobState::Error
        | JobState::Rejected
        | JobState::Skipped => 5,
    }
}

/// The next step of a job at `at` that learned `learned`.
pub fn step(at: At, learned: Learned) -> Step {
    let state = at.state;
    let ignored = unchanged(state, Verdict::Ignored, Work::Keep);
    let sendable = matches!(state, JobState::Planned | JobState::Held);
    match learned {
        Learned::Submit(answer) if state == JobState::Submitting => submitted(answer),
        Learned::Status(Via::Poll, reported) if state.is_remote_pending() => {
            polled(state, reported)
        }
        // The confirming call of a callback: a stalled job learns its end from the gateway,
        // an uncertain one adopts the request id its callback brought.
        Learned::Status(Via::Poll, reported) if state == JobState::Stalled => {
            match reported.state() {
                Some(target) if target.is_final() => ended(target),
                _ => ignored,
            }
        }
        Learned::Status(Via::Poll, reported) if state == JobState::Uncertain => adopted(reported),
        Learned::PollFailed if matches!(state, JobState::Uncertain | JobState::Stalled) => {
            unchanged(state, Verdict::Applied, Work::PollLater)
        }
        Learned::Status(Via::Callback, reported) => called_back(state, reported),
        Learned::PollFailed if state.is_remote_pending() => {
            unchanged(state, Verdict::Applied, Work::PollLater)
        }
        Learned::Downloaded if at.owes_download => {
            applied(state, Work::Finish, Charge::FromOutputs, false)
        }
        Learned::DownloadFailed if at.owes_download => {
            unchanged(state, Verdict::Applied, Work::RetryDownload)
        }
        Learned::HookSkipped if sendable => {
            applied(JobState::Skipped, Work::Finish, Charge::None, true)
        }
        Learned::HookFailed if sendable => {
            applied(JobState::Planned, Work::Wait, Charge::None, false)
        }
        Learned::OverBudget if sendable => applied(JobState::Held, Work::Wait, Charge::None, false),
        Learned::Killed if state == JobState::Submitting => {
            applied(JobState::Uncertain, Work::Wait, Charge::None, false)
        }
        Learned::Deadline | Learned::Forgotten if state.is_remote_pending() => {
            applied(JobState::Stalled, Work::Finish, Charge::None, true)
        }
        _ => ignored,
    }
}

fn submitted(answer: SubmitAnswer) -> Step {
    match answer {
        SubmitAnswer::Queued => applied(JobState::Queued, Work::Poll, Charge::None, false),
        SubmitAnswer::Processing => applied(JobState::Processing, Work::Poll, Charge::None, false),
        SubmitAnswer::Rejected => applied(JobState::Rejected, Work::Finish, Charge::Free, true),
        SubmitAnswer::NotCreated => applied(JobState::Planned, Work::Send, Charge::None, false),
        SubmitAnswer::NoBalance => applied(JobState::Held, Work::Wait, Charge::None, false),
        SubmitAnswer::Unknown => applied(JobState::Uncertain, Work::Wait, Charge::None, false),
    }
}

/// A reported final status: the job ends, and what it owes follows from the status.
fn ended(target: JobState) -> Step {
    match target {
        JobState::Completed => applied(target, Work::Download, Charge::None, true),
        JobState::Error => applied(target, Work::Finish, Charge::Free, true),
        _ => applied(target, Work::Finish, Charge::None, true),
    }
}

/// A poll's status for a job at the gateway: every answer is recorded and the job polled
/// again until it ends; a status out of order or undocumented leaves its state.
fn polled(state: JobState, reported: Reported) -> Step {
    match reported.state() {
        None => unchanged(state, Verdict::Stale, Work::PollLater),
        Some(target) if target.is_remote_pending() => {
            if progress(target) < progress(state) {
                unchanged(state, Verdict::Stale, Work::Poll)
            } else {
                applied(target, Work::Poll, Charge::None, false)
            }
        }
        Some(target) => ended(target),
    }
}

/// The answer to the status call of a request id an uncertain job's callback brought: the
/// gateway has it, so the job follows it from now on (once, as any job at the gateway).
fn adopted(reported: Reported) -> Step {
    match reported.state() {
        None => unchanged(JobState::Uncertain, Verdict::Stale, Work::PollLater),
        Some(target) if target.is_remote_pending() => {
            applied(target, Work::Poll, Charge::None, false)
        }
        Some(target) => ended(target),
    }
}

/// A callback's status: a hint. A final one for a job at the gateway (or stalled) makes its
/// status call due now and changes nothing else; a QUEUED job may be marked PROCESSING (no
/// download, no charge follows from it); nothing moves backwards or over a final state.
fn called_back(state: JobState, reported: Reported) -> Step {
    let Some(target) = reported.state() else {
        return unchanged(state, Verdict::Stale, Work::Keep);
    };
    if state == target && target.is_final() {
        return unchanged(state, Verdict::Duplicate, Work::Keep);
    }
    let forward = match state {
        JobState::Queued | JobState::Processing => progress(target) > progress(state),
        JobState::Stalled => target.is_final(),
        _ => false,
    };
    if !forward {
        return unchanged(state, Verdict::Stale, Work::Keep);
    }
    if target.is_remote_pending() {
        applied(target, Work::Keep, Charge::None, false)
    } else {
        unchanged(state, Verdict::Hint, Work::Confirm)
    }
}

/// The table of every step that is not ignored, in markdown, as `docs/architecture.md`
/// shows it: one row per input and outcome, with the positions it applies from.
pub fn table() -> String {
    let mut out = String::from(
        "| learned | from | next | verdict | work | charge | events | ends attempt |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for learned in Learned::all() {
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        for at in At::all() {
            let s = step(at, learned);
            if s.verdict == Verdict::Ignored {
                continue;
            }
            let next = if s.next == at.state {
                "(stays)".to_string()
            } else {
                s.next.to_string()
            };
            let outcome = format!(
                "{next} | {:?} | {:?} | {:?} | {} | {}",
                s.verdict,
                s.work,
                s.charge,
                learned.events(&s).join(" + "),
                if s.finished { "yes" } else { "" }
            );
            match rows.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, from)) => from.push(at.to_string()),
                None => rows.push((outcome, vec![at.to_string()])),
            }
        }
        for (outcome, from) in rows {
            out.push_str(&format!(
                "| {learned} | {} | {outcome} |\n",
                from.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
