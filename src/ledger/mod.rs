//! The ledger: one SQLite file that holds every fact the program learns. All SQL lives here.
//!
//! Invariants kept by this module:
//! - the file is opened in WAL mode with `synchronous = NORMAL` and a busy timeout, so readers
//!   (`jobs`, `show`, `report`) work while an engine writes;
//! - `events` is append-only; a row of `jobs` or `attempts` changes only in the same transaction
//!   as the event that explains the change;
//! - a file that is not a ledger, or a ledger from a newer version, is refused and left untouched;
//! - the API key is never written here (nothing in this module ever receives it).

mod jobs;
mod lock;
mod migrations;
mod record;
mod report;
mod state;
mod verify;

pub use jobs::{EventRow, JobFilter, JobRow, NewJob, OutputRow};
pub use lock::EngineLock;
pub use record::{cap_body, Change, Event, HookRunRow, SubmitRecord};
pub use report::{Discrepancy, GroupBy, Report, ReportRow};
pub use state::JobState;
pub use verify::Problem;

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of the ledger boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file exists but is not a codeformer-ledger database.
    #[error("{path} is not a codeformer-ledger ledger ({reason}); it was left untouched")]
    NotALedger { path: PathBuf, reason: String },
    /// The ledger was written by a newer version of the program.
    #[error("{path} has ledger schema version {found}, newer than this program's {supported}; upgrade codeformer-ledger to read it (the file was left untouched)")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
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
    /// A value stored in the ledger could not be read back.
    #[error("the ledger holds a bad value in {what}: {value}")]
    Corrupt { what: &'static str, value: String },
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
}

impl Ledger {
    /// Opens a ledger, creating it (and its folder) if missing and migrating an older one.
    pub fn open(path: &Path) -> Result<Ledger> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        check_header(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Refuse a foreign or newer file before WAL mode rewrites its header.
        migrations::check_readable(&conn, path)?;
        let mut ledger = Ledger::configure(conn, path)?;
        migrations::migrate(&mut ledger.conn, path)?;
        Ok(ledger)
    }

    /// Opens an existing ledger for reading; never creates or migrates anything.
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(LedgerError::Missing(path.to_path_buf()));
        }
        check_header(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let ledger = Ledger::configure(conn, path)?;
        migrations::check_readable(&ledger.conn, path)?;
        Ok(ledger)
    }

    fn configure(conn: Connection, path: &Path) -> Result<Ledger> {
        conn.busy_timeout(Duration::from_secs(10))?;
        let not_a_ledger = |e: rusqlite::Error| LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // A read-only handle cannot change the journal mode; the file already carries it.
        if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(not_a_ledger)?;
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
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

/// Refuses a file that exists and is not SQLite before SQLite gets a chance to touch it.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let mut head = [0u8; 16];
    let n = file.read(&mut head)?;
    if n == 0 {
        return Ok(());
    }
    if n < 16 || &head != b"SQLite format 3\0" {
        return Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "it is not an SQLite database".into(),
        });
    }
    Ok(())
}

/// SQL functions for exact money, so that sums over many rows never pass through floats.
mod money_sql {
    use rusqlite::functions::{Aggregate, Context, FunctionFlags};
    use rusqlite::Connection;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    struct DecimalSum;

    impl Aggregate<Decimal, Option<String>> for DecimalSum {
        fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Decimal> {
            Ok(Decimal::ZERO)
        }
        fn step(&self, ctx: &mut Context<'_>, sum: &mut Decimal) -> rusqlite::Result<()> {
            let value: Option<String> = ctx.get(0)?;
            if let Some(text) = value {
                let d = Decimal::from_str(&text)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                *sum += d;
            }
            Ok(())
        }
        fn finalize(
            &self,
            _: &mut Context<'_>,
            sum: Option<Decimal>,
        ) -> rusqlite::Result<Option<String>> {
            Ok(Some(crate::money::exact(sum.unwrap_or(Decimal::ZERO))))
        }
    }

    /// `decimal_sum(text)`: the exact sum of decimal strings, as a decimal string.
    pub fn register(conn: &Connection) -> rusqlite::Result<()> {
        conn.create_aggregate_function(
            "decimal_sum",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            DecimalSum,
        )
    }
}
