// The epilogue of linear.wgsl and linear_q8_dot.wgsl: the workgroup's 64x64 output tile, rows
// m0 + ty + 16 i and columns n0 + tx + 16 j, with the bias (unless split K defers it to
// split_sum.wgsl), written at z offset `zoff`.
fn store_tile(acc: array<vec4<f32>, 4>, m0: u32, n0: u32, tx: u32, ty: u32, zoff: u32) {
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        if (m >= pc.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if (n < pc.n) {
                var y = acc[i][j];
                if (pc.has_bias == 1u) {
                    y += BIAS[n];
                }
                Y[zoff + m * pc.n + n] = y;
            }
        }
    }
}
