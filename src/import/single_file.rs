//! Single-file original Stable Diffusion checkpoints (CompVis/Stability layout:
//! `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).
use super::safetensors::SafeTensors;
use crate::arch::ModelConfig;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// (config, our name -> name in the file).
pub fn map(st: &SafeTensors) -> Result<(ModelConfig, BTreeMap<String, String>)> {
    let _ = st;
    Err(Error::Input(
        "single-file checkpoints are not supported yet; import a diffusers folder".into(),
    ))
}
