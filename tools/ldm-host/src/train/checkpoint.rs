//! Training checkpoints as safetensors: parameters (`p/<path>`), their EMA (`ema/<path>`) and
//! AdamW moments (`m/<path>`, `v/<path>`), with the config, tokenizer, step and recipe in the
//! safetensors metadata. Written to a temporary file and renamed, so a kill mid-write leaves
//! the previous checkpoint intact.
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub type HostTensor = (Vec<usize>, Vec<f32>);

#[derive(Default, Clone)]
pub struct Checkpoint {
    pub meta: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Checkpoint {
    pub fn put(&mut self, group: &str, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors
            .insert(format!("{group}/{name}"), (shape, data));
    }

    /// All tensors of a group (`p`, `ema`, `m`, `v`) keyed by parameter path.
    /// Puts per-parameter state (optimizer moments, an EMA) under each group's name, at the
    /// shapes of `store`'s parameters, so `restore` can load it back beside them.
    pub fn put_state(
        &mut self,
        store: &super::params::ParamStore,
        groups: &[(
            &str,
            &HashMap<String, burn::tensor::Tensor<{ super::burn_ops::R }>>,
        )],
    ) -> Result<()> {
        let shapes = store.shapes();
        for (g, map) in groups {
            for (n, t) in *map {
                let s = shapes
                    .get(n)
                    .context("optimizer state without a parameter")?;
                let data = super::burn_ops::BT::new(t.clone(), s.clone()).to_vec()?;
                self.put(g, n, s.clone(), data);
            }
        }
        Ok(())
    }

    pub fn group(&self, group: &str) -> HashMap<String, HostTensor> {
        let pre = format!("{group}/");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&pre).map(|n| (n.to_string(), v.clone())))
            .collect()
    }

    /// Fails unless `train {kind}` wrote this checkpoint; `what` names it in the error.
    pub fn require_kind(&self, kind: &str, what: &str) -> Result<()> {
        let found = self.meta("kind")?;
        if found != kind {
            bail!("{what} is a `train {found}` checkpoint, not a `train {kind}` one");
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("checkpoint metadata has no `{key}`"))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, (s, d))| {
                let b = d.iter().flat_map(|x| x.to_le_bytes()).collect();
                (k.clone(), b, s.clone())
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (k, b, s) in &bytes {
            views.push((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?));
        }
        let meta: HashMap<String, String> = self.meta.clone().into_iter().collect();
        let buf = safetensors::serialize(views, Some(meta))?;
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        let saved = std::fs::write(&tmp, &buf)
            .with_context(|| format!("cannot write {}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })
            });
        if saved.is_err() {
            // A full disk would otherwise keep a checkpoint-sized partial file beside the output.
            let _ = std::fs::remove_file(&tmp);
        }
        saved
    }

    pub fn load(path: &Path) -> Result<Self> {
        let buf = std::fs::read(path)
            .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        let corrupt = |e: String| {
            anyhow::anyhow!(
                "{} is not a valid checkpoint (corrupt or truncated safetensors: {e})",
                path.display()
            )
        };
        let (_, header) = SafeTensors::read_metadata(&buf).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&buf).map_err(|e| corrupt(e.to_string()))?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if !meta.contains_key("kind") {
            bail!(
                "{} has no `kind` metadata: not an ldm-host checkpoint",
                path.display()
            );
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!(
                    "tensor {name} is {:?}, not F32",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Self { meta, tensors })
    }
}
