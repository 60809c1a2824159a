//! Resumable batch runs (issue 4): kill -9 at random moments, gateway faults, manifests, the
//! engine lock, retries, deadlines, an unreachable gateway and Ctrl-C. Every test checks the
//! ledger against the sandbox's own counts: what was submitted, and what was charged.

use crate::common::*;
use codeformer_ledger::sandbox::{SandboxConfig, SandboxStats};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `count` inputs of distinct sizes (`8+i` × 8), so that a charge names its image.
fn images(w: &World, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| w.png(&format!("p{i:04}.png"), 8 + i as u32, 8))
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|_| panic!("`{text}` is a decimal"))
}

/// Waits until every job the sandbox accepted has reached a final status (jobs whose answer
/// was lost are never polled, but still finish and may be charged).
fn settled(w: &World) -> SandboxStats {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = w.sandbox.stats();
        if s.completed + s.failed + s.errored == s.accepted {
            return s;
        }
        assert!(Instant::now() < end, "the sandbox never settled: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for a child, killing it (and failing) after `limit`.
fn wait_for(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

struct Attempt {
    job_id: i64,
    attempt: i64,
    image: String,
    state: String,
    request_id: Option<String>,
    estimated: Option<Decimal>,
    actual: Option<Decimal>,
}

/// What the audit found, for the long run's summary.
#[derive(Debug, Default)]
struct Audit {
    jobs: usize,
    attempts: usize,
    uncertain_attempts: usize,
    /// Jobs the sandbox created whose request id the ledger never learned.
    orphans: usize,
    ledger_charged: Decimal,
    sandbox_charged: Decimal,
    orphan_charged: Decimal,
    /// Charges of stalled jobs, which the gateway finished after the ledger gave up on them.
    stalled_charged: Decimal,
    outputs: usize,
}

fn attempts(w: &World) -> Vec<Attempt> {
    let db = w.db();
    let mut stmt = db
        .prepare(
            "SELECT a.job_id, a.attempt, j.image_url, a.state, a.request_id, a.estimated_cost, a.actual_cost
             FROM attempts a JOIN jobs j ON j.id = a.job_id ORDER BY a.job_id, a.attempt",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Attempt {
                job_id: r.get(0)?,
                attempt: r.get(1)?,
                image: r.get(2)?,
                state: r.get(3)?,
                request_id: r.get(4)?,
                estimated: r.get::<_, Option<String>>(5)?.map(|t| dec(&t)),
                actual: r.get::<_, Option<String>>(6)?.map(|t| dec(&t)),
            })
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Checks the ledger against the sandbox's own counts once a run has finished:
/// - every job is in one of `finals` and owes no post-processing;
/// - per image, the sandbox received every attempt the ledger knows by request id, plus at
///   most one more for each attempt the ledger holds as uncertain, and nothing else;
/// - every charge the ledger recorded equals the sandbox's for that request id, the sandbox
///   charged nothing the ledger does not know except jobs behind uncertain attempts, and the
///   totals differ by exactly those;
/// - every output is whole: its bytes, sha256 and PNG size are the ledger's, and no
///   temporary download is left behind.
fn audit(w: &World, finals: &[&str]) -> Audit {
    let stats = settled(w);
    let db = w.db();
    let unfinished: Vec<(i64, String, Option<String>)> = {
        let mut stmt = db
            .prepare("SELECT id, state, post FROM jobs ORDER BY id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.map(Result::unwrap)
            .filter(|(_, state, post): &(i64, String, Option<String>)| {
                !finals.contains(&state.as_str()) || post.is_some()
            })
            .collect()
    };
    assert!(unfinished.is_empty(), "unfinished jobs: {unfinished:?}");

    let all = attempts(w);
    let mut audit = Audit {
        jobs: w.count("SELECT count(*) FROM jobs") as usize,
        attempts: all.len(),
        ..Audit::default()
    };
    let mut by_image: BTreeMap<&str, (u64, u64)> = BTreeMap::new(); // (known, uncertain)
    let mut known: HashMap<&str, &Attempt> = HashMap::new();
    for a in &all {
        let entry = by_image.entry(&a.image).or_default();
        if let Some(rid) = &a.request_id {
            entry.0 += 1;
            assert!(known.insert(rid, a).is_none(), "request id {rid} twice");
        }
        if a.state == "uncertain" {
            entry.1 += 1;
            audit.uncertain_attempts += 1;
            assert!(
                a.request_id.is_none(),
                "an uncertain attempt has no request id"
            );
        }
    }
    for (image, (k, u)) in &by_image {
        let sent = stats.submissions_by_image.get(*image).copied().unwrap_or(0);
        assert!(
            *k <= sent && sent <= k + u,
            "{image}: the sandbox received {sent} submission(s); the ledger knows {k} and holds {u} uncertain"
        );
    }
    for image in stats.submissions_by_image.keys() {
        assert!(
            by_image.contains_key(image.as_str()),
            "{image} was submitted but is not in the ledger"
        );
    }

    // Charges, request by request.
    let charges: BTreeMap<&str, Decimal> = stats
        .charges_by_request
        .iter()
        .map(|(rid, usd)| (rid.as_str(), dec(usd)))
        .collect();
    for (rid, a) in &known {
        let sandbox = charges.get(rid).copied();
        match a.state.as_str() {
            "completed" => assert_eq!(
                a.actual, sandbox,
                "job {} attempt {} ({rid}): ledger vs sandbox charge",
                a.job_id, a.attempt
            ),
            "error" => {
                assert_eq!(sandbox, None, "{rid}: ERROR is not charged");
                assert_eq!(a.actual, Some(Decimal::ZERO), "{rid}: ERROR is not charged");
            }
            "failed" => {
                assert_eq!(sandbox, None, "{rid}: the sandbox charges COMPLETED only");
                assert_eq!(a.actual, None, "{rid}: a FAILED charge is unknown");
            }
            "stalled" => {
                // No longer polled, but the gateway may finish it and charge it.
                assert_eq!(a.actual, None, "{rid}: a stalled charge is unknown");
                if let Some(usd) = sandbox {
                    assert!(a.estimated >= Some(usd), "{rid}: within the estimate");
                    audit.stalled_charged += usd;
                }
            }
            other => panic!("job {} attempt {} ended {other}", a.job_id, a.attempt),
        }
        if let Some(usd) = a.actual {
            audit.ledger_charged += usd;
        }
    }
    // Charges of request ids the ledger never learned: each belongs to an image with an
    // uncertain attempt (sizes are distinct, so the amount names the image), at most one each.
    let by_charge: HashMap<Decimal, &str> = {
        let mut map = HashMap::new();
        for a in &all {
            if let Some(e) = a.estimated {
                let previous = map.insert(e, a.image.as_str());
                assert!(
                    previous.is_none() || previous == Some(a.image.as_str()),
                    "two images cost {e}: the test needs distinct sizes"
                );
            }
        }
        map
    };
    let mut orphans: BTreeMap<&str, u64> = BTreeMap::new();
    for (rid, usd) in &charges {
        if known.contains_key(rid) {
            continue;
        }
        let image = by_charge
            .get(usd)
            .unwrap_or_else(|| panic!("the sandbox charged {usd} for {rid}, which no job costs"));
        *orphans.entry(image).or_default() += 1;
        audit.orphans += 1;
        audit.orphan_charged += *usd;
    }
    for (image, (k, u)) in &by_image {
        let n = orphans.get(image).copied().unwrap_or(0);
        let sent = stats.submissions_by_image.get(*image).copied().unwrap_or(0);
        assert!(
            n <= *u && n <= sent - k,
            "{image}: {n} charge(s) the ledger does not know, with {u} uncertain attempt(s) and {sent} submission(s) for {k} known"
        );
        // With no FAILED or ERROR job at the gateway, every job it made is charged: each
        // submission the ledger cannot name is one of these charges.
        if stats.failed + stats.errored == 0 {
            assert_eq!(n, sent - k, "{image}: every unknown submission is charged");
        }
    }
    audit.sandbox_charged = dec(&stats.charged_usd);
    assert_eq!(
        audit.sandbox_charged,
        audit.ledger_charged + audit.orphan_charged + audit.stalled_charged,
        "sandbox total = ledger total + charges behind uncertain attempts and stalled jobs"
    );
    let twice = w.count(
        "SELECT count(*) FROM (SELECT job_id, attempt FROM events WHERE kind = 'charge'
         GROUP BY job_id, attempt HAVING count(*) > 1)",
    );
    assert_eq!(twice, 0, "an attempt was charged twice");

    // Outputs: whole files, as the ledger describes them.
    let mut stmt = db
        .prepare(
            "SELECT o.job_id, o.path, o.bytes, o.sha256, o.width, o.height, j.input_width * j.upscale, j.input_height * j.upscale
             FROM outputs o JOIN jobs j ON j.id = o.job_id AND j.attempt = o.attempt",
        )
        .unwrap();
    type OutputRow = (i64, String, i64, String, (u32, u32), (u32, u32));
    let outputs: Vec<OutputRow> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                (r.get(4)?, r.get(5)?),
                (r.get(6)?, r.get(7)?),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let completed = w.count("SELECT count(*) FROM jobs WHERE state = 'completed'") as usize;
    assert_eq!(outputs.len(), completed, "one output per completed job");
    for (job, path, bytes, sha, size, (ew, eh)) in outputs {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("job {job}: {path}: {e}"));
        assert_eq!(data.len() as i64, bytes, "job {job}: {path} is whole");
        assert_eq!(
            codeformer_ledger::engine::hex(&Sha256::digest(&data)),
            sha,
            "job {job}: {path}"
        );
        assert_eq!(size, (ew, eh), "job {job}: output size");
        assert_eq!(png_size(Path::new(&path)), (ew, eh), "job {job}: the file");
        audit.outputs += 1;
    }
    if let Ok(dir) = std::fs::read_dir(w.out_dir()) {
        let partial: Vec<String> = dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".partial-"))
            .collect();
        assert!(partial.is_empty(), "temporary downloads left: {partial:?}");
    }
    audit
}

