//! The diffusion training loss, as the reference trainers compute it: noise added with the DDPM
//! schedule (diffusers' `add_noise`, float32), an ε or v target by the scheduler config's
//! `prediction_type`, mean squared error; optionally IP-Adapter's noise offset
//! (`tutorial_train_sdxl.py`: `noise += offset · randn(B, C, 1, 1)`), min-SNR-γ weighting
//! (diffusers' `train_text_to_image.py` with `training_utils.compute_snr`) and persongen's
//! masked loss (`src/model/*/model.py` + `src/loss/diffusion_loss.py`: prediction and target
//! cropped per sample to the face box `// 8`, MSE per sample, then the mean).
//!
//! Randomness (noise, offset noise, timesteps, whether this step masks) is drawn by the caller
//! and passed in, so that a step can be replayed exactly.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_diffusion::{DdpmSchedule, Prediction};

use crate::error::TrainError;

/// The loss options beyond plain MSE.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossConfig {
    /// IP-Adapter SDXL's `--noise_offset` (0: none): the per-channel offset noise is scaled by
    /// it and added to the noise, target included.
    pub noise_offset: f32,
    /// Min-SNR-γ weighting (`--snr_gamma`, 5 in the paper); `None`: unweighted.
    pub snr_gamma: Option<f32>,
}

/// The random draws of one batch, made by the caller (seeded, replayable).
#[derive(Debug, Clone)]
pub struct NoiseDraw<B: Backend> {
    /// ε, `[batch, channels, h, w]`.
    pub noise: Tensor<B, 4>,
    /// `randn(batch, channels)` for the noise offset (used when the offset is non-zero).
    pub offset_noise: Option<Tensor<B, 2>>,
    /// One training timestep per sample, `0 ≤ t < num_train_timesteps`.
    pub timesteps: Vec<usize>,
}

impl<B: Backend> NoiseDraw<B> {
    /// The same draws on `device` (a data-parallel replica's).
    pub fn to_device(&self, device: &B::Device) -> Self {
        NoiseDraw {
            noise: self.noise.clone().to_device(device),
            offset_noise: self.offset_noise.clone().map(|t| t.to_device(device)),
            timesteps: self.timesteps.clone(),
        }
    }
}

/// The UNet's input and what it should predict.
#[derive(Debug, Clone)]
pub struct Noised<B: Backend> {
    /// `√ᾱₜ·x₀ + √(1−ᾱₜ)·ε`.
    pub noisy: Tensor<B, 4>,
    /// ε, the velocity `√ᾱₜ·ε − √(1−ᾱₜ)·x₀`, or x₀, by the schedule's prediction type.
    pub target: Tensor<B, 4>,
}

/// Noises clean latents `x₀` (`[batch, c, h, w]`) with `draw` and gives the target; the noise
/// offset, when set, changes ε before both (as IP-Adapter's SDXL script does).
pub fn noised<B: Backend>(
    schedule: &DdpmSchedule,
    config: &LossConfig,
    latents: Tensor<B, 4>,
    draw: &NoiseDraw<B>,
) -> Result<Noised<B>, TrainError> {
    let [b, c, _, _] = latents.dims();
    if draw.noise.dims() != latents.dims() {
        return Err(TrainError::Setting(format!(
            "noise of shape {:?} for latents of shape {:?}",
            draw.noise.dims(),
            latents.dims()
        )));
    }
    check_timesteps(schedule, &draw.timesteps, b)?;
    let mut noise = draw.noise.clone();
    if config.noise_offset != 0.0 {
        let offset = draw.offset_noise.clone().ok_or_else(|| {
            TrainError::Setting(
                "a noise offset is set but the batch has no offset noise `[batch, channels]`"
                    .into(),
            )
        })?;
        if offset.dims() != [b, c] {
            return Err(TrainError::Setting(format!(
                "offset noise of shape {:?}, the latents need [{b}, {c}]",
                offset.dims()
            )));
        }
        noise = noise + offset.reshape([b, c, 1, 1]) * config.noise_offset;
    }
    let noisy = schedule.add_noise(latents.clone(), noise.clone(), &draw.timesteps);
    let target = schedule.target(latents, noise, &draw.timesteps);
    Ok(Noised { noisy, target })
}

fn check_timesteps(schedule: &DdpmSchedule, t: &[usize], batch: usize) -> Result<(), TrainError> {
    if t.len() != batch {
        return Err(TrainError::Setting(format!(
            "{} timesteps for a batch of {batch}",
            t.len()
        )));
    }
    if let Some(bad) = t.iter().find(|&&t| t >= schedule.len()) {
        return Err(TrainError::Setting(format!(
            "timestep {bad} is outside the schedule's 0..{}",
            schedule.len()
        )));
    }
    Ok(())
}

