// Workgroup sum over 256 invocations, portable variant: a tree in workgroup memory. Every
// invocation must call it (it has barriers) and gets the total. Uses `red`, so callers must not
// interleave two reductions. `Lanes` is the entry point's builtin argument; the subgroup variant
// (reduce_sg.wgsl) needs more builtins, so kernels take this struct instead of bare builtins.
struct Lanes {
    @builtin(local_invocation_index) li: u32,
}

var<workgroup> red: array<f32, 256>;

fn wg_sum(v: f32, l: Lanes) -> f32 {
    let li = l.li;
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // Everyone must have read red[0] before the next reduction overwrites it.
    workgroupBarrier();
    return total;
}
