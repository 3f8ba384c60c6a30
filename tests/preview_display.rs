//! Previews during sampling (the stored latent-to-RGB map) and the display targets: a file laid
//! out like a Linux framebuffer (RGB565 and XRGB8888, strides wider than a row) drawn by the
//! same code a board's /dev/fb0 takes, checked pixel by pixel against the PNG display.
use embedded_graphics::pixelcolor::Rgb888;
use ldm_edge::backend;
use ldm_edge::display::framebuffer::read_pixel;
use ldm_edge::display::{self, Canvas, FbLayout, Framebuffer, PixelFormat, Status};
use ldm_edge::format::ModelWriter;
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Pipeline, Txt2Img};
use ldm_edge::preview::{LATENT_RGB_BIAS, LATENT_RGB_WEIGHT};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/scratch.rs"]
mod scratch;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    scratch::scratch("preview").join(name)
}

fn default_model() -> Model {
    Model::open(&root().join("models/shapes-32.ldm")).unwrap()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255f64.powi(2) / mse.max(1e-12)).log10()
}

#[test]
fn previews_arrive_every_k_steps_and_at_the_last() {
    let model = default_model();
    let pipe = Pipeline::new(&model, backend::select("cpu").unwrap())
        .with_preview(Some(3))
        .unwrap();
    let mut req = Txt2Img::new(&model, "a red circle above a blue square").unwrap();
    req.steps = 10;
    let mut seen = Vec::new();
    let mut last = None;
    let out = pipe
        .txt2img(
            &req,
            &mut |p| {
                if let Some(img) = p.preview {
                    assert_eq!(img.step, p.step);
                    assert_eq!((img.width, img.height), (32, 32));
                    seen.push(p.step);
                    last = Some(img.rgb.clone());
                }
            },
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(seen, vec![3, 6, 9, 10]);
    // The last preview maps the final latent: it must look like the decoded image. A wrong
    // channel order or a map of another model scores far lower (about 5-8 dB).
    let p = psnr(&last.unwrap(), &out.rgb);
    assert!(p > 11.0, "last preview vs final image: {p:.2} dB");
}

#[test]
fn previews_are_refused_without_a_map_or_at_zero() {
    let model = default_model();
    let pipe = || Pipeline::new(&model, backend::select("cpu").unwrap());
    let e = pipe().with_preview(Some(0)).err().unwrap().to_string();
    assert!(e.contains("every 0"), "{e}");

    // The same model without its map.
    let out = tmp("nomap.ldm");
    rewrite(&model, &out, |name| name.starts_with("preview."));
    let bare = Model::open(&out).unwrap();
    assert!(bare.latent_rgb.is_none());
    let e = Pipeline::new(&bare, backend::select("cpu").unwrap())
        .with_preview(Some(2))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ldm-host preview fit"), "{e}");
}

#[test]
fn a_partial_or_misshapen_map_is_a_clear_error() {
    let model = default_model();
    let out = tmp("halfmap.ldm");
    rewrite(&model, &out, |name| name == LATENT_RGB_BIAS);
    let e = Model::open(&out).err().unwrap().to_string();
    assert!(e.contains(LATENT_RGB_BIAS), "{e}");

    // A [3, 3] weight for a 4-channel latent.
    let out = tmp("badmap.ldm");
    let mut w = ModelWriter::new(model.file.meta().clone()).unwrap();
    for t in model.file.tensors() {
        let v = model.file.tensor(&t.name).unwrap();
        if t.name == LATENT_RGB_WEIGHT {
            w.add(&t.name, &[3, 3], &[0.1; 9], ldm_edge::format::DType::F32)
                .unwrap();
        } else {
            w.add_raw(&t.name, v.shape(), v.dtype(), v.bytes.to_vec())
                .unwrap();
        }
    }
    w.write(&out).unwrap();
    let e = Model::open(&out).err().unwrap().to_string();
    assert!(e.contains(LATENT_RGB_WEIGHT), "{e}");
}

/// Copies a model's file, leaving out the tensors `drop` names.
fn rewrite(model: &Model, out: &Path, drop: impl Fn(&str) -> bool) {
    let mut w = ModelWriter::new(model.file.meta().clone()).unwrap();
    w.add_all_from(&model.file, |n| !drop(n)).unwrap();
    w.write(out).unwrap();
}

/// A test picture with distinct pixels, so scaling and placement errors show.
fn picture(w: usize, h: usize) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) * 37 % 256) as u8,
            ]
        })
        .collect()
}

/// The colour a framebuffer of `format` shows for a colour.
fn through(format: PixelFormat, c: Rgb888) -> Rgb888 {
    format.unpack(format.pack(c))
}

