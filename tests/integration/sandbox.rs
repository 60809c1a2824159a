//! The sandbox gateway over real HTTP on loopback: the protocol, the job flow, the faults and
//! the callbacks, as a client sees them.

use crate::common::wait_for;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig, SUBMIT_PATH};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fast sandbox serving `dir` as its static directory.
fn config(dir: &Path) -> SandboxConfig {
    SandboxConfig {
        static_dir: Some(dir.to_path_buf()),
        queue_ms: 10,
        processing_ms: (20, 20),
        allow_http_webhooks: true,
        ..SandboxConfig::default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .proxy(None)
        .build()
        .into()
}

/// Writes a `w`×`h` image in `format` with varied pixels.
fn write_image(dir: &Path, name: &str, w: u32, h: u32, format: image::ImageFormat) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 99]));
    image::DynamicImage::ImageRgb8(img)
        .save_with_format(dir.join(name), format)
        .unwrap();
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read(response: ureq::http::Response<ureq::Body>) -> Answer {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .into_body()
        .with_config()
        .limit(100 << 20)
        .read_to_vec()
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut request = agent().post(url).header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send(body).unwrap())
}

fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.call().unwrap())
}

fn submit(sandbox: &Sandbox, body: Value) -> Answer {
    submit_with(sandbox, &[], body)
}

fn submit_with(sandbox: &Sandbox, headers: &[(&str, &str)], body: Value) -> Answer {
    post(
        &format!("{}{SUBMIT_PATH}", sandbox.base_url()),
        headers,
        &body.to_string(),
    )
}

/// Polls the job until it is final.
fn wait_final(polling_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = get(polling_url, &[]).json();
        if ["COMPLETED", "FAILED", "ERROR"].contains(&doc["status"].as_str().unwrap()) {
            return doc;
        }
        assert!(Instant::now() < deadline, "job never finished: {doc}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Submits `image` and waits for the job to be final.
fn run_job(sandbox: &Sandbox, image: &str, upscale: u32) -> Value {
    let answer = submit(sandbox, json!({"image": image, "upscale": upscale}));
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    wait_final(answer.json()["polling_url"].as_str().unwrap())
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap();
    (img.width(), img.height())
}

fn price(pixels: u64) -> Decimal {
    Decimal::from(pixels) * Decimal::from_str("0.0021").unwrap() / Decimal::from(1_000_000)
}

#[test]
fn png_inputs_complete_with_outputs_of_the_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "one.png", 1, 1, image::ImageFormat::Png);
    write_image(dir.path(), "odd.png", 333, 517, image::ImageFormat::Png);
    let sandbox = Sandbox::start(config(dir.path())).unwrap();

    let answer = submit(&sandbox, json!({"image": sandbox.static_url("odd.png")}));
    assert_eq!(answer.status, 202);
    let accepted = answer.json();
    let id = accepted["request_id"].as_str().unwrap().to_string();
    let ulid = id.strip_prefix("codeformer-image-restoration_").unwrap();
    assert_eq!(ulid.len(), 26);
    assert!(ulid
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    assert_eq!(accepted["status"], "QUEUED");
    assert_eq!(
        accepted["polling_url"],
        format!("{}/v2/requests/status/{id}", sandbox.base_url())
    );

    let doc = wait_final(accepted["polling_url"].as_str().unwrap());
    assert_eq!(doc["status"], "COMPLETED", "{doc}");
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["model_id"], "codeformer-image-restoration");
    assert_eq!(doc["error"], Value::Null);
    assert_eq!(doc["output"]["media_type"], "image/png");
    let created = doc["created_at"].as_str().unwrap();
    let updated = doc["updated_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");
    assert!(
        updated.len() == 19 && updated.as_bytes()[10] == b' ',
        "{updated}"
    );
    assert!(doc["completed_at"].is_string());

    let media_url = doc["output"]["media_url"][0].as_str().unwrap();
    assert_eq!(
        media_url,
        format!("{}/v1/{id}/output.png", sandbox.base_url())
    );
    let output = get(media_url, &[]);
    assert_eq!(output.status, 200);
    assert_eq!(output.header("Content-Type"), Some("image/png"));
    assert_eq!(
        output.header("Content-Length"),
        Some(output.body.len().to_string().as_str())
    );
    assert_eq!(png_size(&output.body), (666, 1034));

    let tiny = run_job(&sandbox, &sandbox.static_url("one.png"), 4);
    let tiny_out = get(tiny["output"]["media_url"][0].as_str().unwrap(), &[]);
    assert_eq!(png_size(&tiny_out.body), (4, 4));

    let stats = sandbox.stats();
    assert_eq!(
        (stats.submissions, stats.accepted, stats.completed),
        (2, 2, 2)
    );
    assert_eq!(
        Decimal::from_str(&stats.charges_by_request[&id]).unwrap(),
        price(666 * 1034)
    );
    assert_eq!(
        Decimal::from_str(&stats.charged_usd).unwrap(),
        price(666 * 1034 + 16)
    );
    assert_eq!(
        stats.output_bytes_served,
        (output.body.len() + tiny_out.body.len()) as u64
    );
    assert_eq!(
        stats.submissions_by_image[&sandbox.static_url("odd.png")],
        1
    );
    assert_eq!(stats.answered_by_code[&202], 2);
}

