// Elementwise add (op 0) or mul (op 1) with numpy broadcasting, rank <= 8. The host pads both
// operand shapes to the output rank and gives each operand's strides with 0 on broadcast axes.
//#include common.wgsl
struct Params {
    hdr: vec4<u32>, // n, op, rank, contiguous (1 when a, b and y share one shape)
    shape_lo: vec4<u32>,
    shape_hi: vec4<u32>,
    sa_lo: vec4<u32>,
    sa_hi: vec4<u32>,
    sb_lo: vec4<u32>,
    sb_hi: vec4<u32>,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.hdr.x) {
        return;
    }
    var ia = i;
    var ib = i;
    if (pc.hdr.w == 0u) {
        ia = 0u;
        ib = 0u;
        var rem = i;
        for (var d = i32(pc.hdr.z) - 1; d >= 0; d--) {
            let e = dim8(pc.shape_lo, pc.shape_hi, u32(d));
            let c = rem % e;
            rem = rem / e;
            ia += c * dim8(pc.sa_lo, pc.sa_hi, u32(d));
            ib += c * dim8(pc.sb_lo, pc.sb_hi, u32(d));
        }
    }
    let a = A[ia];
    let b = B[ib];
    Y[i] = select(a + b, a * b, pc.hdr.y == 1u);
}
