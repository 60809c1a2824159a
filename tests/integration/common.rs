//! Shared set-up: a temporary folder with a ledger, a sandbox serving test images, and a
//! way to run the binary against both.

use codeformer_ledger::sandbox::{Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_codeformer-ledger");

pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: Sandbox,
}

impl World {
    /// A sandbox with quick timings serving `static/` of a fresh temporary folder.
    pub fn new() -> World {
        World::with(SandboxConfig::default())
    }

    pub fn with(config: SandboxConfig) -> World {
        World::timed(SandboxConfig {
            queue_ms: 10,
            processing_ms: (20, 40),
            ..config
        })
    }

    /// Like [`World::with`], but keeps the configuration's own timings.
    pub fn timed(config: SandboxConfig) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let static_dir = dir.path().join("static");
        std::fs::create_dir_all(&static_dir).unwrap();
        let sandbox = Sandbox::start(SandboxConfig {
            static_dir: Some(static_dir),
            ..config
        })
        .expect("sandbox starts");
        World { dir, sandbox }
    }

    pub fn ledger(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Writes a PNG of this size into the static folder and returns its URL.
    pub fn png(&self, name: &str, width: u32, height: u32) -> String {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        img.save(self.dir.path().join("static").join(name))
            .expect("write png");
        self.sandbox.static_url(name)
    }

    /// Runs the binary with this world's ledger and sandbox, without a key.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("binary runs")
    }

    /// The binary with this world's ledger and sandbox, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("PIXAZO_API_KEY")
            .env("CODEFORMER_LEDGER", self.ledger())
            .env("PIXAZO_BASE_URL", self.sandbox.base_url())
            .args(args);
        cmd
    }

    /// The arguments of [`World::run`]: `run` with fast polling into the output folder.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["run", "--quiet", "--poll-interval", "50ms", "--out-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.out_dir().to_string_lossy().into_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts `run` (as [`World::run`] would) as a child process whose output goes to `log`.
    pub fn spawn_run(&self, extra: &[&str], log: &Path) -> Child {
        let args = self.run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let file = std::fs::File::create(log).expect("log file");
        self.command(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("binary starts")
    }

    /// Writes a text manifest of these URLs and returns its path.
    pub fn manifest(&self, name: &str, urls: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, urls.join("\n") + "\n").unwrap();
        path
    }

    /// `run` with fast polling into this world's output folder.
    pub fn run(&self, extra: &[&str]) -> Output {
        let args = self.run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args)
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.ledger()).expect("open ledger")
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// Times in `jobs` and `attempts` that are not unix milliseconds (every writer stores a
    /// number; only a migration keeps text that was not a time).
    pub fn times_not_in_millis(&self) -> i64 {
        self.count(
            "SELECT (SELECT count(*) FROM jobs WHERE typeof(created_at) != 'integer'
                     OR typeof(updated_at) != 'integer')
                  + (SELECT count(*) FROM attempts
                     WHERE typeof(submitted_at) NOT IN ('integer', 'null')
                        OR typeof(finished_at) NOT IN ('integer', 'null'))",
        )
    }
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("output exists");
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is a PNG",
        path.display()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a readable PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// Polls `ready` every few milliseconds until it holds; panics naming `what` if it still does
/// not after `limit`. The limit only keeps a broken build from hanging the suite: no test
/// asserts how long anything took.
pub fn wait_for(what: &str, limit: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Writes at `path` a ledger as version 1 of this program made it (its schema, then `rows`),
/// for the tests of migrating old ledgers.
pub fn v1_ledger(path: &Path, rows: &str) {
    let db = rusqlite::Connection::open(path).expect("create the old ledger");
    db.execute_batch(include_str!("../fixtures/schema-v1.sql"))
        .expect("version 1 schema");
    db.execute_batch(rows).expect("old ledger rows");
    db.pragma_update(None, "user_version", 1)
        .expect("version 1");
}
