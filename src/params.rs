//! The parameters of one restoration job, validated once, in one place.
//!
//! Everything that reaches the gateway or the ledger as job parameters goes through
//! [`JobParams::validate`]: command-line flags, manifest rows and `on_submit` hook changes are
//! checked by the same rules, so an error message names the same field whichever door the value
//! came in by. The normalised form ([`JobParams::normalised`]) feeds the idempotency key.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Largest upscale factor accepted. The API documents 2 and 4; larger factors are refused here
/// because their cost grows with the square of the factor.
pub const MAX_UPSCALE: u32 = 8;

/// How the gateway calls back (`X-Webhook-Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookMode {
    /// One POST at the final status.
    Terminal,
    /// A POST on every status poll plus the final one.
    Sync,
}

impl WebhookMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookMode::Terminal => "terminal",
            WebhookMode::Sync => "sync",
        }
    }
}

impl FromStr for WebhookMode {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        match s {
            "terminal" => Ok(WebhookMode::Terminal),
            "sync" => Ok(WebhookMode::Sync),
            other => Err(ParamError::new(
                "webhook_mode",
                format!("`{other}` is not a webhook mode (expected terminal or sync)"),
            )),
        }
    }
}

/// A parameter that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        ParamError {
            field,
            message: message.into(),
        }
    }
}

/// The API parameters of one job, as sent in the submit body and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParams {
    pub image: String,
    /// CodeFormer's `w`, 0..=1, kept as an exact decimal so that `0.5` and `0.50` are one job.
    pub fidelity: Decimal,
    pub upscale: u32,
    pub background_enhance: bool,
    pub face_upsample: bool,
    /// Body field `webhook`.
    pub webhook: Option<String>,
    /// Body field `webhook_events_filter`.
    pub webhook_events_filter: Option<Vec<String>>,
    /// Header `X-Webhook-URL`.
    pub webhook_url: Option<String>,
    /// Header `X-Webhook-Mode`.
    pub webhook_mode: Option<WebhookMode>,
}