#[test]
fn framebuffer_files_match_the_png_display_pixel_for_pixel() {
    let (w, h) = (150, 100);
    let img = picture(32, 32);
    let frames = [
        Status {
            image: None,
            step: 0,
            total: 20,
            prompt: "a red circle above a blue square",
        },
        Status {
            image: Some((&img, 32, 32)),
            step: 13,
            total: 20,
            prompt: "a red circle above a blue square, and a very long tail to truncate",
        },
    ];
    for (format, stride) in [
        (PixelFormat::RGB565, 2 * w + 36),
        (PixelFormat::XRGB8888, 4 * w + 64),
    ] {
        let layout = FbLayout {
            width: w,
            height: h,
            stride,
            format,
            offset: 0,
        };
        let path = tmp(&format!("fb-{}.raw", format.bytes_per_pixel));
        let _ = std::fs::remove_file(&path);
        let mut fb = Framebuffer::open_file(&path, layout).unwrap();
        let mut canvas = Canvas::new(w, h).unwrap();
        for f in &frames {
            display::draw(&mut fb, f).unwrap();
            display::draw(&mut canvas, f).unwrap();
        }
        fb.flush().unwrap();
        drop(fb);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), stride * h);
        let mut lit = 0;
        for y in 0..h {
            for x in 0..w {
                let got = read_pixel(&bytes, &layout, x, y).unwrap();
                let want = through(format, canvas.pixel(x, y).unwrap());
                assert_eq!(got, want, "{format:?} pixel ({x}, {y})");
                lit += (got != Rgb888::new(0, 0, 0)) as usize;
            }
            // Bytes past the row, inside the stride, belong to nobody: never written.
            let row_end = y * stride + w * format.bytes_per_pixel;
            assert!(bytes[row_end..(y + 1) * stride].iter().all(|&b| b == 0));
        }
        // The frame holds the 78 x 78 image, the bar and the text, not a blank screen.
        assert!(lit > 78 * 78, "only {lit} pixels drawn");
    }
    // The image is scaled to fit above the footer (78 px tall), centred: its top-left source
    // pixel covers the top-left of the fitted square.
    let mut canvas = Canvas::new(w, h).unwrap();
    display::draw(&mut canvas, &frames[1]).unwrap();
    let x0 = (w - 78) / 2;
    assert_eq!(
        canvas.pixel(x0, 0).unwrap(),
        Rgb888::new(img[0], img[1], img[2])
    );
    assert_eq!(canvas.pixel(x0 - 1, 0).unwrap(), Rgb888::new(0, 0, 0));
}

/// `ldm generate --display` on both targets at once is not possible, so two runs of the same
/// request: the final frame of the framebuffer file equals the PNG display's.
#[test]
fn ldm_generate_draws_the_final_image_on_a_framebuffer_file_and_a_png() {
    let png = tmp("display.png");
    let fb = tmp("display-fb.raw");
    let run = |spec: String| {
        let o = Command::new(env!("CARGO_BIN_EXE_ldm"))
            .current_dir(root())
            .args([
                "generate",
                "a red circle",
                "--steps",
                "4",
                "-q",
                "--preview-every",
                "2",
            ])
            .args(["--display", &spec, "-o"])
            .arg(tmp("display-out.png"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(format!("png:{}:160x120", png.display()));
    run(format!("fbfile:{}:160x120:704:xrgb8888", fb.display()));
    let shown = image::open(&png).unwrap().to_rgb8();
    assert_eq!(shown.dimensions(), (160, 120));
    let bytes = std::fs::read(&fb).unwrap();
    let layout = FbLayout {
        width: 160,
        height: 120,
        stride: 704,
        format: PixelFormat::XRGB8888,
        offset: 0,
    };
    for y in 0..120 {
        for x in 0..160 {
            let p = shown.get_pixel(x as u32, y as u32);
            assert_eq!(
                read_pixel(&bytes, &layout, x, y).unwrap(),
                Rgb888::new(p[0], p[1], p[2]),
                "pixel ({x}, {y})"
            );
        }
    }
    // The final image, not a preview, is what stays on screen: its centre pixel is the
    // generated image's, scaled nearest-neighbour.
    let out = image::open(tmp("display-out.png")).unwrap().to_rgb8();
    let fitted = 120 - 22;
    let (x0, _) = ((160 - fitted) / 2, 0);
    let c = shown.get_pixel((x0 + fitted / 2) as u32, (fitted / 2) as u32);
    assert_eq!(c, out.get_pixel(16, 16));
}

#[test]
fn bad_display_specs_are_clear_errors() {
    for (spec, needle) in [
        ("nothing", "expected fb:"),
        ("tv:/dev/x", "unknown display"),
        ("fb:/definitely/not/a/device", "not/a/device"),
        ("fbfile:/tmp/x.raw:10x10:8:rgb565", "stride"),
        ("fbfile:/tmp/x.raw:10x10:64:yuv", "pixel format"),
        ("png::100x100", "file name"),
    ] {
        let e = display::open(spec).err().map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("`{spec}` opened"));
        assert!(e.contains(needle), "`{spec}`: {e}");
    }
}
