//! The noise schedule for training (DDPM: which noise level each timestep has, the noisy
//! input and the target) and the two samplers `idforge generate` offers (DDIM, Euler discrete),
//! following diffusers' `DDPMScheduler`, `DDIMScheduler` and `EulerDiscreteScheduler`
//! (diffusers 0.3x) down to their float32 arithmetic, so that a sampling loop ends where
//! diffusers' does.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;

use crate::config::read_config;
use crate::error::DiffusionError;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (SD1.5, SDXL).
    Epsilon,
    /// The velocity `√ᾱ·ε − √(1−ᾱ)·x₀` (SD2 768, many fine-tunes).
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

/// How the sampling timesteps are spread over the training range (diffusers'
/// `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    /// `0, r, 2r, …` reversed, plus `steps_offset` (SD1.5, SDXL).
    Leading,
    /// From the last training step down, `1000 − 1, 1000 − r − 1, …`.
    Trailing,
    /// Evenly from 0 to 999 (rounded for DDIM).
    Linspace,
}

/// The `scheduler_config.json` keys the schedules share (diffusers' defaults otherwise).
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleConfig {
    /// Training steps (1000).
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    /// First β.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// Last β.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// `scaled_linear` (Stable Diffusion) or `linear`.
    #[serde(default = "linear_str")]
    pub beta_schedule: String,
    /// What the model predicts.
    #[serde(default = "epsilon")]
    pub prediction_type: Prediction,
    /// Added to leading timesteps (SD: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// Spreading of the sampling timesteps.
    #[serde(default = "leading")]
    pub timestep_spacing: Spacing,
    /// DDIM: whether the step past t = 0 uses ᾱ = 1 (else ᾱ₀).
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted x₀ to ±`clip_sample_range` (DDIM's default when the folder's
    /// config, e.g. a PNDM one, does not say).
    #[serde(default = "yes")]
    pub clip_sample: bool,
    /// See `clip_sample`.
    #[serde(default = "one_f")]
    pub clip_sample_range: f64,
    /// Options of other sigma schedules, refused when set (see [`ScheduleConfig::check`]).
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Refused when true.
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Refused when true.
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Refused when true.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Refused when true.
    #[serde(default)]
    pub thresholding: bool,
    /// Refused unless `linear`.
    #[serde(default)]
    pub interpolation_type: Option<String>,
    /// Refused unless `zero`.
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    /// Refused when set to anything but null.
    #[serde(default)]
    pub trained_betas: Option<serde_json::Value>,
    /// The scheduler class the folder names (informational: any class's betas serve both
    /// samplers).
    #[serde(default, rename = "_class_name")]
    pub class_name: Option<String>,
}

impl Default for ScheduleConfig {
    /// Stable Diffusion's schedule (scaled-linear β from 0.00085 to 0.012, 1000 steps,
    /// ε-prediction, leading spacing with offset 1).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: Prediction::Epsilon,
            steps_offset: 1,
            timestep_spacing: Spacing::Leading,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            rescale_betas_zero_snr: false,
            thresholding: false,
            interpolation_type: None,
            final_sigmas_type: None,
            trained_betas: None,
            class_name: None,
        }
    }
}

impl ScheduleConfig {
    /// Reads `scheduler/scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, DiffusionError> {
        read_config(path, Self::check)
    }

    /// Refuses the options this port does not implement, naming them.
    pub fn check(&self) -> Result<(), String> {
        for (set, key) in [
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.rescale_betas_zero_snr, "rescale_betas_zero_snr"),
            (self.thresholding, "thresholding"),
            (
                self.trained_betas.as_ref().is_some_and(|v| !v.is_null()),
                "trained_betas",
            ),
        ] {
            if set {
                return Err(format!(
                    "`{key}` is not supported by idforge's samplers; set it to its default"
                ));
            }
        }
        if self
            .interpolation_type
            .as_deref()
            .is_some_and(|t| t != "linear")
        {
            return Err("only `interpolation_type` \"linear\" is supported".into());
        }
        if self
            .final_sigmas_type
            .as_deref()
            .is_some_and(|t| t != "zero")
        {
            return Err("only `final_sigmas_type` \"zero\" is supported".into());
        }
        if self.beta_schedule != "scaled_linear" && self.beta_schedule != "linear" {
            return Err(format!(
                "beta_schedule `{}` is not supported (scaled_linear, linear)",
                self.beta_schedule
            ));
        }
        if self.num_train_timesteps < 2 {
            return Err("num_train_timesteps must be at least 2".into());
        }
        Ok(())
    }

    /// ᾱₜ for every training step, as diffusers computes them: β in float32 (torch's
    /// `linspace` kernel, which fills the second half from the end), cumulative product
    /// accumulated in float64 and stored in float32 (torch's CPU `cumprod`).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let (start, end) = match self.beta_schedule.as_str() {
            "linear" => (self.beta_start as f32, self.beta_end as f32),
            _ => (self.beta_start.sqrt() as f32, self.beta_end.sqrt() as f32),
        };
        let step = (end - start) / (n - 1) as f32;
        let halfway = n / 2;
        let betas = (0..n).map(|i| {
            let v = if i < halfway {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            };
            if self.beta_schedule == "linear" {
                v
            } else {
                v * v
            }
        });
        let mut acc = 1f64;
        betas
            .map(|b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect()
    }
}

