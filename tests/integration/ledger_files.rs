//! Foreign, newer, corrupt and tampered ledgers: clear errors, nothing modified, and `verify`
//! names what is wrong.

use crate::common::*;

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
