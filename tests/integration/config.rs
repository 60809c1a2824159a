//! The config file: defaults set once, overridden by environment and flags; `config show`
//! says where each value came from.

use crate::common::*;

#[test]
fn config_values_apply_below_flags_and_show_their_source() {
    let w = World::new();
    let out_dir = w.dir.path().join("from-config");
    let config = w.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "out_dir = {:?}\nname_pattern = \"{{stem}}-x{{upscale}}\"\npoll_interval = \"50ms\"\ntags = {{ client = \"acme\" }}\n",
            out_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let url = w.png("face.png", 10, 10);
    let out = w.cli(&["--config", cfg, "submit", &url, "--upscale", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.cli(&["--config", cfg, "run", "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out_dir.join("face-x3.png").exists(), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM tags WHERE key = 'client' AND value = 'acme'"),
        1
    );

    // A flag wins over the file.
    let url2 = w.png("face2.png", 10, 10);
    let out = w.cli(&["--config", cfg, "submit", &url2, "--tag", "client=globex"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM tags WHERE value = 'globex'"),
        1
    );

    let out = w.cli_env(
        &["--config", cfg, "config", "show"],
        &[("PIXAZO_API_KEY", "secret-value-123")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("name_pattern   {stem}-x{upscale}"),
        "{shown}"
    );
    assert!(shown.contains("(environment PIXAZO_BASE_URL)"), "{shown}");
    assert!(
        shown.contains("concurrency    4") && shown.contains("built-in default"),
        "{shown}"
    );
    assert!(shown.contains("api key        set"), "{shown}");
    assert!(!shown.contains("secret-value-123"));
}

#[test]
fn an_unknown_key_names_the_key_and_the_file() {
    let w = World::new();
    let config = w.dir.path().join("bad.toml");
    std::fs::write(&config, "concurency = 8\n").unwrap();
    let out = w.cli(&["--config", config.to_str().unwrap(), "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("concurency") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&config, "poll_interval = \"soon\"\n").unwrap();
    let out = w.cli(&["--config", config.to_str().unwrap(), "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("poll_interval"),
        "{}",
        text(&out)
    );
}

/// Regression: `doctor` checked `./restored` whatever the config file said, while every other
/// command writes to the config file's `out_dir`.
#[test]
fn doctor_checks_the_config_files_output_folder() {
    let w = World::new();
    let out_dir = w.dir.path().join("from-config");
    let config = w.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("out_dir = {:?}\n", out_dir.to_str().unwrap()),
    )
    .unwrap();
    let out = w.cli(&["--config", config.to_str().unwrap(), "doctor"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said
        .lines()
        .find(|l| l.contains("output dir"))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(line.starts_with("ok"), "{}", text(&out));
    assert!(line.contains("from-config"), "{}", text(&out));
    assert!(out_dir.is_dir());
    assert!(!w.dir.path().join("restored").exists(), "{}", text(&out));
}

/// `submit --wait` resolves the options of its run before it records the job: a hook from
/// the config file that does not compile is exit 2 with nothing recorded, as for `run`.
#[test]
fn submit_wait_checks_the_config_files_hooks_before_recording() {
    let w = World::new();
    let hook = w.dir.path().join("broken.lua");
    std::fs::write(&hook, "function on_complete(job)\n  return (\nend\n").unwrap();
    let config = w.dir.path().join("config.toml");
    std::fs::write(&config, format!("hooks = [{:?}]\n", hook.to_str().unwrap())).unwrap();
    let url = w.png("face.png", 10, 10);
    let out = w.cli(&[
        "--config",
        config.to_str().unwrap(),
        "submit",
        &url,
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.lua"),
        "{}",
        text(&out)
    );
    assert!(!w.ledger().exists(), "{}", text(&out));
}
