//! `MappingNet` (`src/facerender/modules/mapping.py`): 27-frame coefficient windows
//! (B, coeff_nc, 27) -> head-pose bin logits (yaw, pitch, roll), translation and keypoint
//! expression offsets. Loads from the official torch pickles (`mapping_00229-model.pth.tar`,
//! `mapping_00109-model.pth.tar`, dict key `mapping`) or from a safetensors prefix (fixtures).

use super::blocks::{leaky_relu, Conv, ConvOpts};
use super::config::MappingConfig;
use crate::sadtalker::layers::Linear;
use crate::{PipelineError, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::nn::VarStore;
use tch::Tensor;

/// The dict key of the mapping state dict in the official pickles (and the fixture's prefix).
pub const PREFIX: &str = "mapping";

/// Raw outputs of the mapping network for a batch of windows.
#[derive(Debug)]
pub struct HeadPoseLogits {
    /// (B, num_bins) each.
    pub yaw: Tensor,
    pub pitch: Tensor,
    pub roll: Tensor,
    /// (B, 3), before `keypoint_transformation` drops the x and z components.
    pub t: Tensor,
    /// (B, 3 * num_kp).
    pub exp: Tensor,
}

impl HeadPoseLogits {
    /// Rows `start..start + len` of every output.
    pub fn narrow(&self, start: i64, len: i64) -> Self {
        let n = |t: &Tensor| t.narrow(0, start, len);
        Self { yaw: n(&self.yaw), pitch: n(&self.pitch), roll: n(&self.roll), t: n(&self.t), exp: n(&self.exp) }
    }
}

#[derive(Debug)]
pub struct MappingNet {
    first: Conv,
    encoders: Vec<Conv>,
    fc_roll: Linear,
    fc_pitch: Linear,
    fc_yaw: Linear,
    fc_t: Linear,
    fc_exp: Linear,
}

impl MappingNet {
    pub fn new(p: &tch::nn::Path, c: &MappingConfig) -> Self {
        let d = c.descriptor_nc;
        Self {
            first: Conv::new(p / "first" / "0", c.coeff_nc, d, &[7], ConvOpts::pad(0)),
            encoders: (0..c.layer)
                .map(|i| Conv::new(p / format!("encoder{i}") / "1", d, d, &[3], ConvOpts::pad(0).dilated(3)))
                .collect(),
            fc_roll: Linear::new(p / "fc_roll", d, c.num_bins),
            fc_pitch: Linear::new(p / "fc_pitch", d, c.num_bins),
            fc_yaw: Linear::new(p / "fc_yaw", d, c.num_bins),
            fc_t: Linear::new(p / "fc_t", d, 3),
            fc_exp: Linear::new(p / "fc_exp", d, 3 * c.num_kp),
        }
    }

    /// `windows`: (B, coeff_nc, 27).
    pub fn forward(&self, windows: &Tensor) -> HeadPoseLogits {
        let mut out = self.first.forward(windows);
        for enc in &self.encoders {
            let len = out.size()[2];
            out = enc.forward(&leaky_relu(&out, 0.1)) + out.narrow(2, 3, len - 6);
        }
        let out = out.adaptive_avg_pool1d([1]);
        let out = out.view([out.size()[0], -1]);
        HeadPoseLogits {
            yaw: self.fc_yaw.forward(&out),
            pitch: self.fc_pitch.forward(&out),
            roll: self.fc_roll.forward(&out),
            t: self.fc_t.forward(&out),
            exp: self.fc_exp.forward(&out),
        }
    }
}

fn checkpoint_err(path: &Path, reason: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint { file: path.display().to_string(), reason: reason.into() }
}

/// Load `checkpoint['mapping']` of a `torch.save` file into `vs` (variables named like the
/// `MappingNet` state dict): every variable must be present with its shape, and no other
/// `mapping.*` key may exist. Other entries (optimizer, discriminator, epoch) are ignored.
pub fn load_mapping_pickle(vs: &VarStore, path: &Path) -> Result<()> {
    let tensors = crate::torch_pickle::load(path)?;
    let dotted = format!("{PREFIX}.");
    let stored: HashMap<String, Tensor> =
        tensors.into_iter().filter_map(|(k, t)| k.strip_prefix(&dotted).map(|s| (s.to_string(), t))).collect();
    if stored.is_empty() {
        return Err(checkpoint_err(path, "no `mapping` state dict in this torch pickle"));
    }
    let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut problems = Vec::new();
    for (name, var) in &variables {
        match stored.get(name) {
            None => problems.push(format!("missing key `mapping.{name}` (expected shape {:?})", var.size())),
            Some(t) if t.size() != var.size() => {
                problems.push(format!("key `mapping.{name}` has shape {:?}, expected {:?}", t.size(), var.size()))
            }
            Some(t) if !t.is_floating_point() => problems.push(format!("key `mapping.{name}` is not a float tensor")),
            Some(_) => {}
        }
    }
    for name in stored.keys() {
        if !variables.contains_key(name) {
            problems.push(format!("unexpected key `mapping.{name}`"));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        let more = problems.len().saturating_sub(6);
        let tail = if more > 0 { format!(" (and {more} more problems)") } else { String::new() };
        return Err(checkpoint_err(path, format!("{}{tail}", problems[..problems.len().min(6)].join("; "))));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &variables {
            let src = stored.get(name).ok_or_else(|| checkpoint_err(path, format!("missing key `mapping.{name}`")))?;
            let converted = src
                .f_to_kind(var.kind())
                .and_then(|t| t.f_to_device(var.device()))
                .map_err(|e| checkpoint_err(path, format!("key `mapping.{name}`: {e}")))?;
            var.shallow_clone()
                .f_copy_(&converted)
                .map_err(|e| checkpoint_err(path, format!("key `mapping.{name}`: {e}")))?;
        }
        Ok(())
    })
}
