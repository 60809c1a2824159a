//! The blocking HTTP client of the gateway (ureq).

use super::budget::{RequestBudget, Ticket};
use super::net::{agent_builder, handshake_failure, untrusted_certificate, NetConfig};
use super::types::*;
use crate::params::JobParams;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use ureq::Agent;

/// Largest API answer read, in bytes. A longer answer is refused as bad.
pub const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// How to reach the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub base_url: String,
    pub key: Option<ApiKey>,
    /// Whole-call limit for API requests.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Whole-call limit for a download.
    pub download_timeout: Duration,
    /// Largest output accepted, in bytes.
    pub max_output_bytes: u64,
    /// Trusted certificates and proxy, shared by every agent.
    pub net: NetConfig,
    /// Whether a downloaded output and its folder are fsynced before it is recorded.
    pub fsync_outputs: bool,
}

impl GatewayConfig {
    /// The defaults, trusting and routing as the environment says ([`NetConfig::from_env_only`],
    /// which reads the machine's trust store: a program that builds several configs builds
    /// one [`NetConfig`] and passes it to [`GatewayConfig::with_setup`]).
    pub fn new(base_url: &str, key: Option<ApiKey>) -> Self {
        Self::with_setup(base_url, key, NetConfig::from_env_only())
    }

    /// The defaults, with the trust and proxy setup given (shared, not read again).
    pub fn with_setup(base_url: &str, key: Option<ApiKey>, net: NetConfig) -> Self {
        GatewayConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(300),
            max_output_bytes: 512 * 1024 * 1024,
            net,
            fsync_outputs: true,
        }
    }

    /// The same, with the trust and proxy setup given.
    pub fn with_net(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The server answered with an error status.
    #[error("the output URL answered HTTP {0}")]
    Status(u16),
    /// The output is larger than the configured cap.
    #[error("the output is larger than the {0}-byte cap")]
    TooLarge(u64),
    /// The output is not an image.
    #[error("the output is not an image ({0})")]
    NotAnImage(String),
    /// The URL cannot be downloaded from.
    #[error("the output URL `{0}` is not an http(s) URL")]
    BadUrl(String),
    /// The transfer failed (timeout, dropped connection, too many redirects).
    #[error("the download failed: {0}")]
    Transfer(String),
    /// Writing the file failed.
    #[error("writing the output failed: {0}")]
    Io(#[from] std::io::Error),
    /// The output folder's disk is full, or a quota or file size limit was reached.
    #[error("no room for the output in {dir}: {reason} (free space on that disk, or give --out-dir on another one; `codeformer-ledger run` downloads it again)")]
    NoRoom { dir: String, reason: String },
}

impl DownloadError {
    /// [`DownloadError::NoRoom`] for a write that failed for want of space under `dir`; any
    /// other error as it is.
    pub fn in_folder(self, dir: &std::path::Path) -> DownloadError {
        use std::io::ErrorKind;
        match self {
            DownloadError::Io(e)
                if matches!(
                    e.kind(),
                    ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
                ) =>
            {
                DownloadError::NoRoom {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                }
            }
            other => other,
        }
    }
}

/// A client of one gateway. Its clones share one [`RequestBudget`].
#[derive(Clone)]
pub struct Gateway {
    config: GatewayConfig,
    api: Agent,
    files: Agent,
    budget: RequestBudget,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        let api = config.net.agent(
            agent_builder(&config.net)
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(config.timeout))
                .timeout_connect(Some(config.connect_timeout))
                .build(),
        );
        let files = config.net.agent(
            agent_builder(&config.net)
                .http_status_as_error(false)
                .max_redirects(5)
                .timeout_global(Some(config.download_timeout))
                .timeout_connect(Some(config.connect_timeout))
                .build(),
        );
        Gateway {
            config,
            api,
            files,
            budget: RequestBudget::default(),
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The request budget every API call of this gateway (and of its clones) draws from.
    pub fn budget(&self) -> &RequestBudget {
        &self.budget
    }

    /// What an answer teaches the budget: a 429 pauses and cuts it, any other answer counts.
    fn meter(&self, ticket: &Ticket, http_status: Option<u16>, retry_after: Option<Duration>) {
        match http_status {
            Some(429) => self.budget.rate_limited(ticket, retry_after),
            Some(_) => self.budget.answered(),
            None => {}
        }
    }

    /// An agent for plain downloads and header probes (no key, redirects followed).
    pub fn file_agent(&self) -> &Agent {
        &self.files
    }

    /// The JSON body of a submission, exactly as the protocol names its fields.
    pub fn submit_body(params: &JobParams) -> String {
        let mut body = serde_json::json!({
            "image": params.image,
            "codeformer_fidelity": fidelity_number(params),
            "background_enhance": params.background_enhance,
            "face_upsample": params.face_upsample,
            "upscale": params.upscale,
        });
        if let Some(url) = &params.webhook {
            body["webhook"] = url.clone().into();
        }
        if let Some(filter) = &params.webhook_events_filter {
            body["webhook_events_filter"] = filter.clone().into();
        }
        body.to_string()
    }

    /// `POST .../generate`, once the budget has a token for it.
    pub fn submit(&self, params: &JobParams) -> Exchange<SubmitOutcome> {
        self.submit_with(self.budget.take(), params)
    }

    /// `POST .../generate` with a token already taken.
    pub fn submit_with(&self, ticket: Ticket, params: &JobParams) -> Exchange<SubmitOutcome> {
        let exchange = self.submit_unmetered(params);
        let retry_after = match exchange.outcome {
            SubmitOutcome::RateLimited { retry_after } => retry_after,
            _ => None,
        };
        self.meter(&ticket, exchange.http_status, retry_after);
        exchange
    }

    fn submit_unmetered(&self, params: &JobParams) -> Exchange<SubmitOutcome> {
        let url = format!("{}{}", self.config.base_url, GENERATE_PATH);
        let mut request = self
            .api
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Cache-Control", "no-cache");
        if let Some(key) = &self.config.key {
            request = request.header("Ocp-Apim-Subscription-Key", key.expose());
        }
        if let Some(hook) = &params.webhook_url {
            request = request.header("X-Webhook-URL", hook);
        }
        if let Some(mode) = params.webhook_mode {
            request = request.header("X-Webhook-Mode", mode.as_str());
        }
        if let Some(reason) = self.config.net.key_in_clear(&self.config.base_url) {
            return Exchange {
                http_status: None,
                latency_ms: 0,
                body: reason.clone(),
                outcome: SubmitOutcome::Insecure { reason },
            };
        }
        let started = Instant::now();
        let result = request.send(Self::submit_body(params).as_bytes());
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Err(e) => {
                let reason = describe(&e, &self.config.base_url);
                let outcome = if handshake_failure(&e).is_some() {
                    SubmitOutcome::Insecure {
                        reason: reason.clone(),
                    }
                } else if not_sent(&e) {
                    SubmitOutcome::NotSent {
                        reason: reason.clone(),
                    }
                } else {
                    SubmitOutcome::Unknown {
                        reason: reason.clone(),
                    }
                };
                Exchange {
                    http_status: None,
                    latency_ms,
                    body: reason,
                    outcome,
                }
            }
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(&response);
                let answer = Answer::of(status, &response);
                let body = read_answer(&mut response);
                let outcome = match &body {
                    Err(reason) if (200..300).contains(&status) || status == 303 => {
                        SubmitOutcome::UnusableAcceptance {
                            reason: format!("the HTTP {status} answer: {reason}"),
                        }
                    }
                    Err(reason) if status >= 500 && status != 501 => SubmitOutcome::Unknown {
                        reason: reason.clone(),
                    },
                    _ => submit_outcome(&answer, body.as_deref().unwrap_or(""), retry_after),
                };
                Exchange {
                    http_status: Some(status),
                    latency_ms: response_latency(latency_ms, started),
                    body: body.unwrap_or_else(|e| e),
                    outcome,
                }
            }
        }
    }

    /// `GET /v2/requests/status/{request_id}`, once the budget has a token for it.
    pub fn status(&self, request_id: &str) -> Exchange<PollOutcome> {
        self.status_with(self.budget.take(), request_id)
    }

    /// `GET /v2/requests/status/{request_id}` with a token already taken.
    pub fn status_with(&self, ticket: Ticket, request_id: &str) -> Exchange<PollOutcome> {
        let exchange = self.status_unmetered(request_id);
        let retry_after = match exchange.outcome {
            PollOutcome::RateLimited { retry_after } => retry_after,
            _ => None,
        };
        self.meter(&ticket, exchange.http_status, retry_after);
        exchange
    }

    fn status_unmetered(&self, request_id: &str) -> Exchange<PollOutcome> {
        let url = format!(
            "{}{}{}",
            self.config.base_url,
            STATUS_PATH,
            escape_segment(request_id)
        );
        let mut request = self.api.get(&url);
        if let Some(key) = &self.config.key {
            request = request.header("Ocp-Apim-Subscription-Key", key.expose());
        }
        if let Some(reason) = self.config.net.key_in_clear(&self.config.base_url) {
            return Exchange {
                http_status: None,
                latency_ms: 0,
                body: reason.clone(),
                outcome: PollOutcome::Unreachable { reason },
            };
        }
        let started = Instant::now();
        match request.call() {
            Err(e) => {
                let reason = describe(&e, &self.config.base_url);
                let outcome = if not_sent(&e) || handshake_failure(&e).is_some() {
                    PollOutcome::Unreachable {
                        reason: reason.clone(),
                    }
                } else {
                    PollOutcome::Transient {
                        reason: reason.clone(),
                    }
                };
                Exchange {
                    http_status: None,
                    latency_ms: started.elapsed().as_millis() as u64,
                    body: reason,
                    outcome,
                }
            }
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(&response);
                let answer = Answer::of(status, &response);
                let body = read_answer(&mut response);
                let latency_ms = started.elapsed().as_millis() as u64;
                let text = body.as_deref().unwrap_or("");
                let outcome = match (&body, status) {
                    (_, 429) => PollOutcome::RateLimited { retry_after },
                    (_, 401 | 403) => PollOutcome::Unauthorized { status },
                    (_, 300..=399 | 405 | 501) => PollOutcome::NotTheApi {
                        answer: answer.describe(text),
                    },
                    (_, 404) if text.trim().is_empty() || is_json_object(text) => {
                        PollOutcome::NotFound
                    }
                    (_, 404) => PollOutcome::NotTheApi {
                        answer: answer.describe(text),
                    },
                    (_, s) if s >= 500 => PollOutcome::Transient {
                        reason: format!("HTTP {s}"),
                    },
                    (Ok(text), _) if answer.is_html(text) => PollOutcome::NotTheApi {
                        answer: answer.describe(text),
                    },
                    (Err(reason), _) => PollOutcome::BadAnswer {
                        reason: reason.clone(),
                    },
                    (Ok(text), 200..=299) => match RemoteJob::from_json(text) {
                        Ok(job) if job.request_id == request_id => PollOutcome::Status(job),
                        Ok(job) => PollOutcome::BadAnswer {
                            reason: format!(
                                "the answer is about request {} where {request_id} was asked",
                                job.request_id
                            ),
                        },
                        Err(reason) => PollOutcome::BadAnswer { reason },
                    },
                    (Ok(_), s) => PollOutcome::BadAnswer {
                        reason: format!("unexpected HTTP {s}"),
                    },
                };
                Exchange {
                    http_status: Some(status),
                    latency_ms,
                    body: body.unwrap_or_else(|e| e),
                    outcome,
                }
            }
        }
    }

    /// Looks at the base URL without submitting anything: a status call on a made-up request
    /// id must get an answer of the API's shape (its JSON, not an HTML page or a redirect),
    /// and a 404 for it must differ from the answer to a path that cannot exist; if the two
    /// are the same, no status endpoint is there (the base URL has a wrong path).
    pub fn check_api(&self) -> ApiCheck {
        let exchange = self.status(DOCTOR_REQUEST_ID);
        let http_status = exchange.http_status.unwrap_or(0);
        match exchange.outcome {
            PollOutcome::Status(_) => ApiCheck::Answers {
                http_status,
                latency_ms: exchange.latency_ms,
            },
            PollOutcome::NotFound => {
                let status_path = format!("{STATUS_PATH}{DOCTOR_REQUEST_ID}");
                let made_up = strip(&exchange.body, &[&status_path, DOCTOR_REQUEST_ID]);
                match self.get_raw(DOCTOR_NO_ROUTE) {
                    Some((404, body)) if strip(&body, &[DOCTOR_NO_ROUTE]) == made_up => {
                        ApiCheck::NotTheApi {
                            answer: format!(
                                "a status call on a made-up request id gets the same HTTP 404 as a path that does not exist ({}), so there is no status endpoint at {}{STATUS_PATH}",
                                excerpt(&exchange.body, 120),
                                self.config.base_url
                            ),
                        }
                    }
                    _ => ApiCheck::Answers {
                        http_status,
                        latency_ms: exchange.latency_ms,
                    },
                }
            }
            PollOutcome::Unauthorized { status } => ApiCheck::KeyRefused {
                http_status: status,
            },
            PollOutcome::RateLimited { .. } => ApiCheck::RateLimited,
            PollOutcome::Transient { reason } | PollOutcome::Unreachable { reason } => {
                ApiCheck::Unreachable { reason }
            }
            // The gateway may refuse an id of the wrong form with its JSON error.
            PollOutcome::BadAnswer { .. }
                if (400..500).contains(&http_status) && is_json_object(&exchange.body) =>
            {
                ApiCheck::Answers {
                    http_status,
                    latency_ms: exchange.latency_ms,
                }
            }
            PollOutcome::BadAnswer { reason } => ApiCheck::NotTheApi {
                answer: format!(
                    "a status call on a made-up request id got HTTP {http_status}, and {reason}"
                ),
            },
            PollOutcome::NotTheApi { answer } => ApiCheck::NotTheApi {
                answer: format!("a status call on a made-up request id got {answer}"),
            },
        }
    }

    /// A GET below the base URL: the answer's status and body, if one came.
    fn get_raw(&self, path: &str) -> Option<(u16, String)> {
        if self
            .config
            .net
            .key_in_clear(&self.config.base_url)
            .is_some()
        {
            return None;
        }
        let mut request = self.api.get(format!("{}{path}", self.config.base_url));
        if let Some(key) = &self.config.key {
            request = request.header("Ocp-Apim-Subscription-Key", key.expose());
        }
        let ticket = self.budget.take();
        let response = request.call();
        let status = response.as_ref().ok().map(|r| r.status().as_u16());
        let retry = response.as_ref().ok().and_then(retry_after);
        self.meter(&ticket, status, retry);
        let mut response = response.ok()?;
        Some((status?, read_answer(&mut response).unwrap_or_default()))
    }

    /// Streams an output into `sink`, refusing more than the size cap and anything that does
    /// not start like an image. Returns the bytes written.
    pub fn download(&self, url: &str, sink: &mut dyn Write) -> Result<u64, DownloadError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(DownloadError::BadUrl(url.to_string()));
        }
        let mut request = self.files.get(url);
        // The key goes to the gateway's own origin only, never to a CDN or another host.
        if let Some(key) = &self.config.key {
            if same_origin(url, &self.config.base_url)
                && self.config.net.key_in_clear(url).is_none()
            {
                request = request.header("Ocp-Apim-Subscription-Key", key.expose());
            }
        }
        let mut response = request
            .call()
            .map_err(|e| DownloadError::Transfer(describe(&e, url)))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(DownloadError::Status(status));
        }
        let cap = self.config.max_output_bytes;
        if let Some(length) = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if length > cap {
                return Err(DownloadError::TooLarge(cap));
            }
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut reader = response.body_mut().with_config().limit(cap + 1).reader();
        DOWNLOAD_BUFFER
            .with_borrow_mut(|buf| copy_image(&mut reader, buf, sink, cap, &content_type))
    }
}

