//! Webhook callbacks: `record_delivery` and `ingest` with hand-made bodies, the `listen`
//! receiver over real HTTP on loopback, and the whole path sandbox → listen → ledger → engine.
//! Real SQLite files, real sockets, the real binary: no mocks.

use crate::common::{wait_for, BIN};
use codeformer_ledger::ledger::{
    Change, DeliveryError, DeliveryKind, Event, Expect, Field, JobState, JobUpdate, Ledger, NewJob,
    Submitted,
};
use codeformer_ledger::params::JobParams;
use codeformer_ledger::webhooks::{ListenConfig, Listener};
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A temporary folder with a ledger.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        Place {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    fn ledger(&self) -> Ledger {
        Ledger::open(&self.ledger_path()).unwrap()
    }

    /// One number from the ledger, read with plain SQLite as any tool would.
    fn count(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.ledger_path()).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A job the gateway has accepted under `request_id`, as the engine records it.
fn queued_job(ledger: &mut Ledger, request_id: &str, batch: Option<&str>) -> i64 {
    let mut job = NewJob::new(JobParams::new(format!(
        "https://images.example.com/{request_id}.png"
    )));
    job.size = Some((1000, 1000));
    job.batch = batch.map(str::to_string);
    let id = ledger.enqueue(&[job]).unwrap()[0].id;
    let change = Change {
        state: Some(JobState::Queued),
        request_id: Some(request_id.to_string()),
        remote_status: Some("QUEUED".into()),
        submitted: Some(Submitted {
            price: Decimal::new(21, 4),
            estimate: Some(Decimal::new(84, 4)),
        }),
        ..Change::default()
    };
    let event = Event::new(Some(id), Some(1), "submit_answer").detail("202 accepted");
    ledger
        .record(vec![JobUpdate::new(id, 1, change, event)])
        .unwrap();
    id
}

/// A callback body of the documented shape.
fn body(request_id: &str, status: &str) -> String {
    let output = if status == "COMPLETED" {
        serde_json::json!({"media_url": [format!("https://cdn.example.com/v1/{request_id}/output.png")], "media_type": "image/png"})
    } else {
        serde_json::Value::Null
    };
    let error = match status {
        "FAILED" => serde_json::json!("face not found"),
        "ERROR" => serde_json::json!("Description of the error"),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "request_id": request_id, "status": status,
        "model_id": "codeformer-image-restoration", "error": error, "output": output,
        "created_at": "2026-03-31T10:00:00.000Z", "updated_at": "2026-03-31 10:00:15",
    })
    .to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

mod ingest {
    use super::*;

    #[test]
    fn a_completed_callback_only_makes_the_status_call_due_and_charges_nothing() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-1", None);
        let before = now_ms();
        let outcome = ledger.record_delivery(&body("req-1", "COMPLETED")).unwrap();
        assert_eq!(outcome.kind, DeliveryKind::Confirming);
        assert_eq!((outcome.job_id, outcome.attempt), (Some(id), Some(1)));
        assert!(outcome.detail.contains("hint"), "{}", outcome.detail);

        // Nothing but the schedule: the status call's answer moves the job.
        let job = ledger.job(id).unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.post, None);
        assert!(job.output_urls.is_empty());
        assert!(job.next_poll_at.unwrap() >= before && job.next_poll_at.unwrap() <= now_ms());
        assert!(job.finished_at.is_none());
        assert_eq!(job.actual_cost, None);
        assert_eq!(
            place.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
            0
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM events WHERE kind = 'callback' AND job_id = 1 AND remote_status = 'COMPLETED'"
            ),
            1
        );
        let rows = ledger.deliveries(Some("req-1")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].outcome.as_str(), rows[0].job_id),
            ("confirming", Some(id))
        );
        assert!(ledger.verify(false).unwrap().is_empty());
    }

    #[test]
    fn a_duplicate_changes_nothing_but_adds_its_delivery() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-1", None);
        ledger.record_delivery(&body("req-1", "COMPLETED")).unwrap();
        let job_before = ledger.job(id).unwrap().unwrap();
        let events_before = place.count("SELECT count(*) FROM events");

        let again = ledger.record_delivery(&body("req-1", "COMPLETED")).unwrap();
        assert_eq!(again.kind, DeliveryKind::Duplicate);
        let job_after = ledger.job(id).unwrap().unwrap();
        assert_eq!(format!("{job_before:?}"), format!("{job_after:?}"));
        assert_eq!(
            place.count("SELECT count(*) FROM events"),
            events_before + 1
        );
        let outcomes: Vec<String> = ledger
            .deliveries(Some("req-1"))
            .unwrap()
            .into_iter()
            .map(|d| d.outcome)
            .collect();
        assert_eq!(outcomes, ["confirming", "duplicate"]);

        // The same holds for a repeated non-final status (sync mode sends many).
        let id2 = queued_job(&mut ledger, "req-2", None);
        let first = ledger
            .record_delivery(&body("req-2", "PROCESSING"))
            .unwrap();
        let second = ledger
            .record_delivery(&body("req-2", "PROCESSING"))
            .unwrap();
        assert_eq!(
            (first.kind, second.kind),
            (DeliveryKind::Applied, DeliveryKind::Duplicate)
        );
        assert_eq!(
            ledger.job(id2).unwrap().unwrap().state,
            JobState::Processing
        );
    }

    #[test]
    fn out_of_order_callbacks_never_move_a_job_backwards() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-1", None);
        ledger
            .record_delivery(&body("req-1", "PROCESSING"))
            .unwrap();
        let queued = ledger.record_delivery(&body("req-1", "QUEUED")).unwrap();
        assert_eq!(queued.kind, DeliveryKind::Stale);
        assert!(
            queued.detail.contains("from processing"),
            "{}",
            queued.detail
        );
        // Two final statuses: both are hints waiting for the same status call.
        let completed = ledger.record_delivery(&body("req-1", "COMPLETED")).unwrap();
        let failed = ledger.record_delivery(&body("req-1", "FAILED")).unwrap();
        assert_eq!(
            (completed.kind, failed.kind),
            (DeliveryKind::Confirming, DeliveryKind::Confirming)
        );
        let late = ledger
            .record_delivery(&body("req-1", "PROCESSING"))
            .unwrap();
        assert_eq!(late.kind, DeliveryKind::Duplicate);
        let job = ledger.job(id).unwrap().unwrap();
        assert_eq!((job.state, job.post), (JobState::Processing, None));
        assert!(ledger.verify(false).unwrap().is_empty());

        // A job that ended stays ended.
        let done = queued_job(&mut ledger, "req-2", None);
        let end = Change {
            state: Some(JobState::Completed),
            finished: true,
            ..Change::default()
        };
        ledger
            .record(vec![JobUpdate::new(
                done,
                1,
                end,
                Event::new(Some(done), Some(1), "poll"),
            )])
            .unwrap();
        for status in ["PROCESSING", "FAILED"] {
            let late = ledger.record_delivery(&body("req-2", status)).unwrap();
            assert_eq!(late.kind, DeliveryKind::Stale, "{status}");
            assert!(late.detail.contains("from completed"), "{}", late.detail);
        }
        let again = ledger.record_delivery(&body("req-2", "COMPLETED")).unwrap();
        assert_eq!(again.kind, DeliveryKind::Duplicate);
        assert_eq!(
            ledger.job(done).unwrap().unwrap().state,
            JobState::Completed
        );
    }

    #[test]
    fn an_unknown_request_id_is_an_orphan() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let outcome = ledger
            .record_delivery(&body("someone-elses", "COMPLETED"))
            .unwrap();
        assert_eq!(outcome.kind, DeliveryKind::Orphan);
        assert_eq!((outcome.job_id, outcome.attempt), (None, None));
        assert_eq!(
            place.count(
                "SELECT count(*) FROM deliveries WHERE outcome = 'orphan' AND job_id IS NULL AND request_id = 'someone-elses'"
            ),
            1
        );
        assert_eq!(
            place.count("SELECT count(*) FROM events WHERE kind = 'callback' AND job_id IS NULL"),
            1
        );
        assert_eq!(
            place.count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
            1
        );
    }

    #[test]
    fn malformed_bodies_and_wrong_types_are_named_and_write_nothing() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let events = place.count("SELECT count(*) FROM events");
        let cases = [
            ("{not json", "not the documented JSON"),
            ("", "not the documented JSON"),
            (
                r#"{"request_id": 42, "status": "COMPLETED"}"#,
                "request_id is a number",
            ),
            (
                r#"{"request_id": "req-1", "status": 3}"#,
                "status is a number",
            ),
            // An undocumented status (`DONE`) is recorded as said; an empty one is no status.
            (
                r#"{"request_id": "req-1", "status": ""}"#,
                "status is 0 characters long",
            ),
            (r#"{"status": "QUEUED"}"#, "no request_id"),
            (
                r#"{"request_id": "req-1", "status": "COMPLETED", "output": {"media_url": {"a": 1}}}"#,
                "media_url is an object",
            ),
            (
                r#"{"request_id": "req-1", "status": "COMPLETED", "output": null}"#,
                "media_url holds no URL",
            ),
        ];
        for (bad, named) in cases {
            let err = ledger.record_delivery(bad).unwrap_err();
            assert!(matches!(err, DeliveryError::Malformed(_)), "{bad}: {err:?}");
            let message = err.to_string();
            assert!(
                message.starts_with("malformed callback body") && message.contains(named),
                "{bad}: {message}"
            );
        }
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 0);
        assert_eq!(place.count("SELECT count(*) FROM events"), events);
        assert_eq!(
            place.count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
            1
        );
    }

    #[test]
    fn final_failures_by_callback_end_nothing_and_charge_nothing() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let errored = queued_job(&mut ledger, "req-e", None);
        let failed = queued_job(&mut ledger, "req-f", None);
        for _ in 0..2 {
            ledger.record_delivery(&body("req-e", "ERROR")).unwrap();
            ledger.record_delivery(&body("req-f", "FAILED")).unwrap();
        }
        for id in [errored, failed] {
            let job = ledger.job(id).unwrap().unwrap();
            assert_eq!(
                (job.state, job.actual_cost, job.error),
                (JobState::Queued, None, None)
            );
            assert!(job.next_poll_at.is_some());
        }
        assert_eq!(
            place.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
            0
        );
        assert_eq!(
            place.count("SELECT count(*) FROM deliveries WHERE outcome = 'confirming'"),
            2
        );
        assert_eq!(
            place.count("SELECT count(*) FROM deliveries WHERE outcome = 'duplicate'"),
            2
        );
        assert!(ledger.verify(false).unwrap().is_empty());
    }

    #[test]
    fn a_callback_for_an_earlier_attempt_is_stale() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-old", None);
        let end = Change {
            state: Some(JobState::Failed),
            finished: true,
            ..Change::default()
        };
        ledger
            .record(vec![JobUpdate::new(
                id,
                1,
                end,
                Event::new(Some(id), Some(1), "poll"),
            )])
            .unwrap();
        ledger
            .new_attempts(&[JobState::Failed], None, "run --retry")
            .unwrap();
        let late = ledger
            .record_delivery(&body("req-old", "COMPLETED"))
            .unwrap();
        assert_eq!(late.kind, DeliveryKind::Stale);
        assert_eq!((late.job_id, late.attempt), (Some(id), Some(1)));
        assert!(
            late.detail.contains("may have been charged"),
            "{}",
            late.detail
        );
        let job = ledger.job(id).unwrap().unwrap();
        assert_eq!((job.state, job.attempt), (JobState::Planned, 2));
    }

    #[test]
    fn a_stalled_job_s_final_callback_makes_its_status_call_due() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-1", None);
        let stall = Change {
            state: Some(JobState::Stalled),
            next_poll_at: Field::Clear,
            finished: true,
            reason: Field::Set("still queued after the deadline".into()),
            ..Change::default()
        };
        let event = Event::new(Some(id), Some(1), "state").detail("queued -> stalled");
        ledger
            .record(vec![JobUpdate::new(id, 1, stall, event)])
            .unwrap();
        let outcome = ledger.record_delivery(&body("req-1", "COMPLETED")).unwrap();
        assert_eq!(outcome.kind, DeliveryKind::Confirming);
        let job = ledger.job(id).unwrap().unwrap();
        assert_eq!((job.state, job.post), (JobState::Stalled, None));
        assert!(job.next_poll_at.is_some());
    }
}

