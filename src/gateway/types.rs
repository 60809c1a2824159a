//! The protocol's types (see `pixazo-codeformer-api.md`).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// The real gateway.
pub const DEFAULT_BASE_URL: &str = "https://gateway.pixazo.ai";
/// Submit endpoint, below the base URL.
pub const GENERATE_PATH: &str = "/codeformer-image-restoration/v1/codeformer/generate";
/// Status endpoint prefix, below the base URL; the request id follows.
pub const STATUS_PATH: &str = "/v2/requests/status/";

/// The API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming the white space a file or shell may add. Empty is no key.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_string()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// What the ledger records of one request and its answer.
#[derive(Debug, Clone)]
pub struct Exchange<T> {
    /// The answer's HTTP status; `None` when no answer arrived.
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// The answer's body as received (capped), or the transport error.
    pub body: String,
    pub outcome: T,
}

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SubmitOutcome {
    /// 202: the job exists at the gateway.
    Accepted {
        request_id: String,
        status: String,
        polling_url: Option<String>,
    },
    /// 400 (or another 4xx that says the request is wrong): not created, never charged.
    Rejected { status: u16, message: String },
    /// 401: the key is missing or wrong. Not created.
    Unauthorized { message: String },
    /// 402: the wallet cannot pay. Not created.
    InsufficientBalance { message: String },
    /// 403: forbidden. Not created.
    Forbidden { message: String },
    /// 429: too many requests. Not created; send again after the delay.
    RateLimited { retry_after: Option<Duration> },
    /// The request never left: no connection could be made. Safe to send again.
    NotSent { reason: String },
    /// The request never left because the connection cannot be trusted: the TLS handshake
    /// failed (an untrusted certificate, nothing in common to negotiate), or the key would
    /// cross a proxy in clear. Nothing was created, and every other job would fare the same.
    Insecure { reason: String },
    /// The gateway may or may not have created the job: a 5xx, a timeout or a dropped
    /// connection after sending.
    Unknown { reason: String },
    /// The answer says the base URL does not lead to the API, not that this job is wrong: a
    /// 404, 405 or 501, a redirect, the gateway's 400 "Model not found", or any other 4xx
    /// that is not the documented JSON (an HTML page, plain text, nothing). The request was
    /// not carried out, so nothing was created; every other job would get the same answer.
    NotTheApi { answer: String },
    /// A success answer (or a 303 "see other") that is not the documented JSON, or whose
    /// request id cannot be one segment of a status URL. The job may have been created and
    /// may be billed, but it cannot be followed; every other job would likely fare the same.
    UnusableAcceptance { reason: String },
}

/// A job's status as the gateway reports it.
///
/// Only the five statuses the API documents, spelled exactly as it documents them (upper
/// case), have a meaning here. Any other text (`CANCELLED`, `completed`, ...) is kept verbatim
/// as [`RemoteStatus::Undocumented`]: it is recorded as said, never taken as finished, and
/// never booked as free (only a documented `ERROR` is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    Error,
    /// A status the API does not document, exactly as the gateway wrote it.
    Undocumented(String),
}

/// The longest status text accepted; a longer one makes the answer malformed.
pub const MAX_STATUS_LEN: usize = 64;

impl RemoteStatus {
    /// The status for this text: a documented one on an exact match, else `Undocumented`.
    pub fn parse(text: &str) -> RemoteStatus {
        match text {
            "QUEUED" => RemoteStatus::Queued,
            "PROCESSING" => RemoteStatus::Processing,
            "COMPLETED" => RemoteStatus::Completed,
            "FAILED" => RemoteStatus::Failed,
            "ERROR" => RemoteStatus::Error,
            other => RemoteStatus::Undocumented(other.to_string()),
        }
    }

    /// The text as the gateway wrote it.
    pub fn as_str(&self) -> &str {
        match self {
            RemoteStatus::Queued => "QUEUED",
            RemoteStatus::Processing => "PROCESSING",
            RemoteStatus::Completed => "COMPLETED",
            RemoteStatus::Failed => "FAILED",
            RemoteStatus::Error => "ERROR",
            RemoteStatus::Undocumented(text) => text,
        }
    }

    pub fn is_documented(&self) -> bool {
        !matches!(self, RemoteStatus::Undocumented(_))
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RemoteStatus::Completed | RemoteStatus::Failed | RemoteStatus::Error
        )
    }
}

/// A status answer or webhook callback body, read leniently where the real gateway varies
/// (timestamp formats, missing fields) and strictly where it matters (id, status, outputs).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteJob {
    pub request_id: String,
    pub status: RemoteStatus,
    pub error: Option<String>,
    pub media_urls: Vec<String>,
    pub media_type: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct RawJob {
    request_id: Option<serde_json::Value>,
    status: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
    output: Option<serde_json::Value>,
    created_at: Option<serde_json::Value>,
    updated_at: Option<serde_json::Value>,
    completed_at: Option<serde_json::Value>,
}

