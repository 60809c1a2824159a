//! `listen` against idle, slow and too many clients, through the real binary: none of them
//! keeps a callback from being recorded (regression: eight idle connections held every worker
//! for 10 s each, and a thousand stopped callbacks for minutes).

use crate::common::*;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `listen` and the address it printed.
struct Receiver {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Receiver {
    fn start(extra: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(BIN)
            .args(["listen", "--addr", "127.0.0.1:0", "--quiet"])
            .args(extra)
            .env("CODEFORMER_LEDGER", dir.path().join("ledger.db"))
            .env_remove("CODEFORMER_LISTEN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN_ADDR=")
            .unwrap_or_else(|| panic!("no address printed: {line:?}"))
            .to_string();
        Receiver { child, addr, dir }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    /// POSTs an orphan callback on a fresh connection; the whole answer (bounded wait).
    fn callback(&self, request_id: &str) -> String {
        let body =
            serde_json::json!({"request_id": request_id, "status": "PROCESSING"}).to_string();
        let mut stream = self.connect();
        let request = format!(
            "POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    fn deliveries(&self) -> i64 {
        rusqlite::Connection::open(self.dir.path().join("ledger.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
            .unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until EOF (or the read timeout); what arrived, and whether it ended in EOF.
fn read_all(stream: &mut TcpStream) -> (String, bool) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&bytes).into_owned(), true),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&bytes).into_owned(), false),
        }
    }
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let receiver = Receiver::start(&["--header-timeout", "300ms"]);
    let mut idle = receiver.connect();
    let mut partial = receiver.connect();
    partial
        .write_all(b"POST /callback HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The server closes the idle one without a word, and answers the partial head 408.
    let (said, eof) = read_all(&mut idle);
    assert!(eof, "the idle connection was not closed by the server");
    assert_eq!(said, "");
    let (said, eof) = read_all(&mut partial);
    assert!(eof, "the stalled connection was not closed by the server");
    assert!(said.starts_with("HTTP/1.1 408 "), "{said}");
    // And it still serves.
    assert!(receiver.callback("req-1").starts_with("HTTP/1.1 200 "));
}

#[test]
fn connections_beyond_the_cap_get_503_and_a_freed_place_serves_again() {
    let receiver = Receiver::start(&["--max-connections", "4", "--header-timeout", "10s"]);
    let mut idle: Vec<TcpStream> = (0..4).map(|_| receiver.connect()).collect();
    // Accepted in order: by the time the fifth is accepted the four are counted.
    let answer = receiver.callback("req-1");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    assert_eq!(receiver.deliveries(), 0);

    drop(idle.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = receiver.callback("req-1");
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(receiver.deliveries(), 1);
}

#[test]
fn a_callback_lands_while_many_idle_and_slow_connections_are_open() {
    let receiver = Receiver::start(&["--header-timeout", "10s"]);
    let idle: Vec<TcpStream> = (0..150).map(|_| receiver.connect()).collect();
    let mut slow: Vec<TcpStream> = (0..50).map(|_| receiver.connect()).collect();
    for stream in &mut slow {
        stream
            .write_all(b"POST /callback HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"req")
            .unwrap();
    }
    for i in 0..5 {
        let answer = receiver.callback(&format!("req-{i}"));
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    assert_eq!(receiver.deliveries(), 5);
    drop((idle, slow));
}

#[test]
fn a_callback_sent_a_byte_at_a_time_is_still_recorded() {
    let receiver = Receiver::start(&[]);
    let body = r#"{"request_id": "req-slow", "status": "PROCESSING"}"#;
    let request = format!(
        "POST /callback HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = receiver.connect();
    stream.set_nodelay(true).unwrap();
    for byte in request.as_bytes() {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let (answer, _) = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(receiver.deliveries(), 1);
}

#[test]
fn bad_header_timeouts_and_caps_exit_2_and_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    for (args, named) in [
        (["--header-timeout", "11s"], "header timeout"),
        (["--header-timeout", "0s"], "--header-timeout"),
        (["--max-connections", "0"], "connection limit"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["listen", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("CODEFORMER_LEDGER", dir.path().join("ledger.db"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(named), "{args:?}: {}", text(&out));
    }
    assert!(
        !dir.path().join("ledger.db").exists(),
        "nothing was written"
    );
}
