//! Data parallelism: a step whose micro-batches are spread over replicas (threads on the CPU,
//! one per GPU on CUDA) equals the one-device step over the same micro-batches bit for bit
//! (gradients summed in micro-batch order on the first device).

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Distribution, Tensor};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionInput, ProjectionSpec};
use idforge_diffusion::nn::Init;
use idforge_diffusion::{DdpmSchedule, ScheduleConfig, UNet};
use idforge_train::{
    AdamConfig, Decay, IpAdapterTrainer, IpBatch, LossConfig, LrSchedule, NoiseDraw, Optimizer,
    ParamGroup, StepConfig, Warmup, ip_layers_from_unet,
};

type A = Autodiff<Flex>;

/// burn's random tensors come from one process-wide generator: the tests take turns so that a
/// seed is followed by its own draws.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn unet(device: &Device<A>) -> UNet<A> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion/tests/fixtures/tiny-sd/unet");
    UNet::load(&dir, device).unwrap()
}

fn batch(seed: u64, device: &Device<A>) -> IpBatch<A> {
    A::seed(device, seed);
    let n = |shape: [usize; 4]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), device);
    IpBatch {
        latents: n([2, 4, 8, 8]),
        draw: NoiseDraw {
            noise: n([2, 4, 8, 8]),
            offset_noise: None,
            timesteps: vec![
                (17 + seed as usize * 101) % 1000,
                (640 + seed as usize * 37) % 1000,
            ],
        },
        context: Tensor::random([2, 7, 8], Distribution::Normal(0.0, 1.0), device),
        references: ProjectionInput {
            image_embeds: None,
            hidden_states: None,
            id_embeds: Some(Tensor::random(
                [2, 16],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
        },
        face_boxes: (seed % 2 == 1).then(|| vec![[8.0, 8.0, 40.0, 48.0], [0.0, 16.0, 64.0, 64.0]]),
    }
}

struct Values(Vec<Vec<f32>>);
impl ModuleVisitor<A> for Values {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
        self.0.push(p.val().into_data().to_vec().unwrap());
    }
}

fn values(adapter: &IpAdapter<A>) -> Vec<Vec<f32>> {
    let mut v = Values(Vec::new());
    adapter.visit(&mut v);
    v.0
}

/// Two steps over `k` micro-batches on `replicas` copies of the CPU device: the adapter's
/// tensors after them and the losses.
fn train(replicas: usize, k: usize) -> (Vec<Vec<f32>>, Vec<f32>, Vec<Vec<f32>>) {
    let device = <Device<A>>::default();
    let unet = unet(&device);
    A::seed(&device, 7);
    let spec = ProjectionSpec::FaceId {
        id_dim: 16,
        mlp: 32,
        tokens: 4,
        cross: 8,
    };
    let adapter = IpAdapter::new(&Init::Random, spec, &unet, &device)
        .and_then(|a| a.with_random_lora(&unet, 4, &device))
        .unwrap();
    let mut adapter = ip_layers_from_unet(adapter, &unet).unwrap();
    let initial = values(&adapter);
    let config = StepConfig {
        loss: LossConfig {
            noise_offset: 0.0,
            snr_gamma: None,
        },
        max_grad_norm: Some(0.5),
        lr: LrSchedule {
            warmup_steps: 0,
            warmup: Warmup::Persongen,
            decay: Decay::Constant,
        },
    };
    let optimizer = Optimizer::new(AdamConfig::adamw(), vec![ParamGroup::new("", 1e-3)]).unwrap();
    let schedule = DdpmSchedule::new(&ScheduleConfig::default());
    let mut trainer = IpAdapterTrainer::new(unet, &adapter, schedule, optimizer, config).unwrap();
    if replicas > 1 {
        trainer = trainer.with_devices(vec![device; replicas]);
    }
    let mut losses = Vec::new();
    for step in 0..2u64 {
        let batches: Vec<IpBatch<A>> = (0..k as u64)
            .map(|m| batch(step * 10 + m, &device))
            .collect();
        let (next, report) = trainer.step(adapter, &batches).unwrap();
        adapter = next;
        losses.push(report.loss);
    }
    (values(&adapter), losses, initial)
}

#[test]
fn replicas_equal_one_device_bit_for_bit() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let one = train(1, 2);
    let two = train(2, 2);
    assert!(
        one.1.iter().all(|l| l.is_finite() && *l > 0.0),
        "losses {:?}",
        one.1
    );
    assert_eq!(one.1, two.1, "losses of 1 and 2 replicas");
    assert_eq!(one.0, two.0, "weights after two steps, 1 vs 2 replicas");
    // The steps moved the weights (the comparison is not of untouched tensors).
    assert_ne!(one.0, one.2, "the adapter did not change");
}

#[test]
fn uneven_split_three_micro_batches_on_two_replicas() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let one = train(1, 3);
    let two = train(2, 3);
    assert_eq!(one.1, two.1);
    assert_eq!(one.0, two.0);
}
