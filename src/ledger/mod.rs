//! The ledger: one SQLite file that holds every fact the program learns. All SQL lives here.
//!
//! Invariants kept by this module:
//! - the file is opened in WAL mode with `synchronous = NORMAL` and a busy timeout, so readers
//!   (`jobs`, `show`, `report`) work while an engine writes;
//! - `events` is append-only; a row of `jobs` or `attempts` changes only in the same transaction
//!   as the event that explains the change;
//! - a file that is not a ledger, or a ledger from a newer version, is refused and left untouched,
//!   and so is a ledger whose `-wal` or `-shm` is another database's (see [`files`]);
//! - a new ledger appears whole: it is built under a temporary name and linked into place;
//! - every process reaches one ledger file under one name, and one engine at a time drives it;
//! - the API key is never written here (nothing in this module ever receives it).

mod attach;
mod batches;
mod bodies;
mod change;
mod compact;
mod deliveries;
mod events;
mod files;
mod history;
mod jobs;
mod lock;
pub mod migrations;
mod prices;
mod reconcile;
mod record;
mod report;
mod rows;
mod uploads;
mod verify;

pub use crate::lifecycle::JobState;
pub use attach::MAX_OTHERS;
pub use batches::{KeyConflict, MemberToPlace, PlacedCopy, TagConflict};
pub use bodies::rebuild as rebuild_body;
pub use change::{Change, Expect, Field, InputSize, JobUpdate, Post, Submitted};
pub use compact::Compaction;
pub use deliveries::{
    CallbackPath, DeliveryError, DeliveryKind, DeliveryOutcome, DeliveryRow, StatusSeen,
};
pub use events::{cap_body, Event};
pub use files::APPLICATION_ID;
pub use history::{durations_event, origin as history_origin};
pub use jobs::{EnqueueReport, Enqueued};
pub use lock::EngineLock;
pub use reconcile::{AttemptRef, Billed, Finding, FindingKind, Reconcile, Tally, Totals};
pub use record::{Downloaded, FileOp, HookRunRow, Probed, ProbedJob, SubmitRecord, Write};
pub use report::{
    DaySpend, Discrepancy, GroupBy, Reconciliation, Report, ReportRow, SharedRequest, Source,
};
pub use rows::{EventRow, JobFilter, JobRow, NewJob, OutputRow};
pub use uploads::UploadRow;
pub use verify::Problem;

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable that caps the ledger's size in pages, so tests can fill the "disk".
pub const MAX_PAGES_ENV: &str = "CODEFORMER_LEDGER_MAX_PAGES";

