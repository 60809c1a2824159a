//! Local inputs: the `--upload` options, local files and folders read into jobs, and the
//! upload pass that puts every object a run needs into the bucket before anything is sent.

use super::{Cli, CliError, Global};
use codeformer_ledger::ledger::{Event, Ledger, NewJob, UploadRow};
use codeformer_ledger::params::JobParams;
use codeformer_ledger::storage::local::{self, LocalFile};
use codeformer_ledger::storage::{
    self, Destination, PutWork, Storage, StorageConfig, StorageError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The upload destination from `--upload` or the config file's `upload`, with the endpoint,
/// region, addressing and URL lifetime.
pub fn resolve(
    cli: &Cli,
    config: &super::config::Config,
) -> Result<Option<StorageConfig>, CliError> {
    let (text, origin) = match (&cli.upload, &config.file.upload) {
        (Some(t), _) => (t.clone(), "--upload".to_string()),
        (None, Some(t)) => (t.clone(), format!("upload in {}", config.origin())),
        (None, None) => return Ok(None),
    };
    let destination: Destination = text
        .parse()
        .map_err(|e| CliError::usage(format!("{origin}: {e}")))?;
    let mut out = StorageConfig::new(destination);
    out.endpoint = cli.s3_endpoint.clone().filter(|e| !e.trim().is_empty());
    if let Some(e) = &out.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "--s3-endpoint / AWS_ENDPOINT_URL `{e}` is not an http(s) URL"
            )));
        }
    }
    if let Ok(region) = std::env::var("AWS_REGION") {
        if !region.trim().is_empty() {
            out.region = region.trim().to_string();
        }
    }
    out.path_style = cli.s3_path_style;
    if let Some(ttl) = cli.url_ttl {
        if ttl > storage::MAX_URL_TTL {
            return Err(CliError::usage(
                "--url-ttl: a presigned URL lives at most 7 days (7d)",
            ));
        }
        out.url_ttl = ttl.max(std::time::Duration::from_secs(1));
    }
    Ok(Some(out))
}

/// The refusal of a local file when no bucket is configured.
pub fn needs_upload(path: &str) -> String {
    format!(
        "`{path}` is a local file path, not a URL: {}",
        codeformer_ledger::params::LOCAL_FILE_FIX
    )
}

/// Reads a local file into the job that sends it: its object's locator as the image, its
/// size from its header (so estimates and budgets need no network).
pub fn local_job(
    global: &Global,
    file: LocalFile,
    mut params: JobParams,
) -> Result<NewJob, CliError> {
    let Some(upload) = &global.upload else {
        return Err(CliError::usage(needs_upload(&file.given)));
    };
    params.image = upload.destination.locator(&file.sha256, file.ext);
    let mut job = NewJob::new(params);
    job.size = Some(file.size);
    job.size_source = Some("local file header");
    job.local = Some(file);
    Ok(job)
}

/// A local path as written in a manifest: relative paths are relative to the manifest's
/// folder, so a manifest works from wherever it is run.
pub fn manifest_path(manifest: &Path, written: &str) -> PathBuf {
    let written = Path::new(written);
    if written.is_absolute() {
        return written.to_path_buf();
    }
    manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.join(written))
        .unwrap_or_else(|| written.to_path_buf())
}

/// Every image file of a folder, read; the summary line names what was skipped.
pub fn read_folder(dir: &Path) -> Result<(Vec<LocalFile>, local::Scan), CliError> {
    let scan = local::scan_folder(dir).map_err(CliError::usage)?;
    let mut files = Vec::with_capacity(scan.files.len());
    let mut problems = Vec::new();
    for (given, path, relative) in &scan.files {
        match local::read_file(given, path, Some((&scan.root, relative))) {
            Ok(f) => files.push(f),
            Err(e) => problems.push(format!("  {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(CliError::usage(format!(
            "{} file(s) of {} cannot be used; nothing was recorded:\n{}",
            problems.len(),
            dir.display(),
            problems.join("\n")
        )));
    }
    Ok((files, scan))
}

/// What the upload pass did.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub put: usize,
    pub already: usize,
    pub bytes: u64,
}

