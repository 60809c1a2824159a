//! An independent S3 server for the tests: `s3s-fs` (objects as files in a temporary folder)
//! behind `s3s`'s service, which checks every SigV4 signature (header and presigned) against
//! one access key, on a loopback port, with a fresh bucket. It runs on a tokio runtime of its
//! own thread; every request is counted by method and path so tests can audit uploads.

use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIATESTPHOTOS000001";
pub const SECRET_KEY: &str = "s3cr3t-photos-test-key-do-not-log";
pub const BUCKET: &str = "photos-in";

pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    puts: Arc<PutGauge>,
    _runtime: tokio::runtime::Runtime,
}

/// PUTs under way, the most seen at once, and how many a PUT waits for (bounded) before it
/// is carried out.
#[derive(Default)]
struct PutGauge {
    now: AtomicUsize,
    most: AtomicUsize,
    hold_for: usize,
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_holding(0)
    }

    /// A server whose PUTs each wait, up to 3 s, until `n` PUTs are under way together: with
    /// uploads made in parallel, [`S3Server::most_puts_at_once`] then reaches `n`.
    pub fn start_holding(n: usize) -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::clone(&requests);
        let puts = Arc::new(PutGauge {
            hold_for: n,
            ..PutGauge::default()
        });
        let gauge = Arc::clone(&puts);
        let root_path = root.path().to_path_buf();
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                let seen = Arc::clone(&seen);
                let gauge = Arc::clone(&gauge);
                let root = root_path.clone();
                tokio::spawn(async move {
                    let counted = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        seen.lock()
                            .unwrap()
                            .push((req.method().to_string(), req.uri().path().to_string()));
                        let service = service.clone();
                        // s3s-fs creates a missing bucket's folder on PUT; S3 answers
                        // NoSuchBucket, as here.
                        let bucket = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("").to_string();
                        let missing = !bucket.is_empty() && !root.join(&bucket).is_dir();
                        let is_put = req.method() == hyper::Method::PUT;
                        let gauge = Arc::clone(&gauge);
                        async move {
                            if is_put {
                                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                                gauge.most.fetch_max(now, Ordering::SeqCst);
                                let deadline = Instant::now() + Duration::from_secs(3);
                                while gauge.most.load(Ordering::SeqCst) < gauge.hold_for
                                    && Instant::now() < deadline
                                {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                            let _done = PutDone(is_put.then(|| Arc::clone(&gauge)));
                            if missing {
                                let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>{bucket}</BucketName></Error>");
                                let response = hyper::Response::builder()
                                    .status(404)
                                    .header("Content-Type", "application/xml")
                                    .body(s3s::Body::from(body))
                                    .unwrap();
                                return Ok(response);
                            }
                            hyper::service::Service::call(&service, req).await
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), counted)
                    .await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root,
            requests,
            puts,
            _runtime: runtime,
        }
    }

    /// The most PUTs that were under way at the same time.
    pub fn most_puts_at_once(&self) -> usize {
        self.puts.most.load(Ordering::SeqCst)
    }

    /// The requests so far with this method, as paths.
    pub fn requests(&self, method: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The objects in the bucket now (keys, sorted), read from the server's folder.
    pub fn objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.root.path().join(BUCKET);
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !name.starts_with('.') {
                        stack.push(path);
                    }
                } else if !name.starts_with('.') && !name.ends_with(".json") {
                    out.push(
                        path.strip_prefix(&base)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    /// The environment a command needs to reach this server with valid credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

/// Counts a PUT as finished when its answer is ready (or its connection dropped).
struct PutDone(Option<Arc<PutGauge>>);

impl Drop for PutDone {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.now.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
