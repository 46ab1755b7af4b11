//! Loading errors name what is wrong: a tensor the config needs and the file lacks, a tensor of
//! another shape, an option this port does not implement, a folder that is not a pipeline.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use idforge_diffusion::{DiffusionError, Pipeline, UNet};

fn tiny_unet() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/unet")
}

/// A copy of the tiny UNet folder with `edit` applied to its config.
fn with_config(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_unet().join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        tiny_unet().join("diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    match UNet::<Flex>::load(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = with_config(|c| c["layers_per_block"] = 2.into());
    let e = load_error(dir.path());
    assert!(e.contains("down_blocks.0.resnets.1.norm1.weight"), "{e}");
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let dir = with_config(|c| c["cross_attention_dim"] = 16.into());
    let e = load_error(dir.path());
    assert!(
        e.contains("attn2.to_k.weight") && e.contains("[8, 8]") && e.contains("[8, 16]"),
        "{e}"
    );
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let dir = with_config(|c| c["time_cond_proj_dim"] = 256.into());
    let e = load_error(dir.path());
    assert!(
        e.contains("time_cond_proj_dim") && e.contains("config.json"),
        "{e}"
    );
    let dir = with_config(|c| c["down_block_types"][0] = "AttnDownBlock2D".into());
    let e = load_error(dir.path());
    assert!(e.contains("AttnDownBlock2D"), "{e}");
}

#[test]
fn a_folder_without_weights_or_index_says_what_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_unet().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    match Pipeline::<Flex>::load(dir.path(), &Default::default()) {
        Err(DiffusionError::Missing { what, .. }) => {
            assert!(what.contains("model_index.json"), "{what}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
