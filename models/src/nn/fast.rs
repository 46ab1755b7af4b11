//! Host kernels for the CPU backend (flex, f32) where burn-flex 0.21's own are the bottleneck of
//! the big networks (see docs/ARCHITECTURE.md, "CPU speed"): scaled dot-product attention with
//! a vectorised exponential. The layers call them only when the backend is exactly
//! [`burn::backend::Flex`] holding f32 (not under autodiff, not on a GPU), on the tensors' host
//! data, and fall back to burn's ops everywhere else.
//!
//! Threads: with the `flex-rayon` feature the work is split over rayon's pool (as flex's own
//! kernels); without it, one thread. `IDFORGE_FLEX_KERNELS=0` in the environment turns the
//! host kernels off (burn's own everywhere), for timing the two side by side.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

/// Whether `B` is the flex CPU backend, whose tensors the host kernels read and write, and
/// the kernels are on (`IDFORGE_FLEX_KERNELS` is not `0`).
pub(crate) fn is_flex<B: Backend>() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    TypeId::of::<B>() == TypeId::of::<Flex>()
        && *ON.get_or_init(|| !matches!(std::env::var("IDFORGE_FLEX_KERNELS").as_deref(), Ok("0")))
}

/// Whether the host kernels take `x`: an f32 tensor of the flex backend.
pub(crate) fn applies<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    is_flex::<B>() && x.dtype() == DType::F32
}

/// A flex tensor's storage, contiguous (a copy only where its layout is strided): the kernels
/// read the values in place, weights included, without copying them per call.
fn host_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<FlexTensor> {
    if !applies(&x) {
        return None;
    }
    let primitive: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let flex = primitive.downcast::<FlexTensor>().ok()?;
    Some(
        if flex.is_contiguous() && flex.layout().start_offset() == 0 {
            *flex
        } else {
            flex.to_contiguous()
        },
    )
}

/// A flex tensor's storage as it lies (strided views, e.g. heads split by `swap_dims`, are
/// read in place).
fn host_strided<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<FlexTensor> {
    if !applies(&x) {
        return None;
    }
    let primitive: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    primitive.downcast::<FlexTensor>().ok().map(|t| *t)
}

/// A `[batch, heads, tokens, width]` flex tensor read in place: element `(b, h, n, c)` at
/// `offset + b·sb + h·sh + n·sn + c` of its storage (copied to contiguous first where its
/// strides are not of that form).
struct Heads {
    tensor: FlexTensor,
    offset: usize,
    strides: [usize; 3],
}

impl Heads {
    fn new(tensor: FlexTensor) -> Self {
        let layout = tensor.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        let usable =
            strides.len() == 4 && strides[3] == 1 && strides[..3].iter().all(|&s| s >= 0) && {
                let last = layout.start_offset()
                    + (0..3)
                        .map(|i| shape[i].saturating_sub(1) * strides[i] as usize)
                        .sum::<usize>()
                    + shape[3];
                last <= tensor.storage::<f32>().len()
            };
        let tensor = if usable {
            tensor
        } else {
            tensor.to_contiguous()
        };
        let layout = tensor.layout();
        let st = layout.strides();
        let strides = [st[0] as usize, st[1] as usize, st[2] as usize];
        let offset = layout.start_offset();
        Self {
            tensor,
            offset,
            strides,
        }
    }

    /// Where row `n` of head `h` in batch item `b` starts, and the distance between rows.
    fn rows(&self, b: usize, h: usize) -> (*const f32, usize) {
        let start = self.offset + b * self.strides[0] + h * self.strides[1];
        (
            self.tensor.storage::<f32>()[start..].as_ptr(),
            self.strides[2],
        )
    }
}

/// The f32 values of a tensor from [`host_f32`].
fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().unwrap_or(&[])
}

