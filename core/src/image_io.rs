//! Image decoding with the guards every stage needs: the format is sniffed from the bytes (never
//! trusted from a file name or a `Content-Type`), the pixel count is checked from the header
//! before anything is allocated, and EXIF orientation is applied so that width and height are
//! the ones a viewer shows.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Default pixel limit: 128 megapixels, above any camera photograph, far below a bomb.
pub const DEFAULT_MAX_PIXELS: u64 = 128 * 1024 * 1024;

/// A decoded image with what the tables record about it.
#[derive(Debug)]
pub struct Decoded {
    /// Pixels, EXIF orientation already applied.
    pub image: DynamicImage,
    /// The format sniffed from the bytes.
    pub format: ImageFormat,
    /// Width after orientation.
    pub width: u32,
    /// Height after orientation.
    pub height: u32,
}

/// Why bytes could not become an image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not in any supported image format.
    #[error("not an image: {0}")]
    NotImage(String),
    /// The header announces more pixels than allowed.
    #[error("{width}×{height} = {pixels} pixels is over the limit of {limit} pixels")]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The format was recognised but the data is broken or truncated.
    #[error("{format} data could not be decoded: {message}")]
    Corrupt {
        /// Short name of the sniffed format.
        format: String,
        /// The decoder's message.
        message: String,
    },
}

/// Short lower-case name of a format, as stored in the `format` column and used as file extension.
pub fn format_name(format: ImageFormat) -> &'static str {
    format.extensions_str().first().copied().unwrap_or("bin")
}

/// Sniffs the format from the leading bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes).ok()
}

/// Whether a JPEG has an end-of-image marker after its first scan. Markers are walked from the
/// start so that an EXIF thumbnail's own end marker (before the scan) does not count; inside
/// entropy-coded data a 0xFF byte is always stuffed, so `FF D9` there is the real marker.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA {
            return bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]);
        }
        if (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        i += 2 + len;
    }
    false
}

/// Decodes `bytes` under a pixel limit and applies EXIF orientation.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, DecodeError> {
    let format = sniff_format(bytes).ok_or_else(|| {
        let head: String = bytes
            .iter()
            .take(16)
            .map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b as char
                } else {
                    '.'
                }
            })
            .collect();
        DecodeError::NotImage(format!("no known image signature (starts with {head:?})"))
    })?;
    let corrupt = |e: image::ImageError| DecodeError::Corrupt {
        format: format_name(format).to_string(),
        message: e.to_string(),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and reports success; a half-grey
        // photograph must not pass as an image.
        return Err(DecodeError::Corrupt {
            format: "jpg".into(),
            message: "the data ends before the end-of-image marker (truncated file)".into(),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Decoders allocate the full frame; bound it by the pixel limit at 16 bytes per pixel
    // (RGBA f32), plus slack for the decoders' own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(DecodeError::TooManyPixels {
            width: w,
            height: h,
            pixels,
            limit: max_pixels,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    Ok(Decoded {
        image,
        format,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_and_reports_size_and_format() {
        let d = decode(&png(40, 30), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((d.width, d.height, d.format), (40, 30, ImageFormat::Png));
        assert_eq!(format_name(d.format), "png");
    }

    #[test]
    fn refuses_more_pixels_than_the_limit_before_decoding() {
        let err = decode(&png(40, 30), 1000).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooManyPixels {
                width: 40,
                height: 30,
                pixels: 1200,
                limit: 1000
            }
        );
    }

    #[test]
    fn html_is_not_an_image() {
        let err = decode(b"<!doctype html><html>", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, DecodeError::NotImage(_)), "{err:?}");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let bytes = png(64, 64);
        let err = decode(&bytes[..bytes.len() / 2], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn truncated_jpeg_is_corrupt_even_though_the_decoder_would_fill_it() {
        let img =
            image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 9]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        assert!(jpeg_is_complete(&jpeg));
        assert!(decode(&jpeg, DEFAULT_MAX_PIXELS).is_ok());
        let err = decode(&jpeg[..jpeg.len() - 40], DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // Trailing bytes after the end marker (some cameras append data) are fine.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"vendor trailer");
        assert!(decode(&trailing, DEFAULT_MAX_PIXELS).is_ok());
    }

    #[test]
    fn exif_orientation_swaps_width_and_height() {
        // A 4×2 JPEG whose EXIF says "rotate 90° clockwise" shows as 2×4.
        let img = image::RgbImage::from_pixel(4, 2, image::Rgb([200, 10, 10]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        let with_exif = insert_exif_orientation(&jpeg, 6);
        let d = decode(&with_exif, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((d.width, d.height), (2, 4));
    }

    /// Inserts an APP1 EXIF segment holding only an Orientation tag after the SOI marker.
    fn insert_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian, IFD at offset 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut seg = b"Exif\0\0".to_vec();
        seg.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&seg);
        out.extend_from_slice(&jpeg[2..]);
        out
    }
}
