//! `listen` under idle and slow clients: the real binary with its default options, held busy
//! by IDLE open connections (half silent, half trickling a request head a byte at a time),
//! while well-formed callbacks arrive one after another on fresh connections. Prints the
//! callbacks' latency (connect to whole answer), how connections beyond the cap are answered,
//! and how many held connections the server itself closed after its header timeout.
//!
//! Run with `scripts/bench-listen.sh`, or
//! `cargo run --release --example bench_listen -- BIN [IDLE] [CALLBACKS]` (BIN: the
//! `codeformer-ledger` binary to measure).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Connections opened beyond the cap once the idle ones are held.
const BEYOND: usize = 100;
/// The binary's defaults, which this measures.
const CAP: usize = 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .ok_or("usage: bench_listen BIN [IDLE] [CALLBACKS]")?;
    let idle: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let callbacks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let fds = raise_fd_limit();
    if idle + BEYOND + 64 > fds {
        return Err(format!(
            "the open-file limit is {fds}: too low for {idle} idle connections (lower IDLE or raise `ulimit -n`)"
        )
        .into());
    }

    let dir = tempfile::tempdir()?;
    let mut child = Command::new(&bin)
        .args(["listen", "--addr", "127.0.0.1:0", "--quiet"])
        .env("CODEFORMER_LEDGER", dir.path().join("ledger.db"))
        .env_remove("CODEFORMER_LISTEN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("LISTEN_ADDR=")
        .ok_or_else(|| format!("listen printed {line:?}"))?
        .to_string();

    // Held connections: even ones silent, odd ones trickling a head that never ends.
    let opened_at = Instant::now();
    let mut held: Vec<(TcpStream, Instant)> = Vec::with_capacity(idle);
    for _ in 0..idle {
        let stream = TcpStream::connect(&addr)?;
        stream.set_nonblocking(true)?;
        held.push((stream, Instant::now()));
    }
    let opening = opened_at.elapsed();
    let head = b"POST /callback HTTP/1.1\r\nHost: bench\r\nX-Slow: ";
    let trickle = |held: &mut [(TcpStream, Instant)], n: usize| {
        for (stream, _) in held.iter_mut().skip(1).step_by(2) {
            let byte = head.get(n).copied().unwrap_or(b'a');
            let _ = stream.write(&[byte]);
        }
    };

    let mut latencies = Vec::with_capacity(callbacks);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..callbacks {
        trickle(&mut held, i);
        let started = Instant::now();
        let answer = callback(&addr, &format!("bench-{i}"))?;
        latencies.push(started.elapsed());
        *statuses.entry(status_of(&answer)).or_default() += 1;
    }
    let window = opened_at.elapsed() - opening;

    // Beyond the cap: open more and see which are answered 503 at once.
    let mut beyond = Vec::with_capacity(BEYOND);
    for _ in 0..BEYOND {
        beyond.push(TcpStream::connect(&addr)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for stream in &mut beyond {
        stream.set_nonblocking(true)?;
        let mut answer = [0u8; 13];
        if let Ok(n) = stream.read(&mut answer) {
            if answer[..n].starts_with(b"HTTP/1.1 503 ") {
                refused += 1;
            }
        }
    }
    drop(beyond);

    // The header timeout: how many held connections the server closes, and when.
    let mut closed_at: Vec<Option<Duration>> = vec![None; held.len()];
    let until = opened_at + HEADER_TIMEOUT + Duration::from_secs(5);
    let mut sink = [0u8; 512];
    while Instant::now() < until && closed_at.iter().any(Option::is_none) {
        for ((stream, opened), closed) in held.iter_mut().zip(closed_at.iter_mut()) {
            if closed.is_some() {
                continue;
            }
            match stream.read(&mut sink) {
                Ok(0) => *closed = Some(opened.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *closed = Some(opened.elapsed()),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed: Vec<Duration> = closed_at.iter().flatten().copied().collect();

    let _ = child.kill();
    let _ = child.wait();

    latencies.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "listen under idle and slow clients ({bin}, defaults: cap {CAP}, header timeout {}s)",
        HEADER_TIMEOUT.as_secs()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| idle connections opened (half silent, half trickling a head) | {idle}, in {:.2} s |",
        opening.as_secs_f64()
    );
    println!(
        "| callbacks sent while they were open (in {:.2} s) | {callbacks}: {} |",
        window.as_secs_f64(),
        statuses
            .iter()
            .map(|(s, n)| format!("{n}x {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !latencies.is_empty() {
        println!(
            "| callback latency min / median / max | {} / {} / {} |",
            ms(latencies[0]),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() - 1])
        );
    }
    println!(
        "| connections opened beyond them | {BEYOND}: {refused} answered 503 (the cap leaves room for {}) |",
        CAP.saturating_sub(idle)
    );
    match (closed.iter().min(), closed.iter().max()) {
        (Some(first), Some(last)) => println!(
            "| held connections closed by the server (header timeout) | {}/{idle}, {:.2} s to {:.2} s after each opened |",
            closed.len(),
            first.as_secs_f64(),
            last.as_secs_f64()
        ),
        _ => println!("| held connections closed by the server | 0/{idle} |"),
    }
    Ok(())
}

/// One well-formed callback on a fresh connection; the whole answer.
fn callback(addr: &str, request_id: &str) -> std::io::Result<String> {
    let body = format!("{{\"request_id\": \"{request_id}\", \"status\": \"PROCESSING\"}}");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(
        format!(
            "POST /callback HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn status_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .nth(1)
        .unwrap_or("no answer")
        .to_string()
}

/// Raises this process's soft open-file limit to its hard limit; returns the limit.
#[cfg(unix)]
fn raise_fd_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one rlimit structure given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

#[cfg(not(unix))]
fn raise_fd_limit() -> usize {
    usize::MAX
}
