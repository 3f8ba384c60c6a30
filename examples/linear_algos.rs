//! Times the compact CPU linear's two layouts against each other on SD-1.5's linear shapes:
//! `x w^T`, and `w x^T` between two transposes (what `kernels::streams_weight` picks for few
//! rows). `cargo run --release --example linear_algos [-- --reps N]`. Weights are f32 and
//! cold (several copies cycled past the 32 MiB L3), as in a UNet step; the median of `reps`
//! rounds is printed, the chosen layout marked `*`.
use ldm_edge::backend::cpu::compact::kernels::linear_with;
use ldm_edge::backend::cpu::compact::CompactWeight;
use std::time::Instant;

fn main() -> ldm_edge::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    // (rows m, out n, in k): SD-1.5 at 32x32 latents, batch 2 (tokens 2048, 512, 128 per
    // level) and the cross-attention keys (2 x 77).
    let shapes = [
        (128, 10240, 1280),
        (128, 1280, 5120),
        (128, 1280, 1280),
        (154, 1280, 768),
        (512, 640, 640),
        (512, 5120, 640),
        (512, 640, 2560),
        (2048, 320, 320),
        (2048, 2560, 320),
        (2048, 320, 1280),
    ];
    println!(
        "{:<20} {:>10} {:>10} {:>7}",
        "m x n x k", "x w^T ms", "w x^T ms", "ratio"
    );
    for (m, n, k) in shapes {
        let copies = (96 << 20) / (n * k * 4) + 1;
        let ws = (0..copies)
            .map(|c| {
                let v: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 7 + c) % 13) as f32 * 0.01)
                    .collect();
                CompactWeight::from_f32(&[n, k], &v)
            })
            .collect::<ldm_edge::Result<Vec<_>>>()?;
        let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let mut outs = [vec![0f32; m * n], vec![0f32; m * n]];
        let mut times = [Vec::new(), Vec::new()];
        for rep in 0..=reps {
            for (l, stream) in [false, true].into_iter().enumerate() {
                let t = Instant::now();
                linear_with(stream, &x, m, &ws[rep % copies], Some(&bias), &mut outs[l]);
                if rep > 0 {
                    times[l].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let diff = outs[0]
            .iter()
            .zip(&outs[1])
            .fold(0f32, |d, (a, b)| d.max((a - b).abs() / a.abs().max(1.0)));
        assert!(diff < 1e-4, "layouts disagree by {diff}");
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (med(&mut times[0]), med(&mut times[1]));
        let star = |s: bool| if s == (a > b) { "*" } else { " " };
        println!(
            "{:<20} {:>9.2}{} {:>9.2}{} {:>7.2}",
            format!("{m}x{n}x{k}"),
            a,
            star(false),
            b,
            star(true),
            a / b
        );
    }
    Ok(())
}
