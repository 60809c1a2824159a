//! A hostile gateway: answers that are huge, nested, mislabelled, looping or path-bending.
//! Each ends as a clear error on its job and leaves the ledger sound.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

pub type Route = dyn Fn(&str, &str) -> Vec<u8> + Send + Sync;

/// A tiny HTTP/1.1 server answering every request with `route(method, path)`, one connection
/// per request.
pub struct Hostile {
    pub base: String,
}

impl Hostile {
    pub fn start(route: Arc<Route>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2000) {
                let Ok(stream) = stream else { continue };
                let route = Arc::clone(&route);
                std::thread::spawn(move || serve(stream, &*route));
            }
        });
        Hostile { base }
    }
}

fn serve(stream: TcpStream, route: &Route) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut stream = stream;
    let _ = stream.write_all(&route(&method, &path));
}

pub fn answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn accepted(id: &str) -> Vec<u8> {
    answer(
        "202 Accepted",
        "application/json",
        serde_json::json!({"request_id": id, "status": "QUEUED"})
            .to_string()
            .as_bytes(),
    )
}

fn completed(id: &str, media: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "request_id": id, "status": "COMPLETED", "model_id": "codeformer-image-restoration", "error": null,
        "output": {"media_url": [media], "media_type": "image/png"},
        "created_at": "2026-05-22T13:17:32.110Z", "updated_at": "2026-05-22 13:19:23"
    });
    answer("200 OK", "application/json", body.to_string().as_bytes())
}

