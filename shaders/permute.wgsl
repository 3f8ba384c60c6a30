// Axis permutation, rank <= 8: y[i] = x[sum_d coord_d(i) * src_stride_d], where src_stride is
// the input's stride of the axis that lands at output axis d.
//#include common.wgsl
struct Params {
    hdr: vec4<u32>, // n, rank, -, -
    shape_lo: vec4<u32>,
    shape_hi: vec4<u32>,
    st_lo: vec4<u32>,
    st_hi: vec4<u32>,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.hdr.x) {
        return;
    }
    var src = 0u;
    var rem = i;
    for (var d = i32(pc.hdr.y) - 1; d >= 0; d--) {
        let e = dim8(pc.shape_lo, pc.shape_hi, u32(d));
        src += (rem % e) * dim8(pc.st_lo, pc.st_hi, u32(d));
        rem = rem / e;
    }
    Y[i] = X[src];
}