/// `softmax(q·kᵀ·scale)·v` merged to `[batch, tokens, heads·head_dim]` on the host, or `None`
/// where the fast path does not apply (another backend or dtype): the caller then runs burn's.
///
/// # Shapes
/// `q` `[batch, heads, nq, d]`, `k` `[batch, heads, nk, d]`, `v` `[batch, heads, nk, dv]`.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    causal: bool,
) -> Option<Tensor<B, 3>> {
    if !is_flex::<B>() {
        return None;
    }
    let [b, h, nq, d] = q.dims();
    let [kb, kh, nk, kd] = k.dims();
    let [vb, vh, vn, dv] = v.dims();
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vn) != (b, h, nk) || nk == 0 {
        return None;
    }
    let device = q.device();
    let qs = Heads::new(host_strided(q.clone())?);
    let ks = Heads::new(host_strided(k.clone())?);
    let vs = Heads::new(host_strided(v.clone())?);
    let mut out = vec![0f32; b * nq * h * dv];
    let shape = Shape {
        heads: h,
        nq,
        nk,
        d,
        dv,
        // burn's causal convention: query i sees keys up to i + (nk − nq).
        causal: causal.then_some(nk as isize - nq as isize),
        scale: (d as f32).powf(-0.5),
    };
    attention_host(&qs, &ks, &vs, &mut out, b, &shape);
    Some(Tensor::from_data(
        TensorData::new(out, [b, nq, h * dv]),
        &device,
    ))
}

/// A flex tensor as a burn tensor of `B` (which [`is_flex`] checked is [`Flex`]).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<B::FloatTensorPrimitive>() {
        Ok(p) => Tensor::from_primitive(TensorPrimitive::Float(*p)),
        Err(other) => {
            // Not reached (B is Flex); rebuilt from its data all the same.
            let t = other.downcast::<FlexTensor>().map(|t| t.into_data());
            Tensor::from_data(
                t.unwrap_or_else(|_| TensorData::new(Vec::<f32>::new(), [0])),
                &Default::default(),
            )
        }
    }
}

/// Elements per task of the elementwise kernels: enough work to pay for a rayon task.
const CHUNK: usize = 1 << 14;

/// An activation of [`activation`].
#[derive(Clone, Copy)]
pub(crate) enum Act {
    /// `x·Φ(x)`, `Φ` through [`erf`].
    Gelu,
    /// `x·sigmoid(1.702·x)`.
    QuickGelu,
    /// `x·sigmoid(x)`.
    Silu,
}

/// The activation on the host, in place where `x` is the only holder of its contiguous
/// storage (else on a copy), split over rayon's pool; `Err(x)` back where the fast path does
/// not apply.
pub(crate) fn activation<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    act: Act,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !applies(&x) {
        return Err(x);
    }
    let dims = x.dims();
    let Some(mut t) = host_f32(x) else {
        unreachable!("applies() checked the backend and dtype");
    };
    if !t.is_unique() {
        t = FlexTensor::from_data(TensorData::new(values(&t).to_vec(), dims));
    }
    let n = t.layout().num_elements();
    let data = &mut t.storage_mut::<f32>()[..n];
    let run = |c: &mut [f32]| apply_act(c, act);
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(CHUNK).for_each(run);
    }
    #[cfg(not(feature = "flex-rayon"))]
    run(data);
    Ok(from_flex(t))
}

/// diffusers' GEGLU gating `h · gelu(gate)` of `[h, gate]` (the halves of the last axis) on
/// the host, in one pass; `Err(x)` back where the fast path does not apply.
pub(crate) fn geglu<B: Backend>(x: Tensor<B, 3>) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let [b, n, w] = x.dims();
    if !applies(&x) || !w.is_multiple_of(2) || w == 0 {
        return Err(x);
    }
    let inner = w / 2;
    let device = x.device();
    let Some(t) = host_f32(x) else {
        unreachable!("applies() checked the backend and dtype");
    };
    let input = values(&t);
    let mut out = vec![0f32; b * n * inner];
    let rows_per_task = (CHUNK / inner).max(1);
    let run = |(o, x): (&mut [f32], &[f32])| {
        for (o, x) in o.chunks_exact_mut(inner).zip(x.chunks_exact(w)) {
            o.copy_from_slice(&x[inner..]);
            apply_act(o, Act::Gelu);
            o.iter_mut().zip(&x[..inner]).for_each(|(o, &h)| *o *= h);
        }
    };
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(rows_per_task * inner)
            .zip(input.par_chunks(rows_per_task * w))
            .for_each(run);
    }
    #[cfg(not(feature = "flex-rayon"))]
    out.chunks_mut(rows_per_task * inner)
        .zip(input.chunks(rows_per_task * w))
        .for_each(run);
    Ok(Tensor::from_data(
        TensorData::new(out, [b, n, inner]),
        &device,
    ))
}

