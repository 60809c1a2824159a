//! The blocking HTTP client of the gateway (ureq).

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
}

impl GatewayConfig {
    pub fn new(base_url: &str, key: Option<ApiKey>) -> Self {
        GatewayConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(300),
            max_output_bytes: 512 * 1024 * 1024,
        }
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
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Gateway {
    config: GatewayConfig,
    api: Agent,
    files: Agent,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        let api = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout))
            .user_agent(concat!("codeformer-ledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let files = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(5)
            .timeout_global(Some(config.download_timeout))
            .timeout_connect(Some(config.connect_timeout))
            .user_agent(concat!("codeformer-ledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Gateway { config, api, files }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
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

    /// `POST .../generate`.
    pub fn submit(&self, params: &JobParams) -> Exchange<SubmitOutcome> {
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
        let started = Instant::now();
        let result = request.send(Self::submit_body(params).as_bytes());
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Err(e) => {
                let reason = describe(&e, &self.config);
                let outcome = if not_sent(&e) {
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
                let body = read_answer(&mut response);
                let outcome = match &body {
                    Err(reason) if (200..300).contains(&status) || status >= 500 => {
                        SubmitOutcome::Unknown {
                            reason: reason.clone(),
                        }
                    }
                    _ => submit_outcome(status, body.as_deref().unwrap_or(""), retry_after),
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

    /// `GET /v2/requests/status/{request_id}`.
    pub fn status(&self, request_id: &str) -> Exchange<PollOutcome> {
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
        let started = Instant::now();
        match request.call() {
            Err(e) => {
                let reason = describe(&e, &self.config);
                let outcome = if not_sent(&e) {
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
                let body = read_answer(&mut response);
                let latency_ms = started.elapsed().as_millis() as u64;
                let outcome = match (&body, status) {
                    (_, 429) => PollOutcome::RateLimited { retry_after },
                    (_, 401 | 403) => PollOutcome::Unauthorized { status },
                    (_, 404) => PollOutcome::NotFound,
                    (_, s) if s >= 500 => PollOutcome::Transient {
                        reason: format!("HTTP {s}"),
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

    /// Streams an output into `sink`, refusing more than the size cap and anything that does
    /// not start like an image. Returns the bytes written.
    pub fn download(&self, url: &str, sink: &mut dyn Write) -> Result<u64, DownloadError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(DownloadError::BadUrl(url.to_string()));
        }
        let mut request = self.files.get(url);
        // The key goes to the gateway's own origin only, never to a CDN or another host.
        if let Some(key) = &self.config.key {
            if same_origin(url, &self.config.base_url) {
                request = request.header("Ocp-Apim-Subscription-Key", key.expose());
            }
        }
        let mut response = request
            .call()
            .map_err(|e| DownloadError::Transfer(describe(&e, &self.config)))?;
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
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
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

fn submit_outcome(status: u16, body: &str, retry_after: Option<Duration>) -> SubmitOutcome {
    let message = error_message(body).unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        200..=299 => accepted(body),
        401 => SubmitOutcome::Unauthorized { message },
        402 => SubmitOutcome::InsufficientBalance { message },
        403 => SubmitOutcome::Forbidden { message },
        429 => SubmitOutcome::RateLimited { retry_after },
        400..=499 => SubmitOutcome::Rejected { status, message },
        _ => SubmitOutcome::Unknown {
            reason: format!("HTTP {status}: {message}"),
        },
    }
}

fn accepted(body: &str) -> SubmitOutcome {
    let value: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return SubmitOutcome::Unknown {
                reason: format!("the 202 answer is not JSON: {e}"),
            }
        }
    };
    match value.get("request_id").and_then(|v| v.as_str()) {
        Some(id) if !id.is_empty() && id.len() <= 512 => SubmitOutcome::Accepted {
            request_id: id.to_string(),
            status: value
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("QUEUED")
                .to_string(),
            polling_url: value
                .get("polling_url")
                .and_then(|s| s.as_str())
                .map(str::to_string),
        },
        _ => SubmitOutcome::Unknown {
            reason: "the 202 answer has no usable request_id".into(),
        },
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
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::BadUri(_) => true,
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

/// A transport error in words, without the key (ureq errors never carry headers).
fn describe(error: &ureq::Error, config: &GatewayConfig) -> String {
    match error {
        ureq::Error::Timeout(t) => format!("timed out ({t:?}) talking to {}", config.base_url),
        ureq::Error::HostNotFound => format!("host not found: {}", config.base_url),
        ureq::Error::ConnectionFailed => format!("could not connect to {}", config.base_url),
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
    fn request_ids_cannot_escape_their_segment() {
        assert_eq!(
            escape_segment("codeformer-image-restoration_019d"),
            "codeformer-image-restoration_019d"
        );
        assert_eq!(escape_segment("../x"), "..%2Fx");
        assert_eq!(escape_segment(".."), "%2E%2E");
        assert_eq!(escape_segment("a\0b"), "a%00b");
    }

    #[test]
    fn error_statuses_map_to_outcomes() {
        let body = r#"{"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."}"#;
        assert!(matches!(
            submit_outcome(402, body, None),
            SubmitOutcome::InsufficientBalance { .. }
        ));
        assert!(matches!(
            submit_outcome(400, "{}", None),
            SubmitOutcome::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            submit_outcome(500, "", None),
            SubmitOutcome::Unknown { .. }
        ));
        assert!(matches!(
            submit_outcome(202, "not json", None),
            SubmitOutcome::Unknown { .. }
        ));
        assert!(matches!(
            submit_outcome(202, r#"{"request_id": "r1", "status": "QUEUED"}"#, None),
            SubmitOutcome::Accepted { .. }
        ));
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
