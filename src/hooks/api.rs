//! The host API a hook sees: one global table per area, each filled by a small function.
//!
//! `log` and `print` go to the program's log; `ledger.note`/`ledger.tag` are recorded on the
//! job; both reach the host as effects, streamed the moment they happen. `json` converts with
//! [`super::convert`]; `fs` lives in [`super::fs`]. Bad arguments raise a Lua error that names
//! the function, the argument and the type it got, at the caller's line.

use super::args::{error_at_caller, string_arg, Outbox};
use super::convert::{json_to_lua, lua_to_json};
use super::fs::Confined;
use super::{HookEffect, LogLevel};
use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};
use std::rc::Rc;

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
        ctx.outbox.effect(lua, &ctx.file, "print", effect)
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
            ctx.outbox.effect(lua, &ctx.file, &name, effect)
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
            .effect(lua, &note_ctx.file, "ledger.note", HookEffect::Note(text))
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
        tag_ctx.outbox.effect(
            lua,
            &tag_ctx.file,
            "ledger.tag",
            HookEffect::Tag(key, value),
        )
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
