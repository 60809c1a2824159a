//! Cost reports: every attempt in a period, grouped, with exact sums.
//!
//! The gateway bills attempts (a retry is a new submission), so a report counts attempts; its
//! `jobs` column is the number of attempts in the group. An attempt belongs to the period and
//! the day of the time it was sent (or, if it never was, recorded), in UTC.
//!
//! Invariants kept here:
//! - every sum is exact ([`DecimalSum`]): a total equals the sum of its rows to the last digit,
//!   and an amount that does not fit, or a stored amount that does not parse, is an error,
//!   never a rounded or dropped number;
//! - each attempt's estimate lands in exactly one place, so that for the totals
//!   `estimated = charged + charge_unknown + not_charged + not_sent - difference` holds
//!   exactly, and `difference` is the sum of the attempts listed in the reconciliation.
//! - over several ledgers ([`Ledger::report_over`], the others attached read-only), an attempt
//!   whose request id an earlier ledger records is counted there only, and listed as shared.

use super::attach::Attached;
use super::{Ledger, LedgerError, Result};
use crate::money::{self, DecimalSum, MoneyError};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// How rows are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Month,
    Batch,
    State,
    Tag(String),
    /// The folder of each job's local input (`uploads.folder`).
    Folder,
    /// The ledger each attempt was read from (`report --with-ledger`).
    Ledger,
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(GroupBy::Day),
            "month" => Ok(GroupBy::Month),
            "batch" => Ok(GroupBy::Batch),
            "state" => Ok(GroupBy::State),
            "folder" => Ok(GroupBy::Folder),
            "ledger" => Ok(GroupBy::Ledger),
            other => match other.strip_prefix("tag:") {
                Some(key) if !key.is_empty() => Ok(GroupBy::Tag(key.to_string())),
                _ => Err(format!(
                    "`{other}` is not a grouping (day, month, batch, state, folder, ledger or tag:KEY)"
                )),
            },
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupBy::Day => f.write_str("day"),
            GroupBy::Month => f.write_str("month"),
            GroupBy::Batch => f.write_str("batch"),
            GroupBy::State => f.write_str("state"),
            GroupBy::Folder => f.write_str("folder"),
            GroupBy::Tag(key) => write!(f, "tag:{key}"),
            GroupBy::Ledger => f.write_str("ledger"),
        }
    }
}

/// One group's figures. Money is exact (USD).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReportRow {
    pub group: String,
    /// Attempts in the group (a retried job counts once per attempt).
    pub jobs: u64,
    pub completed: u64,
    pub failed: u64,
    pub errored: u64,
    pub rejected: u64,
    pub uncertain: u64,
    pub stalled: u64,
    /// Megapixels of the downloaded outputs.
    #[serde(serialize_with = "exact")]
    pub output_megapixels: Decimal,
    /// Estimates of every attempt, sent or not.
    #[serde(serialize_with = "exact")]
    pub estimated: Decimal,
    /// Recorded charges (from the downloaded outputs; ERROR and rejected are 0).
    #[serde(serialize_with = "exact")]
    pub charged: Decimal,
    /// Worst case (the estimate) of attempts the gateway may bill that have no recorded charge:
    /// FAILED, stalled, uncertain, still at the gateway, or completed and not yet downloaded.
    #[serde(serialize_with = "exact")]
    pub charge_unknown: Decimal,
    /// Jobs recorded earlier (in another batch, or none) that joined this batch: counted here
    /// at no new charge; their attempts and cost stay with the group that sent them.
    pub reused: u64,
}

/// An attempt whose recorded charge differs from its estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Discrepancy {
    /// The ledger the job is in, when the report reads more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    pub job_id: i64,
    pub attempt: i64,
    /// `None` when there was no estimate (the input size was unknown).
    #[serde(serialize_with = "exact_opt")]
    pub estimated: Option<Decimal>,
    #[serde(serialize_with = "exact")]
    pub charged: Decimal,
    /// `charged - estimated`.
    #[serde(serialize_with = "exact")]
    pub difference: Decimal,
    pub reason: String,
}

