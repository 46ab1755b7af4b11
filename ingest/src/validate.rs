//! What happens to received bytes before they are stored: content hash, decode under the pixel
//! limit (with EXIF orientation), perceptual hash.

use idforge_core::image_io::{self, DecodeError};
use idforge_core::schema::ImageStatus;

/// What the bytes turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Inspected {
    /// A good image.
    Image {
        /// sha256 hex of the bytes.
        image_id: String,
        /// Width after EXIF orientation.
        width: u32,
        /// Height after EXIF orientation.
        height: u32,
        /// Sniffed format name (also the store file's extension).
        format: &'static str,
        /// Perceptual hash.
        phash: u64,
    },
    /// Not usable: the status and why.
    Rejected {
        /// sha256 hex of the bytes, still recorded.
        image_id: String,
        /// `not_image`, `decode_error` or `too_large`.
        status: ImageStatus,
        /// Readable reason.
        error: String,
    },
}

/// Hashes and decodes `bytes`; never fails, a bad body is a [`Inspected::Rejected`].
pub fn inspect(bytes: &[u8], max_pixels: u64) -> Inspected {
    let image_id = idforge_core::hash::sha256_hex(bytes);
    match image_io::decode(bytes, max_pixels) {
        Ok(d) => Inspected::Image {
            image_id,
            width: d.width,
            height: d.height,
            format: image_io::format_name(d.format),
            phash: crate::phash::phash(&d.image),
        },
        Err(e) => {
            let status = match e {
                DecodeError::NotImage(_) => ImageStatus::NotImage,
                DecodeError::TooManyPixels { .. } => ImageStatus::TooLarge,
                _ => ImageStatus::DecodeError,
            };
            Inspected::Rejected {
                image_id,
                status,
                error: e.to_string(),
            }
        }
    }
}
