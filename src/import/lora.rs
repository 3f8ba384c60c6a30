//! LoRA files merged into a model's weights before they are written (and quantized):
//! `W += scale * (alpha / rank) * up @ down` for every adapted layer, as diffusers'
//! `fuse_lora(lora_scale=scale)` does (`peft`'s `LoraLayer.get_delta_weight`).
//!
//! Two layouts, UNet and text encoder, in safetensors:
//! - kohya-ss / sd-scripts: `lora_unet_<module path, dots as underscores>.lora_down.weight`,
//!   `.lora_up.weight` and the scalar `.alpha` (`lora_te_...` for the text encoder);
//!   3x3 convolutions (LoCon) have `down` [r, in, kh, kw] and `up` [out, r, 1, 1];
//! - diffusers / PEFT (`save_lora_weights`): `unet.<module>.lora_A.weight` (down) and
//!   `.lora_B.weight` (up), `text_encoder.<module>...`; the alphas live in the file's metadata
//!   (`lora_adapter_metadata`: `unet.lora_alpha`, `text_encoder.lora_alpha`); without them
//!   alpha = rank, as diffusers assumes. diffusers' older names (`.lora.down.weight`,
//!   `.lora_linear_layer.down.weight`, with `.alpha`) are read too.
//!
//! A key that names no layer of the model, a layer pair with a part missing, or a layout we do
//! not merge (LoHa, Tucker `lora_mid`, DoRA) is an error that lists the keys; a shape that does
//! not fit the layer says the LoRA was made for another base model.
use super::safetensors::SafeTensors;
use crate::arch::{TEXT, UNET};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One low-rank update of one weight.
struct Update {
    /// [out, r]
    up: Vec<f32>,
    /// [r, in * kh * kw]
    down: Vec<f32>,
    rank: usize,
    /// scale * alpha / rank
    factor: f32,
}

/// The updates of any number of LoRA files, by our parameter path.
#[derive(Default)]
pub struct LoraMerge {
    updates: BTreeMap<String, Vec<Update>>,
}

/// The parts of one adapted layer as the file names them.
#[derive(Default)]
struct Layer {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// How far a name is from a layer: (layer key, which part).
enum Part {
    Down,
    Up,
    Alpha,
}

/// Splits a LoRA tensor name into its layer key and part, for both layouts.
fn split(name: &str) -> Option<(&str, Part)> {
    const SUFFIXES: [(&str, Part); 9] = [
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    SUFFIXES
        .into_iter()
        .find_map(|(s, p)| name.strip_suffix(s).map(|k| (k, p)))
}

/// Every name a layer of the model may have in a LoRA file -> our weight path.
fn layer_names(params: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for path in params.keys() {
        let Some(module) = path.strip_suffix(".weight") else {
            continue;
        };
        if let Some(m) = module.strip_prefix(UNET) {
            names.insert(format!("lora_unet_{}", m.replace('.', "_")), path.clone());
            names.insert(format!("unet.{m}"), path.clone());
        } else if let Some(m) = module.strip_prefix(TEXT) {
            names.insert(format!("lora_te_{}", m.replace('.', "_")), path.clone());
            names.insert(format!("text_encoder.{m}"), path.clone());
            // transformers 5 saves CLIPTextModel without `text_model.`, and LoRAs made on it
            // name its layers that way too.
            if let Some(short) = m.strip_prefix("text_model.") {
                names.insert(format!("lora_te_{}", short.replace('.', "_")), path.clone());
                names.insert(format!("text_encoder.{short}"), path.clone());
            }
        }
    }
    names
}

/// `lora_alpha` per component from diffusers' `lora_adapter_metadata` (PEFT configs).
fn peft_alphas(st: &SafeTensors, file: &Path) -> Result<BTreeMap<&'static str, f32>> {
    let mut out = BTreeMap::new();
    let Some(text) = st.metadata.get("lora_adapter_metadata") else {
        return Ok(out);
    };
    let bad =
        |msg: String| Error::Input(format!("{}: lora_adapter_metadata: {msg}", file.display()));
    let v: serde_json::Value =
        super::json::parse(text, "lora_adapter_metadata").map_err(|e| bad(e.to_string()))?;
    for comp in ["unet", "text_encoder"] {
        let get = |k: &str| v.get(format!("{comp}.{k}"));
        // Per-module alphas and ranks, and DoRA, change the update; we merge plain LoRA only.
        for k in ["alpha_pattern", "rank_pattern"] {
            if get(k).is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty())) {
                return Err(bad(format!(
                    "`{comp}.{k}` is not supported (one alpha per component)"
                )));
            }
        }
        if get("use_dora").is_some_and(|d| d.as_bool() == Some(true)) {
            return Err(bad(format!("`{comp}.use_dora` (DoRA) is not supported")));
        }
        if let Some(a) = get("lora_alpha").and_then(super::json::number) {
            out.insert(comp, a as f32);
        }
    }
    Ok(out)
}

