//! Benchmarks of single parts: the ledger writer (#5), hook calls (#6), header probes (#7).

use crate::gen::{self, Plan};
use crate::util::{note, thousands, Res};
use crate::{verdict, Opts, Row};
use codeformer_ledger::engine::{self, LuaHooks, PostProcessor};
use codeformer_ledger::gateway::{Gateway, GatewayConfig};
use codeformer_ledger::hooks::{HookConfig, HookFn, HookHost};
use codeformer_ledger::ledger::{Change, Event, Field, JobState, JobUpdate, Ledger, NewJob};
use codeformer_ledger::params::JobParams;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::time::{Duration, Instant};

/// #5: poll answers recorded as the engine records them (job row, attempt row and event in
/// one transaction), one transaction per group.
pub fn writer(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let dir = tempfile::tempdir_in(&opts.work)?;
    let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
    let jobs: Vec<NewJob> = (0..1_000)
        .map(|i| {
            NewJob::new(JobParams::new(format!(
                "https://photos.example.com/w/{i}.jpg"
            )))
        })
        .collect();
    let ids: Vec<i64> = ledger.enqueue(&jobs)?.iter().map(|e| e.id).collect();
    let body = format!(
        r#"{{"request_id":"{}","status":"PROCESSING","created_at":"2026-05-22T13:17:32.110Z","updated_at":"2026-05-22T13:17:40.512Z"}}"#,
        "a".repeat(36)
    );
    for (group, total) in [
        (1, opts.size(20_000)),
        (16, opts.size(200_000)),
        (256, opts.size(500_000)),
    ] {
        let start = Instant::now();
        let mut written = 0usize;
        while written < total && start.elapsed() < Duration::from_secs(20) {
            let items = (0..group)
                .map(|k| {
                    let id = ids[(written + k) % ids.len()];
                    let change = Change {
                        remote_status: Some("PROCESSING".into()),
                        count_poll: true,
                        next_poll_at: Field::Set(1_700_000_000_000 + (written + k) as i64),
                        ..Change::default()
                    };
                    let event = Event::new(Some(id), Some(1), "poll")
                        .http(Some(200), 3)
                        .remote(Some("PROCESSING"))
                        .body(body.clone());
                    JobUpdate::new(id, 1, change, event)
                })
                .collect();
            ledger.record(items)?;
            written += group;
        }
        let rate = written as f64 / start.elapsed().as_secs_f64();
        note(format!(
            "#5 group of {group}: {rate:.0} events/s ({written} events)"
        ));
        let target = if group == 256 { "≥ 50,000" } else { "—" };
        rows.push(Row::new(
            "5",
            format!(
                "ledger writer, {group} poll answer(s) per transaction (job + attempt + event rows; WAL, synchronous=NORMAL)"
            ),
            "events recorded per second",
            thousands(rate as u64),
            target,
            if group == 256 { verdict(rate >= 50_000.0) } else { "report".into() },
        ));
    }
    Ok(())
}

