//! The whole `--help` output, every command, pinned: a change to the command line shows up
//! here for review.

use crate::common::BIN;
use std::process::Command;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["submit"],
    &["batch"],
    &["run"],
    &["estimate"],
    &["jobs"],
    &["show"],
    &["report"],
    &["reconcile"],
    &["ledger"],
    &["ledger", "compact"],
    &["ingest"],
    &["listen"],
    &["hooks"],
    &["prices"],
    &["sandbox"],
    &["demo"],
    &["verify"],
    &["doctor"],
    &["config"],
    &["completions"],
    &["man"],
];

#[test]
fn help_of_every_command() {
    let mut all = String::new();
    for command in COMMANDS {
        let out = Command::new(BIN)
            .args(*command)
            .arg("--help")
            .env_remove("CODEFORMER_LEDGER")
            .env_remove("PIXAZO_BASE_URL")
            .env_remove("CODEFORMER_LEDGER_CONFIG")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        all.push_str(&format!(
            "==== codeformer-ledger {} --help\n",
            command.join(" ")
        ));
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    insta::assert_snapshot!("help", all);
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let out = Command::new(BIN)
        .args(["run", "--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--concurrency"));
    let out = Command::new(BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn doctor_checks_the_key_and_the_gateway_without_submitting() {
    let w = crate::common::World::with(codeformer_ledger::sandbox::SandboxConfig {
        api_key: Some("good".into()),
        ..Default::default()
    });
    let out_dir = w.out_dir();
    let args = ["doctor", "--out-dir", out_dir.to_str().unwrap()];
    let out = w.cli_env(&args, &[("PIXAZO_API_KEY", "good")]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::common::text(&out));
    let out = w.cli_env(&args, &[("PIXAZO_API_KEY", "bad")]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::common::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused the key"));
    let out = w.cli(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("PIXAZO_API_KEY"));
    assert_eq!(w.sandbox.stats().submissions, 0);
}
