//! Parity of the set-level metrics (`idforge_bench::stats`) with their reference
//! implementations: clean-fid 0.1.35 (FID, KID; numpy 2.1.3, scipy 1.17.1), torchmetrics 1.9.0
//! (Inception Score, CLIPScore; torch 2.5.1, transformers 4.46.3) and google-research/cmmd's
//! `distance.py` (CMMD, reimplemented in numpy by the fixture script: it is JAX code in a
//! research repository, not a package). Fixtures come from `tools/bench-reference/run`.
//!
//! The feature sets are not stored: the fixtures hold the parameters of a counter-based
//! generator (splitmix64 and IEEE arithmetic in a fixed order, so numpy and Rust give the same
//! float32 values) and the first values and exact sum of each set, checked here first.
//!
//! Tolerances (relative unless said):
//! - FID: 1e-10 against the exact value (the trace term as a nuclear norm, numpy's SVD), 1e-5
//!   against clean-fid's `frechet_distance`, whose `scipy.linalg.sqrtm` of the singular
//!   d × d product Σ1Σ2 (rank < 40 in 2048 dimensions) is off by 1.2e-6 on the 40 × 2048 case
//!   and by 6e-8 on the 64-dimensional ones (printed by the script): the bound leaves a margin of
//!   8 over scipy's own error, and a real difference in convention (N vs N − 1, a missing
//!   term) would be 1e-2 or more;
//! - KID, IS (mean and std), CMMD: 1e-9 against the references run in float64 (only the order
//!   of the f64 sums differs; observed: 5e-13 at worst). The references on float32 inputs, as
//!   the libraries run by default, are printed for information: KID and CMMD lose 1e-6 to
//!   1e-4 there (a small difference of large kernel sums), IS about 3e-7;
//! - CLIP-T: 1e-3 absolute (on the 0–100 scale) per pair and for the aggregate, with the tiny
//!   random-weight CLIP of `models/tests/fixtures/clip/` loaded by `idforge_models::clip`
//!   (float32 through 3 + 3 blocks in another order; observed 2e-5). torchmetrics' CLIPScore
//!   is `max(mean(100 cos), 0)`, clamping the mean, while `idforge_models::clip::clip_score`
//!   clamps each pair; one pair of the fixture has a negative cosine, so both aggregations are
//!   pinned.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use idforge_bench::stats::{Features, KidOptions, cmmd, fid, inception_score, kid};
use idforge_models::clip::{
    Clip, ClipConfig, ClipPreprocess, ClipTokenizer, Convention, WeightLayout, clip_score,
    l2_normalize,
};
use idforge_models::face_api::preprocess::RgbView;
use serde_json::Value;

type B = Flex;

const FID_VS_EXACT: f64 = 1e-10;
const FID_VS_CLEANFID: f64 = 1e-5;
const F64_REFERENCE: f64 = 1e-9;
const CLIP_T_ABS: f64 = 1e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn u(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap() as usize
}

// ---------------------------------------------------------------------------------------------
// The generator of tools/bench-reference/make_fixtures.py (`uniforms`, `features`).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn uniforms(seed: u64, count: usize) -> Vec<f64> {
    (1..=count as u64)
        .map(|k| {
            let mut z = seed.wrapping_add(k.wrapping_mul(GOLDEN));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * 2f64.powi(-53)
        })
        .collect()
}

