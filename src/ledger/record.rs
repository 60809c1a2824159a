//! Writing what the engine learns: every change of a job goes with the event that explains it,
//! in one transaction, and many of them can share one transaction (group commit).

use super::change::{apply_change, Change, Field, InputSize, JobUpdate, Post, Submitted};
use super::deliveries::{confirm_in, StatusSeen};
use super::events::{
    charge_detail, download_detail, insert_event, write_out_download_details, Event,
};
use super::prices::price_in_force;
use super::rows::{job_from_row, JOB_COLUMNS, JOB_FROM};
use super::{JobRow, JobState, Ledger, Result};
use crate::clock;
use crate::lifecycle::{self, At, Learned};
use crate::money::{self, Price};
use rusqlite::{params, OptionalExtension, Transaction};
use rust_decimal::Decimal;

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

/// The attempt of a job whose input was probed, and the upscale its estimate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbedJob {
    pub job_id: i64,
    pub attempt: i64,
    pub upscale: u32,
}

/// Outputs downloaded for one attempt, and the post-processing it owes next.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub job_id: i64,
    pub attempt: i64,
    pub files: Vec<super::OutputRow>,
    pub post_after: Option<Post>,
}

/// An input size read from an image's header (or the cache), and the job it is for.
#[derive(Debug, Clone)]
pub struct Probed {
    pub url: String,
    pub size: (u32, u32),
    pub format: String,
    pub bytes_read: u64,
    pub job: Option<ProbedJob>,
}

/// One of the writes [`Ledger::write_group`] commits together. Most are updates, so they are
/// kept inline rather than boxed (a short-lived list per loop step).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Write {
    /// A job's change with the event that explains it ([`Ledger::record`]).
    Update(JobUpdate),
    /// An event that changes no job ([`Ledger::append`]).
    Event(Event),
    /// [`Ledger::record_probe`].
    Probe(Probed),
    /// [`Ledger::record_download`].
    Download(Downloaded),
    /// [`Ledger::record_no_charge`].
    NoCharge {
        job_id: i64,
        attempt: i64,
        why: &'static str,
    },
    /// A status answer judging the callbacks that wait on it ([`Ledger::confirm_deliveries`]);
    /// it follows the poll's own update in the same group.
    Confirm(StatusSeen),
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

impl Ledger {
    /// Applies changes, each with its event, in one transaction.
    pub fn record(&mut self, updates: Vec<JobUpdate>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        for u in updates {
            apply_change(&tx, u.job_id, u.attempt, &u.change, &now)?;
            insert_event(&tx, u.event, &now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends events that change no job (e.g. an engine start), in one transaction.
    pub fn append(&mut self, events: Vec<Event>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
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
                    submitted: Some(Submitted {
                        price: s.price,
                        estimate: s.estimate,
                    }),
                    reason: Field::Clear,
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
                JobUpdate::new(s.job_id, s.attempt, change, event)
            })
            .collect();
        self.record(items)
    }

    /// A cached input size for an image URL.
    pub fn cached_size(&self, url: &str) -> Result<Option<(u32, u32)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT width, height FROM image_sizes WHERE url = ?1")?
            .query_row([url], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Caches a probed input size; `job` gets the size and an estimate event.
    pub fn record_probe(
        &mut self,
        url: &str,
        size: (u32, u32),
        format: &str,
        bytes_read: u64,
        job: Option<ProbedJob>,
    ) -> Result<Option<Decimal>> {
        let tx = self.conn.transaction()?;
        let probe = Probed {
            url: url.to_string(),
            size,
            format: format.to_string(),
            bytes_read,
            job,
        };
        let estimate = probe_in(&tx, &probe, &clock::Stamp::now())?;
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
        post_after: Option<Post>,
    ) -> Result<Option<Decimal>> {
        let tx = self.conn.transaction()?;
        let charge = download_in(
            &tx,
            job_id,
            attempt,
            files,
            post_after,
            &clock::Stamp::now(),
        )?;
        tx.commit()?;
        Ok(charge)
    }

    /// [`Ledger::record_download`] for many attempts in one transaction (group commit): the
    /// charge each call set, in order.
    pub fn record_downloads(&mut self, items: &[Downloaded]) -> Result<Vec<Option<Decimal>>> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let mut charges = Vec::with_capacity(items.len());
        for d in items {
            charges.push(download_in(
                &tx,
                d.job_id,
                d.attempt,
                &d.files,
                d.post_after,
                &now,
            )?);
        }
        tx.commit()?;
        Ok(charges)
    }

    /// Marks an attempt as not charged (ERROR, rejected), once.
    pub fn record_no_charge(&mut self, job_id: i64, attempt: i64, why: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        no_charge_in(&tx, job_id, attempt, why, &clock::Stamp::now())?;
        tx.commit()?;
        Ok(())
    }

    /// Writes what one step of the engine took from its workers in one transaction (group
    /// commit), in order: the charge each [`Write::Download`] set, in order.
    pub fn write_group(&mut self, writes: Vec<Write>) -> Result<Vec<Option<Decimal>>> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let mut charges = Vec::new();
        for write in writes {
            match write {
                Write::Update(u) => {
                    apply_change(&tx, u.job_id, u.attempt, &u.change, &now)?;
                    insert_event(&tx, u.event, &now)?;
                }
                Write::Event(event) => insert_event(&tx, event, &now)?,
                Write::Probe(probe) => {
                    probe_in(&tx, &probe, &now)?;
                }
                Write::Download(d) => charges.push(download_in(
                    &tx,
                    d.job_id,
                    d.attempt,
                    &d.files,
                    d.post_after,
                    &now,
                )?),
                Write::NoCharge {
                    job_id,
                    attempt,
                    why,
                } => no_charge_in(&tx, job_id, attempt, why, &now)?,
                Write::Confirm(seen) => {
                    confirm_in(&tx, &seen, &now)?;
                }
            }
        }
        tx.commit()?;
        Ok(charges)
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

    /// Moves the next polls of jobs still at the gateway later, each to its own time (a
    /// schedule that learned it is too early to ask); no event, as nothing was learned.
    pub fn defer_polls(&mut self, polls: &[(i64, i64)]) -> Result<()> {
        if polls.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET next_poll_at = ?2 WHERE id = ?1 AND next_poll_at IS NOT NULL
                 AND state IN ('queued', 'processing')",
            )?;
            for (job_id, at_ms) in polls {
                stmt.execute(params![job_id, at_ms])?;
            }
        }
        tx.commit()?;
        Ok(())
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

