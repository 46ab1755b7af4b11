//! Identity adapters on the UNet's hook seam ([`crate::attention::AttentionHook`]), loading
//! the checkpoints people already have.
//!
//! - [`lora`]: LoRA on any named `Linear` of the UNet's transformers (`out + s·B(A(x))`).
//! - [`ip_adapter`]: the IP-Adapter family — plain (4 tokens from CLIP `image_embeds`), Plus
//!   (the `Resampler` over CLIP hidden states), full-face (257 tokens), FaceID (an ArcFace
//!   embedding, with its LoRA) and FaceID-Plus / PlusV2 — as the decoupled cross-attention
//!   `h_text + scale · SDPA(q, to_k_ip(c), to_v_ip(c))` before `to_out`, read from the original
//!   `{image_proj, ip_adapter}` layout (`.bin` or `.safetensors`).
//! - [`photomaker`]: PhotoMaker v1 (CLIP ID encoder, one token per reference) and v2 (plus an
//!   ArcFace embedding through the `QFormerPerceiver`, two tokens per reference): the class word
//!   of a prompt with the trigger (`a man img`) fused with the identity from `start_merge_step`
//!   on, with its UNet LoRA, read from `photomaker-v*.bin` or the safetensors variant.
//! - [`split_prompt`]: persongen's background / body prompts, each attended to with its own
//!   key and value projections beside the main prompt.

pub mod ip_adapter;
pub mod lora;
pub mod photomaker;
pub mod split_prompt;
