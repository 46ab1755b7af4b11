//! The split-prompt adapter (matosjan/persongen's `ipmakerbgbody`): the caption is split into a
//! main prompt, a background prompt and a body prompt; each part is encoded by the same frozen
//! text encoders (SDXL: CLIP-L and bigG penultimate states, 77 tokens each), and every
//! cross-attention layer attends to the two extra parts with its own bias-free key and value
//! projections, with the layer's shared query:
//!
//! ```text
//! h = SDPA(q, to_k(main), to_v(main))
//!   + s_bg   · SDPA(q, to_k_ip_bg(bg),     to_v_ip_bg(bg))
//!   + s_body · SDPA(q, to_k_ip_body(body), to_v_ip_body(body))      (then to_out)
//! ```
//!
//! as persongen's `myIPAttnProcessorTwoConds2_0` (`src/model/attn_procs/attn_processor.py`,
//! scale 1 for both parts there; separate scales here). The main prompt stays the UNet's
//! context; the parts reach the layers through the hook ([`SplitPromptAttention`]), so the
//! adapter composes with LoRA and IP-Adapter hooks in [`crate::attention::Hooks`].
//!
//! Training starts from the base model: [`SplitPrompt::new_from_unet`] copies each layer's
//! `to_k` / `to_v` into both parts' projections, as persongen's `IPMakerBGBody` does.
//!
//! Prompts ([`encode_split_prompt`], as `src/model/ipmakerbgbody/pipeline_orig.py`): an empty
//! part is the encoding of the empty prompt, not zeros; with classifier-free guidance the
//! unconditional rows get the negative prompt for the main part, and for the background and
//! body the pipeline's unconditional embedding of no negative prompt — zeros for SDXL
//! (`force_zeros_for_empty_prompt`), the empty prompt's encoding otherwise — because persongen
//! encodes the parts with `negative_prompt=None`. Pooled embeddings come from the main prompt.
//! (persongen's training drops the whole condition 10% of the time differently: main,
//! background and body all become the empty prompt's encoding, not zeros.)
//!
//! # File layout
//!
//! One safetensors file, float32, torch's `[out, in]` weights:
//!
//! ```text
//! split_prompt.{i}.to_k_ip_bg.weight     [hidden, cross]
//! split_prompt.{i}.to_v_ip_bg.weight     [hidden, cross]
//! split_prompt.{i}.to_k_ip_body.weight   [hidden, cross]
//! split_prompt.{i}.to_v_ip_body.weight   [hidden, cross]
//! ```
//!
//! for every cross-attention layer, `i` its index in diffusers' `attn_processors` order (odd:
//! the self-attention layers are numbered too and have no weights), `hidden` the layer's width
//! and `cross` the text width. That is persongen's `adapter_modules` state dict
//! (`ModuleList(unet.attn_processors.values())`, saved under `"adapter_modules"` in its
//! checkpoint) under the prefix `split_prompt.`, the way IP-Adapter files put theirs under
//! `ip_adapter.`; [`SplitPrompt::load`] also reads the prefix `adapter_modules.` (persongen's
//! checkpoint dict flattened, as a `.pth` pickle or a safetensors file).

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::WeightStore;
use idforge_models::nn::{Init, Linear, multi_head_attention, split_heads};
use idforge_models::readback::ReadBack;

use crate::attention::{AttentionHook, AttentionLayer};
use crate::error::DiffusionError;
use crate::pipeline::{Conditioning, Pipeline, StepInputs};
use crate::unet::UNet;

/// The prefix of the adapter's tensors in idforge's file.
pub const PREFIX: &str = "split_prompt.";

/// The prefix persongen's checkpoint dict gives the same tensors (`"adapter_modules"`).
pub const PERSONGEN_PREFIX: &str = "adapter_modules.";

/// The four projections of the adapter's modules, as persongen names them.
pub const MODULES: [&str; 4] = ["to_k_ip_bg", "to_v_ip_bg", "to_k_ip_body", "to_v_ip_body"];

