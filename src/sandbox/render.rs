//! Fetching inputs and writing outputs.
//!
//! The output of a job is a real PNG of exactly (input width × upscale) × (input height ×
//! upscale) pixels, the size the price is computed from. Input dimensions come from the image
//! header (`imagesize`), for PNG, JPEG, WebP, GIF and BMP alike.
//!
//! Memory stays bounded whatever the sizes: outputs are streamed row by row, never held whole.
//! In render mode the input is decoded (at most 64 MiB fetched, 256 MiB decoded) and upscaled
//! nearest-neighbour; above [`RENDER_MAX_OUTPUT_PIXELS`] of output the content falls back to a
//! flat colour, because the point of the sandbox is the protocol and the size, not the look.
//! Fast mode never decodes: it reads the input's header only and writes the flat PNG (1 bit
//! per pixel, which compresses to almost nothing).

use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Largest input the sandbox downloads.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read to find an input's dimensions from its header.
pub const HEADER_BYTES: u64 = 64 * 1024;
/// Above this many output pixels, render mode writes flat content instead of the upscale.
pub const RENDER_MAX_OUTPUT_PIXELS: u64 = 50_000_000;
/// Largest output the sandbox produces; a job asking for more ends FAILED.
pub const MAX_OUTPUT_PIXELS: u64 = 1_000_000_000;
/// Longest output side (PNG allows 2^31 - 1; no real gateway gets near).
pub const MAX_OUTPUT_SIDE: u64 = 1 << 20;
/// Decoder allocation cap in render mode.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// Header that marks the sandbox's own input fetches, so the static server does not count
/// them as bytes served to clients.
pub const INTERNAL_FETCH_HEADER: &str = "X-Sandbox-Internal-Fetch";
/// Size of the PNG data chunks written.
const IDAT_BYTES: usize = 256 * 1024;
/// Colour of flat outputs.
const FLAT_RGB: [u8; 3] = [0x80, 0x80, 0x80];

/// Downloads inputs for the gateway side.
pub struct Fetcher {
    agent: ureq::Agent,
    /// Value of [`INTERNAL_FETCH_HEADER`] on this sandbox's fetches.
    pub token: String,
}

/// Bytes read from an input URL.
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `false` when only a prefix was read and more may follow.
    pub complete: bool,
}

impl Fetcher {
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(super::OUTGOING_TIMEOUT))
            .timeout_connect(Some(Duration::from_secs(3)))
            // Inputs are usually on loopback; a proxy from the environment would only break that.
            .proxy(None)
            .user_agent("codeformer-ledger-sandbox")
            .build();
        Fetcher {
            agent: config.into(),
            token: format!("{:016x}", fastrand::u64(..)),
        }
    }

    /// GETs `url`, reading at most `prefix` bytes when given (asking for them with a Range).
    /// Messages name the URL without its query: a presigned URL's query is a credential.
    pub fn get(&self, url: &str, prefix: Option<u64>) -> Result<Fetched, String> {
        let shown = url.split('?').next().unwrap_or(url);
        let mut request = self
            .agent
            .get(url)
            .header(INTERNAL_FETCH_HEADER, &self.token);
        if let Some(n) = prefix {
            request = request.header("Range", format!("bytes=0-{}", n - 1));
        }
        let mut response = request
            .call()
            .map_err(|e| format!("could not fetch the input image {shown}: {e}"))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(format!(
                "could not fetch the input image {shown}: HTTP {status}"
            ));
        }
        let want = prefix.unwrap_or(MAX_INPUT_BYTES + 1);
        let mut bytes = Vec::new();
        response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .reader()
            .take(want)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("could not read the input image {shown}: {e}"))?;
        if prefix.is_none() && bytes.len() as u64 > MAX_INPUT_BYTES {
            return Err(format!(
                "the input image {shown} is larger than {} MiB",
                MAX_INPUT_BYTES >> 20
            ));
        }
        let complete = prefix.is_none_or(|n| (bytes.len() as u64) < n);
        Ok(Fetched { bytes, complete })
    }
}