/// Errors of the ledger boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file exists but is not a codeformer-ledger database.
    #[error("{path} is not a codeformer-ledger ledger ({reason}); it was left untouched")]
    NotALedger { path: PathBuf, reason: String },
    /// The path names something that cannot be a ledger: empty, a directory, truncated, or
    /// with a damaged header.
    #[error("{path} {what}, not a ledger; it was left untouched")]
    NotALedgerFile { path: PathBuf, what: String },
    /// The ledger, or a file beside it, could not be read.
    #[error("{path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `-wal` or `-shm` beside the ledger belongs to another database: SQLite would replay
    /// it into the ledger.
    #[error("{file} does not belong to the ledger {ledger} ({reason}); both files were left untouched. Move {file} away (it is not the ledger's), then run the command again")]
    ForeignCompanion {
        ledger: PathBuf,
        file: PathBuf,
        reason: String,
    },
    /// The ledger was written by a newer version of the program.
    #[error("{path} has ledger schema version {found}, newer than this program's {supported}; upgrade codeformer-ledger to read it (the file was left untouched)")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// A ledger of an older schema that a read-only command could not migrate first.
    #[error("{path} has ledger schema version {found}, older than this program's {supported}, and could not be migrated to it ({reason}); nothing in it was changed. Make it writable (write access to the file and its folder, room on its disk) and run again, or read it with the version that wrote it", supported = migrations::CURRENT)]
    NotMigrated {
        path: PathBuf,
        found: i64,
        reason: String,
    },
    /// A read-only command was pointed at a ledger that does not exist.
    #[error("no ledger at {0}: submit or batch a job first, or pass --ledger PATH")]
    Missing(PathBuf),
    /// Another engine holds the ledger.
    #[error("the ledger {path} is held by another running engine (pid {pid}); wait for it to finish or stop it")]
    Busy { path: PathBuf, pid: String },
    /// A job named on the command line is not in the ledger.
    #[error("no job `{0}` in the ledger (give a job id, key or request id)")]
    NoSuchJob(String),
    /// `prices remove` was refused.
    #[error("price {id} cannot be removed: {reason}")]
    PriceNotRemovable { id: i64, reason: String },
    /// A new job's key already names a job with other parameters.
    #[error("the key `{key}` already names job {job_id}, which has other parameters ({existing}); give this job another key, or leave the key out")]
    KeyConflict {
        key: String,
        job_id: i64,
        existing: String,
    },
    /// A value stored in the ledger could not be read back.
    #[error("the ledger holds a bad value in {what}: {value}")]
    Corrupt { what: &'static str, value: String },
    /// An amount in the ledger could not be summed exactly.
    #[error("ledger money error: {0}")]
    Money(#[from] crate::money::MoneyError),
    /// Other ledgers could not be read together with this one.
    #[error("{0}")]
    Sources(String),
    /// SQLite reported an error.
    #[error("ledger database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation around the ledger failed.
    #[error("ledger file error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// Counts this handle among the process's open ones (dropped after `conn`).
    _handle: files::OpenHandle,
}

impl Ledger {
    /// Opens a ledger, creating it (and its folder) if missing and migrating an older one.
    pub fn open(path: &Path) -> Result<Ledger> {
        let mut path = files::resolve(path)?;
        if !path.exists() {
            create(&path)?;
            // Now that the file exists, its name is recorded for other names of it.
            path = files::resolve(&path)?;
        }
        let (conn, handle) =
            files::open_checked(&path, check_files, |path| Ok(Connection::open(path)?))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Refuse a foreign or newer file before WAL mode rewrites its header.
        migrations::check_readable(&conn, &path)?;
        let mut ledger = Ledger::configure(conn, handle, &path)?;
        migrations::migrate(&mut ledger.conn, &path)?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading; never creates anything. A ledger of an older
    /// schema is migrated first (as any writing command would), since the queries of this
    /// program name tables and columns an old one lacks; one that cannot be migrated is
    /// refused, naming why.
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing(path.to_path_buf()));
        }
        let path = files::resolve(path)?;
        let ledger = Ledger::open_read_only_as_is(&path)?;
        let version = migrations::check_readable(&ledger.conn, &path)?;
        if version == migrations::CURRENT {
            return Ok(ledger);
        }
        drop(ledger);
        Ledger::open(&path).map_err(|e| LedgerError::NotMigrated {
            path: path.clone(),
            found: version,
            reason: e.to_string(),
        })?;
        Ledger::open_read_only_as_is(&path)
    }

    fn open_read_only_as_is(path: &Path) -> Result<Ledger> {
        let (conn, handle) = files::open_checked(path, check_files, |path| {
            Ok(Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?)
        })?;
        Ledger::configure(conn, handle, path)
    }

    fn configure(mut conn: Connection, handle: files::OpenHandle, path: &Path) -> Result<Ledger> {
        conn.busy_timeout(Duration::from_secs(10))?;
        let not_a_ledger = |e: rusqlite::Error| LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // A read-only handle cannot change the journal mode; the file already carries it.
        if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(not_a_ledger)?;
            // Write transactions take the write lock when they begin. A deferred one that
            // reads first (enqueue reads the price) and then writes fails at once with
            // "database is locked" when the engine commits meanwhile: SQLite cannot wait for a
            // snapshot that is already stale.
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Statement journals and the sorts of `report` in memory rather than in temporary
        // files: each multi-row UPDATE (a trigger's, a group commit's) opens one.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Tests stand in for a full disk by capping the file's size in pages.
        if let Some(pages) = std::env::var(MAX_PAGES_ENV)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            conn.pragma_update(None, "max_page_count", pages)?;
        }
        // Checkpoint every 32 MB of WAL rather than every 4 MB: the engine rewrites the same
        // hot pages (recent jobs, index leaves) over and over, and each checkpoint copies
        // them back and syncs the file.
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
        // The engine's loop cycles through a few dozen statements; the default cache of 16
        // would prepare some of them again on every step.
        conn.set_prepared_statement_cache_capacity(64);
        // Plans that do not depend on bound values. Without this, SQLite (built with STAT4)
        // compiles a cached statement again whenever a value it might plan by changes: every
        // `job(id)` (a partial index to consider) and every `LIMIT ?` of a new size.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        money_sql::register(&conn)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            _handle: handle,
        })
    }

    /// Where the ledger lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the engine lock: only one engine drives a ledger at a time.
    pub fn lock_engine(&self) -> Result<EngineLock> {
        EngineLock::acquire(&self.path)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

/// Builds a new ledger under a temporary name and links it into place, so a ledger file never
/// exists half made (a crash leaves only the temporary file, which is not a ledger's name). If
/// another process created the ledger meanwhile, its file is kept.
fn create(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".new-ledger-");
    #[cfg(unix)]
    {
        // The mode SQLite gives the files it creates (before the umask).
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let new = builder.tempfile_in(dir)?;
    let mut conn = Connection::open(new.path())?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    migrations::migrate(&mut conn, new.path())?;
    // The last connection folds the log into the file and removes it.
    conn.close().map_err(|(_, e)| e)?;
    match new.persist_noclobber(path) {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.error.into()),
    }
}

