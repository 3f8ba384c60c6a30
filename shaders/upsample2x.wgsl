// Nearest-neighbour 2x upsampling of the last two axes.
//#include common.wgsl
struct Params {
    n: u32, // output elements
    h: u32, // input height
    w: u32, // input width
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
    let ow = 2u * pc.w;
    let plane = i / (4u * pc.h * pc.w);
    let r = i % (4u * pc.h * pc.w);
    let y = r / ow;
    let x = r % ow;
    Y[i] = X[(plane * pc.h + y / 2u) * pc.w + x / 2u];
}
