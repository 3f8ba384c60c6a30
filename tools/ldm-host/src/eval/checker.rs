//! An analytic checker for the shapes domain: reads background, object colors, shapes, sizes
//! and positions back from RGB pixels, with no learned parts, so text-alignment accuracy does
//! not depend on another model's mistakes.
//!
//! Method: the background is the median border color; pixels far from it are foreground;
//! 8-connected foreground components are objects. Per object, its color is the mean of its
//! most saturated pixels (snapped to the palette); each pixel's coverage is its projection on
//! the background->object color line, which undoes anti-aliasing and blur. Each candidate shape
//! is fitted to the coverage map by moments (its area gives the radius, its centroid the
//! center) and rendered back; the shape with the smallest L1 difference wins. Size comes from
//! the fitted radius, position (nearest named place) and relations from the fitted center.
//! A 32 px small object is under 8 px wide, too few pixels for thresholded masks and
//! fill ratios; fitting soft coverage uses the anti-aliased rim as well.
use crate::dataset::shapes::render::coverage;
use crate::dataset::shapes::{Background, Color, Position, Relation, Scene, Shape, Size};

/// Foreground: RGB distance from the background above this. The closest object/background
/// pair is 95 apart, so an edge pixel more than ~40% covered passes.
const FG_DIST: f32 = 40.0;
/// Components smaller than this fraction of the image are noise (a small diamond is ~2.9%).
const MIN_AREA: f32 = 0.006;
/// Large/small boundary on the fitted radius as a fraction of the image: the geometric mean of
/// the two nominal radii (0.12 and 0.2).
const SIZE_SPLIT: f32 = 0.155;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detected {
    pub color: Color,
    pub shape: Shape,
    pub size: Size,
    pub position: Position,
    /// Center (x, y) of the fitted shape's box, as fractions of the image side.
    pub center: (f32, f32),
    /// Coverage sum as a fraction of the image area.
    pub area: f32,
}

/// What the checker sees in one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub background: Background,
    /// Objects by decreasing area.
    pub objects: Vec<Detected>,
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f32>().sqrt()
}

fn to_f(c: [u8; 3]) -> [f32; 3] {
    c.map(|v| v as f32)
}

fn nearest<T: Copy>(items: &[T], rgb: impl Fn(T) -> [u8; 3], c: [f32; 3]) -> T {
    let mut best = items[0];
    for &it in items {
        if dist(to_f(rgb(it)), c) < dist(to_f(rgb(best)), c) {
            best = it;
        }
    }
    best
}

/// Per-channel median of the border pixels: objects never cover much of the border, so this is
/// the background even when an object touches an edge.
pub(crate) fn border_background(px: &[[f32; 3]], size: usize) -> [f32; 3] {
    let mut border = Vec::with_capacity(4 * size);
    for i in 0..size {
        border.push(px[i]);
        border.push(px[(size - 1) * size + i]);
        border.push(px[i * size]);
        border.push(px[i * size + size - 1]);
    }
    let mut out = [0f32; 3];
    for (k, o) in out.iter_mut().enumerate() {
        let mut ch: Vec<f32> = border.iter().map(|p| p[k]).collect();
        ch.sort_by(f32::total_cmp);
        *o = ch[ch.len() / 2];
    }
    out
}

/// 8-connected components of `fg`, each a list of pixel indices.
pub(crate) fn components(fg: &[bool], size: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; fg.len()];
    let mut out = Vec::new();
    for start in 0..fg.len() {
        if !fg[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut comp = vec![start];
        let mut k = 0;
        while k < comp.len() {
            let (x, y) = ((comp[k] % size) as isize, (comp[k] / size) as isize);
            k += 1;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= size as isize || ny >= size as isize {
                        continue;
                    }
                    let n = ny as usize * size + nx as usize;
                    if fg[n] && !seen[n] {
                        seen[n] = true;
                        comp.push(n);
                    }
                }
            }
        }
        out.push(comp);
    }
    out
}

/// Area of each shape as a fraction of its box, and its centroid's offset below the box
/// center in radii: moments of a measured coverage map then give the box a shape would need.
fn fill(shape: Shape) -> f32 {
    match shape {
        Shape::Circle => std::f32::consts::FRAC_PI_4,
        Shape::Square => 1.0,
        Shape::Triangle | Shape::Diamond => 0.5,
        Shape::Cross => 5.0 / 9.0,
    }
}

