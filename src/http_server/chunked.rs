//! Chunked request bodies (RFC 9112 §7.1), decoded from the bytes received so far, so that
//! the same decoder serves a reader that polls many connections (`listen`) and one that
//! blocks on its connection (the sandbox, through [`read_blocking`]). Chunk extensions and
//! trailer fields are read and dropped; a framing line is at most [`MAX_CHUNK_LINE`] bytes.

use super::{too_big, Refusal, MAX_HEAD_BYTES};
use std::io::BufRead;

/// Longest line of a chunked body's framing.
pub const MAX_CHUNK_LINE: usize = 1024;

/// The whole body and the bytes its framing took (`Ok(None)`: not all of it has arrived),
/// from the bytes after the head. Refused as soon as the body passes `max`.
pub fn dechunk(bytes: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, Refusal> {
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
                    Some("") => return Ok(Some((out, at))),
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

/// Why [`read_blocking`] gave up.
#[derive(Debug)]
pub enum ReadError {
    /// Answer with this refusal and close.
    Refused(Refusal),
    /// The connection broke or timed out: close without answering.
    Io,
}

/// Reads a chunked body from a blocking reader, taking from it exactly the body's bytes (a
/// request pipelined behind it stays in the reader). Framing around a body within `max`
/// fits in [`MAX_HEAD_BYTES`] more; past that the body is refused (413).
pub fn read_blocking(reader: &mut impl BufRead, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut received = Vec::new();
    loop {
        let available = reader.fill_buf().map_err(|_| ReadError::Io)?;
        if available.is_empty() {
            return Err(ReadError::Io);
        }
        let n = available.len();
        received.extend_from_slice(available);
        match dechunk(&received, max).map_err(ReadError::Refused)? {
            Some((body, used)) => {
                // What came before this read was all needed, or the body would have ended.
                reader.consume(n - (received.len() - used));
                return Ok(body);
            }
            None if received.len() > max.saturating_add(MAX_HEAD_BYTES) => {
                return Err(ReadError::Refused(too_big(max)));
            }
            None => reader.consume(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn chunked_bodies_arrive_in_pieces() {
        let whole = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        for cut in 0..whole.len() {
            assert_eq!(dechunk(&whole[..cut], 100).unwrap(), None, "cut at {cut}");
        }
        let (body, used) = dechunk(whole, 100).unwrap().unwrap();
        assert_eq!((&body[..], used), (&b"hello world"[..], whole.len()));
        assert_eq!(dechunk(whole, 8).unwrap_err().status, 413);
        assert_eq!(dechunk(b"zz\r\n", 8).unwrap_err().status, 400);
        assert_eq!(dechunk(b"2\r\nabc\r\n", 8).unwrap_err().status, 400);
    }

    #[test]
    fn a_blocking_read_leaves_the_next_request_in_the_reader() {
        let mut reader = io::BufReader::with_capacity(4, &b"3\r\nabc\r\n0\r\n\r\nGET /next"[..]);
        assert_eq!(read_blocking(&mut reader, 100).unwrap(), b"abc");
        let mut rest = String::new();
        io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        assert_eq!(rest, "GET /next");
    }
}
