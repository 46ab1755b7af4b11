//! The UNet, VAE, text encoders, schedules and whole sampling loops against diffusers 0.38 /
//! transformers 4.57 on the tiny random-weight SD1.5- and SDXL-style pipelines that
//! `tools/diffusers-reference` writes (fixtures in `tests/fixtures/`, f32 on CPU, UNet weights
//! fp16 on disk).
//!
//! Tolerances are max-abs errors relative to the output's scale (its max |value|):
//! - networks (UNet, VAE, text encoders): 1e-4, the bound; measured values are printed;
//! - schedule quantities (ᾱ, σ, one step): 1e-5 (float32 rounding of a few operations);
//! - whole 10-step loops: 1e-4 (a float64 rerun of diffusers itself differs by 1e-6 of scale).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use idforge_diffusion::pipeline::TextEncoder;
use idforge_diffusion::schedulers::{Ddim, EulerDiscrete, Sampler, ScheduleConfig, Spacing};
use idforge_diffusion::{
    AddedConditions, Conditioning, DdpmSchedule, NoHook, Pipeline, Prediction, UNet, UNetInput,
    Vae, denoise,
};
use idforge_models::clip::{ClipTokenizer, ClipWeights};
use serde_json::Value;

type B = Flex;

const NETWORK_TOL: f32 = 1e-4;
const SCHEDULE_TOL: f32 = 1e-5;
const LOOP_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    tensors: ClipWeights,
    json: Value,
}

impl Fixture {
    fn open(name: &str) -> Self {
        let dir = fixtures();
        let tensors =
            ClipWeights::open(&dir.join(format!("{name}.safetensors"))).unwrap_or_else(|e| {
                panic!("{name}.safetensors: {e} (run tools/diffusers-reference/run)")
            });
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("fixture json"),
        )
        .expect("fixture json parses");
        Self { tensors, json }
    }

    fn raw(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        self.tensors
            .read_f32(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    fn t<const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let (shape, values) = self.raw(key);
        assert_eq!(shape.len(), D, "{key} has shape {shape:?}");
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
}

/// Max-abs difference over the reference's max |value|; fails above `tol`.
fn assert_close<const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    want: Tensor<B, D>,
    tol: f32,
) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.into_data().to_vec::<f32>().expect("f32");
    let w = want.into_data().to_vec::<f32>().expect("f32");
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let max_abs = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(g.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let rel = max_abs / scale;
    println!("{what}: max |Δ| {max_abs:.3e}, scale {scale:.3e}, relative {rel:.3e}");
    assert!(
        rel <= tol,
        "{what}: max |Δ| {max_abs:e} is {rel:e} of the scale {scale}, above {tol:e}"
    );
    rel
}

fn sd_dir() -> PathBuf {
    fixtures().join("tiny-sd")
}
fn sdxl_dir() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

fn unet_parity(folder: &Path, fixture: &str, sdxl: bool) {
    let f = Fixture::open(fixture);
    let device = Default::default();
    let unet = UNet::<B>::load(&folder.join("unet"), &device).expect("unet loads");
    let added = sdxl.then(|| AddedConditions {
        text_embeds: f.t("unet.text_embeds"),
        time_ids: f.t("unet.time_ids"),
    });
    let out = unet.forward(&UNetInput {
        sample: f.t("unet.sample"),
        timesteps: f.t("unet.timestep"),
        context: f.t("unet.encoder_hidden_states"),
        added,
    });
    assert_close(
        &format!("{fixture} unet"),
        out,
        f.t("unet.out"),
        NETWORK_TOL,
    );
}

#[test]
fn sd_unet_matches_diffusers() {
    unet_parity(&sd_dir(), "sd_parity", false);
}

#[test]
fn sdxl_unet_matches_diffusers() {
    unet_parity(&sdxl_dir(), "sdxl_parity", true);
}

fn vae_parity(folder: &Path, fixture: &str) {
    let f = Fixture::open(fixture);
    let device = Default::default();
    let vae = Vae::<B>::load(&folder.join("vae"), &device).expect("vae loads");
    let scaling = f.json["vae"]["scaling_factor"]
        .as_f64()
        .expect("scaling factor");
    assert_eq!(vae.scaling_factor(), scaling, "{fixture}: scaling factor");
    let posterior = vae.encode(f.t("vae.image"));
    assert_close(
        &format!("{fixture} vae mean"),
        posterior.mean,
        f.t("vae.posterior_mean"),
        NETWORK_TOL,
    );
    assert_close(
        &format!("{fixture} vae logvar"),
        posterior.logvar,
        f.t("vae.posterior_logvar"),
        NETWORK_TOL,
    );
    let decoded = vae.decode(f.t("vae.decode_input"));
    assert_close(
        &format!("{fixture} vae decoded"),
        decoded,
        f.t("vae.decoded"),
        NETWORK_TOL,
    );
}

