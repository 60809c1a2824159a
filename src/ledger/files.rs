//! The ledger's files before SQLite sees them: which name SQLite is given for the ledger, and
//! whether the file, its `-wal` and its `-shm` belong to a ledger at all.
//!
//! Invariants kept by this module:
//! - every process opens one ledger file under one name, whatever path named it (a symbolic
//!   link, a hard link, `..`, a relative path): SQLite finds the write-ahead log by name, so
//!   two names would mean two logs for one file;
//! - nothing here writes the ledger, its `-wal` or its `-shm`: the checks read bytes, so a file
//!   that is refused is left exactly as it was, and no companion file is created beside it;
//! - a `-wal` is accepted only if replaying it cannot turn the ledger into another database:
//!   its page size is the ledger's, and its newest committed first page carries the ledger's
//!   identity (or, when it has none, its transactions neither grow nor shrink the file).

use super::{LedgerError, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA application_id` of a ledger ("CFLG"): what tells a ledger's first page from any
/// other database's.
pub const APPLICATION_ID: u32 = 0x4346_4C47;

/// The name under which this process gives the ledger at `path` to SQLite (and takes its
/// engine lock): absolute, without symbolic links, and the same for every hard link.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(canonical) if canonical.is_file() => Ok(names::agreed(&canonical).unwrap_or(canonical)),
        Ok(canonical) => Ok(canonical),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A new ledger: its folder's real path and its own name.
            let name = path
                .file_name()
                .ok_or_else(|| LedgerError::NotALedgerFile {
                    path: path.to_path_buf(),
                    what: "does not name a file".into(),
                })?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            Ok(std::fs::canonicalize(dir)?.join(name))
        }
        Err(e) => Err(e.into()),
    }
}

/// The fields of an SQLite header that the checks use.
#[derive(Debug, Clone, Copy)]
pub struct DbHeader {
    pub page_size: u32,
    /// The in-header database size in pages, when SQLite marks it valid.
    pub pages: Option<u32>,
    pub user_version: u32,
    pub application_id: u32,
}

/// Checks the ledger file and its companions, retrying briefly: an engine writing beside us
/// can make a consistent pair of files look inconsistent for an instant, never for long.
pub fn inspect(path: &Path) -> Result<DbHeader> {
    let mut tries = 0;
    loop {
        match inspect_once(path) {
            Err(e) if tries < 3 && passing(&e) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Refusals that a concurrent writer can cause for an instant.
fn passing(e: &LedgerError) -> bool {
    match e {
        LedgerError::ForeignCompanion { .. } => true,
        LedgerError::NotALedgerFile { what, .. } => what.starts_with("is truncated"),
        _ => false,
    }
}

fn inspect_once(path: &Path) -> Result<DbHeader> {
    let refuse = |what: String| LedgerError::NotALedgerFile {
        path: path.to_path_buf(),
        what,
    };
    let unreadable = |file: &Path| {
        let file = file.to_path_buf();
        move |source| LedgerError::Unreadable { path: file, source }
    };
    let meta = std::fs::metadata(path).map_err(unreadable(path))?;
    if meta.is_dir() {
        return Err(refuse("is a directory".into()));
    }
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let len = meta.len();
    if len == 0 {
        return Err(refuse("is empty".into()));
    }
    let mut head = Vec::with_capacity(100);
    File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut head))
        .map_err(unreadable(path))?;
    if head.len() < 16 || &head[..16] != b"SQLite format 3\0" {
        return Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: "it is not an SQLite database".into(),
        });
    }
    if head.len() < 100 {
        return Err(refuse(format!(
            "is truncated ({len} bytes, shorter than an SQLite header)"
        )));
    }
    let header =
        parse_db_header(&head).map_err(|e| refuse(format!("has a damaged header ({e})")))?;
    if header.application_id != 0 && header.application_id != APPLICATION_ID {
        return Err(LedgerError::NotALedger {
            path: path.to_path_buf(),
            reason: format!(
                "it belongs to another program (application_id {:#010x})",
                header.application_id
            ),
        });
    }
    let page = u64::from(header.page_size);
    if len < page || len % page != 0 {
        return Err(refuse(format!(
            "is truncated ({len} bytes, not a whole number of {page}-byte pages)"
        )));
    }
    // The index first: a writer appends frames to the log before it indexes them, so a log
    // read after its index holds at least the frames the index names.
    let (shm_path, wal_path) = (companion(path, "-shm"), companion(path, "-wal"));
    let shm = shm::read(&shm_path).map_err(unreadable(&shm_path))?;
    let wal = wal::read(&wal_path).map_err(unreadable(&wal_path))?;
    let committed = wal.as_ref().map_or(0, |w| w.committed);
    if committed == 0 {
        if let Some(pages) = header.pages {
            if len < u64::from(pages) * page {
                return Err(refuse(format!(
                    "is truncated ({len} bytes; its header says {pages} pages of {page} bytes)"
                )));
            }
        }
    }
    let foreign = |name: &str, reason: String| LedgerError::ForeignCompanion {
        ledger: path.to_path_buf(),
        file: companion(path, name),
        reason,
    };
    if let Some(w) = &wal {
        if let Err(reason) = w.belongs_to(&header, len) {
            return Err(foreign("-wal", reason));
        }
    }
    if let Some(s) = &shm {
        if let Err(reason) = s.belongs_to(&header, wal.as_ref()) {
            return Err(foreign("-shm", reason));
        }
    }
    // A newer program's ledger is refused before a connection could fold its log in.
    let newest = wal
        .as_ref()
        .and_then(|w| w.page_one.as_deref())
        .and_then(|head| parse_db_header(head).ok())
        .map_or(header.user_version, |h| h.user_version);
    let supported = super::migrations::CURRENT;
    if i64::from(newest) > supported {
        return Err(LedgerError::TooNew {
            path: path.to_path_buf(),
            found: i64::from(newest),
            supported,
        });
    }
    Ok(header)
}

/// `ledger.db` → `ledger.db-wal`.
pub fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn valid_page_size(size: u32) -> bool {
    (512..=65536).contains(&size) && size.is_power_of_two()
}

/// Reads the 100-byte header of an SQLite database (a file's or a page-1 frame's).
pub fn parse_db_header(head: &[u8]) -> std::result::Result<DbHeader, String> {
    let raw = u16::from_be_bytes([head[16], head[17]]);
    let page_size = if raw == 1 { 65536 } else { u32::from(raw) };
    if !valid_page_size(page_size) {
        return Err(format!("page size {raw}"));
    }
    if !(1..=2).contains(&head[18]) || !(1..=2).contains(&head[19]) {
        return Err(format!("file format {}/{}", head[18], head[19]));
    }
    if head[21..24] != [64, 32, 32] {
        return Err("payload fractions".into());
    }
    let pages = be32(head, 28);
    Ok(DbHeader {
        page_size,
        pages: (pages > 0 && be32(head, 24) == be32(head, 92)).then_some(pages),
        user_version: be32(head, 60),
        application_id: be32(head, 68),
    })
}

/// The write-ahead log, read as SQLite's recovery would read it.
mod wal {
    use super::*;

    const MAGIC_LE: u32 = 0x377f_0682;
    const MAGIC_BE: u32 = 0x377f_0683;
    const VERSION: u32 = 3_007_000;

    #[derive(Debug)]
    pub struct Wal {
        /// `None` when the 32-byte header does not check out (SQLite would ignore the file).
        pub header: Option<Header>,
        /// Frames up to the last commit frame of the valid chain: what a replay applies.
        pub committed: u32,
        /// The running checksum after each committed frame.
        pub checksums: Vec<(u32, u32)>,
        /// The database header of the newest committed frame of page 1.
        pub page_one: Option<Vec<u8>>,
        /// Database sizes (pages) that the committed transactions record, and the highest page.
        pub sizes: Vec<u32>,
        pub max_page: u32,
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Header {
        pub page_size: u32,
        pub salts: (u32, u32),
    }

    /// SQLite's checksum over 32-bit words of `data` (a multiple of 8 bytes).
    pub fn checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
        let (mut s0, mut s1) = seed;
        for pair in data.chunks_exact(8) {
            let word = |b: &[u8]| {
                let b: [u8; 4] = b.try_into().expect("4 bytes");
                if big_endian {
                    u32::from_be_bytes(b)
                } else {
                    u32::from_le_bytes(b)
                }
            };
            s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
            s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
        }
        (s0, s1)
    }

    /// `None` when there is no `-wal` or it is empty.
    pub fn read(path: &Path) -> std::io::Result<Option<Wal>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(None);
        }
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut wal = Wal {
            header: None,
            committed: 0,
            checksums: Vec::new(),
            page_one: None,
            sizes: Vec::new(),
            max_page: 0,
        };
        let mut head = [0u8; 32];
        if reader.read_exact(&mut head).is_err() {
            return Ok(Some(wal));
        }
        let magic = be32(&head, 0);
        let big_endian = magic == MAGIC_BE;
        let page_size = be32(&head, 8);
        let sum = checksum(big_endian, &head[..24], (0, 0));
        if (magic != MAGIC_LE && magic != MAGIC_BE)
            || be32(&head, 4) != VERSION
            || !valid_page_size(page_size)
            || sum != (be32(&head, 24), be32(&head, 28))
        {
            return Ok(Some(wal));
        }
        let header = Header {
            page_size,
            salts: (be32(&head, 16), be32(&head, 20)),
        };
        wal.header = Some(header);
        let mut running = sum;
        let mut frame = vec![0u8; 24 + page_size as usize];
        let mut pending_page_one: Option<Vec<u8>> = None;
        let mut pending_max = 0;
        let mut chain = Vec::new();
        while reader.read_exact(&mut frame).is_ok() {
            let page = be32(&frame, 0);
            let commit_size = be32(&frame, 4);
            if page == 0 || (be32(&frame, 8), be32(&frame, 12)) != header.salts {
                break;
            }
            running = checksum(big_endian, &frame[..8], running);
            running = checksum(big_endian, &frame[24..], running);
            if running != (be32(&frame, 16), be32(&frame, 20)) {
                break;
            }
            chain.push(running);
            pending_max = pending_max.max(page);
            if page == 1 {
                pending_page_one = Some(frame[24..124].to_vec());
            }
            if commit_size > 0 {
                wal.committed = chain.len() as u32;
                wal.sizes.push(commit_size);
                wal.max_page = wal.max_page.max(pending_max);
                if let Some(p) = pending_page_one.take() {
                    wal.page_one = Some(p);
                }
            }
        }
        chain.truncate(wal.committed as usize);
        wal.checksums = chain;
        Ok(Some(wal))
    }

    impl Wal {
        /// Whether replaying this log into the database with `db` as its header (and `len`
        /// bytes) keeps it the same ledger; the reason when not.
        pub fn belongs_to(&self, db: &DbHeader, len: u64) -> std::result::Result<(), String> {
            let Some(header) = self.header else {
                return Err(
                    "it is not a valid write-ahead log: its header does not check out \
                            (SQLite would discard it)"
                        .into(),
                );
            };
            if header.page_size != db.page_size {
                return Err(format!(
                    "its pages are {} bytes, the ledger's {}",
                    header.page_size, db.page_size
                ));
            }
            if self.committed == 0 {
                return Ok(());
            }
            if let Some(head) = &self.page_one {
                let theirs = match head.get(..16) {
                    Some(magic) if magic == b"SQLite format 3\0" => parse_db_header(head)?,
                    _ => return Err("its first page is not an SQLite header".into()),
                };
                if theirs.page_size != db.page_size {
                    return Err(format!(
                        "its first page describes {}-byte pages",
                        theirs.page_size
                    ));
                }
                let ours = theirs.application_id == APPLICATION_ID
                    // A ledger written before the identity existed: the same, by its version.
                    || (theirs.application_id == 0
                        && db.application_id == 0
                        && (1..=super::super::migrations::CURRENT)
                            .contains(&i64::from(theirs.user_version)));
                if !ours {
                    return Err(format!(
                        "its first page is another database's (application_id {:#010x}, user_version {})",
                        theirs.application_id, theirs.user_version
                    ));
                }
                return Ok(());
            }
            // No committed first page: the transactions neither grew the file nor changed its
            // schema or free list, so they all record the size the file's header holds.
            let pages = db.pages.unwrap_or((len / u64::from(db.page_size)) as u32);
            if self.sizes.iter().any(|&s| s != pages) || self.max_page > pages {
                return Err(format!(
                    "its transactions describe a database of {} pages; the ledger has {pages}",
                    self.sizes
                        .iter()
                        .max()
                        .copied()
                        .unwrap_or(0)
                        .max(self.max_page)
                ));
            }
            Ok(())
        }
    }
}

/// The WAL index (`-shm`): SQLite trusts a valid one, so it must describe the ledger's log.
mod shm {
    use super::wal::Wal;
    use super::*;

    const VERSION: u32 = 3_007_000;

    #[derive(Debug)]
    pub struct Shm {
        /// `None` when its header is not valid (SQLite then rebuilds it from the log).
        header: Option<IndexHeader>,
    }

    #[derive(Debug)]
    struct IndexHeader {
        page_size: u32,
        max_frame: u32,
        frame_checksum: (u32, u32),
        salts: (u32, u32),
    }

    pub fn read(path: &Path) -> std::io::Result<Option<Shm>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = Vec::with_capacity(96);
        file.take(96).read_to_end(&mut head)?;
        if head.is_empty() {
            return Ok(None);
        }
        Ok(Some(Shm {
            header: parse(&head),
        }))
    }

    /// The index header is in the machine's byte order, twice (SQLite writes the second copy
    /// first, so two different copies are a write interrupted, not a foreign file).
    fn parse(head: &[u8]) -> Option<IndexHeader> {
        if head.len() < 96 || head[..48] != head[48..96] {
            return None;
        }
        let ne = |at: usize| u32::from_ne_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        let big_endian = cfg!(target_endian = "big");
        let sum = super::wal::checksum(big_endian, &head[..40], (0, 0));
        if ne(0) != VERSION || head[12] != 1 || sum != (ne(40), ne(44)) {
            return None;
        }
        let raw = u32::from(u16::from_ne_bytes([head[14], head[15]]));
        Some(IndexHeader {
            page_size: (raw & 0xfe00) + ((raw & 1) << 16),
            max_frame: ne(16),
            frame_checksum: (ne(24), ne(28)),
            // Copied byte for byte from the log's header, so in its (big-endian) order.
            salts: (be32(head, 32), be32(head, 36)),
        })
    }

    impl Shm {
        pub fn belongs_to(
            &self,
            db: &DbHeader,
            wal: Option<&Wal>,
        ) -> std::result::Result<(), String> {
            let Some(index) = &self.header else {
                return Ok(());
            };
            // An index of an empty log says nothing (not even a page size): SQLite rebuilds it.
            if index.max_frame == 0 {
                return Ok(());
            }
            if index.page_size != db.page_size {
                return Err(format!(
                    "it indexes {}-byte pages, the ledger has {}",
                    index.page_size, db.page_size
                ));
            }
            let matches = wal.is_some_and(|w| {
                w.header.is_some_and(|h| h.salts == index.salts)
                    && w.checksums.get(index.max_frame as usize - 1) == Some(&index.frame_checksum)
            });
            if !matches {
                return Err(format!(
                    "it indexes {} frames of a write-ahead log that is not the ledger's",
                    index.max_frame
                ));
            }
            Ok(())
        }
    }
}

/// The ledger files this process has open through SQLite, by identity, with a count of
/// handles. Closing any descriptor of a file drops every POSIX lock the process holds on it,
/// SQLite's included (SQLite only guards the descriptors it opened itself); without its shared
/// lock, another process's connection takes itself for the last one and deletes the log this
/// process is still writing. So a file's bytes are read here only while the process has no
/// SQLite handle on it: the first open checks the files, later ones in the same process rely
/// on that check.
static OPEN: std::sync::Mutex<Vec<(FileId, usize)>> = std::sync::Mutex::new(Vec::new());

type FileId = (u64, u64);

/// One handle's place in [`OPEN`]; dropping it gives the place back.
#[derive(Debug)]
pub struct OpenHandle(Option<FileId>);

impl Drop for OpenHandle {
    fn drop(&mut self) {
        let Some(id) = self.0 else { return };
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = open.iter().position(|(f, _)| *f == id) {
            open[i].1 -= 1;
            if open[i].1 == 0 {
                open.swap_remove(i);
            }
        }
    }
}

fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Runs `check` (which reads the files' bytes) when the process has no handle on the file
/// yet, then `open` (SQLite's connection). A later handle in the same process skips the check:
/// the bytes were checked when the first was opened, and reading them now would drop the
/// first one's locks. The table is locked across both, so no thread reads the files while
/// another's connection is being opened.
pub fn open_checked(
    path: &Path,
    check: impl FnOnce(&Path) -> Result<()>,
    open: impl FnOnce(&Path) -> Result<rusqlite::Connection>,
) -> Result<(rusqlite::Connection, OpenHandle)> {
    let Some(id) = file_id(path) else {
        check(path)?;
        return Ok((open(path)?, OpenHandle(None)));
    };
    let mut table = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let known = table.iter().position(|(f, _)| *f == id);
    if known.is_none() {
        check(path)?;
    }
    let conn = open(path)?;
    match known {
        Some(i) => table[i].1 += 1,
        None => table.push((id, 1)),
    }
    Ok((conn, OpenHandle(Some(id))))
}

/// Runs `check` on a file this process has no SQLite handle on (see [`OPEN`]); one it has
/// open was checked when it was opened.
pub fn check_unopened(path: &Path, check: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let table = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    match file_id(path) {
        Some(id) if table.iter().any(|(f, _)| *f == id) => Ok(()),
        _ => check(path),
    }
}

/// One name per ledger file: a small record per file identity (device and inode) in the
/// user's runtime folder holds the name the first process gave SQLite. A later process that
/// reaches the same file through another hard link uses that name while it still names the
/// file.
mod names {
    use std::path::{Path, PathBuf};

    #[cfg(unix)]
    pub fn agreed(canonical: &Path) -> Option<PathBuf> {
        use std::fs::OpenOptions;
        use std::io::{Read, Seek, SeekFrom, Write};
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};

        let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let ours = id(canonical)?;
        let dir = match dirs::runtime_dir() {
            Some(run) => run.join("codeformer-ledger").join("names"),
            // SAFETY: getuid has no preconditions and cannot fail.
            None => std::env::temp_dir()
                .join(format!("codeformer-ledger-{}", unsafe { libc::getuid() })),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        let entry = dir.join(format!("{}-{}", ours.0, ours.1));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(entry)
            .ok()?;
        // Held for the read and the write, so two processes cannot each record their own name.
        file.lock().ok()?;
        let mut recorded = Vec::new();
        file.read_to_end(&mut recorded).ok()?;
        let recorded = PathBuf::from(std::ffi::OsStr::from_bytes(&recorded));
        if !recorded.as_os_str().is_empty() && id(&recorded) == Some(ours) {
            return Some(recorded);
        }
        file.set_len(0).ok()?;
        file.seek(SeekFrom::Start(0)).ok()?;
        file.write_all(canonical.as_os_str().as_bytes()).ok()?;
        Some(canonical.to_path_buf())
    }

    #[cfg(not(unix))]
    pub fn agreed(_canonical: &Path) -> Option<PathBuf> {
        None
    }
}

/// Percent-encodes a path for an SQLite `file:` URI.
pub fn uri(path: &Path) -> String {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    let mut out = String::from("file:");
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_sqlites() {
        // A real WAL header written by SQLite checks out.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let wal = wal::read(&companion(&db, "-wal")).unwrap().unwrap();
        assert!(wal.header.is_some());
        assert!(wal.committed >= 2, "{wal:?}");
        assert!(wal.page_one.is_some());
        let shm = shm::read(&companion(&db, "-shm")).unwrap().unwrap();
        let head = std::fs::read(&db).unwrap();
        let header = parse_db_header(&head[..100]).unwrap();
        assert_eq!(shm.belongs_to(&header, Some(&wal)), Ok(()));
        drop(conn);
    }

    /// A log whose transactions change rows in place has no first page; it belongs to the
    /// file whose size it records, and to no other.
    #[test]
    fn a_log_without_a_first_page_is_told_by_the_size_it_records() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, rows: i64| {
            let db = dir.path().join(name);
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE t (x);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
                 INSERT INTO t SELECT zeroblob(500) FROM n;
                 PRAGMA wal_checkpoint(TRUNCATE);"
            ))
            .unwrap();
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            conn.execute("UPDATE t SET x = 1 WHERE rowid = 1", [])
                .unwrap();
            (db, conn)
        };
        let (small, _a) = make("small.db", 10);
        let (large, _b) = make("large.db", 100);
        let header = |db: &Path| parse_db_header(&std::fs::read(db).unwrap()[..100]).unwrap();
        let len = |db: &Path| std::fs::metadata(db).unwrap().len();
        let log = wal::read(&companion(&small, "-wal")).unwrap().unwrap();
        assert!(log.committed > 0 && log.page_one.is_none(), "{log:?}");
        assert_eq!(log.belongs_to(&header(&small), len(&small)), Ok(()));
        let err = log.belongs_to(&header(&large), len(&large)).unwrap_err();
        assert!(err.contains("describe a database of"), "{err}");
    }
}