/// Runs `run` until nothing is left to do: after a kill (or a lost answer) jobs are
/// uncertain, and only `--resubmit-uncertain` sends them again. Jobs that failed or errored
/// are final (exit 3).
fn run_to_the_end(w: &World, extra: &[&str]) {
    let uncertain = || w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'");
    for _ in 0..8 {
        let out = w.run(extra);
        match out.status.code() {
            Some(0) => return,
            Some(3) if uncertain() > 0 => {
                let mut again = extra.to_vec();
                again.push("--resubmit-uncertain");
                let out = w.run(&again);
                assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
            }
            Some(3) => return,
            _ => panic!("run failed: {}", text(&out)),
        }
    }
    panic!("run never finished: {} uncertain", uncertain());
}

#[test]
fn crash_kill_nine_at_random_moments_then_resume() {
    let seed = env_or("CRASH_SEED", 7);
    let config = SandboxConfig {
        seed,
        ..SandboxConfig::default()
    };
    let jobs = env_or("CRASH_JOBS", 150) as usize;
    crash(
        "crash",
        config,
        jobs,
        env_or("CRASH_KILLS", 10),
        &["completed"],
        false,
    );
}

#[test]
fn crash_two_engines_at_once_through_a_symlink_and_a_hard_link_then_resume() {
    let config = SandboxConfig {
        seed: env_or("CRASH_SEED", 7) + 2,
        ..SandboxConfig::default()
    };
    crash("twins", config, 60, 6, &["completed"], true);
}

