//! `demo`: the whole pipeline on bundled images against an in-process sandbox gateway.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::engine::{self, EngineOptions};
use codeformer_ledger::gateway::{Gateway, GatewayConfig};
use codeformer_ledger::ledger::{GroupBy, JobFilter, Ledger, NewJob};
use codeformer_ledger::money;
use codeformer_ledger::params::JobParams;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::path::PathBuf;
use std::time::Duration;

/// The whole pipeline on bundled images against an in-process sandbox gateway.
///
/// Records, estimates, sends, polls, downloads and reports five bundled images against a
/// sandbox gateway on loopback. Nothing leaves the machine and no key is needed. Each demo
/// writes a fresh folder with its own ledger and outputs (the global --ledger is not used).
///
/// Example:
///   codeformer-ledger demo
///   codeformer-ledger demo --dir /tmp/cf-demo
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Where the demo's folder is created.
    #[arg(long, value_name = "DIR", default_value = "codeformer-demo")]
    pub dir: PathBuf,
}

/// The bundled images: made by the project, small, and free to use.
const IMAGES: &[(&str, &[u8])] = &[
    (
        "portrait-small.png",
        include_bytes!("../../examples/images/portrait-small.png"),
    ),
    (
        "couple-landscape.jpg",
        include_bytes!("../../examples/images/couple-landscape.jpg"),
    ),
    (
        "avatar.png",
        include_bytes!("../../examples/images/avatar.png"),
    ),
    (
        "tall-333x517.jpg",
        include_bytes!("../../examples/images/tall-333x517.jpg"),
    ),
    (
        "grayscale-ish.webp",
        include_bytes!("../../examples/images/grayscale-ish.webp"),
    ),
];

pub fn run(_global: &Global, args: DemoArgs) -> CmdResult {
    let stamp = chrono::Utc::now()
        .format("run-%Y%m%d-%H%M%S-%3f")
        .to_string();
    let root = args.dir.join(stamp);
    let static_dir = root.join("inputs");
    std::fs::create_dir_all(&static_dir)
        .map_err(|e| CliError::error(format!("cannot create {}: {e}", static_dir.display())))?;
    for (name, bytes) in IMAGES {
        std::fs::write(static_dir.join(name), bytes)?;
    }
    let root = root.canonicalize()?;
    let sandbox = Sandbox::start(SandboxConfig {
        static_dir: Some(static_dir.clone()),
        queue_ms: 150,
        processing_ms: (300, 900),
        seed: 7,
        output_dir: Some(root.join("gateway-outputs")),
        ..SandboxConfig::default()
    })
    .map_err(|e| CliError::error(format!("the sandbox gateway could not start: {e}")))?;
    println!("sandbox gateway listening on {}", sandbox.base_url());

    let ledger_path = root.join("ledger.db");
    let mut ledger = Ledger::open(&ledger_path)?;
    let jobs: Vec<NewJob> = IMAGES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut params = JobParams::new(sandbox.static_url(name));
            params.upscale = if i % 2 == 0 { 2 } else { 4 };
            let mut job = NewJob::new(params);
            job.batch = Some("demo".into());
            job.tags = vec![(
                "client".into(),
                if i < 3 { "acme" } else { "globex" }.into(),
            )];
            job
        })
        .collect();
    ledger.enqueue(&jobs)?;
    println!("recorded {} jobs in {}", jobs.len(), ledger_path.display());

    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let _lock = ledger.lock_engine()?;
    let mut options = EngineOptions::new(root.join("restored"));
    options.batch = Some("demo".into());
    options.concurrency = 4;
    options.poll_interval = Duration::from_millis(500);
    std::fs::create_dir_all(&options.out_dir)?;
    let summary = engine::run(&mut ledger, &gateway, &options, None, &mut ())?;
    println!(
        "sent {}, polled {}, downloaded {}; charged {} USD (the sandbox bills {} USD)",
        summary.sent,
        summary.polls,
        summary.downloads,
        money::exact(summary.charged),
        sandbox.stats().charged_usd
    );

    println!("\njobs:");
    ledger.for_each_job(&JobFilter::default(), |job| {
        let outputs = ledger.outputs_of(job.id).unwrap_or_default();
        let output = outputs.first().map(|o| o.path.clone()).unwrap_or_default();
        println!(
            "  {:>2} {:<9} {:>4}x{:<4} x{} -> {:>5}x{:<5} {:>12} USD  {}",
            job.id,
            job.state.as_str(),
            job.input_width.unwrap_or(0),
            job.input_height.unwrap_or(0),
            job.upscale,
            job.output_width.unwrap_or(0),
            job.output_height.unwrap_or(0),
            job.actual_cost
                .map(money::exact)
                .unwrap_or_else(|| "-".into()),
            output
        );
        Ok(())
    })?;
    let report = ledger.report(None, None, &GroupBy::Tag("client".into()))?;
    println!("\nspend by client:");
    for row in report.rows.iter().chain(std::iter::once(&report.total)) {
        println!(
            "  {:<8} {} jobs, {} MP, {} USD",
            row.group,
            row.jobs,
            money::exact(row.output_megapixels),
            money::exact(row.charged)
        );
    }
    // The binary's own path, so the hints work after `cargo run` as well as after install.
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| shell_quote(&p.to_string_lossy()))
        .unwrap_or_else(|| "codeformer-ledger".into());
    let ledger_arg = shell_quote(&ledger_path.to_string_lossy());
    println!("\nexplore the ledger:");
    for command in ["jobs", "show 1", "report --by tag:client"] {
        println!("  {bin} --ledger {ledger_arg} {command}");
    }
    sandbox.shutdown();
    Ok(codeformer_ledger::exit::of_run(&summary))
}

/// A path as a shell reads it: as is when it is plain, else in single quotes.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
