//! `ledger compact`: keep a ledger small for years by dropping old answer bodies.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::clock;

/// Maintenance of the ledger file: compact old answer bodies.
#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCommand {
    Compact(CompactArgs),
}

/// Drop the raw bodies of gateway answers recorded before a date.
///
/// Each answer's facts stay in its event: HTTP status, the gateway's status, latency, and the
/// error text if there was one (written into the event's detail first). Bodies that a newer
/// answer's reference still needs are kept. Everything happens in one transaction, recorded
/// in the `compactions` table and as a `compact` event; --vacuum then gives the space back to
/// the file system (it rewrites the file, so it needs as much free space as the ledger).
///
/// Examples:
///   codeformer-ledger ledger compact --before 2026-01-01
///   codeformer-ledger ledger compact --before 2026-06-01 --vacuum
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompactArgs {
    /// Drop bodies of answers recorded before this date (YYYY-MM-DD, midnight UTC) or RFC 3339 time.
    #[arg(long, value_name = "DATE")]
    pub before: String,
    /// Then rewrite the file without the freed pages (VACUUM).
    #[arg(long)]
    pub vacuum: bool,
}

pub fn run(global: &Global, args: LedgerArgs) -> CmdResult {
    match args.command {
        LedgerCommand::Compact(args) => compact(global, args),
    }
}

fn compact(global: &Global, args: CompactArgs) -> CmdResult {
    let before = super::prices::parse_date(&args.before)
        .map(clock::stamp)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--before `{}` is not a date (YYYY-MM-DD) or an RFC 3339 time",
                args.before
            ))
        })?;
    if !global.ledger.exists() {
        return Err(codeformer_ledger::ledger::LedgerError::Missing(global.ledger.clone()).into());
    }
    let mut ledger = global.open_ledger()?;
    let size_before = file_size(&global.ledger);
    let done = ledger.compact(&before)?;
    println!(
        "dropped {} answer bodies ({} bytes) recorded before {before}{}",
        done.events,
        done.bytes,
        if done.kept_for_references > 0 {
            format!(
                "; kept {} that newer answers refer to",
                done.kept_for_references
            )
        } else {
            String::new()
        }
    );
    if args.vacuum {
        ledger.vacuum()?;
        println!(
            "vacuumed: {} -> {} bytes",
            size_before,
            file_size(&global.ledger)
        );
    } else if done.events > 0 {
        println!(
            "the file keeps its size until `ledger compact --vacuum` (or SQLite reuses the pages)"
        );
    }
    Ok(codeformer_ledger::exit::DONE)
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
