//! The engine's side: [`HookHost`] owns the worker process and turns every call into a
//! [`HookOutcome`].
//!
//! A call writes one request line and reads reply lines until the result, waiting on the pipe
//! with `poll` so the wall-clock limit holds whatever the worker is doing. When the limit passes,
//! or the worker dies or talks nonsense, the worker is killed and forgotten; the next call starts
//! a new one from the sources read at [`HookHost::start`], so a restarted worker runs the same
//! code even if the files changed on disk since.

use super::protocol::{LoadSpec, Reply, Request, SourceFile, PROTOCOL_VERSION};
use super::{
    FailureKind, HookConfig, HookEffect, HookError, HookFailure, HookFn, HookOutcome, API_KEY_ENV,
    WORKER_SUBCOMMAND,
};
use crate::clock;
use serde_json::Value;
use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs hook functions in a worker process; see the [module docs](super).
pub struct HookHost {
    config: HookConfig,
    spec: LoadSpec,
    /// For each file, the functions it defines.
    defines: Vec<Vec<HookFn>>,
    /// `None` after a timeout or a crash, until the next call.
    worker: Option<Worker>,
}

impl std::fmt::Debug for HookHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookHost")
            .field("files", &self.config.files)
            .field("defines", &self.defines)
            .field("worker", &self.worker.as_ref().map(|w| w.child.id()))
            .finish()
    }
}

impl HookHost {
    /// Reads every hook file, starts the worker and loads them all. A file that does not
    /// compile, or whose top-level code fails, is reported here with its line.
    pub fn start(config: HookConfig) -> Result<HookHost, HookError> {
        let spec = load_spec(&config)?;
        let deadline = Instant::now() + config.timeout;
        let (worker, defines) =
            Worker::start(&config.worker_exe, &spec, deadline).map_err(|e| match e {
                StartError::Spawn(source) => HookError::Spawn {
                    exe: config.worker_exe.clone(),
                    source,
                },
                StartError::Load {
                    file,
                    line,
                    message,
                } => HookError::Load {
                    path: config.files.get(file).cloned().unwrap_or_default(),
                    line,
                    message,
                },
                StartError::Worker(message) => HookError::Worker(message),
            })?;
        Ok(HookHost {
            config,
            spec,
            defines,
            worker: Some(worker),
        })
    }

    /// The indices of the files that define `func`, in the order the files were given.
    pub fn defines(&self, func: HookFn) -> Vec<usize> {
        self.defines
            .iter()
            .enumerate()
            .filter(|(_, funcs)| funcs.contains(&func))
            .map(|(index, _)| index)
            .collect()
    }

    /// The configuration the host was started with.
    pub fn config(&self) -> &HookConfig {
        &self.config
    }

    /// Calls `func` of file `file` with `arg` (the job, or the batch summary). Never panics:
    /// every way a call can go wrong is a [`HookFailure`] in the outcome.
    ///
    /// For `on_submit`, a skip without a reason gets one: `return false` comes back as
    /// `[false, "skipped by on_submit in FILE"]`, ready for [`super::apply_submit_changes`].
    pub fn call(&mut self, file: usize, func: HookFn, arg: &Value) -> HookOutcome {
        let started_at = clock::now();
        let path = self.config.files.get(file).cloned().unwrap_or_default();
        let mut effects = Vec::new();
        let result = if file < self.config.files.len() {
            self.run(file, func, arg, &mut effects)
        } else {
            Err(HookFailure {
                kind: FailureKind::Error,
                message: format!(
                    "{func}: there is no hook file #{file} (there are {})",
                    self.config.files.len()
                ),
                traceback: None,
            })
        };
        let result = match (func, result) {
            (HookFn::OnSubmit, Ok(value)) => Ok(name_the_skip(value, &path)),
            (_, result) => result,
        };
        HookOutcome {
            file: path,
            func,
            started_at,
            ended_at: clock::now(),
            result,
            effects,
        }
    }