mod ingest_cli {
    use super::*;

    fn ingest(place: &Place, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .arg("ingest")
            .args(args)
            .env("CODEFORMER_LEDGER", place.ledger_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }

    #[test]
    fn json_lines_report_each_line_and_a_malformed_one_among_applied_ones_exits_3() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let lines = [
            body("req-1", "COMPLETED"),
            String::new(),
            body("req-1", "COMPLETED"),
            body("req-1", "PROCESSING"),
            body("nobody", "QUEUED"),
            "{\"request_id\": \"req-1\", \"status\": true}".to_string(),
            "[1, 2".to_string(),
        ];
        let file = place.write("callbacks.jsonl", &lines.join("\n"));
        let out = ingest(&place, &[file.to_str().unwrap()], None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Not 2: exit 2 promises nothing was written, and the good lines were.
        assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("line 1: confirming: COMPLETED is a hint: the job stays queued and its status call is due now (req-1 COMPLETED, job 1)"),
            "{stdout}"
        );
        assert!(stdout.contains("line 3: duplicate"), "{stdout}");
        assert!(
            stdout.contains("line 4: applied: queued -> processing"),
            "{stdout}"
        );
        assert!(stdout.contains("line 5: orphan"), "{stdout}");
        assert!(
            stdout.contains(
                "6 callback bodies: 1 applied, 1 duplicate, 0 stale, 1 orphan, 1 confirming, 2 malformed"
            ),
            "{stdout}"
        );
        assert!(
            stderr.contains("line 6: malformed callback body: status is a boolean"),
            "{stderr}"
        );
        assert!(
            stderr.contains("line 7: malformed callback body"),
            "{stderr}"
        );
        assert!(stderr.contains("(line 6, 7)"), "{stderr}");
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 4);

