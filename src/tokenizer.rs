//! The prompt tokenizer: the `tokenizers` crate over the tokenizer.json stored in the model file.
use crate::{Error, Result};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// Loads a tokenizer.json and fixes its length: every prompt becomes exactly `max_len` ids,
    /// truncated or padded, because the text encoder graph has static shapes.
    pub fn from_json(json: &str, max_len: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        let (pad_id, pad_token) = pad_token(&inner)?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        Ok(Self { inner, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, exactly `max_len` long.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() != self.max_len {
            return Err(Error::Tokenizer(format!(
                "expected {} ids, tokenizer gave {}",
                self.max_len,
                ids.len()
            )));
        }
        Ok(ids)
    }
}

/// The padding token: the one the tokenizer.json itself names in its `padding` section (the
/// importer writes it there from tokenizer_config.json, e.g. "!" for SD 2.x's CLIP), otherwise
/// the first of the conventional names the vocabulary holds.
fn pad_token(tk: &Tokenizer) -> Result<(u32, String)> {
    if let Some(p) = tk.get_padding() {
        return match tk.token_to_id(&p.pad_token) {
            Some(id) if id == p.pad_id => Ok((id, p.pad_token.clone())),
            _ => Err(Error::Tokenizer(format!(
                "tokenizer.json pads with `{}` (id {}), which is not that token's id",
                p.pad_token, p.pad_id
            ))),
        };
    }
    ["[PAD]", "<pad>", "<|endoftext|>"]
        .iter()
        .find_map(|t| tk.token_to_id(t).map(|id| (id, t.to_string())))
        .ok_or_else(|| {
            Error::Tokenizer(
                "tokenizer has no padding token: tokenizer.json names none and the vocabulary \
                 has none of [PAD], <pad>, <|endoftext|>"
                    .into(),
            )
        })
}