    /// At engine start: a job at the gateway (not waiting for callbacks) is polled no later
    /// than `latest_ms`, one poll interval of this run away, whatever an earlier command with
    /// another interval scheduled.
    pub fn bring_polls_forward(&mut self, batch: Option<&str>, latest_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE jobs SET next_poll_at = ?1 WHERE next_poll_at > ?1
             AND state IN ('queued', 'processing') AND NOT expects_callbacks
             AND (?2 IS NULL OR batch = ?2)",
            params![latest_ms, batch],
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
        // Each state read in id order from jobs_by_state, at most `limit` of each, and the two
        // merged here: with `state IN (...) ORDER BY id` SQLite sorted every sendable job on
        // every call, and a compound query copies its rows into a temporary table.
        let sql = format!(
            "SELECT {JOB_COLUMNS} {JOB_FROM} WHERE j.state = ?4 AND j.id > ?1
             AND (?2 IS NULL OR j.batch = ?2) ORDER BY j.id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut jobs = Vec::new();
        for state in ["planned", "held"] {
            let rows =
                stmt.query_map(params![after_id, batch, limit as i64, state], job_from_row)?;
            for row in rows {
                jobs.push(row?);
            }
        }
        jobs.sort_unstable_by_key(|j| j.id);
        jobs.truncate(limit);
        Ok(jobs)
    }

    /// The ids of [`Ledger::sendable`], without reading the jobs.
    pub fn sendable_ids(
        &self,
        batch: Option<&str>,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM jobs WHERE state = ?4 AND id > ?1 AND (?2 IS NULL OR batch = ?2)
             ORDER BY id LIMIT ?3",
        )?;
        let mut ids = Vec::new();
        for state in ["planned", "held"] {
            let rows =
                stmt.query_map(params![after_id, batch, limit as i64, state], |r| r.get(0))?;
            for id in rows {
                ids.push(id?);
            }
        }
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
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
        let killed = Learned::Killed;
        let step = lifecycle::step(At::new(JobState::Submitting, false), killed);
        let items = ids
            .iter()
            .map(|&(id, attempt)| {
                let reason = "the process stopped after sending the submission and before recording the answer; the job may exist and be billed";
                JobUpdate::new(
                    id,
                    attempt,
                    Change {
                        state: step.moves_to(JobState::Submitting),
                        reason: Field::Set(reason.into()),
                        ..Change::default()
                    },
                    Event::new(Some(id), Some(attempt), killed.event_kind())
                        .detail(format!("submitting -> {}: {reason}", step.next)),
                )
            })
            .collect();
        self.record(items)?;
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }

