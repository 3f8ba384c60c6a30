//! The shapes vocabulary and scenes: what an image contains, and its caption. Geometry is in
//! fractions of the image side so 32 and 64 px renders (and the checker) agree.

/// Object colors. The palette is spread out in RGB (the closest pair, yellow/orange, is 81 apart;
/// every object color is at least 95 from every background) so the checker can read colors
/// back by nearest palette entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 170, 60],
            Color::Blue => [40, 80, 220],
            Color::Yellow => [235, 210, 40],
            Color::Purple => [150, 60, 190],
            Color::Orange => [240, 130, 30],
        }
    }
}

/// Background colors, disjoint from the object colors so an object never vanishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Background {
    Black,
    White,
    Gray,
}

impl Background {
    pub const ALL: [Background; 3] = [Background::Black, Background::White, Background::Gray];
    pub fn name(self) -> &'static str {
        match self {
            Background::Black => "black",
            Background::White => "white",
            Background::Gray => "gray",
        }
    }
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Black => [15, 15, 15],
            Background::White => [240, 240, 240],
            Background::Gray => [128, 128, 128],
        }
    }
}

/// Shapes, each defined on the unit box [-1, 1]^2 (y down) and touching all four sides of it,
/// so an object's bounding box measures its size whatever its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Cross,
        Shape::Diamond,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
        }
    }
    /// Whether the point (u, v) of the unit box lies inside the shape.
    pub fn contains(self, u: f32, v: f32) -> bool {
        let (au, av) = (u.abs(), v.abs());
        if au > 1.0 || av > 1.0 {
            return false;
        }
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => true,
            // Apex up at (0, -1), base along v = 1.
            Shape::Triangle => au <= (v + 1.0) * 0.5,
            // Arms one third of the box wide.
            Shape::Cross => au <= 1.0 / 3.0 || av <= 1.0 / 3.0,
            Shape::Diamond => au + av <= 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
    /// Half the object's extent as a fraction of the image side. Large objects in adjacent
    /// corners (centers 0.5 apart) leave a gap of at least 0.1 - 2 * JITTER of the side (about
    /// 2 px at 32 px), so two objects never touch.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 0.12,
            Size::Large => 0.2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

impl Position {
    pub const ALL: [Position; 5] = [
        Position::TopLeft,
        Position::TopRight,
        Position::BottomLeft,
        Position::BottomRight,
        Position::Center,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Position::TopLeft => "top left",
            Position::TopRight => "top right",
            Position::BottomLeft => "bottom left",
            Position::BottomRight => "bottom right",
            Position::Center => "center",
        }
    }
    /// The nominal object center (x, y) as fractions of the image side: quadrant centers, or
    /// the image center.
    pub fn center(self) -> (f32, f32) {
        match self {
            Position::TopLeft => (0.25, 0.25),
            Position::TopRight => (0.75, 0.25),
            Position::BottomLeft => (0.25, 0.75),
            Position::BottomRight => (0.75, 0.75),
            Position::Center => (0.5, 0.5),
        }
    }
}

/// How the first object of a two-object caption sits relative to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::Above,
        Relation::Below,
        Relation::LeftOf,
        Relation::RightOf,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
        }
    }
    /// The (first, second) position pairs that make the relation true without ambiguity: the
    /// two objects share a column (above/below) or a row (left/right), never a diagonal.
    pub fn placements(self) -> [(Position, Position); 2] {
        use Position::*;
        match self {
            Relation::Above => [(TopLeft, BottomLeft), (TopRight, BottomRight)],
            Relation::Below => [(BottomLeft, TopLeft), (BottomRight, TopRight)],
            Relation::LeftOf => [(TopLeft, TopRight), (BottomLeft, BottomRight)],
            Relation::RightOf => [(TopRight, TopLeft), (BottomRight, BottomLeft)],
        }
    }
    /// The relation of a first object at `a` to a second at `b` (image coordinates, y down):
    /// the dominant axis of the offset decides.
    pub fn between(a: (f32, f32), b: (f32, f32)) -> Relation {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        if dy.abs() >= dx.abs() {
            if dy > 0.0 {
                Relation::Above
            } else {
                Relation::Below
            }
        } else if dx > 0.0 {
            Relation::LeftOf
        } else {
            Relation::RightOf
        }
    }
}