pub fn run_against(base: &str, w: &World, extra: &[&str]) -> std::process::Output {
    let out = w.out_dir();
    let mut args = vec![
        "run",
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    w.cli_env(&args, &[("PIXAZO_BASE_URL", base)])
}

pub fn submit_offline(w: &World) {
    let out = w.cli(&[
        "submit",
        "http://127.0.0.1:9/in.png",
        "--size",
        "10x10",
        "--no-send",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn verify_sound(w: &World) {
    let out = w.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn an_output_that_is_not_an_image_is_a_download_error_and_nothing_is_charged() {
    let w = World::new();
    // The media URL points back at the hostile server's own HTML page.
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let base_in = Arc::clone(&base);
    let hostile = Hostile::start(Arc::new(move |method: &str, path: &str| {
        match (method, path) {
            ("POST", _) => accepted("r-html"),
            (_, p) if p.starts_with("/v2/") => {
                completed("r-html", &format!("{}/page.html", base_in.get().unwrap()))
            }
            _ => answer("200 OK", "text/html", b"<html>not an image</html>"),
        }
    }));
    base.set(hostile.base.clone()).unwrap();
    submit_offline(&w);
    let out = run_against(&hostile.base, &w, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("could not be downloaded"),
        "{}",
        text(&out)
    );
    assert_eq!(w.count("SELECT count(*) FROM events WHERE kind = 'download_failed' AND detail LIKE '%not an image%'"), 5);
    assert_eq!(
        w.count("SELECT count(*) FROM attempts WHERE actual_cost IS NOT NULL"),
        0
    );
    assert_eq!(w.count("SELECT count(*) FROM outputs"), 0);
    let leftovers = std::fs::read_dir(w.out_dir()).unwrap().count();
    assert_eq!(leftovers, 0, "no partial file is left behind");
    verify_sound(&w);
}

#[test]
fn a_redirect_loop_on_the_output_ends_as_an_error() {
    let w = World::new();
    let hostile = Hostile::start(Arc::new(|method: &str, path: &str| {
        match (method, path) {
        ("POST", _) => accepted("r-loop"),
        (_, p) if p.starts_with("/v2/") => completed("r-loop", "/loop"),
        _ => b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    }
    }));
    submit_offline(&w);
    // A relative media URL is not a URL we download from.
    let out = run_against(&hostile.base, &w, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let route_base = hostile.base.clone();
    let looping = Hostile::start(Arc::new(move |method: &str, path: &str| {
        match (method, path) {
        ("POST", _) => accepted("r-loop2"),
        (_, p) if p.starts_with("/v2/") => completed("r-loop2", &format!("{route_base}/loop")),
        _ => b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    }
    }));
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&looping.base, &w, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(w.count("SELECT count(*) FROM events WHERE kind = 'download_failed' AND detail LIKE '%redirect%'") >= 1);
    verify_sound(&w);
}

#[test]
fn huge_and_nested_answers_are_contained() {
    // Status answers are a nesting bomb, then a body of several megabytes, then never final:
    // the deadline stalls the job. The request id needs escaping in the status URL.
    let evil_id = "r 1?x=..#%";
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_in = Arc::clone(&seen);
    let hostile = Hostile::start(Arc::new(move |method: &str, path: &str| {
        seen_in.lock().unwrap().push(path.to_string());
        let n = seen_in.lock().unwrap().len();
        match method {
            "POST" => accepted(evil_id),
            _ if n.is_multiple_of(2) => {
                answer("200 OK", "application/json", "[".repeat(200_000).as_bytes())
            }
            _ => answer("200 OK", "application/json", &vec![b' '; 5 * 1024 * 1024]),
        }
    }));
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&hostile.base, &w, &["--deadline", "2s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'stalled'"),
        1
    );
    assert!(
        w.count("SELECT count(*) FROM events WHERE kind = 'poll' AND detail LIKE 'bad answer%'")
            >= 2
    );
    // Every status request stayed one path segment below /v2/requests/status/.
    for path in seen.lock().unwrap().iter().skip(1) {
        assert_eq!(path, "/v2/requests/status/r%201%3Fx%3D..%23%25");
    }
    // The ledger kept the bodies capped.
    let longest: i64 = w
        .db()
        .query_row("SELECT max(length(body)) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(longest < 64 * 1024, "{longest}");
    verify_sound(&w);
}

/// A server that accepts every submission with `id` and answers every status call with
/// `status`; it counts the submissions and the status calls.
fn fixed_status(
    id: &'static str,
    status: &'static str,
) -> (Hostile, Arc<std::sync::Mutex<(u32, u32)>>) {
    let calls = Arc::new(std::sync::Mutex::new((0, 0)));
    let calls_in = Arc::clone(&calls);
    let hostile = Hostile::start(Arc::new(move |method: &str, _path: &str| {
        let mut calls = calls_in.lock().unwrap();
        if method == "POST" {
            calls.0 += 1;
            accepted(id)
        } else {
            calls.1 += 1;
            let body = serde_json::json!({
                "request_id": id, "status": status, "model_id": "codeformer-image-restoration",
                "error": null, "output": null
            });
            answer("200 OK", "application/json", body.to_string().as_bytes())
        }
    }));
    (hostile, calls)
}

fn report_total(w: &World, field: &str) -> serde_json::Value {
    let out = w.cli(&["report", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["total"][field].clone()
}

/// Regression: `CANCELLED` (in any letter case) and a lower-case `error` were booked as ERROR,
/// "not charged". An undocumented status is kept verbatim, polled on, and stalls at the
/// deadline with its estimate as the worst case.
fn an_undocumented_status_is_never_booked_as_free(status: &'static str) {
    let (hostile, calls) = fixed_status("r-undocumented", status);
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&hostile.base, &w, &["--deadline", "2s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'stalled'"),
        1,
        "{}",
        text(&out)
    );
    let polls = w.count(&format!(
        "SELECT count(*) FROM events WHERE kind = 'poll' AND remote_status = '{status}'
         AND detail LIKE '%not one the API documents%'"
    ));
    assert!(polls >= 2, "polled again after {status}: {polls}");
    assert_eq!(calls.lock().unwrap().0, 1, "submitted once");
    let kept: String = w
        .db()
        .query_row("SELECT remote_status || ' ' || reason FROM jobs", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(kept.starts_with(&format!("{status} ")), "{kept}");
    assert!(
        kept.contains(&format!("last reported \"{status}\"")),
        "{kept}"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM attempts WHERE actual_cost IS NOT NULL"),
        0,
        "not booked as free"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
        0
    );
    // 10x10 at upscale 2: 400 px at 0.0021 USD/MP.
    assert_eq!(report_total(&w, "charge_unknown"), "0.00000084");
    assert_eq!(report_total(&w, "stalled"), 1);
    verify_sound(&w);
}

#[test]
fn cancelled_is_never_booked_as_free() {
    an_undocumented_status_is_never_booked_as_free("CANCELLED");
}

#[test]
fn lower_case_cancelled_is_never_booked_as_free() {
    an_undocumented_status_is_never_booked_as_free("cancelled");
}

#[test]
fn lower_case_error_is_not_the_documented_error() {
    an_undocumented_status_is_never_booked_as_free("error");
}

/// Regression: an id with `/`, `..` or NUL was polled percent-encoded (or, the README said,
/// ended as an error). The gateway created the job, so the attempt is uncertain: it is not
/// polled, not resent on its own, counted as charge-unknown, and the run sends nothing more.
#[test]
fn a_request_id_that_cannot_be_a_path_segment_makes_the_attempt_uncertain() {
    for evil in ["../../etc/passwd\u{0}x", "..", "a/b", "a\u{0}b"] {
        let (hostile, calls) = fixed_status(evil, "QUEUED");
        let w = World::new();
        submit_offline(&w);
        let second = w.cli(&[
            "submit",
            "http://127.0.0.1:9/second.png",
            "--size",
            "10x10",
            "--no-send",
        ]);
        assert_eq!(second.status.code(), Some(0), "{}", text(&second));
        let out = run_against(&hostile.base, &w, &["--concurrency", "1"]);
        assert_eq!(out.status.code(), Some(1), "{evil:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot be one segment of a status URL")
                && stderr.contains(&hostile.base),
            "{stderr}"
        );
        assert_eq!(
            *calls.lock().unwrap(),
            (1, 0),
            "{evil:?}: one POST, no status call"
        );
        assert_eq!(
            w.count(
                "SELECT count(*) FROM jobs WHERE state = 'uncertain' AND request_id IS NULL
                     AND reason LIKE '%may have created this job%'"
            ),
            1,
            "{evil:?}"
        );
        assert_eq!(
            w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
            1
        );
        assert_eq!(report_total(&w, "charge_unknown"), "0.00000084", "{evil:?}");
        // Not resent on its own.
        let again = run_against(&hostile.base, &w, &["--concurrency", "1"]);
        assert_eq!(again.status.code(), Some(1), "{}", text(&again));
        assert_eq!(calls.lock().unwrap().0, 2, "only the planned job was sent");
        assert_eq!(
            w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'"),
            2
        );
        verify_sound(&w);
    }
}

/// Regression: a poll answering QUEUED after PROCESSING moved the job back to `queued` (a
/// callback with the same news was already stale). The job stays `processing`, is polled on,
/// and stalls at the deadline as `processing`.
#[test]
fn a_job_processing_is_not_moved_back_to_queued_by_a_poll() {
    let polls = Arc::new(std::sync::Mutex::new(0u32));
    let polls_in = Arc::clone(&polls);
    let hostile = Hostile::start(Arc::new(move |method: &str, _path: &str| {
        if method == "POST" {
            return accepted("r-back");
        }
        let mut polls = polls_in.lock().unwrap();
        *polls += 1;
        let status = if *polls == 1 { "PROCESSING" } else { "QUEUED" };
        let body = serde_json::json!({
            "request_id": "r-back", "status": status, "model_id": "codeformer-image-restoration",
            "error": null, "output": null
        });
        answer("200 OK", "application/json", body.to_string().as_bytes())
    }));
    let w = World::new();
    submit_offline(&w);
    let out = run_against(&hostile.base, &w, &["--deadline", "2s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(*polls.lock().unwrap() >= 2, "polled after PROCESSING");
    let queued_polls =
        w.count("SELECT count(*) FROM events WHERE kind = 'poll' AND remote_status = 'QUEUED'");
    assert!(queued_polls >= 1, "the QUEUED answers are on record");
    let (state, reason): (String, String) = w
        .db()
        .query_row("SELECT state, reason FROM jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(state, "stalled");
    assert!(reason.starts_with("still processing after"), "{reason}");
    verify_sound(&w);
}
