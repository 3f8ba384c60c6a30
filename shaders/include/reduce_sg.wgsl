// Workgroup sum over 256 invocations with subgroup arithmetic (picked at start-up where the
// device has it): subgroupAdd inside each subgroup, one partial per subgroup in `red`, then every
// invocation adds the partials in subgroup order, so all get the same total. Two barriers
// instead of the tree's ten. Same contract as reduce_wg.wgsl.
struct Lanes {
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

// One slot per subgroup; 256 covers the smallest possible subgroup size (1).
var<workgroup> red: array<f32, 256>;

fn wg_sum(v: f32, l: Lanes) -> f32 {
    let s = subgroupAdd(v);
    if (l.lane == 0u) {
        red[l.sg] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < l.nsg; i += 1u) {
        total += red[i];
    }
    // Everyone must have read the partials before the next reduction overwrites them.
    workgroupBarrier();
    return total;
}
