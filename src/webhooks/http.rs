//! Just enough HTTP/1.1 for a callback receiver: one request per connection, answered with
//! `Connection: close`.
//!
//! Hand-written on `std::net` (with `httparse` for the head) rather than taken from a general
//! server, because a receiver has to refuse a body by its declared size without reading it:
//! tiny_http, for one, drains whatever length a client declares (allocating it first) when a
//! request is dropped. Limits: a head of at most 16 KiB and 64 header fields (431), a body of
//! at most the configured size (413, judged by `Content-Length` before a byte of the body is
//! read, or while a chunked body arrives), 10 s for the whole request (408).

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest request head (request line and header fields).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// How long a client may take to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a read waiting for bytes looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
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
}

/// Why a request is not read further.
#[derive(Debug)]
pub enum Refusal {
    /// Answer with this status and message.
    Answer(u16, String),
    /// The client went away or sent nothing in time: close without answering.
    Gone,
}

impl Refusal {
    fn answer(status: u16, message: impl Into<String>) -> Refusal {
        Refusal::Answer(status, message.into())
    }
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        if is_timeout(&e) {
            Refusal::answer(408, "the request took too long to arrive")
        } else {
            Refusal::Gone
        }
    }
}

/// Reads from the socket until a deadline, however slowly the bytes come, and gives up as
/// soon as the receiver is stopping (nothing of a request still arriving has been recorded).
pub struct Timed<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    stopping: &'a AtomicBool,
}

impl<'a> Timed<'a> {
    pub fn new(stream: &'a TcpStream, deadline: Instant, stopping: &'a AtomicBool) -> Self {
        Timed {
            stream,
            deadline,
            stopping,
        }
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left.min(STOP_CHECK)))?;
            let mut stream = self.stream;
            match stream.read(buf) {
                Err(e) if is_timeout(&e) => continue,
                read => return read,
            }
        }
    }
}

/// The body still to read: bytes that arrived with the head, then the socket.
pub type BodyReader<'a> = io::Chain<Cursor<Vec<u8>>, Timed<'a>>;

/// Reads and parses the request head; returns it with a reader positioned at the body.
pub fn read_head(mut timed: Timed<'_>) -> Result<(Head, BodyReader<'_>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = head_of(&parsed)?;
                let rest = Cursor::new(buf[len..].to_vec());
                return Ok((head, rest.chain(timed)));
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(Refusal::answer(431, "the request head is over 16 KiB"))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal::answer(431, "too many header fields"))
            }
            Err(e) => return Err(Refusal::answer(400, format!("malformed request: {e}"))),
        }
        let n = timed.read(&mut chunk)?;
        if n == 0 {
            return Err(Refusal::Gone);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_of(parsed: &httparse::Request<'_, '_>) -> Result<Head, Refusal> {
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default().to_string();
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let value = std::str::from_utf8(field.value)
            .map_err(|_| Refusal::answer(400, "a header value is not UTF-8"))?;
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
enum Framing {
    Length(u64),
    Chunked,
}

fn framing(head: &Head) -> Result<Framing, Refusal> {
    match (
        head.header("Transfer-Encoding"),
        head.header("Content-Length"),
    ) {
        (Some(_), Some(_)) => Err(Refusal::answer(
            400,
            "Content-Length and Transfer-Encoding together are not accepted",
        )),
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        (Some(te), None) => Err(Refusal::answer(
            501,
            format!("transfer encoding `{te}` is not supported"),
        )),
        (None, Some(length)) => length.parse().map(Framing::Length).map_err(|_| {
            Refusal::answer(400, format!("Content-Length `{length}` is not a number"))
        }),
        (None, None) => Ok(Framing::Length(0)),
    }
}

/// Reads the body, refusing one over `max` bytes: by its declared length before reading it,
/// or as soon as a chunked one passes the limit.
pub fn read_body(
    head: &Head,
    body: &mut BodyReader<'_>,
    stream: &TcpStream,
    max: usize,
) -> Result<Vec<u8>, Refusal> {
    let too_big = || Refusal::answer(413, format!("the body is over the {max}-byte limit"));
    let framing = framing(head)?;
    if let Framing::Length(n) = framing {
        if n > max as u64 {
            return Err(too_big());
        }
    }
    if head
        .header("Expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let mut writer = stream;
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    match framing {
        Framing::Length(n) => {
            let mut bytes = vec![0u8; n as usize];
            body.read_exact(&mut bytes)?;
            Ok(bytes)
        }
        Framing::Chunked => read_chunked(body, max).map_err(|e| match e {
            ChunkError::TooBig => too_big(),
            ChunkError::Bad(message) => Refusal::answer(400, message),
            ChunkError::Io(e) => e.into(),
        }),
    }
}

enum ChunkError {
    TooBig,
    Bad(&'static str),
    Io(io::Error),
}

impl From<io::Error> for ChunkError {
    fn from(e: io::Error) -> Self {
        ChunkError::Io(e)
    }
}

fn read_chunked(body: &mut BodyReader<'_>, max: usize) -> Result<Vec<u8>, ChunkError> {
    let mut reader = BufReader::new(body);
    let mut out = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| ChunkError::Bad("malformed chunk size"))?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            while !read_line(&mut reader)?.is_empty() {}
            return Ok(out);
        }
        if out.len().saturating_add(size) > max {
            return Err(ChunkError::TooBig);
        }
        let start = out.len();
        out.resize(start + size, 0);
        reader.read_exact(&mut out[start..])?;
        if !read_line(&mut reader)?.is_empty() {
            return Err(ChunkError::Bad("a chunk is longer than its size"));
        }
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, ChunkError> {
    let mut line = Vec::new();
    reader
        .take(MAX_CHUNK_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() >= MAX_CHUNK_LINE {
            ChunkError::Bad("a chunk framing line is too long")
        } else {
            ChunkError::Io(io::ErrorKind::UnexpectedEof.into())
        });
    }
    let text = String::from_utf8(line).map_err(|_| ChunkError::Bad("malformed chunk framing"))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Writes a complete answer and closes the sending side.
pub fn respond(
    stream: &TcpStream,
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
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
    let mut writer = stream;
    writer.write_all(&out)?;
    writer.flush()?;
    stream.shutdown(Shutdown::Write)
}

/// After answering a request whose body was not read, reads a little of what is still
/// arriving: closing with unread data resets the connection, and the client could lose the
/// answer before reading it.
pub fn linger(stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 16 * 1024];
    let mut left: usize = 4 * 1024 * 1024;
    let mut reader = stream;
    while left > 0 && Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
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
