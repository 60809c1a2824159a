//! Reading a request from the bytes received so far, for a reader that cannot block on one
//! connection (the `listen` reader polls many at once): the head is parsed (with `httparse`)
//! only once all of it has arrived, the body's framing is judged from the head before a byte
//! of the body is read (a declared size over the limit is refused unread), and the body is
//! complete once [`body`] says so. A head of at most [`MAX_HEAD_BYTES`] and 64 header fields
//! (431).

use super::chunked::Dechunk;
use super::{too_big, Refusal, MAX_HEAD_BYTES};

/// Most header fields in one request.
const MAX_HEADERS: usize = 64;

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

/// The whole body once it has arrived (`Ok(None)`: not yet), from the bytes after the head
/// received so far; `chunks` keeps a chunked body's decoding from one call to the next. A
/// chunked body is refused as soon as it passes `max`.
pub fn body(
    framing: Framing,
    chunks: &mut Dechunk,
    bytes: &[u8],
    max: usize,
) -> Result<Option<Vec<u8>>, Refusal> {
    match framing {
        Framing::Length(n) if bytes.len() >= n => Ok(Some(bytes[..n].to_vec())),
        Framing::Length(_) => Ok(None),
        Framing::Chunked => Ok(chunks
            .feed(bytes, max)?
            .map(|_| std::mem::take(chunks).into_body())),
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
}
