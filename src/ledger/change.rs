//! A change of one job's row and its current attempt, and how it is applied in SQL.

use super::events::Event;
use super::{JobState, Result};
use crate::money;
use rusqlite::{params, Transaction};
use rust_decimal::Decimal;

/// What a change does to one nullable column: leaves it as it is, sets it, or clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Leave,
    Set(T),
    Clear,
}

impl<T> Field<T> {
    /// `Set` for `Some`, `Clear` for `None`.
    pub fn set_or_clear(value: Option<T>) -> Self {
        match value {
            Some(v) => Field::Set(v),
            None => Field::Clear,
        }
    }

    fn touches(&self) -> bool {
        !matches!(self, Field::Leave)
    }

    fn value(&self) -> Option<&T> {
        match self {
            Field::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// The post-processing a job still owes (`jobs.post`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Post {
    /// Its outputs are to be downloaded (and its charge recorded).
    Download,
    /// Hooks are to be run.
    Hooks,
}

impl Post {
    pub fn as_str(self) -> &'static str {
        match self {
            Post::Download => "download",
            Post::Hooks => "hooks",
        }
    }

    /// Reads `jobs.post`; `None` for no mark (or one this version does not know).
    pub fn parse(text: Option<&str>) -> Option<Post> {
        match text? {
            "download" => Some(Post::Download),
            "hooks" => Some(Post::Hooks),
            _ => None,
        }
    }
}

/// The attempt is marked as sent now, at this price and estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Submitted {
    pub price: Decimal,
    pub estimate: Option<Decimal>,
}

/// An input size learned for the job, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSize {
    pub width: u32,
    pub height: u32,
    pub source: &'static str,
}

/// Apply only if the job is still in this state and attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expect {
    pub state: JobState,
    pub attempt: i64,
}

/// A change to one job's row and its current attempt. `None` and `Field::Leave` leave a
/// column as it is.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub state: Option<JobState>,
    pub request_id: Option<String>,
    pub remote_status: Option<String>,
    /// When the job is next polled (or downloaded), in Unix ms; `Clear` stops polling.
    pub next_poll_at: Field<i64>,
    pub count_poll: bool,
    /// The post-processing owed; `Clear` clears it.
    pub post: Field<Post>,
    pub reason: Field<String>,
    pub error: Field<String>,
    pub output_urls: Option<Vec<String>>,
    pub submitted: Option<Submitted>,
    pub finished: bool,
    pub input_size: Option<InputSize>,
    /// Apply only if the job is still in this state and attempt (a poll answer must not undo
    /// what a callback recorded while the poll was in flight). The event is kept either way.
    pub expect: Option<Expect>,
}

/// One job's change with the event that explains it, as [`crate::ledger::Ledger::record`]
/// writes them.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    pub job_id: i64,
    pub attempt: i64,
    pub change: Change,
    pub event: Event,
}

impl JobUpdate {
    pub fn new(job_id: i64, attempt: i64, change: Change, event: Event) -> Self {
        JobUpdate {
            job_id,
            attempt,
            change,
            event,
        }
    }
}

/// Applies a change to a job's row and, when the row changed, to its current attempt.
pub(super) fn apply_change(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    c: &Change,
    now: &crate::clock::Stamp,
) -> Result<()> {
    if update_job(tx, job_id, c, now)? {
        update_attempt(tx, job_id, attempt, c, now)?;
    }
    Ok(())
}

/// The job's row; whether it changed (not when `expect` does not hold).
fn update_job(
    tx: &Transaction<'_>,
    job_id: i64,
    c: &Change,
    now: &crate::clock::Stamp,
) -> Result<bool> {
    let urls = c
        .output_urls
        .as_ref()
        .map(|u| serde_json::to_string(u).unwrap_or_default());
    let changed = tx.prepare_cached(update_job_sql(c))?.execute(params![
        job_id,
        c.state.map(JobState::as_str),
        c.request_id,
        c.remote_status,
        c.next_poll_at.touches(),
        c.next_poll_at.value(),
        c.count_poll as i64,
        c.post.touches(),
        c.post.value().map(|p| p.as_str()),
        c.reason.touches(),
        c.reason.value(),
        c.error.touches(),
        c.error.value(),
        urls,
        now.millis(),
        c.expect.map(|e| e.state.as_str()),
        c.expect.map(|e| e.attempt),
    ])?;
    // The input size in a statement of its own, so that the others (every poll's) do not
    // touch the columns whose change makes the `jobs` trigger write event texts out.
    if let (true, Some(size)) = (changed > 0, c.input_size) {
        tx.prepare_cached(
            "UPDATE jobs SET input_width = ?2, input_height = ?3, size_source = ?4 WHERE id = ?1",
        )?
        .execute(params![job_id, size.width, size.height, size.source])?;
    }
    Ok(changed > 0)
}

/// The statement of [`update_job`]: an indexed column (`state`, `request_id`, `next_poll_at`,
/// `post`) is named only when the change sets it, since SQLite rewrites the index entries of
/// every column a statement assigns, even to the value it had. Its 16 texts are built
/// once per process and each prepared once.
fn update_job_sql(c: &Change) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (0..16u8)
            .map(|mask| {
                let set = |bit: u8, column: &'static str| if mask & bit != 0 { column } else { "" };
                format!(
                    "UPDATE jobs SET
            {}{}{}{}
            remote_status = coalesce(?4, remote_status),
            polls = polls + ?7,
            reason = CASE WHEN ?10 THEN ?11 ELSE reason END,
            error = CASE WHEN ?12 THEN ?13 ELSE error END,
            output_urls = coalesce(?14, output_urls),
            updated_at = ?15
         WHERE id = ?1 AND (?16 IS NULL OR (state = ?16 AND attempt = ?17))",
                    set(1, "state = ?2, "),
                    set(2, "request_id = ?3, "),
                    set(4, "next_poll_at = ?6, "),
                    set(8, "post = ?9, "),
                )
            })
            .collect()
    });
    let mask = u8::from(c.state.is_some())
        | u8::from(c.request_id.is_some()) << 1
        | u8::from(c.next_poll_at.touches()) << 2
        | u8::from(c.post.touches()) << 3;
    &texts[usize::from(mask)]
}

/// The job's current attempt. A change that names none of its columns (an input size, a
/// download's bookkeeping) leaves the row unwritten.
fn update_attempt(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    c: &Change,
    now: &crate::clock::Stamp,
) -> Result<()> {
    if c.state.is_none() && c.request_id.is_none() && c.submitted.is_none() && !c.finished {
        return Ok(());
    }
    tx.prepare_cached(
        "UPDATE attempts SET
            state = coalesce(?3, state),
            request_id = coalesce(?4, request_id),
            submitted_at = CASE WHEN ?5 THEN ?7 ELSE submitted_at END,
            finished_at = CASE WHEN ?6 THEN ?7 ELSE finished_at END
         WHERE job_id = ?1 AND attempt = ?2",
    )?
    .execute(params![
        job_id,
        attempt,
        c.state.map(JobState::as_str),
        c.request_id,
        c.submitted.is_some(),
        c.finished,
        now.millis(),
    ])?;
    // The price and estimate in a statement of their own, as the input size above.
    if let Some(s) = c.submitted {
        tx.prepare_cached(
            "UPDATE attempts SET price_per_mp = ?3, estimated_cost = coalesce(?4, estimated_cost)
             WHERE job_id = ?1 AND attempt = ?2",
        )?
        .execute(params![
            job_id,
            attempt,
            money::exact(s.price),
            s.estimate.map(money::exact)
        ])?;
    }
    Ok(())
}
