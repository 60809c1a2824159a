//! Making a written file survive a power cut: its data and its name in the folder are
//! flushed to the disk, so what the ledger records next is already there after a restart.

use std::path::Path;

/// fsyncs the folder `dir`, which holds the renames that named its files (their data is
/// synced on their own handles before the rename).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
