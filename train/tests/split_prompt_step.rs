//! Two split-prompt (persongen `ipmakerbgbody`) training steps against persongen's own
//! `IPMakerBGBody`, trainer step and `DiffusionLoss` on the tiny SDXL pipeline (fixture
//! train/tests/fixtures/split_prompt/ from tools/train-reference/make_split_prompt_step_fixture.py):
//! the tiny PhotoMaker v1 ID encoder and LoRA of diffusion/tests/fixtures/photomaker/, the
//! background / body projections copied from `to_k` / `to_v`, torch Adam over persongen's five
//! groups with its `LambdaLR` warm-up; step 0 with the masked loss on a batch of two captions
//! with 1 and 2 references, step 1 with the whole condition dropped.
//!
//! Compared: the text encodings of the three parts and the class tokens, the fused main prompt,
//! each step's loss, gradient norm and group rates, every trained tensor's gradient at step 0,
//! the ID encoder's zero gradients at step 1, and every trained tensor after both steps; then the
//! export is read back by `PhotoMaker::load_with` and `SplitPrompt::load` with the same tensors.
//! Tolerances: loss and gradient norm 1e-5 relative; gradients cosine ≥ 0.99999 and max |Δ| ≤
//! 1e-4 of the tensor's max |gradient|; weights 1e-6 absolute; encodings 1e-5, fused prompt
//! 1e-4 absolute (as train/tests/step_parity.rs's PhotoMaker case).

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, PhotoMaker};
use idforge_diffusion::adapters::split_prompt::SplitPrompt;
use idforge_diffusion::{AddedConditions, DdpmSchedule, Pipeline};
use idforge_models::WeightStore;
use idforge_train::photomaker::photomaker_tensors;
use idforge_train::split_prompt::{SplitExport, export_split_prompt, split_prompt_groups};
use idforge_train::{
    AdamConfig, Decay, LossConfig, LrSchedule, NamedTensor, NoiseDraw, Optimizer, ParamNames,
    PhotoMakerParts, SplitBatch, SplitIdentity, SplitParts, SplitPromptTrainer, SplitRates,
    SplitSample, StepConfig, Warmup,
};
use serde_json::Value;

type A = Autodiff<Flex>;

const LOSS_REL: f64 = 1e-5;
const GRAD_COS: f64 = 0.99999;
const GRAD_REL: f64 = 1e-4;
const WEIGHT_ABS: f64 = 1e-6;
const ENCODING_ABS: f64 = 1e-5;
const FUSED_ABS: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("../diffusion/tests/fixtures")
}

struct Fixture {
    store: WeightStore,
    meta: Value,
}

impl Fixture {
    fn open() -> Self {
        let dir = root().join("tests/fixtures/split_prompt");
        Self {
            store: WeightStore::open(dir.join("step.safetensors")).unwrap(),
            meta: serde_json::from_str(&std::fs::read_to_string(dir.join("step.json")).unwrap())
                .unwrap(),
        }
    }

