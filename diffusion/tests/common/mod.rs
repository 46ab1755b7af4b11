//! The parity fixtures' reader shared by the adapters' tests: a folder's `parity.safetensors`
//! (tensors) and `parity.json` (settings and measured values), written by the scripts of
//! `tools/adapters-reference/`. Included with `mod common;` (a folder module, so Cargo does not
//! build it as a test of its own); each test adds its own methods to [`Fixture`].

// Each test file uses only some of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use idforge_models::WeightStore;
use serde_json::Value;

/// The CPU backend of the parity tests.
pub type B = Flex;

/// `diffusion/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture folder's tensors and settings.
pub struct Fixture {
    /// `parity.safetensors`.
    pub store: WeightStore,
    /// `parity.json`.
    pub meta: Value,
}

impl Fixture {
    /// `tests/fixtures/<folder>/parity.{safetensors,json}`.
    pub fn open(folder: &str) -> Self {
        let dir = fixtures().join(folder);
        let missing = |e: &dyn std::fmt::Display| -> ! {
            panic!(
                "{}: {e} (regenerate with tools/adapters-reference/)",
                dir.display()
            )
        };
        let store =
            WeightStore::open(dir.join("parity.safetensors")).unwrap_or_else(|e| missing(&e));
        let text = std::fs::read_to_string(dir.join("parity.json")).unwrap_or_else(|e| missing(&e));
        let meta = serde_json::from_str(&text).unwrap_or_else(|e| missing(&e));
        Self { store, meta }
    }

    /// The tensor `key`, of rank `D`.
    pub fn t<const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let (shape, values) = self
            .store
            .read_f32(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(shape.len(), D, "{key} has shape {shape:?}");
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
}
