//! Small things a user trips on: formats that are offered work, a number is a budget, prices
//! can be superseded and removed on the record, the demo's hints run, the repository is tidy.

use crate::common::{text, v1_ledger, World, BIN};
use std::path::Path;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The cost `estimate` gives for 1000x1000 at upscale 1 (1 MP): the rate in force.
fn rate_in_force(w: &World) -> String {
    let out = w.cli(&[
        "estimate",
        "--size",
        "1000x1000",
        "--upscale",
        "1",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value["cost"].as_str().unwrap().to_string()
}

#[test]
fn a_price_is_superseded_by_one_of_the_same_date_and_removed_on_the_record() {
    let w = World::new();
    let out = w.cli(&["prices", "set", "0.003", "--from", "2020-01-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["prices", "set", "0.004", "--from", "2020-01-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("price 3: 0.004 USD per megapixel from 2020-01-01T00:00:00.000Z; supersedes price 2 (same date)"),
        "{}",
        text(&out)
    );
    assert_eq!(rate_in_force(&w), "0.004");
    let list = stdout(&w.cli(&["prices", "list"]));
    assert!(list.contains("[superseded by 3]"), "{list}");
    assert!(
        list.lines().any(|l| l.starts_with("*   3 ")),
        "3 is in force: {list}"
    );

    let out = w.cli(&["prices", "remove", "3", "--reason", "typo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("price 3 removed; in force now: 0.003 USD per megapixel"),
        "{}",
        text(&out)
    );
    assert_eq!(rate_in_force(&w), "0.003");
    let list = stdout(&w.cli(&["prices", "list"]));
    assert!(list.contains("[removed "), "{list}");
    assert!(list.contains(": typo]"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("*   2 ")), "{list}");

    // Nothing was edited: every price row is still there, and each change is an event.
    assert_eq!(w.count("SELECT count(*) FROM prices"), 3);
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'price' AND detail LIKE 'price 3 (0.004 USD per megapixel%removed: typo'"),
        1
    );

    // Refusals change nothing and exit 2.
    for (args, says) in [
        (vec!["prices", "remove", "3"], "already removed"),
        (vec!["prices", "remove", "99"], "no such price"),
    ] {
        let out = w.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(stderr(&out).contains(says), "{}", text(&out));
    }
    let out = w.cli(&["prices", "remove", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["prices", "remove", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("the only price left"),
        "{}",
        text(&out)
    );
    assert_eq!(w.count("SELECT count(*) FROM price_removals"), 2);
}

#[test]
fn prices_set_takes_a_dollar_sign_as_usd_and_explains_one_the_shell_ate() {
    let w = World::new();
    let out = w.cli(&["prices", "set", "$0.0025"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("0.0025 USD per megapixel"),
        "{}",
        text(&out)
    );
    // Unquoted in a shell, `$0.002` arrives as the shell's name followed by `.002`.
    for eaten in ["bash.002", "/bin/bash.002"] {
        let out = w.cli(&["prices", "set", eaten]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            stderr(&out).contains("the shell replaced `$0`"),
            "{}",
            text(&out)
        );
        assert!(stderr(&out).contains("'$0.002'"), "{}", text(&out));
    }
    assert_eq!(w.count("SELECT count(*) FROM prices"), 2);
}

fn schema_of(path: &Path) -> Vec<(String, String, Option<String>)> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut stmt = db
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| {
        let sql: Option<String> = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, sql.map(|s| normalized_sql(&s))))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A table's SQL without its comments and with white space folded, so that a migration's text
/// and schema.sql's commented one compare equal exactly when they define the same thing.
fn normalized_sql(sql: &str) -> String {
    let text: Vec<&str> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect();
    text.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("( ", "(")
        .replace(" )", ")")
}

#[test]
fn a_version_1_ledger_migrates_to_the_schema_of_a_new_one() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    v1_ledger(&old,
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
         VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 'the published rate');",
    );
    let out = w.cli(&["--ledger", old.to_str().unwrap(), "prices", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["prices", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(schema_of(&old), schema_of(&w.ledger()));
    let version = |p: &Path| -> i64 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        version(&old),
        codeformer_ledger::ledger::migrations::CURRENT
    );
    assert_eq!(
        version(&w.ledger()),
        codeformer_ledger::ledger::migrations::CURRENT
    );
    let identity = |p: &Path| -> u32 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(identity(&old), codeformer_ledger::ledger::APPLICATION_ID);
    assert_eq!(
        identity(&w.ledger()),
        codeformer_ledger::ledger::APPLICATION_ID
    );
}

/// The commands that only read (`report`, `show`, `jobs`, `verify`) on a ledger an older
/// version wrote: it is migrated first, so their queries find the tables and columns they name.
#[test]
fn reading_commands_migrate_an_old_ledger_before_reading_it() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    v1_ledger(
        &old,
        "INSERT INTO batches (name, created_at) VALUES ('old', '2026-01-01T00:00:00.000Z');
         INSERT INTO jobs (id, key, batch, image_url, fidelity, upscale, background_enhance,
                           face_upsample, input_width, input_height, state, created_at, updated_at)
         VALUES (1, 'k1', 'old', 'https://example.com/a.png', '0.5', 2, 1, 1, 1000, 500,
                 'planned', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO attempts (job_id, attempt, state, price_per_mp, estimated_cost)
         VALUES (1, 1, 'planned', '0.0021', '0.0042');
         INSERT INTO events (job_id, attempt, at, kind, detail)
         VALUES (1, 1, '2026-01-01T00:00:00.000Z', 'planned', 'recorded in an old version');",
    );
    let ledger = old.to_str().unwrap();
    for args in [
        &["report", "--by", "batch", "--format", "json"][..],
        &["show", "1"],
        &["jobs", "--batch", "old"],
        &["verify"],
    ] {
        let out = w.cli(&[&["--ledger", ledger][..], args].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    let out = w.cli(&["--ledger", ledger, "show", "1"]);
    assert!(
        text(&out).contains("recorded in an old version"),
        "{}",
        text(&out)
    );
    let out = w.cli(&[
        "--ledger", ledger, "report", "--by", "batch", "--format", "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("\"old\""), "{report}");
    let version: i64 = rusqlite::Connection::open(&old)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, codeformer_ledger::ledger::migrations::CURRENT);
}

/// An old ledger that cannot be migrated (here its disk is full) is not read half-migrated:
/// the reading command stops with exit 1 naming the ledger, its version and why, and the file
/// is still the old version, whole.
#[test]
fn a_reading_command_names_an_old_ledger_it_cannot_migrate_and_leaves_it_as_it_was() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    v1_ledger(
        &old,
        "INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample,
                           state, created_at, updated_at)
         VALUES (1, 'k1', 'https://example.com/a.png', '0.5', 2, 1, 1, 'planned',
                 '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');",
    );
    let pages: i64 = rusqlite::Connection::open(&old)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let cap = pages.to_string();
    let out = w.cli_env(
        &["--ledger", old.to_str().unwrap(), "report"],
        &[("CODEFORMER_LEDGER_MAX_PAGES", cap.as_str())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    for part in [old.to_str().unwrap(), "version 1", "could not be migrated"] {
        assert!(said.contains(part), "{part}: {said}");
    }
    let db = rusqlite::Connection::open(&old).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let jobs: i64 = db
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 1);
}

/// The times of `jobs` and `attempts` an older version wrote as text become unix milliseconds
/// when the ledger is migrated, exactly; a time written later is a number too; the readable
/// views, `jobs --format json` and `report --since` read them back as the same instants, and
/// text that was not a time is kept as it was.
#[test]
fn old_text_times_become_milliseconds_and_read_back_as_the_same_instants() {
    let w = World::new();
    let url = w.png("t.png", 100, 100);
    v1_ledger(
        &w.ledger(),
        &format!(
            "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
         VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 'the published rate');
         INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample,
                           input_width, input_height, size_source, state, request_id, created_at, updated_at)
         VALUES (1, 'old', 'https://x.test/a.png', '0.5', 2, 1, 1, 100, 100, 'given', 'completed', 'r-old',
                 '2025-12-31T23:59:59.250Z', 'the day before'),
                (2, 'new', '{url}', '0.5', 2, 1, 1, 100, 100, 'given', 'planned', NULL,
                 '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO attempts (job_id, attempt, request_id, state, price_per_mp, estimated_cost, actual_cost,
                               output_width, output_height, submitted_at, finished_at)
         VALUES (1, 1, 'r-old', 'completed', '0.0021', '0.000084', '0.000084', 200, 200,
                 '2026-01-01T00:00:00.999Z', '2026-01-01T00:00:01.000Z'),
                (2, 1, NULL, 'planned', '0.0021', '0.000084', NULL, NULL, NULL, NULL, NULL);"
        ),
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("migrating the ledger") && said.contains("from schema version 1 to"),
        "{said}"
    );
    let out = w.cli(&["jobs"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("migrating"),
        "{}",
        text(&out)
    );
    let db = w.db();
    let ms = |stamp: &str| codeformer_ledger::clock::stamp_millis(stamp).unwrap();
    let row: (i64, String, i64, i64) = db
        .query_row(
            "SELECT j.created_at, j.updated_at, a.submitted_at, a.finished_at
             FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE j.id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        row,
        (
            ms("2025-12-31T23:59:59.250Z"),
            "the day before".to_string(),
            ms("2026-01-01T00:00:00.999Z"),
            ms("2026-01-01T00:00:01.000Z")
        )
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM jobs WHERE id = 2 AND typeof(created_at) = 'integer'
             AND typeof(updated_at) = 'integer' AND updated_at > created_at"
        ),
        1
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM attempts WHERE job_id = 2 AND state = 'completed'
             AND typeof(submitted_at) = 'integer' AND typeof(finished_at) = 'integer'"
        ),
        1
    );
    let readable: (String, String, String) = db
        .query_row(
            "SELECT j.created_at, j.updated_at, a.submitted_at
             FROM jobs_readable j JOIN attempts_readable a ON a.job_id = j.id WHERE j.id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        readable,
        (
            "2025-12-31T23:59:59.250Z".to_string(),
            "the day before".to_string(),
            "2026-01-01T00:00:00.999Z".to_string()
        )
    );
    let out = w.cli(&["jobs", "--format", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &jobs.as_array().unwrap()[0];
    assert_eq!(first["created_at"], "2025-12-31T23:59:59.250Z", "{first}");
    assert_eq!(first["submitted_at"], "2026-01-01T00:00:00.999Z", "{first}");
    let new_updated: String = db
        .query_row(
            "SELECT updated_at FROM jobs_readable WHERE id = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        jobs.as_array().unwrap()[1]["updated_at"],
        new_updated.as_str()
    );
    // Job 1 was placed on 2026-01-01 by its submission, not on the last day of 2025.
    let out = w.cli(&[
        "report",
        "--since",
        "2026-01-01",
        "--until",
        "2026-01-02",
        "--by",
        "day",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("\"2026-01-01\""), "{report}");
    assert_eq!(report["total"]["jobs"], 1, "{report}");
}

/// A batch that an older version left half done: `run` with this version migrates the ledger,
/// sends the planned job (its events stored against the migrated rows), downloads and charges
/// it exactly, and leaves the job that was already completed as it was.
#[test]
fn a_run_finishes_a_batch_an_older_version_left_half_done() {
    let w = World::new();
    let url = w.png("old.png", 200, 100);
    let earlier = w.dir.path().join("done-1.png");
    std::fs::write(&earlier, "x").unwrap();
    v1_ledger(&w.ledger(), &format!(
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at, note)
         VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 'the published rate');
         INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample,
                           input_width, input_height, size_source, state, attempt, request_id,
                           remote_status, created_at, updated_at)
         VALUES (1, 'done', 'https://x.test/done.png', '0.5', 2, 1, 1, 100, 100, 'given',
                 'completed', 1, 'r-old', 'COMPLETED', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:05.000Z'),
                (2, 'todo', '{url}', '0.7', 2, 1, 1, 200, 100, 'given',
                 'planned', 1, NULL, NULL, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO attempts (job_id, attempt, request_id, state, price_per_mp, estimated_cost,
                               actual_cost, output_width, output_height, submitted_at, finished_at)
         VALUES (1, 1, 'r-old', 'completed', '0.0021', '0.000084', '0.000084', 200, 200,
                 '2026-01-01T00:00:01.000Z', '2026-01-01T00:00:05.000Z'),
                (2, 1, NULL, 'planned', '0.0021', '0.000168', NULL, NULL, NULL, NULL, NULL);
         INSERT INTO outputs (job_id, attempt, idx, url, path, bytes, sha256, width, height)
         VALUES (1, 1, 0, 'https://x.test/out/done.png', '{earlier}', 1,
                 '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881', 200, 200);
         INSERT INTO events (job_id, attempt, at, kind, detail)
         VALUES (1, 1, '2026-01-01T00:00:05.000Z', 'charge', '0.000084 USD for 200x200 output at 0.0021 USD/MP'),
                (2, 1, '2026-01-01T00:00:00.000Z', 'planned', 'recorded by an older version');",
        earlier = earlier.display()
    ));
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed' AND post IS NULL"),
        2
    );
    let cost = |job: i64| -> String {
        w.db()
            .query_row(
                "SELECT actual_cost FROM attempts WHERE job_id = ?1",
                [job],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(cost(1), "0.000084");
    assert_eq!(cost(2), "0.000168");
    assert_eq!(w.count("SELECT count(*) FROM outputs WHERE job_id = 2"), 1);
    assert_eq!(
        w.count("SELECT count(*) FROM outputs WHERE job_id = 1 AND bytes = 1"),
        1
    );
    let out = w.cli(&["show", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for said in ["recorded by an older version", "submit_intent", "0.000168"] {
        assert!(text(&out).contains(said), "{said}: {}", text(&out));
    }
    let out = w.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["report", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["charged"], "0.000252", "{report}");
}

#[test]
fn estimate_csv_works_and_show_offers_no_csv() {
    let w = World::new();
    let out = w.cli(&[
        "estimate",
        "--size",
        "1000x500",
        "--upscale",
        "2",
        "--format",
        "csv",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "input_width,input_height,size_source,upscale,output_width,output_height,megapixels,price_per_mp,cost,currency\n\
         1000,500,given,2,2000,1000,2,0.0021,0.0042,USD\n"
    );
    let url = w.png("a.png", 10, 10);
    let out = w.cli(&["submit", &url, "--no-send"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["show", "1", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).contains("[possible values: table, json]"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_budget_written_as_a_number_in_the_config_file_is_exact() {
    let w = World::new();
    let config = w.dir.path().join("config.toml");
    for (written, shown) in [
        ("5", "5"),
        ("0.3", "0.3"),
        ("\"0.3\"", "0.3"),
        ("1_000", "1000"),
    ] {
        std::fs::write(&config, format!("budget = {written}\n")).unwrap();
        let out = w.cli(&["--config", config.to_str().unwrap(), "config", "show"]);
        assert_eq!(out.status.code(), Some(0), "{written}: {}", text(&out));
        let line = stdout(&out)
            .lines()
            .find(|l| l.starts_with("budget "))
            .unwrap()
            .to_string();
        assert!(
            line.starts_with(&format!("budget         {shown} ")),
            "{written}: {line}"
        );
    }
    for bad in ["true", "1e-3", "-2"] {
        std::fs::write(&config, format!("budget = {bad}\n")).unwrap();
        let out = w.cli(&["--config", config.to_str().unwrap(), "config", "show"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(stderr(&out).contains("budget"), "{bad}: {}", text(&out));
        assert!(
            !stderr(&out).contains("budget: budget"),
            "{bad}: {}",
            text(&out)
        );
    }

    // The number caps a run: a 4 MP job (0.0084 USD) does not fit under 0.001.
    std::fs::write(&config, "budget = 0.001\n").unwrap();
    let url = w.png("a.png", 10, 10);
    let out = w.cli(&["submit", &url, "--no-send", "--size", "1000x1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&[
        "--config",
        config.to_str().unwrap(),
        "run",
        "--quiet",
        "--out-dir",
        "out",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(w.count("SELECT count(*) FROM jobs WHERE state = 'held'"), 1);
    assert_eq!(w.sandbox.stats().submissions, 0);
    // The reason speaks of what was spent, not of a "committed" amount.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE reason LIKE 'budget: 0 USD spent (charged + in flight) + 0.0084 USD for this job would exceed the 0.001 USD cap'"),
        1
    );
}

#[test]
fn the_demo_hints_name_the_binary_that_ran_and_work() {
    let w = World::new();
    let out = w.cli(&["demo", "--dir", "demo-here"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let bin = Path::new(BIN).canonicalize().unwrap();
    let printed = stdout(&out);
    // The photos went through the sandbox's bucket once; the second pass uploaded nothing.
    assert!(printed.contains("\nuploaded 5 objects ("), "{printed}");
    assert!(printed.contains("sent 5, polled"), "{printed}");
    assert!(
        printed.contains("\nre-run uploaded 0 objects (0 bytes) to s3://demo-photos/in; the bucket holds 5 objects"),
        "{printed}"
    );
    let hints: Vec<&str> = printed
        .lines()
        .skip_while(|l| !l.starts_with("explore the ledger:"))
        .skip(1)
        .filter(|l| l.starts_with("  "))
        .collect();
    assert_eq!(hints.len(), 3, "{printed}");
    for hint in hints {
        let words: Vec<&str> = hint.split_whitespace().collect();
        assert_eq!(Path::new(words[0]), bin, "{hint}");
        let out = std::process::Command::new(words[0])
            .args(&words[1..])
            .current_dir(w.dir.path())
            .env_remove("CODEFORMER_LEDGER")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{hint}: {}", text(&out));
    }
}

#[test]
fn the_repository_ignores_demo_folders_and_the_readme_has_one_performance_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "/codeformer-demo/"),
        "{ignore}"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert_eq!(
        readme
            .lines()
            .filter(|l| l.trim() == "## Performance")
            .count(),
        1
    );
    assert!(readme.contains("C compiler"));
}
