// diffusers' sinusoidal timestep embedding. The frequencies come from the host
// (`kernels::timestep_freqs`, so every backend uses the same f32 values); the argument t * f is
// formed in f32 like torch does, then reduced to [-pi, pi] accurately before sin/cos, because
// GPU sin/cos lose accuracy for arguments of hundreds of radians.
//#include common.wgsl
struct Params {
    n: u32, // batch * half
    half_dim: u32,
    flip: u32,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> T: array<f32>;
@group(0) @binding(1) var<storage, read> F: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

// Cody-Waite reduction modulo 2 pi. P1 and P2 have few significant bits so k * P1 and k * P2 are
// exact for |k| < 2^12 (|arg| < ~25000), and P1 + P2 + P3 is 2 pi to ~1e-15.
fn reduce_2pi(a: f32) -> f32 {
    let k = round(a * 0.15915494309189535);
    var r = a - k * 6.28125;
    r = r - k * 0.0019354820251464844;
    r = r - k * -1.7484555314695172e-07;
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.n) {
        return;
    }
    let b = i / pc.half_dim;
    let j = i % pc.half_dim;
    let r = reduce_2pi(T[b] * F[j]);
    let s = sin(r);
    let c = cos(r);
    let dim = 2u * pc.half_dim;
    Y[b * dim + j] = select(s, c, pc.flip == 1u);
    Y[b * dim + pc.half_dim + j] = select(c, s, pc.flip == 1u);
}
