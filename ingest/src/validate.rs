//! What happens to fetched bytes: hash, decode under the pixel limit, perceptual hash, store.

use idforge_core::image_io::{self, DecodeError};
use idforge_core::schema::ImageStatus;

use crate::store::Store;

/// The outcome of validating one body.
#[derive(Debug, Clone, PartialEq)]
pub enum Validated {
    /// A good image, stored.
    Image {
        /// sha256 hex of the bytes.
        image_id: String,
        /// Width after EXIF orientation.
        width: u32,
        /// Height after EXIF orientation.
        height: u32,
        /// Sniffed format name.
        format: &'static str,
        /// Perceptual hash.
        phash: u64,
        /// Path relative to the store root.
        store_path: String,
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

/// Hashes, decodes and stores `bytes`. A store write failure (disk full, permissions) is an
/// error that stops the run rather than a row status: the row could be fetched again later.
pub fn validate(bytes: &[u8], max_pixels: u64, store: &Store) -> std::io::Result<Validated> {
    let image_id = idforge_core::hash::sha256_hex(bytes);
    let decoded = match image_io::decode(bytes, max_pixels) {
        Ok(d) => d,
        Err(e) => {
            let status = match e {
                DecodeError::NotImage(_) => ImageStatus::NotImage,
                DecodeError::TooManyPixels { .. } => ImageStatus::TooLarge,
                _ => ImageStatus::DecodeError,
            };
            return Ok(Validated::Rejected { image_id, status, error: e.to_string() });
        }
    };
    let format = image_io::format_name(decoded.format);
    let phash = crate::phash::phash(&decoded.image);
    let rel = store.put(&image_id, format, bytes).map_err(|e| {
        std::io::Error::new(e.kind(), format!("writing to the store {}: {e}", store.root().display()))
    })?;
    Ok(Validated::Image {
        image_id,
        width: decoded.width,
        height: decoded.height,
        format,
        phash,
        store_path: rel.display().to_string(),
    })
}
