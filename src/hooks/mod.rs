//! User Lua hooks: the runtime that runs `on_submit`, `on_complete`, `on_failed` and
//! `on_batch_done` from the files given with `--hook`.
//!
//! Lua never runs in the engine's process. [`HookHost`] starts the program's own binary as
//! `codeformer-ledger hook-worker` ([`worker_main`]) and talks to it over a line-delimited JSON
//! protocol on its stdin and stdout. The worker loads every hook file once, into one Lua state
//! per file, and stays alive across calls. Whatever a hook does (loops forever, blocks inside a C
//! function, exhausts memory, crashes the interpreter), the host stays up: it kills the worker
//! when a call outlives its wall-clock limit and starts a fresh one on the next call.
//!
//! Invariants kept here:
//! - the worker's environment never holds `PIXAZO_API_KEY`, trusted or not;
//! - by default a hook sees only the safe standard libraries and the host API (`log`, `print`,
//!   `ledger`, `json`, `fs`), and every `fs.*` path stays inside the output directory, trusted
//!   or not;
//! - every call ends in a [`HookOutcome`], never a panic: failures are values, and the effects a
//!   hook produced before it failed are kept, in order;
//! - this module records nothing itself: the engine turns outcomes into ledger events.
//!
//! # What a hook file sees
//!
//! Functions a file may define (each optional): `on_submit(job)` returns `nil` (send as is), a
//! table of changes (`{fidelity = 0.8, upscale = 4, background_enhance = false,
//! face_upsample = true}`, checked like command-line input, see [`apply_submit_changes`]; the
//! API's name `codeformer_fidelity` works as well as `fidelity`), or
//! `false, "reason"` (skip the job); `on_complete(job)`, `on_failed(job)` and
//! `on_batch_done(summary)` may return anything JSON can hold, which is recorded. JSON `null`
//! reaches Lua as `nil` inside objects and as `json.null` inside arrays.
//!
//! | host function | what it does | example |
//! |---|---|---|
//! | `log.info/warn/error(...)` | a line in the program's log (arguments joined by spaces) | `log.warn("no face in", job.key)` |
//! | `print(...)` | `log.info`, arguments joined by tabs | `print(job.id, job.state)` |
//! | `ledger.note(text)` | a note recorded on the job | `ledger.note("sent to client")` |
//! | `ledger.tag(key, value)` | a tag recorded on the job | `ledger.tag("reviewed", "yes")` |
//! | `json.encode(v [, {pretty = true}])` | JSON text of a value | `json.encode(job.params)` |
//! | `json.decode(text)` | the value of JSON text | `json.decode(fs.read("meta.json"))` |
//! | `json.null` | JSON's `null` where `nil` cannot go (arrays) | `{1, json.null, 3}` |
//! | `fs.read(path)` | a file's bytes | `fs.read("b1/12.json")` |
//! | `fs.write(path, text)` | writes a file (temporary file, then rename) | `fs.write("done.txt", "ok")` |
//! | `fs.exists(path)` | whether it exists | `fs.exists("summary.json")` |
//! | `fs.mkdir(path)` | creates a directory and its parents | `fs.mkdir("acme/2026")` |
//! | `fs.copy(from, to)` | copies a file | `fs.copy("b1/12.png", "web/12.png")` |
//! | `fs.rename(from, to)` | moves a file or directory; a moved output is recorded, so the ledger's path follows it | `fs.rename("b1/12.png", "acme/12.png")` |
//! | `fs.relative(path)` | an output path (absolute or relative) as `fs.*` wants it | `fs.relative(job.outputs[1].path)` |
//!
//! `fs.*` paths are relative to the output directory; absolute paths, `..` that climbs out and
//! symbolic links that lead out are refused ("fs.write: path '../x' leaves the output
//! directory"). Sandboxed hooks also get `string`, `table`, `math`, `utf8`, `coroutine`, the base
//! library (`load` of text only; no `dofile`, `loadfile`, `require`) and `os.time`, `os.clock`,
//! `os.date`. A call may run [`HookConfig::instruction_limit`] instructions, use
//! [`HookConfig::memory_limit`] bytes and last [`HookConfig::timeout`]; at most 10 000 log lines,
//! notes and tags. Top-level code runs once when the worker loads the file; it may log (to
//! stderr) but not write notes or tags. A worker restarted after a timeout or a crash runs the
//! top-level code again, so hooks should keep no state across calls.
//!
//! ```no_run
//! use codeformer_ledger::hooks::{HookConfig, HookFn, HookHost};
//!
//! let config = HookConfig::new(vec!["hooks/sidecar.lua".into()], "out");
//! let mut host = HookHost::start(config)?;
//! let job = serde_json::json!({"id": 1, "outputs": []});
//! for file in host.defines(HookFn::OnComplete) {
//!     let outcome = host.call(file, HookFn::OnComplete, &job);
//!     println!("{:?} {:?}", outcome.result, outcome.effects);
//! }
//! # Ok::<(), codeformer_ledger::hooks::HookError>(())
//! ```

mod api;
mod args;
mod convert;
mod fs;
mod host;
mod protocol;
mod sandbox;
mod submit;
mod worker;

pub use host::HookHost;
pub use submit::{apply_submit_changes, SubmitDecision};
pub use worker::worker_main;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The subcommand that runs [`worker_main`]; hidden from `--help`.
pub const WORKER_SUBCOMMAND: &str = "hook-worker";

