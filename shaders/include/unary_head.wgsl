// Bindings shared by the elementwise unary kernels: y[i] = f(x[i]) for i < n.
//#include common.wgsl
struct Params {
    n: u32,
    s: f32,
}
var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;