/// `torch.nn.Linear` (`x·W + b`, `W` `[in, out]`) on the host: one GEMM over all rows of `x`
/// into an output that starts as the bias, threaded inside the GEMM; `Err(x)` back where the
/// fast path does not apply.
pub(crate) fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let dims = x.dims();
    let [inp, out] = weight.dims();
    let fits = D >= 1
        && applies(&x)
        && applies(weight)
        && bias.is_none_or(|b| applies(b) && b.dims() == [out])
        && dims[D - 1] == inp
        && inp * out > 0;
    if !fits {
        return Err(x);
    }
    let m: usize = dims[..D - 1].iter().product();
    let device = x.device();
    let (Some(xt), Some(wt)) = (host_f32(x), host_f32(weight.clone())) else {
        unreachable!("applies() checked the backend and dtype");
    };
    let bt = bias.and_then(|b| host_f32(b.clone()));
    let (xs, ws, bs) = (values(&xt), values(&wt), bt.as_ref().map(values));
    let mut data = vec![0f32; m * out];
    if let Some(bias) = bs {
        data.chunks_exact_mut(out)
            .for_each(|row| row.copy_from_slice(bias));
    }
    if m > 0 {
        // SAFETY: x is m × inp, W inp × out, the destination m × out, all row-major.
        unsafe {
            gemm::gemm(
                m,
                out,
                inp,
                data.as_mut_ptr(),
                1,
                out as isize,
                bs.is_some(),
                xs.as_ptr(),
                1,
                inp as isize,
                ws.as_ptr(),
                1,
                out as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm_threads(m, out, inp),
            );
        }
    }
    let mut shape = dims;
    shape[D - 1] = out;
    Ok(Tensor::from_data(TensorData::new(data, shape), &device))
}

/// `torch.nn.GroupNorm` (biased variance, affine) on the host in one read for the statistics
/// and one pass for the output; `Err(x)` back where the fast path does not apply.
///
/// # Shapes
/// `x` `[batch, channels, …]`, `weight` and `bias` `[channels]`.
pub(crate) fn group_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    groups: usize,
    eps: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims.get(1).copied().unwrap_or(0));
    let spatial: usize = dims[2..].iter().product();
    if !applies(&x)
        || !applies(&weight)
        || !applies(&bias)
        || D < 2
        || groups == 0
        || !channels.is_multiple_of(groups)
        || spatial == 0
    {
        return Err(x);
    }
    let device = x.device();
    let (Some(xs), Some(ws), Some(bs)) = (host_f32(x), host_f32(weight), host_f32(bias)) else {
        unreachable!("applies() checked the backend and dtype");
    };
    let (input, w, b) = (values(&xs), values(&ws), values(&bs));
    let per_channel = channels / groups;
    let per_group = per_channel * spatial;
    let mut data = vec![0f32; batch * channels * spatial];
    let run = |(i, (out, inp)): (usize, (&mut [f32], &[f32]))| {
        let g = i % groups;
        // Two passes in f64 (mean, then centred squares): torch's result to f32 rounding.
        let mean = inp.iter().map(|&v| f64::from(v)).sum::<f64>() / per_group as f64;
        let var = inp
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / per_group as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (c, (o, x)) in out
            .chunks_exact_mut(spatial)
            .zip(inp.chunks_exact(spatial))
            .enumerate()
        {
            let ch = g * per_channel + c;
            // y = (x − mean)·inv·w + b = x·a + o
            let a = (inv * f64::from(w[ch])) as f32;
            let shift = (f64::from(b[ch]) - mean * inv * f64::from(w[ch])) as f32;
            o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * a + shift);
        }
    };
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(per_group)
            .zip(input.par_chunks(per_group))
            .enumerate()
            .for_each(run);
    }
    #[cfg(not(feature = "flex-rayon"))]
    data.chunks_mut(per_group)
        .zip(input.chunks(per_group))
        .enumerate()
        .for_each(run);
    Ok(Tensor::from_data(TensorData::new(data, dims), &device))
}

