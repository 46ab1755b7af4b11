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
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
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
    /// `weights` split as `hi · 2¹¹ + lo` with `lo` in `0..2¹¹`: both fit in i16, so the
    /// single-channel dot products vectorise to 16-bit multiply-adds, and
    /// `2¹¹ · Σ p·hi + Σ p·lo` is the same integer Pillow computes.
    hi: Vec<i16>,
    lo: Vec<i16>,
}

const SPLIT: u32 = 11;

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
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    let hi = weights.iter().map(|&w| (w >> SPLIT) as i16).collect();
    let lo = weights
        .iter()
        .map(|&w| (w & ((1 << SPLIT) - 1)) as i16)
        .collect();
    Coeffs {
        ksize,
        bounds,
        weights,
        hi,
        lo,
    }
}

/// Σ p·w over one tap range, exactly, in a form that compiles to 16-bit multiply-adds.
#[inline(always)]
fn dot_split(px: &[u8], hi: &[i16], lo: &[i16]) -> i32 {
    let (mut sh, mut sl) = (0i32, 0i32);
    for ((&p, &h), &l) in px.iter().zip(hi).zip(lo) {
        let p = i32::from(i16::from(p));
        sh += p * i32::from(h);
        sl += p * i32::from(l);
    }
    (sh << SPLIT) + sl
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

/// Runs `$body` compiled for AVX2 when the CPU has it (the 16- and 32-bit multiply-adds of the
/// hot loops vectorise 8 lanes wide), for the baseline target otherwise. Same integers either way.
macro_rules! with_avx2 {
    ($name:ident, fn($($arg:ident: $ty:ty),*) -> $ret:ty, $inner:ident) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

with_avx2!(
    horizontal,
    fn(src: &Plane8, out_w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Plane8,
    horizontal_impl
);

/// Pillow's `convert("L")` of interleaved RGB (or RGBA, alpha ignored) bytes:
/// `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`.
pub fn rgb_to_l(data: &[u8], channels: usize) -> Vec<u8> {
    assert!(channels == 3 || channels == 4, "rgb_to_l takes RGB or RGBA");
    rgb_to_l_dispatch(data, channels)
}

with_avx2!(
    rgb_to_l_dispatch,
    fn(data: &[u8], channels: usize) -> Vec<u8>,
    rgb_to_l_impl
);

#[inline(always)]
fn rgb_to_l_impl(data: &[u8], channels: usize) -> Vec<u8> {
    if channels == 3 {
        rgb_to_l_n::<3>(data)
    } else {
        rgb_to_l_n::<4>(data)
    }
}

#[inline(always)]
fn rgb_to_l_n<const C: usize>(data: &[u8]) -> Vec<u8> {
    // 38470·g is written as (g << 15) + 5702·g: every multiplier then fits in 15 bits.
    #[inline(always)]
    fn luma(r: u8, g: u8, b: u8) -> u8 {
        let (r, g, b) = (u32::from(r), u32::from(g), u32::from(b));
        ((r * 19595 + (g << 15) + g * 5702 + b * 7471 + 0x8000) >> 16) as u8
    }
    const BLOCK: usize = 16;
    let n = data.len() / C;
    let mut out = vec![0u8; n];
    let blocks = n / BLOCK;
    for (o, p) in out[..blocks * BLOCK]
        .chunks_exact_mut(BLOCK)
        .zip(data.chunks_exact(BLOCK * C))
    {
        // Fixed-size blocks let the compiler de-interleave and vectorise.
        let (mut r, mut g, mut b) = ([0u8; BLOCK], [0u8; BLOCK], [0u8; BLOCK]);
        for i in 0..BLOCK {
            r[i] = p[i * C];
            g[i] = p[i * C + 1];
            b[i] = p[i * C + 2];
        }
        for i in 0..BLOCK {
            o[i] = luma(r[i], g[i], b[i]);
        }
    }
    for i in blocks * BLOCK..n {
        out[i] = luma(data[i * C], data[i * C + 1], data[i * C + 2]);
    }
    out
}

#[inline(always)]
fn horizontal_impl(src: &Plane8, out_w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Plane8 {
    let ch = src.channels;
    let mut data = vec![0u8; rows.len() * out_w * ch];
    for (oy, y) in rows.clone().enumerate() {
        let row = &src.data[y * src.width * ch..(y + 1) * src.width * ch];
        let out = &mut data[oy * out_w * ch..(oy + 1) * out_w * ch];
        for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
            if ch == 1 {
                let taps = xx * c.ksize..xx * c.ksize + xmax;
                let sum = dot_split(&row[xmin..xmin + xmax], &c.hi[taps.clone()], &c.lo[taps]);
                out[xx] = clip8((1i32 << (PRECISION_BITS - 1)) + sum);
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
    Plane8 {
        width: out_w,
        height: rows.len(),
        channels: ch,
        data,
    }
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
    Plane8 {
        width: src.width,
        height: out_h,
        channels: src.channels,
        data,
    }
}

/// Resizes `src` to `out_w`×`out_h` exactly as Pillow's `Image.resize((out_w, out_h), filter)`.
///
/// # Panics
/// If a target side is 0 or `src.data` does not hold `width * height * channels` bytes.
pub fn resize(src: &Plane8, out_w: usize, out_h: usize, filter: Filter) -> Plane8 {
    assert!(
        out_w > 0 && out_h > 0,
        "resize to {out_w}×{out_h}: sides must be positive"
    );
    assert_eq!(
        src.data.len(),
        src.width * src.height * src.channels,
        "plane size mismatch"
    );
    let need_h = out_w != src.width;
    let need_v = out_h != src.height;
    // Pillow runs the vertical pass first when the height shrinks more than twice as much
    // as the width, to make the horizontal pass cheaper.
    let horizontal_first = !(src.height > out_h
        && (src.height - out_h) as i64 > (src.width as i64 - out_w as i64) * 2);
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
                let s: i64 = c.weights[i * c.ksize..i * c.ksize + n]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{n_in}->{n_out} #{i}: {s}"
                );
            }
        }
    }

    #[test]
    fn split_dot_product_equals_the_plain_one() {
        let c = precompute(1920, 32, Filter::Lanczos);
        let px: Vec<u8> = (0..1920u32).map(|i| (i * 37 % 256) as u8).collect();
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let taps = xx * c.ksize..xx * c.ksize + n;
            let plain: i32 = px[xmin..xmin + n]
                .iter()
                .zip(&c.weights[taps.clone()])
                .map(|(&p, &w)| i32::from(p) * w)
                .sum();
            assert_eq!(
                dot_split(&px[xmin..xmin + n], &c.hi[taps.clone()], &c.lo[taps]),
                plain
            );
        }
    }

    #[test]
    fn constant_images_stay_constant_and_identity_is_a_copy() {
        let src = Plane8 {
            width: 97,
            height: 61,
            channels: 3,
            data: vec![200; 97 * 61 * 3],
        };
        for (w, h) in [(32, 32), (200, 13), (97, 30)] {
            let out = resize(&src, w, h, Filter::Lanczos);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.data.iter().all(|&v| v == 200));
        }
        assert_eq!(resize(&src, 97, 61, Filter::Bicubic), src);
    }

    #[test]
    fn rgb_to_l_uses_pillow_rounding() {
        // Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for each c.
        assert_eq!(
            rgb_to_l(&[255, 0, 0, 0, 0, 255, 255, 255, 255, 1, 2, 3], 3),
            vec![76, 29, 255, 2]
        );
        assert_eq!(rgb_to_l(&[255, 0, 0, 9, 0, 0, 255, 9], 4), vec![76, 29]);
    }
}
