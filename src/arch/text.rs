//! The text encoder: diffusers `LDMBertModel` (the LDM paper's BERT-style transformer),
//! pre-LayerNorm with learned positions and GELU, written once over `Ops`.
use super::config::TextEncoderConfig;
use super::nn::{self, Path};
use crate::ops::Ops;
use crate::Result;

const EPS: f32 = 1e-5;

/// Token ids [B, L] (integer-valued) -> hidden states [B, L, d_model].
/// Parameters under `prefix` (normally `text_encoder.`), then `model.` as in diffusers.
pub fn forward<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    prefix: &str,
    ids: &O::T,
) -> Result<O::T> {
    cfg.validate()?;
    let p = Path::root(prefix).sub("model");
    let d = cfg.d_model;
    let s = o.shape(ids);
    let (b, l) = (s[0], s[1]);
    if l > cfg.max_position_embeddings {
        return Err(crate::Error::Input(format!(
            "{l} tokens exceed the text encoder's {} positions",
            cfg.max_position_embeddings
        )));
    }
    let table = o.param(&p.sub("embed_tokens").name("weight"), &[cfg.vocab_size, d])?;
    let tok = o.embedding(&table, ids)?;
    let pos = o.param(
        &p.sub("embed_positions").name("weight"),
        &[cfg.max_position_embeddings, d],
    )?;
    let pos = o.slice(&pos, 0, 0, l)?;
    let mut h = o.add(&tok, &pos)?;
    let inner = cfg.encoder_attention_heads * cfg.head_dim;
    for i in 0..cfg.encoder_layers {
        let lp = p.sub("layers").sub(i);
        let a = nn::layer_norm(o, &lp.sub("self_attn_layer_norm"), &h, d, EPS)?;
        let sp = lp.sub("self_attn");
        let q = nn::linear(o, &sp.sub("q_proj"), &a, d, inner, false)?;
        let k = nn::linear(o, &sp.sub("k_proj"), &a, d, inner, false)?;
        let v = nn::linear(o, &sp.sub("v_proj"), &a, d, inner, false)?;
        let a = o.attention(&q, &k, &v, cfg.encoder_attention_heads, false)?;
        let a = nn::linear(o, &sp.sub("out_proj"), &a, inner, d, true)?;
        h = o.add(&h, &a)?;
        let f = nn::layer_norm(o, &lp.sub("final_layer_norm"), &h, d, EPS)?;
        let f = nn::linear(o, &lp.sub("fc1"), &f, d, cfg.encoder_ffn_dim, true)?;
        let f = o.gelu(&f)?;
        let f = nn::linear(o, &lp.sub("fc2"), &f, cfg.encoder_ffn_dim, d, true)?;
        h = o.add(&h, &f)?;
    }
    let _ = b;
    nn::layer_norm(o, &p.sub("layer_norm"), &h, d, EPS)
}
