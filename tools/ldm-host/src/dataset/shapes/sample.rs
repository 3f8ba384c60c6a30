//! Deterministic scene sampling, the train/held-out split, and the held-out prompt set.
//!
//! The split: the color+shape pairs in [`HELD_OUT_PAIRS`] never appear in a training scene.
//! The held-out set (evaluation prompts, and the held-out images for autoencoder PSNR) is drawn
//! from its own random stream; every third of its scenes has a held-out pair as its first object,
//! so evaluation measures both seen and unseen combinations. Seen one-object captions can repeat
//! training captions (there are only 900 of them); two-object captions almost never do.
use super::scene::*;

/// Color+shape pairs kept out of training: one per shape, each with a different color.
pub const HELD_OUT_PAIRS: [(Color, Shape); 5] = [
    (Color::Red, Shape::Triangle),
    (Color::Green, Shape::Diamond),
    (Color::Blue, Shape::Cross),
    (Color::Yellow, Shape::Square),
    (Color::Purple, Shape::Circle),
];

pub fn is_held_out_pair(color: Color, shape: Shape) -> bool {
    HELD_OUT_PAIRS.contains(&(color, shape))
}

impl Scene {
    /// Whether any object has a color+shape pair that training never shows.
    pub fn has_held_out_pair(&self) -> bool {
        self.objects
            .iter()
            .any(|o| is_held_out_pair(o.color, o.shape))
    }
}

/// SplitMix64: tiny, fast, and good enough to pick attributes; keeps the crate free of `rand`
/// and the stream fixed across versions.
pub struct Rng(u64);

impl Rng {
    /// A generator for one (seed, stream, index): samples are independent of one another, so
    /// any index can be produced without producing those before it.
    pub fn new(seed: u64, stream: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let s = r.next_u64() ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut r = Rng(s);
        r.next_u64();
        r
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0); the modulo bias is negligible for these tiny n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random streams, so training and held-out scenes never share random numbers.
const TRAIN_STREAM: u64 = 1;
const HELD_OUT_STREAM: u64 = 2;

/// The fixed seed of the held-out set: evaluation prompts do not depend on any training seed.
pub const HELD_OUT_SEED: u64 = 0x5eed_e7a1;

fn object(rng: &mut Rng, position: Position, allow_held_out: bool) -> Object {
    let (color, shape) = loop {
        let c = rng.pick(&Color::ALL);
        let s = rng.pick(&Shape::ALL);
        if allow_held_out || !is_held_out_pair(c, s) {
            break (c, s);
        }
    };
    Object {
        color,
        shape,
        size: rng.pick(&Size::ALL),
        position,
        jitter: (rng.signed_unit() * JITTER, rng.signed_unit() * JITTER),
    }
}

/// A one- or two-object scene; `two` chooses which.
fn scene(rng: &mut Rng, two: bool, allow_held_out: bool) -> Scene {
    let background = rng.pick(&Background::ALL);
    if two {
        let relation = rng.pick(&Relation::ALL);
        let (pa, pb) = rng.pick(&relation.placements());
        let a = object(rng, pa, allow_held_out);
        let b = object(rng, pb, allow_held_out);
        Scene {
            background,
            objects: vec![a, b],
            relation: Some(relation),
        }
    } else {
        let p = rng.pick(&Position::ALL);
        Scene {
            background,
            objects: vec![object(rng, p, allow_held_out)],
            relation: None,
        }
    }
}

/// Training scene `index` for `seed`: half one-object, half two-object, no held-out pairs.
pub fn train_scene(seed: u64, index: u64) -> Scene {
    let mut rng = Rng::new(seed, TRAIN_STREAM, index);
    let two = rng.below(2) == 1;
    scene(&mut rng, two, false)
}

/// Held-out scene `index`: even indices one object, odd two objects with a relation; when
/// `index % 3 == 0` the first object takes a held-out color+shape pair (cycling through them).
pub fn held_out_scene(index: u64) -> Scene {
    let mut rng = Rng::new(HELD_OUT_SEED, HELD_OUT_STREAM, index);
    let mut s = scene(&mut rng, index % 2 == 1, true);
    if index % 3 == 0 {
        let (c, sh) = HELD_OUT_PAIRS[(index / 3) as usize % HELD_OUT_PAIRS.len()];
        s.objects[0].color = c;
        s.objects[0].shape = sh;
    }
    s
}

/// The first `n` held-out scenes: the evaluation prompt set is their captions.
pub fn held_out_prompts(n: usize) -> Vec<Scene> {
    (0..n as u64).map(held_out_scene).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sampling_is_deterministic_and_seed_dependent() {
        assert_eq!(train_scene(3, 10), train_scene(3, 10));
        let a: Vec<_> = (0..20).map(|i| train_scene(0, i)).collect();
        let b: Vec<_> = (0..20).map(|i| train_scene(1, i)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn training_never_shows_held_out_pairs_and_covers_the_rest() {
        let mut seen = HashSet::new();
        let mut two = 0;
        for i in 0..3000 {
            let s = train_scene(0, i);
            assert!(!s.has_held_out_pair(), "{}", s.caption());
            assert!(s.caption().split(' ').count() <= MAX_CAPTION_WORDS);
            two += (s.objects.len() == 2) as usize;
            for o in &s.objects {
                seen.insert((o.color, o.shape, o.size, o.position));
            }
        }
        // Every allowed color/shape/size/position combination occurs.
        assert_eq!(seen.len(), (30 - HELD_OUT_PAIRS.len()) * 2 * 5);
        assert!((1300..1700).contains(&two), "{two} two-object scenes");
    }

    #[test]
    fn held_out_prompt_set_mixes_kinds_and_unseen_pairs() {
        let set = held_out_prompts(300);
        let captions: HashSet<String> = set.iter().map(Scene::caption).collect();
        assert!(captions.len() > 250, "{} distinct", captions.len());
        let one = set.iter().filter(|s| s.objects.len() == 1).count();
        assert_eq!(one, 150);
        let unseen = set.iter().filter(|s| s.has_held_out_pair()).count();
        assert!(unseen >= 100, "{unseen}");
        for s in &set {
            if let Some(r) = s.relation {
                assert_eq!(
                    Relation::between(s.objects[0].center(), s.objects[1].center()),
                    r
                );
            }
        }
    }
}
