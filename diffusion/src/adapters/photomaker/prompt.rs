//! PhotoMaker's prompts (`photomaker/pipeline.py`, `encode_prompt_with_trigger_word` and the
//! text-only prompt of `__call__`): the trigger word (`img`, an added special token of both
//! tokenizers) follows the class word ("a photo of a man img"); it is removed, the class word's
//! token is repeated once per identity token, and the embeddings at those positions are later
//! fused with the identity.
//!
//! Per tokenizer, as the reference:
//! 1. the prompt is tokenized with the trigger as its own token (split out wherever the exact
//!    string occurs, as transformers splits added tokens), `[bos] + tokens + [eos]` cut to the
//!    context and padded with the pad token;
//! 2. exactly one trigger must remain; it is dropped, and the token before it (the class word)
//!    is repeated `references · tokens_per_reference` times;
//! 3. the sequence is cut or padded (pad token) to the context again; the repeated span, within
//!    the context, is `class_tokens_mask` (the second tokenizer's is used for the fuse);
//! 4. the text-only prompt of the first steps is the prompt's tokens without the trigger,
//!    encoded as any prompt (the reference decodes them to text and encodes that again, which
//!    gives the same tokens).
//!
//! The embeddings are SDXL's: both encoders' penultimate states concatenated, the pooled
//! embedding the second encoder's projected one, of the class-expanded ids (fused phase) or of
//! the text-only ids (first phase).

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use idforge_models::clip::ClipTokenizer;

use crate::error::DiffusionError;
use crate::pipeline::{Conditioning, Family, Pipeline};

/// The reference's default trigger word.
pub const DEFAULT_TRIGGER: &str = "img";

/// One tokenizer's ids for a PhotoMaker prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerIds {
    /// The class-expanded ids, `context_length` long.
    pub ids: Vec<u32>,
    /// Where the class token is repeated (`class_tokens_mask`), within the context.
    pub class_tokens: Range<usize>,
    /// The prompt without the trigger, as encoded for the steps before the merge.
    pub text_only: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Id(u32),
    Trigger,
}

/// The ids of `prompt` for one tokenizer with the class token repeated `class_tokens` times
/// (see the module docs). No trigger, or more than one, is an error naming the prompt.
pub fn trigger_ids(
    tokenizer: &ClipTokenizer,
    prompt: &str,
    trigger: &str,
    class_tokens: usize,
) -> Result<TriggerIds, DiffusionError> {
    if trigger.is_empty() || class_tokens == 0 {
        return Err(DiffusionError::Setting(
            "PhotoMaker needs a non-empty trigger word and at least one reference".into(),
        ));
    }
    let mut raw = Vec::new();
    for (i, segment) in prompt.split(trigger).enumerate() {
        if i > 0 {
            raw.push(Piece::Trigger);
        }
        raw.extend(tokenizer.tokens(segment)?.into_iter().map(Piece::Id));
    }
    let found = raw.iter().filter(|p| **p == Piece::Trigger).count();
    let context = tokenizer.context_length();
    let (bos, eos, pad) = tokenizer.special_ids();
    let keep = raw.len().min(context - 2);
    let mut seq = Vec::with_capacity(context);
    seq.push(Piece::Id(bos));
    seq.extend_from_slice(&raw[..keep]);
    seq.push(Piece::Id(eos));
    seq.resize(context, Piece::Id(pad));
    let mut clean = Vec::with_capacity(context);
    let mut class_at = Vec::new();
    for piece in seq {
        match piece {
            // The token before the trigger (the start token when the trigger comes first).
            Piece::Trigger => class_at.push(clean.len().saturating_sub(1)),
            Piece::Id(id) => clean.push(id),
        }
    }
    if found != 1 || class_at.len() != 1 {
        let what = if found == 0 {
            "has no trigger word".to_string()
        } else if found > 1 {
            format!("has the trigger word {found} times")
        } else {
            format!("has its trigger word past the first {} tokens", context - 2)
        };
        return Err(DiffusionError::Setting(format!(
            "the PhotoMaker prompt {prompt:?} {what}: write `{trigger}` once, right after the \
             class word (\"a photo of a man {trigger}\")"
        )));
    }
    let at = class_at[0];
    let class = clean[at];
    let mut ids = Vec::with_capacity(context + class_tokens);
    ids.extend_from_slice(&clean[..at]);
    ids.extend(std::iter::repeat_n(class, class_tokens));
    ids.extend_from_slice(&clean[at + 1..]);
    ids.resize(context, pad);
    let mut text_only = Vec::with_capacity(context);
    text_only.push(bos);
    text_only.extend(
        raw.iter()
            .filter_map(|p| match p {
                Piece::Id(id) => Some(*id),
                Piece::Trigger => None,
            })
            .take(context - 2),
    );
    text_only.push(eos);
    text_only.resize(context, pad);
    Ok(TriggerIds {
        ids,
        class_tokens: at..(at + class_tokens).min(context),
        text_only,
    })
}

