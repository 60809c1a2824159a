//! Cost: estimates against the sandbox's real charges, header probes that read little, budget
//! caps and empty wallets, prices as data, and bad input that changes nothing.

use crate::common::*;

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
