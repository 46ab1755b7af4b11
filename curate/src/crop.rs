//! Training crops and reference crops.
//!
//! The training crop is a square around the face, large enough that the face box covers
//! `face_share` of its area (PhotoMaker: at least 10 %), never smaller than the box itself.
//! It is shifted to stay inside the image; only where the square is larger than the image
//! in a direction is it padded, by replicating the edge pixels. It is then resized to the
//! training resolution with Pillow's Lanczos filter (the port in `idforge_core::resample`).

use std::io::BufWriter;
use std::path::Path;

use idforge_core::resample::{Filter, Plane8, resize};
use idforge_core::schema::faces::BoxXyxy;
use idforge_models::face_api::preprocess::RgbView;
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;

/// A square in source pixels; its corner may be negative or its far side past the image where
/// the crop is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Square {
    /// Left edge.
    pub x0: i64,
    /// Top edge.
    pub y0: i64,
    /// Side.
    pub side: i64,
}

impl Square {
    /// `[x0, y0, x1, y1]`.
    pub fn xyxy(&self) -> BoxXyxy {
        [
            self.x0 as f32,
            self.y0 as f32,
            (self.x0 + self.side) as f32,
            (self.y0 + self.side) as f32,
        ]
    }
}

/// The training square for `face` in a `width × height` image (see the module doc).
pub fn training_square(face: BoxXyxy, width: usize, height: usize, face_share: f32) -> Square {
    let (w, h) = ((face[2] - face[0]) as f64, (face[3] - face[1]) as f64);
    let side = ((w * h / face_share as f64).sqrt())
        .max(w)
        .max(h)
        .round()
        .max(1.0) as i64;
    let place = |center: f64, extent: usize| -> i64 {
        let extent = extent as i64;
        let want = (center - side as f64 / 2.0).round() as i64;
        // Inside the image when it fits; covering all of it, as centred as possible, when not.
        let (lo, hi) = if side <= extent {
            (0, extent - side)
        } else {
            (extent - side, 0)
        };
        want.clamp(lo, hi)
    };
    Square {
        x0: place(((face[0] + face[2]) / 2.0) as f64, width),
        y0: place(((face[1] + face[3]) / 2.0) as f64, height),
        side,
    }
}

/// The RGB pixels of `sq`, edge-replicated where it leaves the image.
pub fn extract(img: RgbView<'_>, sq: Square) -> Plane8 {
    let side = sq.side as usize;
    extract_rect(img, sq.x0, sq.y0, side, side)
}

/// The RGB pixels of the `width × height` rectangle at `(x0, y0)`, edge-replicated where it
/// leaves the image.
fn extract_rect(img: RgbView<'_>, x0: i64, y0: i64, width: usize, height: usize) -> Plane8 {
    let mut data = Vec::with_capacity(width * height * 3);
    let cols: Vec<usize> = (0..width as i64)
        .map(|c| (x0 + c).clamp(0, img.width as i64 - 1) as usize)
        .collect();
    let contiguous = x0 >= 0 && x0 + width as i64 <= img.width as i64;
    for r in 0..height as i64 {
        let y = (y0 + r).clamp(0, img.height as i64 - 1) as usize;
        let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        if contiguous {
            data.extend_from_slice(&row[x0 as usize * 3..(x0 as usize + width) * 3]);
        } else {
            for &x in &cols {
                data.extend_from_slice(&row[x * 3..x * 3 + 3]);
            }
        }
    }
    Plane8 {
        width,
        height,
        channels: 3,
        data,
    }
}

/// The training crop at `resolution`: extract, then Lanczos to size.
pub fn training_crop(img: RgbView<'_>, sq: Square, resolution: usize) -> Plane8 {
    let square = extract(img, sq);
    if square.width == resolution {
        return square;
    }
    resize(&square, resolution, resolution, Filter::Lanczos)
}

/// `face` in the pixels of the training crop `sq` saved at `resolution`.
pub fn box_in_crop(face: BoxXyxy, sq: Square, resolution: usize) -> BoxXyxy {
    let s = resolution as f32 / sq.side as f32;
    [
        (face[0] - sq.x0 as f32) * s,
        (face[1] - sq.y0 as f32) * s,
        (face[2] - sq.x0 as f32) * s,
        (face[3] - sq.y0 as f32) * s,
    ]
}

