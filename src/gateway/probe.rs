//! An input image's pixel size, read from its header bytes over HTTP range requests.
//!
//! The cost of a job is known before it is sent only if the input's size is: this module reads
//! just enough of the image to find it, never the whole file. The first request asks for
//! `bytes=0-4095`; when the header parser needs bytes that have not been fetched, a further
//! range request asks for them at the offset the parser wants. For JPEG that means the large
//! APPn (EXIF, ICC) segments in front of the frame header are jumped over, not downloaded.
//! Whatever the server does, no more than [`MAX_PROBE_BYTES`] are read in total: a server that
//! ignores `Range` and answers `200` with the whole file is read as a stream only as far as the
//! header, and then the connection is dropped. A ranged (`206`) answer is read to its end, so
//! that its connection goes back to the agent's pool for the next request.
//!
//! The caller passes the [`ureq::Agent`] (and so chooses its timeouts). No API key is ever sent
//! here: the image is fetched as the gateway would fetch it, anonymously.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let agent: ureq::Agent = ureq::Agent::config_builder()
//!     .timeout_global(Some(Duration::from_secs(10)))
//!     .build()
//!     .into();
//! let probe = codeformer_ledger::gateway::probe::probe_url(&agent, "https://example.com/photo.jpg")?;
//! println!("{}x{} {}", probe.size.width, probe.size.height, probe.size.format);
//! # Ok::<(), codeformer_ledger::gateway::probe::ProbeError>(())
//! ```

use std::cell::Cell;
use std::io::{self, BufRead, Read, Seek, SeekFrom};

/// The first range asked for, and the smallest of any later one.
pub const FIRST_RANGE: u64 = 4096;

/// The most bytes read from one URL, over all requests together.
pub const MAX_PROBE_BYTES: u64 = 64 * 1024;

/// The most requests made for one URL, so that a file of many tiny segments cannot turn a
/// probe into a long conversation.
pub const MAX_PROBE_REQUESTS: u32 = 16;

/// The most bytes read past a ranged answer's wanted bytes to reach its end (and so keep its
/// connection).
const FINISH_BYTES: u64 = 512;

/// How many leading bytes an error quotes.
const QUOTED_BYTES: usize = 24;

/// The pixel size and format of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
    /// One of `png`, `jpeg`, `webp`, `gif`, `bmp`.
    pub format: String,
}

/// What a probe found and what it cost in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub size: ImageSize,
    /// Body bytes read over all requests (skipped ranges are not read and not counted).
    pub bytes_read: u64,
    /// The `Content-Type` of the first answer, as sent.
    pub content_type: Option<String>,
}

/// Why an image's size could not be found. The caller names the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The image server answered with a status that carries no image (404, 403, 500, …).
    #[error("the image server answered HTTP {status}")]
    HttpStatus { status: u16 },
    /// The request did not complete: DNS, connection, TLS, a timeout set on the agent, or an
    /// answer cut short.
    #[error("could not fetch the image header: {0}")]
    Network(#[source] ureq::Error),
    /// The server broke the range protocol (e.g. a `206` that contains no byte asked for).
    #[error("the image server answered a range request wrongly: {0}")]
    Protocol(String),
    /// The bytes are not an image of any known format.
    #[error(
        "not an image (content type {}; first bytes \"{first_bytes}\")",
        content_type.as_deref().unwrap_or("not given")
    )]
    NotAnImage {
        content_type: Option<String>,
        /// The leading bytes, ASCII-escaped.
        first_bytes: String,
    },
    /// A known image format other than PNG, JPEG, WebP, GIF and BMP.
    #[error("{format} images are not supported (expected PNG, JPEG, WebP, GIF or BMP)")]
    UnsupportedFormat { format: String },
    /// The format was recognised but its header holds no usable size.
    #[error("the {format} header is damaged: {reason}")]
    Corrupt { format: String, reason: String },
    /// The bytes given to [`size_from_bytes`] end before the size field: read more.
    #[error("the size is not within the first {have} bytes; more are needed")]
    NeedMoreBytes { have: usize },
    /// The file itself ends before the size field.
    #[error("the file ends after {length} bytes, before the image size")]
    Truncated { length: u64 },
    /// The size was not found within [`MAX_PROBE_BYTES`] or [`MAX_PROBE_REQUESTS`].
    #[error(
        "no image size found within {bytes_read} bytes and {requests} requests \
         (the probe reads at most {MAX_PROBE_BYTES} bytes); give the size with --size WxH"
    )]
    HeaderNotFound { bytes_read: u64, requests: u32 },
}

