//! Cost reports: every attempt in a period, grouped, with exact sums.

use super::{Ledger, Result};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::str::FromStr;

/// How rows are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Month,
    Batch,
    State,
    Tag(String),
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "day" => Ok(GroupBy::Day),
            "month" => Ok(GroupBy::Month),
            "batch" => Ok(GroupBy::Batch),
            "state" => Ok(GroupBy::State),
            other => match other.strip_prefix("tag:") {
                Some(key) if !key.is_empty() => Ok(GroupBy::Tag(key.to_string())),
                _ => Err(format!(
                    "`{other}` is not a grouping (day, month, batch, state or tag:KEY)"
                )),
            },
        }
    }
}

/// One group's figures. Money is exact.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReportRow {
    pub group: String,
    pub jobs: u64,
    pub completed: u64,
    pub failed: u64,
    pub errored: u64,
    pub rejected: u64,
    pub uncertain: u64,
    pub stalled: u64,
    #[serde(serialize_with = "exact")]
    pub output_megapixels: Decimal,
    #[serde(serialize_with = "exact")]
    pub estimated: Decimal,
    #[serde(serialize_with = "exact")]
    pub charged: Decimal,
    /// Worst case of attempts whose charge the gateway decides (FAILED, stalled, uncertain).
    #[serde(serialize_with = "exact")]
    pub charge_unknown: Decimal,
}

/// An attempt whose charge differs from its estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Discrepancy {
    pub job_id: i64,
    pub attempt: i64,
    #[serde(serialize_with = "exact")]
    pub estimated: Decimal,
    #[serde(serialize_with = "exact")]
    pub charged: Decimal,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub rows: Vec<ReportRow>,
    pub total: ReportRow,
    pub reconciliation: Vec<Discrepancy>,
    /// Attempts that may have been charged twice (uncertain, then sent again).
    pub possible_double_charges: u64,
}

fn exact<S: serde::Serializer>(d: &Decimal, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::money::exact(*d))
}

impl ReportRow {
    fn add(&mut self, other: &ReportRow) {
        self.jobs += other.jobs;
        self.completed += other.completed;
        self.failed += other.failed;
        self.errored += other.errored;
        self.rejected += other.rejected;
        self.uncertain += other.uncertain;
        self.stalled += other.stalled;
        self.output_megapixels += other.output_megapixels;
        self.estimated += other.estimated;
        self.charged += other.charged;
        self.charge_unknown += other.charge_unknown;
    }
}

impl Ledger {
    /// Attempts created in `[since, until)` (ledger timestamps), grouped.
    pub fn report(&self, since: Option<&str>, until: Option<&str>, by: &GroupBy) -> Result<Report> {
        let tag = match by {
            GroupBy::Tag(key) => Some(key.as_str()),
            _ => None,
        };
        let mut stmt = self.conn.prepare(
            "SELECT a.job_id, a.attempt, a.state, coalesce(a.submitted_at, j.created_at), j.batch,
                    a.estimated_cost, a.actual_cost, a.output_width, a.output_height,
                    j.input_width, j.input_height, j.upscale,
                    CASE WHEN ?3 IS NOT NULL
                         THEN (SELECT value FROM tags t WHERE t.job_id = j.id AND t.key = ?3) END,
                    CASE WHEN a.state = 'uncertain' THEN EXISTS (SELECT 1 FROM attempts b
                         WHERE b.job_id = a.job_id AND b.attempt > a.attempt) ELSE 0 END
             FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE (?1 IS NULL OR coalesce(a.submitted_at, j.created_at) >= ?1)
               AND (?2 IS NULL OR coalesce(a.submitted_at, j.created_at) < ?2)
             ORDER BY a.job_id, a.attempt",
        )?;
        let mut groups: BTreeMap<String, ReportRow> = BTreeMap::new();
        let mut report = Report::default();
        let mut rows = stmt.query(rusqlite::params![since, until, tag])?;
        while let Some(r) = rows.next()? {
            let state: String = r.get(2)?;
            let at: String = r.get(3)?;
            let batch: Option<String> = r.get(4)?;
            let estimated = dec(r.get(5)?);
            let charged = dec(r.get(6)?);
            let (ow, oh): (Option<u64>, Option<u64>) = (
                r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            );
            let key = match by {
                GroupBy::Day => at.get(..10).unwrap_or(&at).to_string(),
                GroupBy::Month => at.get(..7).unwrap_or(&at).to_string(),
                GroupBy::Batch => batch.unwrap_or_else(|| "(none)".into()),
                GroupBy::State => state.clone(),
                GroupBy::Tag(_) => r
                    .get::<_, Option<String>>(12)?
                    .unwrap_or_else(|| "(untagged)".into()),
            };
            let mut row = ReportRow {
                jobs: 1,
                ..ReportRow::default()
            };
            match state.as_str() {
                "completed" => row.completed = 1,
                "failed" => row.failed = 1,
                "error" => row.errored = 1,
                "rejected" => row.rejected = 1,
                "uncertain" => row.uncertain = 1,
                "stalled" => row.stalled = 1,
                _ => {}
            }
            if let (Some(w), Some(h)) = (ow, oh) {
                row.output_megapixels = crate::money::megapixels(w, h);
            }
            row.estimated = estimated.unwrap_or_default();
            row.charged = charged.unwrap_or_default();
            if charged.is_none() && matches!(state.as_str(), "failed" | "stalled" | "uncertain") {
                row.charge_unknown = estimated.unwrap_or_default();
            }
            if state == "uncertain" && r.get::<_, bool>(13)? {
                report.possible_double_charges += 1;
            }
            if let (Some(e), Some(c)) = (estimated, charged) {
                if e != c && state == "completed" {
                    let input: (Option<u32>, Option<u32>, u32) =
                        (r.get(9)?, r.get(10)?, r.get(11)?);
                    let reason = match (input, ow, oh) {
                        ((Some(iw), Some(ih), up), Some(w), Some(h)) if (iw as u64 * up as u64, ih as u64 * up as u64) != (w, h) => format!(
                            "the output is {w}x{h}, not the {}x{} expected from the {iw}x{ih} input: the image at the URL may have changed",
                            iw as u64 * up as u64, ih as u64 * up as u64
                        ),
                        _ => "the price changed between the estimate and the charge".to_string(),
                    };
                    report.reconciliation.push(Discrepancy {
                        job_id: r.get(0)?,
                        attempt: r.get(1)?,
                        estimated: e,
                        charged: c,
                        reason,
                    });
                }
            }
            report.total.add(&row);
            groups
                .entry(key.clone())
                .or_insert_with(|| ReportRow {
                    group: key,
                    ..ReportRow::default()
                })
                .add(&row);
        }
        report.total.group = "total".into();
        report.rows = groups.into_values().collect();
        Ok(report)
    }
}

fn dec(text: Option<String>) -> Option<Decimal> {
    text.and_then(|t| Decimal::from_str(&t).ok())
}
