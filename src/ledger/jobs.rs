//! Jobs as the ledger sees them: enqueueing (idempotent by key) and reading.

use super::rows::{event_from_row, job_from_row, EventRow, JobFilter, JobRow, NewJob, OutputRow};
use super::rows::{JOB_COLUMNS, JOB_FROM};
use super::{JobState, Ledger, LedgerError, Result};
use crate::clock;
use rusqlite::{params, OptionalExtension};
use std::str::FromStr;

/// What enqueueing a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    /// False when a job with the same key was already in the ledger (nothing was added).
    pub added: bool,
    /// True when that job was in another batch (or none) and joined this job's batch.
    pub joined: bool,
}

/// What enqueueing a list of jobs did, with the tag values that could not be added to jobs
/// already in the ledger because they hold another value for that tag.
#[derive(Debug, Clone, Default)]
pub struct EnqueueReport {
    pub items: Vec<Enqueued>,
    pub tag_conflicts: Vec<super::batches::TagConflict>,
}

impl Ledger {
    /// Records jobs as planned, in one transaction. A job whose key is already in the ledger is
    /// left as it is (idempotency); the answer says which were added.
    pub fn enqueue(&mut self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        Ok(self.enqueue_reporting(jobs)?.items)
    }

    /// [`Ledger::enqueue`], also telling which tags of reused jobs kept another value. A job
    /// whose key names a job with other parameters fails the whole call
    /// ([`LedgerError::KeyConflict`]) and nothing is written; a job matching one already in the
    /// ledger joins its batch ([`Enqueued::joined`]) and adds its new tags.
    pub fn enqueue_reporting(&mut self, jobs: &[NewJob]) -> Result<EnqueueReport> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let price = super::prices::price_in_force(&tx, now.text())?;
        let mut report = EnqueueReport {
            items: Vec::with_capacity(jobs.len()),
            tag_conflicts: Vec::new(),
        };
        for (index, job) in jobs.iter().enumerate() {
            if let Some(c) = super::batches::key_conflict(&tx, index, job)? {
                return Err(LedgerError::KeyConflict {
                    key: c.key,
                    job_id: c.job_id,
                    existing: c.existing,
                });
            }
            report.items.push(enqueue_one(
                &tx,
                job,
                &now,
                &price,
                &mut report.tag_conflicts,
            )?);
        }
        tx.commit()?;
        Ok(report)
    }

    /// Ensures a batch row exists, remembering its hooks and output folder.
    pub fn upsert_batch(
        &mut self,
        name: &str,
        hooks: Option<&[String]>,
        out_dir: Option<&str>,
    ) -> Result<()> {
        let hooks_json = hooks.map(|h| serde_json::to_string(h).unwrap_or_else(|_| "[]".into()));
        self.conn.execute(
            "INSERT INTO batches (name, created_at, hooks, out_dir) VALUES (?1, ?2, coalesce(?3, '[]'), ?4)
             ON CONFLICT(name) DO UPDATE SET
               hooks = coalesce(?3, batches.hooks),
               out_dir = coalesce(?4, batches.out_dir)",
            params![name, clock::now_stamp(), hooks_json, out_dir],
        )?;
        Ok(())
    }

    /// Every batch's remembered output folder.
    pub fn batch_out_dirs(&self) -> Result<std::collections::HashMap<String, std::path::PathBuf>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, out_dir FROM batches WHERE out_dir IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (name, dir) = row?;
            out.insert(name, std::path::PathBuf::from(dir));
        }
        Ok(out)
    }

    /// The hooks and output folder remembered for a batch.
    pub fn batch_settings(&self, name: &str) -> Result<Option<(Vec<String>, Option<String>)>> {
        let row: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT hooks, out_dir FROM batches WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(hooks, out)| (serde_json::from_str(&hooks).unwrap_or_default(), out)))
    }

    /// One job by id.
    pub fn job(&self, id: i64) -> Result<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.id = ?1");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([id], job_from_row)
            .optional()?)
    }

    /// The jobs of these ids that exist, by id, read in one statement (so in one read
    /// transaction: the engine reads the jobs of all the results a loop step takes at once).
    /// The list is joined, not tested with `IN`, which would copy it into a temporary table
    /// on every call.
    pub fn jobs_by_id(&self, ids: &[i64]) -> Result<std::collections::HashMap<i64, JobRow>> {
        if ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM json_each(?1) v JOIN jobs j ON j.id = v.value
             LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt"
        );
        let list = serde_json::to_string(ids).expect("integers serialise");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([list], job_from_row)?;
        rows.map(|row| row.map(|job| (job.id, job)))
            .collect::<rusqlite::Result<_>>()
            .map_err(Into::into)
    }

    /// A job named by id, key or request id.
    pub fn find_job(&self, reference: &str) -> Result<JobRow> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.key = ?1 OR j.request_id = ?1
             OR j.id = (SELECT job_id FROM attempts WHERE request_id = ?1 LIMIT 1) LIMIT 1"
        );
        if let Ok(id) = reference.parse::<i64>() {
            if let Some(job) = self.job(id)? {
                return Ok(job);
            }
        }
        self.conn
            .query_row(&sql, [reference], job_from_row)
            .optional()?
            .ok_or_else(|| LedgerError::NoSuchJob(reference.to_string()))
    }

    /// Calls `each` for every job matching the filter, in id order, without loading them all.
    pub fn for_each_job(
        &self,
        filter: &JobFilter,
        mut each: impl FnMut(JobRow) -> Result<()>,
    ) -> Result<()> {
        let mut sql = format!("SELECT {JOB_COLUMNS} {JOB_FROM} WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if !filter.states.is_empty() {
            let marks: Vec<String> = filter
                .states
                .iter()
                .map(|s| {
                    args.push(s.as_str().to_string());
                    format!("?{}", args.len())
                })
                .collect();
            sql.push_str(&format!(" AND j.state IN ({})", marks.join(", ")));
        }
        if let Some(batch) = &filter.batch {
            // The batch's own jobs and the earlier ones that joined it.
            args.push(batch.clone());
            let n = args.len();
            sql.push_str(&format!(
                " AND (j.batch = ?{n} OR j.id IN (SELECT job_id FROM batch_members WHERE batch = ?{n}))"
            ));
        }
        sql.push_str(" ORDER BY j.id");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), job_from_row)?;
        for row in rows {
            each(row?)?;
        }
        Ok(())
    }

    /// Every event of a job, in order, each whole: bodies stored by reference rebuilt, and
    /// download and charge details rebuilt from the rows they refer to.
    pub fn events_of(&self, job_id: i64) -> Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare_cached(EVENTS_QUERY)?;
        let rows = stmt.query_map([job_id], |row| {
            let mut event = event_from_row(row)?;
            event.same_as = row.get(10)?;
            if let (Some(base), Some(prefix), Some(suffix), Some(middle)) = (
                row.get::<_, Option<String>>(11)?,
                row.get::<_, Option<i64>>(12)?,
                row.get::<_, Option<i64>>(13)?,
                row.get::<_, Option<String>>(14)?,
            ) {
                event.body =
                    super::bodies::rebuild(&base, prefix as usize, suffix as usize, &middle);
            }
            if event.detail.is_none() {
                event.detail = referred_detail(row)?;
            }
            Ok(event)
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The tags of a job, by key.
    pub fn tags_of(&self, job_id: i64) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM tags WHERE job_id = ?1 ORDER BY key")?;
        let rows = stmt.query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The downloaded files of a job, every attempt.
    pub fn outputs_of(&self, job_id: i64) -> Result<Vec<OutputRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT attempt, idx, url, path, bytes, sha256, width, height FROM outputs
             WHERE job_id = ?1 ORDER BY attempt, idx",
        )?;
        let rows = stmt.query_map([job_id], |r| {
            Ok(OutputRow {
                attempt: r.get(0)?,
                idx: r.get(1)?,
                url: r.get(2)?,
                path: r.get(3)?,
                bytes: r.get(4)?,
                sha256: r.get(5)?,
                width: r.get(6)?,
                height: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Number of jobs per state, for a batch or all.
    pub fn count_by_state(&self, batch: Option<&str>) -> Result<Vec<(JobState, i64)>> {
        // Two statements, so that a batch is counted from the jobs_by_batch index alone: with
        // `?1 IS NULL OR batch = ?1` SQLite read every row of the table.
        let mut stmt = match batch {
            None => self
                .conn
                .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?,
            Some(_) => self.conn.prepare_cached(
                "SELECT state, count(*) FROM jobs WHERE batch = ?1 GROUP BY state",
            )?,
        };
        let rows = stmt.query_map(rusqlite::params_from_iter(batch), |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            let state = JobState::from_str(&state).map_err(|_| LedgerError::Corrupt {
                what: "jobs.state",
                value: state,
            })?;
            out.push((state, n));
        }
        out.sort();
        Ok(out)
    }
}

fn enqueue_one(
    tx: &rusqlite::Transaction<'_>,
    job: &NewJob,
    now: &crate::clock::Stamp,
    price: &crate::money::Price,
    tag_conflicts: &mut Vec<super::batches::TagConflict>,
) -> Result<Enqueued> {
    let key = job.key();
    if let Some(id) = tx
        .prepare_cached("SELECT id FROM jobs WHERE key = ?1")?
        .query_row([&key], |r| r.get(0))
        .optional()?
    {
        let (joined, conflicts) = super::batches::join(tx, id, job, now)?;
        tag_conflicts.extend(conflicts);
        return Ok(Enqueued {
            id,
            added: false,
            joined,
        });
    }
    if let Some(batch) = &job.batch {
        tx.prepare_cached("INSERT OR IGNORE INTO batches (name, created_at) VALUES (?1, ?2)")?
            .execute(params![batch, now])?;
    }
    let id = insert_job(tx, job, &key, now)?;
    if let Some(file) = &job.local {
        super::uploads::insert_upload(tx, id, file, &job.params.image, now)?;
    }
    let estimate = insert_first_attempt(tx, id, job, price)?;
    record_planned(tx, id, job, &key, estimate, price, now)?;
    Ok(Enqueued {
        id,
        added: true,
        joined: false,
    })
}

/// The new job's row; its id.
fn insert_job(
    tx: &rusqlite::Transaction<'_>,
    job: &NewJob,
    key: &str,
    now: &crate::clock::Stamp,
) -> Result<i64> {
    let p = &job.params;
    let filter = p
        .webhook_events_filter
        .as_ref()
        .map(|f| serde_json::to_string(f).unwrap_or_default());
    tx.prepare_cached(
        "INSERT INTO jobs (key, batch, image_url, fidelity, upscale, background_enhance,
            face_upsample, webhook, webhook_events_filter, webhook_url, webhook_mode,
            input_width, input_height, size_source, state, attempt, expects_callbacks,
            created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'planned', 1, ?15, ?16, ?16)",
    )?
    .execute(params![
        key,
        job.batch,
        p.image,
        p.fidelity.normalize().to_string(),
        p.upscale,
        p.background_enhance,
        p.face_upsample,
        p.webhook,
        filter,
        p.webhook_url,
        p.webhook_mode.map(|m| m.as_str()),
        job.size.map(|s| s.0),
        job.size.map(|s| s.1),
        job.size.and(job.size_source),
        p.expects_callbacks(),
        now.millis(),
    ])?;
    Ok(tx.last_insert_rowid())
}

/// The new job's first attempt, estimated at `price` when its size is known, and its tags;
/// the estimate.
fn insert_first_attempt(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    job: &NewJob,
    price: &crate::money::Price,
) -> Result<Option<rust_decimal::Decimal>> {
    let p = &job.params;
    let estimate = job.size.map(|(w, h)| {
        let (ow, oh) = crate::money::output_size(w, h, p.upscale);
        price.cost(ow, oh)
    });
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, attempt, state, price_per_mp, estimated_cost)
         VALUES (?1, 1, 'planned', ?2, ?3)",
    )?
    .execute(params![
        id,
        crate::money::exact(price.per_megapixel),
        estimate.map(crate::money::exact)
    ])?;
    for (k, v) in &job.tags {
        tx.prepare_cached("INSERT OR REPLACE INTO tags (job_id, key, value) VALUES (?1, ?2, ?3)")?
            .execute(params![id, k, v])?;
    }
    Ok(estimate)
}

/// The `planned` event with what was asked, and the `estimate` event when there is one.
fn record_planned(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    job: &NewJob,
    key: &str,
    estimate: Option<rust_decimal::Decimal>,
    price: &crate::money::Price,
    now: &crate::clock::Stamp,
) -> Result<()> {
    let p = &job.params;
    let body = serde_json::json!({
        "key": key, "batch": job.batch, "params": p, "size": job.size,
        "tags": job.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    let mut planned =
        super::events::Event::new(Some(id), Some(1), "planned").body(body.to_string());
    if job.size.is_none() {
        // Its size is read from the image before it is sent, and the text rebuilt from the
        // job's row would then differ: written whole now rather than by the `jobs` trigger
        // at that moment, after a read of `event_texts` each time.
        planned = planned.whole();
    }
    super::events::insert_event(tx, planned, now)?;
    if let Some(cost) = estimate {
        super::events::insert_event(
            tx,
            super::events::Event::new(Some(id), Some(1), "estimate").detail(format!(
                "input {}x{} ({}) at upscale {} at {} USD/MP: {} USD",
                job.size.map(|s| s.0).unwrap_or(0),
                job.size.map(|s| s.1).unwrap_or(0),
                job.size_source.unwrap_or("given"),
                p.upscale,
                crate::money::exact(price.per_megapixel),
                crate::money::exact(cost)
            )),
            now,
        )?;
    }
    Ok(())
}

/// The query of [`Ledger::events_of`]: each event with its texts from `event_texts`, the
/// answer a repeated body refers to, and the `outputs` or `attempts` row a download or charge
/// detail is rebuilt from. Every open ledger has this layout: an older one is migrated first.
const EVENTS_QUERY: &str = "SELECT e.id, e.job_id, e.attempt, e.at, e.kind, e.http_status,
        e.remote_status, e.latency_ms, t.detail, t.body,
        r.same_as, b.body, r.prefix, r.suffix, r.middle,
        e.kind, o.url, o.path, o.bytes, o.width, o.height, o.sha256,
        a.actual_cost, a.output_width, a.output_height, a.price_per_mp
    FROM events e
    JOIN event_texts t ON t.id = e.id
    LEFT JOIN repeated_bodies r ON r.event_id = e.id
    LEFT JOIN events b ON b.id = r.same_as
    LEFT JOIN outputs o ON e.kind = 'download' AND o.job_id = e.job_id
        AND o.attempt = e.attempt AND o.idx = e.output
    LEFT JOIN attempts a ON e.kind = 'charge' AND e.detail IS NULL
        AND a.job_id = e.job_id AND a.attempt = e.attempt
    WHERE e.job_id = ?1 ORDER BY e.id";

/// The detail of a download or charge event stored as a reference, from the columns of its
/// `outputs` or `attempts` row in [`EVENTS_QUERY`].
fn referred_detail(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<String>> {
    use super::events::{charge_detail, download_detail};
    Ok(match row.get::<_, Option<String>>(15)?.as_deref() {
        Some("download") => match row.get::<_, Option<String>>(16)? {
            Some(url) => Some(download_detail(
                &url,
                &row.get::<_, String>(17)?,
                row.get(18)?,
                (row.get(19)?, row.get(20)?),
                &row.get::<_, String>(21)?,
            )),
            None => None,
        },
        Some("charge") => match (
            row.get::<_, Option<String>>(22)?,
            row.get::<_, Option<String>>(25)?,
        ) {
            (Some(cost), Some(per_mp)) => {
                Some(charge_detail(&cost, (row.get(23)?, row.get(24)?), &per_mp))
            }
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::JobParams;

    #[test]
    fn jobs_by_id_reads_the_jobs_that_exist_each_as_job_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
        let jobs: Vec<NewJob> = (0..3)
            .map(|i| NewJob::new(JobParams::new(format!("https://x.test/{i}.png"))))
            .collect();
        let ids: Vec<i64> = ledger
            .enqueue(&jobs)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert!(ledger.jobs_by_id(&[]).unwrap().is_empty());
        let found = ledger.jobs_by_id(&[ids[2], 999, ids[0]]).unwrap();
        let mut keys: Vec<i64> = found.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, vec![ids[0], ids[2]]);
        for id in [ids[0], ids[2]] {
            let one = ledger.job(id).unwrap().unwrap();
            assert_eq!(found[&id].image_url, one.image_url);
            assert_eq!(found[&id].key, one.key);
            assert_eq!(found[&id].state, one.state);
        }
        // A list that names a job twice reads it once.
        assert_eq!(ledger.jobs_by_id(&[ids[1], ids[1]]).unwrap().len(), 1);
    }

    #[test]
    fn a_job_planned_before_its_size_is_known_keeps_its_planned_text_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
        let unsized_job = NewJob::new(JobParams::new("https://x.test/a.png"));
        let mut sized = NewJob::new(JobParams::new("https://x.test/b.png"));
        sized.size = Some((100, 80));
        sized.size_source = Some("given");
        ledger.enqueue(&[unsized_job, sized]).unwrap();
        let whole: Vec<(String, bool)> = {
            let mut stmt = ledger
                .conn
                .prepare(
                    "SELECT j.image_url, e.body IS NOT NULL FROM events e JOIN jobs j ON j.id = e.job_id
                     WHERE e.kind = 'planned' ORDER BY j.id",
                )
                .unwrap();
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(
            whole,
            [
                ("https://x.test/a.png".to_string(), true),
                ("https://x.test/b.png".to_string(), false)
            ]
        );
    }
}
