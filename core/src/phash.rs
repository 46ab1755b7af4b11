//! The 64-bit DCT perceptual hash, as Python's `imagehash.phash` computes it (the reference that
//! near-duplicate thresholds in the literature are quoted in):
//!
//! 1. grayscale with Pillow's `convert("L")`: `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`;
//! 2. resize to 32×32 with Pillow's Lanczos (a = 3, support scaled with the reduction), with
//!    [`crate::resample`], a port of Pillow's fixed-point resampler: the bits depend on it;
//! 3. 2-D DCT-II (scipy.fftpack's unnormalised one; the scale does not change the bits), rows
//!    axis first; keep the top-left 8×8 block (vertical frequency major);
//! 4. bit = coefficient > median of those 64 values (numpy median: mean of the middle two);
//! 5. bits in row-major order, the first one most significant — the order of imagehash's hex.
//!
//! It lives in core because more than one stage hashes images (ingest for near-duplicates, curate
//! on its crops) and stages never depend on each other.
//!
//! `tools/phash-reference/make_fixtures.py` regenerates the fixtures the tests compare against
//! (`ingest/tests/phash_parity.rs`).

use std::sync::OnceLock;

use crate::resample::{Filter, Plane8, resize, rgb_to_l};
use image::DynamicImage;

const SIDE: usize = 32;
const LOW: usize = 8;

/// Pillow's `convert("L")` of an image (alpha ignored, as Pillow does).
pub fn pillow_luma(img: &DynamicImage) -> (u32, u32, Vec<u8>) {
    let (w, h) = (img.width(), img.height());
    let data = match img {
        DynamicImage::ImageLuma8(g) => g.as_raw().clone(),
        DynamicImage::ImageRgb8(rgb) => rgb_to_l(rgb.as_raw(), 3),
        DynamicImage::ImageRgba8(rgba) => rgb_to_l(rgba.as_raw(), 4),
        other => rgb_to_l(other.to_rgb8().as_raw(), 3),
    };
    (w, h, data)
}

/// The 32×32 Lanczos-resized grayscale image the hash is computed from.
pub fn phash_input(img: &DynamicImage) -> [u8; SIDE * SIDE] {
    let (w, h, data) = pillow_luma(img);
    input_from_luma(w as usize, h as usize, data)
}

/// Resizes a grayscale plane to the 32×32 hash input (both entry points meet here, so they give
/// the same bits).
fn input_from_luma(width: usize, height: usize, data: Vec<u8>) -> [u8; SIDE * SIDE] {
    let gray = Plane8 {
        width,
        height,
        channels: 1,
        data,
    };
    let small = resize(&gray, SIDE, SIDE, Filter::Lanczos);
    let mut out = [0u8; SIDE * SIDE];
    out.copy_from_slice(&small.data);
    out
}

/// cos(π·k·(2n+1)/64) for k < 8, n < 32: the only DCT basis values the low block needs.
fn basis() -> &'static [[f64; SIDE]; LOW] {
    static BASIS: OnceLock<[[f64; SIDE]; LOW]> = OnceLock::new();
    BASIS.get_or_init(|| {
        let mut b = [[0.0; SIDE]; LOW];
        for (k, row) in b.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                *v = (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * SIDE) as f64)
                    .cos();
            }
        }
        b
    })
}

/// The top-left 8×8 block of scipy.fftpack's 2-D DCT-II of the 32×32 input, `[vertical][horizontal]`.
pub fn dct_low(pixels: &[u8; SIDE * SIDE]) -> [[f64; LOW]; LOW] {
    let b = basis();
    // Vertical pass: col_coef[u][x] = 2 Σ_y p[y][x] cos(..u..y..)
    let mut vert = [[0.0f64; SIDE]; LOW];
    for (u, row) in vert.iter_mut().enumerate() {
        for y in 0..SIDE {
            let c = b[u][y];
            for x in 0..SIDE {
                row[x] += f64::from(pixels[y * SIDE + x]) * c;
            }
        }
        for v in row.iter_mut() {
            *v *= 2.0;
        }
    }
    let mut out = [[0.0f64; LOW]; LOW];
    for u in 0..LOW {
        for v in 0..LOW {
            out[u][v] = 2.0 * (0..SIDE).map(|x| vert[u][x] * b[v][x]).sum::<f64>();
        }
    }
    out
}

