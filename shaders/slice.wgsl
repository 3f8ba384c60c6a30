// A range of one axis: the output is `outer` rows of `len` values; row o is read from
// x[o * src_stride + src_off ..].
//#include common.wgsl
struct Params {
    n: u32,
    len: u32,
    src_stride: u32,
    src_off: u32,
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
    Y[i] = X[(i / pc.len) * pc.src_stride + pc.src_off + i % pc.len];
}