fn centroid_drop(shape: Shape) -> f32 {
    match shape {
        // Apex at v = -1, base at v = 1: the centroid is a third of the way up from the base.
        Shape::Triangle => 1.0 / 3.0,
        _ => 0.0,
    }
}

/// Reads component `k`. Coverage is measured over its box grown by 2 px (pixels of other
/// components count as 0), so faint rim pixels below the foreground threshold still count.
/// Each shape is then fitted by moments (area -> radius, centroid -> center) and compared with
/// the measured coverage; the smallest L1 difference wins.
fn read_object(
    k: usize,
    comp: &[usize],
    label: &[usize],
    px: &[[f32; 3]],
    bg: [f32; 3],
    size: usize,
) -> Option<Detected> {
    let d: Vec<f32> = comp.iter().map(|&p| dist(px[p], bg)).collect();
    let dmax = d.iter().cloned().fold(0.0, f32::max);
    // The object's own color: the mean of its interior (pixels nearly as far from the
    // background as the farthest), so anti-aliased rims do not pull it toward the background.
    let mut mean = [0f32; 3];
    let mut n = 0.0;
    for (&p, &dp) in comp.iter().zip(&d) {
        if dp >= 0.7 * dmax {
            (0..3).for_each(|c| mean[c] += px[p][c]);
            n += 1.0;
        }
    }
    let mean = mean.map(|v| v / n);
    let axis = [mean[0] - bg[0], mean[1] - bg[1], mean[2] - bg[2]];
    let norm2: f32 = axis.iter().map(|v| v * v).sum();
    if norm2 <= 0.0 {
        return None;
    }
    let b = comp.iter().fold([usize::MAX, 0, usize::MAX, 0], |b, &p| {
        let (x, y) = (p % size, p / size);
        [b[0].min(x), b[1].max(x), b[2].min(y), b[3].max(y)]
    });
    let (x0, x1) = (b[0].saturating_sub(2), (b[1] + 2).min(size - 1));
    let (y0, y1) = (b[2].saturating_sub(2), (b[3] + 2).min(size - 1));
    let mut cov = Vec::with_capacity((x1 + 1 - x0) * (y1 + 1 - y0));
    let (mut a, mut mx, mut my) = (0f32, 0f32, 0f32);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let p = y * size + x;
            let c = if label[p] == k || label[p] == usize::MAX {
                let proj: f32 = (0..3).map(|c| (px[p][c] - bg[c]) * axis[c]).sum();
                (proj / norm2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            a += c;
            mx += c * (x as f32 + 0.5);
            my += c * (y as f32 + 0.5);
            cov.push(c);
        }
    }
    if a <= 0.0 {
        return None;
    }
    let (mx, my) = (mx / a, my / a);
    let mut best: Option<(f32, Shape, f32, f32, f32)> = None;
    for shape in Shape::ALL {
        let r = (a / (4.0 * fill(shape))).sqrt();
        let (cx, cy) = (mx, my - centroid_drop(shape) * r);
        let mut err = 0.0;
        let mut i = 0;
        for y in y0..=y1 {
            for x in x0..=x1 {
                err += (cov[i] - coverage(shape, cx, cy, r, x, y)).abs();
                i += 1;
            }
        }
        if best.is_none_or(|b| err < b.0) {
            best = Some((err, shape, cx, cy, r));
        }
    }
    let (_, shape, cx, cy, r) = best?;
    let s = size as f32;
    let center = (cx / s, cy / s);
    let position = *Position::ALL
        .iter()
        .min_by(|a, b| dist2(a.center(), center).total_cmp(&dist2(b.center(), center)))
        .unwrap_or(&Position::Center);
    Some(Detected {
        color: nearest(&Color::ALL, Color::rgb, mean),
        shape,
        size: if r / s > SIZE_SPLIT {
            Size::Large
        } else {
            Size::Small
        },
        position,
        center,
        area: a / (s * s),
    })
}

fn dist2(a: (f32, f32), b: (f32, f32)) -> f32 {
    (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)
}

