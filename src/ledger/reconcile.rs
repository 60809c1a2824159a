//! Reconciling a provider's statement (request id, amount, date per line) with the ledger(s).
//!
//! The statement is held in memory, keyed by request id; each ledger's attempts are read once,
//! in a stream, so memory grows with the statement and the differences, not with the ledger.
//!
//! Invariants kept here:
//! - money is exact: amounts are compared and summed as decimals ([`DecimalSum`]), never floats;
//! - the billed total splits exactly: `billed = matched + ghosts + differing (billed) +
//!   resolved (billed)`; the recorded total compared: `recorded = matched + differing
//!   (recorded) + not billed`;
//! - a request id recorded in several ledgers is matched once, in the first that has it.

use super::attach::Attached;
use super::report::{exact, exact_opt};
use super::{Ledger, LedgerError, Result, Source};
use crate::money::{self, DecimalSum, MoneyError};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// One request id's line(s) of a statement.
#[derive(Debug, Clone)]
pub struct Billed {
    pub request_id: String,
    /// The sum of its lines.
    pub amount: Decimal,
    /// UTC day (YYYY-MM-DD) of its first line.
    pub day: String,
    /// Line numbers in the file (a request id may be billed on several lines).
    pub lines: Vec<u64>,
}

/// What a difference is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Billed, and no ledger records the request id.
    Ghost,
    /// Charged in the ledger (more than 0), and not on the statement.
    NotBilled,
    /// On both, with amounts that differ.
    AmountDiffers,
    /// Billed, for an attempt whose charge the ledger did not know (FAILED, stalled,
    /// uncertain, unfinished): the statement resolves it. Not a mismatch.
    ResolvedBilled,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Ghost => "ghost",
            FindingKind::NotBilled => "not_billed",
            FindingKind::AmountDiffers => "amount_differs",
            FindingKind::ResolvedBilled => "resolved_billed",
        }
    }

    /// Whether this kind means the statement and the ledger disagree.
    pub fn is_mismatch(self) -> bool {
        self != FindingKind::ResolvedBilled
    }
}

/// An attempt the ledger knows, as a finding shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttemptRef {
    pub ledger: String,
    pub job_id: i64,
    pub attempt: i64,
    pub state: String,
    pub sent_at: String,
    #[serde(serialize_with = "exact_opt")]
    pub estimated: Option<Decimal>,
}

/// One difference between the statement and the ledger(s).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    pub request_id: String,
    /// The statement's line(s) for it.
    pub lines: Vec<u64>,
    /// The attempt the ledger records under this request id.
    pub attempt: Option<AttemptRef>,
    #[serde(serialize_with = "exact_opt")]
    pub billed: Option<Decimal>,
    /// The ledger's recorded charge.
    #[serde(serialize_with = "exact_opt")]
    pub recorded: Option<Decimal>,
    /// `billed - recorded` (a missing side counts as 0).
    #[serde(serialize_with = "exact")]
    pub difference: Decimal,
    /// For a ghost: uncertain attempts with no request id (their answer was lost) sent the same
    /// UTC day, those whose estimate equals the billed amount first.
    pub candidates: Vec<AttemptRef>,
    pub note: String,
}

/// A count and an exact amount.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tally {
    pub count: u64,
    #[serde(serialize_with = "exact")]
    pub usd: Decimal,
}

impl Tally {
    fn add(&mut self, amount: Decimal) -> Result<(), MoneyError> {
        let mut sum = DecimalSum::new();
        sum.add(self.usd)?;
        sum.add(amount)?;
        self.usd = sum.total();
        self.count += 1;
        Ok(())
    }
}

/// Totals of a reconciliation.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Totals {
    /// Every request id on the statement.
    pub billed: Tally,
    /// Billed exactly as recorded.
    pub matched: Tally,
    pub ghosts: Tally,
    /// Recorded charges not billed.
    pub not_billed: Tally,
    /// Differing amounts: what was billed for them.
    pub differing_billed: Tally,
    /// Differing amounts: what the ledger recorded for them.
    pub differing_recorded: Tally,
    pub resolved_billed: Tally,
    /// Recorded charges compared (matched + differing + not billed).
    pub recorded: Tally,
}

/// The outcome of `reconcile`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reconcile {
    pub ledgers: Vec<String>,
    /// Recorded charges of attempts sent in `[since, until)` must be billed.
    pub since: Option<String>,
    pub until: Option<String>,
    pub totals: Totals,
    /// Ghosts, then charges not billed, then differing amounts, then resolved ones.
    pub findings: Vec<Finding>,
    /// Whether statement and ledger(s) agree (no ghost, nothing unbilled, no differing amount).
    pub matches: bool,
}

