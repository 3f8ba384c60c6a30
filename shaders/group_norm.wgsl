// GroupNorm over [N, C, spatial...]; one workgroup per (n, group). Mean first, then the variance
// of the centred values (two passes, like the reference's f64 moments, avoiding the
// E[x^2] - E[x]^2 cancellation). With `silu` = 1 the SiLU that follows is fused in.
//#include common.wgsl
// RED: `wg` reduces in workgroup memory (any device), `sg` with subgroupAdd (chosen at start-up).
//#variants RED=wg,sg
//#include reduce_${RED}.wgsl
struct Params {
    count: u32,   // values per group: channels_per_group * spatial
    spatial: u32,
    cpg: u32,     // channels per group
    groups: u32,
    eps: f32,
    silu: u32,
    total: u32,   // n * groups; the dispatch may have a few spare workgroups
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
    let g = wg_linear(wid, nwg); // = n * groups + group, uniform over the workgroup
    if (g >= pc.total) {
        return;
    }
    let base = g * pc.count;
    let c0 = (g % pc.groups) * pc.cpg;
    var s = 0.0;
    for (var j = li; j < pc.count; j += 256u) {
        s += X[base + j];
    }
    let mean = wg_sum(s, l) / f32(pc.count);
    var v = 0.0;
    for (var j = li; j < pc.count; j += 256u) {
        let d = X[base + j] - mean;
        v += d * d;
    }
    let inv = inverseSqrt(wg_sum(v, l) / f32(pc.count) + pc.eps);
    for (var j = li; j < pc.count; j += 256u) {
        let ch = c0 + j / pc.spatial;
        var y = (X[base + j] - mean) * inv * GAMMA[ch] + BETA[ch];
        if (pc.silu == 1u) {
            y = y / (1.0 + exp(-y));
        }
        Y[base + j] = y;
    }
}
