//! Local photos through the user's S3-compatible bucket.
//!
//! The gateway only fetches URLs, so a local file reaches it as a presigned GET URL of an
//! object in the user's bucket. Objects are content-addressed (`PREFIX/<sha256>.<ext>`): a
//! photo is uploaded once however often it is submitted, and a killed upload is simply done
//! again. A job whose input is a local file names its object with a locator,
//! `s3://BUCKET/PREFIX/<sha256>.<ext>`, as its image; the URL sent is signed from it at send
//! time ([`Storage::url_to_send`]), so a job resent later gets a fresh URL and the idempotency
//! key depends on the content and parameters only, never on a signature.
//!
//! Requests are signed with `rusty-s3` (SigV4, sans-IO) and sent through the same blocking
//! `ureq` agent the gateway client builds for files, so its TLS and proxy settings apply.
//! Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
//! only and never appear in a message: errors name the bucket, the object or the file.

pub mod local;

use rusty_s3::actions::{DeleteObject, GetObject, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The default lifetime of a presigned URL.
pub const DEFAULT_URL_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime SigV4 allows a presigned URL.
pub const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The region when `AWS_REGION` is unset.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The longest error answer read from the bucket.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// `s3://BUCKET/PREFIX`: where local files are uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix("s3://").ok_or_else(|| {
            format!("`{text}` is not an upload destination (expected s3://BUCKET/PREFIX)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!(
                "`{text}`: `{bucket}` is not a bucket name (3-63 characters: a-z, 0-9, `-`, `.`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.chars().any(|c| c.is_control()) || prefix.split('/').any(|s| s == "..") {
            return Err(format!(
                "`{text}`: the prefix cannot hold `..` or control characters"
            ));
        }
        Ok(Destination {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl Destination {
    /// The object key of a file with this content.
    pub fn object_key(&self, sha256: &str, ext: &str) -> String {
        if self.prefix.is_empty() {
            format!("{sha256}.{ext}")
        } else {
            format!("{}/{sha256}.{ext}", self.prefix)
        }
    }

    /// The locator a job records as its image: `s3://BUCKET/KEY`.
    pub fn locator(&self, sha256: &str, ext: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object_key(sha256, ext))
    }
}

/// Splits a locator `s3://BUCKET/KEY` into bucket and key; `None` for anything else.
pub fn parse_locator(image: &str) -> Option<(&str, &str)> {
    let rest = image.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// Whether a job's image is a locator of an uploaded local file.
pub fn is_locator(image: &str) -> bool {
    parse_locator(image).is_some()
}

/// Everything that says how to reach the bucket, except the credentials.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub destination: Destination,
    /// `--s3-endpoint` / `AWS_ENDPOINT_URL`; `None` is AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub url_ttl: Duration,
}

impl StorageConfig {
    pub fn new(destination: Destination) -> Self {
        StorageConfig {
            destination,
            endpoint: None,
            region: DEFAULT_REGION.to_string(),
            path_style: false,
            url_ttl: DEFAULT_URL_TTL,
        }
    }

    /// The endpoint in force.
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }
}

/// What went wrong talking to the bucket. Every message names the bucket (or the file) and
/// the fix; none holds a credential.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// No credentials in the environment.
    #[error("uploading to {destination} needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)")]
    NoCredentials { destination: String },
    /// The endpoint or bucket cannot be made into a URL.
    #[error("{destination}: endpoint `{endpoint}` cannot be used: {reason} (check --s3-endpoint / AWS_ENDPOINT_URL; local servers need --s3-path-style)")]
    BadEndpoint {
        destination: String,
        endpoint: String,
        reason: String,
    },
    /// 404 NoSuchBucket.
    #[error("bucket `{bucket}` does not exist at {endpoint} (create it, or fix --upload s3://BUCKET/PREFIX, --s3-endpoint or AWS_REGION)")]
    NoSuchBucket { bucket: String, endpoint: String },
    /// 403 with a credentials code (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied).
    #[error("bucket `{bucket}` refused the credentials ({code}, HTTP {status}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and that they may write to the bucket")]
    Credentials {
        bucket: String,
        status: u16,
        code: String,
    },
    /// RequestTimeTooSkewed.
    #[error("bucket `{bucket}` says this machine's clock is wrong (RequestTimeTooSkewed): set the system clock right (e.g. enable NTP), then run again")]
    ClockSkew { bucket: String },
    /// No answer at all.
    #[error("bucket `{bucket}` at {endpoint} cannot be reached: {reason} (check --s3-endpoint / AWS_ENDPOINT_URL and the network)")]
    Unreachable {
        bucket: String,
        endpoint: String,
        reason: String,
    },
    /// Any other answer.
    #[error("bucket `{bucket}` answered HTTP {status} {code} to {action} {key}: {message}")]
    Answer {
        bucket: String,
        action: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The local file could not be read, or changed since it was recorded.
    #[error("{0}")]
    File(String),
}

/// One object to put: its key, the local file and the sha256 its bytes must still have.
#[derive(Debug, Clone)]
pub struct PutWork {
    pub key: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// What became of one [`PutWork`] ([`Storage::put_all`]).
#[derive(Debug)]
pub struct PutDone {
    /// Its place in the work list.
    pub index: usize,
    /// `Ok(None)`: the object was already in the bucket (HEAD), nothing was sent;
    /// `Ok(Some(status))`: the PUT's HTTP status.
    pub result: Result<Option<u16>, StorageError>,
    /// The HEAD and the PUT together.
    pub elapsed: Duration,
}

/// The bucket, its credentials and the HTTP agent.
#[derive(Clone)]
pub struct Storage {
    config: StorageConfig,
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Credentials from the environment; `agent` is the gateway client's file agent.
    pub fn new(config: StorageConfig, agent: ureq::Agent) -> Result<Storage, StorageError> {
        let credentials = credentials_from_env().ok_or_else(|| StorageError::NoCredentials {
            destination: config.destination.to_string(),
        })?;
        Storage::with_credentials(config, credentials, agent)
    }

    pub fn with_credentials(
        config: StorageConfig,
        credentials: Credentials,
        agent: ureq::Agent,
    ) -> Result<Storage, StorageError> {
        let endpoint = config.endpoint_url();
        let bad = |reason: String| StorageError::BadEndpoint {
            destination: config.destination.to_string(),
            endpoint: endpoint.clone(),
            reason,
        };
        let url = url::Url::parse(&endpoint).map_err(|e| bad(e.to_string()))?;
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            url,
            style,
            config.destination.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Storage {
            config,
            bucket,
            credentials,
            agent,
        })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn destination(&self) -> &Destination {
        &self.config.destination
    }

    /// The URL the gateway is given for a job's image: a fresh presigned GET URL for a
    /// locator of this bucket, the image itself otherwise. Pure signing, no network.
    pub fn url_to_send(&self, image: &str) -> String {
        match parse_locator(image) {
            Some((bucket, key)) if bucket == self.config.destination.bucket => {
                self.presign_get(key)
            }
            _ => image.to_string(),
        }
    }

    /// A presigned GET URL of an object, valid for `--url-ttl`.
    pub fn presign_get(&self, key: &str) -> String {
        GetObject::new(&self.bucket, Some(&self.credentials), key)
            .sign(self.config.url_ttl)
            .to_string()
    }

    /// Short-lived URLs for the requests the tool makes itself.
    const REQUEST_TTL: Duration = Duration::from_secs(300);

    /// Whether the object is in the bucket (HEAD). `Ok(false)` for 404 and for answers a HEAD
    /// cannot explain (they have no body): the PUT that follows names the problem.
    pub fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let url =
            HeadObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::REQUEST_TTL);
        let response = self
            .agent
            .head(url.as_str())
            .call()
            .map_err(|e| self.unreachable(e))?;
        Ok(response.status().is_success())
    }

    /// Uploads `path` as `key`, checking that its bytes still hash to `sha256`. Returns the
    /// PUT's HTTP status.
    pub fn put_file(&self, key: &str, path: &Path, sha256: &str) -> Result<u16, StorageError> {
        use sha2::{Digest, Sha256};
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| {
                StorageError::File(format!(
                    "{}: cannot be read for upload: {e} (restore the file, then run again)",
                    path.display()
                ))
            })?;
        let actual = crate::digest::hex(&Sha256::digest(&bytes));
        if actual != sha256 {
            return Err(StorageError::File(format!(
                "{}: changed since it was recorded (sha256 {actual}, recorded {sha256}); restore it, or submit it again as a new job",
                path.display()
            )));
        }
        self.put_bytes(key, &bytes, content_type(key))
    }

    /// Puts the object unless the bucket has it (HEAD first).
    pub fn put_if_missing(&self, work: &PutWork) -> Result<Option<u16>, StorageError> {
        if self.exists(&work.key)? {
            return Ok(None);
        }
        self.put_file(&work.key, &work.path, &work.sha256).map(Some)
    }

    /// Puts every object of `work` that the bucket lacks, at most `concurrency` at a time.
    /// `done` runs on the calling thread for each, in the order they finish; once it returns
    /// `Ok(false)` or an error, no further one is started, and those under way still finish
    /// and are reported (so a caller records every request that was made).
    pub fn put_all<E>(
        &self,
        work: &[PutWork],
        concurrency: usize,
        mut done: impl FnMut(PutDone) -> Result<bool, E>,
    ) -> Result<(), E> {
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel::<PutDone>();
        std::thread::scope(|scope| {
            for _ in 0..concurrency.clamp(1, work.len().max(1)) {
                let (tx, next, stop) = (tx.clone(), &next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = work.get(index) else {
                            break;
                        };
                        let started = Instant::now();
                        let result = self.put_if_missing(item);
                        let elapsed = started.elapsed();
                        let report = PutDone {
                            index,
                            result,
                            elapsed,
                        };
                        if tx.send(report).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut outcome = Ok(());
            for report in rx {
                if outcome.is_err() {
                    continue;
                }
                match done(report) {
                    Ok(true) => {}
                    Ok(false) => stop.store(true, Ordering::Relaxed),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        outcome = Err(e);
                    }
                }
            }
            outcome
        })
    }

    /// PUTs bytes as an object.
    pub fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<u16, StorageError> {
        let url =
            PutObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::REQUEST_TTL);
        let mut response = self
            .agent
            .put(url.as_str())
            .header("Content-Type", content_type)
            .send(bytes)
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(status);
        }
        Err(self.answer_error("PUT", key, status, read_error_body(&mut response)))
    }

    /// GETs an object's bytes (at most `limit`).
    pub fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        let url =
            GetObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::REQUEST_TTL);
        let mut response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(self.answer_error("GET", key, status, read_error_body(&mut response)));
        }
        let mut bytes = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(limit)
            .reader()
            .read_to_end(&mut bytes)
            .map_err(|e| self.unreachable_io(e))?;
        Ok(bytes)
    }

    /// Deletes an object; a missing one is not an error (S3 answers 204 either way).
    pub fn delete(&self, key: &str) -> Result<u16, StorageError> {
        let url =
            DeleteObject::new(&self.bucket, Some(&self.credentials), key).sign(Self::REQUEST_TTL);
        let mut response = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        if response.status().is_success() || status == 404 {
            return Ok(status);
        }
        Err(self.answer_error("DELETE", key, status, read_error_body(&mut response)))
    }

    fn unreachable(&self, e: ureq::Error) -> StorageError {
        StorageError::Unreachable {
            bucket: self.config.destination.bucket.clone(),
            endpoint: self.config.endpoint_url(),
            reason: self.scrub(&e.to_string()),
        }
    }

    fn unreachable_io(&self, e: std::io::Error) -> StorageError {
        StorageError::Unreachable {
            bucket: self.config.destination.bucket.clone(),
            endpoint: self.config.endpoint_url(),
            reason: self.scrub(&e.to_string()),
        }
    }

    /// Removes anything that looks like a signature or a credential from a text that may
    /// quote a URL (ureq's errors do).
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        if let Some(i) = out.find("X-Amz-") {
            out.truncate(i);
            out.push('…');
        }
        for secret in [
            Some(self.credentials.key()),
            Some(self.credentials.secret()),
            self.credentials.token(),
        ]
        .into_iter()
        .flatten()
        {
            if !secret.is_empty() {
                out = out.replace(secret, "[redacted]");
            }
        }
        out
    }

    fn answer_error(
        &self,
        action: &'static str,
        key: &str,
        status: u16,
        body: String,
    ) -> StorageError {
        let code = xml_field(&body, "Code").unwrap_or_default();
        let bucket = self.config.destination.bucket.clone();
        match code.as_str() {
            "NoSuchBucket" => StorageError::NoSuchBucket {
                bucket,
                endpoint: self.config.endpoint_url(),
            },
            "RequestTimeTooSkewed" => StorageError::ClockSkew { bucket },
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken"
            | "InvalidSecurity" => StorageError::Credentials {
                bucket,
                status,
                code,
            },
            _ if status == 403 => StorageError::Credentials {
                bucket,
                status,
                code: if code.is_empty() {
                    "Forbidden".into()
                } else {
                    code
                },
            },
            _ => StorageError::Answer {
                bucket,
                action,
                key: key.to_string(),
                status,
                message: self.scrub(&xml_field(&body, "Message").unwrap_or_default()),
                code,
            },
        }
    }
}

