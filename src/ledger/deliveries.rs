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
//! - a callback is a hint, the gateway is the truth: a delivery never ends a job, downloads
//!   or charges. A final status makes the job's status call due now, and only that answer
//!   (an authenticated call by the engine) moves the job, with the output URLs the gateway
//!   gave; a body that disagrees with it is marked `unconfirmed` and changes nothing.
//!
//! Each delivery gets one outcome, stored in `deliveries.outcome`:
//! - `applied`: the job moved forward;
//! - `duplicate`: the same request_id and status were already applied, or the job already is
//!   in that final state;
//! - `stale`: the status would not move the job forward (PROCESSING after COMPLETED, QUEUED
//!   while processing, a different final status than the one recorded, a status the API does
//!   not document such as `CANCELLED`), or it is about an earlier attempt of the job;
//! - `orphan`: no job of this ledger has that request_id (recorded with `job_id` NULL);
//! - `confirming`: a final status (COMPLETED, FAILED, ERROR) for a job at the gateway or
//!   stalled: it changes nothing but the job's next status call, due now; that answer moves
//!   the job, and turns the delivery `confirmed` when it agrees (same status, and for
//!   COMPLETED the same output URLs) or `unconfirmed` when it does not;
//! - `adopting`: an unknown request_id on the callback path of an `uncertain` attempt: the
//!   attempt takes that request id and its status call falls due now; the answer makes the
//!   delivery `adopted` (the job follows the gateway from then on) or, for a 404,
//!   `unconfirmed` (the request id is dropped again);
//! - `wrong_path`: the body arrived on the callback path of another attempt than the one
//!   its request_id belongs to, or of one that cannot take a new request id: nothing changed.

use super::change::{apply_change, Change, Expect, Field};
use super::events::{cap_body, insert_event, Event};
use super::{JobState, Ledger, LedgerError, Result};
use crate::clock;
use crate::gateway::{RemoteJob, RemoteStatus};
use crate::lifecycle::{self, At, Learned, Reported, Step, Verdict, Via, Work};
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
    /// A final status waiting for the job's status call (then `confirmed` or `unconfirmed`).
    Confirming,
    Confirmed,
    /// The gateway's answer disagreed with it (status, output URLs): it changed nothing.
    Unconfirmed,
    /// An unknown request id on the path of an uncertain attempt, waiting for its status call
    /// (then `adopted` or `unconfirmed`).
    Adopting,
    Adopted,
    /// It arrived on the callback path of another attempt than its request id's, or of an
    /// attempt that cannot take it: nothing changed.
    WrongPath,
}

impl DeliveryKind {
    pub const ALL: [DeliveryKind; 10] = [
        DeliveryKind::Applied,
        DeliveryKind::Duplicate,
        DeliveryKind::Stale,
        DeliveryKind::Orphan,
        DeliveryKind::Confirming,
        DeliveryKind::Confirmed,
        DeliveryKind::Unconfirmed,
        DeliveryKind::Adopting,
        DeliveryKind::Adopted,
        DeliveryKind::WrongPath,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Applied => "applied",
            DeliveryKind::Duplicate => "duplicate",
            DeliveryKind::Stale => "stale",
            DeliveryKind::Orphan => "orphan",
            DeliveryKind::Confirming => "confirming",
            DeliveryKind::Confirmed => "confirmed",
            DeliveryKind::Unconfirmed => "unconfirmed",
            DeliveryKind::Adopting => "adopting",
            DeliveryKind::Adopted => "adopted",
            DeliveryKind::WrongPath => "wrong_path",
        }
    }
}

/// The attempt whose own callback path (`…/callback/TOKEN/a/<job>-<attempt>`) a body arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct CallbackPath {
    pub job_id: i64,
    pub attempt: i64,
}

impl CallbackPath {
    /// The path's last segments, `a/<job>-<attempt>`, appended to a batch's callback URL.
    pub fn suffix(self) -> String {
        format!("a/{}-{}", self.job_id, self.attempt)
    }

