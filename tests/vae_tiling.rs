//! The autoencoder in overlapping tiles on the shipped model (CPU backend): a tiled 512 px
//! decode agrees with the whole decode, one tile is the whole decode bit for bit, the tiled
//! encoder agrees with the whole one, and bad tilings are errors.
#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/tiny.rs"]
mod tiny;

use ldm_edge::backend::{select, Tensor};
use ldm_edge::model::Model;
use ldm_edge::pipeline::image::to_rgb8;
use ldm_edge::pipeline::{Pipeline, VaeTiling};
use ldm_edge::sampler::NoiseGen;
use ldm_edge::Error;
use std::time::Instant;
use tiny::{default_model_path, test_image};

fn model() -> Model {
    Model::open(&default_model_path()).expect("the shipped model opens")
}

fn cpu(m: &Model, tiling: Option<VaeTiling>) -> Pipeline<'_> {
    Pipeline::new(m, select("cpu").expect("cpu backend")).with_vae_tiling(tiling)
}

/// Seeded standard-normal latents [1, z, h, w], as the sampler would hand them to the decoder.
fn latents(m: &Model, h: usize, w: usize, seed: u64) -> Tensor {
    let z = m.config.vae.latent_channels;
    Tensor::new(vec![1, z, h, w], NoiseGen::new(seed).sample(z * h * w)).unwrap()
}

/// PSNR in dB of two 8-bit images (what a user sees after saving).
fn psnr_rgb(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (to_rgb8(a).unwrap(), to_rgb8(b).unwrap());
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

/// PSNR in dB of `b` against `a` with the peak taken as `a`'s range (for latents).
fn psnr_range(a: &Tensor, b: &Tensor) -> f64 {
    let (lo, hi) = a
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    10.0 * ((hi - lo) as f64).powi(2).log10() - 10.0 * mse.max(1e-30).log10()
}

fn input_error<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Input(msg)) => assert!(msg.contains(needle), "`{msg}` lacks `{needle}`"),
        other => panic!("expected an input error about `{needle}`, got {other:?}"),
    }
}

