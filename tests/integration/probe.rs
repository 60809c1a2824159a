//! Image sizes over HTTP, against a loopback server written here that honours (or ignores)
//! `Range` and counts every body byte it sends.

use codeformer_ledger::gateway::probe::{probe_url, Probe, ProbeError, MAX_PROBE_BYTES};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Ranges {
    Honour,
    Ignore,
}

#[derive(Clone)]
struct Resource {
    content_type: &'static str,
    body: Arc<Vec<u8>>,
}

/// A one-request-per-connection HTTP/1.1 server on loopback.
struct Server {
    base: String,
    /// Body bytes written to sockets (headers not counted).
    sent: Arc<AtomicU64>,
    /// The `Range` header of each request, or "-" when there was none.
    ranges: Arc<Mutex<Vec<String>>>,
    /// Connections accepted and not yet answered in full.
    busy: Arc<AtomicUsize>,
}

impl Server {
    fn start(files: Vec<(&str, Resource)>, ranges: Ranges) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<HashMap<String, Resource>> = Arc::new(
            files
                .into_iter()
                .map(|(path, r)| (format!("/static/{path}"), r))
                .collect(),
        );
        let sent = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = Arc::new(AtomicUsize::new(0));
        let (sent2, seen2, busy2) = (sent.clone(), seen.clone(), busy.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Counted before the answer is written, so a client holding an answer
                // always sees its connection as busy until the count below is final.
                busy2.fetch_add(1, Ordering::SeqCst);
                let (files, sent, seen, busy) =
                    (files.clone(), sent2.clone(), seen2.clone(), busy2.clone());
                thread::spawn(move || {
                    let _ = answer(stream, &files, ranges, &sent, &seen);
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            base,
            sent,
            ranges: seen,
            busy,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/static/{name}", self.base)
    }

    /// Body bytes sent, once every accepted connection has been answered.
    fn sent(&self) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.busy.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        self.sent.load(Ordering::SeqCst)
    }

    fn take_ranges(&self) -> Vec<String> {
        std::mem::take(&mut *self.ranges.lock().unwrap())
    }
}

fn answer(
    stream: TcpStream,
    files: &HashMap<String, Resource>,
    ranges: Ranges,
    sent: &AtomicU64,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    seen.lock()
        .unwrap()
        .push(range.clone().unwrap_or_else(|| "-".into()));
    let mut out = stream;
    let Some(file) = files.get(&path) else {
        let body = b"<!DOCTYPE html><title>404</title>";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )?;
        return out.write_all(body);
    };
    let len = file.body.len() as u64;
    let wanted = range.filter(|_| ranges == Ranges::Honour).and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    });
    let (status, start, end, extra) = match wanted {
        Some((a, _)) if a >= len => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Some((a, b)) => {
            let b = b.min(len - 1);
            (
                "206 Partial Content",
                a,
                b + 1,
                format!("Content-Range: bytes {a}-{b}/{len}\r\n"),
            )
        }
        None => ("200 OK", 0, len, String::new()),
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n",
        file.content_type,
        end - start
    )?;
    for piece in file.body[start as usize..end as usize].chunks(8192) {
        out.write_all(piece)?;
        sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
    }
    out.flush()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Two colours in stripes: cheap to draw at any size, exact in a GIF palette.
fn stripes(w: u32, h: u32) -> DynamicImage {
    let mut img = RgbImage::from_pixel(w, h, Rgb([200, 120, 40]));
    for y in (0..h).step_by(7) {
        for x in 0..w {
            img.put_pixel(x, y, Rgb([20, 60, 180]));
        }
    }
    DynamicImage::ImageRgb8(img)
}

const FORMATS: [(ImageFormat, &str, &str, &str); 5] = [
    (ImageFormat::Png, "png", "png", "image/png"),
    (ImageFormat::Jpeg, "jpeg", "jpg", "image/jpeg"),
    (ImageFormat::WebP, "webp", "webp", "image/webp"),
    (ImageFormat::Gif, "gif", "gif", "image/gif"),
    (ImageFormat::Bmp, "bmp", "bmp", "image/bmp"),
];

const SIZES: [(u32, u32); 3] = [(1, 1), (333, 517), (4000, 3000)];

/// A generated image as served.
struct TestImage {
    file: String,
    format: &'static str,
    width: u32,
    height: u32,
    resource: Resource,
}

