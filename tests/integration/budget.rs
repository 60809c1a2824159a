//! The request budget through the binary: one budget for sends and polls learned from 429s,
//! a known quota (`--max-rps`, `max_rps`), polls not before the learned low quantile, polls
//! before new submissions when the budget is short, and a forgotten request id.

use crate::common::{text, World};
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};

/// A world with `count` small images enqueued as batch `b`.
fn world(config: SandboxConfig, count: usize) -> World {
    let w = World::timed(SandboxConfig {
        render: false,
        ..config
    });
    enqueue(&w, "b", count, 8);
    w
}

/// Enqueues `count` small images (widths from `width` up) as batch `batch`.
fn enqueue(w: &World, batch: &str, count: usize, width: u32) {
    let urls: Vec<String> = (0..count)
        .map(|i| w.png(&format!("{batch}{i:03}.png"), width + i as u32, 8))
        .collect();
    let manifest = w.manifest(&format!("{batch}.txt"), &urls);
    let manifest = manifest.to_str().unwrap();
    let out = w.cli(&["batch", manifest, "--name", batch, "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn run(w: &World, extra: &[&str]) {
    run_batch(w, "b", extra);
}

/// Runs batch `batch` to the end: every job of the ledger completed.
fn run_batch(w: &World, batch: &str, extra: &[&str]) {
    let out_dir = w.out_dir();
    let mut args = vec!["run", "--quiet", "--out-dir", out_dir.to_str().unwrap()];
    args.extend_from_slice(&["--batch", batch, "--concurrency", "4"]);
    if !extra.contains(&"--poll-interval") {
        args.extend_from_slice(&["--poll-interval", "50ms"]);
    }
    args.extend_from_slice(extra);
    let out = w.cli(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state != 'completed'"),
        0
    );
}

fn answered_429(w: &World) -> u64 {
    w.sandbox
        .stats()
        .answered_by_code
        .get(&429)
        .copied()
        .unwrap_or(0)
}

/// Before the budget, only sends paused after a 429 and polls went on into the limit. Now a
/// 429 pauses and slows every request: the gateway answers few of them 429, polls included.
#[test]
fn a_rate_limit_is_learned_and_polls_wait_too() {
    let w = world(
        SandboxConfig {
            rate_limit_rps: Some(15.0),
            queue_ms: 0,
            processing_ms: (200, 600),
            ..SandboxConfig::default()
        },
        40,
    );
    run(&w, &["--poll-interval", "300ms"]);
    let stats = w.sandbox.stats();
    let limited = answered_429(&w);
    assert!(limited > 0, "the limit was met: {stats:?}");
    assert!(
        limited * 100 <= stats.api_requests * 8,
        "{limited} of {} requests answered 429",
        stats.api_requests
    );
    let polls_429 =
        w.count("SELECT count(*) FROM events WHERE kind = 'poll' AND http_status = 429");
    assert!(polls_429 <= 4, "{polls_429} polls answered 429");
    assert!(stats.submissions_by_image.values().all(|n| *n == 1));
}

/// A known quota keeps every request under the gateway's limit, from the first one on; the
/// config file's `max_rps` does the same as the flag.
#[test]
fn a_known_quota_meets_no_429() {
    let config = || SandboxConfig {
        rate_limit_rps: Some(12.0),
        queue_ms: 0,
        processing_ms: (50, 100),
        ..SandboxConfig::default()
    };
    let w = world(config(), 16);
    run(&w, &["--max-rps", "9"]);
    assert_eq!(answered_429(&w), 0, "{:?}", w.sandbox.stats());

    let w = world(config(), 16);
    let file = w.dir.path().join("config.toml");
    std::fs::write(&file, "max_rps = 9\n").unwrap();
    let shown = w.cli_env(
        &["config", "show"],
        &[("CODEFORMER_LEDGER_CONFIG", file.to_str().unwrap())],
    );
    assert!(text(&shown).contains("max_rps"), "{}", text(&shown));
    let args = w.run_args(&["--batch", "b"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.cli_env(
        &args,
        &[("CODEFORMER_LEDGER_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(answered_429(&w), 0, "{:?}", w.sandbox.stats());

    let bad = w.cli(&["run", "--max-rps", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--max-rps"), "{}", text(&bad));
}

/// Jobs of 1.5-2 s: once a few have completed, no job sent after that is polled before the
/// low quantile of the durations seen (about 1.55 s), and most are polled once.
#[test]
fn no_poll_before_the_low_quantile() {
    let w = world(
        SandboxConfig {
            queue_ms: 0,
            processing_ms: (1_500, 2_000),
            seed: 11,
            ..SandboxConfig::default()
        },
        24,
    );
    // 4 requests a second spread the sends over a few seconds, so most are sent after the
    // schedule has learned.
    run(&w, &["--poll-interval", "1s", "--max-rps", "4"]);
    let seconds = |a: &str, b: &str| format!("(julianday({a}) - julianday({b})) * 86400.0");
    // When the fifth job was seen completed.
    let learned_at: String = w
        .db()
        .query_row(
            "SELECT at FROM events_readable WHERE kind = 'poll' AND remote_status = 'COMPLETED'
             ORDER BY id LIMIT 1 OFFSET 4",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let early = w.count(&format!(
        "SELECT count(*) FROM events_readable e JOIN attempts_readable a ON a.job_id = e.job_id AND a.attempt = e.attempt
         WHERE e.kind = 'poll' AND a.submitted_at > '{learned_at}'
         AND {} < 1.4",
        seconds("e.at", "a.submitted_at")
    ));
    let later_jobs = w.count(&format!(
        "SELECT count(*) FROM attempts_readable WHERE submitted_at > '{learned_at}'"
    ));
    assert!(
        later_jobs >= 8,
        "only {later_jobs} jobs were sent after learning"
    );
    assert_eq!(early, 0, "polls before the low quantile");
    let polls = w.count(&format!(
        "SELECT count(*) FROM events e JOIN attempts_readable a ON a.job_id = e.job_id AND a.attempt = e.attempt
         WHERE e.kind = 'poll' AND a.submitted_at > '{learned_at}'"
    ));
    assert!(
        polls <= later_jobs * 3 / 2,
        "{polls} polls for {later_jobs} jobs sent after learning"
    );
}

/// With a short budget, due polls go before new submissions (with a submission at least every
/// fourth request): jobs at the gateway finish before many more are started, and every job is
/// sent and finished in the end.
#[test]
fn a_short_budget_finishes_started_jobs_first_and_starves_none() {
    let w = world(
        SandboxConfig {
            queue_ms: 0,
            processing_ms: (20, 40),
            ..SandboxConfig::default()
        },
        30,
    );
    run(&w, &["--max-rps", "15", "--poll-interval", "100ms"]);
    // Walk the record: a 202 adds a job at the gateway, a final poll removes it.
    let db = w.db();
    let mut stmt = db
        .prepare("SELECT kind, coalesce(remote_status, '') FROM events WHERE kind IN ('submit_answer', 'poll') ORDER BY id")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (mut at_gateway, mut most) = (0i64, 0i64);
    for (kind, status) in &rows {
        match (kind.as_str(), status.as_str()) {
            ("submit_answer", _) => at_gateway += 1,
            ("poll", "COMPLETED") => at_gateway -= 1,
            _ => {}
        }
        most = most.max(at_gateway);
    }
    assert!(most <= 8, "up to {most} jobs at the gateway at once");
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'submit_answer'"),
        30
    );
}

/// A request id the gateway no longer knows (here: a gateway started afresh) is answered
/// 404; after three in a row the job is no longer polled and is stalled, charge unknown, with
/// the reason.
#[test]
fn a_forgotten_request_id_stops_being_polled() {
    let w = World::with(SandboxConfig {
        queue_ms: 60_000,
        ..SandboxConfig::default()
    });
    let url = w.png("f.png", 10, 10);
    let out = w.cli(&["submit", &url, "--size", "10x10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
        1
    );
    let other = Sandbox::start(SandboxConfig::default()).unwrap();
    let args = w.run_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w
        .command(&args)
        .env("PIXAZO_BASE_URL", other.base_url())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(other.stats().status_requests, 3, "{:?}", other.stats());
    let (state, reason): (String, String) = w
        .db()
        .query_row("SELECT state, reason FROM jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(state, "stalled");
    assert!(
        reason.contains("404") && reason.contains("charge unknown"),
        "{reason}"
    );
    // A later run does not poll it again.
    let out = w
        .command(&args)
        .env("PIXAZO_BASE_URL", other.base_url())
        .output()
        .unwrap();
    assert_eq!(other.stats().status_requests, 3, "{}", text(&out));
    let report = w.cli(&["report"]);
    assert!(
        text(&report).to_lowercase().contains("unknown"),
        "{}",
        text(&report)
    );
}

/// With a short budget and fewer jobs at the gateway than the budget serves while a long job
/// runs (here 10 requests a second against jobs of 2-3 s: 30 jobs never outnumber that),
/// submissions go first: the batch's end is its last submission plus its run time. Polls
/// wait for them (only one two poll intervals overdue goes first), and every job finishes.
#[test]
fn a_short_budget_sends_first_while_the_gateway_holds_fewer_jobs_than_a_long_job_of_requests() {
    let w = world(
        SandboxConfig {
            queue_ms: 0,
            processing_ms: (2_000, 3_000),
            ..SandboxConfig::default()
        },
        30,
    );
    run(&w, &["--max-rps", "10", "--poll-interval", "1s"]);
    let last_send =
        w.count("SELECT max(id) FROM events WHERE kind = 'submit_answer' AND http_status = 202");
    let polls_before = w.count(&format!(
        "SELECT count(*) FROM events WHERE kind = 'poll' AND id < {last_send}"
    ));
    // Polling first would have put about three polls before each of the later submissions.
    assert!(
        polls_before <= 6,
        "{polls_before} polls before the last of 30 submissions"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'submit_answer'"),
        30
    );
}

/// A run records the job durations it learned at its gateway (a `durations` event), and the
/// next run against that gateway starts its schedule from them: its jobs are not polled
/// before the low quantile from their first poll on, where the first run, knowing nothing,
/// polled every job at the poll interval.
#[test]
fn a_second_run_starts_its_poll_schedule_from_the_first_runs_durations() {
    let w = world(
        SandboxConfig {
            queue_ms: 0,
            processing_ms: (1_500, 2_000),
            seed: 11,
            ..SandboxConfig::default()
        },
        12,
    );
    run(&w, &["--poll-interval", "1s"]);
    let (detail, body): (String, String) = w
        .db()
        .query_row(
            "SELECT detail, body FROM events WHERE kind = 'durations'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let learned: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(learned["gateway"], w.sandbox.base_url().as_str(), "{body}");
    let points = learned["durations_ms"].as_array().unwrap();
    assert_eq!(points.len(), 32, "{body}");
    assert!(
        points
            .iter()
            .all(|p| (1_400..=2_100).contains(&p.as_u64().unwrap())),
        "{body}"
    );
    assert!(detail.contains("median"), "{detail}");

    enqueue(&w, "c", 12, 40);
    run_batch(&w, "c", &["--poll-interval", "1s"]);
    let early = |batch: &str| {
        w.count(&format!(
            "SELECT count(*) FROM events_readable e
             JOIN attempts_readable a ON a.job_id = e.job_id AND a.attempt = e.attempt
             JOIN jobs j ON j.id = e.job_id
             WHERE e.kind = 'poll' AND j.batch = '{batch}'
             AND (julianday(e.at) - julianday(a.submitted_at)) * 86400.0 < 1.4"
        ))
    };
    assert!(early("b") >= 6, "the first run polled at the interval");
    assert_eq!(
        early("c"),
        0,
        "polls before the low quantile the first run learned"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE batch = 'c' AND state = 'completed'"),
        12
    );
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'durations'"),
        2
    );
}
