//! Benchmarks that drive the engine against the in-process sandbox: throughput (#1), the
//! gateway ceiling (#2), the loop step over large ledgers (#4) and the poll schedule (#8).

use crate::gen::{self, Plan};
use crate::util::{self, note, thousands, Res};
use crate::{verdict, Opts, Row};
use codeformer_ledger::engine::{self, EngineOptions, Progress, ProgressSink, RunSummary};
use codeformer_ledger::gateway::{Gateway, GatewayConfig, PollOutcome, SubmitOutcome};
use codeformer_ledger::ledger::{JobFilter, JobState, Ledger, NewJob};
use codeformer_ledger::params::JobParams;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A sandbox in fast mode: no delays, no rendering, a tiny input image.
fn fast_sandbox(dir: &Path) -> Res<Sandbox> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]))
        .save(images.join("tiny.png"))?;
    Ok(Sandbox::start(SandboxConfig {
        static_dir: Some(images),
        output_dir: Some(dir.join("sandbox-out")),
        queue_ms: 0,
        processing_ms: (0, 0),
        render: false,
        ..SandboxConfig::default()
    })?)
}

pub fn tiny_jobs(sandbox: &Sandbox, batch: &str, n: usize) -> Vec<NewJob> {
    jobs_of(&sandbox.static_url("tiny.png"), batch, n)
}

fn jobs_of(image: &str, batch: &str, n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| {
            let mut job = NewJob::new(JobParams::new(format!("{image}?{batch}={i}")));
            job.batch = Some(batch.to_string());
            job.size = Some((64, 64));
            job.size_source = Some("manifest");
            job
        })
        .collect()
}

/// What one engine run cost.
struct Measured {
    summary: RunSummary,
    wall: Duration,
    /// The whole process minus the sandbox's threads: engine thread, HTTP workers.
    client_cpu: Duration,
    /// The engine's own thread (the caller's).
    engine_cpu: Duration,
    /// The same from the end of start-up (the first progress report) on.
    loop_cpu: Duration,
    /// Requests the client made: API calls and output downloads.
    requests: u64,
    /// The in-process sandbox's threads.
    sandbox_cpu: Duration,
}

fn measured_run(
    ledger: &mut Ledger,
    gateway: &Gateway,
    sandbox: &Sandbox,
    options: &EngineOptions,
) -> Res<Measured> {
    let before = sandbox.stats().api_requests;
    let (cpu0, sb0, th0) = (
        util::cpu_process(),
        util::cpu_threads_named("sandbox-"),
        util::cpu_thread(),
    );
    let start = Instant::now();
    let _lock = ledger.lock_engine()?;
    let mut first = FirstUpdate::default();
    let summary = engine::run(ledger, gateway, options, None, &mut first)?;
    let wall = start.elapsed();
    let end = util::cpu_thread();
    let engine_cpu = end - th0;
    let loop_cpu = end - first.cpu.unwrap_or(th0);
    let sandbox_cpu = util::cpu_threads_named("sandbox-") - sb0;
    let client_cpu = (util::cpu_process() - cpu0).saturating_sub(sandbox_cpu);
    let requests = sandbox.stats().api_requests - before + summary.downloads;
    Ok(Measured {
        summary,
        wall,
        client_cpu,
        engine_cpu,
        loop_cpu,
        requests,
        sandbox_cpu,
    })
}

/// Notes the engine thread's CPU time at the first progress report, which the engine makes
/// in its first loop step, once start-up is over.
#[derive(Default)]
struct FirstUpdate {
    cpu: Option<Duration>,
}

impl ProgressSink for FirstUpdate {
    fn update(&mut self, _: &Progress) {
        if self.cpu.is_none() {
            self.cpu = Some(util::cpu_thread());
        }
    }
}

pub fn options(dir: &Path, concurrency: usize, batch: Option<&str>) -> EngineOptions {
    let mut options = EngineOptions::new(dir.join("restored"));
    options.concurrency = concurrency;
    options.batch = batch.map(str::to_string);
    options
}

