//! Foreign, newer, corrupt and tampered ledgers: clear errors, nothing modified, and `verify`
//! names what is wrong.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn completed_world() -> World {
    let w = World::new();
    let url = w.png("a.png", 12, 9);
    assert_eq!(w.cli(&["submit", &url]).status.code(), Some(0));
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w
}

#[test]
fn verify_passes_a_sound_ledger_and_names_tampering() {
    let w = completed_world();
    let out = w.cli(&["verify", "--files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sound"));

    let path: String = w
        .db()
        .query_row("SELECT path FROM outputs", [], |r| r.get(0))
        .unwrap();
    std::fs::write(&path, b"not the download").unwrap();
    w.db()
        .execute("INSERT INTO events (job_id, attempt, at, kind, detail) VALUES (1, 1, 'x', 'charge', 'again')", [])
        .unwrap();
    let out = w.cli(&["verify", "--files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("every charge is counted once: job 1 attempt 1 has 2 charge events"),
        "{stdout}"
    );
    assert!(stdout.contains("output file: job 1"), "{stdout}");
}

#[test]
fn foreign_and_newer_files_are_refused_and_left_untouched() {
    let w = World::new();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "text.db",
            b"hello, I am a text file".to_vec(),
            "not an SQLite database",
        ),
        ("empty-ish.db", vec![0u8; 10], "not an SQLite database"),
    ];
    for (name, bytes, message) in cases {
        let path = w.dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        for args in [
            &["jobs"][..],
            &["submit", "http://127.0.0.1:9/a.png", "--no-send"][..],
        ] {
            let out = w.cli_env(args, &[("CODEFORMER_LEDGER", path.to_str().unwrap())]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(message),
                "{}",
                text(&out)
            );
            assert!(std::fs::read(&path).unwrap() == bytes, "{name} untouched");
        }
    }

    // An SQLite database of another program.
    let other = w.dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE notes (x TEXT)")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    let out = w.cli_env(
        &["submit", "http://127.0.0.1:9/a.png", "--no-send"],
        &[("CODEFORMER_LEDGER", other.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other tables"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::read(&other).unwrap() == before,
        "the other program's database is untouched"
    );

    // A ledger from a newer version.
    let w = completed_world();
    w.db().pragma_update(None, "user_version", 99).unwrap();
    let out = w.cli(&["jobs"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version 99, newer"),
        "{}",
        text(&out)
    );
}

#[test]
fn regression_a_newer_ledger_left_with_its_log_is_refused_before_the_log_is_folded_in() {
    let w = completed_world();
    // A newer program stamped the ledger and was killed before any checkpoint: a copy of the
    // file and its log, taken while its connection is open.
    let newer = w.dir.path().join("newer.db");
    {
        let db = w.db();
        db.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        std::fs::copy(w.ledger(), &newer).unwrap();
        std::fs::copy(companion(&w.ledger(), "-wal"), companion(&newer, "-wal")).unwrap();
    }
    let wal = companion(&newer, "-wal");
    let before = (sha(&newer), sha(&wal));
    for args in [
        &["submit", "http://127.0.0.1:9/a.png", "--no-send"][..],
        &["jobs"],
    ] {
        let out = w.cli_env(args, &[("CODEFORMER_LEDGER", newer.to_str().unwrap())]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("version 99, newer"),
            "{}",
            text(&out)
        );
        assert_eq!(
            (sha(&newer), sha(&wal)),
            before,
            "{args:?}: the file and its log are untouched"
        );
    }
}

#[test]
fn a_truncated_ledger_is_an_error_not_a_panic() {
    let w = completed_world();
    // Fold the WAL in, then cut the file in half.
    w.db()
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .ok();
    let bytes = std::fs::read(w.ledger()).unwrap();
    std::fs::write(w.ledger(), &bytes[..bytes.len() / 2]).unwrap();
    for args in [&["jobs"][..], &["verify"][..], &["report"][..]] {
        let out = w.cli(args);
        assert!(matches!(out.status.code(), Some(1)), "{}", text(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_full_disk_mid_run_is_a_clear_error_and_loses_nothing_committed() {
    let w = World::new();
    let urls: Vec<String> = (0..40)
        .map(|i| w.png(&format!("f{i}.png"), 8 + i, 8))
        .collect();
    let manifest = w.dir.path().join("full.txt");
    std::fs::write(&manifest, urls.join("\n")).unwrap();
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pages: i64 = w
        .db()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();

    // The "disk" holds only a few more pages: the run stops with a clear error.
    let out_dir = w.out_dir();
    let args = [
        "run",
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    let cap = (pages + 4).to_string();
    let out = w.cli_env(&args, &[("CODEFORMER_LEDGER_MAX_PAGES", cap.as_str())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("disk holding the ledger is full"),
        "{}",
        text(&out)
    );
    let events_before: Vec<i64> = {
        let db = w.db();
        let mut s = db.prepare("SELECT id FROM events ORDER BY id").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    verify_sound(&w);

    // Space again: the next run finishes, every committed event is still there, and nothing
    // was sent twice except what the ledger marks uncertain.
    let out = w.cli(&args);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        text(&out)
    );
    let db = w.db();
    for id in &events_before {
        let n: i64 = db
            .query_row("SELECT count(*) FROM events WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "event {id} survived");
    }
    let done = w.count("SELECT count(*) FROM jobs WHERE state = 'completed' AND post IS NULL");
    let uncertain = w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'");
    assert_eq!(done + uncertain, 40);
    assert!(w.sandbox.stats().submissions <= 40 + uncertain as u64);
    verify_sound(&w);
}

fn verify_sound(w: &World) {
    let out = w.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

// ---- the ledger's companions: -wal and -shm ----

fn sha(path: &Path) -> String {
    codeformer_ledger::engine::hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A closed ledger holding `count` planned jobs.
fn ledger_with_jobs(count: usize) -> World {
    let w = World::new();
    let urls: Vec<String> = (0..count)
        .map(|i| format!("http://127.0.0.1:9/photo-{i}.png"))
        .collect();
    let m = w.manifest("jobs.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!companion(&w.ledger(), "-wal").exists());
    w
}

fn listed_jobs(w: &World) -> usize {
    let out = w.cli(&["jobs", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    jobs.as_array().unwrap().len()
}

/// Another program's database in WAL mode, still open (its log never checkpointed), after
/// `sql`. The connection must stay alive while its files are copied.
fn other_database(w: &World, name: &str, page_size: u32, sql: &str) -> rusqlite::Connection {
    let path = w.dir.path().join(name);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "page_size", page_size).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn.execute_batch(sql).unwrap();
    conn
}

const NOTES: &str = "CREATE TABLE notes (x TEXT);
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
    INSERT INTO notes SELECT printf('%.100c', 'x') FROM n;";

/// Every command refuses the ledger with exit 1 naming both files, and changes neither.
fn refused_untouched(w: &World, foreign: &Path, what: &str) {
    let ledger = w.ledger();
    let before = (sha(&ledger), sha(foreign));
    let absent: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|s| companion(&ledger, s))
        .filter(|p| !p.exists())
        .collect();
    for args in [
        &["submit", "http://127.0.0.1:9/new.png", "--no-send"][..],
        &["jobs"],
        &["jobs", "--format", "json"],
        &["report", "--format", "json"],
        &["verify"],
        &["run", "--quiet"],
    ] {
        let out = w.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {args:?}: {}",
            text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{} does not belong to the ledger {}",
                foreign.display(),
                ledger.display()
            )),
            "{what}: {args:?}: {}",
            text(&out)
        );
        assert!(out.stdout.is_empty(), "{what}: {args:?}: {}", text(&out));
        assert_eq!(
            (sha(&ledger), sha(foreign)),
            before,
            "{what}: {args:?}: both files unchanged"
        );
    }
    for file in absent {
        assert!(!file.exists(), "{what}: {} was created", file.display());
    }
}

#[test]
fn regression_another_databases_wal_beside_the_ledger_is_refused_and_never_replayed() {
    let cases = [
        ("a new table", 4096, NOTES.to_string()),
        ("another page size", 8192, NOTES.to_string()),
        (
            // Only an in-place change of one row: the log has no first page to tell by.
            "no first page in the log",
            4096,
            format!("{NOTES} PRAGMA wal_checkpoint(TRUNCATE); UPDATE notes SET x = 'changed' WHERE rowid = 1;"),
        ),
    ];
    for (what, page_size, sql) in cases {
        let w = ledger_with_jobs(30);
        let other = other_database(&w, "other.db", page_size, &sql);
        let wal = companion(&w.ledger(), "-wal");
        std::fs::copy(w.dir.path().join("other.db-wal"), &wal).unwrap();
        drop(other);
        refused_untouched(&w, &wal, what);
        std::fs::remove_file(&wal).unwrap();
        assert_eq!(listed_jobs(&w), 30, "{what}: the jobs are all there");
    }
}

#[test]
fn regression_another_databases_shm_beside_the_ledger_is_refused() {
    let w = ledger_with_jobs(12);
    let other = other_database(&w, "other.db", 4096, NOTES);
    let shm = companion(&w.ledger(), "-shm");
    std::fs::copy(w.dir.path().join("other.db-shm"), &shm).unwrap();
    refused_untouched(&w, &shm, "a foreign -shm alone");

    // With the other database's log too, the log is the first thing refused.
    let wal = companion(&w.ledger(), "-wal");
    std::fs::copy(w.dir.path().join("other.db-wal"), &wal).unwrap();
    drop(other);
    refused_untouched(&w, &wal, "a foreign -wal and -shm");
    std::fs::remove_file(&wal).unwrap();
    std::fs::remove_file(&shm).unwrap();
    assert_eq!(listed_jobs(&w), 12);
}

#[test]
fn a_damaged_wal_header_is_refused_and_left_as_it_was() {
    let w = ledger_with_jobs(3);
    let wal = companion(&w.ledger(), "-wal");
    std::fs::write(&wal, [0x37, 0x7f, 0x06, 0x82].repeat(300)).unwrap();
    refused_untouched(&w, &wal, "a damaged header");
}

#[test]
fn the_wal_of_a_killed_engine_is_recovered() {
    let w = World::with(codeformer_ledger::sandbox::SandboxConfig {
        render: false,
        latency_ms: 100,
        ..Default::default()
    });
    let urls: Vec<String> = (0..8)
        .map(|i| w.png(&format!("k{i}.png"), 8 + i, 8))
        .collect();
    let m = w.manifest("killed.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("engine.log");
    let mut engine = w.spawn_run(&["--concurrency", "2"], &log);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.count("SELECT count(*) FROM jobs WHERE request_id IS NOT NULL") < 2 {
        assert!(std::time::Instant::now() < end, "nothing was sent");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    engine.kill().unwrap();
    engine.wait().unwrap();
    let wal = companion(&w.ledger(), "-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the killed engine left its log"
    );
    // What it sent is in its log only: the file itself still says nothing was sent.
    let file_only = rusqlite::Connection::open_with_flags(
        format!("file:{}?immutable=1", w.ledger().display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let in_file: i64 = file_only
        .query_row(
            "SELECT count(*) FROM jobs WHERE request_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(in_file, 0);
    drop(file_only);

    let out = w.cli(&["jobs", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| !j["request_id"].is_null())
        .count();
    assert!(sent >= 2, "the log's rows are read: {jobs}");
    let out = w.run(&["--resubmit-uncertain"]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        8
    );
}

// ---- files that are not ledgers ----

#[test]
fn regression_files_that_are_not_ledgers_are_named_and_left_as_they_were() {
    let w = completed_world();
    let good = std::fs::read(w.ledger()).unwrap();
    assert!(!companion(&w.ledger(), "-wal").exists());
    let mut garbage = b"SQLite format 3\0".to_vec();
    garbage.extend(std::iter::repeat_n(0xab, 4096 - 16));
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("empty.db", Some(Vec::new()), "is empty, not a ledger"),
        ("folder.db", None, "is a directory, not a ledger"),
        (
            "cut.db",
            Some(good[..good.len() / 2].to_vec()),
            "is truncated",
        ),
        ("cut-header.db", Some(good[..60].to_vec()), "is truncated"),
        ("garbage.db", Some(garbage), "has a damaged header"),
    ];
    for (name, bytes, message) in cases {
        let path = w.dir.path().join(name);
        match &bytes {
            Some(b) => std::fs::write(&path, b).unwrap(),
            None => std::fs::create_dir(&path).unwrap(),
        }
        for args in [
            &["jobs"][..],
            &["jobs", "--format", "json"],
            &["jobs", "--format", "csv"],
            &["show", "1", "--format", "json"],
            &["report", "--format", "json"],
            &["report", "--format", "csv"],
            &["hooks", "failed", "--format", "json"],
            &["prices", "list"],
            &["verify"],
            &["submit", "http://127.0.0.1:9/a.png", "--no-send"],
            &["run", "--quiet"],
        ] {
            let out = w.cli_env(args, &[("CODEFORMER_LEDGER", path.to_str().unwrap())]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} {args:?}: {}",
                text(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("{} {message}", path.display())),
                "{name} {args:?}: {}",
                text(&out)
            );
            assert!(out.stdout.is_empty(), "{name} {args:?}: {}", text(&out));
            match &bytes {
                Some(b) => assert!(&std::fs::read(&path).unwrap() == b, "{name} unchanged"),
                None => assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0),
            }
            for suffix in ["-wal", "-shm", "-journal"] {
                assert!(
                    !companion(&path, suffix).exists(),
                    "{name}{suffix} created by {args:?}"
                );
            }
        }
    }
}

#[test]
fn regression_jobs_prints_nothing_when_the_listing_fails_halfway() {
    let w = ledger_with_jobs(3);
    {
        let db = w.db();
        db.pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        db.execute("UPDATE jobs SET state = 'bogus' WHERE id = 3", [])
            .unwrap();
    }
    for format in ["json", "csv", "table"] {
        let out = w.cli(&["jobs", "--format", format]);
        assert_eq!(out.status.code(), Some(1), "{format}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{format}: {}", text(&out));
        assert!(!out.stderr.is_empty(), "{format}: {}", text(&out));
    }
}

/// A job recorded by the binary, a process of its own: a read-write connection whose close,
/// when it finds itself the last one, folds the log into the file and deletes it.
fn submitted_by_another_process(w: &World, i: usize) {
    let url = format!("https://example.com/other-{i}.png");
    let out = w.cli(&["submit", &url, "--no-send"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Regression: opening a second handle on a ledger read the file's bytes through a plain file
/// descriptor and closed it, which drops every POSIX lock the process holds on the file,
/// SQLite's included. Another process then took itself for the last connection, folded the
/// log into the file and deleted it, while this process went on writing into the deleted
/// log: everything written after that was lost (seen with `listen`'s workers). The engine
/// lock's own descriptor of the file, closed, did the same.
#[test]
fn regression_a_second_handle_in_one_process_keeps_the_first_ones_locks() {
    use codeformer_ledger::ledger::{Ledger, NewJob};
    use codeformer_ledger::params::JobParams;
    let w = World::new();
    let job = |i: usize| NewJob::new(JobParams::new(format!("https://example.com/{i}.png")));
    let mut first = Ledger::open(&w.ledger()).unwrap();
    let second = Ledger::open(&w.ledger()).unwrap();
    submitted_by_another_process(&w, 1);
    first.enqueue(&[job(1)]).unwrap();
    submitted_by_another_process(&w, 2);
    first.enqueue(&[job(2)]).unwrap();
    assert_eq!(listed_jobs(&w), 4);
    drop(second);
    drop(first.lock_engine().unwrap());
    submitted_by_another_process(&w, 3);
    first.enqueue(&[job(3)]).unwrap();
    submitted_by_another_process(&w, 4);
    first.enqueue(&[job(4)]).unwrap();
    drop(first);
    assert_eq!(listed_jobs(&w), 8);
}