thread_local! {
    /// Each worker's download buffer, allocated (and zeroed) once rather than per output.
    static DOWNLOAD_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Copies an output's body into `sink` through `buf`: at most `cap` bytes, and only if it
/// starts with an image header.
fn copy_image(
    reader: &mut impl Read,
    buf: &mut [u8],
    sink: &mut (impl Write + ?Sized),
    cap: u64,
    content_type: &str,
) -> Result<u64, DownloadError> {
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                if total >= cap {
                    return Err(DownloadError::TooLarge(cap));
                }
                return Err(DownloadError::Transfer(e.to_string()));
            }
        };
        if total == 0 && imagesize::image_type(&buf[..n]).is_err() {
            return Err(DownloadError::NotAnImage(if content_type.is_empty() {
                "its first bytes are not an image header".into()
            } else {
                format!("content type {content_type}")
            }));
        }
        total += n as u64;
        if total > cap {
            return Err(DownloadError::TooLarge(cap));
        }
        sink.write_all(&buf[..n])?;
    }
    if total == 0 {
        return Err(DownloadError::NotAnImage("the body is empty".into()));
    }
    Ok(total)
}

fn fidelity_number(params: &JobParams) -> serde_json::Value {
    use rust_decimal::prelude::ToPrimitive;
    let value = params.fidelity.to_f64().unwrap_or(0.5);
    serde_json::Number::from_f64(value)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

fn response_latency(measured: u64, started: Instant) -> u64 {
    measured.max(started.elapsed().as_millis() as u64)
}

/// The fix for a base URL that does not lead to the API, naming the path it has, if any.
pub fn base_url_fix(base_url: &str) -> String {
    let path = base_url
        .find("://")
        .map(|at| &base_url[at + 3..])
        .and_then(|rest| rest.find('/').map(|slash| &rest[slash..]))
        .filter(|path| !path.is_empty() && *path != "/");
    let has = path
        .map(|p| format!(" ({base_url} has the path `{p}`)"))
        .unwrap_or_default();
    format!(
        "is --base-url the gateway's root? Set it (or PIXAZO_BASE_URL, or base_url in the config file) to {DEFAULT_BASE_URL}, with no path{has}: the endpoint paths are added to it"
    )
}

/// The made-up request id of [`Gateway::check_api`]: no job has it.
pub const DOCTOR_REQUEST_ID: &str = "codeformer-ledger-doctor-probe";
/// A path below the base URL that no gateway serves.
const DOCTOR_NO_ROUTE: &str = "/codeformer-ledger-doctor/no-such-route";

/// `body` without the texts a server may echo (the path asked for, the id).
fn strip(body: &str, echoes: &[&str]) -> String {
    echoes
        .iter()
        .fold(body.to_string(), |body, echo| body.replace(echo, ""))
}

/// The parts of an answer, besides its body, that tell whether it came from the API.
struct Answer {
    status: u16,
    content_type: String,
    location: Option<String>,
}

impl Answer {
    fn of(status: u16, response: &ureq::http::Response<ureq::Body>) -> Answer {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Answer {
            status,
            content_type: header("content-type").unwrap_or_default(),
            location: header("location"),
        }
    }

    fn is_html(&self, body: &str) -> bool {
        self.content_type.to_ascii_lowercase().contains("html")
            || body.trim_start().starts_with('<')
    }

    /// What came back, in a few words: the status and the start of the body.
    fn describe(&self, body: &str) -> String {
        let status = self.status;
        if let Some(location) = self
            .location
            .as_deref()
            .filter(|_| (300..400).contains(&status))
        {
            return format!("HTTP {status}, a redirect to {}", excerpt(location, 200));
        }
        if self.is_html(body) {
            let title = body
                .find("<title>")
                .map(|at| &body[at + 7..])
                .and_then(|rest| rest.find("</title>").map(|end| &rest[..end]))
                .map(|t| format!(" titled \"{}\"", excerpt(t, 80)))
                .unwrap_or_default();
            return format!("HTTP {status} with an HTML page{title}, not the API's JSON");
        }
        if body.trim().is_empty() {
            return format!("HTTP {status} with an empty body");
        }
        format!("HTTP {status}: {}", excerpt(body, 200))
    }
}

/// `text` on one line, at most `max` characters.
fn excerpt(text: &str, max: usize) -> String {
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else {
        line
    }
}

fn is_json_object(body: &str) -> bool {
    matches!(
        serde_json::from_str::<serde_json::Value>(body),
        Ok(serde_json::Value::Object(_))
    )
}

/// Sorts a submission's answer: accepted, refused for this job, refused for every job (the
/// base URL is wrong), or unknown. Only an answer that proves the request was not carried out
/// says "not created"; a success answer that cannot be used may still have created the job.
fn submit_outcome(answer: &Answer, body: &str, retry_after: Option<Duration>) -> SubmitOutcome {
    let status = answer.status;
    let message = error_message(body).unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        200..=299 => accepted(status, body),
        303 => SubmitOutcome::UnusableAcceptance {
            reason: format!(
                "the answer is {}, which may follow a job created",
                answer.describe(body)
            ),
        },
        300..=399 | 404 | 405 | 501 => SubmitOutcome::NotTheApi {
            answer: answer.describe(body),
        },
        401 => SubmitOutcome::Unauthorized { message },
        402 => SubmitOutcome::InsufficientBalance { message },
        403 => SubmitOutcome::Forbidden { message },
        429 => SubmitOutcome::RateLimited { retry_after },
        400..=499 if !is_json_object(body) || model_not_found(body) => SubmitOutcome::NotTheApi {
            answer: answer.describe(body),
        },
        400..=499 => SubmitOutcome::Rejected { status, message },
        _ => SubmitOutcome::Unknown {
            reason: format!("HTTP {status}: {message}"),
        },
    }
}

