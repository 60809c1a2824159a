//! `verify`: check a ledger's integrity and invariants.

use super::{CliError, CmdResult, Global};

/// Check a ledger's integrity and invariants.
///
/// SQLite's own integrity check, plus the ledger's invariants: every job's state matches its
/// attempt and is explained by an event, every charge is counted once, completed jobs have
/// their outputs. Read only. Exit 0 when sound, 1 with the list of problems.
///
/// Examples:
///   codeformer-ledger verify
///   codeformer-ledger verify --files     # also re-hash every downloaded output
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// Also check every output file's size and sha256 against the ledger.
    #[arg(long)]
    pub files: bool,
}

pub fn run(global: &Global, args: VerifyArgs) -> CmdResult {
    let ledger = global.open_ledger_read_only()?;
    let problems = ledger.verify(args.files)?;
    if problems.is_empty() {
        println!(
            "{}: sound (schema version {})",
            global.ledger.display(),
            ledger.schema_version()?
        );
        return Ok(codeformer_ledger::exit::DONE);
    }
    for p in &problems {
        println!("{}: {}", p.check, p.detail);
    }
    Err(CliError::error(format!(
        "{} problem(s) in {}",
        problems.len(),
        global.ledger.display()
    )))
}
