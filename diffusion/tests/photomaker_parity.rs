//! PhotoMaker v1 / v2 against TencentARC/PhotoMaker's own code (fixtures from
//! tools/adapters-reference/make_photomaker_fixtures.py: tiny random-weight ID encoders built from
//! the repo's classes, loaded by its `PhotoMakerStableDiffusionXLPipeline` on the tiny SDXL
//! pipeline; v1 saved as the `.bin` pickle, v2 as the safetensors variant).
//!
//! Tolerances: ID-encoder tokens and prompt embeddings (before and after the fuse) within 1e-4
//! absolute (measured: printed by each test, about 1e-6); the guided loop's decoded image within
//! one 8-bit level.

mod common;

use common::{B, Fixture, fixtures};

use std::path::PathBuf;

use burn::tensor::Tensor;
use idforge_diffusion::adapters::photomaker::{
    IdEncoderOptions, IdEncoderSpec, PhotoMaker, Version, trigger_ids,
};
use idforge_diffusion::pipeline::to_rgb8;
use idforge_diffusion::{NoHook, Pipeline, SampleSettings, SamplerKind};
use idforge_models::WeightStore;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::readback::ReadBack;
use serde_json::Value;

const EMBED_TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    fixtures().join("photomaker")
}

impl Fixture {
    fn options(&self) -> IdEncoderOptions {
        IdEncoderOptions {
            vision_head_dim: self.meta["vision_head_dim"].as_u64().unwrap() as usize,
            perceiver_head_dim: self.meta["perceiver_head_dim"].as_u64().unwrap() as usize,
        }
    }

    fn file(&self, version: &str) -> PathBuf {
        dir().join(self.meta["files"][version].as_str().unwrap())
    }
}

fn pipeline() -> Pipeline<B> {
    Pipeline::load(&fixtures().join("tiny-sdxl"), &Default::default()).unwrap()
}

fn load(f: &Fixture, version: &str, pipe: &Pipeline<B>) -> PhotoMaker<B> {
    PhotoMaker::load_with(&f.file(version), pipe, &f.options(), &Default::default()).unwrap()
}

fn max_diff<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let d = got
        .to_f32_vec()
        .iter()
        .zip(want.to_f32_vec())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{what}: max |Δ| {d:.2e}");
    d
}

fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    let d = max_diff(what, got, want);
    assert!(d <= EMBED_TOL, "{what}: max |Δ| {d} > {EMBED_TOL}");
}

/// v2's inputs: the ArcFace stand-ins of the first `n` references.
fn id_embeds(f: &Fixture, version: &str, n: usize) -> Option<Tensor<B, 2>> {
    (version == "v2").then(|| f.t::<2>("id_embeds").narrow(0, 0, n))
}

#[test]
fn full_size_key_lists_match_the_reference_classes() {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("full_keys.json")).unwrap())
            .unwrap();
    for (version, name) in [(Version::V1, "v1"), (Version::V2, "v2")] {
        let mut want: Vec<(String, Vec<usize>)> = json[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let shape = e[1].as_array().unwrap();
                (
                    e[0].as_str().unwrap().to_string(),
                    shape.iter().map(|v| v.as_u64().unwrap() as usize).collect(),
                )
            })
            .collect();
        let mut got = IdEncoderSpec::full_size(version).tensors();
        want.sort();
        got.sort();
        assert_eq!(got.len(), want.len(), "{name}: tensor count");
        assert_eq!(got, want, "{name}: names and shapes");
    }
}

#[test]
fn tiny_files_hold_exactly_what_the_loader_reads() {
    let f = Fixture::open("photomaker");
    for version in ["v1", "v2"] {
        let store = WeightStore::open(f.file(version)).unwrap();
        let mut stored: Vec<_> = store
            .shapes()
            .into_iter()
            .filter(|(n, _)| n.starts_with("id_encoder."))
            .collect();
        let spec = IdEncoderSpec::detect(&store.with_prefix("id_encoder."), &f.options()).unwrap();
        assert_eq!(spec.version.name(), version);
        let mut read = spec.tensors();
        stored.sort();
        read.sort();
        assert_eq!(read, stored, "{version}");
    }
}

