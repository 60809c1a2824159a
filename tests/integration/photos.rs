//! Photos on disk: folders, manifest rows and `submit PATH` as inputs, sized offline from
//! their own headers, uploaded once each (content-addressed) to an S3 server that checks
//! signatures, and sent to the sandbox as presigned URLs it fetches like the real gateway.

use crate::common::{text, World};
use crate::s3::{S3Server, BUCKET, SECRET_KEY};
use codeformer_ledger::sandbox::SandboxConfig;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A small PNG whose content (so its hash) depends on `seed`.
fn photo(path: &Path, width: u32, height: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x + seed) as u8, (y * 3 + seed) as u8, (seed * 7) as u8])
    });
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// `n` photos spread over nested folders under `root`, each of its own content.
fn photo_tree(root: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let sub = match i % 3 {
                0 => PathBuf::new(),
                1 => PathBuf::from("2024/summer"),
                _ => PathBuf::from("2025"),
            };
            let path = root.join(sub).join(format!("img{i:02}.png"));
            photo(&path, 16 + i % 5, 12 + i % 4, i);
            path
        })
        .collect()
}

fn upload_flags(s3: &S3Server, prefix: &str) -> Vec<String> {
    vec![
        "--upload".into(),
        format!("s3://{BUCKET}/{prefix}"),
        "--s3-endpoint".into(),
        s3.endpoint.clone(),
        "--s3-path-style".into(),
    ]
}

fn cli_s3(w: &World, s3: &S3Server, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.cli_env(&args, &env)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn batch_args(w: &World, s3: &S3Server, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "batch",
        dir.to_str().unwrap(),
        "--quiet",
        "--poll-interval",
        "50ms",
    ]);
    a.push("--out-dir".into());
    a.push(w.out_dir().to_string_lossy().into_owned());
    a.extend(upload_flags(s3, "in"));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn a_local_path_without_a_bucket_is_refused_naming_upload() {
    let w = World::new();
    let dir = w.dir.path().join("photos");
    photo(&dir.join("a.png"), 8, 8, 1);
    let manifest = w.dir.path().join("m.txt");
    std::fs::write(&manifest, "photos/a.png\n").unwrap();
    for a in [
        vec!["submit", "photos/a.png", "--no-send"],
        vec!["batch", "photos", "--enqueue-only"],
        vec!["batch", "m.txt", "--enqueue-only"],
    ] {
        let out = w.cli(&a);
        assert_eq!(out.status.code(), Some(2), "{a:?}\n{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--upload s3://BUCKET/PREFIX"),
            "{a:?}\n{}",
            text(&out)
        );
        assert!(!w.ledger().exists(), "{a:?} wrote a ledger");
    }
}

