//! The tokenizer of a diffusers `tokenizer/` folder as one tokenizer.json string: taken as is
//! when the folder has one, otherwise built from CLIP's vocab.json + merges.txt exactly as
//! transformers' `CLIPTokenizer` builds its tokenizers backend (no Python needed). Either way the
//! pad token comes from tokenizer_config.json / special_tokens_map.json.
use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn parse(path: &Path) -> Result<Value> {
    // transformers writes its configs with Python's json: Infinity/NaN may appear.
    super::json::parse(&read(path)?, &path.display().to_string())
}

/// A special token entry: a string or `{"content": ...}` (AddedToken).
fn token_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// The special token `key` (pad_token, bos_token, ...) from tokenizer_config.json, then
/// special_tokens_map.json.
fn special(dir: &Path, key: &str) -> Result<Option<String>> {
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        let p = dir.join(f);
        if p.exists() {
            if let Some(t) = parse(&p)?.get(key).and_then(token_str) {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

/// transformers' CLIPTokenizer pipeline around a BPE `model` (models/clip/tokenization_clip.py):
/// NFC, whitespace runs to one space, lower-case; CLIP's split regex then byte-level; words end
/// in `</w>`; `<|startoftext|> ... <|endoftext|>` around every prompt.
fn clip_tokenizer_json(
    vocab: Value,
    merges: Vec<Value>,
    bos: (&str, u64),
    eos: (&str, u64),
    unk: &str,
) -> Value {
    let added = |content: &str, id: u64| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(bos.0, bos.1), added(eos.0, eos.1)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos.0, eos.1], "cls": [bos.0, bos.1],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

fn from_vocab_merges(dir: &Path) -> Result<Value> {
    let vocab = parse(&dir.join("vocab.json"))?;
    let ids = vocab.as_object().ok_or_else(|| {
        Error::Config(format!(
            "{}: not a JSON object",
            dir.join("vocab.json").display()
        ))
    })?;
    let merges_path = dir.join("merges.txt");
    let merges: Vec<Value> = read(&merges_path)?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| match l.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(Error::Config(format!(
                "{}: merge line {l:?} is not two tokens",
                merges_path.display()
            ))),
        })
        .collect::<Result<_>>()?;
    let tok = |key: &str, default: &str| -> Result<(String, u64)> {
        let t = special(dir, key)?.unwrap_or_else(|| default.to_string());
        let id = ids
            .get(&t)
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Config(format!("tokenizer: {key} `{t}` is not in vocab.json")))?;
        Ok((t, id))
    };
    let bos = tok("bos_token", "<|startoftext|>")?;
    let eos = tok("eos_token", "<|endoftext|>")?;
    let unk = tok("unk_token", "<|endoftext|>")?;
    Ok(clip_tokenizer_json(
        vocab.clone(),
        merges,
        (&bos.0, bos.1),
        (&eos.0, eos.1),
        &unk.0,
    ))
}

/// Registers `content` as a special added token, as transformers does with every special token
/// of tokenizer_config.json. It matters for SD 2.x, whose pad token is "!": as an added token,
/// a "!" in the prompt becomes id 0 instead of the BPE's "!</w>", and ids must match.
fn add_special(v: &mut Value, content: &str, id: u32) {
    let Some(list) = v.get_mut("added_tokens").and_then(Value::as_array_mut) else {
        return;
    };
    if list
        .iter()
        .any(|t| t.get("content").and_then(Value::as_str) == Some(content))
    {
        return;
    }
    list.push(
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                     "rstrip": false, "normalized": false, "special": true}),
    );
    list.sort_by_key(|t| t.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX));
}

/// The tokenizer.json of `dir` with its pad token recorded in `padding` (read back by
/// [`crate::tokenizer::TextTokenizer`]). `max_len` is the text encoder's sequence length.
pub fn load(dir: &Path, max_len: usize) -> Result<String> {
    let tj = dir.join("tokenizer.json");
    let mut v = if tj.exists() {
        parse(&tj)?
    } else if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() {
        from_vocab_merges(dir)?
    } else {
        return Err(Error::Config(format!(
            "{}: needs tokenizer.json, or vocab.json and merges.txt",
            dir.display()
        )));
    };
    let text = serde_json::to_string(&v).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tk = tokenizers::Tokenizer::from_bytes(text.as_bytes())
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", dir.display())))?;
    if let Some(pad) = special(dir, "pad_token")? {
        let id = tk.token_to_id(&pad).ok_or_else(|| {
            Error::Config(format!(
                "tokenizer: pad_token `{pad}` is not in the vocabulary"
            ))
        })?;
        add_special(&mut v, &pad, id);
        // Fixed-length padding as the pipeline's `padding="max_length"`; TextTokenizer
        // re-applies the length, this records which token pads.
        v["padding"] = json!({"strategy": {"Fixed": max_len}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": id, "pad_type_id": 0, "pad_token": pad});
    }
    serde_json::to_string(&v).map_err(|e| Error::Tokenizer(e.to_string()))
}