/// Every format at every size, encoded once for all tests.
fn images() -> &'static Vec<TestImage> {
    static IMAGES: OnceLock<Vec<TestImage>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        thread::scope(|scope| {
            let mut jobs = Vec::new();
            for (w, h) in SIZES {
                let img = Arc::new(stripes(w, h));
                for (format, name, ext, mime) in FORMATS {
                    let img = img.clone();
                    jobs.push(scope.spawn(move || {
                        let resource = Resource {
                            content_type: mime,
                            body: Arc::new(encode(&img, format)),
                        };
                        TestImage {
                            file: format!("{w}x{h}.{ext}"),
                            format: name,
                            width: w,
                            height: h,
                            resource,
                        }
                    }));
                }
            }
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        })
    })
}

/// A photo-sized JPEG with two full 64 KiB APPn segments (EXIF-like, ICC-like) between SOI
/// and the frame header, so that reading through them would pass the probe's cap.
fn jpeg_with_exif() -> &'static Resource {
    static JPEG: OnceLock<Resource> = OnceLock::new();
    JPEG.get_or_init(|| {
        let (w, h) = (1800, 1200);
        let mut seed = 0x2545_f491_u32;
        let img = RgbImage::from_fn(w, h, |x, y| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed & 0x3f) as u8;
            Rgb([(x % 256) as u8 ^ n, (y % 256) as u8 ^ n, n.wrapping_mul(3)])
        });
        let plain = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let mut body = plain[..2].to_vec();
        for (marker, tag) in [(0xE1u8, &b"Exif\0\0"[..]), (0xE2, &b"ICC_PROFILE\0"[..])] {
            body.extend([0xFF, marker, 0xFF, 0xFF]);
            body.extend(tag);
            body.extend(std::iter::repeat_n(0x5A, 65533 - tag.len()));
        }
        body.extend(&plain[2..]);
        Resource {
            content_type: "image/jpeg",
            body: Arc::new(body),
        }
    })
}

fn assert_size(probe: &Probe, w: u32, h: u32, format: &str) {
    assert_eq!(
        (
            probe.size.width,
            probe.size.height,
            probe.size.format.as_str()
        ),
        (w, h, format)
    );
    assert!(probe.bytes_read <= MAX_PROBE_BYTES, "{probe:?}");
}

