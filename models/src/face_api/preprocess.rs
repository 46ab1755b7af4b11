//! Input tensors as face-api builds them (`dom/NetInput.ts` `toBatchTensor`,
//! `ops/padToSquare.ts`): zero-pad the image to a square, then tfjs `resizeBilinear` with
//! `alignCorners = false`, `halfPixelCenters = false`, in float32.

/// An RGB image, 8 bits per channel, rows contiguous.
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: &'a [u8],
}

/// A rectangle in whole pixels, e.g. a face crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    /// Left.
    pub x: usize,
    /// Top.
    pub y: usize,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

/// The RGB bytes of `rect` (`tf.slice3d` in `dom/extractFaceTensors.ts`).
///
/// # Panics
/// If `rect` is not inside the image.
pub fn crop(img: RgbView<'_>, rect: PixelRect) -> Vec<u8> {
    assert!(
        rect.x + rect.width <= img.width && rect.y + rect.height <= img.height,
        "crop {rect:?} outside the image"
    );
    let mut data = Vec::with_capacity(rect.width * rect.height * 3);
    for row in rect.y..rect.y + rect.height {
        data.extend_from_slice(
            &img.data[(row * img.width + rect.x) * 3..(row * img.width + rect.x + rect.width) * 3],
        );
    }
    data
}

/// The normalised `[1, 3, size, size]` input of the face nets (landmarks, descriptor): the
/// crop padded to a square centred, resized, `(x − mean) / 255`.
pub fn face_input<B: burn::tensor::backend::Backend>(
    crop: RgbView<'_>,
    size: usize,
    mean_rgb: [f32; 3],
    device: &B::Device,
) -> burn::tensor::Tensor<B, 4> {
    let mut hwc = to_square_input(crop, size, true);
    normalize_in_place(&mut hwc, mean_rgb);
    burn::tensor::Tensor::<B, 3>::from_data(
        burn::tensor::TensorData::new(hwc, [size, size, 3]),
        device,
    )
    .permute([2, 0, 1])
    .unsqueeze()
}

/// [`face_input`] of the crop `rect` of `img` (the landmark and descriptor nets' input for one
/// face).
pub fn face_input_at<B: burn::tensor::backend::Backend>(
    img: RgbView<'_>,
    rect: PixelRect,
    size: usize,
    mean_rgb: [f32; 3],
    device: &B::Device,
) -> burn::tensor::Tensor<B, 4> {
    let data = crop(img, rect);
    let view = RgbView {
        width: rect.width,
        height: rect.height,
        data: &data,
    };
    face_input(view, size, mean_rgb, device)
}

/// The size of the image inside the network input, as `computeReshapedDimensions` rounds it.
pub fn reshaped_dims(width: usize, height: usize, input_size: usize) -> (usize, usize) {
    let scale = input_size as f64 / width.max(height) as f64;
    (
        js_round(width as f64 * scale) as usize,
        js_round(height as f64 * scale) as usize,
    )
}

/// JavaScript's `Math.round` (halves towards +∞).
pub(crate) fn js_round(x: f64) -> f64 {
    (x + 0.5).floor()
}

/// The network input before normalisation: `[size, size, 3]` float32 (NHWC without the batch
/// axis). `center` pads both sides of the short axis (`round(diff/2)` after the image, the rest
/// before) as the landmark and recognition nets do; otherwise only the bottom or right.
pub fn to_square_input(img: RgbView<'_>, size: usize, center: bool) -> Vec<f32> {
    assert_eq!(
        img.data.len(),
        img.width * img.height * 3,
        "RGB buffer size"
    );
    let side = img.width.max(img.height);
    let diff = side - img.width.min(img.height);
    let after = js_round(diff as f64 * if center { 0.5 } else { 1.0 }) as usize;
    let before = diff - after;
    let (off_x, off_y) = if img.height > img.width {
        (before, 0)
    } else {
        (0, before)
    };
    // Value of the padded square at (row, col, channel).
    let at = |r: usize, c: usize, ch: usize| -> f64 {
        let (y, x) = (r as isize - off_y as isize, c as isize - off_x as isize);
        if y < 0 || x < 0 || y as usize >= img.height || x as usize >= img.width {
            0.0
        } else {
            f64::from(img.data[(y as usize * img.width + x as usize) * 3 + ch])
        }
    };
    if side == size {
        let mut out = Vec::with_capacity(size * size * 3);
        for r in 0..size {
            for c in 0..size {
                for ch in 0..3 {
                    out.push(at(r, c, ch) as f32);
                }
            }
        }
        return out;
    }
    // tfjs-backend-cpu resizeBilinear, legacy mode: source = scale · dst; doubles inside, the
    // result stored as float32.
    let scale = side as f64 / size as f64;
    let mut out = vec![0f32; size * size * 3];
    for r in 0..size {
        let fy = scale * r as f64;
        let y0 = fy.floor().max(0.0) as usize;
        let dy = fy - y0 as f64;
        let y1 = (fy.ceil() as usize).min(side - 1);
        for c in 0..size {
            let fx = scale * c as f64;
            let x0 = fx.floor().max(0.0) as usize;
            let dx = fx - x0 as f64;
            let x1 = (fx.ceil() as usize).min(side - 1);
            for ch in 0..3 {
                let (tl, tr, bl, br) = (
                    at(y0, x0, ch),
                    at(y0, x1, ch),
                    at(y1, x0, ch),
                    at(y1, x1, ch),
                );
                let top = tl + (tr - tl) * dx;
                let bottom = bl + (br - bl) * dx;
                out[(r * size + c) * 3 + ch] = (top + (bottom - top) * dy) as f32;
            }
        }
    }
    out
}

/// `ops/normalize.ts` then `div(255)`: `(x − mean) / 255` per channel, each step in float32.
pub fn normalize_in_place(x: &mut [f32], mean_rgb: [f32; 3]) {
    for px in x.chunks_exact_mut(3) {
        for (v, m) in px.iter_mut().zip(mean_rgb) {
            *v = (*v - m) / 255.0;
        }
    }
}