fn features(spec: &Value) -> Features {
    let (n, d, r) = (u(spec, "n"), u(spec, "dim"), u(spec, "rank"));
    let (shift, noise, factor) = (f(spec, "shift"), f(spec, "noise"), f(spec, "factor"));
    let main = uniforms(spec["seed"].as_u64().unwrap(), n * d + n * r);
    let (e, c) = main.split_at(n * d);
    let l = uniforms(spec["loadings_seed"].as_u64().unwrap(), r * d);
    let mut x: Vec<f64> = e.iter().map(|&e| shift + noise * (e - 0.5)).collect();
    for k in 0..r {
        for i in 0..n {
            let ci = factor * (c[i * r + k] - 0.5);
            for j in 0..d {
                x[i * d + j] += ci * (l[k * d + j] - 0.5);
            }
        }
    }
    if spec["relu"].as_bool() == Some(true) {
        x.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    if spec["unit"].as_bool() == Some(true) {
        for row in x.chunks_mut(d) {
            let mut sq = 0.0;
            for v in row.iter() {
                sq += v * v;
            }
            let norm = sq.sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Features::new(n, d, x.iter().map(|&v| v as f32).collect()).unwrap()
}

/// Regenerates a set and checks it against what the script saw.
fn regenerate(spec: &Value, check: &Value) -> Features {
    let x = features(spec);
    // As f32: serde_json's float parsing (without its `float_roundtrip` feature) can be one
    // f64 ulp off, never enough to change the f32.
    let first: Vec<f32> = check["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        x.data[..first.len()],
        first[..],
        "generator: first values of {spec}"
    );
    // The script's sum is exact (math.fsum); ours in f64 is good to ~1e-13 of the magnitude.
    let sum: f64 = x.data.iter().map(|&v| f64::from(v)).sum();
    let abs: f64 = x.data.iter().map(|&v| f64::from(v).abs()).sum();
    let want = f(check, "sum");
    assert!(
        (sum - want).abs() <= 1e-12 * abs.max(1.0),
        "generator: sum {sum} vs {want} for {spec}"
    );
    x
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-300)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn fid_kid_and_cmmd_match_clean_fid_and_cmmd() {
    let reference = json("sets.json");
    let mut worst = [0f64; 4]; // FID vs exact, FID vs clean-fid, KID, CMMD
    for case in reference["sets"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let a = regenerate(&case["a"], &case["a_check"]);
        let b = regenerate(&case["b"], &case["b_check"]);
        if case.get("fid").is_some() {
            let got = fid(&a, &b).unwrap();
            let (exact, cleanfid) = (f(case, "fid_exact"), f(case, "fid"));
            let f32_pipeline = f(case, "fid_f32");
            eprintln!(
                "{name:<18} FID {got:.10}: vs exact {:.1e}, vs clean-fid {:.1e} (clean-fid \
                 on float32 features {:.1e})",
                rel(got, exact),
                rel(got, cleanfid),
                rel(got, f32_pipeline)
            );
            assert!(
                rel(got, exact) <= FID_VS_EXACT,
                "{name}: FID {got} vs {exact}"
            );
            assert!(
                rel(got, cleanfid) <= FID_VS_CLEANFID,
                "{name}: FID {got} vs clean-fid {cleanfid}"
            );
            worst[0] = worst[0].max(rel(got, exact));
            worst[1] = worst[1].max(rel(got, cleanfid));
        }
        if case.get("kid").is_some() {
            let got = kid(&a, &b, &KidOptions::default()).unwrap();
            let want = f(case, "kid");
            eprintln!(
                "{name:<18} KID {got:.10}: vs clean-fid {:.1e} (on float32 {:.1e})",
                rel(got, want),
                rel(got, f(case, "kid_f32"))
            );
            assert!(
                rel(got, want) <= F64_REFERENCE,
                "{name}: KID {got} vs {want}"
            );
            worst[2] = worst[2].max(rel(got, want));
        }
        if case.get("cmmd").is_some() {
            let got = cmmd(&a, &b).unwrap();
            let want = f(case, "cmmd");
            eprintln!(
                "{name:<18} CMMD {got:.10}: vs distance.py {:.1e} (in float32 {:.1e})",
                rel(got, want),
                rel(got, f(case, "cmmd_f32"))
            );
            assert!(
                rel(got, want) <= F64_REFERENCE,
                "{name}: CMMD {got} vs {want}"
            );
            worst[3] = worst[3].max(rel(got, want));
        }
    }
    eprintln!(
        "worst relative deviations: FID {:.1e} (exact), {:.1e} (clean-fid); KID {:.1e}; CMMD {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn inception_score_matches_torchmetrics() {
    let reference = json("sets.json");
    let mut worst = 0f64;
    for case in reference["inception_score"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let logits = regenerate(&case["logits"], &case["logits_check"]);
        let (mean, std) = inception_score(&logits, u(case, "splits")).unwrap();
        let (want_mean, want_std) = (f(case, "is_mean"), f(case, "is_std"));
        eprintln!(
            "{name:<18} IS {mean:.10} ± {std:.10}: vs torchmetrics {:.1e}, {:.1e} (float32 \
             {:.1e}, {:.1e})",
            rel(mean, want_mean),
            rel(std, want_std),
            rel(mean, f(case, "is_mean_f32")),
            rel(std, f(case, "is_std_f32"))
        );
        assert!(
            rel(mean, want_mean) <= F64_REFERENCE,
            "{name}: mean {mean} vs {want_mean}"
        );
        assert!(
            rel(std, want_std) <= F64_REFERENCE,
            "{name}: std {std} vs {want_std}"
        );
        worst = worst.max(rel(mean, want_mean)).max(rel(std, want_std));
    }
    eprintln!("IS: worst relative deviation {worst:.1e}");
}

// ---------------------------------------------------------------------------------------------
// CLIP-T.

fn model_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

#[test]
fn clip_t_matches_torchmetrics_clip_score() {
    let reference = json("clip_score.json");
    let clip_dir = model_fixtures().join("clip");
    let device = Default::default();
    let config =
        ClipConfig::from_hf_config_json(&clip_dir.join("tiny_hf_gelu.config.json")).unwrap();
    let weights =
        idforge_models::WeightStore::open(clip_dir.join("tiny_hf_gelu.safetensors")).unwrap();
    let model = Clip::<B>::load(&weights, &config, WeightLayout::HuggingFace, &device).unwrap();
    let tokenizer =
        ClipTokenizer::from_tokenizer_json(&clip_dir.join("tiny_tokenizer.json")).unwrap();

    let prompts: Vec<&str> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let images: Vec<image::RgbImage> = reference["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            image::open(model_fixtures().join(p.as_str().unwrap()))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let views: Vec<RgbView<'_>> = images
        .iter()
        .map(|im| RgbView {
            width: im.width() as usize,
            height: im.height() as usize,
            data: im.as_raw(),
        })
        .collect();
    // transformers' CLIPImageProcessor at the model's input size, as torchmetrics calls it on
    // uint8 tensors (resized through PIL like PIL images).
    let pixels = ClipPreprocess::new(config.vision.image_size, Convention::HuggingFace)
        .tensor::<B>(&views, &device);
    let image_embeds = model.encode_image(pixels);
    let ids = tokenizer.encode_batch(&prompts).unwrap();
    let text_embeds = model.encode_text(&ids, &device);

    let cos: Vec<f32> = (l2_normalize(image_embeds.clone()) * l2_normalize(text_embeds.clone()))
        .sum_dim(1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let raw: Vec<f64> = cos.iter().map(|&c| 100.0 * f64::from(c)).collect();
    let want: Vec<f64> = reference["per_pair"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut worst = 0f64;
    for (i, (g, w)) in raw.iter().zip(&want).enumerate() {
        worst = worst.max((g - w).abs());
        assert!((g - w).abs() <= CLIP_T_ABS, "pair {i}: 100 cos {g} vs {w}");
    }
    // torchmetrics' CLIPScore.compute: max(mean of 100 cos, 0), the clamp on the mean.
    let aggregate = (raw.iter().sum::<f64>() / raw.len() as f64).max(0.0);
    let want_aggregate = f(&reference, "clip_score");
    assert!(
        (aggregate - want_aggregate).abs() <= CLIP_T_ABS,
        "CLIPScore {aggregate} vs {want_aggregate}"
    );
    // idforge_models::clip::clip_score clamps each pair (Hessel et al.'s per-image max(cos, 0));
    // it agrees with torchmetrics pair by pair where the cosine is positive.
    let per_pair = clip_score(image_embeds, text_embeds);
    for (s, w) in per_pair.iter().zip(&want) {
        assert!(
            (f64::from(*s) - w.max(0.0)).abs() <= CLIP_T_ABS,
            "{s} vs {w}"
        );
    }
    let clamped_mean = per_pair.iter().map(|&s| f64::from(s)).sum::<f64>() / per_pair.len() as f64;
    eprintln!(
        "CLIP-T: per pair within {worst:.1e} of torchmetrics; CLIPScore {aggregate:.6} vs \
         {want_aggregate:.6}; mean of per-pair clamped scores {clamped_mean:.6} (differs when a \
         cosine is negative: {} of {})",
        want.iter().filter(|w| **w < 0.0).count(),
        want.len()
    );
}
