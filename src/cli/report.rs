//! `report`: the cost audit, read only and offline.

mod html;
mod words;

pub use html::reconcile_page;
pub use words::{attempt_show_command, reconcile_totals};
use words::{notes, reconciliation_lines};

use super::{CliError, CmdResult, Global};
use codeformer_ledger::ledger::{GroupBy, LedgerError, Report, ReportRow, Source, MAX_OTHERS};
use codeformer_ledger::money;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Cost audit: spend grouped by day, month, batch, state, tag or ledger.
///
/// Per group: attempts (a retry is a new attempt), outcomes, output megapixels, estimated,
/// charged and charge-unknown cost; a total that equals the sum of the rows to the last digit;
/// and a reconciliation that accounts for every estimate and lists the attempts whose charge
/// differs from their estimate, with the reason. Read only; works offline and while an engine
/// runs. Dates are UTC days: --since 2026-03-01 --until 2026-04-01 is March.
///
/// --with-ledger adds other ledgers (read only, while their engines run too); a request id
/// recorded in two of them is counted once, in the first given (--ledger first), and listed.
///
/// Examples:
///   codeformer-ledger report --by month
///   codeformer-ledger report --since 2026-11-01 --by tag:client --format csv
///   codeformer-ledger report --format html --output spend.html
///   codeformer-ledger report --with-ledger studio-b.db --with-ledger studio-c.db --by ledger
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportArgs {
    /// From this date (YYYY-MM-DD, midnight UTC) or RFC 3339 time, inclusive.
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// Until this date (YYYY-MM-DD, midnight UTC) or RFC 3339 time, exclusive.
    #[arg(long, value_name = "D")]
    pub until: Option<String>,
    /// Grouping: day, month, batch, state, folder (of local inputs), ledger or tag:KEY.
    #[arg(long, value_name = "BY", default_value = "day", value_parser = by)]
    pub by: GroupBy,
    /// Output format; every amount is exact in all of them.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Write the report to this file (through a temporary file and a rename) instead of
    /// standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Another ledger to include, read only (repeatable); labelled by the path as given.
    #[arg(long = "with-ledger", value_name = "PATH")]
    pub with_ledger: Vec<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
    /// A self-contained page (inline CSS and SVG chart; no scripts, fonts or links).
    Html,
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
    if let (Some(s), Some(u)) = (&since, &until) {
        if s >= u {
            return Err(CliError::usage(format!(
                "--since `{}` is not before --until `{}`: the period is empty",
                args.since.as_deref().unwrap_or_default(),
                args.until.as_deref().unwrap_or_default()
            )));
        }
    }
    let ledger = global.open_ledger_read_only()?;
    let others = sources(&global.ledger, &args.with_ledger)?;
    let report = ledger
        .report_over(
            &global.ledger.display().to_string(),
            &others,
            since.as_deref(),
            until.as_deref(),
            &args.by,
        )
        .map_err(source_error)?;
    let mut text = Vec::new();
    render(&mut text, &report, args.format)?;
    match &args.output {
        Some(path) => write_file(path, &text)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)?;
            out.flush()?;
        }
    }
    Ok(codeformer_ledger::exit::DONE)
}

/// The `--with-ledger` paths as sources, refusing one given twice (or the main ledger again),
/// which would count its unsent jobs twice.
pub fn sources(main: &Path, paths: &[PathBuf]) -> Result<Vec<Source>, CliError> {
    if paths.len() > MAX_OTHERS {
        return Err(CliError::usage(format!(
            "{} --with-ledger given; at most {MAX_OTHERS} can be read together with --ledger",
            paths.len()
        )));
    }
    let mut seen = vec![std::fs::canonicalize(main).unwrap_or_else(|_| main.to_path_buf())];
    let mut out = Vec::new();
    for path in paths {
        let real = std::fs::canonicalize(path).map_err(|e| {
            CliError::usage(format!(
                "--with-ledger {}: {e}; nothing was read or changed",
                path.display()
            ))
        })?;
        if seen.contains(&real) {
            return Err(CliError::usage(format!(
                "--with-ledger {}: this ledger is already in the report (as --ledger or an \
                 earlier --with-ledger)",
                path.display()
            )));
        }
        seen.push(real);
        out.push(Source {
            path: path.clone(),
            label: path.display().to_string(),
        });
    }
    Ok(out)
}

