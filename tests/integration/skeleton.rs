//! The walking skeleton: submit, run, download, and the ledger's record of it.

use crate::common::*;
use codeformer_ledger::sandbox::SandboxConfig;

#[test]
fn submitted_jobs_complete_with_exact_outputs_and_a_full_record() {
    let w = World::new();
    let sizes = [(1, 1, 2), (333, 517, 2), (64, 48, 4), (200, 120, 1)];
    for (i, (width, height, upscale)) in sizes.iter().enumerate() {
        let url = w.png(&format!("in{i}.png"), *width, *height);
        let out = w.cli(&["submit", &url, "--upscale", &upscale.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("sent: request codeformer-image-restoration_"),
            "{}",
            text(&out)
        );
    }
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        4
    );
    let db = w.db();
    let mut stmt = db
        .prepare("SELECT j.id, j.input_width, j.input_height, j.upscale, o.path, o.width, o.height FROM jobs j JOIN outputs o ON o.job_id = j.id ORDER BY j.id")
        .unwrap();
    let rows: Vec<(i64, u32, u32, u32, String, u32, u32)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4);
    for (id, iw, ih, up, path, ow, oh) in rows {
        assert_eq!((ow, oh), (iw * up, ih * up), "job {id}");
        assert_eq!(
            png_size(std::path::Path::new(&path)),
            (iw * up, ih * up),
            "job {id}: the file itself"
        );
        assert!(path.starts_with(w.out_dir().canonicalize().unwrap().to_str().unwrap()));
    }
    for id in 1..=4 {
        let n = |kind: &str| {
            w.count(&format!(
                "SELECT count(*) FROM events WHERE job_id = {id} AND kind = '{kind}'"
            ))
        };
        assert_eq!(n("submit_intent"), 1, "job {id}");
        assert_eq!(n("submit_answer"), 1, "job {id}");
        assert!(n("poll") >= 1, "job {id}");
    }

    let out = w.cli(&["show", "2", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
    };
    assert!(pos("planned") < pos("submit_intent"));
    assert!(pos("submit_intent") < pos("submit_answer"));
    assert!(pos("submit_answer") < pos("poll"));
    assert!(pos("poll") < pos("download"));
    let ids: Vec<i64> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|p| p[0] < p[1]),
        "events in order: {ids:?}"
    );
    assert_eq!(shown["job"]["state"], "completed");
    assert_eq!(shown["job"]["actual_cost"], "0.0014461524"); // 666x1034 px at 0.0021 USD/MP
}

#[test]
fn bad_input_is_refused_before_anything_is_recorded() {
    let w = World::new();
    let url = w.png("a.png", 10, 10);
    let cases: [(&[&str], &str); 4] = [
        (&["submit", &url, "--fidelity", "7"], "--fidelity"),
        (&["submit", &url, "--upscale", "0"], "--upscale"),
        (&["submit", "/home/me/photo.png"], "image"),
        (
            // http webhook URLs are only for a gateway on loopback (the sandbox).
            &[
                "--base-url",
                "https://gateway.example.test",
                "submit",
                &url,
                "--webhook-url",
                "http://hooks.test/cb",
            ],
            "webhook_url",
        ),
    ];
    for (args, field) in cases {
        let out = w.cli(args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "message names {field}: {err}");
    }
    assert!(!w.ledger().exists() || w.count("SELECT count(*) FROM jobs") == 0);
}

#[test]
fn a_missing_key_is_named_with_the_variable_to_set() {
    let w = World::with(SandboxConfig {
        api_key: Some("right-key".into()),
        ..SandboxConfig::default()
    });
    let url = w.png("a.png", 8, 8);
    let out = w.cli(&["submit", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PIXAZO_API_KEY"), "{err}");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        1,
        "the job is kept, unsent"
    );

    let out = w.cli_env(
        &[
            "run",
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            "out",
        ],
        &[("PIXAZO_API_KEY", "right-key")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !std::fs::read(w.ledger())
            .unwrap()
            .windows(9)
            .any(|b| b == b"right-key"),
        "the key is not in the ledger"
    );
}

#[test]
fn an_unreachable_gateway_leaves_the_job_planned_for_run() {
    let w = World::new();
    let url = w.png("a.png", 8, 8);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = w.cli_env(
        &["submit", &url, "--size", "8x8"],
        &[("PIXAZO_BASE_URL", &format!("http://{closed}"))],
    );
    // Exit 1 (README: an unreachable gateway is an error), with the job kept for `run`.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run` sends it"),
        "{}",
        text(&out)
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        1
    );
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        1
    );
}

#[test]
fn gateway_refusals_reach_the_user() {
    // 402: the wallet cannot pay; the job is held and the exit code says budget.
    let w = World::with(SandboxConfig {
        wallet_usd: Some(rust_decimal::Decimal::ZERO),
        ..SandboxConfig::default()
    });
    let url = w.png("a.png", 100, 100);
    let out = w.cli(&["submit", &url]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("402"),
        "{}",
        text(&out)
    );
    assert_eq!(w.count("SELECT count(*) FROM jobs WHERE state = 'held'"), 1);

    // 500: the outcome is unknown, so the job is uncertain and not resent on its own.
    let w = World::with(SandboxConfig {
        flaky_rate: 1.0,
        ..SandboxConfig::default()
    });
    let url = w.png("a.png", 10, 10);
    let out = w.cli(&["submit", &url, "--size", "10x10"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uncertain"),
        "{}",
        text(&out)
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'uncertain'"),
        1
    );
}

#[test]
fn regression_run_without_batch_downloads_into_each_batchs_own_folder() {
    let w = World::new();
    let url = w.png("a.png", 8, 8);
    let manifest = w.dir.path().join("shoot.txt");
    std::fs::write(&manifest, &url).unwrap();
    let own = w.dir.path().join("shoot-out");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The first attempt cannot reach the gateway; the batch's folder is remembered.
    let out = w.cli_env(
        &[
            "batch",
            manifest.to_str().unwrap(),
            "--quiet",
            "--out-dir",
            own.to_str().unwrap(),
        ],
        &[("PIXAZO_BASE_URL", &format!("http://{closed}"))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = w.cli(&["run", "--quiet", "--poll-interval", "50ms"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let path: String = w
        .db()
        .query_row("SELECT path FROM outputs", [], |r| r.get(0))
        .unwrap();
    assert!(
        path.starts_with(own.canonicalize().unwrap().to_str().unwrap()),
        "{path}"
    );
}
