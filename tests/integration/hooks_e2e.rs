//! Lua hooks end to end: the bundled example hooks run by the engine against the sandbox,
//! exactly once, recorded, and surviving failures and crashes.

use crate::common::*;
use std::path::{Path, PathBuf};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/hooks")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn manifest(w: &World, name: &str, rows: &[String]) -> PathBuf {
    let path = w.dir.path().join(name);
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
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
fn example_hooks_write_sidecars_tune_skip_and_summarise() {
    let w = World::new();
    let small = w.png("small.png", 40, 30);
    let big = w.png("big.png", 600, 600);
    let m = manifest(&w, "shoot.txt", &[small, big]);
    let (sidecar, tune, summary) = (
        example("sidecar.lua"),
        example("tune.lua"),
        example("summary.lua"),
    );
    let out = batch(
        &w,
        &m,
        &["--hook", &sidecar, "--hook", &tune, "--hook", &summary],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // on_submit raised the small input's fidelity and left the big one alone.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE image_url LIKE '%small.png' AND fidelity = '0.7'"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE image_url LIKE '%big.png' AND fidelity = '0.5'"),
        1
    );
    // on_complete wrote one sidecar per output, with the exact charge.
    let outputs: Vec<(String, String, String)> = {
        let db = w.db();
        let mut s = db.prepare("SELECT o.path, a.actual_cost, a.finished_at FROM outputs o JOIN attempts_readable a ON a.job_id = o.job_id AND a.attempt = o.attempt").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(outputs.len(), 2);
    for (path, cost, finished_at) in outputs {
        let json_path = Path::new(&path).with_extension("json");
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        assert_eq!(side["actual_cost"], cost.as_str());
        // Hooks get times as RFC 3339 text, as the readable view shows them.
        assert_eq!(side["finished_at"], finished_at.as_str());
    }
    // on_batch_done ran once with the batch's counts.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.out_dir().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["completed"], 2);
    assert_eq!(summary["batch"], "shoot");
    // Every call is recorded: 2 on_submit (tune), 2 on_complete (sidecar), 1 on_batch_done.
    assert_eq!(
        w.count("SELECT count(*) FROM hook_runs WHERE status = 'ok'"),
        5
    );
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'hook'"),
        5
    );

    // Running again owes nothing: no hook runs again.
    let out = w.run(&["--batch", "shoot"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.count("SELECT count(*) FROM hook_runs"), 5);
}

#[test]
fn on_submit_can_skip_a_job_and_a_bad_change_is_refused() {
    let w = World::new();
    let a = w.png("a.png", 20, 20);
    let b = w.png("b.png", 20, 20);
    let hook = w.dir.path().join("pick.lua");
    std::fs::write(
        &hook,
        r#"function on_submit(job)
             if job.image_url:find("a.png") then return false, "not this one" end
             return { fidelity = 7 }
           end"#,
    )
    .unwrap();
    let m = manifest(&w, "pick.txt", &[a, b]);
    let out = batch(&w, &m, &["--hook", hook.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count(
            "SELECT count(*) FROM jobs WHERE state = 'skipped' AND reason LIKE 'not this one%'"
        ),
        1
    );
    // fidelity 7 is refused like on the command line: the job is not sent and stays planned.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned' AND reason LIKE '%fidelity%'"),
        1
    );
    assert_eq!(w.sandbox.stats().submissions, 0);

    // The refused change is a failed hook run: the next run asks the hook again, and still
    // does not send the job.
    let out = w.run(&["--batch", "pick"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(w.sandbox.stats().submissions, 0);
    assert!(String::from_utf8_lossy(&w.cli(&["hooks", "failed"]).stdout).contains("fidelity"));
}

#[test]
fn a_failing_hook_keeps_the_job_and_hooks_retry_reruns_it() {
    let w = World::new();
    let url = w.png("a.png", 16, 16);
    let hook = w.dir.path().join("flaky.lua");
    std::fs::write(&hook, "function on_complete(job) error('disk full') end").unwrap();
    let m = manifest(&w, "f.txt", &[url]);
    let out = batch(&w, &m, &["--hook", hook.to_str().unwrap()]);
    // Regression: a batch whose on_complete raised exited 0 and said nothing about it.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 hook run(s) failed; see `codeformer-ledger hooks failed`"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hook failed ["),
        "{}",
        text(&out)
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        1
    );
    assert_eq!(w.count("SELECT count(*) FROM outputs"), 1);
    // A resume does not rerun it, and still says so.
    let out = w.run(&["--batch", "f"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let listed = w.cli(&["hooks", "failed"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("disk full"),
        "{}",
        text(&listed)
    );

    std::fs::write(
        &hook,
        "function on_complete(job) fs.write('done-' .. job.id .. '.txt', 'ok') end",
    )
    .unwrap();
    let out = w.cli(&["hooks", "retry", "--out-dir", w.out_dir().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(w.out_dir().join("done-1.txt").exists());
    let listed = w.cli(&["hooks", "failed"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("no failed hook runs"),
        "{}",
        text(&listed)
    );
    let out = w.run(&["--batch", "f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn failing_on_failed_and_on_batch_done_exit_3_and_a_retry_that_fails_again_too() {
    let w = World::with(codeformer_ledger::sandbox::SandboxConfig {
        fail_rate: 1.0,
        ..Default::default()
    });
    let url = w.png("a.png", 16, 16);
    let hook = w.dir.path().join("both.lua");
    std::fs::write(
        &hook,
        "function on_failed(job) error('no pager') end\n\
         function on_batch_done(s) error('no mail') end",
    )
    .unwrap();
    let m = manifest(&w, "b.txt", &[url]);
    let out = batch(&w, &m, &["--hook", hook.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 hook run(s) failed"),
        "{}",
        text(&out)
    );
    let out = w.cli(&["hooks", "retry", "--out-dir", w.out_dir().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn on_submit_accepts_the_api_field_names() {
    let w = World::new();
    let a = w.png("a.png", 20, 20);
    let b = w.png("b.png", 20, 20);
    let hook = w.dir.path().join("api_names.lua");
    std::fs::write(
        &hook,
        r#"function on_submit(job)
             if job.image_url:find("a.png") then return { codeformer_fidelity = 0.9, upscale = 4 } end
             return { fidelity = 0.2, codeformer_fidelity = 0.3 }
           end"#,
    )
    .unwrap();
    let m = manifest(&w, "api.txt", &[a, b]);
    let out = batch(&w, &m, &["--hook", hook.to_str().unwrap()]);
    // Regression: `codeformer_fidelity`, the API's name, was refused as unknown.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE image_url LIKE '%a.png' AND fidelity = '0.9' AND upscale = 4 AND state = 'completed'"),
        1,
        "{}",
        text(&out)
    );
    assert_eq!(w.times_not_in_millis(), 0);
    // Both names with different values: refused, the job is not sent, and the error says why.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(w.sandbox.stats().submissions, 1);
    let listed = w.cli(&["hooks", "failed"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("`codeformer_fidelity` is 0.3 but `fidelity` is 0.2"),
        "{listed}"
    );
}

#[test]
fn a_runaway_hook_is_stopped_and_recorded() {
    let w = World::new();
    let url = w.png("a.png", 16, 16);
    let hook = w.dir.path().join("spin.lua");
    std::fs::write(
        &hook,
        r#"function on_complete(job) string.find(("a"):rep(30), ("a*"):rep(30) .. "b") end"#,
    )
    .unwrap();
    let m = manifest(&w, "s.txt", &[url]);
    let out = batch(
        &w,
        &m,
        &["--hook", hook.to_str().unwrap(), "--hook-timeout", "1s"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM hook_runs WHERE status = 'failed' AND error LIKE 'timeout%'"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        1
    );
}

#[test]
fn a_hook_interrupted_by_a_crash_runs_again_once_and_a_finished_one_never() {
    let w = World::new();
    let a = w.png("a.png", 16, 16);
    let b = w.png("b.png", 16, 16);
    let hook = w.dir.path().join("slow.lua");
    // Job 1's first call hangs (the engine is killed during it); every call leaves a line.
    std::fs::write(
        &hook,
        r#"function on_complete(job)
             local log = fs.exists("calls.txt") and fs.read("calls.txt") or ""
             fs.write("calls.txt", log .. job.id .. " " .. tostring(job.rerun) .. "\n")
             if job.id == 1 and not job.rerun then os.execute("sleep 8") end
           end"#,
    )
    .unwrap();
    let m = manifest(&w, "slow.txt", &[a, b]);
    let out_dir = w.out_dir();
    let mut child = std::process::Command::new(BIN)
        .current_dir(w.dir.path())
        .env_remove("PIXAZO_API_KEY")
        .env("CODEFORMER_LEDGER", w.ledger())
        .env("PIXAZO_BASE_URL", w.sandbox.base_url())
        .args([
            "batch",
            m.to_str().unwrap(),
            "--quiet",
            "--poll-interval",
            "50ms",
            "--concurrency",
            "1",
        ])
        .args([
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--hook",
            hook.to_str().unwrap(),
            "--trusted-hooks",
            "--hook-timeout",
            "30s",
        ])
        .spawn()
        .unwrap();
    let calls = out_dir.join("calls.txt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .contains("1 false")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        w.count("SELECT count(*) FROM hook_runs WHERE status = 'running'"),
        1
    );

    let out = w.run(&["--batch", "slow", "--trusted-hooks"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| **l == "1 false").count(),
        1,
        "{log}"
    );
    assert_eq!(lines.iter().filter(|l| **l == "1 true").count(), 1, "{log}");
    let twos = lines.iter().filter(|l| l.starts_with("2 ")).count();
    assert_eq!(twos, 1, "job 2's hook ran exactly once: {log}");

    let out = w.run(&["--batch", "slow", "--trusted-hooks"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        log,
        "nothing runs again"
    );
}