#[test]
fn local_files_and_folders_are_estimated_offline_from_their_headers() {
    let w = World::new();
    let dir = w.dir.path().join("shoot");
    photo(&dir.join("a.png"), 1000, 500, 1);
    photo(&dir.join("deep/b.png"), 300, 200, 2);
    // An image by its content, whatever its name; a "png" that is text is not one.
    photo(&dir.join("c.data"), 100, 100, 3);
    std::fs::write(dir.join("notes.png"), "not an image").unwrap();
    photo(&dir.join(".hidden.png"), 50, 50, 4);
    photo(&w.dir.path().join("outside.png"), 50, 50, 5);
    #[cfg(unix)]
    std::os::unix::fs::symlink(w.dir.path().join("outside.png"), dir.join("link.png")).unwrap();

    let out = w.cli(&["estimate", "shoot/a.png", "--upscale", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // 2000x1000 = 2 MP at 0.0021
    assert!(text(&out).contains("0.0042"), "{}", text(&out));

    let out = w.cli(&["estimate", "shoot", "--upscale", "2", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 3, "{v}");
    // (2,000,000 + 240,000 + 40,000) px = 2.28 MP
    assert_eq!(v["output_megapixels"], "2.28", "{v}");
    assert_eq!(v["cost"], "0.004788", "{v}");
    let out = w.cli(&["estimate", "shoot"]);
    let t = text(&out);
    assert!(t.contains("1 hidden"), "{t}");
    #[cfg(unix)]
    assert!(t.contains("1 link(s) out of the folder"), "{t}");
    assert!(t.contains("1 not image(s)"), "{t}");
    assert_eq!(w.sandbox.stats().api_requests, 0);

    // Budgets need no network either: an enqueue records every estimate.
    let out = w.cli(&[
        "batch",
        "shoot",
        "--enqueue-only",
        "--upload",
        "s3://photos-in/p",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 3);
    assert_eq!(
        w.count("SELECT count(*) FROM attempts WHERE estimated_cost IS NOT NULL"),
        3
    );
    assert_eq!(
        w.count("SELECT count(*) FROM uploads WHERE uploaded_at IS NULL"),
        3
    );
    let paths: Vec<String> = w
        .db()
        .prepare("SELECT local_path FROM uploads ORDER BY local_path")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(paths, ["shoot/a.png", "shoot/c.data", "shoot/deep/b.png"]);
}

/// The audit of a finished folder run: every job completed, one PUT per photo, charges equal
/// to the sandbox's.
fn assert_all_done(w: &World, s3: &S3Server, n: usize) {
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        n as i64
    );
    assert_eq!(s3.requests("PUT").len(), n, "one PUT per photo");
    assert_eq!(s3.objects().len(), n);
    let stats = w.sandbox.stats();
    assert_eq!(stats.submissions as usize, n);
    assert_eq!(stats.completed as usize, n);
    let ledger: String = w
        .db()
        .query_row(
            "SELECT total(CAST(actual_cost AS REAL)) FROM attempts",
            [],
            |r| r.get::<_, f64>(0),
        )
        .map(|f| format!("{f:.6}"))
        .unwrap();
    let sandbox: f64 = stats.charged_usd.parse().unwrap();
    assert_eq!(ledger, format!("{sandbox:.6}"));
}

#[test]
fn a_folder_of_thirty_photos_goes_through_the_bucket_once() {
    let w = World::new();
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    let inputs = photo_tree(&dir, 30);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 30);
    // The outputs mirror the folder's tree, named after each photo.
    for input in &inputs {
        let relative = input.strip_prefix(&dir).unwrap();
        let output = w.out_dir().join(relative);
        let (iw, ih) = image::image_dimensions(input).unwrap();
        assert_eq!(
            crate::common::png_size(&output),
            (iw * 2, ih * 2),
            "{}",
            output.display()
        );
    }
    // Each object is named by its content, and the gateway was given presigned URLs.
    for key in s3.objects() {
        assert!(key.starts_with("in/") && key.ends_with(".png"), "{key}");
    }
    let stats = w.sandbox.stats();
    for image in stats.submissions_by_image.keys() {
        assert!(image.starts_with(&s3.endpoint), "{image}");
        assert!(image.contains("X-Amz-Signature="), "{image}");
    }
    // The ledger and the output never hold the secret or a signed URL.
    let ledger = std::fs::read(w.ledger()).unwrap();
    assert!(!String::from_utf8_lossy(&ledger).contains(SECRET_KEY));
    assert!(!text(&out).contains(SECRET_KEY));
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'upload'"),
        30
    );
    assert_eq!(
        w.count("SELECT count(*) FROM uploads WHERE put_status = 200"),
        30
    );

    // A second run of the same folder uploads and submits nothing.
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 30);
    assert_eq!(w.count("SELECT count(*) FROM jobs"), 30);

    // `show` lists the upload.
    let out = w.cli(&["show", "1"]);
    let t = text(&out);
    assert!(
        t.contains("upload    ") && t.contains("PUT HTTP 200"),
        "{t}"
    );
}

