//! The worker process: `codeformer-ledger hook-worker`.
//!
//! It reads requests on stdin and answers on stdout ([`super::protocol`]). Before anything
//! else it moves its protocol output to a private descriptor and points descriptor 1 at
//! stderr, so a trusted hook's `io.write` cannot corrupt the protocol. It removes the API key
//! from its own environment (the host already withholds it), and exits when its parent goes
//! away, even in the middle of a runaway call.

use super::api::{self, ApiContext};
use super::args::Outbox;
use super::convert::{json_to_lua, lua_to_json};
use super::fs::Confined;
use super::protocol::{LoadSpec, Reply, Request, PROTOCOL_VERSION};
use super::sandbox::{self, Budget, InstructionLimitHit};
use super::{FailureKind, HookFailure, HookFn, API_KEY_ENV};
use mlua::chunk::ChunkMode;
use mlua::{Lua, LuaSerdeExt, MultiValue, Value};
use std::any::Any;
use std::io::{self, BufRead, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::rc::Rc;

/// The body of `codeformer-ledger hook-worker`: serves requests until stdin closes.
pub fn worker_main() -> ExitCode {
    std::env::remove_var(API_KEY_ENV);
    let output = match protocol_output() {
        Ok(output) => output,
        Err(e) => {
            eprintln!("hook worker: cannot set up its output: {e}");
            return ExitCode::FAILURE;
        }
    };
    silence_limit_panics();
    exit_when_orphaned();
    let outbox = Rc::new(Outbox::new(output));
    let mut hooks: Option<LoadedHooks> = None;
    let mut input = io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("hook worker: cannot read its input: {e}");
                return ExitCode::FAILURE;
            }
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::Rejected(format!("not a hook request: {e}")),
            Ok(Request::Load(spec)) => match LoadedHooks::load(spec.into_owned(), &outbox) {
                Ok(loaded) => {
                    let defines = loaded.defines();
                    hooks = Some(loaded);
                    Reply::Loaded { defines }
                }
                Err(reply) => reply,
            },
            Ok(Request::Call { file, func, arg }) => match &hooks {
                Some(loaded) => loaded.call(file, func, &arg, &outbox),
                None => Reply::Rejected("a call before the hook files were loaded".into()),
            },
        };
        if outbox.send(&reply).is_err() {
            return ExitCode::FAILURE;
        }
    }
}

/// The hook files of one load, one Lua state each.
struct LoadedHooks {
    files: Vec<LoadedFile>,
    budget: Rc<Budget>,
    memory_limit: usize,
}

struct LoadedFile {
    path: String,
    lua: Lua,
}

impl LoadedHooks {
    fn load(spec: LoadSpec, outbox: &Rc<Outbox>) -> Result<LoadedHooks, Reply> {
        if spec.version != PROTOCOL_VERSION {
            return Err(Reply::Rejected(format!(
                "protocol version {} requested, this worker speaks {PROTOCOL_VERSION}",
                spec.version
            )));
        }
        let budget = Rc::new(Budget::new(spec.instruction_limit));
        let fs = Rc::new(Confined::new(spec.out_dir.clone(), spec.memory_limit));
        let mut files = Vec::with_capacity(spec.files.len());
        for (index, file) in spec.files.into_iter().enumerate() {
            let failed = |message: String| Reply::LoadFailed {
                line: line_of(&message),
                file: index,
                message,
            };
            let lua = sandbox::new_state(spec.trusted, spec.memory_limit, &budget)
                .map_err(|e| failed(format!("{}: cannot set up Lua: {e}", file.path)))?;
            let ctx = Rc::new(ApiContext {
                file: file.path.as_str().into(),
                outbox: Rc::clone(outbox),
                fs: Rc::clone(&fs),
            });
            api::register(&lua, &ctx)
                .map_err(|e| failed(format!("{}: cannot set up the host API: {e}", file.path)))?;
            budget.reset();
            let chunk = lua
                .load(file.source.as_str())
                .set_name(format!("@{}", file.path))
                .set_mode(ChunkMode::Text);
            let run = catch_unwind(AssertUnwindSafe(|| chunk.exec()));
            let who = format!("the top level of {}", file.path);
            if let Err(failure) = settle(run, &budget, spec.memory_limit, &who) {
                // Lua's own message already starts with the file and line.
                let prefix = format!("{who} failed: ");
                let message = match failure.message.strip_prefix(&prefix) {
                    Some(lua_message) => lua_message.to_string(),
                    None => failure.message,
                };
                return Err(failed(message));
            }
            files.push(LoadedFile {
                path: file.path,
                lua,
            });
        }
        Ok(LoadedHooks {
            files,
            budget,
            memory_limit: spec.memory_limit,
        })
    }

    fn defines(&self) -> Vec<Vec<HookFn>> {
        self.files
            .iter()
            .map(|file| {
                let globals = file.lua.globals();
                HookFn::ALL
                    .into_iter()
                    .filter(|func| matches!(globals.get(func.name()), Ok(Value::Function(_))))
                    .collect()
            })
            .collect()
    }

