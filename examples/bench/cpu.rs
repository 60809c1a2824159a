//! #10: the CPU one `batch` command spends per 1,000 jobs, all of its threads, against the
//! `sandbox` command in its own process making real PNG outputs (decoded input, upscaled,
//! encoded), at concurrency 8. The figure is the command's user + system time from wait4(2),
//! so the sandbox's work is not in it. With `BENCH_STRACE=1` (and strace installed) the same
//! batch runs once more under `strace -f -c`, and the system calls per job are printed. The
//! TCP connections the sandbox accepted during the batch are printed too (a client that keeps
//! its connections opens a few per worker, not one per request).

use crate::util::{self, note, thousands, Res};
use crate::{verdict, Opts, Row};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one `batch` command cost.
struct Spent {
    user: Duration,
    sys: Duration,
    wall: Duration,
    /// Voluntary and involuntary context switches.
    switches: (i64, i64),
}

pub fn cpu(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let n = opts.size(1_000);
    let dir = tempfile::tempdir_in(&opts.work)?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let png = dir.path().join("input.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]))
        .save(&png)?;
    let data = std::fs::read(&png)?;
    // An empty config file, so the user's own does not change the run.
    std::fs::write(dir.path().join("config.toml"), "")?;
    for i in 0..n {
        std::fs::write(images.join(format!("p{i:05}.png")), &data)?;
    }
    let (pid, base, files) = start_sandbox(opts, &images, &dir.path().join("sandbox-out"))?;
    let result = (|| -> Res<()> {
        let manifest = dir.path().join("cpu.txt");
        let lines: Vec<String> = (0..n).map(|i| format!("{files}/p{i:05}.png")).collect();
        std::fs::write(&manifest, lines.join("\n") + "\n")?;
        note(format!(
            "#10 `batch` of {n} jobs against the sandbox process, real PNG outputs, concurrency 8"
        ));
        let before = connections_accepted(&base)?;
        let spent = run_batch(opts, dir.path(), &manifest, &base, "a", None)?;
        // The reading of the count is a connection of its own.
        let connections = connections_accepted(&base)?.saturating_sub(before + 1);
        let per_k = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        let total = per_k(spent.user + spent.sys);
        note(format!(
            "   {total:.3} CPU-s per 1,000 jobs (user {:.3}, sys {:.3}), {:.1} s wall, {:.1} voluntary / {:.1} involuntary context switches per job, {:.0} connections per 1,000 jobs",
            per_k(spent.user),
            per_k(spent.sys),
            spent.wall.as_secs_f64(),
            spent.switches.0 as f64 / n as f64,
            spent.switches.1 as f64 / n as f64,
            connections as f64 * 1000.0 / n as f64
        ));
        rows.push(Row::new(
            "10",
            format!(
                "`batch` of {} jobs, sandbox in its own process (real PNG outputs), concurrency 8",
                thousands(n as u64)
            ),
            "command's CPU-s per 1,000 jobs, all threads (user / sys)",
            format!(
                "{total:.3} ({:.3} / {:.3})",
                per_k(spent.user),
                per_k(spent.sys)
            ),
            "≤ 0.6",
            verdict(total <= 0.6),
        ));
        rows.push(Row::new(
            "10",
            "  same batch: TCP connections the sandbox accepted",
            "connections per 1,000 jobs (each job makes ≥ 4 requests, and the sandbox fetches its input)",
            format!("{:.0}", connections as f64 * 1000.0 / n as f64),
            "—",
            "report".into(),
        ));
        if std::env::var("BENCH_STRACE").is_ok_and(|v| v == "1") {
            syscalls(opts, dir.path(), &manifest, &base, n, rows)?;
        }
        Ok(())
    })();
    util::signal(pid, libc::SIGTERM);
    let _ = util::wait_bounded(pid, Instant::now(), Duration::from_secs(10));
    result
}

/// The TCP connections the sandbox process has accepted so far (its own input fetches
/// included), from `GET /sandbox/stats`.
fn connections_accepted(base: &str) -> Res<u64> {
    let text = ureq::get(format!("{base}/sandbox/stats"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let stats: codeformer_ledger::sandbox::SandboxStats = serde_json::from_str(&text)?;
    Ok(stats.connections)
}

/// Starts `codeformer-ledger sandbox` (real rendering, no delays) on a free loopback port;
/// returns its pid, API base URL and static URL.
fn start_sandbox(opts: &Opts, images: &Path, out: &Path) -> Res<(libc::pid_t, String, String)> {
    let mut child = Command::new(&opts.exe)
        .args(["sandbox", "--addr", "127.0.0.1:0", "--queue-ms", "0"])
        .args(["--processing-ms", "0", "--static-dir"])
        .arg(images)
        .arg("--output-dir")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // The child is reaped by `wait_bounded`; std must not wait for it.
    std::mem::forget(child);
    let (base, files) = util::sandbox_urls(stdout)?;
    match (base, files) {
        (Some(b), Some(f)) => Ok((pid, b, f)),
        _ => {
            util::signal(pid, libc::SIGKILL);
            let _ = util::wait_bounded(pid, Instant::now(), Duration::from_secs(10));
            Err("#10: the sandbox process printed no URLs".into())
        }
    }
}

/// Runs `batch MANIFEST` into a fresh ledger named `tag`, optionally under a wrapper command
/// (strace), and returns what it spent; fails unless every job completed (exit 0).
fn run_batch(
    opts: &Opts,
    dir: &Path,
    manifest: &Path,
    base: &str,
    tag: &str,
    wrapper: Option<&[&str]>,
) -> Res<Spent> {
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&opts.exe);
            c
        }
        None => Command::new(&opts.exe),
    };
    cmd.arg("batch")
        .arg(manifest)
        .args(["--quiet", "--concurrency", "8", "--name", "cpu"])
        .arg("--ledger")
        .arg(dir.join(format!("ledger-{tag}.db")))
        .arg("--out-dir")
        .arg(dir.join(format!("out-{tag}")))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["--base-url", base])
        .env_remove("PIXAZO_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    std::mem::forget(child);
    let (status, usage) = util::wait_usage(pid, start, opts.secs(600))?;
    if status != 0 {
        return Err(format!("#10: `batch` exited {status}").into());
    }
    Ok(Spent {
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        wall: start.elapsed(),
        switches: (usage.ru_nvcsw, usage.ru_nivcsw),
    })
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// The same batch under `strace -f -c`: system calls per job, the most frequent first.
fn syscalls(
    opts: &Opts,
    dir: &Path,
    manifest: &Path,
    base: &str,
    n: usize,
    rows: &mut Vec<Row>,
) -> Res<()> {
    if !Path::new("/usr/bin/strace").exists() {
        note("#10: BENCH_STRACE=1 but /usr/bin/strace is missing; no system call counts");
        return Ok(());
    }
    let report = dir.join("strace.txt");
    let report_arg = report.to_string_lossy().into_owned();
    let wrapper = ["/usr/bin/strace", "-f", "-c", "-o", report_arg.as_str()];
    run_batch(opts, dir, manifest, base, "strace", Some(&wrapper))?;
    let text = std::fs::read_to_string(&report)?;
    // Lines: % time, seconds, usecs/call, calls, [errors,] syscall.
    let mut counts: Vec<(String, u64)> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let name = cols.last()?;
            let calls = cols.get(3)?.parse().ok()?;
            (*name != "total").then(|| (name.to_string(), calls))
        })
        .collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let total: u64 = counts.iter().map(|c| c.1).sum();
    let top: Vec<String> = counts
        .iter()
        .take(8)
        .map(|(name, calls)| format!("{name} {:.1}", *calls as f64 / n as f64))
        .collect();
    let threads = counts
        .iter()
        .filter(|c| c.0 == "clone" || c.0 == "clone3")
        .map(|c| c.1)
        .sum::<u64>();
    note(format!(
        "   under strace: {:.1} system calls per job ({}); {:.2} threads started per job",
        total as f64 / n as f64,
        top.join(", "),
        threads as f64 / n as f64
    ));
    rows.push(Row::new(
        "10",
        "  same batch under `strace -f -c` (BENCH_STRACE=1)",
        "system calls per job: all; most frequent; threads started",
        format!(
            "{:.1}; {}; {:.2} clone",
            total as f64 / n as f64,
            top.join(", "),
            threads as f64 / n as f64
        ),
        "—",
        "report".into(),
    ));
    Ok(())
}
