//! LoRA on any named `Linear` of the UNet's transformers: `out + scale · up(down(x))`, the
//! low-rank update of diffusers' `LoRALinearLayer` (no `network_alpha`: scale 1 unless given).

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::nn::{Init, Linear};

use crate::attention::{AttentionHook, LinearSite};
use crate::error::DiffusionError;

/// One low-rank update.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    /// `in → rank`, no bias.
    pub down: Linear<B>,
    /// `rank → out`, no bias.
    pub up: Linear<B>,
}

impl<B: Backend> LoraLayer<B> {
    /// `{prefix}.down.weight` (`[rank, in]`) and `{prefix}.up.weight` (`[out, rank]`), or, with
    /// [`Init::Random`], diffusers' initialisation for training: `down` N(0, 1/rank²), `up` zero.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let child = |n| idforge_models::nn::child(prefix, n);
        let (down, up) = match init {
            Init::Load(_) => (
                Linear::new(init, &child("down"), inp, rank, false, device)?,
                Linear::new(init, &child("up"), rank, out, false, device)?,
            ),
            Init::Random => (
                Linear::from_tensors(
                    Tensor::random(
                        [inp, rank],
                        burn::tensor::Distribution::Normal(0.0, 1.0 / rank as f64),
                        device,
                    ),
                    None,
                ),
                Linear::from_tensors(Tensor::zeros([rank, out], device), None),
            ),
        };
        Ok(Self { down, up })
    }

    /// `up(down(x))`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.up.forward(self.down.forward(x))
    }
}

/// LoRA updates by the full diffusers path of the `Linear` they change
/// (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// The updates.
    pub layers: Vec<LoraLayer<B>>,
    /// The path each update applies to, in `layers` order.
    #[module(skip)]
    names: Vec<String>,
    #[module(skip)]
    index: HashMap<String, usize>,
    /// `s` in `out + s · up(down(x))`.
    #[module(skip)]
    pub scale: f32,
}

impl<B: Backend> Lora<B> {
    /// The updates for these `(path, layer)` pairs.
    pub fn new(layers: Vec<(String, LoraLayer<B>)>, scale: f32) -> Self {
        let (names, layers): (Vec<_>, Vec<_>) = layers.into_iter().unzip();
        let index = names
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        Self {
            layers,
            names,
            index,
            scale,
        }
    }

    /// The paths updated, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl<B: Backend> AttentionHook<B> for Lora<B> {
    fn linear(
        &self,
        site: &LinearSite<'_>,
        input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match self.index.get(&site.name()) {
            Some(&i) => output + self.layers[i].forward(input.clone()) * self.scale,
            None => output,
        }
    }
}

/// Which matrix of a LoRA pair a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoraPart {
    Down,
    Up,
}

/// The `Linear` a diffusers UNet LoRA key changes and which matrix it is, for the spellings
/// diffusers' `load_lora_weights` reads for a UNet (`convert_unet_state_dict_to_peft`, after
/// `.processor.` is dropped): attention processors' `to_{q,k,v,out}_lora.{down,up}`
/// (`to_out` meaning `to_out.0`), `LoRACompatibleLinear`'s `.lora.{down,up}` and PEFT's
/// `.lora_A` / `.lora_B`. `key` is without the `unet.` prefix.
fn lora_target(key: &str) -> Option<(String, LoraPart)> {
    let key = key.replace(".processor.", ".");
    let key = key.strip_suffix(".weight")?;
    for (short, module) in [
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("out", "to_out.0"),
    ] {
        for (part, which) in [("down", LoraPart::Down), ("up", LoraPart::Up)] {
            if let Some(parent) = key.strip_suffix(&format!(".to_{short}_lora.{part}")) {
                return Some((format!("{parent}.{module}"), which));
            }
        }
    }
    for (suffix, which) in [
        (".lora.down", LoraPart::Down),
        (".lora.up", LoraPart::Up),
        (".lora_A", LoraPart::Down),
        (".lora_B", LoraPart::Up),
    ] {
        if let Some(target) = key.strip_suffix(suffix) {
            return Some((target.to_string(), which));
        }
    }
    None
}

