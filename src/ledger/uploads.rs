//! The `uploads` table: local files sent through the user's bucket.
//!
//! A row is written with its job when the job is recorded (the local path as given and
//! resolved, size, hash and object), and completed when the object is known to be in the
//! bucket: `put_status` is the status of our PUT, or NULL when the object was already there
//! (uploaded for another job, or found by a HEAD). An object is *present* when some row of it
//! is uploaded and not deleted; a deletion marks every row of that object.

use super::events::insert_event;
use super::{Event, Ledger, Result};
use crate::clock;
use crate::storage::local::LocalFile;
use rusqlite::{params, OptionalExtension, Transaction};

/// One row of `uploads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: i64,
    pub job_id: i64,
    pub local_path: String,
    pub resolved_path: String,
    pub folder: String,
    pub relative_path: String,
    pub bytes: i64,
    pub sha256: String,
    pub object_key: String,
    pub created_at: String,
    pub uploaded_at: Option<String>,
    pub put_status: Option<u16>,
    pub deleted_at: Option<String>,
}

const UPLOAD_COLUMNS: &str =
    "id, job_id, local_path, resolved_path, folder, relative_path, bytes, sha256, \
     object_key, created_at, uploaded_at, put_status, deleted_at";

fn upload_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        local_path: r.get(2)?,
        resolved_path: r.get(3)?,
        folder: r.get(4)?,
        relative_path: r.get(5)?,
        bytes: r.get(6)?,
        sha256: r.get(7)?,
        object_key: r.get(8)?,
        created_at: r.get(9)?,
        uploaded_at: r.get(10)?,
        put_status: r.get(11)?,
        deleted_at: r.get(12)?,
    })
}

/// Records the local file of a job just inserted.
pub(super) fn insert_upload(
    tx: &Transaction<'_>,
    job_id: i64,
    file: &LocalFile,
    object: &str,
    now: &crate::clock::Stamp,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO uploads (job_id, local_path, resolved_path, folder, relative_path, bytes, sha256,
            object_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        job_id,
        file.given,
        file.resolved.to_string_lossy(),
        file.folder.to_string_lossy(),
        file.relative.to_string_lossy(),
        file.bytes as i64,
        file.sha256,
        object,
        now
    ])?;
    Ok(())
}

/// The states in which a job may still be sent, so its object must be in the bucket.
const NEEDS_OBJECT: &str = "('planned','held','failed','error','rejected','stalled','uncertain')";

