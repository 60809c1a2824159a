//! The HTTP workers: threads that take a task, talk to the network, and send back what
//! happened. They never touch the ledger; the engine's thread records every result.

use crate::digest::hex;
use crate::gateway::{DownloadError, Exchange, Gateway, PollOutcome, SubmitOutcome, Ticket};
use crate::ledger::OutputRow;
use crate::params::JobParams;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Work for one job. A gateway request carries the budget's token taken for it.
#[derive(Debug)]
pub enum Task {
    Probe {
        url: String,
    },
    Submit {
        params: JobParams,
        ticket: Ticket,
    },
    Poll {
        request_id: String,
        ticket: Ticket,
    },
    /// `name` is the file name without extension, from the output name pattern.
    Download {
        urls: Vec<String>,
        dir: PathBuf,
        name: String,
    },
}

/// What a task found.
#[derive(Debug)]
pub enum TaskResult {
    Probe(Result<crate::gateway::probe::Probe, crate::gateway::probe::ProbeError>),
    Submit(Exchange<SubmitOutcome>),
    Poll(Exchange<PollOutcome>),
    Download(Result<Vec<OutputRow>, DownloadError>),
}

#[derive(Debug)]
pub struct Done {
    pub job_id: i64,
    pub attempt: i64,
    pub result: TaskResult,
}

