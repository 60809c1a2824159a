//! What the host functions share: the worker's protocol output ([`Outbox`], through which
//! effects reach the host as they happen) and the argument helpers that turn a bad argument
//! into a Lua error naming the function, the argument and the caller's line. A leaf: it knows
//! nothing of the tables `api` and `fs` register.

use super::protocol::Reply;
use super::HookEffect;
use mlua::{Lua, Value};
use std::cell::{Cell, RefCell};
use std::io::{self, Write};

/// More than this many effects in one call is a runaway loop, not a log.
const MAX_EFFECTS_PER_CALL: usize = 10_000;

/// The worker's protocol output, shared by the request loop and the host functions.
pub(crate) struct Outbox {
    out: RefCell<io::BufWriter<Box<dyn Write>>>,
    in_call: Cell<bool>,
    effects: Cell<usize>,
}

impl Outbox {
    pub(crate) fn new(out: Box<dyn Write>) -> Outbox {
        Outbox {
            out: RefCell::new(io::BufWriter::new(out)),
            in_call: Cell::new(false),
            effects: Cell::new(0),
        }
    }

    pub(crate) fn send(&self, reply: &Reply) -> io::Result<()> {
        let mut out = self.out.borrow_mut();
        serde_json::to_writer(&mut *out, reply)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    pub(crate) fn begin_call(&self) {
        self.in_call.set(true);
        self.effects.set(0);
    }

    pub(crate) fn end_call(&self) {
        self.in_call.set(false);
    }

    /// Reports a file operation already done (`fs.rename`, `fs.copy`), so that the ledger can
    /// keep its output paths true. Outside a call (top-level code) there is nothing to
    /// record it against; it is not counted against the effect limit, because refusing it
    /// after the fact would only leave the ledger wrong.
    pub(crate) fn file_moved(&self, effect: HookEffect) {
        if self.in_call.get() && self.send(&Reply::Effect(effect)).is_err() {
            std::process::exit(1);
        }
    }

    pub(crate) fn effect(
        &self,
        lua: &Lua,
        file: &str,
        func: &str,
        effect: HookEffect,
    ) -> mlua::Result<()> {
        if !self.in_call.get() {
            // Top-level code of a file runs at load time, outside any job.
            return match effect {
                HookEffect::Log { level, message } => {
                    eprintln!("hook {}: {}: {message}", file, level.as_str());
                    Ok(())
                }
                _ => Err(error_at_caller(
                    lua,
                    &format!("{func} can only be used while a hook function runs, not at the top level of a file"),
                )),
            };
        }
        let count = self.effects.get() + 1;
        if count > MAX_EFFECTS_PER_CALL {
            return Err(error_at_caller(
                lua,
                &format!("{func}: more than {MAX_EFFECTS_PER_CALL} log lines, notes and tags in one call"),
            ));
        }
        self.effects.set(count);
        if self.send(&Reply::Effect(effect)).is_err() {
            // The host is gone; nobody is left to record anything.
            std::process::exit(1);
        }
        Ok(())
    }
}

/// A string argument (numbers are accepted as Lua accepts them for strings).
pub(crate) fn string_arg(lua: &Lua, func: &str, name: &str, value: &Value) -> mlua::Result<String> {
    match value {
        Value::String(s) => s.to_str().map(|s| s.to_string()).map_err(|_| {
            error_at_caller(lua, &format!("{func}: argument '{name}' is not UTF-8 text"))
        }),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(error_at_caller(
            lua,
            &format!(
                "{func}: argument '{name}' must be a string, got {}",
                other.type_name()
            ),
        )),
    }
}

/// A Lua error that starts with the calling script's `file:line:`, as `error()` would.
pub(crate) fn error_at_caller(lua: &Lua, message: &str) -> mlua::Error {
    let place = lua
        .inspect_stack(1, |frame| {
            let line = frame.current_line()?;
            let source = frame.source().short_src?.into_owned();
            Some(format!("{source}:{line}: "))
        })
        .flatten()
        .unwrap_or_default();
    mlua::Error::runtime(format!("{place}{message}"))
}
