//! The words and figures that every form of a report or reconciliation shares: the notes a
//! reader must see, the reconciliation's lines, a statement's totals and the command that
//! shows a job. A leaf: the table, CSV and HTML writers and `reconcile` all draw on it.

use codeformer_ledger::ledger::{Reconcile, Report, Tally};
use codeformer_ledger::money;

/// Warnings a reader of the totals must see.
pub fn notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if report.total.charge_unknown > rust_decimal::Decimal::ZERO {
        notes.push("charge unknown: FAILED, stalled, uncertain and unfinished attempts may or may not be billed by the gateway (completed ones not yet downloaded are); their estimates are shown as the worst case.".to_string());
    }
    if report.total.reused > 0 {
        let groups: Vec<String> = report
            .rows
            .iter()
            .filter(|r| r.reused > 0)
            .map(|r| format!("{} {}", r.group, r.reused))
            .collect();
        notes.push(format!(
            "reused: {} job(s) recorded earlier joined a later batch at no new charge ({}); their attempts and cost are counted once, with the batch that sent them.",
            report.total.reused,
            groups.join(", ")
        ));
    }
    if report.possible_double_charges > 0 {
        notes.push(format!(
            "possible double charges: {} uncertain attempt(s) were sent again.",
            report.possible_double_charges
        ));
    }
    notes
}

/// The reconciliation as label and exact amount: the estimates, where they went, and the
/// differences, which add up exactly.
pub fn reconciliation_lines(report: &Report) -> Vec<(&'static str, String)> {
    let r = &report.reconciliation;
    let signed = |d: rust_decimal::Decimal| {
        if d.is_sign_negative() || d.is_zero() {
            money::exact(d)
        } else {
            format!("+{}", money::exact(d))
        }
    };
    vec![
        ("estimated", money::exact(report.total.estimated)),
        (
            "- not sent (planned, held, skipped)",
            money::exact(r.not_sent),
        ),
        (
            "- not charged (ERROR, rejected)",
            money::exact(r.not_charged),
        ),
        (
            "- charge unknown (worst case)",
            money::exact(report.total.charge_unknown),
        ),
        (
            "+ charges above (-below) their estimates",
            signed(r.difference),
        ),
        ("= charged", money::exact(report.total.charged)),
    ]
}

/// A statement's totals, labelled as every output names them.
pub fn reconcile_totals(r: &Reconcile) -> Vec<(&'static str, &Tally)> {
    let t = &r.totals;
    vec![
        ("billed", &t.billed),
        ("matched", &t.matched),
        ("ghosts", &t.ghosts),
        ("amount_differs_billed", &t.differing_billed),
        ("resolved_billed", &t.resolved_billed),
        ("recorded", &t.recorded),
        ("amount_differs_recorded", &t.differing_recorded),
        ("not_billed", &t.not_billed),
    ]
}

/// The command that shows a job, in the ledger it is in.
pub fn show_command(job_id: i64, ledger: Option<&str>) -> String {
    match ledger {
        Some(path) => format!(
            "codeformer-ledger --ledger {} show {job_id}",
            shell_word(path)
        ),
        None => format!("codeformer-ledger show {job_id}"),
    }
}

/// A word as a POSIX shell reads it back: quoted when it holds anything but plain characters.
pub fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// `codeformer-ledger show ID`, with `--ledger` when the job is in another ledger.
pub fn attempt_show_command(a: &codeformer_ledger::ledger::AttemptRef, r: &Reconcile) -> String {
    let other = r.ledgers.first() != Some(&a.ledger);
    show_command(a.job_id, other.then_some(a.ledger.as_str()))
}