/// One cross-attention layer's key and value projections for the two extra parts (bias-free,
/// `cross → hidden`).
#[derive(Module, Debug)]
pub struct SplitPromptLayer<B: Backend> {
    /// `to_k_ip_bg`
    pub to_k_ip_bg: Linear<B>,
    /// `to_v_ip_bg`
    pub to_v_ip_bg: Linear<B>,
    /// `to_k_ip_body`
    pub to_k_ip_body: Linear<B>,
    /// `to_v_ip_body`
    pub to_v_ip_body: Linear<B>,
}

impl<B: Backend> SplitPromptLayer<B> {
    fn modules(&self) -> [&Linear<B>; 4] {
        [
            &self.to_k_ip_bg,
            &self.to_v_ip_bg,
            &self.to_k_ip_body,
            &self.to_v_ip_body,
        ]
    }
}

/// The split-prompt adapter: one [`SplitPromptLayer`] per cross-attention layer of the UNet.
#[derive(Module, Debug)]
pub struct SplitPrompt<B: Backend> {
    /// By layer, in `attn_processors` order.
    pub layers: Vec<SplitPromptLayer<B>>,
    /// The `attn_processors` index of each entry of `layers`.
    #[module(skip)]
    layer_index: Vec<usize>,
}

/// The weights of the background and body parts (persongen trains and samples with 1 for both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitScale {
    /// `s_bg`
    pub background: f32,
    /// `s_body`
    pub body: f32,
}

impl Default for SplitScale {
    fn default() -> Self {
        Self {
            background: 1.0,
            body: 1.0,
        }
    }
}

impl<B: Backend> SplitPrompt<B> {
    /// The adapter for training from the base model: every part's key and value projections
    /// start as copies of the layer's `to_k` / `to_v` (persongen's initialisation).
    pub fn new_from_unet(unet: &UNet<B>) -> Result<Self, DiffusionError> {
        let mut layers = Vec::new();
        let mut layer_index = Vec::new();
        for attn in unet.attention_modules() {
            let l = attn.layer();
            if !l.is_cross() {
                continue;
            }
            // Detached: each copy is its own autodiff leaf (a shared node would give its
            // gradient to only one of the four copies when the adapter trains).
            let copy = |w: &Linear<B>| Linear::from_tensors(w.weight.val().detach(), None);
            layers.push(SplitPromptLayer {
                to_k_ip_bg: copy(&attn.to_k),
                to_v_ip_bg: copy(&attn.to_v),
                to_k_ip_body: copy(&attn.to_k),
                to_v_ip_body: copy(&attn.to_v),
            });
            layer_index.push(l.index);
        }
        if layers.is_empty() {
            return Err(DiffusionError::Setting(
                "the UNet has no cross-attention layer for the split-prompt adapter".into(),
            ));
        }
        Ok(Self {
            layers,
            layer_index,
        })
    }

    /// The adapter for `unet`, read from `init` (names under [`PREFIX`]) or random.
    pub fn new(
        init: &Init<'_>,
        unet: &UNet<B>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let all = unet.attention_layers();
        let mut layers = Vec::new();
        let mut layer_index = Vec::new();
        for l in all.iter().filter(|l| l.is_cross()) {
            let c = l.cross_attention_dim.unwrap_or(l.query_dim);
            let hidden = l.heads * l.head_dim;
            let p = |n: &str| format!("{PREFIX}{}.{n}", l.index);
            let lin = |n: &str| Linear::new(init, &p(n), c, hidden, false, device);
            layers.push(SplitPromptLayer {
                to_k_ip_bg: lin("to_k_ip_bg")?,
                to_v_ip_bg: lin("to_v_ip_bg")?,
                to_k_ip_body: lin("to_k_ip_body")?,
                to_v_ip_body: lin("to_v_ip_body")?,
            });
            layer_index.push(l.index);
        }
        if layers.is_empty() {
            return Err(DiffusionError::Setting(
                "the UNet has no cross-attention layer for the split-prompt adapter".into(),
            ));
        }
        if let Init::Load(store) = init {
            // Layers the UNet does not have: the adapter was made for another base model.
            let extra = store
                .names()
                .filter_map(|n| {
                    let rest = n
                        .strip_prefix(PREFIX)
                        .or_else(|| n.strip_prefix(PERSONGEN_PREFIX))?;
                    rest.split('.').next()?.parse::<usize>().ok()
                })
                .find(|i| !layer_index.contains(i));
            if let Some(i) = extra {
                return Err(DiffusionError::Config {
                    path: store.origin().to_path_buf(),
                    message: format!(
                        "split-prompt layer {i} is not a cross-attention layer of this UNet \
                         ({} attention layers): the adapter was made for another base model \
                         (SD 1.5 / SDXL?)",
                        all.len()
                    ),
                });
            }
        }
        Ok(Self {
            layers,
            layer_index,
        })
    }

