//! Bad input exits 2 and changes nothing: every input is checked before the first write.

use crate::common::{text, World};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The ledger's bytes (with its WAL, if any), or `None` when there is no ledger.
fn fingerprint(ledger: &Path) -> Option<String> {
    let main = std::fs::read(ledger).ok()?;
    let mut wal_path = ledger.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal = std::fs::read(wal_path).unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(&main)
        .chain_update(&wal)
        .finalize();
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `args`, expects exit 2 with `says` in the message, and the ledger as it was.
fn refused(w: &World, args: &[&str], says: &str) {
    let before = fingerprint(&w.ledger());
    let out = w.cli(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(says),
        "{args:?}: expected `{says}`\n{}",
        text(&out)
    );
    assert_eq!(
        fingerprint(&w.ledger()),
        before,
        "{args:?} changed the ledger"
    );
}

/// Bad hook files of every kind, and an unusable output folder.
fn bad_inputs(w: &World) -> Vec<(Vec<String>, &'static str)> {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("a-folder.lua")).unwrap();
    std::fs::write(
        dir.join("bytecode.lua"),
        b"\x1bLuaT\x00\x19\x93\r\n\x1a\n\x04\x08\x08",
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.lua"),
        "function on_complete(job)\n  return (\nend\n",
    )
    .unwrap();
    std::fs::write(dir.join("a-file"), "not a folder").unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let with = |flag: &str, value: String| vec![flag.to_string(), value];
    vec![
        (with("--hook", path("nope.lua")), "nope.lua"),
        (with("--hook", path("a-folder.lua")), "is not a file"),
        (with("--hook", path("bytecode.lua")), "bytecode.lua"),
        (with("--hook", path("broken.lua")), "broken.lua"),
        (with("--out-dir", path("a-file/out")), "cannot be used"),
    ]
}

/// Regression: `batch m.txt --hook nope.lua` exited 2 after recording the rows.
#[test]
fn bad_hooks_or_output_folders_exit_2_and_leave_no_ledger_or_an_unchanged_one() {
    let w = World::new();
    let url = w.png("a.png", 64, 64);
    let m = w.manifest("m.txt", std::slice::from_ref(&url));
    let m = m.to_str().unwrap();
    for (flags, says) in bad_inputs(&w) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        // No ledger yet: none is created.
        let mut args = vec!["batch", m, "--quiet"];
        args.extend(&flags);
        refused(&w, &args, says);
        assert!(!w.ledger().exists(), "{args:?} created a ledger");
        let mut args = vec!["run", "--quiet"];
        args.extend(&flags);
        refused(&w, &args, says);
        assert!(!w.ledger().exists(), "{args:?} created a ledger");
    }
    // With a ledger: it is left byte for byte.
    let out = w.cli(&["submit", &url, "--no-send", "--batch", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (flags, says) in bad_inputs(&w) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        for command in [
            &["batch", m, "--quiet"][..],
            &["run", "--quiet"],
            &["run", "--quiet", "--batch", "m"],
        ] {
            let mut args = command.to_vec();
            args.extend(&flags);
            refused(&w, &args, says);
        }
    }
    let blocked = w.dir.path().join("a-file/out");
    refused(
        &w,
        &[
            "submit",
            &url,
            "--wait",
            "--out-dir",
            blocked.to_str().unwrap(),
        ],
        "cannot be used",
    );
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 1);
    assert_eq!(
        w.count("SELECT count(*) FROM batches WHERE hooks != '[]' OR out_dir IS NOT NULL"),
        0
    );
}

/// Regression: a row whose key belonged to a job with other parameters was dropped as
/// "already in the ledger".
#[test]
fn a_key_of_a_job_with_other_parameters_is_refused_naming_the_line_and_the_job() {
    let w = World::new();
    let a = w.png("a.png", 64, 64);
    let b = w.png("b.png", 64, 64);
    let out = w.cli(&["submit", &a, "--no-send", "--key", "k1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let csv = w.dir.path().join("m.csv");
    std::fs::write(&csv, format!("image,key\n{a},k9\n{b},k1\n")).unwrap();
    let csv = csv.to_str().unwrap();
    refused(
        &w,
        &["batch", csv, "--enqueue-only"],
        "m.csv:3: key: `k1` already names job 1",
    );
    // The same key and parameters is the same job: not a conflict.
    std::fs::write(
        w.dir.path().join("same.csv"),
        format!("image,key\n{a},k1\n"),
    )
    .unwrap();
    let same = w.dir.path().join("same.csv");
    let out = w.cli(&["batch", same.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Other parameters under the same key: refused too.
    refused(
        &w,
        &[
            "batch",
            same.to_str().unwrap(),
            "--enqueue-only",
            "--upscale",
            "4",
        ],
        "`k1` already names job 1",
    );
    refused(
        &w,
        &["submit", &b, "--no-send", "--key", "k1"],
        "the key `k1` already names job 1",
    );
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 1);
}

#[test]
fn repeated_fields_tag_names_with_equals_long_urls_and_local_paths_are_refused() {
    let w = World::new();
    let a = w.png("a.png", 64, 64);
    let out = w.cli(&["submit", &a, "--no-send"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let write = |name: &str, body: String| {
        let path = w.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_string_lossy().into_owned()
    };
    let twice = write(
        "twice.jsonl",
        format!("{{\"image\": \"{a}\", \"upscale\": 2, \"upscale\": 4}}\n"),
    );
    refused(
        &w,
        &["batch", &twice, "--enqueue-only"],
        "twice.jsonl:1: upscale: this field appears twice",
    );
    let eq = write(
        "eq.jsonl",
        format!("{{\"image\": \"{a}\", \"tags\": {{\"a=b\": \"c\"}}}}\n"),
    );
    refused(
        &w,
        &["batch", &eq, "--enqueue-only"],
        "eq.jsonl:1: tags: the tag name `a=b` contains `=`",
    );
    let long_url = format!("{a}?{}", "x".repeat(8192));
    let long = write("long.txt", format!("{long_url}\n"));
    refused(
        &w,
        &["batch", &long, "--enqueue-only"],
        "long.txt:1: image: the URL is",
    );
    refused(
        &w,
        &["submit", &long_url, "--no-send"],
        "the longest accepted is 8192 bytes",
    );
    let local = write("local.txt", "photos/face1.jpg\n".into());
    refused(
        &w,
        &["batch", &local, "--enqueue-only"],
        "local.txt:1: image: `photos/face1.jpg` is a local file path, not a URL",
    );
    refused(
        &w,
        &["submit", "photos/face1.jpg", "--no-send"],
        "needs --upload s3://BUCKET/PREFIX",
    );
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 1);
}