#[test]
fn sd_vae_matches_diffusers() {
    vae_parity(&sd_dir(), "sd_parity");
}

#[test]
fn sdxl_vae_matches_diffusers() {
    vae_parity(&sdxl_dir(), "sdxl_parity");
}

fn ids_of(json: &Value) -> Vec<Vec<u32>> {
    json["token_ids"]
        .as_array()
        .expect("token ids")
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn text_parity(folder: &Path, fixture: &str, section: &str, encoder: &str, tokenizer: &str) {
    let f = Fixture::open(fixture);
    let device = Default::default();
    let te = TextEncoder::<B>::load(&folder.join(encoder), &folder.join(tokenizer), &device)
        .expect("text encoder loads");
    let prompts: Vec<&str> = f.json[section]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let want_ids = ids_of(&f.json[section]);
    for (prompt, want) in prompts.iter().zip(&want_ids) {
        assert_eq!(
            &te.tokenizer.encode(prompt).unwrap(),
            want,
            "{fixture} {section}: ids of {prompt:?}"
        );
    }
    let flat: Vec<i64> = want_ids.iter().flatten().map(|&i| i64::from(i)).collect();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(flat, [want_ids.len(), want_ids[0].len()]),
        &device,
    );
    let out = te.tower.forward(ids);
    let tag = format!("{fixture} {section}");
    assert_close(
        &format!("{tag} last"),
        out.last_hidden_state,
        f.t(&format!("{section}.last_hidden_state")),
        NETWORK_TOL,
    );
    assert_close(
        &format!("{tag} penultimate"),
        out.penultimate_hidden_state,
        f.t(&format!("{section}.penultimate_hidden_state")),
        NETWORK_TOL,
    );
    assert_close(
        &format!("{tag} pooled"),
        out.pooled,
        f.t(&format!("{section}.pooled")),
        NETWORK_TOL,
    );
    if section == "text_2" {
        let embeds = out.embeds.expect("text_encoder_2 has a projection");
        assert_close(
            &format!("{tag} text_embeds"),
            embeds,
            f.t("text_2.text_embeds"),
            NETWORK_TOL,
        );
    } else {
        assert!(out.embeds.is_none(), "CLIPTextModel has no projection");
    }
}

#[test]
fn sd_text_encoder_and_tokenizer_match_transformers() {
    text_parity(&sd_dir(), "sd_parity", "text", "text_encoder", "tokenizer");
}

#[test]
fn sdxl_text_encoders_and_tokenizers_match_transformers() {
    text_parity(
        &sdxl_dir(),
        "sdxl_parity",
        "text",
        "text_encoder",
        "tokenizer",
    );
    text_parity(
        &sdxl_dir(),
        "sdxl_parity",
        "text_2",
        "text_encoder_2",
        "tokenizer_2",
    );
}

#[test]
fn tokenizer_2_pads_with_exclamation_mark() {
    let t = ClipTokenizer::from_folder(&sdxl_dir().join("tokenizer_2")).unwrap();
    assert_eq!(t.special_ids(), (998, 999, 0));
}

#[test]
fn pipelines_encode_prompts_as_diffusers() {
    let device = Default::default();
    let sd = Fixture::open("sd_parity");
    let pipe = Pipeline::<B>::load(&sd_dir(), &device).expect("tiny SD loads");
    let prompt = sd.json["encode_prompt"]["prompt"].as_str().unwrap();
    let c = pipe.encode_prompt(prompt).unwrap();
    assert!(c.pooled.is_none());
    assert_close(
        "sd prompt_embeds",
        c.context,
        sd.t("prompt_embeds"),
        NETWORK_TOL,
    );
    let n = pipe.encode_negative(None).unwrap();
    assert_close(
        "sd negative (None encodes \"\")",
        n.context,
        sd.t("negative_prompt_embeds"),
        NETWORK_TOL,
    );

    let xl = Fixture::open("sdxl_parity");
    let pipe = Pipeline::<B>::load(&sdxl_dir(), &device).expect("tiny SDXL loads");
    let c = pipe.encode_prompt(prompt).unwrap();
    assert_close(
        "sdxl prompt_embeds",
        c.context,
        xl.t("prompt_embeds"),
        NETWORK_TOL,
    );
    assert_close(
        "sdxl pooled",
        c.pooled.unwrap(),
        xl.t("pooled_prompt_embeds"),
        NETWORK_TOL,
    );
    let n = pipe.encode_negative(Some("")).unwrap();
    assert_close(
        "sdxl negative \"\"",
        n.context,
        xl.t("negative_prompt_embeds"),
        NETWORK_TOL,
    );
    assert_close(
        "sdxl negative pooled \"\"",
        n.pooled.unwrap(),
        xl.t("negative_pooled_prompt_embeds"),
        NETWORK_TOL,
    );
    // diffusers' force_zeros_for_empty_prompt: no negative prompt at all → zeros.
    let z = pipe.encode_negative(None).unwrap();
    assert_eq!(z.context.abs().max().into_scalar(), 0.0);
    assert_eq!(z.pooled.unwrap().abs().max().into_scalar(), 0.0);
}

