//! What training reads: images with captions. A thin seam over the dataset module so the
//! training loops do not depend on where images come from.
use anyhow::Result;

pub trait TrainSet {
    fn len(&self) -> usize;
    /// Side of the (square) images in pixels.
    fn image_size(&self) -> usize;
    /// Image i as CHW RGB in [-1, 1], and its caption.
    fn get(&self, i: usize) -> Result<(Vec<f32>, String)>;
    /// The caption alone; datasets that can skip rendering the image override this.
    fn caption(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?.1)
    }
}

/// A batch of images [B, 3, S, S] flattened, and captions.
pub fn batch(set: &dyn TrainSet, idx: &[usize]) -> Result<(Vec<f32>, Vec<String>)> {
    let mut imgs = Vec::with_capacity(idx.len() * 3 * set.image_size().pow(2));
    let mut caps = Vec::with_capacity(idx.len());
    for &i in idx {
        let (img, cap) = set.get(i)?;
        imgs.extend(img);
        caps.push(cap);
    }
    Ok((imgs, caps))
}

/// Random images and captions (`--dataset random`): smoke tests without rendering.
pub struct RandomSet {
    pub n: usize,
    pub size: usize,
}

impl TrainSet for RandomSet {
    fn len(&self) -> usize {
        self.n
    }
    fn image_size(&self) -> usize {
        self.size
    }
    fn get(&self, i: usize) -> Result<(Vec<f32>, String)> {
        let n = 3 * self.size * self.size;
        let img = super::gaussian(i as u64, n)
            .into_iter()
            .map(|v| (v * 0.5).clamp(-1.0, 1.0))
            .collect();
        let caps = ["a red circle", "a blue square", "a green triangle"];
        Ok((img, caps[i % caps.len()].to_string()))
    }
}
