//! Routing, and the gate every API request passes: key, rate limit, injected faults, latency.
//!
//! Paths:
//! - `POST /codeformer-image-restoration/v1/codeformer/generate` and
//!   `GET /v2/requests/status/{request_id}`: the API (key, rate limit and faults apply);
//! - `GET /v1/{request_id}/output.png`: outputs, as the gateway's CDN serves them;
//! - `GET /static/{path}`: input files from the static directory;
//! - `PUT|GET|HEAD|DELETE /s3/{bucket}/{key}`: the S3-compatible object store (presigned);
//! - `GET /sandbox/stats`, `GET|POST /sandbox/wallet`: the sandbox's own controls.
//!
//! Order of the gate: 401 without the key, then 429 over the rate limit, then an injected 500
//! (the request is not carried out), then the request itself; the latency is added to every
//! API answer, and an injected drop closes the connection after the request was carried out.

use super::faults::{self, Stream};
use super::http::{Outcome, Request, Response};
use super::protocol::{self, ApiError, WebhookHeaders};
use super::{files, jobs, s3, SandboxStats, Shared, KEY_HEADER, STATUS_PATH_PREFIX, SUBMIT_PATH};
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn handle(shared: &Shared, req: &Request) -> Outcome {
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("/static/") {
        return Outcome::Respond(files::serve_static(shared, req, rest));
    }
    if let Some(rest) = path.strip_prefix("/s3/") {
        return Outcome::Respond(s3::handle(shared, req, rest));
    }
    if let Some(id) = path
        .strip_prefix("/v1/")
        .and_then(|rest| rest.strip_suffix("/output.png"))
    {
        return Outcome::Respond(files::serve_output(shared, req, id));
    }
    match path {
        "/sandbox/stats" => Outcome::Respond(stats_endpoint(shared, req)),
        "/sandbox/wallet" => Outcome::Respond(wallet_endpoint(shared, req)),
        _ => api(shared, req),
    }
}

/// A snapshot of the counters and the wallet.
pub fn snapshot(shared: &Shared) -> SandboxStats {
    let balance = shared.wallet.lock().unwrap().balance();
    let mut stats = shared.stats.lock().unwrap().snapshot(balance);
    stats.connections = shared.connections.load(Ordering::Relaxed);
    stats
}

fn api(shared: &Shared, req: &Request) -> Outcome {
    let index = shared.request_seq.fetch_add(1, Ordering::Relaxed);
    shared.stats.lock().unwrap().stats.api_requests += 1;
    let config = &shared.config;
    let response = gate(shared, req, index).unwrap_or_else(|| route(shared, req));
    sleep_unless_stopping(shared, Duration::from_millis(config.latency_ms));
    let mut counters = shared.stats.lock().unwrap();
    if faults::chance(config.seed, Stream::Drop, index, config.drop_rate) {
        counters.stats.connections_dropped += 1;
        return Outcome::Drop;
    }
    counters.answered(response.status);
    Outcome::Respond(response)
}

/// The answer that stops a request before it is carried out, if any.
fn gate(shared: &Shared, req: &Request, index: u64) -> Option<Response> {
    let config = &shared.config;
    if let Some(key) = &config.api_key {
        let given = req.header(KEY_HEADER);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            let message = if given.is_none() {
                "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."
            } else {
                "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
            };
            return Some(ApiError::new(401, "Unauthorized", message).response());
        }
    }
    if let Some(bucket) = &shared.bucket {
        if let Err(wait) = bucket.lock().unwrap().take() {
            let message = format!("Rate limit is exceeded. Try again in {wait} seconds.");
            return Some(
                ApiError::new(429, "Too Many Requests", message)
                    .response()
                    .header("Retry-After", wait.to_string()),
            );
        }
    }
    if faults::chance(config.seed, Stream::Flaky, index, config.flaky_rate) {
        let message = "The gateway failed to process the request (injected fault).";
        return Some(ApiError::new(500, "Internal Server Error", message).response());
    }
    None
}