/// `torch.nn.functional.conv2d` (groups 1, dilation 1) on the host: im2col straight from the
/// NCHW input (one row per input channel and kernel tap, so the weight `[out, in·kh·kw]` is used
/// as stored) and one GEMM per batch item and tile of output rows, written into the NCHW output
/// with the bias as its initial value; a 1×1 stride-1 convolution is the GEMM on the input
/// itself. `Err(x)` back where the fast path does not apply.
///
/// # Shapes
/// `x` `[batch, in, h, w]`, `weight` `[out, in, kh, kw]`, `bias` `[out]`.
pub(crate) fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [batch, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    let fits = applies(&x)
        && applies(weight)
        && bias.is_none_or(|b| applies(b) && b.dims() == [cout])
        && wcin == cin
        && stride[0] > 0
        && stride[1] > 0
        && h + 2 * padding[0] >= kh
        && w + 2 * padding[1] >= kw
        && batch * cin * cout > 0;
    if !fits {
        return Err(x);
    }
    let oh = (h + 2 * padding[0] - kh) / stride[0] + 1;
    let ow = (w + 2 * padding[1] - kw) / stride[1] + 1;
    let device = x.device();
    let (Some(xt), Some(wt)) = (host_f32(x), host_f32(weight.clone())) else {
        unreachable!("applies() checked the backend and dtype");
    };
    let bt = bias.and_then(|b| host_f32(b.clone()));
    let (xs, ws, bs) = (values(&xt), values(&wt), bt.as_ref().map(values));
    let geometry = ConvGeometry {
        cin,
        h,
        w,
        kh,
        kw,
        stride,
        padding,
        ow,
    };
    let plane = oh * ow;
    let mut out = vec![0f32; batch * cout * plane];
    let k = cin * kh * kw;
    let pointwise = kh == 1 && kw == 1 && stride == [1, 1] && padding == [0, 0];
    // Output rows per GEMM: the im2col tile stays within 16 MiB.
    let tile_rows = if pointwise {
        oh
    } else {
        (4 << 20) / (k * ow).max(1)
    }
    .clamp(1, oh);
    let mut col = Vec::new();
    for b in 0..batch {
        let xb = &xs[b * cin * h * w..][..cin * h * w];
        let ob = &mut out[b * cout * plane..][..cout * plane];
        if let Some(bias) = bs {
            for (row, &v) in ob.chunks_exact_mut(plane).zip(bias) {
                row.fill(v);
            }
        }
        for r0 in (0..oh).step_by(tile_rows) {
            let rows = tile_rows.min(oh - r0);
            let n = rows * ow;
            let (rhs, rhs_rs) = if pointwise {
                (xb.as_ptr(), plane)
            } else {
                col.clear();
                col.resize(k * n, 0.0);
                im2col(xb, &geometry, r0, rows, &mut col);
                (col.as_ptr(), n)
            };
            // SAFETY: W is cout × k, the rhs k × n (rows rhs_rs apart), the destination the
            // cout × n block at column r0·ow of the batch item's cout × plane output.
            unsafe {
                gemm::gemm(
                    cout,
                    n,
                    k,
                    ob.as_mut_ptr().add(r0 * ow),
                    1,
                    plane as isize,
                    bs.is_some(),
                    ws.as_ptr(),
                    1,
                    k as isize,
                    rhs,
                    1,
                    rhs_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm_threads(cout, n, k),
                );
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(out, [batch, cout, oh, ow]),
        &device,
    ))
}

/// A 3×3 average pool, stride 1, zero padding 1 not counted (torch's `avg_pool2d(x, 3, 1, 1,
/// count_include_pad=False)`, TensorFlow's 'SAME'), separably: row sums of three, then sums of
/// three rows, over the count of taps inside the plane. `Err(x)` back where the fast path does
/// not apply.
pub(crate) fn avg_pool_3x3_same<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [batch, channels, h, w] = x.dims();
    if !applies(&x) || h == 0 || w == 0 {
        return Err(x);
    }
    let device = x.device();
    let Some(xt) = host_f32(x) else {
        unreachable!("applies() checked the backend and dtype");
    };
    let input = values(&xt);
    let plane = h * w;
    let mut out = vec![0f32; batch * channels * plane];
    let taps =
        |i: usize, n: usize| (if i > 0 { 2.0 } else { 1.0 }) + f32::from(u8::from(i + 1 < n));
    let run = |(o, x): (&mut [f32], &[f32])| {
        let mut rows = vec![0f32; plane];
        for (r, line) in rows.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
            for j in 0..w {
                let left = if j > 0 { line[j - 1] } else { 0.0 };
                let right = if j + 1 < w { line[j + 1] } else { 0.0 };
                r[j] = left + line[j] + right;
            }
        }
        for i in 0..h {
            let up = i.checked_sub(1).map(|u| &rows[u * w..][..w]);
            let down = (i + 1 < h).then(|| &rows[(i + 1) * w..][..w]);
            let mid = &rows[i * w..][..w];
            let ti = taps(i, h);
            for (j, v) in o[i * w..][..w].iter_mut().enumerate() {
                let s = up.map_or(0.0, |u| u[j]) + mid[j] + down.map_or(0.0, |d| d[j]);
                *v = s / (ti * taps(j, w));
            }
        }
    };
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(plane)
            .zip(input.par_chunks(plane))
            .for_each(run);
    }
    #[cfg(not(feature = "flex-rayon"))]
    out.chunks_mut(plane).zip(input.chunks(plane)).for_each(run);
    Ok(Tensor::from_data(
        TensorData::new(out, [batch, channels, h, w]),
        &device,
    ))
}