/// The credentials in the environment, if complete.
pub fn credentials_from_env() -> Option<Credentials> {
    let key = std::env::var("AWS_ACCESS_KEY_ID")
        .ok()
        .filter(|k| !k.is_empty())?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    Some(
        match std::env::var("AWS_SESSION_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        },
    )
}

/// The MIME type of an object by its extension (its name comes from its content).
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next() {
        Some("jpg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        _ => "application/octet-stream",
    }
}

fn read_error_body(response: &mut ureq::http::Response<ureq::Body>) -> String {
    let mut bytes = Vec::new();
    let _ = response
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BYTES)
        .reader()
        .take(MAX_ERROR_BYTES)
        .read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The text of `<NAME>…</NAME>` in an S3 error document.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_name_their_objects() {
        let d: Destination = "s3://my-photos/in/2026/".parse().unwrap();
        assert_eq!(d.bucket, "my-photos");
        assert_eq!(d.prefix, "in/2026");
        assert_eq!(d.locator("ab", "jpg"), "s3://my-photos/in/2026/ab.jpg");
        assert_eq!(
            parse_locator("s3://my-photos/in/2026/ab.jpg"),
            Some(("my-photos", "in/2026/ab.jpg"))
        );
        let bare: Destination = "s3://bucket".parse().unwrap();
        assert_eq!(bare.object_key("ab", "png"), "ab.png");
        for bad in [
            "my-photos",
            "s3://",
            "s3://A_B/x",
            "s3://ok-bucket/../x",
            "https://x/y",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
        assert!(!is_locator("https://x.test/a.png"));
    }

    #[test]
    fn error_documents_map_to_their_fix() {
        let storage = Storage::with_credentials(
            StorageConfig {
                endpoint: Some("http://127.0.0.1:9".into()),
                path_style: true,
                ..StorageConfig::new("s3://photos-in/p".parse().unwrap())
            },
            Credentials::new("AKIDEXAMPLE", "SECRETEXAMPLE"),
            ureq::Agent::new_with_defaults(),
        )
        .unwrap();
        let doc = |code: &str| {
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>key AKIDEXAMPLE</Message></Error>")
        };
        let e = storage.answer_error("PUT", "k", 404, doc("NoSuchBucket"));
        assert!(
            e.to_string().contains("bucket `photos-in` does not exist"),
            "{e}"
        );
        let e = storage.answer_error("PUT", "k", 403, doc("RequestTimeTooSkewed"));
        assert!(e.to_string().contains("clock"), "{e}");
        let e = storage.answer_error("PUT", "k", 403, doc("SignatureDoesNotMatch"));
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = storage.answer_error("PUT", "k", 500, doc("InternalError"));
        assert!(!e.to_string().contains("AKIDEXAMPLE"), "{e}");
        let url = storage.presign_get("p/ab.png");
        assert!(
            url.starts_with("http://127.0.0.1:9/photos-in/p/ab.png?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=86400"), "{url}");
        assert!(!url.contains("SECRETEXAMPLE"));
    }
}