/// An input's format and size as read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputInfo {
    pub width: u64,
    pub height: u64,
}

/// Reads the dimensions from an image's first bytes; only the formats the gateway takes.
pub fn input_info(bytes: &[u8]) -> Result<InputInfo, String> {
    use imagesize::ImageType;
    let kind = imagesize::image_type(bytes)
        .map_err(|_| "could not decode the input image: unknown image format".to_string())?;
    if !matches!(
        kind,
        ImageType::Png | ImageType::Jpeg | ImageType::Webp | ImageType::Gif | ImageType::Bmp
    ) {
        return Err(format!(
            "could not decode the input image: {kind:?} is not supported (PNG, JPEG, WebP, GIF or BMP)"
        ));
    }
    let size = imagesize::blob_size(bytes)
        .map_err(|e| format!("could not decode the input image: {e}"))?;
    if size.width == 0 || size.height == 0 {
        return Err("could not decode the input image: it has no pixels".into());
    }
    Ok(InputInfo {
        width: size.width as u64,
        height: size.height as u64,
    })
}

/// The output size of an input at `upscale`, or why the gateway refuses to make it.
pub fn output_size(input: InputInfo, upscale: u32) -> Result<(u32, u32), String> {
    let w = input.width.checked_mul(upscale as u64);
    let h = input.height.checked_mul(upscale as u64);
    match (w, h) {
        (Some(w), Some(h))
            if w <= MAX_OUTPUT_SIDE
                && h <= MAX_OUTPUT_SIDE
                && w.saturating_mul(h) <= MAX_OUTPUT_PIXELS =>
        {
            Ok((w as u32, h as u32))
        }
        _ => Err(format!(
            "output of {}x{} at upscale {upscale} exceeds the gateway's limit of {MAX_OUTPUT_PIXELS} pixels",
            input.width, input.height
        )),
    }
}

/// The price of an output of `pixels` at 0.0021 USD per megapixel; `None` if absurdly large.
pub fn price(pixels: u128) -> Option<rust_decimal::Decimal> {
    let pixels = i128::try_from(pixels).ok()?;
    let pixels = rust_decimal::Decimal::try_from_i128_with_scale(pixels, 0).ok()?;
    // 0.0021 per 10^6 pixels = 0.0000000021 per pixel.
    pixels.checked_mul(rust_decimal::Decimal::new(21, 10))
}

/// What to fill the output with.
pub enum Content {
    Flat,
    Upscaled(image::DynamicImage),
}

/// Decodes an input for render mode; a decoder allocation over the cap gives flat content.
pub fn decode(bytes: &[u8]) -> Result<Content, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("could not decode the input image: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    match reader.decode() {
        Ok(img) => Ok(Content::Upscaled(img)),
        Err(image::ImageError::Limits(_)) => Ok(Content::Flat),
        Err(e) => Err(format!("could not decode the input image: {e}")),
    }
}

/// Writes the output PNG of `width`×`height` to `dest` atomically (temporary file, then
/// rename), returning its size in bytes. `stop` aborts a long write when the sandbox stops.
pub fn write_output(
    dest: &Path,
    content: &Content,
    (width, height): (u32, u32),
    upscale: u32,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let fail = |e: &dyn std::fmt::Display| format!("could not write the output: {e}");
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
    {
        let mut out = BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
        match content {
            Content::Flat => write_flat(&mut out, width, height, stop),
            Content::Upscaled(img) => write_upscaled(&mut out, img, (width, height), upscale, stop),
        }
        .map_err(|e| fail(&e))?;
        out.flush().map_err(|e| fail(&e))?;
    }
    let file = tmp.persist(dest).map_err(|e| fail(&e.error))?;
    file.metadata().map(|m| m.len()).map_err(|e| fail(&e))
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the sandbox is shutting down")
}

type Sink<'a> = BufWriter<&'a mut File>;

