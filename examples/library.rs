//! Using codeformer-ledger as a library: a ledger, the in-process sandbox gateway, a few jobs,
//! the engine, and a report. Run with `cargo run --example library`.

use codeformer_ledger::engine::{self, EngineOptions};
use codeformer_ledger::gateway::{Gateway, GatewayConfig};
use codeformer_ledger::ledger::{GroupBy, Ledger, NewJob};
use codeformer_ledger::money;
use codeformer_ledger::params::JobParams;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::copy("examples/images/avatar.png", images.join("avatar.png"))?;
    std::fs::copy(
        "examples/images/portrait-small.png",
        images.join("portrait.png"),
    )?;

    let sandbox = Sandbox::start(SandboxConfig {
        static_dir: Some(images),
        queue_ms: 20,
        processing_ms: (50, 100),
        ..SandboxConfig::default()
    })?;

    let mut ledger = Ledger::open(&dir.path().join("ledger.db"))?;
    let jobs: Vec<NewJob> = ["avatar.png", "portrait.png"]
        .iter()
        .map(|name| {
            let mut job = NewJob::new(JobParams::new(sandbox.static_url(name)));
            job.tags = vec![("project".into(), "example".into())];
            job
        })
        .collect();
    ledger.enqueue(&jobs)?;

    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let mut options = EngineOptions::new(dir.path().join("restored"));
    options.poll_interval = Duration::from_millis(200);
    let _lock = ledger.lock_engine()?;
    let summary = engine::run(&mut ledger, &gateway, &options, None, &mut ())?;
    println!(
        "sent {}, charged {} USD",
        summary.sent,
        money::exact(summary.charged)
    );

    let report = ledger.report(None, None, &GroupBy::Tag("project".into()))?;
    for row in &report.rows {
        println!(
            "{}: {} jobs, {} USD",
            row.group,
            row.jobs,
            money::exact(row.charged)
        );
    }
    Ok(())
}