    fn run(
        &mut self,
        file: usize,
        func: HookFn,
        arg: &Value,
        effects: &mut Vec<HookEffect>,
    ) -> Result<Value, HookFailure> {
        let deadline = Instant::now() + self.config.timeout;
        let who = format!("{func} in {}", self.spec.files[file].path);
        if self.worker.is_none() {
            let restarted =
                Worker::start(&self.config.worker_exe, &self.spec, deadline).map_err(|e| {
                    HookFailure {
                        kind: FailureKind::WorkerCrashed,
                        message: format!("{who}: could not restart the hook worker: {e}"),
                        traceback: None,
                    }
                })?;
            self.worker = Some(restarted.0);
        }
        let worker = self.worker.as_mut().expect("started above");
        let request = Request::Call {
            file,
            func,
            arg: Cow::Borrowed(arg),
        };
        match worker.exchange(&request, deadline, effects) {
            Ok(value) => Ok(value),
            Err(Stop::Failed(failure)) => Err(failure),
            Err(Stop::Kill(kind)) => {
                let status = self.worker.take().map(Worker::kill).unwrap_or_default();
                let message = match &kind {
                    Broken::Timeout => format!(
                        "{who} was stopped: it ran longer than {} (the time limit)",
                        seconds(self.config.timeout)
                    ),
                    Broken::Died => format!("{who}: the hook worker died ({status})"),
                    Broken::Garbled(line) => format!(
                        "{who}: the hook worker answered something that is not the hook protocol: {line}"
                    ),
                };
                let kind = match kind {
                    Broken::Timeout => FailureKind::Timeout,
                    _ => FailureKind::WorkerCrashed,
                };
                Err(HookFailure {
                    kind,
                    message,
                    traceback: None,
                })
            }
        }
    }
}

fn load_spec(config: &HookConfig) -> Result<LoadSpec, HookError> {
    let mut files = Vec::with_capacity(config.files.len());
    for path in &config.files {
        let source = std::fs::read_to_string(path).map_err(|source| HookError::Read {
            path: path.clone(),
            source,
        })?;
        files.push(SourceFile {
            path: path.display().to_string(),
            source,
        });
    }
    Ok(LoadSpec {
        version: PROTOCOL_VERSION,
        files,
        out_dir: std::path::absolute(&config.out_dir).unwrap_or_else(|_| config.out_dir.clone()),
        trusted: config.trusted,
        instruction_limit: config.instruction_limit,
        memory_limit: config.memory_limit,
    })
}

