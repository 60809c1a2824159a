//! Batches remember their cap, and a photo sent in one batch joins a later one without being
//! paid for twice.

use crate::common::{text, World};
use codeformer_ledger::sandbox::SandboxConfig;
use rust_decimal::Decimal;
use std::process::Output;
use std::time::{Duration, Instant};

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `batch MANIFEST` with fast polling into `out` and these extra arguments.
fn batch(w: &World, manifest: &str, out: &str, extra: &[&str]) -> Output {
    let out_dir = w.dir.path().join(out);
    let mut args = vec![
        "batch",
        manifest,
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    w.cli(&args)
}

/// `run` with fast polling and these arguments (no --out-dir: the batch's own folder).
fn run(w: &World, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--quiet", "--poll-interval", "50ms"];
    args.extend_from_slice(extra);
    w.cli(&args)
}

/// A text manifest of `n` 100x100 PNGs (estimate 0.000084 USD each at upscale 2).
fn manifest(w: &World, name: &str, n: usize) -> String {
    let urls: Vec<String> = (0..n)
        .map(|i| w.png(&format!("{name}-{i}.png"), 100, 100))
        .collect();
    w.manifest(&format!("{name}.txt"), &urls)
        .to_string_lossy()
        .into_owned()
}

fn charged(w: &World) -> Decimal {
    dec(&w.sandbox.stats().charged_usd)
}

fn budget_events(w: &World) -> Vec<String> {
    let db = w.db();
    let mut stmt = db
        .prepare("SELECT detail FROM events WHERE kind = 'budget' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Regression: `batch M --budget 0.3`, then the `run --batch B` the tool suggested, sent
/// every held job: the cap was forgotten after the first run.
#[test]
fn a_batch_keeps_its_cap_until_raised_or_lifted_and_each_change_is_an_event() {
    let w = World::new();
    let m = manifest(&w, "capped", 6);
    // 3 x 0.000084 = 0.000252 fit under 0.0003; the other three are held.
    let out = batch(&w, &m, "out", &["--budget", "0.0003"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("batch capped's cap"),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 3);
    assert_eq!(charged(&w), dec("0.000252"));

    // The resume the tool names, without --budget: nothing more is sent.
    let out = run(&w, &["--batch", "capped"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("budget: 0.0003 USD for batch capped"),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 3, "{}", text(&out));
    // Nor by a run over the whole ledger, nor by `submit` into the batch.
    let out = run(&w, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains("batches keep their own caps: capped 0.0003 USD"),
        "{}",
        text(&out)
    );
    let extra = w.png("extra.png", 100, 100);
    let out = w.cli(&["submit", &extra, "--batch", "capped"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(w.sandbox.stats().accepted, 3, "{}", text(&out));
    assert!(charged(&w) <= dec("0.0003"));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'held' AND reason LIKE '%batch capped''s cap of 0.0003 USD'"),
        4
    );

    // A raised cap is remembered, and is an event.
    let out = run(&w, &["--batch", "capped", "--budget", "0.0005"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(w.sandbox.stats().accepted, 5);
    assert!(charged(&w) <= dec("0.0005"));
    let out = run(&w, &["--batch", "capped"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(w.sandbox.stats().accepted, 5, "{}", text(&out));

    // --no-budget lifts it, for later runs too.
    let out = run(&w, &["--batch", "capped", "--no-budget"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.sandbox.stats().accepted, 7);
    assert_eq!(
        w.count("SELECT count(*) FROM batches WHERE name = 'capped' AND budget IS NULL"),
        1
    );
    assert_eq!(
        budget_events(&w),
        [
            "batch capped: cap 0.0003 USD (was none), --budget",
            "batch capped: cap 0.0005 USD (was 0.0003 USD), --budget",
            "batch capped: cap none (was 0.0005 USD), --no-budget",
        ]
    );
}

/// Regression: after a kill, the resume the tool suggests sent past the cap (0.89 USD
/// charged on a 0.3 cap).
#[test]
fn a_cap_holds_after_the_batch_is_killed_mid_run() {
    let w = World::timed(SandboxConfig {
        queue_ms: 50,
        processing_ms: (300, 400),
        ..SandboxConfig::default()
    });
    let m = manifest(&w, "killed", 8);
    let out_dir = w.out_dir();
    let mut child = w
        .command(&[
            "batch",
            &m,
            "--quiet",
            "--budget",
            "0.0003",
            "--poll-interval",
            "50ms",
            "--concurrency",
            "2",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.sandbox.stats().accepted == 0 {
        assert!(Instant::now() < deadline, "nothing was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = run(&w, &["--batch", "killed"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(charged(&w) <= dec("0.0003"), "{}", text(&out));
    assert!(w.sandbox.stats().accepted <= 3, "{}", text(&out));
    assert!(
        stderr(&out).contains("budget: 0.0003 USD for batch killed"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_cap_without_a_batch_is_for_that_run_and_says_so() {
    let w = World::new();
    let url = w.png("one.png", 100, 100);
    let out = w.cli(&["submit", &url, "--no-send"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.run(&["--budget", "0.00001"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "budget: 0.00001 USD for this run, over every job in the ledger (not remembered"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(
        w.count("SELECT count(*) FROM batches WHERE budget IS NOT NULL"),
        0
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Every resume hint names what the batch remembers, so that following it is enough.
#[test]
fn the_resume_hint_carries_what_the_batch_remembers() {
    let w = World::new();
    let m = manifest(&w, "hinted", 1);
    let out = batch(&w, &m, "out", &["--budget", "0.0003", "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("`codeformer-ledger run --batch hinted` (which keeps its cap of 0.0003 USD, its output folder "),
        "{said}"
    );
    assert_eq!(budget_events(&w).len(), 1);
}

fn jobs_of(w: &World, batch: &str) -> Vec<serde_json::Value> {
    let out = w.cli(&["jobs", "--batch", batch, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Regression: a row matching a job of an earlier batch was left out of the new batch,
/// with its tags, and its output never reached the new batch's folder.
#[test]
fn a_reused_photo_joins_the_new_batch_with_its_tags_and_output_at_no_new_charge() {
    let w = World::new();
    let a = w.png("a.png", 100, 100);
    let b = w.png("b.png", 120, 100);
    let c = w.png("c.png", 80, 100);
    let first = w.manifest("first.txt", &[a.clone(), b.clone()]);
    let out = batch(&w, first.to_str().unwrap(), "out-first", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let paid = charged(&w);

    let second = w.dir.path().join("second.csv");
    std::fs::write(
        &second,
        format!("image,tags\n{a},client=acme\n{c},client=acme\n"),
    )
    .unwrap();
    let out = batch(&w, second.to_str().unwrap(), "out-second", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("2 row(s), 1 added, 1 reused earlier jobs"),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 3, "a was not sent again");

    let listed: Vec<String> = jobs_of(&w, "second")
        .iter()
        .map(|j| j["image_url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [a.clone(), c.clone()]);
    assert_eq!(
        w.count("SELECT count(*) FROM tags WHERE job_id = 1 AND key = 'client' AND value = 'acme'"),
        1
    );
    // The output is in the new batch's folder, recorded as its copy.
    let copy: String = w
        .db()
        .query_row(
            "SELECT path FROM member_outputs WHERE batch = 'second' AND job_id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let copy = std::path::PathBuf::from(copy);
    assert!(copy.starts_with(w.dir.path().join("out-second").canonicalize().unwrap()));
    let original: String = w
        .db()
        .query_row("SELECT path FROM outputs WHERE job_id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(original).unwrap()
    );

    // Reports count the reuse, at no new charge; totals stay exact.
    let out = w.cli(&["report", "--by", "batch", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let second_row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == "second")
        .unwrap()
        .clone();
    assert_eq!(second_row["reused"], 1);
    assert_eq!(second_row["jobs"], 1, "only c was sent for it");
    assert_eq!(report["total"]["reused"], 1);
    assert_eq!(
        dec(report["total"]["charged"].as_str().unwrap()),
        charged(&w)
    );
    assert!(charged(&w) > paid);
    let out = w.cli(&["report", "--by", "batch"]);
    assert!(stdout(&out).contains("reused: 1 job(s)"), "{}", text(&out));

    // Running it again adds nothing; a conflicting tag value is reported and not applied.
    let out = batch(&w, second.to_str().unwrap(), "out-second", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("2 row(s), 0 added, 2 already in the ledger"),
        "{}",
        text(&out)
    );
    assert_eq!(w.count("SELECT count(*) FROM member_outputs"), 1);
    let third = w.dir.path().join("third.csv");
    std::fs::write(&third, format!("image,tags\n{a},client=other\n")).unwrap();
    let out = batch(&w, third.to_str().unwrap(), "out-third", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "job 1: tag client keeps its value `acme`; this manifest gives `other` (not applied)"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 3);
}

/// A reused job still unfinished in its own batch is sent by that batch's runs, once; the
/// new batch says so, and places the output when it is there.
#[test]
fn a_reused_job_unfinished_elsewhere_is_named_then_placed_once_it_is_done() {
    let w = World::new();
    let a = w.png("a.png", 100, 100);
    let first = w.manifest("first.txt", std::slice::from_ref(&a));
    let out = batch(
        &w,
        first.to_str().unwrap(),
        "out-first",
        &["--enqueue-only"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let second = w.manifest("second.txt", std::slice::from_ref(&a));
    let out = batch(&w, second.to_str().unwrap(), "out-second", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("1 reused job(s) of batch second are still unfinished in batch first; `codeformer-ledger run --batch first` finishes them"),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 0);
    let out = run(&w, &["--batch", "first"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&w, &["--batch", "second"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.sandbox.stats().accepted, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM member_outputs WHERE batch = 'second'"),
        1
    );
    let entries = std::fs::read_dir(w.dir.path().join("out-second"))
        .unwrap()
        .count();
    assert_eq!(entries, 1);
    let out = w.cli(&["verify", "--files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for entry in std::fs::read_dir(w.dir.path().join("out-second")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let out = w.cli(&["verify", "--files"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

/// The config file's budget caps a batch that remembers none, and is not stored as its cap.
#[test]
fn a_config_budget_applies_to_a_batch_without_being_remembered() {
    let w = World::new();
    let m = manifest(&w, "configured", 2);
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, "budget = \"0.0001\"\n").unwrap();
    let out_dir = w.dir.path().join("out");
    let out = w.cli_env(
        &[
            "batch",
            &m,
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ],
        &[("CODEFORMER_LEDGER_CONFIG", config.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr(&out).contains(
            "budget: 0.0001 USD for batch configured, from the config file (not remembered)"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().accepted, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM batches WHERE budget IS NOT NULL"),
        0
    );
    assert!(budget_events(&w).is_empty());
}

/// Ctrl-C on a capped batch names the resume with the cap it keeps, and the resume keeps it.
#[test]
fn ctrl_c_names_the_resume_with_the_batch_cap_and_the_resume_keeps_it() {
    let w = World::timed(SandboxConfig {
        queue_ms: 50,
        processing_ms: (300, 400),
        ..SandboxConfig::default()
    });
    let m = manifest(&w, "stopped", 8);
    let out_dir = w.out_dir();
    let log = w.dir.path().join("batch.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = w
        .command(&[
            "batch",
            &m,
            "--quiet",
            "--budget",
            "0.0003",
            "--poll-interval",
            "50ms",
            "--concurrency",
            "2",
            "--out-dir",
            out_dir.to_str().unwrap(),
        ])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.sandbox.stats().accepted == 0 {
        assert!(Instant::now() < deadline, "nothing was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("`codeformer-ledger run --batch stopped` (which keeps its cap of 0.0003 USD"),
        "{said}"
    );
    let out = run(&w, &["--batch", "stopped"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(charged(&w) <= dec("0.0003"), "{}", text(&out));
}
