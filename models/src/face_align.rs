//! The face alignment of ArcFace-class embedders: insightface's `utils/face_align.py`
//! (`estimate_norm`, `norm_crop`, `arcface_dst`) with OpenCV's 8-bit `warpAffine`.
//!
//! - [`estimate_norm`] fits a similarity transform (rotation, uniform scale, translation; no
//!   reflection) from five facial points to the `arcface_dst` template by least squares, as
//!   skimage's `SimilarityTransform.estimate` (Umeyama, 1991) does. In 2-D the least-squares
//!   similarity has a closed form (`a = Σ x·y / Σ|x|²`, `b = Σ x×y / Σ|x|²` on centred points),
//!   which is the optimum Umeyama's SVD reaches; the two agree to rounding (about 1e-15).
//! - [`warp_affine`] is `cv2.warpAffine(img, M, size, flags=INTER_LINEAR,
//!   borderMode=BORDER_CONSTANT, borderValue=0)` for 8-bit images bit for bit, following
//!   `modules/imgproc/src/imgwarp.cpp` of OpenCV 4.10 (`WarpAffineInvoker`, `remapBilinear`,
//!   `initInterTab2D`): the matrix is inverted in double precision; source coordinates are
//!   fixed point with `AB_BITS = 10` (rounded half to even, `cvRound`), then cut to 1/32 pixel
//!   (`INTER_BITS = 5`); the four bilinear weights are integers summing to 2¹⁵
//!   (`INTER_REMAP_COEF_BITS`), and the sum is rounded by `(s + 2¹⁴) >> 15`. Taps outside the
//!   image read the border value 0. OpenCV 4.12 and 4.14 give the same bytes (tested); OpenCV
//!   5.0 does not (on the parity fixtures 8% of the crop bytes differ, by up to 2 levels).
//! - [`five_points_from_68`] turns the 68 iBUG landmarks of face-api into the five points
//!   insightface's detectors (SCRFD, RetinaFace) give.

use crate::face_api::preprocess::RgbView;

/// insightface's `arcface_dst`: where the left eye, right eye, nose tip, left and right mouth
/// corners go in the 112×112 aligned crop (float32, as there).
pub const ARCFACE_DST: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The side of the aligned crop ArcFace-class models take.
pub const ALIGNED_SIZE: usize = 112;

/// A 2×3 affine matrix `[[a, b, c], [d, e, f]]` mapping source `(x, y)` to
/// `(a·x + b·y + c, d·x + e·y + f)`, as OpenCV takes it.
pub type Affine = [[f64; 3]; 2];

/// The five alignment points from 68 iBUG landmarks (0-based): the centre of points 36–41 (the
/// eye on the image's left), the centre of 42–47, the nose tip 30, the mouth corners 48 and 54.
///
/// # Panics
/// If `landmarks` does not hold 68 points.
pub fn five_points_from_68(landmarks: &[(f64, f64)]) -> [(f64, f64); 5] {
    assert_eq!(landmarks.len(), 68, "68 iBUG landmarks expected");
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let (sx, sy) = landmarks[r]
            .iter()
            .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
        (sx / n, sy / n)
    };
    [
        mean(36..42),
        mean(42..48),
        landmarks[30],
        landmarks[48],
        landmarks[54],
    ]
}

/// The least-squares similarity transform (no reflection) taking `src` points onto `dst`:
/// skimage `SimilarityTransform().estimate(src, dst)`, `params[:2]`, for float64 points.
///
/// All-coincident `src` points leave the transform undefined: the result is NaN, as skimage's.
///
/// # Panics
/// If the slices differ in length or are empty.
pub fn similarity_transform(src: &[(f64, f64)], dst: &[(f64, f64)]) -> Affine {
    assert!(
        src.len() == dst.len() && !src.is_empty(),
        "point lists of equal, non-zero length"
    );
    let md = mean(dst);
    let centred: Vec<(f64, f64)> = dst.iter().map(|&(x, y)| (x - md.0, y - md.1)).collect();
    fit(src, &centred, md)
}

