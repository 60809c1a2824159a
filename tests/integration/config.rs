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
