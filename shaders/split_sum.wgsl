// The second half of a split-K product: y[i] = sum over slices z of p[z * n + i], plus the bias
// of i's output channel, (i / bias_div) % bias_mod (linear: i % n_out; conv NCHW: (i / hw) % co).
// Slices are added in order, so the result does not depend on scheduling.
//#include common.wgsl
struct Params {
    n: u32,       // elements per slice (= the output's size)
    splits: u32,
    has_bias: u32,
    bias_div: u32,
    bias_mod: u32,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read> BIAS: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.n) {
        return;
    }
    var y = 0.0;
    for (var z = 0u; z < pc.splits; z++) {
        y += P[z * pc.n + i];
    }
    if (pc.has_bias == 1u) {
        y += BIAS[(i / pc.bias_div) % pc.bias_mod];
    }
    Y[i] = y;
}
