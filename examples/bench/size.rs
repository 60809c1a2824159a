//! #9: ledgers that stay small, and reports over several ledgers. Bytes per job of a typical
//! job (five polls: four PROCESSING answers that repeat each other, then the final one) with
//! every body stored whole (the layout before `repeated_bodies`) and with repeated answers as
//! references; the same after `ledger compact --vacuum`; #3's kind of job (one poll) before
//! and after compaction; and `report --with-ledger` over three ledgers.
//!
//! Sizes: `BENCH_SIZE_JOBS` (default 100,000; quick 10,000) jobs per size ledger,
//! `BENCH_MULTI_JOBS` (default 300,000; quick 30,000) jobs in each of the three ledgers.

use crate::gen::{self, Plan};
use crate::util::{self, note, thousands, Res};
use crate::{verdict, Opts, Row};
use codeformer_ledger::ledger::Ledger;
use std::path::Path;
use std::time::Duration;

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write(path: &Path, batch: &str, jobs: usize, processing_polls: usize) -> Res<f64> {
    let tag = format!("req{batch}");
    let mut ledger = Ledger::open(path)?;
    gen::fill(
        &mut ledger,
        &Plan {
            batch,
            finished: jobs,
            in_flight: 0,
            owe_hooks: false,
            processing_polls,
            request_tag: &tag,
        },
    )?;
    ledger.vacuum()?;
    drop(ledger);
    Ok(util::ledger_bytes(path) as f64 / jobs as f64)
}

/// `ledger compact --before tomorrow --vacuum` through the binary: bytes per job after, and
/// how long it took.
fn compact(opts: &Opts, path: &Path, jobs: usize) -> Res<(f64, Duration)> {
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let run = util::run_child(
        std::process::Command::new(&opts.exe)
            .arg("--ledger")
            .arg(path)
            .args(["ledger", "compact", "--before", &tomorrow, "--vacuum"]),
        None,
        Duration::from_secs(600),
        true,
    )?;
    if run.status != 0 {
        return Err(format!("`ledger compact` exited {}", run.status).into());
    }
    Ok((util::ledger_bytes(path) as f64 / jobs as f64, run.wall))
}

/// Bytes per job of each table and index (SQLite's `dbstat`), printed on stderr; returns the
/// largest few as one line for the table.
fn breakdown(path: &Path, jobs: usize, label: &str) -> Res<String> {
    let ledger = Ledger::open(path)?;
    let parts = ledger.bytes_by_table()?;
    let per = |b: u64| b as f64 / jobs as f64;
    note(format!("   {label}: bytes per job by table and index"));
    for (name, b) in &parts {
        if per(*b) >= 2.0 {
            note(format!("     {name:<32} {:>7.1}", per(*b)));
        }
    }
    Ok(parts
        .iter()
        .take(6)
        .map(|(name, b)| format!("{name} {}", per(*b).round()))
        .collect::<Vec<_>>()
        .join(", "))
}

fn bytes(b: f64) -> String {
    format!("{} B", thousands(b.round() as u64))
}

pub fn ledger_size(opts: &Opts, rows: &mut Vec<Row>) -> Res<()> {
    let dir = opts.work.join("size");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let n = env_size("BENCH_SIZE_JOBS", opts.size(100_000));
    note(format!(
        "#9 {} typical jobs (5 polls each)",
        thousands(n as u64)
    ));
    let typical = dir.join("typical.db");
    let with_refs = write(&typical, "typical", n, 4)?;
    let whole = dir.join("whole.db");
    std::fs::copy(&typical, &whole)?;
    {
        let mut ledger = Ledger::open(&whole)?;
        ledger.expand_references()?;
        ledger.vacuum()?;
    }
    let before = util::ledger_bytes(&whole) as f64 / n as f64;
    note(format!(
        "   bytes per job: {} with every body whole, {} with references",
        bytes(before),
        bytes(with_refs)
    ));
    rows.push(Row::new(
        "9",
        format!(
            "{} typical jobs (QUEUED, 4 PROCESSING polls repeating each other, COMPLETED)",
            thousands(n as u64)
        ),
        "ledger bytes per job: every body whole (before) → repeated answers as references",
        format!("{} → {}", bytes(before), bytes(with_refs)),
        "≤ 1,200 B",
        verdict(with_refs <= 1200.0),
    ));
    let written = breakdown(&typical, n, "as written")?;
    rows.push(Row::new(
        "9",
        "  same, as written: largest tables and indexes",
        "bytes per job (dbstat)",
        written,
        "report",
        "report".into(),
    ));
    let (compacted, took) = compact(opts, &typical, n)?;
    let after = breakdown(&typical, n, "after compact")?;
    rows.push(Row::new(
        "9",
        "  same, after `ledger compact --before TOMORROW --vacuum`",
        "ledger bytes per job; compaction time",
        format!("{}; {:.1} s", bytes(compacted), took.as_secs_f64()),
        "≤ 1,200 B",
        verdict(compacted <= 1200.0),
    ));
    rows.push(Row::new(
        "9",
        "  same, after compact: largest tables and indexes",
        "bytes per job (dbstat)",
        after,
        "report",
        "report".into(),
    ));
    let plain = dir.join("plain.db");
    let one_poll = write(&plain, "plain", n, 0)?;
    let (one_poll_compacted, _) = compact(opts, &plain, n)?;
    rows.push(Row::new(
        "9",
        format!("{} jobs of #3's kind (one poll each)", thousands(n as u64)),
        "ledger bytes per job: as written → after `ledger compact --vacuum`",
        format!("{} → {}", bytes(one_poll), bytes(one_poll_compacted)),
        "report",
        "report".into(),
    ));
    if !opts.keep {
        for p in [&typical, &whole, &plain] {
            let _ = std::fs::remove_file(p);
        }
    }

    let m = env_size("BENCH_MULTI_JOBS", opts.size(300_000));
    note(format!(
        "#9 three ledgers of {} jobs for `report --with-ledger`",
        thousands(m as u64)
    ));
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| dir.join(format!("{name}.db")))
        .collect();
    for (path, name) in paths.iter().zip(["a", "b", "c"]) {
        write(path, name, m, 0)?;
    }
    let repeat = if opts.quick { 1 } else { 3 };
    let mut walls = Vec::new();
    let mut lines = 0;
    for _ in 0..repeat {
        let run = util::run_child(
            std::process::Command::new(&opts.exe)
                .arg("--ledger")
                .arg(&paths[0])
                .arg("report")
                .arg("--with-ledger")
                .arg(&paths[1])
                .arg("--with-ledger")
                .arg(&paths[2])
                .args(["--by", "ledger"]),
            None,
            Duration::from_secs(300),
            true,
        )?;
        if run.status != 0 {
            return Err(format!("`report --with-ledger` exited {}", run.status).into());
        }
        lines = run.stdout.iter().filter(|&&b| b == b'\n').count();
        walls.push(run.wall);
    }
    let wall = util::median(walls);
    note(format!("   report --with-ledger ×2: {}", util::ms(wall)));
    rows.push(Row::new(
        "9",
        format!(
            "`report --with-ledger` ×2 --by ledger, three ledgers of {} jobs (output {lines} lines)",
            thousands(m as u64)
        ),
        format!("wall time, median of {repeat}"),
        util::ms(wall),
        "report",
        "report".into(),
    ));
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