#[test]
fn crash_kill_nine_on_a_faulty_gateway_then_resume() {
    let config = SandboxConfig {
        fail_rate: 0.1,
        error_rate: 0.1,
        flaky_rate: 0.05,
        drop_rate: 0.05,
        rate_limit_rps: Some(80.0),
        seed: env_or("CRASH_SEED", 7) + 1,
        ..SandboxConfig::default()
    };
    crash(
        "storm",
        config,
        80,
        6,
        &["completed", "failed", "error"],
        false,
    );
}

/// Kills `run` with SIGKILL `kills` times at seeded random moments, resumes until done, and
/// audits the ledger against the sandbox. With `twins`, every round starts two engines at the
/// same instant, one through a symbolic link to the ledger and one through a hard link: one
/// of them must exit 5, and nothing may be sent twice.
fn crash(name: &str, config: SandboxConfig, jobs: usize, kills: u64, finals: &[&str], twins: bool) {
    let mut dice = fastrand::Rng::with_seed(config.seed);
    let w = World::timed(SandboxConfig {
        render: false,
        queue_ms: 20,
        processing_ms: (100, 400),
        latency_ms: 40,
        ..config
    });
    let urls = images(&w, jobs);
    let manifest = w.manifest(&format!("{name}.txt"), &urls);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let started = Instant::now();
    let mut killed = 0;
    let mut finished_early = false;
    let mut recovered = 0;
    for round in 0..kills {
        let log = w.dir.path().join(format!("run-{round}.log"));
        // Every third run also resends what earlier kills left uncertain, so that kills land
        // in resubmissions too.
        let mut args = vec!["--batch", name, "--concurrency", "6"];
        if round % 3 == 2 {
            args.push("--resubmit-uncertain");
        }
        let mut children = if twins {
            let names = links(&w);
            vec![
                spawn_run_as(&w, &names[0], &args, &log),
                spawn_run_as(
                    &w,
                    &names[1],
                    &args,
                    &w.dir.path().join(format!("twin-{round}.log")),
                ),
            ]
        } else {
            vec![w.spawn_run(&args, &log)]
        };
        let life = Duration::from_millis(dice.u64(100..1000));
        let end = Instant::now() + life;
        let mut exited: Vec<Option<Option<i32>>> = vec![None; children.len()];
        while Instant::now() < end && exited.iter().any(Option::is_none) {
            for (child, exit) in children.iter_mut().zip(exited.iter_mut()) {
                if exit.is_none() {
                    if let Some(status) = child.try_wait().unwrap() {
                        *exit = Some(status.code());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut done = false;
        for (child, exit) in children.iter_mut().zip(exited) {
            match exit {
                Some(code) => {
                    let log = log_of(&log);
                    assert!(
                        matches!(code, Some(0 | 3)) || (twins && code == Some(5)),
                        "round {round}: {code:?}\n{log}"
                    );
                    done |= code == Some(0);
                }
                None => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    killed += 1;
                }
            }
        }
        if done {
            finished_early = true;
            break;
        }
        recovered += w.count("SELECT count(*) FROM jobs WHERE state = 'submitting'");
    }
    run_to_the_end(&w, &["--batch", name, "--concurrency", "6"]);
    let resubmitted = w.count("SELECT count(*) FROM events WHERE kind = 'retry'");
    let audit = audit(&w, finals);
    assert_eq!(audit.jobs, jobs);
    // The report names every possible double charge, and its worst case covers them.
    let out = w.cli(&["report", "--by", "batch", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["possible_double_charges"],
        audit.uncertain_attempts as u64
    );
    assert_eq!(
        dec(report["total"]["charged"].as_str().unwrap()),
        audit.ledger_charged
    );
    assert!(dec(report["total"]["charge_unknown"].as_str().unwrap()) >= audit.orphan_charged);
    eprintln!(
        "{name}: {jobs} jobs, {} attempts, {killed} kills{}, {recovered} caught mid-submission, {resubmitted} resubmitted, {} uncertain attempt(s), {} charge(s) the ledger never learned ({} USD); charged: ledger {} USD, sandbox {} USD; {:.1}s",
        audit.attempts,
        if finished_early { " (finished before the last)" } else { "" },
        audit.uncertain_attempts,
        audit.orphans,
        audit.orphan_charged,
        audit.ledger_charged,
        audit.sandbox_charged,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn regression_partial_download_left_by_a_killed_engine_is_removed_on_resume() {
    let w = World::new();
    let url = w.png("a.png", 8, 8);
    let manifest = w.manifest("one.txt", &[url]);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let out_dir = w.out_dir();
    std::fs::create_dir_all(&out_dir).unwrap();
    let left = format!(".partial-{dead}-Ab12Cd");
    let live = format!(".partial-{}-Ef34Gh", std::process::id());
    for name in [&left, &live, ".partial-Ij56Kl", "mine.png"] {
        std::fs::write(out_dir.join(name), b"half a file").unwrap();
    }
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!out_dir.join(&left).exists(), "the dead process's download");
    for name in [&live, ".partial-Ij56Kl", "mine.png"] {
        assert!(
            out_dir.join(name).exists(),
            "{name} is not the engine's to remove"
        );
    }
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM events WHERE kind = 'cleanup' AND detail LIKE '%{left}%'"
        )),
        1
    );
}

// ---- gateway faults ----

/// A world with `count` inputs enqueued as batch `faults`.
fn fault_world(config: SandboxConfig, count: usize) -> World {
    let w = World::with(SandboxConfig {
        render: false,
        ..config
    });
    let urls = images(&w, count);
    let manifest = w.manifest("faults.txt", &urls);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w
}

const FAULT_RUN: [&str; 4] = ["--batch", "faults", "--concurrency", "6"];

/// Every submission whose answer was a 5xx or never came is uncertain, and every uncertain
/// attempt is one of those (or was caught mid-submission by a kill).
fn uncertain_only_from_lost_answers(w: &World) -> i64 {
    let lost = "e.kind = 'submit_answer' AND (e.http_status IS NULL OR e.http_status >= 500)";
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM events e JOIN attempts a ON a.job_id = e.job_id AND a.attempt = e.attempt
             WHERE {lost} AND a.state != 'uncertain'"
        )),
        0,
        "a lost answer went somewhere other than uncertain"
    );
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM attempts a WHERE a.state = 'uncertain' AND NOT EXISTS
             (SELECT 1 FROM events e WHERE e.job_id = a.job_id AND e.attempt = a.attempt AND {lost})"
        )),
        0,
        "an attempt is uncertain without a lost answer"
    );
    w.count("SELECT count(*) FROM attempts WHERE state = 'uncertain'")
}