/// Puts the object of every job in scope that may be sent and whose object the ledger does
/// not know to be in the bucket: a ledger lookup first, then a HEAD, then the PUT, up to
/// `concurrency` objects at a time (an object two jobs share is put once). Each is an `upload`
/// event of its job, recorded right after its request, so a killed pass redoes at most the
/// uploads it had under way. A failure starts no further upload and stops the command before
/// anything is sent.
pub fn upload_needed(
    global: &Global,
    ledger: &mut Ledger,
    batch: Option<&str>,
    only_job: Option<i64>,
    concurrency: usize,
    quiet: bool,
) -> Result<Uploaded, CliError> {
    let mut needed = ledger.uploads_needed(batch)?;
    if let Some(id) = only_job {
        needed.retain(|r| r.job_id == id);
    }
    if needed.is_empty() {
        return Ok(Uploaded::default());
    }
    let Some(storage) = global.storage()? else {
        return Err(CliError::usage(format!(
            "{} job(s) have local inputs still to upload (job {}: {} to {}); give --upload s3://BUCKET/PREFIX (or `upload` in the config file) with the bucket's credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            needed.len(),
            needed[0].job_id,
            needed[0].local_path,
            needed[0].object_key
        )));
    };
    let done = upload_rows(&storage, ledger, needed, concurrency)?;
    if !quiet && done.put + done.already > 0 {
        eprintln!(
            "uploads: {} uploaded ({} bytes), {} already in the bucket",
            done.put, done.bytes, done.already
        );
    }
    Ok(done)
}