#[test]
fn every_input_format_gives_the_right_size_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [
        ("in.jpg", image::ImageFormat::Jpeg),
        ("in.gif", image::ImageFormat::Gif),
        ("in.bmp", image::ImageFormat::Bmp),
        ("in.webp", image::ImageFormat::WebP),
    ];
    for (name, format) in formats {
        write_image(dir.path(), name, 33, 21, format);
    }
    for render in [true, false] {
        let sandbox = Sandbox::start(SandboxConfig {
            render,
            ..config(dir.path())
        })
        .unwrap();
        for (name, _) in formats {
            let doc = run_job(&sandbox, &sandbox.static_url(name), 3);
            assert_eq!(doc["status"], "COMPLETED", "{name} render={render}: {doc}");
            let output = get(doc["output"]["media_url"][0].as_str().unwrap(), &[]);
            assert_eq!(png_size(&output.body), (99, 63), "{name} render={render}");
        }
    }
}

#[test]
fn invalid_submissions_get_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        allow_http_webhooks: false,
        ..config(dir.path())
    })
    .unwrap();
    let image = "http://127.0.0.1:9/a.png";
    let cases = [
        (json!({}), "'image'"),
        (json!({"image": 42}), "'image'"),
        (json!({"image": "not a url"}), "'image'"),
        (
            json!({"image": image, "codeformer_fidelity": 7}),
            "'codeformer_fidelity'",
        ),
        (json!({"image": image, "upscale": 0}), "'upscale'"),
        (json!({"image": image, "upscale": 2.5}), "'upscale'"),
        (json!({"image": image, "upscale": "2"}), "'upscale'"),
        (
            json!({"image": image, "face_upsample": "no"}),
            "'face_upsample'",
        ),
        (
            json!({"image": image, "webhook_events_filter": "completed"}),
            "'webhook_events_filter'",
        ),
    ];
    for (body, field) in cases {
        let answer = submit(&sandbox, body.clone());
        assert_eq!(answer.status, 400, "{body}");
        let error = answer.json();
        assert!(error["error"].is_string(), "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body} -> {error}"
        );
    }
    let url = format!("{}{SUBMIT_PATH}", sandbox.base_url());
    for raw in ["not json", "[1,2]", "\"image\""] {
        let answer = post(&url, &[], raw);
        assert_eq!(answer.status, 400, "{raw}");
        assert!(answer.json()["message"].is_string());
    }
    let http_hook = submit_with(
        &sandbox,
        &[("X-Webhook-URL", "http://127.0.0.1:9/hook")],
        json!({"image": image}),
    );
    assert_eq!(http_hook.status, 400);
    assert!(http_hook.json()["message"]
        .as_str()
        .unwrap()
        .contains("X-Webhook-URL"));
    let bad_mode = submit_with(
        &sandbox,
        &[
            ("X-Webhook-URL", "https://hooks.test/cb"),
            ("X-Webhook-Mode", "always"),
        ],
        json!({"image": image}),
    );
    assert_eq!(bad_mode.status, 400);
    let stats = sandbox.stats();
    assert_eq!(stats.accepted, 0);
    assert_eq!(stats.answered_by_code[&400], 14);
}

#[test]
fn oversized_bodies_get_413_and_unknown_requests_404() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(config(dir.path())).unwrap();
    let huge = format!("{{\"image\": \"{}\"}}", "a".repeat(2 << 20));
    let answer = post(&format!("{}{SUBMIT_PATH}", sandbox.base_url()), &[], &huge);
    assert_eq!(answer.status, 413);
    let unknown = get(
        &format!(
            "{}/v2/requests/status/codeformer-image-restoration_nope",
            sandbox.base_url()
        ),
        &[],
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["message"].as_str().unwrap().contains("nope"));
    assert_eq!(get(&sandbox.static_url("missing.png"), &[]).status, 404);
    assert_eq!(get(&sandbox.static_url("../Cargo.toml"), &[]).status, 404);
}

