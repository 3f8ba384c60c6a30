//! Peak memory of preparing a mid-size graph on the CPU backend, against the size of its
//! weights: `cargo run --release --example cpu_memory`. Reads VmHWM/VmRSS (Linux only).
use ldm_edge::backend::cpu::CpuBackend;
use ldm_edge::backend::{Backend, Tensor};
use ldm_edge::graph::{Tracer, ValueType};
use ldm_edge::ops::Ops;
use std::collections::HashMap;

fn status(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

extern "C" {
    /// glibc: give freed heap pages back to the OS, so RSS shows what is still in use.
    fn malloc_trim(pad: usize) -> i32;
}

fn main() -> ldm_edge::Result<()> {
    // 8 linear layers of 1024x1024 and 4 convs 256->256 3x3: about 33 + 9 MiB of f32 weights.
    let (layers, d, convs, c) = (8, 1024, 4, 256);
    let mut t = Tracer::new();
    let mut w = HashMap::new();
    let mut add = |t: &mut Tracer, path: String, shape: Vec<usize>| {
        let n = shape.iter().product::<usize>();
        // Distinct per weight, or tract would merge identical constants and hide their cost.
        let salt = path.len() as f32 + path.as_bytes()[path.len() - 8] as f32;
        let data = (0..n)
            .map(|i| ((i % 97) as f32 - 48.0 + salt) * 1e-3)
            .collect();
        w.insert(path.clone(), Tensor::new(shape.clone(), data).unwrap());
        t.param(&path, &shape)
    };
    let x = t.input("x", &[1, 64, d], ValueType::F32);
    let mut h = x;
    for i in 0..layers {
        let wi = add(&mut t, format!("lin{i}.weight"), vec![d, d])?;
        h = t.linear(&h, &wi, None)?;
    }
    let img = t.input("img", &[1, c, 32, 32], ValueType::F32);
    let mut g = img;
    for i in 0..convs {
        let wi = add(&mut t, format!("conv{i}.weight"), vec![c, c, 3, 3])?;
        g = t.conv2d(&g, &wi, None, 1, [1; 4])?;
    }
    let graph = t.finish(&[h, g]);
    let weight_mib = (layers * d * d + convs * c * c * 9) as f64 * 4.0 / 1048576.0;
    let before = status("VmRSS:");
    let mut exe = CpuBackend.prepare(&graph, &w)?;
    let prepared_hwm = status("VmHWM:");
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe { malloc_trim(0) };
    let prepared_rss = status("VmRSS:");
    let inputs = vec![Tensor::zeros(&[1, 64, d]), Tensor::zeros(&[1, c, 32, 32])];
    let start = std::time::Instant::now();
    exe.run(&inputs)?;
    println!(
        "weights {weight_mib:.0} MiB; RSS before prepare {before:.0} MiB (source holds one copy); \
         after prepare and malloc_trim {prepared_rss:.0} MiB; peak during prepare {prepared_hwm:.0} MiB; \
         peak after run {:.0} MiB; run {:.1} ms",
        status("VmHWM:"),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