/// Largest random offset of an object from its nominal position, as a fraction of the side.
pub const JITTER: f32 = 0.02;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    pub color: Color,
    pub shape: Shape,
    pub size: Size,
    pub position: Position,
    /// Offset (x, y) from the nominal position, each within +-JITTER.
    pub jitter: (f32, f32),
}

impl Object {
    pub fn center(&self) -> (f32, f32) {
        let (x, y) = self.position.center();
        (x + self.jitter.0, y + self.jitter.1)
    }
    fn phrase(&self) -> String {
        format!(
            "a {} {} {}",
            self.size.name(),
            self.color.name(),
            self.shape.name()
        )
    }
}

/// One image's content. Two-object scenes carry the relation of the first object to the
/// second, and their positions are one of `relation.placements()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub background: Background,
    pub objects: Vec<Object>,
    pub relation: Option<Relation>,
}

/// Longest caption in words. The tiny text encoder reads 16 tokens, two of which are [CLS] and
/// [SEP]; every shapes word is one token in a tokenizer trained on these captions.
pub const MAX_CAPTION_WORDS: usize = 14;

impl Scene {
    /// "a small red circle in the top left on a gray background" or
    /// "a small red circle above a large blue square on a gray background".
    pub fn caption(&self) -> String {
        let bg = format!("on a {} background", self.background.name());
        let c = match (self.objects.as_slice(), self.relation) {
            ([a, b], Some(r)) => format!("{} {} {} {bg}", a.phrase(), r.name(), b.phrase()),
            ([a], _) => format!("{} in the {} {bg}", a.phrase(), a.position.name()),
            // Not produced by the samplers; listed plainly so the caption still says what is there.
            (objs, _) => {
                let parts: Vec<String> = objs.iter().map(Object::phrase).collect();
                format!("{} {bg}", parts.join(" and "))
            }
        };
        debug_assert!(c.split(' ').count() <= MAX_CAPTION_WORDS, "{c}");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(color: Color, shape: Shape, size: Size, position: Position) -> Object {
        Object {
            color,
            shape,
            size,
            position,
            jitter: (0.0, 0.0),
        }
    }

    #[test]
    fn captions_read_naturally() {
        let a = obj(Color::Red, Shape::Circle, Size::Small, Position::TopLeft);
        let b = obj(
            Color::Blue,
            Shape::Square,
            Size::Large,
            Position::BottomLeft,
        );
        let one = Scene {
            background: Background::Gray,
            objects: vec![a],
            relation: None,
        };
        assert_eq!(
            one.caption(),
            "a small red circle in the top left on a gray background"
        );
        let two = Scene {
            background: Background::White,
            objects: vec![a, b],
            relation: Some(Relation::Above),
        };
        assert_eq!(
            two.caption(),
            "a small red circle above a large blue square on a white background"
        );
    }

    #[test]
    fn placements_agree_with_relation_geometry() {
        for r in Relation::ALL {
            for (a, b) in r.placements() {
                assert_eq!(Relation::between(a.center(), b.center()), r, "{r:?}");
            }
        }
    }

    #[test]
    fn palette_is_well_separated() {
        let d = |a: [u8; 3], b: [u8; 3]| {
            (0..3)
                .map(|i| (a[i] as f32 - b[i] as f32).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        for (i, a) in Color::ALL.iter().enumerate() {
            for b in &Color::ALL[i + 1..] {
                assert!(d(a.rgb(), b.rgb()) > 80.0, "{a:?} {b:?}");
            }
            for bg in Background::ALL {
                assert!(d(a.rgb(), bg.rgb()) > 90.0, "{a:?} {bg:?}");
            }
        }
    }

    #[test]
    fn every_shape_touches_its_box() {
        for s in Shape::ALL {
            // Sample the edges of the unit box: each side must have an inside point near it.
            let near = |f: &dyn Fn(f32) -> (f32, f32)| {
                (0..=200).any(|i| {
                    let (u, v) = f(i as f32 / 100.0 - 1.0);
                    s.contains(u, v)
                })
            };
            assert!(near(&|t| (t, -0.99)), "{s:?} top");
            assert!(near(&|t| (t, 0.99)), "{s:?} bottom");
            assert!(near(&|t| (-0.99, t)), "{s:?} left");
            assert!(near(&|t| (0.99, t)), "{s:?} right");
        }
    }
}
