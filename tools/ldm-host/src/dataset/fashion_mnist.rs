//! Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package
//! (`/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz`). 28x28 grayscale items are padded to
//! 32x32 (black, like the images' own background), copied to RGB, resized to other sizes, and
//! captioned from templates ("a photo of a sneaker").
use super::resize::fit_square;
use super::{rgb8_to_chw, Dataset, Sample, Split};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where `apt-get install dataset-fashion-mnist` puts the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Class names in label order, with their articles so templates read "a photo of an ankle boot".
pub const CLASSES: [&str; 10] = [
    "a t-shirt",
    "a pair of trousers",
    "a pullover",
    "a dress",
    "a coat",
    "a sandal",
    "a shirt",
    "a sneaker",
    "a bag",
    "an ankle boot",
];

/// Caption templates, chosen by index so captions vary but stay deterministic.
const TEMPLATES: [&str; 4] = [
    "a photo of {}",
    "a picture of {}",
    "a black and white photo of {}",
    "{}",
];

const SIDE: usize = 28;
const PADDED: usize = 32;

pub struct FashionMnist {
    /// `n * 28 * 28` bytes.
    pixels: Vec<u8>,
    labels: Vec<u8>,
    size: usize,
}

/// Reads `name` or `name.gz` from `dir`, gunzipping the latter.
fn read_maybe_gz(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if plain.is_file() {
        return std::fs::read(&plain).with_context(|| format!("cannot read {}", plain.display()));
    }
    if !gz.is_file() {
        bail!(
            "Fashion-MNIST file {} not found in {}. Install Debian's package \
             (`apt-get install dataset-fashion-mnist`) or pass `fashion-mnist:DIR` with the IDX files",
            name,
            dir.display()
        );
    }
    let f = std::fs::File::open(&gz).with_context(|| format!("cannot open {}", gz.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .with_context(|| format!("{} is not valid gzip", gz.display()))?;
    Ok(out)
}

/// Parses an IDX file of unsigned bytes: magic 0x0000_08NN (NN dimensions), big-endian u32
/// dimensions, then the data. Returns the dimensions and the data.
pub fn parse_idx_u8<'a>(bytes: &'a [u8], what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        bail!("{what}: not an unsigned-byte IDX file (bad magic)");
    }
    let ndim = bytes[3] as usize;
    let head = 4 + 4 * ndim;
    if bytes.len() < head {
        bail!("{what}: truncated IDX header");
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - head != n {
        bail!(
            "{what}: IDX dimensions {dims:?} need {n} bytes, the file has {}",
            bytes.len() - head
        );
    }
    Ok((dims, &bytes[head..]))
}

impl FashionMnist {
    /// The train (60k) or held-out t10k (10k) split from `dir`.
    pub fn open(dir: &Path, split: Split, size: usize) -> Result<Self> {
        if size < PADDED || size > 1024 {
            bail!("Fashion-MNIST images must be 32..=1024 px, got {size}");
        }
        let prefix = match split {
            Split::Train => "train",
            Split::HeldOut => "t10k",
        };
        let img_name = format!("{prefix}-images-idx3-ubyte");
        let lbl_name = format!("{prefix}-labels-idx1-ubyte");
        let img_bytes = read_maybe_gz(dir, &img_name)?;
        let lbl_bytes = read_maybe_gz(dir, &lbl_name)?;
        let (idims, pixels) = parse_idx_u8(&img_bytes, &img_name)?;
        let (ldims, labels) = parse_idx_u8(&lbl_bytes, &lbl_name)?;
        if idims.len() != 3 || idims[1] != SIDE || idims[2] != SIDE {
            bail!("{img_name}: expected [n, 28, 28] images, got {idims:?}");
        }
        if ldims.len() != 1 || ldims[0] != idims[0] {
            bail!("{lbl_name}: {ldims:?} labels for {} images", idims[0]);
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= CLASSES.len()) {
            bail!("{lbl_name}: label {bad} is not a Fashion-MNIST class (0..=9)");
        }
        Ok(Self {
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
            size,
        })
    }

    pub fn default_dir() -> PathBuf {
        PathBuf::from(DEBIAN_DIR)
    }

    fn label(&self, i: usize) -> Result<usize> {
        self.labels
            .get(i)
            .map(|&l| l as usize)
            .with_context(|| format!("index {i} out of range ({} items)", self.labels.len()))
    }
}

impl Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let caption = self.caption(i)?;
        let item = &self.pixels[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        let pad = (PADDED - SIDE) / 2;
        let mut rgb = vec![0u8; PADDED * PADDED * 3];
        for y in 0..SIDE {
            for x in 0..SIDE {
                let p = ((y + pad) * PADDED + x + pad) * 3;
                rgb[p..p + 3].fill(item[y * SIDE + x]);
            }
        }
        if self.size != PADDED {
            let img = image::RgbImage::from_raw(PADDED as u32, PADDED as u32, rgb)
                .context("internal: padded buffer has the wrong length")?;
            rgb = fit_square(&image::DynamicImage::ImageRgb8(img), self.size).into_raw();
        }
        Ok(Sample {
            image: rgb8_to_chw(&rgb, self.size),
            size: self.size,
            caption,
        })
    }
    fn caption(&self, i: usize) -> Result<String> {
        let class = CLASSES[self.label(i)?];
        Ok(TEMPLATES[i % TEMPLATES.len()].replace("{}", class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn tiny_set(dir: &Path, gz: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let mut px = vec![0u8; 2 * 28 * 28];
        px[0] = 255; // item 0, pixel (0, 0)
        let files = [
            ("t10k-images-idx3-ubyte", idx(&[2, 28, 28], &px)),
            ("t10k-labels-idx1-ubyte", idx(&[2], &[7, 1])),
        ];
        for (name, bytes) in files {
            if gz {
                let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
                let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                e.write_all(&bytes).unwrap();
                e.finish().unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_tiny_idx_files_plain_and_gzipped() {
        for gz in [false, true] {
            let dir = crate::scratch::fresh(&format!("fmnist-{gz}"));
            tiny_set(&dir, gz);
            let ds = FashionMnist::open(&dir, Split::HeldOut, 32).unwrap();
            assert_eq!(ds.len(), 2);
            let s = ds.get(0).unwrap();
            assert_eq!(s.caption, "a photo of a sneaker");
            assert_eq!(ds.caption(1).unwrap(), "a picture of a pair of trousers");
            // Padding of 2: pixel (0, 0) of the item lands at (2, 2), white in all channels.
            for c in 0..3 {
                assert_eq!(s.image[c * 1024 + 2 * 32 + 2], 1.0);
                assert_eq!(s.image[c * 1024], -1.0);
            }
            assert_eq!(ds.get(1).unwrap().image.len(), 3 * 32 * 32);
            let big = FashionMnist::open(&dir, Split::HeldOut, 64).unwrap();
            assert_eq!(big.get(0).unwrap().image.len(), 3 * 64 * 64);
        }
    }

    #[test]
    fn missing_package_and_bad_files_are_clear() {
        // Never created: the missing package.
        let dir = crate::scratch::root().join("fmnist-none");
        let e = FashionMnist::open(&dir, Split::Train, 32)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
        assert!(parse_idx_u8(&[1, 2, 3, 4], "x").is_err());
        let e = parse_idx_u8(&idx(&[3], &[0, 1]), "x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("need 3 bytes"), "{e}");
    }

    /// The real package, when installed. Skips loudly elsewhere, except under CI=true where the
    /// package is expected.
    #[test]
    fn debian_package_when_installed() {
        let dir = FashionMnist::default_dir();
        if !dir.join("t10k-labels-idx1-ubyte.gz").exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but dataset-fashion-mnist is not installed in {DEBIAN_DIR}");
            }
            eprintln!("SKIPPED: dataset-fashion-mnist is not installed ({DEBIAN_DIR})");
            return;
        }
        let ds = FashionMnist::open(&dir, Split::HeldOut, 32).unwrap();
        assert_eq!(ds.len(), 10_000);
        let s = ds.get(0).unwrap();
        assert_eq!(s.caption, "a photo of an ankle boot");
    }
}
