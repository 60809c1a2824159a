//! The line protocol between [`super::HookHost`] and the worker: one JSON object per line.
//!
//! ```text
//! host → worker   {"load":{"version":1,"files":[{"path":"a.lua","source":"..."}],"out_dir":"out",
//!                          "trusted":false,"instruction_limit":100000000,"memory_limit":67108864}}
//! worker → host   {"loaded":{"defines":[["on_complete"]]}}
//!               | {"load_failed":{"file":0,"line":3,"message":"a.lua:3: ..."}}
//! host → worker   {"call":{"file":0,"func":"on_complete","arg":{...job...}}}
//! worker → host   {"effect":{"note":"..."}}            zero or more, as they happen
//!                 {"returned":VALUE} | {"failed":{"kind":"error","message":"...","traceback":"..."}}
//! worker → host   {"rejected":"..."}                   a request it cannot understand
//! ```
//!
//! Effects are written (and flushed) the moment a hook produces them, so the host keeps them
//! even when it has to kill the worker in the middle of the call. A call with no effects is one
//! line each way.

use super::{HookEffect, HookFailure, HookFn};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;

/// Bumped whenever a message changes shape; the worker refuses a load of another version.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request<'a> {
    Load(Cow<'a, LoadSpec>),
    Call {
        file: usize,
        func: HookFn,
        arg: Cow<'a, serde_json::Value>,
    },
}

/// Everything a worker needs to set up the hook files; kept by the host to restart a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadSpec {
    pub version: u32,
    pub files: Vec<SourceFile>,
    pub out_dir: PathBuf,
    pub trusted: bool,
    pub instruction_limit: u64,
    pub memory_limit: usize,
}

/// A hook file's text, read once by the host so that a restarted worker runs the same code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SourceFile {
    /// As the user wrote it; Lua messages name the file by this.
    pub path: String,
    pub source: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    Loaded {
        defines: Vec<Vec<HookFn>>,
    },
    LoadFailed {
        file: usize,
        line: Option<u32>,
        message: String,
    },
    Effect(HookEffect),
    Returned(serde_json::Value),
    Failed(HookFailure),
    Rejected(String),
}
