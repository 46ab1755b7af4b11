//! Training-readiness: the diffusion loss backpropagates through the frozen tiny UNet into a
//! trainable stand-in adapter (a value-projection delta on one cross-attention layer, reached
//! through the attention hook), and the gradient matches central finite differences.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use idforge_diffusion::schedulers::ScheduleConfig;
use idforge_diffusion::{AttentionHook, AttentionLayer, DdpmSchedule, Projection, UNet, UNetInput};
use idforge_train::CheckpointedAutodiff;

/// `to_v(x) + x·D` on one layer: the simplest adapter there is.
#[derive(Module, Debug)]
struct ValueDelta<B: Backend> {
    delta: Param<Tensor<B, 2>>,
    #[module(skip)]
    layer: String,
}

impl<B: Backend> AttentionHook<B> for ValueDelta<B> {
    fn projection(
        &self,
        layer: &AttentionLayer,
        which: Projection,
        input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        if which == Projection::Value && layer.name == self.layer {
            let [b, n, k] = input.dims();
            let [_, o] = self.delta.dims();
            output + (input.clone().reshape([b * n, k]).matmul(self.delta.val())).reshape([b, n, o])
        } else {
            output
        }
    }
}

/// A fixed training example: clean latents, noise, a timestep, text tokens.
struct Example {
    x0: Vec<f32>,
    noise: Vec<f32>,
    context: Vec<f32>,
    t: usize,
}

const LAYER: &str = "mid_block.attentions.0.transformer_blocks.0.attn2";

fn example() -> Example {
    // A deterministic pattern (no RNG: the same numbers on every backend).
    let wave = |n: usize, k: f32| {
        (0..n)
            .map(|i| (i as f32 * k).sin() * 0.8)
            .collect::<Vec<_>>()
    };
    Example {
        x0: wave(4 * 32 * 32, 0.37),
        noise: wave(4 * 32 * 32, 1.31),
        context: wave(77 * 8, 0.71),
        t: 400,
    }
}

/// The UNet's prediction and the ε target for a delta, in the backend's graph.
fn prediction<B: Backend>(
    unet: &UNet<B>,
    hook: &ValueDelta<B>,
    ex: &Example,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let device = Default::default();
    let x0 = Tensor::<B, 4>::from_data(TensorData::new(ex.x0.clone(), [1, 4, 32, 32]), &device);
    let noise =
        Tensor::<B, 4>::from_data(TensorData::new(ex.noise.clone(), [1, 4, 32, 32]), &device);
    let schedule = DdpmSchedule::new(&ScheduleConfig::default());
    let noisy = schedule.add_noise(x0.clone(), noise.clone(), &[ex.t]);
    let target = schedule.target(x0, noise, &[ex.t]);
    let out = unet.forward_with(
        &UNetInput {
            sample: noisy,
            timesteps: Tensor::from_floats([ex.t as f32], &device),
            context: Tensor::from_data(TensorData::new(ex.context.clone(), [1, 77, 8]), &device),
            added: None,
        },
        hook,
    );
    (out, target)
}

/// The ε-prediction loss `mean((unet(noisy) − ε)²)`.
fn loss<B: Backend>(unet: &UNet<B>, hook: &ValueDelta<B>, ex: &Example) -> Tensor<B, 1> {
    let (out, target) = prediction(unet, hook, ex);
    (out - target).square().mean()
}

/// The same loss reduced in f64 on the host, so that finite differences are not drowned in
/// the f32 rounding of a 4096-element mean.
fn loss_f64<B: Backend>(unet: &UNet<B>, hook: &ValueDelta<B>, ex: &Example) -> f64 {
    let (out, target) = prediction(unet, hook, ex);
    let o = out.into_data().to_vec::<f32>().unwrap();
    let t = target.into_data().to_vec::<f32>().unwrap();
    o.iter()
        .zip(&t)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        / o.len() as f64
}

fn unet<B: Backend>() -> UNet<B> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion/tests/fixtures/tiny-sd/unet");
    UNet::load(&dir, &Default::default()).expect("tiny UNet loads")
}

/// A small non-zero starting delta, so that the gradient is not only at the origin.
fn start_delta() -> Vec<f32> {
    (0..64).map(|i| ((i as f32) * 0.53).cos() * 0.05).collect()
}

