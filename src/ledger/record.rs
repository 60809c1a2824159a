//! Writing what the engine learns: every change of a job goes with the event that explains it,
//! in one transaction, and many of them can share one transaction (group commit).

use super::jobs::{job_from_row, JOB_COLUMNS, JOB_FROM};
use super::{JobRow, JobState, Ledger, Result};
use crate::clock;
use crate::money::{self, Price};
use rusqlite::{params, OptionalExtension, Transaction};
use rust_decimal::Decimal;
use std::str::FromStr;

/// Largest answer body kept in an event, in bytes; longer bodies are cut and marked.
pub const MAX_EVENT_BODY: usize = 16 * 1024;

/// One entry of the append-only record.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub kind: &'static str,
    pub http_status: Option<u16>,
    pub remote_status: Option<String>,
    pub latency_ms: Option<u64>,
    pub detail: Option<String>,
    pub body: Option<String>,
}

impl Event {
    pub fn new(job_id: Option<i64>, attempt: Option<i64>, kind: &'static str) -> Self {
        Event {
            job_id,
            attempt,
            kind,
            ..Event::default()
        }
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn http(mut self, status: Option<u16>, latency_ms: u64) -> Self {
        self.http_status = status;
        self.latency_ms = Some(latency_ms);
        self
    }
    pub fn remote(mut self, status: Option<&str>) -> Self {
        self.remote_status = status.map(str::to_string);
        self
    }
}

/// A change to one job's row and its current attempt. `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub state: Option<JobState>,
    pub request_id: Option<String>,
    pub remote_status: Option<String>,
    /// `Some(None)` stops polling.
    pub next_poll_at: Option<Option<i64>>,
    pub count_poll: bool,
    /// `Some(None)` clears the post-processing owed.
    pub post: Option<Option<&'static str>>,
    pub reason: Option<Option<String>>,
    pub error: Option<Option<String>>,
    pub output_urls: Option<Vec<String>>,
    /// Marks the attempt as sent now, at this price and estimate.
    pub submitted: Option<(Decimal, Option<Decimal>)>,
    pub finished: bool,
    pub input_size: Option<(u32, u32, &'static str)>,
    /// Apply only if the job is still in this state and attempt (a poll answer must not undo
    /// what a callback recorded while the poll was in flight). The event is kept either way.
    pub expect: Option<(JobState, i64)>,
}

/// A job that is about to be sent, with what it is expected to cost.
#[derive(Debug, Clone)]
pub struct SubmitRecord {
    pub job_id: i64,
    pub attempt: i64,
    /// The request body as sent (never the key).
    pub body: String,
    pub price: Decimal,
    pub estimate: Option<Decimal>,
}

/// A hook call as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookRunRow {
    pub id: i64,
    pub job_id: Option<i64>,
    pub attempt: Option<i64>,
    pub batch: Option<String>,
    pub hook_file: String,
    pub function: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub status: String,
    pub error: Option<String>,
}

pub(super) fn insert_event(tx: &Transaction<'_>, event: Event, now: &str) -> Result<()> {
    let body = event.body.as_deref().map(cap_body);
    let reference = match (&body, event.kind, event.job_id, event.attempt) {
        (Some(body), "poll", Some(job_id), Some(attempt)) => {
            super::bodies::repeat_of(tx, job_id, attempt, &event, body)?
        }
        _ => None,
    };
    tx.prepare_cached(
        "INSERT INTO events (job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        event.job_id,
        event.attempt,
        now,
        event.kind,
        event.http_status,
        event.remote_status,
        event.latency_ms.map(|l| l as i64),
        event.detail,
        if reference.is_some() { None } else { body }
    ])?;
    if let Some(reference) = reference {
        super::bodies::store_reference(tx, tx.last_insert_rowid(), &reference)?;
    }
    Ok(())
}

/// Cuts an answer body to `MAX_EVENT_BODY` (16 KiB) on a character boundary.
pub fn cap_body(body: &str) -> String {
    if body.len() <= MAX_EVENT_BODY {
        return body.to_string();
    }
    let mut end = MAX_EVENT_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &body[..end], body.len() - end)
}

