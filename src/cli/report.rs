//! `report`: the cost audit, read only and offline.

use super::{CliError, CmdResult, Global};
use codeformer_ledger::ledger::{GroupBy, Report, ReportRow};
use codeformer_ledger::money;
use std::io::Write;

/// Cost audit: spend grouped by day, month, batch, state or tag.
///
/// Per group: jobs, outcomes, output megapixels, estimated, charged and charge-unknown cost;
/// a total that equals the sum of the rows to the last digit; and the attempts whose charge
/// differs from their estimate. Read only; works offline and while an engine runs.
///
/// Examples:
///   codeformer-ledger report --by month
///   codeformer-ledger report --since 2026-11-01 --by tag:client --format csv
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportArgs {
    /// From this date (YYYY-MM-DD) or time, inclusive.
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// Until this date or time, exclusive.
    #[arg(long, value_name = "D")]
    pub until: Option<String>,
    /// Grouping: day, month, batch, state or tag:KEY.
    #[arg(long, value_name = "BY", default_value = "day", value_parser = by)]
    pub by: GroupBy,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

fn by(text: &str) -> Result<GroupBy, String> {
    text.parse()
}

fn bound(flag: &str, text: &Option<String>) -> Result<Option<String>, CliError> {
    text.as_deref()
        .map(|t| {
            super::prices::parse_date(t)
                .map(codeformer_ledger::clock::stamp)
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "--{flag} `{t}` is not a date (YYYY-MM-DD) or an RFC 3339 time"
                    ))
                })
        })
        .transpose()
}

pub fn run(global: &Global, args: ReportArgs) -> CmdResult {
    let since = bound("since", &args.since)?;
    let until = bound("until", &args.until)?;
    let ledger = global.open_ledger_read_only()?;
    let report = ledger.report(since.as_deref(), until.as_deref(), &args.by)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        ReportFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )?,
        ReportFormat::Csv => write_csv(&mut out, &report)?,
        ReportFormat::Table => write_table(&mut out, &report)?,
    }
    out.flush()?;
    Ok(codeformer_ledger::exit::DONE)
}

const HEADER: [&str; 12] = [
    "group",
    "jobs",
    "completed",
    "failed",
    "errored",
    "rejected",
    "uncertain",
    "stalled",
    "output_mp",
    "estimated_usd",
    "charged_usd",
    "charge_unknown_usd",
];

fn fields(row: &ReportRow) -> [String; 12] {
    [
        row.group.clone(),
        row.jobs.to_string(),
        row.completed.to_string(),
        row.failed.to_string(),
        row.errored.to_string(),
        row.rejected.to_string(),
        row.uncertain.to_string(),
        row.stalled.to_string(),
        money::exact(row.output_megapixels),
        money::exact(row.estimated),
        money::exact(row.charged),
        money::exact(row.charge_unknown),
    ]
}

fn write_csv(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(out, "{}", HEADER.join(","))?;
    for row in report.rows.iter().chain(std::iter::once(&report.total)) {
        let f: Vec<String> = fields(row)
            .iter()
            .map(|f| super::jobs::csv_field(f))
            .collect();
        writeln!(out, "{}", f.join(","))?;
    }
    Ok(())
}

fn write_table(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let line = |out: &mut dyn Write, f: &[String]| {
        writeln!(
            out,
            "{:<16} {:>6} {:>9} {:>6} {:>7} {:>8} {:>9} {:>7} {:>12} {:>14} {:>14} {:>14}",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]
        )
    };
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    line(out, &header)?;
    for row in report.rows.iter().chain(std::iter::once(&report.total)) {
        line(out, &fields(row))?;
    }
    if report.total.charge_unknown > rust_decimal::Decimal::ZERO {
        writeln!(out, "\ncharge unknown: FAILED, stalled and uncertain jobs may or may not be billed by the gateway; their estimates are shown as the worst case.")?;
    }
    if report.possible_double_charges > 0 {
        writeln!(
            out,
            "possible double charges: {} uncertain attempt(s) were sent again.",
            report.possible_double_charges
        )?;
    }
    if !report.reconciliation.is_empty() {
        writeln!(out, "\nreconciliation (charge differs from estimate):")?;
        for d in &report.reconciliation {
            writeln!(
                out,
                "  job {} attempt {}: estimated {} USD, charged {} USD: {}",
                d.job_id,
                d.attempt,
                money::exact(d.estimated),
                money::exact(d.charged),
                d.reason
            )?;
        }
    }
    Ok(())
}
