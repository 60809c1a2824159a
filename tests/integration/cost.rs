//! Cost: estimates against the sandbox's real charges, header probes that read little, budget
//! caps and empty wallets, prices as data, and bad input that changes nothing.

use crate::common::*;
use codeformer_ledger::sandbox::SandboxConfig;

/// Everything in the ledger that a command could change, for "nothing written" checks.
fn ledger_state(w: &World) -> Vec<i64> {
    [
        "SELECT count(*) FROM jobs",
        "SELECT count(*) FROM attempts",
        "SELECT count(*) FROM events",
        "SELECT count(*) FROM prices",
        "SELECT count(*) FROM batches",
        "SELECT count(*) FROM image_sizes",
    ]
    .iter()
    .map(|sql| w.count(sql))
    .collect()
}

/// Regression: `--budget -1` was read by clap as an unknown flag `-1`, so the message said
/// "unexpected argument" instead of naming the negative budget.
#[test]
fn bad_input_exits_2_naming_the_value_and_writes_nothing() {
    let w = World::new();
    let out = w.cli(&[
        "submit",
        "https://x.test/a.png",
        "--size",
        "64x48",
        "--no-send",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let manifest = w.dir.path().join("m.txt");
    std::fs::write(&manifest, "https://x.test/b.png\n").unwrap();
    let before = ledger_state(&w);
    let m = manifest.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["batch", m, "--budget", "-1"], "budget: `-1` is negative"),
        (&["batch", m, "--budget=-1"], "budget: `-1` is negative"),
        (&["run", "--budget", "-1"], "budget: `-1` is negative"),
        (
            &["run", "--budget", "1e3"],
            "budget: `1e3` is not an amount",
        ),
        (
            &["submit", "https://x.test/c.png", "--size", "0x10"],
            "`0x10` is not a size",
        ),
        (&["estimate", "--size", "0x10"], "`0x10` is not a size"),
        (&["report", "--by", "foo"], "`foo` is not a grouping"),
        (&["report", "--by", "tag:"], "`tag:` is not a grouping"),
        (
            &["report", "--since", "yesterday"],
            "--since `yesterday` is not a date",
        ),
        (
            &["report", "--until", "2026-02-30"],
            "--until `2026-02-30` is not a date",
        ),
        (
            &["report", "--since", "2026-04-01", "--until", "2026-03-01"],
            "--since `2026-04-01` is not before --until `2026-03-01`",
        ),
        (
            &["prices", "set", "0.0O21"],
            "price: `0.0O21` is not an amount",
        ),
        (&["prices", "set", "-0.5"], "price: `-0.5` is negative"),
        (&["prices", "set", "0"], "price: `0` is not more than zero"),
        (
            &["prices", "set", "0.0025", "--from", "soon"],
            "--from `soon` is not a date",
        ),
    ];
    for (args, message) in cases {
        let out = w.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}\n{}", text(&out));
        assert_eq!(ledger_state(&w), before, "{args:?} changed the ledger");
    }
    assert!(
        !w.dir.path().join("out").exists(),
        "no output folder was made"
    );
}

fn dec(text: &str) -> rust_decimal::Decimal {
    text.parse().unwrap()
}

/// A manifest of `n` fresh `w`×`h` PNG inputs, one URL a line.
fn manifest_of_pngs(w: &World, name: &str, n: usize, size: (u32, u32)) -> String {
    let urls: Vec<String> = (0..n)
        .map(|i| w.png(&format!("{name}-{i}.png"), size.0, size.1))
        .collect();
    let path = w.dir.path().join(format!("{name}.txt"));
    std::fs::write(&path, urls.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

fn count_state(w: &World, state: &str) -> i64 {
    w.count(&format!(
        "SELECT count(*) FROM jobs WHERE state = '{state}'"
    ))
}

/// The ledger's charges agree with the sandbox's, attempt by attempt, and in total.
fn assert_charges_match_sandbox(w: &World) -> rust_decimal::Decimal {
    let stats = w.sandbox.stats();
    let db = w.db();
    let mut stmt = db
        .prepare("SELECT request_id, actual_cost FROM attempts WHERE actual_cost IS NOT NULL AND state = 'completed'")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), stats.charges_by_request.len(), "{stats:?}");
    let mut total = codeformer_ledger::money::DecimalSum::new();
    for (request_id, charged) in rows {
        assert_eq!(
            Some(&charged),
            stats.charges_by_request.get(&request_id),
            "{request_id}"
        );
        total.add_exact(&charged).unwrap();
    }
    assert_eq!(total.total(), dec(&stats.charged_usd));
    total.total()
}

/// Regression: after a 402 the jobs not yet sent stayed `planned` with no reason, and the
/// message did not say what they need. (The jobs the gateway had accepted are polled to the
/// end: checked here too.)
#[test]
fn a_402_holds_the_rest_and_a_second_run_after_a_top_up_finishes_them() {
    let w = World::with(SandboxConfig {
        wallet_usd: Some(dec("0.0002")),
        ..SandboxConfig::default()
    });
    // 100x100 at upscale 2 is 0.04 MP = 0.000084 USD: the wallet pays for two.
    let manifest = manifest_of_pngs(&w, "wallet", 6, (100, 100));
    let out = w.cli(&[
        "batch",
        &manifest,
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        w.out_dir().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 402"), "{stderr}");
    assert!(
        stderr.contains("Top up the wallet, then run again"),
        "{stderr}"
    );
    assert!(stderr.contains("The 4 held job(s) need"), "{stderr}");
    assert_eq!(count_state(&w, "completed"), 2, "{}", text(&out));
    assert_eq!(count_state(&w, "held"), 4, "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'held' AND reason LIKE '%HTTP 402%'"),
        4
    );
    assert_eq!(assert_charges_match_sandbox(&w), dec("0.000168"));
    // Sends in flight together may each get a 402; none of them created a job.
    assert!(w.sandbox.stats().answered_by_code.get(&402) >= Some(&1));
    assert_eq!(w.sandbox.stats().accepted, 2);

    w.sandbox.add_funds(dec("1"));
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(count_state(&w, "completed"), 6, "{}", text(&out));
    assert_eq!(assert_charges_match_sandbox(&w), dec("0.000504"));
    assert_eq!(w.sandbox.stats().accepted, 6, "nothing was sent twice");
}
