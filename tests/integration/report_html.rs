//! `report --format html`, pinned by structure (no browser): headers are words, every rounded
//! amount keeps its exact value in a title attribute and the table an exact column, the chart
//! follows `--by` (a bar per group, spend over time for day and month) with round y ticks and
//! date labels that do not overlap, the running total as a line and each batch's budget, and
//! the page has no script and no URL.

use crate::common::*;
use crate::report_output::{build, download, job, pin, report, send, set_state};
use codeformer_ledger::clock;
use codeformer_ledger::ledger::{JobState, Ledger};

fn html(w: &World, by: &str) -> String {
    report(w, &["--by", by, "--format", "html"])
}

/// The text between `start` (included) and the first `end` after it (included).
fn section<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start}\n{page}"));
    let len = page[from..].find(end).expect(end) + end.len();
    &page[from..from + len]
}

/// The values of `attribute` on every element whose markup starts with `open`.
fn attributes(page: &str, open: &str, attribute: &str) -> Vec<String> {
    let needle = format!("{attribute}=\"");
    page.match_indices(open)
        .map(|(i, _)| {
            let rest = &page[i..];
            let tag_end = rest.find('>').unwrap();
            let at = rest[..tag_end].find(&needle).expect(&needle) + needle.len();
            let len = rest[at..].find('"').unwrap();
            rest[at..at + len].to_string()
        })
        .collect()
}

/// The text of every element opened by `open` (up to its next `<`).
fn texts(page: &str, open: &str) -> Vec<String> {
    page.match_indices(open)
        .map(|(i, _)| {
            let rest = &page[i..];
            let from = if open.ends_with('>') {
                open.len()
            } else {
                rest.find('>').unwrap() + 1
            };
            let len = rest[from..].find('<').unwrap();
            rest[from..from + len].to_string()
        })
        .collect()
}

