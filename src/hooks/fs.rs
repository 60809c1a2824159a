//! `fs.*`: file operations confined to the output directory, in trusted mode too.
//!
//! A hook names files by paths relative to the output directory. A path is refused when it is
//! absolute, when its `..` steps climb above the directory, or when the deepest part of it that
//! exists resolves (through symbolic links) to somewhere outside. Files are written to a
//! temporary file beside the target and renamed into place, so a hook that is killed halfway
//! never leaves half a file.
//!
//! Not covered: a link created by another process between the check and the operation. Hooks
//! themselves cannot create links.

use super::args::{error_at_caller, string_arg, Outbox};
use super::HookEffect;
use mlua::{Lua, Table, Value};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// The output directory, as the host gave it.
pub(crate) struct Confined {
    out_dir: PathBuf,
    /// `fs.read` refuses files larger than this (the Lua state could not hold them anyway).
    max_read: u64,
}

impl Confined {
    pub(crate) fn new(out_dir: PathBuf, max_read: usize) -> Confined {
        Confined {
            out_dir,
            max_read: max_read as u64,
        }
    }

    fn root(&self, func: &str) -> Result<PathBuf, String> {
        self.out_dir.canonicalize().map_err(|e| {
            format!(
                "{func}: the output directory '{}' cannot be used: {e}",
                self.out_dir.display()
            )
        })
    }

    /// The real path for a hook's `path`, or why it is refused.
    fn resolve(&self, func: &str, path: &str) -> Result<PathBuf, String> {
        let relative = lexical(func, path)?;
        let root = self.root(func)?;
        let full = root.join(&relative);
        // Links can only lead out through the part of the path that exists.
        let mut existing = full.as_path();
        while existing.symlink_metadata().is_err() && existing != root {
            match existing.parent() {
                Some(parent) => existing = parent,
                None => break,
            }
        }
        let real = existing.canonicalize().map_err(|_| {
            format!("{func}: path '{path}' goes through a symbolic link that points nowhere")
        })?;
        if !real.starts_with(&root) {
            return Err(format!(
                "{func}: path '{path}' leaves the output directory (through a symbolic link)"
            ));
        }
        Ok(full)
    }

    /// Like [`Confined::resolve`], for operations that must not touch the directory itself.
    /// The `from` and `to` arguments of a two-path function, as text and as confined paths.
    fn resolve_pair(
        &self,
        lua: &Lua,
        func: &str,
        from: &Value,
        to: &Value,
    ) -> mlua::Result<(String, String, PathBuf, PathBuf)> {
        let from = string_arg(lua, func, "from", from)?;
        let to = string_arg(lua, func, "to", to)?;
        let source = self
            .resolve_entry(func, &from)
            .map_err(|m| error_at_caller(lua, &m))?;
        let target = self
            .resolve_entry(func, &to)
            .map_err(|m| error_at_caller(lua, &m))?;
        Ok((from, to, source, target))
    }

    fn resolve_entry(&self, func: &str, path: &str) -> Result<PathBuf, String> {
        if lexical(func, path)?.as_os_str().is_empty() {
            return Err(format!(
                "{func}: path '{path}' is the output directory itself"
            ));
        }
        self.resolve(func, path)
    }

    /// `path` relative to the output directory: relative paths are taken as they are, absolute
    /// ones must lie inside it.
    fn relative(&self, path: &str) -> Result<String, String> {
        const FUNC: &str = "fs.relative";
        let given = Path::new(path);
        if !given.is_absolute() {
            return Ok(lexical(FUNC, path)?.to_string_lossy().into_owned());
        }
        let root = self.root(FUNC)?;
        let mut bases = vec![root.clone()];
        bases.extend(std::path::absolute(&self.out_dir).ok());
        let real = given.canonicalize().ok();
        let rest = bases
            .iter()
            .find_map(|base| given.strip_prefix(base).ok())
            .or_else(|| real.as_deref()?.strip_prefix(&root).ok())
            .ok_or_else(|| format!("{FUNC}: path '{path}' is not inside the output directory"))?;
        if rest.as_os_str().is_empty() {
            return Ok(".".into());
        }
        Ok(lexical(FUNC, &rest.to_string_lossy())?
            .to_string_lossy()
            .into_owned())
    }
}

/// The path's steps with `.` dropped and `..` applied, refusing anything that climbs out.
fn lexical(func: &str, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!("{func}: the path is empty"));
    }
    if path.contains('\0') {
        return Err(format!("{func}: path '{path}' contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("{func}: path '{path}' leaves the output directory"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{func}: path '{path}' is absolute; paths are relative to the output directory"
                ))
            }
        }
    }
    Ok(out)
}

fn io_failure(func: &str, what: &str, e: io::Error) -> String {
    format!("{func}: cannot {what}: {e}")
}

/// Writes `bytes` to `target` through a temporary file in the same directory.
fn write_atomically(
    target: &Path,
    bytes: &mut dyn io::Read,
    mode: Option<std::fs::Permissions>,
) -> io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "its directory does not exist (create it with fs.mkdir)",
        ));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hook-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut temp = builder.tempfile_in(dir)?;
    io::copy(bytes, &mut temp)?;
    temp.flush()?;
    if let Some(mode) = mode {
        temp.as_file().set_permissions(mode)?;
    }
    temp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

