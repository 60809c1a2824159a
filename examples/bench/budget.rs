//! #11: the request budget against a rate-limited sandbox (wall time against the lower bound,
//! requests per job, 429s) and #12: polls per job against the lag to the output on disk, at
//! three poll intervals, beside a fixed-interval poller on the same jobs.

use crate::engine::{options, tiny_jobs};
use crate::util::{note, Res};
use crate::{verdict, Opts, Row};
use codeformer_ledger::engine;
use codeformer_ledger::gateway::{Gateway, GatewayConfig, PollOutcome};
use codeformer_ledger::ledger::{JobFilter, Ledger};
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sandbox(dir: &Path, rps: Option<f64>, ms: (u64, u64), seed: u64) -> Res<Sandbox> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    image::RgbImage::new(64, 64).save(images.join("tiny.png"))?;
    Ok(Sandbox::start(SandboxConfig {
        static_dir: Some(images),
        output_dir: Some(dir.join("sandbox-out")),
        queue_ms: 0,
        processing_ms: ms,
        render: false,
        rate_limit_rps: rps,
        seed,
        ..SandboxConfig::default()
    })?)
}

/// #11: `n` jobs of `ms` at `rps` requests a second, default settings (concurrency 4, poll
/// interval 5 s, nothing told about the limit).
fn limited(opts: &Opts, rows: &mut Vec<Row>, n: usize, rps: f64, ms: (u64, u64)) -> Res<()> {
    let dir = tempfile::tempdir_in(&opts.work)?;
    let sandbox = sandbox(dir.path(), Some(rps), ms, 10)?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
    ledger.enqueue(&tiny_jobs(&sandbox, "limited", n))?;
    let secs = (ms.0 / 1000, ms.1 / 1000);
    note(format!(
        "#11 {n} jobs of {}-{} s at {rps} req/s",
        secs.0, secs.1
    ));
    let options = options(dir.path(), 4, None);
    let start = Instant::now();
    {
        let _lock = ledger.lock_engine()?;
        engine::run(&mut ledger, &gateway, &options, None, &mut ())?;
    }
    let wall = start.elapsed().as_secs_f64();
    let stats = sandbox.stats();
    sandbox.shutdown();
    let requests = stats.api_requests as f64;
    let limited = stats.answered_by_code.get(&429).copied().unwrap_or(0) as f64;
    let bound = (2.0 * n as f64 / rps).max(ms.1 as f64 / 1000.0);
    let ratio = wall / bound;
    let per_job = requests / n as f64;
    let share = limited / requests.max(1.0);
    rows.push(Row::new(
        "11",
        format!(
            "{n} jobs of {}-{} s at {rps} req/s, default settings",
            secs.0, secs.1
        ),
        "wall s / bound s (ratio); API requests per job; 429s (share)",
        format!(
            "{wall:.1} / {bound:.1} ({ratio:.2}); {per_job:.2}; {limited:.0} ({:.1}%)",
            share * 100.0
        ),
        "ratio ≤ 1.25; ≤ 2.6 req/job; 429s ≤ 2%",
        verdict(ratio <= 1.25 && per_job <= 2.6 && share <= 0.02),
    ));
    Ok(())
}

/// Each completed job's duration at the gateway and the lag from its completion to its output
/// file's last write, in seconds.
fn durations_and_lags(ledger: &Ledger, gateway: &Gateway, batch: &str) -> Res<Vec<(f64, f64)>> {
    let mut done = Vec::new();
    let filter = JobFilter {
        batch: Some(batch.to_string()),
        ..JobFilter::default()
    };
    ledger.for_each_job(&filter, |job| {
        let file = ledger.outputs_of(job.id)?.into_iter().next();
        done.push((job.request_id.clone(), file.map(|f| PathBuf::from(f.path))));
        Ok(())
    })?;
    let mut out = Vec::new();
    for (request_id, path) in done {
        let (Some(rid), Some(path)) = (request_id, path) else {
            continue;
        };
        let PollOutcome::Status(remote) = gateway.status(&rid).outcome else {
            return Err(format!("no status for {rid}").into());
        };
        let (Some(created), Some(completed)) = (remote.created_at, remote.completed_at) else {
            return Err(format!("{rid} has no created_at/completed_at").into());
        };
        let written: chrono::DateTime<chrono::Utc> = std::fs::metadata(&path)?.modified()?.into();
        out.push((
            (completed - created).num_milliseconds() as f64 / 1000.0,
            (written - completed).num_milliseconds() as f64 / 1000.0,
        ));
    }
    Ok(out)
}

