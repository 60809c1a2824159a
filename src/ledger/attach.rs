//! Other ledgers read beside the open one (`report --with-ledger`, `reconcile --with-ledger`):
//! each is attached read-only (`mode=ro`) for the time of one read, and checked to be a ledger
//! first. `immutable` is never used: another engine may be writing to any of them, and a
//! reader that ignores its WAL would miss committed rows.
//!
//! Invariant: attaching changes nothing in the attached file (a read-only handle never
//! checkpoints, migrates or changes the journal mode).

use super::{migrations, Ledger, LedgerError, Result, Source};
use std::path::Path;

/// The most ledgers one connection may attach (SQLite's SQLITE_MAX_ATTACHED, 10).
pub const MAX_OTHERS: usize = 9;

/// Ledgers attached to one connection; detached when dropped.
pub(super) struct Attached<'a> {
    ledger: &'a Ledger,
    names: Vec<String>,
}

impl<'a> Attached<'a> {
    /// Attaches every source read-only as `src1`, `src2`, …, refusing one that is missing,
    /// not a ledger, or newer than this program.
    pub fn new(ledger: &'a Ledger, others: &[Source]) -> Result<Attached<'a>> {
        if others.len() > MAX_OTHERS {
            return Err(LedgerError::Sources(format!(
                "{} other ledgers were given; at most {MAX_OTHERS} can be read with this one",
                others.len()
            )));
        }
        let mut attached = Attached {
            ledger,
            names: Vec::new(),
        };
        for (i, source) in others.iter().enumerate() {
            let name = format!("src{}", i + 1);
            attach(ledger, &source.path, &name)?;
            attached.names.push(name.clone());
            check(ledger, &source.path, &name)?;
        }
        Ok(attached)
    }

    /// `main` and the attached schemas, in order.
    pub fn schemas(&self) -> Vec<String> {
        std::iter::once("main".to_string())
            .chain(self.names.iter().cloned())
            .collect()
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self
                .ledger
                .conn
                .execute(&format!("DETACH DATABASE {name}"), []);
        }
    }
}

fn attach(ledger: &Ledger, path: &Path, name: &str) -> Result<()> {
    if !path.is_file() {
        return Err(LedgerError::Missing(path.to_path_buf()));
    }
    super::files::check_unopened(path, |path| super::files::inspect(path).map(|_| ()))?;
    let absolute = std::path::absolute(path)?;
    let uri = format!("file:{}?mode=ro", uri_path(&absolute));
    ledger
        .conn
        .execute(&format!("ATTACH DATABASE ?1 AS {name}"), [uri])
        .map_err(|e| LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Refuses an attached file that is not a ledger this program can read.
fn check(ledger: &Ledger, path: &Path, name: &str) -> Result<()> {
    let not_a_ledger = |reason: String| LedgerError::NotALedger {
        path: path.to_path_buf(),
        reason,
    };
    let version: i64 = ledger
        .conn
        .query_row(&format!("PRAGMA {name}.user_version"), [], |r| r.get(0))
        .map_err(|e| not_a_ledger(e.to_string()))?;
    if version > migrations::CURRENT {
        return Err(LedgerError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: migrations::CURRENT,
        });
    }
    let tables: i64 = ledger
        .conn
        .query_row(
            &format!(
                "SELECT count(*) FROM {name}.sqlite_master WHERE type = 'table'
                 AND name IN ('jobs', 'attempts', 'events', 'tags', 'outputs', 'batches')"
            ),
            [],
            |r| r.get(0),
        )
        .map_err(|e| not_a_ledger(e.to_string()))?;
    if version < 1 || tables != 6 {
        return Err(not_a_ledger(
            "it has no ledger schema (jobs, attempts, events ...)".into(),
        ));
    }
    Ok(())
}

/// A path as the path part of an SQLite `file:` URI: every byte but unreserved ones and `/`
/// percent-encoded, so `?`, `#` and `%` in a file name stay part of the name.
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn uri_paths_keep_special_characters_in_the_name() {
        assert_eq!(
            super::uri_path(std::path::Path::new("/a b/l?#%.db")),
            "/a%20b/l%3F%23%25.db"
        );
    }
}
