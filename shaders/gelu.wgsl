// Exact (erf) GELU: y = 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2).
//#include unary_head.wgsl

// erfc with relative error below 1.2e-7 everywhere (Numerical Recipes' Chebyshev fit). Working
// with erfc instead of 1 + erf keeps full relative precision in the negative tail.
fn erfc_nr(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + p);
    return select(2.0 - r, r, x >= 0.0);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wid, nwg) * 256u + li;
    if (i >= pc.n) {
        return;
    }
    let v = X[i];
    Y[i] = 0.5 * v * erfc_nr(-v * 0.70710678118654752);
}
