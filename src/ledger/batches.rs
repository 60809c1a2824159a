//! Batches: what each remembers (hooks, output folder, spend cap), which jobs belong to it,
//! and the copies of earlier jobs' outputs placed in its folder.
//!
//! Invariants kept here:
//! - a batch's cap changes only with a `budget` event saying from what to what and why;
//! - a job belongs to the batch it was recorded in (`jobs.batch`) and to every batch it joined
//!   later (`batch_members`); joining never creates an attempt, so it is never paid again;
//! - a key names one job: a new job whose key is already taken by a job with other parameters
//!   is a [`KeyConflict`], never silently dropped or merged.

use super::events::{insert_event, Event};
use super::rows::{job_from_row, NewJob, OutputRow, JOB_COLUMNS, JOB_FROM};
use super::{JobRow, Ledger, LedgerError, Result};
use crate::clock;
use crate::money;
use crate::params::JobParams;
use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;

/// A new job whose key already names a job with other parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConflict {
    /// Its position in the list given.
    pub index: usize,
    pub key: String,
    /// The job that holds the key.
    pub job_id: i64,
    /// That job's parameters, as recorded when it was planned.
    pub existing: String,
    /// The new job's parameters.
    pub given: String,
}

/// A tag of a job that joined a batch, whose value differs from the one the job already has.
/// The existing value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagConflict {
    pub job_id: i64,
    pub key: String,
    pub kept: String,
    pub given: String,
}

/// A member's output file to copy into the member batch's folder.
#[derive(Debug, Clone)]
pub struct MemberToPlace {
    pub job: JobRow,
    pub outputs: Vec<OutputRow>,
}

/// A copy placed for a member batch.
#[derive(Debug, Clone)]
pub struct PlacedCopy {
    pub idx: i64,
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
}

/// One line of parameters, for messages: the fields that decide the result and its price.
pub(super) fn describe(p: &JobParams) -> String {
    format!(
        "image {}, fidelity {}, upscale {}, background_enhance {}, face_upsample {}",
        p.image.trim(),
        p.fidelity.normalize(),
        p.upscale,
        p.background_enhance,
        p.face_upsample
    )
}

/// The parameters a job was planned with (an `on_submit` hook may have changed the row's
/// since), or `None` for a key nobody holds.
pub(super) fn planned_params(
    conn: &rusqlite::Connection,
    key: &str,
) -> Result<Option<(i64, JobParams)>> {
    let sql = format!("SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.key = ?1");
    let Some(row) = conn
        .prepare_cached(&sql)?
        .query_row([key], job_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    let body: Option<String> = conn
        .prepare_cached(
            "SELECT t.body FROM events e JOIN event_texts t ON t.id = e.id
             WHERE e.job_id = ?1 AND e.kind = 'planned' ORDER BY e.id LIMIT 1",
        )?
        .query_row([row.id], |r| r.get(0))
        .optional()?
        .flatten();
    let planned = body
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| serde_json::from_value::<JobParams>(v.get("params")?.clone()).ok());
    Ok(Some((row.id, planned.unwrap_or_else(|| row.params()))))
}

/// The conflict of one new job with the ledger, if its key names a job with other parameters.
pub(super) fn key_conflict(
    conn: &rusqlite::Connection,
    index: usize,
    job: &NewJob,
) -> Result<Option<KeyConflict>> {
    let key = job.key();
    let Some((job_id, planned)) = planned_params(conn, &key)? else {
        return Ok(None);
    };
    if planned.normalised() == job.params.normalised() {
        return Ok(None);
    }
    Ok(Some(KeyConflict {
        index,
        key,
        job_id,
        existing: describe(&planned),
        given: describe(&job.params),
    }))
}

/// A job already in the ledger that a new row matches: it joins the row's batch (when that is
/// another one) and gains the row's tags. Returns whether it joined, and the tags whose value
/// differs from the one it has.
pub(super) fn join(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    job: &NewJob,
    now: &crate::clock::Stamp,
) -> Result<(bool, Vec<TagConflict>)> {
    let current: Option<String> = tx
        .prepare_cached("SELECT batch FROM jobs WHERE id = ?1")?
        .query_row([job_id], |r| r.get(0))?;
    let mut joined = false;
    if let Some(batch) = job
        .batch
        .as_deref()
        .filter(|b| current.as_deref() != Some(*b))
    {
        tx.prepare_cached("INSERT OR IGNORE INTO batches (name, created_at) VALUES (?1, ?2)")?
            .execute(params![batch, now])?;
        joined = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO batch_members (batch, job_id, joined_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![batch, job_id, now])?
            == 1;
        if joined {
            let detail = format!(
                "joined batch {batch}: a row of it matches this job, which is reused (not sent or paid again)"
            );
            insert_event(
                tx,
                Event::new(Some(job_id), None, "batch_join").detail(detail),
                now,
            )?;
        }
    }
    let conflicts = add_tags(tx, job_id, job, now)?;
    Ok((joined, conflicts))
}

/// The tags of a matching row that the reused job lacks are added to it; one it holds with
/// another value is a conflict, kept as it was.
fn add_tags(
    tx: &rusqlite::Transaction<'_>,
    job_id: i64,
    job: &NewJob,
    now: &crate::clock::Stamp,
) -> Result<Vec<TagConflict>> {
    let mut conflicts = Vec::new();
    for (key, value) in &job.tags {
        let kept: Option<String> = tx
            .prepare_cached("SELECT value FROM tags WHERE job_id = ?1 AND key = ?2")?
            .query_row(params![job_id, key], |r| r.get(0))
            .optional()?;
        match kept {
            Some(kept) if kept == *value => {}
            Some(kept) => conflicts.push(TagConflict {
                job_id,
                key: key.clone(),
                kept,
                given: value.clone(),
            }),
            None => {
                tx.prepare_cached("INSERT INTO tags (job_id, key, value) VALUES (?1, ?2, ?3)")?
                    .execute(params![job_id, key, value])?;
                let from = job.batch.as_deref().unwrap_or("(none)");
                let detail = format!("tag {key}={value} (from a row of batch {from})");
                insert_event(
                    tx,
                    Event::new(Some(job_id), None, "tag").detail(detail),
                    now,
                )?;
            }
        }
    }
    Ok(conflicts)
}

