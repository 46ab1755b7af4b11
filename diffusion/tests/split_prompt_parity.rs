//! The split-prompt adapter against persongen's `myIPAttnProcessorTwoConds2_0` installed on the
//! tiny SDXL UNet (fixtures from tools/adapters-reference/make_split_prompt_fixtures.py,
//! diffusers 0.38.0, persongen's processor imported from a checkout): the UNet output for fixed
//! main / background / body tokens, and a whole guided Euler loop's image from prompts encoded
//! as persongen's pipeline encodes them.
//!
//! Tolerances: the UNet output within 1e-4 of its scale (max |value|), as every UNet parity
//! here; the loop's image within one 8-bit level (1/255). Measured values are printed.

mod common;

use common::{B, Fixture as Parity, fixtures};

use burn::tensor::Tensor;
use idforge_diffusion::adapters::split_prompt::{
    SplitPrompt, SplitPrompts, SplitScale, encode_split_prompt,
};
use idforge_diffusion::{
    AddedConditions, Hooks, Pipeline, SampleSettings, SamplerKind, UNet, UNetInput,
};
use idforge_models::WeightStore;
use idforge_models::readback::ReadBack;

const UNET_TOL: f32 = 1e-4;

impl Parity {
    fn scale(&self) -> SplitScale {
        let s = &self.meta["scales"];
        SplitScale {
            background: s["background"].as_f64().unwrap() as f32,
            body: s["body"].as_f64().unwrap() as f32,
        }
    }

    /// The UNet's inputs with the main tokens as context (the parts go through the hook).
    fn input(&self) -> UNetInput<B> {
        UNetInput {
            sample: self.t("sample"),
            timesteps: self.t("timestep"),
            context: self.t("main"),
            added: Some(AddedConditions {
                text_embeds: self.t("text_embeds"),
                time_ids: self.t("time_ids"),
            }),
        }
    }

    fn parts(&self) -> idforge_diffusion::adapters::split_prompt::SplitConditioning<B> {
        use idforge_diffusion::Conditioning;
        use idforge_diffusion::adapters::split_prompt::{PartTokens, SplitConditioning};
        SplitConditioning {
            cond: Conditioning {
                context: self.t("main"),
                pooled: Some(self.t("text_embeds")),
            },
            uncond: None,
            parts: PartTokens {
                background: self.t("background"),
                body: self.t("body"),
            },
            uncond_parts: None,
        }
    }
}

/// Max |Δ| over the reference's max |value|.
fn rel_diff<const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let g = got.to_f32_vec();
    let w = want.to_f32_vec();
    assert!(g.iter().all(|v| v.is_finite()), "non-finite output");
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    g.iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn unet() -> UNet<B> {
    UNet::load(&fixtures().join("tiny-sdxl/unet"), &Default::default()).unwrap()
}