        // Only malformed lines: nothing was written, so exit 2.
        let file = place.write("bad.jsonl", "[1, 2\n{\"status\": \"QUEUED\"}\n");
        let out = ingest(&place, &[file.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 4);
    }

    #[test]
    fn one_pretty_body_from_stdin_applies_and_exits_0() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let value: serde_json::Value = serde_json::from_str(&body("req-1", "ERROR")).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let out = ingest(&place, &[], Some(&pretty));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains("line 1: confirming: ERROR is a hint"),
            "{stdout}"
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM jobs WHERE state = 'queued' AND next_poll_at IS NOT NULL"
            ),
            1
        );
    }

    #[test]
    fn a_missing_ledger_is_not_created() {
        let place = Place::new();
        let out = ingest(&place, &["-"], Some(&body("req-1", "QUEUED")));
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger at"));
        assert!(!place.ledger_path().exists());
    }
}

mod listen {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into()
    }

    fn start(place: &Place, token: Option<&str>) -> Listener {
        let mut config = ListenConfig::new("127.0.0.1:0".parse().unwrap());
        config.path_token = token.map(str::to_string);
        Listener::start(&place.ledger_path(), config).unwrap()
    }

    /// POSTs a body; the status and the answer's text.
    fn post(agent: &ureq::Agent, url: &str, body: &str) -> (u16, String) {
        let mut answer = agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.body_mut().read_to_string().unwrap())
    }

    /// Sends raw bytes and returns the whole answer.
    fn raw(listener: &Listener, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(listener.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn a_delivery_is_in_the_ledger_when_200_arrives() {
        let place = Place::new();
        let mut ledger = place.ledger();
        let id = queued_job(&mut ledger, "req-1", None);
        let listener = start(&place, Some("s3cret"));
        let addr = listener.addr();
        let url = format!("http://{addr}/callback/s3cret");
        let agent = agent();

        let (status, answer) = post(&agent, &url, &body("req-1", "PROCESSING"));
        assert_eq!(status, 200, "{answer}");
        // Read at once, from another connection: the row is there.
        assert_eq!(ledger.job(id).unwrap().unwrap().state, JobState::Processing);
        assert_eq!(
            place.count("SELECT count(*) FROM deliveries WHERE outcome = 'applied'"),
            1
        );
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["outcome"], "applied");
        assert_eq!(answer["job_id"], id);

        let (status, answer) = post(&agent, &url, &body("req-1", "PROCESSING"));
        assert_eq!((status, answer.contains("duplicate")), (200, true));
        let (status, answer) = post(&agent, &url, "{\"request_id\": 7}");
        assert_eq!(status, 400);
        assert!(answer.contains("request_id is a number"), "{answer}");
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 2);

        let stats = listener.stop();
        assert_eq!((stats.applied, stats.duplicate, stats.malformed), (1, 1, 1));
        assert!(TcpStream::connect(addr).is_err(), "stopped means closed");
    }

    #[test]
    fn the_token_is_enforced_and_refusals_write_nothing() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let listener = start(&place, Some("s3cret"));
        let base = format!("http://{}", listener.addr());
        let agent = agent();
        let callback = body("req-1", "PROCESSING");
        for (path, expected) in [
            ("/callback/wrong", 401),
            ("/callback/", 401),
            ("/callback/s3cret2", 401),
            ("/callback", 404),
            ("/", 404),
            ("/other/s3cret", 404),
        ] {
            let (status, _) = post(&agent, &format!("{base}{path}"), &callback);
            assert_eq!(status, expected, "{path}");
        }
        let get = agent.get(format!("{base}/callback/s3cret")).call().unwrap();
        assert_eq!(get.status().as_u16(), 405);
        assert_eq!(get.headers().get("allow").unwrap(), "POST");
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 0);
        assert_eq!(
            place.count("SELECT count(*) FROM jobs WHERE state = 'queued'"),
            1
        );
        // A query string does not hide the token check.
        let (status, _) = post(
            &agent,
            &format!("{base}/callback/s3cret?via=proxy"),
            &callback,
        );
        assert_eq!(status, 200);
        assert_eq!(listener.stop().refused, 7);
    }

    #[test]
    fn bodies_over_the_limit_get_413_without_being_read() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let mut config = ListenConfig::new("127.0.0.1:0".parse().unwrap());
        config.max_body = 4096;
        let listener = Listener::start(&place.ledger_path(), config).unwrap();
        let url = format!("http://{}/", listener.addr());
        let agent = agent();

        let padded = body("req-1", "PROCESSING").replacen(
            '{',
            &format!("{{\"pad\": \"{}\", ", "x".repeat(5000)),
            1,
        );
        let (status, answer) = post(&agent, &url, &padded);
        assert_eq!(status, 413, "{answer}");
        assert!(answer.contains("4096-byte limit"));

        // Regression: a declared length far beyond memory is refused at once, not drained.
        let answer = raw(
            &listener,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n{",
        );
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");

        // A chunked body is cut off as soon as it passes the limit.
        let chunk = "y".repeat(3000);
        let chunked = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        );
        assert!(raw(&listener, chunked.as_bytes()).starts_with("HTTP/1.1 413 "));
        assert_eq!(place.count("SELECT count(*) FROM deliveries"), 0);

        // Within the limit, chunked and Expect: 100-continue bodies are read.
        let small = body("req-1", "PROCESSING");
        let chunked = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
            small.len()
        );
        let answer = raw(&listener, chunked.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        let completed = body("req-1", "COMPLETED");
        let expect = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{completed}",
            completed.len()
        );
        let answer = raw(&listener, expect.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "),
            "{answer}"
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM deliveries WHERE outcome IN ('applied', 'confirming')"
            ),
            2
        );
    }

    #[test]
    fn garbage_and_slow_clients_do_not_stop_it() {
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let listener = start(&place, None);
        assert!(raw(&listener, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge_head = format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(raw(&listener, huge_head.as_bytes()).starts_with("HTTP/1.1 431 "));
        // Idle connections hold a worker each; the others still answer.
        let idle: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(listener.addr()).unwrap())
            .collect();
        let url = format!("http://{}/callback", listener.addr());
        let (status, _) = post(&agent(), &url, &body("req-1", "PROCESSING"));
        assert_eq!(status, 200);
        // Stopping does not wait for them to send a request.
        let stats = listener.stop();
        assert_eq!((stats.applied, stats.refused), (1, 2));
        drop(idle);
    }

    /// An engine-like writer commits a group of 40 events every few milliseconds, and every
    /// fifth time holds the write lock for 300 ms; every callback is still recorded and
    /// answered well within the gateway's few seconds.
    #[test]
    fn a_busy_engine_does_not_make_it_fail() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        use std::sync::Arc;
        let place = Place::new();
        let mut ledger = place.ledger();
        let ids: Vec<i64> = (0..40)
            .map(|i| queued_job(&mut ledger, &format!("req-{i}"), None))
            .collect();
        let listener = start(&place, Some("tok"));
        let url = format!("http://{}/callback/tok", listener.addr());

        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU32::new(0));
        let writer = {
            let (path, stop, rounds) = (place.ledger_path(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let mut engine = Ledger::open(&path).unwrap();
                let raw = rusqlite::Connection::open(&path).unwrap();
                raw.busy_timeout(Duration::from_secs(10)).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let items = ids
                        .iter()
                        .map(|&id| {
                            let event = Event::new(Some(id), Some(1), "poll").detail("engine-like");
                            JobUpdate::new(id, 1, Change::default(), event)
                        })
                        .collect();
                    engine.record(items).unwrap();
                    if rounds.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
                        raw.execute_batch("BEGIN IMMEDIATE").unwrap();
                        std::thread::sleep(Duration::from_millis(300));
                        raw.execute_batch("COMMIT").unwrap();
                    }
                    // An engine waits for its next HTTP answers between two commits.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };

        let agent = agent();
        let send = |request_id: &str, status: &str| {
            let (code, answer) = post(&agent, &url, &body(request_id, status));
            assert_eq!(code, 200, "{answer}");
        };
        for i in 0..40 {
            send(&format!("req-{i}"), "PROCESSING");
            send(&format!("req-{i}"), "COMPLETED");
        }
        // Keep delivering (duplicates now) until the writer has held the lock a few times.
        let until = Instant::now() + Duration::from_secs(20);
        while rounds.load(Ordering::SeqCst) < 20 && Instant::now() < until {
            send("req-0", "PROCESSING");
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(
            rounds.load(Ordering::SeqCst) >= 20,
            "the writer fell behind"
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM jobs WHERE state = 'processing' AND next_poll_at IS NOT NULL"
            ),
            40
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM deliveries WHERE outcome IN ('applied', 'confirming')"
            ),
            80
        );
        assert_eq!(listener.stop().failed, 0);
    }

    #[test]
    fn the_command_prints_its_address_and_stops_cleanly_on_a_signal() {
        use std::io::BufRead;
        let place = Place::new();
        let mut ledger = place.ledger();
        queued_job(&mut ledger, "req-1", None);
        let mut child = Command::new(BIN)
            .args(["listen", "--addr", "127.0.0.1:0"])
            .env("CODEFORMER_LEDGER", place.ledger_path())
            .env("CODEFORMER_LISTEN_TOKEN", "from-env")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN_ADDR=")
            .unwrap()
            .to_string();
        let (status, _) = post(
            &agent(),
            &format!("http://{addr}/callback/from-env"),
            &body("req-1", "PROCESSING"),
        );
        assert_eq!(status, 200);
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("POST /callback/<token> 200 applied req-1 PROCESSING"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("from-env"),
            "the token is never logged: {stderr}"
        );
        assert!(
            stderr.contains("listen stopped: 1 applied, 0 confirming, 0 adopting, 0 duplicate"),
            "{stderr}"
        );
    }

    #[test]
    fn bad_options_exit_2_and_name_the_option() {
        let place = Place::new();
        let out = Command::new(BIN)
            .args(["listen", "--addr", "127.0.0.1:0", "--path-token", "a/b"])
            .env("CODEFORMER_LEDGER", place.ledger_path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("path token"));
        let out = Command::new(BIN)
            .args(["listen", "--addr", "127.0.0.1:0", "--max-body", "0"])
            .env("CODEFORMER_LEDGER", place.ledger_path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("body limit"));
    }
}