/// Median as numpy computes it (mean of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 64-bit perceptual hash of an image.
pub fn phash(img: &DynamicImage) -> u64 {
    hash_from_input(&phash_input(img))
}

/// The 64-bit perceptual hash of interleaved RGB8 pixels (`height` rows of `width` × 3 bytes),
/// without building a [`DynamicImage`]: for stages that already hold raw pixels (crops, resized
/// planes). Same bits as [`phash`] of the same image.
///
/// # Panics
/// If `rgb.len() != width * height * 3`.
pub fn phash_rgb(width: usize, height: usize, rgb: &[u8]) -> u64 {
    assert_eq!(
        rgb.len(),
        width * height * 3,
        "phash_rgb: {width}×{height} RGB8 needs {} bytes, got {}",
        width * height * 3,
        rgb.len()
    );
    hash_from_input(&input_from_luma(width, height, rgb_to_l(rgb, 3)))
}

/// The hash of an already prepared 32×32 grayscale input.
pub fn hash_from_input(pixels: &[u8; SIDE * SIDE]) -> u64 {
    let low = dct_low(pixels);
    let flat: Vec<f64> = low.iter().flatten().copied().collect();
    let med = median(&flat);
    flat.iter()
        .fold(0u64, |h, &c| (h << 1) | u64::from(c > med))
}

/// Number of differing bits.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// imagehash's 16-digit hex form.
pub fn to_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_sixteen_digits_first_bit_most_significant() {
        // Near-duplicate behaviour on real photographs is checked against imagehash in
        // tests/phash_parity.rs.
        assert_eq!(to_hex(1 << 63), "8000000000000000");
        assert_eq!(to_hex(0xab), "00000000000000ab");
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }

    #[test]
    fn dct_of_a_constant_matches_scipy_scaling() {
        // scipy.fftpack.dct (type II, unnormalised) of a constant c over N = 32 is 2·N·c at k = 0.
        let low = dct_low(&[10; SIDE * SIDE]);
        assert!((low[0][0] - (2.0 * 32.0) * (2.0 * 32.0) * 10.0).abs() < 1e-6);
        assert!(low[0][1].abs() < 1e-9 && low[1][0].abs() < 1e-9);
    }

    #[test]
    fn rgb_buffer_and_dynamic_image_give_the_same_hash() {
        // A 47×29 gradient with some texture: not square, not a multiple of 32, so the resize
        // actually reduces on both axes differently.
        let (w, h) = (47u32, 29u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 5 + y * 3) as u8,
                ((x * y) % 251) as u8,
                if (x / 4 + y / 3) % 2 == 0 { 200 } else { 30 },
            ])
        });
        let raw = img.as_raw().clone();
        let dynamic = DynamicImage::ImageRgb8(img);
        let expected = phash(&dynamic);
        assert_eq!(phash_rgb(w as usize, h as usize, &raw), expected);
        // The RGBA path of the same pixels agrees too (alpha is ignored).
        assert_eq!(
            phash(&DynamicImage::ImageRgba8(dynamic.to_rgba8())),
            expected
        );
        assert_ne!(expected, 0);
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn rgb_buffer_of_the_wrong_length_is_refused() {
        phash_rgb(4, 4, &[0; 47]);
    }

    #[test]
    fn pillow_luma_uses_pillow_rounding() {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0])));
        // Pillow: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) == 76
        assert_eq!(pillow_luma(&img).2, vec![76]);
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([0, 0, 255])));
        assert_eq!(pillow_luma(&img).2, vec![29]);
    }
}
