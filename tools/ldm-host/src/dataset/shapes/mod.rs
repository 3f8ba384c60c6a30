//! The procedural `shapes` dataset: colored shapes at named positions on plain backgrounds,
//! with captions that state every attribute, deterministic by (seed, index).
use super::{rgb8_to_chw, Dataset, Sample, Split};
use anyhow::{bail, Result};

pub mod render;
pub mod sample;
pub mod scene;

pub use render::render;
pub use sample::{held_out_prompts, held_out_scene, train_scene};
pub use scene::{Background, Color, Object, Position, Relation, Scene, Shape, Size};

/// Image sides the geometry is tuned for: at 16 px small objects are 4 px wide and the checker
/// cannot tell shapes apart; above 256 px rendering is needlessly slow.
pub const MIN_SIZE: usize = 32;
pub const MAX_SIZE: usize = 256;

pub struct ShapesDataset {
    size: usize,
    seed: u64,
    len: usize,
    split: Split,
}

impl ShapesDataset {
    /// `len` samples of `size` px. The held-out split ignores `seed`: it is one fixed set, the
    /// one `ldm-host eval` prompts with.
    pub fn new(size: usize, seed: u64, len: usize, split: Split) -> Result<Self> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            bail!("shapes images must be {MIN_SIZE} to {MAX_SIZE} px, got {size}");
        }
        Ok(Self {
            size,
            seed,
            len,
            split,
        })
    }

    pub fn scene(&self, i: usize) -> Scene {
        match self.split {
            Split::Train => train_scene(self.seed, i as u64),
            Split::HeldOut => held_out_scene(i as u64),
        }
    }
}

impl Dataset for ShapesDataset {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let scene = self.scene(i);
        Ok(Sample {
            image: rgb8_to_chw(&render(&scene, self.size), self.size),
            size: self.size,
            caption: scene.caption(),
        })
    }
    fn caption(&self, i: usize) -> Result<String> {
        Ok(self.scene(i).caption())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_in_range_and_sized() {
        for size in [32, 64] {
            let ds = ShapesDataset::new(size, 7, 10, Split::Train).unwrap();
            let a = ds.get(3).unwrap();
            assert_eq!(a, ds.get(3).unwrap());
            assert_eq!(a.image.len(), 3 * size * size);
            assert!(a.image.iter().all(|v| (-1.0..=1.0).contains(v)));
            assert_eq!(a.caption, ds.caption(3).unwrap());
        }
        assert!(ShapesDataset::new(16, 0, 1, Split::Train).is_err());
    }

    #[test]
    fn held_out_split_is_the_prompt_set() {
        let ds = ShapesDataset::new(32, 99, 5, Split::HeldOut).unwrap();
        let prompts = held_out_prompts(5);
        for (i, s) in prompts.iter().enumerate() {
            assert_eq!(ds.caption(i).unwrap(), s.caption());
        }
    }
}