    /// Reads the end of a request path: `…/a/<job>-<attempt>`; `None` when it has none.
    pub fn parse_tail(path: &str) -> Option<CallbackPath> {
        let (rest, last) = path.rsplit_once('/')?;
        if !rest.ends_with("/a") && rest != "a" {
            return None;
        }
        let (job, attempt) = last.split_once('-')?;
        let number = |t: &str| {
            (!t.is_empty() && t.len() <= 18 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<i64>().ok())
                .flatten()
        };
        Some(CallbackPath {
            job_id: number(job)?,
            attempt: number(attempt)?,
        })
    }
}

/// What a status call said about a job's request id: the confirming answer its pending
/// callbacks are judged by.
#[derive(Debug, Clone)]
pub struct StatusSeen {
    pub job_id: i64,
    pub request_id: String,
    pub status: RemoteStatus,
    pub media_urls: Vec<String>,
    /// When the call was sent: only callbacks received before it are judged by it.
    pub asked_at: String,
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
    /// The attempt whose own callback path it arrived on, if any.
    pub path: Option<CallbackPath>,
}

/// The job (and attempt) a request_id belongs to.
struct Owner {
    job_id: i64,
    attempt: i64,
    /// The job's current attempt, which differs from `attempt` for an earlier one.
    current_attempt: i64,
    state: JobState,
}

impl Ledger {
    /// Records one callback body in one transaction: a `deliveries` row, a `callback` event,
    /// and what it does to its job (see the module docs).
    pub fn record_delivery(&mut self, body: &str) -> Result<DeliveryOutcome, DeliveryError> {
        self.record_delivery_on(body, None)
    }

    /// [`Ledger::record_delivery`] for a body that arrived on an attempt's own callback path.
    pub fn record_delivery_on(
        &mut self,
        body: &str,
        path: Option<CallbackPath>,
    ) -> Result<DeliveryOutcome, DeliveryError> {
        let remote = RemoteJob::from_json(body).map_err(DeliveryError::Malformed)?;
        // IMMEDIATE: take the write lock up front (waiting out the busy timeout), so that an
        // engine committing between this read and this write cannot make it fail.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(LedgerError::from)?;
        let now = clock::Stamp::now();
        let outcome = record_in(&tx, &remote, body, &now, path)?;
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
        self.adopt_orphans_of(std::slice::from_ref(&request_id))
    }

