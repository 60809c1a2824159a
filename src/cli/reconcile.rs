//! `reconcile STATEMENT.csv`: the provider's usage export against the ledger(s), read only.

use super::report::{source_error, sources};
use super::{CliError, CmdResult, Global};
use codeformer_ledger::clock;
use codeformer_ledger::ledger::{Billed, Finding, Reconcile};
use codeformer_ledger::{exit, money};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Compare the provider's statement with what the ledger recorded.
///
/// Reads a CSV usage export (one line per billed request: request id, amount in USD, date)
/// and lists, exactly: request ids billed that no ledger knows (ghosts, with the uncertain
/// attempts sent that day that may be them), charges recorded and not billed (for attempts
/// sent within the statement's days, or --since/--until), and amounts that differ, with
/// totals. A billed id whose charge the ledger did not know (FAILED, uncertain, unfinished)
/// is listed as "resolved: billed". Exit 0 when they match, 3 when they do not. Read only.
///
/// Examples:
///   codeformer-ledger reconcile usage-2026-11.csv
///   codeformer-ledger reconcile usage.csv --amount-column cost --date-column day --format json
///   codeformer-ledger reconcile usage.csv --with-ledger studio-b.db --format html -o diff.html
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReconcileArgs {
    /// The statement: CSV with a header row.
    #[arg(value_name = "STATEMENT.csv")]
    pub statement: PathBuf,
    /// The column holding the gateway's request id.
    #[arg(long, value_name = "NAME", default_value = "request_id")]
    pub request_id_column: String,
    /// The column holding the amount billed, USD (a plain decimal; a leading `$` is allowed).
    #[arg(long, value_name = "NAME", default_value = "amount_usd")]
    pub amount_column: String,
    /// The column holding the date billed (YYYY-MM-DD, or a time; UTC).
    #[arg(long, value_name = "NAME", default_value = "date")]
    pub date_column: String,
    /// Expect recorded charges of attempts sent from this date (default: the statement's first day).
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// ... and sent before this date (default: the day after the statement's last day).
    #[arg(long, value_name = "D")]
    pub until: Option<String>,
    /// Another ledger to include, read only (repeatable).
    #[arg(long = "with-ledger", value_name = "PATH")]
    pub with_ledger: Vec<PathBuf>,
    /// Output format; every amount is exact in all of them.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReconcileFormat,
    /// Write to this file (through a temporary file and a rename) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileFormat {
    Table,
    Json,
    Csv,
    /// A self-contained page (inline CSS; no scripts or links).
    Html,
}

pub fn run(global: &Global, args: ReconcileArgs) -> CmdResult {
    let columns = Columns {
        request_id: &args.request_id_column,
        amount: &args.amount_column,
        date: &args.date_column,
    };
    let statement = read_statement(&args.statement, &columns)?;
    let since = bound("since", &args.since)?.or_else(|| first_day(&statement));
    let until = bound("until", &args.until)?.or_else(|| day_after_last(&statement));
    let ledger = global.open_ledger_read_only()?;
    let others = sources(&global.ledger, &args.with_ledger)?;
    let result = ledger
        .reconcile(
            &global.ledger.display().to_string(),
            &others,
            statement,
            since.as_deref(),
            until.as_deref(),
        )
        .map_err(source_error)?;
    let mut text = Vec::new();
    match args.format {
        ReconcileFormat::Json => writeln!(
            text,
            "{}",
            serde_json::to_string_pretty(&result).map_err(std::io::Error::other)?
        )?,
        ReconcileFormat::Csv => write_csv(&mut text, &result)?,
        ReconcileFormat::Table => write_table(&mut text, &result)?,
        ReconcileFormat::Html => {
            text.extend_from_slice(super::report::reconcile_page(&result).as_bytes())
        }
    }
    match &args.output {
        Some(path) => super::report::write_file(path, &text)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)?;
            out.flush()?;
        }
    }
    Ok(if result.matches {
        exit::DONE
    } else {
        exit::SOME_FAILED
    })
}