/// Where the estimates went: `estimated = charged + charge_unknown + not_charged + not_sent -
/// difference`, exactly, for the report's totals.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Reconciliation {
    /// Estimates of attempts never sent (planned, held, skipped).
    #[serde(serialize_with = "exact")]
    pub not_sent: Decimal,
    /// Estimates of attempts the gateway does not bill (ERROR, rejected).
    #[serde(serialize_with = "exact")]
    pub not_charged: Decimal,
    /// Charged minus estimated, over the attempts listed in `attempts`.
    #[serde(serialize_with = "exact")]
    pub difference: Decimal,
    /// Every attempt whose charge differs from its estimate, with the reason.
    pub attempts: Vec<Discrepancy>,
}

/// Spend attributed to one UTC day.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DaySpend {
    pub day: String,
    #[serde(serialize_with = "exact")]
    pub charged: Decimal,
    #[serde(serialize_with = "exact")]
    pub charge_unknown: Decimal,
}

/// A cost report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// The period, as ledger timestamps: `[since, until)`.
    pub since: Option<String>,
    pub until: Option<String>,
    pub group_by: String,
    pub rows: Vec<ReportRow>,
    pub total: ReportRow,
    pub reconciliation: Reconciliation,
    /// Attempts that may have been charged twice (uncertain, then sent again).
    pub possible_double_charges: u64,
    /// Charged and charge-unknown spend per day with any, oldest first (for charts; the
    /// same figures as `--by day`).
    #[serde(skip)]
    pub spend_by_day: Vec<DaySpend>,
    /// With `--by batch`: each batch's remembered `--budget` (`batches.budget`), for charts.
    #[serde(skip)]
    pub budgets: BTreeMap<String, Decimal>,
    /// The ledgers read, by label, when there is more than one (`--with-ledger`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ledgers: Vec<String>,
    /// Request ids found in more than one of those ledgers: each is counted once, in the first
    /// ledger listed that has it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<SharedRequest>,
}

/// A request id recorded in more than one ledger of a report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SharedRequest {
    pub request_id: String,
    /// Where its attempt is counted.
    pub counted_in: String,
    /// Every ledger that records it, in the report's order.
    pub ledgers: Vec<String>,
}

/// Another ledger to read with the open one, and the label its rows carry.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: std::path::PathBuf,
    pub label: String,
}

/// Money as exact decimal text in JSON (shared by reports and reconciliations).
pub(super) fn exact<S: serde::Serializer>(
    d: &Decimal,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&money::exact(*d))
}

pub(super) fn exact_opt<S: serde::Serializer>(
    d: &Option<Decimal>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&money::exact(*d)),
        None => s.serialize_none(),
    }
}

/// `a + b`, exactly or not at all.
fn plus(a: Decimal, b: Decimal) -> Result<Decimal, MoneyError> {
    add_exact(a, b).ok_or(MoneyError::Overflow {
        what: "a report sum",
    })
}

/// `a + b` exactly. The common case is done in integers at the larger scale, without the
/// normalising that money::exact_add does on every call (a third of `report`'s time over a
/// million attempts); amounts are shown through money::exact or money::display, which
/// normalise.
fn add_exact(a: Decimal, b: Decimal) -> Option<Decimal> {
    // Most of the buckets an attempt adds to are zero (nothing unknown, nothing not sent).
    if b.is_zero() {
        return Some(a);
    }
    if a.is_zero() {
        return Some(b);
    }
    let scale = a.scale().max(b.scale());
    let widen = |d: Decimal| {
        d.mantissa()
            .checked_mul(10i128.checked_pow(scale - d.scale())?)
    };
    if let (Some(x), Some(y)) = (widen(a), widen(b)) {
        if let Some(sum) = x.checked_add(y).filter(|s| s.unsigned_abs() < 1u128 << 96) {
            return Some(Decimal::from_i128_with_scale(sum, scale));
        }
    }
    money::exact_add(a, b)
}

impl ReportRow {
    fn add(&mut self, other: &ReportRow) -> Result<(), MoneyError> {
        self.jobs += other.jobs;
        self.completed += other.completed;
        self.failed += other.failed;
        self.errored += other.errored;
        self.rejected += other.rejected;
        self.uncertain += other.uncertain;
        self.stalled += other.stalled;
        self.output_megapixels = plus(self.output_megapixels, other.output_megapixels)?;
        self.estimated = plus(self.estimated, other.estimated)?;
        self.charged = plus(self.charged, other.charged)?;
        self.charge_unknown = plus(self.charge_unknown, other.charge_unknown)?;
        self.reused += other.reused;
        Ok(())
    }
}