impl Ledger {
    /// The new jobs whose key already names a job with other parameters (read only).
    pub fn key_conflicts(&self, jobs: &[NewJob]) -> Result<Vec<KeyConflict>> {
        let mut out = Vec::new();
        for (index, job) in jobs.iter().enumerate() {
            if let Some(conflict) = key_conflict(&self.conn, index, job)? {
                out.push(conflict);
            }
        }
        Ok(out)
    }

    /// The spend cap remembered for a batch, if any.
    pub fn batch_budget(&self, name: &str) -> Result<Option<Decimal>> {
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT budget FROM batches WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?
            .flatten();
        text.map(|t| {
            money::parse_exact(&t).map_err(|_| LedgerError::Corrupt {
                what: "batches.budget",
                value: t,
            })
        })
        .transpose()
    }

    /// Every batch's remembered cap.
    pub fn batch_budgets(&self) -> Result<std::collections::HashMap<String, Decimal>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, budget FROM batches WHERE budget IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (name, text) = row?;
            let cap = money::parse_exact(&text).map_err(|_| LedgerError::Corrupt {
                what: "batches.budget",
                value: text,
            })?;
            out.insert(name, cap);
        }
        Ok(out)
    }

    /// Remembers (or, with `None`, lifts) a batch's cap, with a `budget` event saying from what
    /// to what and `why`. Nothing is written when the cap does not change; returns whether it did.
    pub fn set_batch_budget(
        &mut self,
        name: &str,
        cap: Option<Decimal>,
        why: &str,
    ) -> Result<bool> {
        let before = self.batch_budget(name)?;
        if before == cap {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        tx.execute(
            "INSERT INTO batches (name, created_at, budget) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET budget = ?3",
            params![name, now, cap.map(money::exact)],
        )?;
        let show = |c: Option<Decimal>| {
            c.map(|c| format!("{} USD", money::exact(c)))
                .unwrap_or_else(|| "none".into())
        };
        let detail = format!(
            "batch {name}: cap {} (was {}), {why}",
            show(cap),
            show(before)
        );
        let body = serde_json::json!({
            "batch": name,
            "budget": cap.map(money::exact),
            "was": before.map(money::exact),
        });
        insert_event(
            &tx,
            Event::new(None, None, "budget")
                .detail(detail)
                .body(body.to_string()),
            &now,
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// How many jobs joined a batch from earlier batches (or from no batch).
    pub fn reused_in_batch(&self, batch: &str) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM batch_members WHERE batch = ?1")?
            .query_row([batch], |r| r.get(0))?)
    }

    /// Member jobs of a batch that are completed with outputs downloaded, whose outputs have no
    /// copy in the batch's folder yet.
    pub fn members_to_place(&self, batch: &str) -> Result<Vec<MemberToPlace>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} JOIN batch_members m ON m.job_id = j.id
             WHERE m.batch = ?1 AND j.state = 'completed' AND j.post IS NOT 'download'
               AND EXISTS (SELECT 1 FROM outputs o WHERE o.job_id = j.id AND o.attempt = j.attempt)
               AND NOT EXISTS (SELECT 1 FROM member_outputs c
                               WHERE c.batch = ?1 AND c.job_id = j.id AND c.attempt = j.attempt)
             ORDER BY j.id"
        );
        let jobs: Vec<JobRow> = {
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map([batch], job_from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let outputs = self
                .outputs_of(job.id)?
                .into_iter()
                .filter(|o| o.attempt == job.attempt)
                .collect();
            out.push(MemberToPlace { job, outputs });
        }
        Ok(out)
    }

    /// Member jobs of a batch not yet completed and downloaded, by the batch they were recorded
    /// in: their own batch's runs (or a run over every batch) send them, not this batch's.
    pub fn members_pending(&self, batch: &str) -> Result<Vec<(Option<String>, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT j.batch, count(*) FROM batch_members m JOIN jobs j ON j.id = m.job_id
             WHERE m.batch = ?1 AND (j.state IN ('planned', 'held', 'submitting', 'queued', 'processing')
                                     OR j.post = 'download')
             GROUP BY j.batch ORDER BY j.batch",
        )?;
        let rows = stmt.query_map([batch], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the copies of a member job's outputs placed in a batch's folder, with an event.
    pub fn record_member_outputs(
        &mut self,
        batch: &str,
        job_id: i64,
        attempt: i64,
        copies: &[PlacedCopy],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        for c in copies {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO member_outputs (batch, job_id, attempt, idx, path, bytes, sha256, placed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![batch, job_id, attempt, c.idx, c.path, c.bytes, c.sha256, now])?;
        }
        let paths: Vec<&str> = copies.iter().map(|c| c.path.as_str()).collect();
        let detail = format!(
            "output copied for batch {batch} (reused, no new charge): {}",
            paths.join(", ")
        );
        insert_event(
            &tx,
            Event::new(Some(job_id), Some(attempt), "member_output").detail(detail),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs that joined each batch, for reports: (batch, joined_at) of every membership.
    pub(super) fn memberships(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT batch, joined_at FROM batch_members ORDER BY batch, job_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