/// Reads the size of an image from its leading bytes.
///
/// `NeedMoreBytes` means the prefix is too short (ask for more); `NotAnImage` means no
/// amount of further bytes would help.
pub fn size_from_bytes(prefix: &[u8]) -> Result<ImageSize, ProbeError> {
    let mut chunks = Chunks::default();
    chunks.insert(0, prefix.to_vec());
    match read_size(&chunks) {
        Ok(size) => Ok(size),
        Err(SizeError::Need(_)) => Err(ProbeError::NeedMoreBytes { have: prefix.len() }),
        Err(SizeError::Fail(e)) => Err(e),
    }
}

/// Finds the size of the image at `url` with as few bytes as its header needs.
pub fn probe_url(agent: &ureq::Agent, url: &str) -> Result<Probe, ProbeError> {
    let mut fetcher = Fetcher::new(agent, url);
    let mut chunks = Chunks::default();
    fetcher.fetch(&mut chunks, 0)?;
    loop {
        match read_size(&chunks) {
            Ok(size) => {
                return Ok(Probe {
                    size,
                    bytes_read: fetcher.bytes_read,
                    content_type: fetcher.content_type,
                })
            }
            Err(SizeError::Need(offset)) => fetcher.fetch(&mut chunks, offset)?,
            Err(SizeError::Fail(ProbeError::NotAnImage { first_bytes, .. })) => {
                return Err(ProbeError::NotAnImage {
                    content_type: fetcher.content_type,
                    first_bytes,
                })
            }
            Err(SizeError::Fail(e)) => return Err(e),
        }
    }
}

/// The pieces of a file fetched so far, at their offsets, and its length once known.
#[derive(Debug, Default)]
struct Chunks {
    parts: Vec<(u64, Vec<u8>)>,
    length: Option<u64>,
}

impl Chunks {
    fn insert(&mut self, offset: u64, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.parts.push((offset, bytes));
        }
    }

    /// The longest run of fetched bytes starting at `pos`.
    fn at(&self, pos: u64) -> Option<&[u8]> {
        self.parts
            .iter()
            .filter(|(start, bytes)| *start <= pos && pos - start < bytes.len() as u64)
            .map(|(start, bytes)| &bytes[(pos - start) as usize..])
            .max_by_key(|rest| rest.len())
    }

    /// The end of the fetched run that ends closest before (or at) `pos`.
    fn end_at_or_before(&self, pos: u64) -> Option<u64> {
        self.parts
            .iter()
            .map(|(start, bytes)| start + bytes.len() as u64)
            .filter(|end| *end <= pos)
            .max()
    }

    fn leading_bytes(&self) -> String {
        let head = self.at(0).unwrap_or(&[]);
        head[..head.len().min(QUOTED_BYTES)]
            .escape_ascii()
            .to_string()
    }
}

/// A `Read + Seek` view of [`Chunks`] for the header parser. Reading a byte that has not been
/// fetched fails and records where, so the caller can fetch it and parse again.
struct SparseReader<'a> {
    chunks: &'a Chunks,
    pos: u64,
    missing: &'a Cell<Option<u64>>,
}

impl SparseReader<'_> {
    fn gap(&self) -> io::Error {
        self.missing.set(Some(self.pos));
        io::Error::other("bytes not fetched yet")
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for SparseReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(bytes) = self.chunks.at(self.pos) {
            return Ok(bytes);
        }
        match self.chunks.length {
            Some(length) if self.pos >= length => Ok(&[]),
            _ => Err(self.gap()),
        }
    }

    fn consume(&mut self, amount: usize) {
        self.pos += amount as u64;
    }
}

impl Seek for SparseReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => match self.chunks.length {
                Some(length) => length.checked_add_signed(d),
                None => return Err(io::Error::other("the file's length is not known")),
            },
        };
        self.pos = target.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

enum SizeError {
    /// The parser needs the byte at this offset.
    Need(u64),
    Fail(ProbeError),
}

/// Runs the header parser over what has been fetched.
fn read_size(chunks: &Chunks) -> Result<ImageSize, SizeError> {
    let missing = Cell::new(None);
    let mut reader = SparseReader {
        chunks,
        pos: 0,
        missing: &missing,
    };
    let kind = imagesize::reader_type(&mut reader);
    let kind = kind.map_err(|e| parse_failure(chunks, &missing, None, e))?;
    let format = format_name(&kind)?;
    let size = kind.reader_size(&mut reader);
    let size = size.map_err(|e| parse_failure(chunks, &missing, Some(format), e))?;
    checked_size(chunks, format, size.width, size.height).map_err(SizeError::Fail)
}