    fn call(&self, file: usize, func: HookFn, arg: &serde_json::Value, outbox: &Outbox) -> Reply {
        let Some(loaded) = self.files.get(file) else {
            return Reply::Failed(error(format!("there is no hook file #{file}")));
        };
        let who = format!("{func} in {}", loaded.path);
        let function = match loaded.lua.globals().get::<Value>(func.name()) {
            Ok(Value::Nil) => return Reply::Returned(serde_json::Value::Null),
            Ok(Value::Function(function)) => function,
            Ok(other) => {
                let message = format!("{who}: `{func}` is a {}, not a function", other.type_name());
                return Reply::Failed(error(message));
            }
            Err(e) => return Reply::Failed(error(format!("{who}: {e}"))),
        };
        self.budget.reset();
        outbox.begin_call();
        let run = catch_unwind(AssertUnwindSafe(|| {
            let arg = json_to_lua(&loaded.lua, arg)?;
            function.call::<MultiValue>(arg)
        }));
        outbox.end_call();
        let reply = match settle(run, &self.budget, self.memory_limit, &who) {
            Ok(values) => returned(&loaded.lua, values, &who),
            Err(failure) => Reply::Failed(failure),
        };
        if matches!(reply, Reply::Failed(_)) {
            // Whatever the failed call left behind should not count against the next one.
            // Finalizers run here, so the budget's stop signal may unwind out of it too.
            let _ = catch_unwind(AssertUnwindSafe(|| loaded.lua.gc_collect()));
        }
        reply
    }
}

/// The values a hook returned, as JSON: nothing is `null`, one is itself, several an array.
fn returned(lua: &Lua, values: MultiValue, who: &str) -> Reply {
    let array_mt = lua.array_metatable();
    let mut converted = Vec::with_capacity(values.len());
    for value in values.iter() {
        match lua_to_json(value, &array_mt) {
            Ok(json) => converted.push(json),
            Err(e) => {
                return Reply::Failed(error(format!(
                    "{who} returned a value that cannot be recorded as JSON: {e}"
                )))
            }
        }
    }
    Reply::Returned(match converted.len() {
        0 => serde_json::Value::Null,
        1 => converted.pop().unwrap_or_default(),
        _ => serde_json::Value::Array(converted),
    })
}

/// Turns how a Lua run ended into its value or a [`HookFailure`] that names `who` ran.
fn settle<T>(
    run: Result<mlua::Result<T>, Box<dyn Any + Send>>,
    budget: &Budget,
    memory_limit: usize,
    who: &str,
) -> Result<T, HookFailure> {
    if budget.exceeded() {
        // Also when the script caught the error (inside a coroutine) and carried on.
        return Err(HookFailure {
            kind: FailureKind::InstructionLimit,
            message: format!(
                "{who} was stopped: it ran more than {} Lua instructions (the instruction limit)",
                budget.limit()
            ),
            traceback: budget.take_traceback(),
        });
    }
    match run {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            let (message, traceback) = split_error(&e);
            if is_memory_error(&e) {
                return Err(HookFailure {
                    kind: FailureKind::MemoryLimit,
                    message: format!(
                        "{who} was stopped: it needed more than {} of memory (the memory limit)",
                        mebibytes(memory_limit)
                    ),
                    traceback,
                });
            }
            Err(HookFailure {
                kind: FailureKind::Error,
                message: format!("{who} failed: {message}"),
                traceback,
            })
        }
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(error(format!(
                "{who} failed: internal error in the hook runtime: {text}"
            )))
        }
    }
}

fn error(message: String) -> HookFailure {
    HookFailure {
        kind: FailureKind::Error,
        message,
        traceback: None,
    }
}

/// The error's own message, and the Lua traceback if it carries one.
fn split_error(e: &mlua::Error) -> (String, Option<String>) {
    const TRACEBACK: &str = "\nstack traceback:\n";
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            let (message, inner) = split_error(cause);
            (message, inner.or_else(|| Some(traceback.clone())))
        }
        mlua::Error::RuntimeError(text) => match text.split_once(TRACEBACK) {
            Some((message, rest)) => (
                message.to_string(),
                Some(format!("stack traceback:\n{rest}")),
            ),
            None => (text.clone(), None),
        },
        mlua::Error::SyntaxError { message, .. } => (message.clone(), None),
        mlua::Error::MemoryError(message) => (message.clone(), None),
        mlua::Error::WithContext { context, cause } => {
            let (message, traceback) = split_error(cause);
            (format!("{context}: {message}"), traceback)
        }
        other => (other.to_string(), None),
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            is_memory_error(cause)
        }
        _ => false,
    }
}

fn mebibytes(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The line number in a Lua message that starts `path:LINE:` (Lua may shorten a long path).
fn line_of(message: &str) -> Option<u32> {
    message.split(':').skip(1).find_map(|part| {
        (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    })
}

/// The instruction limit unwinds by panicking; the host reports it, nobody needs the
/// panic message on the terminal.
fn silence_limit_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<InstructionLimitHit>() {
            default(info);
        }
    }));
}

#[cfg(unix)]
fn protocol_output() -> io::Result<Box<dyn Write>> {
    use std::os::fd::AsFd;
    let private = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 only replaces descriptor 1, which from here on nothing in this process uses
    // for the protocol; stderr (2) stays open for the life of the process.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Box::new(std::fs::File::from(private)))
}

#[cfg(not(unix))]
fn protocol_output() -> io::Result<Box<dyn Write>> {
    Ok(Box::new(io::stdout()))
}

/// A worker whose host died would otherwise finish a runaway call first.
#[cfg(unix)]
fn exit_when_orphaned() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    });
}

#[cfg(not(unix))]
fn exit_when_orphaned() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_come_from_lua_messages() {
        assert_eq!(line_of("hooks/a.lua:12: boom"), Some(12));
        assert_eq!(line_of("...ng/path/a.lua:3: x: 4:"), Some(3));
        assert_eq!(line_of("cannot set up Lua"), None);
    }
}
