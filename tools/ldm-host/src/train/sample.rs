//! Sample grids during training: the checkpoint's EMA weights are exported to a temporary f32
//! model file and run through the runtime pipeline, so the grid shows what `ldm generate` would.
use super::checkpoint::Checkpoint;
use anyhow::{Context, Result};
use ldm_edge::format::DType;
use ldm_edge::model::Model;
use ldm_edge::pipeline::image::save_png;
use ldm_edge::pipeline::progress::Cancel;
use ldm_edge::pipeline::{Pipeline, Txt2Img};
use std::path::Path;

pub const PROMPTS: [&str; 8] = [
    "a large red circle in the top left on a white background",
    "a small blue square in the bottom right on a gray background",
    "a large green triangle in the center on a white background",
    "a small yellow diamond in the top right on a gray background",
    "a large purple cross in the bottom left on a white background",
    "a large red circle above a large blue square on a white background",
    "a small green square below a large orange circle on a gray background",
    "a small red triangle in the center on a gray background",
];

/// Writes a grid PNG of one image per prompt in `PROMPTS`, 4 per row.
pub fn grid(ck: &Checkpoint, png: &Path) -> Result<()> {
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = png.with_extension("tmp.ldm");
    super::export::to_ldm(ck, DType::F32, &tmp, true, serde_json::json!({}))?;
    let res = render(&tmp, png);
    let _ = std::fs::remove_file(&tmp);
    res
}

fn render(model_path: &Path, png: &Path) -> Result<()> {
    let model = Model::open(model_path)?;
    let pipe = Pipeline::new(&model, ldm_edge::backend::select("cpu")?);
    let cols = 4;
    let rows = PROMPTS.len().div_ceil(cols);
    let s = model.config.image_size;
    let (gw, gh) = (cols * s, rows * s);
    let mut canvas = vec![0u8; gw * gh * 3];
    for (i, p) in PROMPTS.iter().enumerate() {
        let mut req = Txt2Img::new(&model, p)?;
        req.seed = i as u64;
        let g = pipe.txt2img(&req, &mut |_| {}, &Cancel::new())?;
        let (ox, oy) = ((i % cols) * s, (i / cols) * s);
        for y in 0..g.height.min(s) {
            for x in 0..g.width.min(s) {
                let src = (y * g.width + x) * 3;
                let dst = ((oy + y) * gw + ox + x) * 3;
                canvas[dst..dst + 3].copy_from_slice(&g.rgb[src..src + 3]);
            }
        }
    }
    save_png(png, &canvas, gw, gh)?;
    Ok(())
}