/// The reference crop's rectangle: the face box grown by `margin` of its size (half on each
/// side), in whole pixels, clipped to the image.
pub fn reference_rect(face: BoxXyxy, width: usize, height: usize, margin: f32) -> [usize; 4] {
    let (w, h) = (face[2] - face[0], face[3] - face[1]);
    let (dx, dy) = (w * margin / 2.0, h * margin / 2.0);
    let x0 = (face[0] - dx).floor().max(0.0) as usize;
    let y0 = (face[1] - dy).floor().max(0.0) as usize;
    let x1 = ((face[2] + dx).ceil() as usize).min(width).max(x0 + 1);
    let y1 = ((face[3] + dy).ceil() as usize).min(height).max(y0 + 1);
    [x0, y0, x1, y1]
}

/// The pixels of a reference rectangle (inside the image).
pub fn reference_crop(img: RgbView<'_>, rect: [usize; 4]) -> Plane8 {
    let (w, h) = (rect[2] - rect[0], rect[3] - rect[1]);
    extract_rect(img, rect[0] as i64, rect[1] as i64, w, h)
}

/// Writes an RGB plane as JPEG, atomically (temporary file, then rename).
pub fn save_jpeg(path: &Path, plane: &Plane8, quality: u8) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = idforge_core::table::temp_sibling(path);
    {
        let file = std::fs::File::create(&tmp)?;
        let mut enc = JpegEncoder::new_with_quality(BufWriter::new(file), quality);
        enc.encode(
            &plane.data,
            plane.width as u32,
            plane.height as u32,
            ExtendedColorType::Rgb8,
        )
        .map_err(std::io::Error::other)?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_square_gives_the_face_its_share_and_stays_inside() {
        let face = [900.0, 400.0, 1156.0, 720.0]; // 256 × 320
        let sq = training_square(face, 1920, 1280, 0.10);
        let share = 256.0 * 320.0 / (sq.side * sq.side) as f64;
        assert!((share - 0.10).abs() < 0.001, "{share}");
        assert!(sq.x0 >= 0 && sq.y0 >= 0);
        assert!(sq.x0 + sq.side <= 1920 && sq.y0 + sq.side <= 1280);
        // Near the top-left corner it shifts instead of padding.
        let sq = training_square([10.0, 10.0, 266.0, 330.0], 1920, 1280, 0.10);
        assert_eq!((sq.x0, sq.y0), (0, 0));
    }

    #[test]
    fn a_square_larger_than_the_image_is_padded_by_edge_replication() {
        // 4 × 2 image, a square of side 4 must pad one row above and one below.
        let data: Vec<u8> = (0..8u8).flat_map(|v| [v, v, v]).collect();
        let img = RgbView {
            width: 4,
            height: 2,
            data: &data,
        };
        let sq = training_square([1.0, 0.0, 3.0, 2.0], 4, 2, 0.25);
        assert_eq!(sq.side, 4);
        assert_eq!((sq.x0, sq.y0), (0, -1));
        let p = extract(img, sq);
        let red: Vec<u8> = p.data.iter().step_by(3).copied().collect();
        assert_eq!(red, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]);
    }

    #[test]
    fn the_face_box_maps_into_crop_pixels() {
        let sq = Square {
            x0: 100,
            y0: 50,
            side: 1000,
        };
        let b = box_in_crop([400.0, 350.0, 600.0, 550.0], sq, 500);
        assert_eq!(b, [150.0, 150.0, 250.0, 250.0]);
    }

    #[test]
    fn the_reference_rect_is_the_box_grown_by_the_margin_and_clipped() {
        let r = reference_rect([100.0, 100.0, 200.0, 300.0], 1000, 1000, 0.2);
        assert_eq!(r, [90, 80, 210, 320]);
        let r = reference_rect([0.0, 0.0, 100.0, 100.0], 105, 1000, 0.2);
        assert_eq!(r, [0, 0, 105, 110]);
    }
}
