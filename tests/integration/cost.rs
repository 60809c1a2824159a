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

/// Writes a `w`×`h` image of seeded noise (so that it compresses badly and the file is much
/// larger than its header) in `format` into the static folder; returns its URL and file size.
fn noise_image(
    w: &World,
    name: &str,
    size: (u32, u32),
    format: image::ImageFormat,
) -> (String, u64) {
    let mut rng = fastrand::Rng::with_seed(u64::from(size.0) * 31 + u64::from(size.1));
    let img = image::RgbImage::from_fn(size.0, size.1, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let path = w.dir.path().join("static").join(name);
    image::DynamicImage::ImageRgb8(img)
        .save_with_format(&path, format)
        .expect("write image");
    let len = std::fs::metadata(&path).unwrap().len();
    (w.sandbox.static_url(name), len)
}

/// One attempt as recorded: request id, input size, upscale, estimate, charge, output size.
type Recorded = (String, u32, u32, u32, String, String, u32, u32);

fn recorded(w: &World) -> Vec<Recorded> {
    let db = w.db();
    let mut stmt = db
        .prepare(
            "SELECT a.request_id, j.input_width, j.input_height, j.upscale, a.estimated_cost,
                    a.actual_cost, a.output_width, a.output_height
             FROM jobs j JOIN attempts a ON a.job_id = j.id ORDER BY j.id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Submits each input (its size read from its header) and runs them to the end; then every
/// estimate equals the sandbox's charge for the output it really made.
fn assert_estimates_are_charges(w: &World, inputs: &[(String, u32)], sizes: &[(u32, u32)]) {
    for (url, upscale) in inputs {
        let out = w.cli(&["submit", url, "--upscale", &upscale.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stats = w.sandbox.stats();
    let rows = recorded(w);
    assert_eq!(rows.len(), inputs.len());
    for ((id, iw, ih, up, estimate, charge, ow, oh), ((url, _), size)) in
        rows.iter().zip(inputs.iter().zip(sizes))
    {
        assert_eq!((*iw, *ih), *size, "{url}: the header gave the size");
        assert_eq!(
            (*ow, *oh),
            (iw * up, ih * up),
            "{url}: the output's real size"
        );
        assert_eq!(estimate, charge, "{url}");
        assert_eq!(
            Some(charge),
            stats.charges_by_request.get(id),
            "{url}: the sandbox billed what was estimated"
        );
        let expected = codeformer_ledger::money::Price::default_rate().estimate(*iw, *ih, *up);
        assert_eq!(dec(estimate), expected, "{url}");
    }
    assert_charges_match_sandbox(w);
    let out = w.cli(&["report", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"]["charged"], stats.charged_usd.as_str());
    assert_eq!(report["reconciliation"]["attempts"], serde_json::json!([]));
}

#[test]
fn estimates_equal_the_sandbox_charges_for_odd_sizes_and_every_format() {
    use image::ImageFormat::*;
    let w = World::new();
    let cases = [
        ("one.png", (1, 1), Png, 1),
        ("odd.png", (333, 517), Png, 2),
        ("odd.jpg", (333, 517), Jpeg, 3),
        ("odd.webp", (333, 517), WebP, 1),
        ("odd.gif", (331, 211), Gif, 2),
        ("odd.bmp", (333, 517), Bmp, 2),
        ("wide.jpg", (1203, 7), Jpeg, 4),
    ];
    let mut inputs = Vec::new();
    let mut lens = Vec::new();
    for (name, size, format, upscale) in cases {
        let (url, len) = noise_image(&w, name, size, format);
        inputs.push((url, upscale));
        lens.push(len);
    }
    let sizes: Vec<(u32, u32)> = cases.iter().map(|c| c.1).collect();
    assert_estimates_are_charges(&w, &inputs, &sizes);

    // The sizes came from range requests that read at most 64 KiB of each file, a small
    // fraction of the larger ones.
    let served = w.sandbox.stats().static_bytes_by_path;
    for ((name, ..), len) in cases.iter().zip(&lens) {
        let read = served.get(*name).copied().unwrap_or(0);
        assert!(read > 0, "{name} was probed");
        assert!(read <= 64 * 1024, "{name}: {read} bytes read");
        if *len > 256 * 1024 {
            assert!(read * 8 < *len, "{name}: {read} of {len} bytes read");
        }
    }
    assert!(lens.iter().filter(|l| **l > 256 * 1024).count() >= 3);
    assert_eq!(
        w.count("SELECT count(*) FROM image_sizes"),
        cases.len() as i64,
        "each probe is cached"
    );

    // `estimate` reads the same header and prints the same cost.
    let (url, upscale) = &inputs[2];
    let before = w.sandbox.stats().static_bytes_by_path["odd.jpg"];
    let out = w.cli(&[
        "estimate",
        url,
        "--upscale",
        &upscale.to_string(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["cost"], recorded(&w)[2].4.as_str());
    assert_eq!(
        (
            shown["output_width"].as_u64(),
            shown["output_height"].as_u64()
        ),
        (Some(999), Some(1551))
    );
    assert!(w.sandbox.stats().static_bytes_by_path["odd.jpg"] - before <= 64 * 1024);
}

#[test]
fn a_4000x3000_input_is_estimated_and_charged_the_same() {
    // Fast mode: the sandbox writes a flat output of the exact size from the header alone.
    let w = World::with(SandboxConfig {
        render: false,
        ..SandboxConfig::default()
    });
    let url = w.png("big.png", 4000, 3000);
    assert_estimates_are_charges(&w, &[(url, 2)], &[(4000, 3000)]);
    let rows = recorded(&w);
    assert_eq!(rows[0].5, "0.1008", "8000x6000 = 48 MP at 0.0021");
    let read = w.sandbox.stats().static_bytes_by_path["big.png"];
    let len = std::fs::metadata(w.dir.path().join("static/big.png"))
        .unwrap()
        .len();
    assert!(
        read <= 64 * 1024 && read * 8 < len,
        "{read} of {len} bytes read"
    );
}

/// Committed spend as the budget counts it: charges, plus estimates of what may still be
/// charged.
fn committed(w: &World) -> rust_decimal::Decimal {
    let db = w.db();
    let mut stmt = db
        .prepare(
            "SELECT coalesce(actual_cost, estimated_cost) FROM attempts
             WHERE state NOT IN ('planned', 'held', 'skipped', 'error', 'rejected')",
        )
        .unwrap();
    let mut sum = codeformer_ledger::money::DecimalSum::new();
    for amount in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        sum.add_exact(&amount.unwrap()).unwrap();
    }
    sum.total()
}

/// Every held job's estimate, each of which must not fit under the cap.
fn held_estimates(w: &World) -> Vec<rust_decimal::Decimal> {
    let db = w.db();
    let mut stmt = db
        .prepare(
            "SELECT a.estimated_cost FROM jobs j JOIN attempts a
             ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.state = 'held'",
        )
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|e| dec(&e.unwrap()))
        .collect()
}

/// Runs with a budget; checks the cap was kept exactly: nothing committed beyond it, and no
/// held job that would have fitted. Returns the exit status and stderr.
fn run_with_budget(w: &World, budget: &str) -> (Option<i32>, String) {
    let out = w.run(&["--budget", budget, "--concurrency", "4"]);
    let cap = dec(budget);
    let spent = committed(w);
    assert!(
        spent <= cap,
        "committed {spent} > budget {cap}\n{}",
        text(&out)
    );
    for estimate in held_estimates(w) {
        assert!(
            spent + estimate > cap,
            "a held job of {estimate} fitted under {cap} with {spent} committed\n{}",
            text(&out)
        );
    }
    assert_eq!(
        dec(&w.sandbox.stats().charged_usd),
        spent,
        "the gateway billed what the ledger committed"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_budget_stops_at_the_cap_exactly_and_a_raised_cap_finishes() {
    let w = World::new();
    // Estimates (upscale 2), in millionths of a dollar: 100x100 = 84, 150x100 = 126,
    // 50x50 = 21. All six: 525.
    let sizes = [
        (100, 100),
        (150, 100),
        (100, 100),
        (150, 100),
        (50, 50),
        (100, 100),
    ];
    for (i, (width, height)) in sizes.iter().enumerate() {
        let url = w.png(&format!("b{i}.png"), *width, *height);
        // Sizes given up front, so that the jobs are judged in order (probes in parallel
        // return in any order).
        let size = format!("{width}x{height}");
        let out = w.cli(&["submit", &url, "--no-send", "--size", &size]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    // 84 + 126 + 84 = 294, exactly the cap; the rest (126, 21, 84) are held.
    let (code, stderr) = run_with_budget(&w, "0.000294");
    assert_eq!(code, Some(4), "{stderr}");
    assert_eq!(committed(&w), dec("0.000294"));
    assert_eq!(count_state(&w, "completed"), 3);
    assert_eq!(count_state(&w, "held"), 3);
    assert!(
        stderr.contains("stopped by the budget cap: the held jobs need 0.000231 USD more"),
        "{stderr}"
    );
    assert_eq!(
        w.count(
            "SELECT count(*) FROM jobs WHERE state = 'held'
             AND reason LIKE 'budget:%would exceed the 0.000294 USD cap'"
        ),
        3
    );

    // 0.0003 leaves 6: nothing fits, and the need shrinks by as much.
    let (code, stderr) = run_with_budget(&w, "0.0003");
    assert_eq!(code, Some(4), "{stderr}");
    assert_eq!(count_state(&w, "completed"), 3);
    assert!(stderr.contains("need 0.000225 USD more"), "{stderr}");

    // 0.00032 leaves 26: the 50x50 (21) passes the held 150x100 before it.
    let (code, stderr) = run_with_budget(&w, "0.00032");
    assert_eq!(code, Some(4), "{stderr}");
    assert_eq!(count_state(&w, "completed"), 4);
    assert_eq!(
        w.count("SELECT state = 'completed' FROM jobs WHERE id = 5"),
        1
    );
    assert!(stderr.contains("need 0.000205 USD more"), "{stderr}");

    let (code, stderr) = run_with_budget(&w, "0.000525");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(count_state(&w, "completed"), 6);
    assert_eq!(assert_charges_match_sandbox(&w), dec("0.000525"));
    assert_eq!(w.sandbox.stats().accepted, 6, "nothing was sent twice");
}

#[test]
fn a_new_price_applies_to_jobs_sent_after_it_and_older_jobs_keep_theirs() {
    let w = World::new();
    let first = w.png("first.png", 100, 100);
    let out = w.cli(&["submit", &first]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = w.cli(&["prices", "set", "0.0042", "--note", "doubled"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0.0042 USD per megapixel"));
    let second = w.png("second.png", 100, 100);
    let out = w.cli(&["submit", &second]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("estimate 0.000168 USD"),
        "{}",
        text(&out)
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let db = w.db();
    let mut stmt = db
        .prepare("SELECT price_per_mp, estimated_cost, actual_cost FROM attempts ORDER BY job_id")
        .unwrap();
    let rows: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            ("0.0021".into(), "0.000084".into(), "0.000084".into()),
            ("0.0042".into(), "0.000168".into(), "0.000168".into()),
        ]
    );
    let out = w.cli(&["prices", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("  0.0021 USD/MP"), "{listed}");
    assert!(listed.lines().last().unwrap().starts_with('*'), "{listed}");
    assert!(
        listed.contains("0.0042 USD/MP") && listed.contains("doubled"),
        "{listed}"
    );
    let out = w.cli(&["estimate", "--size", "1000x1000", "--format", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["cost"], "0.0168");
}

/// Regression: a job held because its size could not be read (so its cost is unknown) made a
/// budget run say "the held jobs need 0 USD more; raise --budget", which no budget fixes.
#[test]
fn a_job_without_an_estimate_is_not_covered_by_raising_the_budget() {
    let w = World::new();
    let known = w.png("known.png", 100, 100);
    let missing = w.sandbox.static_url("missing.png");
    let manifest = w.dir.path().join("m.txt");
    std::fs::write(&manifest, format!("{known}\n{missing}\n")).unwrap();
    let out = w.cli(&[
        "batch",
        manifest.to_str().unwrap(),
        "--budget",
        "1",
        "--quiet",
        "--poll-interval",
        "50ms",
        "--out-dir",
        w.out_dir().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("need 0 USD more"), "{stderr}");
    assert!(
        stderr.contains("1 held job(s) have no estimate (their input size could not be read), so no budget can cover them"),
        "{stderr}"
    );
    assert_eq!(count_state(&w, "completed"), 1);
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'held' AND reason LIKE '%cannot be estimated%'"),
        1
    );
}