#[test]
fn uploads_run_with_the_runs_concurrency_and_never_beyond_it() {
    // The server holds each PUT until three are under way (at most 3 s): parallel uploads
    // reach three at once, serial ones would stay at one.
    let w = World::new();
    let s3 = S3Server::start_holding(3);
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 12);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &["--concurrency", "3"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 12);
    assert_eq!(s3.most_puts_at_once(), 3, "three uploads under way at once");

    // `--concurrency 1`: one at a time (each PUT waits out the server's hold alone).
    let w = World::new();
    let s3 = S3Server::start_holding(2);
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 2);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &["--concurrency", "1"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 2);
    assert_eq!(s3.most_puts_at_once(), 1);
}

#[test]
fn a_manifest_of_local_paths_reads_them_from_its_own_folder_and_submit_takes_a_path() {
    let w = World::new();
    let s3 = S3Server::start();
    let shoot = w.dir.path().join("jobs/shoot");
    photo(&shoot.join("a.png"), 20, 10, 1);
    photo(&shoot.join("b.png"), 10, 20, 2);
    std::fs::write(
        w.dir.path().join("jobs/m.csv"),
        "image,upscale\nshoot/a.png,2\nshoot/b.png,4\n",
    )
    .unwrap();
    let mut a = args(&["batch", "jobs/m.csv", "--quiet", "--poll-interval", "50ms"]);
    a.extend(upload_flags(&s3, ""));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        2
    );
    let given: String = w
        .db()
        .query_row(
            "SELECT local_path || ' ' || resolved_path FROM uploads WHERE job_id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let resolved = std::fs::canonicalize(shoot.join("a.png")).unwrap();
    assert_eq!(given, format!("shoot/a.png {}", resolved.display()));

    // The same photo submitted by path is the same object: nothing uploaded again.
    photo(&w.dir.path().join("c.png"), 12, 12, 3);
    let mut a = args(&["submit", "c.png"]);
    a.extend(upload_flags(&s3, ""));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s3.requests("PUT").len(), 3);
    std::fs::copy(
        w.dir.path().join("c.png"),
        w.dir.path().join("copy-of-c.png"),
    )
    .unwrap();
    let mut a = args(&["submit", "copy-of-c.png", "--upscale", "4"]);
    a.extend(upload_flags(&s3, ""));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s3.requests("PUT").len(), 3, "same content, same object");
    assert_eq!(w.sandbox.stats().submissions, 4);
}

/// Waits (bounded) until `check` holds.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_run_killed_during_uploads_uploads_nothing_twice_but_the_ones_under_way() {
    let w = World::new();
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 30);
    let mut a = batch_args(&w, &s3, &dir, &["--concurrency", "2"]);
    a.retain(|x| x != "--quiet");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut cmd = w.command(&a);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("some uploads", Duration::from_secs(60), || {
        s3.requests("PUT").len() >= 3
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let before = s3.requests("PUT");
    assert!(before.len() < 30, "the kill came before the last upload");

    let mut a = args(&["run", "--quiet", "--poll-interval", "50ms", "--out-dir"]);
    a.push(w.out_dir().to_string_lossy().into_owned());
    a.extend(upload_flags(&s3, "in"));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let puts = s3.requests("PUT");
    let mut unique = puts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 30, "every photo uploaded");
    assert!(
        puts.len() <= 32,
        "at most the two uploads under way at the kill redone: {} PUTs",
        puts.len()
    );
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        30
    );
    assert_eq!(w.sandbox.stats().submissions, 30);
}

#[test]
fn an_expired_url_is_signed_again_when_the_job_is_resent() {
    // A slow queue and 1 s URLs: the sandbox fetches the input after the URL expired.
    let w = World::timed(SandboxConfig {
        queue_ms: 2500,
        processing_ms: (10, 20),
        ..SandboxConfig::default()
    });
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 2);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &["--url-ttl", "1s"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'failed'"),
        2
    );
    let first: Vec<String> = w
        .sandbox
        .stats()
        .submissions_by_image
        .keys()
        .cloned()
        .collect();

    let mut a = args(&[
        "run",
        "--quiet",
        "--poll-interval",
        "50ms",
        "--retry",
        "failed",
        "--out-dir",
    ]);
    a.push(w.out_dir().to_string_lossy().into_owned());
    a.extend(upload_flags(&s3, "in"));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        2
    );
    let stats = w.sandbox.stats();
    assert_eq!(stats.submissions, 4);
    // Each resend carried a URL never sent before; the objects were not uploaded again.
    assert_eq!(stats.submissions_by_image.len(), 4, "{first:?}");
    assert_eq!(s3.requests("PUT").len(), 2);
    // The failures' answers were recorded, but no signed URL or key id with them.
    let mut bytes = std::fs::read(w.ledger()).unwrap();
    bytes.extend(std::fs::read(w.dir.path().join("ledger.db-wal")).unwrap_or_default());
    let ledger = String::from_utf8_lossy(&bytes).into_owned();
    assert!(!ledger.contains("X-Amz-Signature"));
    assert!(!ledger.contains(crate::s3::ACCESS_KEY));
}