fn bound(flag: &str, text: &Option<String>) -> Result<Option<String>, CliError> {
    text.as_deref()
        .map(|t| {
            super::prices::parse_date(t)
                .map(clock::stamp)
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "--{flag} `{t}` is not a date (YYYY-MM-DD) or an RFC 3339 time"
                    ))
                })
        })
        .transpose()
}

fn first_day(statement: &[Billed]) -> Option<String> {
    let day = statement.iter().map(|b| b.day.as_str()).min()?;
    Some(format!("{day}T00:00:00.000Z"))
}

fn day_after_last(statement: &[Billed]) -> Option<String> {
    let day = statement.iter().map(|b| b.day.as_str()).max()?;
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    let next = date.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc();
    Some(clock::stamp(next))
}

/// The statement's column names.
struct Columns<'a> {
    request_id: &'a str,
    amount: &'a str,
    date: &'a str,
}

/// Reads the statement; any problem is exit 2 naming `file:line:column`.
fn read_statement(path: &Path, columns: &Columns<'_>) -> Result<Vec<Billed>, CliError> {
    let name = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("{name}: cannot read the statement: {e}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(std::io::BufReader::new(file));
    let csv_error = |e: csv::Error| {
        let at = e
            .position()
            .map(|p| format!("{name}:{}", p.line()))
            .unwrap_or_else(|| name.to_string());
        CliError::usage(format!("{at}: {}", csv_message(&e)))
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        if let Some(first) = seen.insert(h.as_str(), i) {
            return Err(CliError::usage(format!(
                "{name}:1:{}: the header names `{h}` twice (columns {} and {}); each column needs its own name",
                i + 1,
                first + 1,
                i + 1
            )));
        }
    }
    let find = |wanted: &str, flag: &str| {
        headers.iter().position(|h| h == wanted).ok_or_else(|| {
            CliError::usage(format!(
                "{name}:1: no column `{wanted}` in the header ({}); name the right one with {flag}",
                headers.join(", ")
            ))
        })
    };
    let id_col = find(columns.request_id, "--request-id-column")?;
    let amount_col = find(columns.amount, "--amount-column")?;
    let date_col = find(columns.date, "--date-column")?;
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Billed> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field = |col: usize, what: &str| {
            let value = record.get(col).unwrap_or("").trim();
            if value.is_empty() {
                return Err(CliError::usage(format!(
                    "{name}:{line}:{} ({}): the {what} is empty",
                    col + 1,
                    headers[col]
                )));
            }
            Ok(value)
        };
        let request_id = field(id_col, "request id")?;
        let amount_text = field(amount_col, "amount")?;
        let amount = parse_amount(amount_text).ok_or_else(|| {
            CliError::usage(format!(
                "{name}:{line}:{} ({}): `{amount_text}` is not an amount in USD (a plain decimal such as 0.0084)",
                amount_col + 1,
                headers[amount_col]
            ))
        })?;
        let date_text = field(date_col, "date")?;
        let day = super::prices::parse_date(date_text)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{name}:{line}:{} ({}): `{date_text}` is not a date (YYYY-MM-DD or an RFC 3339 time)",
                    date_col + 1,
                    headers[date_col]
                ))
            })?;
        match by_id.get(request_id) {
            Some(&i) => {
                let b = &mut out[i];
                b.amount = money::exact_add(b.amount, amount).ok_or_else(|| {
                    CliError::usage(format!(
                        "{name}:{line}:{}: the amounts of `{request_id}` do not add up exactly",
                        amount_col + 1
                    ))
                })?;
                b.lines.push(line);
            }
            None => {
                by_id.insert(request_id.to_string(), out.len());
                out.push(Billed {
                    request_id: request_id.to_string(),
                    amount,
                    day,
                    lines: vec![line],
                });
            }
        }
    }
    Ok(out)
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("this line has {len} fields, the header {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "this line is not UTF-8 text".into(),
        _ => e.to_string(),
    }
}

/// A statement amount: a plain decimal, optionally negative (a credit), optionally with `$`.
fn parse_amount(text: &str) -> Option<Decimal> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r.trim_start()),
        None => (false, text),
    };
    let rest = rest.strip_prefix('$').unwrap_or(rest);
    let value = money::parse_exact(rest).ok()?;
    if rest.starts_with('-') {
        return None;
    }
    Some(if negative { -value } else { value })
}