    fn t<const D: usize>(&self, key: &str) -> Tensor<A, D> {
        let (shape, values) = self
            .store
            .read_f32(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let shape: [usize; D] = shape.try_into().unwrap();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values(&self, key: &str) -> Vec<f32> {
        self.store.read_f32(key).unwrap().1
    }

    fn step(&self, s: usize) -> &Value {
        &self.meta["steps"][s]
    }

    /// Step `s`'s batch from the recorded inputs.
    fn batch(&self, s: usize) -> SplitBatch<A> {
        let step = self.step(s);
        let dropped = step["do_cfg"].as_bool().unwrap();
        let n = self.meta["captions"].as_array().unwrap().len();
        let mut samples = Vec::new();
        let mut pooled = Vec::new();
        for i in 0..n {
            let p = |x: &str| format!("in.{s}.{i}.{x}");
            if dropped {
                samples.push(SplitSample {
                    main: self.t("in.empty"),
                    identity: None,
                    background: self.t("in.empty"),
                    body: self.t("in.empty"),
                });
                pooled.push(self.t::<2>("in.empty_pooled"));
            } else {
                let class: Vec<usize> = step["class_tokens"][i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                samples.push(SplitSample {
                    main: self.t(&p("main")),
                    identity: Some(SplitIdentity {
                        class_tokens: class[0]..class[class.len() - 1] + 1,
                        pixels: self.t(&p("pixels")),
                    }),
                    background: self.t(&p("background")),
                    body: self.t(&p("body")),
                });
                pooled.push(self.t::<2>(&p("pooled")));
            }
        }
        let boxes = step["masked_loss"].as_bool().unwrap().then(|| {
            self.meta["boxes"]
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
        SplitBatch {
            latents: self.t(&format!("in.{s}.latents")),
            draw: NoiseDraw {
                noise: self.t(&format!("in.{s}.noise")),
                offset_noise: None,
                timesteps: self
                    .values(&format!("in.{s}.timesteps"))
                    .into_iter()
                    .map(|t| t as usize)
                    .collect(),
            },
            samples,
            added: AddedConditions {
                text_embeds: Tensor::cat(pooled, 0),
                time_ids: self.t(&format!("in.{s}.time_ids")),
            },
            face_boxes: boxes,
        }
    }

    /// The recorded value in burn's layout (torch's `[out, in]` transposed for `Linear`s).
    fn reference(&self, key: &str, t: &NamedTensor) -> Vec<f32> {
        let v = self.values(key);
        if !t.transposed {
            return v;
        }
        let (inp, out) = (t.shape[0], t.shape[1]);
        let mut w = vec![0f32; v.len()];
        for o in 0..out {
            for i in 0..inp {
                w[i * out + o] = v[o * inp + i];
            }
        }
        w
    }
}

fn options() -> IdEncoderOptions {
    IdEncoderOptions {
        vision_head_dim: 16,
        perceiver_head_dim: 16,
    }
}

fn to_vec<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

struct Values(HashMap<ParamId, Vec<f32>>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .insert(param.id, param.val().into_data().to_vec::<f32>().unwrap());
    }
}

fn grad_of(grads: &GradientsParams, t: &NamedTensor) -> Option<Vec<f32>> {
    fn get<const D: usize>(g: &GradientsParams, id: ParamId) -> Option<Vec<f32>> {
        g.get::<Flex, D>(id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap())
    }
    match t.shape.len() {
        1 => get::<1>(grads, t.id),
        2 => get::<2>(grads, t.id),
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

/// `SplitSample::encode` gives the encodings persongen recorded for the fixture's captions.
fn check_encodings(f: &Fixture, pipe: &Pipeline<A>, pm: &PhotoMaker<A>) -> f64 {
    let mut worst = 0f64;
    let mut check = |what: &str, got: Tensor<A, 3>, key: &str| {
        let d = max_diff(&to_vec(got), &f.values(key));
        assert!(
            d <= ENCODING_ABS,
            "{what} ({key}): max |Δ| {d:e} (tolerance {ENCODING_ABS:e})"
        );
        worst = worst.max(d);
    };
    let refs = f.meta["references"].as_array().unwrap();
    for (i, caption) in f.meta["captions"].as_array().unwrap().iter().enumerate() {
        let n = refs[i].as_u64().unwrap() as usize;
        let pixels: Tensor<A, 4> = f.t(&format!("in.0.{i}.pixels"));
        assert_eq!(pixels.dims()[0], n);
        let (sample, pooled) =
            SplitSample::encode(pipe, pm, caption.as_str().unwrap(), Some(pixels)).unwrap();
        let class: Vec<usize> = f.step(0)["class_tokens"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            sample.identity.unwrap().class_tokens,
            class[0]..class[class.len() - 1] + 1,
            "class tokens of caption {i}"
        );
        check("main", sample.main, &format!("in.0.{i}.main"));
        check("pooled", pooled.unsqueeze(), &format!("in.0.{i}.pooled"));
        check(
            "background",
            sample.background,
            &format!("in.0.{i}.background"),
        );
        check("body", sample.body, &format!("in.0.{i}.body"));
        let (dropped, pooled) =
            SplitSample::encode(pipe, pm, caption.as_str().unwrap(), None).unwrap();
        assert!(dropped.identity.is_none());
        check("dropped main", dropped.main, "in.empty");
        check("dropped background", dropped.background, "in.empty");
        check("dropped body", dropped.body, "in.empty");
        check("dropped pooled", pooled.unsqueeze(), "in.empty_pooled");
    }
    worst
}

#[test]
fn persongen_ipmakerbgbody_two_steps() {
    let f = Fixture::open();
    let m = &f.meta;
    let device = Default::default();
    let pipe = Pipeline::<A>::load(&fixtures().join("tiny-sdxl"), &device).unwrap();
    let file = fixtures().join("photomaker/photomaker-v1.bin");
    let pm = PhotoMaker::<A>::load_with(&file, &pipe, &options(), &device).unwrap();
    let worst_encoding = check_encodings(&f, &pipe, &pm);

    let parts = SplitParts::from_photomaker(
        PhotoMakerParts {
            encoder: pm.encoder.clone(),
            lora: pm.lora.clone(),
        },
        &pipe.unet,
    )
    .unwrap();
    let g = &m["group_lrs"];
    let lr = |k: &str| g[k].as_f64().unwrap();
    let rates = SplitRates {
        lora: lr("lora"),
        adapter: lr("adapter"),
        visual_projection: lr("vis_proj"),
        visual_projection_2: lr("vis_proj_2"),
        fuse_module: lr("fuse"),
    };
    let optimizer = Optimizer::new(AdamConfig::adam(), split_prompt_groups(rates)).unwrap();
    let config = StepConfig {
        loss: LossConfig::default(),
        max_grad_norm: None,
        lr: LrSchedule {
            warmup_steps: m["warmup"].as_u64().unwrap(),
            warmup: Warmup::Persongen,
            decay: Decay::Constant,
        },
    };
    let mut trainer = SplitPromptTrainer::new(
        pipe.unet.clone(),
        &parts,
        DdpmSchedule::new(&pipe.schedule),
        optimizer,
        config,
    )
    .unwrap();

    // Every trained tensor has persongen's group, and nothing else trains.
    let names = trainer.names(&parts).unwrap();
    let trained: Vec<NamedTensor> = names.iter().filter(|t| t.trainable).cloned().collect();
    assert_eq!(trained.len() as u64, m["trained"].as_u64().unwrap());
    let order = [
        "lora_params",
        "adapter_modules_params",
        "vis_proj_params",
        "vis_proj_2_params",
        "fuse_module_params",
    ];
    for t in &trained {
        let want = m["groups"][&t.key]
            .as_str()
            .unwrap_or_else(|| panic!("{} is not trained by persongen", t.key));
        let got = trainer.optimizer().group_of(&t.key).map(|i| order[i]);
        assert_eq!(got, Some(want), "{}", t.key);
    }

    // Step 0: the identity kept, the masked loss.
    let batch = f.batch(0);
    {
        let mut fused = Vec::new();
        for s in &batch.samples {
            let id = s.identity.as_ref().unwrap();
            let tokens = parts
                .photomaker
                .encoder
                .forward(id.pixels.clone(), None)
                .unwrap();
            let [n, t, d] = tokens.dims();
            fused.push(
                parts
                    .photomaker
                    .encoder
                    .fuse_module
                    .forward(
                        s.main.clone(),
                        id.class_tokens.clone(),
                        tokens.reshape([n * t, d]),
                    )
                    .unwrap(),
            );
        }
        let d = max_diff(&to_vec(Tensor::cat(fused, 0)), &f.values("fused.0"));
        assert!(
            d <= FUSED_ABS,
            "fused main prompt: max |Δ| {d:e} (tolerance {FUSED_ABS:e})"
        );
    }
    let grads = trainer.gradients(&parts, &[batch]).unwrap();
    let step0 = f.step(0);
    let loss0 = rel(grads.loss as f64, step0["loss"].as_f64().unwrap());
    let (mut worst_cos, mut worst_grad, mut bad) = (1f64, 0f64, 0);
    for t in &trained {
        let got = grad_of(&grads.params, t).unwrap_or_else(|| panic!("no gradient: {}", t.key));
        let want = f.reference(&format!("grad.0.{}", t.key), t);
        let scale = max_abs(&want);
        let d = max_diff(&got, &want) / scale.max(1e-30);
        let c = if scale == 0.0 {
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
    assert_eq!(bad, 0, "step 0 gradients off the tolerances");
    let (parts, report0) = trainer.apply(parts, grads).unwrap();
    let norm0 = rel(
        report0.grad_norm as f64,
        step0["grad_norm"].as_f64().unwrap(),
    );

    // Step 1: the whole condition dropped.
    let grads = trainer.gradients(&parts, &[f.batch(1)]).unwrap();
    let step1 = f.step(1);
    let loss1 = rel(grads.loss as f64, step1["loss"].as_f64().unwrap());
    for t in trained.iter().filter(|t| t.key.starts_with("id_encoder.")) {
        let g = grad_of(&grads.params, t).unwrap_or_else(|| {
            panic!("{}: a dropped step still gives it a (zero) gradient", t.key)
        });
        assert_eq!(max_abs(&g), 0.0, "{}", t.key);
    }
    let (parts, report1) = trainer.apply(parts, grads).unwrap();
    let norm1 = rel(
        report1.grad_norm as f64,
        step1["grad_norm"].as_f64().unwrap(),
    );
    for (report, step) in [(&report0, step0), (&report1, step1)] {
        let want: Vec<f64> = step["lrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (a, b) in report.lrs.iter().zip(&want) {
            assert!(
                rel(*a, *b) <= 1e-12,
                "step {}: lrs {:?} vs {want:?}",
                report.step,
                report.lrs
            );
        }
    }
    let mut v = Values(HashMap::new());
    parts.visit(&mut v);
    let mut worst_w = 0f64;
    for t in &trained {
        let want = f.reference(&format!("after.1.{}", t.key), t);
        let d = max_diff(&v.0[&t.id], &want);
        assert!(d <= WEIGHT_ABS, "{} after two steps: max |Δ| {d:e}", t.key);
        worst_w = worst_w.max(d);
    }
    println!(
        "split-prompt: encodings max |Δ| {worst_encoding:e}; loss rel {loss0:e} / {loss1:e}, \
         grad norm rel {norm0:e} / {norm1:e}, step-0 grads min cos {worst_cos}, max rel \
         {worst_grad:e}, weights after two steps max |Δ| {worst_w:e}"
    );
    for (what, r) in [
        ("loss 0", loss0),
        ("loss 1", loss1),
        ("grad norm 0", norm0),
        ("grad norm 1", norm1),
    ] {
        assert!(r <= LOSS_REL, "{what}: rel {r:e} (tolerance {LOSS_REL:e})");
    }

    // Export → load → the same tensors.
    let dir = std::env::temp_dir().join(format!("idforge-split-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pm_path, split_path) = (
        dir.join("photomaker.safetensors"),
        dir.join("split.safetensors"),
    );
    let base = WeightStore::open(&file).unwrap();
    export_split_prompt(
        &parts,
        trainer.unet(),
        &base,
        SplitExport {
            photomaker: &pm_path,
            split_prompt: &split_path,
        },
    )
    .unwrap();
    let pm_back = PhotoMaker::<A>::load_with(&pm_path, &pipe, &options(), &device).unwrap();
    let split_back = SplitPrompt::<A>::load(&split_path, &pipe.unet, &device).unwrap();
    let back = PhotoMakerParts {
        encoder: pm_back.encoder,
        lora: pm_back.lora,
    };
    assert_eq!(
        photomaker_tensors(&parts.photomaker, &pipe.unet, &base).unwrap(),
        photomaker_tensors(&back, &pipe.unet, &base).unwrap(),
        "the PhotoMaker file reads back"
    );
    assert_eq!(
        parts.split.tensors(),
        split_back.tensors(),
        "the split-prompt file reads back"
    );
    // The split file's keys are the checkpoint keys the trainer names them by.
    let mut keys: Vec<String> = parts.split.tensors().into_iter().map(|t| t.0).collect();
    let mut named: Vec<String> = ParamNames::split_prompt(&parts, &pipe.unet)
        .unwrap()
        .iter()
        .filter(|t| t.key.starts_with("split_prompt."))
        .map(|t| t.key.clone())
        .collect();
    keys.sort();
    named.sort();
    assert_eq!(keys, named);
    std::fs::remove_dir_all(&dir).ok();
}
