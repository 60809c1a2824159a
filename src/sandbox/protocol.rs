//! The gateway's wire format: validation of the submit call, the status document, error
//! bodies, request ids and the two timestamp formats the real gateway mixes.
//!
//! Validation is as strict as a typed server: each field must have its documented JSON type
//! (an `upscale` of `2.5` or `"2"` is refused), `null` stands for "not given", unknown fields are
//! ignored, and every 400 names the field at fault.

use super::http::Response;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

pub const MODEL_ID: &str = "codeformer-image-restoration";

/// A refusal: HTTP status, a short error title and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "Bad Request", message)
    }

    pub fn insufficient_balance() -> Self {
        ApiError::new(
            402,
            "Insufficient Balance",
            "Your wallet does not have enough balance.",
        )
    }

    pub fn response(&self) -> Response {
        Response::json(
            self.status,
            &json!({"error": self.error, "message": self.message}),
        )
    }
}

/// `X-Webhook-Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMode {
    Terminal,
    Sync,
}

/// A valid submit call.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub image: String,
    pub fidelity: f64,
    pub upscale: u32,
    pub background_enhance: bool,
    pub face_upsample: bool,
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<String>>,
    /// `X-Webhook-URL` and `X-Webhook-Mode`.
    pub webhook_header: Option<(String, WebhookMode)>,
}

/// The webhook headers of a submit call.
pub struct WebhookHeaders<'a> {
    pub url: Option<&'a str>,
    pub mode: Option<&'a str>,
    pub allow_http: bool,
}

/// The `image` string of a body, if it has one, valid or not (for the statistics).
pub fn image_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("image")?.as_str().map(str::to_string)
}

/// Validates a submit call's body and webhook headers.
pub fn parse_submit(body: &[u8], headers: WebhookHeaders<'_>) -> Result<Submission, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object",
        ));
    };
    let image = match field(&fields, "image") {
        None => {
            return Err(ApiError::bad_request(
                "Field 'image' is required: the URL of the input image",
            ))
        }
        Some(v) => http_url("image", v)?,
    };
    let webhook_header = parse_webhook_headers(&headers)?;
    Ok(Submission {
        image,
        fidelity: fidelity(&fields)?,
        upscale: upscale(&fields)?,
        background_enhance: boolean(&fields, "background_enhance", true)?,
        face_upsample: boolean(&fields, "face_upsample", true)?,
        webhook: field(&fields, "webhook")
            .map(|v| http_url("webhook", v))
            .transpose()?,
        webhook_events_filter: events_filter(&fields)?,
        webhook_header,
    })
}

/// A field, with `null` read as absent.
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| !v.is_null())
}

fn fidelity(fields: &Map<String, Value>) -> Result<f64, ApiError> {
    let Some(value) = field(fields, "codeformer_fidelity") else {
        return Ok(0.5);
    };
    let number = value.as_f64().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Field 'codeformer_fidelity' must be a number between 0 and 1, got {value}"
        ))
    })?;
    if !(0.0..=1.0).contains(&number) {
        return Err(ApiError::bad_request(format!(
            "Field 'codeformer_fidelity' must be between 0 and 1, got {value}"
        )));
    }
    Ok(number)
}

fn upscale(fields: &Map<String, Value>) -> Result<u32, ApiError> {
    let Some(value) = field(fields, "upscale") else {
        return Ok(2);
    };
    let not_integer = || {
        ApiError::bad_request(format!(
            "Field 'upscale' must be a positive integer, got {value}"
        ))
    };
    if !(value.is_u64() || value.is_i64()) {
        return Err(not_integer());
    }
    match value.as_u64() {
        Some(n) if n >= 1 => u32::try_from(n)
            .map_err(|_| ApiError::bad_request(format!("Field 'upscale' is too large: {value}"))),
        _ => Err(not_integer()),
    }
}

fn boolean(fields: &Map<String, Value>, name: &str, default: bool) -> Result<bool, ApiError> {
    match field(fields, name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad_request(format!(
            "Field '{name}' must be a boolean, got {other}"
        ))),
    }
}

fn events_filter(fields: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(value) = field(fields, "webhook_events_filter") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "Field 'webhook_events_filter' must be an array of strings, got {value}"
        ))
    };
    let items = value.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|item| item.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A string that is an absolute http(s) URL with a host.