/// One attempt as the report reads it, its texts borrowed from the query's row.
struct Attempt<'r> {
    job_id: i64,
    attempt: i64,
    state: &'r str,
    at: At<'r>,
    batch: Option<&'r str>,
    tag: Option<&'r str>,
    estimated: Option<Decimal>,
    charged: Option<Decimal>,
    output: Option<(u32, u32)>,
    /// Output files, when more than one (0 otherwise: one file, or none yet).
    outputs: i64,
    input: Option<(u32, u32)>,
    upscale: u32,
    resent: bool,
}

/// When an attempt counts: its `submitted_at`, or its job's `created_at` when it was never sent.
#[derive(Clone, Copy)]
enum At<'r> {
    /// Unix milliseconds.
    Millis(i64),
    /// RFC 3339 text, from a ledger attached as it is and older than integer times, or text
    /// that the migration to them kept as it was (it was not a time).
    Text(&'r str),
}

/// The UTC day (`YYYY-MM-DD`) of unix milliseconds, formatted once for each run of rows on
/// the same day (a report reads a million of them).
#[derive(Default)]
struct Days {
    last: Option<(i64, [u8; 10])>,
}

impl Days {
    fn of(&mut self, millis: i64) -> [u8; 10] {
        let day = millis.div_euclid(86_400_000);
        match self.last {
            Some((d, text)) if d == day => text,
            _ => {
                let mut text = [b'?'; 10];
                let stamp = crate::clock::stamp_of_millis(millis);
                let n = stamp.len().min(10);
                text[..n].copy_from_slice(&stamp.as_bytes()[..n]);
                self.last = Some((day, text));
                text
            }
        }
    }
}

/// Where one attempt's money goes.
#[derive(Debug, Default, PartialEq)]
struct Placed {
    charged: Decimal,
    charge_unknown: Decimal,
    not_charged: Decimal,
    not_sent: Decimal,
}

/// Places an attempt's estimate and charge by its state.
fn place(state: &str, estimated: Decimal, charged: Option<Decimal>) -> Placed {
    let mut placed = Placed {
        charged: charged.unwrap_or_default(),
        ..Placed::default()
    };
    match state {
        // Not billed by the gateway, whether or not the zero charge was recorded yet.
        "error" | "rejected" => placed.not_charged = estimated,
        "planned" | "held" | "skipped" if charged.is_none() => placed.not_sent = estimated,
        _ if charged.is_none() => placed.charge_unknown = estimated,
        _ => {}
    }
    placed
}

impl Placed {
    /// What the charge added to or saved on the estimate beyond the expected buckets.
    fn difference(&self, estimated: Decimal) -> Result<Decimal, MoneyError> {
        let accounted = plus(
            plus(self.charged, self.charge_unknown)?,
            plus(self.not_charged, self.not_sent)?,
        )?;
        add_exact(accounted, -estimated).ok_or(MoneyError::Overflow {
            what: "a report difference",
        })
    }
}

/// The report's query over one ledger's tables (`main`, or an attached ledger's schema); the
/// request id is read only when several ledgers may share one. With `folder`, the grouping
/// column holds the folder of each job's local input (`uploads.folder`) when no tag is asked.
fn report_sql(schema: &str, request_ids: bool, folder: bool) -> String {
    let request_id = if request_ids { "a.request_id" } else { "NULL" };
    let folder = if folder {
        format!(
            "WHEN ?4 THEN (SELECT folder FROM {schema}.uploads u WHERE u.job_id = j.id
                              ORDER BY u.id DESC LIMIT 1)"
        )
    } else {
        "WHEN ?4 THEN NULL".to_string()
    };
    format!(
        "
    SELECT a.job_id, a.attempt, a.state, coalesce(a.submitted_at, j.created_at), j.batch,
           a.estimated_cost, a.actual_cost, a.output_width, a.output_height,
           j.input_width, j.input_height, j.upscale,
           CASE WHEN ?3 IS NOT NULL
                THEN (SELECT value FROM {schema}.tags t WHERE t.job_id = j.id AND t.key = ?3)
                {folder} END,
           CASE WHEN a.state = 'uncertain' THEN EXISTS (SELECT 1 FROM {schema}.attempts b
                WHERE b.job_id = a.job_id AND b.attempt > a.attempt) ELSE 0 END,
           0,
           {request_id}
    FROM {schema}.attempts a JOIN {schema}.jobs j ON j.id = a.job_id
    WHERE (?1 IS NULL OR coalesce(a.submitted_at, j.created_at) >= ?1)
      AND (?2 IS NULL OR coalesce(a.submitted_at, j.created_at) < ?2)
    ORDER BY a.job_id, a.attempt"
    )
}