fn format_name(kind: &imagesize::ImageType) -> Result<&'static str, SizeError> {
    use imagesize::ImageType;
    match kind {
        ImageType::Png => Ok("png"),
        ImageType::Jpeg => Ok("jpeg"),
        ImageType::Webp => Ok("webp"),
        ImageType::Gif => Ok("gif"),
        ImageType::Bmp => Ok("bmp"),
        other => Err(SizeError::Fail(ProbeError::UnsupportedFormat {
            format: format!("{other:?}").to_ascii_lowercase(),
        })),
    }
}

/// Sorts a parser error into "fetch more", "the file ends here", "not an image", "damaged".
fn parse_failure(
    chunks: &Chunks,
    missing: &Cell<Option<u64>>,
    format: Option<&str>,
    error: imagesize::ImageError,
) -> SizeError {
    if let Some(offset) = missing.get() {
        return SizeError::Need(offset);
    }
    let eof = matches!(&error, imagesize::ImageError::IoError(e)
        if e.kind() == io::ErrorKind::UnexpectedEof);
    let failure = match (format, chunks.length) {
        (None, _) => ProbeError::NotAnImage {
            content_type: None,
            first_bytes: chunks.leading_bytes(),
        },
        (Some(_), Some(length)) if eof => ProbeError::Truncated { length },
        (Some(format), _) => ProbeError::Corrupt {
            format: format.to_string(),
            reason: error.to_string(),
        },
    };
    SizeError::Fail(failure)
}

/// Fixes what the parser reads loosely, and refuses sizes no image has.
fn checked_size(
    chunks: &Chunks,
    format: &str,
    width: usize,
    height: usize,
) -> Result<ImageSize, ProbeError> {
    let (mut width, mut height) = (width as u64, height as u64);
    match format {
        // A top-down bitmap stores its height negated.
        "bmp" => height = u64::from((height as u32 as i32).unsigned_abs()),
        // Lossy WebP keeps two scaling bits above each 14-bit dimension.
        "webp" if chunks.at(12).is_some_and(|b| b.starts_with(b"VP8 ")) => {
            width &= 0x3FFF;
            height &= 0x3FFF;
        }
        _ => {}
    }
    let corrupt = |reason: String| ProbeError::Corrupt {
        format: format.to_string(),
        reason,
    };
    let w = u32::try_from(width).map_err(|_| corrupt(format!("width {width} is too large")))?;
    let h = u32::try_from(height).map_err(|_| corrupt(format!("height {height} is too large")))?;
    if w == 0 || h == 0 {
        return Err(corrupt(format!("it gives a size of {w}x{h}")));
    }
    Ok(ImageSize {
        width: w,
        height: h,
        format: format.to_string(),
    })
}

/// Issues the range requests for one URL and keeps the byte and request budgets.
struct Fetcher<'a> {
    agent: &'a ureq::Agent,
    url: &'a str,
    bytes_read: u64,
    requests: u32,
    content_type: Option<String>,
    /// Set once the server has ignored `Range`: the rest comes from this body, in order.
    stream: Option<Stream>,
}

struct Stream {
    body: ureq::BodyReader<'static>,
    pos: u64,
}

impl<'a> Fetcher<'a> {
    fn new(agent: &'a ureq::Agent, url: &'a str) -> Self {
        Fetcher {
            agent,
            url,
            bytes_read: 0,
            requests: 0,
            content_type: None,
            stream: None,
        }
    }

    /// Fetches bytes starting at `offset` into `chunks`; afterwards `offset` is either held
    /// or known to be past the end of the file, or an error says why not.
    fn fetch(&mut self, chunks: &mut Chunks, offset: u64) -> Result<(), ProbeError> {
        let budget = MAX_PROBE_BYTES - self.bytes_read;
        if budget == 0 || (self.stream.is_none() && self.requests >= MAX_PROBE_REQUESTS) {
            return Err(self.not_found());
        }
        if self.stream.is_some() {
            self.read_stream(chunks, offset, FIRST_RANGE.min(budget))?;
        } else {
            self.request_range(chunks, offset, self.range_len(chunks, offset).min(budget))?;
        }
        let held = chunks.at(offset).is_some();
        let past_end = chunks.length.is_some_and(|length| offset >= length);
        if !held && !past_end {
            return Err(ProbeError::Protocol(format!(
                "asked for bytes from {offset}, received none of them"
            )));
        }
        Ok(())
    }

