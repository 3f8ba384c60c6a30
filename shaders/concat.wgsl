// Copies one concat input into its slot of the output: the input is `outer` rows of `len`
// values; row o goes to y[o * dst_stride + dst_off ..]. Run once per input.
//#include common.wgsl
struct Params {
    n: u32,
    len: u32,
    dst_stride: u32,
    dst_off: u32,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.n) {
        return;
    }
    Y[(i / pc.len) * pc.dst_stride + pc.dst_off + i % pc.len] = X[i];
}
