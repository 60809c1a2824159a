//! `report` output, pinned: a ledger built at fixed times (through the CLI with a pinned
//! clock, and through the library with a pinned thread clock), reported as a table, CSV and
//! JSON and compared whole with inline snapshots; the HTML page and `--output`.

use crate::common::*;
use codeformer_ledger::clock;
use codeformer_ledger::ledger::{
    Change, Event, JobState, JobUpdate, Ledger, NewJob, OutputRow, SubmitRecord,
};
use codeformer_ledger::money::Price;
use codeformer_ledger::params::JobParams;
use rust_decimal::Decimal;

pub(crate) const NOW: &str = "2026-03-31T10:00:00Z";

pub(crate) fn pin(at: &str) {
    clock::pin_thread(Some(clock::parse_remote(at).unwrap()));
}

fn rate(text: &str) -> Decimal {
    text.parse().unwrap()
}

pub(crate) fn job(
    name: &str,
    size: (u32, u32),
    upscale: u32,
    batch: Option<&str>,
    client: Option<&str>,
) -> NewJob {
    let mut params = JobParams::new(format!("https://img.test/{name}.png"));
    params.upscale = upscale;
    let mut job = NewJob::new(params);
    job.size = Some(size);
    job.size_source = Some("given");
    job.batch = batch.map(String::from);
    job.tags = client
        .map(|c| vec![("client".to_string(), c.to_string())])
        .unwrap_or_default();
    job
}

/// Sends attempts at `per_mp`, as the engine records an intent.
pub(crate) fn send(ledger: &mut Ledger, jobs: &[(i64, i64)], per_mp: &str) {
    let records: Vec<SubmitRecord> = jobs
        .iter()
        .map(|&(id, attempt)| {
            let row = ledger.job(id).unwrap().unwrap();
            let (w, h) = row.input_size().unwrap();
            let price = Price {
                per_megapixel: rate(per_mp),
                ..Price::default_rate()
            };
            SubmitRecord {
                job_id: id,
                attempt,
                body: "{}".into(),
                price: price.per_megapixel,
                estimate: Some(price.estimate(w, h, row.upscale)),
            }
        })
        .collect();
    ledger.mark_submitting(&records).unwrap();
}

pub(crate) fn set_state(ledger: &mut Ledger, id: i64, attempt: i64, state: JobState) {
    let change = Change {
        state: Some(state),
        request_id: Some(format!("codeformer-image-restoration_{id}_{attempt}")),
        finished: state.is_final(),
        ..Change::default()
    };
    let event = Event::new(Some(id), Some(attempt), "poll").remote(Some(state.as_str()));
    ledger
        .record(vec![JobUpdate::new(id, attempt, change, event)])
        .unwrap();
}

pub(crate) fn download(ledger: &mut Ledger, id: i64, attempt: i64, size: (u32, u32)) {
    let file = OutputRow {
        attempt,
        idx: 0,
        url: format!("https://cdn.test/{id}/output.png"),
        path: format!("/restored/{id}.png"),
        bytes: 1000,
        sha256: "0".repeat(64),
        width: Some(size.0),
        height: Some(size.1),
    };
    ledger.record_download(id, attempt, &[file], None).unwrap();
}

