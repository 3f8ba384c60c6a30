//! `ldm-host dataset ...`: look at a dataset before training on it, and dump its captions.
use super::{batch, chw_to_rgb8, grid, shapes, Dataset, DatasetArgs};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DatasetCmd {
    /// Write a PNG grid of the first N samples, and their captions (one per line, in grid
    /// order, left to right then top to bottom) to a .txt beside it.
    Preview {
        #[command(flatten)]
        data: DatasetArgs,
        #[arg(short = 'n', long, default_value_t = 16)]
        count: usize,
        /// The PNG to write; captions go to the same path with a .txt extension.
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Write every caption, one per line (tokenizer training input).
    Captions {
        #[command(flatten)]
        data: DatasetArgs,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Write the held-out evaluation prompts of the shapes domain, one per line.
    Prompts {
        #[arg(short = 'n', long, default_value_t = 300)]
        count: usize,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
}

/// All captions of a dataset, in index order.
pub fn captions(ds: &dyn Dataset) -> Result<Vec<String>> {
    (0..ds.len())
        .map(|i| ds.caption(i).with_context(|| format!("caption {i}")))
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(cmd: DatasetCmd) -> Result<()> {
    match cmd {
        DatasetCmd::Preview {
            data,
            count,
            output,
        } => {
            if count == 0 {
                bail!("--count must be at least 1");
            }
            let ds = data.open()?;
            let indices: Vec<usize> = (0..count.min(ds.len())).collect();
            let b = batch(ds.as_ref(), &indices)?;
            let [n, _, size, _] = b.shape();
            let images: Vec<Vec<u8>> = b
                .images
                .chunks_exact(3 * size * size)
                .map(|im| chw_to_rgb8(im, size))
                .collect();
            let caps = b.captions;
            grid::save_grid(&output, &images, size)?;
            let txt = output.with_extension("txt");
            write_lines(&txt, &caps)?;
            eprintln!(
                "wrote {} ({n} samples) and {}",
                output.display(),
                txt.display()
            );
        }
        DatasetCmd::Captions { data, output } => {
            let ds = data.open()?;
            let caps = captions(ds.as_ref())?;
            write_lines(&output, &caps)?;
            eprintln!("wrote {} ({} captions)", output.display(), caps.len());
        }
        DatasetCmd::Prompts { count, output } => {
            let caps: Vec<String> = shapes::held_out_prompts(count)
                .iter()
                .map(shapes::Scene::caption)
                .collect();
            write_lines(&output, &caps)?;
            eprintln!("wrote {} ({count} prompts)", output.display());
        }
    }
    Ok(())
}