impl Ledger {
    /// The latest upload row of each job in scope (a batch, or every job) that may still be
    /// sent and whose object is not present, in job order.
    pub fn uploads_needed(&self, batch: Option<&str>) -> Result<Vec<UploadRow>> {
        let sql = format!(
            "SELECT {cols} FROM uploads u WHERE u.id = (SELECT max(id) FROM uploads WHERE job_id = u.job_id)
               AND u.job_id IN (SELECT id FROM jobs WHERE state IN {NEEDS_OBJECT}
                                AND (?1 IS NULL OR batch = ?1 OR id IN (SELECT job_id FROM batch_members WHERE batch = ?1)))
               AND NOT EXISTS (SELECT 1 FROM uploads p WHERE p.object_key = u.object_key
                               AND p.uploaded_at IS NOT NULL AND p.deleted_at IS NULL)
             ORDER BY u.job_id",
            cols = UPLOAD_COLUMNS.replace(", ", ", u.").replacen("id", "u.id", 1)
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![batch], upload_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether an object is in the bucket, as far as the ledger knows.
    pub fn object_present(&self, object: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM uploads WHERE object_key = ?1 AND uploaded_at IS NOT NULL AND deleted_at IS NULL LIMIT 1",
            )?
            .query_row([object], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records that a job's object is in the bucket: `put_status` is our PUT's status, `None`
    /// when it was there already. Completes the job's pending row, or adds a new row when its
    /// latest one was uploaded before (and deleted since). One `upload` event of the job.
    pub fn record_upload(
        &mut self,
        row: &UploadRow,
        put_status: Option<u16>,
        latency_ms: u64,
        how: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        let pending: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM uploads WHERE job_id = ?1 AND uploaded_at IS NULL ORDER BY id DESC LIMIT 1",
            )?
            .query_row([row.job_id], |r| r.get(0))
            .optional()?;
        match pending {
            Some(id) => {
                tx.prepare_cached(
                    "UPDATE uploads SET uploaded_at = ?2, put_status = ?3 WHERE id = ?1",
                )?
                .execute(params![id, now, put_status])?;
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO uploads (job_id, local_path, resolved_path, folder, relative_path, bytes,
                        sha256, object_key, created_at, uploaded_at, put_status)
                     SELECT job_id, local_path, resolved_path, folder, relative_path, bytes, sha256,
                        object_key, ?2, ?2, ?3
                     FROM uploads WHERE id = ?1",
                )?
                .execute(params![row.id, now, put_status])?;
            }
        }
        let attempt: Option<i64> = tx
            .prepare_cached("SELECT attempt FROM jobs WHERE id = ?1")?
            .query_row([row.job_id], |r| r.get(0))
            .optional()?;
        let mut event = Event::new(Some(row.job_id), attempt, "upload").detail(format!(
            "{} ({} bytes, sha256 {}) {how} {}",
            row.local_path, row.bytes, row.sha256, row.object_key
        ));
        if put_status.is_some() {
            event = event.http(put_status, latency_ms);
        }
        insert_event(&tx, event, &now)?;
        tx.commit()?;
        Ok(())
    }

    /// Every upload row of a job, oldest first.
    pub fn uploads_of(&self, job_id: i64) -> Result<Vec<UploadRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE job_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([job_id], upload_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The latest upload row of a job, if its input is a local file.
    pub fn upload_of(&self, job_id: i64) -> Result<Option<UploadRow>> {
        Ok(self.uploads_of(job_id)?.pop())
    }

    /// A row of the file with this hash, if any job recorded it (so a file read again is
    /// known by its content).
    pub fn upload_by_sha(&self, sha256: &str) -> Result<Option<UploadRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE sha256 = ?1 ORDER BY id LIMIT 1"
            ))?
            .query_row([sha256], upload_from_row)
            .optional()?)
    }

    /// Objects in the bucket (as far as the ledger knows) that no job may still need: every
    /// job using one is finished (completed, failed, error, rejected, stalled or skipped; a
    /// failed one is sent again only by `run --retry`, which uploads it again). With `batch`,
    /// only objects of that batch's jobs; with `downloaded`, only objects whose jobs include
    /// one completed with its outputs downloaded and none other than such jobs; with
    /// `uploaded_before`, only objects uploaded before that time. Each with its jobs.
    pub fn removable_objects(
        &self,
        batch: Option<&str>,
        downloaded: bool,
        uploaded_before: Option<&str>,
    ) -> Result<Vec<(String, Vec<i64>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT u.object_key, group_concat(DISTINCT u.job_id) FROM uploads u
             WHERE u.uploaded_at IS NOT NULL AND u.deleted_at IS NULL
             GROUP BY u.object_key
             HAVING (?1 IS NULL OR sum(u.job_id IN (SELECT id FROM jobs WHERE batch = ?1)) > 0)
                AND (?3 IS NULL OR max(u.uploaded_at) < ?3)
                AND NOT EXISTS (
                    SELECT 1 FROM uploads o JOIN jobs j ON j.id = o.job_id
                    WHERE o.object_key = u.object_key
                      AND (j.state NOT IN ('completed','failed','error','rejected','stalled','skipped')
                           OR j.post IS NOT NULL
                           OR (?2 AND (j.state <> 'completed'
                               OR NOT EXISTS (SELECT 1 FROM outputs x WHERE x.job_id = j.id)))))
             ORDER BY u.object_key",
        )?;
        let rows = stmt.query_map(params![batch, downloaded, uploaded_before], |r| {
            let key: String = r.get(0)?;
            let ids: String = r.get(1)?;
            Ok((key, ids.split(',').filter_map(|i| i.parse().ok()).collect()))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that an object was deleted from the bucket: every row of it is marked, and
    /// each of its jobs gets an `upload_deleted` event.
    pub fn record_object_deleted(
        &mut self,
        object: &str,
        jobs: &[i64],
        http_status: u16,
        why: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let now = clock::Stamp::now();
        tx.prepare_cached(
            "UPDATE uploads SET deleted_at = ?2 WHERE object_key = ?1 AND deleted_at IS NULL",
        )?
        .execute(params![object, now])?;
        for &job in jobs {
            let attempt: Option<i64> = tx
                .prepare_cached("SELECT attempt FROM jobs WHERE id = ?1")?
                .query_row([job], |r| r.get(0))
                .optional()?;
            let event = Event::new(Some(job), attempt, "upload_deleted")
                .detail(format!("{object} deleted from the bucket ({why})"))
                .http(Some(http_status), 0);
            insert_event(&tx, event, &now)?;
        }
        tx.commit()?;
        Ok(())
    }
}
