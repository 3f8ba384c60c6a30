//! `ldm-host preview fit`: add (or refit) the latent-to-RGB preview map of an existing model
//! file. Export and import store one already; this is for files written before they did.
use anyhow::{Context, Result};
use ldm_edge::format::ModelWriter;
use ldm_edge::model::Model;
use ldm_edge::preview::{LATENT_RGB_BIAS, LATENT_RGB_WEIGHT};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum PreviewCmd {
    /// Fit the map from the model's own encoder and write the model with it (-o may be the
    /// input: the file is replaced atomically, never rewritten in place).
    Fit {
        model: PathBuf,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

pub fn run(cmd: PreviewCmd) -> Result<()> {
    match cmd {
        PreviewCmd::Fit { model, output } => fit(model, output),
    }
}

fn fit(input: PathBuf, output: PathBuf) -> Result<()> {
    let model = Model::open(&input).with_context(|| format!("cannot open {}", input.display()))?;
    let load = |p: &str| -> ldm_edge::Result<Vec<f32>> {
        use ldm_edge::backend::WeightSource;
        model.load_f32(p)
    };
    let (map, report) = ldm_edge::preview::fit::fit_from(&model.config, &load)
        .context("fitting the latent-to-RGB preview map")?;
    let mut meta = model.file.meta().clone();
    if let Some(p) = meta.get_mut("provenance").and_then(|p| p.as_object_mut()) {
        p.insert("preview".into(), report.provenance());
    }
    let mut w = ModelWriter::new(meta)?;
    for t in model.file.tensors() {
        if t.name == LATENT_RGB_WEIGHT || t.name == LATENT_RGB_BIAS {
            continue;
        }
        let v = model
            .file
            .tensor(&t.name)
            .with_context(|| format!("tensor `{}` vanished", t.name))?;
        w.add_raw(&t.name, v.shape(), v.dtype(), v.bytes.to_vec())?;
    }
    map.add_to(&mut w)?;
    let r = w
        .write(&output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "wrote {} ({} bytes): preview map fitted on {} {}x{} images, {:.2} dB on them",
        output.display(),
        r.file_len,
        report.images,
        report.size,
        report.size,
        report.psnr_db
    );
    Ok(())
}