#[test]
fn a_missing_bucket_or_wrong_credentials_stop_before_anything_is_sent() {
    let w = World::new();
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 3);
    let mut a = batch_args(&w, &s3, &dir, &[]);
    for x in a.iter_mut() {
        if x.starts_with("s3://") {
            *x = "s3://no-such-bucket/in".into();
        }
    }
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("bucket `no-such-bucket` does not exist"), "{t}");
    assert_eq!(w.sandbox.stats().submissions, 0);
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        3
    );
    // Once the bucket exists, a run carries on.
    std::fs::create_dir_all(s3.root.path().join("no-such-bucket")).unwrap();
    let mut r = args(&["run", "--quiet", "--poll-interval", "50ms"]);
    r.extend(
        a[a.iter().position(|x| x == "--upload").unwrap()..]
            .iter()
            .cloned(),
    );
    let out = cli_s3(&w, &s3, &r);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        3
    );

    // Wrong credentials: named, never quoted.
    let w2 = World::new();
    let dir = w2.dir.path().join("album");
    photo_tree(&dir, 2);
    let a = batch_args(&w2, &s3, &dir, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let env = s3.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-xyz"));
    let out = w2.cli_env(&a, &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("refused the credentials") && t.contains("AWS_SECRET_ACCESS_KEY"),
        "{t}"
    );
    assert!(!t.contains("wrong-secret-value-xyz"), "{t}");
    assert_eq!(w2.sandbox.stats().submissions, 0);
    // With the right secret, `run` carries on.
    let mut r = args(&["run", "--quiet", "--poll-interval", "50ms", "--out-dir"]);
    r.push(w2.out_dir().to_string_lossy().into_owned());
    r.extend(upload_flags(&s3, "in"));
    let out = cli_s3(&w2, &s3, &r);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w2.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        2
    );
}

