// Weights stored as f16, two per u32 word (element 2j in the low half). Read through u32 words
// with unpack2x16float so no 16-bit storage feature is needed.
@group(0) @binding(1) var<storage, read> W: array<u32>;

fn load_w(i: u32, wblocks: u32) -> f32 {
    let pair = unpack2x16float(W[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