/// The training side: noising clean latents at a timestep and the target the UNet learns.
#[derive(Debug, Clone)]
pub struct DdpmSchedule {
    /// ᾱₜ.
    pub alphas_cumprod: Vec<f32>,
    /// What the UNet predicts.
    pub prediction: Prediction,
}

impl DdpmSchedule {
    /// The schedule of a config.
    pub fn new(config: &ScheduleConfig) -> Self {
        Self {
            alphas_cumprod: config.alphas_cumprod(),
            prediction: config.prediction_type,
        }
    }

    /// Training steps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false: a schedule has at least two steps.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `(√ᾱₜ, √(1−ᾱₜ))` per timestep, `[batch, 1, 1, 1]`.
    fn coefficients<B: Backend>(
        &self,
        t: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let a: Vec<f32> = t.iter().map(|&t| self.alphas_cumprod[t].sqrt()).collect();
        let s: Vec<f32> = t
            .iter()
            .map(|&t| (1.0f32 - self.alphas_cumprod[t]).sqrt())
            .collect();
        let n = t.len();
        let col =
            |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([n, 1, 1, 1]);
        (col(a), col(s))
    }

    /// diffusers' `add_noise`: `√ᾱₜ·x₀ + √(1−ᾱₜ)·ε`, one timestep per batch item.
    pub fn add_noise<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: &[usize],
    ) -> Tensor<B, 4> {
        let (a, s) = self.coefficients::<B>(t, &x0.device());
        x0 * a + noise * s
    }

    /// diffusers' `get_velocity`: `√ᾱₜ·ε − √(1−ᾱₜ)·x₀`.
    pub fn velocity<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: &[usize],
    ) -> Tensor<B, 4> {
        let (a, s) = self.coefficients::<B>(t, &x0.device());
        noise * a - x0 * s
    }

    /// What the UNet should output for this noise: ε, the velocity, or x₀.
    pub fn target<B: Backend>(
        &self,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: &[usize],
    ) -> Tensor<B, 4> {
        match self.prediction {
            Prediction::Epsilon => noise,
            Prediction::VPrediction => self.velocity(x0, noise, t),
            Prediction::Sample => x0,
        }
    }
}

/// numpy's `round` (half to even).
fn round_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// numpy's `linspace(start, stop, n)` in float64 (last value exactly `stop`).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// The sampling timesteps of `set_timesteps(steps)`, highest first, as both diffusers samplers
/// space them (DDIM rounds linspace's fractional values; Euler keeps them).
fn spaced_timesteps(config: &ScheduleConfig, steps: usize) -> Vec<f64> {
    let n = config.num_train_timesteps;
    match config.timestep_spacing {
        Spacing::Leading => {
            let r = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * r + config.steps_offset) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let r = n as f64 / steps as f64;
            let mut v = Vec::with_capacity(steps);
            let mut x = n as f64;
            while x > 0.0 {
                v.push(round_even(x) - 1.0);
                x -= r;
            }
            v
        }
        Spacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
    }
}

/// A sampler's state after `set_timesteps`.
pub trait Sampler<B: Backend> {
    /// The timesteps to call the UNet at, in order (float, as diffusers passes them).
    fn timesteps(&self) -> &[f32];
    /// What the initial N(0, 1) noise is multiplied by.
    fn init_noise_sigma(&self) -> f32;
    /// The UNet's input at step `i` for the current sample.
    fn scale_model_input(&self, sample: Tensor<B, 4>, i: usize) -> Tensor<B, 4>;
    /// The sample after step `i`, given the (guided) model output.
    fn step(&self, model_output: Tensor<B, 4>, i: usize, sample: Tensor<B, 4>) -> Tensor<B, 4>;
}

/// The initial `(x₀, ε)` prediction from a model output, shared by the samplers.
fn predict_x0_eps<B: Backend>(
    prediction: Prediction,
    model_output: Tensor<B, 4>,
    sample: Tensor<B, 4>,
    alpha_prod: f32,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let beta_prod = 1.0f32 - alpha_prod;
    let (sa, sb) = (alpha_prod.sqrt(), beta_prod.sqrt());
    match prediction {
        Prediction::Epsilon => ((sample - model_output.clone() * sb) / sa, model_output),
        Prediction::Sample => {
            let eps = (sample - model_output.clone() * sa) / sb;
            (model_output, eps)
        }
        Prediction::VPrediction => (
            sample.clone() * sa - model_output.clone() * sb,
            model_output * sa + sample * sb,
        ),
    }
}