fn adapter(unet: &UNet<B>) -> SplitPrompt<B> {
    SplitPrompt::load(
        &fixtures().join("split-prompt/adapter.safetensors"),
        unet,
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn unet_output_with_separate_scales_matches_persongens_processor() {
    let p = Parity::open("split-prompt");
    let unet = unet();
    let adapter = adapter(&unet);
    let parts = p.parts();
    for (scale, key) in [
        (p.scale(), "scaled.out"),
        (SplitScale::default(), "unit.out"),
    ] {
        let got = unet.forward_with(&p.input(), &adapter.hook(&parts, scale));
        let want = p.t::<4>(key);
        let diff = rel_diff(got, want.clone());
        let effect = rel_diff(p.t::<4>("base.out"), want);
        println!("{key}: max |Δ| {diff:.2e} of scale (the adapter's own effect {effect:.2e})");
        assert!(diff <= UNET_TOL, "{key}: {diff:e} above {UNET_TOL:e}");
        assert!(
            effect > 1e-2,
            "{key}: the adapter changes nothing ({effect})"
        );
    }
}

#[test]
fn zero_scales_give_the_plain_unet() {
    let p = Parity::open("split-prompt");
    let unet = unet();
    let adapter = adapter(&unet);
    let zero = SplitScale {
        background: 0.0,
        body: 0.0,
    };
    let plain = unet.forward(&p.input());
    let hooked = unet.forward_with(&p.input(), &adapter.hook(&p.parts(), zero));
    let diff = (plain.clone() - hooked).abs().max().into_scalar();
    assert_eq!(diff, 0.0, "s_bg = s_body = 0 changed the output by {diff}");
    // And the plain UNet is diffusers' on the main tokens alone.
    let d = rel_diff(plain, p.t("base.out"));
    println!("base: max |Δ| {d:.2e} of scale");
    assert!(d <= UNET_TOL, "{d:e}");
}

#[test]
fn persongens_checkpoint_dict_loads_the_same_weights() {
    let unet = unet();
    let ours = adapter(&unet);
    let theirs = SplitPrompt::<B>::load(
        &fixtures().join("split-prompt/persongen_state.pth"),
        &unet,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(ours.tensors(), theirs.tensors());
    assert_eq!(ours.layer_indices(), theirs.layer_indices());
    // SDXL tiny: 12 transformer blocks, cross-attention at the odd indices.
    assert_eq!(ours.layer_indices().len(), 12);
    assert!(ours.layer_indices().iter().all(|i| i % 2 == 1));
}

#[test]
fn guided_loop_image_is_within_one_level_of_persongens_pipeline() {
    let p = Parity::open("split-prompt");
    let device = Default::default();
    let pipe = Pipeline::<B>::load(&fixtures().join("tiny-sdxl"), &device).unwrap();
    let adapter = adapter(&pipe.unet);
    let l = &p.meta["loop"];
    let s = |k: &str| l[k].as_str().unwrap();
    let prompts = SplitPrompts {
        main: s("prompt"),
        background: s("background"),
        body: s("body"),
        negative: Some(s("negative_prompt")),
    };
    let guidance = l["guidance"].as_f64().unwrap() as f32;
    let conditioning = encode_split_prompt(&pipe, &prompts, guidance > 1.0).unwrap();
    // The encodings persongen's pipeline concatenates.
    for (got, key) in [
        (conditioning.cond.context.clone(), "loop.main"),
        (
            conditioning.uncond.as_ref().unwrap().context.clone(),
            "loop.negative",
        ),
        (conditioning.parts.background.clone(), "loop.background"),
        (conditioning.parts.body.clone(), "loop.body"),
    ] {
        let d = rel_diff(got, p.t(key));
        assert!(d <= UNET_TOL, "{key}: {d:e}");
    }
    let u = conditioning.uncond_parts.as_ref().unwrap();
    assert_eq!(u.background.clone().abs().max().into_scalar(), 0.0);
    assert_eq!(u.body.clone().abs().max().into_scalar(), 0.0);

    let settings = SampleSettings {
        steps: l["steps"].as_u64().unwrap() as usize,
        guidance,
        sampler: SamplerKind::Euler,
        time_ids: [64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
    };
    let levels = |scale: SplitScale| {
        let hook = adapter.hook(&conditioning, scale);
        // Composed with another hook, as the CLI composes it with IP-Adapter / LoRA.
        let lora = idforge_diffusion::adapters::lora::Lora::<B>::new(Vec::new(), 1.0);
        let hooks = Hooks(vec![&hook, &lora]);
        let latents = pipe
            .sample_with(
                &conditioning.step_inputs(&hooks),
                &settings,
                p.t("loop.noise"),
                &mut |_, _| {},
            )
            .unwrap();
        let image = pipe.decode(latents);
        (image - p.t::<4>("loop.image")).abs().max().into_scalar() * 255.0
    };
    let diff = levels(SplitScale::default());
    println!("loop image: max |Δ| {diff:.2e} of an 8-bit level");
    assert!(diff <= 1.0, "the image differs by {diff} levels");
    // Without the parts the image is another one: the loop exercises the adapter.
    let off = levels(SplitScale {
        background: 0.0,
        body: 0.0,
    });
    assert!(off > 2.0, "the parts change the image by only {off} levels");
}

#[test]
fn new_from_unet_copies_to_k_and_to_v_and_saves_in_the_documented_layout() {
    let unet = unet();
    let device = Default::default();
    let fresh = SplitPrompt::new_from_unet(&unet).unwrap();
    let modules = unet.attention_modules();
    for (layer, &i) in fresh.layers.iter().zip(fresh.layer_indices()) {
        let attn = modules[i];
        assert!(attn.layer().is_cross());
        let same = |a: &idforge_models::nn::Linear<B>, b: &idforge_models::nn::Linear<B>| {
            a.weight.val().to_f32_vec() == b.weight.val().to_f32_vec() && a.bias.is_none()
        };
        assert!(same(&layer.to_k_ip_bg, &attn.to_k) && same(&layer.to_k_ip_body, &attn.to_k));
        assert!(same(&layer.to_v_ip_bg, &attn.to_v) && same(&layer.to_v_ip_body, &attn.to_v));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("split.safetensors");
    fresh.save(&path).unwrap();
    let store = WeightStore::open(&path).unwrap();
    let names: Vec<String> = store.shapes().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 4 * 12);
    assert!(names.contains(&"split_prompt.1.to_k_ip_bg.weight".to_string()));
    // `[hidden, cross]` as torch stores it: the first layer is 4 wide, the text 64.
    assert_eq!(
        store.shape("split_prompt.1.to_v_ip_body.weight"),
        Some(&[4usize, 64][..])
    );
    let back = SplitPrompt::<B>::load(&path, &unet, &device).unwrap();
    assert_eq!(back.tensors(), fresh.tensors());
}

#[test]
fn wrong_files_are_clear_errors() {
    let device = Default::default();
    let unet = unet();
    let dir = fixtures();
    let e = SplitPrompt::<B>::load(&dir.join("split-prompt/parity.safetensors"), &unet, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a split-prompt adapter"), "{e}");
    // The tiny SD UNet has another text width and fewer layers.
    let sd = UNet::<B>::load(&dir.join("tiny-sd/unet"), &device).unwrap();
    let e = SplitPrompt::<B>::load(&dir.join("split-prompt/adapter.safetensors"), &sd, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another base model"), "{e}");
}

#[test]
fn captions_split_as_persongen_splits_them() {
    let p = SplitPrompts::from_caption("a man img\n\na beach\n\na red jacket");
    assert_eq!(
        (p.main, p.background, p.body),
        ("a man img", "a beach", "a red jacket")
    );
    let p = SplitPrompts::from_caption("a man img\n\na beach");
    assert_eq!(
        (p.main, p.background, p.body),
        ("a man img\n\na beach", "", "")
    );
}