/// The gateway's own answer when the path does not name its model (a wrong base URL), or the
/// model is off for this key: `{"error": "Model not found", ...}`.
fn model_not_found(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("model not found"))
}

/// The longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 512;

/// Why a request id cannot be one segment of a status URL, if it cannot.
pub fn request_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_REQUEST_ID_LEN {
        Some("it is longer than 512 bytes")
    } else if id == "." || id == ".." {
        Some("it is a dot segment, `.` or `..`")
    } else if id.contains('/') || id.contains('\\') {
        Some("it contains a slash")
    } else if id.chars().any(char::is_control) {
        Some("it contains a control character such as NUL")
    } else {
        None
    }
}

fn accepted(status: u16, body: &str) -> SubmitOutcome {
    let unusable = |why: String| SubmitOutcome::UnusableAcceptance {
        reason: format!("the HTTP {status} answer {why}"),
    };
    let value: serde_json::Value = match serde_json::from_str(body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return unusable(format!(
                "is not the documented JSON ({})",
                excerpt(body, 120)
            ))
        }
    };
    let id = match value.get("request_id") {
        Some(serde_json::Value::String(id)) => id,
        _ => return unusable("has no request_id".into()),
    };
    if let Some(problem) = request_id_problem(id) {
        return unusable(format!(
            "gives the request id {:?}, which cannot be one segment of a status URL ({problem}), so the job cannot be polled",
            id.chars().take(80).collect::<String>()
        ));
    }
    SubmitOutcome::Accepted {
        request_id: id.to_string(),
        status: value
            .get("status")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && s.len() <= MAX_STATUS_LEN)
            .unwrap_or("QUEUED")
            .to_string(),
        polling_url: value
            .get("polling_url")
            .and_then(|s| s.as_str())
            .map(str::to_string),
    }
}