#[test]
fn every_format_and_size_over_range_requests() {
    let files = images()
        .iter()
        .map(|i| (i.file.as_str(), i.resource.clone()))
        .collect();
    let server = Server::start(files, Ranges::Honour);
    let agent = agent();
    for image in images() {
        let name = &image.file;
        let before = server.sent();
        let probe = probe_url(&agent, &server.url(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_size(&probe, image.width, image.height, image.format);
        assert_eq!(probe.bytes_read, server.sent() - before, "{name}");
        assert_eq!(
            probe.content_type.as_deref(),
            Some(image.resource.content_type)
        );
        let ranges = server.take_ranges();
        assert_eq!(ranges[0], "bytes=0-4095", "{name}");
        assert_eq!(ranges.len(), 1, "{name}: {ranges:?}");
        assert!(probe.bytes_read <= 4096, "{name}: {}", probe.bytes_read);
    }
}

#[test]
fn jpeg_exif_segments_are_jumped_over() {
    let resource = jpeg_with_exif().clone();
    let file_len = resource.body.len() as u64;
    assert!(
        (1_000_000..=5_000_000).contains(&file_len),
        "the test JPEG is {file_len} bytes"
    );
    let server = Server::start(vec![("exif.jpg", resource)], Ranges::Honour);
    let probe = probe_url(&agent(), &server.url("exif.jpg")).unwrap();
    assert_size(&probe, 1800, 1200, "jpeg");
    assert_eq!(probe.bytes_read, server.sent());
    assert!(probe.bytes_read <= 3 * 4096, "{probe:?}");
    let ranges = server.take_ranges();
    assert_eq!(
        ranges,
        ["bytes=0-4095", "bytes=65539-69634", "bytes=131076-135171"]
    );
}

#[test]
fn a_server_that_ignores_range_is_read_only_as_far_as_the_header() {
    let large = || images().iter().filter(|i| i.width == 4000);
    let mut files: Vec<(&str, Resource)> = large()
        .map(|i| (i.file.as_str(), i.resource.clone()))
        .collect();
    files.push(("exif.jpg", jpeg_with_exif().clone()));
    let server = Server::start(files, Ranges::Ignore);
    let agent = agent();
    for image in large() {
        let name = &image.file;
        let probe = probe_url(&agent, &server.url(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_size(&probe, image.width, image.height, image.format);
        assert!(probe.bytes_read <= 4096, "{name}: {}", probe.bytes_read);
    }
    // Past 128 KiB of APPn segments with no way to skip them: give up at the cap.
    let err = probe_url(&agent, &server.url("exif.jpg")).unwrap_err();
    match &err {
        ProbeError::HeaderNotFound { bytes_read, .. } => assert!(*bytes_read <= MAX_PROBE_BYTES),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("--size WxH"), "{err}");
}

#[test]
fn an_html_page_is_not_an_image() {
    let page = Resource {
        content_type: "text/html; charset=utf-8",
        body: Arc::new(b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n".to_vec()),
    };
    let server = Server::start(vec![("photo.jpg", page)], Ranges::Honour);
    let err = probe_url(&agent(), &server.url("photo.jpg")).unwrap_err();
    assert!(matches!(err, ProbeError::NotAnImage { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "not an image (content type text/html; charset=utf-8; \
         first bytes \"<!DOCTYPE html>\\n<html><b\")"
    );
}

#[test]
fn a_missing_image_names_the_status() {
    let server = Server::start(vec![], Ranges::Honour);
    let err = probe_url(&agent(), &server.url("nothing.png")).unwrap_err();
    assert!(
        matches!(err, ProbeError::HttpStatus { status: 404 }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "the image server answered HTTP 404");

    // The same when the caller's agent returns 4xx answers instead of errors.
    let lenient: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let err = probe_url(&lenient, &server.url("nothing.png")).unwrap_err();
    assert!(
        matches!(err, ProbeError::HttpStatus { status: 404 }),
        "{err:?}"
    );
}

#[test]
fn a_file_cut_before_its_header_is_truncated() {
    let png = &images()
        .iter()
        .find(|i| i.file == "333x517.png")
        .unwrap()
        .resource;
    assert_eq!(png.content_type, "image/png");
    let cut = Resource {
        content_type: "image/png",
        body: Arc::new(png.body[..20].to_vec()),
    };
    let server = Server::start(vec![("cut.png", cut)], Ranges::Honour);
    let err = probe_url(&agent(), &server.url("cut.png")).unwrap_err();
    assert!(
        matches!(err, ProbeError::Truncated { length: 20 }),
        "{err:?}"
    );
}

#[test]
fn an_unreachable_server_is_a_network_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = probe_url(&agent(), &format!("http://127.0.0.1:{port}/a.png")).unwrap_err();
    assert!(matches!(err, ProbeError::Network(_)), "{err:?}");
}

#[test]
fn headers_past_the_first_range_are_fetched_in_growing_ranges() {
    // Forty small comment segments push the frame header to about 12 KiB. The parser jumps
    // from segment to segment just past what it has, so each further range grows.
    let plain = encode(&stripes(64, 48), ImageFormat::Jpeg);
    let mut body = plain[..2].to_vec();
    for _ in 0..40 {
        body.extend([0xFF, 0xFE, 0x01, 0x2E]);
        body.extend([b'c'; 300]);
    }
    body.extend(&plain[2..]);
    let resource = Resource {
        content_type: "image/jpeg",
        body: Arc::new(body),
    };
    let server = Server::start(vec![("comments.jpg", resource)], Ranges::Honour);
    let probe = probe_url(&agent(), &server.url("comments.jpg")).unwrap();
    assert_size(&probe, 64, 48, "jpeg");
    assert_eq!(probe.bytes_read, server.sent());
    let ranges = server.take_ranges();
    assert_eq!(
        ranges,
        ["bytes=0-4095", "bytes=4258-8353", "bytes=8514-16705"]
    );
}

#[test]
fn a_header_behind_too_many_segments_is_given_up_at_the_cap() {
    let plain = encode(&stripes(8, 8), ImageFormat::Jpeg);
    let mut body = plain[..2].to_vec();
    for _ in 0..30 {
        body.extend([0xFF, 0xE2, 0xFF, 0xFF]);
        body.extend(std::iter::repeat_n(0u8, 65533));
    }
    body.extend(&plain[2..]);
    let resource = Resource {
        content_type: "image/jpeg",
        body: Arc::new(body),
    };
    let server = Server::start(vec![("deep.jpg", resource)], Ranges::Honour);
    let err = probe_url(&agent(), &server.url("deep.jpg")).unwrap_err();
    let ProbeError::HeaderNotFound {
        bytes_read,
        requests,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(bytes_read, server.sent());
    assert!(bytes_read <= MAX_PROBE_BYTES);
    assert_eq!(requests as usize, server.take_ranges().len());
}
