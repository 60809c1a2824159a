//! Audits across ledgers: `report --with-ledger` over several ledgers from real sandbox runs
//! (a shared request id counted once, exact totals, while an engine writes one of them), and
//! `reconcile` of a statement made from the sandbox's own per-request charges.

use crate::common::*;
use codeformer_ledger::sandbox::SandboxConfig;
use rust_decimal::Decimal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn json_dec(v: &Value) -> Decimal {
    dec(v
        .as_str()
        .unwrap_or_else(|| panic!("an amount string: {v}")))
}

/// Runs a batch of `n` PNGs of `size` into `ledger`; returns the exit code.
fn batch_into(w: &World, ledger: &Path, name: &str, n: usize, size: (u32, u32)) -> Option<i32> {
    let urls: Vec<String> = (0..n)
        .map(|i| w.png(&format!("{name}-{i}.png"), size.0, size.1))
        .collect();
    let manifest = w.manifest(&format!("{name}.txt"), &urls);
    let out_dir = w.dir.path().join(format!("out-{name}"));
    let out = w.cli(&[
        "--ledger",
        ledger.to_str().unwrap(),
        "batch",
        manifest.to_str().unwrap(),
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    out.status.code()
}

fn cli_json(w: &World, args: &[&str]) -> (Option<i32>, Value) {
    let out = w.cli(args);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code(), doc)
}

fn report_json(w: &World, ledger: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "--ledger",
        ledger.to_str().unwrap(),
        "report",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (code, doc) = cli_json(w, &args);
    assert_eq!(code, Some(0), "{doc}");
    doc
}

fn sql(path: &Path, statement: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

fn one<T: rusqlite::types::FromSql>(path: &Path, query: &str) -> T {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn report_over_three_ledgers_counts_a_shared_request_once_and_exactly() {
    let w = World::new();
    let a = w.dir.path().join("a.db");
    let b = w.dir.path().join("b.db");
    let c = w.dir.path().join("c.db");
    assert_eq!(batch_into(&w, &a, "a", 3, (100, 100)), Some(0));
    assert_eq!(batch_into(&w, &b, "b", 2, (150, 70)), Some(0));
    assert_eq!(batch_into(&w, &c, "c", 2, (33, 77)), Some(0));
    // The same submission recorded in two ledgers (a ledger restored from another machine's
    // copy): c's first attempt carries b's first request id.
    let shared: String = one(
        &b,
        "SELECT request_id FROM attempts ORDER BY job_id LIMIT 1",
    );
    sql(
        &c,
        &format!(
            "UPDATE attempts SET request_id = '{shared}' WHERE job_id = 1;
             UPDATE jobs SET request_id = '{shared}' WHERE id = 1;"
        ),
    );
    let c_shared_charge: String = one(&c, "SELECT actual_cost FROM attempts WHERE job_id = 1");
    let single: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|l| report_json(&w, l, &[]))
        .collect();
    let total = |doc: &Value, field: &str| json_dec(&doc["total"][field]);
    let (b_label, c_label) = (b.to_str().unwrap(), c.to_str().unwrap());
    let all = report_json(
        &w,
        &a,
        &[
            "--with-ledger",
            b_label,
            "--with-ledger",
            c_label,
            "--by",
            "ledger",
        ],
    );
    // Exact: the three totals, less the attempt counted in b.
    let expected =
        single.iter().map(|d| total(d, "charged")).sum::<Decimal>() - dec(&c_shared_charge);
    assert_eq!(total(&all, "charged"), expected, "{all:#}");
    let jobs: u64 = single
        .iter()
        .map(|d| d["total"]["jobs"].as_u64().unwrap())
        .sum();
    assert_eq!(all["total"]["jobs"].as_u64(), Some(jobs - 1));
    let estimated = single
        .iter()
        .map(|d| total(d, "estimated"))
        .sum::<Decimal>();
    let c_estimate: String = one(&c, "SELECT estimated_cost FROM attempts WHERE job_id = 1");
    assert_eq!(total(&all, "estimated"), estimated - dec(&c_estimate));
    // One row per ledger, labelled by the path as given, summing to the total exactly.
    let rows = all["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["group"].as_str().unwrap()).collect();
    let mut want = vec![a.to_str().unwrap(), b_label, c_label];
    want.sort();
    assert_eq!(labels, want);
    let by_rows: Decimal = rows.iter().map(|r| json_dec(&r["charged"])).sum();
    assert_eq!(by_rows, total(&all, "charged"));
    let c_row = rows.iter().find(|r| r["group"] == c_label).unwrap();
    assert_eq!(c_row["jobs"].as_u64(), Some(1));
    assert_eq!(
        all["shared"],
        serde_json::json!([{"request_id": shared, "counted_in": b_label, "ledgers": [b_label, c_label]}])
    );
    // The table says so too, and the page has a bar per ledger.
    let out = w.cli(&[
        "--ledger",
        a.to_str().unwrap(),
        "report",
        "--with-ledger",
        b_label,
        "--with-ledger",
        c_label,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "{shared}: in {b_label}, {c_label}; counted in {b_label}"
        )),
        "{table}"
    );
    let out = w.cli(&[
        "--ledger",
        a.to_str().unwrap(),
        "report",
        "--with-ledger",
        b_label,
        "--with-ledger",
        c_label,
        "--by",
        "ledger",
        "--format",
        "html",
    ]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{page}");
    assert_eq!(page.matches("<g class=\"bar\">").count(), 3, "{page}");
    for label in [b_label, c_label] {
        assert!(page.contains(&format!("<title>{label}: charged")), "{page}");
    }
    assert!(
        page.contains("Request ids in more than one ledger"),
        "{page}"
    );
    assert!(!page.contains("<script") && !page.contains("://"), "{page}");
}

#[test]
fn report_with_ledger_reads_a_ledger_while_its_engine_runs_a_batch() {
    let w = World::with(SandboxConfig {
        processing_ms: (150, 300),
        ..SandboxConfig::default()
    });
    let a = w.dir.path().join("a.db");
    assert_eq!(batch_into(&w, &a, "a", 2, (100, 100)), Some(0));
    // The engine's ledger is the world's: enqueue 12 jobs, then run them in another process.
    let urls: Vec<String> = (0..12)
        .map(|i| w.png(&format!("e-{i}.png"), 64, 48))
        .collect();
    let manifest = w.manifest("e.txt", &urls);
    let out = w.cli(&[
        "batch",
        manifest.to_str().unwrap(),
        "--enqueue-only",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("run.log");
    let mut engine = w.spawn_run(&["--concurrency", "2"], &log);
    let engine_ledger = w.ledger();
    let label = engine_ledger.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reads_while_running = 0;
    loop {
        let running = engine.try_wait().unwrap().is_none();
        let doc = report_json(&w, &a, &["--with-ledger", label, "--by", "ledger"]);
        // Every attempt of both ledgers, whatever the engine has done so far.
        assert_eq!(doc["total"]["jobs"].as_u64(), Some(14), "{doc:#}");
        if running {
            reads_while_running += 1;
        } else {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not finish: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        engine.wait().unwrap().code(),
        Some(0),
        "{:?}",
        std::fs::read_to_string(&log)
    );
    assert!(
        reads_while_running > 0,
        "the report never ran beside the engine"
    );
    let doc = report_json(&w, &a, &["--with-ledger", label]);
    let alone = report_json(&w, &a, &[]);
    let engine_alone = report_json(&w, &engine_ledger, &[]);
    assert_eq!(
        json_dec(&doc["total"]["charged"]),
        json_dec(&alone["total"]["charged"]) + json_dec(&engine_alone["total"]["charged"])
    );
    assert_eq!(doc["shared"], Value::Null);
}

#[test]
fn a_with_ledger_that_is_not_a_ledger_is_refused_by_name_and_left_untouched() {
    let w = World::new();
    let a = w.dir.path().join("a.db");
    assert_eq!(batch_into(&w, &a, "a", 1, (100, 100)), Some(0));
    let notes = w.dir.path().join("notes.txt");
    std::fs::write(
        &notes,
        "not a ledger at all, just some text to be left alone\n",
    )
    .unwrap();
    let foreign = w.dir.path().join("foreign.db");
    sql(&foreign, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    let empty = w.dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let missing = w.dir.path().join("missing.db");
    for path in [&notes, &foreign, &empty, &missing] {
        let before = std::fs::read(path).ok();
        for cmd in [&["report"][..], &["reconcile", "none.csv"][..]] {
            let statement = w.dir.path().join("none.csv");
            std::fs::write(&statement, "request_id,amount_usd,date\n").unwrap();
            let mut args = vec!["--ledger", a.to_str().unwrap()];
            args.extend_from_slice(cmd);
            args.extend_from_slice(&["--with-ledger", path.to_str().unwrap()]);
            let out = w.cli(&args);
            assert_eq!(out.status.code(), Some(2), "{}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(path.to_str().unwrap()), "{}", text(&out));
            assert!(out.stdout.is_empty(), "{}", text(&out));
            assert_eq!(
                std::fs::read(path).ok(),
                before,
                "{} changed",
                path.display()
            );
        }
    }
    // The same ledger twice would count its unsent jobs twice.
    let out = w.cli(&[
        "--ledger",
        a.to_str().unwrap(),
        "report",
        "--with-ledger",
        a.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already in the report"),
        "{}",
        text(&out)
    );
}

/// The sandbox's own per-request charges as a statement, one line per request id, dated the
/// day the ledger sent it.
fn statement_lines(w: &World, ledger: &Path) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(ledger).unwrap();
    w.sandbox
        .stats()
        .charges_by_request
        .into_iter()
        .filter_map(|(id, usd)| {
            let day: Option<String> = db
                .query_row(
                    "SELECT substr(submitted_at, 1, 10) FROM attempts_readable WHERE request_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .ok();
            day.map(|d| (id, usd, d))
        })
        .collect()
}

fn write_statement(path: &Path, lines: &[(String, String, String)]) {
    let mut text = String::from("date,request_id,model,amount_usd\n");
    for (id, usd, day) in lines {
        text.push_str(&format!("{day},{id},codeformer-image-restoration,{usd}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn reconcile(w: &World, ledger: &Path, statement: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec![
        "--ledger",
        ledger.to_str().unwrap(),
        "reconcile",
        statement.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = w.cli(&args);
    assert!(out.stderr.is_empty(), "{}", text(&out));
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn reconcile_finds_a_planted_ghost_a_missing_charge_and_a_changed_amount() {
    let w = World::new();
    let a = w.dir.path().join("a.db");
    assert_eq!(batch_into(&w, &a, "a", 4, (100, 100)), Some(0));
    let mut lines = statement_lines(&w, &a);
    assert_eq!(lines.len(), 4);
    let good = w.dir.path().join("good.csv");
    write_statement(&good, &lines);
    let (code, out) = reconcile(&w, &a, &good, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("The statement matches the ledger."),
        "{out}"
    );
    let (code, out) = reconcile(&w, &a, &good, &["--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["totals"]["matched"]["count"], 4);
    assert_eq!(
        doc["totals"]["billed"]["usd"],
        doc["totals"]["matched"]["usd"]
    );
    assert_eq!(doc["findings"], serde_json::json!([]));

    // Plant: one missing (not billed), one changed amount, one ghost.
    let (missing_id, missing_usd, _) = lines.remove(0);
    let (changed_id, changed_usd, _) = lines[0].clone();
    lines[0].1 = (dec(&changed_usd) + dec("0.000001")).to_string();
    let day = lines[0].2.clone();
    lines.push((
        "codeformer-image-restoration_ghost-0001".into(),
        "0.0042".into(),
        day,
    ));
    let bad = w.dir.path().join("bad.csv");
    write_statement(&bad, &lines);
    let (code, out) = reconcile(&w, &a, &bad, &["--format", "json"]);
    assert_eq!(code, Some(3), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let findings = doc["findings"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap(),
                f["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("ghost", "codeformer-image-restoration_ghost-0001"),
            ("not_billed", missing_id.as_str()),
            ("amount_differs", changed_id.as_str())
        ]
    );
    assert_eq!(findings[0]["billed"], "0.0042");
    assert_eq!(findings[0]["lines"], serde_json::json!([5]));
    assert!(
        findings[0]["note"]
            .as_str()
            .unwrap()
            .contains("no uncertain attempt"),
        "{out}"
    );
    assert_eq!(json_dec(&findings[1]["recorded"]), dec(&missing_usd));
    assert_eq!(json_dec(&findings[2]["difference"]), dec("0.000001"));
    assert_eq!(findings[2]["lines"], serde_json::json!([2]));
    // Totals split exactly.
    let t = &doc["totals"];
    let usd = |k: &str| json_dec(&t[k]["usd"]);
    let billed: Decimal = lines.iter().map(|l| dec(&l.1)).sum();
    assert_eq!(usd("billed"), billed);
    assert_eq!(
        usd("billed"),
        usd("matched") + usd("ghosts") + usd("differing_billed") + usd("resolved_billed")
    );
    assert_eq!(
        usd("recorded"),
        usd("matched") + usd("differing_recorded") + usd("not_billed")
    );
    assert_eq!(t["matched"]["count"], 2);

    // CSV and the page say the same, with each job's show command.
    let (code, csv) = reconcile(&w, &a, &bad, &["--format", "csv"]);
    assert_eq!(code, Some(3));
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("kind,request_id,ledger,job_id"),
        "{csv}"
    );
    assert!(
        rows[1].starts_with("ghost,codeformer-image-restoration_ghost-0001,"),
        "{csv}"
    );
    assert!(
        rows[2].starts_with(&format!("not_billed,{missing_id},")),
        "{csv}"
    );
    assert!(
        rows[3].starts_with(&format!("amount_differs,{changed_id},")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("total_billed,4,,,,,{},", money(billed))),
        "{csv}"
    );
    let (code, page) = reconcile(&w, &a, &bad, &["--format", "html"]);
    assert_eq!(code, Some(3));
    let job_of = |id: &str| -> i64 {
        one(
            &a,
            &format!("SELECT job_id FROM attempts WHERE request_id = '{id}'"),
        )
    };
    for id in [&missing_id, &changed_id] {
        assert!(
            page.contains(&format!("codeformer-ledger show {}", job_of(id))),
            "{page}"
        );
    }
    assert!(!page.contains("<script") && !page.contains("://"), "{page}");
    let (code, table) = reconcile(&w, &a, &bad, &[]);
    assert_eq!(code, Some(3));
    assert!(
        table.contains("ghost codeformer-image-restoration_ghost-0001 (statement line 5)"),
        "{table}"
    );

    // A second ledger's charges are ghosts until it is read too.
    let b = w.dir.path().join("b.db");
    assert_eq!(batch_into(&w, &b, "b", 2, (80, 60)), Some(0));
    let mut both = statement_lines(&w, &a);
    both.extend(statement_lines(&w, &b));
    assert_eq!(both.len(), 6);
    let both_path = w.dir.path().join("both.csv");
    write_statement(&both_path, &both);
    let (code, out) = reconcile(&w, &a, &both_path, &[]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(out.matches("\nghost ").count(), 2, "{out}");
    let (code, out) = reconcile(&w, &a, &both_path, &["--with-ledger", b.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
}

fn money(d: Decimal) -> String {
    codeformer_ledger::money::exact(d)
}

#[test]
fn a_billed_ghost_is_matched_to_the_uncertain_attempt_sent_that_day() {
    // Every answer is lost: the job is created and billed, and the ledger calls it uncertain.
    let w = World::with(SandboxConfig {
        drop_rate: 1.0,
        ..SandboxConfig::default()
    });
    let a = w.ledger();
    assert_eq!(batch_into(&w, &a, "u", 1, (100, 100)), Some(3));
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.sandbox.stats().charges_by_request.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandbox never finished the job"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (id, usd) = w
        .sandbox
        .stats()
        .charges_by_request
        .into_iter()
        .next()
        .unwrap();
    let day: String = one(
        &a,
        "SELECT substr(submitted_at, 1, 10) FROM attempts_readable WHERE state = 'uncertain'",
    );
    let statement = w.dir.path().join("s.csv");
    write_statement(&statement, &[(id.clone(), usd.clone(), day)]);
    let (code, out) = reconcile(&w, &a, &statement, &["--format", "json"]);
    assert_eq!(code, Some(3), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let ghost = &doc["findings"][0];
    assert_eq!(ghost["kind"], "ghost");
    assert_eq!(ghost["candidates"][0]["job_id"], 1);
    assert_eq!(ghost["candidates"][0]["state"], "uncertain");
    assert!(
        ghost["note"]
            .as_str()
            .unwrap()
            .contains("probably the uncertain attempt 1 of job 1"),
        "{out}"
    );
    // Once the ledger knows the request id on that attempt, the statement resolves its charge.
    sql(
        &a,
        &format!("UPDATE attempts SET request_id = '{id}' WHERE job_id = 1"),
    );
    let (code, out) = reconcile(&w, &a, &statement, &["--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["findings"][0]["kind"], "resolved_billed");
    assert!(
        doc["findings"][0]["note"]
            .as_str()
            .unwrap()
            .starts_with("resolved: billed"),
        "{out}"
    );
    assert_eq!(
        json_dec(&doc["totals"]["resolved_billed"]["usd"]),
        dec(&usd)
    );
}

#[test]
fn bad_statements_name_the_file_line_and_column_and_change_nothing() {
    let w = World::new();
    let a = w.dir.path().join("a.db");
    assert_eq!(batch_into(&w, &a, "a", 1, (100, 100)), Some(0));
    let before = std::fs::read(&a).unwrap();
    let cases: [(&str, &str, &str); 6] = [
        (
            "request_id,date\nr1,2026-11-01\n",
            "",
            "s.csv:1: no column `amount_usd`",
        ),
        (
            "request_id,amount_usd,date\nr1,0.1,2026-11-01\nr2,0.1O,2026-11-01\n",
            "",
            "s.csv:3:2 (amount_usd): `0.1O` is not an amount",
        ),
        (
            "request_id,amount_usd,request_id,date\n",
            "",
            "s.csv:1:3: the header names `request_id` twice",
        ),
        (
            "request_id,amount_usd,date\nr1,0.1,yesterday\n",
            "",
            "s.csv:2:3 (date): `yesterday` is not a date",
        ),
        (
            "request_id,amount_usd,date\nr1,0.1\n",
            "",
            "s.csv:2: this line has 2 fields, the header 3",
        ),
        (
            "id,cost,day\nr1,1e-3,2026-11-01\n",
            "--amount-column cost --request-id-column id --date-column day",
            "s.csv:2:2 (cost): `1e-3` is not an amount",
        ),
    ];
    for (content, flags, message) in cases {
        let statement = w.dir.path().join("s.csv");
        std::fs::write(&statement, content).unwrap();
        let mut args = vec!["--ledger", a.to_str().unwrap(), "reconcile", "s.csv"];
        args.extend(flags.split_whitespace());
        let out = w.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{message}\n{}",
            text(&out)
        );
        assert!(out.stdout.is_empty(), "{}", text(&out));
    }
    assert_eq!(std::fs::read(&a).unwrap(), before);
    let _: PathBuf = a;
}

/// A job polled many times while PROCESSING: every repeated answer is a reference, `show`
/// still gives every poll with its whole body, and `ledger compact` then drops the bodies but
/// keeps every poll's facts.
#[test]
fn repeated_poll_answers_are_references_and_compact_keeps_their_facts() {
    let w = World::timed(SandboxConfig {
        queue_ms: 10,
        processing_ms: (600, 600),
        ..SandboxConfig::default()
    });
    let ledger = w.ledger();
    assert_eq!(batch_into(&w, &ledger, "p", 1, (100, 100)), Some(0));
    let polls: i64 = one(&ledger, "SELECT count(*) FROM events WHERE kind = 'poll'");
    let refs: i64 = one(&ledger, "SELECT count(*) FROM repeated_bodies");
    assert!(polls >= 4, "{polls} polls");
    assert!(refs >= 2 && refs < polls, "{refs} of {polls}");
    let stored: i64 = one(
        &ledger,
        "SELECT count(*) FROM events WHERE kind = 'poll' AND body IS NOT NULL",
    );
    assert_eq!(stored + refs, polls);
    let (code, shown) = cli_json(&w, &["show", "1", "--format", "json"]);
    assert_eq!(code, Some(0));
    let events = shown["events"].as_array().unwrap();
    let shown_polls: Vec<&Value> = events.iter().filter(|e| e["kind"] == "poll").collect();
    assert_eq!(shown_polls.len() as i64, polls);
    for e in &shown_polls {
        let body: Value =
            serde_json::from_str(e["body"].as_str().expect("every poll has its body")).unwrap();
        assert_eq!(body["status"], e["remote_status"], "{e}");
    }
    assert_eq!(
        shown_polls.iter().filter(|e| e["same_as"].is_i64()).count() as i64,
        refs
    );

    let before_report = report_json(&w, &ledger, &[]);
    let out = w.cli(&["ledger", "compact", "--before", "2999-01-01", "--vacuum"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("dropped {} answer bodies", stored + 1)),
        "{}",
        text(&out)
    );
    assert_eq!(one::<i64>(&ledger, "SELECT count(*) FROM events WHERE kind IN ('poll', 'submit_answer') AND body IS NOT NULL"), 0);
    assert_eq!(
        one::<i64>(&ledger, "SELECT count(*) FROM repeated_bodies"),
        0
    );
    assert_eq!(
        one::<i64>(&ledger, "SELECT count(*) FROM events WHERE kind = 'poll'"),
        polls
    );
    assert_eq!(
        one::<i64>(&ledger, "SELECT count(*) FROM events WHERE kind = 'poll' AND (http_status IS NULL OR remote_status IS NULL OR latency_ms IS NULL)"),
        0
    );
    let out = w.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = report_json(&w, &ledger, &[]);
    assert_eq!(after["total"], before_report["total"]);
    let out = w.cli(&["ledger", "compact", "--before", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// A ledger given to `--with-ledger` is read as it is, so its times may still be text while
/// the main ledger's are milliseconds: a report's period places the attempts of both by the
/// same instants.
#[test]
fn a_period_places_the_attempts_of_an_old_ledger_read_as_it_is_and_of_a_new_one_alike() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    v1_ledger(
        &old,
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at)
           VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample, state,
           request_id, created_at, updated_at)
           VALUES (1, 'may', 'https://x.test/a.png', '0.5', 2, 1, 1, 'completed', 'r-may', '2026-05-22T13:17:00.000Z', '2026-05-22T13:17:41.999Z'),
                  (2, 'june', 'https://x.test/b.png', '0.5', 2, 1, 1, 'completed', 'r-june', '2026-06-01T00:00:00.000Z', '2026-06-01T00:00:09.000Z');
         INSERT INTO attempts (job_id, attempt, request_id, state, price_per_mp, actual_cost, output_width, output_height, submitted_at)
           VALUES (1, 1, 'r-may', 'completed', '0.0021', '0.000084', 200, 200, '2026-05-31T23:59:59.999Z'),
                  (2, 1, 'r-june', 'completed', '0.0021', '0.000336', 400, 400, '2026-06-01T00:00:00.000Z');",
    );
    let out = w.cli(&["submit", "https://x.test/new.png", "--size", "100x100"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let label = old.to_str().unwrap();
    let jobs_in = |since: &str, until: &str| -> (Value, Value) {
        let doc = report_json(
            &w,
            &w.ledger(),
            &[
                "--with-ledger",
                label,
                "--by",
                "ledger",
                "--since",
                since,
                "--until",
                until,
            ],
        );
        (
            doc["total"]["jobs"].clone(),
            doc["total"]["charged"].clone(),
        )
    };
    assert_eq!(
        jobs_in("2026-05-01", "2026-06-01"),
        (Value::from(1), Value::from("0.000084"))
    );
    assert_eq!(
        jobs_in("2026-06-01", "2026-06-02"),
        (Value::from(1), Value::from("0.000336"))
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(jobs_in(&today, &tomorrow).0, Value::from(1));
    assert_eq!(jobs_in("2026-05-01", &tomorrow).0, Value::from(3));
    assert_eq!(one::<i64>(&old, "PRAGMA user_version"), 1, "left as it was");
}

/// A ledger from before answers were stored by reference keeps every old row and body: read
/// as it is, and after its migration.
#[test]
fn a_version_1_ledger_keeps_every_poll_body_through_its_migration() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    let body = r#"{"request_id":"r-1","status":"PROCESSING","updated_at":"2026-05-22 13:17:32"}"#;
    v1_ledger(&old, &format!(
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at)
           VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample, state,
           request_id, created_at, updated_at)
           VALUES (1, 'k', 'https://x.test/a.png', '0.5', 2, 1, 1, 'processing', 'r-1', '2026-05-22T13:17:00.000Z', '2026-05-22T13:17:00.000Z');
         INSERT INTO attempts (job_id, attempt, request_id, state) VALUES (1, 1, 'r-1', 'processing');
         INSERT INTO events (job_id, attempt, at, kind, http_status, remote_status, latency_ms, body)
           VALUES (1, 1, '2026-05-22T13:17:30.000Z', 'poll', 200, 'PROCESSING', 9, '{body}'),
                  (1, 1, '2026-05-22T13:17:35.000Z', 'poll', 200, 'PROCESSING', 8, '{body}');"
    ));
    let bodies = |w: &World| -> Vec<Value> {
        let (code, doc) = cli_json(
            w,
            &[
                "--ledger",
                old.to_str().unwrap(),
                "show",
                "1",
                "--format",
                "json",
            ],
        );
        assert_eq!(code, Some(0), "{doc}");
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["body"].clone())
            .collect()
    };
    assert_eq!(bodies(&w), [Value::from(body), Value::from(body)]);
    let out = w.cli(&["--ledger", old.to_str().unwrap(), "prices", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        one::<i64>(&old, "PRAGMA user_version"),
        codeformer_ledger::ledger::migrations::CURRENT
    );
    assert_eq!(bodies(&w), [Value::from(body), Value::from(body)]);
    assert_eq!(
        one::<i64>(&old, "SELECT count(*) FROM events WHERE body IS NOT NULL"),
        2
    );
}

/// Events written before times were unix milliseconds and downloads referred to their output
/// row read the same after the migration: `show` prints every event as it did, and
/// `events_readable` gives the same times and details to any SQLite tool.
#[test]
fn an_old_ledgers_events_read_the_same_after_migrating() {
    let w = World::new();
    let old = w.dir.path().join("v1.db");
    let download = "https://cdn.test/r-1/out.png -> /out/a.png (1000 bytes, 200x200, sha256 ab12)";
    let charge = "0.000084 USD for 200x200 output at 0.0021 USD/MP";
    v1_ledger(&old, &format!(
        "INSERT INTO prices (model, per_megapixel, effective_from, recorded_at)
           VALUES ('codeformer-image-restoration', '0.0021', '1970-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
         INSERT INTO jobs (id, key, image_url, fidelity, upscale, background_enhance, face_upsample, state,
           request_id, created_at, updated_at)
           VALUES (1, 'k', 'https://x.test/a.png', '0.5', 2, 1, 1, 'completed', 'r-1', '2026-05-22T13:17:00.000Z', '2026-05-22T13:17:41.999Z');
         INSERT INTO attempts (job_id, attempt, request_id, state, price_per_mp, actual_cost, output_width, output_height)
           VALUES (1, 1, 'r-1', 'completed', '0.0021', '0.000084', 200, 200);
         INSERT INTO outputs (job_id, attempt, idx, url, path, bytes, sha256, width, height)
           VALUES (1, 1, 0, 'https://cdn.test/r-1/out.png', '/out/a.png', 1000, 'ab12', 200, 200);
         INSERT INTO tags (job_id, key, value) VALUES (1, 'client', 'acme');
         INSERT INTO events (job_id, attempt, at, kind, http_status, remote_status, latency_ms, detail, body)
           VALUES (1, 1, '2026-05-22T13:17:00.000Z', 'planned', NULL, NULL, NULL, NULL, '{{}}'),
                  (1, 1, '2026-05-22T13:17:30.007Z', 'poll', 200, 'COMPLETED', 9, NULL, '{{\"status\":\"COMPLETED\"}}'),
                  (1, 1, '2026-05-22T13:17:41.999Z', 'download', NULL, NULL, NULL, '{download}', NULL),
                  (1, 1, '2026-05-22T13:17:41.999Z', 'charge', NULL, NULL, NULL, '{charge}', NULL);"
    ));
    let events = |w: &World| -> Value {
        let args = [
            "--ledger",
            old.to_str().unwrap(),
            "show",
            "1",
            "--format",
            "json",
        ];
        let (code, doc) = cli_json(w, &args);
        assert_eq!(code, Some(0), "{doc}");
        doc["events"].clone()
    };
    let before = events(&w);
    assert_eq!(before[1]["at"], "2026-05-22T13:17:30.007Z", "{before}");
    assert_eq!(before[2]["detail"], download, "{before}");
    let out = w.cli(&["--ledger", old.to_str().unwrap(), "prices", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        one::<i64>(&old, "PRAGMA user_version"),
        codeformer_ledger::ledger::migrations::CURRENT
    );
    assert_eq!(
        one::<String>(&old, "SELECT typeof(at) FROM events WHERE kind = 'poll'"),
        "integer"
    );
    assert_eq!(events(&w), before);
    let readable = |query: &str| -> String { one(&old, query) };
    assert_eq!(
        readable("SELECT group_concat(at, ' ') FROM (SELECT at FROM events_readable ORDER BY id)"),
        "2026-05-22T13:17:00.000Z 2026-05-22T13:17:30.007Z 2026-05-22T13:17:41.999Z 2026-05-22T13:17:41.999Z"
    );
    assert_eq!(
        readable("SELECT detail FROM events_readable WHERE kind = 'download'"),
        download
    );
    assert_eq!(
        readable("SELECT detail FROM events_readable WHERE kind = 'charge'"),
        charge
    );
    // The old planned body is kept as written, and the rows copied into the WITHOUT ROWID
    // tables are all there.
    assert_eq!(
        readable("SELECT body FROM events_readable WHERE kind = 'planned'"),
        "{}"
    );
    assert_eq!(
        readable(
            "SELECT (SELECT group_concat(job_id || ' ' || attempt || ' ' || request_id || ' ' || state || ' '
                         || price_per_mp || ' ' || actual_cost || ' ' || output_width || 'x' || output_height) FROM attempts)
                 || ' | ' || (SELECT group_concat(job_id || ' ' || key || '=' || value) FROM tags)
                 || ' | ' || (SELECT group_concat(job_id || ' ' || attempt || ' ' || idx || ' ' || url || ' ' || path
                         || ' ' || bytes || ' ' || sha256 || ' ' || width || 'x' || height) FROM outputs)"
        ),
        "1 1 r-1 completed 0.0021 0.000084 200x200 | 1 client=acme | 1 1 0 https://cdn.test/r-1/out.png /out/a.png 1000 ab12 200x200"
    );
}

/// A real run stores its download and charge events as references to the `outputs` and
/// `attempts` rows, with times as unix milliseconds, and `show` and `events_readable` still
/// print their whole text.
#[test]
fn download_and_charge_events_refer_to_their_rows_and_read_whole() {
    let w = World::new();
    let ledger = w.ledger();
    assert_eq!(batch_into(&w, &ledger, "r", 2, (100, 100)), Some(0));
    assert_eq!(
        one::<i64>(
            &ledger,
            "SELECT count(*) FROM events WHERE kind = 'download' AND detail IS NULL AND output = 0"
        ),
        2
    );
    assert_eq!(
        one::<i64>(
            &ledger,
            "SELECT count(*) FROM events WHERE kind = 'charge' AND detail IS NULL"
        ),
        2
    );
    assert_eq!(
        one::<i64>(
            &ledger,
            "SELECT count(*) FROM events WHERE typeof(at) != 'integer'"
        ),
        0
    );
    let (code, shown) = cli_json(&w, &["show", "1", "--format", "json"]);
    assert_eq!(code, Some(0), "{shown}");
    let (url, path, bytes, sha): (String, String, i64, String) = {
        let db = rusqlite::Connection::open(&ledger).unwrap();
        db.query_row(
            "SELECT url, path, bytes, sha256 FROM outputs WHERE job_id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    };
    let detail_of = |kind: &str| -> String {
        let events = shown["events"].as_array().unwrap();
        let e = events.iter().find(|e| e["kind"] == kind).unwrap();
        e["detail"].as_str().unwrap_or_default().to_string()
    };
    let download = detail_of("download");
    assert!(
        download.starts_with(&format!("{url} -> {path} ({bytes} bytes, ")),
        "{download}"
    );
    assert!(
        download.ends_with(&format!(", sha256 {sha})")),
        "{download}"
    );
    let charge = detail_of("charge");
    assert!(
        charge.contains(" USD for ") && charge.ends_with(" USD/MP"),
        "{charge}"
    );
    let readable: String = one(
        &ledger,
        "SELECT detail FROM events_readable WHERE job_id = 1 AND kind = 'download'",
    );
    assert_eq!(readable, download);
    let at: String = one(
        &ledger,
        "SELECT at FROM events_readable WHERE job_id = 1 AND kind = 'charge'",
    );
    let shown_at = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "charge")
        .unwrap()["at"]
        .clone();
    assert_eq!(Value::from(at), shown_at);
}