/// The `message` (or `error`) of a JSON error body.
fn error_message(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let error = value.get("error").and_then(|v| v.as_str());
    let message = value.get("message").and_then(|v| v.as_str());
    match (error, message) {
        (Some(e), Some(m)) => Some(format!("{e}: {m}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        _ => None,
    }
}

fn read_answer(response: &mut ureq::http::Response<ureq::Body>) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES + 1)
        .reader();
    match reader.read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > MAX_ANSWER_BYTES => Err(format!(
            "the answer is larger than {MAX_ANSWER_BYTES} bytes"
        )),
        Ok(_) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if bytes.len() as u64 >= MAX_ANSWER_BYTES => {
            let _ = e;
            Err(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ))
        }
        Err(e) => Err(format!("the answer could not be read: {e}")),
    }
}

fn retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Errors that happen before a request is on the wire.
fn not_sent(error: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::InvalidProxyUrl
        // The proxy refused or did not answer the CONNECT: nothing reached the gateway.
        | ureq::Error::ConnectProxyFailed(_) => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::HostUnreachable
        ),
        _ => false,
    }
}

/// A transport error in words, without the key (ureq errors never carry headers). A TLS
/// failure names the certificate problem and its fix.
fn describe(error: &ureq::Error, target: &str) -> String {
    let host = origin(target).unwrap_or(target);
    if untrusted_certificate(error) {
        let why = handshake_failure(error).unwrap_or_default();
        return format!(
            "the TLS certificate of {host} is not trusted ({why}), so nothing was sent. If a company or private CA signs it, pass --ca-cert FILE (config key `ca_cert`) with that CA's PEM certificate, or set SSL_CERT_FILE to a bundle that holds it"
        );
    }
    if let Some(why) = handshake_failure(error) {
        return format!("the TLS handshake with {host} failed ({why}), so nothing was sent");
    }
    match error {
        ureq::Error::Timeout(t) => format!("timed out ({t:?}) talking to {host}"),
        ureq::Error::HostNotFound => format!("host not found: {host}"),
        ureq::Error::ConnectionFailed => format!("could not connect to {host}"),
        ureq::Error::ConnectProxyFailed(why) => {
            format!("the proxy refused the tunnel to {host}: {why}")
        }
        ureq::Error::TooManyRedirects => "too many redirects".into(),
        other => other.to_string(),
    }
}

