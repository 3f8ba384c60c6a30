// LayerNorm over the last axis; one workgroup per row, two-pass mean and variance.
//#include common.wgsl
// RED: `wg` reduces in workgroup memory (any device), `sg` with subgroupAdd (chosen at start-up).
//#variants RED=wg,sg
//#include reduce_${RED}.wgsl
struct Params {
    c: u32,
    eps: f32,
    rows: u32, // the dispatch may have a few spare workgroups
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> GAMMA: array<f32>;
@group(0) @binding(2) var<storage, read> BETA: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        l: Lanes) {
    let li = l.li;
    let row = wg_linear(wid, nwg);
    if (row >= pc.rows) {
        return;
    }
    let base = row * pc.c;
    var s = 0.0;
    for (var j = li; j < pc.c; j += 256u) {
        s += X[base + j];
    }
    let mean = wg_sum(s, l) / f32(pc.c);
    var v = 0.0;
    for (var j = li; j < pc.c; j += 256u) {
        let d = X[base + j] - mean;
        v += d * d;
    }
    let inv = inverseSqrt(wg_sum(v, l) / f32(pc.c) + pc.eps);
    for (var j = li; j < pc.c; j += 256u) {
        Y[base + j] = (X[base + j] - mean) * inv * GAMMA[j] + BETA[j];
    }
}
