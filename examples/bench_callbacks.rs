//! Polls per job with and without webhook callbacks, against the in-process sandbox on
//! loopback: the same batch run twice, once polled (the adaptive schedule, 5 s at most
//! between polls) and once with terminal callbacks received by `listen` (polls only as a 60 s
//! fallback). Prints one table. Run with `scripts/bench-callbacks.sh` or
//! `cargo run --release --example bench_callbacks -- [JOBS]`.

use codeformer_ledger::engine::{self, EngineOptions};
use codeformer_ledger::gateway::{Gateway, GatewayConfig};
use codeformer_ledger::ledger::{Ledger, NewJob};
use codeformer_ledger::params::{JobParams, WebhookMode};
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use codeformer_ledger::webhooks::{ListenConfig, Listener};
use std::time::{Duration, Instant};

struct Figures {
    seconds: f64,
    polls: i64,
    callbacks: i64,
    completed: i64,
}

fn run(jobs: usize, callbacks: bool) -> Result<Figures, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    image::RgbImage::new(16, 16).save(images.join("in.png"))?;
    let sandbox = Sandbox::start(SandboxConfig {
        static_dir: Some(images),
        queue_ms: 200,
        processing_ms: (2_000, 6_000),
        render: false,
        seed: 11,
        allow_http_webhooks: true,
        ..SandboxConfig::default()
    })?;
    let ledger_path = dir.path().join("ledger.db");
    let mut ledger = Ledger::open(&ledger_path)?;
    let listener = if callbacks {
        Some(Listener::start(
            &ledger_path,
            ListenConfig::new("127.0.0.1:0".parse()?),
        )?)
    } else {
        None
    };
    let batch: Vec<NewJob> = (0..jobs)
        .map(|i| {
            let mut params = JobParams::new(sandbox.static_url("in.png"));
            if let Some(l) = &listener {
                params.webhook_url = Some(format!("http://{}/callback", l.addr()));
                params.webhook_mode = Some(WebhookMode::Terminal);
            }
            let mut job = NewJob::new(params);
            job.key = Some(format!("job-{i}"));
            job.size = Some((16, 16));
            job
        })
        .collect();
    ledger.enqueue(&batch)?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let mut options = EngineOptions::new(dir.path().join("out"));
    options.concurrency = 8;
    let _lock = ledger.lock_engine()?;
    let started = Instant::now();
    engine::run(&mut ledger, &gateway, &options, None, &mut ())?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(l) = listener {
        l.stop();
    }
    let count = |sql: &str| -> Result<i64, Box<dyn std::error::Error>> {
        let conn = rusqlite::Connection::open(&ledger_path)?;
        Ok(conn.query_row(sql, [], |r| r.get(0))?)
    };
    Ok(Figures {
        seconds,
        polls: count("SELECT count(*) FROM events WHERE kind = 'poll'")?,
        callbacks: count("SELECT count(*) FROM deliveries")?,
        completed: count("SELECT count(*) FROM jobs WHERE state = 'completed' AND post IS NULL")?,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let deadline = Duration::from_secs(300);
    println!(
        "{jobs} jobs taking 2-6 s each in the sandbox, concurrency 8, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<22} {:>9} {:>10} {:>14} {:>10}",
        "mode", "seconds", "polls/job", "callbacks/job", "completed"
    );
    for (name, callbacks) in [("polling", false), ("terminal callbacks", true)] {
        let started = Instant::now();
        let f = run(jobs, callbacks)?;
        assert!(started.elapsed() < deadline, "the run is bounded");
        println!(
            "{:<22} {:>9.1} {:>10.2} {:>14.2} {:>10}",
            name,
            f.seconds,
            f.polls as f64 / jobs as f64,
            f.callbacks as f64 / jobs as f64,
            f.completed
        );
    }
    Ok(())
}
