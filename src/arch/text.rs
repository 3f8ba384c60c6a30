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
    let layout = match cfg.kind {
        TextEncoderKind::LdmBert => &LDM_BERT,
        TextEncoderKind::Clip => &CLIP,
    };
    encoder(o, cfg, layout, &Path::root(prefix).sub(layout.root), ids, l)
}

/// Where a family keeps its parameters and how its layers differ. Both families are the same
/// pre-LayerNorm transformer, so the computation is written once in [`encoder`].
struct Layout {
    root: &'static str,
    /// Path of the token and position tables, relative to `root`.
    embeddings: Option<&'static str>,
    tokens: &'static str,
    positions: &'static str,
    layers: &'static str,
    attn_norm: &'static str,
    mlp_norm: &'static str,
    /// The feed-forward's fc1/fc2 sit under this sub-module (`mlp` in CLIP) or in the layer.
    mlp: Option<&'static str>,
    final_norm: &'static str,
    qkv_bias: bool,
    /// CLIP's text tower is causal: each token attends to itself and earlier tokens only.
    causal: bool,
}

/// diffusers `LDMBertModel`.
const LDM_BERT: Layout = Layout {
    root: "model",
    embeddings: None,
    tokens: "embed_tokens",
    positions: "embed_positions",
    layers: "layers",
    attn_norm: "self_attn_layer_norm",
    mlp_norm: "final_layer_norm",
    mlp: None,
    final_norm: "layer_norm",
    qkv_bias: false,
    causal: false,
};

/// transformers `CLIPTextModel`'s `last_hidden_state` (what Stable Diffusion conditions on).
/// SD 2.x's "penultimate layer" needs nothing here: its diffusers text_encoder config already
/// has the last layer removed (23 of OpenCLIP's 24), and `final_layer_norm` still applies.
const CLIP: Layout = Layout {
    root: "text_model",
    embeddings: Some("embeddings"),
    tokens: "token_embedding",
    positions: "position_embedding",
    layers: "encoder.layers",
    attn_norm: "layer_norm1",
    mlp_norm: "layer_norm2",
    mlp: Some("mlp"),
    final_norm: "final_layer_norm",
    qkv_bias: true,
    causal: true,
};

fn encoder<O: Ops>(
    o: &mut O,
    cfg: &TextEncoderConfig,
    lay: &Layout,
    p: &Path,
    ids: &O::T,
    l: usize,
) -> Result<O::T> {
    let d = cfg.d_model;
    let e = lay.embeddings.map_or_else(|| p.clone(), |e| p.sub(e));
    let mut h = embed(
        o,
        cfg,
        &e.sub(lay.tokens).name("weight"),
        &e.sub(lay.positions).name("weight"),
        ids,
        l,
    )?;
    let inner = cfg.encoder_attention_heads * cfg.head_dim;
    let heads = cfg.encoder_attention_heads;
    for i in 0..cfg.encoder_layers {
        let lp = p.sub(lay.layers).sub(i);
        let a = nn::layer_norm(o, &lp.sub(lay.attn_norm), &h, d, EPS)?;
        let sp = lp.sub("self_attn");
        let q = nn::linear(o, &sp.sub("q_proj"), &a, d, inner, lay.qkv_bias)?;
        let k = nn::linear(o, &sp.sub("k_proj"), &a, d, inner, lay.qkv_bias)?;
        let v = nn::linear(o, &sp.sub("v_proj"), &a, d, inner, lay.qkv_bias)?;
        let a = o.attention(&q, &k, &v, heads, lay.causal)?;
        let a = nn::linear(o, &sp.sub("out_proj"), &a, inner, d, true)?;
        h = o.add(&h, &a)?;
        let f = nn::layer_norm(o, &lp.sub(lay.mlp_norm), &h, d, EPS)?;
        let mp = lay.mlp.map_or_else(|| lp.clone(), |m| lp.sub(m));
        let f = nn::linear(o, &mp.sub("fc1"), &f, d, cfg.encoder_ffn_dim, true)?;
        let f = activation(o, cfg.hidden_act, &f)?;
        let f = nn::linear(o, &mp.sub("fc2"), &f, cfg.encoder_ffn_dim, d, true)?;
        h = o.add(&h, &f)?;
    }
    nn::layer_norm(o, &p.sub(lay.final_norm), &h, d, EPS)
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
