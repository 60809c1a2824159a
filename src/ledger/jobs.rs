//! Jobs as the ledger sees them: enqueueing (idempotent by key) and reading.

use super::{JobState, Ledger, LedgerError, Result};
use crate::clock;
use crate::params::{JobParams, WebhookMode};
use rusqlite::{params, OptionalExtension, Row};
use rust_decimal::Decimal;
use serde::Serialize;
use std::str::FromStr;

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub params: JobParams,
    /// The idempotency key; `None` derives one from the URL and parameters.
    pub key: Option<String>,
    pub batch: Option<String>,
    /// Input size known without the network (`--size`, manifest columns).
    pub size: Option<(u32, u32)>,
    pub size_source: Option<&'static str>,
    pub tags: Vec<(String, String)>,
    /// The local file whose object `params.image` names (a locator `s3://BUCKET/KEY`), recorded
    /// in `uploads` with the job.
    pub local: Option<crate::storage::local::LocalFile>,
}

impl NewJob {
    pub fn new(params: JobParams) -> Self {
        NewJob {
            params,
            key: None,
            batch: None,
            size: None,
            size_source: None,
            tags: Vec::new(),
            local: None,
        }
    }

    pub fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| self.params.derived_key())
    }
}

/// One job with its current attempt, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub key: String,
    pub batch: Option<String>,
    pub state: JobState,
    pub attempt: i64,
    pub image_url: String,
    pub fidelity: Decimal,
    pub upscale: u32,
    pub background_enhance: bool,
    pub face_upsample: bool,
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<String>>,
    pub webhook_url: Option<String>,
    pub webhook_mode: Option<String>,
    pub input_width: Option<u32>,
    pub input_height: Option<u32>,
    pub size_source: Option<String>,
    pub request_id: Option<String>,
    pub remote_status: Option<String>,
    pub next_poll_at: Option<i64>,
    pub polls: i64,
    pub post: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub output_urls: Vec<String>,
    pub expects_callbacks: bool,
    pub price_per_mp: Option<Decimal>,
    pub estimated_cost: Option<Decimal>,
    pub actual_cost: Option<Decimal>,
    pub output_width: Option<u32>,
    pub output_height: Option<u32>,
    pub submitted_at: Option<String>,
    pub finished_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl JobRow {
    /// The API parameters of this job.
    pub fn params(&self) -> JobParams {
        JobParams {
            image: self.image_url.clone(),
            fidelity: self.fidelity,
            upscale: self.upscale,
            background_enhance: self.background_enhance,
            face_upsample: self.face_upsample,
            webhook: self.webhook.clone(),
            webhook_events_filter: self.webhook_events_filter.clone(),
            webhook_url: self.webhook_url.clone(),
            webhook_mode: self
                .webhook_mode
                .as_deref()
                .and_then(|m| WebhookMode::from_str(m).ok()),
        }
    }

    pub fn input_size(&self) -> Option<(u32, u32)> {
        Some((self.input_width?, self.input_height?))
    }
}

/// One event of the append-only record.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub at: String,
    pub kind: String,
    pub http_status: Option<i64>,
    pub remote_status: Option<String>,
    pub latency_ms: Option<i64>,
    pub detail: Option<String>,
    pub body: Option<String>,
}

/// A downloaded output file.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRow {
    pub attempt: i64,
    pub idx: i64,
    pub url: String,
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub batch: Option<String>,
    pub limit: Option<usize>,
}

pub(super) const JOB_COLUMNS: &str = "j.id, j.key, j.batch, j.state, j.attempt, j.image_url, \
    j.fidelity, j.upscale, j.background_enhance, j.face_upsample, j.webhook, \
    j.webhook_events_filter, j.webhook_url, j.webhook_mode, j.input_width, j.input_height, \
    j.size_source, j.request_id, j.remote_status, j.next_poll_at, j.polls, j.post, j.reason, \
    j.error, j.output_urls, j.expects_callbacks, a.price_per_mp, a.estimated_cost, \
    a.actual_cost, a.output_width, a.output_height, a.submitted_at, a.finished_at, \
    j.created_at, j.updated_at";

pub(super) const JOB_FROM: &str =
    "FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt";

fn decimal(value: Option<String>) -> rusqlite::Result<Option<Decimal>> {
    value
        .map(|text| {
            Decimal::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })
        })
        .transpose()
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = row.get(3)?;
    let filter: Option<String> = row.get(11)?;
    let urls: Option<String> = row.get(24)?;
    Ok(JobRow {
        id: row.get(0)?,
        key: row.get(1)?,
        batch: row.get(2)?,
        state: JobState::from_str(&state).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        attempt: row.get(4)?,
        image_url: row.get(5)?,
        fidelity: decimal(row.get(6)?)?.unwrap_or_default(),
        upscale: row.get(7)?,
        background_enhance: row.get(8)?,
        face_upsample: row.get(9)?,
        webhook: row.get(10)?,
        webhook_events_filter: filter.and_then(|f| serde_json::from_str(&f).ok()),
        webhook_url: row.get(12)?,
        webhook_mode: row.get(13)?,
        input_width: row.get(14)?,
        input_height: row.get(15)?,
        size_source: row.get(16)?,
        request_id: row.get(17)?,
        remote_status: row.get(18)?,
        next_poll_at: row.get(19)?,
        polls: row.get(20)?,
        post: row.get(21)?,
        reason: row.get(22)?,
        error: row.get(23)?,
        output_urls: urls
            .and_then(|u| serde_json::from_str(&u).ok())
            .unwrap_or_default(),
        expects_callbacks: row.get(25)?,
        price_per_mp: decimal(row.get(26)?)?,
        estimated_cost: decimal(row.get(27)?)?,
        actual_cost: decimal(row.get(28)?)?,
        output_width: row.get(29)?,
        output_height: row.get(30)?,
        submitted_at: row.get(31)?,
        finished_at: row.get(32)?,
        created_at: row.get(33)?,
        updated_at: row.get(34)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get(0)?,
        job_id: row.get(1)?,
        attempt: row.get(2)?,
        at: row.get(3)?,
        kind: row.get(4)?,
        http_status: row.get(5)?,
        remote_status: row.get(6)?,
        latency_ms: row.get(7)?,
        detail: row.get(8)?,
        body: row.get(9)?,
    })
}

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
        let now = clock::now_stamp();
        let price = super::record::price_in_force(&tx, &now)?;
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

    /// Every event of a job, in order.
    pub fn events_of(&self, job_id: i64) -> Result<Vec<EventRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body
             FROM events WHERE job_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([job_id], event_from_row)?;
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
    now: &str,
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
        now,
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(file) = &job.local {
        super::uploads::insert_upload(tx, id, file, &p.image, now)?;
    }
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
    let body = serde_json::json!({
        "key": key, "batch": job.batch, "params": p, "size": job.size,
        "tags": job.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    super::record::insert_event(
        tx,
        super::record::Event::new(Some(id), Some(1), "planned").body(body.to_string()),
        now,
    )?;
    if let Some(cost) = estimate {
        super::record::insert_event(
            tx,
            super::record::Event::new(Some(id), Some(1), "estimate").detail(format!(
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
    Ok(Enqueued {
        id,
        added: true,
        joined: false,
    })
}
