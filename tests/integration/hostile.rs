//! A hostile gateway: answers that are huge, nested, mislabelled, looping or path-bending.
//! Each ends as a clear error on its job and leaves the ledger sound.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

type Route = dyn Fn(&str, &str) -> Vec<u8> + Send + Sync;

/// A tiny HTTP/1.1 server answering every request with `route(method, path)`, one connection
/// per request.
struct Hostile {
    base: String,
}

impl Hostile {
    fn start(route: Arc<Route>) -> Hostile {
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

fn answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn accepted(id: &str) -> Vec<u8> {
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

fn run_against(base: &str, w: &World, extra: &[&str]) -> std::process::Output {
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

fn submit_offline(w: &World) {
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
fn huge_nested_and_path_bending_answers_are_contained() {
    // The request id carries `/`, `..` and NUL; status answers are a nesting bomb, then a
    // body of several megabytes, then never final: the deadline stalls the job.
    let evil_id = "../../etc/passwd\u{0}x";
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
        assert!(
            path.starts_with("/v2/requests/status/..%2F..%2Fetc%2Fpasswd%00x"),
            "{path}"
        );
    }
    // The ledger kept the bodies capped.
    let longest: i64 = w
        .db()
        .query_row("SELECT max(length(body)) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(longest < 64 * 1024, "{longest}");
    verify_sound(&w);
}
