//! Making a written file survive a power cut: its data and its name in the folder are
//! flushed to the disk, so what the ledger records next is already there after a restart.

use std::path::Path;

/// fsyncs the file at `path`, then its folder (which holds the rename that named it).
pub fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
