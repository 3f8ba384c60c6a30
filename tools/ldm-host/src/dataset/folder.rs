//! User data: a folder of images with same-name `.txt` captions, or a JSONL file of
//! `{"image": path, "caption": text}` lines. Captions are read up front (cheap, and a missing
//! caption should fail before hours of training, not in the middle); images are decoded lazily.
use super::resize::fit_square;
use super::{rgb8_to_chw, Dataset, Sample};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Image extensions the `image` build here can decode.
const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

pub struct FolderDataset {
    items: Vec<(PathBuf, String)>,
    size: usize,
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > 4096 {
        bail!("image size must be 1..=4096, got {size}");
    }
    Ok(())
}

impl FolderDataset {
    /// Every png/jpg/jpeg directly in `dir` (sorted by name, so indices are stable), each with
    /// its caption in `<stem>.txt`.
    pub fn from_dir(dir: &Path, size: usize) -> Result<Self> {
        check_size(size)?;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let mut images = Vec::new();
        for e in entries {
            let path = e
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if ext.is_some_and(|e| IMAGE_EXTS.contains(&e.as_str())) {
                images.push(path);
            }
        }
        images.sort();
        if images.is_empty() {
            bail!(
                "{} holds no images (expected {} files with same-name .txt captions)",
                dir.display(),
                IMAGE_EXTS.join("/")
            );
        }
        let mut items = Vec::with_capacity(images.len());
        for img in images {
            let txt = img.with_extension("txt");
            let caption = std::fs::read_to_string(&txt).with_context(|| {
                format!(
                    "missing caption for {}: cannot read {}",
                    img.display(),
                    txt.display()
                )
            })?;
            items.push((img, clean_caption(&caption, &txt)?));
        }
        Ok(Self { items, size })
    }

    /// Lines of `{"image": path, "caption": text}`; relative paths are relative to the file.
    /// Blank lines are skipped.
    pub fn from_jsonl(file: &Path, size: usize) -> Result<Self> {
        check_size(size)?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", file.display(), n + 1);
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
            let image = v
                .get("image")
                .and_then(|x| x.as_str())
                .with_context(|| format!("{}: no string field \"image\"", at()))?;
            let caption = v.get("caption").and_then(|x| x.as_str()).with_context(|| {
                format!("{}: missing caption (no string field \"caption\")", at())
            })?;
            let path = base.join(image);
            items.push((path, clean_caption(caption, Path::new(&at()))?));
        }
        if items.is_empty() {
            bail!("{} lists no images", file.display());
        }
        Ok(Self { items, size })
    }
}

/// Captions are one line: newlines inside would break caption files (one per line) used for
/// tokenizer training. An empty caption is an error, since empty captions are reserved for the
/// unconditional (CFG dropout) case.
fn clean_caption(raw: &str, from: &Path) -> Result<String> {
    let c = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if c.is_empty() {
        bail!("empty caption in {}", from.display());
    }
    Ok(c)
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let (path, caption) = self
            .items
            .get(i)
            .with_context(|| format!("index {i} out of range ({} images)", self.items.len()))?;
        let img = image::ImageReader::open(path)
            .with_context(|| format!("cannot open image {}", path.display()))?
            .with_guessed_format()
            .with_context(|| format!("cannot read image {}", path.display()))?
            .decode()
            .with_context(|| format!("unreadable image {}", path.display()))?;
        let rgb = fit_square(&img, self.size);
        Ok(Sample {
            image: rgb8_to_chw(rgb.as_raw(), self.size),
            size: self.size,
            caption: caption.clone(),
        })
    }
    fn caption(&self, i: usize) -> Result<String> {
        self.items
            .get(i)
            .map(|(_, c)| c.clone())
            .with_context(|| format!("index {i} out of range ({} images)", self.items.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        crate::scratch::fresh(&format!("host-folder-{name}"))
    }

    fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    #[test]
    fn folder_pairs_images_with_captions_and_resizes() {
        let d = tmpdir("ok");
        write_png(&d.join("b.png"), 50, 20, [255, 0, 0]);
        std::fs::write(d.join("b.txt"), "a red\nthing\n").unwrap();
        write_png(&d.join("a.png"), 8, 8, [0, 0, 255]);
        std::fs::write(d.join("a.txt"), "blue").unwrap();
        std::fs::write(d.join("notes.md"), "ignored").unwrap();
        let ds = FolderDataset::from_dir(&d, 16).unwrap();
        assert_eq!(ds.len(), 2);
        let s = ds.get(1).unwrap();
        assert_eq!(s.caption, "a red thing");
        assert_eq!(s.image.len(), 3 * 16 * 16);
        assert!(
            (s.image[0] - 1.0).abs() < 0.02,
            "red channel {}",
            s.image[0]
        );
        assert_eq!(ds.caption(0).unwrap(), "blue");
    }

    #[test]
    fn folder_errors_name_the_problem() {
        let d = tmpdir("missing");
        let e = FolderDataset::from_dir(&d, 16).err().unwrap().to_string();
        assert!(e.contains("holds no images"), "{e}");
        write_png(&d.join("x.png"), 4, 4, [0, 0, 0]);
        let e = format!("{:#}", FolderDataset::from_dir(&d, 16).err().unwrap());
        assert!(
            e.contains("missing caption for") && e.contains("x.png"),
            "{e}"
        );
        std::fs::write(d.join("x.txt"), "ok").unwrap();
        std::fs::write(d.join("y.png"), b"not a png").unwrap();
        std::fs::write(d.join("y.txt"), "broken").unwrap();
        let ds = FolderDataset::from_dir(&d, 16).unwrap();
        let e = format!("{:#}", ds.get(1).err().unwrap());
        assert!(e.contains("unreadable image") && e.contains("y.png"), "{e}");
    }

    #[test]
    fn jsonl_reads_relative_paths_and_reports_lines() {
        let d = tmpdir("jsonl");
        write_png(&d.join("p.png"), 10, 30, [0, 255, 0]);
        let f = d.join("data.jsonl");
        std::fs::write(&f, "{\"image\": \"p.png\", \"caption\": \"green\"}\n\n").unwrap();
        let ds = FolderDataset::from_jsonl(&f, 8).unwrap();
        assert_eq!(ds.get(0).unwrap().caption, "green");
        std::fs::write(&f, "{\"image\": \"p.png\"}\n").unwrap();
        let e = format!("{:#}", FolderDataset::from_jsonl(&f, 8).err().unwrap());
        assert!(e.contains("line 1") && e.contains("missing caption"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        let e = FolderDataset::from_jsonl(&f, 8).err().unwrap().to_string();
        assert!(e.contains("lists no images"), "{e}");
    }
}
