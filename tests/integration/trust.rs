//! The network people really have: a gateway behind a private CA (reached with `--ca-cert` or
//! `SSL_CERT_FILE`), a CONNECT proxy that must never see the key, and the local webhook tour.

use crate::common::{text, World};
use codeformer_ledger::sandbox::SandboxConfig;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "trust-test-key-5f3a9c";

fn backend(world: &World) -> std::net::SocketAddr {
    world
        .sandbox
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the sandbox listens on an address")
}

/// A test CA and a TLS terminator for 127.0.0.1 in front of `backend`.
struct Terminator {
    url: String,
    ca_pem: String,
}

fn terminator(backend: std::net::SocketAddr) -> Terminator {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "codeformer-ledger test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key_der)
    .unwrap();
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(stream) = stream else { continue };
            let server = server.clone();
            std::thread::spawn(move || terminate(stream, server, backend));
        }
    });
    Terminator {
        url,
        ca_pem: ca.pem(),
    }
}

/// Decrypts one client connection and relays it to the backend, both ways.
fn terminate(mut tcp: TcpStream, server: Arc<rustls::ServerConfig>, backend: std::net::SocketAddr) {
    let Ok(mut conn) = rustls::ServerConnection::new(server) else {
        return;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(20)));
    let Ok(mut back) = TcpStream::connect(backend) else {
        return;
    };
    let _ = back.set_read_timeout(Some(Duration::from_millis(20)));
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    while started.elapsed() < Duration::from_secs(60) {
        let mut progressed = false;
        match conn.read_tls(&mut tcp) {
            Ok(0) => return,
            Ok(_) => {
                if conn.process_new_packets().is_err() {
                    let _ = conn.write_tls(&mut tcp);
                    return;
                }
                progressed = true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if back.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        match back.read(&mut buf) {
            Ok(0) => {
                conn.send_close_notify();
                let _ = conn.write_tls(&mut tcp);
                return;
            }
            Ok(n) => {
                let _ = conn.writer().write_all(&buf[..n]);
                progressed = true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
        while conn.wants_write() {
            if conn.write_tls(&mut tcp).is_err() {
                return;
            }
        }
        if !progressed {
            std::thread::yield_now();
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A CONNECT proxy that counts tunnels and keeps every byte it relays.
struct ConnectProxy {
    url: String,
    connects: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<u8>>>,
}

fn connect_proxy() -> ConnectProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connects = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (connects.clone(), seen.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(stream) = stream else { continue };
            let (c, s) = (c.clone(), s.clone());
            std::thread::spawn(move || tunnel(stream, c, s));
        }
    });
    ConnectProxy {
        url,
        connects,
        seen,
    }
}

fn tunnel(mut client: TcpStream, connects: Arc<AtomicUsize>, seen: Arc<Mutex<Vec<u8>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    seen.lock().unwrap().extend_from_slice(&head);
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let mut parts = line.split_whitespace();
    if parts.next() != Some("CONNECT") {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    connects.fetch_add(1, Ordering::SeqCst);
    let Some(Ok(mut upstream)) = parts.next().map(TcpStream::connect) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let seen2 = seen.clone();
    let up = std::thread::spawn(move || relay(&mut c2, &mut u2, &seen2));
    relay(&mut upstream, &mut client, &seen);
    let _ = up.join();
}

fn relay(from: &mut TcpStream, to: &mut TcpStream, seen: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The binary against `base`, with no proxy or trust settings from the machine's environment.
fn command(world: &World, base: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = world.command(args);
    cmd.env("PIXAZO_BASE_URL", base).env("PIXAZO_API_KEY", KEY);
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn submit_wait<'a>(world: &'a World, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let _ = world;
    let mut args = vec![
        "submit",
        url,
        "--size",
        "8x8",
        "--wait",
        "--poll-interval",
        "50ms",
    ];
    args.extend_from_slice(extra);
    args
}

fn states(world: &World) -> Vec<String> {
    let db = world.db();
    let mut stmt = db.prepare("SELECT state FROM jobs ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn untrusted_gateway_certificate_leaves_the_job_planned_and_names_the_fix() {
    let world = World::new();
    let tls = terminator(backend(&world));
    let image = world.png("a.png", 8, 8);
    let out = command(&world, &tls.url, &submit_wait(&world, &image, &[]), &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("not trusted") && said.contains("UnknownIssuer"),
        "{said}"
    );
    assert!(said.contains("--ca-cert"), "{said}");
    assert!(!said.contains("uncertain"), "{said}");
    assert_eq!(states(&world), ["planned"]);
    assert_eq!(world.sandbox.stats().submissions, 0);

    let doctor = command(&world, &tls.url, &["doctor"], &[]);
    let said = text(&doctor);
    assert!(
        said.contains("cannot be trusted") && said.contains("--ca-cert FILE"),
        "{said}"
    );
}

#[test]
fn a_private_ca_is_trusted_through_ca_cert_and_ssl_cert_file() {
    let world = World::new();
    let tls = terminator(backend(&world));
    let ca = world.dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let ca_arg = ca.to_str().unwrap();
    let a = world.png("a.png", 8, 8);
    let mut args = submit_wait(&world, &a, &[]);
    args.splice(0..0, ["--ca-cert", ca_arg]);
    let out = command(&world, &tls.url, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let b = world.png("b.png", 8, 8);
    let out = command(
        &world,
        &tls.url,
        &submit_wait(&world, &b, &[]),
        &[("SSL_CERT_FILE", ca_arg)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(states(&world), ["completed", "completed"]);

    let doctor = command(&world, &tls.url, &["--ca-cert", ca_arg, "doctor"], &[]);
    let said = text(&doctor);
    assert!(said.contains("1 from --ca-cert"), "{said}");

    let bad = world.dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "hello").unwrap();
    let out = command(
        &world,
        &tls.url,
        &["--ca-cert", bad.to_str().unwrap(), "jobs"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not-a-cert.pem"), "{}", text(&out));
}

#[test]
fn the_proxy_tunnels_https_and_never_sees_the_key_and_no_proxy_bypasses_it() {
    let world = World::new();
    let tls = terminator(backend(&world));
    let proxy = connect_proxy();
    let ca = world.dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let ca_arg = ca.to_str().unwrap();
    let proxied = format!(
        "http://user:s3cret@{}",
        proxy.url.trim_start_matches("http://")
    );

    let a = world.png("a.png", 8, 8);
    let mut args = submit_wait(&world, &a, &[]);
    args.splice(0..0, ["--ca-cert", ca_arg]);
    let out = command(&world, &tls.url, &args, &[("HTTPS_PROXY", &proxied)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(proxy.connects.load(Ordering::SeqCst) >= 1);
    let seen = String::from_utf8_lossy(&proxy.seen.lock().unwrap()).into_owned();
    assert!(!seen.contains(KEY), "the key crossed the proxy in clear");
    assert!(!seen.contains("Ocp-Apim-Subscription-Key"));
    assert!(seen.contains("CONNECT 127.0.0.1:"));

    let doctor = command(
        &world,
        &tls.url,
        &["--ca-cert", ca_arg, "doctor"],
        &[("HTTPS_PROXY", &proxied)],
    );
    let said = text(&doctor);
    assert!(
        said.contains(&format!("{} (a CONNECT tunnel)", proxy.url)),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "{said}");

    // A plain-http gateway through the proxy would show it the key: nothing is sent.
    let before = proxy.connects.load(Ordering::SeqCst);
    let b = world.png("b.png", 8, 8);
    let base = world.sandbox.base_url();
    let out = command(
        &world,
        &base,
        &submit_wait(&world, &b, &[]),
        &[("HTTPS_PROXY", &proxied)],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("in clear") && said.contains("NO_PROXY"),
        "{said}"
    );
    assert_eq!(states(&world), ["completed", "planned"]);
    let seen = String::from_utf8_lossy(&proxy.seen.lock().unwrap()).into_owned();
    assert!(!seen.contains(KEY));

    // NO_PROXY sends it straight to the sandbox.
    let c = world.png("c.png", 8, 8);
    let at = proxy.connects.load(Ordering::SeqCst);
    let out = command(
        &world,
        &base,
        &submit_wait(&world, &c, &[]),
        &[
            ("HTTPS_PROXY", &proxied),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(proxy.connects.load(Ordering::SeqCst), at);
    assert!(at >= before);
}

/// The README's local webhook tour, as written: the sandbox with --allow-http-webhooks,
/// `listen` on loopback, and a job whose callbacks (with an events filter) reach the ledger.
#[test]
fn the_local_webhook_tour_runs_as_written_with_an_events_filter() {
    let world = World::with(SandboxConfig {
        allow_http_webhooks: true,
        ..SandboxConfig::default()
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut listen = world
        .command(&["listen", "--addr", &addr])
        .env("CODEFORMER_LISTEN_TOKEN", "tok123")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let hook = format!("http://{addr}/callback/tok123");
    let image = world.png("a.png", 8, 8);
    let base = world.sandbox.base_url();
    let args = submit_wait(
        &world,
        &image,
        &["--webhook", &hook, "--webhook-events", "start,completed"],
    );
    let out = command(&world, &base, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let filter: String = world
        .db()
        .query_row("SELECT webhook_events_filter FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(filter, r#"["start","completed"]"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    let processing = "SELECT count(*) FROM deliveries WHERE remote_status = 'PROCESSING'";
    while world.count(processing) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        world.count(processing) >= 1,
        "the start event reached listen"
    );

    // The header form with an http URL is accepted because the gateway is on loopback.
    let b = world.png("b.png", 8, 8);
    let args = submit_wait(&world, &b, &["--webhook-url", &hook]);
    let out = command(&world, &base, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let _ = listen.kill();
    let _ = listen.wait();

    // A manifest column carries the filter too; a bad one names its line and field.
    let csv = world.dir.path().join("m.csv");
    std::fs::write(
        &csv,
        format!("image,webhook_events_filter\n{image}x,start;bogus event\n"),
    )
    .unwrap();
    let out = command(
        &world,
        &base,
        &["batch", csv.to_str().unwrap(), "--enqueue-only"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("webhook_events_filter"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_http_webhook_url_is_refused_for_a_gateway_off_loopback() {
    let world = World::new();
    let out = command(
        &world,
        "https://gateway.example.test",
        &[
            "submit",
            "https://example.test/a.png",
            "--size",
            "8x8",
            "--no-send",
            "--webhook-url",
            "http://hooks.example.test/cb",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not https"), "{}", text(&out));
}

#[test]
fn fsync_of_outputs_can_be_turned_off_by_flag_and_config() {
    let world = World::new();
    let config = world.dir.path().join("c.toml");
    std::fs::write(&config, "fsync_outputs = false\n").unwrap();
    let out = world.cli(&["--config", config.to_str().unwrap(), "config", "show"]);
    assert!(
        text(&out).contains("fsync_outputs  false"),
        "{}",
        text(&out)
    );
    let out = world.cli(&["config", "show"]);
    assert!(text(&out).contains("fsync_outputs  true"), "{}", text(&out));
    let image = world.png("a.png", 8, 8);
    let base = world.sandbox.base_url();
    let mut args = submit_wait(&world, &image, &[]);
    args.insert(0, "--no-fsync-outputs");
    let out = command(&world, &base, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The README's local webhook tour, command for command (on free ports): the sandbox calls
/// `listen` back over plain http, and `batch` of the bundled manifest completes with every
/// job's callback applied.
#[test]
fn the_readme_local_webhook_tour_completes_with_callbacks_applied() {
    let world = World::with(SandboxConfig {
        allow_http_webhooks: true,
        ..SandboxConfig::default()
    });
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(examples.join("images")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            world
                .dir
                .path()
                .join("static")
                .join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let manifest = std::fs::read_to_string(examples.join("manifests/photos.csv")).unwrap();
    let manifest = manifest.replace(
        "http://127.0.0.1:8787/static/",
        &world.sandbox.static_url(""),
    );
    let csv = world.dir.path().join("photos.csv");
    std::fs::write(&csv, manifest).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut listen = world
        .command(&["listen", "--addr", &addr])
        .env("CODEFORMER_LISTEN_TOKEN", "tok123")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let hook = format!("http://{addr}/callback/tok123");
    let log = world.dir.path().join("batch.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut batch = world
        .command(&["batch", csv.to_str().unwrap(), "--webhook-url", &hook])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = batch.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = batch.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = listen.kill();
    let _ = listen.wait();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{said}");
    let jobs = world.count("SELECT count(*) FROM jobs");
    assert!(jobs > 0);
    assert_eq!(
        world.count("SELECT count(*) FROM jobs WHERE state = 'completed'"),
        jobs
    );
    assert!(
        world.count(
            "SELECT count(*) FROM deliveries WHERE outcome IN ('confirmed', 'applied', 'duplicate')"
        ) >= 1,
        "{said}"
    );
}

/// Names are looked up once per host and then reused: a batch whose gateway and images are
/// named `localhost` (not an address) completes every job, each sent once, and the outputs
/// are whole; the same holds for a gateway behind TLS reached by name.
#[test]
fn a_gateway_and_images_named_by_host_name_serve_a_whole_batch() {
    let world = World::new();
    let base = world.sandbox.base_url().replace("127.0.0.1", "localhost");
    assert!(base.starts_with("http://localhost:"), "{base}");
    let urls: Vec<String> = (0..12)
        .map(|i| {
            let url = world.png(&format!("n{i}.png"), 8 + i, 8);
            url.replace("127.0.0.1", "localhost")
        })
        .collect();
    let manifest = world.manifest("named.txt", &urls);
    let out_dir = world.out_dir();
    let args = [
        "batch",
        manifest.to_str().unwrap(),
        "--quiet",
        "--poll-interval",
        "50ms",
        "--concurrency",
        "4",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    let out = command(&world, &base, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(states(&world), vec!["completed"; 12]);
    assert_eq!(world.sandbox.stats().submissions, 12);
    let mut sizes: Vec<(u32, u32)> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| crate::common::png_size(&e.unwrap().path()))
        .collect();
    sizes.sort();
    let expected: Vec<(u32, u32)> = (0..12).map(|i| ((8 + i) * 2, 16)).collect();
    assert_eq!(sizes, expected);

    // The same gateway behind a private CA, by name.
    let tls = terminator(backend(&world));
    let ca = world.dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let named = tls.url.replace("127.0.0.1", "localhost");
    let a = world.png("tls.png", 8, 8);
    let mut args = submit_wait(&world, &a, &[]);
    args.splice(0..0, ["--ca-cert", ca.to_str().unwrap()]);
    let out = command(&world, &named, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(states(&world).last().map(String::as_str), Some("completed"));
}
