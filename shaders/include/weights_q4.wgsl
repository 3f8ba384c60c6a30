// q4 weights (src/format/quant.rs): `wblocks` blocks of 16 bytes of nibbles (element i in byte
// i/2, low nibble for even i), then `wblocks` f16 scales. Nibble n stands for q = n - 8.
@group(0) @binding(1) var<storage, read> W: array<u32>;

fn load_w(i: u32, wblocks: u32) -> f32 {
    // Byte i/2 is in word i/8; element i is nibble i % 8 of that word, counting from the bottom.
    let nib = (W[i >> 3u] >> (4u * (i & 7u))) & 15u;
    let b = i >> 5u;
    // Scales start at byte wblocks * 16, i.e. word wblocks * 4.
    let sp = unpack2x16float(W[wblocks * 4u + (b >> 1u)]);
    let s = select(sp.x, sp.y, (b & 1u) == 1u);
    return f32(i32(nib) - 8) * s;
}