impl JobParams {
    /// The API's defaults for an image.
    pub fn new(image: impl Into<String>) -> Self {
        JobParams {
            image: image.into(),
            fidelity: Decimal::new(5, 1),
            upscale: 2,
            background_enhance: true,
            face_upsample: true,
            webhook: None,
            webhook_events_filter: None,
            webhook_url: None,
            webhook_mode: None,
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !crate::storage::is_locator(&self.image) {
            validate_image_url(&self.image)?;
        }
        if self.fidelity < Decimal::ZERO || self.fidelity > Decimal::ONE {
            return Err(ParamError::new(
                "fidelity",
                format!("{} is outside 0..1", self.fidelity),
            ));
        }
        validate_upscale(self.upscale)?;
        if let Some(url) = &self.webhook {
            validate_http_url("webhook", url)?;
        }
        if let Some(url) = &self.webhook_url {
            validate_http_url("webhook_url", url)?;
        }
        if let Some(filter) = &self.webhook_events_filter {
            validate_events_filter(filter)?;
        }
        if self.webhook_mode.is_some() && self.webhook_url.is_none() {
            return Err(ParamError::new(
                "webhook_mode",
                "needs a webhook URL (--webhook-url) to apply to",
            ));
        }
        Ok(())
    }

    /// Checks the webhook URL's scheme against the gateway it goes to: the real gateway
    /// rejects plain http:// webhook URLs, so only a gateway on loopback (the sandbox with
    /// `--allow-http-webhooks`) is given one.
    pub fn check_webhook_scheme(&self, base_url: &str) -> Result<(), ParamError> {
        match &self.webhook_url {
            Some(url) if !url.starts_with("https://") && !is_loopback_url(base_url) => {
                Err(ParamError::new(
                    "webhook_url",
                    format!("`{url}` is not https: the gateway rejects plain http:// webhook URLs (http is accepted only when the base URL is on loopback, for the sandbox)"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether the gateway will call back for this job.
    pub fn expects_callbacks(&self) -> bool {
        self.webhook_url.is_some() || self.webhook.is_some()
    }

    /// A canonical text of the parameters that decide the result and its price, used in the
    /// idempotency key: equal jobs give equal text whatever spelling they came in.
    pub fn normalised(&self) -> String {
        format!(
            "image={}\nfidelity={}\nupscale={}\nbackground_enhance={}\nface_upsample={}",
            self.image.trim(),
            self.fidelity.normalize(),
            self.upscale,
            self.background_enhance,
            self.face_upsample
        )
    }

    /// The idempotency key of a job that was given none: a hash of the URL and parameters.
    pub fn derived_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.normalised().as_bytes());
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}")
    }
}

/// Parses a fidelity written as text (flag, CSV cell, hook value).
pub fn parse_fidelity(text: &str) -> Result<Decimal, ParamError> {
    let value = Decimal::from_str(text.trim()).map_err(|_| {
        ParamError::new(
            "fidelity",
            format!("`{text}` is not a number (expected 0..1)"),
        )
    })?;
    if value < Decimal::ZERO || value > Decimal::ONE {
        return Err(ParamError::new(
            "fidelity",
            format!("{text} is outside 0..1"),
        ));
    }
    Ok(value)
}

/// Parses a fidelity given as a JSON or Lua number.
pub fn fidelity_from_f64(value: f64) -> Result<Decimal, ParamError> {
    if !value.is_finite() {
        return Err(ParamError::new(
            "fidelity",
            format!("{value} is not a number"),
        ));
    }
    let decimal = Decimal::from_f64_retain(value)
        .map(|d| d.round_dp(6).normalize())
        .ok_or_else(|| ParamError::new("fidelity", format!("{value} is not a number")))?;
    if decimal < Decimal::ZERO || decimal > Decimal::ONE {
        return Err(ParamError::new(
            "fidelity",
            format!("{value} is outside 0..1"),
        ));
    }
    Ok(decimal)
}

/// Parses an upscale factor written as text.
pub fn parse_upscale(text: &str) -> Result<u32, ParamError> {
    let value: u32 = text.trim().parse().map_err(|_| {
        ParamError::new(
            "upscale",
            format!("`{text}` is not a positive whole number"),
        )
    })?;
    validate_upscale(value)?;
    Ok(value)
}

pub fn validate_upscale(value: u32) -> Result<(), ParamError> {
    if value == 0 || value > MAX_UPSCALE {
        return Err(ParamError::new(
            "upscale",
            format!("{value} is outside 1..{MAX_UPSCALE}"),
        ));
    }
    Ok(())
}

/// Parses a boolean written as text: true/false, yes/no, 1/0.
pub fn parse_bool(field: &'static str, text: &str) -> Result<bool, ParamError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(ParamError::new(
            field,
            format!("`{text}` is not a boolean (expected true or false)"),
        )),
    }
}

/// The event types the API documents for `webhook_events_filter`.
pub const WEBHOOK_EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

/// Parses `start,output` (CLI) or `start;output` (a CSV cell) into the filter's list.
pub fn parse_events_filter(text: &str, separator: char) -> Result<Vec<String>, ParamError> {
    let events: Vec<String> = text
        .split(separator)
        .map(|e| e.trim().to_string())
        .collect();
    validate_events_filter(&events)?;
    Ok(events)
}

/// A filter names at least one event, each once, as a word (`start`, `completed`, ...).
pub fn validate_events_filter(events: &[String]) -> Result<(), ParamError> {
    let bad = |m: String| Err(ParamError::new("webhook_events_filter", m));
    if events.is_empty() {
        return bad("is empty (name events such as start, output, logs, completed)".into());
    }
    for (i, e) in events.iter().enumerate() {
        if e.is_empty()
            || e.len() > 64
            || !e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return bad(format!(
                "`{e}` is not an event type (the API documents start, output, logs and completed)"
            ));
        }
        if events[..i].contains(e) {
            return bad(format!("`{e}` is given twice"));
        }
    }
    Ok(())
}

/// Whether a URL's host is a loopback address (127.0.0.0/8, ::1 or localhost).
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The longest URL accepted (image or webhook), in bytes. Longer ones are refused here rather
/// than sent: gateways and proxies commonly refuse such requests, and an answer lost that way
/// would leave the job `uncertain`.
pub const MAX_URL_BYTES: usize = 8192;

/// What to do with a local file given as an image, for messages: the gateway fetches each
/// image itself, so a local file goes through the user's bucket.
pub const LOCAL_FILE_FIX: &str = "the gateway fetches each image itself, so a local file needs \
     --upload s3://BUCKET/PREFIX (or `upload = \"s3://BUCKET/PREFIX\"` in the config file): \
     it is then uploaded to your bucket and sent as a presigned URL";

/// An input image must be an absolute http(s) URL the gateway can fetch, or (recorded by the
/// tool itself, never typed) the locator `s3://BUCKET/KEY` of an uploaded local file.
pub fn validate_image_url(url: &str) -> Result<(), ParamError> {
    if is_local_path(url) {
        return Err(ParamError::new(
            "image",
            format!(
                "`{}` is a local file path, not a URL: {LOCAL_FILE_FIX}",
                clip(url)
            ),
        ));
    }
    validate_http_url("image", url)
}

/// Whether an image as given names a local file rather than a URL.
pub fn is_local_path(text: &str) -> bool {
    !text.contains("://") && looks_like_a_path(text)
}

