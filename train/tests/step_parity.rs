//! One IP-Adapter training step (plain, Plus, FaceID with LoRA, FaceID-PlusV2) against PyTorch (fixtures from
//! tools/train-reference/make_train_step_fixtures.py: diffusers 0.38 `load_ip_adapter` on the
//! tiny SD UNet, torch 2.5 AdamW / Adam, `clip_grad_norm_`, `LambdaLR`).
//!
//! Each case starts from an adapter file of diffusion/tests/fixtures/ip-adapter/, runs two
//! optimizer steps on the recorded batches and compares: the loss of each step, every trained
//! tensor's gradient at the first step (before clipping), the global gradient norm, each
//! group's learning rate, and every trained tensor after each step. Tolerances (stated once,
//! below): loss and gradient norm 1e-5 relative; gradients cosine ≥ 0.99999 and max |Δ| ≤
//! 1e-4 of the tensor's max |gradient|; weights max |Δ| ≤ 1e-6 absolute.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionInput};
use idforge_diffusion::{DdpmSchedule, Prediction, ScheduleConfig, UNet};
use idforge_models::WeightStore;
use idforge_train::{
    AdamConfig, AdamKind, CheckpointedAutodiff, Decay, IpAdapterTrainer, IpBatch, LossConfig,
    LrSchedule, NamedTensor, NoiseDraw, Optimizer, ParamGroup, ParamNames, StepConfig, TrainError,
    Warmup,
};
use serde_json::Value;

type A = Autodiff<Flex>;
type Checkpointed = CheckpointedAutodiff<Flex>;

const LOSS_REL: f64 = 1e-5;
const GRAD_COS: f64 = 0.99999;
const GRAD_REL: f64 = 1e-4;
const WEIGHT_ABS: f64 = 1e-6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_sd() -> PathBuf {
    root().join("../diffusion/tests/fixtures/tiny-sd")
}

fn meta() -> Value {
    let path = root().join("tests/fixtures/step_parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Case {
    store: WeightStore,
    meta: Value,
}

impl Case {
    fn t<A: AutodiffBackend, const D: usize>(&self, key: &str) -> Tensor<A, D> {
        let (shape, values) = self.store.read_f32(key).unwrap();
        let shape: [usize; D] = shape.try_into().unwrap();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values(&self, key: &str) -> Vec<f32> {
        self.store.read_f32(key).unwrap().1
    }

    fn f(&self, path: &[&str]) -> f64 {
        path.iter()
            .fold(&self.meta, |v, k| match k.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[*k],
            })
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} in the fixture's JSON"))
    }

    /// The batch of micro-batch `m` of step `s`.
    /// The recorded inputs (`image_embeds`, `id_embeds`, CLIP `hidden_states`) are
    /// `[batch, references, ...]`, made one row per reference.
    fn batch<A: AutodiffBackend>(&self, s: usize, m: usize, k: usize) -> IpBatch<A> {
        let p = |n: &str| format!("in.{s}.{m}.{n}");
        let rows = |n: &str| -> Option<Tensor<A, 2>> {
            self.store.contains(&p(n)).then(|| {
                let t = self.t::<A, 3>(&p(n));
                let [b, r, c] = t.dims();
                t.reshape([b * r, c])
            })
        };
        let hidden_states = self.store.contains(&p("hidden_states")).then(|| {
            let t = self.t::<A, 4>(&p("hidden_states"));
            let [b, r, n, c] = t.dims();
            t.reshape([b * r, n, c])
        });
        let timesteps = self
            .values(&p("timesteps"))
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let offset = self.store.contains(&p("offset_noise"));
        let boxes = self.meta.get("boxes").map(|boxes| {
            boxes[s * k + m]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let v: Vec<f32> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    [v[0], v[1], v[2], v[3]]
                })
                .collect()
        });
        IpBatch {
            latents: self.t(&p("latents")),
            draw: NoiseDraw {
                noise: self.t(&p("noise")),
                offset_noise: offset.then(|| self.t(&p("offset_noise"))),
                timesteps,
            },
            context: self.t(&p("context")),
            references: ProjectionInput {
                image_embeds: rows("image_embeds"),
                hidden_states,
                id_embeds: rows("id_embeds"),
            },
            face_boxes: boxes,
        }
    }
}