#[test]
fn a_configured_key_is_required() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 4, 4, image::ImageFormat::Png);
    let sandbox = Sandbox::start(SandboxConfig {
        api_key: Some("s3cret".into()),
        ..config(dir.path())
    })
    .unwrap();
    let body = json!({"image": sandbox.static_url("in.png")});
    assert_eq!(submit(&sandbox, body.clone()).status, 401);
    let wrong = submit_with(
        &sandbox,
        &[("Ocp-Apim-Subscription-Key", "guess")],
        body.clone(),
    );
    assert_eq!(wrong.status, 401);
    assert!(!String::from_utf8_lossy(&wrong.body).contains("s3cret"));
    let key = [("Ocp-Apim-Subscription-Key", "s3cret")];
    let accepted = submit_with(&sandbox, &key, body);
    assert_eq!(accepted.status, 202);
    let polling_url = accepted.json()["polling_url"].as_str().unwrap().to_string();
    assert_eq!(get(&polling_url, &[]).status, 401);
    assert_eq!(get(&polling_url, &key).status, 200);
    // Inputs, outputs and the sandbox's controls need no key.
    assert_eq!(get(&sandbox.static_url("in.png"), &[]).status, 200);
    assert_eq!(
        get(&format!("{}/sandbox/stats", sandbox.base_url()), &[]).status,
        200
    );
    assert_eq!(sandbox.stats().submissions, 1);
}

#[test]
fn an_empty_wallet_refuses_with_402_until_funds_arrive() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 100, 100, image::ImageFormat::Png);
    // 100x100 at upscale 2 is 0.04 MP: 0.000084 USD.
    let sandbox = Sandbox::start(SandboxConfig {
        wallet_usd: Some(Decimal::from_str("0.00005").unwrap()),
        ..config(dir.path())
    })
    .unwrap();
    let body = json!({"image": sandbox.static_url("in.png"), "upscale": 2});
    let refused = submit(&sandbox, body.clone());
    assert_eq!(refused.status, 402);
    assert_eq!(
        refused.json(),
        json!({"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."})
    );
    sandbox.add_funds(Decimal::from_str("0.0001").unwrap());
    let doc = run_job(&sandbox, &sandbox.static_url("in.png"), 2);
    assert_eq!(doc["status"], "COMPLETED");
    let stats = sandbox.stats();
    assert_eq!(stats.wallet_usd.as_deref(), Some("0.000066"));
    assert_eq!(stats.charged_usd, "0.000084");
    // What is left does not cover another job; the HTTP control refills it.
    assert_eq!(submit(&sandbox, body.clone()).status, 402);
    let refill = post(
        &format!("{}/sandbox/wallet", sandbox.base_url()),
        &[],
        r#"{"add":"1.50"}"#,
    );
    assert_eq!(refill.json()["wallet_usd"], "1.500066");
    assert_eq!(submit(&sandbox, body).status, 202);
}

#[test]
fn over_the_rate_limit_comes_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        rate_limit_rps: Some(2.0),
        ..config(dir.path())
    })
    .unwrap();
    let url = format!("{}/v2/requests/status/unknown", sandbox.base_url());
    let answers: Vec<Answer> = (0..5).map(|_| get(&url, &[])).collect();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 2,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(limited[0].header("Retry-After"), Some("1"));
    assert_eq!(answers[0].status, 404);
}

