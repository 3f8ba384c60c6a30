// Shared helpers for every kernel.

// Linear workgroup index. The host splits large 1-D dispatches into x * y workgroups because
// x is capped at 65535 on most devices; kernels bound-check the resulting index.
fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// One element of a rank-8 vector pair (dims 0..3 in `lo`, 4..7 in `hi`).
fn dim8(lo: vec4<u32>, hi: vec4<u32>, d: u32) -> u32 {
    if (d < 4u) {
        return lo[d];
    }
    return hi[d - 4u];
}