/// The recorded value in burn's layout (torch's `[out, in]` transposed for `Linear`s).
fn reference(case: &Case, key: &str, t: &NamedTensor) -> Vec<f32> {
    let v = case.values(key);
    if t.transposed {
        let (inp, out) = (t.shape[0], t.shape[1]);
        let mut w = vec![0f32; v.len()];
        for o in 0..out {
            for i in 0..inp {
                w[i * out + o] = v[o * inp + i];
            }
        }
        w
    } else {
        v
    }
}

struct Values(HashMap<ParamId, Vec<f32>>);

impl<A: AutodiffBackend> ModuleVisitor<A> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        self.0
            .insert(param.id, param.val().into_data().to_vec::<f32>().unwrap());
    }
}

fn values_of<A: AutodiffBackend>(adapter: &IpAdapter<A>) -> HashMap<ParamId, Vec<f32>> {
    let mut v = Values(HashMap::new());
    adapter.visit(&mut v);
    v.0
}

fn grad_of(grads: &GradientsParams, t: &NamedTensor) -> Option<Vec<f32>> {
    fn get<const D: usize>(g: &GradientsParams, id: ParamId) -> Option<Vec<f32>> {
        g.get::<Flex, D>(id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap())
    }
    match t.shape.len() {
        1 => get::<1>(grads, t.id),
        2 => get::<2>(grads, t.id),
        3 => get::<3>(grads, t.id),
        n => panic!("rank {n}"),
    }
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().fold(0f64, |m, x| m.max(x.abs() as f64))
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn open_case(name: &str) -> Case {
    let meta = meta()["cases"][name].clone();
    let store =
        WeightStore::open(root().join(format!("tests/fixtures/step_{name}.safetensors"))).unwrap();
    Case { store, meta }
}

fn run_case<A: AutodiffBackend<InnerBackend = Flex>>(name: &str) {
    let case = open_case(name);
    let m = &case.meta;
    let device = Default::default();
    let unet = UNet::<A>::load(&tiny_sd().join("unet"), &device).unwrap();
    // Plus trains a small resampler the fixture script drew (adapter_plus.safetensors).
    let adapter_file = if m.get("tiny_plus").is_some() {
        root().join("tests/fixtures/adapter_plus.safetensors")
    } else {
        root()
            .join("../diffusion/tests/fixtures/ip-adapter")
            .join(m["adapter"].as_str().unwrap())
    };
    let mut adapter = IpAdapter::<A>::load(&adapter_file, &unet, &device).unwrap();
    if m["shortcut"].as_bool() == Some(true) {
        adapter.set_shortcut(true, 1.0);
    }

    let mut sched =
        ScheduleConfig::from_file(&tiny_sd().join("scheduler/scheduler_config.json")).unwrap();
    sched.prediction_type = match m["prediction"].as_str().unwrap() {
        "epsilon" => Prediction::Epsilon,
        "v_prediction" => Prediction::VPrediction,
        p => panic!("{p}"),
    };
    let o = &m["optimizer"];
    let config = AdamConfig {
        kind: if o["kind"] == "adamw" {
            AdamKind::AdamW
        } else {
            AdamKind::Adam
        },
        beta1: o["betas"][0].as_f64().unwrap(),
        beta2: o["betas"][1].as_f64().unwrap(),
        eps: o["eps"].as_f64().unwrap(),
        weight_decay: o["weight_decay"].as_f64().unwrap(),
    };
    let groups = m["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| ParamGroup::new(g["prefix"].as_str().unwrap(), g["lr"].as_f64().unwrap()))
        .collect();
    let s = &m["schedule"];
    let lr = LrSchedule {
        warmup_steps: s["warmup"].as_u64().unwrap(),
        warmup: if s["warmup_style"] == "persongen" {
            Warmup::Persongen
        } else {
            Warmup::Diffusers
        },
        decay: if s["decay"] == "cosine" {
            Decay::Cosine {
                total_steps: s["total"].as_u64().unwrap(),
                cycles: 0.5,
            }
        } else {
            Decay::Constant
        },
    };
    let step_config = StepConfig {
        loss: LossConfig {
            noise_offset: m["noise_offset"].as_f64().unwrap_or(0.0) as f32,
            snr_gamma: m["snr_gamma"].as_f64().map(|g| g as f32),
        },
        max_grad_norm: m["max_grad_norm"].as_f64(),
        lr,
    };
    let mut trainer = IpAdapterTrainer::new(
        unet,
        &adapter,
        DdpmSchedule::new(&sched),
        Optimizer::new(config, groups).unwrap(),
        step_config,
    )
    .unwrap();
    let names: ParamNames = trainer.names(&adapter).unwrap();
    let trained: Vec<&str> = m["trained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let mut ours: Vec<&str> = names.iter().map(|t| t.key.as_str()).collect();
    ours.sort();
    assert_eq!(
        ours, trained,
        "{name}: the trained tensors differ from PyTorch's"
    );

    let k = m["accumulation"].as_u64().unwrap() as usize;
    let (mut worst_grad, mut worst_cos, mut worst_weight) = (0f64, 0f64, 0f64);
    for step in 0..2 {
        let batches: Vec<_> = (0..k).map(|i| case.batch(step, i, k)).collect();
        if step == 0 {
            // The frozen UNet gets no gradient: burn does not even track its weights.
            let mut raw = trainer.loss(&adapter, &batches[0]).unwrap().backward();
            let unet_grads = GradientsParams::from_module(&mut raw, trainer.unet());
            assert_eq!(unet_grads.len(), 0, "a frozen UNet weight has a gradient");
        }
        let grads = trainer.gradients(&adapter, &batches).unwrap();
        let want = case.f(&["loss", &step.to_string()]);
        let r = rel(grads.loss as f64, want);
        println!(
            "{name} step {step}: loss {} vs {want} (rel {r:.1e})",
            grads.loss
        );
        assert!(
            r <= LOSS_REL,
            "{name} step {step}: loss {} vs torch {want}",
            grads.loss
        );
        if step == 0 {
            for t in names.iter() {
                let g = grad_of(&grads.params, t)
                    .unwrap_or_else(|| panic!("{name}: no gradient for {}", t.key));
                let w = reference(&case, &format!("grad.{}", t.key), t);
                let scale = max_abs(&w);
                let d = max_diff(&g, &w) / scale;
                let c = cosine(&g, &w);
                worst_grad = worst_grad.max(d);
                worst_cos = worst_cos.max(1.0 - c);
                assert!(
                    c >= GRAD_COS && d <= GRAD_REL,
                    "{name}: ∂loss/∂{}: cosine {c}, max |Δ| {d:.2e} of its scale {scale:.2e}",
                    t.key
                );
            }
        }
        let (next, report) = trainer.apply(adapter, grads).unwrap();
        adapter = next;
        let want = case.f(&["grad_norm", &step.to_string()]);
        assert!(
            rel(report.grad_norm as f64, want) <= LOSS_REL,
            "{name} step {step}: gradient norm {} vs torch {want}",
            report.grad_norm
        );
        for (g, lr) in report.lrs.iter().enumerate() {
            let want = case.f(&["lr", &step.to_string(), &g.to_string()]);
            assert!(
                rel(*lr, want) <= 1e-12,
                "{name} step {step} group {g}: lr {lr} vs {want}"
            );
        }
        let values = values_of(&adapter);
        for t in names.iter() {
            let w = reference(&case, &format!("step{}.{}", step + 1, t.key), t);
            let d = max_diff(&values[&t.id], &w);
            worst_weight = worst_weight.max(d);
            assert!(
                d <= WEIGHT_ABS,
                "{name}: {} after step {}: max |Δ| {d:.2e}",
                t.key,
                step + 1
            );
        }
    }
    println!(
        "{name}: gradients max |Δ|/scale {worst_grad:.2e}, max 1 − cosine {worst_cos:.1e}; \
         weights max |Δ| {worst_weight:.2e} ({} tensors)",
        names.len()
    );
}

#[test]
fn plain_adamw_groups_warmup_clipping() {
    run_case::<A>("plain");
}

#[test]
fn v_prediction_min_snr_offset_adam_cosine_accumulation() {
    run_case::<A>("vpred_snr");
}

#[test]
fn masked_loss() {
    run_case::<A>("masked");
}

#[test]
fn faceid_with_lora() {
    run_case::<A>("faceid");
}

#[test]
fn plus_resampler_on_clip_hidden_states() {
    run_case::<A>("plus");
}

#[test]
fn faceid_plus_v2_with_clip_face_features() {
    run_case::<A>("faceid_plus_v2");
}

#[test]
fn faceid_with_gradient_checkpointing() {
    // The backend the GPU trainer uses (recomputing memory-bound operations in the backward
    // pass) takes the same step.
    run_case::<Checkpointed>("faceid");
}

/// Frozen tensors get no update and no optimizer state; a trainable tensor outside every group
/// is refused before anything changes.
#[test]
fn frozen_tensors_are_not_stepped() {
    let device = Default::default();
    let unet = UNet::<A>::load(&tiny_sd().join("unet"), &device).unwrap();
    let path = root().join("../diffusion/tests/fixtures/ip-adapter/plain.safetensors");
    let mut adapter = IpAdapter::<A>::load(&path, &unet, &device).unwrap();
    let schedule = DdpmSchedule::new(&ScheduleConfig::default());
    let config = StepConfig {
        loss: LossConfig::default(),
        max_grad_norm: Some(1.0),
        lr: LrSchedule::default(),
    };
    let only_ip = || {
        Optimizer::new(
            AdamConfig::adamw(),
            vec![ParamGroup::new("ip_adapter.", 1e-3)],
        )
        .unwrap()
    };
    let refused =
        IpAdapterTrainer::new(unet.clone(), &adapter, schedule.clone(), only_ip(), config).err();
    assert!(
        matches!(&refused, Some(TrainError::Ungrouped(k)) if k.starts_with("image_proj.")),
        "{refused:?}"
    );
    adapter.projection = adapter.projection.no_grad();
    let mut trainer = IpAdapterTrainer::new(unet, &adapter, schedule, only_ip(), config).unwrap();
    let before = values_of(&adapter);
    let batch = open_case("plain").batch::<A>(0, 0, 1);
    let (after, _) = trainer.step(adapter, &[batch]).unwrap();
    let now = values_of(&after);
    let names = trainer.names(&after).unwrap();
    for t in names.iter() {
        let trained = t.key.starts_with("ip_adapter.");
        assert_eq!(now[&t.id] != before[&t.id], trained, "{}", t.key);
        assert_eq!(
            trainer.optimizer().state().contains_key(&t.key),
            trained,
            "{}",
            t.key
        );
    }
    // The four cross-attention layers' to_k_ip / to_v_ip.
    assert_eq!(trainer.optimizer().state().len(), 8);
}

#[test]
fn learning_rate_schedules_match_lambdalr() {
    for s in meta()["schedules"].as_array().unwrap() {
        let warmup = s["warmup"].as_u64().unwrap();
        let total = s["total"].as_u64().unwrap();
        let schedule = LrSchedule {
            warmup_steps: warmup,
            warmup: if s["source"] == "persongen" {
                Warmup::Persongen
            } else {
                Warmup::Diffusers
            },
            decay: if s["name"] == "cosine" {
                Decay::Cosine {
                    total_steps: total,
                    cycles: 0.5,
                }
            } else {
                Decay::Constant
            },
        };
        for (step, want) in s["lr"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = schedule.factor(step as u64);
            assert!(
                (got - want).abs() <= 1e-15,
                "{} {}: step {step}: {got} vs {want}",
                s["source"],
                s["name"]
            );
        }
    }
}

/// The checkpoint key of every tensor of every IP-Adapter kind names the tensor the loader
/// filled from it: each fixture file's keys are exactly the adapter's, and the values agree.
#[test]
fn checkpoint_keys_name_the_loaded_tensors() {
    type B = Flex;
    let device = Default::default();
    let unet = UNet::<B>::load(&tiny_sd().join("unet"), &device).unwrap();
    let dir = root().join("../diffusion/tests/fixtures/ip-adapter");
    for kind in ["plain", "plus", "full_face", "faceid", "faceid_plus_v2"] {
        let path = dir.join(format!("{kind}.safetensors"));
        let adapter = IpAdapter::<B>::load(&path, &unet, &device).unwrap();
        let names = ParamNames::ip_adapter(&adapter, &unet).unwrap();
        let store = WeightStore::open(&path).unwrap();
        let mut want: Vec<&str> = store.names().collect();
        want.sort();
        let mut got: Vec<&str> = names.iter().map(|t| t.key.as_str()).collect();
        got.sort();
        assert_eq!(got, want, "{kind}: keys");
        let mut values = HashMap::new();
        struct V<'a>(&'a mut HashMap<ParamId, Vec<f32>>);
        impl ModuleVisitor<B> for V<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0
                    .insert(p.id, p.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        adapter.visit(&mut V(&mut values));
        for t in names.iter() {
            let (_, file) = store.read_f32(&t.key).unwrap();
            let file = if t.transposed {
                let (inp, out) = (t.shape[0], t.shape[1]);
                let mut w = vec![0f32; file.len()];
                for o in 0..out {
                    for i in 0..inp {
                        w[i * out + o] = file[o * inp + i];
                    }
                }
                w
            } else {
                file
            };
            assert_eq!(values[&t.id], file, "{kind}: {} ({})", t.key, t.path);
        }
    }
}

/// PhotoMaker v1 (tools/train-reference/make_photomaker_step_fixture.py: the repo's
/// `load_photomaker_adapter` on the tiny SDXL pipeline, PEFT LoRA, torch AdamW over the LoRA and
/// ID-encoder groups at persongen's rates, `clip_grad_norm_`): the fused prompt embeddings
/// (1e-4 absolute, as diffusion/tests/photomaker_parity.rs), loss, gradient norm, every trained
/// tensor's gradient and value after the step, with the tolerances above. Measured: loss
/// 1.2e-7 rel, grad norm 6.8e-8 rel, gradients min cos 0.9999999989 and max 8.9e-5 of max |g|,
/// weights 1.6e-7, fused 1.3e-6.
#[test]
fn photomaker_v1_step() {
    use idforge_diffusion::AddedConditions;
    use idforge_diffusion::Pipeline;
    use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, PhotoMaker};
    use idforge_train::photomaker::{FROZEN_PREFIX, photomaker_groups};
    use idforge_train::{PhotoMakerParts, PhotoMakerTrainer, PmBatch, PmReferences, PmSample};

    let case = Case {
        store: WeightStore::open(root().join("tests/fixtures/photomaker_step.safetensors"))
            .unwrap(),
        meta: serde_json::from_str(
            &std::fs::read_to_string(root().join("tests/fixtures/photomaker_step.json")).unwrap(),
        )
        .unwrap(),
    };
    let m = &case.meta;
    let device = Default::default();
    let fixtures = root().join("../diffusion/tests/fixtures");
    let pipe = Pipeline::<A>::load(&fixtures.join("tiny-sdxl"), &device).unwrap();
    let options = IdEncoderOptions {
        vision_head_dim: 16,
        perceiver_head_dim: 16,
    };
    let file = fixtures.join("photomaker/photomaker-v1.bin");
    let pm = PhotoMaker::<A>::load_with(&file, &pipe, &options, &device).unwrap();
    let parts = PhotoMakerParts {
        encoder: pm.encoder,
        lora: pm.lora,
    }
    .freeze(&pipe.unet)
    .unwrap();
    let groups = photomaker_groups(
        m["lora_lr"].as_f64().unwrap(),
        m["encoder_lr"].as_f64().unwrap(),
    );
    let config = StepConfig {
        loss: LossConfig::default(),
        max_grad_norm: m["max_grad_norm"].as_f64(),
        lr: LrSchedule::default(),
    };
    let mut trainer = PhotoMakerTrainer::new(
        pipe.unet.clone(),
        &parts,
        DdpmSchedule::new(&ScheduleConfig::default()),
        Optimizer::new(AdamConfig::adamw(), groups).unwrap(),
        config,
    )
    .unwrap();
    let class: Vec<usize> = m["class_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let batch = PmBatch {
        latents: case.t::<A, 4>("in.latents"),
        draw: NoiseDraw {
            noise: case.t::<A, 4>("in.noise"),
            offset_noise: None,
            timesteps: vec![m["timestep"].as_u64().unwrap() as usize],
        },
        samples: vec![PmSample {
            context: case.t::<A, 3>("in.context"),
            class_tokens: class[0]..class[class.len() - 1] + 1,
            references: PmReferences::Pixels(case.t::<A, 4>("in.pixels")),
        }],
        added: AddedConditions {
            text_embeds: case.t::<A, 2>("in.pooled"),
            time_ids: case.t::<A, 2>("in.time_ids"),
        },
        face_boxes: None,
    };
    let names = ParamNames::photomaker(&parts, trainer.unet()).unwrap();
    let trained: Vec<&NamedTensor> = names.iter().filter(|t| t.trainable).collect();
    assert_eq!(trained.len() as u64, m["trained"].as_u64().unwrap());
    assert!(trained.iter().all(|t| !t.key.starts_with(FROZEN_PREFIX)));
    {
        let id = parts
            .encoder
            .forward(case.t::<A, 4>("in.pixels"), None)
            .unwrap();
        let [n, tk, d] = id.dims();
        let fused = parts
            .encoder
            .fuse_module
            .forward(
                case.t::<A, 3>("in.context"),
                batch.samples[0].class_tokens.clone(),
                id.reshape([n * tk, d]),
            )
            .unwrap();
        let want = case.t::<A, 3>("fused").into_data().to_vec::<f32>().unwrap();
        let got = fused.into_data().to_vec::<f32>().unwrap();
        let d = max_diff(&got, &want);
        assert!(
            d <= 1e-4,
            "fused prompt embeddings: max |Δ| {d:e} (tolerance 1e-4)"
        );
    }
    let grads = trainer.gradients(&parts, &[batch]).unwrap();
    let loss_rel = rel(grads.loss as f64, m["loss"].as_f64().unwrap());
    let (mut worst_cos, mut worst_grad, mut bad) = (1f64, 0f64, 0);
    for t in &trained {
        let got = grad_of(&grads.params, t).unwrap_or_else(|| panic!("no gradient: {}", t.key));
        let want = reference(&case, &format!("grad.{}", t.key), t);
        let d = max_diff(&got, &want) / max_abs(&want).max(1e-30);
        let c = if max_abs(&want) == 0.0 {
            1.0
        } else {
            cosine(&got, &want)
        };
        if !(c >= GRAD_COS && d <= GRAD_REL) {
            bad += 1;
            eprintln!("{}: cos {c}, rel {d:e}", t.key);
        }
        worst_cos = worst_cos.min(c);
        worst_grad = worst_grad.max(d);
    }
    assert_eq!(bad, 0, "gradients off the tolerances");
    let (after, report) = trainer.apply(parts, grads).unwrap();
    let norm_rel = rel(report.grad_norm as f64, m["grad_norm"].as_f64().unwrap());
    let mut v = Values(HashMap::new());
    after.visit(&mut v);
    let values = v.0;
    let mut worst_w = 0f64;
    for t in &trained {
        let want = reference(&case, &format!("after.{}", t.key), t);
        let d = max_diff(&values[&t.id], &want);
        assert!(d <= WEIGHT_ABS, "{} after the step: max |Δ| {d:e}", t.key);
        worst_w = worst_w.max(d);
    }
    println!(
        "photomaker: loss rel {loss_rel:e}, grad norm rel {norm_rel:e}, grads min cos \
         {worst_cos}, max rel {worst_grad:e}, weights max |Δ| {worst_w:e}"
    );
    assert!(loss_rel <= LOSS_REL && norm_rel <= LOSS_REL);
}
