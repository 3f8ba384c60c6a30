//! The text encoders, written once over `Ops`: diffusers `LDMBertModel` (the LDM paper's
//! BERT-style transformer) and transformers `CLIPTextModel` (Stable Diffusion). Both are
//! pre-LayerNorm transformers with learned positions; [`forward`] dispatches on the config.
use super::config::{HiddenAct, TextEncoderConfig, TextEncoderKind};
use super::nn::{self, Path};
use crate::ops::Ops;
use crate::Result;

const EPS: f32 = 1e-5;
/// quick_gelu's slope: `x * sigmoid(1.702 x)` (OpenAI CLIP).
const QUICK_GELU: f32 = 1.702;

/// Token ids [B, L] (integer-valued) -> hidden states [B, L, d_model].
/// Parameters under `prefix` (normally `text_encoder.`): `model.` for LDMBert as in diffusers,
/// `text_model.` for CLIP as in transformers.
pub fn forward<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    prefix: &str,
    ids: &O::T,
) -> Result<O::T> {
    cfg.validate()?;
    let l = o.shape(ids)[1];
    if l > cfg.max_position_embeddings {
        return Err(crate::Error::Input(format!(
            "{l} tokens exceed the text encoder's {} positions",
            cfg.max_position_embeddings
        )));
    }
    match cfg.kind {
        TextEncoderKind::LdmBert => ldm_bert(o, cfg, &Path::root(prefix).sub("model"), ids, l),
        TextEncoderKind::Clip => clip(o, cfg, &Path::root(prefix).sub("text_model"), ids, l),
    }
}

/// Token embedding plus the first `l` learned positions.
fn embed<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    tokens: &str,
    positions: &str,
    ids: &O::T,
    l: usize,
) -> Result<O::T> {
    let d = cfg.d_model;
    let table = o.param(tokens, &[cfg.vocab_size, d])?;
    let tok = o.embedding(&table, ids)?;
    let pos = o.param(positions, &[cfg.max_position_embeddings, d])?;
    let pos = o.slice(&pos, 0, 0, l)?;
    o.add(&tok, &pos)
}

fn ldm_bert<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    p: &Path,
    ids: &O::T,
    l: usize,
) -> Result<O::T> {
    let d = cfg.d_model;
    let mut h = embed(
        o,
        cfg,
        &p.sub("embed_tokens").name("weight"),
        &p.sub("embed_positions").name("weight"),
        ids,
        l,
    )?;
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
    nn::layer_norm(o, &p.sub("layer_norm"), &h, d, EPS)
}

/// transformers `CLIPTextModel`'s `last_hidden_state` (what Stable Diffusion conditions on).
/// SD 2.x's "penultimate layer" needs nothing here: its diffusers text_encoder config already
/// has the last layer removed (23 of OpenCLIP's 24), and `final_layer_norm` still applies.
fn clip<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    p: &Path,
    ids: &O::T,
    l: usize,
) -> Result<O::T> {
    let d = cfg.d_model;
    let e = p.sub("embeddings");
    let mut h = embed(
        o,
        cfg,
        &e.sub("token_embedding").name("weight"),
        &e.sub("position_embedding").name("weight"),
        ids,
        l,
    )?;
    let inner = cfg.encoder_attention_heads * cfg.head_dim;
    for i in 0..cfg.encoder_layers {
        let lp = p.sub("encoder").sub("layers").sub(i);
        let a = nn::layer_norm(o, &lp.sub("layer_norm1"), &h, d, EPS)?;
        let sp = lp.sub("self_attn");
        let q = nn::linear(o, &sp.sub("q_proj"), &a, d, inner, true)?;
        let k = nn::linear(o, &sp.sub("k_proj"), &a, d, inner, true)?;
        let v = nn::linear(o, &sp.sub("v_proj"), &a, d, inner, true)?;
        // CLIP's text tower is causal: each token attends to itself and earlier tokens only.
        let a = o.attention(&q, &k, &v, cfg.encoder_attention_heads, true)?;
        let a = nn::linear(o, &sp.sub("out_proj"), &a, inner, d, true)?;
        h = o.add(&h, &a)?;
        let f = nn::layer_norm(o, &lp.sub("layer_norm2"), &h, d, EPS)?;
        let mp = lp.sub("mlp");
        let f = nn::linear(o, &mp.sub("fc1"), &f, d, cfg.encoder_ffn_dim, true)?;
        let f = activation(o, cfg.hidden_act, &f)?;
        let f = nn::linear(o, &mp.sub("fc2"), &f, cfg.encoder_ffn_dim, d, true)?;
        h = o.add(&h, &f)?;
    }
    nn::layer_norm(o, &p.sub("final_layer_norm"), &h, d, EPS)
}

/// quick_gelu is composed as `silu(1.702 x) / 1.702` (= x * sigmoid(1.702 x)) so that no IR op,
/// and so no kernel in any backend, has to be added for it.
fn activation<O: Ops>(o: &mut O, act: HiddenAct, x: &O::T) -> Result<O::T> {
    match act {
        HiddenAct::Gelu => o.gelu(x),
        HiddenAct::QuickGelu => {
            let s = o.scale(x, QUICK_GELU)?;
            let s = o.silu(&s)?;
            o.scale(&s, 1.0 / QUICK_GELU)
        }
    }
}