#[test]
fn failures_errors_and_unfetchable_inputs() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 8, 8, image::ImageFormat::Png);
    std::fs::write(dir.path().join("junk.png"), b"this is no image").unwrap();

    let failing = Sandbox::start(SandboxConfig {
        fail_rate: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let doc = run_job(&failing, &failing.static_url("in.png"), 2);
    assert_eq!(doc["status"], "FAILED");
    assert!(!doc["error"].as_str().unwrap().is_empty());
    assert_eq!(doc["output"], Value::Null);

    let erroring = Sandbox::start(SandboxConfig {
        error_rate: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let doc = run_job(&erroring, &erroring.static_url("in.png"), 2);
    assert_eq!(doc["status"], "ERROR");
    assert!(doc["error"].is_string());

    let healthy = Sandbox::start(config(dir.path())).unwrap();
    let missing = run_job(&healthy, &healthy.static_url("missing.png"), 2);
    assert_eq!(missing["status"], "FAILED");
    assert!(
        missing["error"].as_str().unwrap().contains("404"),
        "{missing}"
    );
    let junk = run_job(&healthy, &healthy.static_url("junk.png"), 2);
    assert_eq!(junk["status"], "FAILED");
    assert!(junk["error"].as_str().unwrap().contains("decode"), "{junk}");

    for sandbox in [&failing, &erroring, &healthy] {
        let stats = sandbox.stats();
        assert_eq!(stats.charged_usd, "0");
        assert!(stats.charges_by_request.is_empty());
    }
    assert_eq!((failing.stats().failed, erroring.stats().errored), (1, 1));
    assert_eq!(healthy.stats().failed, 2);
}

#[test]
fn range_requests_get_206_and_only_served_bytes_count() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 333, 517, image::ImageFormat::Png);
    let len = std::fs::metadata(dir.path().join("in.png")).unwrap().len();
    let sandbox = Sandbox::start(config(dir.path())).unwrap();
    let url = sandbox.static_url("in.png");

    let head = get(&url, &[("Range", "bytes=0-99")]);
    assert_eq!(head.status, 206);
    assert_eq!(head.body.len(), 100);
    assert_eq!(
        head.header("Content-Range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );
    let tail = get(&url, &[("Range", &format!("bytes={}-", len - 10))]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body.len(), 10);
    let beyond = get(&url, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(beyond.status, 416);

    let stats = sandbox.stats();
    assert_eq!(stats.static_bytes_served, 110);
    assert_eq!(stats.static_bytes_by_path["in.png"], 110);

    // The gateway's own fetch of the input is not counted as bytes served to clients.
    assert_eq!(run_job(&sandbox, &url, 2)["status"], "COMPLETED");
    let stats = sandbox.stats();
    assert_eq!(stats.static_bytes_served, 110);
    assert_eq!(stats.input_bytes_fetched, len);
}

#[test]
fn dropped_connections_show_as_transport_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        drop_rate: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let result = agent()
        .get(&format!("{}/v2/requests/status/x", sandbox.base_url()))
        .call();
    match result {
        Err(ureq::Error::StatusCode(code)) => panic!("got HTTP status {code}"),
        Err(_) => {}
        Ok(response) => panic!("got an answer: {}", response.status()),
    }
    let stats = sandbox.stats();
    assert!(stats.connections_dropped >= 1);
    assert!(stats.answered_by_code.is_empty());
}

#[test]
fn injected_500s_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        flaky_rate: 1.0,
        latency_ms: 150,
        ..config(dir.path())
    })
    .unwrap();
    let started = Instant::now();
    let answer = submit(&sandbox, json!({"image": "http://127.0.0.1:9/a.png"}));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(answer.status, 500);
    assert!(answer.json()["message"].is_string());
    let stats = sandbox.stats();
    assert_eq!((stats.submissions, stats.accepted), (0, 0));
    assert_eq!(stats.answered_by_code[&500], 1);
}

