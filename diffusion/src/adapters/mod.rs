//! Identity adapters on the UNet's hook seam ([`crate::attention::AttentionHook`]), loading
//! the checkpoints people already have.
//!
//! - [`lora`]: LoRA on any named `Linear` of the UNet's transformers (`out + s·B(A(x))`).
//! - [`ip_adapter`]: the IP-Adapter family — plain (4 tokens from CLIP `image_embeds`), Plus
//!   (the `Resampler` over CLIP hidden states), full-face (257 tokens), FaceID (an ArcFace
//!   embedding, with its LoRA) and FaceID-Plus / PlusV2 — as the decoupled cross-attention
//!   `h_text + scale · SDPA(q, to_k_ip(c), to_v_ip(c))` before `to_out`, read from the original
//!   `{image_proj, ip_adapter}` layout (`.bin` or `.safetensors`).
//! - [`split_prompt`]: persongen's background / body prompts, each attended to with its own
//!   key and value projections beside the main prompt.
//!
//! Not yet here (the adapters issue continues): PhotoMaker v1/v2.

pub mod ip_adapter;
pub mod lora;
pub mod split_prompt;
