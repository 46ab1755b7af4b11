//! The trainer's periodic samples: every `sample_every` steps the adapter as exported at that
//! step renders fixed prompts × fixed reference identities through
//! [`idforge_diffusion::methods`] — the code `idforge generate` and `idforge bench generate`
//! run — into `<run>/samples/step-NNNNNN/`, and `report.html` shows one grid per checkpoint.
//!
//! - References: the first `sample_identities` identities (by name) of the export's validation
//!   split, held out from training; an export without one gives the train split's first
//!   identities instead (the grid then shows memorisation, not generalisation: the report says
//!   which). Each identity's first photo (its tight reference crop when the export has one) is
//!   written once to `samples/references/<identity>.png` and read from there like `--ref`.
//! - Prompts `sample_prompts`, `sample_steps` Euler steps, guidance `sample_cfg`, the noise of
//!   `sample_seed` + prompt index (the same noise at every checkpoint, so the grids compare), the
//!   model's native size.
//! - Rendering draws from its own seeded noise only, never from the training streams (every
//!   draw of those is a function of seed and step), so a run with samples trains exactly as one
//!   without, and `--resume` stays exact.
//! - An identity whose reference fails (no face found for an ArcFace kind) is skipped with a
//!   note; the base model and adapter failing to load stops the run.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use idforge_core::schema::dataset::Split;
use idforge_diffusion::SamplerKind;
use idforge_diffusion::adapters::split_prompt::{SplitPrompts, SplitScale};
use idforge_diffusion::methods::{Method, MethodError, MethodOptions, RenderSettings};
use idforge_models::reference::CropChannels;

use crate::data::{TrainRow, split_rows};
use crate::error::TrainError;
use crate::run::Watch;
use crate::settings::{CropOrder, TrainSettings};

/// The samples' folder in the run folder.
pub const SAMPLES_DIR: &str = "samples";

/// The folder of one step's samples: `samples/step-000500`.
pub fn step_dir(out: &Path, step: u64) -> PathBuf {
    out.join(SAMPLES_DIR).join(format!("step-{step:06}"))
}

