//! The published IP-Adapter files' names and shapes (ip-adapter_sd15, ip-adapter-plus_sd15,
//! ip-adapter-faceid_sd15, ip-adapter-faceid-plusv2_sd15, ip-adapter_sdxl), checked without the
//! files and without allocating a UNet: tools/adapters-reference/make_published_key_lists.py
//! builds tencent-ailab/IP-Adapter's reference modules and diffusers' UNet at the full SD1.5 /
//! SDXL configs on the meta device and lists every key and shape of each file
//! (`tests/fixtures/published-layouts/*.json`). For each list, idforge must detect the right
//! kind, and its expected layout for that kind on the full-size config
//! (`UNetConfig::attention_layers`, `IpAdapter::layout`) must equal the list exactly.
//!
//! The layout is tied to what the loader reads by the tiny fixtures: every adapter file that
//! `ip_adapter_parity.rs` loads and checks against diffusers has exactly its expected layout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Flex;
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionSpec, ShapeList};
use idforge_diffusion::{UNet, UNetConfig};
use idforge_models::WeightStore;

type B = Flex;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Published {
    list: ShapeList,
    unet: String,
    kind: String,
}

fn published(name: &str) -> Published {
    let path = fixtures().join(format!("published-layouts/{name}.json"));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(json["tensors"].clone()).unwrap();
    Published {
        list: ShapeList {
            origin: path,
            shapes,
        },
        unet: json["unet"].as_str().unwrap().to_string(),
        kind: json["kind"].as_str().unwrap().to_string(),
    }
}

/// Detects the kind, compares idforge's full-size layout with the reference list, and returns
/// the spec.
fn check(name: &str) -> ProjectionSpec {
    let p = published(name);
    let spec = ProjectionSpec::detect(&p.list, "image_proj.").unwrap();
    assert_eq!(spec.kind(), p.kind, "{name}: detected as {}", spec.kind());
    let config = match p.unet.as_str() {
        "sd15" => UNetConfig::sd15(),
        "sdxl" => UNetConfig::sdxl(),
        other => panic!("unknown UNet {other}"),
    };
    let expected = IpAdapter::<B>::expected_layout(&p.list, &config.attention_layers()).unwrap();
    let want: Vec<(String, Vec<usize>)> = p.list.shapes.clone().into_iter().collect();
    let missing: Vec<_> = want.iter().filter(|t| !expected.contains(t)).collect();
    let extra: Vec<_> = expected.iter().filter(|t| !want.contains(t)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: the reference has {} tensors idforge does not expect (first {:?}), idforge \
         expects {} it lacks (first {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    println!("{name}: {} tensors, {spec:?}", want.len());
    spec
}

#[test]
fn ip_adapter_sd15() {
    assert_eq!(
        check("ip-adapter_sd15"),
        ProjectionSpec::Plain {
            embed_dim: 1024,
            tokens: 4,
            cross: 768
        }
    );
}

#[test]
fn ip_adapter_plus_sd15() {
    let ProjectionSpec::Plus { queries, resampler } = check("ip-adapter-plus_sd15") else {
        panic!("not Plus");
    };
    assert_eq!(queries, 16);
    assert_eq!(
        (
            resampler.embedding_dim,
            resampler.dim,
            resampler.heads,
            resampler.head_dim,
            resampler.depth
        ),
        (1280, 768, 12, 64, 4)
    );
}

#[test]
fn ip_adapter_faceid_sd15_with_its_rank_128_lora() {
    assert_eq!(
        check("ip-adapter-faceid_sd15"),
        ProjectionSpec::FaceId {
            id_dim: 512,
            mlp: 1024,
            tokens: 4,
            cross: 768
        }
    );
    let p = published("ip-adapter-faceid_sd15");
    // LoRA on all 32 processors (self-attention too), four projections each, down and up.
    let lora = p
        .list
        .shapes
        .keys()
        .filter(|k| k.contains("_lora."))
        .count();
    assert_eq!(lora, 32 * 4 * 2);
    assert_eq!(
        p.list.shapes["ip_adapter.1.to_k_lora.down.weight"],
        vec![128, 768]
    );
}

#[test]
fn ip_adapter_faceid_plusv2_sd15() {
    let ProjectionSpec::FaceIdPlus {
        id_dim,
        tokens,
        resampler,
        ..
    } = check("ip-adapter-faceid-plusv2_sd15")
    else {
        panic!("not FaceID-Plus");
    };
    assert_eq!((id_dim, tokens), (512, 4));
    assert_eq!(
        (
            resampler.embedding_dim,
            resampler.dim,
            resampler.output_dim,
            resampler.heads
        ),
        (1280, 768, 768, 12)
    );
}

#[test]
fn ip_adapter_sdxl() {
    assert_eq!(
        check("ip-adapter_sdxl"),
        ProjectionSpec::Plain {
            embed_dim: 1280,
            tokens: 4,
            cross: 2048
        }
    );
    // 70 cross-attention layers, numbered 1, 3, …, 139.
    let p = published("ip-adapter_sdxl");
    assert!(p.list.shapes.contains_key("ip_adapter.139.to_v_ip.weight"));
    assert_eq!(
        p.list
            .shapes
            .keys()
            .filter(|k| k.ends_with("to_k_ip.weight"))
            .count(),
        70
    );
}

#[test]
fn config_level_attention_layers_are_the_built_unets() {
    let device = Default::default();
    for model in ["tiny-sd", "tiny-sdxl"] {
        let folder = fixtures().join(model).join("unet");
        let unet = UNet::<B>::load(&folder, &device).unwrap();
        assert_eq!(
            unet.config().attention_layers(),
            unet.attention_layers(),
            "{model}"
        );
    }
    let sd15 = UNetConfig::sd15().attention_layers();
    assert_eq!(sd15.len(), 32);
    assert_eq!(
        sd15[31].name,
        "mid_block.attentions.0.transformer_blocks.0.attn2"
    );
    assert_eq!((sd15[1].query_dim, sd15[1].head_dim), (320, 40));
    let sdxl = UNetConfig::sdxl().attention_layers();
    assert_eq!(sdxl.len(), 140);
    assert_eq!(
        sdxl[49].name,
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2"
    );
    assert_eq!((sdxl[49].query_dim, sdxl[49].heads), (1280, 20));
}

/// The layout is what the loader reads: each tiny adapter file (loaded and checked against
/// diffusers in `ip_adapter_parity.rs`) has exactly its expected layout on its UNet.
#[test]
fn tiny_fixture_files_have_exactly_their_expected_layout() {
    let device = Default::default();
    let dir = fixtures().join("ip-adapter");
    for (file, model) in [
        ("plain", "tiny-sd"),
        ("plus", "tiny-sd"),
        ("full_face", "tiny-sd"),
        ("faceid", "tiny-sd"),
        ("faceid_plus_v2", "tiny-sd"),
        ("sdxl_plain", "tiny-sdxl"),
        ("sdxl_faceid", "tiny-sdxl"),
    ] {
        let store = WeightStore::open(dir.join(format!("{file}.safetensors"))).unwrap();
        let unet = UNet::<B>::load(&fixtures().join(model).join("unet"), &device).unwrap();
        // The loader accepts it…
        IpAdapter::load(store.origin(), &unet, &device).unwrap();
        // …and it holds exactly the expected tensors.
        let expected = IpAdapter::<B>::expected_layout(&store, &unet.attention_layers()).unwrap();
        assert_eq!(store.shapes(), expected, "{file}");
    }
}
