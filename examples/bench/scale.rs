//! #3: a ledger of a million jobs, and the real binary's commands over it.

use crate::gen::{self, Plan};
use crate::util::{self, mib, note, thousands, Res};
use crate::{verdict, Opts, Row};
use codeformer_ledger::ledger::Ledger;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Builds the ledger, times the commands, and returns a copy of the ledger as it was before
/// the in-flight jobs were added (only finished jobs), for #4.
pub fn scale(opts: &Opts, rows: &mut Vec<Row>, want_copy: bool) -> Res<Option<(PathBuf, usize)>> {
    let finished = opts.size(990_000);
    let in_flight = opts.size(10_000);
    let total = finished + in_flight;
    let dir = opts.work.join("scale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ledger.db");
    note(format!(
        "#3 writing {} finished + {} in-flight jobs through the library",
        thousands(finished as u64),
        thousands(in_flight as u64)
    ));
    let start = Instant::now();
    let copy = match &opts.reuse {
        Some(reused) => {
            note(format!("   (copying {} instead)", reused.display()));
            std::fs::copy(reused, &path)?;
            None
        }
        None => generate(&path, finished, in_flight, want_copy)?,
    };
    let took = start.elapsed();
    let bytes = util::ledger_bytes(&path);
    note(format!(
        "   written in {:.1} s ({:.0} jobs/s), {} bytes",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        thousands(bytes)
    ));
    rows.push(Row::new(
        "3",
        format!(
            "ledger of {} jobs ({} finished, {} in flight)",
            thousands(total as u64),
            thousands(finished as u64),
            thousands(in_flight as u64)
        ),
        "generation through the library; ledger bytes per job",
        match &opts.reuse {
            Some(_) => format!(
                "reused a kept ledger; {:.0} B/job",
                bytes as f64 / total as f64
            ),
            None => format!(
                "{:.0} s ({:.0} jobs/s); {:.0} B/job",
                took.as_secs_f64(),
                total as f64 / took.as_secs_f64(),
                bytes as f64 / total as f64
            ),
        },
        "report it",
        "report".into(),
    ));

    let mut peak = 0u64;
    let repeat = if opts.quick { 1 } else { 3 };
    let show_id = (finished / 2).max(1).to_string();
    let reads: [(&str, Vec<&str>, f64); 3] = [
        ("report", vec!["report"], 1.0),
        (
            "jobs --state processing",
            vec!["jobs", "--state", "processing"],
            0.1,
        ),
        ("show JOB", vec!["show", &show_id], 0.05),
    ];
    for (name, args, target) in reads {
        let mut walls = Vec::new();
        let mut rss = 0;
        let mut lines = 0;
        for _ in 0..repeat {
            let rss_file = dir.join("rss.txt");
            let (mut cmd, timed) = util::timed_command(&opts.exe, &rss_file);
            let run = util::run_child(
                cmd.arg("--ledger").arg(&path).args(&args),
                timed.then_some(rss_file.as_path()),
                Duration::from_secs(120),
                true,
            )?;
            if run.status != 0 {
                return Err(format!("`{name}` exited {}", run.status).into());
            }
            lines = run.stdout.iter().filter(|&&b| b == b'\n').count();
            walls.push(run.wall);
            rss = rss.max(run.max_rss_kib);
        }
        peak = peak.max(rss);
        let wall = util::median(walls);
        note(format!(
            "   {name}: {} (median of {repeat}), {lines} lines out, peak RSS {}",
            util::ms(wall),
            mib(rss)
        ));
        rows.push(Row::new(
            "3",
            format!("  `{name}` (real binary, output {lines} lines)"),
            format!("wall time, median of {repeat}"),
            util::ms(wall),
            format!("≤ {}", util::ms(Duration::from_secs_f64(target))),
            verdict(wall.as_secs_f64() <= target),
        ));
    }
    let (first, rss) = run_startup(opts, &path, repeat)?;
    peak = peak.max(rss);
    rows.push(Row::new(
        "3",
        "  `run` (real binary, sandbox on loopback)".to_string(),
        format!("start-up to its first request, median of {repeat}"),
        util::ms(first),
        "≤ 300 ms",
        verdict(first.as_secs_f64() <= 0.3),
    ));
    rows.push(Row::new(
        "3",
        "  every command above".to_string(),
        "peak RSS (/usr/bin/time %M)",
        mib(peak),
        "≤ 100 MB",
        verdict(peak * 1024 <= 100_000_000),
    ));
    Ok(copy)
}

/// Starts `run` against a fresh sandbox until the sandbox sees its first API request, then
/// stops it with SIGINT (as Ctrl-C would) and reaps it.
fn run_startup(opts: &Opts, ledger: &Path, repeat: usize) -> Res<(Duration, u64)> {
    let mut firsts = Vec::new();
    let mut peak = 0;
    for _ in 0..repeat {
        let sandbox = Sandbox::start(SandboxConfig {
            queue_ms: 0,
            processing_ms: (0, 0),
            render: false,
            ..SandboxConfig::default()
        })?;
        let out = opts.work.join("scale").join("restored");
        let start = Instant::now();
        let rss_file = opts.work.join("scale").join("run-rss.txt");
        let (mut cmd, timed) = util::timed_command(&opts.exe, &rss_file);
        let child = cmd
            .arg("--ledger")
            .arg(ledger)
            .arg("--base-url")
            .arg(sandbox.base_url())
            .args(["run", "--quiet", "--concurrency", "8", "--out-dir"])
            .arg(&out)
            .env_remove("PIXAZO_API_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id() as libc::pid_t;
        let mut first = None;
        while start.elapsed() < Duration::from_secs(60) {
            if sandbox.stats().api_requests > 0 {
                first = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let engine = if timed {
            util::only_child(pid)
        } else {
            Some(pid)
        };
        util::signal(engine.unwrap_or(pid), libc::SIGINT);
        let (status, rss) = util::wait_bounded(pid, Instant::now(), Duration::from_secs(30))?;
        let rss = if timed {
            util::rss_written(&rss_file).unwrap_or(rss)
        } else {
            rss
        };
        std::mem::forget(child);
        sandbox.shutdown();
        let first = first.ok_or("`run` made no request within 60 s")?;
        note(format!(
            "   run: first request after {}, exit {status}, peak RSS {}",
            util::ms(first),
            mib(rss)
        ));
        firsts.push(first);
        peak = peak.max(rss);
    }
    Ok((util::median(firsts), peak))
}

fn generate(
    path: &Path,
    finished: usize,
    in_flight: usize,
    want_copy: bool,
) -> Res<Option<(PathBuf, usize)>> {
    let mut ledger = Ledger::open(path)?;
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
    drop(ledger);
    let copy = if want_copy {
        let copy = path.with_file_name("finished-only.db");
        std::fs::copy(path, &copy)?;
        Some((copy, finished))
    } else {
        None
    };
    let mut ledger = Ledger::open(path)?;
    gen::fill(
        &mut ledger,
        &Plan {
            batch: "inflight",
            finished: 0,
            in_flight,
            owe_hooks: false,
            processing_polls: 0,
            request_tag: "req",
        },
    )?;
    drop(ledger);
    Ok(copy)
}