fn write_flat(
    out: &mut Sink<'_>,
    width: u32,
    height: u32,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut encoder = png::Encoder::new(&mut *out, width, height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_palette(FLAT_RGB.to_vec());
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer_with_size(IDAT_BYTES)?;
    let row = vec![0u8; (width as usize).div_ceil(8)];
    for y in 0..height {
        if y % 1024 == 0 && stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        stream.write_all(&row)?;
    }
    stream.finish()?;
    writer.finish()?;
    Ok(())
}

fn write_upscaled(
    out: &mut Sink<'_>,
    img: &image::DynamicImage,
    (width, height): (u32, u32),
    upscale: u32,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let (color, channels, pixels) = if img.color().has_alpha() {
        (png::ColorType::Rgba, 4, img.to_rgba8().into_raw())
    } else {
        (png::ColorType::Rgb, 3, img.to_rgb8().into_raw())
    };
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let mut encoder = png::Encoder::new(&mut *out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    let mut stream = writer.stream_writer_with_size(IDAT_BYTES)?;
    let upscale = upscale as usize;
    let mut row = vec![0u8; width as usize * channels];
    // The decoded size matches the header's; if a decoder ever disagreed, the output size
    // still wins and the image is sampled to fit it.
    for y in 0..height as usize {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        if y % upscale == 0 || in_h * upscale != height as usize {
            let sy = (y * in_h / height as usize).min(in_h - 1);
            let src = &pixels[sy * in_w * channels..(sy + 1) * in_w * channels];
            for (x, px) in row.chunks_exact_mut(channels).enumerate() {
                let sx = (x * in_w / width as usize).min(in_w - 1);
                px.copy_from_slice(&src[sx * channels..(sx + 1) * channels]);
            }
        }
        stream.write_all(&row)?;
    }
    stream.finish()?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn png_bytes(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    fn checkerboard(w: u32, h: u32) -> image::DynamicImage {
        image::DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            if (x + y) % 2 == 0 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        }))
    }

    #[test]
    fn every_supported_format_gives_its_size() {
        let img = checkerboard(33, 17);
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::Gif,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
        ] {
            let info = input_info(&png_bytes(&img, format)).unwrap();
            assert_eq!((info.width, info.height), (33, 17), "{format:?}");
        }
        assert!(input_info(b"hello world").is_err());
    }

    #[test]
    fn upscaled_output_is_nearest_neighbour_of_exact_size() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.png");
        let content = decode(&png_bytes(&checkerboard(3, 2), image::ImageFormat::Png)).unwrap();
        let stop = AtomicBool::new(false);
        write_output(&dest, &content, (12, 8), 4, &stop).unwrap();
        let out = image::open(&dest).unwrap().to_rgb8();
        assert_eq!(out.dimensions(), (12, 8));
        assert_eq!(out.get_pixel(0, 0), &Rgb([255, 0, 0]));
        assert_eq!(out.get_pixel(3, 3), &Rgb([255, 0, 0]));
        assert_eq!(out.get_pixel(4, 0), &Rgb([0, 0, 255]));
        assert_eq!(out.get_pixel(4, 4), &Rgb([255, 0, 0]));
    }

    #[test]
    fn flat_output_of_a_big_size_is_small_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("flat.png");
        let stop = AtomicBool::new(false);
        let size = output_size(
            InputInfo {
                width: 4000,
                height: 3000,
            },
            4,
        )
        .unwrap();
        let bytes = write_output(&dest, &Content::Flat, size, 4, &stop).unwrap();
        assert!(bytes < 2_000_000, "{bytes}");
        let header = imagesize::size(&dest).unwrap();
        assert_eq!((header.width, header.height), (16000, 12000));
    }

    #[test]
    fn absurd_outputs_are_refused_and_priced_exactly() {
        assert!(output_size(
            InputInfo {
                width: 4000,
                height: 3000
            },
            1000
        )
        .is_err());
        assert!(output_size(
            InputInfo {
                width: u64::MAX,
                height: 1
            },
            2
        )
        .is_err());
        assert_eq!(price(4_000_000).unwrap().normalize().to_string(), "0.0084");
        assert_eq!(price(1).unwrap().to_string(), "0.0000000021");
    }
}