/// A bound of the report's period as the unix milliseconds the times of attempts are in.
fn millis_of(stamp: Option<&str>) -> Result<Option<i64>> {
    stamp
        .map(|s| {
            crate::clock::stamp_millis(s).ok_or_else(|| LedgerError::Corrupt {
                what: "a report period bound",
                value: s.to_string(),
            })
        })
        .transpose()
}

fn amount(what: &'static str, text: Option<&str>) -> Result<Option<Decimal>> {
    text.map(|t| {
        money::parse_exact(t).map_err(|_| LedgerError::Corrupt {
            what,
            value: t.to_string(),
        })
    })
    .transpose()
}

/// Column `i` of the row as text borrowed from it (NULL: `None`).
fn text_at<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<Option<&'r str>> {
    Ok(r.get_ref(i)?.as_str_or_null().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })?)
}

fn read_attempt<'r>(r: &'r rusqlite::Row<'_>) -> Result<Attempt<'r>> {
    let pair = |a: Option<u32>, b: Option<u32>| a.zip(b);
    Ok(Attempt {
        job_id: r.get(0)?,
        attempt: r.get(1)?,
        state: text_at(r, 2)?.unwrap_or_default(),
        at: match r.get_ref(3)? {
            rusqlite::types::ValueRef::Integer(ms) => At::Millis(ms),
            _ => At::Text(text_at(r, 3)?.unwrap_or_default()),
        },
        batch: text_at(r, 4)?,
        estimated: amount("attempts.estimated_cost", text_at(r, 5)?)?,
        charged: amount("attempts.actual_cost", text_at(r, 6)?)?,
        output: pair(r.get(7)?, r.get(8)?),
        input: pair(r.get(9)?, r.get(10)?),
        upscale: r.get(11)?,
        tag: text_at(r, 12)?,
        resent: r.get(13)?,
        outputs: r.get(14)?,
    })
}

/// Request ids of the attempts counted so far, to count each once over several ledgers.
/// Held as 64-bit hashes with where each was read; a hash seen before is checked against the
/// earlier ledger's row, so a collision never drops an attempt.
#[derive(Default)]
struct SeenRequests {
    /// hash → (ledger index, job id, attempt) of the attempt counted.
    by_hash: HashMap<u64, (usize, i64, i64)>,
    /// Ids whose hash was taken by another id, exactly.
    collided: HashMap<String, (usize, i64, i64)>,
    /// Request id → ledgers recording it (the first is where it is counted).
    shared: BTreeMap<String, Vec<usize>>,
}

impl SeenRequests {
    /// Whether `id`, read at `at` (ledger, job, attempt), was already counted in an earlier
    /// ledger; remembers it otherwise.
    fn counted_before(
        &mut self,
        ledger: &Ledger,
        schemas: &[String],
        id: &str,
        at: (usize, i64, i64),
    ) -> Result<bool> {
        let first = match self.collided.get(id) {
            Some(&first) => Some(first),
            None => {
                let hash = {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    id.hash(&mut h);
                    h.finish()
                };
                match self.by_hash.get(&hash) {
                    None => {
                        self.by_hash.insert(hash, at);
                        return Ok(false);
                    }
                    Some(&first) if ledger.request_id_at(&schemas[first.0], first)? == id => {
                        Some(first)
                    }
                    Some(_) => {
                        self.collided.insert(id.to_string(), at);
                        return Ok(false);
                    }
                }
            }
        };
        let Some(first) = first else {
            return Ok(false);
        };
        if first.0 == at.0 {
            return Ok(false); // twice in one ledger: both are its own attempts
        }
        let ledgers = self
            .shared
            .entry(id.to_string())
            .or_insert_with(|| vec![first.0]);
        if !ledgers.contains(&at.0) {
            ledgers.push(at.0);
        }
        Ok(true)
    }
}

/// The ledger a row is read from.
struct Read<'a> {
    /// `main` or the attached schema's name.
    schema: &'a str,
    label: &'a str,
    /// More than one ledger is read: rows say which one they come from.
    several: bool,
}