#[test]
fn id_encoders_match_the_reference() {
    let f = Fixture::open("photomaker");
    let pipe = pipeline();
    for (version, tokens) in [("v1", 1), ("v2", 2)] {
        let pm = load(&f, version, &pipe);
        assert_eq!(pm.tokens_per_reference(), tokens);
        // Rank-2 LoRA on q, k, v, out of the tiny UNet's 24 attention layers.
        assert_eq!(pm.lora.names().len(), 96, "{version} LoRA");
        let got = pm
            .id_tokens(f.t("pixels"), id_embeds(&f, version, 2))
            .unwrap();
        assert_close(
            &format!("{version} ID tokens"),
            got,
            f.t(&format!("{version}.id_tokens")),
        );
    }
}

#[test]
fn fused_prompt_embeddings_match_the_reference() {
    let f = Fixture::open("photomaker");
    let pipe = pipeline();
    let prompt = f.meta["prompt"].as_str().unwrap();
    for version in ["v1", "v2"] {
        let pm = load(&f, version, &pipe);
        for n in [1usize, 2] {
            let k = format!("{version}.refs{n}");
            let encoded = pm.encode_prompt(&pipe, prompt, n).unwrap();
            let mask: Vec<usize> = f.meta[version][format!("refs{n}")]["class_tokens_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(
                encoded.class_tokens.clone().collect::<Vec<_>>(),
                mask,
                "{k} class tokens"
            );
            if n == 2 {
                assert_close(
                    &format!("{k} prompt embeddings"),
                    encoded.expanded.context.clone(),
                    f.t(&format!("{k}.prompt_embeds")),
                );
            }
            assert_close(
                &format!("{k} pooled"),
                encoded.expanded.pooled.clone().unwrap(),
                f.t(&format!("{k}.pooled")),
            );
            let tokens = pm
                .id_tokens(
                    f.t::<4>("pixels").narrow(0, 0, n),
                    id_embeds(&f, version, n),
                )
                .unwrap();
            assert_close(
                &format!("{k} fused"),
                pm.fuse(&encoded, tokens).unwrap(),
                f.t(&format!("{k}.fused")),
            );
        }
    }
}

#[test]
fn guided_loops_end_at_the_reference_image() {
    let f = Fixture::open("photomaker");
    let pipe = pipeline();
    let l = &f.meta["loop"];
    let (h, w) = (
        l["height"].as_u64().unwrap() as usize,
        l["width"].as_u64().unwrap() as usize,
    );
    let settings = SampleSettings {
        steps: l["steps"].as_u64().unwrap() as usize,
        guidance: l["guidance"].as_f64().unwrap() as f32,
        sampler: SamplerKind::Euler,
        time_ids: [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32],
    };
    let start_merge_step = l["start_merge_step"].as_u64().unwrap() as usize;
    let refs = l["references"].as_u64().unwrap() as usize;
    for version in ["v1", "v2"] {
        let pm = load(&f, version, &pipe);
        let cond = pm
            .conditioning(
                &pipe,
                l["prompt"].as_str().unwrap(),
                f.t::<4>("pixels").narrow(0, 0, refs),
                id_embeds(&f, version, refs),
            )
            .unwrap();
        let k = |s: &str| format!("{version}.loop.{s}");
        assert_close(
            &k("context before the merge"),
            cond.text_only.context.clone(),
            f.t(&k("context_first")),
        );
        assert_close(
            &k("pooled before the merge"),
            cond.text_only.pooled.clone().unwrap(),
            f.t(&k("pooled_first")),
        );
        assert_close(
            &k("context after the merge"),
            cond.fused.context.clone(),
            f.t(&k("context_last")),
        );
        assert_close(
            &k("pooled after the merge"),
            cond.fused.pooled.clone().unwrap(),
            f.t(&k("pooled_last")),
        );
        let uncond = pipe.encode_negative(None).unwrap();
        let plan = cond.plan(Some(&uncond), pm.hook(), start_merge_step);
        let latents = pipe
            .sample_with(&plan, &settings, f.t("noise"), &mut |_, _| {})
            .unwrap();
        let image = pipe.decode(latents);
        let want = f.t::<4>(&k("image"));
        let [_, c, ih, iw] = want.dims();
        let (_, _, got) = to_rgb8(image.reshape([c, ih, iw]));
        let (_, _, want) = to_rgb8(want.reshape([c, ih, iw]));
        let levels = got
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("{version} loop image: max {levels} 8-bit levels");
        assert!(levels <= 1, "{version} loop image: {levels} levels off");
        if version == "v1" {
            // The LoRA matters: without it the image is far from the reference's.
            let plan = cond.plan(Some(&uncond), &NoHook, start_merge_step);
            let latents = pipe
                .sample_with(&plan, &settings, f.t("noise"), &mut |_, _| {})
                .unwrap();
            let (_, _, base) = to_rgb8(pipe.decode(latents).reshape([c, ih, iw]));
            let off = base.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
            assert!(off > Some(1), "without the LoRA: {off:?} levels off");
        }
    }
}