/// #6: a trivial `on_complete` called many times, bare (host to worker and back) and as the
/// engine calls it (with the job view read from the ledger and the run recorded in it).
pub fn hooks(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let n = opts.size(10_000);
    let dir = tempfile::tempdir_in(&opts.work)?;
    let hook = dir.path().join("trivial.lua");
    std::fs::write(&hook, "function on_complete(job) end\n")?;
    let mut config = HookConfig::new(vec![hook], dir.path().join("out"));
    config.worker_exe = opts.exe.clone();
    let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
    gen::fill(
        &mut ledger,
        &Plan {
            batch: "hooks",
            finished: n + n / 10,
            in_flight: 0,
            owe_hooks: true,
            processing_polls: 0,
            request_tag: "req",
        },
    )?;

    let mut host = HookHost::start(config.clone())?;
    let job = ledger.job(1)?.ok_or("no job 1")?;
    let view = engine::job_view_full(&ledger, &job)?;
    for _ in 0..100 {
        host.call(0, HookFn::OnComplete, &view);
    }
    let start = Instant::now();
    for _ in 0..n {
        let outcome = host.call(0, HookFn::OnComplete, &view);
        if !outcome.is_ok() {
            return Err(format!("on_complete failed: {:?}", outcome.result).into());
        }
    }
    let bare = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    note(format!("#6 {n} bare calls: {bare:.1} µs per call"));
    drop(host);

    let mut hooks = LuaHooks::start(config)?;
    let mut calls = 0;
    let start = Instant::now();
    while calls < n {
        let owing = ledger.owing_hooks(None, 256)?;
        if owing.is_empty() {
            break;
        }
        for job in owing.iter().take(n - calls) {
            debug_assert_eq!(job.state, JobState::Completed);
            hooks.run_job_hooks(&mut ledger, job)?;
            calls += 1;
        }
    }
    let full = start.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64;
    note(format!(
        "#6 {calls} engine hook steps: {full:.1} µs per job"
    ));
    rows.push(Row::new(
        "6",
        format!(
            "{} trivial on_complete calls (worker process, JSON lines)",
            thousands(n as u64)
        ),
        "µs per call",
        format!("{bare:.1}"),
        "≤ 20",
        verdict(bare <= 20.0),
    ));
    rows.push(Row::new(
        "6",
        format!(
            "  {} jobs through the engine's hook step (job view + 3 ledger writes)",
            thousands(calls as u64)
        ),
        "µs per job",
        format!("{full:.1}"),
        "report",
        "report".into(),
    ));
    Ok(())
}

/// #7: input sizes read from PNG, JPEG and WebP files of 1-20 MB over HTTP range requests.
pub fn probes(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let images = opts.work.join("images");
    std::fs::create_dir_all(&images)?;
    let sizes: &[u64] = if opts.quick { &[1, 5] } else { &[1, 5, 20] };
    let mut files = Vec::new();
    for format in ["png", "jpg", "webp"] {
        for &mb in sizes {
            let name = format!("noise-{mb}mb.{format}");
            let path = images.join(&name);
            if !path.exists() {
                note(format!("#7 making {name}"));
                crate::images::make(&path, mb * 1_000_000)?;
            }
            files.push((format, name, std::fs::metadata(&path)?.len()));
        }
    }
    let sandbox = Sandbox::start(SandboxConfig {
        static_dir: Some(images.clone()),
        ..SandboxConfig::default()
    })?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let mut worst: Vec<(&str, u64, u64, u64)> = Vec::new();
    for (format, name, len) in &files {
        let probe = codeformer_ledger::gateway::probe::probe_url(
            gateway.file_agent(),
            &sandbox.static_url(name),
        )?;
        let served = sandbox
            .stats()
            .static_bytes_by_path
            .get(name.as_str())
            .copied()
            .unwrap_or(0);
        note(format!(
            "#7 {name} ({} bytes): {}x{}, {} bytes read ({served} served)",
            thousands(*len),
            probe.size.width,
            probe.size.height,
            probe.bytes_read
        ));
        let read = probe.bytes_read.max(served);
        match worst.iter_mut().find(|w| w.0 == *format) {
            Some(w) => {
                w.1 = w.1.max(read);
                w.2 = w.2.min(*len);
                w.3 = w.3.max(*len);
            }
            None => worst.push((format, read, *len, *len)),
        }
    }
    sandbox.shutdown();
    for (format, read, small, large) in worst {
        rows.push(Row::new(
            "7",
            format!(
                "size estimate, {} inputs of {:.1}-{:.1} MB{}",
                format.to_uppercase(),
                small as f64 / 1e6,
                large as f64 / 1e6,
                if format == "jpg" {
                    " (180 KB of EXIF/ICC before the frame)"
                } else {
                    ""
                }
            ),
            "bytes read per image, worst",
            thousands(read),
            "≤ 65,536",
            verdict(read <= 65_536),
        ));
    }
    Ok(())
}
