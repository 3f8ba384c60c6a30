//! Captioned image datasets for training and evaluation: the procedural `shapes` set, user
//! folders/JSONL files, and Fashion-MNIST from Debian's package. Every dataset yields the same
//! [`Sample`] so training, previews and tokenizer training do not care where images come from.
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

pub mod cli;
pub mod fashion_mnist;
pub mod folder;
pub mod grid;
pub mod resize;
pub mod shapes;

/// One training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// CHW RGB in [-1, 1] (the range the autoencoder sees), `3 * size * size` values.
    pub image: Vec<f32>,
    /// Side of the square image in pixels.
    pub size: usize,
    pub caption: String,
}

/// A finite, indexable set of samples. `get` must be deterministic: the same index always gives
/// the same sample, so runs resume and held-out splits stay fixed.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Result<Sample>;
    /// The caption alone. Datasets that can answer without decoding an image override this,
    /// so caption dumps for tokenizer training stay cheap.
    fn caption(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?.caption)
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch in the layout the trainer feeds to the autoencoder: `[n, 3, size, size]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub size: usize,
    pub captions: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.captions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
    /// The NCHW shape of `images`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 3, self.size, self.size]
    }
}

/// Gathers `indices` into one batch. All samples must have one size: mixing sizes would
/// silently misalign the NCHW buffer.
pub fn batch(ds: &dyn Dataset, indices: &[usize]) -> Result<Batch> {
    let mut out = Batch {
        images: Vec::new(),
        size: 0,
        captions: Vec::with_capacity(indices.len()),
    };
    for &i in indices {
        if i >= ds.len() {
            bail!(
                "sample index {i} is out of range (dataset has {})",
                ds.len()
            );
        }
        let s = ds.get(i).with_context(|| format!("sample {i}"))?;
        if s.image.len() != 3 * s.size * s.size {
            bail!(
                "sample {i}: image has {} values, expected 3x{}x{}",
                s.image.len(),
                s.size,
                s.size
            );
        }
        if out.is_empty() {
            out.size = s.size;
            out.images.reserve(indices.len() * s.image.len());
        } else if s.size != out.size {
            bail!("sample {i} is {} px, the batch is {} px", s.size, out.size);
        }
        out.images.extend_from_slice(&s.image);
        out.captions.push(s.caption);
    }
    Ok(out)
}

/// Which part of a dataset to use. For `shapes` the held-out split contains the attribute
/// combinations kept out of training; for Fashion-MNIST it is the t10k files; folders have no
/// split and reject `held-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Train,
    HeldOut,
}

/// Command-line selection of a dataset, shared by every subcommand that reads one (flatten it
/// with `#[command(flatten)]`).
#[derive(Args, Clone, Debug)]
pub struct DatasetArgs {
    /// `shapes`, `fashion-mnist[:DIR]`, `folder:DIR` (images with same-name .txt captions) or
    /// `jsonl:FILE` (lines of {"image": path, "caption": text}; paths relative to the file).
    #[arg(long, default_value = "shapes")]
    pub dataset: String,
    /// Side of the square training images; other sizes are resized and center-cropped.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Seed of procedural datasets (shapes).
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Number of samples: the length of procedural datasets, a cap for the others.
    #[arg(long)]
    pub dataset_len: Option<usize>,
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
}

/// Length of a `shapes` dataset when none is given: large enough that an epoch is never the
/// limiting factor, small enough that caption dumps stay quick.
pub const DEFAULT_SHAPES_LEN: usize = 100_000;