#[test]
fn html_headers_are_words_and_rounded_amounts_keep_the_exact_value() {
    let w = World::new();
    build(&w);
    let page = html(&w, "batch");
    let table = section(&page, "<table class=\"groups\">", "</table>");
    let headers = texts(table, "<th>");
    assert_eq!(
        headers,
        [
            "Batch",
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
            "Charged, exact USD"
        ]
    );
    // The total: shown rounded, exact in the title and in the exact column.
    for needle in [
        "<td title=\"0.01695456 USD\">$0.0170</td>",
        "<td title=\"0.02152192 USD\">$0.0215</td>",
        "<td title=\"0.07438545 USD\">$0.0744</td>",
        "<td class=\"exact\">0.01695456</td>",
        "<td title=\"7.7536 MP\">7.75</td>",
        // the reconciliation and the card
        "<td title=\"+0.0005 USD\">+$0.0005</td><td class=\"exact\">+0.0005</td>",
        "<b title=\"0.01695456 USD\">$0.0170</b><small>exact 0.01695456</small>",
    ] {
        assert!(page.contains(needle), "{needle}\n{page}");
    }
    // Every amount shown in a table cell carries its exact value.
    let mut amounts = 0;
    for cell in page.split("<td").skip(1) {
        let (attrs, content) = cell.split_once('>').unwrap();
        let shown = content.trim_start_matches(['+', '-']);
        if shown.starts_with('$') || shown.starts_with("&lt;$") {
            amounts += 1;
            assert!(attrs.contains(" title=\""), "<td{cell}");
        }
    }
    assert!(amounts >= 20, "{amounts}");
    insta::assert_snapshot!(table, @r#"
    <table class="groups">
    <thead><tr><th>Batch</th><th>Attempts</th><th>Completed</th><th>Failed</th><th>Errored</th><th>Rejected</th><th>Uncertain</th><th>Stalled</th><th>Output MP</th><th>Estimated</th><th>Charged</th><th>Charge unknown</th><th>Charged, exact USD</th></tr></thead>
    <tbody>
    <tr><td class="group">(none)</td><td>4</td><td>1</td><td>0</td><td>0</td><td>0</td><td>1</td><td>0</td><td title="0.48 MP">0.48</td><td title="0.0424 USD">$0.0424</td><td title="0.0012 USD">$0.0012</td><td title="0.0112 USD">$0.0112</td><td class="exact">0.0012</td></tr>
    <tr><td class="group">portraits</td><td>3</td><td>1</td><td>0</td><td>0</td><td>1</td><td>0</td><td>0</td><td title="1.2 MP">1.20</td><td title="0.00487697 USD">$0.0049</td><td title="0.003 USD">$0.0030</td><td title="0 USD">$0</td><td class="exact">0.003</td></tr>
    <tr><td class="group">shoot</td><td>4</td><td>2</td><td>1</td><td>1</td><td>0</td><td>0</td><td>0</td><td title="6.0736 MP">6.07</td><td title="0.02710848 USD">$0.0271</td><td title="0.01275456 USD">$0.0128</td><td title="0.01032192 USD">$0.0103</td><td class="exact">0.01275456</td></tr>
    </tbody>
    <tfoot>
    <tr><td class="group">Total</td><td>11</td><td>4</td><td>1</td><td>1</td><td>1</td><td>1</td><td>0</td><td title="7.7536 MP">7.75</td><td title="0.07438545 USD">$0.0744</td><td title="0.01695456 USD">$0.0170</td><td title="0.02152192 USD">$0.0215</td><td class="exact">0.01695456</td></tr>
    </tfoot>
    </table>
    "#);
}

#[test]
fn html_chart_follows_by_with_a_bar_per_group_and_round_y_ticks() {
    let w = World::new();
    build(&w);

    let page = html(&w, "batch");
    assert!(page.contains("<h2>Spend by batch</h2>"), "{page}");
    let bars = texts(&page, "<g class=\"bar\"><title>");
    assert_eq!(
        bars,
        [
            "(none): charged 0.0012 USD, charge unknown 0.0112 USD",
            "portraits: charged 0.003 USD, charge unknown 0 USD",
            "shoot: charged 0.01275456 USD, charge unknown 0.01032192 USD",
        ]
    );
    let ticks = texts(&page, "<g class=\"tick\"><line");
    assert!(ticks.len() >= 3, "{page}");

    let page = html(&w, "tag:client");
    assert!(page.contains("<h2>Spend by client (tag)</h2>"), "{page}");
    assert!(page.contains("<th>Client (tag)</th>"), "{page}");
    assert_eq!(page.matches("<g class=\"bar\">").count(), 3, "{page}");
    assert!(
        page.contains("<title>globex, inc: charged 0 USD, charge unknown 0.01032192 USD</title>")
    );

    // --by day: spend over time, a bar per day; the highest day (0.02307648) under round ticks.
    let page = html(&w, "day");
    assert!(page.contains("<h2>Spend per day</h2>"), "{page}");
    let bars = texts(&page, "<g class=\"bar\"><title>");
    assert_eq!(
        bars,
        [
            "2026-03-30: charged 0.01275456 USD, charge unknown 0.01032192 USD",
            "2026-03-31: charged 0.0042 USD, charge unknown 0.0112 USD",
        ]
    );
    let chart = section(&page, "<svg", "</svg>");
    let tick_labels: Vec<String> = chart
        .split("<g class=\"tick\">")
        .skip(1)
        .map(|t| texts(t, "<text")[0].clone())
        .collect();
    // The highest day is 0.02307648 (charged and charge unknown).
    assert_eq!(
        tick_labels,
        ["$0", "$0.005", "$0.01", "$0.015", "$0.02", "$0.025"]
    );
    assert_eq!(
        texts(chart, "<text class=\"x-label\""),
        ["2026-03-30", "2026-03-31"]
    );

    let page = html(&w, "month");
    assert!(page.contains("<h2>Spend per month</h2>"), "{page}");
    assert_eq!(
        texts(&page, "<g class=\"bar\"><title>"),
        ["2026-03: charged 0.01695456 USD, charge unknown 0.02152192 USD"]
    );
}

#[test]
fn html_has_no_script_and_no_url() {
    let w = World::new();
    build(&w);
    for by in ["day", "month", "batch", "state", "tag:client"] {
        let page = html(&w, by).to_lowercase();
        for banned in [
            "<script",
            "javascript:",
            "<link",
            "<img",
            "<iframe",
            "<object",
            "@import",
            "url(",
            "http:",
            "https:",
            "src=",
            "href=",
        ] {
            assert!(!page.contains(banned), "--by {by}: {banned}");
        }
        // no event handler attribute (onload=, onclick=, ...)
        for (i, _) in page.match_indices(" on") {
            let name: String = page[i + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !page[i + 1 + name.len()..].starts_with('='),
                "--by {by}: {name}="
            );
        }
        assert!(
            page.contains("<style>") && page.contains("<svg"),
            "--by {by}"
        );
    }
}

/// Forty days of spend, every other day, plus a batch with a 60-character name: the date
/// labels drawn are far enough apart not to overlap, and the long name is cut in the chart
/// (whole in its title and in the table).
#[test]
fn html_labels_do_not_overlap_and_long_names_are_cut_in_the_chart_only() {
    let w = World::new();
    let long = "scanned-negatives-box-3-of-12-from-the-attic-at-grandmas-hou";
    assert_eq!(long.len(), 60);
    let mut ledger = Ledger::open(&w.ledger()).unwrap();
    for i in 0..40i64 {
        let day =
            chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(2 * i as u64);
        pin(&format!("{}T09:00:00Z", day.format("%Y-%m-%d")));
        let batch = if i == 0 {
            long.to_string()
        } else {
            format!("b{i:02}")
        };
        let new = ledger
            .enqueue(&[job(&format!("p{i}"), (1000, 1000), 2, Some(&batch), None)])
            .unwrap();
        let id = new[0].id;
        send(&mut ledger, &[(id, 1)], "0.0021");
        set_state(&mut ledger, id, 1, JobState::Completed);
        download(&mut ledger, id, 1, (2000, 2000));
    }
    clock::pin_thread(None);
    drop(ledger);

    let page = html(&w, "day");
    let xs: Vec<f64> = attributes(
        section(&page, "<svg", "</svg>"),
        "<text class=\"x-label\"",
        "x",
    )
    .iter()
    .map(|x| x.parse().unwrap())
    .collect();
    assert!(xs.len() >= 5, "{xs:?}");
    for pair in xs.windows(2) {
        // a YYYY-MM-DD label at 12 px is well under 70 px wide
        assert!(pair[1] - pair[0] >= 70.0, "{xs:?}");
    }
    assert_eq!(page.matches("<g class=\"bar\">").count(), 79);

    let page = html(&w, "batch");
    assert_eq!(page.matches("<g class=\"bar\">").count(), 40);
    let cut = &long[..35];
    assert!(page.contains(&format!(">{cut}…</text>")), "{page}");
    assert!(
        page.contains(&format!("<title>{long}: charged 0.0084 USD")),
        "{page}"
    );
    assert!(
        page.contains(&format!("<td class=\"group\">{long}</td>")),
        "{page}"
    );
}

#[test]
fn html_with_one_group_and_with_nothing_spent() {
    let w = World::new();
    let out = w.cli(&[
        "submit",
        "https://img.test/a.png",
        "--size",
        "100x100",
        "--no-send",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Planned only: nothing charged or awaiting a charge, so no chart, but the table is there.
    for by in ["day", "batch"] {
        let page = html(&w, by);
        assert!(
            page.contains("Nothing charged or awaiting a charge in this period."),
            "{page}"
        );
        assert!(!page.contains("<svg"), "{page}");
        assert!(page.contains("<table class=\"groups\">"), "{page}");
    }

    let w = World::new();
    pin("2026-03-30T09:00:00Z");
    let mut ledger = Ledger::open(&w.ledger()).unwrap();
    let new = ledger
        .enqueue(&[job("only", (1000, 1000), 2, Some("only"), Some("acme"))])
        .unwrap();
    send(&mut ledger, &[(new[0].id, 1)], "0.0021");
    set_state(&mut ledger, new[0].id, 1, JobState::Completed);
    download(&mut ledger, new[0].id, 1, (2000, 2000));
    clock::pin_thread(None);
    drop(ledger);
    for by in ["day", "batch", "tag:client"] {
        let page = html(&w, by);
        assert_eq!(page.matches("<g class=\"bar\">").count(), 1, "{page}");
        assert!(page.matches("<g class=\"tick\">").count() >= 3, "{page}");
        assert!(
            page.contains("<td title=\"0.0084 USD\">$0.0084</td>"),
            "{page}"
        );
    }
}

#[test]
fn html_spend_over_time_has_a_running_total_line() {
    let w = World::new();
    build(&w);
    let page = html(&w, "day");
    let chart = section(&page, "<h2>Spent so far</h2>", "</svg>");
    assert_eq!(
        chart.matches("<polyline class=\"cumulative\"").count(),
        1,
        "{chart}"
    );
    // with a dashed line including the charge unknown, as there is some
    assert_eq!(
        chart.matches("<polyline class=\"cumulative-all\"").count(),
        1,
        "{chart}"
    );
    assert!(page.contains("</span>charged so far"), "{page}");
    // its own axis covers the running total (0.03847648 with the charge unknown)
    let ticks: Vec<String> = chart
        .split("<g class=\"tick\">")
        .skip(1)
        .map(|t| texts(t, "<text")[0].clone())
        .collect();
    assert_eq!(ticks, ["$0", "$0.01", "$0.02", "$0.03", "$0.04"]);
    // below the bars, on the same dates
    let bars = section(&page, "<svg", "</svg>");
    assert!(!bars.contains("<polyline"), "{bars}");
    assert_eq!(
        attributes(chart, "<text class=\"x-label\"", "x"),
        attributes(bars, "<text class=\"x-label\"", "x")
    );
    // One month: a running total of one bar would only repeat it.
    let month = html(&w, "month");
    assert!(
        !month.contains("<polyline") && !month.contains("Spent so far"),
        "{month}"
    );
    let titles: Vec<String> = page
        .split("<circle class=\"point\"")
        .skip(1)
        .map(|c| texts(c, "<title>")[0].clone())
        .collect();
    assert_eq!(
        titles,
        [
            "spent through 2026-03-30: charged 0.01275456 USD; with the charge unknown 0.02307648 USD",
            "spent through 2026-03-31: charged 0.01695456 USD; with the charge unknown 0.03847648 USD",
        ]
    );
    let points = attributes(&page, "<polyline class=\"cumulative\"", "points");
    assert_eq!(points[0].split(' ').count(), 2, "{points:?}");
}

/// A batch's remembered budget (`batches.budget`, the last `--budget` given) is drawn as a
/// line across its bar, named in its title and label, and inside the value axis.
#[test]
fn html_by_batch_draws_each_remembered_budget() {
    let w = World::new();
    build(&w);
    let page = html(&w, "batch");
    assert!(!page.contains("class=\"budget\""), "{page}");
    let db = w.db();
    db.execute(
        "UPDATE batches SET budget = '0.02' WHERE name = 'shoot'",
        [],
    )
    .unwrap();
    db.execute(
        "UPDATE batches SET budget = '0.05' WHERE name = 'portraits'",
        [],
    )
    .unwrap();
    drop(db);
    let page = html(&w, "batch");
    assert_eq!(page.matches("<line class=\"budget\"").count(), 2, "{page}");
    for needle in [
        "<title>shoot: charged 0.01275456 USD, charge unknown 0.01032192 USD, budget 0.02 USD</title>",
        ">$0.0231 of $0.0200 budget</text>",
        "<title>portraits: charged 0.003 USD, charge unknown 0 USD, budget 0.05 USD</title>",
        ">$0.0030 of $0.0500 budget</text>",
        "</span>budget</p>",
    ] {
        assert!(page.contains(needle), "{needle}\n{page}");
    }
    let chart = section(&page, "<svg", "</svg>");
    let ticks: Vec<String> = chart
        .split("<g class=\"tick\">")
        .skip(1)
        .filter_map(|t| texts(t, "<text").first().cloned())
        .collect();
    assert_eq!(ticks.last().unwrap(), "$0.05", "{ticks:?}");
    // Budgets belong to batches: other groupings draw none.
    assert!(!html(&w, "tag:client").contains("class=\"budget\""));
}