/// The GEMM's threads: rayon's pool under `flex-rayon` for products big enough to share (flex's
/// own threshold), else the calling thread.
fn gemm_threads(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    #[cfg(feature = "flex-rayon")]
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 && rayon::current_num_threads() > 1
    {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = (m, n, k);
    gemm::Parallelism::None
}

/// Sizes of one convolution.
struct ConvGeometry {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    ow: usize,
}

/// The im2col block of output rows `r0..r0 + rows`: row `(c·kh + i)·kw + j` holds input
/// channel `c` at tap `(i, j)` for each output position (0 in the padding).
fn im2col(x: &[f32], g: &ConvGeometry, r0: usize, rows: usize, col: &mut [f32]) {
    let n = rows * g.ow;
    let fill = |(row, dst): (usize, &mut [f32])| {
        let c = row / (g.kh * g.kw);
        let (i, j) = (row / g.kw % g.kh, row % g.kw);
        let src = &x[c * g.h * g.w..][..g.h * g.w];
        for (r, out) in dst.chunks_exact_mut(g.ow).enumerate() {
            let ih = ((r0 + r) * g.stride[0] + i) as isize - g.padding[0] as isize;
            if ih < 0 || ih >= g.h as isize {
                out.fill(0.0);
                continue;
            }
            let line = &src[ih as usize * g.w..][..g.w];
            // Output columns whose input column j + o·stride − pad lies inside the line.
            let first = g.padding[1]
                .saturating_sub(j)
                .div_ceil(g.stride[1])
                .min(g.ow);
            let end =
                ((g.w + g.padding[1]).saturating_sub(j).div_ceil(g.stride[1])).clamp(first, g.ow);
            out[..first].fill(0.0);
            out[end..].fill(0.0);
            let start = first * g.stride[1] + j - g.padding[1];
            if g.stride[1] == 1 {
                out[first..end].copy_from_slice(&line[start..start + (end - first)]);
            } else {
                for (o, v) in out[first..end]
                    .iter_mut()
                    .zip(line[start..].iter().step_by(g.stride[1]))
                {
                    *o = *v;
                }
            }
        }
    };
    let rows_of = |c: &mut [f32]| c.len();
    debug_assert_eq!(rows_of(col), g.cin * g.kh * g.kw * n);
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        col.par_chunks_mut(n).enumerate().for_each(fill);
    }
    #[cfg(not(feature = "flex-rayon"))]
    col.chunks_mut(n).enumerate().for_each(fill);
}

/// Sizes of one attention call.
struct Shape {
    heads: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    causal: Option<isize>,
    scale: f32,
}

/// Query rows per task: up to 256 (the GEMM's packing of kᵀ and v, once per task, is then
/// spread over many rows; at 4096 tokens, 16-row tiles spent 15 % more time), fewer where the
/// score tile would pass 4 MiB, in tiles of equal size.
fn query_tile(nq: usize, nk: usize) -> usize {
    let most = ((1 << 20) / nk.max(1)).clamp(16, 256);
    let tiles = nq.div_ceil(most).max(1);
    nq.div_ceil(tiles).max(1)
}