/// Accumulates attempts into groups and totals.
#[derive(Default)]
struct Builder {
    groups: BTreeMap<String, ReportRow>,
    days: BTreeMap<String, DaySpend>,
    day_texts: Days,
    report: Report,
}

impl Builder {
    fn add(&mut self, ledger: &Ledger, a: Attempt<'_>, by: &GroupBy, src: &Read<'_>) -> Result<()> {
        let estimated = a.estimated.unwrap_or_default();
        let placed = place(a.state, estimated, a.charged);
        let mut row = ReportRow {
            jobs: 1,
            estimated,
            charged: placed.charged,
            charge_unknown: placed.charge_unknown,
            ..ReportRow::default()
        };
        match a.state {
            "completed" => row.completed = 1,
            "failed" => row.failed = 1,
            "error" => row.errored = 1,
            "rejected" => row.rejected = 1,
            "uncertain" => row.uncertain = 1,
            "stalled" => row.stalled = 1,
            _ => {}
        }
        if a.charged.is_some() {
            row.output_megapixels = ledger.output_megapixels(src.schema, &a)?;
        }
        if a.state == "uncertain" && a.resent {
            self.report.possible_double_charges += 1;
        }
        self.reconcile(&a, &placed, estimated, src)?;
        let day_text;
        let day = match a.at {
            At::Millis(ms) => {
                day_text = self.day_texts.of(ms);
                std::str::from_utf8(&day_text).unwrap_or_default()
            }
            At::Text(t) => t.get(..10).unwrap_or(t),
        };
        self.add_day(day, &row)?;
        let key = match by {
            GroupBy::Day => day,
            GroupBy::Month => day.get(..7).unwrap_or(day),
            GroupBy::Batch => a.batch.unwrap_or("(none)"),
            GroupBy::State => a.state,
            GroupBy::Tag(_) => a.tag.unwrap_or("(untagged)"),
            // The grouping column holds the local input's folder for this grouping.
            GroupBy::Folder => a.tag.unwrap_or("(not a local file)"),
            GroupBy::Ledger => src.label,
        };
        match self.groups.get_mut(key) {
            Some(group) => group.add(&row)?,
            None => {
                let mut group = ReportRow {
                    group: key.to_string(),
                    ..ReportRow::default()
                };
                group.add(&row)?;
                self.groups.insert(key.to_string(), group);
            }
        }
        Ok(())
    }

    /// What the attempt adds to the reconciliation of estimates and charges.
    fn reconcile(
        &mut self,
        a: &Attempt<'_>,
        placed: &Placed,
        estimated: Decimal,
        src: &Read<'_>,
    ) -> Result<()> {
        let difference = placed.difference(estimated)?;
        let rec = &mut self.report.reconciliation;
        rec.not_sent = plus(rec.not_sent, placed.not_sent)?;
        rec.not_charged = plus(rec.not_charged, placed.not_charged)?;
        if !difference.is_zero() {
            rec.difference = plus(rec.difference, difference)?;
            rec.attempts.push(Discrepancy {
                ledger: src.several.then(|| src.label.to_string()),
                job_id: a.job_id,
                attempt: a.attempt,
                estimated: a.estimated,
                charged: placed.charged,
                difference: difference.normalize(),
                reason: reason(a),
            });
        }
        Ok(())
    }

    /// What the attempt adds to its day's spend.
    fn add_day(&mut self, day: &str, row: &ReportRow) -> Result<()> {
        if !self.days.contains_key(day) {
            let spend = DaySpend {
                day: day.to_string(),
                ..DaySpend::default()
            };
            self.days.insert(day.to_string(), spend);
        }
        let spend = self.days.get_mut(day).expect("inserted above");
        spend.charged = plus(spend.charged, row.charged)?;
        spend.charge_unknown = plus(spend.charge_unknown, row.charge_unknown)?;
        Ok(())
    }

    /// A job that joined `batch` from an earlier one: a count, with no money.
    fn add_reused(&mut self, batch: String) {
        self.groups
            .entry(batch.clone())
            .or_insert_with(|| ReportRow {
                group: batch,
                ..ReportRow::default()
            })
            .reused += 1;
    }

    /// The report, its total the sum of its groups (each attempt and reuse is in one group).
    fn finish(mut self) -> Result<Report> {
        let mut total = ReportRow {
            group: "total".into(),
            ..ReportRow::default()
        };
        for group in self.groups.values() {
            total.add(group)?;
        }
        self.report.total = total;
        self.report.rows = self.groups.into_values().collect();
        self.report.spend_by_day = self.days.into_values().collect();
        Ok(self.report)
    }
}