    /// How much to ask for at `offset`. When the parser reads on from (or just past) what it
    /// has, it will likely read on further, so such a request at least doubles what has been
    /// read. A long jump (over a large segment) starts small again.
    fn range_len(&self, chunks: &Chunks, offset: u64) -> u64 {
        let reading_on = chunks
            .end_at_or_before(offset)
            .is_some_and(|end| end > 0 && offset - end < FIRST_RANGE);
        if reading_on {
            self.bytes_read.max(FIRST_RANGE)
        } else {
            FIRST_RANGE
        }
    }

    fn request_range(
        &mut self,
        chunks: &mut Chunks,
        offset: u64,
        want: u64,
    ) -> Result<(), ProbeError> {
        self.requests += 1;
        let answer = self
            .agent
            .get(self.url)
            .header("Range", format!("bytes={}-{}", offset, offset + want - 1))
            .header("Accept-Encoding", "identity")
            .call();
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::StatusCode(status)) => return Err(ProbeError::HttpStatus { status }),
            Err(e) => return Err(ProbeError::Network(e)),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_range = header("content-range");
        if matches!(status, 200 | 206) && self.content_type.is_none() {
            self.content_type = header("content-type");
        }
        match status {
            206 => {
                let range = content_range.as_deref().and_then(parse_content_range);
                let start = range.map_or(offset, |r| r.0);
                let mut body = response.into_body().into_reader();
                let bytes = read_counted(&mut (&mut body).take(want), want, &mut self.bytes_read)?;
                finish(body);
                let got = bytes.len() as u64;
                if chunks.length.is_none() {
                    chunks.length = match range.and_then(|r| r.1) {
                        Some(total) => Some(total),
                        None if got < want => Some(start + got),
                        None => None,
                    };
                }
                chunks.insert(start, bytes);
                Ok(())
            }
            200 => {
                let body = response.into_body().into_reader();
                self.stream = Some(Stream { body, pos: 0 });
                let budget = MAX_PROBE_BYTES - self.bytes_read;
                self.read_stream(chunks, offset, FIRST_RANGE.min(budget))
            }
            416 if offset > 0 => {
                let length = content_range.as_deref().and_then(parse_unsatisfied_length);
                finish(response.into_body().into_reader());
                chunks.length = Some(length.unwrap_or(offset).min(offset));
                Ok(())
            }
            _ => Err(ProbeError::HttpStatus { status }),
        }
    }

    /// Reads the ignored-`Range` body on, up to `want` bytes past `offset` (whatever lies
    /// before `offset` must be read through: there is no other way past it).
    fn read_stream(
        &mut self,
        chunks: &mut Chunks,
        offset: u64,
        want: u64,
    ) -> Result<(), ProbeError> {
        let budget = MAX_PROBE_BYTES - self.bytes_read;
        let not_found = self.not_found();
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if offset >= stream.pos + budget {
            // The bytes wanted lie beyond what may be read at all.
            return Err(not_found);
        }
        let amount = (offset + want)
            .min(stream.pos + budget)
            .saturating_sub(stream.pos);
        let mut body = (&mut stream.body).take(amount);
        let bytes = read_counted(&mut body, amount, &mut self.bytes_read)?;
        let start = stream.pos;
        stream.pos += bytes.len() as u64;
        if (bytes.len() as u64) < amount {
            chunks.length = Some(stream.pos);
        }
        chunks.insert(start, bytes);
        Ok(())
    }

    fn not_found(&self) -> ProbeError {
        ProbeError::HeaderNotFound {
            bytes_read: self.bytes_read,
            requests: self.requests,
        }
    }
}

/// Reads a body to its end (or `limit`), counting every byte read, even on error.
fn read_counted(
    body: &mut impl Read,
    limit: u64,
    counter: &mut u64,
) -> Result<Vec<u8>, ProbeError> {
    let mut bytes = Vec::with_capacity(limit.min(MAX_PROBE_BYTES) as usize);
    let result = body.read_to_end(&mut bytes);
    *counter += bytes.len() as u64;
    result.map_err(|e| ProbeError::Network(ureq::Error::from(e)))?;
    Ok(bytes)
}

/// Reads a ranged answer's body on to its end if only a few bytes are left, so that ureq returns
/// the connection to its pool for the next request; a body that goes on longer (a server
/// sending more than the range asked for) is dropped with its connection. What it reads is
/// not image bytes and is not counted in [`Probe::bytes_read`].
fn finish(body: ureq::BodyReader<'static>) {
    // An error or a longer body only costs the connection.
    let _ = io::copy(&mut body.take(FINISH_BYTES + 1), &mut io::sink());
}

