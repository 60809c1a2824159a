//! Large test inputs for the probe benchmark: noise images (which do not compress) of a given
//! file size, and JPEGs that carry big EXIF and ICC segments in front of the frame header, as
//! camera files do.

use crate::util::Res;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use std::path::Path;

/// Writes a noise image of about `bytes` bytes, in the format of the path's extension.
pub fn make(path: &Path, bytes: u64) -> Res<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    // Bytes per pixel of this format on noise, from a small sample.
    let sample = encode(ext, &noise(256, 256, 1))?;
    let per_pixel = sample.len() as f64 / (256.0 * 256.0);
    let side = ((bytes as f64 / per_pixel).sqrt() as u32).max(16);
    let mut data = encode(ext, &noise(side, side, 2))?;
    if ext == "jpg" {
        data = with_camera_segments(&data);
    }
    let temp = path.with_extension("partial");
    std::fs::write(&temp, &data)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

fn noise(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut img = RgbImage::new(width, height);
    rng.fill(&mut img);
    img
}

fn encode(ext: &str, img: &RgbImage) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    match ext {
        "jpg" => JpegEncoder::new_with_quality(&mut out, 100).write_image(
            img.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
        "webp" => WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
        _ => image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::NoFilter,
        )
        .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)?,
    }
    Ok(out)
}

/// Inserts an APP1 (EXIF) and two APP2 (ICC profile) segments of 60 KB each after SOI.
fn with_camera_segments(jpeg: &[u8]) -> Vec<u8> {
    let segment = |marker: u8, tag: &[u8]| {
        let len: usize = 60_000;
        let mut s = vec![0xFF, marker, (len >> 8) as u8, (len & 0xFF) as u8];
        s.extend_from_slice(tag);
        s.resize(2 + len, 0x20);
        s
    };
    let mut out = jpeg[..2].to_vec();
    out.extend(segment(0xE1, b"Exif\0\0"));
    out.extend(segment(0xE2, b"ICC_PROFILE\0\x01\x02"));
    out.extend(segment(0xE2, b"ICC_PROFILE\0\x02\x02"));
    out.extend_from_slice(&jpeg[2..]);
    out
}