#[test]
fn prompts_need_exactly_one_trigger() {
    let pipe = pipeline();
    let tok = &pipe.encoders[1].tokenizer;
    for bad in ["a photo of a man", "a man img and a woman img"] {
        let e = trigger_ids(tok, bad, "img", 2).unwrap_err().to_string();
        assert!(e.contains("trigger") && e.contains(bad), "{e}");
    }
    let ok = trigger_ids(tok, "a man img", "img", 3).unwrap();
    assert_eq!(ok.class_tokens, 2..5);
    assert_eq!(ok.ids[2..5], [ok.ids[2]; 3]);
    assert_eq!(ok.ids.len(), 77);
    // The text-only prompt is the prompt without the trigger.
    assert_eq!(ok.text_only, tok.encode("a man").unwrap());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let f = Fixture::open("photomaker");
    let pipe = pipeline();
    let v2 = load(&f, "v2", &pipe);
    let e = v2.id_tokens(f.t("pixels"), None).unwrap_err().to_string();
    assert!(e.contains("ArcFace"), "{e}");
    let e = v2
        .id_tokens(f.t("pixels"), id_embeds(&f, "v2", 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 reference images"), "{e}");
    let e = v2
        .id_tokens(Tensor::zeros([1, 3, 16, 16], &Default::default()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[references, 3, 32, 32]"), "{e}");
    let ip = fixtures().join("ip-adapter/sdxl_plain.safetensors");
    let e = PhotoMaker::load(&ip, &pipe, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("IP-Adapter"), "{e}");
    // The published head width (128) does not divide the tiny perceiver's 64.
    let e = PhotoMaker::load(&f.file("v2"), &pipe, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("head width"), "{e}");
}

/// A float32 safetensors file of these tensors (the format's header by hand: no writer in
/// this crate's dependencies).
fn write_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// The v2 fixture's `lora_weights.*` (attention-processor spelling), renamed by `rename`.
fn respelled_lora(rename: impl Fn(&str) -> String) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let f = Fixture::open("photomaker");
    let store = WeightStore::open(f.file("v2")).unwrap();
    store
        .shapes()
        .into_iter()
        .filter(|(n, _)| n.starts_with("lora_weights."))
        .map(|(n, shape)| {
            let values = store.read_f32(&n).unwrap().1;
            (rename(&n), shape, values)
        })
        .collect()
}

fn load_lora(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    pipe: &Pipeline<B>,
) -> Result<idforge_diffusion::adapters::lora::Lora<B>, idforge_diffusion::DiffusionError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.safetensors");
    write_safetensors(&path, tensors);
    let store = WeightStore::open(&path).unwrap();
    idforge_diffusion::adapters::lora::Lora::load_unet(
        &store,
        "lora_weights.",
        &pipe.unet,
        &Default::default(),
    )
}

#[test]
fn unet_lora_reads_diffusers_spellings_alike() {
    let pipe = pipeline();
    let processor = load_lora(&respelled_lora(str::to_string), &pipe).unwrap();
    // LoRACompatibleLinear's `.lora.down` and PEFT's `.lora_A` (to_out as `to_out.0`).
    let old = |n: &str| {
        n.replace(".processor.", ".")
            .replace(".to_out_lora.", ".to_out.0.lora.")
            .replace("_lora.", ".lora.")
    };
    let peft = |n: &str| {
        old(n)
            .replace(".lora.down.", ".lora_A.")
            .replace(".lora.up.", ".lora_B.")
    };
    for (what, rename) in [
        ("lora.down", &old as &dyn Fn(&str) -> String),
        ("lora_A", &peft),
    ] {
        let other = load_lora(&respelled_lora(rename), &pipe).unwrap();
        assert_eq!(other.names(), processor.names(), "{what}");
        for (a, b) in other.layers.iter().zip(&processor.layers) {
            assert_eq!(
                a.down.weight.val().to_f32_vec(),
                b.down.weight.val().to_f32_vec()
            );
            assert_eq!(
                a.up.weight.val().to_f32_vec(),
                b.up.weight.val().to_f32_vec()
            );
        }
    }
    assert!(
        processor
            .names()
            .iter()
            .any(|n| n.ends_with("attn2.to_out.0"))
    );
}

#[test]
fn unet_lora_refuses_what_diffusers_would_not_load_as_a_unet_lora() {
    let pipe = pipeline();
    let base = respelled_lora(str::to_string);
    let with = |extra: (String, Vec<usize>, Vec<f32>)| {
        let mut t = base.clone();
        t.push(extra);
        load_lora(&t, &pipe).unwrap_err().to_string()
    };
    let cases = [
        (
            "lora_weights.lora_unet_down_blocks_1_attn1_to_q.lora_down.weight",
            "kohya",
        ),
        (
            "lora_weights.text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
            "text-encoder",
        ),
        (
            "lora_weights.unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.alpha",
            "not a LoRA matrix",
        ),
        (
            "lora_weights.unet.down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
            "down or up",
        ),
    ];
    for (key, want) in cases {
        let e = with((key.to_string(), vec![2, 4], vec![0.0; 8]));
        assert!(e.contains(want), "{key}: {e}");
    }
    // A LoRA made for other widths.
    let mut t = base.clone();
    for (name, shape, _) in t.iter_mut() {
        if name.ends_with(
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
        ) {
            shape[1] += 1;
        }
    }
    for (name, shape, values) in t.iter_mut() {
        if name.ends_with("transformer_blocks.0.attn1.processor.to_q_lora.down.weight")
            && name.contains("down_blocks.1.attentions.0")
        {
            values.resize(shape.iter().product(), 0.0);
        }
    }
    let e = load_lora(&t, &pipe).unwrap_err().to_string();
    assert!(e.contains("another base model"), "{e}");
}

#[test]
fn reference_images_preprocess_as_clip_image_processor() {
    let f = Fixture::open("photomaker");
    let pipe = pipeline();
    let pm = load(&f, "v1", &pipe);
    let rgb: Vec<(usize, usize, Vec<u8>)> = ["ref0.png", "ref1.png"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir().join(name)).unwrap();
            let d = idforge_core::image_io::decode(&bytes, 1 << 20).unwrap();
            let (w, h) = (d.width as usize, d.height as usize);
            (w, h, d.image.to_rgb8().into_raw())
        })
        .collect();
    let views: Vec<RgbView<'_>> = rgb
        .iter()
        .map(|(width, height, data)| RgbView {
            width: *width,
            height: *height,
            data,
        })
        .collect();
    let d = max_diff(
        "preprocessed pixels",
        pm.preprocess(&views, &Default::default()),
        f.t("pixels"),
    );
    assert!(d <= 1e-6, "pixels: {d}");
}