impl RemoteJob {
    /// Reads a status answer or callback body; the error says what is wrong with it.
    pub fn from_json(body: &str) -> Result<RemoteJob, String> {
        let raw: RawJob = serde_json::from_str(body)
            .map_err(|e| format!("the answer is not the documented JSON object: {e}"))?;
        let request_id = match raw.request_id {
            Some(serde_json::Value::String(id)) if !id.is_empty() => id,
            Some(other) if !other.is_null() => {
                return Err(format!(
                    "request_id is {} where a string was expected",
                    kind(&other)
                ))
            }
            _ => return Err("the answer has no request_id".into()),
        };
        let status_text = match raw.status {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => {
                return Err(format!(
                    "status is {} where a string was expected",
                    kind(&other)
                ))
            }
            None => return Err("the answer has no status".into()),
        };
        if status_text.is_empty() || status_text.len() > MAX_STATUS_LEN {
            return Err(format!(
                "status is {} characters long where one of QUEUED, PROCESSING, COMPLETED, FAILED, ERROR was expected",
                status_text.chars().count()
            ));
        }
        if status_text.chars().any(char::is_control) {
            return Err(format!(
                "status {status_text:?} contains a control character"
            ));
        }
        let status = RemoteStatus::parse(&status_text);
        let error = match raw.error {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        let (media_urls, media_type) = read_output(raw.output.as_ref())?;
        if status == RemoteStatus::Completed && media_urls.is_empty() {
            return Err("the job is COMPLETED but output.media_url holds no URL".into());
        }
        let time = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => crate::clock::parse_remote(&s),
            _ => None,
        };
        Ok(RemoteJob {
            request_id,
            status,
            error,
            media_urls,
            media_type,
            created_at: time(raw.created_at),
            updated_at: time(raw.updated_at),
            completed_at: time(raw.completed_at),
        })
    }
}

fn read_output(
    output: Option<&serde_json::Value>,
) -> Result<(Vec<String>, Option<String>), String> {
    let Some(serde_json::Value::Object(output)) = output else {
        return Ok((Vec::new(), None));
    };
    let urls = match output.get("media_url") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(url)) => vec![url.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                serde_json::Value::String(url) => Ok(url.clone()),
                other => Err(format!(
                    "output.media_url holds {} where a URL was expected",
                    kind(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "output.media_url is {} where a list of URLs was expected",
                kind(other)
            ))
        }
    };
    let media_type = output
        .get("media_type")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    Ok((urls, media_type))
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The outcome of a status poll.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PollOutcome {
    /// The job's status.
    Status(RemoteJob),
    /// 404: the gateway does not know this request id.
    NotFound,
    /// 401 or 403: the key was refused.
    Unauthorized { status: u16 },
    /// 429: poll again after the delay.
    RateLimited { retry_after: Option<Duration> },
    /// A 5xx, a timeout, a dropped connection: poll again later.
    Transient { reason: String },
    /// No connection could be made (refused, unknown host, connect timeout).
    Unreachable { reason: String },
    /// An answer that is not the documented JSON.
    BadAnswer { reason: String },
    /// The answer says the base URL does not lead to the API: a redirect, a 405 or 501, an
    /// HTML page, or a 404 that is not the gateway's JSON.
    NotTheApi { answer: String },
}

/// What a status call on a made-up request id (no submission) tells about the base URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ApiCheck {
    /// The status endpoint answered as the API does.
    Answers { http_status: u16, latency_ms: u64 },
    /// 401 or 403: the key was refused.
    KeyRefused { http_status: u16 },
    /// 429: the gateway answers but rate-limits.
    RateLimited,
    /// No answer, or a 5xx.
    Unreachable { reason: String },
    /// Something answered, but not the API: what came back.
    NotTheApi { answer: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_answer_reads() {
        let body = r#"{"request_id": "codeformer-image-restoration_019d", "status": "COMPLETED",
            "model_id": "codeformer-image-restoration", "error": null,
            "output": {"media_url": ["https://cdn.test/v1/x/output.png"], "media_type": "image/png"},
            "created_at": "2026-03-31T10:00:00.000Z", "updated_at": "2026-03-31 10:00:15",
            "completed_at": "2026-03-31T10:00:15.000Z"}"#;
        let job = RemoteJob::from_json(body).unwrap();
        assert_eq!(job.status, RemoteStatus::Completed);
        assert_eq!(job.media_urls, vec!["https://cdn.test/v1/x/output.png"]);
        assert!(job.updated_at.is_some());
    }

    #[test]
    fn garbage_is_named() {
        assert!(RemoteJob::from_json("<html>")
            .unwrap_err()
            .contains("not the documented JSON"));
        assert!(RemoteJob::from_json(r#"{"status": "QUEUED"}"#)
            .unwrap_err()
            .contains("request_id"));
        assert!(RemoteJob::from_json(r#"{"request_id": "a", "status": ""}"#).is_err());
        let long = format!(r#"{{"request_id": "a", "status": "{}"}}"#, "X".repeat(65));
        assert!(RemoteJob::from_json(&long).is_err());
        assert!(RemoteJob::from_json(r#"{"request_id": "a", "status": "\u001b[2J"}"#).is_err());
        assert!(RemoteJob::from_json(
            r#"{"request_id": "a", "status": "COMPLETED", "output": null}"#
        )
        .unwrap_err()
        .contains("media_url"));
        let bomb = "[".repeat(100_000);
        assert!(RemoteJob::from_json(&bomb).is_err());
    }

    #[test]
    fn only_the_documented_spelling_is_a_documented_status() {
        for text in ["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR"] {
            let status = RemoteStatus::parse(text);
            assert!(status.is_documented(), "{text}");
            assert_eq!(status.as_str(), text);
        }
        for text in [
            "CANCELLED",
            "cancelled",
            "Canceled",
            "error",
            "completed",
            " ERROR",
        ] {
            let status = RemoteStatus::parse(text);
            assert_eq!(status, RemoteStatus::Undocumented(text.to_string()));
            assert_eq!(status.as_str(), text, "kept verbatim");
            assert!(!status.is_final());
        }
        let body = r#"{"request_id": "a", "status": "CANCELLED", "output": null}"#;
        assert_eq!(
            RemoteJob::from_json(body).unwrap().status.as_str(),
            "CANCELLED"
        );
    }

    #[test]
    fn key_is_never_printed() {
        let key = ApiKey::new("secret-123").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
    }
}