impl DatasetArgs {
    pub fn open(&self) -> Result<Box<dyn Dataset>> {
        let (kind, arg) = match self.dataset.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (self.dataset.as_str(), None),
        };
        let need_arg = |what: &str| -> Result<PathBuf> {
            match arg {
                Some(a) if !a.is_empty() => Ok(PathBuf::from(a)),
                _ => bail!("dataset `{kind}` needs a path: `{kind}:{what}`"),
            }
        };
        let no_split = || -> Result<()> {
            if self.split == Split::HeldOut {
                bail!("dataset `{kind}` has no held-out split; hold out files yourself");
            }
            Ok(())
        };
        let ds: Box<dyn Dataset> = match kind {
            "shapes" => {
                if arg.is_some() {
                    bail!("dataset `shapes` takes no argument (use --image-size 32 or 64)");
                }
                Box::new(shapes::ShapesDataset::new(
                    self.image_size,
                    self.data_seed,
                    self.dataset_len.unwrap_or(DEFAULT_SHAPES_LEN),
                    self.split,
                )?)
            }
            "fashion-mnist" => {
                let dir = arg
                    .map(PathBuf::from)
                    .unwrap_or_else(fashion_mnist::FashionMnist::default_dir);
                Box::new(fashion_mnist::FashionMnist::open(
                    &dir,
                    self.split,
                    self.image_size,
                )?)
            }
            "folder" => {
                no_split()?;
                Box::new(folder::FolderDataset::from_dir(
                    &need_arg("DIR")?,
                    self.image_size,
                )?)
            }
            "jsonl" => {
                no_split()?;
                Box::new(folder::FolderDataset::from_jsonl(
                    &need_arg("FILE")?,
                    self.image_size,
                )?)
            }
            other => bail!(
                "unknown dataset `{other}` (expected shapes, fashion-mnist, folder:DIR or jsonl:FILE)"
            ),
        };
        if ds.is_empty() {
            bail!("dataset `{}` is empty", self.dataset);
        }
        Ok(match self.dataset_len {
            Some(n) if n < ds.len() => Box::new(Truncated { inner: ds, len: n }),
            _ => ds,
        })
    }
}

/// The first `len` samples of another dataset (`--dataset-len` on a finite dataset).
struct Truncated {
    inner: Box<dyn Dataset>,
    len: usize,
}

impl Dataset for Truncated {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, i: usize) -> Result<Sample> {
        self.inner.get(i)
    }
    fn caption(&self, i: usize) -> Result<String> {
        self.inner.caption(i)
    }
}

/// Interleaved RGB8 pixels to CHW floats in [-1, 1].
pub fn rgb8_to_chw(rgb: &[u8], size: usize) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (p, px) in rgb.chunks_exact(3).take(plane).enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

/// CHW floats in [-1, 1] back to interleaved RGB8 (rounding, clamping).
pub fn chw_to_rgb8(chw: &[f32], size: usize) -> Vec<u8> {
    let plane = size * size;
    let mut out = vec![0u8; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            let v = (chw[c * plane + p] + 1.0) * 127.5;
            out[p * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Sample>);
    impl Dataset for Fixed {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn get(&self, i: usize) -> Result<Sample> {
            Ok(self.0[i].clone())
        }
    }

    fn sample(size: usize, v: f32, cap: &str) -> Sample {
        Sample {
            image: vec![v; 3 * size * size],
            size,
            caption: cap.into(),
        }
    }

    #[test]
    fn batch_concatenates_in_order() {
        let ds = Fixed(vec![sample(2, 0.5, "a"), sample(2, -0.5, "b")]);
        let b = batch(&ds, &[1, 0]).unwrap();
        assert_eq!(b.shape(), [2, 3, 2, 2]);
        assert_eq!(b.captions, ["b", "a"]);
        assert_eq!(b.images[0], -0.5);
        assert_eq!(b.images[12], 0.5);
    }

    #[test]
    fn batch_rejects_mixed_sizes_and_bad_indices() {
        let ds = Fixed(vec![sample(2, 0.0, "a"), sample(4, 0.0, "b")]);
        assert!(batch(&ds, &[0, 1]).is_err());
        let e = batch(&ds, &[5]).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn rgb_round_trip() {
        let rgb: Vec<u8> = (0..12).map(|i| (i * 21) as u8).collect();
        assert_eq!(chw_to_rgb8(&rgb8_to_chw(&rgb, 2), 2), rgb);
    }

    #[test]
    fn unknown_and_malformed_specs_are_clear() {
        let mut a = DatasetArgs {
            dataset: "nope".into(),
            image_size: 32,
            data_seed: 0,
            dataset_len: None,
            split: Split::Train,
        };
        let e = a.open().err().unwrap().to_string();
        assert!(e.contains("unknown dataset"), "{e}");
        a.dataset = "folder".into();
        let e = a.open().err().unwrap().to_string();
        assert!(e.contains("needs a path"), "{e}");
        a.dataset = "shapes".into();
        a.dataset_len = Some(7);
        assert_eq!(a.open().unwrap().len(), 7);
    }
}