/// The upload pass over these rows (see [`upload_needed`]), with this bucket.
pub fn upload_rows(
    storage: &Storage,
    ledger: &mut Ledger,
    needed: Vec<UploadRow>,
    concurrency: usize,
) -> Result<Uploaded, CliError> {
    let mut done = Uploaded::default();
    let (work, owners) = plan_puts(storage, ledger, needed, &mut done)?;
    let mut failure: Option<String> = None;
    storage.put_all(&work, concurrency, |report| -> Result<bool, CliError> {
        let rows = &owners[report.index];
        let ms = report.elapsed.as_millis() as u64;
        match report.result {
            Ok(None) => {
                for row in rows {
                    ledger.record_upload(row, None, ms, "was already in the bucket as")?;
                }
                done.already += rows.len();
            }
            Ok(Some(status)) => {
                ledger.record_upload(&rows[0], Some(status), ms, "uploaded to")?;
                done.put += 1;
                done.bytes += rows[0].bytes as u64;
                for row in &rows[1..] {
                    ledger.record_upload(row, None, 0, "was uploaded earlier as")?;
                }
                done.already += rows.len() - 1;
            }
            Err(e) => {
                let message = upload_failed(&rows[0].local_path, &e);
                let events = rows
                    .iter()
                    .map(|r| {
                        Event::new(Some(r.job_id), None, "upload_failed").detail(message.clone())
                    })
                    .collect();
                ledger.append(events)?;
                failure.get_or_insert(message);
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    match failure {
        Some(message) => Err(CliError::error(message)),
        None => Ok(done),
    }
}

/// The objects to put, each with the rows that need it (the first one uploads it); rows whose
/// object the ledger already knows are recorded at once.
fn plan_puts(
    storage: &Storage,
    ledger: &mut Ledger,
    needed: Vec<UploadRow>,
    done: &mut Uploaded,
) -> Result<(Vec<PutWork>, Vec<Vec<UploadRow>>), CliError> {
    let mut work: Vec<PutWork> = Vec::new();
    let mut owners: Vec<Vec<UploadRow>> = Vec::new();
    let mut by_object: HashMap<String, usize> = HashMap::new();
    for row in needed {
        if ledger.object_present(&row.object_key)? {
            ledger.record_upload(&row, None, 0, "was uploaded earlier as")?;
            done.already += 1;
            continue;
        }
        let Some((bucket, key)) = storage::parse_locator(&row.object_key) else {
            continue;
        };
        if bucket != storage.destination().bucket {
            return Err(CliError::usage(format!(
                "job {}: {} was recorded for bucket `{bucket}`, but --upload names `{}`; run it with --upload s3://{bucket}/…",
                row.job_id,
                row.local_path,
                storage.destination().bucket
            )));
        }
        if let Some(&i) = by_object.get(&row.object_key) {
            owners[i].push(row);
            continue;
        }
        by_object.insert(row.object_key.clone(), work.len());
        work.push(PutWork {
            key: key.to_string(),
            path: PathBuf::from(&row.resolved_path),
            sha256: row.sha256.clone(),
        });
        owners.push(vec![row]);
    }
    Ok((work, owners))
}

fn upload_failed(path: &str, e: &StorageError) -> String {
    format!(
        "upload of {path} failed: {e}. Nothing was sent for it; once fixed, `codeformer-ledger run` carries on"
    )
}

/// Whether any of these jobs' images is a local file's object.
pub fn any_local(jobs: &[NewJob]) -> bool {
    jobs.iter().any(|j| j.local.is_some())
}

/// The storage for a run, checked before anything is written when local inputs are given.
pub fn storage_for(global: &Global, needed: bool) -> Result<Option<Storage>, CliError> {
    let storage = global.storage()?;
    if needed && storage.is_none() {
        return Err(CliError::usage(
            "local inputs need --upload s3://BUCKET/PREFIX",
        ));
    }
    Ok(storage)
}

/// Deletes objects from the bucket and records each deletion (an `upload_deleted` event of
/// every job that used it). Returns how many were deleted.
pub fn delete_objects(
    storage: &Storage,
    ledger: &mut Ledger,
    objects: Vec<(String, Vec<i64>)>,
    why: &str,
) -> Result<usize, CliError> {
    let mut deleted = 0;
    for (object, jobs) in objects {
        let Some((bucket, key)) = storage::parse_locator(&object) else {
            continue;
        };
        if bucket != storage.destination().bucket {
            continue;
        }
        let status = storage
            .delete(key)
            .map_err(|e| CliError::error(format!("deleting {object}: {e}")))?;
        ledger.record_object_deleted(&object, &jobs, status, why)?;
        deleted += 1;
    }
    Ok(deleted)
}

/// `--delete-uploads`: after a run, the objects of its jobs whose outputs are downloaded and
/// that no other job may still need.
pub fn delete_downloaded(
    global: &Global,
    ledger: &mut Ledger,
    batch: Option<&str>,
) -> Result<usize, CliError> {
    let objects = ledger.removable_objects(batch, true, None)?;
    if objects.is_empty() {
        return Ok(0);
    }
    let Some(storage) = global.storage()? else {
        return Ok(0);
    };
    delete_objects(
        &storage,
        ledger,
        objects,
        "--delete-uploads: its output is downloaded",
    )
}

/// Uploaded objects.
///
/// Examples:
///   codeformer-ledger uploads prune --upload s3://my-photos/in
///   codeformer-ledger uploads prune --older-than 7d --upload s3://my-photos/in
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct UploadsArgs {
    #[command(subcommand)]
    pub action: UploadsAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum UploadsAction {
    /// Delete from the bucket the objects no unfinished job needs (every job using one is
    /// completed, failed, error, rejected, stalled or skipped, and owes no download).
    Prune {
        /// Only objects uploaded longer ago than this, e.g. 7d.
        #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

pub fn run(global: &Global, args: UploadsArgs) -> super::CmdResult {
    let UploadsAction::Prune { older_than } = args.action;
    let Some(storage) = global.storage()? else {
        return Err(CliError::usage(
            "uploads prune needs the bucket: give --upload s3://BUCKET/PREFIX",
        ));
    };
    let mut ledger = global.open_ledger()?;
    let before = older_than.map(|d| {
        let at = codeformer_ledger::clock::now()
            - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        codeformer_ledger::clock::stamp(at)
    });
    let objects = ledger.removable_objects(None, false, before.as_deref())?;
    let n = delete_objects(&storage, &mut ledger, objects, "uploads prune")?;
    println!("{n} object(s) deleted from {}", storage.destination());
    Ok(codeformer_ledger::exit::DONE)
}