fn http_url(name: &str, value: &Value) -> Result<String, ApiError> {
    let text = value.as_str().ok_or_else(|| {
        ApiError::bad_request(format!("Field '{name}' must be a string URL, got {value}"))
    })?;
    check_url(text).map_err(|why| {
        ApiError::bad_request(format!("Field '{name}' must be an http(s) URL: {why}"))
    })?;
    Ok(text.to_string())
}

fn check_url(text: &str) -> Result<(), String> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{text}` contains whitespace"));
    }
    let uri: ureq::http::Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{text}` is not http or https")),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(format!("`{text}` has no host")),
    }
}

fn parse_webhook_headers(
    headers: &WebhookHeaders<'_>,
) -> Result<Option<(String, WebhookMode)>, ApiError> {
    let mode = match headers.mode.map(str::trim) {
        None | Some("") | Some("terminal") => WebhookMode::Terminal,
        Some("sync") => WebhookMode::Sync,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Header 'X-Webhook-Mode' must be 'terminal' or 'sync', got '{other}'"
            )))
        }
    };
    let Some(url) = headers.url.map(str::trim) else {
        return Ok(None);
    };
    check_url(url).map_err(|why| {
        ApiError::bad_request(format!(
            "Header 'X-Webhook-URL' must be an HTTPS URL: {why}"
        ))
    })?;
    if !url.starts_with("https://") && !headers.allow_http {
        return Err(ApiError::bad_request(format!(
            "Header 'X-Webhook-URL' must be an HTTPS URL; plain http:// is rejected: {url}"
        )));
    }
    Ok(Some((url.to_string(), mode)))
}

/// A job's status as the gateway names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Processing,
    Completed,
    Failed,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Processing => "PROCESSING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Error => "ERROR",
        }
    }
}

/// What the status document needs to know of a job.
pub struct StatusView<'a> {
    pub request_id: &'a str,
    pub status: Status,
    pub error: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The status document (also the callback body). Like the real gateway, it mixes
/// `2026-05-22T13:17:32.110Z` (created_at, completed_at) with `2026-05-22 13:19:23`
/// (updated_at).
pub fn status_json(base_url: &str, job: &StatusView<'_>) -> Value {
    let output = (job.status == Status::Completed).then(|| {
        json!({
            "media_url": [output_url(base_url, job.request_id)],
            "media_type": "image/png",
        })
    });
    json!({
        "request_id": job.request_id,
        "status": job.status.as_str(),
        "model_id": MODEL_ID,
        "error": job.error,
        "output": output,
        "created_at": iso_millis(job.created_at),
        "updated_at": plain_seconds(job.updated_at),
        "completed_at": job.completed_at.map(iso_millis),
    })
}

/// The 202 answer of a submit call.
pub fn accepted_json(base_url: &str, request_id: &str) -> Value {
    json!({
        "request_id": request_id,
        "status": Status::Queued.as_str(),
        "polling_url": format!("{base_url}{}{request_id}", super::STATUS_PATH_PREFIX),
    })
}

pub fn output_url(base_url: &str, request_id: &str) -> String {
    format!("{base_url}/v1/{request_id}/output.png")
}

