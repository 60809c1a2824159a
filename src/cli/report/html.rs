//! `report --format html`: one self-contained page (inline CSS and inline SVG charts; no
//! scripts, fonts, images, links or URLs), so it can be mailed or archived as is.
//!
//! Invariants: every value from the ledger is escaped; every amount shown rounded for reading
//! carries its exact value in a `title` attribute, and the tables keep an exact column, so
//! nothing an audit needs is lost to rounding. The chart follows `--by`: spend over time for
//! day and month (bars per day or month, and the running total below as a line), a bar per
//! group otherwise (with each batch's remembered budget marked on its bar). Geometry is
//! computed here, not by a browser, so labels are placed (or left out) so that they never
//! overlap.

use super::words::{
    attempt_show_command, notes, reconcile_totals, reconciliation_lines, show_command,
};
use codeformer_ledger::clock;
use codeformer_ledger::ledger::{DaySpend, Discrepancy, Finding, Reconcile, Report, ReportRow};
use codeformer_ledger::money;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::str::FromStr;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2933;margin:2rem auto;max-width:1100px;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.muted{color:#616e7c}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #d9e2ec;border-radius:6px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.2rem;font-variant-numeric:tabular-nums}
.card small{display:block;color:#616e7c;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .4rem;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap}
th{background:#f5f7fa;font-weight:600;vertical-align:bottom;white-space:normal}
th:first-child,td:first-child{text-align:left}
td.group{white-space:normal;overflow-wrap:anywhere;min-width:9rem;max-width:22rem}
td.exact{font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,monospace;font-size:12px;color:#52606d;padding-left:1rem}
td.reason{text-align:left;white-space:normal;min-width:20rem}
td[title]{cursor:help}
tfoot td{font-weight:600;border-top:2px solid #9aa5b1}
table.narrow{width:auto}
.chart{display:block;width:100%;height:auto;max-width:1000px}
.chart text{fill:#52606d}
.key span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}
.key span:first-child{margin-left:0}
";

/// The whole page.
pub fn page(report: &Report) -> String {
    let grouping = Grouping::of(&report.group_by);
    let mut html = String::new();
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>codeformer-ledger cost report</title>\n",
    );
    let _ = writeln!(html, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(
        html,
        "<h1>Cost report</h1>\n<p class=\"muted\">{} grouped by {}. Amounts in USD, rounded \
         for reading; hover over one for its exact value, which the exact columns and the \
         CSV and JSON formats show in full. Generated {}.</p>",
        escape(&period(report)),
        escape(&grouping.noun()),
        escape(&clock::now_stamp())
    );
    cards(&mut html, report);
    let _ = writeln!(html, "<h2>{}</h2>", escape(&grouping.chart_title()));
    html.push_str(&match grouping {
        Grouping::Day => time_chart(&buckets(&report.spend_by_day, false)),
        Grouping::Month => time_chart(&buckets(&report.spend_by_day, true)),
        Grouping::Other(_) => group_chart(&report.rows, &report.budgets),
    });
    groups(&mut html, report, &grouping);
    reconciliation(&mut html, report);
    html.push_str("</body>\n</html>\n");
    html
}

/// `reconcile --format html`: the totals and every difference, each with the `show` command of
/// its job; self-contained like the report.
pub fn reconcile_page(r: &Reconcile) -> String {
    let mut html = String::new();
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>codeformer-ledger statement reconciliation</title>\n",
    );
    let _ = writeln!(html, "<style>{STYLE}</style>\n</head>\n<body>");
    let verdict = if r.matches {
        "The statement matches the ledger."
    } else {
        "The statement and the ledger differ."
    };
    let period = match (&r.since, &r.until) {
        (Some(s), Some(u)) => {
            format!(" Charges recorded for attempts sent from {s} until {u} are expected on it.")
        }
        _ => String::new(),
    };
    let _ = writeln!(
        html,
        "<h1>Statement reconciliation</h1>\n<p>{}</p>\n<p class=\"muted\">Ledgers: {}.{} \
         Amounts in USD, exact. Generated {}.</p>",
        escape(verdict),
        escape(&r.ledgers.join(", ")),
        escape(&period),
        escape(&clock::now_stamp())
    );
    html.push_str(
        "<h2>Totals</h2>\n<div class=\"scroll\">\n<table class=\"narrow\">\n\
         <thead><tr><th></th><th>Request ids</th><th>Exact USD</th></tr></thead>\n<tbody>\n",
    );
    for (label, tally) in reconcile_totals(r) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"exact\">{}</td></tr>",
            escape(&capitalized(&label.replace('_', " "))),
            tally.count,
            escape(&money::exact(tally.usd))
        );
    }
    html.push_str("</tbody>\n</table>\n</div>\n");
    if r.findings.is_empty() {
        html.push_str("<p class=\"muted\">Every billed amount equals its recorded charge.</p>\n");
    } else {
        html.push_str(
            "<h2>Differences</h2>\n<div class=\"scroll\">\n<table>\n<thead><tr><th>Kind</th>\
             <th>Request id</th><th>Statement line</th><th>Billed, exact USD</th>\
             <th>Recorded, exact USD</th><th>Difference, exact USD</th><th>Note</th>\
             <th>Job</th></tr></thead>\n<tbody>\n",
        );
        for f in &r.findings {
            finding_row(&mut html, r, f);
        }
        html.push_str("</tbody>\n</table>\n</div>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn finding_row(html: &mut String, r: &Reconcile, f: &Finding) {
    let exact_or_dash = |d: Option<Decimal>| d.map(money::exact).unwrap_or_else(|| "-".into());
    let mut jobs: Vec<String> = f
        .attempt
        .iter()
        .map(|a| attempt_show_command(a, r))
        .collect();
    jobs.extend(
        f.candidates
            .iter()
            .map(|c| format!("maybe: {}", attempt_show_command(c, r))),
    );
    let lines: Vec<String> = f.lines.iter().map(u64::to_string).collect();
    let _ = writeln!(
        html,
        "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"exact\">{}</td><td class=\"exact\">{}</td>\
         <td class=\"exact\">{}</td><td class=\"reason\">{}</td><td class=\"reason\"><code>{}</code></td></tr>",
        escape(&f.kind.as_str().replace('_', " ")),
        escape(&f.request_id),
        escape(&lines.join(", ")),
        escape(&exact_or_dash(f.billed)),
        escape(&exact_or_dash(f.recorded)),
        escape(&money::exact(f.difference)),
        escape(&f.note),
        jobs.iter().map(|j| escape(j)).collect::<Vec<_>>().join("</code><br><code>")
    );
}

/// What `--by` asked for, as far as the page's wording and chart go.
enum Grouping {
    Day,
    Month,
    /// batch, state, tag:KEY or any other grouping: one bar per group.
    Other(String),
}

impl Grouping {
    fn of(group_by: &str) -> Grouping {
        match group_by {
            "day" => Grouping::Day,
            "month" => Grouping::Month,
            other => Grouping::Other(other.to_string()),
        }
    }

    /// "day", "batch", "client (tag)".
    fn noun(&self) -> String {
        match self {
            Grouping::Day => "day".into(),
            Grouping::Month => "month".into(),
            Grouping::Other(by) => match by.strip_prefix("tag:") {
                Some(key) => format!("{key} (tag)"),
                None => by.clone(),
            },
        }
    }

    /// The first column's header: "Day", "Batch", "Client (tag)".
    fn header(&self) -> String {
        let noun = self.noun();
        let mut chars = noun.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => "Group".into(),
        }
    }

    fn chart_title(&self) -> String {
        match self {
            Grouping::Day => "Spend per day".into(),
            Grouping::Month => "Spend per month".into(),
            Grouping::Other(_) => format!("Spend by {}", self.noun()),
        }
    }
}

fn period(report: &Report) -> String {
    match (&report.since, &report.until) {
        (None, None) => "Every attempt in the ledger,".into(),
        (Some(s), None) => format!("Attempts from {s},"),
        (None, Some(u)) => format!("Attempts before {u},"),
        (Some(s), Some(u)) => format!("Attempts from {s} until {u} (exclusive),"),
    }
}

fn cards(html: &mut String, report: &Report) {
    let t = &report.total;
    html.push_str("<div class=\"cards\">\n");
    for (label, amount) in [
        ("Charged", t.charged),
        ("Charge unknown (worst case)", t.charge_unknown),
        ("Estimated", t.estimated),
    ] {
        let exact = money::exact(amount);
        let _ = writeln!(
            html,
            "<div class=\"card\"><span class=\"muted\">{}</span><b title=\"{} USD\">{}</b>\
             <small>exact {}</small></div>",
            escape(label),
            escape(&exact),
            escape(&readable(amount)),
            escape(&exact)
        );
    }
    let _ = writeln!(
        html,
        "<div class=\"card\"><span class=\"muted\">Attempts</span><b>{}</b></div>\n\
         <div class=\"card\"><span class=\"muted\">Output megapixels</span>\
         <b title=\"{} MP\">{}</b></div>",
        t.jobs,
        escape(&money::exact(t.output_megapixels)),
        escape(&megapixels(t.output_megapixels))
    );
    html.push_str("</div>\n");
}

/// Column headers of the groups table after the group's own.
const HEADERS: [&str; 12] = [
    "Attempts",
    "Completed",
    "Failed",
    "Errored",
    "Rejected",
    "Uncertain",
    "Stalled",
    "Output MP",
    "Estimated",
    "Charged",
    "Charge unknown",
    "Charged, exact USD",
];

fn groups(html: &mut String, report: &Report, grouping: &Grouping) {
    let _ = write!(
        html,
        "<h2>By {}</h2>\n<div class=\"scroll\">\n<table class=\"groups\">\n<thead><tr><th>{}</th>",
        escape(&grouping.noun()),
        escape(&grouping.header())
    );
    for h in HEADERS {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in &report.rows {
        row_html(html, row, &row.group);
    }
    html.push_str("</tbody>\n<tfoot>\n");
    row_html(html, &report.total, "Total");
    html.push_str("</tfoot>\n</table>\n</div>\n");
    for note in notes(report) {
        let _ = writeln!(
            html,
            "<p class=\"muted\">{}</p>",
            escape(&capitalized(&note))
        );
    }
    shared(html, report);
}

/// Request ids recorded in more than one ledger, each counted once.
fn shared(html: &mut String, report: &Report) {
    if report.ledgers.is_empty() {
        return;
    }
    let _ = writeln!(
        html,
        "<p class=\"muted\">Ledgers read: {}.</p>",
        escape(&report.ledgers.join(", "))
    );
    if report.shared.is_empty() {
        return;
    }
    html.push_str(
        "<h2>Request ids in more than one ledger</h2>\n<p class=\"muted\">Each is counted \
         once, in the first ledger listed that records it.</p>\n<div class=\"scroll\">\n<table>\n\
         <thead><tr><th>Request id</th><th>Recorded in</th><th>Counted in</th></tr></thead>\n<tbody>\n",
    );
    for s in &report.shared {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"reason\">{}</td><td class=\"reason\">{}</td></tr>",
            escape(&s.request_id),
            escape(&s.ledgers.join(", ")),
            escape(&s.counted_in)
        );
    }
    html.push_str("</tbody>\n</table>\n</div>\n");
}

fn row_html(html: &mut String, row: &ReportRow, name: &str) {
    let _ = write!(html, "<tr><td class=\"group\">{}</td>", escape(name));
    for count in [
        row.jobs,
        row.completed,
        row.failed,
        row.errored,
        row.rejected,
        row.uncertain,
        row.stalled,
    ] {
        let _ = write!(html, "<td>{count}</td>");
    }
    let _ = write!(
        html,
        "<td title=\"{} MP\">{}</td>",
        escape(&money::exact(row.output_megapixels)),
        escape(&megapixels(row.output_megapixels))
    );
    for amount in [row.estimated, row.charged, row.charge_unknown] {
        html.push_str(&money_cell(amount));
    }
    let _ = writeln!(
        html,
        "<td class=\"exact\">{}</td></tr>",
        escape(&money::exact(row.charged))
    );
}

/// A table cell with an amount rounded for reading and the exact one as its title.
fn money_cell(amount: Decimal) -> String {
    format!(
        "<td title=\"{} USD\">{}</td>",
        escape(&money::exact(amount)),
        escape(&readable(amount))
    )
}

fn reconciliation(html: &mut String, report: &Report) {
    html.push_str(
        "<h2>Reconciliation</h2>\n<div class=\"scroll\">\n<table class=\"narrow\">\n\
         <thead><tr><th></th><th>USD</th><th>Exact USD</th></tr></thead>\n<tbody>\n",
    );
    for (label, amount) in reconciliation_lines(report) {
        let value = Decimal::from_str(amount.trim_start_matches('+')).unwrap_or_default();
        let sign = if amount.starts_with('+') { "+" } else { "" };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td title=\"{} USD\">{sign}{}</td><td class=\"exact\">{}</td></tr>",
            escape(&capitalized(label)),
            escape(&amount),
            escape(&readable(value)),
            escape(&amount)
        );
    }
    html.push_str("</tbody>\n</table>\n</div>\n");
    let attempts = &report.reconciliation.attempts;
    if attempts.is_empty() {
        html.push_str("<p class=\"muted\">Every recorded charge equals its estimate.</p>\n");
        return;
    }
    html.push_str(
        "<h2>Charges that differ from their estimate</h2>\n<div class=\"scroll\">\n<table>\n\
         <thead><tr><th>Job</th><th>Attempt</th><th>Estimated</th><th>Charged</th>\
         <th>Difference</th><th>Exact difference USD</th><th>Reason</th><th>Details</th></tr></thead>\n<tbody>\n",
    );
    for d in attempts {
        discrepancy_row(html, d);
    }
    html.push_str("</tbody>\n</table>\n</div>\n");
}

fn discrepancy_row(html: &mut String, d: &Discrepancy) {
    let sign = if d.difference.is_sign_negative() {
        ""
    } else {
        "+"
    };
    let estimated = match d.estimated {
        Some(e) => money_cell(e),
        None => "<td>none</td>".into(),
    };
    let exact_difference = format!("{sign}{}", money::exact(d.difference));
    let _ = writeln!(
        html,
        "<tr><td>{}</td><td>{}</td>{estimated}{}<td title=\"{} USD\">{sign}{}</td>\
         <td class=\"exact\">{}</td><td class=\"reason\">{}</td><td class=\"exact\">{}</td></tr>",
        d.job_id,
        d.attempt,
        money_cell(d.charged),
        escape(&exact_difference),
        escape(&readable(d.difference)),
        escape(&exact_difference),
        escape(&d.reason),
        escape(&show_command(d.job_id, d.ledger.as_deref()))
    );
}

/// An amount for reading: `$1,234.57` from a dollar up, `$0.0128` below, `<$0.0001` for a
/// sliver, `$0` for nothing. The exact amount goes beside it (see [`money_cell`]).
fn readable(amount: Decimal) -> String {
    if amount.is_zero() {
        return "$0".into();
    }
    let sign = if amount.is_sign_negative() { "-" } else { "" };
    let abs = amount.abs();
    let places = if abs >= Decimal::ONE { 2 } else { 4 };
    let mut shown = abs.round_dp_with_strategy(places, RoundingStrategy::MidpointNearestEven);
    if shown.is_zero() {
        return format!("{sign}<$0.0001");
    }
    shown.rescale(places);
    format!("{sign}${}", thousands(&shown.to_string()))
}

/// Megapixels for reading: two decimal places.
fn megapixels(mp: Decimal) -> String {
    let mut shown = mp.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    if shown.is_zero() {
        return "0".into();
    }
    shown.rescale(2);
    thousands(&shown.to_string())
}

/// `1234567.5` → `1,234,567.5`.
fn thousands(number: &str) -> String {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let digits: Vec<char> = int.chars().collect();
    let mut out = String::new();
    for (i, c) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(*c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Days with spend, as bars per day (gaps filled) or per month: when `monthly`, or when the
/// days span more than three months.
fn buckets(days: &[DaySpend], monthly: bool) -> Vec<DaySpend> {
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let (Some(first), Some(last)) = (
        days.first().and_then(|d| parse(&d.day)),
        days.last().and_then(|d| parse(&d.day)),
    ) else {
        return days.to_vec();
    };
    let daily = !monthly && (last - first).num_days() <= 92;
    let key = |d: &DaySpend| {
        if daily {
            d.day.clone()
        } else {
            d.day.get(..7).unwrap_or(&d.day).to_string()
        }
    };
    let mut out: Vec<DaySpend> = Vec::new();
    let mut day = first;
    while day <= last {
        let label = day
            .format(if daily { "%Y-%m-%d" } else { "%Y-%m" })
            .to_string();
        if out.last().map(|b| b.day != label).unwrap_or(true) {
            out.push(DaySpend {
                day: label,
                ..DaySpend::default()
            });
        }
        day = match day.succ_opt() {
            Some(d) => d,
            None => break,
        };
    }
    for d in days {
        let k = key(d);
        if let Some(b) = out.iter_mut().find(|b| b.day == k) {
            b.charged = money::exact_add(b.charged, d.charged).unwrap_or(Decimal::MAX);
            b.charge_unknown =
                money::exact_add(b.charge_unknown, d.charge_unknown).unwrap_or(Decimal::MAX);
        }
    }
    out
}

const CHARGED: &str = "#2563eb";
const UNKNOWN: &str = "#f59e0b";
const CHARGED_LINE: &str = "#1e3a8a";
const UNKNOWN_LINE: &str = "#b45309";
const BUDGET: &str = "#dc2626";
const LINE_KEY: &str = "height:0;border-top:3px solid #1e3a8a";
const DASHED_KEY: &str = "height:0;border-top:3px dashed #b45309";
const BUDGET_KEY: &str = "width:3px;background:#dc2626";
const GRID: &str = "#e4e7eb";
const AXIS: &str = "#9aa5b1";
/// The chart's drawing width; the page shows it at about this many CSS pixels at 1200 px.
const WIDTH: f64 = 1000.0;
/// Average advance of a character of the 12 px sans-serif labels, with room to spare.
const CHAR_W: f64 = 7.0;
/// Groups drawn as bars; the rest are drawn together as one bar (the table has them all).
const MAX_BARS: usize = 40;
const NOTHING_SPENT: &str =
    "<p class=\"muted\">Nothing charged or awaiting a charge in this period.</p>\n";

fn total(charged: Decimal, unknown: Decimal) -> Decimal {
    money::exact_add(charged, unknown).unwrap_or(Decimal::MAX)
}

/// Round tick values from 0 to at least `max`: steps of 1, 2 or 5 times a power of ten,
/// three to six ticks.
fn ticks(max: Decimal) -> Vec<Decimal> {
    if max <= Decimal::ZERO {
        return vec![Decimal::ZERO];
    }
    let mut step = Decimal::new(1, 12);
    'search: for _ in 0..40 {
        for m in [1, 2, 5] {
            let s = step * Decimal::from(m);
            if max / s <= Decimal::from(5) {
                step = s;
                break 'search;
            }
        }
        step *= Decimal::TEN;
    }
    let count = (max / step).ceil().to_string().parse::<u32>().unwrap_or(5);
    (0..=count)
        .map(|i| (step * Decimal::from(i)).normalize())
        .collect()
}

/// A tick's label: `$0`, `$0.005`, `$1,500`.
fn tick_label(v: Decimal) -> String {
    format!("${}", thousands(&v.normalize().to_string()))
}

fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    format!("{r}")
}

fn to_f64(d: Decimal) -> f64 {
    d.to_string().parse().unwrap_or(0.0)
}

/// Which of `n` evenly spaced labels, `slot` apart and up to `chars` long, to draw so that
/// none overlaps the next: every `stride`-th one.
fn label_stride(n: usize, slot: f64, chars: usize) -> usize {
    let needed = chars as f64 * CHAR_W + 12.0;
    ((needed / slot).ceil() as usize).clamp(1, n.max(1))
}

/// The chart's key: the two bar colours, then `extra` entries (swatch style, label).
fn legend(extra: &[(&str, &str)]) -> String {
    let mut key = format!(
        "<p class=\"key muted\"><span style=\"background:{CHARGED}\"></span>charged\
         <span style=\"background:{UNKNOWN}\"></span>charge unknown (worst case)"
    );
    for (style, label) in extra {
        let _ = write!(key, "<span style=\"{style}\"></span>{}", escape(label));
    }
    key.push_str("</p>\n");
    key
}

/// The drawing area of a chart over time: margins that leave room for the y tick labels
/// and for the last date label, round ticks, and one slot per bucket.
struct TimeFrame {
    left: f64,
    right: f64,
    top: f64,
    base: f64,
    height: f64,
    slot: f64,
    ticks: Vec<Decimal>,
    top_value: f64,
}

impl TimeFrame {
    fn new(buckets: usize, max: Decimal, height: f64, left: f64, label_chars: usize) -> TimeFrame {
        let ticks = ticks(max);
        let top_value = to_f64(*ticks.last().unwrap_or(&max));
        // The last date label is centred on the last slot: leave it half its width.
        let right = (label_chars as f64 * CHAR_W / 2.0).max(16.0);
        let (top, bottom) = (14.0, 40.0);
        TimeFrame {
            left,
            right,
            top,
            base: height - bottom,
            height,
            slot: (WIDTH - left - right) / buckets.max(1) as f64,
            ticks,
            top_value,
        }
    }

    /// The left margin that fits the tick labels of every chart drawn from `maxima`, so
    /// that charts one above the other share their x positions.
    fn left_for(maxima: &[Decimal]) -> f64 {
        let chars = maxima
            .iter()
            .flat_map(|m| ticks(*m))
            .map(|t| tick_label(t).len())
            .max()
            .unwrap_or(2);
        (chars as f64 * CHAR_W + 16.0).max(48.0)
    }

    fn y(&self, v: Decimal) -> f64 {
        self.base - to_f64(v) / self.top_value * (self.base - self.top)
    }

    fn center(&self, i: usize) -> f64 {
        self.left + self.slot * (i as f64 + 0.5)
    }

    /// The `<svg>` element, the y ticks with their grid lines, and the x axis.
    fn open(&self, svg: &mut String, label: &str) {
        let _ = writeln!(
            svg,
            "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {}\" font-family=\"sans-serif\" \
             font-size=\"12\" role=\"img\" aria-label=\"{}\">",
            num(self.height),
            escape(label)
        );
        for t in &self.ticks {
            let ty = num(self.y(*t));
            let _ = writeln!(
                svg,
                "<g class=\"tick\"><line x1=\"{}\" y1=\"{ty}\" x2=\"{}\" y2=\"{ty}\" stroke=\"{GRID}\"/>\
                 <text x=\"{}\" y=\"{ty}\" dy=\"4\" text-anchor=\"end\">{}</text></g>",
                num(self.left),
                num(WIDTH - self.right),
                num(self.left - 8.0),
                escape(&tick_label(*t))
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"{AXIS}\"/>",
            l = num(self.left),
            r = num(WIDTH - self.right),
            b = num(self.base)
        );
    }

    /// As many date labels as fit without overlapping: every `stride`-th one.
    fn x_labels(&self, svg: &mut String, buckets: &[DaySpend], chars: usize) {
        let stride = label_stride(buckets.len(), self.slot, chars);
        for (i, b) in buckets.iter().enumerate() {
            if i.is_multiple_of(stride) {
                let _ = writeln!(
                    svg,
                    "<text class=\"x-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    num(self.center(i)),
                    num(self.base + 18.0),
                    escape(&b.day)
                );
            }
        }
    }
}

/// Spend over time: stacked vertical bars of charged and charge-unknown spend per day or
/// month, then, below and on the same dates, the running total as a line (charged, and with
/// the charge unknown when there is any). Each has a y axis of round ticks and as many date
/// labels as fit without overlapping.
fn time_chart(buckets: &[DaySpend]) -> String {
    let max = buckets
        .iter()
        .map(|b| total(b.charged, b.charge_unknown))
        .max()
        .unwrap_or_default();
    if buckets.is_empty() || max.is_zero() {
        return NOTHING_SPENT.into();
    }
    let running = cumulative(buckets);
    let running_max = running.last().map(|r| r.1).unwrap_or(max);
    let chars = buckets.iter().map(|b| b.day.len()).max().unwrap_or(10);
    let left = TimeFrame::left_for(&[max, running_max]);
    let frame = TimeFrame::new(buckets.len(), max, 300.0, left, chars);
    let bar_w = (frame.slot * 0.8).min(48.0);
    let mut svg = String::new();
    frame.open(&mut svg, "Spend over time");
    for (i, b) in buckets.iter().enumerate() {
        let x = frame.center(i) - bar_w / 2.0;
        let all = total(b.charged, b.charge_unknown);
        let tip = format!(
            "{}: charged {} USD, charge unknown {} USD",
            b.day,
            money::exact(b.charged),
            money::exact(b.charge_unknown)
        );
        let _ = writeln!(
            svg,
            "<g class=\"bar\"><title>{}</title><rect fill=\"{UNKNOWN}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\
             <rect fill=\"{CHARGED}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></g>",
            escape(&tip),
            num(x),
            num(frame.y(all)),
            num(bar_w),
            num(frame.y(b.charged) - frame.y(all)),
            num(x),
            num(frame.y(b.charged)),
            num(bar_w),
            num(frame.base - frame.y(b.charged)),
        );
    }
    frame.x_labels(&mut svg, buckets, chars);
    svg.push_str("</svg>\n");
    svg.push_str(&legend(&[]));
    if buckets.len() > 1 {
        svg.push_str(&running_chart(buckets, &running, left, chars));
    }
    svg
}

/// Running totals after each bucket: (charged, charged + charge unknown).
fn cumulative(buckets: &[DaySpend]) -> Vec<(Decimal, Decimal)> {
    let mut charged = Decimal::ZERO;
    let mut all = Decimal::ZERO;
    buckets
        .iter()
        .map(|b| {
            charged = money::exact_add(charged, b.charged).unwrap_or(Decimal::MAX);
            all = money::exact_add(all, total(b.charged, b.charge_unknown)).unwrap_or(Decimal::MAX);
            (charged, all)
        })
        .collect()
}

/// The running total as a line on the same dates as the bars above it; a point (with the
/// exact sums as its title) on each day or month that added to it.
fn running_chart(
    buckets: &[DaySpend],
    running: &[(Decimal, Decimal)],
    left: f64,
    chars: usize,
) -> String {
    let max = running.last().map(|r| r.1).unwrap_or_default();
    let frame = TimeFrame::new(buckets.len(), max, 240.0, left, chars);
    let with_unknown = running.iter().any(|(c, a)| c != a);
    let mut svg = String::from("<h2>Spent so far</h2>\n");
    frame.open(&mut svg, "Running total of spend");
    let line = |class: &str, style: &str, pick: fn(&(Decimal, Decimal)) -> Decimal| {
        let points: Vec<String> = running
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{},{}", num(frame.center(i)), num(frame.y(pick(r)))))
            .collect();
        format!(
            "<polyline class=\"{class}\" fill=\"none\" stroke-width=\"2\" {style} points=\"{}\"/>\n",
            points.join(" ")
        )
    };
    if with_unknown {
        svg.push_str(&line(
            "cumulative-all",
            &format!("stroke=\"{UNKNOWN_LINE}\" stroke-dasharray=\"6 4\""),
            |r| r.1,
        ));
    }
    svg.push_str(&line(
        "cumulative",
        &format!("stroke=\"{CHARGED_LINE}\""),
        |r| r.0,
    ));
    for (i, (b, (charged, all))) in buckets.iter().zip(running).enumerate() {
        if total(b.charged, b.charge_unknown).is_zero() {
            continue;
        }
        let _ = writeln!(
            svg,
            "<circle class=\"point\" cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{CHARGED_LINE}\">\
             <title>spent through {}: charged {} USD; with the charge unknown {} USD</title></circle>",
            num(frame.center(i)),
            num(frame.y(*charged)),
            escape(&b.day),
            money::exact(*charged),
            money::exact(*all)
        );
    }
    frame.x_labels(&mut svg, buckets, chars);
    svg.push_str("</svg>\n");
    let mut key =
        format!("<p class=\"key muted\"><span style=\"{LINE_KEY}\"></span>charged so far");
    if with_unknown {
        let _ = write!(
            key,
            "<span style=\"{DASHED_KEY}\"></span>with the charge unknown (worst case)"
        );
    }
    key.push_str("</p>\n");
    svg.push_str(&key);
    svg
}

/// A group's name cut to `max` characters, with an ellipsis when cut.
fn shortened(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_string();
    }
    let mut out: String = name.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The rows to draw: all of them, or, past [`MAX_BARS`], the largest and one bar for the rest.
fn bars(rows: &[ReportRow]) -> Vec<(String, Decimal, Decimal)> {
    let mut bars: Vec<(String, Decimal, Decimal)> = rows
        .iter()
        .map(|r| (r.group.clone(), r.charged, r.charge_unknown))
        .collect();
    if bars.len() <= MAX_BARS {
        return bars;
    }
    bars.sort_by(|a, b| total(b.1, b.2).cmp(&total(a.1, a.2)).then(a.0.cmp(&b.0)));
    let rest = bars.split_off(MAX_BARS - 1);
    let mut charged = Decimal::ZERO;
    let mut unknown = Decimal::ZERO;
    for (_, c, u) in &rest {
        charged = money::exact_add(charged, *c).unwrap_or(Decimal::MAX);
        unknown = money::exact_add(unknown, *u).unwrap_or(Decimal::MAX);
    }
    bars.push((
        format!("{} other groups (in the table)", rest.len()),
        charged,
        unknown,
    ));
    bars
}

/// A bar per group: horizontal stacked bars, one row each, so that names of any length and
/// any number of groups get a line of their own; the value axis has round ticks. A group with
/// a budget (a batch's remembered `--budget`) has it drawn as a line across its bar.
fn group_chart(rows: &[ReportRow], budgets: &BTreeMap<String, Decimal>) -> String {
    let bars = bars(rows);
    let budget_of = |name: &str| budgets.get(name).copied();
    let max = bars
        .iter()
        .map(|b| total(b.1, b.2).max(budget_of(&b.0).unwrap_or_default()))
        .max()
        .unwrap_or_default();
    if max.is_zero() {
        return NOTHING_SPENT.into();
    }
    let ticks = ticks(max);
    let top_value = to_f64(*ticks.last().unwrap_or(&max));
    const NAME_CHARS: usize = 36;
    let longest = bars
        .iter()
        .map(|b| b.0.chars().count().min(NAME_CHARS))
        .max()
        .unwrap_or(8);
    let left = (longest as f64 * CHAR_W + 16.0).clamp(90.0, 280.0);
    let any_budget = bars.iter().any(|b| budget_of(&b.0).is_some());
    let right = if any_budget { 200.0 } else { 90.0 };
    // A tall chart repeats the value axis's labels above its first bar.
    let labels_on_top = bars.len() > 10;
    let top = if labels_on_top { 26.0 } else { 8.0 };
    let (row_h, bottom) = (24.0, 34.0);
    let height = top + row_h * bars.len() as f64 + bottom;
    let base = height - bottom;
    let plot_w = WIDTH - left - right;
    let x = |v: f64| left + v / top_value * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {}\" font-family=\"sans-serif\" \
         font-size=\"12\" role=\"img\" aria-label=\"Spend per group\">",
        num(height)
    );
    let tick_chars = ticks
        .iter()
        .map(|t| tick_label(*t).len())
        .max()
        .unwrap_or(2);
    let stride = label_stride(ticks.len(), plot_w / ticks.len().max(2) as f64, tick_chars);
    for (i, t) in ticks.iter().enumerate() {
        let tx = num(x(to_f64(*t)));
        let mut label = String::new();
        if i.is_multiple_of(stride) {
            let mut rows = vec![base + 16.0];
            if labels_on_top {
                rows.push(top - 10.0);
            }
            for ly in rows {
                let _ = write!(
                    label,
                    "<text x=\"{tx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    num(ly),
                    escape(&tick_label(*t))
                );
            }
        }
        let _ = writeln!(
            svg,
            "<g class=\"tick\"><line x1=\"{tx}\" y1=\"{}\" x2=\"{tx}\" y2=\"{}\" stroke=\"{GRID}\"/>{label}</g>",
            num(top),
            num(base)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\" stroke=\"{AXIS}\"/>",
        l = num(left),
        t = num(top),
        b = num(base)
    );
    for (i, (name, charged, unknown)) in bars.iter().enumerate() {
        let all = total(*charged, *unknown);
        let row_top = top + row_h * i as f64;
        let bar_y = row_top + 5.0;
        let mid = row_top + row_h / 2.0;
        let (x_charged, x_all) = (x(to_f64(*charged)), x(to_f64(all)));
        let budget = budget_of(name);
        let mut tip = format!(
            "{name}: charged {} USD, charge unknown {} USD",
            money::exact(*charged),
            money::exact(*unknown)
        );
        let mut value = readable(all);
        let mut marker = String::new();
        let mut label_x = x_all;
        if let Some(budget) = budget {
            let bx = x(to_f64(budget));
            let _ = write!(tip, ", budget {} USD", money::exact(budget));
            let _ = write!(value, " of {} budget", readable(budget));
            let _ = write!(
                marker,
                "<line class=\"budget\" x1=\"{b}\" y1=\"{}\" x2=\"{b}\" y2=\"{}\" stroke=\"{BUDGET}\" stroke-width=\"3\"/>",
                num(row_top + 1.0),
                num(row_top + row_h - 1.0),
                b = num(bx)
            );
            label_x = label_x.max(bx);
        }
        let _ = writeln!(
            svg,
            "<g class=\"bar\"><title>{}</title>\
             <text x=\"{}\" y=\"{m}\" dy=\"4\" text-anchor=\"end\">{}</text>\
             <rect fill=\"{CHARGED}\" x=\"{l}\" y=\"{by}\" width=\"{}\" height=\"14\"/>\
             <rect fill=\"{UNKNOWN}\" x=\"{}\" y=\"{by}\" width=\"{}\" height=\"14\"/>\
             {marker}<text x=\"{}\" y=\"{m}\" dy=\"4\">{}</text></g>",
            escape(&tip),
            num(left - 8.0),
            escape(&shortened(name, NAME_CHARS)),
            num(x_charged - left),
            num(x_charged),
            num(x_all - x_charged),
            num(label_x + 6.0),
            escape(&value),
            m = num(mid),
            l = num(left),
            by = num(bar_y),
        );
    }
    svg.push_str("</svg>\n");
    let extra: &[(&str, &str)] = if any_budget {
        &[(BUDGET_KEY, "budget")]
    } else {
        &[]
    };
    svg.push_str(&legend(extra));
    svg
}

/// Text safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn day(day: &str, charged: &str) -> DaySpend {
        DaySpend {
            day: day.into(),
            charged: d(charged),
            charge_unknown: Decimal::ZERO,
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn amounts_read_rounded() {
        let shown: Vec<String> = [
            "0",
            "0.0084",
            "0.01275456",
            "0.00004",
            "-0.0005",
            "1.005",
            "1234567.891",
        ]
        .iter()
        .map(|t| readable(d(t)))
        .collect();
        assert_eq!(
            shown,
            [
                "$0",
                "$0.0084",
                "$0.0128",
                "<$0.0001",
                "-$0.0005",
                "$1.00",
                "$1,234,567.89"
            ]
        );
        assert_eq!(megapixels(d("6.0736")), "6.07");
        assert_eq!(megapixels(d("0")), "0");
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        let shown =
            |max: &str| -> Vec<String> { ticks(d(max)).into_iter().map(tick_label).collect() };
        assert_eq!(shown("0.0127"), ["$0", "$0.005", "$0.01", "$0.015"]);
        assert_eq!(
            shown("0.0084"),
            ["$0", "$0.002", "$0.004", "$0.006", "$0.008", "$0.01"]
        );
        assert_eq!(shown("1"), ["$0", "$0.2", "$0.4", "$0.6", "$0.8", "$1"]);
        assert_eq!(
            shown("7300"),
            ["$0", "$2,000", "$4,000", "$6,000", "$8,000"]
        );
        for max in ["0.000001", "0.0333", "0.5", "3", "99.99", "12345"] {
            let t = ticks(d(max));
            assert!((3..=7).contains(&t.len()), "{max}: {t:?}");
            assert!(*t.last().unwrap() >= d(max), "{max}: {t:?}");
        }
    }

    #[test]
    fn date_labels_never_overlap() {
        let plot = WIDTH - 80.0;
        for n in [1, 2, 7, 31, 60, 93] {
            let slot = plot / n as f64;
            let stride = label_stride(n, slot, 10);
            let gap = slot * stride as f64;
            assert!(gap >= 10.0 * CHAR_W, "{n} labels: {gap} px apart");
            // and they do not thin out more than needed
            assert!(stride == 1 || slot * ((stride - 1) as f64) < 10.0 * CHAR_W + 12.0);
        }
    }

    #[test]
    fn gaps_between_days_are_filled_and_long_spans_go_monthly() {
        let b = buckets(&[day("2026-03-30", "1"), day("2026-04-02", "2")], false);
        let labels: Vec<&str> = b.iter().map(|b| b.day.as_str()).collect();
        assert_eq!(
            labels,
            ["2026-03-30", "2026-03-31", "2026-04-01", "2026-04-02"]
        );
        let monthly = buckets(&[day("2026-03-30", "1"), day("2026-04-02", "2")], true);
        let labels: Vec<&str> = monthly.iter().map(|b| b.day.as_str()).collect();
        assert_eq!(labels, ["2026-03", "2026-04"]);
        let b = buckets(
            &[
                day("2026-01-05", "1"),
                day("2026-01-20", "2"),
                day("2026-06-01", "3"),
            ],
            false,
        );
        let labels: Vec<&str> = b.iter().map(|b| b.day.as_str()).collect();
        assert_eq!(
            labels,
            ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]
        );
        assert_eq!(b[0].charged, Decimal::from(3));
    }

    #[test]
    fn many_groups_are_drawn_as_the_largest_and_the_rest() {
        let rows: Vec<ReportRow> = (0..50)
            .map(|i| ReportRow {
                group: format!("g{i:02}"),
                charged: Decimal::from(i),
                ..ReportRow::default()
            })
            .collect();
        let b = bars(&rows);
        assert_eq!(b.len(), MAX_BARS);
        assert_eq!(b[0].0, "g49");
        let last = b.last().unwrap();
        assert_eq!(last.0, "11 other groups (in the table)");
        assert_eq!(last.1, Decimal::from((0..=10).sum::<i64>()));
        assert_eq!(shortened(&"x".repeat(60), 36).chars().count(), 36);
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = Report {
            group_by: "tag:client".into(),
            rows: vec![ReportRow {
                group: "<img src=x onerror=alert(1)>".into(),
                jobs: 1,
                charged: d("0.0084"),
                ..ReportRow::default()
            }],
            spend_by_day: vec![day("2026-03-31", "0.0084")],
            ..Report::default()
        };
        let page = page(&report);
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
        assert!(!page.to_lowercase().contains("<script"));
        assert!(!page.contains("<link"));
        assert!(!page.contains("@import"));
        assert!(!page.contains("url("));
        assert!(!page.contains("http"));
        assert!(page.contains("<svg"));
        assert!(page.contains("title=\"0.0084 USD\""));
    }
}
