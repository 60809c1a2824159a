//! The host API a hook sees: one global table per area, each filled by a small function.
//!
//! `log` and `print` go to the program's log; `ledger.note`/`ledger.tag` are recorded on the
//! job; both reach the host as effects, streamed the moment they happen. `json` converts with
//! [`super::convert`]; `fs` lives in [`super::fs`]. Bad arguments raise a Lua error that names
//! the function, the argument and the type it got, at the caller's line.

use super::convert::{json_to_lua, lua_to_json};
use super::fs::Confined;
use super::protocol::Reply;
use super::{HookEffect, LogLevel};
use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};
use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::rc::Rc;

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

    fn effect(
        &self,
        lua: &Lua,
        ctx: &ApiContext,
        func: &str,
        effect: HookEffect,
    ) -> mlua::Result<()> {
        if !self.in_call.get() {
            // Top-level code of a file runs at load time, outside any job.
            return match effect {
                HookEffect::Log { level, message } => {
                    eprintln!("hook {}: {}: {message}", ctx.file, level.as_str());
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

/// What the host functions of one file's state share.
pub(crate) struct ApiContext {
    /// The hook file, as the user named it.
    pub file: Rc<str>,
    pub outbox: Rc<Outbox>,
    pub fs: Rc<Confined>,
}

/// Installs `print`, `log`, `ledger`, `json` and `fs` as globals.
pub(crate) fn register(lua: &Lua, ctx: &Rc<ApiContext>) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("print", print_function(lua, ctx)?)?;
    globals.raw_set("log", log_table(lua, ctx)?)?;
    globals.raw_set("ledger", ledger_table(lua, ctx)?)?;
    globals.raw_set("json", json_table(lua)?)?;
    globals.raw_set("fs", super::fs::table(lua, &ctx.fs, &ctx.outbox)?)?;
    Ok(())
}

fn print_function(lua: &Lua, ctx: &Rc<ApiContext>) -> mlua::Result<mlua::Function> {
    let ctx = Rc::clone(ctx);
    lua.create_function(move |lua, args: MultiValue| {
        let parts = args.iter().map(display).collect::<mlua::Result<Vec<_>>>()?;
        let effect = HookEffect::Log {
            level: LogLevel::Info,
            message: parts.join("\t"),
        };
        ctx.outbox.effect(lua, &ctx, "print", effect)
    })
}

fn log_table(lua: &Lua, ctx: &Rc<ApiContext>) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    for level in [LogLevel::Info, LogLevel::Warn, LogLevel::Error] {
        let ctx = Rc::clone(ctx);
        let name = format!("log.{}", level.as_str());
        let function = lua.create_function(move |lua, args: MultiValue| {
            let parts = args.iter().map(display).collect::<mlua::Result<Vec<_>>>()?;
            let effect = HookEffect::Log {
                level,
                message: parts.join(" "),
            };
            ctx.outbox.effect(lua, &ctx, &name, effect)
        })?;
        table.raw_set(level.as_str(), function)?;
    }
    Ok(table)
}

fn ledger_table(lua: &Lua, ctx: &Rc<ApiContext>) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let note_ctx = Rc::clone(ctx);
    let note = lua.create_function(move |lua, text: Value| {
        let text = string_arg(lua, "ledger.note", "text", &text)?;
        note_ctx
            .outbox
            .effect(lua, &note_ctx, "ledger.note", HookEffect::Note(text))
    })?;
    table.raw_set("note", note)?;
    let tag_ctx = Rc::clone(ctx);
    let tag = lua.create_function(move |lua, (key, value): (Value, Value)| {
        let key = string_arg(lua, "ledger.tag", "key", &key)?;
        if key.trim().is_empty() {
            return Err(error_at_caller(lua, "ledger.tag: argument 'key' is empty"));
        }
        let value = match value {
            Value::Boolean(b) => b.to_string(),
            other => string_arg(lua, "ledger.tag", "value", &other)?,
        };
        tag_ctx
            .outbox
            .effect(lua, &tag_ctx, "ledger.tag", HookEffect::Tag(key, value))
    })?;
    table.raw_set("tag", tag)?;
    Ok(table)
}

fn json_table(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let encode = lua.create_function(|lua, (value, options): (Value, Option<Table>)| {
        let pretty = match &options {
            Some(options) => options.get::<Option<bool>>("pretty")?.unwrap_or(false),
            None => false,
        };
        let json = lua_to_json(&value, &lua.array_metatable())
            .map_err(|e| error_at_caller(lua, &format!("json.encode: {e}")))?;
        let text = if pretty {
            serde_json::to_string_pretty(&json)
        } else {
            serde_json::to_string(&json)
        };
        text.map_err(|e| error_at_caller(lua, &format!("json.encode: {e}")))
    })?;
    table.raw_set("encode", encode)?;
    let decode = lua.create_function(|lua, text: Value| {
        let bytes = match &text {
            Value::String(s) => s.as_bytes().to_vec(),
            other => {
                return Err(error_at_caller(
                    lua,
                    &format!(
                        "json.decode: argument 'text' must be a string, got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| error_at_caller(lua, &format!("json.decode: invalid JSON: {e}")))?;
        json_to_lua(lua, &json)
    })?;
    table.raw_set("decode", decode)?;
    table.raw_set("null", Value::NULL)?;
    Ok(table)
}

/// `tostring` of any value, as `print` shows it; invalid UTF-8 is replaced, not refused.
fn display(value: &Value) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => other.to_string(),
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
