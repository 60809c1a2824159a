//! The `codeformer-ledger` binary: parse arguments, call the library, map the outcome to an
//! exit code.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("hook-worker") {
        return codeformer_ledger::hooks::worker_main();
    }
    let args = cli::Cli::parse();
    codeformer_ledger::ledger::migrations::on_migrate(|path, from, to| {
        eprintln!(
            "migrating the ledger {} from schema version {from} to {to} (once; a large ledger takes a few seconds)",
            path.display()
        )
    });
    match cli::dispatch(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
