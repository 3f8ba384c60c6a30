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
    /// Copy the tiny decoder of `--from` (trained by `train tiny-decoder`) into a model with
    /// the same autoencoder, e.g. a distilled student of the model it was trained for.
    AttachTiny {
        model: PathBuf,
        #[arg(long)]
        from: PathBuf,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

pub fn run(cmd: PreviewCmd) -> Result<()> {
    match cmd {
        PreviewCmd::Fit { model, output } => fit(model, output),
        PreviewCmd::AttachTiny {
            model,
            from,
            output,
        } => attach_tiny(model, from, output),
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
    w.add_all_from(&model.file, |n| {
        n != LATENT_RGB_WEIGHT && n != LATENT_RGB_BIAS
    })?;
    map.add_to(&mut w)?;
    ldm_edge::quant_report::QuantReport::recount_in(&mut w)?;
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

fn attach_tiny(input: PathBuf, from: PathBuf, output: PathBuf) -> Result<()> {
    use ldm_edge::arch::tiny_decoder;
    let open = |p: &PathBuf| Model::open(p).with_context(|| format!("cannot open {}", p.display()));
    let (model, src) = (open(&input)?, open(&from)?);
    let cfg = src
        .tiny_decoder
        .as_ref()
        .with_context(|| format!("{} has no tiny decoder", from.display()))?;
    // The tiny decoder imitates one decoder on one latent space: both must be the same.
    for (path, _) in ldm_edge::arch::vae::encoder_params(&model.config.vae, ldm_edge::arch::VAE)?
        .into_iter()
        .chain(model.config.decoder_graph(1, 1, 1)?.params())
    {
        let a = model.file.tensor(&path).map(|t| t.bytes);
        let b = src.file.tensor(&path).map(|t| t.bytes);
        if a.is_none() || a != b {
            anyhow::bail!(
                "{} and {} have different autoencoders (`{path}` differs): the tiny decoder was \
                 trained for the other one",
                input.display(),
                from.display()
            );
        }
    }
    let mut meta = model.file.meta().clone();
    let obj = meta
        .as_object_mut()
        .context("model header is not an object")?;
    obj.insert(tiny_decoder::HEADER_KEY.into(), serde_json::to_value(cfg)?);
    if let (Some(p), Some(t)) = (
        obj.get_mut("provenance").and_then(|p| p.as_object_mut()),
        src.file.meta()["provenance"].get("tiny_decoder"),
    ) {
        p.insert("tiny_decoder".into(), t.clone());
    }
    let mut w = ModelWriter::new(meta)?;
    w.add_all_from(&model.file, |n| !n.starts_with(tiny_decoder::PREFIX))?;
    for (path, _) in cfg.param_specs()? {
        let v = src
            .file
            .tensor(&path)
            .with_context(|| format!("{} has no `{path}`", from.display()))?;
        w.add_raw(&path, v.shape(), v.dtype(), v.bytes.to_vec())?;
    }
    ldm_edge::quant_report::QuantReport::recount_in(&mut w)?;
    w.write(&output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Model::open(&output).with_context(|| format!("{} does not load back", output.display()))?;
    eprintln!(
        "wrote {} with the tiny decoder of {}",
        output.display(),
        from.display()
    );
    Ok(())
}
