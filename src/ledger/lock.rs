//! The engine lock: an exclusive `flock` on the ledger file itself, held for as long as an
//! engine runs. It belongs to the file (its device and inode), not to a name, so a symbolic
//! link, a hard link or another spelling of the path meets the same lock; the OS releases it
//! when the process dies, so a killed engine never leaves a stale lock. (`flock` and SQLite's
//! `fcntl` byte-range locks do not interact on local file systems.) The holder's pid is kept
//! in `<ledger>.lock` for people and for the message of a second engine.

use super::{LedgerError, Result};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Held while an engine drives the ledger; dropping it releases the lock.
///
/// The descriptor of the ledger file is never closed: closing any descriptor of a file drops
/// every POSIX lock the process holds on it, and SQLite's shared lock on the ledger is what
/// keeps another process from taking itself for the last connection and deleting the log
/// this one still writes. Dropping the lock unlocks it and leaves the descriptor open (one
/// per lock taken, for the life of the process).
#[derive(Debug)]
pub struct EngineLock {
    ledger: std::mem::ManuallyDrop<File>,
    path: PathBuf,
}

impl Drop for EngineLock {
    fn drop(&mut self) {
        let _ = self.ledger.unlock();
    }
}

impl EngineLock {
    /// Takes the lock on the ledger file at `ledger` (the name [`super::Ledger`] opened).
    pub fn acquire(ledger: &Path) -> Result<EngineLock> {
        let file = std::mem::ManuallyDrop::new(File::open(ledger)?);
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LedgerError::Busy {
                    path: ledger.to_path_buf(),
                    pid: holder(&file, ledger).unwrap_or_else(|| "unknown".into()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let path = super::files::companion(ledger, ".lock");
        // Written whole and renamed into place: a reader sees one pid or the other, never
        // an empty file.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut builder = tempfile::Builder::new();
        builder.prefix(".engine-pid-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o644));
        }
        let mut pid = builder.tempfile_in(dir)?;
        write!(pid, "{}", std::process::id())?;
        pid.persist(&path).map_err(|e| e.error)?;
        Ok(EngineLock { ledger: file, path })
    }

    /// The file that names the holder's pid.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid of the process holding the lock: from the kernel's lock table when it is readable
/// (exact, whatever name the holder used), else from `<ledger>.lock`.
fn holder(file: &File, ledger: &Path) -> Option<String> {
    if let Some(pid) = holder_from_lock_table(file) {
        return Some(pid);
    }
    let text = std::fs::read_to_string(super::files::companion(ledger, ".lock")).ok()?;
    let pid = text.trim();
    (!pid.is_empty()).then(|| pid.to_string())
}

#[cfg(target_os = "linux")]
fn holder_from_lock_table(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 4242 08:01:131075 0 EOF"; waiters carry "->" and are skipped.
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK")
            && fields.get(3) == Some(&"WRITE")
            && fields.get(5) == Some(&id.as_str()))
        .then(|| fields[4].to_string())
    })
}

#[cfg(not(target_os = "linux"))]
fn holder_from_lock_table(_file: &File) -> Option<String> {
    None
}
