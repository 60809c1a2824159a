//! Webhook deliveries: callback bodies from the gateway (`ingest`, `listen`) applied to the
//! ledger, idempotent by request_id.
//!
//! A callback is a hint that speeds a batch up, never the only source of truth: it may arrive
//! twice, late, out of order or not at all, and polling stays the fallback that makes a run
//! correct. So this module keeps these invariants:
//! - a body that parses is recorded exactly once in `deliveries` and once in `events` (kind
//!   `callback`), in the same transaction as any change it makes to its job; a body that does
//!   not parse writes nothing;
//! - a job never moves backwards (queued < processing < completed | failed | error), a final
//!   state is never replaced by another, and a callback for an earlier attempt changes nothing;
//! - a delivery never charges: a COMPLETED job is handed to the engine (`post = 'download'`,
//!   due now) and its download records the charge, once; an ERROR attempt is marked as not
//!   charged, once.
//!
//! Each delivery gets one outcome, stored in `deliveries.outcome`:
//! - `applied`: the job moved forward;
//! - `duplicate`: the same request_id and status were already applied, or the job already is
//!   in that final state;
//! - `stale`: the status would not move the job forward (PROCESSING after COMPLETED, QUEUED
//!   while processing, a different final status than the one recorded, a status the API does
//!   not document such as `CANCELLED`), or it is about an earlier attempt of the job;
//! - `orphan`: no job of this ledger has that request_id (recorded with `job_id` NULL).

use super::change::{apply_change, Change, Field, Post};
use super::events::{cap_body, insert_event, Event};
use super::{JobState, Ledger, LedgerError, Result};
use crate::clock;
use crate::gateway::{RemoteJob, RemoteStatus};
use crate::lifecycle::{self, At, Charge, Learned, Reported, Step, Verdict, Via, Work};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// What a delivery did to the ledger; the text is `deliveries.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Applied,
    Duplicate,
    Stale,
    Orphan,
}

impl DeliveryKind {
    pub const ALL: [DeliveryKind; 4] = [
        DeliveryKind::Applied,
        DeliveryKind::Duplicate,
        DeliveryKind::Stale,
        DeliveryKind::Orphan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Applied => "applied",
            DeliveryKind::Duplicate => "duplicate",
            DeliveryKind::Stale => "stale",
            DeliveryKind::Orphan => "orphan",
        }
    }
}

impl fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of recording one callback body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryOutcome {
    /// The `deliveries` row written.
    pub delivery_id: i64,
    pub kind: DeliveryKind,
    pub request_id: String,
    /// The status the callback reported, verbatim (`QUEUED` … `ERROR`, or an undocumented one).
    pub status: String,
    /// The job the request_id belongs to; `None` for an orphan.
    pub job_id: Option<i64>,
    /// The attempt the request_id belongs to (maybe an earlier one than the job's current).
    pub attempt: Option<i64>,
    /// A short account, as in the `callback` event.
    pub detail: String,
}

/// Why a callback body could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The body is not a callback the API documents (not JSON, a field of the wrong type, no
    /// status, a COMPLETED without outputs). Nothing was written.
    #[error("malformed callback body: {0}")]
    Malformed(String),
    /// The ledger could not record it (busy for too long, disk full, ...). Nothing was
    /// written; the same body can be recorded again later.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One row of `deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub received_at: String,
    pub request_id: Option<String>,
    pub remote_status: Option<String>,
    pub job_id: Option<i64>,
    pub outcome: String,
    pub body: String,
}

/// The job (and attempt) a request_id belongs to.
struct Owner {
    job_id: i64,
    attempt: i64,
    /// The job's current attempt, which differs from `attempt` for an earlier one.
    current_attempt: i64,
    state: JobState,
    batch: Option<String>,
}

impl Ledger {
    /// Records one callback body in one transaction: a `deliveries` row, a `callback` event,
    /// and the change of its job when the callback moves it forward (see the module docs).
    pub fn record_delivery(&mut self, body: &str) -> Result<DeliveryOutcome, DeliveryError> {
        let remote = RemoteJob::from_json(body).map_err(DeliveryError::Malformed)?;
        // IMMEDIATE: take the write lock up front (waiting out the busy timeout), so that an
        // engine committing between this read and this write cannot make it fail.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(LedgerError::from)?;
        let now = clock::now_stamp();
        let outcome = record_in(&tx, &remote, body, &now)?;
        tx.commit().map_err(LedgerError::from)?;
        Ok(outcome)
    }

