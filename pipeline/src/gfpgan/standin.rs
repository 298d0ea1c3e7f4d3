//! A stand-in `GFPGANv1.4.pth` for tests and timing on machines without the official file: a
//! `torch.save` pickle whose `params_ema` holds every key and shape of [`expected_layout`] for a
//! given architecture (the official one, 349 MB, or reduced widths), filled with seeded random
//! values. The loader accepts it like the official file; a pass costs the same whatever the
//! weights hold; the faces it "restores" are noise.
//!
//! Values are scaled so activations stay finite: weights uniform in +-1/sqrt(fan_in) (the fan-in
//! of a modulated conv is its input channels x kernel area), style-modulation biases near 1 (so
//! the styles do not vanish), other biases and the per-layer noise strengths small, stored noise
//! maps and the constant input standard normal. Draws come from the crate's SplitMix64 stream,
//! so a seed gives the same file on every machine, independent of torch's global generator.
//!
//! [`write_parse_stand_in`] does the same for the optional `parsing_parsenet.pth` (a plain state
//! dict): conv weights as above, BatchNorm scales and running variances near 1, shifts and
//! running means small, the `num_batches_tracked` counters 0.

use super::config::GfpganConfig;
use super::noise::{normals, SplitMix64};
use super::parse::{expected_parse_layout, ParseNetConfig};
use super::weights::expected_layout;
use crate::{PipelineError, Result};
use std::path::Path;
use tch::Tensor;

/// What [`write_stand_in`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandIn {
    pub tensors: usize,
    pub values: u64,
    pub bytes: u64,
}

/// Uniform in [-1, 1), 24 bits.
fn unit(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Random values for the variable `name` of `shape` (see the module docs).
fn stand_in_value(name: &str, shape: &[i64], rng: &mut SplitMix64) -> Tensor {
    let numel = shape.iter().product::<i64>().max(0) as usize;
    if name.contains("noises.") || name.contains("constant_input") {
        return Tensor::from_slice(&normals(rng, numel)).view(shape);
    }
    let (centre, spread) = if name.ends_with("modulation.bias") {
        (1.0, 0.1)
    } else if name.ends_with("bias") || shape.len() <= 1 {
        (0.0, 0.05)
    } else {
        let fan_in: i64 = if shape.len() == 5 { shape[2..].iter().product() } else { shape[1..].iter().product() };
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    };
    let values: Vec<f32> = (0..numel).map(|_| centre + spread * unit(rng)).collect();
    Tensor::from_slice(&values).view(shape)
}

/// Random values for the ParseNet variable `name` of `shape` (see the module docs).
fn parse_stand_in_value(name: &str, shape: &[i64], rng: &mut SplitMix64) -> Tensor {
    if name.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, (tch::Kind::Int64, tch::Device::Cpu));
    }
    let numel = shape.iter().product::<i64>().max(0) as usize;
    let (centre, spread) = if name.ends_with("norm.norm.weight") || name.ends_with("running_var") {
        (1.0, 0.1)
    } else if shape.len() <= 1 {
        (0.0, 0.05)
    } else {
        (0.0, 1.0 / (shape[1..].iter().product::<i64>().max(1) as f32).sqrt())
    };
    let values: Vec<f32> = (0..numel).map(|_| centre + spread * unit(rng)).collect();
    Tensor::from_slice(&values).view(shape)
}

/// Write a stand-in checkpoint of architecture `config` to `path`, values drawn from `seed`.
/// The file is written under a temporary name and renamed, so an interrupted run leaves no
/// half-written checkpoint.
pub fn write_stand_in(path: &Path, config: &GfpganConfig, seed: u64) -> Result<StandIn> {
    let rng = SplitMix64(seed ^ 0x5354_414E_4449_4E00); // "STANDIN" tag
    write_pickle(path, "params_ema", &draw(expected_layout(config)?, rng, stand_in_value))
}

/// Write a stand-in `parsing_parsenet.pth` of architecture `config` (a plain state dict, like the
/// official file) to `path`, values drawn from `seed`, written like [`write_stand_in`].
pub fn write_parse_stand_in(path: &Path, config: &ParseNetConfig, seed: u64) -> Result<StandIn> {
    let rng = SplitMix64(seed ^ 0x5041_5253_454E_4554); // "PARSENET" tag
    write_pickle(path, "", &draw(expected_parse_layout(config)?, rng, parse_stand_in_value))
}

/// One value per `(name, shape)` of `layout`, in order, drawn by `value` from `rng`.
fn draw(
    layout: Vec<(String, Vec<i64>)>,
    mut rng: SplitMix64,
    value: fn(&str, &[i64], &mut SplitMix64) -> Tensor,
) -> Vec<(String, Tensor)> {
    layout
        .into_iter()
        .map(|(name, shape)| {
            let t = value(&name, &shape, &mut rng);
            (name, t)
        })
        .collect()
}

/// `tensors` as a legacy `torch.save` pickle under `top` (empty: a plain dict), via a temporary
/// name.
fn write_pickle(path: &Path, top: &str, tensors: &[(String, Tensor)]) -> Result<StandIn> {
    let fail = |e: &dyn std::fmt::Display| PipelineError::Checkpoint {
        file: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    };
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    crate::torch_pickle::save_legacy(&partial, top, &named)?;
    std::fs::rename(&partial, path).map_err(|e| fail(&e))?;
    let bytes = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
    let values = tensors.iter().map(|(_, t)| t.numel() as u64).sum();
    Ok(StandIn { tensors: tensors.len(), values, bytes })
}