    /// Reads an adapter file for `unet`: idforge's layout (`split_prompt.{i}.*`, see the module
    /// docs) or persongen's checkpoint dict flattened (`adapter_modules.{i}.*`), safetensors or
    /// a torch pickle. A file for another base model is an error saying so.
    pub fn load(path: &Path, unet: &UNet<B>, device: &B::Device) -> Result<Self, DiffusionError> {
        let mut store = WeightStore::open(path)?;
        let has = |store: &WeightStore, prefix: &str| {
            store
                .names()
                .any(|n| n.starts_with(prefix) && n.contains(".to_k_ip_bg."))
        };
        if !has(&store, PREFIX) {
            if has(&store, PERSONGEN_PREFIX) {
                store = store.with_rename(PREFIX, PERSONGEN_PREFIX);
            } else {
                return Err(DiffusionError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "no `{PREFIX}{{i}}.to_k_ip_bg.weight` (or persongen's \
                         `{PERSONGEN_PREFIX}{{i}}.…`) tensors: not a split-prompt adapter file"
                    ),
                });
            }
        }
        Self::new(&Init::Load(&store), unet, device).map_err(|e| match e {
            DiffusionError::Weights(idforge_models::ModelError::Shape {
                name,
                found,
                expected,
                ..
            }) => DiffusionError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{name}` has shape {found:?}, this UNet needs {expected}: the adapter \
                     was made for another base model (SD 1.5 / SDXL?)"
                ),
            },
            e => e,
        })
    }

    /// The adapter's tensors as the file stores them: `(name, torch shape [out, in], values)`,
    /// sorted by layer, in [`MODULES`] order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        for (layer, &i) in self.layers.iter().zip(&self.layer_index) {
            for (name, lin) in MODULES.iter().zip(layer.modules()) {
                let [inp, outw] = lin.weight.dims();
                // burn keeps `[in, out]`; the file has torch's `[out, in]`.
                let values = lin.weight.val().transpose().to_f32_vec();
                out.push((
                    format!("{PREFIX}{i}.{name}.weight"),
                    vec![outw, inp],
                    values,
                ));
            }
        }
        out
    }

    /// Writes the adapter in idforge's layout (see the module docs) to one safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), DiffusionError> {
        write_safetensors(path, &self.tensors())
    }

    /// The `attn_processors` indices of the layers, in order.
    pub fn layer_indices(&self) -> &[usize] {
        &self.layer_index
    }

    /// The hook that conditions the UNet on the background and body parts of `prompts` at
    /// `scale`.
    pub fn hook(
        &self,
        prompts: &SplitConditioning<B>,
        scale: SplitScale,
    ) -> SplitPromptAttention<'_, B> {
        let guided = prompts.uncond_parts.as_ref().map(|u| PartTokens {
            background: Tensor::cat(
                vec![u.background.clone(), prompts.parts.background.clone()],
                0,
            ),
            body: Tensor::cat(vec![u.body.clone(), prompts.parts.body.clone()], 0),
        });
        SplitPromptAttention {
            adapter: self,
            cond: prompts.parts.clone(),
            guided,
            scale,
        }
    }
}

/// Writes float32 tensors `(name, shape, values)` to one safetensors file.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), DiffusionError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DiffusionError::Setting(format!("{}: {e}", path.display())))?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => DiffusionError::Io {
            path: path.to_path_buf(),
            source,
        },
        e => DiffusionError::Setting(format!("{}: {e}", path.display())),
    })
}

/// The background and body tokens, `[rows, tokens, cross]` each.
#[derive(Debug, Clone)]
pub struct PartTokens<B: Backend> {
    /// The background prompt's encoding.
    pub background: Tensor<B, 3>,
    /// The body prompt's encoding.
    pub body: Tensor<B, 3>,
}

/// The three parts of a split prompt (persongen's caption `"main\n\nbackground\n\nbody"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitPrompts<'a> {
    /// The main prompt (the UNet's context; PhotoMaker's trigger word goes here).
    pub main: &'a str,
    /// The background prompt; empty: the empty prompt's encoding.
    pub background: &'a str,
    /// The body prompt; empty: the empty prompt's encoding.
    pub body: &'a str,
    /// The negative prompt of the main part (`None`: the pipeline's unconditional embedding).
    pub negative: Option<&'a str>,
}

impl<'a> SplitPrompts<'a> {
    /// A caption as persongen stores it: exactly three parts separated by blank lines
    /// (`"\n\n"`) give main, background and body; anything else is all main, with empty
    /// background and body.
    pub fn from_caption(caption: &'a str) -> Self {
        let parts: Vec<&str> = caption.split("\n\n").collect();
        match parts[..] {
            [main, background, body] => Self {
                main,
                background,
                body,
                negative: None,
            },
            _ => Self {
                main: caption,
                ..Self::default()
            },
        }
    }
}

/// Everything a split-prompt run conditions on: the main prompt's conditioning (the UNet's
/// context and pooled embedding) and the background and body tokens, for the prompt and, with
/// guidance, the unconditional rows.
#[derive(Debug, Clone)]
pub struct SplitConditioning<B: Backend> {
    /// The main prompt's conditioning.
    pub cond: Conditioning<B>,
    /// The negative (unconditional) conditioning, with guidance.
    pub uncond: Option<Conditioning<B>>,
    /// The background and body tokens of the prompt.
    pub parts: PartTokens<B>,
    /// The background and body tokens of the unconditional rows, with guidance.
    pub uncond_parts: Option<PartTokens<B>>,
}

impl<B: Backend> SplitConditioning<B> {
    /// The UNet's inputs for every step, with `hook` (the adapter's
    /// [`SplitPromptAttention`] for these prompts, alone or composed with other hooks in
    /// [`crate::attention::Hooks`]).
    pub fn step_inputs<'a>(&'a self, hook: &'a dyn AttentionHook<B>) -> StepInputs<'a, B> {
        StepInputs {
            cond: &self.cond,
            uncond: self.uncond.as_ref(),
            hook,
        }
    }
}

/// Encodes a split prompt with the pipeline's frozen text encoders, as persongen's
/// `IPMakerBGBodyStableDiffusionXLPipeline.__call__`: the main prompt as usual, each part as a
/// prompt of its own (empty: the empty prompt's encoding), and with `guided` the negative
/// prompt for the main part and the unconditional embedding of no negative prompt for the
/// parts (see the module docs). What the CLI's `--bg-prompt` / `--body-prompt` need.
pub fn encode_split_prompt<B: Backend>(
    pipe: &Pipeline<B>,
    prompts: &SplitPrompts<'_>,
    guided: bool,
) -> Result<SplitConditioning<B>, DiffusionError> {
    let cond = pipe.encode_prompt(prompts.main)?;
    let parts = PartTokens {
        background: pipe.encode_prompt(prompts.background)?.context,
        body: pipe.encode_prompt(prompts.body)?.context,
    };
    let (uncond, uncond_parts) = if guided {
        let none = pipe.encode_negative(None)?.context;
        (
            Some(pipe.encode_negative(prompts.negative)?),
            Some(PartTokens {
                background: none.clone(),
                body: none,
            }),
        )
    } else {
        (None, None)
    };
    Ok(SplitConditioning {
        cond,
        uncond,
        parts,
        uncond_parts,
    })
}

/// The adapter on the UNet for one split prompt: the background and body attention of every
/// cross-attention layer, added before `to_out`.
pub struct SplitPromptAttention<'a, B: Backend> {
    adapter: &'a SplitPrompt<B>,
    /// The prompt's rows.
    cond: PartTokens<B>,
    /// Unconditional rows then the prompt's, for guided steps.
    guided: Option<PartTokens<B>>,
    scale: SplitScale,
}