/// Percent-encodes a request id for use as one path segment, so `/`, `..` or NUL in an id
/// can never reach another path.
pub fn escape_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'~')
            || (byte == b'.' && text != "." && text != "..")
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&url[..scheme_end + host_end])
}

fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_names_the_output_folder_and_the_fix() {
        let dir = std::path::Path::new("/photos/restored");
        // ENOSPC, EDQUOT and EFBIG (Linux numbers): no room, whichever limit was hit.
        for errno in [28, 122, 27] {
            let e = DownloadError::Io(std::io::Error::from_raw_os_error(errno)).in_folder(dir);
            let text = e.to_string();
            assert!(
                matches!(e, DownloadError::NoRoom { .. })
                    && text.starts_with("no room for the output in /photos/restored: ")
                    && text.contains("free space on that disk, or give --out-dir on another one"),
                "{errno}: {text}"
            );
        }
        let full = DownloadError::Io(std::io::Error::from_raw_os_error(28)).in_folder(dir);
        assert!(
            full.to_string().contains("No space left on device"),
            "{full}"
        );
        // Other failures keep their own message.
        let denied = DownloadError::Io(std::io::Error::from_raw_os_error(13)).in_folder(dir);
        assert!(matches!(denied, DownloadError::Io(_)), "{denied}");
        assert!(matches!(
            DownloadError::Status(500).in_folder(dir),
            DownloadError::Status(500)
        ));
    }

    #[test]
    fn request_ids_cannot_escape_their_segment() {
        assert_eq!(
            escape_segment("codeformer-image-restoration_019d"),
            "codeformer-image-restoration_019d"
        );
        assert_eq!(escape_segment("../x"), "..%2Fx");
        assert_eq!(escape_segment(".."), "%2E%2E");
        assert_eq!(escape_segment("a\0b"), "a%00b");
    }

    fn answer(status: u16, content_type: &str) -> Answer {
        Answer {
            status,
            content_type: content_type.into(),
            location: None,
        }
    }

    fn outcome(status: u16, body: &str) -> SubmitOutcome {
        submit_outcome(&answer(status, "application/json"), body, None)
    }

    #[test]
    fn error_statuses_map_to_outcomes() {
        let body = r#"{"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."}"#;
        assert!(matches!(
            outcome(402, body),
            SubmitOutcome::InsufficientBalance { .. }
        ));
        assert!(matches!(
            outcome(
                400,
                r#"{"error": "codeformer_fidelity must be between 0 and 1"}"#
            ),
            SubmitOutcome::Rejected { status: 400, .. }
        ));
        assert!(matches!(outcome(500, ""), SubmitOutcome::Unknown { .. }));
        assert!(matches!(
            outcome(202, "not json"),
            SubmitOutcome::UnusableAcceptance { .. }
        ));
        assert!(matches!(
            outcome(202, r#"{"request_id": "r1", "status": "QUEUED"}"#),
            SubmitOutcome::Accepted { .. }
        ));
    }

    #[test]
    fn answers_that_say_the_base_url_is_wrong_are_not_the_api() {
        let model = r#"{"error": "Model not found", "message": "Model 'codeformer-image-restoration' not found or is disabled"}"#;
        let html = "<html><head><title>Error response</title></head><body>404</body></html>";
        for (status, content_type, body) in [
            (400, "application/json", model),
            (404, "application/json", r#"{"error": "Not Found"}"#),
            (404, "text/html", html),
            (405, "text/plain", ""),
            (501, "text/html", html),
            (400, "text/html", html),
            (400, "text/plain", "Bad Request"),
            (301, "text/plain", ""),
        ] {
            let got = submit_outcome(&answer(status, content_type), body, None);
            assert!(
                matches!(got, SubmitOutcome::NotTheApi { .. }),
                "{status} {body}: {got:?}"
            );
        }
        let SubmitOutcome::NotTheApi { answer: said } =
            submit_outcome(&answer(501, "text/html"), html, None)
        else {
            unreachable!()
        };
        assert!(
            said.contains("HTML page titled \"Error response\""),
            "{said}"
        );
        assert!(matches!(
            submit_outcome(&answer(303, "text/plain"), "", None),
            SubmitOutcome::UnusableAcceptance { .. }
        ));
        assert!(matches!(
            submit_outcome(&answer(200, "text/html"), html, None),
            SubmitOutcome::UnusableAcceptance { .. }
        ));
    }

    #[test]
    fn request_ids_that_cannot_be_a_path_segment_are_unusable() {
        for id in [
            "../../etc/passwd",
            "..",
            ".",
            "a/b",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "",
        ] {
            let body = serde_json::json!({"request_id": id, "status": "QUEUED"}).to_string();
            assert!(
                matches!(
                    outcome(202, &body),
                    SubmitOutcome::UnusableAcceptance { .. }
                ),
                "{id:?}"
            );
        }
        for id in ["codeformer-image-restoration_019d", "a..b", "a b?c#d%"] {
            let body = serde_json::json!({"request_id": id, "status": "QUEUED"}).to_string();
            assert!(
                matches!(outcome(202, &body), SubmitOutcome::Accepted { .. }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn key_goes_to_the_gateway_origin_only() {
        assert!(same_origin(
            "http://127.0.0.1:8080/v1/x/output.png",
            "http://127.0.0.1:8080"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:9090/x.png",
            "http://127.0.0.1:8080"
        ));
        assert!(!same_origin(
            "https://gateway.pixazo.ai.evil.test/x",
            "https://gateway.pixazo.ai"
        ));
    }
}
