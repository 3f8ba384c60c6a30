//! img2img, inpainting and upscaling on tiny random models (CPU backend): the exact identities
//! each pipeline promises, its step counts and its errors.
#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/tiny.rs"]
mod tiny;

use ldm_edge::arch::Task;
use ldm_edge::backend::{select, Tensor};
use ldm_edge::model::Model;
use ldm_edge::pipeline::image::to_rgb8;
use ldm_edge::pipeline::tiles::tile_starts;
use ldm_edge::pipeline::{tile_seed, Cancel, Img2Img, Inpaint, Pipeline, Txt2Img, Upscale};
use ldm_edge::sampler::SamplerKind;
use ldm_edge::Error;
use scratch::scratch;
use tiny::{center_mask, test_image, write_tiny};

fn model(task: Task) -> Model {
    Model::open(&write_tiny(task, &scratch("tasks"))).expect("tiny model opens")
}

fn cpu(m: &Model) -> Pipeline<'_> {
    Pipeline::new(m, select("cpu").expect("cpu backend"))
}

fn input_error<T>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Input(msg)) => assert!(msg.contains(needle), "`{msg}` lacks `{needle}`"),
        Err(e) => panic!("expected an input error about `{needle}`, got {e}"),
        Ok(_) => panic!("expected an input error about `{needle}`, got success"),
    }
}

fn img2img_req(m: &Model, strength: f32, steps: usize) -> Img2Img {
    let mut r = Img2Img::new(m, "a red circle", test_image(32, 32)).unwrap();
    r.params.steps = steps;
    r.params.seed = 9;
    r.strength = strength;
    r
}

#[test]
fn img2img_strength_one_is_txt2img_bit_for_bit() {
    let m = model(Task::Txt2img);
    let pipe = cpu(&m);
    // DDIM (deterministic) and Euler-a (stochastic steps, init sigma != 1).
    for sampler in [SamplerKind::Ddim, SamplerKind::EulerAncestral] {
        let mut r = img2img_req(&m, 1.0, 4);
        r.params.sampler = sampler;
        let mut n = 0;
        let a = pipe.img2img(&r, &mut |_| n += 1, &Cancel::new()).unwrap();
        let b = pipe
            .txt2img(&r.params, &mut |_| {}, &Cancel::new())
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(a.latents, b.latents, "{sampler}");
        assert_eq!(a.image, b.image, "{sampler}");
        assert_eq!(a.rgb, b.rgb);
    }
}

#[test]
fn img2img_strength_zero_is_the_autoencoder_reconstruction() {
    let m = model(Task::Txt2img);
    let pipe = cpu(&m);
    let r = img2img_req(&m, 0.0, 4);
    let mut n = 0;
    let out = pipe.img2img(&r, &mut |_| n += 1, &Cancel::new()).unwrap();
    assert_eq!(n, 0, "strength 0 ran a denoising step");
    let z = pipe.encode(&r.image).unwrap();
    assert_eq!(z.shape, vec![1, 4, 8, 8]);
    assert_eq!(out.latents, z);
    assert_eq!(out.image, pipe.decode(&z).unwrap());
    // The encoder is deterministic (posterior mean), so a second run is identical.
    assert_eq!(pipe.encode(&r.image).unwrap(), z);
}

#[test]
fn img2img_runs_the_last_round_steps_times_strength() {
    let m = model(Task::Txt2img);
    let pipe = cpu(&m);
    let full = pipe
        .img2img(&img2img_req(&m, 1.0, 6), &mut |_| {}, &Cancel::new())
        .unwrap();
    let recon = pipe
        .img2img(&img2img_req(&m, 0.0, 6), &mut |_| {}, &Cancel::new())
        .unwrap();
    for (strength, want) in [(0.5, 3), (0.3, 2), (0.75, 5)] {
        let r = img2img_req(&m, strength, 6);
        assert_eq!(r.steps_to_run(), want);
        let mut seen = Vec::new();
        let out = pipe
            .img2img(&r, &mut |p| seen.push((p.step, p.total)), &Cancel::new())
            .unwrap();
        assert_eq!(seen, (1..=want).map(|s| (s, want)).collect::<Vec<_>>());
        assert_ne!(
            out.latents, full.latents,
            "strength {strength} ignored the image"
        );
        assert_ne!(
            out.latents, recon.latents,
            "strength {strength} did nothing"
        );
        // Same request, same result.
        let again = pipe.img2img(&r, &mut |_| {}, &Cancel::new()).unwrap();
        assert_eq!(again.image, out.image);
    }
}