fn iso_millis(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn plain_seconds(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new request id: the model id, `_`, and a lowercase ULID (48 bits of milliseconds and 80
/// random bits, 26 base-32 characters), so ids sort by creation time and never repeat across
/// sandbox runs.
pub fn new_request_id(now: DateTime<Utc>) -> String {
    let millis = now.timestamp_millis().max(0) as u128 & ((1 << 48) - 1);
    let random = fastrand::u128(..) & ((1 << 80) - 1);
    let mut value = (millis << 80) | random;
    let mut chars = [0u8; 26];
    for slot in chars.iter_mut().rev() {
        *slot = CROCKFORD[(value & 31) as usize];
        value >>= 5;
    }
    format!("{MODEL_ID}_{}", String::from_utf8_lossy(&chars))
}

/// Whether `text` has the shape of a request id (guards file paths built from it).
pub fn is_request_id(text: &str) -> bool {
    text.strip_prefix(MODEL_ID)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|ulid| ulid.len() == 26 && ulid.bytes().all(|b| CROCKFORD.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> WebhookHeaders<'static> {
        WebhookHeaders {
            url: None,
            mode: None,
            allow_http: false,
        }
    }

    fn refused(body: &str) -> String {
        parse_submit(body.as_bytes(), headers())
            .unwrap_err()
            .message
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let s = parse_submit(br#"{"image":"https://x.test/a.png","extra":1}"#, headers()).unwrap();
        assert_eq!(s.upscale, 2);
        assert_eq!(s.fidelity, 0.5);
        assert!(s.background_enhance && s.face_upsample);
        assert_eq!(s.webhook_header, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        assert!(refused("{}").contains("'image'"));
        assert!(refused("not json").contains("not valid JSON"));
        assert!(refused("[1]").contains("JSON object"));
        assert!(refused(r#"{"image":5}"#).contains("'image'"));
        assert!(refused(r#"{"image":"ftp://x/a.png"}"#).contains("'image'"));
        assert!(refused(r#"{"image":"/a.png"}"#).contains("'image'"));
        let with = |extra: &str| refused(&format!(r#"{{"image":"http://x.test/a.png",{extra}}}"#));
        assert!(with(r#""codeformer_fidelity":7"#).contains("'codeformer_fidelity'"));
        assert!(with(r#""codeformer_fidelity":"0.5""#).contains("'codeformer_fidelity'"));
        assert!(with(r#""upscale":0"#).contains("'upscale'"));
        assert!(with(r#""upscale":-2"#).contains("'upscale'"));
        assert!(with(r#""upscale":2.5"#).contains("'upscale'"));
        assert!(with(r#""upscale":2.0"#).contains("'upscale'"));
        assert!(with(r#""upscale":"2""#).contains("'upscale'"));
        assert!(with(r#""upscale":99999999999"#).contains("'upscale'"));
        assert!(with(r#""face_upsample":"yes""#).contains("'face_upsample'"));
        assert!(with(r#""background_enhance":1"#).contains("'background_enhance'"));
        assert!(with(r#""webhook":"nope""#).contains("'webhook'"));
        assert!(with(r#""webhook_events_filter":"completed""#).contains("'webhook_events_filter'"));
        assert!(with(r#""webhook_events_filter":[1]"#).contains("'webhook_events_filter'"));
    }

    #[test]
    fn webhook_headers_follow_the_gateway() {
        let body = br#"{"image":"https://x.test/a.png"}"#;
        let with = |url: Option<&'static str>, mode: Option<&'static str>, allow_http| {
            parse_submit(
                body,
                WebhookHeaders {
                    url,
                    mode,
                    allow_http,
                },
            )
        };
        assert!(with(Some("http://127.0.0.1:9/cb"), None, false)
            .unwrap_err()
            .message
            .contains("X-Webhook-URL"));
        assert_eq!(
            with(Some("http://127.0.0.1:9/cb"), Some("sync"), true)
                .unwrap()
                .webhook_header,
            Some(("http://127.0.0.1:9/cb".into(), WebhookMode::Sync))
        );
        assert!(with(Some("https://h.test/cb"), Some("often"), false)
            .unwrap_err()
            .message
            .contains("X-Webhook-Mode"));
    }

    #[test]
    fn request_ids_have_the_documented_shape() {
        let id = new_request_id(Utc::now());
        assert!(is_request_id(&id), "{id}");
        assert_eq!(id.len(), MODEL_ID.len() + 1 + 26);
        assert_ne!(id, new_request_id(Utc::now()));
        assert!(!is_request_id(
            "codeformer-image-restoration_../../etc/passwd"
        ));
    }

    #[test]
    fn status_document_mixes_timestamp_formats() {
        let t = DateTime::parse_from_rfc3339("2026-05-22T13:17:32.110Z")
            .unwrap()
            .with_timezone(&Utc);
        let doc = status_json(
            "http://127.0.0.1:1",
            &StatusView {
                request_id: "r",
                status: Status::Completed,
                error: None,
                created_at: t,
                updated_at: t,
                completed_at: Some(t),
            },
        );
        assert_eq!(doc["created_at"], "2026-05-22T13:17:32.110Z");
        assert_eq!(doc["updated_at"], "2026-05-22 13:17:32");
        assert_eq!(
            doc["output"]["media_url"][0],
            "http://127.0.0.1:1/v1/r/output.png"
        );
        assert_eq!(doc["error"], Value::Null);
    }
}