/// `return false` from `on_submit` carries the reason the ledger will show.
fn name_the_skip(value: Value, file: &Path) -> Value {
    let reason = || Value::String(format!("skipped by on_submit in {}", file.display()));
    match value {
        Value::Bool(false) => Value::Array(vec![Value::Bool(false), reason()]),
        Value::Array(mut values) if values.first() == Some(&Value::Bool(false)) => {
            let has_reason =
                matches!(values.get(1), Some(Value::String(s)) if !s.trim().is_empty());
            if !has_reason {
                values.truncate(1);
                values.push(reason());
            }
            Value::Array(values)
        }
        other => other,
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// A running worker process and its pipes.
struct Worker {
    child: Child,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    line: Vec<u8>,
}

enum StartError {
    Spawn(io::Error),
    Load {
        file: usize,
        line: Option<u32>,
        message: String,
    },
    Worker(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Spawn(e) => write!(f, "{e}"),
            StartError::Load { message, .. } | StartError::Worker(message) => f.write_str(message),
        }
    }
}

/// Why a call ended without a reply from a healthy worker.
enum Stop {
    /// The hook failed; the worker is fine.
    Failed(HookFailure),
    /// The worker must go.
    Kill(Broken),
}

enum Broken {
    Timeout,
    Died,
    Garbled(String),
}

impl Worker {
    fn start(
        exe: &Path,
        spec: &LoadSpec,
        deadline: Instant,
    ) -> Result<(Worker, Vec<Vec<HookFn>>), StartError> {
        let mut worker = Worker::spawn(exe).map_err(StartError::Spawn)?;
        let request = Request::Load(Cow::Borrowed(spec));
        let exited = |worker: Worker| {
            let status = worker.kill();
            StartError::Worker(format!(
                "the worker `{} {WORKER_SUBCOMMAND}` exited while loading the hooks ({status}); \
                 is it this program's binary?",
                exe.display()
            ))
        };
        if worker.send(&request).is_err() {
            return Err(exited(worker));
        }
        loop {
            match worker.receive(deadline) {
                Ok(Reply::Loaded { defines }) if defines.len() == spec.files.len() => {
                    return Ok((worker, defines))
                }
                Ok(Reply::LoadFailed {
                    file,
                    line,
                    message,
                }) => {
                    return Err(StartError::Load {
                        file,
                        line,
                        message,
                    })
                }
                // Top-level code logs to the worker's stderr; nothing is recorded at load time.
                Ok(Reply::Effect(_)) => {}
                Ok(Reply::Rejected(message)) => return Err(StartError::Worker(message)),
                Ok(other) => {
                    return Err(StartError::Worker(format!(
                        "unexpected answer while loading: {other:?}"
                    )))
                }
                Err(Broken::Timeout) => {
                    return Err(StartError::Worker(
                        "loading the hook files took longer than the time limit".into(),
                    ))
                }
                Err(Broken::Died) => return Err(exited(worker)),
                Err(Broken::Garbled(line)) => {
                    return Err(StartError::Worker(format!(
                    "the worker `{} {WORKER_SUBCOMMAND}` does not speak the hook protocol: {line}",
                    exe.display()
                )))
                }
            }
        }
    }

    fn spawn(exe: &Path) -> io::Result<Worker> {
        let mut child = Command::new(exe)
            .arg(WORKER_SUBCOMMAND)
            .env_remove(API_KEY_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let input = child.stdin.take().expect("piped stdin");
        let output = child.stdout.take().expect("piped stdout");
        set_nonblocking(&output)?;
        Ok(Worker {
            child,
            input: BufWriter::new(input),
            output: BufReader::with_capacity(64 * 1024, output),
            line: Vec::with_capacity(4096),
        })
    }

    /// One call: the request out, effects and the result back.
    fn exchange(
        &mut self,
        request: &Request,
        deadline: Instant,
        effects: &mut Vec<HookEffect>,
    ) -> Result<Value, Stop> {
        self.send(request).map_err(|_| Stop::Kill(Broken::Died))?;
        loop {
            match self.receive(deadline).map_err(Stop::Kill)? {
                Reply::Effect(effect) => effects.push(effect),
                Reply::Returned(value) => return Ok(value),
                Reply::Failed(failure) => return Err(Stop::Failed(failure)),
                other => return Err(Stop::Kill(Broken::Garbled(format!("{other:?}")))),
            }
        }
    }

    fn send(&mut self, request: &Request) -> io::Result<()> {
        serde_json::to_writer(&mut self.input, request)?;
        self.input.write_all(b"\n")?;
        self.input.flush()
    }

    fn receive(&mut self, deadline: Instant) -> Result<Reply, Broken> {
        self.read_line(deadline)?;
        serde_json::from_slice(&self.line).map_err(|_| {
            let text = String::from_utf8_lossy(&self.line);
            let shown: String = text.chars().take(200).collect();
            Broken::Garbled(shown)
        })
    }

    /// The next line into `self.line`, without its newline.
    ///
    /// The pipe is non-blocking. For the first [`SPIN`] the host keeps trying to read (yielding
    /// the CPU in between) before it sleeps in `poll`: a trivial hook answers within that window,
    /// and waking a sleeping process costs more than the whole call on small virtual machines.
    fn read_line(&mut self, deadline: Instant) -> Result<(), Broken> {
        self.line.clear();
        let spin_until = Instant::now() + SPIN;
        loop {
            let buffered = self.output.buffer();
            if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                self.line.extend_from_slice(&buffered[..end]);
                self.output.consume(end + 1);
                return Ok(());
            }
            let taken = buffered.len();
            self.line.extend_from_slice(buffered);
            self.output.consume(taken);
            match self.output.fill_buf() {
                Ok([]) => return Err(Broken::Died),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Broken::Died),
            }
            if Instant::now() < spin_until {
                std::thread::yield_now();
                continue;
            }
            match wait_readable(self.output.get_ref(), deadline) {
                Ok(true) => {}
                Ok(false) => return Err(Broken::Timeout),
                Err(_) => return Err(Broken::Died),
            }
        }
    }

    /// Kills the worker (if it still runs) and says how it ended.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("status unknown: {e}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a call's reply is awaited by polling the pipe before sleeping on it.
const SPIN: Duration = Duration::from_micros(200);

#[cfg(unix)]
fn set_nonblocking(pipe: &ChildStdout) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns; only the O_NONBLOCK flag changes.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_nonblocking(_pipe: &ChildStdout) -> io::Result<()> {
    Ok(())
}

/// Waits until the pipe has data (or was closed) or the deadline passes.
#[cfg(unix)]
fn wait_readable(pipe: &ChildStdout, deadline: Instant) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let millis = remaining.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, alive for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready >= 0 {
            return Ok(ready > 0);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Without `poll`, reads block: the time limit is not enforced on this platform.
#[cfg(not(unix))]
fn wait_readable(_pipe: &ChildStdout, _deadline: Instant) -> io::Result<bool> {
    Ok(true)
}

// The engine may run hooks from any thread.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<HookHost>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    #[test]
    fn a_skip_without_reason_names_the_file() {
        let file = PathBuf::from("hooks/tune.lua");
        assert_eq!(
            name_the_skip(json!(false), &file),
            json!([false, "skipped by on_submit in hooks/tune.lua"])
        );
        assert_eq!(
            name_the_skip(json!([false, "too large"]), &file),
            json!([false, "too large"])
        );
        assert_eq!(
            name_the_skip(json!([false, 3]), &file),
            json!([false, "skipped by on_submit in hooks/tune.lua"])
        );
        assert_eq!(
            name_the_skip(json!({"upscale": 4}), &file),
            json!({"upscale": 4})
        );
    }
}
