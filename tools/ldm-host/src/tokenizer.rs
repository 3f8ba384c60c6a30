//! BERT-style WordPiece tokenizers trained on captions with the tokenizers crate.
use anyhow::{anyhow, Result};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Trains a lower-casing WordPiece tokenizer with BERT's normalizer, pre-tokenizer and
/// `[CLS] $A [SEP]` template on `captions`.
pub fn train_wordpiece(captions: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .special_tokens(specials)
        .show_progress(false)
        .build()
        .into();
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| anyhow!("template: {e}"))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(|e| anyhow!("template: {e}"))?;
    let mut tk = Tokenizer::new(WordPiece::default());
    tk.with_normalizer(Some(BertNormalizer::default()));
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_post_processor(Some(template));
    tk.with_decoder(Some(WordPieceDecoder::default()));
    tk.train(&mut trainer, captions.iter())
        .map_err(|e| anyhow!("training the tokenizer failed: {e}"))?;
    for (i, s) in SPECIALS.iter().enumerate() {
        if tk.token_to_id(s) != Some(i as u32) {
            return Err(anyhow!("special token {s} did not get id {i}"));
        }
    }
    Ok(tk)
}

/// The captions of a dataset named as for `--dataset`, at most `len` of them (procedural
/// datasets generate that many; 20k shapes captions cover every word many times over).
pub fn dataset_captions(spec: &str, len: Option<usize>) -> Result<Vec<String>> {
    let args = crate::dataset::DatasetArgs {
        dataset: spec.to_string(),
        image_size: 32,
        data_seed: 0,
        dataset_len: Some(len.unwrap_or(20_000)),
        split: crate::dataset::Split::Train,
    };
    crate::dataset::cli::captions(args.open()?.as_ref())
}

/// Captions that cover the shapes vocabulary, for tokenizers of placeholder models.
pub fn shapes_vocabulary_captions() -> Vec<String> {
    let colors = [
        "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "gray",
    ];
    let shapes = ["circle", "square", "triangle", "star", "cross", "diamond"];
    let sizes = ["small", "large", "big", "tiny"];
    let places = [
        "top left",
        "top right",
        "bottom left",
        "bottom right",
        "center",
        "middle",
        "left",
        "right",
    ];
    let relations = ["above", "below", "left of", "right of", "next to", "on"];
    let mut out = Vec::new();
    for c in colors {
        for s in shapes {
            for z in sizes {
                out.push(format!(
                    "a {z} {c} {s} in the {}",
                    places[(c.len() + s.len()) % places.len()]
                ));
            }
            for r in relations {
                out.push(format!(
                    "a {c} {s} {r} a {} {} on a {} background",
                    colors[s.len() % 10],
                    shapes[c.len() % 6],
                    colors[r.len() % 10]
                ));
            }
        }
    }
    out
}
