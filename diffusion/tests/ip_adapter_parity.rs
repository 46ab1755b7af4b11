//! The IP-Adapter family against diffusers' `load_ip_adapter` on the tiny SD UNet
//! (fixtures from tools/adapters-reference/make_ip_adapter_fixtures.py, diffusers 0.38.0): each
//! adapter file in the original `{image_proj, ip_adapter}` layout, loaded by idforge, gives the
//! UNet output diffusers gives with `added_cond_kwargs={"image_embeds": [embeds]}`.
//!
//! Tolerance: max |Δ| ≤ 1e-4 of the output's scale (its max |value|), as the base UNet's parity.

mod common;

use common::{B, Fixture as Parity, fixtures};

use burn::tensor::Tensor;
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, IpScale, ProjectionInput};
use idforge_diffusion::{AddedConditions, UNet, UNetInput};
use idforge_models::readback::ReadBack;

impl Parity {
    /// `[batch, images, …]` → `[batch·images, …]`, the projection's batch.
    fn per_image<const D: usize, const E: usize>(&self, key: &str) -> Tensor<B, E> {
        let t = self.t::<D>(key);
        let dims = t.dims();
        let mut flat = [0usize; E];
        flat[0] = dims[0] * dims[1];
        flat[1..].copy_from_slice(&dims[2..]);
        t.reshape(flat)
    }

    fn scale(&self, kind: &str) -> f32 {
        self.meta["scales"][kind].as_f64().unwrap() as f32
    }

    fn input(&self) -> UNetInput<B> {
        UNetInput {
            sample: self.t("sample"),
            timesteps: self.t("timestep"),
            context: self.t("context"),
            added: None,
        }
    }
}