    /// Sets this connection up for a receiver that acknowledges what it records:
    /// - every commit reaches the disk before it returns (`synchronous = FULL`): a callback
    ///   answered 200 is never sent again, so it must survive a power loss too;
    /// - while another process (an engine) holds the write lock, it tries again every 2 ms for
    ///   up to `max_wait`, instead of SQLite's default backoff of up to 100 ms between tries,
    ///   which a busy engine's back-to-back commits can keep out for seconds.
    pub fn configure_receiver(&mut self, max_wait: std::time::Duration) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let mut since = std::time::Instant::now();
        self.conn.busy_handler(Some(move |tries: i32| {
            if tries == 0 {
                since = std::time::Instant::now();
            }
            if since.elapsed() >= max_wait {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            true
        }))?;
        Ok(())
    }

    /// Applies again the orphan deliveries of a request id that has just become known (the
    /// callback arrived before the submission's answer was recorded). Each is recorded anew;
    /// the orphan rows stay as they were received.
    pub fn adopt_orphans(&mut self, request_id: &str) -> Result<usize> {
        let bodies: Vec<String> = self
            .deliveries(Some(request_id))?
            .into_iter()
            .filter(|d| d.outcome == "orphan")
            .map(|d| d.body)
            .collect();
        for body in &bodies {
            match self.record_delivery(body) {
                Ok(_) | Err(DeliveryError::Malformed(_)) => {}
                Err(DeliveryError::Ledger(e)) => return Err(e),
            }
        }
        Ok(bodies.len())
    }