fn schedule_of(v: &Value) -> ScheduleConfig {
    serde_json::from_value(v.clone()).expect("scheduler config parses")
}

#[test]
fn ddpm_training_schedule_matches_diffusers() {
    let f = Fixture::open("schedulers");
    let config = schedule_of(&f.json["ddpm"]["config"]);
    let ddpm = DdpmSchedule::new(&config);
    let n = ddpm.len();
    let ac = Tensor::<B, 1>::from_data(
        TensorData::new(ddpm.alphas_cumprod.clone(), [n]),
        &Default::default(),
    );
    assert_close(
        "alphas_cumprod",
        ac,
        f.t("ddpm.alphas_cumprod"),
        SCHEDULE_TOL,
    );
    let t: Vec<usize> = f.json["ddpm"]["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let noisy = ddpm.add_noise(f.t("ddpm.x0"), f.t("ddpm.noise"), &t);
    assert_close("add_noise", noisy, f.t("ddpm.noisy"), SCHEDULE_TOL);
    let v = ddpm.velocity(f.t("ddpm.x0"), f.t("ddpm.noise"), &t);
    assert_close("get_velocity", v, f.t("ddpm.v_target"), SCHEDULE_TOL);
    assert_eq!(ddpm.prediction, Prediction::Epsilon);
}

/// Runs a chain of sampler steps on the fixture's model outputs and compares every step.
fn check_chain(f: &Fixture, sampler: &dyn Sampler<B>, prefix: &str, euler: bool) {
    let mut sample: Tensor<B, 4> = f.t("steps.sample") * sampler.init_noise_sigma();
    assert_close(
        &format!("{prefix} sample0"),
        sample.clone(),
        f.t(&format!("{prefix}.sample0")),
        SCHEDULE_TOL,
    );
    for i in 0..sampler.timesteps().len() {
        if euler {
            let scaled = sampler.scale_model_input(sample.clone(), i);
            assert_close(
                &format!("{prefix} scaled {i}"),
                scaled,
                f.t(&format!("{prefix}.step.{i}.scaled")),
                SCHEDULE_TOL,
            );
        }
        sample = sampler.step(f.t(&format!("steps.model_output.{i}")), i, sample);
        assert_close(
            &format!("{prefix} step {i}"),
            sample.clone(),
            f.t(&format!("{prefix}.step.{i}.prev_sample")),
            SCHEDULE_TOL,
        );
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn ddim_timesteps_and_steps_match_diffusers() {
    let f = Fixture::open("schedulers");
    let steps = f.json["ddim"]["num_inference_steps"].as_u64().unwrap() as usize;
    for (name, spacing) in [
        ("leading", Spacing::Leading),
        ("trailing", Spacing::Trailing),
        ("linspace", Spacing::Linspace),
    ] {
        let s = &f.json["ddim"]["spacings"][name];
        let config = schedule_of(&s["config"]);
        assert_eq!(config.timestep_spacing, spacing);
        let ddim = Ddim::new(&config, steps).unwrap();
        let want: Vec<i64> = s["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            ddim.timesteps_int(),
            want.as_slice(),
            "DDIM {name} timesteps"
        );
        check_chain(&f, &ddim, s["prefix"].as_str().unwrap(), false);
    }
    let v = &f.json["ddim"]["vpred"];
    let config = schedule_of(&v["config"]);
    assert_eq!(config.prediction_type, Prediction::VPrediction);
    check_chain(&f, &Ddim::new(&config, steps).unwrap(), "ddim.vpred", false);
}

#[test]
fn euler_timesteps_sigmas_and_steps_match_diffusers() {
    let f = Fixture::open("schedulers");
    let steps = f.json["euler"]["num_inference_steps"].as_u64().unwrap() as usize;
    for name in ["leading", "trailing", "linspace"] {
        let s = &f.json["euler"]["spacings"][name];
        let prefix = s["prefix"].as_str().unwrap();
        let euler = EulerDiscrete::new(&schedule_of(&s["config"]), steps).unwrap();
        assert_eq!(
            Sampler::<B>::timesteps(&euler),
            floats(&s["timesteps"]).as_slice(),
            "Euler {name} timesteps"
        );
        let sig = Tensor::<B, 1>::from_data(
            TensorData::new(euler.sigmas().to_vec(), [steps + 1]),
            &Default::default(),
        );
        assert_close(
            &format!("Euler {name} sigmas"),
            sig,
            f.t(&format!("{prefix}.sigmas")),
            SCHEDULE_TOL,
        );
        let init = s["init_noise_sigma"].as_f64().unwrap() as f32;
        assert!((Sampler::<B>::init_noise_sigma(&euler) - init).abs() <= init * SCHEDULE_TOL);
        check_chain(&f, &euler, prefix, true);
    }
    let v = &f.json["euler"]["vpred"];
    check_chain(
        &f,
        &EulerDiscrete::new(&schedule_of(&v["config"]), steps).unwrap(),
        "euler.vpred",
        true,
    );
}

fn loop_parity(
    sampler: &dyn Sampler<B>,
    unet: &UNet<B>,
    f: &Fixture,
    key: &str,
    cond: Conditioning<B>,
    uncond: Conditioning<B>,
    time_ids: Option<[f32; 6]>,
) -> Tensor<B, 4> {
    let guidance = f.json["loop"]["guidance_scale"].as_f64().unwrap() as f32;
    let mut steps = 0;
    let out = denoise(
        unet,
        sampler,
        f.t(&format!("loop.{key}.noise")),
        &cond,
        Some(&uncond),
        guidance,
        time_ids,
        &NoHook,
        &mut |_, _| steps += 1,
    );
    assert_eq!(steps, 10);
    assert_close(
        &format!("{key} loop final latent"),
        out.clone(),
        f.t(&format!("loop.{key}.final")),
        LOOP_TOL,
    );
    out
}

#[test]
fn sd_ddim_and_euler_loops_end_at_diffusers_latents() {
    let f = Fixture::open("sd_parity");
    let device = Default::default();
    let pipe = Pipeline::<B>::load(&sd_dir(), &device).unwrap();
    let cond = || Conditioning {
        context: f.t("loop.cond"),
        pooled: None,
    };
    let uncond = || Conditioning {
        context: f.t("loop.uncond"),
        pooled: None,
    };
    let ddim = Ddim::new(&pipe.schedule, 10).unwrap();
    let latent = loop_parity(&ddim, &pipe.unet, &f, "ddim", cond(), uncond(), None);
    assert_close(
        "ddim decoded image",
        pipe.decode(latent),
        f.t("loop.ddim.image"),
        NETWORK_TOL,
    );
    let euler = EulerDiscrete::new(&pipe.schedule, 10).unwrap();
    loop_parity(&euler, &pipe.unet, &f, "euler", cond(), uncond(), None);
}

#[test]
fn sdxl_euler_loop_ends_at_diffusers_latent() {
    let f = Fixture::open("sdxl_parity");
    let device = Default::default();
    let pipe = Pipeline::<B>::load(&sdxl_dir(), &device).unwrap();
    let ids: Vec<f32> = f.raw("loop.sdxl.time_ids").1[..6].to_vec();
    let cond = Conditioning {
        context: f.t("prompt_embeds"),
        pooled: Some(f.t("pooled_prompt_embeds")),
    };
    let uncond = Conditioning {
        context: f.t("negative_prompt_embeds"),
        pooled: Some(f.t("negative_pooled_prompt_embeds")),
    };
    let euler = EulerDiscrete::new(&pipe.schedule, 10).unwrap();
    let time_ids: [f32; 6] = ids.try_into().unwrap();
    let latent = loop_parity(&euler, &pipe.unet, &f, "sdxl", cond, uncond, Some(time_ids));
    assert_close(
        "sdxl decoded image",
        pipe.decode(latent),
        f.t("loop.sdxl.image"),
        NETWORK_TOL,
    );
}

#[test]
fn attention_layers_are_named_as_diffusers_processors() {
    let device = Default::default();
    let unet = UNet::<B>::load(&sdxl_dir().join("unet"), &device).unwrap();
    let layers = unet.attention_layers();
    // SDXL tiny: down level 1 has 2 attentions × 2 transformer layers, up level 0 has 3 × 2,
    // the mid block 1 × 2: 12 transformer blocks, each with attn1 and attn2.
    assert_eq!(layers.len(), 24);
    assert_eq!(
        layers[0].name,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    );
    assert_eq!(
        layers[1].name,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    );
    assert!(layers[1].is_cross() && !layers[0].is_cross());
    assert_eq!(layers[1].cross_attention_dim, Some(64));
    assert_eq!(
        layers.last().unwrap().name,
        "mid_block.attentions.0.transformer_blocks.1.attn2"
    );
}
