//! The command line: one file per command, each with its clap `Args` and a `run`.

use codeformer_ledger::exit;
use std::fmt;

/// What a command that did not finish cleanly tells the user, with the exit code to leave with.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad usage or input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    /// Any other error (exit 1).
    pub fn error(message: impl Into<String>) -> Self {
        CliError {
            code: exit::ERROR,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A command's outcome: the exit code on success, or an error to print.
pub type CmdResult = Result<u8, CliError>;
