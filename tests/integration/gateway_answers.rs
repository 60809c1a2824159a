//! Answers that say the base URL is wrong (a wrong path, a plain web server, the gateway's
//! "Model not found") stop the run and keep the jobs; `doctor` tells them apart from the API;
//! a callback with an undocumented status moves nothing.

use crate::common::*;
use crate::hostile::{answer, run_against, submit_offline, Hostile};
use codeformer_ledger::sandbox::SandboxConfig;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// `python3 -m http.server` on a free loopback port: a plain web server, as a user may point
/// `--base-url` at by mistake.
struct PlainServer {
    child: Child,
    base: String,
}

impl PlainServer {
    fn start(dir: &std::path::Path) -> PlainServer {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (it is needed for this test)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 45053 (http://127.0.0.1:45053/) ..."
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        PlainServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three images in the sandbox's static folder, recorded as a batch and not sent.
fn three_planned_jobs(w: &World) -> Vec<String> {
    let urls: Vec<String> = (0..3)
        .map(|i| w.png(&format!("face{i}.png"), 8 + i, 8))
        .collect();
    let manifest = w.manifest("m.txt", &urls);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    urls
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// After a stop for a wrong base URL, a run with the right one sends each job exactly once.
fn right_url_sends_each_once(w: &World, urls: &[String]) {
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        3
    );
    let stats = w.sandbox.stats();
    for url in urls {
        assert_eq!(stats.submissions_by_image.get(url), Some(&1), "{url}");
    }
    assert_eq!(stats.accepted, 3);
}

fn assert_all_planned(w: &World, out: &std::process::Output) {
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        3,
        "{}",
        text(out)
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state <> 'planned'"),
        0
    );
}

/// Regression: with `--base-url …/v1`, every job became `rejected` (or uncertain) and a later
/// run with the right URL never sent them.
#[test]
fn a_wrong_path_on_the_base_url_stops_the_run_and_keeps_the_jobs() {
    let w = World::new();
    let urls = three_planned_jobs(&w);
    let wrong = format!("{}/v1", w.sandbox.base_url());
    let out = run_against(&wrong, &w, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    for needle in [
        wrong.as_str(),
        "a submission got HTTP 404",
        "has the path `/v1`",
        "https://gateway.pixazo.ai",
        "stay planned",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    assert_all_planned(&w, &out);
    assert_eq!(w.sandbox.stats().submissions, 0);
    right_url_sends_each_once(&w, &urls);
}

/// Regression: pointed at a plain web server, jobs became `uncertain` ("may pay twice").
#[test]
fn a_plain_web_server_stops_the_run_and_keeps_the_jobs() {
    let w = World::new();
    let urls = three_planned_jobs(&w);
    let plain = PlainServer::start(w.dir.path());
    let out = run_against(&plain.base, &w, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&plain.base) && err.contains("HTTP 501 with an HTML page"),
        "{err}"
    );
    assert_all_planned(&w, &out);
    right_url_sends_each_once(&w, &urls);
}

/// The gateway's own answer to a path that names no model: 400 "Model not found" (as in the
/// protocol's error table) says the URL is wrong, not the job; a validation 400 is the job's.
#[test]
fn model_not_found_stops_the_run_but_a_validation_error_rejects_the_job() {
    let model = Hostile::start(Arc::new(|_: &str, _: &str| {
        answer(
            "400 Bad Request",
            "application/json",
            br#"{"error": "Model not found", "message": "Model 'v1' not found or is disabled"}"#,
        )
    }));
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&model.base, &w, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("Model not found"), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        1
    );
    // `submit` says the same and keeps its job planned.
    let out = w.cli_env(
        &["submit", "http://127.0.0.1:9/other.png", "--size", "10x10"],
        &[("PIXAZO_BASE_URL", &model.base)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("Model not found"), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        2
    );

    let validation = Hostile::start(Arc::new(|_: &str, _: &str| {
        answer(
            "400 Bad Request",
            "application/json",
            br#"{"error": "Bad Request", "message": "image: the URL could not be fetched"}"#,
        )
    }));
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&validation.base, &w, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'rejected'"),
        1
    );
}

/// A 202 whose body is not JSON may follow a created job: that one job is uncertain (charge
/// unknown), and nothing more is sent.
#[test]
fn a_202_that_is_not_json_makes_one_job_uncertain_and_stops_sending() {
    let posts = Arc::new(Mutex::new(0));
    let posts_in = Arc::clone(&posts);
    let garbage = Hostile::start(Arc::new(move |method: &str, _: &str| {
        if method == "POST" {
            *posts_in.lock().unwrap() += 1;
        }
        answer(
            "202 Accepted",
            "text/html",
            b"<html><body>Thanks!</body></html>",
        )
    }));
    let w = World::new();
    let urls = three_planned_jobs(&w);
    let out = run_against(&garbage.base, &w, &["--concurrency", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("HTTP 202"), "{}", text(&out));
    assert_eq!(*posts.lock().unwrap(), 1);
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        2
    );
    let _ = urls;
}

/// Regression: against `python3 -m http.server`, `doctor` said "ok gateway … answers (HTTP
/// 404) … and accepts the key".
#[test]
fn doctor_is_not_fooled_by_a_plain_web_server_or_a_wrong_path() {
    let w = World::new();
    let out_dir = w.out_dir();
    let doctor = |base: &str| {
        let out = w.cli_env(
            &["doctor", "--out-dir", out_dir.to_str().unwrap()],
            &[("PIXAZO_BASE_URL", base)],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .skip_while(|l| !l.contains(" gateway "))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let plain = PlainServer::start(w.dir.path());
    let said = doctor(&plain.base);
    assert!(said.starts_with("FAIL gateway"), "{said}");
    assert!(said.contains("HTML page"), "{said}");
    assert!(
        said.contains("fix: is --base-url the gateway's root?")
            && said.contains("https://gateway.pixazo.ai"),
        "{said}"
    );

    let wrong = format!("{}/v1", w.sandbox.base_url());
    let said = doctor(&wrong);
    assert!(said.starts_with("FAIL gateway"), "{said}");
    assert!(
        said.contains("no status endpoint") && said.contains("has the path `/v1`"),
        "{said}"
    );

    let said = doctor(&w.sandbox.base_url());
    assert!(said.starts_with("ok   gateway"), "{said}");
    assert_eq!(w.sandbox.stats().submissions, 0, "doctor submits nothing");
}

/// Regression: a callback saying `CANCELLED` (or `cancelled`) was applied as ERROR, "not
/// charged". It is recorded verbatim, changes no job, and the job stays polled.
#[test]
fn an_undocumented_status_in_a_callback_is_recorded_verbatim_and_moves_nothing() {
    let w = World::timed(SandboxConfig {
        queue_ms: 600_000,
        processing_ms: (600_000, 600_000),
        ..SandboxConfig::default()
    });
    let url = w.png("face.png", 8, 8);
    let out = w.cli(&["submit", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let request_id: String = w
        .db()
        .query_row("SELECT request_id FROM jobs", [], |r| r.get(0))
        .unwrap();
    let bodies: Vec<String> = ["CANCELLED", "cancelled"]
        .iter()
        .map(|status| {
            serde_json::json!({"request_id": request_id, "status": status, "error": null, "output": null})
                .to_string()
        })
        .collect();
    let file = w.dir.path().join("callbacks.jsonl");
    std::fs::write(&file, bodies.join("\n") + "\n").unwrap();
    let out = w.cli(&["ingest", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count(
            "SELECT count(*) FROM deliveries WHERE outcome = 'stale'
             AND remote_status IN ('CANCELLED', 'cancelled')"
        ),
        2
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM events WHERE kind = 'callback'
             AND remote_status IN ('CANCELLED', 'cancelled') AND detail LIKE '%not one the API documents%'"
        ),
        2
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'queued' AND next_poll_at IS NOT NULL"),
        1
    );
    assert_eq!(
        w.count("SELECT count(*) FROM attempts WHERE actual_cost IS NOT NULL"),
        0
    );
}

/// Status calls answered by something that is not the API (here an HTML 404) stop the run at
/// once: the job at the gateway is kept as it was and a run with the right URL finishes it.
/// Before, the HTML 404 was taken as "unknown request id" and polled until the deadline.
#[test]
fn a_resume_against_a_plain_web_server_stops_and_keeps_the_job_at_the_gateway() {
    let w = World::new();
    let url = w.png("face.png", 8, 8);
    let out = w.cli(&["submit", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plain = PlainServer::start(w.dir.path());
    let out = run_against(&plain.base, &w, &["--deadline", "3s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("a status call got HTTP 404 with an HTML page") && err.contains(&plain.base),
        "{err}"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
        1
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        1
    );
    assert_eq!(w.sandbox.stats().submissions, 1);
}