/// Why an attempt's charge differs from its estimate, as far as the ledger can tell.
fn reason(a: &Attempt<'_>) -> String {
    if a.estimated.is_none() {
        return "there was no estimate: the input size was not known when it was sent".into();
    }
    if a.outputs > 1 {
        return format!(
            "the gateway returned {} output files and each is charged",
            a.outputs
        );
    }
    if let (Some((iw, ih)), Some((ow, oh))) = (a.input, a.output) {
        let expected = money::output_size(iw, ih, a.upscale);
        if expected != (u64::from(ow), u64::from(oh)) {
            return format!(
                "the output is {ow}x{oh}, not the {}x{} expected from the {iw}x{ih} input at upscale {}: the image at the URL may have changed since its size was read",
                expected.0, expected.1, a.upscale
            );
        }
    }
    if matches!(a.state, "error" | "rejected") {
        return format!("a charge was recorded although {} is not billed", a.state);
    }
    format!(
        "the estimate and the charge were made at different rates; `codeformer-ledger show {}` has both",
        a.job_id
    )
}

impl Ledger {
    /// Attempts placed in `[since, until)` (ledger timestamps), grouped.
    pub fn report(&self, since: Option<&str>, until: Option<&str>, by: &GroupBy) -> Result<Report> {
        let label = self.path.display().to_string();
        self.report_over(&label, &[], since, until, by)
    }

    /// [`Ledger::report`] over this ledger (labelled `label`) and `others`, each attached
    /// read-only for the time of the report. A request id recorded in more than one of them
    /// is counted once, in the first that has it (this one, then `others` in order), and
    /// listed in [`Report::shared`].
    pub fn report_over(
        &self,
        label: &str,
        others: &[Source],
        since: Option<&str>,
        until: Option<&str>,
        by: &GroupBy,
    ) -> Result<Report> {
        let attached = Attached::new(self, others)?;
        let mut labels = vec![label.to_string()];
        labels.extend(others.iter().map(|o| o.label.clone()));
        let schemas = attached.schemas();
        let mut builder = Builder::default();
        builder.report.since = since.map(str::to_string);
        builder.report.until = until.map(str::to_string);
        builder.report.group_by = by.to_string();
        let several = !others.is_empty();
        let mut seen = SeenRequests::default();
        for (i, schema) in schemas.iter().enumerate() {
            let src = Read {
                schema,
                label: &labels[i],
                several,
            };
            let window = (since, until);
            self.add_attempts_of(&mut builder, &mut seen, &schemas, i, &src, window, by)?;
        }
        if *by == GroupBy::Batch {
            self.add_memberships(&mut builder, since, until)?;
        }
        let shared = seen.shared;
        let mut report = builder.finish()?;
        if *by == GroupBy::Batch {
            for schema in schemas.iter().rev() {
                report.budgets.extend(self.batch_budgets_in(schema)?);
            }
        }
        if several {
            report.shared = shared_requests(shared, &labels);
            report.ledgers = labels;
        }
        drop(attached);
        Ok(report)
    }

    /// Adds the attempts of the `i`th ledger (`src`) in the window to the report, skipping
    /// those whose request id an earlier ledger already counted.
    #[allow(clippy::too_many_arguments)]
    fn add_attempts_of(
        &self,
        builder: &mut Builder,
        seen: &mut SeenRequests,
        schemas: &[String],
        i: usize,
        src: &Read<'_>,
        (since, until): (Option<&str>, Option<&str>),
        by: &GroupBy,
    ) -> Result<()> {
        let schema = src.schema;
        let tag = match by {
            GroupBy::Tag(key) => Some(key.as_str()),
            _ => None,
        };
        let multi = self.multi_output_attempts(schema)?;
        // A ledger older than local inputs has no `uploads`: none of its jobs has a folder.
        let folder = *by == GroupBy::Folder && self.has_uploads(schema)?;
        let mut stmt = self
            .conn
            .prepare(&report_sql(schema, src.several, folder))?;
        // A ledger attached as it is may be older than times in milliseconds.
        let version: i64 =
            self.conn
                .query_row(&format!("PRAGMA {schema}.user_version"), [], |r| r.get(0))?;
        let mut rows = if version < super::migrations::TIMES_IN_MILLIS {
            stmt.query(rusqlite::params![since, until, tag, folder])?
        } else {
            let (since, until) = (millis_of(since)?, millis_of(until)?);
            stmt.query(rusqlite::params![since, until, tag, folder])?
        };
        while let Some(r) = rows.next()? {
            if src.several {
                if let Some(id) = r.get_ref(15)?.as_str_or_null().ok().flatten() {
                    let at = (i, r.get(0)?, r.get(1)?);
                    if seen.counted_before(self, schemas, id, at)? {
                        continue;
                    }
                }
            }
            let mut attempt = read_attempt(r)?;
            if let Some(&n) = multi.get(&(attempt.job_id, attempt.attempt)) {
                attempt.outputs = n;
            }
            builder.add(self, attempt, by, src)?;
        }
        Ok(())
    }