#[test]
fn img2img_bad_requests_are_errors() {
    let m = model(Task::Txt2img);
    let pipe = cpu(&m);
    let run = |r: &Img2Img| pipe.img2img(r, &mut |_| {}, &Cancel::new());
    let mut r = img2img_req(&m, 0.5, 4);
    r.image = test_image(24, 32);
    input_error(run(&r), "init image is 32x24");
    let mut r = img2img_req(&m, 0.5, 4);
    r.image = test_image(30, 30);
    (r.params.width, r.params.height) = (30, 30);
    input_error(run(&r), "multiple of 8");
    let mut r = img2img_req(&m, 1.5, 4);
    input_error(run(&r), "strength");
    r.strength = 0.5;
    r.params.prompt = " ".into();
    input_error(run(&r), "prompt is empty");
    // An SR model cannot do img2img: the error names the command it needs.
    let sr = model(Task::Sr);
    let r = img2img_req(&sr, 0.5, 4);
    input_error(
        cpu(&sr).img2img(&r, &mut |_| {}, &Cancel::new()),
        "ldm upscale",
    );
}

fn inpaint_req(m: &Model) -> Inpaint {
    let mut r = Inpaint::new(m, "a blue star", test_image(32, 32), center_mask(32, 32)).unwrap();
    r.params.seed = 4;
    r
}

