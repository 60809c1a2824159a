//! Building one hook file's Lua state: which libraries it sees and which limits bind it.
//!
//! Sandboxed (the default): `string`, `table`, `math`, `utf8`, `coroutine`, the base library
//! without `dofile`/`loadfile` and with `load` restricted to text chunks, and `os` reduced to
//! `time`, `clock` and `date`. `io`, `debug`, `package`, `require` and the rest of `os` are
//! replaced by stubs that raise an error naming what was refused, rather than leaving `nil`
//! behind to fail obscurely. Trusted: the whole standard library, C modules included.
//!
//! Both kinds get the same limits: a memory cap on the state's allocator and an instruction
//! budget counted by a global count hook (global so that coroutines created by the script are
//! counted too). Running out of budget panics with [`InstructionLimitHit`]: mlua lets a Rust
//! panic pass through the script's `pcall`, so a hook cannot swallow its own stop signal.

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The panic payload that unwinds a call out of Lua when the instruction budget is spent.
pub(crate) struct InstructionLimitHit;

/// The instruction budget of the current call, shared by every state of the worker (calls never
/// overlap).
pub(crate) struct Budget {
    limit: u64,
    step: u32,
    used: Cell<u64>,
    exceeded: Cell<bool>,
    traceback: RefCell<Option<String>>,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        // Coarse enough to cost nothing measurable, fine enough for small test limits.
        let step = (limit / 100).clamp(1, 10_000) as u32;
        Budget {
            limit,
            step,
            used: Cell::new(0),
            exceeded: Cell::new(false),
            traceback: RefCell::new(None),
        }
    }

    pub(crate) fn reset(&self) {
        self.used.set(0);
        self.exceeded.set(false);
        self.traceback.replace(None);
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the last call ran out, even if the script caught the error somewhere.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }

    /// Where the script was when it ran out.
    pub(crate) fn take_traceback(&self) -> Option<String> {
        self.traceback.take()
    }

    fn charge(&self, lua: &Lua) {
        let used = self.used.get() + u64::from(self.step);
        self.used.set(used);
        if used > self.limit {
            if !self.exceeded.replace(true) {
                let traceback = lua.traceback(None, 0).ok().map(|s| s.to_string_lossy());
                self.traceback.replace(traceback);
            }
            std::panic::panic_any(InstructionLimitHit);
        }
    }
}

const TRUSTED_HINT: &str = "run with --trusted-hooks to allow it";

/// A fresh Lua state for one hook file, with its limits installed.
pub(crate) fn new_state(
    trusted: bool,
    memory_limit: usize,
    budget: &Rc<Budget>,
) -> mlua::Result<Lua> {
    // pcall must not catch the panic that enforces the instruction budget.
    let options = LuaOptions::new().catch_rust_panics(false);
    let lua = if trusted {
        // SAFETY: the user asked for the full standard library, C modules included, with
        // --trusted-hooks; the state lives in the disposable worker process.
        unsafe { Lua::unsafe_new_with(StdLib::ALL, options) }
    } else {
        let safe = StdLib::COROUTINE
            | StdLib::TABLE
            | StdLib::STRING
            | StdLib::UTF8
            | StdLib::MATH
            | StdLib::OS;
        Lua::new_with(safe, options)?
    };
    lua.set_memory_limit(memory_limit)?;
    let counter = Rc::clone(budget);
    let triggers = HookTriggers::new().every_nth_instruction(budget.step);
    lua.set_global_hook(triggers, move |lua, _| {
        counter.charge(lua);
        Ok(VmState::Continue)
    })?;
    if !trusted {
        restrict(&lua)?;
    }
    Ok(lua)
}

fn restrict(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    for name in ["dofile", "loadfile"] {
        let message = format!("{name} is not available to sandboxed hooks ({TRUSTED_HINT})");
        globals.raw_set(name, refusing_function(lua, message)?)?;
    }
    let message = format!(
        "require is not available to sandboxed hooks: they cannot load modules ({TRUSTED_HINT})"
    );
    globals.raw_set("require", refusing_function(lua, message)?)?;
    for (name, hint) in [
        ("io", "; use fs.read and fs.write"),
        ("debug", ""),
        ("package", ""),
    ] {
        let stub = lua.create_table()?;
        stub.set_metatable(Some(refusing_metatable(lua, name, hint)?))?;
        globals.raw_set(name, stub)?;
    }

    let os: Table = globals.raw_get("os")?;
    let reduced = lua.create_table()?;
    for name in ["time", "clock", "date"] {
        reduced.raw_set(name, os.raw_get::<Value>(name)?)?;
    }
    reduced.set_metatable(Some(refusing_metatable(lua, "os", "")?))?;
    globals.raw_set("os", reduced)?;

    let raw_load: Function = globals.raw_get("load")?;
    let text_only: Function = lua
        .load(TEXT_ONLY_LOAD)
        .set_name("=sandbox")
        .call(raw_load)?;
    globals.raw_set("load", text_only)?;
    Ok(())
}

/// `load` that passes its arguments through but always compiles in mode "t", so precompiled
/// (binary) chunks, which can break the VM's memory safety, are refused.
const TEXT_ONLY_LOAD: &str = r##"
local raw_load, select, error, tostring = ..., select, error, tostring
return function(chunk, chunkname, mode, ...)
  if mode ~= nil and mode ~= "t" then
    error("load: sandboxed hooks may load text chunks only (mode 't'), not mode '"
      .. tostring(mode) .. "'", 2)
  end
  if select("#", ...) > 0 then
    return raw_load(chunk, chunkname, "t", ...)
  end
  return raw_load(chunk, chunkname, "t")
end
"##;

fn refusing_function(lua: &Lua, message: String) -> mlua::Result<Function> {
    lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
        Err(super::args::error_at_caller(lua, &message))
    })
}

fn refusing_metatable(lua: &Lua, library: &'static str, hint: &'static str) -> mlua::Result<Table> {
    let meta = lua.create_table()?;
    let index = lua.create_function(move |lua, (_, key): (Value, Value)| -> mlua::Result<()> {
        let key = key.to_string().unwrap_or_else(|_| "?".into());
        Err(super::args::error_at_caller(
            lua,
            &format!("{library}.{key} is not available to sandboxed hooks{hint} ({TRUSTED_HINT})"),
        ))
    })?;
    meta.raw_set("__index", index)?;
    meta.raw_set("__metatable", false)?;
    Ok(meta)
}
