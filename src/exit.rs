//! The process exit codes the design promises. The binary maps every outcome to one of these.

/// Everything finished.
pub const DONE: u8 = 0;
/// An error stopped the command.
pub const ERROR: u8 = 1;
/// Bad usage or bad input; nothing was changed.
pub const USAGE: u8 = 2;
/// Finished, but some jobs failed, errored or were rejected.
pub const SOME_FAILED: u8 = 3;
/// Stopped by a budget cap or an insufficient balance (402).
pub const BUDGET: u8 = 4;
/// The ledger is held by another running engine.
pub const LEDGER_BUSY: u8 = 5;

use crate::engine::{RunSummary, StopReason};
use crate::lifecycle::JobState;

/// The exit code the design gives a run's outcome: the engine reports what happened, the
/// command maps it to a code.
pub fn of_run(summary: &RunSummary) -> u8 {
    match &summary.stop {
        Some(StopReason::Budget { .. } | StopReason::InsufficientBalance { .. }) => BUDGET,
        Some(_) => ERROR,
        None if summary.hook_blocked > 0
            || summary.not_uploaded > 0
            || summary.failed_hooks > 0
            || summary.owing_downloads > 0
            || !summary.owing_hooks.is_empty() =>
        {
            SOME_FAILED
        }
        None if [
            JobState::Failed,
            JobState::Error,
            JobState::Rejected,
            JobState::Stalled,
            JobState::Uncertain,
        ]
        .iter()
        .any(|s| summary.count(*s) > 0) =>
        {
            SOME_FAILED
        }
        None => DONE,
    }
}
