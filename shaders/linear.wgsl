// y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]: a 64x64 output tile per workgroup, 4x4 outputs per
// invocation, K in steps of 16 staged through workgroup memory. The weight read `load_w` comes
// from the variant's snippet, so q8/q4 blocks are dequantized right here, in the tile load.
// The `_f16` variants hold the tiles in f16 (T) and sum each 16-step of K in f16, then add
// that partial sum into the f32 accumulator: f16 rate for the products, f32 for the long sum.
//#variants WEIGHTS=f32,f16,q8,q4
//#variants MATH=(f32),f16
//#include math_${MATH}.wgsl
//#include common.wgsl
struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    wblocks: u32, // quant blocks in the weight (q8/q4 only)
    kchunk: u32,  // K per slice (a multiple of 16): workgroup z sums K in [z kchunk, (z+1) kchunk)
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
//#include weights_${WEIGHTS}.wgsl
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

// k-major tiles: As[kk * 64 + row], so the inner loop reads 4 rows of one k step.
var<workgroup> As: array<T, 1024>;
var<workgroup> Bs: array<T, 1024>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    let tx = li % 16u; // output columns n0 + tx + 16 j
    let ty = li / 16u; // output rows m0 + ty + 16 i
    // Split K (small outputs, long K): slice z writes its partial sums to Y at z * m * n, and
    // split_sum.wgsl adds the slices and the bias. Unsplit, z = 0 and this is the plain product.
    let kbeg = wid.z * pc.kchunk;
    let kend = min(kbeg + pc.kchunk, pc.k);
    let zoff = wid.z * pc.m * pc.n;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = kbeg; k0 < kend; k0 += 16u) {
        for (var e = 0u; e < 4u; e++) {
            // k fastest across invocations: both x and w rows are contiguous in k.
            let idx = li + 256u * e;
            let row = idx / 16u;
            let kk = idx % 16u;
            let k = k0 + kk;
            let m = m0 + row;
            let n = n0 + row;
            var a = 0.0;
            if (m < pc.m && k < kend) {
                a = X[m * pc.k + k];
            }
            var b = 0.0;
            if (n < pc.n && k < kend) {
                b = load_w(n * pc.k + k, pc.wblocks);
            }
            As[kk * 64u + row] = T(a);
            Bs[kk * 64u + row] = T(b);
        }
        workgroupBarrier();
        var part: array<vec4<T>, 4>;
        for (var kk = 0u; kk < 16u; kk++) {
            let o = kk * 64u;
            let bv = vec4<T>(Bs[o + tx], Bs[o + tx + 16u], Bs[o + tx + 32u], Bs[o + tx + 48u]);
            part[0] += As[o + ty] * bv;
            part[1] += As[o + ty + 16u] * bv;
            part[2] += As[o + ty + 32u] * bv;
            part[3] += As[o + ty + 48u] * bv;
        }
        for (var i = 0u; i < 4u; i++) {
            acc[i] += vec4<f32>(part[i]);
        }
        workgroupBarrier();
    }
    store_tile(acc, m0, n0, tx, ty, zoff);
}
//#include linear_store.wgsl
