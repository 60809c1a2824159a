//! Just enough HTTP/1.1 for a callback receiver: one request per connection, answered with
//! `Connection: close`.
//!
//! Hand-written on `std::net` (with `httparse` for the head) rather than taken from a general
//! server, because a receiver has to refuse a body by its declared size without reading it:
//! tiny_http, for one, drains whatever length a client declares (allocating it first) when a
//! request is dropped. The functions here work on the bytes received so far, so that one
//! thread can read many connections at once without any of them holding it (see
//! `reader.rs`). Limits: a head of at most 16 KiB and 64 header fields (431), a body of at most
//! the configured size (413, judged by `Content-Length` before a byte of the body is read, or
//! while a chunked body arrives).

use std::time::Duration;

/// Largest request head (request line and header fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// How long a client may take to send its whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line of a chunked body's framing.
const MAX_CHUNK_LINE: usize = 1024;

/// A request head.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    /// The path of the target, without query or fragment.
    pub path: String,
    /// The target as sent, for the log.
    pub target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first header field of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client waits for `100 Continue` before it sends the body.
    pub fn expects_continue(&self) -> bool {
        self.header("Expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    }
}

/// Why a request is not read further: answer with this status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// The head, once all of it has arrived, and the length of its bytes in `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((head_of(&parsed)?, len))),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            Err(Refusal::new(431, "the request head is over 16 KiB"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::new(431, "too many header fields")),
        Err(e) => Err(Refusal::new(400, format!("malformed request: {e}"))),
    }
}

fn head_of(parsed: &httparse::Request<'_, '_>) -> Result<Head, Refusal> {
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default().to_string();
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let value = std::str::from_utf8(field.value)
            .map_err(|_| Refusal::new(400, "a header value is not UTF-8"))?;
        headers.push((field.name.to_string(), value.trim().to_string()));
    }
    // An absolute target (through a forward proxy) is reduced to its path.
    let origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target.as_str(),
    };
    let path = origin.split(['?', '#']).next().unwrap_or("").to_string();
    Ok(Head {
        method,
        path,
        target,
        headers,
    })
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
}

/// The body's framing, refusing one declared over `max` bytes before any of it is read.
pub fn framing(head: &Head, max: usize) -> Result<Framing, Refusal> {
    let framing = match (
        head.header("Transfer-Encoding"),
        head.header("Content-Length"),
    ) {
        (Some(_), Some(_)) => {
            return Err(Refusal::new(
                400,
                "Content-Length and Transfer-Encoding together are not accepted",
            ))
        }
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Framing::Chunked,
        (Some(te), None) => {
            return Err(Refusal::new(
                501,
                format!("transfer encoding `{te}` is not supported"),
            ))
        }
        (None, Some(length)) => {
            let n: u64 = length.parse().map_err(|_| {
                Refusal::new(400, format!("Content-Length `{length}` is not a number"))
            })?;
            if n > max as u64 {
                return Err(too_big(max));
            }
            Framing::Length(n as usize)
        }
        (None, None) => Framing::Length(0),
    };
    Ok(framing)
}

fn too_big(max: usize) -> Refusal {
    Refusal::new(413, format!("the body is over the {max}-byte limit"))
}

/// The whole body once it has arrived (`Ok(None)`: not yet), from the bytes after the head.
/// A chunked body is refused as soon as it passes `max`.
pub fn body(framing: Framing, bytes: &[u8], max: usize) -> Result<Option<Vec<u8>>, Refusal> {
    match framing {
        Framing::Length(n) if bytes.len() >= n => Ok(Some(bytes[..n].to_vec())),
        Framing::Length(_) => Ok(None),
        Framing::Chunked => dechunk(bytes, max),
    }
}

fn dechunk(bytes: &[u8], max: usize) -> Result<Option<Vec<u8>>, Refusal> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(line) = line_at(bytes, &mut at)? else {
            return Ok(None);
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| Refusal::new(400, "malformed chunk size"))?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            loop {
                match line_at(bytes, &mut at)? {
                    None => return Ok(None),
                    Some("") => return Ok(Some(out)),
                    Some(_) => {}
                }
            }
        }
        if out.len().saturating_add(size) > max {
            return Err(too_big(max));
        }
        if bytes.len() - at < size {
            return Ok(None);
        }
        out.extend_from_slice(&bytes[at..at + size]);
        at += size;
        match line_at(bytes, &mut at)? {
            None => return Ok(None),
            Some("") => {}
            Some(_) => return Err(Refusal::new(400, "a chunk is longer than its size")),
        }
    }
}

/// The framing line starting at `*at` (without its line end), moving `*at` past it.
fn line_at<'a>(bytes: &'a [u8], at: &mut usize) -> Result<Option<&'a str>, Refusal> {
    let rest = &bytes[*at..];
    let Some(end) = rest.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if rest.len() >= MAX_CHUNK_LINE {
            return Err(Refusal::new(400, "a chunk framing line is too long"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&rest[..end])
        .map_err(|_| Refusal::new(400, "malformed chunk framing"))?;
    *at += end + 1;
    Ok(Some(line.trim_end_matches('\r')))
}

/// A complete answer's bytes.
pub fn answer(status: u16, extra_headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_whole() {
        assert!(parse_head(b"POST /a HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        let (head, len) = parse_head(b"POST /a?b HTTP/1.1\r\nHost: x\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!((head.path.as_str(), len), ("/a", 31));
        assert_eq!(parse_head(b"NONSENSE\r\n\r\n").unwrap_err().status, 400);
    }

    #[test]
    fn chunked_bodies_arrive_in_pieces() {
        let whole = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        for cut in 0..whole.len() {
            assert_eq!(dechunk(&whole[..cut], 100).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            dechunk(whole, 100).unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(dechunk(whole, 8).unwrap_err().status, 413);
        assert_eq!(dechunk(b"zz\r\n", 8).unwrap_err().status, 400);
        assert_eq!(dechunk(b"2\r\nabc\r\n", 8).unwrap_err().status, 400);
    }
}