fn sub(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    let mut sum = DecimalSum::new();
    sum.add(a)?;
    sum.add(-b)?;
    Ok(sum.total())
}

fn amount(what: &'static str, text: Option<String>) -> Result<Option<Decimal>> {
    text.map(|t| money::parse_exact(&t).map_err(|_| LedgerError::Corrupt { what, value: t }))
        .transpose()
}

fn attempts_sql(schema: &str) -> String {
    format!(
        "SELECT a.job_id, a.attempt, a.state, a.request_id, a.actual_cost, a.estimated_cost,
                coalesce(a.submitted_at, j.created_at)
         FROM {schema}.attempts a JOIN {schema}.jobs j ON j.id = a.job_id
         WHERE a.request_id IS NOT NULL OR a.state = 'uncertain'"
    )
}

impl Ledger {
    /// Compares `statement` with this ledger (labelled `label`) and `others`. Recorded charges
    /// of attempts sent in `[since, until)` (ledger timestamps) are expected on the statement;
    /// the statement's own ids are matched whenever their attempt was sent.
    pub fn reconcile(
        &self,
        label: &str,
        others: &[Source],
        statement: Vec<Billed>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Reconcile> {
        let attached = Attached::new(self, others)?;
        let mut labels = vec![label.to_string()];
        labels.extend(others.iter().map(|o| o.label.clone()));
        let mut out = Reconcile {
            since: since.map(str::to_string),
            until: until.map(str::to_string),
            ..Reconcile::default()
        };
        let billed = by_request_id(&mut out, statement)?;
        let mut matched: HashSet<String> = HashSet::new();
        let mut uncertain: Vec<AttemptRef> = Vec::new();
        let in_period = |at: &str| since.is_none_or(|s| at >= s) && until.is_none_or(|u| at < u);
        for (i, schema) in attached.schemas().iter().enumerate() {
            let mut stmt = self.conn.prepare(&attempts_sql(schema))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let request_id: Option<String> = r.get(3)?;
                let reference = attempt_ref(r, &labels[i])?;
                let Some(request_id) = request_id else {
                    uncertain.push(reference);
                    continue;
                };
                if matched.contains(&request_id) {
                    continue; // recorded in an earlier ledger too: matched there
                }
                let recorded = amount("attempts.actual_cost", r.get(4)?)?;
                match billed.get(&request_id) {
                    Some(b) => {
                        matched.insert(request_id.clone());
                        match_one(&mut out, b, reference, recorded)?;
                    }
                    None => {
                        let charged = recorded.filter(|c| !c.is_zero());
                        if let Some(charged) = charged.filter(|_| in_period(&reference.sent_at)) {
                            matched.insert(request_id.clone());
                            not_billed(&mut out, request_id, reference, charged)?;
                        }
                    }
                }
            }
        }
        drop(attached);
        ghosts(&mut out, &billed, &matched, &uncertain)?;
        out.findings
            .sort_by(|a, b| (a.kind, &a.lines).cmp(&(b.kind, &b.lines)));
        out.matches = !out.findings.iter().any(|f| f.kind.is_mismatch());
        out.ledgers = labels;
        Ok(out)
    }
}

/// One row of [`attempts_sql`] as the attempt it names, in the ledger labelled `label`.
fn attempt_ref(r: &rusqlite::Row<'_>, label: &str) -> Result<AttemptRef> {
    Ok(AttemptRef {
        ledger: label.to_string(),
        job_id: r.get(0)?,
        attempt: r.get(1)?,
        state: r.get(2)?,
        sent_at: crate::clock::stamp_of_column(r.get_ref(6)?).unwrap_or_default(),
        estimated: amount("attempts.estimated_cost", r.get(5)?)?,
    })
}

/// The statement keyed by request id, its total counted as billed.
fn by_request_id(out: &mut Reconcile, statement: Vec<Billed>) -> Result<HashMap<String, Billed>> {
    let mut billed: HashMap<String, Billed> = HashMap::with_capacity(statement.len());
    for b in statement {
        out.totals.billed.add(b.amount)?;
        billed.insert(b.request_id.clone(), b);
    }
    Ok(billed)
}

