//! The benchmarks of the "Performance" section of the README: throughput against the sandbox,
//! the gateway ceiling, a ledger of a million jobs, the engine's loop step, the ledger writer,
//! hook calls, header probes, the poll schedule, the ledger's size, the CPU of a `batch`
//! command, and the request budget under a rate limit with polls against lag (#11, #12).
//! Prints one table.
//!
//! Run through `scripts/bench.sh`, or:
//!
//!     cargo build --release && cargo run --release --example bench -- [--quick] [--only 1,3]
//!
//! Options: `--quick` (or `BENCH_QUICK=1`) runs sizes 10x smaller; `--only LIST` runs some;
//! `--exe PATH` names the built binary (default target/release/codeformer-ledger), which the
//! hook and command-line benchmarks start; `--work DIR` is where ledgers and test images go
//! (default target/bench-work; images are kept there between runs, ledgers are not, unless
//! `--keep`). `--reuse-ledger PATH` makes #3 copy a kept ledger instead of writing one, and
//! `--reuse-finished PATH` gives #4 a kept ledger of finished jobs (`finished-only.db`).
//! Everything runs on loopback, and every loop is bounded in count and in time.

mod budget;
mod cpu;
mod engine;
mod gen;
mod images;
mod parts;
mod scale;
mod size;
mod util;

use std::path::PathBuf;
use util::Res;

pub struct Opts {
    pub quick: bool,
    pub only: Vec<u32>,
    pub exe: PathBuf,
    pub work: PathBuf,
    /// Keep the million-job ledger of #3 in the work folder (for profiling).
    pub keep: bool,
    /// A ledger to copy for #3 instead of generating one (for profiling the commands).
    pub reuse: Option<PathBuf>,
    /// A ledger of finished jobs to copy for #4's largest point instead of generating one.
    pub reuse_finished: Option<PathBuf>,
}

impl Opts {
    /// A default size, 10x smaller in quick mode.
    pub fn size(&self, full: usize) -> usize {
        if self.quick {
            full / 10
        } else {
            full
        }
    }

    /// A time bound in seconds, shorter in quick mode.
    pub fn secs(&self, full: u64) -> std::time::Duration {
        std::time::Duration::from_secs(if self.quick { full.div_ceil(3) } else { full })
    }

    fn wants(&self, n: u32) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}

/// One line of the table.
pub struct Row {
    pub num: &'static str,
    pub bench: String,
    pub figure: String,
    pub value: String,
    pub target: String,
    pub verdict: String,
}

impl Row {
    pub fn new(
        num: &'static str,
        bench: impl Into<String>,
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        verdict: String,
    ) -> Row {
        Row {
            num,
            bench: bench.into(),
            figure: figure.into(),
            value: value.into(),
            target: target.into(),
            verdict,
        }
    }
}

pub fn verdict(met: bool) -> String {
    if met { "met" } else { "MISSED" }.to_string()
}

fn parse_args() -> Res<Opts> {
    let mut opts = Opts {
        quick: std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0"),
        only: Vec::new(),
        exe: PathBuf::from("target/release/codeformer-ledger"),
        work: PathBuf::from("target/bench-work"),
        keep: false,
        reuse: None,
        reuse_finished: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--keep" => opts.keep = true,
            "--reuse-finished" => {
                opts.reuse_finished =
                    Some(args.next().ok_or("--reuse-finished needs a path")?.into())
            }
            "--reuse-ledger" => opts.reuse = Some(args.next().ok_or("--reuse-ledger needs a path")?.into()),
            "--only" => {
                let list = args.next().ok_or("--only needs a list, e.g. 1,3")?;
                for n in list.split(',') {
                    opts.only.push(
                        n.trim()
                            .parse()
                            .map_err(|_| format!("--only: `{n}` is not a number"))?,
                    );
                }
            }
            "--exe" => opts.exe = args.next().ok_or("--exe needs a path")?.into(),
            "--work" => opts.work = args.next().ok_or("--work needs a folder")?.into(),
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--quick, --only LIST, --exe PATH, --work DIR, --keep, --reuse-ledger PATH, --reuse-finished PATH)"
                )
                .into())
            }
        }
    }
    if !opts.exe.exists() {
        return Err(format!(
            "{} does not exist: run `cargo build --release` first, or pass --exe",
            opts.exe.display()
        )
        .into());
    }
    opts.exe = opts.exe.canonicalize()?;
    std::fs::create_dir_all(&opts.work)?;
    opts.work = opts.work.canonicalize()?;
    Ok(opts)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let opts = parse_args()?;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    if opts.wants(7) {
        parts::probes(&opts, &mut rows)?;
    }
    if opts.wants(5) {
        parts::writer(&opts, &mut rows)?;
    }
    if opts.wants(6) {
        parts::hooks(&opts, &mut rows)?;
    }
    if opts.wants(1) || opts.wants(2) {
        engine::throughput(&opts, &mut rows)?;
    }
    let mut big = None;
    if opts.wants(3) {
        big = scale::scale(&opts, &mut rows, opts.wants(4))?;
    }
    if opts.wants(4) {
        engine::loop_step(&opts, big, &mut rows)?;
    }
    if opts.wants(8) {
        engine::schedule(&opts, &mut rows)?;
    }
    if opts.wants(9) {
        size::ledger_size(&opts, &mut rows)?;
    }
    if opts.wants(10) {
        cpu::cpu(&opts, &mut rows)?;
    }
    if opts.wants(11) || opts.wants(12) {
        budget::budget(&opts, &mut rows)?;
    }
    if !opts.keep {
        let _ = std::fs::remove_dir_all(opts.work.join("scale"));
    }
    rows.sort_by_key(|r| r.num.parse::<u32>().unwrap_or(0));
    print_table(&opts, &rows, started.elapsed());
    Ok(())
}

fn print_table(opts: &Opts, rows: &[Row], took: std::time::Duration) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "codeformer-ledger benchmarks: {cores} cores, {} mode, {} (took {:.0} s)",
        if opts.quick {
            "quick (10x smaller)"
        } else {
            "full"
        },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        took.as_secs_f64()
    );
    println!();
    println!("| # | benchmark | figure | result | target | verdict |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.num, r.bench, r.figure, r.value, r.target, r.verdict
        );
    }
}
