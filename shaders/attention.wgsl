// Multi-head attention, softmax(q k^T / sqrt(d)) v, with an online softmax: one workgroup of 32
// per (batch, head, query row) walks the keys in blocks of 32, keeping a running max, running
// sum and the output accumulator, so no more than 32 scores ever exist at once.
// q, k: [B, L, heads * d]; v: [B, Lk, heads * dv]. Each thread keeps SLOTS output dims, so a
// variant takes head sizes up to 32 * SLOTS: attention_8 (<= 256, the UNets' heads) and
// attention_16 (<= 512, the SD autoencoder's single 512-wide head). The host picks the smallest
// that fits, so the common case keeps its register and workgroup-memory footprint.
//#variants SLOTS=8,16
//#include common.wgsl
struct Params {
    lq: u32,
    lk: u32,
    c: u32,
    cv: u32,
    heads: u32,
    d: u32,
    dv: u32,
    causal: u32,
    scale: f32,
    rows: u32, // batch * heads * lq
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> K: array<f32>;
@group(0) @binding(2) var<storage, read> V: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

var<workgroup> qs: array<f32, 32 * ${SLOTS}>;
var<workgroup> ps: array<f32, 32>;

@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg_linear(wid, nwg);
    if (row >= pc.rows) {
        return;
    }
    let i = row % pc.lq;
    let h = (row / pc.lq) % pc.heads;
    let b = row / (pc.lq * pc.heads);
    // The scale is folded into q once.
    for (var e = li; e < pc.d; e += 32u) {
        qs[e] = Q[(b * pc.lq + i) * pc.c + h * pc.d + e] * pc.scale;
    }
    workgroupBarrier();
    var kend = pc.lk;
    if (pc.causal == 1u) {
        kend = min(pc.lk, i + 1u);
    }
    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, ${SLOTS}>; // output dims li + 32 t
    for (var j0 = 0u; j0 < kend; j0 += 32u) {
        let j = j0 + li;
        var s = -3.0e38;
        if (j < kend) {
            let kb = (b * pc.lk + j) * pc.c + h * pc.d;
            var dot = 0.0;
            for (var e = 0u; e < pc.d; e++) {
                dot += qs[e] * K[kb + e];
            }
            s = dot;
        }
        ps[li] = s;
        workgroupBarrier();
        var bm = -3.0e38;
        for (var t = 0u; t < 32u; t++) {
            bm = max(bm, ps[t]);
        }
        let m_new = max(m, bm);
        let corr = exp(m - m_new);
        workgroupBarrier();
        ps[li] = select(0.0, exp(s - m_new), j < kend);
        workgroupBarrier();
        let nj = min(32u, kend - j0);
        var bs = 0.0;
        for (var t = 0u; t < nj; t++) {
            bs += ps[t];
        }
        l = l * corr + bs;
        for (var t = 0u; t < ${SLOTS}u; t++) {
            let e = li + 32u * t;
            if (e < pc.dv) {
                var a = acc[t] * corr;
                let vb = (b * pc.lk + j0) * pc.cv + h * pc.dv + e;
                for (var u = 0u; u < nj; u++) {
                    a += ps[u] * V[vb + u * pc.cv];
                }
                acc[t] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var t = 0u; t < ${SLOTS}u; t++) {
        let e = li + 32u * t;
        if (e < pc.dv) {
            O[(b * pc.lq + i) * pc.cv + h * pc.dv + e] = acc[t] / l;
        }
    }
}