/// A charge the ledger recorded, in the period, that the statement does not bill.
fn not_billed(
    out: &mut Reconcile,
    request_id: String,
    reference: AttemptRef,
    charged: Decimal,
) -> Result<()> {
    out.totals.not_billed.add(charged)?;
    out.totals.recorded.add(charged)?;
    out.findings.push(Finding {
        kind: FindingKind::NotBilled,
        request_id,
        lines: Vec::new(),
        attempt: Some(reference),
        billed: None,
        recorded: Some(charged),
        difference: -charged,
        candidates: Vec::new(),
        note: "charged in the ledger, not on the statement".into(),
    });
    Ok(())
}

/// The billed ids no ledger matched, in statement order, each with the uncertain attempts
/// that might be it.
fn ghosts(
    out: &mut Reconcile,
    billed: &HashMap<String, Billed>,
    matched: &HashSet<String>,
    uncertain: &[AttemptRef],
) -> Result<()> {
    let mut ghosts: Vec<&Billed> = billed
        .values()
        .filter(|b| !matched.contains(&b.request_id))
        .collect();
    ghosts.sort_by(|a, b| a.lines.cmp(&b.lines));
    for b in ghosts {
        out.totals.ghosts.add(b.amount)?;
        let candidates = candidates(uncertain, b);
        let note = ghost_note(&candidates, b);
        out.findings.push(Finding {
            kind: FindingKind::Ghost,
            request_id: b.request_id.clone(),
            lines: b.lines.clone(),
            attempt: None,
            billed: Some(b.amount),
            recorded: None,
            difference: b.amount,
            candidates,
            note,
        });
    }
    Ok(())
}

/// A billed id the ledger records: matched, differing, or resolving an unknown charge.
fn match_one(
    out: &mut Reconcile,
    b: &Billed,
    reference: AttemptRef,
    recorded: Option<Decimal>,
) -> Result<()> {
    let unknown = recorded.is_none();
    let recorded_value = recorded.unwrap_or_default();
    if !unknown && recorded_value == b.amount {
        out.totals.matched.add(b.amount)?;
        out.totals.recorded.add(recorded_value)?;
        return Ok(());
    }
    let (kind, note) = if unknown {
        out.totals.resolved_billed.add(b.amount)?;
        (
            FindingKind::ResolvedBilled,
            format!(
                "resolved: billed; the ledger did not know whether this {} attempt is charged",
                reference.state
            ),
        )
    } else {
        out.totals.differing_billed.add(b.amount)?;
        out.totals.differing_recorded.add(recorded_value)?;
        out.totals.recorded.add(recorded_value)?;
        let note = if matches!(reference.state.as_str(), "error" | "rejected") {
            format!(
                "billed although the attempt ended {}, which is not billed",
                reference.state
            )
        } else {
            "the billed amount differs from the charge recorded from the output's size".into()
        };
        (FindingKind::AmountDiffers, note)
    };
    out.findings.push(Finding {
        kind,
        request_id: b.request_id.clone(),
        lines: b.lines.clone(),
        attempt: Some(reference),
        billed: Some(b.amount),
        recorded,
        difference: sub(b.amount, recorded_value)?,
        candidates: Vec::new(),
        note,
    });
    Ok(())
}

/// Uncertain attempts without a request id sent the day a ghost was billed, those whose
/// estimate equals the billed amount first: the statement has no image URL, so the day and
/// the amount are all a ghost can be matched by.
fn candidates(uncertain: &[AttemptRef], b: &Billed) -> Vec<AttemptRef> {
    let mut same_day: Vec<AttemptRef> = uncertain
        .iter()
        .filter(|u| u.sent_at.get(..10) == Some(b.day.as_str()))
        .cloned()
        .collect();
    same_day.sort_by_key(|u| u.estimated != Some(b.amount));
    same_day
}

fn ghost_note(candidates: &[AttemptRef], b: &Billed) -> String {
    let exact: Vec<&AttemptRef> = candidates
        .iter()
        .filter(|c| c.estimated == Some(b.amount))
        .collect();
    match (exact.len(), candidates.len()) {
        (_, 0) => "no ledger records this request id, and no uncertain attempt was sent that day".into(),
        (1, _) => format!(
            "no ledger records this request id; probably the uncertain attempt {} of job {} ({}), sent that day with this estimate",
            exact[0].attempt, exact[0].job_id, exact[0].ledger
        ),
        (0, n) => format!(
            "no ledger records this request id; {n} uncertain attempt(s) were sent that day, none with this amount as estimate"
        ),
        (k, _) => format!(
            "no ledger records this request id; {k} uncertain attempts sent that day have this estimate"
        ),
    }
}