/// The whole path on loopback: the sandbox calls back to `listen`, which records the
/// callbacks in the ledger an engine is running on.
mod end_to_end {
    use super::*;
    use codeformer_ledger::engine::{self, EngineOptions, LuaHooks, PostProcessor};
    use codeformer_ledger::gateway::{Gateway, GatewayConfig};
    use codeformer_ledger::hooks::HookConfig;
    use codeformer_ledger::params::WebhookMode;
    use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
    use std::str::FromStr;

    fn images(dir: &Path) -> PathBuf {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        for name in ["avatar.png", "portrait-small.png", "tall-333x517.jpg"] {
            std::fs::copy(Path::new("examples/images").join(name), images.join(name)).unwrap();
        }
        images
    }

    #[test]
    fn every_job_finishes_once_with_duplicate_and_dropped_callbacks() {
        let place = Place::new();
        let sandbox = Sandbox::start(SandboxConfig {
            static_dir: Some(images(place.dir.path())),
            queue_ms: 10,
            processing_ms: (30, 80),
            render: false,
            allow_http_webhooks: true,
            duplicate_callbacks: true,
            drop_callbacks: 0.3,
            seed: 7,
            ..SandboxConfig::default()
        })
        .unwrap();
        let listener = start_listener(&place);
        let callback_url = format!("http://{}/callback/e2e-token", listener.addr());

        let mut ledger = place.ledger();
        let names = ["avatar.png", "portrait-small.png", "tall-333x517.jpg"];
        let jobs: Vec<NewJob> = (0..12)
            .map(|i| {
                let mut params = JobParams::new(sandbox.static_url(names[i % 3]));
                params.webhook_url = Some(callback_url.clone());
                params.webhook_mode = Some(if i % 2 == 0 {
                    WebhookMode::Terminal
                } else {
                    WebhookMode::Sync
                });
                let mut job = NewJob::new(params);
                // Sizes known up front, as from manifest columns: no header probes.
                let size =
                    imagesize::size(Path::new("examples/images").join(names[i % 3])).unwrap();
                job.size = Some((size.width as u32, size.height as u32));
                job.key = Some(format!("job-{i}"));
                job.batch = Some("e2e".into());
                job
            })
            .collect();
        ledger.enqueue(&jobs).unwrap();

        let hook = place.write(
            "done.lua",
            "function on_complete(job) fs.write('done-' .. job.id .. '.txt', job.request_id) end",
        );
        let out_dir = place.dir.path().join("out");
        let mut hook_config = HookConfig::new(vec![hook], &out_dir);
        hook_config.worker_exe = BIN.into();
        let mut hooks = LuaHooks::start(hook_config).unwrap();

        let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
        let mut options = EngineOptions::new(out_dir.clone());
        options.batch = Some("e2e".into());
        options.poll_interval = Duration::from_millis(50);
        options.callback_fallback = Duration::from_millis(1500);
        let summary = {
            let _lock = ledger.lock_engine().unwrap();
            let hooks: &mut dyn PostProcessor = &mut hooks;
            engine::run(&mut ledger, &gateway, &options, Some(hooks), &mut ()).unwrap()
        };
        // Duplicates may land after the run: wait for one before counting.
        wait_for("a duplicate callback", Duration::from_secs(30), || {
            listener.stats().duplicate > 0
        });
        let listened = listener.stop();
        let stats = sandbox.stats();

        assert_eq!(summary.count(JobState::Completed), 12, "{summary:?}");
        assert_eq!(codeformer_ledger::exit::of_run(&summary), 0);
        assert!(stats.callbacks_dropped > 0, "{stats:?}");
        assert!(listened.duplicate > 0, "{listened:?}");
        assert_eq!(listened.failed + listened.malformed + listened.refused, 0);

        // Exactly once: one charge per job, equal to what the gateway charged; one hook run.
        for job in (1..=12).map(|id| ledger.job(id).unwrap().unwrap()) {
            let request_id = job.request_id.clone().unwrap();
            let charged = Decimal::from_str(&stats.charges_by_request[&request_id]).unwrap();
            assert_eq!(job.actual_cost, Some(charged), "job {}", job.id);
            assert_eq!(job.post, None);
            assert!(out_dir.join(format!("done-{}.txt", job.id)).exists());
        }
        assert_eq!(
            place.count("SELECT count(*) FROM events WHERE kind = 'charge'"),
            12
        );
        assert_eq!(
            place.count(
                "SELECT count(*) FROM hook_runs WHERE function = 'on_complete' AND status = 'ok'"
            ),
            12
        );
        assert_eq!(place.count("SELECT count(*) FROM outputs"), 12);
        assert!(ledger.verify(true).unwrap().is_empty());

        // Callbacks did the work, the gateway had the word: every job was polled, and a job
        // whose COMPLETED callback arrived in time was confirmed by one status call instead of
        // waiting for the fallback poll; each such callback agreed with the gateway.
        assert_eq!(place.count("SELECT count(*) FROM jobs WHERE polls = 0"), 0);
        let confirmed = place.count(
            "SELECT count(*) FROM deliveries WHERE remote_status = 'COMPLETED' AND outcome = 'confirmed'",
        );
        assert!(confirmed > 0, "no job's callback was confirmed");
        assert_eq!(
            place.count(
                "SELECT count(*) FROM deliveries WHERE outcome IN ('unconfirmed', 'confirming')"
            ),
            0
        );
        sandbox.shutdown();
    }

