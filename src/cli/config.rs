//! The config file: defaults a user sets once. Precedence: flag > environment > config file >
//! built-in default. `config show` prints every effective value and where it came from; the
//! options of the commands that run the engine are resolved against it in `options.rs`.

use super::{CliError, CmdResult, Global};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "CODEFORMER_LEDGER_CONFIG";

/// Built-in defaults.
pub const DEFAULT_CONCURRENCY: u16 = 4;
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_OUT_DIR: &str = "restored";

/// The keys a config file may hold. Unknown keys are an error naming the key and the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub base_url: Option<String>,
    pub ledger: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub name_pattern: Option<String>,
    pub concurrency: Option<u16>,
    pub poll_interval: Option<String>,
    /// Requests a second, as `--max-rps`.
    pub max_rps: Option<f64>,
    pub hooks: Option<Vec<PathBuf>>,
    /// USD, as a string (`"5"`) or a number (`5`, `0.3`); see [`Config::budget`].
    pub budget: Option<toml::Spanned<toml::Value>>,
    pub tags: Option<BTreeMap<String, String>>,
    /// `s3://BUCKET/PREFIX`, as `--upload`.
    pub upload: Option<String>,
    /// Extra CA certificates (PEM) to trust, as `--ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `false` is `--no-fsync-outputs`.
    pub fsync_outputs: Option<bool>,
}

/// The config file in force, if any, with where it was found.
#[derive(Debug, Default)]
pub struct Config {
    pub path: Option<PathBuf>,
    pub file: ConfigFile,
    /// The budget exactly as written in the file: a string's content, or a number's own
    /// text (so `0.3` is 0.3, never the nearest binary float).
    budget_text: Option<String>,
}