/// The mean of points, summed in order as numpy's `mean(axis=0)` does for a few rows.
fn mean(p: &[(f64, f64)]) -> (f64, f64) {
    let n = p.len() as f64;
    let (sx, sy) = p
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
    (sx / n, sy / n)
}

/// The similarity taking `src` onto targets given centred (`dst_centred`, around `dst_mean`).
/// On centred points the least-squares `[[a, −b], [b, a]]` is `a = Σ x·u / Σ|x|²`,
/// `b = Σ x×u / Σ|x|²`.
fn fit(src: &[(f64, f64)], dst_centred: &[(f64, f64)], dst_mean: (f64, f64)) -> Affine {
    let ms = mean(src);
    let (mut sxx, mut dot, mut cross) = (0.0, 0.0, 0.0);
    for (&(sx, sy), &(u, v)) in src.iter().zip(dst_centred) {
        let (x, y) = (sx - ms.0, sy - ms.1);
        sxx += x * x + y * y;
        dot += x * u + y * v;
        cross += x * v - y * u;
    }
    let (a, b) = (dot / sxx, cross / sxx);
    [
        [a, -b, dst_mean.0 - (a * ms.0 - b * ms.1)],
        [b, a, dst_mean.1 - (b * ms.0 + a * ms.1)],
    ]
}

/// insightface `estimate_norm(lmk, image_size, mode='arcface')`: the similarity taking the five
/// points (see [`five_points_from_68`]) onto `arcface_dst` scaled to `image_size` (a multiple
/// of 112, or of 128 with the template shifted right by 8/128 of the side).
///
/// The points are taken as float64, as face-api's landmarks are. insightface's detectors give
/// float32 `kps`, which skimage then centres in float32 as well; from such points the matrix
/// can differ from this one by ~1e-7 relative.
///
/// # Panics
/// If `image_size` is a multiple of neither 112 nor 128.
pub fn estimate_norm(points: &[(f64, f64); 5], image_size: usize) -> Affine {
    let (ratio, diff_x) = if image_size.is_multiple_of(112) {
        (image_size as f64 / 112.0, 0.0)
    } else if image_size.is_multiple_of(128) {
        let r = image_size as f64 / 128.0;
        (r, 8.0 * r)
    } else {
        panic!("image_size {image_size} is a multiple of neither 112 nor 128");
    };
    // The template is float32, and numpy keeps it so: `arcface_dst * ratio`, `+= diff_x`, and
    // in skimage's `_umeyama` its mean and the centred template are float32 too (a float64
    // centring moves the matrix by ~5e-8, enough to flip a pixel of the crop now and then).
    let dst: Vec<[f32; 2]> = ARCFACE_DST
        .iter()
        .map(|&[x, y]| [x * ratio as f32 + diff_x as f32, y * ratio as f32])
        .collect();
    let n = dst.len() as f32;
    let sum = dst
        .iter()
        .fold([0f32; 2], |[sx, sy], &[x, y]| [sx + x, sy + y]);
    let md = [sum[0] / n, sum[1] / n];
    let centred: Vec<(f64, f64)> = dst
        .iter()
        .map(|&[x, y]| (f64::from(x - md[0]), f64::from(y - md[1])))
        .collect();
    fit(points, &centred, (f64::from(md[0]), f64::from(md[1])))
}

/// An aligned face crop.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignedFace {
    /// The source-to-crop matrix it was warped with.
    pub matrix: Affine,
    /// Side of the square crop in pixels.
    pub size: usize,
    /// RGB bytes, `size · size · 3`.
    pub data: Vec<u8>,
}

impl AlignedFace {
    /// The crop as an image view.
    pub fn view(&self) -> RgbView<'_> {
        RgbView {
            width: self.size,
            height: self.size,
            data: &self.data,
        }
    }
}