    fn start_listener(place: &Place) -> Listener {
        let mut config = ListenConfig::new("127.0.0.1:0".parse().unwrap());
        config.path_token = Some("e2e-token".into());
        Listener::start(&place.ledger_path(), config).unwrap()
    }
}

#[test]
fn a_callback_that_beats_the_submit_answer_is_adopted_when_the_answer_is_recorded() {
    let place = Place::new();
    let mut ledger = place.ledger();
    // The callback arrives first: no job knows the request id yet.
    let outcome = ledger
        .record_delivery(&body("r-early", "COMPLETED"))
        .unwrap();
    assert_eq!(outcome.kind, DeliveryKind::Orphan);
    // Then the engine records the 202 and adopts it.
    let id = queued_job(&mut ledger, "r-early", None);
    assert_eq!(ledger.adopt_orphans("r-early").unwrap(), 1);
    let job = ledger.job(id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(job.next_poll_at.is_some(), "its status call is due");
    assert_eq!(
        place.count("SELECT count(*) FROM deliveries WHERE outcome = 'orphan'"),
        1
    );
    assert_eq!(
        place.count("SELECT count(*) FROM deliveries WHERE outcome = 'confirming'"),
        1
    );
}

#[test]
fn a_poll_answer_does_not_undo_a_callback_recorded_while_it_was_in_flight() {
    let place = Place::new();
    let mut ledger = place.ledger();
    let id = queued_job(&mut ledger, "r-race", None);
    ledger
        .record_delivery(&body("r-race", "PROCESSING"))
        .unwrap();
    // A poll sent while the job was queued answers QUEUED after the callback landed.
    let stale = Change {
        state: Some(JobState::Queued),
        remote_status: Some("QUEUED".into()),
        count_poll: true,
        expect: Some(Expect {
            state: JobState::Queued,
            attempt: 1,
        }),
        ..Change::default()
    };
    let event = Event::new(Some(id), Some(1), "poll").detail("QUEUED");
    ledger
        .record(vec![JobUpdate::new(id, 1, stale, event)])
        .unwrap();
    assert_eq!(ledger.job(id).unwrap().unwrap().state, JobState::Processing);
    assert_eq!(
        place.count(&format!(
            "SELECT count(*) FROM events WHERE job_id = {id} AND kind = 'poll'"
        )),
        1
    );
}
