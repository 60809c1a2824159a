//! Measuring helpers: CPU time of the process, of one thread and of the sandbox's threads,
//! child processes timed with their peak RSS, and number formatting.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// User + system CPU time of this whole process, exited threads included.
pub fn cpu_process() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// User + system CPU time of the calling thread.
pub fn cpu_thread() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes a plain struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// CPU time of this process's live threads whose name starts with `prefix` (the in-process
/// sandbox names all of its threads `sandbox-*`), from /proc (nanoseconds in schedstat).
pub fn cpu_threads_named(prefix: &str) -> Duration {
    let mut total = Duration::ZERO;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat.split_whitespace().next().and_then(|n| n.parse().ok()) {
            total += Duration::from_nanos(ns);
        }
    }
    total
}

/// A command for `exe`, run under `/usr/bin/time -f %M -o RSS_FILE` when that exists. wait4's
/// ru_maxrss of a child forked from this process counts this process's own memory (tens of
/// MB after writing a large ledger); `time` is small, so the figure it reports is the
/// command's. Returns the command and whether `time` wraps it.
pub fn timed_command(exe: &Path, rss_file: &Path) -> (Command, bool) {
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let mut cmd = Command::new(time);
        cmd.arg("-f").arg("%M").arg("-o").arg(rss_file).arg(exe);
        (cmd, true)
    } else {
        (Command::new(exe), false)
    }
}

/// The peak RSS in KiB that `time -f %M -o FILE` wrote (its last line).
pub fn rss_written(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().last()?.trim().parse().ok()
}

/// The pid of the process `time` started (its only child).
pub fn only_child(pid: libc::pid_t) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A child process's wall time, peak resident memory and exit status.
pub struct ChildRun {
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub status: i32,
    pub stdout: Vec<u8>,
}

/// Runs a command to its end (bounded by `limit`, then SIGKILL), timing it and reading its
/// peak RSS from `rss_file` (see [`timed_command`]) or else from wait4(2). Stdout is kept when
/// `capture`, else discarded.
pub fn run_child(
    cmd: &mut Command,
    rss_file: Option<&Path>,
    limit: Duration,
    capture: bool,
) -> Res<ChildRun> {
    use std::io::Read;
    cmd.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.stdout(if capture {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        })
    });
    let (status, rss) = wait_bounded(pid, start, limit)?;
    let wall = start.elapsed();
    let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    // The child was reaped by wait4 above; std must not wait for it again.
    std::mem::forget(child);
    Ok(ChildRun {
        wall,
        max_rss_kib: rss_file.and_then(rss_written).unwrap_or(rss),
        status,
        stdout,
    })
}

/// Waits for `pid` until `start + limit`, then kills it; returns its exit status and peak RSS.
pub fn wait_bounded(pid: libc::pid_t, start: Instant, limit: Duration) -> Res<(i32, u64)> {
    let (code, usage) = wait_usage(pid, start, limit)?;
    Ok((code, usage.ru_maxrss as u64))
}

/// Waits for `pid` until `start + limit`, then kills it; returns its exit status and its
/// resource usage.
pub fn wait_usage(pid: libc::pid_t, start: Instant, limit: Duration) -> Res<(i32, libc::rusage)> {
    loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child, writing into structs we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            return Ok((code, usage));
        }
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if start.elapsed() > limit {
            signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The API base URL and the static URL a `sandbox` process prints first (from its first 20
/// lines), whichever it printed.
pub fn sandbox_urls(stdout: impl std::io::Read) -> Res<(Option<String>, Option<String>)> {
    use std::io::BufRead;
    let (mut base, mut files) = (None, None);
    for line in std::io::BufReader::new(stdout).lines().take(20) {
        let line = line?;
        if let Some(url) = line.strip_prefix("PIXAZO_BASE_URL=") {
            base = Some(url.trim().to_string());
        } else if let Some(url) = line.strip_prefix("SANDBOX_STATIC_URL=") {
            files = Some(url.trim().trim_end_matches('/').to_string());
        }
        if base.is_some() && files.is_some() {
            break;
        }
    }
    Ok((base, files))
}

pub fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: signalling our own child by its id.
    unsafe { libc::kill(pid, sig) };
}

/// Bytes of a ledger on disk: the database and its WAL.
pub fn ledger_bytes(path: &Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// Prints a progress line on stderr (the table goes to stdout).
pub fn note(text: impl AsRef<str>) {
    eprintln!("[bench] {}", text.as_ref());
}