/// Min-SNR-γ loss weights per sample, in diffusers' float32 arithmetic: `snr = (√ᾱ/√(1−ᾱ))²`,
/// `min(snr, γ) / snr` for ε, `/ (snr + 1)` for v (and `min(snr, γ)` for x₀).
pub fn min_snr_weights(schedule: &DdpmSchedule, timesteps: &[usize], gamma: f32) -> Vec<f32> {
    timesteps
        .iter()
        .map(|&t| {
            let a = schedule.alphas_cumprod[t];
            let alpha = a.sqrt();
            let sigma = (1.0f32 - a).sqrt();
            let snr = (alpha / sigma).powi(2);
            let w = snr.min(gamma);
            match schedule.prediction {
                Prediction::Epsilon => w / snr,
                Prediction::VPrediction => w / (snr + 1.0),
                Prediction::Sample => w,
            }
        })
        .collect()
}

/// A face box `[x0, y0, x1, y1]` in image pixels as rows `y0/8..y1/8` and columns `x0/8..x1/8`
/// of `height × width` latents (persongen: `int(v // 8)`, Python slicing clamps the end).
pub fn latent_box(
    sample: usize,
    face_box: [f32; 4],
    height: usize,
    width: usize,
) -> Result<[std::ops::Range<usize>; 2], TrainError> {
    let empty = || TrainError::EmptyFaceBox {
        sample,
        face_box,
        height,
        width,
    };
    if face_box.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(empty());
    }
    let q = |v: f32| (v / 8.0).floor() as usize;
    let (x0, y0) = (q(face_box[0]), q(face_box[1]));
    let (x1, y1) = (q(face_box[2]).min(width), q(face_box[3]).min(height));
    if x0 >= x1 || y0 >= y1 {
        return Err(empty());
    }
    Ok([y0..y1, x0..x1])
}

/// The loss of a prediction against its target (`[batch, c, h, w]`).
///
/// - Plain: `mean((pred − target)²)` over everything (`F.mse_loss`).
/// - With `face_boxes` (one per sample, pixels): the per-sample MSE over the box's latents.
/// - With min-SNR: per-sample MSE times the sample's weight.
///
/// Per-sample terms are averaged over the batch.
pub fn diffusion_loss<B: Backend>(
    schedule: &DdpmSchedule,
    config: &LossConfig,
    prediction: Tensor<B, 4>,
    target: Tensor<B, 4>,
    timesteps: &[usize],
    face_boxes: Option<&[[f32; 4]]>,
) -> Result<Tensor<B, 1>, TrainError> {
    let [b, _, h, w] = prediction.dims();
    if b == 0 {
        return Err(TrainError::Setting("an empty batch has no loss".into()));
    }
    if target.dims() != prediction.dims() {
        return Err(TrainError::Setting(format!(
            "target of shape {:?} for a prediction of shape {:?}",
            target.dims(),
            prediction.dims()
        )));
    }
    check_timesteps(schedule, timesteps, b)?;
    let weights = config
        .snr_gamma
        .map(|g| min_snr_weights(schedule, timesteps, g));
    match (face_boxes, weights) {
        (None, None) => Ok((prediction - target).square().mean()),
        (None, Some(weights)) => {
            let per_sample = (prediction - target)
                .square()
                .reshape([b as i32, -1])
                .mean_dim(1)
                .reshape([b]);
            let w = Tensor::<B, 1>::from_floats(weights.as_slice(), &per_sample.device());
            Ok((per_sample * w).mean())
        }
        (Some(boxes), weights) => {
            if boxes.len() != b {
                return Err(TrainError::Setting(format!(
                    "{} face boxes for a batch of {b}",
                    boxes.len()
                )));
            }
            let mut total: Option<Tensor<B, 1>> = None;
            for (i, face_box) in boxes.iter().enumerate() {
                let [rows, cols] = latent_box(i, *face_box, h, w)?;
                let p = prediction.clone().slice([
                    i..i + 1,
                    0..prediction.dims()[1],
                    rows.clone(),
                    cols.clone(),
                ]);
                let t = target
                    .clone()
                    .slice([i..i + 1, 0..target.dims()[1], rows, cols]);
                let mut term = (p - t).square().mean();
                if let Some(w) = &weights {
                    term = term * w[i];
                }
                total = Some(match total {
                    None => term,
                    Some(acc) => acc + term,
                });
            }
            match total {
                Some(total) => Ok(total / b as f32),
                None => Err(TrainError::Setting("an empty batch has no loss".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_box_floors_and_clamps_like_python_slicing() {
        let [r, c] = latent_box(0, [41.5, 8.0, 127.0, 71.9], 16, 16).unwrap();
        assert_eq!((r, c), (1..8, 5..15));
        let [r, c] = latent_box(0, [33.0, 60.0, 200.0, 128.0], 16, 16).unwrap();
        assert_eq!((r, c), (7..16, 4..16));
        assert!(matches!(
            latent_box(3, [10.0, 10.0, 14.0, 40.0], 16, 16),
            Err(TrainError::EmptyFaceBox { sample: 3, .. })
        ));
        assert!(latent_box(0, [-8.0, 0.0, 40.0, 40.0], 16, 16).is_err());
    }
}