    /// Starts a new attempt for every job in one of `states` (within a batch, if given): the
    /// old attempt stays in the ledger with whatever it cost. An uncertain attempt that has
    /// adopted its ghost's request id (waiting for the status call that confirms it) is not
    /// given a new one: the gateway has it.
    pub fn new_attempts(
        &mut self,
        states: &[JobState],
        batch: Option<&str>,
        why: &str,
    ) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let ids: Vec<(i64, i64, String)> = {
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            let mut stmt = tx.prepare(
                "SELECT id, attempt, state FROM jobs WHERE state IN (SELECT value FROM json_each(?1))
                 AND (?2 IS NULL OR batch = ?2)
                 AND NOT (state = 'uncertain' AND request_id IS NOT NULL AND EXISTS (
                     SELECT 1 FROM deliveries d WHERE d.path_job = jobs.id
                     AND d.path_attempt = jobs.attempt AND d.outcome = 'adopting'))",
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
                params![id, next, now.millis()],
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
    /// Finishes a hook run with its outcome, the events and tags it produced, and the file
    /// operations it did (`fs.rename`, `fs.copy`): a renamed output's `outputs.path` follows
    /// the file (also when a folder holding it was renamed), and each moved or copied output
    /// gets an `output_moved` / `output_copied` event on its job. All in one transaction.
    pub fn finish_hook_run(
        &mut self,
        run_id: i64,
        error: Option<&str>,
        events: Vec<Event>,
        tags: &[(String, String)],
        files: &[FileOp],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
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
        for op in files {
            for event in apply_file_op(&tx, op)? {
                insert_event(&tx, event, &now)?;
            }
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

    /// How many hook runs in scope (a batch's jobs and the batch itself, or the whole ledger)
    /// have a failure as their latest outcome: what `hooks failed` lists for that scope.
    pub fn failed_hook_count(&self, batch: Option<&str>) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM hook_runs h
             WHERE h.status != 'ok' AND h.id = (SELECT max(id) FROM hook_runs g
                 WHERE g.job_id IS h.job_id AND g.attempt IS h.attempt AND g.batch IS h.batch
                 AND g.hook_file = h.hook_file AND g.function = h.function)
             AND (?1 IS NULL OR h.batch = ?1
                  OR h.job_id IN (SELECT id FROM jobs WHERE batch = ?1))",
            params![batch],
            |r| r.get(0),
        )?)
    }

    /// Jobs at the gateway that were sent before `cutoff` (unix milliseconds).
    pub fn overdue(&self, cutoff: i64, batch: Option<&str>) -> Result<Vec<JobRow>> {
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
        post: Option<Post>,
        why: &str,
    ) -> Result<()> {
        self.record(vec![JobUpdate::new(
            job_id,
            attempt,
            Change {
                post: Field::set_or_clear(post),
                ..Change::default()
            },
            Event::new(Some(job_id), Some(attempt), "post").detail(why.to_string()),
        )])
    }
}

/// Caches a probed input size; its job, if any, gets the size, an estimate and its event.
fn probe_in(
    tx: &Transaction<'_>,
    p: &Probed,
    now: &crate::clock::Stamp,
) -> Result<Option<Decimal>> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO image_sizes (url, width, height, format, bytes_read, probed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        p.url,
        p.size.0,
        p.size.1,
        p.format,
        p.bytes_read as i64,
        now
    ])?;
    let mut estimate = None;
    if let Some(ProbedJob {
        job_id,
        attempt,
        upscale,
    }) = p.job
    {
        let price = price_in_force(tx, now.text())?;
        let (ow, oh) = money::output_size(p.size.0, p.size.1, upscale);
        let cost = price.cost(ow, oh);
        estimate = Some(cost);
        apply_change(
            tx,
            job_id,
            attempt,
            &Change {
                input_size: Some(InputSize {
                    width: p.size.0,
                    height: p.size.1,
                    source: "header",
                }),
                ..Change::default()
            },
            now,
        )?;
        tx.prepare_cached(
                "UPDATE attempts SET estimated_cost = ?3, price_per_mp = ?4 WHERE job_id = ?1 AND attempt = ?2",
            )?
            .execute(params![job_id, attempt, money::exact(cost), money::exact(price.per_megapixel)])?;
        insert_event(
            tx,
            Event::new(Some(job_id), Some(attempt), "estimate")
                .detail(format!(
                "input {}x{} {} (header, {} bytes read) at upscale {upscale} at {} USD/MP: {} USD",
                p.size.0,
                p.size.1,
                p.format,
                p.bytes_read,
                money::exact(price.per_megapixel),
                money::exact(cost)
            ))
                .whole(),
            now,
        )?;
    }
    Ok(estimate)
}