pub(super) fn price_in_force(tx: &rusqlite::Connection, at: &str) -> Result<Price> {
    let row: Option<(String, String, String)> = tx
        .prepare_cached(
            "SELECT model, per_megapixel, effective_from FROM prices
             WHERE model = ?1 AND effective_from <= ?2
               AND id NOT IN (SELECT price_id FROM price_removals)
             ORDER BY effective_from DESC, id DESC LIMIT 1",
        )?
        .query_row(params![money::MODEL, at], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((model, rate, from)) = row else {
        return Ok(Price::default_rate());
    };
    Ok(Price {
        model,
        per_megapixel: Decimal::from_str(&rate).map_err(|_| super::LedgerError::Corrupt {
            what: "prices.per_megapixel",
            value: rate.clone(),
        })?,
        effective_from: clock::parse_remote(&from).unwrap_or_else(clock::now),
    })
}

pub(super) fn apply_change(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    c: &Change,
    now: &str,
) -> Result<()> {
    let urls = c
        .output_urls
        .as_ref()
        .map(|u| serde_json::to_string(u).unwrap_or_default());
    let changed = tx
        .prepare_cached(
            "UPDATE jobs SET
            state = coalesce(?2, state),
            request_id = coalesce(?3, request_id),
            remote_status = coalesce(?4, remote_status),
            next_poll_at = CASE WHEN ?5 THEN ?6 ELSE next_poll_at END,
            polls = polls + ?7,
            post = CASE WHEN ?8 THEN ?9 ELSE post END,
            reason = CASE WHEN ?10 THEN ?11 ELSE reason END,
            error = CASE WHEN ?12 THEN ?13 ELSE error END,
            output_urls = coalesce(?14, output_urls),
            input_width = coalesce(?15, input_width),
            input_height = coalesce(?16, input_height),
            size_source = coalesce(?17, size_source),
            updated_at = ?18
         WHERE id = ?1 AND (?19 IS NULL OR (state = ?19 AND attempt = ?20))",
        )?
        .execute(params![
            job_id,
            c.state.map(JobState::as_str),
            c.request_id,
            c.remote_status,
            c.next_poll_at.is_some(),
            c.next_poll_at.flatten(),
            c.count_poll as i64,
            c.post.is_some(),
            c.post.flatten(),
            c.reason.is_some(),
            c.reason.clone().flatten(),
            c.error.is_some(),
            c.error.clone().flatten(),
            urls,
            c.input_size.map(|s| s.0),
            c.input_size.map(|s| s.1),
            c.input_size.map(|s| s.2),
            now,
            c.expect.map(|e| e.0.as_str()),
            c.expect.map(|e| e.1),
        ])?;
    if changed == 0 {
        return Ok(());
    }
    let (price, estimate) = match c.submitted {
        Some((price, estimate)) => (Some(money::exact(price)), estimate.map(money::exact)),
        None => (None, None),
    };
    tx.prepare_cached(
        "UPDATE attempts SET
            state = coalesce(?3, state),
            request_id = coalesce(?4, request_id),
            price_per_mp = coalesce(?5, price_per_mp),
            estimated_cost = coalesce(?6, estimated_cost),
            submitted_at = CASE WHEN ?7 THEN ?9 ELSE submitted_at END,
            finished_at = CASE WHEN ?8 THEN ?9 ELSE finished_at END
         WHERE job_id = ?1 AND attempt = ?2",
    )?
    .execute(params![
        job_id,
        attempt,
        c.state.map(JobState::as_str),
        c.request_id,
        price,
        estimate,
        c.submitted.is_some(),
        c.finished,
        now,
    ])?;
    Ok(())
}

impl Ledger {
    /// Applies changes, each with its event, in one transaction.
    pub fn record(&mut self, items: Vec<(i64, i64, Change, Event)>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        for (job_id, attempt, change, event) in items {
            apply_change(&tx, job_id, attempt, &change, &now)?;
            insert_event(&tx, event, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends events that change no job (e.g. an engine start), in one transaction.
    pub fn append(&mut self, events: Vec<Event>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        for event in events {
            insert_event(&tx, event, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits the intent to send these jobs before anything is sent: a crash after this and
    /// before the answer is recorded leaves them `submitting`, which the next engine turns into
    /// `uncertain`.
    pub fn mark_submitting(&mut self, jobs: &[SubmitRecord]) -> Result<()> {
        let items = jobs
            .iter()
            .map(|s| {
                let change = Change {
                    state: Some(JobState::Submitting),
                    submitted: Some((s.price, s.estimate)),
                    reason: Some(None),
                    ..Change::default()
                };
                let event = Event::new(Some(s.job_id), Some(s.attempt), "submit_intent")
                    .detail(format!(
                        "sending at {} USD/MP, estimate {}",
                        money::exact(s.price),
                        s.estimate
                            .map(money::exact)
                            .unwrap_or_else(|| "unknown".into())
                    ))
                    .body(s.body.clone());
                (s.job_id, s.attempt, change, event)
            })
            .collect();
        self.record(items)
    }

    /// The price in force now.
    pub fn current_price(&self) -> Result<Price> {
        price_in_force(&self.conn, &clock::now_stamp())
    }

    /// Every price row, oldest first.
    pub fn prices(&self) -> Result<Vec<(i64, Price, Option<String>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, model, per_megapixel, effective_from, note FROM prices ORDER BY effective_from, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, model, rate, from, note) = row?;
            let per_megapixel =
                Decimal::from_str(&rate).map_err(|_| super::LedgerError::Corrupt {
                    what: "prices.per_megapixel",
                    value: rate.clone(),
                })?;
            let effective_from = clock::parse_remote(&from).ok_or(super::LedgerError::Corrupt {
                what: "prices.effective_from",
                value: from.clone(),
            })?;
            out.push((
                id,
                Price {
                    model,
                    per_megapixel,
                    effective_from,
                },
                note,
            ));
        }
        Ok(out)
    }

    /// The prices withdrawn by `prices remove`: price id, when, and why.
    pub fn price_removals(&self) -> Result<Vec<(i64, String, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT price_id, removed_at, reason FROM price_removals ORDER BY price_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Withdraws a price: a new row in `price_removals` and a `price` event; the price row
    /// itself is kept. The last price of the model in force cannot be removed.
    pub fn remove_price(&mut self, id: i64, reason: Option<&str>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let refuse = |reason: &str| super::LedgerError::PriceNotRemovable {
            id,
            reason: reason.to_string(),
        };
        let row: Option<(String, String, String)> = tx
            .query_row(
                "SELECT model, per_megapixel, effective_from FROM prices WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((model, rate, from)) = row else {
            return Err(refuse("there is no such price (see `prices list`)"));
        };
        let removed: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM price_removals WHERE price_id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if removed {
            return Err(refuse("it was already removed"));
        }
        let others: i64 = tx.query_row(
            "SELECT count(*) FROM prices WHERE model = ?1 AND id != ?2
               AND id NOT IN (SELECT price_id FROM price_removals)",
            params![model, id],
            |r| r.get(0),
        )?;
        if others == 0 {
            return Err(refuse(
                "it is the only price left; record the right one first (`prices set USD_PER_MP --from DATE`)",
            ));
        }
        let now = clock::now_stamp();
        tx.execute(
            "INSERT INTO price_removals (price_id, removed_at, reason) VALUES (?1, ?2, ?3)",
            params![id, now, reason],
        )?;
        insert_event(
            &tx,
            Event::new(None, None, "price").detail(format!(
                "price {id} ({rate} USD per megapixel for {model} from {from}) removed{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a new price, in force from its date.
    pub fn set_price(&mut self, price: &Price, note: Option<&str>) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        tx.execute(
            "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                price.model,
                money::exact(price.per_megapixel),
                clock::stamp(price.effective_from),
                now,
                note
            ],
        )?;
        let id = tx.last_insert_rowid();
        insert_event(
            &tx,
            Event::new(None, None, "price").detail(format!(
                "{} USD per megapixel for {} from {}",
                money::exact(price.per_megapixel),
                price.model,
                clock::stamp(price.effective_from)
            )),
            &now,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// A cached input size for an image URL.
    pub fn cached_size(&self, url: &str) -> Result<Option<(u32, u32)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT width, height FROM image_sizes WHERE url = ?1",
                [url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Caches a probed input size; `job` (with its attempt) gets the size and an estimate event.
    pub fn record_probe(
        &mut self,
        url: &str,
        size: (u32, u32),
        format: &str,
        bytes_read: u64,
        job: Option<(i64, i64, u32)>,
    ) -> Result<Option<Decimal>> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        tx.execute(
            "INSERT OR REPLACE INTO image_sizes (url, width, height, format, bytes_read, probed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![url, size.0, size.1, format, bytes_read as i64, now],
        )?;
        let mut estimate = None;
        if let Some((job_id, attempt, upscale)) = job {
            let price = price_in_force(&tx, &now)?;
            let (ow, oh) = money::output_size(size.0, size.1, upscale);
            let cost = price.cost(ow, oh);
            estimate = Some(cost);
            apply_change(
                &tx,
                job_id,
                attempt,
                &Change {
                    input_size: Some((size.0, size.1, "header")),
                    ..Change::default()
                },
                &now,
            )?;
            tx.execute(
                "UPDATE attempts SET estimated_cost = ?3, price_per_mp = ?4 WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt, money::exact(cost), money::exact(price.per_megapixel)],
            )?;
            insert_event(
                &tx,
                Event::new(Some(job_id), Some(attempt), "estimate").detail(format!(
                    "input {}x{} {format} (header, {bytes_read} bytes read) at upscale {upscale} at {} USD/MP: {} USD",
                    size.0,
                    size.1,
                    money::exact(price.per_megapixel),
                    money::exact(cost)
                )),
                &now,
            )?;
        }
        tx.commit()?;
        Ok(estimate)
    }

    /// Records downloaded outputs and the attempt's actual charge, once. Returns the charge
    /// when this call set it (a second call for the same attempt charges nothing).
    pub fn record_download(
        &mut self,
        job_id: i64,
        attempt: i64,
        files: &[super::OutputRow],
        post_after: Option<&'static str>,
    ) -> Result<Option<Decimal>> {
        let tx = self.conn.transaction()?;
        let charge = download_in(&tx, job_id, attempt, files, post_after, &clock::now_stamp())?;
        tx.commit()?;
        Ok(charge)
    }

    /// [`Ledger::record_download`] for many attempts in one transaction (group commit): the
    /// charge each call set, in order.
    pub fn record_downloads(
        &mut self,
        items: &[(i64, i64, Vec<super::OutputRow>, Option<&'static str>)],
    ) -> Result<Vec<Option<Decimal>>> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        let mut charges = Vec::with_capacity(items.len());
        for (job_id, attempt, files, post_after) in items {
            charges.push(download_in(
                &tx,
                *job_id,
                *attempt,
                files,
                *post_after,
                &now,
            )?);
        }
        tx.commit()?;
        Ok(charges)
    }

    /// Marks an attempt as not charged (ERROR, rejected), once.
    pub fn record_no_charge(&mut self, job_id: i64, attempt: i64, why: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        let n = tx
            .prepare_cached(
                "UPDATE attempts SET actual_cost = '0'
                 WHERE job_id = ?1 AND attempt = ?2 AND actual_cost IS NULL",
            )?
            .execute(params![job_id, attempt])?;
        if n == 1 {
            insert_event(
                &tx,
                Event::new(Some(job_id), Some(attempt), "charge").detail(format!("0 USD: {why}")),
                &now,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Jobs whose next poll or download is due at `now_ms`, soonest first.
    pub fn due(&self, batch: Option<&str>, now_ms: i64, limit: usize) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.next_poll_at <= ?1 AND (?3 IS NULL OR j.batch = ?3)
             ORDER BY j.next_poll_at LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now_ms, limit as i64, batch], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the next poll or download falls due, if any.
    pub fn next_due(&self, batch: Option<&str>) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT min(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL
                 AND (?1 IS NULL OR batch = ?1)",
            )?
            .query_row([batch], |r| r.get(0))?)
    }

    /// At engine start: work owed but unscheduled (a download given up on by an earlier run,
    /// a job at the gateway whose poll was dropped) is scheduled now.
    pub fn reschedule_owed(&mut self, batch: Option<&str>, now_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE jobs SET next_poll_at = ?1 WHERE next_poll_at IS NULL
             AND (post = 'download' OR state IN ('queued', 'processing'))
             AND (?2 IS NULL OR batch = ?2)",
            params![now_ms, batch],
        )?)
    }

    /// Completed jobs whose outputs are still not downloaded.
    pub fn owing_downloads(&self, batch: Option<&str>) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM jobs WHERE post = 'download' AND (?1 IS NULL OR batch = ?1)",
            [batch],
            |r| r.get(0),
        )?)
    }

    /// Jobs that still owe hook runs, counted per batch (`None`: jobs in no batch).
    pub fn owing_hooks_by_batch(&self, batch: Option<&str>) -> Result<Vec<(Option<String>, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT batch, count(*) FROM jobs WHERE post = 'hooks' AND (?1 IS NULL OR batch = ?1)
             GROUP BY batch ORDER BY batch",
        )?;
        let rows = stmt.query_map([batch], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs ready to send (planned, or held by an earlier cap), oldest first, after `after_id`.
    pub fn sendable(
        &self,
        batch: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<JobRow>> {
        // Each state read in id order from jobs_by_state, at most `limit` of each: with
        // `state IN (...) ORDER BY id` SQLite sorted every sendable job on every call.
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.id IN (
                 SELECT id FROM (SELECT id FROM jobs WHERE state = 'planned' AND id > ?1
                     AND (?2 IS NULL OR batch = ?2) ORDER BY id LIMIT ?3)
                 UNION ALL
                 SELECT id FROM (SELECT id FROM jobs WHERE state = 'held' AND id > ?1
                     AND (?2 IS NULL OR batch = ?2) ORDER BY id LIMIT ?3))
             ORDER BY j.id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![after_id, batch, limit as i64], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The ids of [`Ledger::sendable`], without reading the jobs.
    pub fn sendable_ids(
        &self,
        batch: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM (SELECT id FROM jobs WHERE state = 'planned' AND id > ?1
                 AND (?2 IS NULL OR batch = ?2) ORDER BY id LIMIT ?3)
             UNION ALL
             SELECT id FROM (SELECT id FROM jobs WHERE state = 'held' AND id > ?1
                 AND (?2 IS NULL OR batch = ?2) ORDER BY id LIMIT ?3)
             ORDER BY 1 LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after_id, batch, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs that still owe hook runs.
    pub fn owing_hooks(&self, batch: Option<&str>, limit: usize) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.post = 'hooks' AND (?1 IS NULL OR j.batch = ?1)
             ORDER BY j.id LIMIT ?2"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![batch, limit as i64], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs the engine still has work for: to send, at the gateway, or owing post-processing.
    pub fn unfinished(&self, batch: Option<&str>) -> Result<i64> {
        // Two counts, each from its index (jobs_by_state, jobs_post): one WHERE with `OR` made
        // SQLite read every job of the ledger on each idle step of the engine.
        Ok(self.conn.prepare_cached(
            "SELECT (SELECT count(*) FROM jobs WHERE state IN ('planned', 'submitting', 'queued', 'processing')
                     AND (?1 IS NULL OR batch = ?1))
                  + (SELECT count(*) FROM jobs WHERE post IS NOT NULL
                     AND state NOT IN ('planned', 'submitting', 'queued', 'processing')
                     AND (?1 IS NULL OR batch = ?1))",
        )?
        .query_row([batch], |r| r.get(0))?)
    }

    /// Charged so far plus the estimates of attempts that may still be charged (sent and not
    /// final, or uncertain), for a budget.
    pub fn committed_spend(&self, batch: Option<&str>) -> Result<Decimal> {
        let sum = "SELECT decimal_sum(CASE
                 WHEN a.actual_cost IS NOT NULL THEN a.actual_cost
                 WHEN a.state IN ('submitting', 'queued', 'processing', 'uncertain', 'completed', 'failed', 'stalled')
                      OR (a.submitted_at IS NOT NULL AND a.state NOT IN ('rejected', 'error', 'planned', 'held'))
                   THEN a.estimated_cost
                 ELSE NULL END)";
        // Two statements, so that each can use its index: `?1 IS NULL OR batch = ?1` made
        // SQLite join every attempt of the ledger to its job even for one small batch.
        let total: String = match batch {
            None => self
                .conn
                .prepare_cached(&format!("{sum} FROM attempts a"))?
                .query_row([], |r| r.get(0))?,
            Some(batch) => self
                .conn
                .prepare_cached(&format!(
                    "{sum} FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE j.batch = ?1"
                ))?
                .query_row([batch], |r| r.get(0))?,
        };
        money::parse_exact(&total).map_err(|_| super::LedgerError::Corrupt {
            what: "attempts cost",
            value: total,
        })
    }

    /// Jobs held (by a budget cap or a 402), in a batch or all: how many, the exact sum of
    /// their estimates, and how many of them have no estimate.
    pub fn held_estimates(&self, batch: Option<&str>) -> Result<(u64, Decimal, u64)> {
        let (held, total, unknown): (i64, String, i64) = self.conn.query_row(
            "SELECT count(*), decimal_sum(a.estimated_cost), count(*) - count(a.estimated_cost)
             FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt
             WHERE j.state = 'held' AND (?1 IS NULL OR j.batch = ?1)",
            [batch],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let total = money::parse_exact(&total).map_err(|_| super::LedgerError::Corrupt {
            what: "attempts.estimated_cost",
            value: total,
        })?;
        Ok((held as u64, total, unknown as u64))
    }

    /// At engine start: jobs left `submitting` by a process that died become `uncertain`.
    pub fn recover_interrupted(&mut self) -> Result<Vec<i64>> {
        let ids: Vec<(i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, attempt FROM jobs WHERE state = 'submitting'")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let items = ids
            .iter()
            .map(|&(id, attempt)| {
                let reason = "the process stopped after sending the submission and before recording the answer; the job may exist and be billed";
                (
                    id,
                    attempt,
                    Change {
                        state: Some(JobState::Uncertain),
                        reason: Some(Some(reason.into())),
                        ..Change::default()
                    },
                    Event::new(Some(id), Some(attempt), "state").detail(format!("submitting -> uncertain: {reason}")),
                )
            })
            .collect();
        self.record(items)?;
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }

    /// Starts a new attempt for every job in one of `states` (within a batch, if given): the
    /// old attempt stays in the ledger with whatever it cost.
    pub fn new_attempts(
        &mut self,
        states: &[JobState],
        batch: Option<&str>,
        why: &str,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        let ids: Vec<(i64, i64, String)> = {
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            let mut stmt = tx.prepare(
                "SELECT id, attempt, state FROM jobs WHERE state IN (SELECT value FROM json_each(?1))
                 AND (?2 IS NULL OR batch = ?2)",
            )?;
            let rows = stmt.query_map(
                params![serde_json::to_string(&names).unwrap_or_default(), batch],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, attempt, state) in &ids {
            let next = attempt + 1;
            tx.execute(
                "INSERT INTO attempts (job_id, attempt, state) VALUES (?1, ?2, 'planned')",
                params![id, next],
            )?;
            tx.execute(
                "UPDATE jobs SET state = 'planned', attempt = ?2, request_id = NULL, remote_status = NULL,
                   next_poll_at = NULL, polls = 0, post = NULL, reason = NULL, error = NULL,
                   output_urls = NULL, updated_at = ?3 WHERE id = ?1",
                params![id, next, now],
            )?;
            insert_event(
                &tx,
                Event::new(Some(*id), Some(next), "retry").detail(format!(
                    "attempt {next} after {state} attempt {attempt}: {why}"
                )),
                &now,
            )?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// Starts a hook run; committed before the hook is called, so a crash leaves it `running`.
    pub fn start_hook_run(
        &mut self,
        job: Option<(i64, i64)>,
        batch: Option<&str>,
        hook_file: &str,
        function: &str,
    ) -> Result<i64> {
        self.conn
            .prepare_cached(
                "INSERT INTO hook_runs (job_id, attempt, batch, hook_file, function, started_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running')",
            )?
            .execute(params![
                job.map(|j| j.0),
                job.map(|j| j.1),
                batch,
                hook_file,
                function,
                clock::now_stamp()
            ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Finishes a hook run with its outcome, the events it produced, and its notes and tags.
    pub fn finish_hook_run(
        &mut self,
        run_id: i64,
        error: Option<&str>,
        events: Vec<Event>,
        tags: &[(String, String)],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        let (job_id, _attempt): (Option<i64>, Option<i64>) = tx
            .prepare_cached("SELECT job_id, attempt FROM hook_runs WHERE id = ?1")?
            .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        tx.prepare_cached(
            "UPDATE hook_runs SET ended_at = ?2, status = ?3, error = ?4 WHERE id = ?1",
        )?
        .execute(params![
            run_id,
            now,
            if error.is_some() { "failed" } else { "ok" },
            error
        ])?;
        if let Some(job_id) = job_id {
            for (k, v) in tags {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO tags (job_id, key, value) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![job_id, k, v])?;
            }
        }
        for event in events {
            insert_event(&tx, event, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The latest run of one hook function of one file for a job's attempt (or a batch).
    pub fn hook_run_status(
        &self,
        job: Option<(i64, i64)>,
        batch: Option<&str>,
        hook_file: &str,
        function: &str,
    ) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT status FROM hook_runs WHERE job_id IS ?1 AND attempt IS ?2 AND batch IS ?3
                 AND hook_file = ?4 AND function = ?5 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(
                params![
                    job.map(|j| j.0),
                    job.map(|j| j.1),
                    if job.is_some() { None } else { batch },
                    hook_file,
                    function
                ],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Hook runs whose latest outcome is a failure (or that were interrupted and not rerun).
    pub fn failed_hook_runs(&self) -> Result<Vec<HookRunRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT h.id, h.job_id, h.attempt, h.batch, h.hook_file, h.function, h.started_at, h.ended_at, h.status, h.error
             FROM hook_runs h
             WHERE h.status != 'ok' AND h.id = (SELECT max(id) FROM hook_runs g
                 WHERE g.job_id IS h.job_id AND g.attempt IS h.attempt AND g.batch IS h.batch
                 AND g.hook_file = h.hook_file AND g.function = h.function)
             ORDER BY h.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HookRunRow {
                id: r.get(0)?,
                job_id: r.get(1)?,
                attempt: r.get(2)?,
                batch: r.get(3)?,
                hook_file: r.get(4)?,
                function: r.get(5)?,
                started_at: r.get(6)?,
                ended_at: r.get(7)?,
                status: r.get(8)?,
                error: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Jobs at the gateway that were sent before `cutoff` (a ledger timestamp).
    pub fn overdue(&self, cutoff: &str, batch: Option<&str>) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.state IN ('queued', 'processing')
             AND a.submitted_at < ?1 AND (?2 IS NULL OR j.batch = ?2) ORDER BY j.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![cutoff, batch], job_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets what post-processing a job still owes.
    pub fn set_post(
        &mut self,
        job_id: i64,
        attempt: i64,
        post: Option<&'static str>,
        why: &str,
    ) -> Result<()> {
        self.record(vec![(
            job_id,
            attempt,
            Change {
                post: Some(post),
                ..Change::default()
            },
            Event::new(Some(job_id), Some(attempt), "post").detail(why.to_string()),
        )])
    }
}

fn download_in(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    files: &[super::OutputRow],
    post_after: Option<&'static str>,
    now: &str,
) -> Result<Option<Decimal>> {
    for f in files {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO outputs (job_id, attempt, idx, url, path, bytes, sha256, width, height)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            job_id, attempt, f.idx, f.url, f.path, f.bytes, f.sha256, f.width, f.height
        ])?;
        insert_event(
            tx,
            Event::new(Some(job_id), Some(attempt), "download").detail(format!(
                "{} -> {} ({} bytes, {}x{}, sha256 {})",
                f.url,
                f.path,
                f.bytes,
                f.width.unwrap_or(0),
                f.height.unwrap_or(0),
                f.sha256
            )),
            now,
        )?;
    }
    let charge = charge_once(tx, job_id, attempt, files, now)?;
    apply_change(
        tx,
        job_id,
        attempt,
        &Change {
            post: Some(post_after),
            next_poll_at: Some(None),
            error: Some(None),
            ..Change::default()
        },
        now,
    )?;
    Ok(charge)
}

fn charge_once(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    files: &[super::OutputRow],
    now: &str,
) -> Result<Option<Decimal>> {
    let (rate, already): (Option<String>, Option<String>) = tx
        .prepare_cached(
            "SELECT price_per_mp, actual_cost FROM attempts WHERE job_id = ?1 AND attempt = ?2",
        )?
        .query_row(params![job_id, attempt], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if already.is_some() {
        return Ok(None);
    }
    let price = match rate {
        Some(text) => Price {
            per_megapixel: money::parse_exact(&text).map_err(|_| super::LedgerError::Corrupt {
                what: "attempts.price_per_mp",
                value: text.clone(),
            })?,
            ..Price::default_rate()
        },
        None => price_in_force(tx, now)?,
    };
    let mut cost = money::DecimalSum::new();
    let (mut width, mut height) = (None, None);
    for f in files {
        if let (Some(w), Some(h)) = (f.width, f.height) {
            cost.add(price.checked_cost(u64::from(w), u64::from(h))?)?;
            width.get_or_insert(w);
            height.get_or_insert(h);
        }
    }
    let cost = cost.total();
    tx.prepare_cached(
        "UPDATE attempts SET actual_cost = ?3, output_width = ?4, output_height = ?5
         WHERE job_id = ?1 AND attempt = ?2 AND actual_cost IS NULL",
    )?
    .execute(params![job_id, attempt, money::exact(cost), width, height])?;
    insert_event(
        tx,
        Event::new(Some(job_id), Some(attempt), "charge").detail(format!(
            "{} USD for {}x{} output at {} USD/MP",
            money::exact(cost),
            width.unwrap_or(0),
            height.unwrap_or(0),
            money::exact(price.per_megapixel)
        )),
        now,
    )?;
    Ok(Some(cost))
}

impl Ledger {
    /// Replaces a planned job's parameters (an `on_submit` hook changed them), re-estimating
    /// its cost when its input size is known.
    pub fn update_params(
        &mut self,
        job_id: i64,
        attempt: i64,
        params: &crate::params::JobParams,
        why: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::now_stamp();
        tx.execute(
            "UPDATE jobs SET fidelity = ?2, upscale = ?3, background_enhance = ?4, face_upsample = ?5,
               updated_at = ?6 WHERE id = ?1",
            params![
                job_id,
                params.fidelity.normalize().to_string(),
                params.upscale,
                params.background_enhance,
                params.face_upsample,
                now
            ],
        )?;
        let size: (Option<u32>, Option<u32>) = tx.query_row(
            "SELECT input_width, input_height FROM jobs WHERE id = ?1",
            [job_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let (Some(w), Some(h)) = size {
            let price = price_in_force(&tx, &now)?;
            let (ow, oh) = money::output_size(w, h, params.upscale);
            tx.execute(
                "UPDATE attempts SET estimated_cost = ?3 WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt, money::exact(price.cost(ow, oh))],
            )?;
        }
        insert_event(
            &tx,
            Event::new(Some(job_id), Some(attempt), "params")
                .detail(why.to_string())
                .body(
                    serde_json::json!({
                        "fidelity": params.fidelity.normalize().to_string(),
                        "upscale": params.upscale,
                        "background_enhance": params.background_enhance,
                        "face_upsample": params.face_upsample,
                    })
                    .to_string(),
                ),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }
}
