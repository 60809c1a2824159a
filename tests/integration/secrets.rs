//! The API key never leaves the environment: not in the ledger, outputs, logs or errors.

use crate::common::*;
use codeformer_ledger::sandbox::SandboxConfig;

const KEY: &str = "sk-live-7f3a9c2e5d1b4a8f";

fn contains_key(bytes: &[u8]) -> bool {
    bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes())
}

#[test]
fn a_whole_batch_with_a_key_leaves_no_trace_of_it() {
    let w = World::with(SandboxConfig {
        api_key: Some(KEY.into()),
        flaky_rate: 0.2,
        seed: 3,
        ..SandboxConfig::default()
    });
    let urls: Vec<String> = (0..6)
        .map(|i| w.png(&format!("k{i}.png"), 10 + i, 12))
        .collect();
    let manifest = w.dir.path().join("m.txt");
    std::fs::write(&manifest, urls.join("\n")).unwrap();
    let hook = w.dir.path().join("h.lua");
    std::fs::write(
        &hook,
        "function on_complete(job) log.info(json.encode(job)) end",
    )
    .unwrap();
    let out_dir = w.out_dir();
    let env = [("PIXAZO_API_KEY", KEY)];
    let mut outputs = vec![w.cli_env(
        &[
            "batch",
            manifest.to_str().unwrap(),
            "--quiet",
            "--poll-interval",
            "50ms",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--hook",
            hook.to_str().unwrap(),
        ],
        &env,
    )];
    outputs.push(w.cli_env(
        &[
            "run",
            "--quiet",
            "--resubmit-uncertain",
            "--poll-interval",
            "50ms",
        ],
        &env,
    ));
    // A wrong key: the error names the variable, not the value.
    outputs.push(w.cli_env(
        &["submit", "http://127.0.0.1:9/x.png", "--size", "4x4"],
        &[("PIXAZO_API_KEY", "sk-wrong-key")],
    ));
    outputs.push(w.cli(&["show", "1", "--format", "json"]));
    outputs.push(w.cli(&["jobs", "--format", "csv"]));
    outputs.push(w.cli(&["report", "--format", "json"]));
    for out in &outputs {
        assert!(
            !contains_key(&out.stdout) && !contains_key(&out.stderr),
            "{}",
            text(out)
        );
    }
    assert!(w.count("SELECT count(*) FROM jobs WHERE state = 'completed'") >= 1);
    let mut files = vec![w.ledger()];
    for entry in walk(w.dir.path()) {
        files.push(entry);
    }
    for file in files {
        if file.is_file() && !file.starts_with(w.dir.path().join("static")) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(!contains_key(&bytes), "the key is in {}", file.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