    /// [`Ledger::adopt_orphans`] for several request ids, which are looked up with one
    /// statement (a loop step's accepted submissions, which almost never have any).
    pub fn adopt_orphans_of<S: AsRef<str>>(&mut self, request_ids: &[S]) -> Result<usize> {
        if request_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = request_ids.iter().map(AsRef::as_ref).collect();
        let list = serde_json::to_string(&ids).expect("strings serialise");
        // Joined, not tested with `IN` and sorted in SQL: either copies rows into a temporary
        // table on every call.
        let mut found: Vec<(i64, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.id, d.body FROM json_each(?1) v
                 JOIN deliveries d ON d.request_id = v.value AND d.outcome = 'orphan'",
            )?;
            let rows = stmt.query_map([list], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        found.sort_unstable_by_key(|(id, _)| *id);
        found.dedup_by_key(|(id, _)| *id);
        let bodies: Vec<String> = found.into_iter().map(|(_, body)| body).collect();
        for body in &bodies {
            match self.record_delivery(body) {
                Ok(_) | Err(DeliveryError::Malformed(_)) => {}
                Err(DeliveryError::Ledger(e)) => return Err(e),
            }
        }
        Ok(bodies.len())
    }

    /// Records anew the orphan deliveries that arrived on the path of an attempt which has
    /// since become `uncertain` without a request id (its process was killed before the
    /// answer, or the answer was lost): each may adopt its request id. Returns how many.
    pub fn adopt_ghosts(&mut self, job_id: Option<i64>) -> Result<usize> {
        let found: Vec<(String, i64, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT d.body, d.path_job, d.path_attempt FROM deliveries d
                 JOIN jobs j ON j.id = d.path_job AND j.attempt = d.path_attempt
                 WHERE d.outcome = 'orphan' AND j.state = 'uncertain' AND j.request_id IS NULL
                 AND (?1 IS NULL OR d.path_job = ?1) ORDER BY d.id",
            )?;
            let rows = stmt.query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (body, job_id, attempt) in &found {
            let path = Some(CallbackPath {
                job_id: *job_id,
                attempt: *attempt,
            });
            match self.record_delivery_on(body, path) {
                Ok(_) | Err(DeliveryError::Malformed(_)) => {}
                Err(DeliveryError::Ledger(e)) => return Err(e),
            }
        }
        Ok(found.len())
    }

    /// Judges the callbacks waiting for these status answers (`confirming`, `adopting`, each
    /// received before its call was sent), in one transaction. Returns how many it judged.
    pub fn confirm_deliveries(&mut self, seen: &[StatusSeen]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let mut judged = 0;
        for answer in seen {
            judged += confirm_in(&tx, answer, &now)?;
        }
        tx.commit()?;
        Ok(judged)
    }

    /// A request id an uncertain attempt adopted is unknown to the gateway (404): the attempt
    /// drops it and stays uncertain, and the callbacks that brought it are `unconfirmed`.
    pub fn refuse_adoption(&mut self, job_id: i64, attempt: i64, request_id: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        tx.execute(
            "UPDATE jobs SET request_id = NULL, next_poll_at = NULL, updated_at = ?4
             WHERE id = ?1 AND attempt = ?2 AND state = 'uncertain' AND request_id = ?3",
            params![job_id, attempt, request_id, now.millis()],
        )?;
        tx.execute(
            "UPDATE attempts SET request_id = NULL
             WHERE job_id = ?1 AND attempt = ?2 AND state = 'uncertain' AND request_id = ?3",
            params![job_id, attempt, request_id],
        )?;
        tx.execute(
            "UPDATE deliveries SET outcome = 'unconfirmed'
             WHERE request_id = ?1 AND job_id = ?2 AND outcome = 'adopting'",
            params![request_id, job_id],
        )?;
        insert_event(
            &tx,
            Event::new(Some(job_id), Some(attempt), "confirmation").detail(format!(
                "the gateway does not know request id {request_id} (HTTP 404): not adopted; the job stays uncertain"
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Recorded deliveries, oldest first: all, or those of one request_id.
    pub fn deliveries(&self, request_id: Option<&str>) -> Result<Vec<DeliveryRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, received_at, request_id, remote_status, job_id, outcome, body,
             path_job, path_attempt FROM deliveries
             WHERE ?1 IS NULL OR request_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([request_id], |r| {
            let path = match (r.get(7)?, r.get(8)?) {
                (Some(job_id), Some(attempt)) => Some(CallbackPath { job_id, attempt }),
                _ => None,
            };
            Ok(DeliveryRow {
                id: r.get(0)?,
                received_at: r.get(1)?,
                request_id: r.get(2)?,
                remote_status: r.get(3)?,
                job_id: r.get(4)?,
                outcome: r.get(5)?,
                body: r.get(6)?,
                path,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Judges one status answer's waiting callbacks; how many.
pub(super) fn confirm_in(
    tx: &Transaction<'_>,
    seen: &StatusSeen,
    now: &crate::clock::Stamp,
) -> Result<usize> {
    let waiting: Vec<(i64, String, String, Option<i64>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT d.id, d.outcome, d.body, a.attempt FROM deliveries d
             LEFT JOIN attempts a ON a.job_id = d.job_id AND a.request_id = d.request_id
             WHERE d.request_id = ?1 AND d.job_id = ?2
             AND d.outcome IN ('confirming', 'adopting') AND d.received_at <= ?3",
        )?;
        let rows = stmt.query_map(params![seen.request_id, seen.job_id, seen.asked_at], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, outcome, body, attempt) in &waiting {
        let said = RemoteJob::from_json(body).ok();
        let (kind, why) = judge(outcome, said.as_ref(), seen);
        tx.prepare_cached("UPDATE deliveries SET outcome = ?2 WHERE id = ?1")?
            .execute(params![id, kind.as_str()])?;
        insert_event(
            tx,
            Event::new(Some(seen.job_id), *attempt, "confirmation")
                .remote(Some(seen.status.as_str()))
                .detail(format!("delivery {id} {kind}: {why}")),
            now,
        )?;
    }
    Ok(waiting.len())
}

/// Whether a waiting callback agrees with the gateway's answer, and why.
fn judge(outcome: &str, said: Option<&RemoteJob>, seen: &StatusSeen) -> (DeliveryKind, String) {
    let gateway = seen.status.as_str();
    if outcome == DeliveryKind::Adopting.as_str() {
        return (
            DeliveryKind::Adopted,
            format!(
                "the gateway knows request id {} ({gateway}): the uncertain attempt follows it",
                seen.request_id
            ),
        );
    }
    let Some(said) = said else {
        return (
            DeliveryKind::Unconfirmed,
            "its body no longer reads as a callback".into(),
        );
    };
    if said.status != seen.status {
        return (
            DeliveryKind::Unconfirmed,
            format!(
                "it said {}, the gateway says {gateway}; nothing changed by it",
                said.status.as_str()
            ),
        );
    }
    if said.status == RemoteStatus::Completed && said.media_urls != seen.media_urls {
        return (
            DeliveryKind::Unconfirmed,
            "its output URLs are not the gateway's; only the gateway's are downloaded".into(),
        );
    }
    (
        DeliveryKind::Confirmed,
        format!("the gateway says {gateway} too"),
    )
}

/// What a delivery is, the account of it, and the job and attempt it is recorded against.
type Decision = (DeliveryKind, String, Option<i64>, Option<i64>);

fn record_in(
    tx: &Transaction<'_>,
    remote: &RemoteJob,
    body: &str,
    now: &crate::clock::Stamp,
    path: Option<CallbackPath>,
) -> Result<DeliveryOutcome> {
    let status = &remote.status;
    let (kind, detail, job_id, attempt) = decide(tx, remote, now, path)?;
    let delivery_id = insert_delivery(tx, remote, body, now, path, job_id, kind)?;
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

/// Decides a delivery and makes the change it brings (a step, a status call due now, an
/// adopted request id), from its request id's owner and the path it arrived on.
fn decide(
    tx: &Transaction<'_>,
    remote: &RemoteJob,
    now: &crate::clock::Stamp,
    path: Option<CallbackPath>,
) -> Result<Decision> {
    let owner = find_owner(tx, &remote.request_id)?;
    Ok(match (&owner, path) {
        (Some(o), Some(p)) if (o.job_id, o.attempt) != (p.job_id, p.attempt) => (
            DeliveryKind::WrongPath,
            format!(
                "request id of job {} attempt {}, on the path of job {} attempt {}; nothing changed",
                o.job_id, o.attempt, p.job_id, p.attempt
            ),
            Some(o.job_id),
            Some(o.attempt),
        ),
        (Some(owner), _) => {
            let already = already_applied(tx, &remote.request_id, &remote.status)?;
            let (kind, detail) = classify(owner, &remote.status, already);
            match kind {
                DeliveryKind::Applied => apply(tx, owner, remote, now)?,
                DeliveryKind::Confirming => confirm_now(tx, owner, now)?,
                _ => {}
            }
            (kind, detail, Some(owner.job_id), Some(owner.attempt))
        }
        (None, Some(path)) => {
            let (kind, detail) = on_attempt_path(tx, path, &remote.request_id, now)?;
            let known = kind != DeliveryKind::WrongPath || job_exists(tx, path.job_id)?;
            let (job_id, attempt) = (path.job_id, path.attempt);
            (kind, detail, known.then_some(job_id), known.then_some(attempt))
        }
        (None, None) => (
            DeliveryKind::Orphan,
            "no job in this ledger has this request_id".to_string(),
            None,
            None,
        ),
    })
}

fn insert_delivery(
    tx: &Transaction<'_>,
    remote: &RemoteJob,
    body: &str,
    now: &crate::clock::Stamp,
    path: Option<CallbackPath>,
    job_id: Option<i64>,
    kind: DeliveryKind,
) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO deliveries (received_at, request_id, remote_status, job_id, outcome, body,
         path_job, path_attempt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        now,
        remote.request_id,
        remote.status.as_str(),
        job_id,
        kind.as_str(),
        cap_body(body),
        path.map(|p| p.job_id),
        path.map(|p| p.attempt),
    ])?;
    Ok(tx.last_insert_rowid())
}

fn job_exists(tx: &Transaction<'_>, job_id: i64) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .query_row([job_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// An unknown request id on an attempt's own path: adopted (pending its status call) by an
/// uncertain attempt without one; kept as an orphan while the attempt is still being sent
/// (its answer may yet bring the id); refused for any other attempt.
fn on_attempt_path(
    tx: &Transaction<'_>,
    path: CallbackPath,
    request_id: &str,
    now: &crate::clock::Stamp,
) -> Result<(DeliveryKind, String)> {
    let job: Option<(i64, String, Option<String>)> = tx
        .prepare_cached("SELECT attempt, state, request_id FROM jobs WHERE id = ?1")?
        .query_row([path.job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (job_id, attempt) = (path.job_id, path.attempt);
    let wrong = |why: String| Ok((DeliveryKind::WrongPath, format!("{why}; nothing changed")));
    let Some((current, state, known)) = job else {
        return wrong(format!("no job {job_id} in this ledger"));
    };
    if current != attempt {
        return wrong(format!(
            "job {job_id} is at attempt {current}, not {attempt}"
        ));
    }
    match (state.as_str(), known) {
        ("submitting", None) => Ok((
            DeliveryKind::Orphan,
            format!("job {job_id} attempt {attempt} is being sent; its answer may bring this request id"),
        )),
        ("uncertain", None) => {
            let change = Change {
                request_id: Some(request_id.to_string()),
                next_poll_at: Field::Set(now_ms()),
                expect: Some(Expect {
                    state: JobState::Uncertain,
                    attempt,
                }),
                ..Change::default()
            };
            apply_change(tx, job_id, attempt, &change, now)?;
            Ok((
                DeliveryKind::Adopting,
                format!("on the path of uncertain job {job_id} attempt {attempt}: adopted once its status call confirms it"),
            ))
        }
        (state, Some(other)) => wrong(format!(
            "job {job_id} attempt {attempt} is {state} with request id {other}"
        )),
        (state, None) => wrong(format!("job {job_id} attempt {attempt} is {state}")),
    }
}

/// The current attempt's request_id first (indexed), then an earlier attempt's.
fn find_owner(tx: &Transaction<'_>, request_id: &str) -> Result<Option<Owner>> {
    let current = tx
        .prepare_cached(
            "SELECT id, attempt, attempt, state FROM jobs WHERE request_id = ?1
             ORDER BY id LIMIT 1",
        )?
        .query_row([request_id], owner_from_row)
        .optional()?;
    if current.is_some() {
        return Ok(current);
    }
    Ok(tx
        .prepare_cached(
            "SELECT j.id, a.attempt, j.attempt, j.state FROM attempts a
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
    })
}

/// The same request id and status was applied already, or is waiting for (or has had) its
/// confirming call.
fn already_applied(tx: &Transaction<'_>, request_id: &str, status: &RemoteStatus) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE request_id = ?1 AND remote_status = ?2
             AND outcome IN ('applied', 'confirming', 'confirmed') LIMIT 1",
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
    let step = callback_step(owner, status);
    match step.verdict {
        Verdict::Applied => (DeliveryKind::Applied, format!("{current} -> {}", step.next)),
        // The client gave up polling a stalled job, but the gateway kept it: its final status
        // is news, confirmed like any other.
        Verdict::Hint => (
            DeliveryKind::Confirming,
            format!("{st} is a hint: the job stays {current} and its status call is due now"),
        ),
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

/// A final status: only the job's status call is made due now.
fn confirm_now(tx: &Transaction<'_>, owner: &Owner, now: &crate::clock::Stamp) -> Result<()> {
    let change = Change {
        next_poll_at: Field::Set(now_ms()),
        expect: Some(Expect {
            state: owner.state,
            attempt: owner.attempt,
        }),
        ..Change::default()
    };
    apply_change(tx, owner.job_id, owner.attempt, &change, now)
}

/// A status that moves the job forward without ending it (QUEUED to PROCESSING): written
/// as said; the fallback poll stays scheduled as it was.
fn apply(
    tx: &Transaction<'_>,
    owner: &Owner,
    remote: &RemoteJob,
    now: &crate::clock::Stamp,
) -> Result<()> {
    let step = callback_step(owner, &remote.status);
    if step.verdict != Verdict::Applied || step.work != Work::Keep {
        return Ok(());
    }
    let change = Change {
        state: step.moves_to(owner.state),
        remote_status: Some(remote.status.as_str().to_string()),
        ..Change::default()
    };
    apply_change(tx, owner.job_id, owner.attempt, &change, now)
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
        assert_eq!(kind(J::Queued, R::Completed, false), Confirming);
        assert_eq!(kind(J::Processing, R::Error, false), Confirming);
        assert_eq!(kind(J::Processing, R::Queued, false), Stale);
        assert_eq!(kind(J::Processing, R::Processing, false), Stale);
        assert_eq!(kind(J::Completed, R::Processing, false), Stale);
        assert_eq!(kind(J::Completed, R::Failed, false), Stale);
        assert_eq!(kind(J::Completed, R::Completed, false), Duplicate);
        assert_eq!(kind(J::Processing, R::Processing, true), Duplicate);
        assert_eq!(kind(J::Stalled, R::Completed, false), Confirming);
        assert_eq!(kind(J::Stalled, R::Processing, false), Stale);
        assert_eq!(kind(J::Planned, R::Completed, false), Stale);
        for text in ["CANCELLED", "cancelled", "error"] {
            assert_eq!(kind(J::Queued, R::Undocumented(text.into()), false), Stale);
            assert_eq!(kind(J::Stalled, R::Undocumented(text.into()), false), Stale);
        }
    }

    #[test]
    fn attempt_paths_read_back() {
        let path = CallbackPath {
            job_id: 12,
            attempt: 3,
        };
        assert_eq!(path.suffix(), "a/12-3");
        assert_eq!(CallbackPath::parse_tail("/callback/tok/a/12-3"), Some(path));
        for bad in [
            "/callback/tok",
            "/callback/tok/a/12",
            "/callback/tok/a/x-1",
            "/b/1-2",
            "/callback/tok/a/-1-2",
        ] {
            assert_eq!(CallbackPath::parse_tail(bad), None, "{bad}");
        }
    }

    fn seen(status: RemoteStatus, urls: &[&str]) -> StatusSeen {
        StatusSeen {
            job_id: 1,
            request_id: "r".into(),
            status,
            media_urls: urls.iter().map(|u| u.to_string()).collect(),
            asked_at: String::new(),
        }
    }

    #[test]
    fn a_callback_is_confirmed_only_by_the_same_status_and_outputs() {
        let said = |status: RemoteStatus, urls: &[&str]| RemoteJob {
            status,
            media_urls: urls.iter().map(|u| u.to_string()).collect(),
            ..RemoteJob::from_json(r#"{"request_id":"r","status":"QUEUED"}"#).unwrap()
        };
        let (c, u) = (RemoteStatus::Completed, RemoteStatus::Processing);
        let judged = |s: &RemoteJob, g: &StatusSeen| judge("confirming", Some(s), g).0;
        assert_eq!(
            judged(&said(c.clone(), &["a"]), &seen(c.clone(), &["a"])),
            DeliveryKind::Confirmed
        );
        assert_eq!(
            judged(&said(c.clone(), &["trap"]), &seen(c.clone(), &["a"])),
            DeliveryKind::Unconfirmed
        );
        assert_eq!(
            judged(&said(c.clone(), &["a"]), &seen(u.clone(), &[])),
            DeliveryKind::Unconfirmed
        );
        assert_eq!(
            judge("adopting", None, &seen(u, &[])).0,
            DeliveryKind::Adopted
        );
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