/// A raw pointer the tasks write their disjoint output rows through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes a disjoint set of rows (its batch, head and query tile).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn attention_host(q: &Heads, k: &Heads, v: &Heads, out: &mut [f32], batch: usize, s: &Shape) {
    let tile = query_tile(s.nq, s.nk);
    let tiles = s.nq.div_ceil(tile);
    let tasks = batch * s.heads * tiles;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |task: usize, scores: &mut Vec<f32>| {
        let (bh, t) = (task / tiles, task % tiles);
        let (bi, hi) = (bh / s.heads, bh % s.heads);
        let q0 = t * tile;
        let rows = tile.min(s.nq - q0);
        let (qh, q_rs) = q.rows(bi, hi);
        // SAFETY: Heads::new checked that every row of the tensor lies in its storage.
        let qh = (unsafe { qh.add(q0 * q_rs) }, q_rs);
        let (kh, vh) = (k.rows(bi, hi), v.rows(bi, hi));
        let row_stride = s.heads * s.dv;
        // SAFETY: rows q0..q0+rows of head hi in batch bi belong to this task only.
        let dst = unsafe { out_ptr.get().add((bi * s.nq + q0) * row_stride + hi * s.dv) };
        tile_attention(qh, kh, vh, dst, row_stride, rows, q0, s, scores);
    };
    #[cfg(feature = "flex-rayon")]
    {
        use rayon::prelude::*;
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |scores, task| run(task, scores));
    }
    #[cfg(not(feature = "flex-rayon"))]
    {
        let mut scores = Vec::new();
        (0..tasks).for_each(|task| run(task, &mut scores));
    }
}