fn no_charge_in(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    why: &str,
    now: &crate::clock::Stamp,
) -> Result<()> {
    let n = tx
        .prepare_cached(
            "UPDATE attempts SET actual_cost = '0'
             WHERE job_id = ?1 AND attempt = ?2 AND actual_cost IS NULL",
        )?
        .execute(params![job_id, attempt])?;
    if n == 1 {
        insert_event(
            tx,
            Event::new(Some(job_id), Some(attempt), "charge").detail(format!("0 USD: {why}")),
            now,
        )?;
    }
    Ok(())
}

fn download_in(
    tx: &Transaction<'_>,
    job_id: i64,
    attempt: i64,
    files: &[super::OutputRow],
    post_after: Option<Post>,
    now: &crate::clock::Stamp,
) -> Result<Option<Decimal>> {
    for f in files {
        write_out_download_details(tx, job_id, attempt, f.idx)?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO outputs (job_id, attempt, idx, url, path, bytes, sha256, width, height)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            job_id, attempt, f.idx, f.url, f.path, f.bytes, f.sha256, f.width, f.height
        ])?;
        insert_event(
            tx,
            Event::new(Some(job_id), Some(attempt), "download")
                .detail(download_detail(
                    &f.url,
                    &f.path,
                    f.bytes,
                    (f.width, f.height),
                    &f.sha256,
                ))
                .output(f.idx),
            now,
        )?;
    }
    let charge = charge_once(tx, job_id, attempt, files, now)?;
    // The URLs are now in `outputs`, in order: the job's copy goes when it says the same.
    tx.prepare_cached(
        "UPDATE jobs SET output_urls = NULL WHERE id = ?1 AND attempt = ?2
         AND output_urls = (SELECT json_group_array(url) FROM (SELECT url FROM outputs
             WHERE job_id = ?1 AND attempt = ?2 ORDER BY idx))",
    )?
    .execute(params![job_id, attempt])?;
    apply_change(
        tx,
        job_id,
        attempt,
        &Change {
            post: Field::set_or_clear(post_after),
            next_poll_at: Field::Clear,
            error: Field::Clear,
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
    now: &crate::clock::Stamp,
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
        None => price_in_force(tx, now.text())?,
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
        Event::new(Some(job_id), Some(attempt), "charge").detail(charge_detail(
            &money::exact(cost),
            (width, height),
            &money::exact(price.per_megapixel),
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
        let now = clock::Stamp::now();
        tx.execute(
            "UPDATE jobs SET fidelity = ?2, upscale = ?3, background_enhance = ?4, face_upsample = ?5,
               updated_at = ?6 WHERE id = ?1",
            params![
                job_id,
                params.fidelity.normalize().to_string(),
                params.upscale,
                params.background_enhance,
                params.face_upsample,
                now.millis()
            ],
        )?;
        let size: (Option<u32>, Option<u32>) = tx.query_row(
            "SELECT input_width, input_height FROM jobs WHERE id = ?1",
            [job_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let (Some(w), Some(h)) = size {
            let price = price_in_force(&tx, now.text())?;
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

/// A file operation a hook did inside the output folder, by full paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    Moved { from: String, to: String },
    Copied { from: String, to: String },
}

/// Follows one file operation in `outputs`; the events it makes.
fn apply_file_op(tx: &rusqlite::Transaction<'_>, op: &FileOp) -> Result<Vec<Event>> {
    let (from, to, moved) = match op {
        FileOp::Moved { from, to } => (from, to, true),
        FileOp::Copied { from, to } => (from, to, false),
    };
    let under = format!("{}/", from.trim_end_matches('/'));
    let mut stmt = tx.prepare_cached(
        "SELECT job_id, attempt, idx, path FROM outputs
         WHERE path = ?1 OR (?3 AND substr(path, 1, length(?2)) = ?2)",
    )?;
    let rows: Vec<(i64, i64, i64, String)> = stmt
        .query_map(params![from, under, moved], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut events = Vec::with_capacity(rows.len());
    for (job_id, attempt, idx, path) in rows {
        let new_path = format!("{to}{}", &path[from.len()..]);
        if moved {
            write_out_download_details(tx, job_id, attempt, idx)?;
            tx.prepare_cached(
                "UPDATE outputs SET path = ?4 WHERE job_id = ?1 AND attempt = ?2 AND idx = ?3",
            )?
            .execute(params![job_id, attempt, idx, new_path])?;
        }
        let (kind, verb) = if moved {
            ("output_moved", "moved")
        } else {
            ("output_copied", "copied")
        };
        events.push(
            Event::new(Some(job_id), Some(attempt), kind).detail(format!(
                "output {idx} {verb} by a hook: {path} -> {new_path}"
            )),
        );
    }
    Ok(events)
}
