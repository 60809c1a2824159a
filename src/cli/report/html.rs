//! `report --format html`: one self-contained page (inline CSS, an inline SVG chart of spend
//! over time; no scripts, fonts, images or links), so it can be mailed or archived as is.
//! Every value from the ledger is escaped; amounts in the tables are exact, and only the
//! chart's geometry and axis labels are rounded.

use super::{discrepancy_cells, fields, notes, reconciliation_lines, HEADER};
use codeformer_ledger::clock;
use codeformer_ledger::ledger::{DaySpend, Report};
use codeformer_ledger::money;
use rust_decimal::Decimal;
use std::fmt::Write;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2933;margin:2rem auto;max-width:1100px;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}
.muted{color:#616e7c}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #d9e2ec;border-radius:6px;padding:.6rem 1rem;min-width:10rem}
.card b{display:block;font-size:1.2rem;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .5rem;border-bottom:1px solid #e4e7eb;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
td.reason{text-align:left;white-space:normal}
thead th{background:#f5f7fa;position:sticky;top:0}
tfoot td{font-weight:600;border-top:2px solid #9aa5b1}
.chart{width:100%;height:auto;max-width:820px}
.chart text{font-size:11px;fill:#52606d}
.key span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}
";

/// The whole page.
pub fn page(report: &Report) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>codeformer-ledger cost report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    let _ = write!(
        html,
        "<h1>Cost report</h1>\n<p class=\"muted\">{} grouped by {}; amounts in USD, exact. Generated {}.</p>\n",
        escape(&period(report)),
        escape(&report.group_by),
        escape(&clock::now_stamp())
    );
    cards(&mut html, report);
    html.push_str("<h2>Spend over time</h2>\n");
    html.push_str(&chart(&report.spend_by_day));
    groups(&mut html, report);
    reconciliation(&mut html, report);
    html.push_str("</body>\n</html>\n");
    html
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
    for (label, value) in [
        ("charged", money::exact(t.charged)),
        (
            "charge unknown (worst case)",
            money::exact(t.charge_unknown),
        ),
        ("estimated", money::exact(t.estimated)),
        ("attempts", t.jobs.to_string()),
        ("output megapixels", money::exact(t.output_megapixels)),
    ] {
        let _ = writeln!(
            html,
            "<div class=\"card\"><span class=\"muted\">{}</span><b>{}</b></div>",
            escape(label),
            escape(&value)
        );
    }
    html.push_str("</div>\n");
}

fn groups(html: &mut String, report: &Report) {
    let _ = write!(
        html,
        "<h2>By {}</h2>\n<table>\n<thead><tr>",
        escape(&report.group_by)
    );
    for h in HEADER {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in &report.rows {
        row_html(html, &fields(row));
    }
    html.push_str("</tbody>\n<tfoot>\n");
    row_html(html, &fields(&report.total));
    html.push_str("</tfoot>\n</table>\n");
    for note in notes(report) {
        let _ = writeln!(html, "<p class=\"muted\">{}</p>", escape(&note));
    }
}

fn row_html(html: &mut String, cells: &[String]) {
    html.push_str("<tr>");
    for c in cells {
        let _ = write!(html, "<td>{}</td>", escape(c));
    }
    html.push_str("</tr>\n");
}

fn reconciliation(html: &mut String, report: &Report) {
    html.push_str("<h2>Reconciliation</h2>\n<table style=\"width:auto\">\n");
    for (label, amount) in reconciliation_lines(report) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(label),
            escape(&amount)
        );
    }
    html.push_str("</table>\n");
    let attempts = &report.reconciliation.attempts;
    if attempts.is_empty() {
        html.push_str("<p class=\"muted\">Every recorded charge equals its estimate.</p>\n");
        return;
    }
    html.push_str(
        "<h2>Charges that differ from their estimate</h2>\n<table>\n<thead><tr><th>job</th>\
         <th>attempt</th><th>estimated</th><th>charged</th><th>difference</th>\
         <th>reason</th></tr></thead>\n<tbody>\n",
    );
    for d in attempts {
        let cells = discrepancy_cells(d);
        html.push_str("<tr>");
        for (i, c) in cells.iter().enumerate() {
            let class = if i == cells.len() - 1 {
                " class=\"reason\""
            } else {
                ""
            };
            let _ = write!(html, "<td{class}>{}</td>", escape(c));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n");
}

/// Days with spend, as bars per day (gaps filled) or, over more than three months, per month.
fn buckets(days: &[DaySpend]) -> Vec<DaySpend> {
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let (Some(first), Some(last)) = (
        days.first().and_then(|d| parse(&d.day)),
        days.last().and_then(|d| parse(&d.day)),
    ) else {
        return days.to_vec();
    };
    let daily = (last - first).num_days() <= 92;
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
const WIDTH: u32 = 820;
const HEIGHT: u32 = 260;
const LEFT: u32 = 80;
const BOTTOM: u32 = 30;
const TOP: u32 = 12;

/// The inline SVG: stacked bars of charged and charge-unknown spend.
fn chart(days: &[DaySpend]) -> String {
    let buckets = buckets(days);
    if buckets.is_empty() {
        return "<p class=\"muted\">No attempts in this period.</p>\n".into();
    }
    let total =
        |b: &DaySpend| money::exact_add(b.charged, b.charge_unknown).unwrap_or(Decimal::MAX);
    let max = buckets.iter().map(total).max().unwrap_or_default();
    let plot_w = Decimal::from(WIDTH - LEFT - 10);
    let plot_h = Decimal::from(HEIGHT - TOP - BOTTOM);
    let n = Decimal::from(buckets.len());
    let slot = plot_w / n;
    let bar_w = (slot * Decimal::new(8, 1))
        .min(Decimal::from(48))
        .round_dp(2);
    let scale = |v: Decimal| -> Decimal {
        if max.is_zero() {
            return Decimal::ZERO;
        }
        v.checked_mul(plot_h)
            .and_then(|x| x.checked_div(max))
            .unwrap_or_default()
            .round_dp(2)
    };
    let base = Decimal::from(HEIGHT - BOTTOM);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" role=\"img\" aria-label=\"Spend over time\">"
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#9aa5b1\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\" stroke=\"#9aa5b1\"/>",
        WIDTH - 10
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text>\
         <text x=\"{}\" y=\"{base}\" text-anchor=\"end\" font-size=\"11\">$0</text>",
        LEFT - 6,
        TOP + 10,
        escape(&money::display(max)),
        LEFT - 6
    );
    let every = buckets.len().div_ceil(6);
    for (i, b) in buckets.iter().enumerate() {
        let x = (Decimal::from(LEFT) + slot * Decimal::from(i) + (slot - bar_w) / Decimal::TWO)
            .round_dp(2);
        let h_charged = scale(b.charged);
        let h_all = scale(total(b));
        let tip = format!(
            "{}: charged {} USD, charge unknown {} USD",
            b.day,
            money::exact(b.charged),
            money::exact(b.charge_unknown)
        );
        let _ = writeln!(
            svg,
            "<g><title>{}</title><rect fill=\"{UNKNOWN}\" x=\"{x}\" y=\"{}\" width=\"{bar_w}\" height=\"{}\"/>\
             <rect fill=\"{CHARGED}\" x=\"{x}\" y=\"{}\" width=\"{bar_w}\" height=\"{h_charged}\"/></g>",
            escape(&tip),
            base - h_all,
            h_all - h_charged,
            base - h_charged,
        );
        if i % every == 0 || i == buckets.len() - 1 {
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                (x + bar_w / Decimal::TWO).round_dp(2),
                HEIGHT - BOTTOM + 16,
                escape(&b.day)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg.push_str(&format!(
        "<p class=\"key muted\"><span style=\"background:{CHARGED}\"></span>charged\
         <span style=\"background:{UNKNOWN}\"></span>charge unknown (worst case)</p>\n"
    ));
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
    use codeformer_ledger::ledger::ReportRow;
    use std::str::FromStr;

    fn day(d: &str, charged: &str) -> DaySpend {
        DaySpend {
            day: d.into(),
            charged: Decimal::from_str(charged).unwrap(),
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
    fn gaps_between_days_are_filled_and_long_spans_go_monthly() {
        let b = buckets(&[day("2026-03-30", "1"), day("2026-04-02", "2")]);
        let labels: Vec<&str> = b.iter().map(|b| b.day.as_str()).collect();
        assert_eq!(
            labels,
            ["2026-03-30", "2026-03-31", "2026-04-01", "2026-04-02"]
        );
        let b = buckets(&[
            day("2026-01-05", "1"),
            day("2026-01-20", "2"),
            day("2026-06-01", "3"),
        ]);
        let labels: Vec<&str> = b.iter().map(|b| b.day.as_str()).collect();
        assert_eq!(
            labels,
            ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]
        );
        assert_eq!(b[0].charged, Decimal::from(3));
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = Report {
            group_by: "tag:client".into(),
            rows: vec![ReportRow {
                group: "<img src=x onerror=alert(1)>".into(),
                jobs: 1,
                charged: Decimal::from_str("0.0084").unwrap(),
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
        // The only URL is the SVG namespace, which is never fetched.
        assert_eq!(page.matches("http").count(), 1);
        assert!(page.contains("<svg"));
        assert!(page.contains("0.0084"));
    }
}