/// One query tile of one head: scores by GEMM, softmax in place, then `P·v` by GEMM into the
/// output rows (`dst`, rows `row_stride` apart).
#[allow(clippy::too_many_arguments)]
fn tile_attention(
    q: (*const f32, usize),
    k: (*const f32, usize),
    v: (*const f32, usize),
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    q0: usize,
    s: &Shape,
    scores: &mut Vec<f32>,
) {
    let nk = s.nk;
    scores.clear();
    scores.resize(rows * nk, 0.0);
    // SAFETY: q has `rows` rows of d values, k nk rows of d, v nk rows of dv, each pointer with
    // its row stride, inside their storage (Heads::new).
    unsafe {
        // scores = scale · q · kᵀ
        gemm::gemm(
            rows,
            nk,
            s.d,
            scores.as_mut_ptr(),
            1,
            nk as isize,
            false,
            q.0,
            1,
            q.1 as isize,
            k.0,
            k.1 as isize,
            1,
            0.0,
            s.scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    let mut inv_sums = vec![0f32; rows];
    for (i, row) in scores.chunks_exact_mut(nk).enumerate() {
        let visible = match s.causal {
            Some(offset) => (q0 as isize + i as isize + offset + 1).clamp(0, nk as isize) as usize,
            None => nk,
        };
        let sum = softmax_numerators(&mut row[..visible]);
        row[visible..].fill(0.0);
        inv_sums[i] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    }
    // SAFETY: dst has `rows` rows of dv values `row_stride` apart (see attention_host).
    unsafe {
        gemm::gemm(
            rows,
            s.dv,
            nk,
            dst,
            1,
            row_stride as isize,
            false,
            scores.as_ptr(),
            1,
            nk as isize,
            v.0,
            1,
            v.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
        for (i, inv) in inv_sums.iter().enumerate() {
            let row = std::slice::from_raw_parts_mut(dst.add(i * row_stride), s.dv);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Replaces `row` by `exp(row − max(row))` and returns its sum (0 for an empty row), with the
/// AVX2/FMA code path where the CPU has it.
fn softmax_numerators(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_numerators_avx2(row) };
    }
    softmax_numerators_generic(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_numerators_avx2(row: &mut [f32]) -> f32 {
    softmax_numerators_generic(row)
}

/// Lanes of the reductions: eight independent accumulators, which the compiler keeps in one
/// vector register.
const LANES: usize = 8;

#[inline(always)]
fn softmax_numerators_generic(row: &mut [f32]) -> f32 {
    if row.is_empty() {
        return 0.0;
    }
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for m in maxes {
        max = if m > max { m } else { max };
    }
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return 0.0;
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum + sums.iter().sum::<f32>()
}

/// [`Act`] over a slice in place, with the AVX2/FMA code path where the CPU has it.
fn apply_act(x: &mut [f32], act: Act) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { apply_act_avx2(x, act) };
    }
    apply_act_generic(x, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_act_avx2(x: &mut [f32], act: Act) {
    apply_act_generic(x, act)
}

#[inline(always)]
fn apply_act_generic(x: &mut [f32], act: Act) {
    match act {
        Act::Gelu => x
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
        Act::QuickGelu => x.iter_mut().for_each(|v| *v *= sigmoid(1.702 * *v)),
        Act::Silu => x.iter_mut().for_each(|v| *v *= sigmoid(*v)),
    }
}

/// `1 / (1 + e⁻ˣ)` through [`exp`] (its argument kept ≤ 88, where the result is 0 to f32).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp((-x).min(88.0)))
}

/// `erf(z)` in f32 to about 2 ulp, branch-free so that it vectorises: `z·P(z²)` below 1,
/// `1 − e^(−z²)·Q(1/z)` above (clamped at 4, where `erf` is 1 to f32); `P` and `Q` are
/// least-squares fits to f64's `erf` / `erfc(z)·e^(z²)`.
#[inline(always)]
#[allow(clippy::approx_constant)]
pub(crate) fn erf(z: f32) -> f32 {
    let a = z.abs();
    let s = z * z;
    let mut p = -5.625_399e-4f32;
    p = p * s + 4.916_026_7e-3;
    p = p * s - 2.670_995_5e-2;
    p = p * s + 1.128_013_1e-1;
    p = p * s - 3.761_232e-1;
    // The fitted constant term, one ulp below 2/√π (which moves the fit's error by ~1e-7).
    p = p * s + 1.128_379_1;
    let small = z * p;
    let zc = a.clamp(0.95, 4.0);
    let t = 1.0 / zc;
    let mut q = -7.227_972e-3f32;
    q = q * t + 1.850_007_5e-2;
    q = q * t + 4.297_804e-2;
    q = q * t - 2.621_616_4e-1;
    q = q * t + 5.097_74e-1;
    q = q * t - 4.766_027e-1;
    q = q * t + 4.314_230_8e-2;
    q = q * t + 5.589_045e-1;
    q = q * t + 2.770_814_5e-4;
    let large = (1.0 - exp(-zc * zc) * q).copysign(z);
    if a < 1.0 { small } else { large }
}

/// `eˣ` in f32 to about 1 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`,
/// times `2ⁿ` from the exponent bits), branch-free so that it vectorises; 0 below −87.3
/// (where `eˣ` leaves the normal range), so that −∞ gives 0. Only for `x ≤ 88`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding it rounds to an integer, held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MIN: f32 = -87.336_55;
    let xc = x.max(MIN);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    let bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    let e = y * f32::from_bits(bits);
    if x < MIN { 0.0 } else { e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        for i in -8730..=880 {
            let x = i as f32 * 0.01 + 0.003;
            let (got, want) = (exp(x), x.exp());
            assert!(((got - want) / want).abs() < 2.5e-7, "{x}: {got} vs {want}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_is_within_two_ulp_of_one_and_accurate_near_zero() {
        for i in -6000..=6000 {
            let z = i as f32 * 1e-3 + 1e-4;
            let want = libm_erf(f64::from(z));
            let got = f64::from(erf(z));
            let tol = 1.2e-7f64.max(want.abs() * 2.5e-7);
            assert!((got - want).abs() < tol, "{z}: {got} vs {want}");
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(30.0), 1.0);
        assert_eq!(erf(-30.0), -1.0);
    }

    /// f64 `erf` by its Taylor series below 3 and the continued fraction of `erfc` above.
    fn libm_erf(z: f64) -> f64 {
        let a = z.abs();
        let v = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = f64::from(k) / 2.0 / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(z)
    }

    #[test]
    fn linear_matches_burns_with_and_without_bias() {
        use burn::tensor::Distribution;
        use burn::tensor::module::linear as burn_linear;
        let d = Default::default();
        let x = Tensor::<Flex, 3>::random([2, 7, 33], Distribution::Normal(0., 1.), &d);
        let w = Tensor::<Flex, 2>::random([33, 19], Distribution::Normal(0., 1.), &d);
        let b = Tensor::<Flex, 1>::random([19], Distribution::Normal(0., 1.), &d);
        for bias in [None, Some(&b)] {
            let want = burn_linear(x.clone(), w.clone(), bias.cloned());
            let got = linear(x.clone(), &w, bias).unwrap_or_else(|_| panic!("flex f32 takes it"));
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "bias {}: {diff}", bias.is_some());
        }
        // A strided input (a transposed view) is read as its values, not its storage order.
        let xt = Tensor::<Flex, 2>::random([33, 5], Distribution::Normal(0., 1.), &d).transpose();
        let want = burn_linear(xt.clone(), w.clone(), None);
        let got = linear(xt, &w, None).unwrap_or_else(|_| panic!("flex f32 takes it"));
        assert!((got - want).abs().max().into_scalar() < 1e-4);
    }

    #[test]
    fn average_pool_matches_burns() {
        use burn::tensor::Distribution;
        use burn::tensor::module::avg_pool2d;
        let d = Default::default();
        for (h, w) in [(5, 7), (1, 1), (2, 3)] {
            let x = Tensor::<Flex, 4>::random([2, 3, h, w], Distribution::Normal(0., 1.), &d);
            let want = avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false);
            let got = avg_pool_3x3_same(x).unwrap_or_else(|_| panic!("flex f32 takes the kernel"));
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-6, "{h}x{w}: {diff}");
        }
    }

    #[test]
    fn conv_matches_burns_with_padding_and_strides() {
        use burn::tensor::Distribution;
        use burn::tensor::module::conv2d as burn_conv2d;
        use burn::tensor::ops::ConvOptions;
        let d = Default::default();
        for (k, s, p, (h, w)) in [
            ([3, 3], [1, 1], [1, 1], (6, 5)),
            ([3, 3], [2, 2], [1, 1], (7, 6)),
            ([1, 7], [1, 1], [0, 3], (5, 9)),
            ([7, 1], [1, 1], [3, 0], (9, 4)),
            ([1, 1], [1, 1], [0, 0], (4, 4)),
            ([3, 3], [2, 2], [0, 0], (9, 9)),
            ([4, 4], [4, 4], [0, 0], (8, 12)),
        ] {
            let x = Tensor::<Flex, 4>::random([2, 5, h, w], Distribution::Normal(0., 1.), &d);
            let wt =
                Tensor::<Flex, 4>::random([6, 5, k[0], k[1]], Distribution::Normal(0., 1.), &d);
            let b = Tensor::<Flex, 1>::random([6], Distribution::Normal(0., 1.), &d);
            let want = burn_conv2d(
                x.clone(),
                wt.clone(),
                Some(b.clone()),
                ConvOptions::new(s, p, [1, 1], 1),
            );
            let got = conv2d(x, &wt, Some(&b), s, p)
                .unwrap_or_else(|_| panic!("flex f32 takes the kernel"));
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{k:?} {s:?} {p:?}: {diff}");
        }
    }

    #[test]
    fn attention_matches_the_formula_on_strided_heads_and_causal() {
        use burn::tensor::Distribution;
        use burn::tensor::activation::softmax;
        let d = Default::default();
        // q, k, v as narrow views of one packed projection, split into heads (strided).
        let qkv = Tensor::<Flex, 3>::random([2, 9, 3 * 8], Distribution::Normal(0., 1.), &d);
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i * 8, 8)
                .reshape([2, 9, 2, 4])
                .swap_dims(1, 2)
        };
        for causal in [false, true] {
            let got = attention(&part(0), &part(1), &part(2), causal)
                .unwrap_or_else(|| panic!("flex f32 takes the kernel"));
            let mut scores = part(0).matmul(part(1).swap_dims(2, 3)) / 2.0;
            if causal {
                let mask = Tensor::<Flex, 2>::ones([9, 9], &d).triu(1) * -1e30;
                scores = scores + mask.unsqueeze::<4>();
            }
            let want = softmax(scores, 3)
                .matmul(part(2))
                .swap_dims(1, 2)
                .reshape([2, 9, 8]);
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "causal {causal}: {diff}");
        }
    }

    #[test]
    fn softmax_numerators_handle_remainders_and_masked_rows() {
        let mut row: Vec<f32> = (0..11).map(|i| i as f32 * 0.3 - 1.0).collect();
        let want: Vec<f32> = row.iter().map(|x| (x - 2.0).exp()).collect();
        let sum = softmax_numerators(&mut row);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{row:?} vs {want:?}");
        }
        assert!((sum - want.iter().sum::<f32>()).abs() < 1e-5);
        let mut masked = [f32::NEG_INFINITY; 3];
        assert_eq!(softmax_numerators(&mut masked), 0.0);
        assert_eq!(masked, [0.0; 3]);
    }
}
