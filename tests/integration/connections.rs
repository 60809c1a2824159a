//! Connections are kept: a batch's probes, API calls and downloads reuse the connections their
//! agents hold, instead of opening one per request (the sandbox counts what it accepted).

use crate::common::{text, World};

/// Regression: with ureq's default idle pool (3 per host) a batch at concurrency 8 closed most
/// of its connections after one request, and a probe's ranged answer cut at the range was
/// dropped unread with its connection (96 jobs, about 480 requests: 52-62 connections each
/// way; with both fixed, 14-20).
#[test]
fn a_batch_reuses_its_connections() {
    let w = World::new();
    let n = 96;
    // Half of the inputs are longer than a probe's first range, so its ranged answer is cut
    // at the range and must still be read to its end.
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let name = format!("c{i}.png");
            let url = w.png(&name, 40, 30);
            if i % 2 == 0 {
                let path = w.dir.path().join("static").join(&name);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.resize(bytes.len() + 3 * 4096, 0);
                std::fs::write(&path, bytes).unwrap();
            }
            url
        })
        .collect();
    let manifest = w.manifest("c.txt", &urls);
    let out_dir = w.out_dir();
    let out = w.cli(&[
        "batch",
        manifest.to_str().unwrap(),
        "--quiet",
        "--concurrency",
        "8",
        "--poll-interval",
        "50ms",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let done = w.count("SELECT count(*) FROM jobs WHERE state = 'completed'");
    assert_eq!(done, n as i64, "{}", text(&out));
    let stats = w.sandbox.stats();
    // Each job: one probe, one submission, its status calls, one download, and the sandbox's
    // own fetch of the input.
    let requests = stats.api_requests + 3 * n as u64;
    assert!(stats.api_requests >= 2 * n as u64, "{stats:?}");
    assert!(
        stats.connections * 12 <= requests,
        "{} connections for at least {requests} requests",
        stats.connections
    );
}