/// diffusers' `DDIMScheduler` with η = 0 (deterministic).
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha: f32,
    timesteps: Vec<i64>,
    timesteps_f: Vec<f32>,
    step_ratio: i64,
    prediction: Prediction,
    clip: Option<f32>,
}

impl Ddim {
    /// The sampler for `steps` inference steps.
    pub fn new(config: &ScheduleConfig, steps: usize) -> Result<Self, DiffusionError> {
        let n = config.num_train_timesteps;
        check_steps(steps, n)?;
        // Leading and trailing values are whole numbers; linspace's are rounded as numpy does.
        let timesteps: Vec<i64> = spaced_timesteps(config, steps)
            .into_iter()
            .map(|t| round_even(t) as i64)
            .collect();
        let alphas_cumprod = config.alphas_cumprod();
        Ok(Self {
            final_alpha: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            timesteps_f: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            step_ratio: (n / steps) as i64,
            alphas_cumprod,
            prediction: config.prediction_type,
            clip: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
        })
    }

    /// The integer timesteps.
    pub fn timesteps_int(&self) -> &[i64] {
        &self.timesteps
    }
}

impl<B: Backend> Sampler<B> for Ddim {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _i: usize) -> Tensor<B, 4> {
        sample
    }

    fn step(&self, model_output: Tensor<B, 4>, i: usize, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        let t = self.timesteps[i];
        let prev = t - self.step_ratio;
        let alpha_prod = self.alphas_cumprod[t as usize];
        let alpha_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha
        };
        let (mut x0, mut eps) =
            predict_x0_eps(self.prediction, model_output, sample.clone(), alpha_prod);
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
            // diffusers re-derives ε from the clipped x₀.
            eps = (sample - x0.clone() * alpha_prod.sqrt()) / (1.0f32 - alpha_prod).sqrt();
        }
        // With η = 0 the variance term is zero: direction √(1 − ᾱ_prev)·ε.
        x0 * alpha_prev.sqrt() + eps * (1.0f32 - alpha_prev).sqrt()
    }
}

/// diffusers' `EulerDiscreteScheduler` (no churn, linear interpolation of σ, final σ = 0).
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
}

impl EulerDiscrete {
    /// The sampler for `steps` inference steps.
    pub fn new(config: &ScheduleConfig, steps: usize) -> Result<Self, DiffusionError> {
        let n = config.num_train_timesteps;
        check_steps(steps, n)?;
        let timesteps: Vec<f32> = spaced_timesteps(config, steps)
            .into_iter()
            .map(|t| t as f32)
            .collect();
        // σ of every training step, in float32 as torch computes it.
        let full: Vec<f32> = config
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0f32 - a) / a).sqrt())
            .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let t = t as f64;
                let j = (t.floor() as usize).min(full.len() - 1);
                if j + 1 >= full.len() || t == j as f64 {
                    full[j]
                } else {
                    let (a, b) = (full[j] as f64, full[j + 1] as f64);
                    ((b - a) * (t - j as f64) + a) as f32
                }
            })
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().cloned().fold(0.0f32, f32::max);
        let init_noise_sigma = match config.timestep_spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: config.prediction_type,
        })
    }

    /// σ at each step, then 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl<B: Backend> Sampler<B> for EulerDiscrete {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, i: usize) -> Tensor<B, 4> {
        let s = self.sigmas[i];
        sample / (s * s + 1.0).sqrt()
    }

    fn step(&self, model_output: Tensor<B, 4>, i: usize, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        let sigma = self.sigmas[i];
        let x0 = match self.prediction {
            Prediction::Epsilon => sample.clone() - model_output * sigma,
            Prediction::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                model_output * (-sigma / s2.sqrt()) + sample.clone() / s2
            }
            Prediction::Sample => model_output,
        };
        let derivative = (sample.clone() - x0) / sigma;
        let dt = self.sigmas[i + 1] - sigma;
        sample + derivative * dt
    }
}

fn check_steps(steps: usize, train: usize) -> Result<(), DiffusionError> {
    if steps == 0 || steps > train {
        return Err(DiffusionError::Setting(format!(
            "{steps} sampling steps: choose between 1 and {train} (the schedule's training steps)"
        )));
    }
    Ok(())
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.0001
}
fn beta_end() -> f64 {
    0.02
}
fn linear_str() -> String {
    "linear".into()
}
fn epsilon() -> Prediction {
    Prediction::Epsilon
}
fn leading() -> Spacing {
    Spacing::Leading
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
