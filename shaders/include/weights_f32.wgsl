// Weights stored as f32.
@group(0) @binding(1) var<storage, read> W: array<f32>;

fn load_w(i: u32, wblocks: u32) -> f32 {
    return W[i];
}
