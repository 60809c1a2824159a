//! URL paths of the static folder: percent-decoding and -encoding, and the file under the root
//! that a request names, never outside it (`..`, a backslash, NUL or a symbolic link leaving
//! the root are refused). A leaf shared by the file server and the job simulation, which
//! reads its own static inputs without a request.

use std::path::{Path, PathBuf};

/// The file under `root` that `raw` (percent-encoded, relative) names, and its clean relative
/// path; `None` if it is not a file inside `root`.
pub fn resolve_static(root: &Path, raw: &str) -> Option<(PathBuf, String)> {
    let relative = decode_path(raw)?;
    if relative.contains(['\\', '\0']) {
        return None;
    }
    let mut parts = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let path = parts
        .iter()
        .fold(root.clone(), |p, part| p.join(part))
        .canonicalize()
        .ok()?;
    (path.starts_with(&root) && path.is_file()).then(|| (path, parts.join("/")))
}

/// Percent-decodes a URL path; `None` if it is not valid UTF-8 afterwards.
pub fn decode_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes what is not safe in a URL path (keeps `/`).
pub fn encode_path(relative: &str) -> String {
    let mut out = String::with_capacity(relative.len());
    for byte in relative.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a b.png"), b"x").unwrap();
        let (_, rel) = resolve_static(dir.path(), "sub/a%20b.png").unwrap();
        assert_eq!(rel, "sub/a b.png");
        assert!(resolve_static(dir.path(), "./sub//a b.png").is_some());
        assert!(resolve_static(dir.path(), "../etc/passwd").is_none());
        assert!(resolve_static(dir.path(), "sub/%2e%2e/%2e%2e/etc/passwd").is_none());
        assert!(resolve_static(dir.path(), "sub").is_none());
        assert!(resolve_static(dir.path(), "%ff").is_none());
        assert!(resolve_static(dir.path(), "sub\\a b.png").is_none());
        assert_eq!(encode_path("sub/a b%.png"), "sub/a%20b%25.png");
        assert_eq!(decode_path("%"), Some("%".into()));
        assert_eq!(decode_path("a%2"), Some("a%2".into()));
    }
}