#[test]
fn delete_uploads_empties_the_bucket_and_prune_removes_only_what_no_job_needs() {
    let w = World::new();
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 4);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &dir, &["--delete-uploads"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        4
    );
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    assert_eq!(s3.requests("DELETE").len(), 4);
    assert_eq!(
        w.count("SELECT count(*) FROM events WHERE kind = 'upload_deleted'"),
        4
    );
    assert_eq!(
        w.count("SELECT count(*) FROM uploads WHERE deleted_at IS NULL"),
        0
    );

    // prune: a finished job's object goes, a planned job's object stays.
    let w = World::new();
    let done = w.dir.path().join("done");
    photo_tree(&done, 2);
    let out = cli_s3(&w, &s3, &batch_args(&w, &s3, &done, &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A planned job of another batch shares the first photo's object (same content).
    let later = w.dir.path().join("later");
    std::fs::create_dir_all(&later).unwrap();
    std::fs::copy(done.join("img00.png"), later.join("x.png")).unwrap();
    let mut a = batch_args(&w, &s3, &later, &["--enqueue-only", "--upscale", "4"]);
    a.retain(|x| x != "--poll-interval" && x != "50ms" && x != "--quiet");
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut a = args(&["uploads", "prune"]);
    a.extend(upload_flags(&s3, "in"));
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 object(s) deleted"), "{}", text(&out));
    assert_eq!(s3.objects().len(), 1, "the planned job's object is kept");
}

#[test]
fn doctor_checks_the_bucket_and_report_groups_by_folder() {
    let w = World::new();
    let s3 = S3Server::start();
    let mut a = args(&["doctor"]);
    a.extend(upload_flags(&s3, "in"));
    let out = cli_s3(&w, &s3, &a);
    let t = text(&out);
    assert!(
        t.contains("ok   bucket") && t.contains("written, read back and deleted"),
        "{t}"
    );
    assert_eq!(s3.requests("PUT").len(), 1);
    assert_eq!(s3.requests("DELETE").len(), 1);
    assert!(s3.objects().is_empty());
    let mut a = args(&[
        "doctor",
        "--upload",
        "s3://no-such-bucket/in",
        "--s3-path-style",
    ]);
    a.extend(["--s3-endpoint".to_string(), s3.endpoint.clone()]);
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL bucket"), "{}", text(&out));
    assert!(text(&out).contains("no-such-bucket"), "{}", text(&out));

    let one = w.dir.path().join("one");
    let two = w.dir.path().join("two");
    photo(&one.join("a.png"), 10, 10, 1);
    photo(&two.join("b.png"), 10, 10, 2);
    photo(&two.join("c.png"), 10, 10, 3);
    for d in [&one, &two] {
        let out = cli_s3(&w, &s3, &batch_args(&w, &s3, d, &[]));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = w.cli(&["report", "--by", "folder", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap_or_else(|| panic!("{v}"));
    let groups: Vec<(String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["group"].as_str().unwrap().to_string(),
                r["jobs"].as_i64().unwrap(),
            )
        })
        .collect();
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(groups, [(canon(&one), 1), (canon(&two), 2)]);
}

/// A loopback "bucket" that answers every request with one S3 error document, as a bucket
/// does when the request's date is far from its clock. Stops when dropped.
struct SkewedBucket {
    endpoint: String,
    server: std::sync::Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SkewedBucket {
    fn start() -> SkewedBucket {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let srv = server.clone();
        let thread = std::thread::spawn(move || {
            for mut request in srv.incoming_requests() {
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
                let doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message><MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds></Error>";
                let response = tiny_http::Response::from_string(doc)
                    .with_status_code(403)
                    .with_header(
                        "Content-Type: application/xml"
                            .parse::<tiny_http::Header>()
                            .unwrap(),
                    );
                let _ = request.respond(response);
            }
        });
        SkewedBucket {
            endpoint: format!("http://127.0.0.1:{port}"),
            server,
            thread: Some(thread),
        }
    }
}

impl Drop for SkewedBucket {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The arguments of `run` against this endpoint.
fn run_args(w: &World, endpoint: &str) -> Vec<String> {
    let mut a = args(&["run", "--quiet", "--poll-interval", "50ms", "--out-dir"]);
    a.push(w.out_dir().to_string_lossy().into_owned());
    a.extend(args(&[
        "--upload",
        &format!("s3://{BUCKET}/in"),
        "--s3-endpoint",
        endpoint,
        "--s3-path-style",
    ]));
    a
}

#[test]
fn a_clock_skew_answer_names_the_clock_and_a_later_run_carries_on() {
    let w = World::new();
    let s3 = S3Server::start();
    let skewed = SkewedBucket::start();
    let dir = w.dir.path().join("album");
    photo_tree(&dir, 3);
    let mut a = batch_args(&w, &s3, &dir, &[]);
    for x in a.iter_mut() {
        if *x == s3.endpoint {
            *x = skewed.endpoint.clone();
        }
    }
    let out = cli_s3(&w, &s3, &a);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "bucket `{BUCKET}` says this machine's clock is wrong (RequestTimeTooSkewed)"
        )) && t.contains("NTP")
            && t.contains("`codeformer-ledger run` carries on"),
        "{t}"
    );
    assert!(!t.contains(SECRET_KEY), "{t}");
    assert_eq!(w.sandbox.stats().submissions, 0, "nothing sent");
    assert_eq!(
        w.count("SELECT count(*) FROM jobs WHERE state = 'planned'"),
        3
    );
    assert!(w.count("SELECT count(*) FROM events WHERE kind = 'upload_failed'") >= 1);
    assert_eq!(
        w.count("SELECT count(*) FROM uploads WHERE uploaded_at IS NOT NULL"),
        0
    );
    // Once the clock (here: the bucket) is right, `run` carries on.
    let out = cli_s3(&w, &s3, &run_args(&w, &s3.endpoint));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 3);
}