#[test]
fn inpaint_keeps_every_pixel_outside_the_mask() {
    let m = model(Task::Inpaint);
    let pipe = cpu(&m);
    let r = inpaint_req(&m);
    let mut n = 0;
    let out = pipe.inpaint(&r, &mut |_| n += 1, &Cancel::new()).unwrap();
    assert_eq!(n, r.params.steps);
    assert_eq!((out.width, out.height), (32, 32));
    let input = to_rgb8(&r.image).unwrap();
    let (mut kept, mut changed) = (0, 0);
    for (i, &m) in r.mask.iter().enumerate() {
        let (a, b) = (&out.rgb[i * 3..i * 3 + 3], &input[i * 3..i * 3 + 3]);
        if m == 0.0 {
            assert_eq!(a, b, "pixel {i} outside the mask changed");
            kept += 1;
        } else if a != b {
            changed += 1;
        }
    }
    assert!(kept > 0 && changed > 0, "kept {kept}, changed {changed}");
    // The prompt and seed matter inside the hole; the same request repeats exactly.
    let again = pipe.inpaint(&r, &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(again.rgb, out.rgb);
    let mut other = r.clone();
    other.params.seed = 5;
    let o = pipe.inpaint(&other, &mut |_| {}, &Cancel::new()).unwrap();
    assert_ne!(o.rgb, out.rgb);
}

#[test]
fn inpaint_bad_requests_are_errors() {
    let m = model(Task::Inpaint);
    let pipe = cpu(&m);
    let run = |r: &Inpaint| pipe.inpaint(r, &mut |_| {}, &Cancel::new());
    let mut r = inpaint_req(&m);
    r.mask = center_mask(16, 16);
    input_error(run(&r), "mask has 256 pixels");
    let mut r = inpaint_req(&m);
    r.image = test_image(20, 20);
    r.mask = center_mask(20, 20);
    (r.params.width, r.params.height) = (20, 20);
    input_error(run(&r), "multiple of 8");
    let mut r = inpaint_req(&m);
    r.params.prompt = String::new();
    input_error(run(&r), "prompt is empty");
    let t = model(Task::Txt2img);
    let r = inpaint_req(&t);
    let e = cpu(&t).inpaint(&r, &mut |_| {}, &Cancel::new());
    input_error(
        e,
        "for task txt2img, not inpaint: it runs with `ldm generate`",
    );
    // And the reverse: txt2img on an inpainting model.
    let e = pipe.txt2img(&r.params, &mut |_| {}, &Cancel::new());
    input_error(e, "ldm inpaint");
}

fn upscale_req(m: &Model, h: usize, w: usize) -> Upscale {
    let mut r = Upscale::new(m, test_image(h, w)).unwrap();
    r.seed = 21;
    r.steps = 2;
    r
}

#[test]
fn upscale_output_is_four_times_the_input() {
    let m = model(Task::Sr);
    let pipe = cpu(&m);
    for (h, w, tiles) in [(8, 8, 1), (13, 21, 2 * 4), (3, 5, 1), (1, 1, 1)] {
        let r = upscale_req(&m, h, w);
        assert_eq!(pipe.tile_layout(&r).unwrap().count(), tiles, "{h}x{w}");
        let mut seen = Vec::new();
        let out = pipe
            .upscale(&r, &mut |p| seen.push((p.step, p.total)), &Cancel::new())
            .unwrap();
        assert_eq!((out.height, out.width), (4 * h, 4 * w));
        assert_eq!(out.image.shape, vec![1, 3, 4 * h, 4 * w]);
        assert_eq!(out.rgb.len(), 4 * h * 4 * w * 3);
        assert_eq!(out.latents.shape, vec![tiles, 4, 8, 8]);
        let total = tiles * r.steps;
        assert_eq!(seen, (1..=total).map(|s| (s, total)).collect::<Vec<_>>());
    }
}

#[test]
fn upscale_is_deterministic_by_seed() {
    let m = model(Task::Sr);
    let pipe = cpu(&m);
    let r = upscale_req(&m, 13, 21);
    let a = pipe.upscale(&r, &mut |_| {}, &Cancel::new()).unwrap();
    let b = pipe.upscale(&r, &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(a.image, b.image);
    let mut r2 = r.clone();
    r2.seed += 1;
    let c = pipe.upscale(&r2, &mut |_| {}, &Cancel::new()).unwrap();
    assert_ne!(a.image, c.image);
    // A prompt (with guidance on) conditions the result too.
    let mut r3 = r.clone();
    r3.prompt = "a red circle".into();
    let d = pipe.upscale(&r3, &mut |_| {}, &Cancel::new()).unwrap();
    assert_ne!(a.image, d.image);
}

fn crop(t: &Tensor, y: usize, x: usize, h: usize, w: usize) -> Tensor {
    let (th, tw) = (t.shape[2], t.shape[3]);
    let mut v = Vec::new();
    for c in 0..3 {
        for r in y..y + h {
            let row = (c * th + r) * tw;
            v.extend_from_slice(&t.data[row + x..row + x + w]);
        }
    }
    Tensor::new(vec![1, 3, h, w], v).unwrap()
}

#[test]
fn one_tile_is_the_untiled_run_and_tiles_pass_through_outside_overlaps() {
    let m = model(Task::Sr);
    let pipe = cpu(&m);
    let r = upscale_req(&m, 8, 8);
    let tiled = pipe.upscale(&r, &mut |_| {}, &Cancel::new()).unwrap();
    let alone = pipe.super_resolve(&r, &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(tiled.image, alone.image);
    assert_eq!(tiled.latents, alone.latents);

    // Two tiles side by side, overlapping by 2 low-res pixels (8 output pixels): outside the
    // overlap each tile's pixels are exactly its own untiled run with its tile seed; inside,
    // a blend of the two.
    let r = upscale_req(&m, 8, 14);
    assert_eq!(tile_starts(14, 8, 2), vec![0, 6]);
    let out = pipe.upscale(&r, &mut |_| {}, &Cancel::new()).unwrap();
    let run_tile = |x: usize, index: usize| {
        let mut t = r.clone();
        t.image = crop(&r.image, 0, x, 8, 8);
        t.seed = tile_seed(r.seed, index);
        pipe.super_resolve(&t, &mut |_| {}, &Cancel::new())
            .unwrap()
            .image
    };
    let (left, right) = (run_tile(0, 0), run_tile(6, 1));
    assert_eq!(crop(&out.image, 0, 0, 32, 24), crop(&left, 0, 0, 32, 24));
    assert_eq!(crop(&out.image, 0, 32, 32, 24), crop(&right, 0, 8, 32, 24));
    // In the overlap every pixel lies between the two tiles' values.
    let (o, a, b) = (
        crop(&out.image, 0, 24, 32, 8),
        crop(&left, 0, 24, 32, 8),
        crop(&right, 0, 0, 32, 8),
    );
    for i in 0..o.data.len() {
        let (lo, hi) = (a.data[i].min(b.data[i]), a.data[i].max(b.data[i]));
        assert!(o.data[i] >= lo - 1e-5 && o.data[i] <= hi + 1e-5, "{i}");
    }
    assert_ne!(o, a);
    assert_ne!(o, b);
}

#[test]
fn upscale_bad_requests_are_errors() {
    let m = model(Task::Sr);
    let pipe = cpu(&m);
    let run = |r: &Upscale| pipe.upscale(r, &mut |_| {}, &Cancel::new());
    let mut r = upscale_req(&m, 13, 21);
    r.overlap = Some(8);
    input_error(run(&r), "overlap");
    r.overlap = Some(0);
    input_error(run(&r), "overlap");
    let r = upscale_req(&m, 0, 4);
    input_error(run(&r), "cannot upscale a 4x0 image");
    let r = upscale_req(&m, 1025, 4);
    input_error(run(&r), "4096");
    let t = model(Task::Txt2img);
    let r = upscale_req(&t, 8, 8);
    input_error(
        cpu(&t).upscale(&r, &mut |_| {}, &Cancel::new()),
        "ldm generate",
    );
    // txt2img on an SR model names `ldm upscale`.
    let req = Txt2Img::new(&m, "a red circle").unwrap();
    input_error(
        pipe.txt2img(&req, &mut |_| {}, &Cancel::new()),
        "ldm upscale",
    );
}