pub struct Workers {
    queue: Arc<Queue>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn start(count: usize, gateway: &Gateway, done: Sender<Done>) -> Workers {
        let queue = Arc::new(Queue::default());
        let threads = (0..count.max(1))
            .map(|i| {
                let queue = Arc::clone(&queue);
                let done = done.clone();
                let gateway = gateway.clone();
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || work(&queue, done, gateway))
                    .expect("spawning a worker thread")
            })
            .collect();
        Workers { queue, threads }
    }

    pub fn send(&self, job_id: i64, attempt: i64, task: Task) {
        self.queue.push((job_id, attempt, task));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.queue.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The tasks waiting for a worker: a queue under a mutex, and a condition variable that wakes
/// one idle worker per task. (A channel's receiver shared behind a mutex woke two threads per
/// task: the worker waiting in `recv`, then, as it let the lock go, the next one waiting for
/// the lock, only to wait in `recv` in its turn.)
#[derive(Default)]
struct Queue {
    state: Mutex<Queued>,
    ready: Condvar,
}

#[derive(Default)]
struct Queued {
    tasks: VecDeque<(i64, i64, Task)>,
    /// No more tasks come: workers finish the queued ones, then stop.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        // Nothing panics while holding the lock; a poisoned one is as good as any.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, task: (i64, i64, Task)) {
        self.lock().tasks.push_back(task);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next task, waiting for one; `None` once closed and empty.
    fn pop(&self) -> Option<(i64, i64, Task)> {
        let mut queued = self.lock();
        loop {
            if let Some(task) = queued.tasks.pop_front() {
                return Some(task);
            }
            if queued.closed {
                return None;
            }
            queued = self.ready.wait(queued).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn work(queue: &Queue, done: Sender<Done>, gateway: Gateway) {
    while let Some((job_id, attempt, task)) = queue.pop() {
        let result = perform(&gateway, task, attempt);
        if done
            .send(Done {
                job_id,
                attempt,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Runs one task on the calling thread.
pub fn perform(gateway: &Gateway, task: Task, attempt: i64) -> TaskResult {
    match task {
        Task::Probe { url } => {
            TaskResult::Probe(crate::gateway::probe::probe_url(gateway.file_agent(), &url))
        }
        Task::Submit { params, ticket } => TaskResult::Submit(gateway.submit_with(ticket, &params)),
        Task::Poll { request_id, ticket } => {
            TaskResult::Poll(gateway.status_with(ticket, &request_id))
        }
        Task::Download { urls, dir, name } => {
            TaskResult::Download(download_all(gateway, &urls, &dir, &name, attempt))
        }
    }
}

fn download_all(
    gateway: &Gateway,
    urls: &[String],
    dir: &Path,
    base: &str,
    attempt: i64,
) -> Result<Vec<OutputRow>, DownloadError> {
    std::fs::create_dir_all(dir).map_err(|e| DownloadError::from(e).in_folder(dir))?;
    let mut rows = Vec::with_capacity(urls.len());
    for (idx, url) in urls.iter().enumerate() {
        let name = if idx > 0 {
            format!("{base}-{idx}")
        } else {
            base.to_string()
        };
        rows.push(
            download_one(gateway, url, dir, &name, idx as i64, attempt)
                .map_err(|e| e.in_folder(dir))?,
        );
    }
    // Each file's data was synced before its rename; one sync of the folder keeps the names.
    if gateway.config().fsync_outputs {
        crate::durable::sync_dir(dir).map_err(|e| DownloadError::from(e).in_folder(dir))?;
    }
    Ok(rows)
}

/// The bytes of a download kept in memory besides the file: enough for the header of most
/// images, so the size is read without reading the file back.
const HEAD_BYTES: usize = 4096;

struct HashingWriter<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
    head: Vec<u8>,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        let keep = (HEAD_BYTES - self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Downloads to a temporary file in `dir` and renames it into place, never over a different
/// file: a crash leaves either nothing or a whole file. The file is opened once: written,
/// read back only when its header lies past [`HEAD_BYTES`], and synced (with
/// `fsync_outputs`) before the rename; the caller syncs the folder.
fn download_one(
    gateway: &Gateway,
    url: &str,
    dir: &Path,
    name: &str,
    idx: i64,
    attempt: i64,
) -> Result<OutputRow, DownloadError> {
    let mut temp = tempfile::Builder::new()
        .prefix(&format!("{PARTIAL_PREFIX}{}-", std::process::id()))
        .tempfile_in(dir)?;
    let (bytes, sha, head) = {
        let mut writer = HashingWriter {
            file: temp.as_file_mut(),
            hasher: Sha256::new(),
            head: Vec::with_capacity(HEAD_BYTES),
        };
        let bytes = gateway.download(url, &mut writer)?;
        writer.flush()?;
        (bytes, hex(&writer.hasher.finalize()), writer.head)
    };
    let size = match imagesize::blob_size(&head) {
        Ok(size) => size,
        Err(_) => {
            let file = temp.as_file_mut();
            std::io::Seek::seek(file, std::io::SeekFrom::Start(0))?;
            imagesize::reader_size(std::io::BufReader::new(file))
                .map_err(|e| DownloadError::NotAnImage(format!("its header cannot be read: {e}")))?
        }
    };
    let ext = match imagesize::image_type(&head) {
        Ok(imagesize::ImageType::Jpeg) => "jpg",
        Ok(imagesize::ImageType::Webp) => "webp",
        _ => "png",
    };
    let fsync = gateway.config().fsync_outputs;
    if fsync {
        temp.as_file().sync_all()?;
    }
    let path = place(temp, dir, name, ext, &sha, fsync)?;
    Ok(OutputRow {
        attempt,
        idx,
        url: url.to_string(),
        path: path.to_string_lossy().into_owned(),
        bytes: bytes as i64,
        sha256: sha,
        width: Some(size.width as u32),
        height: Some(size.height as u32),
    })
}

/// Renames a finished download to `name.ext`, or `name (2).ext` and so on when a different
/// file holds the name. A file with the same content is taken as this download's own (a run
/// that stopped between the rename and the ledger record).
fn place(
    temp: tempfile::NamedTempFile,
    dir: &Path,
    name: &str,
    ext: &str,
    sha: &str,
    fsync: bool,
) -> Result<PathBuf, DownloadError> {
    let mut temp = temp;
    for n in 1..1000 {
        let file = if n == 1 {
            format!("{name}.{ext}")
        } else {
            format!("{name} ({n}).{ext}")
        };
        let target = dir.join(file);
        match temp.persist_noclobber(&target) {
            Ok(_) => return Ok(target),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                temp = e.file;
                if file_sha(&target).ok().as_deref() == Some(sha) {
                    // That file's run may have stopped before syncing it.
                    if fsync {
                        std::fs::File::open(&target)?.sync_all()?;
                    }
                    return Ok(target);
                }
            }
            Err(e) => return Err(DownloadError::Io(e.error)),
        }
    }
    Err(DownloadError::Io(std::io::Error::other(format!(
        "no free file name for {name}.{ext} in {}",
        dir.display()
    ))))
}

/// Temporary downloads are named `.partial-<pid>-<random>`: the pid tells the leftovers of a
/// killed process from the downloads of a live one.
const PARTIAL_PREFIX: &str = ".partial-";

/// Removes the temporary downloads in `dir` whose process is gone (killed mid-download), and
/// returns their names. A crash cannot run the temporary file's own clean-up.
pub fn sweep_partials(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PARTIAL_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return true;
    }
    // Signal 0 only checks: ESRCH means no such process; EPERM means someone else's.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

fn file_sha(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The default output name pattern.
pub const DEFAULT_NAME_PATTERN: &str = "{stem}-{job}";

/// The fields an output name pattern may use.
pub const NAME_FIELDS: [&str; 6] = ["key", "job", "stem", "upscale", "date", "attempt"];

/// Checks a name pattern: only known `{fields}`, and something to name.
pub fn check_name_pattern(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("name pattern `{pattern}`: an unclosed `{{`"))?;
        let field = &rest[open + 1..open + close];
        if !NAME_FIELDS.contains(&field) {
            return Err(format!(
                "name pattern `{pattern}`: unknown field `{{{field}}}` (use {})",
                NAME_FIELDS.map(|f| format!("{{{f}}}")).join(", ")
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if pattern.trim().is_empty() {
        return Err("the name pattern is empty".into());
    }
    Ok(())
}

/// An output's file name (without extension) from the pattern; every character outside
/// `[A-Za-z0-9._-]` becomes `_`, so a name never leaves the output folder. Attempts after the
/// first get `-aN` unless the pattern names `{attempt}`.
pub fn render_name(pattern: &str, job: &crate::ledger::JobRow, date: &str) -> String {
    let mut name = pattern.to_string();
    for (field, value) in [
        ("{key}", job.key.clone()),
        ("{job}", job.id.to_string()),
        ("{stem}", stem_of(&job.image_url)),
        ("{upscale}", job.upscale.to_string()),
        ("{date}", date.to_string()),
        ("{attempt}", job.attempt.to_string()),
    ] {
        name = name.replace(field, &value);
    }
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    if safe.trim_matches(['.', '_']).is_empty() {
        safe = format!("output-{}", job.id);
    }
    if job.attempt > 1 && !pattern.contains("{attempt}") {
        safe.push_str(&format!("-a{}", job.attempt));
    }
    safe
}

/// A file-name stem from an image URL: its last path segment without extension, reduced to
/// safe characters.
pub fn stem_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let base = last.rsplit_once('.').map(|(b, _)| b).unwrap_or(last);
    let safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if safe.trim_matches('_').is_empty() {
        "output".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use crate::sandbox::{Sandbox, SandboxConfig};

    /// A JPEG whose frame header lies behind an 8 KiB APP1 segment, past [`HEAD_BYTES`].
    fn jpeg_with_long_app1(width: u32, height: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let mut jpeg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let payload = vec![b'x'; 8 * 1024];
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn a_download_whose_header_lies_past_the_kept_head_reads_it_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("static");
        std::fs::create_dir_all(&files).unwrap();
        let jpeg = jpeg_with_long_app1(33, 21);
        assert!(imagesize::blob_size(&jpeg[..HEAD_BYTES]).is_err());
        std::fs::write(files.join("long.jpg"), &jpeg).unwrap();
        let sandbox = Sandbox::start(SandboxConfig {
            static_dir: Some(files),
            ..SandboxConfig::default()
        })
        .unwrap();
        let gateway = Gateway::new(GatewayConfig::new(&sandbox.base_url(), None));
        let out = dir.path().join("out");
        let urls = [sandbox.static_url("long.jpg")];
        let rows = download_all(&gateway, &urls, &out, "photo", 1).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].width, rows[0].height), (Some(33), Some(21)));
        assert_eq!(rows[0].bytes, jpeg.len() as i64);
        assert_eq!(rows[0].path, out.join("photo.jpg").to_string_lossy());
        assert_eq!(std::fs::read(out.join("photo.jpg")).unwrap(), jpeg);
        // Again into the same name: the identical file is taken as this download's own.
        let again = download_all(&gateway, &urls, &out, "photo", 1).unwrap();
        assert_eq!(again[0].path, rows[0].path);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }

    #[test]
    fn stems_are_safe() {
        assert_eq!(stem_of("http://x.test/a/portrait.jpg?x=1"), "portrait");
        assert_eq!(stem_of("http://x.test/../../etc/passwd"), "passwd");
        assert_eq!(stem_of("http://x.test/"), "output");
        assert_eq!(stem_of("http://x.test/a%2F..%2Fb.png"), "a_2F___2Fb");
    }
}