/// The environment variable that holds the API key; removed from the worker's environment.
pub const API_KEY_ENV: &str = "PIXAZO_API_KEY";

/// A function a hook file may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFn {
    /// Before a job is sent; may change its parameters or skip it.
    OnSubmit,
    /// After a job's outputs are downloaded.
    OnComplete,
    /// After a job ends FAILED, ERROR, rejected or stalled.
    OnFailed,
    /// Once, when a batch has no unfinished job left.
    OnBatchDone,
}

impl HookFn {
    pub const ALL: [HookFn; 4] = [
        HookFn::OnSubmit,
        HookFn::OnComplete,
        HookFn::OnFailed,
        HookFn::OnBatchDone,
    ];

    /// The Lua global's name: `on_submit`, `on_complete`, `on_failed`, `on_batch_done`.
    pub fn name(self) -> &'static str {
        match self {
            HookFn::OnSubmit => "on_submit",
            HookFn::OnComplete => "on_complete",
            HookFn::OnFailed => "on_failed",
            HookFn::OnBatchDone => "on_batch_done",
        }
    }

    /// The inverse of [`HookFn::name`].
    pub fn from_name(name: &str) -> Option<HookFn> {
        HookFn::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for HookFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How hooks are run. Built by the CLI from `--hook`, `--out-dir` and `--trusted-hooks`.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// The hook files, in the order given; indices into this list name a file everywhere.
    pub files: Vec<PathBuf>,
    /// The only directory `fs.*` may touch.
    pub out_dir: PathBuf,
    /// `--trusted-hooks`: the full standard library (`io`, `os`, `debug`, `require`). `fs.*`
    /// stays confined, and the limits below still apply.
    pub trusted: bool,
    /// Lua VM instructions per call (top-level code of a file counts as one call).
    pub instruction_limit: u64,
    /// Bytes of memory per Lua state (one state per file).
    pub memory_limit: usize,
    /// Wall-clock time per call, enforced by killing the worker, so it holds inside C functions.
    pub timeout: Duration,
    /// The binary started as `<worker_exe> hook-worker`.
    pub worker_exe: PathBuf,
}

impl HookConfig {
    pub const DEFAULT_INSTRUCTION_LIMIT: u64 = 100_000_000;
    pub const DEFAULT_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The defaults: sandboxed, default limits, this program as the worker.
    ///
    /// Inside `cargo test` the current executable is the test harness, which cannot serve as the
    /// worker: tests set `worker_exe` to `env!("CARGO_BIN_EXE_codeformer-ledger")`.
    pub fn new(files: Vec<PathBuf>, out_dir: impl Into<PathBuf>) -> HookConfig {
        HookConfig {
            files,
            out_dir: out_dir.into(),
            trusted: false,
            instruction_limit: Self::DEFAULT_INSTRUCTION_LIMIT,
            memory_limit: Self::DEFAULT_MEMORY_LIMIT,
            timeout: Self::DEFAULT_TIMEOUT,
            worker_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_PKG_NAME"))),
        }
    }
}

/// What one hook call did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub file: PathBuf,
    pub func: HookFn,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// The value the function returned as JSON: `null` if it returned nothing, the value if it
    /// returned one, an array of all of them if it returned several (`return false, "why"`
    /// gives `[false, "why"]`).
    pub result: Result<serde_json::Value, HookFailure>,
    /// What the hook asked the ledger and the log to record, in order, also when it failed.
    pub effects: Vec<HookEffect>,
}

impl HookOutcome {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Why a hook call did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct HookFailure {
    pub kind: FailureKind,
    /// One line naming the file and the function, then what went wrong.
    pub message: String,
    /// The Lua stack traceback where the error was raised or the limit was hit.
    pub traceback: Option<String>,
}

/// The kinds of [`HookFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The hook raised an error (or returned something that is not JSON).
    Error,
    /// The call outlived [`HookConfig::timeout`]; the worker was killed.
    Timeout,
    /// The call ran more than [`HookConfig::instruction_limit`] instructions.
    InstructionLimit,
    /// The Lua state grew past [`HookConfig::memory_limit`].
    MemoryLimit,
    /// The worker process died or could not be (re)started.
    WorkerCrashed,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Timeout => "timeout",
            FailureKind::InstructionLimit => "instruction_limit",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::WorkerCrashed => "worker_crashed",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a hook asked to be recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookEffect {
    /// `log.info/warn/error(msg)` or `print(...)` (level info).
    Log { level: LogLevel, message: String },
    /// `ledger.note(text)`.
    Note(String),
    /// `ledger.tag(key, value)`.
    Tag(String, String),
    /// `fs.rename(from, to)` succeeded: the full paths, so that the ledger can follow a
    /// downloaded output (or a folder of them) to its new place.
    Moved { from: String, to: String },
    /// `fs.copy(from, to)` succeeded: the full paths.
    Copied { from: String, to: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Why [`HookHost::start`] could not get the hooks ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// A hook file could not be read.
    #[error("cannot read hook file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A hook file does not compile, or its top-level code failed. `message` starts with the
    /// file and line as Lua reports them (`hooks/a.lua:3: ...`).
    #[error("cannot load hook file {}: {message}", path.display())]
    Load {
        path: PathBuf,
        line: Option<u32>,
        message: String,
    },
    /// The worker process could not be started.
    #[error("cannot start the hook worker `{} {WORKER_SUBCOMMAND}`: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    /// The worker died, hung or answered something that is not the hook protocol while loading.
    #[error("hook worker: {0}")]
    Worker(String),
}