fn opt(d: Option<Decimal>) -> String {
    d.map(money::exact).unwrap_or_default()
}

fn signed(d: Decimal) -> String {
    if d.is_sign_positive() && !d.is_zero() {
        format!("+{}", money::exact(d))
    } else {
        money::exact(d)
    }
}

const CSV_HEADER: &str = "kind,request_id,ledger,job_id,attempt,state,billed_usd,recorded_usd,difference_usd,statement_lines,note";

fn write_csv(out: &mut impl Write, r: &Reconcile) -> std::io::Result<()> {
    writeln!(out, "{CSV_HEADER}")?;
    let field = super::jobs::csv_field;
    for f in &r.findings {
        let a = f.attempt.as_ref();
        let cells = [
            f.kind.as_str().to_string(),
            f.request_id.clone(),
            a.map(|a| a.ledger.clone()).unwrap_or_default(),
            a.map(|a| a.job_id.to_string()).unwrap_or_default(),
            a.map(|a| a.attempt.to_string()).unwrap_or_default(),
            a.map(|a| a.state.clone()).unwrap_or_default(),
            opt(f.billed),
            opt(f.recorded),
            money::exact(f.difference),
            lines(&f.lines, ";"),
            f.note.clone(),
        ];
        let cells: Vec<String> = cells.iter().map(|c| field(c)).collect();
        writeln!(out, "{}", cells.join(","))?;
    }
    for (label, tally) in super::report::reconcile_totals(r) {
        writeln!(
            out,
            "total_{label},{},,,,,{},,,,",
            tally.count,
            money::exact(tally.usd)
        )?;
    }
    Ok(())
}

fn lines(lines: &[u64], sep: &str) -> String {
    lines
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The totals in the order they are shown: (label, tally).
fn write_table(out: &mut impl Write, r: &Reconcile) -> std::io::Result<()> {
    writeln!(
        out,
        "{}",
        if r.matches {
            "The statement matches the ledger."
        } else {
            "The statement and the ledger differ."
        }
    )?;
    if let (Some(s), Some(u)) = (&r.since, &r.until) {
        writeln!(
            out,
            "Charges recorded for attempts sent from {s} until {u} are expected on it."
        )?;
    }
    if r.ledgers.len() > 1 {
        writeln!(out, "Ledgers: {}", r.ledgers.join(", "))?;
    }
    writeln!(
        out,
        "\n{:<26} {:>7} {:>14}",
        "totals (USD)", "ids", "amount"
    )?;
    for (label, tally) in super::report::reconcile_totals(r) {
        writeln!(
            out,
            "  {:<24} {:>7} {:>14}",
            label.replace('_', " "),
            tally.count,
            money::exact(tally.usd)
        )?;
    }
    for f in &r.findings {
        writeln!(out, "\n{}", finding_line(f))?;
        writeln!(out, "  {}", f.note)?;
        for c in &f.candidates {
            writeln!(
                out,
                "  candidate: job {} attempt {} ({}), uncertain, sent {}, estimate {}",
                c.job_id,
                c.attempt,
                c.ledger,
                c.sent_at,
                opt(c.estimated)
            )?;
        }
        if let Some(a) = &f.attempt {
            writeln!(out, "  {}", super::report::attempt_show_command(a, r))?;
        }
    }
    Ok(())
}

/// The one-line summary of a finding.
pub fn finding_line(f: &Finding) -> String {
    let at = if f.lines.is_empty() {
        String::new()
    } else {
        format!(" (statement line {})", lines(&f.lines, ", "))
    };
    let job = f
        .attempt
        .as_ref()
        .map(|a| format!(", job {} attempt {} ({})", a.job_id, a.attempt, a.state))
        .unwrap_or_default();
    format!(
        "{} {}{at}{job}: billed {}, recorded {}, difference {}",
        f.kind.as_str().replace('_', " "),
        f.request_id,
        f.billed.map(money::exact).unwrap_or_else(|| "-".into()),
        f.recorded.map(money::exact).unwrap_or_else(|| "-".into()),
        signed(f.difference)
    )
}
