//! The bundled examples run as the README says: every manifest in `examples/manifests/` names
//! images of `examples/images/` at the README's sandbox address, and completes against a
//! `sandbox` command serving that folder (on a free port: the manifests' URLs are pointed at
//! it, the files stay as documented). `sort_by_tag.lua` moves outputs and the
//! ledger follows them.

use crate::common::*;
use std::path::{Path, PathBuf};

/// Where the manifests say the sandbox is (`sandbox --addr 127.0.0.1:8787 --static-dir examples/images`).
const README_STATIC: &str = "http://127.0.0.1:8787/static/";

fn examples(under: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(under)
}

/// A world whose sandbox serves a copy of `examples/images`.
fn world() -> World {
    let w = World::new();
    for entry in std::fs::read_dir(examples("images")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        std::fs::copy(&path, w.dir.path().join("static").join(name)).unwrap();
    }
    w
}

/// `codeformer-ledger sandbox --static-dir examples/images` on a free loopback port, with
/// quick job timings.
struct SandboxCommand {
    child: std::process::Child,
    base_url: String,
    static_url: String,
}

impl SandboxCommand {
    fn start() -> SandboxCommand {
        use std::io::BufRead;
        let images = examples("images");
        let mut child = std::process::Command::new(BIN)
            .args(["sandbox", "--addr", "127.0.0.1:0", "--static-dir"])
            .arg(&images)
            .args(["--queue-ms", "10", "--processing-ms", "20-40"])
            .env_remove("PIXAZO_SANDBOX_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut value = |name: &str| {
            let line = lines.next().unwrap().unwrap();
            line.strip_prefix(name)
                .unwrap_or_else(|| panic!("expected {name}..., got {line}"))
                .to_string()
        };
        let base_url = value("PIXAZO_BASE_URL=");
        let static_url = value("SANDBOX_STATIC_URL=");
        SandboxCommand {
            child,
            base_url,
            static_url,
        }
    }
}

impl Drop for SandboxCommand {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The image file names a manifest's text points at (after the README's address).
fn images_named(text: &str) -> Vec<String> {
    text.match_indices(README_STATIC)
        .map(|(at, _)| {
            text[at + README_STATIC.len()..]
                .split(['"', ',', '\n', ' '])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The manifest with its URLs pointed at this world's sandbox, written beside the ledger.
fn pointed_at(w: &World, manifest: &Path) -> PathBuf {
    let text = std::fs::read_to_string(manifest).unwrap();
    let target = w.dir.path().join(manifest.file_name().unwrap());
    std::fs::write(
        &target,
        text.replace(README_STATIC, &w.sandbox.static_url("")),
    )
    .unwrap();
    target
}

fn batch(w: &World, manifest: &Path, extra: &[&str]) -> std::process::Output {
    let out = w.out_dir();
    let mut args = vec![
        "batch",
        manifest.to_str().unwrap(),
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    w.cli(&args)
}

#[test]
fn every_example_manifest_names_bundled_images_and_completes() {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(examples("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 3, "{manifests:?}");
    for manifest in manifests {
        let written = std::fs::read_to_string(&manifest).unwrap();
        let images = images_named(&written);
        assert!(!images.is_empty(), "{}", manifest.display());
        for image in &images {
            // Regression: the manifests named portrait-01.png, group-photo.webp, ... which
            // were never bundled.
            assert!(
                examples("images").join(image).is_file(),
                "{} names {image}, which is not in examples/images",
                manifest.display()
            );
        }
        // The README's `sandbox --static-dir examples/images`, on a free port.
        let sandbox = SandboxCommand::start();
        let dir = tempfile::tempdir().unwrap();
        let pointed = dir.path().join(manifest.file_name().unwrap());
        std::fs::write(
            &pointed,
            written.replace(README_STATIC, &sandbox.static_url),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .current_dir(dir.path())
            .env_remove("PIXAZO_API_KEY")
            .env("CODEFORMER_LEDGER", dir.path().join("ledger.db"))
            .env("PIXAZO_BASE_URL", &sandbox.base_url)
            .args(["batch", pointed.to_str().unwrap(), "--quiet"])
            .args(["--poll-interval", "50ms", "--out-dir", "out"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            manifest.display(),
            text(&out)
        );
        let completed: i64 = rusqlite::Connection::open(dir.path().join("ledger.db"))
            .unwrap()
            .query_row(
                "SELECT count(*) FROM jobs WHERE state = 'completed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(completed, images.len() as i64, "{}", manifest.display());
        let verify = std::process::Command::new(BIN)
            .env("CODEFORMER_LEDGER", dir.path().join("ledger.db"))
            .current_dir(dir.path())
            .args(["verify", "--files"])
            .output()
            .unwrap();
        assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    }
}

#[test]
fn sort_by_tag_moves_outputs_and_the_ledger_follows_them() {
    let w = world();
    let manifest = pointed_at(&w, &examples("manifests").join("photos.csv"));
    let hook = examples("hooks").join("sort_by_tag.lua");
    let out = batch(
        &w,
        &manifest,
        &["--tag", "client=acme", "--hook", hook.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let paths: Vec<String> = {
        let db = w.db();
        let mut stmt = db
            .prepare("SELECT path FROM outputs ORDER BY job_id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(paths.len(), 4);
    for path in &paths {
        // Regression: outputs.path kept naming the place the hook had moved the file from.
        assert!(
            Path::new(path).parent().unwrap().ends_with("acme"),
            "{path}"
        );
        assert!(Path::new(path).is_file(), "{path}");
    }
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'output_moved'"),
        4
    );
    // The download events still say where each file was written: stored whole before the
    // outputs row they referred to changed.
    assert_eq!(
        w.count(
            "SELECT count(*) FROM events WHERE kind = 'download' AND output IS NULL
             AND detail LIKE '% -> %' AND instr(detail, '/acme/') = 0"
        ),
        4
    );
    let verify = w.cli(&["verify", "--files"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let show = w.cli(&["show", "1"]);
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("moved by a hook"),
        "{}",
        text(&show)
    );
}

#[test]
fn verify_without_files_notices_a_missing_output() {
    let w = world();
    let manifest = pointed_at(&w, &examples("manifests").join("photos.txt"));
    let out = batch(&w, &manifest, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let verify = w.cli(&["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let gone: String = w
        .db()
        .query_row(
            "SELECT path FROM outputs ORDER BY job_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    std::fs::remove_file(&gone).unwrap();
    let verify = w.cli(&["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let said = text(&verify);
    assert!(said.contains(&gone), "{said}");
}
