//! `hooks failed` and `hooks retry`: hook runs that did not succeed, and running them again.

use super::{CliError, CmdResult, Global};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Hook runs that failed (or were stopped), and running them again.
///
/// Examples:
///   codeformer-ledger hooks failed
///   codeformer-ledger hooks retry
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct HooksArgs {
    #[command(subcommand)]
    pub action: HooksAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum HooksAction {
    /// List hook runs whose latest outcome is a failure.
    Failed {
        #[arg(long, value_enum, default_value = "table")]
        format: super::Format,
    },
    /// Run every failed hook again (the hook file as it is now).
    Retry {
        /// The output folder hooks may touch [default: the batch's remembered folder, else the config file's out_dir, else ./restored].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Give hooks the full Lua standard library.
        #[arg(long)]
        trusted_hooks: bool,
        /// Wall-clock limit of one hook call.
        #[arg(long, value_name = "DUR", value_parser = super::parse_duration, default_value = "10s")]
        hook_timeout: Duration,
    },
}

pub fn run(global: &Global, args: HooksArgs) -> CmdResult {
    match args.action {
        HooksAction::Failed { format } => {
            let ledger = global.open_ledger_read_only()?;
            let runs = ledger.failed_hook_runs()?;
            match format {
                super::Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&runs).unwrap_or_default()
                ),
                _ => {
                    if runs.is_empty() {
                        println!("no failed hook runs");
                    }
                    for r in &runs {
                        let subject = match (r.job_id, &r.batch) {
                            (Some(id), _) => format!("job {id} attempt {}", r.attempt.unwrap_or(1)),
                            (None, Some(b)) => format!("batch {b}"),
                            _ => "-".into(),
                        };
                        println!(
                            "run {:>4}  {subject}  {} {}  {}  {}",
                            r.id,
                            r.hook_file,
                            r.function,
                            r.status,
                            r.error.as_deref().unwrap_or("interrupted")
                        );
                    }
                }
            }
            Ok(codeformer_ledger::exit::DONE)
        }
        HooksAction::Retry {
            out_dir,
            trusted_hooks,
            hook_timeout,
        } => {
            let mut ledger = global.open_ledger()?;
            let _lock = ledger.lock_engine()?;
            let runs = ledger.failed_hook_runs()?;
            if runs.is_empty() {
                println!("no failed hook runs");
                return Ok(codeformer_ledger::exit::DONE);
            }
            let files: BTreeSet<String> = runs.iter().map(|r| r.hook_file.clone()).collect();
            let batch = runs.iter().find_map(|r| r.batch.clone());
            let remembered = match &batch {
                Some(b) => ledger.batch_settings(b)?.and_then(|(_, dir)| dir),
                None => None,
            };
            let dir =
                super::options::out_dir(&global.config, out_dir.as_deref(), remembered.as_deref());
            std::fs::create_dir_all(&dir)?;
            let files: Vec<PathBuf> = files.into_iter().map(PathBuf::from).collect();
            let Some(mut hooks) = super::common::start_hooks(
                files,
                &dir.canonicalize()?,
                trusted_hooks,
                hook_timeout,
            )?
            else {
                return Ok(codeformer_ledger::exit::DONE);
            };
            let (mut ok, mut failed) = (0, 0);
            for run in &runs {
                if hooks.retry(&mut ledger, run)? {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            println!(
                "retried {} hook run(s): {ok} ok, {failed} failed",
                runs.len()
            );
            if failed > 0 {
                return Err(CliError {
                    code: codeformer_ledger::exit::SOME_FAILED,
                    message: "some hooks failed again; see `codeformer-ledger hooks failed`".into(),
                });
            }
            Ok(codeformer_ledger::exit::DONE)
        }
    }
}
