//! Local photos as inputs: reading one file (its hash, type and size, from its own bytes) and
//! walking a folder for the image files in it.
//!
//! An image is recognised by its first bytes, whatever its name says. A folder walk skips
//! hidden entries (a name starting with `.`) and symbolic links that lead out of the folder,
//! and counts what it skipped, so a summary can say so.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One local image file, read and hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// The path as the user gave it (argument, manifest cell, or folder argument joined with
    /// the entry's relative path).
    pub given: String,
    /// The same file, absolute, links resolved.
    pub resolved: PathBuf,
    /// The folder it was found in (the `batch DIR` argument, resolved), or the file's own
    /// folder for a single file or a manifest row.
    pub folder: PathBuf,
    /// Its path below `folder` (for folder inputs, mirrored in the output folder).
    pub relative: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The extension of its content's type: jpg, png, webp, gif or bmp.
    pub ext: &'static str,
    /// Width and height from its header.
    pub size: (u32, u32),
}

impl LocalFile {
    /// The file name without extension, as output names use it.
    pub fn stem(&self) -> String {
        self.relative
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The image type of a file's first bytes, as an extension, if it is one the gateway takes.
pub fn image_ext(head: &[u8]) -> Option<&'static str> {
    match imagesize::image_type(head).ok()? {
        imagesize::ImageType::Jpeg => Some("jpg"),
        imagesize::ImageType::Png => Some("png"),
        imagesize::ImageType::Webp => Some("webp"),
        imagesize::ImageType::Gif => Some("gif"),
        imagesize::ImageType::Bmp => Some("bmp"),
        _ => None,
    }
}

/// Reads, types, sizes and hashes one file. The error names the file and what is wrong.
/// `found` is the folder walked and the file's path below it, for a folder's entries.
pub fn read_file(
    given: &str,
    path: &Path,
    found: Option<(&Path, &Path)>,
) -> Result<LocalFile, String> {
    let name = || path.display().to_string();
    let resolved =
        std::fs::canonicalize(path).map_err(|e| format!("{}: cannot be read: {e}", name()))?;
    let meta = std::fs::metadata(&resolved).map_err(|e| format!("{}: {e}", name()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", name()));
    }
    let mut file = std::fs::File::open(&resolved)
        .map_err(|e| format!("{}: cannot be read: {e} (check its permissions)", name()))?;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: cannot be read: {e}", name()))?;
        if n == 0 {
            break;
        }
        if head.len() < 64 * 1024 {
            let take = n.min(64 * 1024 - head.len());
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let ext = image_ext(&head).ok_or_else(|| {
        format!(
            "{}: not a JPEG, PNG, WebP, GIF or BMP image (judged by its first bytes)",
            name()
        )
    })?;
    let size = imagesize::size(&resolved)
        .map_err(|e| format!("{}: its image header cannot be read: {e}", name()))?;
    let (folder, relative) = match found {
        Some((root, relative)) => (root.to_path_buf(), relative.to_path_buf()),
        None => (
            resolved.parent().map(Path::to_path_buf).unwrap_or_default(),
            PathBuf::from(resolved.file_name().unwrap_or_default()),
        ),
    };
    Ok(LocalFile {
        given: given.to_string(),
        resolved,
        folder,
        relative,
        bytes,
        sha256: crate::digest::hex(&hasher.finalize()),
        ext,
        size: (size.width as u32, size.height as u32),
    })
}

/// What a folder walk found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The folder, resolved.
    pub root: PathBuf,
    /// Image files, as (path as given, path, path below the folder), in name order.
    pub files: Vec<(String, PathBuf, PathBuf)>,
    pub hidden: usize,
    pub links_out: usize,
    pub not_images: usize,
}

impl Scan {
    /// "3 hidden, 1 link out of the folder, 2 not images skipped", or empty.
    pub fn skipped(&self) -> String {
        let mut parts = Vec::new();
        if self.hidden > 0 {
            parts.push(format!("{} hidden", self.hidden));
        }
        if self.links_out > 0 {
            parts.push(format!("{} link(s) out of the folder", self.links_out));
        }
        if self.not_images > 0 {
            parts.push(format!("{} not image(s)", self.not_images));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("{} skipped", parts.join(", "))
        }
    }
}

/// The deepest folder walked, so a link loop inside the folder cannot run away.
const MAX_DEPTH: usize = 64;

/// Walks `dir` recursively for image files (by content).
pub fn scan_folder(dir: &Path) -> Result<Scan, String> {
    let root = std::fs::canonicalize(dir)
        .map_err(|e| format!("{}: cannot be read: {e}", dir.display()))?;
    let mut scan = Scan {
        root: root.clone(),
        ..Scan::default()
    };
    walk(dir, Path::new(""), &root, &root, 0, &mut scan)?;
    scan.files.sort();
    Ok(scan)
}

fn walk(
    given: &Path,
    below: &Path,
    real: &Path,
    root: &Path,
    depth: usize,
    scan: &mut Scan,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(real).map_err(|e| format!("{}: cannot be read: {e}", given.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", given.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            scan.hidden += 1;
            continue;
        }
        let shown = given.join(&name);
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", shown.display()))?;
        let target = if file_type.is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(t) if t.starts_with(root) => t,
                _ => {
                    scan.links_out += 1;
                    continue;
                }
            }
        } else {
            path.clone()
        };
        let meta = std::fs::metadata(&target).map_err(|e| format!("{}: {e}", shown.display()))?;
        if meta.is_dir() {
            walk(&shown, &below.join(&name), &target, root, depth + 1, scan)?;
        } else if meta.is_file() {
            let mut head = [0u8; 32];
            let n = std::fs::File::open(&target)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|e| format!("{}: cannot be read: {e}", shown.display()))?;
            if image_ext(&head[..n]).is_some() {
                scan.files
                    .push((shown.display().to_string(), path, below.join(&name)));
            } else {
                scan.not_images += 1;
            }
        }
    }
    Ok(())
}