/// Two days of work: completed, FAILED, ERROR, rejected, uncertain and sent again, still at
/// the gateway, held and planned jobs; a price change at midnight; an output that shows its
/// input changed after it was measured.
pub(crate) fn build(w: &World) {
    pin("2026-03-30T09:00:00Z");
    let mut ledger = Ledger::open(&w.ledger()).unwrap();
    let day1 = ledger
        .enqueue(&[
            job("anna", (1000, 1000), 2, Some("shoot"), Some("acme")),
            job("ben", (1920, 1080), 1, Some("shoot"), Some("acme")),
            job("cleo", (640, 480), 4, Some("shoot"), Some("globex, inc")),
            job("dev", (800, 600), 2, Some("shoot"), None),
        ])
        .unwrap();
    let ids: Vec<(i64, i64)> = day1.iter().map(|e| (e.id, 1)).collect();
    send(&mut ledger, &ids, "0.0021");
    pin("2026-03-30T09:01:00Z");
    set_state(&mut ledger, 1, 1, JobState::Completed);
    set_state(&mut ledger, 2, 1, JobState::Completed);
    set_state(&mut ledger, 3, 1, JobState::Failed);
    set_state(&mut ledger, 4, 1, JobState::Error);
    ledger
        .record_no_charge(4, 1, "ERROR jobs are not charged")
        .unwrap();
    download(&mut ledger, 1, 1, (2000, 2000));
    download(&mut ledger, 2, 1, (1920, 1080));

    pin("2026-03-31T00:00:00Z");
    let price = Price {
        per_megapixel: rate("0.0025"),
        effective_from: clock::now(),
        ..Price::default_rate()
    };
    ledger.set_price(&price, Some("new rate")).unwrap();
    drop(ledger);

    // Job 5 through the CLI, with the binary's clock pinned: recorded, not sent.
    let out = w.cli_env(
        &[
            "submit",
            "https://img.test/eve.png",
            "--size",
            "333x517",
            "--no-send",
            "--batch",
            "portraits",
            "--tag",
            "client=acme",
        ],
        &[("CODEFORMER_LEDGER_NOW", NOW)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    pin(NOW);
    let mut ledger = Ledger::open(&w.ledger()).unwrap();
    ledger
        .enqueue(&[
            job("fay", (500, 500), 2, Some("portraits"), None),
            job("gus", (256, 256), 2, Some("portraits"), Some("globex, inc")),
            job("hal", (800, 600), 1, None, Some("acme")),
            job("ida", (1000, 1000), 2, None, Some("acme")),
            job("jon", (2000, 1500), 2, None, Some("globex, inc")),
        ])
        .unwrap();
    send(&mut ledger, &[(6, 1), (7, 1), (8, 1), (9, 1)], "0.0025");
    set_state(&mut ledger, 6, 1, JobState::Completed);
    set_state(&mut ledger, 7, 1, JobState::Rejected);
    ledger
        .record_no_charge(7, 1, "rejected submissions are not charged")
        .unwrap();
    set_state(&mut ledger, 8, 1, JobState::Uncertain);
    set_state(&mut ledger, 9, 1, JobState::Queued);
    set_state(&mut ledger, 10, 1, JobState::Held);
    // The image at fay's URL was replaced by a larger one after its size was given.
    download(&mut ledger, 6, 1, (1200, 1000));

    pin("2026-03-31T11:00:00Z");
    ledger
        .new_attempts(&[JobState::Uncertain], None, "run --resubmit-uncertain")
        .unwrap();
    send(&mut ledger, &[(8, 2)], "0.0025");
    set_state(&mut ledger, 8, 2, JobState::Completed);
    download(&mut ledger, 8, 2, (800, 600));
    clock::pin_thread(None);
}

pub(crate) fn report(w: &World, args: &[&str]) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = w.cli_env(&all, &[("CODEFORMER_LEDGER_NOW", NOW)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn report_formats_are_pinned() {
    let w = World::new();
    build(&w);
    insta::assert_snapshot!(report(&w, &["--by", "day"]), @r"
    group              jobs completed failed errored rejected uncertain stalled    output_mp  estimated_usd    charged_usd charge_unknown_usd
    2026-03-30            4         2      1       1        0         0       0       6.0736     0.02710848     0.01275456         0.01032192
    2026-03-31            7         2      0       0        1         1       0         1.68     0.04727697         0.0042             0.0112
    total                11         4      1       1        1         1       0       7.7536     0.07438545     0.01695456         0.02152192

    charge unknown: FAILED, stalled, uncertain and unfinished attempts may or may not be billed by the gateway (completed ones not yet downloaded are); their estimates are shown as the worst case.

    possible double charges: 1 uncertain attempt(s) were sent again.

    reconciliation (USD):
      estimated                                      0.07438545
      - not sent (planned, held, skipped)            0.03172161
      - not charged (ERROR, rejected)                0.00468736
      - charge unknown (worst case)                  0.02152192
      + charges above (-below) their estimates       +0.0005
      = charged                                      0.01695456

    charges that differ from their estimate:
      job 6 attempt 1: estimated 0.0025, charged 0.003 (+0.0005): the output is 1200x1000, not the 1000x1000 expected from the 500x500 input at upscale 2: the image at the URL may have changed since its size was read
    ");
    insta::assert_snapshot!(report(&w, &["--by", "tag:client", "--format", "csv"]), @r#"
    group,jobs,completed,failed,errored,rejected,uncertain,stalled,output_mp,estimated_usd,charged_usd,charge_unknown_usd
    (untagged),2,1,0,1,0,0,0,1.2,0.006532,0.003,0
    acme,6,3,0,0,0,1,0,6.5536,0.02687617,0.01395456,0.0112
    "globex, inc",3,0,1,0,1,0,0,0,0.04097728,0,0.01032192
    total,11,4,1,1,1,1,0,7.7536,0.07438545,0.01695456,0.02152192
    "#);
    insta::assert_snapshot!(report(&w, &["--by", "state", "--format", "csv"]), @r"
    group,jobs,completed,failed,errored,rejected,uncertain,stalled,output_mp,estimated_usd,charged_usd,charge_unknown_usd
    completed,4,4,0,0,0,0,0,7.7536,0.01645456,0.01695456,0
    error,1,0,0,1,0,0,0,0,0.004032,0,0
    failed,1,0,1,0,0,0,0,0,0.01032192,0,0.01032192
    held,1,0,0,0,0,0,0,0,0.03,0,0
    planned,1,0,0,0,0,0,0,0,0.00172161,0,0
    queued,1,0,0,0,0,0,0,0,0.01,0,0.01
    rejected,1,0,0,0,1,0,0,0,0.00065536,0,0
    uncertain,1,0,0,0,0,1,0,0,0.0012,0,0.0012
    total,11,4,1,1,1,1,0,7.7536,0.07438545,0.01695456,0.02152192
    ");
    insta::assert_snapshot!(
        report(&w, &["--by", "batch", "--since", "2026-03-31", "--until", "2026-04-01", "--format", "json"]),
        @r#"
        {
          "since": "2026-03-31T00:00:00.000Z",
          "until": "2026-04-01T00:00:00.000Z",
          "group_by": "batch",
          "rows": [
            {
              "group": "(none)",
              "jobs": 4,
              "completed": 1,
              "failed": 0,
              "errored": 0,
              "rejected": 0,
              "uncertain": 1,
              "stalled": 0,
              "output_megapixels": "0.48",
              "estimated": "0.0424",
              "charged": "0.0012",
              "charge_unknown": "0.0112",
              "reused": 0
            },
            {
              "group": "portraits",
              "jobs": 3,
              "completed": 1,
              "failed": 0,
              "errored": 0,
              "rejected": 1,
              "uncertain": 0,
              "stalled": 0,
              "output_megapixels": "1.2",
              "estimated": "0.00487697",
              "charged": "0.003",
              "charge_unknown": "0",
              "reused": 0
            }
          ],
          "total": {
            "group": "total",
            "jobs": 7,
            "completed": 2,
            "failed": 0,
            "errored": 0,
            "rejected": 1,
            "uncertain": 1,
            "stalled": 0,
            "output_megapixels": "1.68",
            "estimated": "0.04727697",
            "charged": "0.0042",
            "charge_unknown": "0.0112",
            "reused": 0
          },
          "reconciliation": {
            "not_sent": "0.03172161",
            "not_charged": "0.00065536",
            "difference": "0.0005",
            "attempts": [
              {
                "job_id": 6,
                "attempt": 1,
                "estimated": "0.0025",
                "charged": "0.003",
                "difference": "0.0005",
                "reason": "the output is 1200x1000, not the 1000x1000 expected from the 500x500 input at upscale 2: the image at the URL may have changed since its size was read"
              }
            ]
          },
          "possible_double_charges": 1
        }
        "#
    );
}

#[test]
fn since_and_until_are_utc_days_and_until_is_exclusive() {
    let w = World::new();
    build(&w);
    let total = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--format", "json"]);
        let json: serde_json::Value = serde_json::from_str(&report(&w, &all)).unwrap();
        json["total"].clone()
    };
    let everything = total(&[]);
    let first = total(&["--until", "2026-03-31"]);
    let second = total(&["--since", "2026-03-31"]);
    assert_eq!(first["jobs"], 4);
    assert_eq!(second["jobs"], 7);
    assert_eq!(everything["jobs"], 11);
    // Day one's attempts were placed at 09:00:00.000 exactly: a bound at that instant
    // includes them as --since and excludes them as --until.
    assert_eq!(total(&["--since", "2026-03-30T09:00:00Z"])["jobs"], 11);
    assert_eq!(total(&["--since", "2026-03-30T09:00:00.001Z"])["jobs"], 7);
    assert_eq!(total(&["--until", "2026-03-30T09:00:00Z"])["jobs"], 0);
    // An offset is converted to UTC: 11:00+02:00 is 09:00Z.
    assert_eq!(total(&["--since", "2026-03-30T11:00:00+02:00"])["jobs"], 11);
    assert_eq!(total(&["--until", "2026-04-01"]), everything);
}

#[test]
fn html_and_output_files() {
    let w = World::new();
    build(&w);
    let page = w.dir.path().join("reports").join("spend.html");
    std::fs::create_dir_all(page.parent().unwrap()).unwrap();
    let out = w.cli_env(
        &[
            "report",
            "--format",
            "html",
            "--output",
            page.to_str().unwrap(),
        ],
        &[("CODEFORMER_LEDGER_NOW", NOW)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("Generated 2026-03-31T10:00:00.000Z"));
    for needle in [
        "<svg",
        "2026-03-30: charged 0.01275456 USD, charge unknown 0.01032192 USD",
        "<td class=\"group\">Total</td><td>11</td>",
        "the output is 1200x1000, not the 1000x1000 expected from the 500x500 input",
    ] {
        assert!(html.contains(needle), "{needle}\n{html}");
    }
    let lower = html.to_lowercase();
    for banned in ["<script", "<link", "<img", "@import", "url(", "https://"] {
        assert!(!lower.contains(banned), "{banned}");
    }
    // The temporary file was renamed into place: nothing else is left in the folder.
    let names: Vec<String> = std::fs::read_dir(page.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["spend.html"]);

    // --output works for the other formats too, and replaces an older file whole.
    let csv = w.dir.path().join("reports").join("spend.csv");
    std::fs::write(
        &csv,
        "old and much longer content than the report will have ".repeat(100),
    )
    .unwrap();
    let out = w.cli(&[
        "report",
        "--format",
        "csv",
        "--by",
        "batch",
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        report(&w, &["--format", "csv", "--by", "batch"])
    );

    let out = w.cli(&["report", "--output", "/nonexistent-dir/x/report.txt"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--output /nonexistent-dir/x/report.txt"),
        "{}",
        text(&out)
    );
}