/// Status calls per second that `threads` clients get from the sandbox, each call a real
/// answer for an existing job; bounded in count and time.
fn ceiling(gateway: &Gateway, sandbox: &Sandbox, threads: usize, time: Duration) -> Res<f64> {
    let exchange = gateway.submit(&JobParams::new(sandbox.static_url("tiny.png")));
    let SubmitOutcome::Accepted { request_id, .. } = exchange.outcome else {
        return Err(format!("the sandbox refused a submission: {}", exchange.body).into());
    };
    let ok = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..200_000 {
                    if start.elapsed() >= time {
                        break;
                    }
                    if gateway.status(&request_id).http_status == Some(200) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Ok(ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// #1 and #2: a batch of tiny images at concurrency 1 and 8.
pub fn throughput(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let n = opts.size(5_000);
    let mut at8 = None;
    // The last run repeats concurrency 8 without fsyncing outputs: the cost of the fsyncs.
    for (concurrency, fsync) in [(1, true), (8, true), (8, false)] {
        let dir = tempfile::tempdir_in(&opts.work)?;
        let sandbox = fast_sandbox(dir.path())?;
        let mut config = GatewayConfig::new(&sandbox.base_url(), None);
        config.fsync_outputs = fsync;
        let gateway = Gateway::new(config);
        if !fsync {
            note(format!("#1 {n} jobs at concurrency 8, outputs not fsynced"));
            let m = measured_run(
                &mut Ledger::open(&dir.path().join("ledger.db")).and_then(|mut l| {
                    l.enqueue(&tiny_jobs(&sandbox, "tiny", n))?;
                    Ok(l)
                })?,
                &gateway,
                &sandbox,
                &options(dir.path(), concurrency, None),
            )?;
            let rate = n as f64 / m.wall.as_secs_f64();
            note(format!("   {rate:.0} jobs/s without fsync"));
            rows.push(Row::new(
                "1",
                "  same batch, concurrency 8, outputs not fsynced (--no-fsync-outputs)",
                "jobs/s",
                format!("{rate:.0}"),
                "—",
                "report".into(),
            ));
            sandbox.shutdown();
            continue;
        }
        let ceiling = if concurrency == 8 {
            let c = ceiling(&gateway, &sandbox, 8, opts.secs(3))?;
            note(format!("#2 ceiling: {c:.0} status calls/s with 8 clients"));
            Some(c)
        } else {
            None
        };
        let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
        ledger.enqueue(&tiny_jobs(&sandbox, "tiny", n))?;
        note(format!("#1 {n} jobs at concurrency {concurrency}"));
        let m = measured_run(
            &mut ledger,
            &gateway,
            &sandbox,
            &options(dir.path(), concurrency, None),
        )?;
        let completed = m.summary.count(JobState::Completed) as usize;
        if completed != n {
            return Err(format!("#1: only {completed} of {n} jobs completed").into());
        }
        let rate = n as f64 / m.wall.as_secs_f64();
        let cpu_per_k = m.client_cpu.as_secs_f64() * 1000.0 / n as f64;
        note(format!(
            "   {rate:.0} jobs/s, client CPU {:.2} s ({:.2} s engine thread), sandbox CPU {:.2} s, {:.2} requests/job",
            m.client_cpu.as_secs_f64(),
            m.engine_cpu.as_secs_f64(),
            m.sandbox_cpu.as_secs_f64(),
            m.requests as f64 / n as f64
        ));
        let jobs_target = if concurrency == 8 { "≥ 1,000" } else { "—" };
        rows.push(Row::new(
            "1",
            format!(
                "{} tiny images, fast sandbox, concurrency {concurrency}",
                thousands(n as u64)
            ),
            "jobs/s",
            format!("{rate:.0}"),
            jobs_target,
            if concurrency == 8 {
                verdict(rate >= 1000.0)
            } else {
                "report".into()
            },
        ));
        let (external, engine_thread) = external_cpu(opts, n, concurrency)?;
        note(format!(
            "   sandbox in its own process: client CPU {external:.3} s per 1,000 jobs ({engine_thread:.3} engine thread); in-process estimate {cpu_per_k:.3}"
        ));
        rows.push(Row::new(
            "1",
            format!("  same batch, concurrency {concurrency}, sandbox in its own process"),
            "client CPU-s per 1,000 jobs, all threads (engine thread alone)",
            format!("{external:.3} ({engine_thread:.3})"),
            "≤ 0.3",
            verdict(external <= 0.3),
        ));
        if let Some(ceiling) = ceiling {
            let per_job = m.requests as f64 / n as f64;
            at8 = Some((rate, ceiling, per_job));
        }
        drop(ledger);
        sandbox.shutdown();
    }
    if let Some((rate, ceiling, per_job)) = at8 {
        let ratio = rate / (ceiling / per_job);
        rows.push(Row::new(
            "2",
            format!(
                "#1 at concurrency 8 vs the sandbox's ceiling ({ceiling:.0} status calls/s, {per_job:.2} requests/job)"
            ),
            "jobs/s ÷ (ceiling ÷ requests per job)",
            format!("{ratio:.2}"),
            "≥ 0.8",
            verdict(ratio >= 0.8),
        ));
    }
    Ok(())
}

/// Client CPU per 1,000 jobs with the sandbox as a separate `codeformer-ledger sandbox --fast`
/// process, so that everything this process spends (engine thread, HTTP workers and the
/// threads they start) is the client's: (all threads, engine thread).
fn external_cpu(opts: &Opts, n: usize, concurrency: usize) -> Res<(f64, f64)> {
    let dir = tempfile::tempdir_in(&opts.work)?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]))
        .save(images.join("tiny.png"))?;
    let mut child = std::process::Command::new(&opts.exe)
        .args([
            "sandbox",
            "--addr",
            "127.0.0.1:0",
            "--fast",
            "--queue-ms",
            "0",
        ])
        .args(["--processing-ms", "0", "--static-dir"])
        .arg(&images)
        .arg("--output-dir")
        .arg(dir.path().join("sandbox-out"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (base, files) = util::sandbox_urls(stdout)?;
    let result = (|| -> Res<(f64, f64)> {
        let (base, files) = (base.ok_or("no base URL")?, files.ok_or("no static URL")?);
        let gateway = Gateway::new(GatewayConfig::new(&base, None));
        let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
        ledger.enqueue(&jobs_of(&format!("{files}/tiny.png"), "tiny", n))?;
        let (cpu0, th0) = (util::cpu_process(), util::cpu_thread());
        let _lock = ledger.lock_engine()?;
        let summary = engine::run(
            &mut ledger,
            &gateway,
            &options(dir.path(), concurrency, None),
            None,
            &mut (),
        )?;
        let (cpu, th) = (util::cpu_process() - cpu0, util::cpu_thread() - th0);
        if summary.count(JobState::Completed) as usize != n {
            return Err("#1: not every job completed against the sandbox process".into());
        }
        let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        Ok((per_k(cpu), per_k(th)))
    })();
    util::signal(pid, libc::SIGTERM);
    let _ = util::wait_bounded(pid, Instant::now(), Duration::from_secs(10));
    std::mem::forget(child);
    result
}

/// #4: the same small batch run over ledgers holding more and more finished jobs. `big` is a
/// ledger with ~10^6 finished jobs made by the scale benchmark, if it ran.
pub fn loop_step(opts: &Opts, big: Option<(PathBuf, usize)>, rows: &mut Vec<Row>) -> Res<()> {
    let new_jobs = opts.size(2_000);
    let mut sizes: Vec<(usize, Option<PathBuf>)> = vec![(1_000, None), (opts.size(100_000), None)];
    match (big, &opts.reuse_finished) {
        (Some((path, n)), _) => sizes.push((n, Some(path))),
        (None, Some(kept)) => {
            let copy = opts.work.join("finished-copy.db");
            std::fs::copy(kept, &copy)?;
            let n = Ledger::open(&copy)?
                .count_by_state(None)?
                .iter()
                .map(|c| c.1 as usize)
                .sum();
            sizes.push((n, Some(copy)));
        }
        (None, None) => sizes.push((opts.size(1_000_000), None)),
    }
    let mut figures = Vec::new();
    for (finished, path) in sizes {
        let dir = tempfile::tempdir_in(&opts.work)?;
        let ledger_path = match path {
            Some(p) => p,
            None => {
                let p = dir.path().join("ledger.db");
                let mut ledger = Ledger::open(&p)?;
                gen::fill(
                    &mut ledger,
                    &Plan {
                        batch: "archive",
                        finished,
                        in_flight: 0,
                        owe_hooks: false,
                        processing_polls: 0,
                        request_tag: "req",
                    },
                )?;
                p
            }
        };
        let sandbox = fast_sandbox(dir.path())?;
        let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
        let mut ledger = Ledger::open(&ledger_path)?;
        let mut per_scope = Vec::new();
        for scope in [None, Some("step-batch")] {
            let batch = scope.unwrap_or("step-all");
            ledger.enqueue(&tiny_jobs(&sandbox, batch, new_jobs))?;
            let m = measured_run(
                &mut ledger,
                &gateway,
                &sandbox,
                &options(dir.path(), 8, scope),
            )?;
            let done = m.summary.count(JobState::Completed);
            let steps = m.requests.max(1);
            let step = m.loop_cpu / steps as u32;
            let per_job = m.wall / new_jobs as u32;
            note(format!(
                "#4 {} finished, scope {}: {done} completed in scope, {} per job wall, engine loop CPU {} per request handled",
                thousands(finished as u64),
                scope.unwrap_or("all"),
                util::ms(per_job),
                util::ms(step)
            ));
            per_scope.push((scope, step, per_job));
        }
        figures.push((finished, per_scope));
        drop(ledger);
        sandbox.shutdown();
    }
    let _ = std::fs::remove_file(opts.work.join("finished-copy.db"));
    for (i, scope) in ["all jobs (`run`)", "one batch (`run --batch`)"]
        .iter()
        .enumerate()
    {
        let base = figures[0].1[i].1.as_secs_f64();
        let worst = figures
            .iter()
            .map(|f| f.1[i].1.as_secs_f64())
            .fold(0.0, f64::max);
        let list: Vec<String> = figures
            .iter()
            .map(|(n, f)| format!("{}: {:.0} µs", short(*n), f[i].1.as_secs_f64() * 1e6))
            .collect();
        let growth = worst / base.max(1e-9);
        rows.push(Row::new(
            "4",
            format!(
                "loop step, {} new jobs, scope {scope}, 10^3…10^6 finished",
                thousands(new_jobs as u64)
            ),
            "engine-thread CPU per request handled (≈ one loop step), start-up excluded",
            list.join(" · "),
            "flat",
            verdict(growth <= 1.5),
        ));
    }
    Ok(())
}

fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// #8: jobs of 2-20 s; the engine's adaptive schedule against a client polling every 5 s.
pub fn schedule(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let n = if opts.quick { 12 } else { 40 };
    let config = |dir: &Path| -> Res<Sandbox> {
        let images = dir.join("images");
        std::fs::create_dir_all(&images)?;
        image::RgbImage::new(64, 64).save(images.join("tiny.png"))?;
        Ok(Sandbox::start(SandboxConfig {
            static_dir: Some(images),
            output_dir: Some(dir.join("sandbox-out")),
            queue_ms: 0,
            processing_ms: (2_000, 20_000),
            render: false,
            seed: 8,
            ..SandboxConfig::default()
        })?)
    };
    // The engine, as `batch` runs it (poll interval 5 s, the schedule adapting below it).
    let dir = tempfile::tempdir_in(&opts.work)?;
    let sandbox = config(dir.path())?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
    ledger.enqueue(&tiny_jobs(&sandbox, "slow", n))?;
    note(format!("#8 {n} jobs of 2-20 s through the engine"));
    let polls_before = sandbox.stats().status_requests;
    let mut options = options(dir.path(), 8, None);
    options.poll_interval = Duration::from_secs(5);
    let _lock = ledger.lock_engine()?;
    engine::run(&mut ledger, &gateway, &options, None, &mut ())?;
    let polls = sandbox.stats().status_requests - polls_before;
    let mut done = Vec::new();
    ledger.for_each_job(&JobFilter::default(), |job| {
        let file = ledger.outputs_of(job.id)?.into_iter().next();
        done.push((job.request_id.clone(), file.map(|f| PathBuf::from(f.path))));
        Ok(())
    })?;
    let mut lags = Vec::new();
    for (request_id, path) in done {
        if let (Some(rid), Some(path)) = (request_id, path) {
            lags.push(lag(&gateway, &rid, &path)?);
        }
    }
    let engine = (polls as f64 / n as f64, lags);
    sandbox.shutdown();

    let dir = tempfile::tempdir_in(&opts.work)?;
    let sandbox = config(dir.path())?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    note(format!("#8 {n} jobs of 2-20 s, polled every 5 s"));
    let urls: Vec<String> = tiny_jobs(&sandbox, "slow", n)
        .into_iter()
        .map(|j| j.params.image)
        .collect();
    let fixed = fixed_interval_client(&gateway, &urls, Duration::from_secs(5), dir.path())?;
    sandbox.shutdown();

    let describe = |lags: &[f64]| {
        let mut v = lags.to_vec();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let p90 = v.get(v.len() * 9 / 10).copied().unwrap_or(0.0);
        (mean, p90)
    };
    let (em, ep) = describe(&engine.1);
    let (fm, fp) = describe(&fixed.1);
    rows.push(Row::new(
        "8",
        format!("{n} jobs of 2-20 s: adaptive schedule (fixed 5 s poll)"),
        "polls per job",
        format!("{:.2} ({:.2})", engine.0, fixed.0),
        "report; adaptive < fixed",
        verdict(engine.0 < fixed.0),
    ));
    rows.push(Row::new(
        "8",
        "  same runs".to_string(),
        "s from the sandbox finishing a job to its output on disk, mean / p90",
        format!("{em:.2} / {ep:.2} ({fm:.2} / {fp:.2})"),
        "report; adaptive < fixed",
        verdict(em < fm),
    ));
    Ok(())
}

/// Seconds from the sandbox's completion of a job to the output file's last write.
fn lag(gateway: &Gateway, request_id: &str, path: &Path) -> Res<f64> {
    let PollOutcome::Status(remote) = gateway.status(request_id).outcome else {
        return Err(format!("no status for {request_id}").into());
    };
    let done = remote
        .completed_at
        .ok_or_else(|| format!("{request_id} has no completed_at"))?;
    let written: chrono::DateTime<chrono::Utc> = std::fs::metadata(path)?.modified()?.into();
    Ok((written - done).num_milliseconds() as f64 / 1000.0)
}

/// The straightforward client: submit everything, poll each job every `interval`, download
/// what completed. Returns polls per job and the completion-to-disk lags.
fn fixed_interval_client(
    gateway: &Gateway,
    urls: &[String],
    interval: Duration,
    dir: &Path,
) -> Res<(f64, Vec<f64>)> {
    let mut pending = Vec::new();
    for url in urls {
        let exchange = gateway.submit(&JobParams::new(url.clone()));
        if let SubmitOutcome::Accepted { request_id, .. } = exchange.outcome {
            pending.push((request_id, Instant::now() + interval));
        }
    }
    let (mut polls, mut lags) = (0u64, Vec::new());
    let limit = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < limit {
        pending.sort_by_key(|p| p.1);
        let (rid, due) = pending[0].clone();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        polls += 1;
        match gateway.status(&rid).outcome {
            PollOutcome::Status(remote) if remote.status.is_final() => {
                pending.remove(0);
                if let (Some(url), Some(done)) = (remote.media_urls.first(), remote.completed_at) {
                    let path = dir.join(format!("{rid}.png"));
                    let mut file = std::fs::File::create(&path)?;
                    gateway.download(url, &mut file)?;
                    drop(file);
                    let written: chrono::DateTime<chrono::Utc> = std::fs::metadata(&path)?
                        .modified()
                        .unwrap_or(SystemTime::now())
                        .into();
                    lags.push((written - done).num_milliseconds() as f64 / 1000.0);
                }
            }
            _ => pending[0].1 = due + interval,
        }
    }
    Ok((polls as f64 / urls.len() as f64, lags))
}
