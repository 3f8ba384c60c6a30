// 2-D convolution (NCHW, weights [CO, CI, KH, KW]) as an implicit GEMM: rows are output pixels
// (batch, oy, ox), columns are output channels, K = CI * KH * KW. The im2col matrix is never
// stored: each tile load computes its input coordinates (zero outside the padding). Tiling as in
// linear.wgsl: 64 pixels x 64 channels per workgroup, 4x4 per invocation, K steps of 16, and
// the same `_f16` variants (f16 tiles and 16-step partial sums, f32 accumulator).
//#variants WEIGHTS=f32,f16,q8,q4
//#variants MATH=(f32),f16
//#include math_${MATH}.wgsl
//#include common.wgsl
struct Params {
    m: u32,   // batch * oh * ow
    co: u32,
    k: u32,   // ci * kh * kw
    has_bias: u32,
    wblocks: u32,
    ci: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    kchunk: u32, // K per slice, as in linear.wgsl (split K)
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
//#include weights_${WEIGHTS}.wgsl
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

var<workgroup> As: array<T, 1024>;
var<workgroup> Bs: array<T, 1024>;

fn load_x(p: u32, k: u32) -> f32 {
    let ohw = pc.oh * pc.ow;
    let b = p / ohw;
    let r = p % ohw;
    let oy = r / pc.ow;
    let ox = r % pc.ow;
    let khw = pc.kh * pc.kw;
    let ic = k / khw;
    let kr = k % khw;
    let iy = i32(oy * pc.stride + kr / pc.kw) - i32(pc.pad_t);
    let ix = i32(ox * pc.stride + kr % pc.kw) - i32(pc.pad_l);
    if (iy < 0 || ix < 0 || iy >= i32(pc.h) || ix >= i32(pc.w)) {
        return 0.0;
    }
    return X[((b * pc.ci + ic) * pc.h + u32(iy)) * pc.w + u32(ix)];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    let tx = li % 16u; // output pixels m0 + tx + 16 i: neighbours write neighbouring pixels
    let ty = li / 16u; // output channels n0 + ty + 16 j
    // Split K as in linear.wgsl: slice z sums K in [kbeg, kend) into Y at z * m * co.
    let kbeg = wid.z * pc.kchunk;
    let kend = min(kbeg + pc.kchunk, pc.k);
    let zoff = wid.z * pc.m * pc.co;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = kbeg; k0 < kend; k0 += 16u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = li + 256u * e;
            // Pixels fastest for the input tile (neighbouring pixels are neighbours in memory),
            // k fastest for the weight tile (weight rows are contiguous in k).
            let pm = idx % 64u;
            let pk = idx / 64u;
            var a = 0.0;
            if (m0 + pm < pc.m && k0 + pk < kend) {
                a = load_x(m0 + pm, k0 + pk);
            }
            As[pk * 64u + pm] = T(a);
            let wn = idx / 16u;
            let wk = idx % 16u;
            var b = 0.0;
            if (n0 + wn < pc.co && k0 + wk < kend) {
                b = load_w((n0 + wn) * pc.k + k0 + wk, pc.wblocks);
            }
            Bs[wk * 64u + wn] = T(b);
        }
        workgroupBarrier();
        var part: array<vec4<T>, 4>;
        for (var kk = 0u; kk < 16u; kk++) {
            let o = kk * 64u;
            let av = vec4<T>(As[o + tx], As[o + tx + 16u], As[o + tx + 32u], As[o + tx + 48u]);
            part[0] += Bs[o + ty] * av;
            part[1] += Bs[o + ty + 16u] * av;
            part[2] += Bs[o + ty + 32u] * av;
            part[3] += Bs[o + ty + 48u] * av;
        }
        for (var j = 0u; j < 4u; j++) {
            acc[j] += vec4<f32>(part[j]);
        }
        workgroupBarrier();
    }
    let ohw = pc.oh * pc.ow;
    for (var j = 0u; j < 4u; j++) {
        let n = n0 + ty + 16u * j;
        if (n >= pc.co) {
            break;
        }
        var bias = 0.0;
        if (pc.has_bias == 1u) {
            bias = BIAS[n];
        }
        for (var i = 0u; i < 4u; i++) {
            let p = m0 + tx + 16u * i;
            if (p < pc.m) {
                Y[zoff + ((p / ohw) * pc.co + n) * ohw + p % ohw] = acc[j][i] + bias;
            }
        }
    }
}