#[test]
fn an_unreadable_photo_is_named_nothing_is_sent_and_a_later_run_carries_on() {
    let w = World::new();
    let s3 = S3Server::start();
    let skewed = SkewedBucket::start();
    let dir = w.dir.path().join("album");
    let photos = photo_tree(&dir, 3);
    // Recorded first (the bucket refuses the uploads), then made unreadable.
    let mut a = batch_args(&w, &s3, &dir, &[]);
    for x in a.iter_mut() {
        if *x == s3.endpoint {
            *x = skewed.endpoint.clone();
        }
    }
    assert_eq!(cli_s3(&w, &s3, &a).status.code(), Some(1));
    let victim = &photos[1];
    let original = std::fs::read(victim).unwrap();
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // chmod 000 does not stop root from reading: a folder in the file's place does.
        eprintln!(
            "running as root: chmod 000 cannot make a file unreadable; a folder stands in for it"
        );
        std::fs::remove_file(victim).unwrap();
        std::fs::create_dir(victim).unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(victim, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cli_s3(&w, &s3, &run_args(&w, &s3.endpoint));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    let shown = victim.display().to_string();
    assert!(
        t.contains(&shown)
            && t.contains("cannot be read for upload")
            && t.contains("restore the file"),
        "{t}"
    );
    assert_eq!(w.sandbox.stats().submissions, 0, "nothing sent");
    // Restored, the next run carries on and uploads each photo once.
    if root {
        std::fs::remove_dir(victim).unwrap();
        std::fs::write(victim, &original).unwrap();
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = cli_s3(&w, &s3, &run_args(&w, &s3.endpoint));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_done(&w, &s3, 3);
}

/// A photo of noise, which compresses badly, so its restored output is large.
fn noisy_photo(path: &Path, side: u32, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn a_full_disk_for_outputs_names_the_folder_and_a_later_run_downloads() {
    // Filling a disk needs root or a disk of its own; a file size limit on the process
    // (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the output's write fail the same way, with
    // EFBIG where a full disk gives ENOSPC (both are "no room"; the unit test of
    // DownloadError::in_folder covers ENOSPC and EDQUOT).
    const LIMIT: u64 = 1 << 20;
    let w = World::new();
    let s3 = S3Server::start();
    let dir = w.dir.path().join("album");
    noisy_photo(&dir.join("noise.png"), 600, 7);
    let a = batch_args(&w, &s3, &dir, &["--upscale", "4"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut cmd = w.command(&a);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let limit = libc::rlimit {
                rlim_cur: LIMIT as libc::rlim_t,
                rlim_max: LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("could not be downloaded"),
        "{}",
        text(&out)
    );
    assert!(
        std::fs::metadata(w.ledger()).unwrap().len() < LIMIT,
        "the limit stops the output, not the ledger"
    );
    let show = text(&w.cli(&["show", "1"]));
    let out_dir = w.out_dir().canonicalize().unwrap();
    assert!(
        show.contains(&format!("no room for the output in {}", out_dir.display()))
            && show.contains("free space on that disk, or give --out-dir on another one"),
        "{show}"
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "no partial output left: {left:?}");
    assert_eq!(w.sandbox.stats().submissions, 1);
    // With room again, `run` downloads it; nothing is uploaded or sent again.
    let out = cli_s3(&w, &s3, &run_args(&w, &s3.endpoint));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        crate::common::png_size(&out_dir.join("noise.png")),
        (2400, 2400)
    );
    assert_eq!(w.sandbox.stats().submissions, 1);
    assert_eq!(s3.requests("PUT").len(), 1);
}