impl<B: Backend> SplitPromptAttention<'_, B> {
    /// The part tokens for a UNet batch of `rows`: the prompt's rows, or with guidance the
    /// unconditional rows first (the UNet's order); one row is repeated for a larger batch.
    ///
    /// # Panics
    /// If the parts were encoded for another batch.
    fn tokens(&self, rows: usize) -> PartTokens<B> {
        let n = self.cond.background.dims()[0];
        let repeat = |t: &Tensor<B, 3>, k: usize| {
            if k == 1 {
                t.clone()
            } else {
                t.clone().repeat_dim(0, k)
            }
        };
        if rows == n {
            return self.cond.clone();
        }
        if let Some(g) = &self.guided
            && rows == 2 * n
        {
            return g.clone();
        }
        assert!(
            n == 1,
            "split-prompt parts have {n} rows, the UNet batch has {rows}"
        );
        match &self.guided {
            Some(g) if rows.is_multiple_of(2) => {
                let half = rows / 2;
                let split = |t: &Tensor<B, 3>| {
                    Tensor::cat(
                        vec![
                            repeat(&t.clone().narrow(0, 0, 1), half),
                            repeat(&t.clone().narrow(0, 1, 1), half),
                        ],
                        0,
                    )
                };
                PartTokens {
                    background: split(&g.background),
                    body: split(&g.body),
                }
            }
            _ => PartTokens {
                background: repeat(&self.cond.background, rows),
                body: repeat(&self.cond.body, rows),
            },
        }
    }
}