/// The sample identities and their reference photo files, written once under
/// `samples/references/`; the bool says whether they come from the validation split.
fn references(
    settings: &TrainSettings,
    export: &Path,
    out: &Path,
) -> Result<(Vec<(String, PathBuf)>, bool), TrainError> {
    let mut rows = split_rows(export, Split::Validation)?;
    let held_out = !rows.is_empty();
    if !held_out {
        rows = split_rows(export, Split::Train)?;
    }
    let mut first: Vec<&TrainRow> = Vec::new();
    for r in &rows {
        if !first.iter().any(|f| f.identity == r.identity) {
            first.push(r);
        }
    }
    first.sort_by(|a, b| a.identity.cmp(&b.identity));
    first.truncate(settings.sample_identities as usize);
    let dir = out.join(SAMPLES_DIR).join("references");
    let mut refs = Vec::with_capacity(first.len());
    for r in first {
        let name = idforge_core::name::Name::new(&r.identity)
            .map(|_| r.identity.clone())
            .unwrap_or_else(|_| format!("identity-{}", refs.len()));
        let path = dir.join(format!("{name}.png"));
        if !path.is_file() {
            let bytes = r.ref_image.as_ref().unwrap_or(&r.image).bytes()?;
            let img = image::load_from_memory(&bytes).map_err(|e| TrainError::Data {
                path: export.to_path_buf(),
                message: format!("identity `{}`: its photo does not decode: {e}", r.identity),
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            img.to_rgb8()
                .save_with_format(&path, image::ImageFormat::Png)
                .map_err(|e| TrainError::Setting(format!("writing {}: {e}", path.display())))?;
        }
        refs.push((name, path));
    }
    Ok((refs, held_out))
}

/// Renders the samples of `step`: `export` writes the adapter as it is now to the path given;
/// the images go to [`step_dir`] as `<identity>-<prompt index>.png`.
pub fn render_samples<B: Backend>(
    settings: &TrainSettings,
    out: &Path,
    step: u64,
    export: &dyn Fn(&Path) -> Result<(), TrainError>,
    device: &B::Device,
    watch: &mut dyn Watch,
) -> Result<(), TrainError> {
    let (Some(model), Some(dataset)) = (&settings.model, &settings.dataset) else {
        return Err(TrainError::Setting(
            "samples need `model` and `dataset`".into(),
        ));
    };
    let dir = step_dir(out, step);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let adapter = out
        .join(SAMPLES_DIR)
        .join(format!(".adapter-{step:06}.safetensors"));
    export(&adapter)?;
    let result = render_with::<B>(
        settings, out, step, model, dataset, &adapter, &dir, device, watch,
    );
    let _ = std::fs::remove_file(&adapter);
    result
}

#[allow(clippy::too_many_arguments)]
fn render_with<B: Backend>(
    settings: &TrainSettings,
    out: &Path,
    step: u64,
    model: &Path,
    dataset: &Path,
    adapter: &Path,
    dir: &Path,
    device: &B::Device,
    watch: &mut dyn Watch,
) -> Result<(), TrainError> {
    let samples = |source: MethodError| TrainError::Samples { step, source };
    let (refs, held_out) = references(settings, dataset, out)?;
    let options = MethodOptions {
        adapters: vec![adapter.to_path_buf()],
        arcface: settings
            .arcface
            .clone()
            .filter(|_| settings.method.needs_arcface()),
        image_encoder: settings
            .image_encoder
            .clone()
            .filter(|_| settings.method.needs_image_encoder()),
        face_api_weights: settings.face_api_weights.clone(),
        crop: Some(match settings.face_crop_channels {
            CropOrder::Bgr => CropChannels::Bgr,
            CropOrder::Rgb => CropChannels::Rgb,
        }),
        plus_v2: settings.plus_v2,
        ..MethodOptions::default()
    };
    let method = Method::<B>::load(model, options, device, true).map_err(samples)?;
    let side = method.pipe.default_size();
    let render = RenderSettings {
        steps: settings.sample_steps as usize,
        guidance: settings.sample_cfg as f32,
        sampler: SamplerKind::Euler,
        id_start_step: None,
        adapter_scale: 1.0,
        split_scale: SplitScale::default(),
    };
    let mut written = 0;
    for (name, photo) in &refs {
        let identity =
            match method.identity_from_photos(std::slice::from_ref(photo), None, None, false) {
                Ok(id) => id,
                Err(e) => {
                    watch.note(&format!(
                        "samples: identity `{name}` skipped: {}",
                        chain(&e)
                    ));
                    continue;
                }
            };
        for (k, prompt) in settings.sample_prompts.iter().enumerate() {
            let noise = method
                .pipe
                .seeded_noise(settings.sample_seed.wrapping_add(k as u64), (side, side))
                .map_err(|e| samples(e.into()))?;
            let prompts = SplitPrompts {
                main: prompt,
                ..SplitPrompts::default()
            };
            let img = method
                .render(&identity, &prompts, &render, noise, &mut |_, _| {})
                .map_err(samples)?;
            let path = dir.join(format!("{name}-{k}.png"));
            img.save_with_format(&path, image::ImageFormat::Png)
                .map_err(|e| TrainError::Setting(format!("writing {}: {e}", path.display())))?;
            written += 1;
        }
    }
    watch.note(&format!(
        "samples: {written} images of {} {} identities in {}",
        refs.len(),
        if held_out { "held-out" } else { "training" },
        dir.display()
    ));
    Ok(())
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The report's sample section: per step, a grid of identities (rows, their reference first)
/// × prompts (columns); empty when the run has no samples.
pub fn report_section(out: &Path, settings: &TrainSettings) -> String {
    let root = out.join(SAMPLES_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return String::new();
    };
    let mut steps: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let n = p.file_name()?.to_str()?.to_string();
            n.starts_with("step-").then_some((n, p))
        })
        .collect();
    if steps.is_empty() {
        return String::new();
    }
    steps.sort();
    let esc = idforge_core::html::escape;
    let held_out = settings
        .dataset
        .as_deref()
        .and_then(|d| split_rows(d, Split::Validation).ok())
        .is_some_and(|r| !r.is_empty());
    // The identities actually sampled (a split may hold fewer than `sample_identities`).
    let identities = std::fs::read_dir(root.join("references"))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0);
    let mut html = format!(
        "<h2>Samples</h2><p>{} {} of the {} split × {} prompts, {} Euler steps, cfg {}, \
         seed {} (the same noise at every step).</p>",
        identities,
        if identities == 1 {
            "identity"
        } else {
            "identities"
        },
        if held_out { "validation" } else { "train" },
        settings.sample_prompts.len(),
        settings.sample_steps,
        settings.sample_cfg,
        settings.sample_seed
    );
    let mut names: Vec<String> = std::fs::read_dir(root.join("references"))
        .map(|es| {
            es.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".png")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for (step, dir) in &steps {
        html.push_str(&format!(
            "<h3>{}</h3><table><tr><th>reference</th>",
            esc(step)
        ));
        for p in &settings.sample_prompts {
            html.push_str(&format!("<th>{}</th>", esc(p)));
        }
        html.push_str("</tr>");
        for name in &names {
            html.push_str(&format!(
                "<tr><td><img src=\"{SAMPLES_DIR}/references/{n}.png\" width=\"128\" \
                 alt=\"{n}\"></td>",
                n = esc(name)
            ));
            for k in 0..settings.sample_prompts.len() {
                let file = format!("{name}-{k}.png");
                if dir.join(&file).is_file() {
                    html.push_str(&format!(
                        "<td><img src=\"{SAMPLES_DIR}/{}/{}\" width=\"128\"></td>",
                        esc(step),
                        esc(&file)
                    ));
                } else {
                    html.push_str("<td>—</td>");
                }
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }
    html
}