impl LoraMerge {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `file` and matches every adapted layer against `params` (our weight paths and
    /// shapes). Returns how many layers it adapts.
    pub fn add(
        &mut self,
        file: &Path,
        scale: f32,
        params: &BTreeMap<String, Vec<usize>>,
    ) -> Result<usize> {
        if !scale.is_finite() {
            return Err(Error::Input(format!(
                "{}: LoRA scale {scale} is not finite",
                file.display()
            )));
        }
        super::refuse_pickle(file)?;
        let st = SafeTensors::open(file)?;
        let alphas = peft_alphas(&st, file)?;
        let mut layers: BTreeMap<&str, Layer> = BTreeMap::new();
        let mut unmatched = Vec::new();
        for name in st.entries.keys() {
            match split(name) {
                Some((key, part)) => {
                    let l = layers.entry(key).or_default();
                    match part {
                        Part::Down => l.down = Some(name.clone()),
                        Part::Up => l.up = Some(name.clone()),
                        Part::Alpha => l.alpha = Some(name.clone()),
                    }
                }
                None => unmatched.push(name.clone()),
            }
        }
        let names = layer_names(params);
        let mut planned = Vec::new();
        for (key, l) in &layers {
            let Some(path) = names.get(*key) else {
                unmatched.extend([&l.down, &l.up, &l.alpha].into_iter().flatten().cloned());
                continue;
            };
            match (&l.down, &l.up) {
                (Some(d), Some(u)) => {
                    planned.push((path.clone(), d.clone(), u.clone(), l.alpha.clone(), *key))
                }
                _ => {
                    return Err(Error::Input(format!(
                        "{}: LoRA layer `{key}` has {} but not {}",
                        file.display(),
                        if l.down.is_some() {
                            "its down (A) matrix"
                        } else {
                            "no down (A) matrix"
                        },
                        if l.up.is_some() {
                            "a down (A) matrix"
                        } else {
                            "its up (B) matrix"
                        },
                    )))
                }
            }
        }
        if !unmatched.is_empty() {
            unmatched.sort();
            let shown: Vec<&str> = unmatched.iter().take(20).map(String::as_str).collect();
            return Err(Error::Input(format!(
                "{}: {} LoRA tensor(s) match no layer of this model (a LoRA for another \
                 architecture, or a layout we do not merge): {}{}",
                file.display(),
                unmatched.len(),
                shown.join(", "),
                if unmatched.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        let n = planned.len();
        for (path, down_name, up_name, alpha_name, key) in planned {
            let shape = &params[&path];
            let down_shape = &st.entries[&down_name].shape;
            let up_shape = &st.entries[&up_name].shape;
            let rank = down_shape.first().copied().unwrap_or(0);
            let out: usize = shape.first().copied().unwrap_or(0);
            let fan_in: usize = shape.iter().skip(1).product();
            // up [out, r] or [out, r, 1, 1]; down [r, in] or [r, in, kh, kw] (a 1x1 conv
            // stored for a linear layer is the same numbers).
            let fits = rank > 0
                && up_shape.len() >= 2
                && up_shape[0] == out
                && up_shape[1] == rank
                && up_shape[2..].iter().all(|&d| d == 1)
                && down_shape[1..].iter().product::<usize>() == fan_in
                && (down_shape.len() == 2 || down_shape.len() == shape.len());
            if !fits {
                return Err(Error::Input(format!(
                    "{}: LoRA layer `{key}` (down {down_shape:?}, up {up_shape:?}) does not fit \
                     the model's `{path}` {shape:?}: this LoRA was made for another base model",
                    file.display()
                )));
            }
            let alpha = match alpha_name {
                Some(a) => {
                    let v = st.load_f32(&a)?;
                    match v.as_slice() {
                        [x] if x.is_finite() => *x,
                        _ => {
                            return Err(Error::Input(format!(
                                "{}: `{a}` must be one finite number",
                                file.display()
                            )))
                        }
                    }
                }
                None => {
                    let comp = if key.starts_with("unet.") {
                        "unet"
                    } else {
                        "text_encoder"
                    };
                    alphas.get(comp).copied().unwrap_or(rank as f32)
                }
            };
            self.updates.entry(path).or_default().push(Update {
                up: st.load_f32(&up_name)?,
                down: st.load_f32(&down_name)?,
                rank,
                factor: scale * alpha / rank as f32,
            });
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Adds the updates for weight `path` (if any) to its row-major `data`.
    pub fn apply(&self, path: &str, data: &mut [f32]) {
        let Some(ups) = self.updates.get(path) else {
            return;
        };
        for u in ups {
            let out = u.up.len() / u.rank;
            let fan_in = u.down.len() / u.rank;
            debug_assert_eq!(out * fan_in, data.len());
            // The product in f64 and one rounding, so the merge adds no error of its own
            // beyond the f32 result.
            for o in 0..out {
                let row = &mut data[o * fan_in..(o + 1) * fan_in];
                for (j, w) in row.iter_mut().enumerate() {
                    let d: f64 = (0..u.rank)
                        .map(|k| u.up[o * u.rank + k] as f64 * u.down[k * fan_in + j] as f64)
                        .sum();
                    *w = (*w as f64 + u.factor as f64 * d) as f32;
                }
            }
        }
    }
}

/// `FILE[:SCALE]` as the command lines take it: the scale after the last `:` when it parses as
/// a number, else 1 (so paths with colons still work).
pub fn parse_spec(spec: &str) -> (std::path::PathBuf, f32) {
    if let Some((p, s)) = spec.rsplit_once(':') {
        if let Ok(v) = s.parse::<f32>() {
            if !p.is_empty() {
                return (p.into(), v);
            }
        }
    }
    (spec.into(), 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse_spec("a.safetensors"), ("a.safetensors".into(), 1.0));
        assert_eq!(
            parse_spec("a.safetensors:0.5"),
            ("a.safetensors".into(), 0.5)
        );
        assert_eq!(
            parse_spec("c:/x/a.safetensors"),
            ("c:/x/a.safetensors".into(), 1.0)
        );
    }

    #[test]
    fn apply_adds_the_scaled_product() {
        let mut m = LoraMerge::new();
        m.updates.insert(
            "w".into(),
            vec![Update {
                up: vec![1.0, 2.0],        // [2, 1]
                down: vec![3.0, 4.0, 5.0], // [1, 3]
                rank: 1,
                factor: 0.5,
            }],
        );
        let mut w = vec![0.0; 6];
        m.apply("w", &mut w);
        assert_eq!(w, [1.5, 2.0, 2.5, 3.0, 4.0, 5.0]);
        let mut other = vec![1.0; 6];
        m.apply("v", &mut other);
        assert_eq!(other, [1.0; 6]);
    }
}