#[test]
fn rate_limited_runs_wait_and_send_each_image_once() {
    let w = fault_world(
        SandboxConfig {
            rate_limit_rps: Some(25.0),
            ..SandboxConfig::default()
        },
        40,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stats = w.sandbox.stats();
    assert!(
        stats.answered_by_code.get(&429).copied().unwrap_or(0) > 0,
        "the limit was hit: {stats:?}"
    );
    assert!(stats.submissions_by_image.values().all(|n| *n == 1));
    assert!(w.count("SELECT count(*) FROM events WHERE http_status = 429") > 0);
    audit(&w, &["completed"]);
}

#[test]
fn server_errors_make_submissions_uncertain_and_nothing_else() {
    let w = fault_world(
        SandboxConfig {
            flaky_rate: 0.25,
            seed: 3,
            ..SandboxConfig::default()
        },
        40,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let uncertain = uncertain_only_from_lost_answers(&w);
    assert!(uncertain > 0, "some submissions got a 500");
    assert!(stdout(&out).contains("uncertain"), "{}", text(&out));
    // An injected 500 is not carried out: the sandbox never saw those submissions.
    audit(&w, &["completed", "uncertain"]);
    run_to_the_end(&w, &FAULT_RUN);
    uncertain_only_from_lost_answers(&w);
    audit(&w, &["completed"]);
}

#[test]
fn dropped_connections_make_submissions_uncertain_and_polls_retry() {
    let w = fault_world(
        SandboxConfig {
            drop_rate: 0.2,
            seed: 5,
            ..SandboxConfig::default()
        },
        40,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let uncertain = uncertain_only_from_lost_answers(&w);
    assert!(uncertain > 0, "some submissions lost their answer");
    assert!(
        w.count("SELECT count(*) FROM events WHERE kind = 'poll' AND http_status IS NULL") > 0,
        "some polls lost their answer and were retried"
    );
    // A dropped submission was carried out: the sandbox has (and charges) a job the ledger
    // cannot name, one per uncertain attempt.
    let first = audit(&w, &["completed", "uncertain"]);
    assert_eq!(first.orphans as i64, uncertain);
    run_to_the_end(&w, &FAULT_RUN);
    uncertain_only_from_lost_answers(&w);
    let last = audit(&w, &["completed"]);
    assert!(last.orphans as i64 >= uncertain);
}

#[test]
fn slow_answers_finish_every_job() {
    let w = fault_world(
        SandboxConfig {
            latency_ms: 150,
            ..SandboxConfig::default()
        },
        12,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        w.count("SELECT min(latency_ms) FROM events WHERE kind = 'submit_answer'") >= 150,
        "the latency is recorded"
    );
    audit(&w, &["completed"]);
}

#[test]
fn failed_and_errored_jobs_end_in_their_states_with_the_right_charges() {
    let w = fault_world(
        SandboxConfig {
            fail_rate: 0.25,
            error_rate: 0.25,
            seed: 11,
            ..SandboxConfig::default()
        },
        40,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stats = settled(&w);
    let state = |s: &str| w.count(&format!("SELECT count(*) FROM jobs WHERE state = '{s}'"));
    assert_eq!(state("failed") as u64, stats.failed);
    assert_eq!(state("error") as u64, stats.errored);
    assert_eq!(state("completed") as u64, stats.completed);
    assert!(stats.failed > 0 && stats.errored > 0, "{stats:?}");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs j JOIN attempts a ON a.job_id = j.id WHERE j.state = 'failed' AND j.error IS NULL"),
        0,
        "the gateway's error is kept"
    );
    audit(&w, &["completed", "failed", "error"]);
    // The report counts FAILED as "charge unknown" and ERROR as free.
    let out = w.cli(&["report", "--by", "state", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["charged"], stats.charged_usd.as_str());
    assert_eq!(report["total"]["failed"], stats.failed);
    assert_eq!(report["total"]["errored"], stats.errored);
}

#[test]
fn regression_a_job_whose_size_was_cached_is_sent_when_later_jobs_follow_it() {
    // The size of a.png is cached by the first batch; in the second, the cached job used to
    // be passed over for good once b.png moved the send cursor on, and the run never ended.
    let w = World::with(SandboxConfig {
        render: false,
        ..SandboxConfig::default()
    });
    let a = w.png("a.png", 20, 10);
    let b = w.png("b.png", 30, 10);
    let first = w.manifest("first.txt", std::slice::from_ref(&a));
    let second = w.manifest("second.txt", &[a, b]);
    let out = w.cli(&["batch", first.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.run(&[]).status.code(), Some(0));
    let out = w.cli(&[
        "batch",
        second.to_str().unwrap(),
        "--enqueue-only",
        "--upscale",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("second.log");
    let mut child = w.spawn_run(&["--batch", "second"], &log);
    let code = wait_for(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", log_of(&log));
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'estimate' AND detail LIKE '%cached%'"),
        1
    );
    audit(&w, &["completed"]);
}

// ---- manifests through the command line ----

#[test]
fn manifest_errors_name_file_line_and_field_and_record_nothing() {
    let w = World::new();
    let [a, b, c] = ["a.png", "b.png", "c.png"].map(|n| w.png(n, 10, 10));
    let cases = [
        (
            "bad.txt",
            format!("# photos\n{a}\n\nftp://example.test/x.png\n"),
            "bad.txt:4",
            "image",
        ),
        (
            "bad.csv",
            format!("image,fidelity,upscale\n{b},0.5,2\n{b},1.5,4\n"),
            "bad.csv:3",
            "fidelity",
        ),
        (
            "bad.jsonl",
            format!("{{\"image\": \"{c}\"}}\n{{\"image\": \"{c}\", \"upscale\": \"4\"}}\n"),
            "bad.jsonl:2",
            "upscale",
        ),
    ];
    for (name, body, place, field) in &cases {
        let path = w.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = w.cli(&["batch", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains(place), "{name}: names {place}: {err}");
        assert!(err.contains(field), "{name}: names {field}: {err}");
        assert!(
            !w.ledger().exists() || w.count("SELECT count(*) FROM jobs") == 0,
            "{name}: nothing recorded"
        );
    }
    assert_eq!(w.sandbox.stats().api_requests, 0);

    // --skip-invalid records the good rows and lists the bad ones.
    for (name, _, place, _) in &cases {
        let path = w.dir.path().join(name);
        let out = w.cli(&[
            "batch",
            path.to_str().unwrap(),
            "--skip-invalid",
            "--enqueue-only",
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert!(stderr(&out).contains(place), "{name}: {}", text(&out));
        assert!(stdout(&out).contains("1 added"), "{name}: {}", text(&out));
    }
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        3
    );
}

#[test]
fn the_same_manifest_again_adds_nothing_even_after_a_kill() {
    let w = World::timed(SandboxConfig {
        render: false,
        queue_ms: 20,
        processing_ms: (100, 200),
        latency_ms: 60,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 12);
    let csv = w.dir.path().join("shoot.csv");
    let mut body = String::from("image,upscale,key\n");
    for (i, url) in urls.iter().enumerate() {
        body.push_str(&format!("{url},{},k{i}\n", 2 + i % 2));
    }
    std::fs::write(&csv, body).unwrap();
    let batch = |extra: &[&str]| {
        let mut args = vec![
            "batch",
            csv.to_str().unwrap(),
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            "out",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // Killed part-way through, the batch continues where it stopped.
    let log = w.dir.path().join("first.log");
    let args = batch(&[]);
    let mut child = w
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let completed = || {
        w.ledger().exists()
            && w.db()
                .query_row(
                    "SELECT count(*) FROM jobs WHERE state = 'completed'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0)
                >= 2
    };
    while !completed() {
        assert!(Instant::now() < end, "nothing completed: {}", log_of(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(log_of(&log).contains("12 added"), "{}", log_of(&log));
    let args = batch(&[]);
    let out = w.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert!(stdout(&out).contains("0 added"), "{}", text(&out));
    run_to_the_end(&w, &["--batch", "shoot"]);
    let before = w.sandbox.stats().submissions;
    let args = batch(&[]);
    let out = w.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("12 row(s), 0 added, 12 already in the ledger"),
        "{}",
        text(&out)
    );
    assert_eq!(w.sandbox.stats().submissions, before, "nothing sent again");
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 12);
    audit(&w, &["completed"]);
}

#[test]
fn enqueue_only_needs_no_gateway() {
    let w = World::new();
    let urls = images(&w, 5);
    let m = w.manifest("offline.txt", &urls);
    let closed = closed_url();
    let out = w.cli_env(
        &["batch", m.to_str().unwrap(), "--enqueue-only"],
        &[("PIXAZO_BASE_URL", &closed)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("5 added"), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        5
    );
    let stats = w.sandbox.stats();
    assert_eq!(
        (stats.api_requests, stats.static_bytes_served),
        (0, 0),
        "no network"
    );
}

/// A base URL nobody listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

// ---- one engine per ledger ----

/// Starts `run` on a slow gateway and waits until it holds the ledger.
fn running_engine(w: &World, extra: &[&str], log: &Path) -> std::process::Child {
    let child = w.spawn_run(extra, log);
    let lock = w.dir.path().join("ledger.db.lock");
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != child.id().to_string() {
        assert!(Instant::now() < end, "the engine never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A symbolic link and a hard link to the ledger (made once), for engines started through them.
fn links(w: &World) -> [std::path::PathBuf; 2] {
    let symlink = w.dir.path().join("symlink.db");
    let hard = w.dir.path().join("hardlink.db");
    if !hard.exists() {
        std::os::unix::fs::symlink(w.ledger(), &symlink).unwrap();
        std::fs::hard_link(w.ledger(), &hard).unwrap();
    }
    [symlink, hard]
}

/// Every other way to name the ledger: links, a path through `..`, a relative path (the
/// binary runs in the world's folder).
fn other_names(w: &World) -> Vec<(&'static str, std::path::PathBuf)> {
    let [symlink, hard] = links(w);
    std::fs::create_dir_all(w.dir.path().join("sub")).unwrap();
    vec![
        ("a symbolic link", symlink),
        ("a hard link", hard),
        ("a path through ..", w.dir.path().join("sub/../ledger.db")),
        ("a relative path", "ledger.db".into()),
    ]
}

/// [`World::spawn_run`] with the ledger named by `ledger`.
fn spawn_run_as(w: &World, ledger: &Path, extra: &[&str], log: &Path) -> std::process::Child {
    let args = w.run_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let file = std::fs::File::create(log).unwrap();
    w.command(&args)
        .env("CODEFORMER_LEDGER", ledger)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap()
}

#[test]
fn regression_a_second_engine_through_another_name_exits_5_and_submit_still_works() {
    let w = World::with(SandboxConfig {
        render: false,
        latency_ms: 150,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 24);
    let m = w.manifest("slow.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names = other_names(&w);
    let log = w.dir.path().join("engine.log");
    let mut engine = running_engine(&w, &["--concurrency", "2"], &log);
    let pid = engine.id().to_string();
    let mut late = Vec::new();
    for (i, (what, name)) in names.iter().enumerate() {
        let env = [("CODEFORMER_LEDGER", name.to_str().unwrap())];
        let run = w.run_args(&[]);
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        let out = w.cli_env(&run, &env);
        assert_eq!(out.status.code(), Some(5), "{what}: {}", text(&out));
        assert!(
            stderr(&out).contains(&format!("pid {pid}")),
            "{what}: {}",
            text(&out)
        );
        let url = w.png(&format!("late{i}.png"), 200 + i as u32, 8);
        let out = w.cli_env(&["submit", &url], &env);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", text(&out));
        assert!(
            stdout(&out).contains(&format!("another engine (pid {pid}) holds the ledger")),
            "{what}: {}",
            text(&out)
        );
        late.push(url);
    }
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the engine ran all along"
    );
    let code = wait_for(&mut engine, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", log_of(&log));
    let stats = w.sandbox.stats();
    for url in &late {
        assert_eq!(stats.submissions_by_image[url], 1, "{url}");
    }
    audit(&w, &["completed"]);
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        28
    );
}

#[test]
fn regression_two_engines_started_together_through_links_send_each_job_once() {
    let w = World::with(SandboxConfig {
        render: false,
        latency_ms: 20,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 40);
    let m = w.manifest("twins.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names = links(&w);
    let logs = [w.dir.path().join("a.log"), w.dir.path().join("b.log")];
    let mut engines = [
        spawn_run_as(&w, &names[0], &["--concurrency", "4"], &logs[0]),
        spawn_run_as(&w, &names[1], &["--concurrency", "4"], &logs[1]),
    ];
    let codes: Vec<Option<i32>> = engines
        .iter_mut()
        .map(|e| wait_for(e, Duration::from_secs(60)))
        .collect();
    for (code, log) in codes.iter().zip(&logs) {
        assert!(matches!(code, Some(0 | 5)), "{code:?}: {}", log_of(log));
    }
    assert!(codes.contains(&Some(0)), "{codes:?}");
    let stats = w.sandbox.stats();
    assert_eq!(stats.submissions, 40, "{stats:?}");
    for url in &urls {
        assert_eq!(stats.submissions_by_image[url], 1, "{url}");
    }
    audit(&w, &["completed"]);
}

#[test]
fn a_second_engine_exits_5_while_readers_and_submit_work() {
    let w = World::with(SandboxConfig {
        render: false,
        latency_ms: 150,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 14);
    let late = w.png("late.png", 99, 8);
    let m = w.manifest("slow.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("engine.log");
    let mut engine = running_engine(&w, &["--concurrency", "2"], &log);
    let pid = engine.id().to_string();

    let out = w.cli(&["submit", &late]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("another engine (pid {pid}) holds the ledger")),
        "{}",
        text(&out)
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("pid {pid}")),
        "{}",
        text(&out)
    );
    for args in [
        &["report"][..],
        &["report", "--format", "json"],
        &["jobs"],
        &["jobs", "--format", "json"],
        &["show", "1"],
    ] {
        let out = w.cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the engine was running all along"
    );
    let code = wait_for(&mut engine, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", log_of(&log));
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM jobs WHERE image_url = '{late}' AND state = 'completed'"
        )),
        1,
        "the running engine picked the submitted job up"
    );
    assert_eq!(w.sandbox.stats().submissions_by_image[&late], 1);
    audit(&w, &["completed"]);
}

// ---- retries, deadlines, offline, Ctrl-C ----

#[test]
fn retry_makes_new_attempts_and_keeps_the_old_ones_with_their_costs() {
    let w = fault_world(
        SandboxConfig {
            fail_rate: 0.4,
            error_rate: 0.3,
            seed: 2,
            ..SandboxConfig::default()
        },
        12,
    );
    let out = w.run(&FAULT_RUN);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let failed: Vec<i64> = {
        let db = w.db();
        let mut stmt = db
            .prepare("SELECT id FROM jobs WHERE state IN ('failed', 'error') ORDER BY id")
            .unwrap();
        let ids = stmt.query_map([], |r| r.get(0)).unwrap();
        ids.map(Result::unwrap).collect()
    };
    assert!(!failed.is_empty());
    // Never automatic: a plain run sends nothing again.
    let before = w.sandbox.stats().submissions;
    assert_eq!(w.run(&FAULT_RUN).status.code(), Some(3));
    assert_eq!(w.sandbox.stats().submissions, before);
    assert_eq!(
        w.count("SELECT count(*) FROM attempts WHERE attempt > 1"),
        0
    );

    let mut retry = FAULT_RUN.to_vec();
    retry.extend(["--retry", "failed,error"]);
    let out = w.run(&retry);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert_eq!(w.times_not_in_millis(), 0);
    for id in &failed {
        let n = w.count(&format!(
            "SELECT count(*) FROM attempts WHERE job_id = {id}"
        ));
        assert_eq!(n, 2, "job {id}: both attempts kept");
        assert_eq!(
            w.count(&format!(
                "SELECT count(*) FROM attempts WHERE job_id = {id} AND attempt = 1
                 AND state IN ('failed', 'error') AND request_id IS NOT NULL
                 AND estimated_cost IS NOT NULL
                 AND (state = 'failed' AND actual_cost IS NULL OR state = 'error' AND actual_cost = '0')"
            )),
            1,
            "job {id}: the first attempt keeps its outcome and cost"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT count(*) FROM attempts WHERE job_id = {id} AND attempt = 2
                 AND request_id IS NOT NULL AND estimated_cost IS NOT NULL"
            )),
            1,
            "job {id}: the retry was sent"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT count(*) FROM events WHERE job_id = {id} AND kind = 'retry'"
            )),
            1
        );
    }
    let stats = w.sandbox.stats();
    let twice = stats
        .submissions_by_image
        .values()
        .filter(|n| **n == 2)
        .count();
    assert_eq!(twice, failed.len(), "each retried image was sent twice");
    audit(&w, &["completed", "failed", "error"]);
}

#[test]
fn a_deadline_marks_slow_jobs_stalled() {
    let w = World::timed(SandboxConfig {
        render: false,
        queue_ms: 10,
        processing_ms: (1500, 1500),
        ..SandboxConfig::default()
    });
    let urls = images(&w, 3);
    let m = w.manifest("slow.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.run(&["--deadline", "400ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // Stalled, not completed (they take 1.5 s): the run did not wait for them.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'stalled'"),
        3
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'stalled' AND next_poll_at IS NULL AND reason LIKE '%deadline%may still be charged%'"),
        3
    );
    // The gateway finishes them anyway, and charges them: the report counts them as unknown.
    let audit = audit(&w, &["stalled"]);
    assert_eq!(audit.ledger_charged, Decimal::ZERO);
    let out = w.cli(&["report", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["stalled"], 3);
    assert_eq!(
        dec(report["total"]["charge_unknown"].as_str().unwrap()),
        audit.sandbox_charged,
        "the worst case is what the gateway charged"
    );
    // A later run does not poll stalled jobs again.
    let polls = w.count("SELECT count(*) FROM events WHERE kind = 'poll'");
    assert_eq!(w.run(&[]).status.code(), Some(3));
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'poll'"),
        polls
    );
}

#[test]
fn an_unreachable_gateway_leaves_jobs_planned_and_the_next_run_sends_them() {
    let w = World::with(SandboxConfig {
        render: false,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 6);
    let m = w.manifest("offline.txt", &urls);
    let out = w.cli_env(
        &["batch", m.to_str().unwrap(), "--quiet", "--out-dir", "out"],
        &[("PIXAZO_BASE_URL", &closed_url())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot be reached") && err.contains("stay planned"),
        "{err}"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        6
    );
    assert_eq!(w.sandbox.stats().api_requests, 0);
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    audit(&w, &["completed"]);
}

#[test]
fn ctrl_c_stops_sending_records_what_is_in_flight_and_run_resumes() {
    let w = World::with(SandboxConfig {
        render: false,
        latency_ms: 250,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 16);
    let m = w.manifest("int.txt", &urls);
    let out = w.cli(&["batch", m.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("int.log");
    let mut child = w.spawn_run(&["--concurrency", "4"], &log);
    let end = Instant::now() + Duration::from_secs(10);
    while w.count("SELECT count(*) FROM jobs WHERE state = 'submitting'") == 0 {
        assert!(Instant::now() < end, "nothing was sent: {}", log_of(&log));
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let code = wait_for(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{}", log_of(&log));
    assert!(log_of(&log).contains("interrupted"), "{}", log_of(&log));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state IN ('submitting', 'uncertain')"),
        0,
        "the answers of what was in flight were recorded"
    );
    assert!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'") > 0,
        "it stopped sending"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'engine_stop' AND detail LIKE '%Interrupted%'"),
        1
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(w
        .sandbox
        .stats()
        .submissions_by_image
        .values()
        .all(|n| *n == 1));
    audit(&w, &["completed"]);
}

#[test]
fn a_budget_holds_across_kills_counting_uncertain_attempts_at_their_estimate() {
    let seed = env_or("CRASH_SEED", 7) + 2;
    let mut dice = fastrand::Rng::with_seed(seed);
    let w = World::timed(SandboxConfig {
        render: false,
        queue_ms: 20,
        processing_ms: (100, 300),
        latency_ms: 40,
        seed,
        ..SandboxConfig::default()
    });
    let urls = images(&w, 80);
    let manifest = w.manifest("capped.txt", &urls);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // About half of what the 80 jobs cost.
    let budget = "0.00015";
    let args = [
        "--batch",
        "capped",
        "--concurrency",
        "6",
        "--budget",
        budget,
    ];
    for round in 0..8 {
        let log = w.dir.path().join(format!("capped-{round}.log"));
        let mut extra = args.to_vec();
        if round % 3 == 2 {
            extra.push("--resubmit-uncertain");
        }
        let mut child = w.spawn_run(&extra, &log);
        std::thread::sleep(Duration::from_millis(dice.u64(100..800)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        child.wait().unwrap();
    }
    let mut code = None;
    for _ in 0..6 {
        let out = w.run(&args);
        code = out.status.code();
        if w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'") > 0 {
            let mut again = args.to_vec();
            again.push("--resubmit-uncertain");
            w.run(&again);
            continue;
        }
        break;
    }
    assert_eq!(code, Some(4), "stopped by the budget");
    let stats = settled(&w);
    let charged = dec(&stats.charged_usd);
    eprintln!(
        "budget {budget}: sandbox charged {charged}, {} held, {} uncertain attempts",
        w.count("SELECT count(*) FROM jobs WHERE state = 'held'"),
        w.count("SELECT count(*) FROM attempts WHERE state = 'uncertain'")
    );
    assert!(charged <= dec(budget), "the gateway charged {charged}");
    audit(&w, &["completed", "held", "planned"]);
}

#[test]
fn regression_run_without_batch_left_owed_hooks_unrun_and_exited_0() {
    // Killed during a hook, the batch's job owes it; `run` without --batch has no hooks
    // loaded, and used to report success while the hook never ran.
    let w = World::with(SandboxConfig {
        render: false,
        ..SandboxConfig::default()
    });
    let url = w.png("a.png", 12, 8);
    let m = w.manifest("hooked.txt", &[url]);
    let hook = w.dir.path().join("slow.lua");
    std::fs::write(
        &hook,
        r#"function on_complete(job)
             fs.write("started-" .. job.id, tostring(job.rerun))
             if not job.rerun then os.execute("sleep 20") end
           end"#,
    )
    .unwrap();
    let out_dir = w.out_dir();
    let log = w.dir.path().join("hooked.log");
    let mut child = w
        .command(&[
            "batch",
            m.to_str().unwrap(),
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--hook",
            hook.to_str().unwrap(),
            "--trusted-hooks",
            "--hook-timeout",
            "30s",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = out_dir.join("started-1");
    let end = Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(
            Instant::now() < end,
            "the hook never started: {}",
            log_of(&log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = w.cli(&["run", "--quiet", "--poll-interval", "50ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stdout(&out).contains("1 job(s) of batch hooked still owe their hooks")
            && stdout(&out).contains("run --batch hooked"),
        "{}",
        text(&out)
    );
    let out = w.cli(&[
        "run",
        "--batch",
        "hooked",
        "--quiet",
        "--poll-interval",
        "50ms",
        "--trusted-hooks",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "true");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE post IS NOT NULL"),
        0
    );
}

#[test]
fn a_refused_key_stops_sending_and_leaves_jobs_planned() {
    let w = fault_world(
        SandboxConfig {
            api_key: Some("right-key".into()),
            ..SandboxConfig::default()
        },
        8,
    );
    let out = w.cli_env(
        &w.run_args(&FAULT_RUN)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("PIXAZO_API_KEY", "wrong-key")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("HTTP 401") && stderr(&out).contains("PIXAZO_API_KEY"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("wrong-key"), "the key is never shown");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        8
    );
    let stats = w.sandbox.stats();
    assert_eq!(stats.accepted, 0);
    assert!(
        stats.answered_by_code.get(&401).copied().unwrap_or(0) <= 6,
        "it stopped after what was in flight: {stats:?}"
    );
    let out = w.cli_env(
        &w.run_args(&FAULT_RUN)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("PIXAZO_API_KEY", "right-key")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    audit(&w, &["completed"]);
}
