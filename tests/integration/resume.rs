//! Resumable batch runs (issue 4): kill -9 at random moments, gateway faults, manifests, the
//! engine lock, retries, deadlines, an unreachable gateway and Ctrl-C. Every test checks the
//! ledger against the sandbox's own counts: what was submitted, and what was charged.

use crate::common::*;

#[test]
fn regression_partial_download_left_by_a_killed_engine_is_removed_on_resume() {
    let w = World::new();
    let url = w.png("a.png", 8, 8);
    let manifest = w.manifest("one.txt", &[url]);
    let out = w.cli(&["batch", manifest.to_str().unwrap(), "--enqueue-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    };
    let out_dir = w.out_dir();
    std::fs::create_dir_all(&out_dir).unwrap();
    let left = format!(".partial-{dead}-Ab12Cd");
    let live = format!(".partial-{}-Ef34Gh", std::process::id());
    for name in [&left, &live, ".partial-Ij56Kl", "mine.png"] {
        std::fs::write(out_dir.join(name), b"half a file").unwrap();
    }
    let out = w.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!out_dir.join(&left).exists(), "the dead process's download");
    for name in [&live, ".partial-Ij56Kl", "mine.png"] {
        assert!(
            out_dir.join(name).exists(),
            "{name} is not the engine's to remove"
        );
    }
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM events WHERE kind = 'cleanup' AND detail LIKE '%{left}%'"
        )),
        1
    );
}
