//! PhotoMaker v1 training on the tiny SDXL pipeline with the PhotoMaker fixture of
//! `diffusion/tests/fixtures/photomaker/` (tools/adapters-reference/make_photomaker_fixtures.py):
//! a step changes the trained groups (LoRA, `visual_projection{,_2}`, fuse module) and not CLIP's
//! backbone, and the export is read back by `PhotoMaker::load_with` with the same tensors.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, PhotoMaker};
use idforge_diffusion::{AddedConditions, DdpmSchedule, Pipeline, ScheduleConfig};
use idforge_models::WeightStore;
use idforge_train::export::param_values;
use idforge_train::photomaker::{
    FROZEN_PREFIX, export_photomaker, fresh_lora, photomaker_groups, photomaker_tensors,
};
use idforge_train::{
    AdamConfig, LossConfig, LrSchedule, NoiseDraw, Optimizer, ParamNames, PhotoMakerParts,
    PhotoMakerTrainer, PmBatch, PmReferences, PmSample, StepConfig,
};

type A = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../diffusion/tests/fixtures")
}

fn options() -> IdEncoderOptions {
    IdEncoderOptions {
        vision_head_dim: 16,
        perceiver_head_dim: 16,
    }
}

fn by_key(parts: &PhotoMakerParts<A>, pipe: &Pipeline<A>) -> HashMap<String, Vec<f32>> {
    let names = ParamNames::photomaker(parts, &pipe.unet).unwrap();
    let mut values = param_values(parts);
    names
        .iter()
        .map(|t| (t.key.clone(), values.remove(&t.id).unwrap()))
        .collect()
}

#[test]
fn a_step_trains_the_groups_and_the_export_loads_back() {
    let device = Default::default();
    let pipe = Pipeline::<A>::load(&fixtures().join("tiny-sdxl"), &device).unwrap();
    let file = fixtures().join("photomaker/photomaker-v1.bin");
    let pm = PhotoMaker::<A>::load_with(&file, &pipe, &options(), &device).unwrap();
    let prompt = pm.encode_prompt(&pipe, "a photo of a man img", 1).unwrap();
    let size = pm.spec().vision.image_size;
    let parts = PhotoMakerParts {
        encoder: pm.encoder.clone(),
        lora: pm.lora.clone(),
    }
    .freeze(&pipe.unet)
    .unwrap();
    let optimizer = Optimizer::new(AdamConfig::adamw(), photomaker_groups(1e-2, 1e-2)).unwrap();
    let config = StepConfig {
        loss: LossConfig::default(),
        max_grad_norm: Some(1.0),
        lr: LrSchedule::default(),
    };
    let schedule = DdpmSchedule::new(&ScheduleConfig::default());
    let mut trainer =
        PhotoMakerTrainer::new(pipe.unet.clone(), &parts, schedule, optimizer, config).unwrap();
    let normal = Distribution::Normal(0.0, 1.0);
    // The run caches the frozen tower's pooled outputs: the tokens from them are the tokens
    // from the pixels.
    let pixels = Tensor::<A, 4>::random([2, 3, size, size], normal, &device);
    let whole = parts.encoder.forward(pixels.clone(), None).unwrap();
    let pooled = parts.encoder.vision.forward(pixels).pooled;
    let split = parts.encoder.forward_pooled(pooled).unwrap();
    assert_eq!(
        whole.into_data().to_vec::<f32>().unwrap(),
        split.into_data().to_vec::<f32>().unwrap()
    );
    let batch = PmBatch {
        latents: Tensor::random([1, 4, 8, 8], normal, &device),
        draw: NoiseDraw {
            noise: Tensor::random([1, 4, 8, 8], normal, &device),
            offset_noise: None,
            timesteps: vec![500],
        },
        samples: vec![PmSample {
            context: prompt.expanded.context.clone(),
            class_tokens: prompt.class_tokens.clone(),
            references: PmReferences::Pixels(Tensor::random([1, 3, size, size], normal, &device)),
        }],
        added: AddedConditions {
            text_embeds: prompt.expanded.pooled.clone().unwrap(),
            time_ids: Tensor::from_floats([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], &device),
        },
        face_boxes: None,
    };
    let before = by_key(&parts, &pipe);
    let (parts, report) = trainer.step(parts, &[batch]).unwrap();
    assert!(
        report.loss.is_finite() && report.grad_norm > 0.0,
        "{report:?}"
    );
    let after = by_key(&parts, &pipe);
    for (key, b) in &before {
        let moved = b.iter().zip(&after[key]).any(|(x, y)| x != y);
        let frozen = key.starts_with(FROZEN_PREFIX);
        // `up` starts at zero only for a fresh LoRA; the fixture's is random, so every trained
        // tensor moves.
        assert_eq!(moved, !frozen, "{key}: moved {moved}");
    }

    let dir = std::env::temp_dir().join(format!("idforge-pm-export-{}", std::process::id()));
    let out = dir.join("photomaker.safetensors");
    let base = WeightStore::open(&file).unwrap();
    export_photomaker(&parts, trainer.unet(), &base, &out).unwrap();
    let written = WeightStore::open(&out).unwrap();
    let mut want: Vec<String> = base.names().map(str::to_string).collect();
    let mut got: Vec<String> = written.names().map(str::to_string).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the export holds the keys of a PhotoMaker file");
    let back = PhotoMaker::<A>::load_with(&out, &pipe, &options(), &device).unwrap();
    let back = PhotoMakerParts {
        encoder: back.encoder,
        lora: back.lora,
    };
    let t1 = photomaker_tensors(&parts, &pipe.unet, &base).unwrap();
    let t2 = photomaker_tensors(&back, &pipe.unet, &base).unwrap();
    assert_eq!(t1.len(), t2.len());
    let mut max = 0f32;
    for (a, b) in t1.iter().zip(&t2) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        for (x, y) in a.2.iter().zip(&b.2) {
            max = max.max((x - y).abs());
        }
    }
    println!("export → load: max |Δ| {max:e} over {} tensors", t1.len());
    assert_eq!(max, 0.0, "export → load must give the same tensors");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_fresh_lora_covers_every_attention_projection_and_exports() {
    let device = Default::default();
    let pipe = Pipeline::<A>::load(&fixtures().join("tiny-sdxl"), &device).unwrap();
    let file = fixtures().join("photomaker/photomaker-v1.bin");
    let pm = PhotoMaker::<A>::load_with(&file, &pipe, &options(), &device).unwrap();
    let lora = fresh_lora(&pipe.unet, 4, &device).unwrap();
    assert_eq!(lora.names().len(), 4 * pipe.unet.attention_layers().len());
    let parts = PhotoMakerParts {
        encoder: pm.encoder,
        lora,
    };
    let dir = std::env::temp_dir().join(format!("idforge-pm-fresh-{}", std::process::id()));
    let out = dir.join("fresh.safetensors");
    let base = WeightStore::open(&file).unwrap();
    export_photomaker(&parts, &pipe.unet, &base, &out).unwrap();
    let back = PhotoMaker::<A>::load_with(&out, &pipe, &options(), &device).unwrap();
    assert_eq!(back.lora.names().len(), parts.lora.names().len());
    let t1 = photomaker_tensors(&parts, &pipe.unet, &base).unwrap();
    let back = PhotoMakerParts {
        encoder: back.encoder,
        lora: back.lora,
    };
    let t2 = photomaker_tensors(&back, &pipe.unet, &base).unwrap();
    assert_eq!(t1, t2);
    std::fs::remove_dir_all(&dir).ok();
}