/// Gradient of the loss w.r.t. the delta under an autodiff backend, base weights frozen.
fn autodiff_gradient<A: AutodiffBackend>() -> Vec<f32> {
    let ex = example();
    let base: UNet<A> = unet::<A>().no_grad();
    let device = Default::default();
    let hook = ValueDelta::<A> {
        delta: Param::from_tensor(Tensor::from_data(
            TensorData::new(start_delta(), [8, 8]),
            &device,
        )),
        layer: LAYER.into(),
    };
    let l = loss(&base, &hook, &ex);
    let grads = l.backward();
    let frozen = base.mid_block.as_ref().unwrap().attentions[0].blocks[0]
        .attn2
        .to_k
        .weight
        .grad(&grads);
    assert!(frozen.is_none(), "a frozen base weight received a gradient");
    hook.delta
        .grad(&grads)
        .expect("the delta is trainable")
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn gradient_through_frozen_unet_matches_finite_differences() {
    let analytic = autodiff_gradient::<Autodiff<Flex>>();
    let ex = example();
    let base = unet::<Flex>();
    let device = Default::default();
    let loss_at = |delta: Vec<f32>| -> f64 {
        let hook = ValueDelta::<Flex> {
            delta: Param::from_tensor(Tensor::from_data(TensorData::new(delta, [8, 8]), &device)),
            layer: LAYER.into(),
        };
        loss_f64(&base, &hook, &ex)
    };
    let d0 = start_delta();
    let eps = 5e-2f32;
    let scale = analytic.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(scale > 1e-4, "the gradient is (almost) zero: {scale}");
    let mut worst = 0f64;
    for i in 0..d0.len() {
        let mut plus = d0.clone();
        plus[i] += eps;
        let mut minus = d0.clone();
        minus[i] -= eps;
        let numeric = (loss_at(plus) - loss_at(minus)) / (2.0 * eps as f64);
        let err = (numeric - analytic[i] as f64).abs() / scale as f64;
        worst = worst.max(err);
        // Central differences of an f32 network agree to 2.3e-3 of the gradient's scale here
        // (measured); the bound is 1 % of it.
        assert!(
            err < 1e-2,
            "∂loss/∂delta[{i}]: autodiff {} vs finite differences {numeric} (scale {scale})",
            analytic[i]
        );
    }
    println!("max |autodiff − finite differences| / max |gradient| = {worst:.2e} over 64 entries");
}

#[test]
fn checkpointed_autodiff_gives_the_same_gradient() {
    let plain = autodiff_gradient::<Autodiff<Flex>>();
    let checkpointed = autodiff_gradient::<CheckpointedAutodiff<Flex>>();
    let scale = plain.iter().fold(0f32, |m, g| m.max(g.abs()));
    for (i, (a, b)) in plain.iter().zip(&checkpointed).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "entry {i}: {a} vs {b} with checkpointing"
        );
    }
}

#[test]
fn random_unet_trains_under_autodiff() {
    // One SGD step on every UNet weight of a random tiny config lowers the loss: the whole
    // network is differentiable, not only the hook.
    type A = Autodiff<Flex>;
    let config = idforge_diffusion::UNetConfig::from_json(
        r#"{"block_out_channels": [8, 16], "layers_per_block": 1, "cross_attention_dim": 8,
            "attention_head_dim": 2, "norm_num_groups": 4, "sample_size": 8,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}"#,
    )
    .unwrap();
    let device = Default::default();
    let unet = UNet::<A>::random(&config, &device);
    let sample = Tensor::<A, 4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let target = Tensor::<A, 4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let context = Tensor::<A, 3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
    let input = UNetInput {
        sample,
        timesteps: Tensor::from_floats([10.0, 500.0], &device),
        context,
        added: None,
    };
    let loss = |u: &UNet<A>| (u.forward(&input) - target.clone()).square().mean();
    let before = loss(&unet);
    let grads = before.backward();
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    let grads = GradientsParams::from_grads(grads, &unet);
    assert!(
        grads.len() > 50,
        "only {} parameters got gradients",
        grads.len()
    );
    let mut sgd = SgdConfig::new().init();
    let after_step = sgd.step(1e-2, unet, grads);
    let b = before.into_scalar();
    let a = loss(&after_step).into_scalar();
    assert!(a < b, "one SGD step did not lower the loss: {b} → {a}");
}
