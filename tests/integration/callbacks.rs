//! Callbacks are hints, the gateway is the truth: a forged final callback (to `listen` or
//! through `ingest`) downloads nothing from its media URL and charges nothing, and an
//! uncertain attempt whose ghost calls back on the attempt's own path adopts its request id
//! after a status call. The real binary, the sandbox, `listen` and a trap server on loopback.

use crate::common::{text, wait_for, World};
use codeformer_ledger::sandbox::SandboxConfig;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "cb-token-1";

/// A loopback server that must see no request: it counts every connection it accepts.
struct Trap {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Trap {
    fn start() -> Trap {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let (hits, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::SeqCst) && Instant::now() < until {
                match socket.accept() {
                    Ok((mut stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        let _ = stream.read(&mut [0u8; 1024]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Trap {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `listen` on a free loopback port, with the token; killed when dropped.
struct Receiver {
    child: Child,
    addr: String,
}

impl Receiver {
    fn start(world: &World) -> Receiver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = world
            .command(&["listen", "--addr", &addr, "--quiet"])
            .env("CODEFORMER_LISTEN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("listen to accept", Duration::from_secs(20), || {
            TcpStream::connect(&addr).is_ok()
        });
        Receiver { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/callback/{TOKEN}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A COMPLETED body for this request id whose output lies on the trap.
fn forged(request_id: &str, trap: &Trap) -> String {
    serde_json::json!({
        "request_id": request_id, "status": "COMPLETED", "error": null,
        "output": {"media_url": [format!("http://{}/forged.png", trap.addr)], "media_type": "image/png"},
    })
    .to_string()
}

/// Waits for a child to exit (bounded), and its exit code.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One job with callbacks to `listen`, processing long enough for `forge` to send its body
/// meanwhile; then the checks: nothing fetched from the trap, the sandbox's own output and
/// charge, the forged delivery `unconfirmed`.
fn a_forged_callback_changes_nothing(forge: impl FnOnce(&World, &Receiver, String)) {
    let world = World::timed(SandboxConfig {
        allow_http_webhooks: true,
        queue_ms: 10,
        processing_ms: (1500, 1500),
        ..SandboxConfig::default()
    });
    let trap = Trap::start();
    let receiver = Receiver::start(&world);
    let manifest = world.manifest("m.txt", &[world.png("a.png", 64, 48)]);
    let out = world.out_dir();
    let log = world.dir.path().join("batch.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut batch = world
        .command(&[
            "batch",
            manifest.to_str().unwrap(),
            "--webhook-url",
            &receiver.url(),
            "--poll-interval",
            "50ms",
            "--quiet",
            "--out-dir",
            out.to_str().unwrap(),
        ])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let db = world.db();
    let request_id = || -> Option<String> {
        db.query_row("SELECT request_id FROM jobs WHERE id = 1", [], |r| r.get(0))
            .ok()
            .flatten()
    };
    wait_for("the job's request id", Duration::from_secs(30), || {
        request_id().is_some()
    });
    let request_id = request_id().unwrap();
    forge(&world, &receiver, forged(&request_id, &trap));
    let code = wait_exit(&mut batch, Duration::from_secs(90));
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{said}");

    assert_eq!(trap.hits(), 0, "the forged media URL was fetched");
    let (state, urls, cost): (String, String, String) = db
        .query_row(
            "SELECT j.state, coalesce(j.output_urls, (SELECT json_group_array(o.url) FROM outputs o
                 WHERE o.job_id = j.id AND o.attempt = j.attempt)), a.actual_cost FROM jobs j
             JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(state, "completed", "{said}");
    assert!(!urls.contains(&trap.addr.to_string()), "{urls}");
    assert!(
        urls.contains(&request_id),
        "the sandbox's own output: {urls}"
    );
    let stats = world.sandbox.stats();
    assert_eq!(cost, stats.charges_by_request[&request_id]);
    assert_eq!(
        world.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
        1
    );
    assert_eq!(world.count("SELECT count(*) FROM outputs"), 1);
    let trap_addr = trap.addr.to_string();
    let forged_outcome: String = db
        .query_row(
            "SELECT outcome FROM deliveries WHERE instr(body, ?1) > 0",
            [&trap_addr],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(forged_outcome, "unconfirmed");
    // The forged body cost one status call, not a poll schedule: far fewer than polling.
    assert!(stats.status_requests >= 1);
}

#[test]
fn a_forged_callback_to_listen_is_unconfirmed_and_fetches_nothing() {
    a_forged_callback_changes_nothing(|_, receiver, body| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        // On the attempt's own path, as the gateway would call it back.
        let url = format!("{}/a/1-1", receiver.url());
        let answer = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
    });
}

#[test]
fn a_forged_callback_through_ingest_is_unconfirmed_and_fetches_nothing() {
    a_forged_callback_changes_nothing(|world, _, body| {
        let file = world.dir.path().join("forged.json");
        std::fs::write(&file, body).unwrap();
        let out = world.cli(&["ingest", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(text(&out).contains("confirming"), "{}", text(&out));
    });
}

/// Submissions whose answers the sandbox drops are created but `uncertain`; their callbacks,
/// on each attempt's own path, adopt them: every job completes, each image is billed once,
/// and `--resubmit-uncertain` has nothing left to send.
#[test]
fn ghost_submissions_are_adopted_by_their_callbacks_and_billed_once() {
    let world = World::with(SandboxConfig {
        allow_http_webhooks: true,
        drop_rate: 0.3,
        seed: 11,
        ..SandboxConfig::default()
    });
    let receiver = Receiver::start(&world);
    let urls: Vec<String> = (0..12)
        .map(|i| world.png(&format!("g{i}.png"), 16 + i, 16))
        .collect();
    let manifest = world.manifest("g.txt", &urls);
    let out = world.out_dir();
    let mut args = vec![
        "batch",
        manifest.to_str().unwrap(),
        "--webhook-url",
        "",
        "--poll-interval",
        "50ms",
        "--callback-fallback",
        "200ms",
        "--quiet",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    let hook = receiver.url();
    args[3] = &hook;
    let first = world.cli(&args);
    let said = text(&first);
    // The seed drops some submission answers: the test would prove nothing otherwise.
    let uncertain = world.count(
        "SELECT count(DISTINCT job_id) FROM events WHERE kind = 'submit_answer' AND http_status IS NULL",
    );
    assert!(uncertain > 0, "no submission answer was dropped: {said}");
    // Every ghost calls back on its path (terminal callbacks, none dropped): wait until no
    // uncertain job is left without an adopted request id.
    wait_for("every ghost's callback", Duration::from_secs(30), || {
        world.count("SELECT count(*) FROM jobs WHERE state = 'uncertain' AND request_id IS NULL")
            == 0
    });
    let second = world.run(&["--callback-fallback", "200ms"]);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{said}\n{}\n{:?}",
        text(&second),
        world.cli(&["events", "--job", "1"]).stdout.len()
    );
    let third = world.run(&["--resubmit-uncertain"]);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));

    let stats = world.sandbox.stats();
    assert_eq!(
        world.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        12,
        "{said}\n{}",
        text(&second)
    );
    assert_eq!(
        world.count("SELECT count(*) FROM jobs WHERE attempt > 1"),
        0
    );
    // Billed once per image: one accepted submission and one charge each.
    for (image, n) in &stats.submissions_by_image {
        assert_eq!(*n, 1, "{image} was sent {n} times");
    }
    assert_eq!(stats.charges_by_request.len(), 12);
    // Every attempt whose answer was lost was adopted through its ghost's callback.
    let adopted =
        world.count("SELECT count(DISTINCT job_id) FROM deliveries WHERE outcome = 'adopted'");
    assert_eq!(adopted, uncertain, "{said}");
    let db = world.db();
    let mut rows = db
        .prepare(
            "SELECT j.request_id, a.actual_cost FROM jobs j
             JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt",
        )
        .unwrap();
    let charged: Vec<(String, String)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (request_id, cost) in charged {
        assert_eq!(cost, stats.charges_by_request[&request_id], "{request_id}");
    }
    assert_eq!(
        world.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
        12
    );
}

/// A body on the path of another attempt than its request id's, or for an attempt that is
/// not uncertain, changes nothing and is recorded as `wrong_path`.
#[test]
fn a_callback_on_another_attempt_s_path_is_refused_and_recorded() {
    let world = World::with(SandboxConfig {
        allow_http_webhooks: true,
        ..SandboxConfig::default()
    });
    let receiver = Receiver::start(&world);
    let urls = vec![world.png("p.png", 20, 20), world.png("q.png", 24, 20)];
    let manifest = world.manifest("p.txt", &urls);
    let out = world.out_dir();
    let hook = receiver.url();
    let done = world.cli(&[
        "batch",
        manifest.to_str().unwrap(),
        "--webhook-url",
        &hook,
        "--poll-interval",
        "50ms",
        "--callback-fallback",
        "200ms",
        "--quiet",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    // Each attempt was sent with its own callback path, and its callback came back on it.
    wait_for("both callbacks", Duration::from_secs(20), || {
        world.count("SELECT count(DISTINCT path_job) FROM deliveries WHERE path_attempt = 1") == 2
    });
    let db = world.db();
    let first: String = db
        .query_row("SELECT request_id FROM jobs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let send = |path: &str, request_id: &str| {
        let body = serde_json::json!({"request_id": request_id, "status": "PROCESSING"});
        let answer = agent
            .post(format!("{}/{path}", receiver.url()))
            .send(body.to_string().as_bytes())
            .unwrap();
        answer.status().as_u16()
    };
    // Job 1's request id on job 2's path; an unknown id on a completed job's path; a path of
    // an attempt that does not exist.
    assert_eq!(send("a/2-1", &first), 200);
    assert_eq!(send("a/1-1", "ghost-of-nobody"), 200);
    assert_eq!(send("a/1-9", "ghost-of-nobody"), 200);
    assert_eq!(send("a/x-1", "ghost-of-nobody"), 404);
    assert_eq!(
        world.count("SELECT count(*) FROM deliveries WHERE outcome = 'wrong_path'"),
        3
    );
    assert_eq!(
        world.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        2
    );
    let still: String = db
        .query_row("SELECT request_id FROM jobs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still, first);
}
