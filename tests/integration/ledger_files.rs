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
