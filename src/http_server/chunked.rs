//! Chunked request bodies (RFC 9112 §7.1), decoded from the bytes received so far, so that
//! the same decoder serves a reader that polls many connections (`listen`) and one that
//! blocks on its connection (the sandbox, through [`read_blocking`]). Chunk extensions and
//! trailer fields are read and dropped; a framing line is at most [`MAX_CHUNK_LINE`] bytes.

use super::{too_big, Refusal, MAX_HEAD_BYTES};
use std::io::BufRead;

/// Longest line of a chunked body's framing.
pub const MAX_CHUNK_LINE: usize = 1024;

/// A chunked body decoded as it arrives: each [`Dechunk::feed`] is given the bytes after the
/// head received so far (those of the last call and more) and reads on from the last whole
/// chunk it took, so a body that arrives a byte at a time costs time in its length, not in
/// its square.
#[derive(Debug, Default)]
pub struct Dechunk {
    /// Where the next framing line starts.
    at: usize,
    /// The chunks taken so far.
    body: Vec<u8>,
    /// The last chunk is in: trailer fields follow, up to the empty line.
    trailer: bool,
}

impl Dechunk {
    /// The bytes the whole body's framing took once it has arrived (`Ok(None)`: not yet).
    pub fn feed(&mut self, bytes: &[u8], max: usize) -> Result<Option<usize>, Refusal> {
        loop {
            let mut at = self.at;
            let Some(line) = line_at(bytes, &mut at)? else {
                return Ok(None);
            };
            if self.trailer {
                self.at = at;
                if line.is_empty() {
                    return Ok(Some(at));
                }
                continue;
            }
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| Refusal::new(400, "malformed chunk size"))?;
            if size == 0 {
                self.at = at;
                self.trailer = true;
                continue;
            }
            if self.body.len().saturating_add(size) > max {
                return Err(too_big(max));
            }
            if bytes.len() - at < size {
                return Ok(None);
            }
            let data = at..at + size;
            at += size;
            match line_at(bytes, &mut at)? {
                None => return Ok(None),
                Some("") => {}
                Some(_) => return Err(Refusal::new(400, "a chunk is longer than its size")),
            }
            self.body.extend_from_slice(&bytes[data]);
            self.at = at;
        }
    }

    /// The body, once [`Dechunk::feed`] has found its end.
    pub fn into_body(self) -> Vec<u8> {
        self.body
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
    let mut chunks = Dechunk::default();
    loop {
        let available = reader.fill_buf().map_err(|_| ReadError::Io)?;
        if available.is_empty() {
            return Err(ReadError::Io);
        }
        let n = available.len();
        received.extend_from_slice(available);
        match chunks.feed(&received, max).map_err(ReadError::Refused)? {
            Some(used) => {
                // What came before this read was all needed, or the body would have ended.
                reader.consume(n - (received.len() - used));
                return Ok(chunks.into_body());
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

    /// The whole body and the bytes its framing took, decoded in one call.
    fn dechunk(bytes: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, Refusal> {
        let mut chunks = Dechunk::default();
        Ok(chunks.feed(bytes, max)?.map(|used| (chunks.body, used)))
    }

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
    fn a_body_fed_a_byte_at_a_time_is_read_on_from_the_last_whole_chunk() {
        let mut whole = Vec::new();
        for _ in 0..2000 {
            whole.extend_from_slice(b"1\r\na\r\n");
        }
        whole.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
        let mut chunks = Dechunk::default();
        for cut in 0..whole.len() {
            assert_eq!(chunks.feed(&whole[..cut], 10_000).unwrap(), None);
            // Never more than one unfinished chunk and its framing behind the end.
            assert!(cut - chunks.at <= 6 + "X-Trailer: 1\r\n".len(), "at {cut}");
        }
        assert_eq!(chunks.feed(&whole, 10_000).unwrap(), Some(whole.len()));
        assert_eq!(chunks.into_body(), vec![b'a'; 2000]);
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