impl<B: Backend> AttentionHook<B> for SplitPromptAttention<'_, B> {
    fn extra_attention(
        &self,
        layer: &AttentionLayer,
        query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        if !layer.is_cross() || (self.scale.background == 0.0 && self.scale.body == 0.0) {
            return None;
        }
        let i = self
            .adapter
            .layer_index
            .iter()
            .position(|&i| i == layer.index)?;
        let m = &self.adapter.layers[i];
        let tokens = self.tokens(query.dims()[0]);
        let attend = |k: &Linear<B>, v: &Linear<B>, t: Tensor<B, 3>| {
            let k = split_heads(k.forward(t.clone()), layer.heads);
            let v = split_heads(v.forward(t), layer.heads);
            multi_head_attention(query.clone(), k, v, false)
        };
        let mut out: Option<Tensor<B, 3>> = None;
        if self.scale.background != 0.0 {
            let h = attend(&m.to_k_ip_bg, &m.to_v_ip_bg, tokens.background) * self.scale.background;
            out = Some(h);
        }
        if self.scale.body != 0.0 {
            let h = attend(&m.to_k_ip_body, &m.to_v_ip_body, tokens.body) * self.scale.body;
            out = Some(match out {
                Some(o) => o + h,
                None => h,
            });
        }
        out
    }

    fn touches_linears(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn filled(v: f32) -> Tensor<B, 3> {
        Tensor::full([1, 2, 3], v, &Default::default())
    }

    fn rows(t: &Tensor<B, 3>) -> Vec<f32> {
        let n = t.dims()[0];
        (0..n)
            .map(|i| t.clone().narrow(0, i, 1).mean().into_scalar())
            .collect()
    }

    /// One encoded prompt serves any UNet batch: unguided rows repeat it, guided rows put the
    /// unconditional half first, as the UNet's batch.
    #[test]
    fn part_tokens_follow_the_unet_batch() {
        let adapter = SplitPrompt::<B> {
            layers: Vec::new(),
            layer_index: Vec::new(),
        };
        let prompts = SplitConditioning {
            cond: Conditioning {
                context: filled(0.0),
                pooled: None,
            },
            uncond: None,
            parts: PartTokens {
                background: filled(1.0),
                body: filled(2.0),
            },
            uncond_parts: Some(PartTokens {
                background: filled(-1.0),
                body: filled(-2.0),
            }),
        };
        let hook = adapter.hook(&prompts, SplitScale::default());
        assert_eq!(rows(&hook.tokens(1).background), [1.0]);
        assert_eq!(rows(&hook.tokens(2).background), [-1.0, 1.0]);
        assert_eq!(rows(&hook.tokens(2).body), [-2.0, 2.0]);
        assert_eq!(rows(&hook.tokens(4).body), [-2.0, -2.0, 2.0, 2.0]);
        let unguided = SplitConditioning {
            uncond_parts: None,
            ..prompts
        };
        let hook = adapter.hook(&unguided, SplitScale::default());
        assert_eq!(rows(&hook.tokens(3).background), [1.0, 1.0, 1.0]);
    }
}