impl Config {
    /// Reads `--config FILE`, else `$CODEFORMER_LEDGER_CONFIG`, else the user's config
    /// directory's `codeformer-ledger/config.toml` when it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Config, CliError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match std::env::var_os(CONFIG_ENV) {
                Some(p) => Some(PathBuf::from(p)),
                None => dirs::config_dir()
                    .map(|d| d.join("codeformer-ledger").join("config.toml"))
                    .filter(|p| p.exists()),
            },
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::usage(format!("config file {}: {e}", path.display())))?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim()
            ))
        })?;
        let budget_text = match &file.budget {
            None => None,
            Some(spanned) => Some(match spanned.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(_) | toml::Value::Float(_) => text
                    .get(spanned.span())
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches('+')
                    .replace('_', ""),
                other => {
                    return Err(CliError::usage(format!(
                        "config file {}: budget: a {} is not an amount in USD (write budget = 5 or budget = \"5\")",
                        path.display(),
                        other.type_str()
                    )))
                }
            }),
        };
        let config = Config {
            path: Some(path),
            file,
            budget_text,
        };
        config.validate()?;
        Ok(config)
    }

    fn bad(&self, key: &str, message: impl std::fmt::Display) -> CliError {
        let path = self.path.as_deref().unwrap_or(Path::new("?"));
        CliError::usage(format!("config file {}: {key}: {message}", path.display()))
    }

    fn validate(&self) -> Result<(), CliError> {
        self.poll_interval()?;
        self.max_rps()?;
        self.budget()?;
        if let Some(n) = self.file.concurrency {
            if !(1..=256).contains(&n) {
                return Err(self.bad("concurrency", format!("{n} is outside 1..256")));
            }
        }
        if let Some(p) = &self.file.name_pattern {
            codeformer_ledger::engine::check_name_pattern(p)
                .map_err(|e| self.bad("name_pattern", e))?;
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> Result<Option<Duration>, CliError> {
        self.file
            .poll_interval
            .as_deref()
            .map(|t| super::parse_duration(t).map_err(|e| self.bad("poll_interval", e)))
            .transpose()
    }

    pub fn max_rps(&self) -> Result<Option<f64>, CliError> {
        self.file
            .max_rps
            .map(|r| super::parse_rps(&r.to_string()).map_err(|e| self.bad("max_rps", e)))
            .transpose()
    }

    pub fn budget(&self) -> Result<Option<rust_decimal::Decimal>, CliError> {
        self.budget_text
            .as_deref()
            .map(|t| {
                // The money error already names the field.
                super::parse_budget(t).map_err(|e| {
                    let path = self.path.as_deref().unwrap_or(Path::new("?"));
                    CliError::usage(format!("config file {}: {e}", path.display()))
                })
            })
            .transpose()
    }

    pub fn origin(&self) -> String {
        format!(
            "config file {}",
            self.path.as_deref().unwrap_or(Path::new("?")).display()
        )
    }
}

/// The config file.
///
/// A TOML file in the user's config directory (`codeformer-ledger/config.toml`), or the file
/// named by --config or CODEFORMER_LEDGER_CONFIG, holds defaults: base_url, ledger, out_dir,
/// name_pattern, concurrency, poll_interval, max_rps, hooks, budget, tags, upload. Flags and
/// environment variables win over it. Example file:
///
///   base_url = "https://gateway.pixazo.ai"
///   out_dir = "/photos/restored"
///   name_pattern = "{stem}-{upscale}x"
///   concurrency = 8
///   poll_interval = "5s"
///   max_rps = 10               (a known quota of API requests a second)
///   hooks = ["/home/me/hooks/sidecar.lua"]
///   budget = 20                (USD: a number, or a string such as "20")
///   tags = { client = "acme" }
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigAction {
    /// Print every effective value and where it came from (the key only as set or not set).
    Show,
}

pub fn run(global: &Global, args: ConfigArgs) -> CmdResult {
    let ConfigAction::Show = args.action;
    let c = &global.config;
    let from_config = |present: bool| {
        if present {
            c.origin()
        } else {
            "built-in default".to_string()
        }
    };
    let rows: Vec<(&str, String, String)> = vec![
        (
            "config file",
            c.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into()),
            String::new(),
        ),
        (
            "ledger",
            global.ledger.display().to_string(),
            global.sources.ledger.clone(),
        ),
        (
            "base_url",
            global.base_url.clone(),
            global.sources.base_url.clone(),
        ),
        (
            "api key",
            if global.api_key()?.is_some() {
                "set".into()
            } else {
                "not set".into()
            },
            global.key_source(),
        ),
        (
            "out_dir",
            c.file
                .out_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| DEFAULT_OUT_DIR.into()),
            from_config(c.file.out_dir.is_some()),
        ),
        (
            "name_pattern",
            c.file
                .name_pattern
                .clone()
                .unwrap_or_else(|| codeformer_ledger::engine::DEFAULT_NAME_PATTERN.into()),
            from_config(c.file.name_pattern.is_some()),
        ),
        (
            "concurrency",
            c.file
                .concurrency
                .unwrap_or(DEFAULT_CONCURRENCY)
                .to_string(),
            from_config(c.file.concurrency.is_some()),
        ),
        (
            "poll_interval",
            c.file.poll_interval.clone().unwrap_or_else(|| "5s".into()),
            from_config(c.file.poll_interval.is_some()),
        ),
        (
            "max_rps",
            c.file
                .max_rps
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(learned)".into()),
            from_config(c.file.max_rps.is_some()),
        ),
        (
            "hooks",
            c.file
                .hooks
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "(none)".into()),
            from_config(c.file.hooks.is_some()),
        ),
        (
            "budget",
            match c.budget()? {
                Some(b) => codeformer_ledger::money::exact(b),
                None => "(none)".into(),
            },
            from_config(c.file.budget.is_some()),
        ),
        (
            "upload",
            global
                .upload
                .as_ref()
                .map(|u| u.destination.to_string())
                .unwrap_or_else(|| "(none)".into()),
            match (&global.upload, &c.file.upload) {
                (None, _) => "built-in default".to_string(),
                (Some(u), Some(f)) if f.parse().ok().as_ref() == Some(&u.destination) => c.origin(),
                (Some(_), _) => "--upload".to_string(),
            },
        ),
        (
            "tags",
            c.file
                .tags
                .as_ref()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "(none)".into()),
            from_config(c.file.tags.is_some()),
        ),
        (
            "ca_cert",
            global
                .ca_cert
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into()),
            if c.file.ca_cert.is_some() && !global.ca_cert_from_flag {
                c.origin()
            } else if global.ca_cert.is_some() {
                "flag --ca-cert".into()
            } else {
                "built-in default".into()
            },
        ),
        (
            "fsync_outputs",
            global.fsync_outputs.to_string(),
            if global.fsync_from_flag {
                "flag --no-fsync-outputs".into()
            } else if c.file.fsync_outputs.is_some() {
                c.origin()
            } else {
                "built-in default".into()
            },
        ),
    ];
    for (key, value, source) in rows {
        if source.is_empty() {
            println!("{key:<14} {value}");
        } else {
            println!("{key:<14} {value:<50} ({source})");
        }
    }
    println!("(flags given to a command win over all of these)");
    Ok(codeformer_ledger::exit::DONE)
}

/// Where the global values came from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub ledger: String,
    pub base_url: String,
}

/// Source of a value given by a flag or its environment variable.
pub fn flag_or_env(value: &str, env: &str, flag: &str) -> String {
    match std::env::var(env) {
        Ok(v) if v == value => format!("environment {env}"),
        _ => format!("flag {flag}"),
    }
}
