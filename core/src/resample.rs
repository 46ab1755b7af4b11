//! Image resizing that reproduces Pillow's `Image.resize` bit for bit on 8-bit images.
//!
//! The reference pipelines idforge is compared against (imagehash's pHash, PhotoMaker-style
//! crop scripts, clean-fid) resize with Pillow, whose fixed-point arithmetic is part of the
//! result: a generic resampler differs by a grey level here and there, enough to flip a pHash
//! bit. This is a port of the algorithm in Pillow 13's `src/libImaging/Resample.c`
//! (`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`,
//! `ImagingResampleVertical_8bpc`, `ImagingResampleInner`), whole-image box only.

/// Pillow's resampling filters supported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Filter {
    /// `Image.Resampling.LANCZOS`: windowed sinc, a = 3.
    Lanczos,
    /// `Image.Resampling.BICUBIC`: cubic convolution, a = -0.5.
    Bicubic,
    /// `Image.Resampling.BILINEAR`: triangle.
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                return 1.0;
            }
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
        match self {
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
        }
    }
}

/// 8 bits of result, 2 for overflow: Pillow's `PRECISION_BITS`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of one pass: for output `i`, taps start at `bounds[i].0` and
/// `weights[i * ksize..][..bounds[i].1]` apply.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * inv);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// An interleaved 8-bit image: `channels` bytes per pixel, rows contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plane8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per pixel (1 for L, 3 for RGB, 4 for RGBA).
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

fn horizontal(src: &Plane8, out_w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Plane8 {
    let ch = src.channels;
    let mut data = vec![0u8; rows.len() * out_w * ch];
    for (oy, y) in rows.clone().enumerate() {
        let row = &src.data[y * src.width * ch..(y + 1) * src.width * ch];
        let out = &mut data[oy * out_w * ch..(oy + 1) * out_w * ch];
        for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
            if ch == 1 {
                let px = &row[xmin..xmin + xmax];
                let acc = px.iter().zip(k).fold(1i32 << (PRECISION_BITS - 1), |s, (&p, &w)| s + i32::from(p) * w);
                out[xx] = clip8(acc);
            } else {
                for b in 0..ch {
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (x, &w) in k.iter().enumerate() {
                        acc += i32::from(row[(xmin + x) * ch + b]) * w;
                    }
                    out[xx * ch + b] = clip8(acc);
                }
            }
        }
    }
    Plane8 { width: out_w, height: rows.len(), channels: ch, data }
}

fn vertical(src: &Plane8, out_h: usize, c: &Coeffs, row_offset: usize) -> Plane8 {
    let stride = src.width * src.channels;
    let mut data = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let row = &src.data[(ymin - row_offset + y) * stride..][..stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in data[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Plane8 { width: src.width, height: out_h, channels: src.channels, data }
}

/// Resizes `src` to `out_w`×`out_h` exactly as Pillow's `Image.resize((out_w, out_h), filter)`.
///
/// # Panics
/// If a target side is 0 or `src.data` does not hold `width * height * channels` bytes.
pub fn resize(src: &Plane8, out_w: usize, out_h: usize, filter: Filter) -> Plane8 {
    assert!(out_w > 0 && out_h > 0, "resize to {out_w}×{out_h}: sides must be positive");
    assert_eq!(src.data.len(), src.width * src.height * src.channels, "plane size mismatch");
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    // Pillow runs the vertical pass first when the height shrinks more than twice as much
    // as the width, to make the horizontal pass cheaper.
    let horizontal_first =
        !(src.height > out_h && (src.height - out_h) as i64 > (src.width as i64 - out_w as i64) * 2);
    let vc = need_v.then(|| precompute(src.height, out_h, filter));
    let hc = need_h.then(|| precompute(src.width, out_w, filter));
    match (hc, vc) {
        (None, None) => src.clone(),
        (Some(h), None) => horizontal(src, out_w, 0..src.height, &h),
        (None, Some(v)) => vertical(src, out_h, &v, 0),
        (Some(h), Some(v)) if horizontal_first => {
            // Only the source rows the vertical pass reads.
            let first = v.bounds[0].0;
            let last = v.bounds[out_h - 1].0 + v.bounds[out_h - 1].1;
            let tmp = horizontal(src, out_w, first..last, &h);
            vertical(&tmp, out_h, &v, first)
        }
        (Some(h), Some(v)) => {
            let tmp = vertical(src, out_h, &v, 0);
            horizontal(&tmp, out_w, 0..out_h, &h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(1920, 32), (160, 32), (20, 32), (33, 32)] {
            let c = precompute(n_in, n_out, Filter::Lanczos);
            for (i, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.weights[i * c.ksize..i * c.ksize + n].iter().map(|&w| i64::from(w)).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i64, "{n_in}->{n_out} #{i}: {s}");
            }
        }
    }

    #[test]
    fn constant_images_stay_constant_and_identity_is_a_copy() {
        let src = Plane8 { width: 97, height: 61, channels: 3, data: vec![200; 97 * 61 * 3] };
        for (w, h) in [(32, 32), (200, 13), (97, 30)] {
            let out = resize(&src, w, h, Filter::Lanczos);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.data.iter().all(|&v| v == 200));
        }
        assert_eq!(resize(&src, 97, 61, Filter::Bicubic), src);
    }
}
