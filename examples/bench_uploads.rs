//! Uploads of local photos: N files of MIN-MAX MB in a folder, `batch DIR --upload` by the
//! binary against an in-process S3 server (`s3s-fs`, signatures checked) and a fast sandbox on
//! loopback, once per concurrency given (`--concurrency 1` is one upload at a time). Prints,
//! for each, uploads per second (between the first and the last `upload` event) and the
//! command's CPU time per MB of photos (hashing at enqueue, signing, sending, the whole run).
//! Bounded: at most 1,000 files of at most 5 MB, at most 64 uploads at once.
//!
//! Usage: bench_uploads BINARY [FILES] [MIN_MB] [MAX_MB] [CONCURRENCY,...]

#[path = "../tests/integration/s3.rs"]
#[allow(dead_code)]
mod s3;

use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .expect("usage: bench_uploads BINARY [FILES] [MIN_MB] [MAX_MB]");
    let n: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50)
        .min(1000);
    let min_mb: u64 = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1)
        .clamp(1, 5);
    let max_mb: u64 = args
        .get(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .clamp(min_mb, 5);
    let levels: Vec<u16> = args
        .get(5)
        .map(String::as_str)
        .unwrap_or("1,4")
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .map(|c: u16| c.clamp(1, 64))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut total = 0u64;
    for i in 0..n {
        let sub = photos.join(format!("roll{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        let size = rng.u64(min_mb * 1_000_000..=max_mb * 1_000_000) as usize;
        let mut bytes = png_head(64 + (i as u32 % 64), 48);
        let mut junk = vec![0u8; size.saturating_sub(bytes.len())];
        rng.fill(&mut junk);
        bytes.extend_from_slice(&junk);
        let mut f = std::fs::File::create(sub.join(format!("p{i:04}.png"))).unwrap();
        f.write_all(&bytes).unwrap();
        total += bytes.len() as u64;
    }
    println!(
        "uploads benchmark on {} core(s): {n} files ({min_mb}-{max_mb} MB, {:.1} MB in all)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        total as f64 / 1e6
    );
    for concurrency in levels {
        measure(bin, dir.path(), &photos, total, concurrency);
    }
}

/// One `batch DIR --upload` run with this concurrency, against a fresh bucket and ledger.
fn measure(
    bin: &str,
    dir: &std::path::Path,
    photos: &std::path::Path,
    total: u64,
    concurrency: u16,
) {
    let run = tempfile::tempdir_in(dir).unwrap();
    let s3 = s3::S3Server::start();
    let sandbox = Sandbox::start(SandboxConfig {
        queue_ms: 0,
        processing_ms: (0, 0),
        render: false,
        ..SandboxConfig::default()
    })
    .unwrap();
    let ledger = run.path().join("ledger.db");
    let started = Instant::now();
    let cpu_before = children_cpu();
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "batch",
        photos.to_str().unwrap(),
        "--quiet",
        "--poll-interval",
        "50ms",
        "--concurrency",
        &concurrency.to_string(),
    ])
    .args([
        "--upload",
        &format!("s3://{}/bench", s3::BUCKET),
        "--s3-path-style",
    ])
    .args(["--out-dir", run.path().join("out").to_str().unwrap()])
    .env("CODEFORMER_LEDGER", &ledger)
    .env("PIXAZO_BASE_URL", sandbox.base_url())
    .env_remove("PIXAZO_API_KEY");
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let wall = started.elapsed();
    let cpu = children_cpu() - cpu_before;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = rusqlite::Connection::open(&ledger).unwrap();
    // Event times are unix milliseconds.
    let (first, last, count): (i64, i64, i64) = db
        .query_row(
            "SELECT min(at), max(at), count(*) FROM events WHERE kind = 'upload'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let span = ((last - first) as f64 / 1000.0).max(0.001);
    let mb = total as f64 / 1e6;
    println!("  --concurrency {concurrency}");
    println!("    PUTs at the server    {}", s3.requests("PUT").len());
    println!(
        "    uploads/s             {:.1} ({count} uploads in {span:.2} s)",
        (count - 1).max(1) as f64 / span
    );
    println!(
        "    MB/s uploaded         {:.1}",
        mb * (count - 1).max(1) as f64 / count as f64 / span
    );
    println!(
        "    client CPU per MB     {:.1} ms (whole command: {:.2} s CPU, {:.2} s wall)",
        cpu * 1000.0 / mb,
        cpu,
        wall.as_secs_f64()
    );
}

/// The first bytes of a PNG of this size: enough for every header reader.
fn png_head(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let img = image::RgbImage::new(width, height);
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// CPU seconds (user + system) of finished children.
fn children_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
