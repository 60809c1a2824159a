//! Serving files: static inputs under `/static/` and job outputs under `/v1/<id>/output.png`.
//!
//! Both honour a single byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) with 206 and
//! `Content-Range`, as a CDN does; an unsatisfiable range gets 416, and several ranges at once
//! are ignored (the whole file, 200), which HTTP allows. Only bytes actually written to the
//! socket are counted. Static paths are confined to the static directory: `..`, backslashes
//! and symlinks leading out of it are refused with 404.

use super::http::{ByteCounter, FileBody, Request, Response};
use super::paths::resolve_static;
use super::protocol::{self, ApiError};
use super::render::INTERNAL_FETCH_HEADER;
use super::Shared;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A `Range` header read against a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    Full,
    /// Inclusive bounds.
    Partial(u64, u64),
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(header) = header else {
        return RangeAnswer::Full;
    };
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    };
    match (number(first), number(last), last.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (None, Some(n), _) if first.trim().is_empty() => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(len - n.min(len), len - 1)
            }
        }
        (Some(a), None, true) => {
            if a >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(a, len - 1)
            }
        }
        (Some(a), Some(b), _) if a <= b => {
            if a >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(a, b.min(len - 1))
            }
        }
        // Malformed ranges are ignored, as HTTP says.
        _ => RangeAnswer::Full,
    }
}

/// `GET /static/<rest>`.
pub fn serve_static(shared: &Shared, req: &Request, rest: &str) -> Response {
    if let Some(refused) = only_get(req) {
        return refused;
    }
    let not_found = || ApiError::new(404, "Not Found", "No such static file").response();
    let Some(root) = &shared.config.static_dir else {
        return not_found();
    };
    let Some((path, relative)) = resolve_static(root, rest) else {
        return not_found();
    };
    let internal = req.header(INTERNAL_FETCH_HEADER) == Some(shared.fetcher.token.as_str());
    let counter: ByteCounter = if internal {
        Box::new(|_| {})
    } else {
        let stats = StatsHandle::of(shared);
        Box::new(move |n| stats.static_served(&relative, n))
    };
    serve_file(req, &path, content_type(&path), counter)
}

/// `GET /v1/<request_id>/output.png`.
pub fn serve_output(shared: &Shared, req: &Request, request_id: &str) -> Response {
    if let Some(refused) = only_get(req) {
        return refused;
    }
    let path = protocol::is_request_id(request_id)
        .then(|| super::jobs::output_file(shared, request_id))
        .flatten();
    let Some(path) = path else {
        return ApiError::new(404, "Not Found", format!("No output for '{request_id}'")).response();
    };
    let stats = StatsHandle::of(shared);
    serve_file(
        req,
        &path,
        "image/png",
        Box::new(move |n| stats.output_served(n)),
    )
}

fn only_get(req: &Request) -> Option<Response> {
    (req.method != "GET" && req.method != "HEAD").then(|| {
        ApiError::new(405, "Method Not Allowed", "Use GET")
            .response()
            .header("Allow", "GET, HEAD")
    })
}

/// A way for the byte counter, which runs while the answer is written, to reach the stats.
struct StatsHandle(Arc<std::sync::Mutex<super::stats::Counters>>);

impl StatsHandle {
    fn of(shared: &Shared) -> Self {
        StatsHandle(shared.stats.clone())
    }

    fn static_served(&self, relative: &str, delta: i64) {
        let mut counters = self.0.lock().unwrap();
        apply(&mut counters.stats.static_bytes_served, delta);
        let by_path = &mut counters.stats.static_bytes_by_path;
        apply(by_path.entry(relative.to_string()).or_default(), delta);
    }

    fn output_served(&self, delta: i64) {
        apply(&mut self.0.lock().unwrap().stats.output_bytes_served, delta);
    }
}

fn apply(total: &mut u64, delta: i64) {
    *total = total.saturating_add_signed(delta);
}

fn serve_file(req: &Request, path: &Path, content_type: &str, count: ByteCounter) -> Response {
    let opened = File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len())));
    let Ok((file, len)) = opened else {
        return ApiError::new(404, "Not Found", "No such file").response();
    };
    let (status, start, count_bytes) = match parse_range(req.header("Range"), len) {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Partial(a, b) => (206, a, b - a + 1),
        RangeAnswer::Unsatisfiable => {
            return Response::new(416)
                .header("Content-Range", format!("bytes */{len}"))
                .header("Accept-Ranges", "bytes");
        }
    };
    let mut response = Response::new(status)
        .header("Content-Type", content_type)
        .header("Accept-Ranges", "bytes");
    if status == 206 {
        response = response.header(
            "Content-Range",
            format!("bytes {start}-{}/{len}", start + count_bytes - 1),
        );
    }
    response.file(FileBody {
        file,
        start,
        len: count_bytes,
        count,
    })
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        Some("txt") | Some("csv") | Some("jsonl") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Partial(0, 3));
        assert_eq!(parse_range(Some("bytes=4-"), 10), Partial(4, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Partial(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Partial(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-y"), 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999999"), 10),
            Partial(0, 9)
        );
    }
}