#[test]
fn tiled_512px_decode_agrees_with_the_whole_decode() {
    let m = model();
    let f = m.config.vae.factor();
    let side = 512 / f;
    let z = latents(&m, side, side, 11);
    let t0 = Instant::now();
    let whole = cpu(&m, None).decode(&z).unwrap();
    let t1 = Instant::now();
    // Through the pipeline's own setting, as generate/img2img/inpaint decode. 64 latent
    // pixels at f = 4 are 256 px image tiles, as the default 32 is at f = 8: 3 x 3 tiles.
    let tiling = VaeTiling::new(64, 16).unwrap();
    let tiled = cpu(&m, Some(tiling)).decode(&z).unwrap();
    let t2 = Instant::now();
    assert_eq!(whole.shape, vec![1, 3, 512, 512]);
    assert_eq!(tiled.shape, whole.shape);
    let p = psnr_rgb(&whole, &tiled);
    println!(
        "512 px decode (f = {f}, latent {side}x{side}, tile 64 overlap 16): PSNR {p:.2} dB; \
         whole {:.1} s, tiled {:.1} s",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
    assert!(p >= 40.0, "tiled vs whole decode PSNR {p:.2} dB < 40 dB");
    // The tiles really differ from one whole decode (else this test proves nothing).
    assert_ne!(whole.data, tiled.data);
}

#[test]
fn one_tile_is_the_whole_decode_bit_for_bit() {
    let m = model();
    let z = latents(&m, 16, 16, 3);
    let pipe = cpu(&m, None);
    let whole = pipe.decode(&z).unwrap();
    // A tile of exactly the latent's size, and one larger (clamped to the latent).
    for t in [
        VaeTiling::new(16, 4).unwrap(),
        VaeTiling::new(40, 10).unwrap(),
    ] {
        assert_eq!(pipe.decode_tiled(&z, &t).unwrap(), whole, "{t:?}");
    }
    // With tiling on but the latent within one tile, decode takes the whole path.
    let on = cpu(&m, Some(VaeTiling::new(16, 4).unwrap()));
    assert_eq!(on.decode(&z).unwrap(), whole);
    // Split along one axis only: still the right size, and close to the whole decode.
    let z = latents(&m, 16, 40, 4);
    let whole = pipe.decode(&z).unwrap();
    let tiled = pipe
        .decode_tiled(&z, &VaeTiling::new(16, 6).unwrap())
        .unwrap();
    assert_eq!(tiled.shape, whole.shape);
    assert_ne!(tiled.data, whole.data);
}

#[test]
fn tiled_encode_agrees_with_the_whole_encode() {
    let m = model();
    let f = m.config.vae.factor();
    let side = 256;
    let image = test_image(side, side);
    let whole = cpu(&m, None).encode(&image).unwrap();
    let tiled = cpu(&m, Some(VaeTiling::new(32, 8).unwrap()))
        .encode(&image)
        .unwrap();
    assert_eq!(whole.shape, vec![1, 4, side / f, side / f]);
    assert_eq!(tiled.shape, whole.shape);
    let p = psnr_range(&whole, &tiled);
    println!("{side} px encode, tile 32 overlap 8: latent PSNR {p:.2} dB (peak = latent range)");
    assert!(
        p >= 40.0,
        "tiled vs whole encode latent PSNR {p:.2} dB < 40 dB"
    );
    // One tile: bit for bit.
    let small = test_image(64, 64);
    let pipe = cpu(&m, None);
    assert_eq!(
        pipe.encode_tiled(&small, &VaeTiling::new(64 / f, 2).unwrap())
            .unwrap(),
        pipe.encode(&small).unwrap()
    );
}

#[test]
fn bad_tilings_and_latents_are_input_errors() {
    input_error(VaeTiling::new(4, 1), "at least 8");
    input_error(VaeTiling::new(16, 16), "overlap");
    input_error(VaeTiling::with_default_overlap(0), "at least 8");
    assert_eq!(VaeTiling::with_default_overlap(32).unwrap().overlap, 8);
    VaeTiling::default().validate().unwrap();

    let m = model();
    let z = latents(&m, 16, 16, 1);
    // Hand-built (unchecked) tilings are caught when the autoencoder runs.
    let bad = VaeTiling {
        tile: 8,
        overlap: 9,
    };
    let pipe = cpu(&m, Some(bad));
    input_error(pipe.decode(&z), "overlap");
    input_error(pipe.encode(&test_image(64, 64)), "overlap");
    input_error(pipe.decode_tiled(&z, &bad), "overlap");
    input_error(
        pipe.decode_tiled(
            &z,
            &VaeTiling {
                tile: 0,
                overlap: 0,
            },
        ),
        "at least 8",
    );
    // Latents of the wrong rank or channel count.
    let good = cpu(&m, Some(VaeTiling::default()));
    input_error(
        good.decode(&Tensor::new(vec![4, 16, 16], vec![0.0; 1024]).unwrap()),
        "latents must have shape",
    );
    input_error(
        good.decode(&Tensor::new(vec![1, 3, 16, 16], vec![0.0; 768]).unwrap()),
        "latents must have shape",
    );
}

#[test]
fn cli_vae_tile_flag_runs_and_rejects_bad_values() {
    let dir = scratch::scratch("vae-tiling");
    let run = |extra: &[&str]| {
        let out = dir.join(format!("{}.png", extra.join("_")));
        let mut args = vec![
            "generate",
            "a red circle",
            "--steps",
            "2",
            "--size",
            "128x128",
        ];
        args.extend_from_slice(&["-q", "--backend", "cpu", "-o", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ldm"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(&args)
            .output()
            .unwrap();
        (o, out)
    };
    let (o, whole) = run(&["--vae-tile", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Unset, the planner may tile on its own; it must still run.
    let (o, _) = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (o, tiled) = run(&["--vae-tile", "16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        std::fs::read(&whole).unwrap(),
        std::fs::read(&tiled).unwrap(),
    );
    assert_ne!(a, b, "--vae-tile 16 on a 32x32 latent changed nothing");
    for (extra, needle) in [
        (&["--vae-tile", "4"][..], "at least 8"),
        (&["--vae-tile", "16", "--vae-overlap", "16"][..], "overlap"),
        (
            &["--vae-overlap", "4"][..],
            "--vae-overlap needs --vae-tile",
        ),
    ] {
        let (o, _) = run(extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
}

/// A measurement, not a CI test: tiled vs whole decode of seeded latents for any model, e.g.
/// `ldm-host init --preset sd15 --dtype q8 -o /tmp/sd15.ldm`, then
/// `LDM_VAE_MODEL=/tmp/sd15.ldm cargo test --release --test vae_tiling -- --ignored --nocapture`.
/// LDM_VAE_PX (image side, default 512), LDM_VAE_TILE (latent pixels, default 32) and
/// LDM_VAE_OVERLAP (default a quarter tile) pick the case; LDM_VAE_ONLY=whole|tiled runs one.
#[test]
#[ignore]
fn measure_tiled_vs_whole_decode() {
    let var = |k: &str| std::env::var(k).ok();
    let num = |k: &str, d: usize| var(k).map_or(d, |v| v.parse().expect(k));
    let path = var("LDM_VAE_MODEL").map_or_else(default_model_path, Into::into);
    let m = Model::open(&path).expect("LDM_VAE_MODEL opens");
    let f = m.config.vae.factor();
    let (px, tile) = (num("LDM_VAE_PX", 512), num("LDM_VAE_TILE", 32));
    let tiling = VaeTiling::new(tile, num("LDM_VAE_OVERLAP", tile / 4)).unwrap();
    let z = latents(&m, px / f, px / f, 11);
    let pipe = cpu(&m, None);
    // One of the two alone, for a peak-memory figure from `/usr/bin/time -v`.
    if let Some(only) = var("LDM_VAE_ONLY") {
        let t0 = Instant::now();
        match only.as_str() {
            "whole" => pipe.decode(&z).unwrap(),
            _ => pipe.decode_tiled(&z, &tiling).unwrap(),
        };
        println!("{only}: {:.1} s", t0.elapsed().as_secs_f64());
        return;
    }
    let t0 = Instant::now();
    let whole = pipe.decode(&z).unwrap();
    let t1 = Instant::now();
    let tiled = pipe.decode_tiled(&z, &tiling).unwrap();
    let t2 = Instant::now();
    println!(
        "{}: {px} px decode (f = {f}), {tiling:?}: PSNR {:.2} dB; whole {:.1} s, tiled {:.1} s",
        path.display(),
        psnr_rgb(&whole, &tiled),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64()
    );
}
