//! `demo`: the whole pipeline on bundled images against an in-process sandbox gateway.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::engine::{self, EngineOptions};
use codeformer_ledger::gateway::{Gateway, GatewayConfig};
use codeformer_ledger::ledger::{GroupBy, JobFilter, Ledger, NewJob};
use codeformer_ledger::money;
use codeformer_ledger::params::JobParams;
use codeformer_ledger::sandbox::{Sandbox, SandboxConfig, S3_ACCESS_KEY, S3_SECRET_KEY};
use codeformer_ledger::storage::{Destination, Storage, StorageConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole pipeline on bundled images against an in-process sandbox gateway.
///
/// Writes five bundled photos into a folder, uploads them to the sandbox's S3-compatible
/// bucket (presigned, content-addressed), then records, sends, polls, downloads and reports
/// them against a sandbox gateway on loopback, which fetches them from the bucket; a second
/// pass over the folder uploads nothing. Nothing leaves the machine and no key is needed.
/// Each demo writes a fresh folder with its own ledger and outputs (the global --ledger is
/// not used).
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

/// The demo's bucket in the sandbox, and where its photos go in it.
const BUCKET: &str = "demo-photos";
const DESTINATION: &str = "s3://demo-photos/in";

/// The bundled images, by where the demo puts them in its photo folder: made by the project,
/// small, and free to use.
const IMAGES: &[(&str, &[u8])] = &[
    (
        "portrait-small.png",
        include_bytes!("../../examples/images/portrait-small.png"),
    ),
    (
        "family/couple-landscape.jpg",
        include_bytes!("../../examples/images/couple-landscape.jpg"),
    ),
    (
        "family/avatar.png",
        include_bytes!("../../examples/images/avatar.png"),
    ),
    (
        "archive/tall-333x517.jpg",
        include_bytes!("../../examples/images/tall-333x517.jpg"),
    ),
    (
        "archive/grayscale-ish.webp",
        include_bytes!("../../examples/images/grayscale-ish.webp"),
    ),
];

pub fn run(_global: &Global, args: DemoArgs) -> CmdResult {
    let stamp = chrono::Utc::now()
        .format("run-%Y%m%d-%H%M%S-%3f")
        .to_string();
    let root = args.dir.join(stamp);
    let photos = root.join("photos");
    for (name, bytes) in IMAGES {
        let path = photos.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&photos))
            .map_err(|e| CliError::error(format!("cannot create {}: {e}", photos.display())))?;
        std::fs::write(path, bytes)?;
    }
    let root = root.canonicalize()?;
    let sandbox = Sandbox::start(SandboxConfig {
        queue_ms: 150,
        processing_ms: (300, 900),
        seed: 7,
        output_dir: Some(root.join("gateway-outputs")),
        s3_buckets: vec![BUCKET.into()],
        ..SandboxConfig::default()
    })
    .map_err(|e| CliError::error(format!("the sandbox gateway could not start: {e}")))?;
    println!(
        "sandbox gateway listening on {}, its S3-compatible bucket `{BUCKET}` at {}",
        sandbox.base_url(),
        sandbox.s3_endpoint()
    );

    let ledger_path = root.join("ledger.db");
    let mut ledger = Ledger::open(&ledger_path)?;
    let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
    let storage = demo_storage(&sandbox, &gateway)?;
    let jobs = folder_jobs(&photos, storage.destination())?;
    ledger.enqueue(&jobs)?;
    println!(
        "recorded {} jobs for the photos of {} in {}",
        jobs.len(),
        photos.display(),
        ledger_path.display()
    );
    let _lock = ledger.lock_engine()?;
    upload_pass(&storage, &mut ledger, &sandbox, "uploaded")?;

    let mut options = EngineOptions::new(root.join("restored"));
    options.batch = Some("demo".into());
    options.concurrency = 4;
    options.poll_interval = Duration::from_millis(500);
    options.storage = Some(storage.clone());
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
    // The same folder again: every photo is known, so nothing is uploaded.
    let again = ledger.enqueue(&folder_jobs(&photos, storage.destination())?)?;
    println!(
        "the same folder again: {} photos, {} new jobs",
        again.len(),
        again.iter().filter(|e| e.added).count()
    );
    upload_pass(&storage, &mut ledger, &sandbox, "re-run uploaded")?;

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
    for command in ["jobs", "show 1", "report --by folder"] {
        println!("  {bin} --ledger {ledger_arg} {command}");
    }
    sandbox.shutdown();
    Ok(codeformer_ledger::exit::of_run(&summary))
}

/// The sandbox's bucket, with the sandbox's own credentials (not the environment's).
fn demo_storage(sandbox: &Sandbox, gateway: &Gateway) -> Result<Storage, CliError> {
    let destination: Destination = DESTINATION.parse().map_err(CliError::error)?;
    let config = StorageConfig {
        endpoint: Some(sandbox.s3_endpoint()),
        path_style: true,
        ..StorageConfig::new(destination)
    };
    let credentials = rusty_s3::Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY);
    Storage::with_credentials(config, credentials, gateway.file_agent().clone())
        .map_err(|e| CliError::error(e.to_string()))
}

/// A job for every photo of the folder, its image the locator of its object.
fn folder_jobs(photos: &Path, destination: &Destination) -> Result<Vec<NewJob>, CliError> {
    let (files, _) = super::upload::read_folder(photos)?;
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, file)| {
            let mut params = JobParams::new(destination.locator(&file.sha256, file.ext));
            params.upscale = if i % 2 == 0 { 2 } else { 4 };
            let mut job = NewJob::new(params);
            job.batch = Some("demo".into());
            let client = if file.relative.starts_with("family") {
                "acme"
            } else {
                "globex"
            };
            job.tags = vec![("client".into(), client.into())];
            job.size = Some(file.size);
            job.size_source = Some("local file header");
            job.local = Some(file);
            job
        })
        .collect())
}

/// Uploads what the ledger's jobs still need, and says what the bucket holds.
fn upload_pass(
    storage: &Storage,
    ledger: &mut Ledger,
    sandbox: &Sandbox,
    what: &str,
) -> Result<(), CliError> {
    let needed = ledger.uploads_needed(Some("demo"))?;
    let done = super::upload::upload_rows(storage, ledger, needed, 4)?;
    let objects = sandbox.s3_objects(BUCKET);
    println!(
        "{what} {} objects ({} bytes) to {}; the bucket holds {} objects ({} bytes)",
        done.put,
        done.bytes,
        storage.destination(),
        objects.len(),
        objects.iter().map(|(_, b)| b).sum::<u64>()
    );
    Ok(())
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