/// Reads the ledger's bytes and those of its `-wal` and `-shm` (see [`files`]) before SQLite
/// may touch them.
fn check_files(path: &Path) -> Result<()> {
    let header = files::inspect(path)?;
    if header.application_id != APPLICATION_ID {
        check_untouched(path)?;
    }
    Ok(())
}

/// Reads a file that does not carry the ledger's identity (another program's database, or a
/// ledger from before the identity existed) without locks, log or index files, so that a
/// foreign one is refused exactly as it was.
fn check_untouched(path: &Path) -> Result<()> {
    let conn = Connection::open_with_flags(
        format!("{}?immutable=1", files::uri(path)),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    migrations::check_readable(&conn, path)?;
    Ok(())
}

/// SQL functions for exact money, so that sums over many rows never pass through floats.
mod money_sql {
    use crate::money::DecimalSum;
    use rusqlite::functions::{Aggregate, Context, FunctionFlags};
    use rusqlite::Connection;

    struct ExactSum;

    impl Aggregate<DecimalSum, Option<String>> for ExactSum {
        fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<DecimalSum> {
            Ok(DecimalSum::new())
        }
        fn step(&self, ctx: &mut Context<'_>, sum: &mut DecimalSum) -> rusqlite::Result<()> {
            let value: Option<String> = ctx.get(0)?;
            if let Some(text) = value {
                // A value that is not an exact amount, or a sum that would need rounding,
                // fails the query: a total that silently drops or rounds a row is worse.
                sum.add_exact(&text)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
            }
            Ok(())
        }
        fn finalize(
            &self,
            _: &mut Context<'_>,
            sum: Option<DecimalSum>,
        ) -> rusqlite::Result<Option<String>> {
            Ok(Some(crate::money::exact(sum.unwrap_or_default().total())))
        }
    }

    /// `decimal_sum(text)`: the exact sum of decimal strings, as a decimal string; an
    /// unparsable value or an overflow is an error, never a rounded total.
    pub fn register(conn: &Connection) -> rusqlite::Result<()> {
        conn.create_aggregate_function(
            "decimal_sum",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            ExactSum,
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn sum_of(values: &[&str]) -> rusqlite::Result<String> {
            let conn = Connection::open_in_memory().unwrap();
            register(&conn).unwrap();
            conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
            for v in values {
                conn.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
            }
            conn.query_row("SELECT decimal_sum(v) FROM t", [], |r| r.get(0))
        }

        #[test]
        fn sums_exactly() {
            assert_eq!(sum_of(&[]).unwrap(), "0");
            assert_eq!(sum_of(&["0.0084", "0.00435456"]).unwrap(), "0.01275456");
            // 28 significant digits on both sides of the point: exact, not rounded.
            assert_eq!(
                sum_of(&["1000000000000000000", "0.000000001"]).unwrap(),
                "1000000000000000000.000000001"
            );
        }

        #[test]
        fn overflow_and_bad_values_fail_loudly() {
            // Decimal's own `+=` would round this sum to 10^28 without a word.
            let err = sum_of(&["10000000000000000000000000000", "0.1"]).unwrap_err();
            assert!(err.to_string().contains("does not fit"), "{err}");
            let err = sum_of(&["0.0084", "0.0O84"]).unwrap_err();
            assert!(err.to_string().contains("`0.0O84`"), "{err}");
            let err = sum_of(&["1e-3"]).unwrap_err();
            assert!(err.to_string().contains("`1e-3`"), "{err}");
        }
    }
}
