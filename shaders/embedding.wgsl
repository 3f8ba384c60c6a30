// Row lookup: y[r, :] = table[ids[r], :]. Ids are integer-valued f32. The host checks ids that
// come straight from graph inputs; an invalid computed id yields NaN so it cannot pass unseen.
// The table is read in its stored format (`load_w`), so a q8 table binds a quarter of its f32
// size: SD's 49408 x 768 token embedding is 40 MiB in q8, under the 128 MiB storage binding
// some devices allow (llvmpipe, mobile GPUs), where its f32 copy (145 MiB) is not.
//#variants WEIGHTS=f32,f16,q8,q4
//#include common.wgsl
struct Params {
    n: u32, // rows * d
    d: u32,
    vocab: u32,
    wblocks: u32, // quant blocks in the table (q8/q4 only)
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> IDS: array<f32>;
//#include weights_${WEIGHTS}.wgsl
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.n) {
        return;
    }
    let id = IDS[i / pc.d];
    if (!(id >= 0.0 && id < f32(pc.vocab) && fract(id) == 0.0)) {
        Y[i] = bitcast<f32>(0x7fc00000u);
        return;
    }
    Y[i] = load_w(u32(id) * pc.d + i % pc.d, pc.wblocks);
}
