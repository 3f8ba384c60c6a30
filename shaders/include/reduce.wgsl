// Workgroup sum over 256 invocations. Every invocation must call it (it has barriers) and gets
// the total. Uses `red`, so callers must not interleave two reductions.
var<workgroup> red: array<f32, 256>;

fn wg_sum(v: f32, li: u32) -> f32 {
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
