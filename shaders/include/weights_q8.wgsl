// q8 weights (src/format/quant.rs): `wblocks` blocks of 32 int8 quants (element i is byte i),
// then `wblocks` f16 scales. Read as u32 words because WGSL has no 8-bit storage type.
@group(0) @binding(1) var<storage, read> W: array<u32>;

fn load_w(i: u32, wblocks: u32) -> f32 {
    let word = W[i >> 2u];
    // Shift the wanted byte to the top, then arithmetic-shift down to sign-extend it.
    let q = bitcast<i32>(word << (24u - 8u * (i & 3u))) >> 24u;
    let b = i >> 5u;
    // Scales start at byte wblocks * 32, i.e. word wblocks * 8; two f16 per word.
    let sp = unpack2x16float(W[wblocks * 8u + (b >> 1u)]);
    let s = select(sp.x, sp.y, (b & 1u) == 1u);
    return f32(q) * s;
}