    /// Counts each job that joined a later batch in the window as reused there.
    fn add_memberships(
        &self,
        builder: &mut Builder,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<()> {
        let in_period = |at: &str| since.is_none_or(|s| at >= s) && until.is_none_or(|u| at < u);
        for (batch, joined_at) in self.memberships()? {
            if in_period(&joined_at) {
                builder.add_reused(batch);
            }
        }
        Ok(())
    }

    /// Whether `schema` has the `uploads` table (a ledger attached before its migration has not).
    fn has_uploads(&self, schema: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            &format!(
                "SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'uploads'"
            ),
            [],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    /// Attempts of `schema` with more than one output file, and how many each has. Read once
    /// from the outputs' index (a second file has `idx > 0`): a count per attempt in the report's
    /// query was half of its time over a million attempts.
    fn multi_output_attempts(&self, schema: &str) -> Result<HashMap<(i64, i64), i64>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT job_id, attempt, count(*) FROM {schema}.outputs
             WHERE job_id IN (SELECT job_id FROM {schema}.outputs WHERE idx > 0)
             GROUP BY job_id, attempt HAVING count(*) > 1"
        ))?;
        let mut rows = stmt.query([])?;
        let mut multi = HashMap::new();
        while let Some(r) = rows.next()? {
            multi.insert((r.get(0)?, r.get(1)?), r.get(2)?);
        }
        Ok(multi)
    }

    /// The request id of one attempt of `schema`.
    fn request_id_at(&self, schema: &str, at: (usize, i64, i64)) -> Result<String> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT coalesce(request_id, '') FROM {schema}.attempts WHERE job_id = ?1 AND attempt = ?2"
            ))?
            .query_row([at.1, at.2], |r| r.get(0))?)
    }

    fn batch_budgets_in(&self, schema: &str) -> Result<BTreeMap<String, Decimal>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT name, budget FROM {schema}.batches WHERE budget IS NOT NULL"
        ))?;
        let mut rows = stmt.query([])?;
        let mut budgets = BTreeMap::new();
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            if let Some(budget) = amount("batches.budget", text_at(r, 1)?)? {
                budgets.insert(name, budget);
            }
        }
        Ok(budgets)
    }

    /// Megapixels of an attempt's outputs: the recorded size, or every file's when the gateway
    /// returned more than one.
    fn output_megapixels(&self, schema: &str, a: &Attempt<'_>) -> Result<Decimal> {
        if a.outputs <= 1 {
            return Ok(a
                .output
                .map(|(w, h)| money::megapixels(w.into(), h.into()))
                .unwrap_or_default());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT width, height FROM {schema}.outputs WHERE job_id = ?1 AND attempt = ?2
             AND width IS NOT NULL AND height IS NOT NULL"
        ))?;
        let sizes = stmt.query_map([a.job_id, a.attempt], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?))
        })?;
        let mut sum = DecimalSum::new();
        for size in sizes {
            let (w, h) = size?;
            sum.add(money::megapixels(w.into(), h.into()))?;
        }
        Ok(sum.total())
    }
}