/// A relative or absolute file name, as a user would type one (`photos/a.jpg`, `./a.png`,
/// `C:\a.jpg`, `~/a.jpg`, `a.jpg`).
fn looks_like_a_path(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty()
        && (text.starts_with(['/', '.', '~', '\\'])
            || text.contains(['/', '\\'])
            || text.as_bytes().get(1) == Some(&b':')
            || std::path::Path::new(text).extension().is_some())
}

/// At most 120 characters of a value, for messages.
fn clip(text: &str) -> String {
    if text.chars().count() <= 120 {
        text.to_string()
    } else {
        text.chars().take(120).collect::<String>() + "…"
    }
}

fn validate_http_url(field: &'static str, url: &str) -> Result<(), ParamError> {
    if url.len() > MAX_URL_BYTES {
        return Err(ParamError::new(
            field,
            format!(
                "the URL is {} bytes long; the longest accepted is {MAX_URL_BYTES} bytes",
                url.len()
            ),
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ParamError::new(field, format!("`{}` is not an http(s) URL", clip(url))))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParamError::new(
            field,
            format!("`{}` is not a valid http(s) URL", clip(url)),
        ));
    }
    Ok(())
}

/// Parses `WxH` (for `--size` and manifests): both sides positive.
pub fn parse_size(text: &str) -> Result<(u32, u32), ParamError> {
    let bad = || {
        ParamError::new(
            "size",
            format!("`{text}` is not a size WIDTHxHEIGHT with both sides positive, e.g. 1024x768"),
        )
    };
    let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Parses a `key=value` tag.
pub fn parse_tag(text: &str) -> Result<(String, String), ParamError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(ParamError::new("tag", format!("`{text}` is not KEY=VALUE"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelity_spellings_give_one_key() {
        let mut a = JobParams::new("https://x.test/a.png");
        let mut b = a.clone();
        a.fidelity = parse_fidelity("0.5").unwrap();
        b.fidelity = parse_fidelity("0.50").unwrap();
        assert_eq!(a.derived_key(), b.derived_key());
        b.upscale = 4;
        assert_ne!(a.derived_key(), b.derived_key());
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(parse_fidelity("7").unwrap_err().field, "fidelity");
        assert_eq!(parse_upscale("0").unwrap_err().field, "upscale");
        assert_eq!(parse_size("0x10").unwrap_err().field, "size");
        assert_eq!(validate_image_url("/tmp/a.png").unwrap_err().field, "image");
        assert_eq!(
            validate_image_url("ftp://a/b.png").unwrap_err().field,
            "image"
        );
        assert!(validate_image_url("http://127.0.0.1:8080/a.png").is_ok());
    }

    #[test]
    fn a_local_path_names_the_fix_and_a_long_url_is_refused() {
        for path in [
            "photos/face1.jpg",
            "./a.png",
            "/tmp/a.png",
            "face.jpg",
            "C:\\a.jpg",
        ] {
            let err = validate_image_url(path).unwrap_err();
            assert!(err.message.contains("local file path"), "{path}: {err}");
            assert!(
                err.message.contains("--upload s3://BUCKET/PREFIX"),
                "{path}: {err}"
            );
        }
        assert!(!validate_image_url("ftp://a/b.png")
            .unwrap_err()
            .message
            .contains("local"));
        let long = format!("https://x.test/{}", "a".repeat(MAX_URL_BYTES));
        let err = validate_image_url(&long).unwrap_err();
        assert!(err.message.contains("8192 bytes"), "{err}");
        let fits = format!("https://x.test/{}", "a".repeat(MAX_URL_BYTES - 15));
        assert_eq!(fits.len(), MAX_URL_BYTES);
        assert!(validate_image_url(&fits).is_ok());
    }

    #[test]
    fn webhook_url_must_be_https_unless_the_gateway_is_on_loopback() {
        let mut p = JobParams::new("https://x.test/a.png");
        p.webhook_url = Some("http://hooks.test/cb".into());
        let real = "https://gateway.pixazo.ai";
        assert_eq!(
            p.check_webhook_scheme(real).unwrap_err().field,
            "webhook_url"
        );
        assert!(p.check_webhook_scheme("http://127.0.0.1:8787").is_ok());
        assert!(p.check_webhook_scheme("http://[::1]:8787").is_ok());
        assert!(p
            .check_webhook_scheme("http://127.0.0.1.evil.test")
            .is_err());
        p.webhook_url = Some("https://hooks.test/cb".into());
        assert!(p.check_webhook_scheme(real).is_ok());
    }

    #[test]
    fn events_filters_are_lists_of_event_names() {
        assert_eq!(
            parse_events_filter("start, completed", ',').unwrap(),
            ["start", "completed"]
        );
        for bad in ["", "start,,completed", "start;start", "a b"] {
            assert!(parse_events_filter(bad, ',').is_err(), "{bad}");
            assert!(parse_events_filter(bad, ';').is_err(), "{bad}");
        }
    }
}