/// insightface `norm_crop(img, landmark, image_size)`: [`estimate_norm`], then
/// [`warp_affine`] to a `image_size` square with a black border.
pub fn norm_crop(img: RgbView<'_>, points: &[(f64, f64); 5], image_size: usize) -> AlignedFace {
    let matrix = estimate_norm(points, image_size);
    AlignedFace {
        matrix,
        size: image_size,
        data: warp_affine(img, &matrix, image_size, image_size),
    }
}

const INTER_BITS: u32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
const AB_BITS: u32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
const COEF_BITS: u32 = 15;

/// `cvRound`, which `saturate_cast<int>(double)` is: nearest, halves to even (SSE2 `cvtsd2si`).
fn cv_round(x: f64) -> i32 {
    x.round_ties_even() as i32
}

/// The fixed-point bilinear weights of `BilinearTab_i` for a 1/32-pixel offset `(fx, fy)`, in
/// the order top-left, top-right, bottom-left, bottom-right.
fn bilinear_weights(fx: i32, fy: i32) -> [i32; 4] {
    if fx == 0 && fy == 0 {
        // 1.0 · 2¹⁵ saturates to 32767 in a short; initInterTab2D's sum fix-up then adds the
        // missing 1 to the bottom-right tap (its search window for 2×2 kernels lands there).
        return [32767, 0, 0, 1];
    }
    // (1 − fy/32)(1 − fx/32) · 2¹⁵ and so on: exact in float, so exact integers.
    let (gx, gy) = (INTER_TAB_SIZE - fx, INTER_TAB_SIZE - fy);
    let s = (1 << COEF_BITS) / (INTER_TAB_SIZE * INTER_TAB_SIZE);
    [gy * gx * s, gy * fx * s, fy * gx * s, fy * fx * s]
}