/// Compares without stopping at the first difference, so timing says nothing about the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sleep_unless_stopping(shared: &Shared, total: Duration) {
    let end = Instant::now() + total;
    while !shared.stopping() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn route(shared: &Shared, req: &Request) -> Response {
    let path = req.path.as_str();
    if path == SUBMIT_PATH {
        if req.method != "POST" {
            return method_not_allowed("POST");
        }
        return submit(shared, req);
    }
    if let Some(id) = path.strip_prefix(STATUS_PATH_PREFIX) {
        if req.method != "GET" && req.method != "HEAD" {
            return method_not_allowed("GET, HEAD");
        }
        return status(shared, id);
    }
    ApiError::new(404, "Not Found", format!("No API operation matches {path}")).response()
}

fn method_not_allowed(allow: &str) -> Response {
    ApiError::new(405, "Method Not Allowed", format!("Use {allow}"))
        .response()
        .header("Allow", allow)
}

fn submit(shared: &Shared, req: &Request) -> Response {
    {
        let mut counters = shared.stats.lock().unwrap();
        counters.stats.submissions += 1;
        if let Some(image) = protocol::image_of(&req.body) {
            *counters
                .stats
                .submissions_by_image
                .entry(image)
                .or_default() += 1;
        }
    }
    let headers = WebhookHeaders {
        url: req.header("X-Webhook-URL"),
        mode: req.header("X-Webhook-Mode"),
        allow_http: shared.config.allow_http_webhooks,
    };
    let created = protocol::parse_submit(&req.body, headers)
        .and_then(|submission| jobs::submit(shared, submission));
    match created {
        Ok(id) => {
            shared.stats.lock().unwrap().stats.accepted += 1;
            Response::json(202, &protocol::accepted_json(&shared.base_url, &id))
        }
        Err(refusal) => refusal.response(),
    }
}

fn status(shared: &Shared, id: &str) -> Response {
    shared.stats.lock().unwrap().stats.status_requests += 1;
    match jobs::status_document(shared, id) {
        Some(doc) => Response::json(200, &doc),
        None => ApiError::new(404, "Not Found", format!("Request '{id}' not found")).response(),
    }
}

fn stats_endpoint(shared: &Shared, req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return method_not_allowed("GET, HEAD");
    }
    let stats = serde_json::to_value(snapshot(shared)).unwrap_or_default();
    Response::json(200, &stats)
}

/// `POST /sandbox/wallet` with `{"add": "1.50"}` (a decimal string or number) adds funds;
/// `GET` reads the balance.
fn wallet_endpoint(shared: &Shared, req: &Request) -> Response {
    match req.method.as_str() {
        "GET" | "HEAD" => {}
        "POST" => {
            let amount = parse_add(&req.body);
            match amount {
                Ok(usd) => shared.wallet.lock().unwrap().add(usd),
                Err(message) => return ApiError::bad_request(message).response(),
            }
        }
        _ => return method_not_allowed("GET, POST"),
    }
    let balance = shared.wallet.lock().unwrap().balance();
    Response::json(
        200,
        &json!({"wallet_usd": balance.map(super::stats::money)}),
    )
}

fn parse_add(body: &[u8]) -> Result<Decimal, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("The body is not valid JSON: {e}"))?;
    let add = value
        .get("add")
        .ok_or("Field 'add' is required, e.g. {\"add\": \"1.50\"}")?;
    let text = match add {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(format!("Field 'add' must be a decimal string, got {other}")),
    };
    Decimal::from_str(text.trim())
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map_err(|_| format!("Field 'add' is not a decimal amount: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallet_amounts() {
        assert_eq!(
            parse_add(br#"{"add":"1.50"}"#).unwrap(),
            Decimal::new(150, 2)
        );
        assert_eq!(parse_add(br#"{"add":2}"#).unwrap(), Decimal::TWO);
        assert!(parse_add(br#"{"add":"lots"}"#).is_err());
        assert!(parse_add(br#"{}"#).is_err());
        assert!(parse_add(b"\xff").is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}