/// A client that polls every job every `interval` from its submission, on these durations:
/// (polls per job, mean lag in seconds).
fn fixed_poller(durations: &[f64], interval: f64) -> (f64, f64) {
    let n = durations.len().max(1) as f64;
    let (mut polls, mut lag) = (0.0, 0.0);
    for d in durations {
        let k = (d / interval).ceil().max(1.0);
        polls += k;
        lag += k * interval - d;
    }
    (polls / n, lag / n)
}

/// The fixed poller's polls per job at a given mean lag, read off its line (intervals from
/// 0.1 s to 60 s, interpolated between the two around it).
fn fixed_polls_at(durations: &[f64], lag: f64) -> f64 {
    let line: Vec<(f64, f64)> = (1..=600)
        .map(|i| fixed_poller(durations, i as f64 * 0.1))
        .collect();
    // Mean lag is not monotone in the interval: take the fewest polls reached at or below
    // `lag`, the best a fixed poller does for that lag.
    line.iter()
        .filter(|(_, l)| *l <= lag)
        .map(|(p, _)| *p)
        .fold(f64::INFINITY, f64::min)
}

/// One run of the engine over a new batch of `n` jobs: (polls per job, mean lag to disk,
/// the jobs' durations).
fn run_batch(
    ledger: &mut Ledger,
    sandbox: &Sandbox,
    gateway: &Gateway,
    options: &engine::EngineOptions,
    batch: &str,
    n: usize,
) -> Res<(f64, f64, Vec<f64>)> {
    ledger.enqueue(&tiny_jobs(sandbox, batch, n))?;
    let before = sandbox.stats().status_requests;
    let mut options = options.clone();
    options.batch = Some(batch.to_string());
    {
        let _lock = ledger.lock_engine()?;
        engine::run(ledger, gateway, &options, None, &mut ())?;
    }
    let polls = (sandbox.stats().status_requests - before) as f64 / n as f64;
    let measured = durations_and_lags(ledger, gateway, batch)?;
    let lag = measured.iter().map(|m| m.1).sum::<f64>() / measured.len().max(1) as f64;
    Ok((polls, lag, measured.iter().map(|m| m.0).collect()))
}

/// #12: jobs of 2-20 s, polled by the engine at three poll intervals: a first run on a new
/// ledger (nothing learned), then a second batch on the same ledger, whose run starts from the
/// durations the first one recorded.
fn polls_and_lag(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let n = if opts.quick { 12 } else { 40 };
    for (i, interval) in [2u64, 5, 10].into_iter().enumerate() {
        let dir = tempfile::tempdir_in(&opts.work)?;
        let sandbox = sandbox(dir.path(), None, (2_000, 20_000), 11)?;
        let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
        let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
        note(format!(
            "#12 {n} jobs of 2-20 s, --poll-interval {interval}s, then {n} more"
        ));
        let mut options = options(dir.path(), 8, None);
        options.poll_interval = Duration::from_secs(interval);
        for (run, batch) in ["first", "second"].into_iter().enumerate() {
            let (polls, lag, durations) =
                run_batch(&mut ledger, &sandbox, &gateway, &options, batch, n)?;
            let (fixed_polls, fixed_lag) = fixed_poller(&durations, interval as f64);
            let line = fixed_polls_at(&durations, lag);
            let what = match (i, run) {
                (0, 0) => format!("{n} jobs of 2-20 s: polls per job vs mean lag to disk, --poll-interval {interval}s, new ledger"),
                (_, 0) => format!("  same, --poll-interval {interval}s, new ledger"),
                _ => format!("  same, {n} more jobs on that ledger (durations from the first run)"),
            };
            rows.push(Row::new(
                "12",
                what,
                "ours: polls/job @ lag s; fixed poller at that interval; fixed poller's polls at our lag",
                format!("{polls:.2} @ {lag:.2}; {fixed_polls:.2} @ {fixed_lag:.2}; {line:.2}"),
                "on or below the fixed poller's line",
                verdict(polls <= line + 0.01),
            ));
        }
        sandbox.shutdown();
    }
    Ok(())
}

/// #11 and #12.
pub fn budget(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let (a, b) = if opts.quick { (30, 60) } else { (120, 300) };
    if opts.wants(11) {
        limited(opts, rows, a, 10.0, (2_000, 8_000))?;
        limited(opts, rows, b, 20.0, (2_000, 20_000))?;
    }
    if opts.wants(12) {
        polls_and_lag(opts, rows)?;
    }
    Ok(())
}