/// `cv2.warpAffine(img, m, (width, height))` with `INTER_LINEAR`, `BORDER_CONSTANT` and border
/// value 0, for an RGB8 image: each output pixel samples the source at `m⁻¹ · (x, y)`. Bit-exact
/// with OpenCV 4.10's fixed-point path (see the module docs).
///
/// # Panics
/// If the image buffer does not hold `width · height · 3` bytes.
pub fn warp_affine(img: RgbView<'_>, m: &Affine, width: usize, height: usize) -> Vec<u8> {
    assert_eq!(
        img.data.len(),
        img.width * img.height * 3,
        "RGB buffer size"
    );
    // cv::warpAffine without WARP_INVERSE_MAP: invert the matrix, in this order.
    let [[m0, m1, m2], [m3, m4, m5]] = *m;
    let d = m0 * m4 - m1 * m3;
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (i0, i1, i3, i4) = (m4 * d, m1 * -d, m3 * -d, m0 * d);
    let i2 = -i0 * m2 - i1 * m5;
    let i5 = -i3 * m2 - i4 * m5;

    let adelta: Vec<i32> = (0..width)
        .map(|x| cv_round(i0 * x as f64 * AB_SCALE))
        .collect();
    let bdelta: Vec<i32> = (0..width)
        .map(|x| cv_round(i3 * x as f64 * AB_SCALE))
        .collect();
    let round_delta = (1 << AB_BITS) / INTER_TAB_SIZE / 2;
    let (sw, sh) = (img.width as i64, img.height as i64);
    let tap = |x: i64, y: i64, c: usize| -> i32 {
        if x < 0 || y < 0 || x >= sw || y >= sh {
            0
        } else {
            i32::from(img.data[((y * sw + x) * 3) as usize + c])
        }
    };

    let mut out = vec![0u8; width * height * 3];
    for y in 0..height {
        let x0 = cv_round((i1 * y as f64 + i2) * AB_SCALE).wrapping_add(round_delta);
        let y0 = cv_round((i4 * y as f64 + i5) * AB_SCALE).wrapping_add(round_delta);
        for x in 0..width {
            let xf = x0.wrapping_add(adelta[x]) >> (AB_BITS - INTER_BITS);
            let yf = y0.wrapping_add(bdelta[x]) >> (AB_BITS - INTER_BITS);
            // saturate_cast<short>
            let sx = i64::from((xf >> INTER_BITS).clamp(-32768, 32767));
            let sy = i64::from((yf >> INTER_BITS).clamp(-32768, 32767));
            let w = bilinear_weights(xf & (INTER_TAB_SIZE - 1), yf & (INTER_TAB_SIZE - 1));
            let px = &mut out[(y * width + x) * 3..][..3];
            for (c, p) in px.iter_mut().enumerate() {
                let s = tap(sx, sy, c) * w[0]
                    + tap(sx + 1, sy, c) * w[1]
                    + tap(sx, sy + 1, c) * w[2]
                    + tap(sx + 1, sy + 1, c) * w[3];
                *p = ((s + (1 << (COEF_BITS - 1))) >> COEF_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_maps_onto_itself() {
        let pts = ARCFACE_DST.map(|[x, y]| (f64::from(x), f64::from(y)));
        let m = estimate_norm(&pts, 112);
        let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        // The float32 centring of the template leaves a shift of ~1.5e-6 px (as in skimage).
        for (r, e) in m.iter().zip(id) {
            for (a, b) in r.iter().zip(e) {
                assert!((a - b).abs() < 1e-5, "{m:?}");
            }
        }
        let exact = similarity_transform(&pts, &pts);
        for (r, e) in exact.iter().zip(id) {
            for (a, b) in r.iter().zip(e) {
                assert!((a - b).abs() < 1e-12, "{exact:?}");
            }
        }
    }

    #[test]
    fn similarity_recovers_a_known_transform() {
        // rotate 30°, scale 0.5, shift (10, -4)
        let (s, c) = (
            0.5 * 30f64.to_radians().sin(),
            0.5 * 30f64.to_radians().cos(),
        );
        let src = [(3.0, 1.0), (7.5, 2.0), (5.0, 9.0), (1.0, 4.0)];
        let dst: Vec<_> = src
            .iter()
            .map(|&(x, y)| (c * x - s * y + 10.0, s * x + c * y - 4.0))
            .collect();
        let m = similarity_transform(&src, &dst);
        let want = [[c, -s, 10.0], [s, c, -4.0]];
        for (r, e) in m.iter().zip(want) {
            for (a, b) in r.iter().zip(e) {
                assert!((a - b).abs() < 1e-12, "{m:?}");
            }
        }
    }

    #[test]
    fn identity_warp_copies_and_borders_are_black() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let img = RgbView {
            width: 4,
            height: 3,
            data: &data,
        };
        let same = warp_affine(img, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 4, 3);
        assert_eq!(same, data);
        // shifted right by one pixel: column 0 is border, the rest the source
        let shifted = warp_affine(img, &[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], 4, 3);
        for y in 0..3 {
            assert_eq!(&shifted[y * 12..y * 12 + 3], &[0, 0, 0]);
            assert_eq!(&shifted[y * 12 + 3..y * 12 + 12], &data[y * 12..y * 12 + 9]);
        }
        // half a pixel: (a + b + 1) / 2 rounded by the fixed-point sum
        let half = warp_affine(img, &[[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]], 4, 3);
        assert_eq!(
            half[0],
            (u32::from(data[0]) + u32::from(data[3])).div_ceil(2) as u8
        );
    }

    #[test]
    fn five_points_average_the_eyes() {
        let lm: Vec<(f64, f64)> = (0..68).map(|i| (i as f64, 2.0 * i as f64)).collect();
        let p = five_points_from_68(&lm);
        assert_eq!(
            p,
            [
                (38.5, 77.0),
                (44.5, 89.0),
                (30.0, 60.0),
                (48.0, 96.0),
                (54.0, 108.0)
            ]
        );
    }
}