/// A `--with-ledger` file that is missing or not a ledger is bad input (exit 2).
pub fn source_error(e: LedgerError) -> CliError {
    match e {
        LedgerError::NotALedger { .. }
        | LedgerError::NotALedgerFile { .. }
        | LedgerError::ForeignCompanion { .. }
        | LedgerError::Missing(_)
        | LedgerError::TooNew { .. }
        | LedgerError::Sources(_) => CliError::usage(format!("--with-ledger: {e}")),
        other => other.into(),
    }
}

/// Writes a report in one of the formats.
pub fn render(out: &mut impl Write, report: &Report, format: ReportFormat) -> std::io::Result<()> {
    match format {
        ReportFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(report).map_err(std::io::Error::other)?
        ),
        ReportFormat::Csv => write_csv(out, report),
        ReportFormat::Table => write_table(out, report),
        ReportFormat::Html => out.write_all(html::page(report).as_bytes()),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so the
/// file is either the old one or the whole new one.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let fail = |e: &dyn std::fmt::Display| {
        CliError::error(format!(
            "--output {}: cannot write the report: {e}",
            path.display()
        ))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".report-").suffix(".tmp");
    #[cfg(unix)]
    {
        // A report is an ordinary file: readable as the umask allows, not owner-only.
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut temp = builder.tempfile_in(dir).map_err(|e| fail(&e))?;
    temp.write_all(bytes).map_err(|e| fail(&e))?;
    temp.as_file().sync_all().map_err(|e| fail(&e))?;
    temp.persist(path).map_err(|e| fail(&e.error))?;
    Ok(())
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
            "{:<16} {:>6} {:>9} {:>6} {:>7} {:>8} {:>9} {:>7} {:>12} {:>14} {:>14} {:>18}",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]
        )
    };
    let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    line(out, &header)?;
    for row in report.rows.iter().chain(std::iter::once(&report.total)) {
        line(out, &fields(row))?;
    }
    for note in notes(report) {
        writeln!(out, "\n{note}")?;
    }
    writeln!(out, "\nreconciliation (USD):")?;
    for (label, amount) in reconciliation_lines(report) {
        writeln!(out, "  {label:<46} {amount}")?;
    }
    if !report.reconciliation.attempts.is_empty() {
        writeln!(out, "\ncharges that differ from their estimate:")?;
        for d in &report.reconciliation.attempts {
            writeln!(out, "  {}", discrepancy_line(d))?;
        }
    }
    if !report.ledgers.is_empty() {
        writeln!(out, "\nledgers: {}", report.ledgers.join(", "))?;
    }
    if !report.shared.is_empty() {
        writeln!(
            out,
            "\nrequest ids recorded in more than one ledger (each counted once):"
        )?;
        for s in &report.shared {
            writeln!(out, "  {}", shared_line(s))?;
        }
    }
    Ok(())
}

fn shared_line(s: &codeformer_ledger::ledger::SharedRequest) -> String {
    format!(
        "{}: in {}; counted in {}",
        s.request_id,
        s.ledgers.join(", "),
        s.counted_in
    )
}

/// A discrepancy's cells: job, attempt, estimated, charged, difference (signed), reason.
fn discrepancy_cells(d: &codeformer_ledger::ledger::Discrepancy) -> [String; 6] {
    let sign = if d.difference.is_sign_negative() {
        ""
    } else {
        "+"
    };
    [
        d.job_id.to_string(),
        d.attempt.to_string(),
        d.estimated
            .map(money::exact)
            .unwrap_or_else(|| "none".into()),
        money::exact(d.charged),
        format!("{sign}{}", money::exact(d.difference)),
        d.reason.clone(),
    ]
}

fn discrepancy_line(d: &codeformer_ledger::ledger::Discrepancy) -> String {
    let [job, attempt, estimated, charged, difference, reason] = discrepancy_cells(d);
    let place = d
        .ledger
        .as_ref()
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    format!(
        "job {job}{place} attempt {attempt}: estimated {estimated}, charged {charged} ({difference}): {reason}"
    )
}
