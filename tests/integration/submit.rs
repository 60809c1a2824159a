//! `submit` says what happened: one clear message per outcome, the README's exit codes, and
//! the config file's settings for `submit --wait` and `hooks retry`.

use crate::common::{text, World};
use codeformer_ledger::sandbox::SandboxConfig;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback URL where nothing listens.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn write_config(w: &World, body: &str) -> String {
    let path = w.dir.path().join("config.toml");
    std::fs::write(&path, body).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn submit_to_an_unreachable_gateway_names_the_url_keeps_the_job_planned_and_exits_1() {
    let w = World::new();
    let image = w.png("face.png", 20, 10);
    let gone = closed_url();
    let out = w.cli_env(&["submit", &image], &[("PIXAZO_BASE_URL", &gone)]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("not sent: not sent"), "{all}");
    assert!(
        stderr(&out).contains(&format!("the gateway at {gone} cannot be reached")),
        "{all}"
    );
    assert!(
        stderr(&out).contains("`codeformer-ledger run` sends it"),
        "{all}"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        1
    );

    // Submitting the same job again, with the gateway back, sends it.
    let out = w.cli(&["submit", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("sending it"), "{}", text(&out));
    assert_eq!(w.count("SELECT count(*) FROM jobs WHERE state = 'queued' OR state = 'processing' OR state = 'completed'"), 1);
    assert_eq!(w.sandbox.stats().submissions, 1);
}

#[test]
fn submit_with_a_refused_key_names_pixazo_api_key_once_and_exits_1() {
    let w = World::with(SandboxConfig {
        api_key: Some("right-key".into()),
        ..SandboxConfig::default()
    });
    let image = w.png("face.png", 20, 10);
    let out = w.cli_env(&["submit", &image], &[("PIXAZO_API_KEY", "wrong-key")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("not sent: not sent"), "{all}");
    assert!(stderr(&out).contains("PIXAZO_API_KEY"), "{all}");
    assert!(stderr(&out).contains("HTTP 401"), "{all}");
    assert!(
        !all.contains("wrong-key"),
        "the key is never printed: {all}"
    );
    assert!(stdout(&out).contains("not sent; it stays planned"), "{all}");
}

#[test]
fn submit_wait_takes_out_dir_and_poll_interval_from_the_config_file() {
    let w = World::new();
    let image = w.png("face.png", 20, 10);
    let config = write_config(&w, "out_dir = \"from-config\"\npoll_interval = \"70ms\"\n");
    let out = w.cli_env(
        &["submit", &image, "--wait"],
        &[("CODEFORMER_LEDGER_CONFIG", &config)],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        !all.contains("`codeformer-ledger run` polls and downloads it"),
        "--wait downloads it itself: {all}"
    );
    assert!(stdout(&out).contains("waiting for it"), "{all}");
    let files: Vec<_> = std::fs::read_dir(w.dir.path().join("from-config"))
        .expect("outputs in the config file's out_dir")
        .collect();
    assert_eq!(files.len(), 1, "{all}");
    assert!(!w.dir.path().join("restored").exists(), "{all}");
    assert_eq!(
        w.count(
            "SELECT count(*) FROM events WHERE kind = 'engine_start' AND detail LIKE '%poll interval 70 ms%'"
        ),
        1
    );

    // A flag still wins over the config file.
    let other = w.png("other.png", 20, 12);
    let out = w.cli_env(
        &[
            "submit",
            &other,
            "--wait",
            "--out-dir",
            "flagged",
            "--poll-interval",
            "90ms",
        ],
        &[("CODEFORMER_LEDGER_CONFIG", &config)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(w.dir.path().join("flagged"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM events WHERE kind = 'engine_start' AND detail LIKE '%poll interval 90 ms%'"
        ),
        1
    );
}

#[test]
fn hooks_retry_takes_out_dir_from_the_config_file() {
    let w = World::new();
    let image = w.png("face.png", 20, 10);
    let hook = w.dir.path().join("needs_ok.lua");
    std::fs::write(
        &hook,
        "function on_complete(job)\n  if not fs.exists(\"ok\") then error(\"no ok file yet\") end\n  fs.write(\"done.txt\", \"done\")\nend\n",
    )
    .unwrap();
    let config = write_config(&w, "out_dir = \"from-config\"\n");
    let env = [("CODEFORMER_LEDGER_CONFIG", config.as_str())];
    let out = w.cli_env(&["submit", &image, "--no-send"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli_env(
        &[
            "run",
            "--quiet",
            "--poll-interval",
            "50ms",
            "--hook",
            hook.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(
        w.count("SELECT count(*) FROM hook_runs WHERE status != 'ok'"),
        1,
        "{}",
        text(&out)
    );
    let dir = w.dir.path().join("from-config");
    std::fs::write(dir.join("ok"), "").unwrap();
    let out = w.cli_env(&["hooks", "retry"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(dir.join("done.txt").exists(), "{}", text(&out));
    assert!(!w.dir.path().join("restored").exists());
}

#[test]
fn submit_beside_a_running_batch_engine_says_truly_who_sends_the_job() {
    let w = World::timed(SandboxConfig {
        queue_ms: 10,
        processing_ms: (1500, 1500),
        ..SandboxConfig::default()
    });
    let a = w.png("a.png", 20, 10);
    let manifest = w.manifest("slow.txt", std::slice::from_ref(&a));
    let log = w.dir.path().join("batch.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = w
        .command(&[
            "batch",
            manifest.to_str().unwrap(),
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            "out",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while w.sandbox.stats().submissions == 0 {
        assert!(Instant::now() < end, "the batch never sent its job");
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = w.png("b.png", 30, 10);
    let out = w.cli(&["submit", &b]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(stdout(&out).contains("another engine (pid"), "{all}");
    assert!(
        stdout(&out).contains("otherwise `codeformer-ledger run` sends it"),
        "{all}"
    );
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < end, "the batch did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    // The batch engine ran over its own batch only, so the message was right: `run` sends it.
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE batch IS NULL AND state = 'planned'"),
        1
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        2
    );
}
