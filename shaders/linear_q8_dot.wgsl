// y[m, n] = sum_k x[m, k] * w[n, k] + bias[n] for q8 weights, through packed int8 dot products
// (dot4I8Packed: OpSDot where the device has shaderIntegerDotProduct). Same tiling, buffers,
// push constants and split K as linear.wgsl, with K in steps of 32: one q8 block per weight row.
// The lowering picks it only when k and the split chunk are multiples of 32, so a tile's 32
// weights of one row are exactly one stored block, copied as they are (4 int8 per word).
//
// Activations are quantized in the tile load, per row and 32-step of K (the weights' block
// size): scale = max|x| / 127, round to nearest. Each workgroup quantizes its own 64 rows; that
// is 1/64 of its multiply-adds. An output sums idot(x_q, w_q) * scale_x * scale_w over blocks.
//#include common.wgsl
struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    wblocks: u32,
    kchunk: u32,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
// q8 layout (src/format/quant.rs): `wblocks` blocks of 32 int8 (8 words), then the f16 scales.
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

var<workgroup> Aq: array<u32, 512>; // 64 rows x 8 words of packed int8
var<workgroup> Bq: array<u32, 512>; // 64 weight rows x 8 words
var<workgroup> As: array<f32, 64>;  // activation scales
var<workgroup> Bs: array<f32, 64>;  // weight scales
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    let tx = li % 16u; // output columns n0 + tx + 16 j
    let ty = li / 16u; // output rows m0 + ty + 16 i
    let kbeg = wid.z * pc.kchunk;
    let kend = min(kbeg + pc.kchunk, pc.k);
    let zoff = wid.z * pc.m * pc.n;
    // Quantizing thread: row li / 4, eight k values (li % 4) * 8 .. + 8 of the step.
    let qrow = li / 4u;
    let qk = (li % 4u) * 8u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = kbeg; k0 < kend; k0 += 32u) {
        var xs: array<f32, 8>;
        var amax = 0.0;
        if (m0 + qrow < pc.m) {
            let base = (m0 + qrow) * pc.k + k0 + qk;
            for (var t = 0u; t < 8u; t++) {
                xs[t] = X[base + t];
                amax = max(amax, abs(xs[t]));
            }
        }
        red[li] = amax;
        for (var e = 0u; e < 2u; e++) {
            let idx = li + 256u * e;
            let wn = idx / 8u;
            var word = 0u;
            if (n0 + wn < pc.n) {
                word = W[((n0 + wn) * pc.k + k0) / 4u + idx % 8u];
            }
            Bq[idx] = word;
        }
        if (li < 64u) {
            var s = 0.0;
            if (n0 + li < pc.n) {
                let b = ((n0 + li) * pc.k + k0) / 32u;
                let sp = unpack2x16float(W[pc.wblocks * 8u + (b >> 1u)]);
                s = select(sp.x, sp.y, (b & 1u) == 1u);
            }
            Bs[li] = s;
        }
        workgroupBarrier();
        let r4 = qrow * 4u;
        let rmax = max(max(red[r4], red[r4 + 1u]), max(red[r4 + 2u], red[r4 + 3u]));
        let inv = select(0.0, 127.0 / rmax, rmax > 0.0);
        var q: array<i32, 8>;
        for (var t = 0u; t < 8u; t++) {
            q[t] = i32(round(xs[t] * inv));
        }
        Aq[qrow * 8u + qk / 4u] = pack4xI8(vec4<i32>(q[0], q[1], q[2], q[3]));
        Aq[qrow * 8u + qk / 4u + 1u] = pack4xI8(vec4<i32>(q[4], q[5], q[6], q[7]));
        if (li % 4u == 0u) {
            As[qrow] = rmax / 127.0;
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let row = ty + 16u * i;
            var d = vec4<i32>(0);
            for (var w = 0u; w < 8u; w++) {
                let a = Aq[row * 8u + w];
                d.x += dot4I8Packed(a, Bq[tx * 8u + w]);
                d.y += dot4I8Packed(a, Bq[(tx + 16u) * 8u + w]);
                d.z += dot4I8Packed(a, Bq[(tx + 32u) * 8u + w]);
                d.w += dot4I8Packed(a, Bq[(tx + 48u) * 8u + w]);
            }
            let sw = vec4<f32>(Bs[tx], Bs[tx + 16u], Bs[tx + 32u], Bs[tx + 48u]);
            acc[i] += vec4<f32>(d) * sw * As[row];
        }
        workgroupBarrier();
    }
    store_tile(acc, m0, n0, tx, ty, zoff);
}
//#include linear_store.wgsl
