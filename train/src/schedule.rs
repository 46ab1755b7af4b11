//! The learning-rate schedule: a linear warm-up, then constant or cosine decay, as a factor of
//! each parameter group's base rate (torch's `LambdaLR`).
//!
//! Two warm-ups exist in the references and differ by one step: persongen's
//! `LambdaLR(lambda s: min((s + 1) / warmup, 1))` (the first step already trains at
//! `1/warmup`) and diffusers' `get_scheduler` (`s / warmup`: the first step has rate 0). The
//! cosine phase is diffusers' `get_cosine_schedule_with_warmup`:
//! `max(0, ½(1 + cos(π · cycles · 2 · progress)))`, `progress = (s − warmup) / (total − warmup)`.

/// How the rate rises during the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Warmup {
    /// persongen: `(s + 1) / warmup`.
    #[default]
    Persongen,
    /// diffusers' `get_scheduler`: `s / warmup`.
    Diffusers,
}

/// What follows the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Decay {
    /// The base rate until the end (`constant_with_warmup`).
    #[default]
    Constant,
    /// Half a cosine (with `cycles` 0.5) down to zero at `total_steps` (`cosine`).
    Cosine {
        /// The run's optimizer steps (`num_training_steps`).
        total_steps: u64,
        /// `num_cycles` (0.5: one half-cosine).
        cycles: f64,
    },
}

/// The factor applied to every group's base learning rate at each optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LrSchedule {
    /// Warm-up steps (0: none).
    pub warmup_steps: u64,
    /// The warm-up's formula.
    pub warmup: Warmup,
    /// After the warm-up.
    pub decay: Decay,
}

impl LrSchedule {
    /// The factor at optimizer step `step` (0-based: the first step's rate is
    /// `base · factor(0)`), in double precision as Python computes it.
    pub fn factor(&self, step: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return match self.warmup {
                Warmup::Persongen => (step + 1) as f64 / w as f64,
                Warmup::Diffusers => step as f64 / w.max(1) as f64,
            };
        }
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine {
                total_steps,
                cycles,
            } => {
                let progress = (step - w) as f64 / total_steps.saturating_sub(w).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * cycles * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persongen_warmup_reaches_one_at_the_last_warmup_step() {
        let s = LrSchedule {
            warmup_steps: 4,
            ..Default::default()
        };
        let f: Vec<f64> = (0..6).map(|i| s.factor(i)).collect();
        assert_eq!(f, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }
}