/// `bytes START-END/TOTAL` → (START, TOTAL unless `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// `bytes */TOTAL` (a 416 answer) → TOTAL.
fn parse_unsatisfied_length(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    rest.strip_prefix("*/")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        bytes.extend(w.to_be_bytes());
        bytes.extend(h.to_be_bytes());
        bytes.extend([8, 6, 0, 0, 0]);
        bytes
    }

    fn bmp_header(w: i32, h: i32) -> Vec<u8> {
        let mut bytes = b"BM".to_vec();
        bytes.extend([0u8; 12]);
        bytes.extend(40u32.to_le_bytes());
        bytes.extend(w.to_le_bytes());
        bytes.extend(h.to_le_bytes());
        bytes.extend([0u8; 28]);
        bytes
    }

    #[test]
    fn reads_a_png_header() {
        let size = size_from_bytes(&png_header(333, 517)).unwrap();
        assert_eq!(
            size,
            ImageSize {
                width: 333,
                height: 517,
                format: "png".into()
            }
        );
    }

    #[test]
    fn short_prefixes_ask_for_more() {
        let header = png_header(333, 517);
        for n in [0, 1, 8, 11, 12, 20, 23] {
            let err = size_from_bytes(&header[..n]).unwrap_err();
            assert!(
                matches!(err, ProbeError::NeedMoreBytes { have } if have == n),
                "{n}: {err:?}"
            );
        }
    }

    #[test]
    fn html_is_not_an_image() {
        let err =
            size_from_bytes(b"<!DOCTYPE html>\n<html><body>Not found</body></html>").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"not an image (content type not given; first bytes "<!DOCTYPE html>\n<html><b")"#
        );
    }

    #[test]
    fn jpeg_segments_are_walked() {
        // SOI, an APP1 of 100 bytes, then SOF0 with height 517 and width 333.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0, 102];
        jpeg.extend([b'E'; 100]);
        jpeg.extend([0xFF, 0xC0, 0, 17, 8, 0x02, 0x05, 0x01, 0x4D, 3]);
        let size = size_from_bytes(&jpeg).unwrap();
        assert_eq!(
            (size.width, size.height, size.format.as_str()),
            (333, 517, "jpeg")
        );
        // Cut inside the APP1: the parser would jump past it, so more bytes are needed.
        assert!(matches!(
            size_from_bytes(&jpeg[..50]),
            Err(ProbeError::NeedMoreBytes { have: 50 })
        ));
    }

    #[test]
    fn top_down_bitmaps_have_positive_height() {
        let size = size_from_bytes(&bmp_header(640, -480)).unwrap();
        assert_eq!((size.width, size.height), (640, 480));
        let size = size_from_bytes(&bmp_header(640, 480)).unwrap();
        assert_eq!((size.width, size.height), (640, 480));
    }

    #[test]
    fn zero_sizes_are_damaged_headers() {
        let err = size_from_bytes(&png_header(0, 10)).unwrap_err();
        assert!(matches!(err, ProbeError::Corrupt { ref format, .. } if format == "png"));
        assert_eq!(
            err.to_string(),
            "the png header is damaged: it gives a size of 0x10"
        );
    }

    #[test]
    fn other_formats_are_named() {
        let tiff = b"II*\0\x08\0\0\0\0\0\0\0\0\0";
        let err = size_from_bytes(tiff).unwrap_err();
        assert!(
            matches!(err, ProbeError::UnsupportedFormat { ref format } if format == "tiff"),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_files_are_told_apart_from_short_prefixes() {
        let mut chunks = Chunks::default();
        chunks.insert(0, png_header(5, 5)[..20].to_vec());
        chunks.length = Some(20);
        assert!(matches!(
            read_size(&chunks),
            Err(SizeError::Fail(ProbeError::Truncated { length: 20 }))
        ));
    }

    #[test]
    fn content_range_headers() {
        assert_eq!(
            parse_content_range("bytes 0-4095/12345"),
            Some((0, Some(12345)))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_unsatisfied_length("bytes */777"), Some(777));
    }

    #[test]
    fn sparse_reads_stop_at_gaps() {
        let mut chunks = Chunks::default();
        chunks.insert(0, vec![1, 2, 3, 4]);
        chunks.insert(10, vec![5, 6]);
        let missing = Cell::new(None);
        let mut reader = SparseReader {
            chunks: &chunks,
            pos: 2,
            missing: &missing,
        };
        let mut buf = [0; 4];
        assert!(reader.read_exact(&mut buf).is_err());
        assert_eq!(missing.get(), Some(4));
        reader.seek(SeekFrom::Start(10)).unwrap();
        let mut two = [0; 2];
        reader.read_exact(&mut two).unwrap();
        assert_eq!(two, [5, 6]);
        assert!(reader.seek(SeekFrom::Current(-100)).is_err());
    }
}