impl<B: Backend> Lora<B> {
    /// Reads a UNet LoRA in diffusers' format from the tensors named `{prefix}unet.…`
    /// (PhotoMaker's `lora_weights.`), for `unet`: every key must be a LoRA matrix of a `Linear`
    /// this UNet's transformers have, in a spelling diffusers reads (`….processor.to_q_lora.down`,
    /// `….to_q.lora.down`, PEFT `….to_q.lora_A`); the rank is read from the file, the scale is 1
    /// (diffusers' `lora_alpha = rank` when the file gives no alphas). Text-encoder LoRA,
    /// kohya-style names (`lora_unet_…`), alphas and unknown modules are errors naming the key.
    pub fn load_unet(
        store: &idforge_models::WeightStore,
        prefix: &str,
        unet: &crate::unet::UNet<B>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        use std::collections::BTreeMap;

        use crate::attention::Projection;

        let bad = |key: &str, why: String| DiffusionError::Config {
            path: store.origin().to_path_buf(),
            message: format!("LoRA tensor `{key}`: {why}"),
        };
        let layers = unet.attention_layers();
        let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
        let mut keys: Vec<&str> = store.names().filter(|n| n.starts_with(prefix)).collect();
        keys.sort_unstable();
        for full in keys {
            let key = &full[prefix.len()..];
            let Some(rest) = key.strip_prefix("unet.") else {
                let why = if key.starts_with("text_encoder") {
                    "text-encoder LoRA is not supported (only the UNet's)".to_string()
                } else if key.starts_with("lora_unet_") || key.starts_with("lora_te") {
                    "kohya-style names are not supported: give diffusers' names (`unet.…`)"
                        .to_string()
                } else {
                    "UNet LoRA keys start with `unet.` (diffusers' layout)".to_string()
                };
                return Err(bad(full, why));
            };
            let (target, part) = lora_target(rest).ok_or_else(|| {
                bad(
                    full,
                    "not a LoRA matrix (`….to_q_lora.down.weight`, `….to_q.lora.down.weight` or \
                     `….to_q.lora_A.weight`)"
                        .into(),
                )
            })?;
            let slot = &mut pairs.entry(target).or_default()[part as usize];
            if slot.is_some() {
                return Err(bad(full, "a second spelling of the same matrix".into()));
            }
            *slot = Some(full.strip_suffix(".weight").unwrap_or(full).to_string());
        }
        let mut out = Vec::new();
        for (target, [down, up]) in pairs {
            let (Some(down), Some(up)) = (down, up) else {
                return Err(DiffusionError::Config {
                    path: store.origin().to_path_buf(),
                    message: format!("the LoRA of `{target}` lacks its down or up matrix"),
                });
            };
            let shape = |name: &str| {
                store
                    .shape(&format!("{name}.weight"))
                    .map(<[usize]>::to_vec)
            };
            let (d, u) = (
                shape(&down).unwrap_or_default(),
                shape(&up).unwrap_or_default(),
            );
            if d.len() != 2 || u.len() != 2 || d[0] != u[1] {
                return Err(bad(
                    &down,
                    format!("down {d:?} and up {u:?} are not a [rank, in], [out, rank] pair"),
                ));
            }
            let (rank, inp, outw) = (d[0], d[1], u[0]);
            // The attention projections are checked against the layer; the transformers' other
            // linears (ff.net.*, proj_in / proj_out) only for existing.
            let projection = layers.iter().find_map(|l| {
                [
                    Projection::Query,
                    Projection::Key,
                    Projection::Value,
                    Projection::Out,
                ]
                .into_iter()
                .find(|p| target == format!("{}.{}", l.name, p.module()))
                .map(|p| (l, p))
            });
            match projection {
                Some((l, p)) => {
                    let hidden = l.heads * l.head_dim;
                    let (want_in, want_out) = match p {
                        Projection::Query => (l.query_dim, hidden),
                        Projection::Key | Projection::Value => {
                            (l.cross_attention_dim.unwrap_or(l.query_dim), hidden)
                        }
                        Projection::Out => (hidden, l.query_dim),
                    };
                    if (inp, outw) != (want_in, want_out) {
                        return Err(bad(
                            &down,
                            format!(
                                "a {inp} → {outw} update, `{target}` is {want_in} → {want_out}: \
                                 the LoRA was made for another base model"
                            ),
                        ));
                    }
                }
                None => {
                    let known = layers.iter().any(|l| {
                        let block = l.name.rsplit_once('.').map_or(l.name.as_str(), |(b, _)| b);
                        let transformer = block
                            .rsplit_once(".transformer_blocks.")
                            .map_or(block, |(t, _)| t);
                        ["ff.net.0.proj", "ff.net.2"]
                            .iter()
                            .any(|m| target == format!("{block}.{m}"))
                            || ["proj_in", "proj_out"]
                                .iter()
                                .any(|m| target == format!("{transformer}.{m}"))
                    });
                    if !known {
                        return Err(bad(
                            &down,
                            format!("this UNet has no transformer `Linear` named `{target}`"),
                        ));
                    }
                }
            }
            let init = Init::Load(store);
            let layer = LoraLayer {
                down: Linear::new(&init, &down, inp, rank, false, device)?,
                up: Linear::new(&init, &up, rank, outw, false, device)?,
            };
            out.push((target, layer));
        }
        Ok(Self::new(out, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_unet_lora_spellings() {
        let a = "down_blocks.1.attentions.0.transformer_blocks.0.attn1";
        let t = |k: &str| lora_target(&format!("{a}.{k}")).map(|(t, p)| (t.replace(a, "·"), p));
        assert_eq!(
            t("processor.to_k_lora.down.weight"),
            Some(("·.to_k".into(), LoraPart::Down))
        );
        assert_eq!(
            t("processor.to_out_lora.up.weight"),
            Some(("·.to_out.0".into(), LoraPart::Up))
        );
        assert_eq!(
            t("to_q_lora.up.weight"),
            Some(("·.to_q".into(), LoraPart::Up))
        );
        assert_eq!(
            t("to_out.0.lora.down.weight"),
            Some(("·.to_out.0".into(), LoraPart::Down))
        );
        assert_eq!(
            t("to_v.lora_B.weight"),
            Some(("·.to_v".into(), LoraPart::Up))
        );
        assert_eq!(t("to_v.alpha"), None);
        assert_eq!(t("to_v.weight"), None);
    }
}