/// A PhotoMaker prompt encoded by the SDXL pipeline's text encoders, before the fuse.
#[derive(Debug, Clone)]
pub struct TriggerPrompt<B: Backend> {
    /// The class-expanded prompt: `context` the penultimate states of both encoders
    /// (`[1, 77, 2048]` at full size), `pooled` the second encoder's projected embedding.
    pub expanded: Conditioning<B>,
    /// The class tokens' positions in `expanded.context` (the second tokenizer's).
    pub class_tokens: Range<usize>,
    /// The prompt without the trigger (the steps up to `start_merge_step`).
    pub text_only: Conditioning<B>,
}

/// Encodes a PhotoMaker prompt with the class token repeated `class_tokens` times.
pub fn encode_trigger_prompt<B: Backend>(
    pipeline: &Pipeline<B>,
    prompt: &str,
    trigger: &str,
    class_tokens: usize,
) -> Result<TriggerPrompt<B>, DiffusionError> {
    if pipeline.family != Family::StableDiffusionXl || pipeline.encoders.len() != 2 {
        return Err(DiffusionError::Setting(
            "PhotoMaker conditions SDXL: give an SDXL pipeline (two text encoders)".into(),
        ));
    }
    let device = pipeline.device();
    let to_tensor = |ids: &[u32]| {
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), device)
    };
    let mut expanded = Vec::new();
    let mut text_only = Vec::new();
    let mut pooled = None;
    let mut pooled_text_only = None;
    let mut class = 0..0;
    for encoder in &pipeline.encoders {
        let t = trigger_ids(&encoder.tokenizer, prompt, trigger, class_tokens)?;
        let vocab = encoder.tower.config().vocab_size;
        if let Some(bad) = t
            .ids
            .iter()
            .chain(&t.text_only)
            .find(|&&i| i as usize >= vocab)
        {
            return Err(DiffusionError::Setting(format!(
                "the PhotoMaker prompt {prompt:?} gives token id {bad}, outside the text \
                 encoder's vocabulary of {vocab}"
            )));
        }
        let out = encoder.tower.forward(to_tensor(&t.ids));
        expanded.push(out.penultimate_hidden_state);
        pooled = out.embeds;
        let out = encoder.tower.forward(to_tensor(&t.text_only));
        text_only.push(out.penultimate_hidden_state);
        pooled_text_only = out.embeds;
        class = t.class_tokens;
    }
    let no_projection = || {
        DiffusionError::Setting(
            "text_encoder_2 has no text_projection: SDXL needs CLIPTextModelWithProjection".into(),
        )
    };
    Ok(TriggerPrompt {
        expanded: Conditioning {
            context: Tensor::cat(expanded, 2),
            pooled: Some(pooled.ok_or_else(no_projection)?),
        },
        class_tokens: class,
        text_only: Conditioning {
            context: Tensor::cat(text_only, 2),
            pooled: Some(pooled_text_only.ok_or_else(no_projection)?),
        },
    })
}
