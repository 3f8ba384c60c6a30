//! Aggregating checker judgements into the accuracy figures that `ldm-host eval` reports.
use super::checker::Judgement;
use crate::dataset::shapes::Scene;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub correct: usize,
    pub total: usize,
}

impl Tally {
    pub fn add(&mut self, ok: bool) {
        self.correct += ok as usize;
        self.total += 1;
    }
    /// Fraction correct; 0 for an empty tally, so reports never show NaN.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// The attributes a caption states. `count` (exactly the named objects were found) is reported
/// beside them but is not one of them: it is a property of the image, not of the caption.
pub const CAPTION_ATTRIBUTES: [&str; 6] = [
    "background",
    "color",
    "shape",
    "size",
    "position",
    "relation",
];

/// Text-alignment accuracy over a prompt set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Alignment {
    /// Per attribute: background, color, shape, size (per object), position (one-object
    /// prompts), relation (two-object prompts), and count.
    pub attributes: BTreeMap<String, Tally>,
    /// All caption attributes pooled (micro average): the "per-attribute accuracy".
    pub per_attribute: Tally,
    /// Every attribute right and no extra objects, by prompt kind.
    pub whole_one_object: Tally,
    pub whole_two_object: Tally,
    /// Whole-caption accuracy on prompts with a color+shape pair held out of training, and on
    /// the others: the gap measures compositional generalisation.
    pub whole_held_out_pairs: Tally,
    pub whole_seen_pairs: Tally,
}

impl Alignment {
    pub fn add(&mut self, scene: &Scene, j: &Judgement) {
        let mut put = |k: &str, ok: bool| {
            self.attributes.entry(k.to_string()).or_default().add(ok);
            if CAPTION_ATTRIBUTES.contains(&k) {
                self.per_attribute.add(ok);
            }
        };
        put("background", j.background);
        put("count", j.count);
        j.color.iter().for_each(|&b| put("color", b));
        j.shape.iter().for_each(|&b| put("shape", b));
        j.size.iter().for_each(|&b| put("size", b));
        j.position.into_iter().for_each(|b| put("position", b));
        j.relation.into_iter().for_each(|b| put("relation", b));
        let whole = j.whole();
        if scene.objects.len() == 1 {
            self.whole_one_object.add(whole);
        } else {
            self.whole_two_object.add(whole);
        }
        if scene.has_held_out_pair() {
            self.whole_held_out_pairs.add(whole);
        } else {
            self.whole_seen_pairs.add(whole);
        }
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let pct = |t: &Tally| format!("{:6.2}% ({}/{})", 100.0 * t.rate(), t.correct, t.total);
        let mut s = String::new();
        for (k, t) in &self.attributes {
            s += &format!("  {k:<24} {}\n", pct(t));
        }
        s += &format!(
            "  {:<24} {}\n",
            "per-attribute (pooled)",
            pct(&self.per_attribute)
        );
        s += &format!(
            "  {:<24} {}\n",
            "whole, one object",
            pct(&self.whole_one_object)
        );
        s += &format!(
            "  {:<24} {}\n",
            "whole, two + relation",
            pct(&self.whole_two_object)
        );
        s += &format!(
            "  {:<24} {}\n",
            "whole, held-out pairs",
            pct(&self.whole_held_out_pairs)
        );
        s += &format!(
            "  {:<24} {}\n",
            "whole, seen pairs",
            pct(&self.whole_seen_pairs)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::shapes::held_out_prompts;

    #[test]
    fn pools_caption_attributes_and_splits_by_kind() {
        let scenes = held_out_prompts(2);
        let mut a = Alignment::default();
        let good = Judgement {
            background: true,
            count: true,
            color: vec![true],
            shape: vec![true],
            size: vec![true],
            position: Some(true),
            relation: None,
        };
        a.add(&scenes[0], &good);
        let bad = Judgement {
            background: true,
            count: false,
            color: vec![true, false],
            shape: vec![true, true],
            size: vec![true, true],
            position: None,
            relation: Some(false),
        };
        a.add(&scenes[1], &bad);
        assert_eq!(
            a.whole_one_object,
            Tally {
                correct: 1,
                total: 1
            }
        );
        assert_eq!(
            a.whole_two_object,
            Tally {
                correct: 0,
                total: 1
            }
        );
        // 5 caption attributes in the first, 8 in the second (count excluded), 2 wrong.
        assert_eq!(
            a.per_attribute,
            Tally {
                correct: 11,
                total: 13
            }
        );
        assert_eq!(a.attributes["count"].total, 2);
        assert_eq!(Tally::default().rate(), 0.0);
        assert!(a.table().contains("whole, one object"));
    }
}