/// Reads an interleaved RGB8 image of `size` x `size`.
pub fn read(rgb: &[u8], size: usize) -> Reading {
    let px: Vec<[f32; 3]> = rgb
        .chunks_exact(3)
        .take(size * size)
        .map(|c| [c[0] as f32, c[1] as f32, c[2] as f32])
        .collect();
    if px.len() < size * size || size == 0 {
        return Reading {
            background: Background::Black,
            objects: Vec::new(),
        };
    }
    let bg = border_background(&px, size);
    let fg: Vec<bool> = px.iter().map(|&p| dist(p, bg) > FG_DIST).collect();
    let min_px = MIN_AREA * (size * size) as f32;
    let comps = components(&fg, size);
    let mut label = vec![usize::MAX; px.len()];
    for (k, c) in comps.iter().enumerate() {
        c.iter().for_each(|&p| label[p] = k);
    }
    let mut objects: Vec<Detected> = comps
        .iter()
        .enumerate()
        .filter(|(_, c)| c.len() as f32 >= min_px)
        .filter_map(|(k, c)| read_object(k, c, &label, &px, bg, size))
        .filter(|d| d.area * (size * size) as f32 >= min_px * 0.5)
        .collect();
    objects.sort_by(|a, b| b.area.total_cmp(&a.area));
    Reading {
        background: nearest(&Background::ALL, Background::rgb, bg),
        objects,
    }
}

/// Attribute outcomes for one image against the scene its prompt described. `None` where the
/// attribute does not apply (position for two-object scenes, relation for one-object scenes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    pub background: bool,
    /// The checker found exactly as many objects as the caption names.
    pub count: bool,
    /// Per caption object, in caption order.
    pub color: Vec<bool>,
    pub shape: Vec<bool>,
    pub size: Vec<bool>,
    pub position: Option<bool>,
    pub relation: Option<bool>,
}

impl Judgement {
    /// Every attribute of the caption holds, and nothing else is in the image.
    pub fn whole(&self) -> bool {
        self.background
            && self.count
            && self.color.iter().all(|&b| b)
            && self.shape.iter().all(|&b| b)
            && self.size.iter().all(|&b| b)
            && self.position.unwrap_or(true)
            && self.relation.unwrap_or(true)
    }
}