/// A loopback receiver that records every callback body it gets.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    server: Arc<tiny_http::Server>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (srv, got) = (server.clone(), bodies.clone());
        std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                if let Ok(value) = serde_json::from_str(&body) {
                    got.lock().unwrap().push(value);
                }
                let _ = request.respond(tiny_http::Response::empty(200));
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            bodies,
            server,
        }
    }

    /// The statuses received once `count` callbacks arrived and the sandbox has dealt with
    /// `handled` callbacks in all (sent, failed or withheld): no more can come.
    fn statuses(&self, sandbox: &Sandbox, count: usize, handled: u64) -> Vec<String> {
        wait_for("the callbacks", Duration::from_secs(30), || {
            let stats = sandbox.stats();
            self.bodies.lock().unwrap().len() >= count
                && stats.callbacks_sent + stats.callbacks_dropped >= handled
        });
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["status"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn submit_hooked(sandbox: &Sandbox, headers: &[(&str, &str)], body: Value) -> String {
    let answer = submit_with(sandbox, headers, body);
    assert_eq!(answer.status, 202);
    let accepted = answer.json();
    wait_final(accepted["polling_url"].as_str().unwrap());
    accepted["request_id"].as_str().unwrap().to_string()
}

#[test]
fn webhook_modes_deliver_what_the_gateway_promises() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 8, 8, image::ImageFormat::Png);
    let sandbox = Sandbox::start(config(dir.path())).unwrap();
    let image = sandbox.static_url("in.png");

    let terminal = Receiver::start();
    let id = submit_hooked(
        &sandbox,
        &[("X-Webhook-URL", &terminal.url)],
        json!({"image": image}),
    );
    assert_eq!(terminal.statuses(&sandbox, 1, 1), ["COMPLETED"]);
    let callback = terminal.bodies.lock().unwrap()[0].clone();
    assert_eq!(callback["request_id"], id.as_str());
    assert_eq!(callback["output"]["media_type"], "image/png");

    let sync = Receiver::start();
    submit_hooked(
        &sandbox,
        &[("X-Webhook-URL", &sync.url), ("X-Webhook-Mode", "sync")],
        json!({"image": image}),
    );
    assert_eq!(sync.statuses(&sandbox, 2, 3), ["PROCESSING", "COMPLETED"]);

    let body_hook = Receiver::start();
    submit_hooked(
        &sandbox,
        &[],
        json!({"image": image, "webhook": body_hook.url, "webhook_events_filter": ["start", "completed"]}),
    );
    assert_eq!(
        body_hook.statuses(&sandbox, 2, 5),
        ["PROCESSING", "COMPLETED"]
    );

    let stats = sandbox.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (5, 0));
}

#[test]
fn callbacks_can_be_duplicated_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 8, 8, image::ImageFormat::Png);

    let duplicating = Sandbox::start(SandboxConfig {
        duplicate_callbacks: true,
        error_rate: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let twice = Receiver::start();
    let id = submit_hooked(
        &duplicating,
        &[("X-Webhook-URL", &twice.url)],
        json!({"image": duplicating.static_url("in.png")}),
    );
    assert_eq!(twice.statuses(&duplicating, 2, 2), ["ERROR", "ERROR"]);
    let bodies = twice.bodies.lock().unwrap().clone();
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0]["request_id"], id.as_str());
    assert_eq!(bodies[0]["output"], Value::Null);

    let dropping = Sandbox::start(SandboxConfig {
        drop_callbacks: 1.0,
        ..config(dir.path())
    })
    .unwrap();
    let never = Receiver::start();
    submit_hooked(
        &dropping,
        &[("X-Webhook-URL", &never.url)],
        json!({"image": dropping.static_url("in.png")}),
    );
    assert!(never.statuses(&dropping, 0, 1).is_empty());
    let stats = dropping.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_dropped), (0, 1));
}

#[test]
fn stats_endpoint_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(config(dir.path())).unwrap();
    let _ = get(&format!("{}/v2/requests/status/x", sandbox.base_url()), &[]);
    let remote = get(&format!("{}/sandbox/stats", sandbox.base_url()), &[]).json();
    let stats: codeformer_ledger::sandbox::SandboxStats = serde_json::from_value(remote).unwrap();
    assert_eq!(stats.api_requests, 1);
    assert_eq!(stats.answered_by_code[&404], 1);
    assert_eq!(stats.wallet_usd, None);

    let addr = sandbox.base_url().trim_start_matches("http://").to_string();
    sandbox.shutdown();
    std::net::TcpListener::bind(&addr).expect("the port is free again");
}

/// Regression: with a wallet, every submit reads its input's header; with more clients than
/// HTTP workers, those reads must not wait for a worker of their own.
#[test]
fn more_concurrent_clients_than_workers_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), "in.png", 64, 48, image::ImageFormat::Png);
    let sandbox = Arc::new(
        Sandbox::start(SandboxConfig {
            workers: 4,
            render: false,
            wallet_usd: Some(Decimal::from(100)),
            ..config(dir.path())
        })
        .unwrap(),
    );
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let sandbox = sandbox.clone();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let doc = run_job(&sandbox, &sandbox.static_url("in.png"), 2);
                    assert_eq!(doc["status"], "COMPLETED");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let stats = sandbox.stats();
    assert_eq!((stats.accepted, stats.completed), (60, 60));
    assert_eq!(
        Decimal::from_str(&stats.charged_usd).unwrap(),
        price(60 * 128 * 96)
    );
    assert_eq!(
        Decimal::from_str(stats.wallet_usd.as_deref().unwrap()).unwrap(),
        Decimal::from(100) - price(60 * 128 * 96)
    );
}
