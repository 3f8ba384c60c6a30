//! Times the compact CPU convolution algorithms against each other on the 3x3 layers of an
//! SD-1.5 UNet and decoder: `cargo run --release --example conv_algos [-- --q8] [--reps N]`.
//! Each shape runs im2col, Winograd F(2x2) and F(4x4), the direct kernel, and what the packed
//! plan (`--backend cpu-packed`) runs, on a weight prepared beforehand, in turn, `reps` rounds,
//! and prints the median per algorithm, the speedup over im2col and the largest difference from it
//! (relative to the output's largest value). What `conv_algo::choose` picks is marked `*`.
use ldm_edge::backend::cpu::compact::conv_algo::{choose, Algo, Prepared};
use ldm_edge::backend::cpu::compact::kernels::{conv2d_packed, conv2d_with, ConvShape};
use ldm_edge::backend::cpu::compact::CompactWeight;
use ldm_edge::format::quant::quantize_q8;
use ldm_edge::format::{DType, SharedBytes};
use std::time::Instant;

fn main() -> ldm_edge::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let q8 = args.iter().any(|a| a == "--q8");
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    // (batch, in channels, out channels, side): SD-1.5's UNet 3x3 convs at 32x32 and 64x64
    // latents and decoder layers at 256 and 512 px, then narrow layers.
    let default_shapes = [
        (1, 320, 320, 64),
        (2, 320, 320, 64),
        (1, 640, 320, 64),
        (1, 320, 320, 32),
        (2, 320, 320, 32),
        (1, 640, 640, 32),
        (1, 1280, 1280, 32),
        (1, 1920, 640, 32),
        (1, 960, 320, 64),
        (1, 640, 640, 16),
        (1, 1280, 1280, 16),
        (2, 1280, 1280, 16),
        (1, 1280, 1280, 8),
        (1, 512, 512, 64),
        (1, 256, 256, 128),
        (1, 128, 128, 256),
        (1, 128, 128, 512),
        // The shipped shapes model's decoder (32-64 channels at 8-32 px) and narrow layers.
        (1, 64, 64, 16),
        (1, 64, 32, 32),
        (1, 32, 32, 32),
        (1, 32, 3, 32),
        (1, 64, 64, 32),
        (1, 128, 128, 32),
    ];
    // `--shapes b,c,o,side[,k];...`: these layers instead (k x k kernels, 3 by default).
    let shapes: Vec<(usize, usize, usize, usize, usize)> =
        match args.iter().position(|a| a == "--shapes") {
            Some(i) => args
                .get(i + 1)
                .map(|s| s.split(';').filter_map(parse_shape).collect())
                .unwrap_or_default(),
            None => default_shapes
                .iter()
                .map(|&(b, c, o, s)| (b, c, o, s, 3))
                .collect(),
        };
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "shape b,c->o,side",
        "im2col ms",
        "f2 ms",
        "f4 ms",
        "direct ms",
        "packed ms",
        "f2 x",
        "f4 x",
        "dir x",
        "pack x",
        "f2 err",
        "f4 err",
        "dir err",
        "pack err"
    );
    for (b, c, o, side, k) in shapes {
        let g = ConvShape {
            batch: b,
            c,
            h: side,
            w: side,
            o,
            kh: k,
            kw: k,
            stride: 1,
            pads: [k / 2; 4],
        };
        let x: Vec<f32> = (0..b * c * side * side).map(|_| rnd()).collect();
        let wf: Vec<f32> = (0..o * c * k * k).map(|_| rnd() * 0.1).collect();
        let bias: Vec<f32> = (0..o).map(|_| rnd()).collect();
        let w = if q8 {
            let bytes = SharedBytes::from_vec(quantize_q8(&wf));
            CompactWeight::new(DType::Q8, &[o, c, k, k], bytes)?
        } else {
            CompactWeight::from_f32(&[o, c, k, k], &wf)?
        };
        let algos = [Algo::Im2col, Algo::F2, Algo::F4, Algo::Direct];
        // What the packed plan runs: the layer's algorithm on a weight prepared beforehand
        // (packed for the direct kernel, or Winograd-transformed), or im2col.
        let packed = Prepared::new(&g, &w)?;
        let mut outs = vec![vec![0f32; b * o * side * side]; 5];
        let mut times = vec![Vec::new(); 5];
        for _ in 0..reps + 1 {
            for (i, &a) in algos.iter().enumerate() {
                let t = Instant::now();
                conv2d_with(a, &x, &g, &w, Some(&bias), &mut outs[i]);
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
            let t = Instant::now();
            match &packed {
                Some(p) => conv2d_packed(&x, &g, p, Some(&bias), &mut outs[4]),
                None => conv2d_with(Algo::Im2col, &x, &g, &w, Some(&bias), &mut outs[4]),
            }
            times[4].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let med = |v: &mut Vec<f64>| {
            v.remove(0); // warm-up
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let t: Vec<f64> = times.iter_mut().map(med).collect();

        let scale = outs[0].iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = |k: usize| {
            outs[k]
                .iter()
                .zip(&outs[0])
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale
        };
        let pick = choose(&g);
        let mark = |a: Algo| if a == pick { "*" } else { " " };
        println!(
            "{:<22} {:>9.2}{} {:>9.2}{} {:>9.2}{} {:>9.2}{} {:>10.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>9.1e} {:>9.1e} {:>9.1e} {:>9.1e}",
            format!("{b},{c}->{o},{side}{}", if k == 3 { String::new() } else { format!(",k{k}") }),
            t[0],
            mark(Algo::Im2col),
            t[1],
            mark(Algo::F2),
            t[2],
            mark(Algo::F4),
            t[3],
            mark(Algo::Direct),
            t[4],
            t[0] / t[1],
            t[0] / t[2],
            t[0] / t[3],
            t[0] / t[4],
            err(1),
            err(2),
            err(3),
            err(4)
        );
    }
    Ok(())
}

fn parse_shape(s: &str) -> Option<(usize, usize, usize, usize, usize)> {
    let v: Vec<usize> = s.split(',').filter_map(|t| t.trim().parse().ok()).collect();
    match v[..] {
        [b, c, o, side] => Some((b, c, o, side, 3)),
        [b, c, o, side, k] if k % 2 == 1 => Some((b, c, o, side, k)),
        _ => None,
    }
}
