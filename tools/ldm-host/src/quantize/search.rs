//! Units (the tensors measured and assigned together) and the mixed-precision choice: greedy by
//! measured damage per byte saved, assuming each unit's damage adds (small, independent
//! errors). The final model is measured for real afterwards, so the assumption only steers.
use clap::ValueEnum;
use ldm_edge::format::DType;

/// How tensors are grouped into units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnitKind {
    /// Every matrix and kernel alone.
    Tensor,
    /// A resnet, attention block or text-encoder layer (`unet.down_blocks.1.resnets.0`).
    Block,
    /// A UNet level or autoencoder stage (`unet.down_blocks.1`): for models too large to
    /// measure finer.
    Stage,
}

impl UnitKind {
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Tensor => "tensor",
            UnitKind::Block => "block",
            UnitKind::Stage => "stage",
        }
    }
}

/// The unit a tensor belongs to. Paths are cut after their second (block) or first (stage)
/// numeric segment; a path with fewer numbers loses its last segment (`unet.conv_in`).
pub fn unit_of(name: &str, kind: UnitKind) -> String {
    let keep = match kind {
        UnitKind::Tensor => return name.to_string(),
        UnitKind::Block => 2,
        UnitKind::Stage => 1,
    };
    let parts: Vec<&str> = name.split('.').collect();
    let numeric: Vec<usize> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(i, _)| i)
        .collect();
    let end = match numeric.get(keep - 1).or(numeric.last()) {
        Some(&i) => i + 1,
        None => parts.len().saturating_sub(1).max(1),
    };
    parts[..end].join(".")
}

/// The three dtypes a unit may take, in order of size.
pub const LEVELS: [DType; 3] = [DType::F16, DType::Q8, DType::Q4];

/// One unit's cost at each level: bytes, and damage (mean image MSE against the reference when
/// only this unit is at that level; f16 counts as none).
#[derive(Clone, Debug, PartialEq)]
pub struct UnitCost {
    pub bytes: [u64; 3],
    pub damage: [f64; 3],
}

impl UnitCost {
    /// Damage made monotone in the level (measurement noise can put q4 under q8).
    fn clean(&self) -> [f64; 3] {
        let d8 = self.damage[1].max(0.0);
        [0.0, d8, self.damage[2].max(d8)]
    }
}

/// The cheapest next move: (unit, new level) with the least added damage per byte saved;
/// ties go to the lower unit index so the choice is reproducible.
fn best_move(
    units: &[UnitCost],
    levels: &[usize],
    fits: impl Fn(f64) -> bool,
) -> Option<(usize, usize)> {
    let mut best: Option<(f64, usize, usize)> = None;
    for (u, c) in units.iter().enumerate() {
        let d = c.clean();
        let l = levels[u];
        for to in l + 1..LEVELS.len() {
            let saved = c.bytes[l].saturating_sub(c.bytes[to]);
            if saved == 0 {
                continue;
            }
            let added = d[to] - d[l];
            if !fits(added) {
                continue;
            }
            let ratio = added / saved as f64;
            if best.is_none_or(|(r, _, _)| ratio < r) {
                best = Some((ratio, u, to));
            }
        }
    }
    best.map(|(_, u, to)| (u, to))
}

fn total(units: &[UnitCost], levels: &[usize]) -> u64 {
    units.iter().zip(levels).map(|(c, &l)| c.bytes[l]).sum()
}

/// Levels (indices into [`LEVELS`]) that bring the units' bytes plus `fixed` to at most
/// `budget`, from all-f16 down; None when even all-q4 does not fit.
pub fn for_budget(units: &[UnitCost], fixed: u64, budget: u64) -> Option<Vec<usize>> {
    let mut levels = vec![0; units.len()];
    while fixed + total(units, &levels) > budget {
        let (u, to) = best_move(units, &levels, |_| true)?;
        levels[u] = to;
    }
    Some(levels)
}

/// Levels that save the most bytes while the summed damage stays within `allowance` (mean
/// image MSE).
pub fn for_floor(units: &[UnitCost], allowance: f64) -> Vec<usize> {
    let mut levels = vec![0; units.len()];
    let mut spent = 0.0;
    while let Some((u, to)) = best_move(units, &levels, |added| spent + added <= allowance) {
        spent += units[u].clean()[to] - units[u].clean()[levels[u]];
        levels[u] = to;
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_by_kind() {
        let n = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
        assert_eq!(unit_of(n, UnitKind::Tensor), n);
        assert_eq!(
            unit_of(n, UnitKind::Block),
            "unet.down_blocks.1.attentions.0"
        );
        assert_eq!(unit_of(n, UnitKind::Stage), "unet.down_blocks.1");
        assert_eq!(
            unit_of("unet.conv_in.weight", UnitKind::Block),
            "unet.conv_in"
        );
        assert_eq!(
            unit_of("text_encoder.model.layers.3.fc1.weight", UnitKind::Block),
            "text_encoder.model.layers.3"
        );
        assert_eq!(unit_of("x", UnitKind::Stage), "x");
    }

    fn unit(b16: u64, d8: f64, d4: f64) -> UnitCost {
        UnitCost {
            bytes: [b16, b16 * 34 / 64, b16 * 18 / 64],
            damage: [0.0, d8, d4],
        }
    }

    #[test]
    fn budget_is_met_and_sensitive_units_keep_precision() {
        let units = vec![
            unit(6400, 1e-6, 1e-2),
            unit(6400, 1e-7, 1e-5),
            unit(640, 0.0, 0.0),
        ];
        // Room for one big unit at q8 and the other at q4.
        let budget = 3400 + 1800 + 180;
        let l = for_budget(&units, 0, budget).unwrap();
        assert!(total(&units, &l) <= budget);
        // The insensitive big unit goes to q4; the sensitive one stays at q8.
        assert_eq!(l, vec![1, 2, 2]);
        // A looser budget stops as soon as it is met.
        let l = for_budget(&units, 0, 10_000).unwrap();
        assert_eq!(l, vec![0, 1, 2]);
        assert_eq!(for_budget(&units, 0, 10), None);
        assert_eq!(for_budget(&units, 100, 1), None);
    }

    #[test]
    fn floor_spends_only_the_allowance() {
        let units = vec![unit(6400, 1e-6, 1e-2), unit(6400, 1e-7, 1e-5)];
        let l = for_floor(&units, 2e-5);
        assert_eq!(l, vec![1, 2]);
        assert_eq!(for_floor(&units, 0.0), vec![0, 0]);
    }

    #[test]
    fn noisy_damage_is_made_monotone() {
        let units = vec![unit(6400, 1e-3, 1e-4)];
        // q4 measured below q8: treated as q8's damage, so q4 is the better trade.
        assert_eq!(for_floor(&units, 1e-3), vec![2]);
    }
}