fn max_rel_diff(got: Tensor<B, 4>, want: Tensor<B, 4>) -> f32 {
    let g = got.to_f32_vec();
    let w = want.to_f32_vec();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    g.iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn run(kind: &str, input: ProjectionInput<B>, shortcut: bool) -> (f32, f32) {
    let p = Parity::open("ip-adapter");
    let device = Default::default();
    let unet = UNet::<B>::load(&fixtures().join("tiny-sd/unet"), &device).unwrap();
    let mut adapter = IpAdapter::load(
        &fixtures().join(format!("ip-adapter/{kind}.safetensors")),
        &unet,
        &device,
    )
    .unwrap();
    adapter.set_shortcut(shortcut, 1.0);
    let batch = p.meta["batch"].as_u64().unwrap() as usize;
    let tokens = adapter.tokens(&input, batch).unwrap();
    let hook = adapter.hook(tokens, IpScale::uniform(p.scale(kind)));
    let got = unet.forward_with(&p.input(), &hook);
    let want = p.t::<4>(&format!("{kind}.out"));
    let base = p.t::<4>("base.out");
    let (diff, effect) = (max_rel_diff(got, want.clone()), max_rel_diff(base, want));
    eprintln!("{kind}: max |Δ| {diff:.2e} of scale (adapter's own effect {effect:.2e})");
    (diff, effect)
}

fn none() -> ProjectionInput<B> {
    ProjectionInput {
        image_embeds: None,
        hidden_states: None,
        id_embeds: None,
    }
}

#[test]
fn plain_ip_adapter_with_two_references_matches_diffusers() {
    let p = Parity::open("ip-adapter");
    let input = ProjectionInput {
        image_embeds: Some(p.per_image::<3, 2>("plain.image_embeds")),
        ..none()
    };
    let (diff, adapter_effect) = run("plain", input, false);
    assert!(diff < 1e-4, "{diff}");
    assert!(
        adapter_effect > 1e-2,
        "the adapter changes nothing: {adapter_effect}"
    );
}

#[test]
fn ip_adapter_plus_matches_diffusers() {
    let p = Parity::open("ip-adapter");
    let input = ProjectionInput {
        hidden_states: Some(p.per_image::<4, 3>("plus.hidden_states")),
        ..none()
    };
    let (diff, effect) = run("plus", input, false);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
}

#[test]
fn ip_adapter_full_face_matches_diffusers() {
    let p = Parity::open("ip-adapter");
    let input = ProjectionInput {
        hidden_states: Some(p.per_image::<4, 3>("full_face.hidden_states")),
        ..none()
    };
    let (diff, effect) = run("full_face", input, false);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
}

#[test]
fn ip_adapter_faceid_with_its_lora_matches_diffusers() {
    let p = Parity::open("ip-adapter");
    let input = ProjectionInput {
        id_embeds: Some(p.per_image::<3, 2>("faceid.id_embeds")),
        ..none()
    };
    let (diff, effect) = run("faceid", input, false);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
}

#[test]
fn ip_adapter_faceid_plus_v2_matches_diffusers() {
    let p = Parity::open("ip-adapter");
    let input = ProjectionInput {
        id_embeds: Some(p.per_image::<3, 2>("faceid_plus_v2.id_embeds")),
        hidden_states: Some(p.per_image::<4, 3>("faceid_plus_v2.hidden_states")),
        ..none()
    };
    let (diff, effect) = run("faceid_plus_v2", input, true);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
}

#[test]
fn wrong_inputs_and_files_are_clear_errors() {
    let device = Default::default();
    let unet = UNet::<B>::load(&fixtures().join("tiny-sd/unet"), &device).unwrap();
    let dir = fixtures().join("ip-adapter");
    let faceid = IpAdapter::load(&dir.join("faceid.safetensors"), &unet, &device).unwrap();
    assert_eq!(faceid.kind(), "ip-adapter-faceid");
    let e = faceid.tokens(&none(), 1).unwrap_err().to_string();
    assert!(
        e.contains("ArcFace") && e.contains("ip-adapter-faceid"),
        "{e}"
    );
    // A file that is not an IP-Adapter.
    let e = IpAdapter::load(&dir.join("parity.safetensors"), &unet, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("image_proj"), "{e}");
    // An adapter for another base model: the tiny SDXL UNet has another cross width.
    let sdxl = UNet::<B>::load(&fixtures().join("tiny-sdxl/unet"), &device).unwrap();
    let e = IpAdapter::load(&dir.join("plain.safetensors"), &sdxl, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another base model"), "{e}");
}

/// The tiny SDXL UNet (two transformer blocks per attention module in its second level): the
/// `attn_processors` numbering of SDXL files and its added conditions.
fn run_sdxl(kind: &str, input: ProjectionInput<B>) -> (f32, f32) {
    let p = Parity::open("ip-adapter");
    let device = Default::default();
    let unet = UNet::<B>::load(&fixtures().join("tiny-sdxl/unet"), &device).unwrap();
    let adapter = IpAdapter::load(
        &fixtures().join(format!("ip-adapter/sdxl_{kind}.safetensors")),
        &unet,
        &device,
    )
    .unwrap();
    let tokens = adapter.tokens(&input, 2).unwrap();
    let hook = adapter.hook(tokens, IpScale::uniform(p.scale(kind)));
    let x = UNetInput {
        sample: p.t("sdxl.sample"),
        timesteps: p.t("timestep"),
        context: p.t("sdxl.context"),
        added: Some(AddedConditions {
            text_embeds: p.t("sdxl.text_embeds"),
            time_ids: p.t("sdxl.time_ids"),
        }),
    };
    let got = unet.forward_with(&x, &hook);
    let want = p.t::<4>(&format!("sdxl.{kind}.out"));
    let (diff, effect) = (
        max_rel_diff(got, want.clone()),
        max_rel_diff(p.t("sdxl.base.out"), want),
    );
    eprintln!("sdxl {kind}: max |Δ| {diff:.2e} of scale (adapter's own effect {effect:.2e})");
    (diff, effect)
}

#[test]
fn sdxl_plain_and_faceid_match_diffusers() {
    let p = Parity::open("ip-adapter");
    let plain = ProjectionInput {
        image_embeds: Some(p.per_image::<3, 2>("sdxl.plain.image_embeds")),
        ..none()
    };
    let (diff, effect) = run_sdxl("plain", plain);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
    let faceid = ProjectionInput {
        id_embeds: Some(p.per_image::<3, 2>("sdxl.faceid.id_embeds")),
        ..none()
    };
    let (diff, effect) = run_sdxl("faceid", faceid);
    assert!(diff < 1e-4 && effect > 1e-2, "{diff} {effect}");
}

#[test]
fn references_pool_by_mean_or_max_before_projection() {
    use idforge_diffusion::adapters::ip_adapter::ReferencePooling;
    let p = Parity::open("ip-adapter");
    let device = Default::default();
    let unet = UNet::<B>::load(&fixtures().join("tiny-sd/unet"), &device).unwrap();
    let adapter = IpAdapter::load(
        &fixtures().join("ip-adapter/faceid.safetensors"),
        &unet,
        &device,
    )
    .unwrap();
    // Two references per row, two rows.
    let ids = p.per_image::<3, 2>("faceid.id_embeds");
    let input = ProjectionInput {
        id_embeds: Some(ids.clone()),
        ..none()
    };
    let concat = adapter.tokens(&input, 2).unwrap();
    assert_eq!(concat.dims(), [2, 8, 8]);
    let mean = adapter
        .pooled_tokens(&input, 2, ReferencePooling::Mean)
        .unwrap();
    assert_eq!(mean.dims(), [2, 4, 8]);
    // The mean pooling is the projection of the averaged embedding.
    let averaged = ids.clone().reshape([2, 2, 16]).mean_dim(1).reshape([2, 16]);
    let want = adapter
        .tokens(
            &ProjectionInput {
                id_embeds: Some(averaged),
                ..none()
            },
            2,
        )
        .unwrap();
    assert!((mean - want).abs().max().into_scalar() < 1e-6);
    let max = adapter
        .pooled_tokens(&input, 2, ReferencePooling::Max)
        .unwrap();
    let maxed = ids.reshape([2, 2, 16]).max_dim(1).reshape([2, 16]);
    let want = adapter
        .tokens(
            &ProjectionInput {
                id_embeds: Some(maxed),
                ..none()
            },
            2,
        )
        .unwrap();
    assert!((max - want).abs().max().into_scalar() < 1e-6);
    // Three inputs do not split into two rows.
    let three = ProjectionInput {
        id_embeds: Some(Tensor::zeros([3, 16], &device)),
        ..none()
    };
    assert!(adapter.tokens(&three, 2).is_err());
}
