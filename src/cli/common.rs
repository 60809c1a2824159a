//! What several commands share, kept in one leaf module so that no command imports another
//! for it: the API parameter flags (`submit`, `batch`) and their parsers, the checks of an
//! output folder and of hook files, starting the hook worker, and the exit code and message of
//! a run that stopped early.

use super::CliError;
use codeformer_ledger::engine::{self, StopReason};
use codeformer_ledger::params::{self, JobParams, WebhookMode};
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API parameters shared by `submit` and `batch` (defaults for every manifest row).
#[derive(clap::Args, Debug, Clone)]
pub struct ParamArgs {
    /// CodeFormer fidelity, 0..1: lower gives better-looking faces, higher stays closer to the input.
    #[arg(long, value_name = "F", value_parser = fidelity, default_value = "0.5")]
    pub fidelity: Decimal,
    /// Enlargement factor: 2 doubles width and height (cost grows with its square).
    #[arg(long, value_name = "N", value_parser = upscale, default_value = "2")]
    pub upscale: u32,
    /// Do not enhance the background (Real-ESRGAN).
    #[arg(long)]
    pub no_background_enhance: bool,
    /// Do not upsample restored faces.
    #[arg(long)]
    pub no_face_upsample: bool,
    /// Body field `webhook`: a URL the gateway notifies when the job completes.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Header X-Webhook-URL: an https endpoint that receives callbacks.
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Header X-Webhook-Mode: one callback at the end (terminal) or one per status poll (sync).
    #[arg(long, value_name = "MODE", value_parser = webhook_mode)]
    pub webhook_mode: Option<WebhookMode>,
    /// Body field `webhook_events_filter`: the event types the `webhook` URL is told of,
    /// comma-separated (e.g. start,output,logs,completed).
    #[arg(long, value_name = "EVENTS", value_parser = webhook_events)]
    pub webhook_events: Option<String>,
    /// Tag the job(s) KEY=VALUE, for reports by client or project (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = tag)]
    pub tags: Vec<(String, String)>,
}

impl ParamArgs {
    /// The tags given, or the config file's when none are.
    pub fn tags_or(&self, config: &super::config::Config) -> Vec<(String, String)> {
        if self.tags.is_empty() {
            config
                .file
                .tags
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect()
        } else {
            self.tags.clone()
        }
    }

    /// The parameters of a job on `image`, checked against the gateway at `base_url`.
    pub fn params(&self, image: &str, base_url: &str) -> Result<JobParams, CliError> {
        let params = JobParams {
            image: image.to_string(),
            fidelity: self.fidelity,
            upscale: self.upscale,
            background_enhance: !self.no_background_enhance,
            face_upsample: !self.no_face_upsample,
            webhook: self.webhook.clone(),
            webhook_events_filter: match &self.webhook_events {
                Some(text) => Some(
                    params::parse_events_filter(text, ',')
                        .map_err(|e| CliError::usage(e.to_string()))?,
                ),
                None => None,
            },
            webhook_url: self.webhook_url.clone(),
            webhook_mode: self.webhook_mode,
        };
        params
            .validate()
            .and_then(|()| params.check_webhook_scheme(base_url))
            .map_err(|e| CliError::usage(e.to_string()))?;
        Ok(params)
    }
}

pub fn fidelity(text: &str) -> Result<Decimal, String> {
    params::parse_fidelity(text).map_err(|e| e.message)
}
pub fn upscale(text: &str) -> Result<u32, String> {
    params::parse_upscale(text).map_err(|e| e.message)
}
pub fn size(text: &str) -> Result<(u32, u32), String> {
    params::parse_size(text).map_err(|e| e.message)
}
pub fn tag(text: &str) -> Result<(String, String), String> {
    params::parse_tag(text).map_err(|e| e.message)
}
pub fn webhook_events(text: &str) -> Result<String, String> {
    params::parse_events_filter(text, ',')
        .map(|_| text.to_string())
        .map_err(|e| e.message)
}
pub fn webhook_mode(text: &str) -> Result<WebhookMode, String> {
    text.parse::<WebhookMode>().map_err(|e| e.message)
}

/// A hook file that exists and is a regular file, as an absolute path.
pub fn hook_file(path: &Path) -> Result<PathBuf, CliError> {
    let real = path
        .canonicalize()
        .map_err(|e| CliError::usage(format!("--hook {}: {e}", path.display())))?;
    if !real.is_file() {
        return Err(CliError::usage(format!(
            "--hook {}: is not a file (give a Lua source file)",
            path.display()
        )));
    }
    Ok(real)
}

/// Creates the output folder if needed and checks that a file can be written in it.
pub fn usable_out_dir(dir: &Path) -> Result<PathBuf, CliError> {
    let bad = |e: std::io::Error| {
        CliError::usage(format!(
            "the output folder {} cannot be used: {e}; give a writable folder with --out-dir",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(bad)?;
    let real = dir.canonicalize().map_err(bad)?;
    tempfile::Builder::new()
        .prefix(".write-check-")
        .tempfile_in(&real)
        .map_err(bad)?;
    Ok(real)
}

/// Starts the hook worker for these files; a file that does not compile is a usage error.
pub fn start_hooks(
    files: Vec<PathBuf>,
    out_dir: &Path,
    trusted: bool,
    timeout: Duration,
) -> Result<Option<engine::LuaHooks>, CliError> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut config = codeformer_ledger::hooks::HookConfig::new(files, out_dir);
    config.trusted = trusted;
    config.timeout = timeout;
    engine::LuaHooks::start(config)
        .map(Some)
        .map_err(|e| CliError::usage(e.to_string()))
}

/// The message and exit code for a run that stopped early.
pub fn stop_error(reason: &StopReason) -> CliError {
    let code = match reason {
        StopReason::Budget { .. } | StopReason::InsufficientBalance { .. } => {
            codeformer_ledger::exit::BUDGET
        }
        _ => codeformer_ledger::exit::ERROR,
    };
    let message = match reason {
        StopReason::Budget { needed } => format!(
            "stopped by the budget cap: the held jobs need {} USD more; raise --budget and run again",
            codeformer_ledger::money::exact(*needed)
        ),
        StopReason::InsufficientBalance { message } => format!(
            "the gateway's wallet cannot pay for the next job (HTTP 402: {message}); it and the jobs not yet sent are held. Top up the wallet, then run again"
        ),
        StopReason::Unauthorized { message } => message.clone(),
        StopReason::Unreachable { message } | StopReason::Misconfigured { message } => {
            message.clone()
        }
        StopReason::Interrupted => {
            "interrupted; what was in flight is recorded. `codeformer-ledger run` resumes".into()
        }
    };
    CliError { code, message }
}
