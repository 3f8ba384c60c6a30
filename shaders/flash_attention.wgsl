// Multi-head attention, softmax(q k^T / sqrt(d)) v, as a flash-attention kernel: one workgroup
// of 64 per (batch, head, block of BR=16 query rows, block of DVB=64 output dims). It walks the
// keys in tiles of BC=32 with an online softmax, so no score matrix exists beyond one 16x32
// tile in workgroup memory, and each K and V element read serves 16 query rows (the per-row
// kernel, attention.wgsl, reads all of K and V once per query row).
//
// Any head size runs: the scores are summed over d in chunks of 32, and the output is split
// into blocks of 64 dims (the SD decoder's 512-wide head takes 8 workgroups per query block,
// each recomputing the scores; that head is one layer of the decoder).
//
// Thread t owns query row r = t / 4 of the block. In the score phase it holds the scores of
// keys (t % 4) + 4m, m < 8; in the output phase the dims (t % 4) + 4k, k < 16, of its row.
// The four threads of a row keep identical copies of the row's running max and sum.
//
// q, k: [B, L, heads * d]; v: [B, Lk, heads * dv].
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
    qblocks: u32,  // ceil(lq / 16)
    dvblocks: u32, // ceil(dv / 64)
    groups: u32,   // batch * heads * qblocks * dvblocks
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> K: array<f32>;
@group(0) @binding(2) var<storage, read> V: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;

const BR: u32 = 16u;
const BC: u32 = 32u;
const DC: u32 = 32u;  // d chunk of the score phase
const DVB: u32 = 64u; // output dims per workgroup
const PAD: u32 = 33u; // row stride of the 32-wide tiles (no bank conflicts on column reads)

var<workgroup> qs: array<f32, 528>;  // BR x PAD: a chunk of the scaled query block
var<workgroup> kv: array<f32, 2048>; // BC x PAD chunk of K, then the BC x DVB tile of V
var<workgroup> ps: array<f32, 528>;  // BR x PAD: the tile's probabilities
var<workgroup> red: array<f32, 64>;  // per-thread partial max / sum

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
    let g = wg_linear(wid, nwg);
    // Uniform exit: every thread of a workgroup takes the same branch, so barriers stay legal.
    if (g >= pc.groups) {
        return;
    }
    let dvb = g % pc.dvblocks;
    let qb = (g / pc.dvblocks) % pc.qblocks;
    let bh = g / (pc.dvblocks * pc.qblocks);
    let h = bh % pc.heads;
    let b = bh / pc.heads;
    let q0 = qb * BR;
    let dv0 = dvb * DVB;
    let r = t / 4u;
    let lane = t % 4u;
    let i = q0 + r; // this thread's query row
    // Keys beyond the block's last row are masked for every row of a causal block.
    var kend = pc.lk;
    if (pc.causal == 1u) {
        kend = min(pc.lk, q0 + BR);
    }
    var m_run = -3.0e38;
    var l_run = 0.0;
    var acc: array<f32, 16>;
    for (var j0 = 0u; j0 < kend; j0 += BC) {
        var s: array<f32, 8>;
        for (var e0 = 0u; e0 < pc.d; e0 += DC) {
            for (var k = 0u; k < 8u; k++) {
                let idx = t + 64u * k;
                let rr = idx / DC;
                let ee = idx % DC;
                var x = 0.0;
                if (q0 + rr < pc.lq && e0 + ee < pc.d) {
                    x = Q[(b * pc.lq + q0 + rr) * pc.c + h * pc.d + e0 + ee] * pc.scale;
                }
                qs[rr * PAD + ee] = x;
            }
            for (var k = 0u; k < 16u; k++) {
                let idx = t + 64u * k;
                let kk = idx / DC;
                let ee = idx % DC;
                var x = 0.0;
                if (j0 + kk < kend && e0 + ee < pc.d) {
                    x = K[(b * pc.lk + j0 + kk) * pc.c + h * pc.d + e0 + ee];
                }
                kv[kk * PAD + ee] = x;
            }
            workgroupBarrier();
            for (var e = 0u; e < DC; e++) {
                let qv = qs[r * PAD + e];
                for (var m = 0u; m < 8u; m++) {
                    s[m] += qv * kv[(lane + 4u * m) * PAD + e];
                }
            }
            workgroupBarrier();
        }
        // The V tile goes where the K chunk was; the barrier above ended its last read.
        for (var k = 0u; k < 32u; k++) {
            let idx = t + 64u * k;
            let kk = idx / DVB;
            let cc = idx % DVB;
            var x = 0.0;
            if (j0 + kk < kend && dv0 + cc < pc.dv) {
                x = V[(b * pc.lk + j0 + kk) * pc.cv + h * pc.dv + dv0 + cc];
            }
            kv[kk * DVB + cc] = x;
        }
        // Online softmax of the row: max and sum over its 32 keys, 8 per thread, 4 threads.
        var lmax = -3.0e38;
        for (var m = 0u; m < 8u; m++) {
            let j = j0 + lane + 4u * m;
            let ok = j < kend && (pc.causal == 0u || j <= i);
            s[m] = select(-3.0e38, s[m], ok);
            lmax = max(lmax, s[m]);
        }
        red[t] = lmax;
        workgroupBarrier();
        let m_new = max(m_run, max(max(red[r * 4u], red[r * 4u + 1u]),
                                   max(red[r * 4u + 2u], red[r * 4u + 3u])));
        let corr = exp(m_run - m_new);
        var lsum = 0.0;
        for (var m = 0u; m < 8u; m++) {
            // Masked keys contribute 0 even when the whole row is masked so far (m_new = -3e38).
            let p = select(0.0, exp(s[m] - m_new), s[m] > -1.0e38);
            ps[r * PAD + lane + 4u * m] = p;
            lsum += p;
        }
        workgroupBarrier();
        red[t] = lsum;
        workgroupBarrier();
        l_run = l_run * corr + red[r * 4u] + red[r * 4u + 1u] + red[r * 4u + 2u] + red[r * 4u + 3u];
        m_run = m_new;
        for (var k = 0u; k < 16u; k++) {
            acc[k] *= corr;
        }
        for (var u = 0u; u < BC; u++) {
            let p = ps[r * PAD + u];
            for (var k = 0u; k < 16u; k++) {
                acc[k] += p * kv[u * DVB + lane + 4u * k];
            }
        }
        workgroupBarrier();
    }
    if (i < pc.lq) {
        for (var k = 0u; k < 16u; k++) {
            let col = dv0 + lane + 4u * k;
            if (col < pc.dv) {
                O[(b * pc.lq + i) * pc.cv + h * pc.dv + col] = acc[k] / l_run;
            }
        }
    }
}