/// The `fs` table. Renames and copies are reported to `outbox` once done.
pub(crate) fn table(lua: &Lua, fs: &Rc<Confined>, outbox: &Rc<Outbox>) -> mlua::Result<Table> {
    let table = lua.create_table()?;

    let confined = Rc::clone(fs);
    let write = lua.create_function(move |lua, (path, data): (Value, Value)| {
        const FUNC: &str = "fs.write";
        let path = string_arg(lua, FUNC, "path", &path)?;
        let bytes = match &data {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Integer(_) | Value::Number(_) => {
                string_arg(lua, FUNC, "text", &data)?.into_bytes()
            }
            other => {
                let message = format!(
                    "{FUNC}: argument 'text' must be a string, got {}",
                    other.type_name()
                );
                return Err(error_at_caller(lua, &message));
            }
        };
        let target = confined
            .resolve_entry(FUNC, &path)
            .map_err(|m| error_at_caller(lua, &m))?;
        write_atomically(&target, &mut bytes.as_slice(), None)
            .map_err(|e| error_at_caller(lua, &io_failure(FUNC, &format!("write '{path}'"), e)))
    })?;
    table.raw_set("write", write)?;

    let confined = Rc::clone(fs);
    let read = lua.create_function(move |lua, path: Value| {
        const FUNC: &str = "fs.read";
        let path = string_arg(lua, FUNC, "path", &path)?;
        let source = confined
            .resolve(FUNC, &path)
            .map_err(|m| error_at_caller(lua, &m))?;
        let fail = |e| error_at_caller(lua, &io_failure(FUNC, &format!("read '{path}'"), e));
        let size = std::fs::metadata(&source).map_err(fail)?.len();
        if size > confined.max_read {
            let message =
                format!("{FUNC}: '{path}' is {size} bytes, more than the hook's memory limit");
            return Err(error_at_caller(lua, &message));
        }
        let bytes = std::fs::read(&source).map_err(fail)?;
        lua.create_string(bytes)
    })?;
    table.raw_set("read", read)?;

    let confined = Rc::clone(fs);
    let exists = lua.create_function(move |lua, path: Value| {
        let path = string_arg(lua, "fs.exists", "path", &path)?;
        let full = confined
            .resolve("fs.exists", &path)
            .map_err(|m| error_at_caller(lua, &m))?;
        Ok(full.exists())
    })?;
    table.raw_set("exists", exists)?;

    let confined = Rc::clone(fs);
    let mkdir = lua.create_function(move |lua, path: Value| {
        const FUNC: &str = "fs.mkdir";
        let path = string_arg(lua, FUNC, "path", &path)?;
        let full = confined
            .resolve(FUNC, &path)
            .map_err(|m| error_at_caller(lua, &m))?;
        std::fs::create_dir_all(&full)
            .map_err(|e| error_at_caller(lua, &io_failure(FUNC, &format!("create '{path}'"), e)))
    })?;
    table.raw_set("mkdir", mkdir)?;

    let confined = Rc::clone(fs);
    let copy_outbox = Rc::clone(outbox);
    let copy = lua.create_function(move |lua, (from, to): (Value, Value)| {
        const FUNC: &str = "fs.copy";
        let (from, to, source, target) = confined.resolve_pair(lua, FUNC, &from, &to)?;
        let what = format!("copy '{from}' to '{to}'");
        let fail = |e| error_at_caller(lua, &io_failure(FUNC, &what, e));
        let mut file = std::fs::File::open(&source).map_err(fail)?;
        let metadata = file.metadata().map_err(fail)?;
        if !metadata.is_file() {
            return Err(error_at_caller(
                lua,
                &format!("{FUNC}: '{from}' is not a file"),
            ));
        }
        if target.is_dir() {
            return Err(error_at_caller(
                lua,
                &format!("{FUNC}: '{to}' is a directory"),
            ));
        }
        write_atomically(&target, &mut file, Some(metadata.permissions())).map_err(fail)?;
        copy_outbox.file_moved(HookEffect::Copied {
            from: source.to_string_lossy().into_owned(),
            to: target.to_string_lossy().into_owned(),
        });
        Ok(())
    })?;
    table.raw_set("copy", copy)?;

    let confined = Rc::clone(fs);
    let rename_outbox = Rc::clone(outbox);
    let rename = lua.create_function(move |lua, (from, to): (Value, Value)| {
        const FUNC: &str = "fs.rename";
        let (from, to, source, target) = confined.resolve_pair(lua, FUNC, &from, &to)?;
        std::fs::rename(&source, &target).map_err(|e| {
            error_at_caller(
                lua,
                &io_failure(FUNC, &format!("rename '{from}' to '{to}'"), e),
            )
        })?;
        rename_outbox.file_moved(HookEffect::Moved {
            from: source.to_string_lossy().into_owned(),
            to: target.to_string_lossy().into_owned(),
        });
        Ok(())
    })?;
    table.raw_set("rename", rename)?;

    let confined = Rc::clone(fs);
    let relative = lua.create_function(move |lua, path: Value| {
        let path = string_arg(lua, "fs.relative", "path", &path)?;
        confined
            .relative(&path)
            .map_err(|m| error_at_caller(lua, &m))
    })?;
    table.raw_set("relative", relative)?;

    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_stay_inside() {
        assert_eq!(lexical("f", "a/./b/../c").unwrap(), PathBuf::from("a/c"));
        assert_eq!(
            lexical("fs.write", "../x").unwrap_err(),
            "fs.write: path '../x' leaves the output directory"
        );
        assert!(lexical("f", "a/../../x").is_err());
        assert!(lexical("f", "/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(lexical("f", "").is_err());
    }
}
