//! Progress a person can read: in a log (stderr not a terminal), lines that count jobs by
//! where they stand, a last line with the final counts, the `--retry` command after failures,
//! and a long 429 wait said out loud.

use crate::common::{text, World};
use codeformer_ledger::sandbox::SandboxConfig;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(" done · ")).collect()
}

#[test]
fn plain_progress_counts_jobs_apart_and_ends_on_the_final_counts() {
    let w = World::with(SandboxConfig {
        fail_rate: 0.3,
        error_rate: 0.3,
        seed: 11,
        ..SandboxConfig::default()
    });
    let urls: Vec<String> = (0..8)
        .map(|i| w.png(&format!("p{i}.png"), 10 + i, 10))
        .collect();
    let manifest = w.manifest("shoot.txt", &urls);
    let out = w.cli(&[
        "batch",
        manifest.to_str().unwrap(),
        "--poll-interval",
        "50ms",
        "--out-dir",
        "out",
    ]);
    let all = text(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = progress_lines(&stderr);
    assert!(lines.len() >= 2, "a first and a last line: {all}");

    // Nothing finished yet: no ETA, and jobs (not requests) are counted.
    let first = lines[0];
    assert!(first.starts_with("0/8 done · at the gateway "), "{first}");
    assert!(
        !first.contains("ETA"),
        "no ETA before a job finished: {first}"
    );
    assert!(!first.contains("in flight"), "{first}");
    assert!(!first.contains("committed"), "{first}");

    let count = |state: &str| {
        w.count(&format!(
            "SELECT count(*) FROM jobs WHERE state = '{state}'"
        ))
    };
    let (completed, failed, errored) = (count("completed"), count("failed"), count("error"));
    assert!(failed > 0 && errored > 0, "the seed gives both: {all}");
    let last = *lines.last().unwrap();
    assert!(
        last.starts_with(&format!(
            "8/8 done · at the gateway 0 queued, 0 processing · {completed} completed, {failed} failed, {errored} error · "
        )),
        "{last}"
    );
    assert!(last.contains(" USD spent"), "{last}");

    // Exit 3 names the command that retries what failed, with the batch's name.
    assert_eq!(out.status.code(), Some(3), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{} job(s) ended failed or error; to send them again as new attempts: `codeformer-ledger run --batch shoot --retry failed,error`",
            failed + errored
        )),
        "{all}"
    );
    // The hint works as given.
    let out = w.cli(&[
        "run",
        "--batch",
        "shoot",
        "--retry",
        "failed,error",
        "--quiet",
        "--poll-interval",
        "50ms",
    ]);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM attempts"),
        8 + failed + errored
    );
}

#[test]
fn quiet_prints_no_progress() {
    let w = World::new();
    let url = w.png("a.png", 10, 10);
    let out = w.cli(&["submit", &url, "--no-send"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        progress_lines(&String::from_utf8_lossy(&out.stderr)).is_empty(),
        "{}",
        text(&out)
    );
}

/// A gateway that answers every request 429 with a Retry-After of 50 minutes.
fn always_429() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
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
                let _ = stream.write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3000\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            });
        }
    });
    base
}

#[test]
fn regression_a_long_retry_after_is_said_in_the_progress_line_and_the_ledger() {
    let w = World::new();
    let base = always_429();
    let url = w.png("a.png", 10, 10);
    let out = w.cli(&["submit", &url, "--no-send", "--size", "10x10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = w.dir.path().join("run.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = w
        .command(&["run", "--out-dir", "out"])
        .env("PIXAZO_BASE_URL", &base)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let said = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("rate limited by the gateway: waiting ") {
            break text;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the wait was never shown: {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = said
        .lines()
        .find(|l| l.contains("rate limited"))
        .unwrap()
        .to_string();
    let seconds: u64 = line
        .rsplit("waiting ")
        .next()
        .and_then(|t| t.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((290..=300).contains(&seconds), "capped at 300 s: {line}");
    assert_eq!(
        w.count(
            "SELECT count(*) FROM events WHERE kind = 'rate_limited' AND detail LIKE 'rate limited by the gateway: waiting 300 s (Retry-After 3000 s;%'"
        ),
        1
    );
}