    /// Recorded deliveries, oldest first: all, or those of one request_id.
    pub fn deliveries(&self, request_id: Option<&str>) -> Result<Vec<DeliveryRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, received_at, request_id, remote_status, job_id, outcome, body FROM deliveries
             WHERE ?1 IS NULL OR request_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([request_id], |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                received_at: r.get(1)?,
                request_id: r.get(2)?,
                remote_status: r.get(3)?,
                job_id: r.get(4)?,
                outcome: r.get(5)?,
                body: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn record_in(
    tx: &Transaction<'_>,
    remote: &RemoteJob,
    body: &str,
    now: &str,
) -> Result<DeliveryOutcome> {
    let status = &remote.status;
    let owner = find_owner(tx, &remote.request_id)?;
    let (kind, detail) = match &owner {
        None => (
            DeliveryKind::Orphan,
            "no job in this ledger has this request_id".to_string(),
        ),
        Some(owner) => {
            let already = already_applied(tx, &remote.request_id, status)?;
            let (kind, detail) = classify(owner, status, already);
            if kind == DeliveryKind::Applied {
                apply(tx, owner, remote, now)?;
            }
            (kind, detail)
        }
    };
    tx.prepare_cached(
        "INSERT INTO deliveries (received_at, request_id, remote_status, job_id, outcome, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        now,
        remote.request_id,
        status.as_str(),
        owner.as_ref().map(|o| o.job_id),
        kind.as_str(),
        cap_body(body)
    ])?;
    let delivery_id = tx.last_insert_rowid();
    let (job_id, attempt) = (
        owner.as_ref().map(|o| o.job_id),
        owner.as_ref().map(|o| o.attempt),
    );
    let detail = format!("{kind}: {detail}");
    insert_event(
        tx,
        Event::new(job_id, attempt, "callback")
            .remote(Some(status.as_str()))
            .detail(detail.clone())
            .body(body),
        now,
    )?;
    Ok(DeliveryOutcome {
        delivery_id,
        kind,
        request_id: remote.request_id.clone(),
        status: status.as_str().to_string(),
        job_id,
        attempt,
        detail,
    })
}

/// The current attempt's request_id first (indexed), then an earlier attempt's.
fn find_owner(tx: &Transaction<'_>, request_id: &str) -> Result<Option<Owner>> {
    let current = tx
        .prepare_cached(
            "SELECT id, attempt, attempt, state, batch FROM jobs WHERE request_id = ?1
             ORDER BY id LIMIT 1",
        )?
        .query_row([request_id], owner_from_row)
        .optional()?;
    if current.is_some() {
        return Ok(current);
    }
    Ok(tx
        .prepare_cached(
            "SELECT j.id, a.attempt, j.attempt, j.state, j.batch FROM attempts a
             JOIN jobs j ON j.id = a.job_id WHERE a.request_id = ?1
             ORDER BY a.attempt DESC LIMIT 1",
        )?
        .query_row([request_id], owner_from_row)
        .optional()?)
}

fn owner_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Owner> {
    let state: String = r.get(3)?;
    Ok(Owner {
        job_id: r.get(0)?,
        attempt: r.get(1)?,
        current_attempt: r.get(2)?,
        state: JobState::from_str(&state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        batch: r.get(4)?,
    })
}

fn already_applied(tx: &Transaction<'_>, request_id: &str, status: &RemoteStatus) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE request_id = ?1 AND remote_status = ?2
             AND outcome = 'applied' LIMIT 1",
        )?
        .query_row(params![request_id, status.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The lifecycle's step for a callback's status to a job as it stands.
fn callback_step(owner: &Owner, status: &RemoteStatus) -> Step {
    lifecycle::step(
        At::new(owner.state, false),
        Learned::Status(Via::Callback, Reported::of(status)),
    )
}

/// Decides a delivery's outcome for a known job, with the account that goes in its event.
fn classify(owner: &Owner, status: &RemoteStatus, already: bool) -> (DeliveryKind, String) {
    let st = status.as_str();
    let current = owner.state;
    if Reported::of(status) == Reported::Undocumented {
        return (
            DeliveryKind::Stale,
            format!(
                "status {st:?} is not one the API documents; the job stays {current} and is still polled (it may be charged)"
            ),
        );
    }
    if owner.attempt != owner.current_attempt {
        let note = if *status == RemoteStatus::Completed {
            " (that attempt may have been charged)"
        } else {
            ""
        };
        return (
            DeliveryKind::Stale,
            format!(
                "{st} for attempt {}, but the job is at attempt {}{note}",
                owner.attempt, owner.current_attempt
            ),
        );
    }
    if already {
        return (
            DeliveryKind::Duplicate,
            format!("{st} was already applied; nothing changed"),
        );
    }
    // The client gave up polling a stalled job, but the gateway kept it: its final status is
    // news (a COMPLETED one will be charged) and is applied.
    let step = callback_step(owner, status);
    match step.verdict {
        Verdict::Applied => (DeliveryKind::Applied, format!("{current} -> {}", step.next)),
        Verdict::Duplicate => (
            DeliveryKind::Duplicate,
            format!("the job is already {current}; nothing changed"),
        ),
        Verdict::Stale | Verdict::Ignored => (
            DeliveryKind::Stale,
            format!("{st} would not move the job forward from {current}; nothing changed"),
        ),
    }
}

fn apply(tx: &Transaction<'_>, owner: &Owner, remote: &RemoteJob, now: &str) -> Result<()> {
    let step = callback_step(owner, &remote.status);
    if step.verdict != Verdict::Applied {
        return Ok(());
    }
    let mut change = Change {
        state: step.moves_to(owner.state),
        remote_status: Some(remote.status.as_str().to_string()),
        finished: step.finished,
        ..Change::default()
    };
    if step.finished {
        change.reason = Field::Clear;
    }
    match step.work {
        // The fallback poll stays scheduled as it was.
        Work::Keep => {}
        Work::Download => {
            // Due now: an engine (running, or the next `run`) downloads the outputs and
            // records the charge from their size, once, as after a poll.
            change.output_urls = Some(remote.media_urls.clone());
            change.post = Field::Set(Post::Download);
            change.next_poll_at = Field::Set(now_ms());
            change.error = Field::Clear;
        }
        _ => {
            change.error = Field::Set(
                remote
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("the gateway reported {}", remote.status.as_str())),
            );
            change.next_poll_at = Field::Clear;
            change.post = Field::set_or_clear(failure_post(tx, owner.batch.as_deref())?);
        }
    }
    apply_change(tx, owner.job_id, owner.attempt, &change, now)?;
    if step.charge == Charge::Free {
        no_charge(tx, owner.job_id, owner.attempt, now)?;
    }
    Ok(())
}

/// The post-processing a job that failed by callback owes. The engine decides this after a
/// poll from the hooks it runs with, which a receiver does not know; the hooks a batch
/// remembers are the ones its resume runs, so a job of such a batch owes `hooks` (the engine
/// runs its `on_failed` hooks once, or clears the mark when none is defined). Hooks given
/// only on a `run` command line and not remembered by a batch are not known here, so those
/// jobs owe nothing and their `on_failed` hooks do not run.
fn failure_post(tx: &Transaction<'_>, batch: Option<&str>) -> Result<Option<Post>> {
    let Some(batch) = batch else {
        return Ok(None);
    };
    let hooks: Option<String> = tx
        .prepare_cached("SELECT hooks FROM batches WHERE name = ?1")?
        .query_row([batch], |r| r.get(0))
        .optional()?;
    let remembered: Vec<String> = hooks
        .and_then(|h| serde_json::from_str(&h).ok())
        .unwrap_or_default();
    Ok((!remembered.is_empty()).then_some(Post::Hooks))
}

/// ERROR is not charged: the attempt's cost is 0, recorded once with its `charge` event.
fn no_charge(tx: &Transaction<'_>, job_id: i64, attempt: i64, now: &str) -> Result<()> {
    let marked = tx.execute(
        "UPDATE attempts SET actual_cost = '0' WHERE job_id = ?1 AND attempt = ?2 AND actual_cost IS NULL",
        params![job_id, attempt],
    )?;
    if marked == 1 {
        insert_event(
            tx,
            Event::new(Some(job_id), Some(attempt), "charge")
                .detail("0 USD: ERROR jobs are not charged (reported by callback)"),
            now,
        )?;
    }
    Ok(())
}

/// Unix milliseconds, the unit of `jobs.next_poll_at` (the engine's schedule clock).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(state: JobState) -> Owner {
        Owner {
            job_id: 1,
            attempt: 1,
            current_attempt: 1,
            state,
            batch: None,
        }
    }

    fn kind(state: JobState, status: RemoteStatus, already: bool) -> DeliveryKind {
        classify(&owner(state), &status, already).0
    }

    #[test]
    fn jobs_only_move_forward() {
        use DeliveryKind::*;
        use JobState as J;
        use RemoteStatus as R;
        assert_eq!(kind(J::Queued, R::Processing, false), Applied);
        assert_eq!(kind(J::Queued, R::Completed, false), Applied);
        assert_eq!(kind(J::Processing, R::Error, false), Applied);
        assert_eq!(kind(J::Processing, R::Queued, false), Stale);
        assert_eq!(kind(J::Processing, R::Processing, false), Stale);
        assert_eq!(kind(J::Completed, R::Processing, false), Stale);
        assert_eq!(kind(J::Completed, R::Failed, false), Stale);
        assert_eq!(kind(J::Completed, R::Completed, false), Duplicate);
        assert_eq!(kind(J::Processing, R::Processing, true), Duplicate);
        assert_eq!(kind(J::Stalled, R::Completed, false), Applied);
        assert_eq!(kind(J::Stalled, R::Processing, false), Stale);
        assert_eq!(kind(J::Planned, R::Completed, false), Stale);
        for text in ["CANCELLED", "cancelled", "error"] {
            assert_eq!(kind(J::Queued, R::Undocumented(text.into()), false), Stale);
            assert_eq!(kind(J::Stalled, R::Undocumented(text.into()), false), Stale);
        }
    }

    #[test]
    fn an_earlier_attempt_is_stale_and_says_it_may_be_charged() {
        let old = Owner {
            current_attempt: 2,
            ..owner(JobState::Queued)
        };
        let (kind, detail) = classify(&old, &RemoteStatus::Completed, true);
        assert_eq!(kind, DeliveryKind::Stale);
        assert!(detail.contains("attempt 1") && detail.contains("charged"));
    }
}