/// The request ids recorded in more than one ledger, each with where it was counted.
fn shared_requests(shared: BTreeMap<String, Vec<usize>>, labels: &[String]) -> Vec<SharedRequest> {
    shared
        .into_iter()
        .map(|(request_id, ledgers)| SharedRequest {
            request_id,
            counted_in: labels[ledgers[0]].clone(),
            ledgers: ledgers.iter().map(|&i| labels[i].clone()).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn every_state_places_its_estimate_once() {
        let e = dec("0.0084");
        let placed = |state, charged| place(state, e, charged);
        assert_eq!(placed("completed", Some(e)).charged, e);
        assert_eq!(placed("completed", None).charge_unknown, e);
        assert_eq!(placed("failed", None).charge_unknown, e);
        assert_eq!(placed("uncertain", None).charge_unknown, e);
        assert_eq!(placed("queued", None).charge_unknown, e);
        assert_eq!(placed("error", Some(Decimal::ZERO)).not_charged, e);
        assert_eq!(placed("error", None).not_charged, e);
        assert_eq!(placed("rejected", Some(Decimal::ZERO)).not_charged, e);
        assert_eq!(placed("held", None).not_sent, e);
        assert_eq!(placed("skipped", None).not_sent, e);
        // Whatever is placed, estimate + difference = what the buckets hold.
        for state in ["completed", "failed", "error", "held", "queued"] {
            for charged in [None, Some(Decimal::ZERO), Some(e), Some(dec("0.0126"))] {
                let p = place(state, e, charged);
                let d = p.difference(e).unwrap();
                let held = p.charged + p.charge_unknown + p.not_charged + p.not_sent;
                assert_eq!(e + d, held, "{state} {charged:?}");
            }
        }
        // Only a recorded charge makes a difference, and only against the expected bucket.
        assert!(place("completed", e, Some(e))
            .difference(e)
            .unwrap()
            .is_zero());
        assert!(place("error", e, Some(Decimal::ZERO))
            .difference(e)
            .unwrap()
            .is_zero());
        assert!(place("failed", e, None).difference(e).unwrap().is_zero());
        assert!(place("held", e, None).difference(e).unwrap().is_zero());
    }

    #[test]
    fn a_charge_above_its_estimate_is_a_difference() {
        let p = place("completed", dec("0.0084"), Some(dec("0.0126")));
        assert_eq!(p.difference(dec("0.0084")).unwrap(), dec("0.0042"));
    }

    fn ledger_with_one_job() -> (tempfile::TempDir, Ledger, i64) {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
        let mut job =
            super::super::NewJob::new(crate::params::JobParams::new("https://x.test/a.png"));
        job.size = Some((1000, 1000));
        let id = ledger.enqueue(&[job]).unwrap()[0].id;
        (dir, ledger, id)
    }

    /// Regression: a completed attempt whose output was not downloaded yet was reported as
    /// charged 0 and not as charge unknown, so the report understated what the gateway bills.
    #[test]
    fn a_completed_attempt_not_yet_downloaded_is_charge_unknown() {
        let (_dir, mut ledger, id) = ledger_with_one_job();
        let change = super::super::Change {
            state: Some(super::super::JobState::Completed),
            finished: true,
            ..Default::default()
        };
        let event = super::super::Event::new(Some(id), Some(1), "poll");
        ledger
            .record(vec![super::super::JobUpdate::new(id, 1, change, event)])
            .unwrap();
        let report = ledger.report(None, None, &GroupBy::State).unwrap();
        assert_eq!(report.total.completed, 1);
        assert_eq!(report.total.charged, Decimal::ZERO);
        assert_eq!(report.total.charge_unknown, dec("0.0084"));
        assert!(report.reconciliation.attempts.is_empty());
    }

    /// Regression: an amount that did not parse was dropped from the sums without a word.
    #[test]
    fn a_corrupt_amount_is_an_error_not_a_zero() {
        let (_dir, ledger, _) = ledger_with_one_job();
        ledger
            .conn
            .execute("UPDATE attempts SET estimated_cost = '0.0O84'", [])
            .unwrap();
        let err = ledger.report(None, None, &GroupBy::Day).unwrap_err();
        assert!(err.to_string().contains("0.0O84"), "{err}");
        assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn groupings_read_back_from_their_names() {
        for by in [
            "day",
            "month",
            "batch",
            "state",
            "folder",
            "ledger",
            "tag:client",
        ] {
            assert_eq!(GroupBy::from_str(by).unwrap().to_string(), by);
        }
        assert_eq!(
            GroupBy::from_str("foo").unwrap_err(),
            "`foo` is not a grouping (day, month, batch, state, folder, ledger or tag:KEY)"
        );
        assert!(GroupBy::from_str("tag:").is_err());
    }
}
