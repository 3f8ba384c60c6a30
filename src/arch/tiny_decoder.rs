//! The tiny decoder: a few convolutions that map a latent to an image at a small fraction of
//! the full decoder's cost, distilled from the model's own decoder (`ldm-host train
//! tiny-decoder`, after TAESD's idea). It takes the same input as the full decoder (latents
//! divided by latent_scale), so it drops in for previews and for the final image.
//!
//! Layout: `conv_in` (z -> C), then per 2x level `blocks` residual blocks (conv, SiLU, conv,
//! add, SiLU) and a 2x nearest upsample with a conv, then `conv_out` (C -> 3). No norms and no
//! attention: every op is cheap on every backend, and tiles need no statistics.
use super::nn::{self, Path};
use crate::graph::{Graph, Tracer, ValueType};
use crate::ops::Ops;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Parameter prefix, and the model file's header key for the config.
pub const PREFIX: &str = "tiny_decoder.";
pub const HEADER_KEY: &str = "tiny_decoder";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyDecoderConfig {
    pub latent_channels: usize,
    pub out_channels: usize,
    /// Width of every layer.
    pub channels: usize,
    /// Residual blocks before each upsampling.
    pub blocks: usize,
    /// The autoencoder's factor (a power of two): one upsampling per doubling.
    pub factor: usize,
}

impl TinyDecoderConfig {
    /// The default size for an autoencoder: 16 wide, one block per level.
    pub fn for_vae(vae: &super::VaeConfig) -> Self {
        Self {
            latent_channels: vae.latent_channels,
            out_channels: vae.out_channels,
            channels: 16,
            blocks: 1,
            factor: vae.factor(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = (1..=64).contains(&self.latent_channels)
            && (1..=4).contains(&self.out_channels)
            && (1..=512).contains(&self.channels)
            && self.blocks <= 8
            && self.factor.is_power_of_two()
            && (1..=64).contains(&self.factor);
        if ok {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "tiny decoder config {self:?} is out of range"
            )))
        }
    }

    fn levels(&self) -> usize {
        self.factor.trailing_zeros() as usize
    }

    /// The decoder graph: `latent` [batch, z, h, w] (divided by latent_scale) -> image.
    pub fn graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        let mut t = Tracer::new();
        let z = t.input(
            "latent",
            &[batch, self.latent_channels, h, w],
            ValueType::F32,
        );
        let y = decode(&mut t, self, PREFIX, &z)?;
        Ok(t.finish(&[y]))
    }

    /// Every parameter with its shape.
    pub fn param_specs(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(self.graph(1, 1, 1)?.params())
    }
}

/// Latent [B, z, h, w] -> image [B, out, h f, w f], roughly in [-1, 1].
pub fn decode<O: Ops>(o: &mut O, cfg: &TinyDecoderConfig, prefix: &str, z: &O::T) -> Result<O::T> {
    cfg.validate()?;
    let p = Path::root(prefix);
    let c = cfg.channels;
    let h = nn::conv(o, &p.sub("conv_in"), z, cfg.latent_channels, c, 3, 1, 1)?;
    let mut h = o.silu(&h)?;
    for lvl in 0..cfg.levels() {
        let lp = p.sub("up_blocks").sub(lvl);
        for b in 0..cfg.blocks {
            let bp = lp.sub("blocks").sub(b);
            let r = nn::conv(o, &bp.sub("conv1"), &h, c, c, 3, 1, 1)?;
            let r = o.silu(&r)?;
            let r = nn::conv(o, &bp.sub("conv2"), &r, c, c, 3, 1, 1)?;
            let s = o.add(&h, &r)?;
            h = o.silu(&s)?;
        }
        let u = o.upsample_nearest2x(&h)?;
        let u = nn::conv(o, &lp.sub("conv"), &u, c, c, 3, 1, 1)?;
        h = o.silu(&u)?;
    }
    nn::conv(o, &p.sub("conv_out"), &h, c, cfg.out_channels, 3, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ModelConfig;

    #[test]
    fn the_default_costs_a_few_percent_of_the_full_decoder() {
        let mut m = ModelConfig::tiny(100);
        m.vae.block_out_channels = vec![32, 64, 64];
        m.vae.norm_num_groups = 32;
        let full = m.decoder_graph(1, 8, 8).unwrap().macs() as f64;
        let tiny = TinyDecoderConfig::for_vae(&m.vae)
            .graph(1, 8, 8)
            .unwrap()
            .macs() as f64;
        let share = tiny / full;
        assert!(
            share < 0.05,
            "tiny decoder is {:.1}% of the full one",
            100.0 * share
        );
        let g = TinyDecoderConfig::for_vae(&m.vae).graph(2, 8, 8).unwrap();
        assert_eq!(g.nodes[g.outputs[0]].shape, vec![2, 3, 32, 32]);
    }
}