/// Judges `rgb` against `scene`. The largest detected objects are matched to the caption's
/// objects in the order that agrees on most attributes; missing objects fail every attribute.
pub fn judge(scene: &Scene, rgb: &[u8], size: usize) -> Judgement {
    let reading = read(rgb, size);
    let want = &scene.objects;
    let found: Vec<&Detected> = reading.objects.iter().take(want.len()).collect();
    let agree = |w: &crate::dataset::shapes::Object, d: &Detected| {
        (w.color == d.color) as u8 + (w.shape == d.shape) as u8 + (w.size == d.size) as u8
    };
    // found[order[i]] is matched to want[i]: the order that agrees on more attributes, and on a
    // tie (two objects the caption cannot tell apart) the one under which the relation holds,
    // since either reading of such a caption is a correct one.
    let order: Vec<usize> = match (want.len(), found.len(), scene.relation) {
        (2, 2, Some(r)) => {
            let score = |a: &Detected, b: &Detected| {
                2 * (agree(&want[0], a) + agree(&want[1], b)) as u32
                    + (Relation::between(a.center, b.center) == r) as u32
            };
            if score(found[1], found[0]) > score(found[0], found[1]) {
                vec![1, 0]
            } else {
                vec![0, 1]
            }
        }
        _ => (0..found.len()).collect(),
    };
    let matched: Vec<Option<&Detected>> = (0..want.len())
        .map(|i| order.get(i).map(|&k| found[k]))
        .collect();
    let per = |f: &dyn Fn(&crate::dataset::shapes::Object, &Detected) -> bool| -> Vec<bool> {
        want.iter()
            .zip(&matched)
            .map(|(w, m)| m.is_some_and(|d| f(w, d)))
            .collect()
    };
    let mut j = Judgement {
        background: reading.background == scene.background,
        count: reading.objects.len() == want.len(),
        color: per(&|w, d| w.color == d.color),
        shape: per(&|w, d| w.shape == d.shape),
        size: per(&|w, d| w.size == d.size),
        position: None,
        relation: None,
    };
    match (scene.relation, matched.as_slice()) {
        (Some(r), [a, b]) => {
            j.relation = Some(match (a, b) {
                (Some(a), Some(b)) => Relation::between(a.center, b.center) == r,
                _ => false,
            })
        }
        (None, [a]) => j.position = Some(a.is_some_and(|d| d.position == want[0].position)),
        _ => {}
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::shapes::{held_out_prompts, render};

    /// The acceptance figure for the checker itself: on 500 held-out ground-truth renders (half
    /// one-object, half two-object) every attribute must be read back at >= 98%.
    #[test]
    fn reads_ground_truth_renders() {
        for size in [32, 64] {
            let scenes = held_out_prompts(500);
            let mut tally = std::collections::BTreeMap::<&str, (usize, usize)>::new();
            let mut add = |k: &'static str, ok: bool| {
                let e = tally.entry(k).or_default();
                e.0 += ok as usize;
                e.1 += 1;
            };
            let mut whole = 0;
            for s in &scenes {
                let j = judge(s, &render(s, size), size);
                add("background", j.background);
                add("count", j.count);
                j.color.iter().for_each(|&b| add("color", b));
                j.shape.iter().for_each(|&b| add("shape", b));
                j.size.iter().for_each(|&b| add("size", b));
                j.position.into_iter().for_each(|b| add("position", b));
                j.relation.into_iter().for_each(|b| add("relation", b));
                whole += j.whole() as usize;
            }
            eprintln!("checker on 500 ground-truth renders at {size} px:");
            for (k, (ok, n)) in &tally {
                let acc = *ok as f64 / *n as f64;
                eprintln!("  {k:<10} {ok}/{n} = {:.2}%", 100.0 * acc);
                assert!(acc >= 0.98, "{k} at {size} px: {ok}/{n}");
            }
            eprintln!("  whole caption {whole}/500");
        }
    }

    /// Generated images are soft and noisy, not exact renders: after a [1 2 1] blur and +-12
    /// uniform noise per channel the checker must still read >= 95% of attributes at 32 px.
    #[test]
    fn reads_blurred_noisy_renders() {
        let size = 32;
        let mut rng = crate::dataset::shapes::sample::Rng::new(1, 9, 0);
        let (mut ok, mut n, mut whole) = (0, 0, 0);
        let scenes = held_out_prompts(300);
        for s in &scenes {
            let img = render(s, size);
            let at = |x: isize, y: isize, c: usize| {
                let (x, y) = (x.clamp(0, 31) as usize, y.clamp(0, 31) as usize);
                img[(y * size + x) * 3 + c] as f32
            };
            let w = [1.0, 2.0, 1.0];
            let mut out = vec![0u8; img.len()];
            for y in 0..size as isize {
                for x in 0..size as isize {
                    for c in 0..3 {
                        let mut v = 0.0;
                        for dy in -1..=1isize {
                            for dx in -1..=1isize {
                                v += w[(dx + 1) as usize]
                                    * w[(dy + 1) as usize]
                                    * at(x + dx, y + dy, c);
                            }
                        }
                        let v = v / 16.0 + 12.0 * rng.signed_unit();
                        out[(y as usize * size + x as usize) * 3 + c] =
                            v.round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            let j = judge(s, &out, size);
            let all: Vec<bool> = [j.background]
                .into_iter()
                .chain(j.color.iter().copied())
                .chain(j.shape.iter().copied())
                .chain(j.size.iter().copied())
                .chain(j.position)
                .chain(j.relation)
                .collect();
            ok += all.iter().filter(|&&b| b).count();
            n += all.len();
            whole += j.whole() as usize;
        }
        let acc = ok as f64 / n as f64;
        eprintln!("checker on 300 blurred+noisy renders: {ok}/{n} attributes, {whole}/300 whole");
        assert!(acc >= 0.95, "{ok}/{n}");
    }

    #[test]
    fn blank_and_garbage_images_do_not_panic() {
        let s = &held_out_prompts(2)[1];
        let j = judge(s, &vec![128u8; 32 * 32 * 3], 32);
        assert!(!j.count && !j.whole());
        assert_eq!(j.color, [false, false]);
        let noise: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = judge(s, &noise, 32);
        assert!(read(&[1, 2, 3], 32).objects.is_empty());
    }
}
