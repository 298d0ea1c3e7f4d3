//! The renderer's per-avatar state (DESIGN.md `source_state:` cache entry): canonical keypoints,
//! the source head pose (mapping-net outputs of the source window), the transformed source
//! keypoints and the generator's encoded source feature volume, with a versioned byte format.

use super::mapping::HeadPoseLogits;
use crate::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Format tag of [`SourceState::to_bytes`].
const MAGIC: &str = "vipavatar.sadtalker.source_state";
const VERSION: u32 = 1;

/// Everything the renderer derives from the source image and its coefficients alone.
#[derive(Debug)]
pub struct SourceState {
    /// Side of the source image the state was computed at (256 or 512).
    pub image_size: i64,
    /// Width of the source window (70 crop/resize, 73 full).
    pub coeff_nc: i64,
    /// (1, K, 3)
    pub kp_canonical: Tensor,
    /// Mapping outputs of the source window, (1, ...) each.
    pub source_pose: HeadPoseLogits,
    /// (1, K, 3)
    pub kp_source: Tensor,
    /// (1, C, D, H, W) generator source feature volume.
    pub feature: Tensor,
}

#[derive(Serialize, Deserialize)]
struct StoredTensor {
    name: String,
    shape: Vec<i64>,
    values: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    magic: String,
    version: u32,
    image_size: i64,
    coeff_nc: i64,
    tensors: Vec<StoredTensor>,
}

fn corrupt(reason: impl Into<String>) -> PipelineError {
    PipelineError::Internal(format!("cached renderer source state is unusable: {}", reason.into()))
}

const NAMES: [&str; 8] = ["kp_canonical", "yaw", "pitch", "roll", "t", "exp", "kp_source", "feature"];

impl SourceState {
    fn tensors(&self) -> [&Tensor; 8] {
        let p = &self.source_pose;
        [&self.kp_canonical, &p.yaw, &p.pitch, &p.roll, &p.t, &p.exp, &self.kp_source, &self.feature]
    }

    /// Serialise (float32 values, CPU order) for the cache.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(NAMES.len());
        for (name, t) in NAMES.iter().zip(self.tensors()) {
            let cpu = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
            let values = Vec::<f32>::try_from(cpu.flatten(0, -1)).map_err(|e| PipelineError::Torch {
                context: format!("serialising source state `{name}`"),
                source: e,
            })?;
            tensors.push(StoredTensor { name: name.to_string(), shape: cpu.size(), values });
        }
        let stored = Stored {
            magic: MAGIC.into(),
            version: VERSION,
            image_size: self.image_size,
            coeff_nc: self.coeff_nc,
            tensors,
        };
        bincode::serialize(&stored).map_err(|e| PipelineError::Internal(format!("serialising source state: {e}")))
    }

    /// Parse bytes written by [`SourceState::to_bytes`] onto `device`; every tensor is checked
    /// for presence, a consistent shape and finite values.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Self> {
        let stored: Stored = bincode::deserialize(bytes).map_err(|e| corrupt(format!("not decodable ({e})")))?;
        if stored.magic != MAGIC || stored.version != VERSION {
            return Err(corrupt(format!("format {} v{} is not {MAGIC} v{VERSION}", stored.magic, stored.version)));
        }
        let mut map = std::collections::HashMap::new();
        for t in stored.tensors {
            let numel = t.shape.iter().try_fold(1i64, |acc, &d| if d >= 0 { acc.checked_mul(d) } else { None });
            if numel != Some(t.values.len() as i64) {
                return Err(corrupt(format!("`{}` has {} values for shape {:?}", t.name, t.values.len(), t.shape)));
            }
            if t.values.iter().any(|v| !v.is_finite()) {
                return Err(corrupt(format!("`{}` holds non-finite values", t.name)));
            }
            let tensor = Tensor::from_slice(&t.values).reshape(t.shape.as_slice()).to_device(device);
            map.insert(t.name, tensor);
        }
        let mut take = |name: &str| map.remove(name).ok_or_else(|| corrupt(format!("`{name}` is missing")));
        let state = Self {
            image_size: stored.image_size,
            coeff_nc: stored.coeff_nc,
            kp_canonical: take("kp_canonical")?,
            source_pose: HeadPoseLogits {
                yaw: take("yaw")?,
                pitch: take("pitch")?,
                roll: take("roll")?,
                t: take("t")?,
                exp: take("exp")?,
            },
            kp_source: take("kp_source")?,
            feature: take("feature")?,
        };
        state.check()?;
        Ok(state)
    }

    /// Shape consistency of the parts.
    pub fn check(&self) -> Result<()> {
        let kp = self.kp_canonical.size();
        let ok = kp.len() == 3
            && kp[0] == 1
            && kp[2] == 3
            && self.kp_source.size() == kp
            && self.feature.dim() == 5
            && self.feature.size()[0] == 1
            && self.source_pose.exp.size() == [1, kp[1] * 3]
            && self.source_pose.t.size() == [1, 3];
        if ok {
            Ok(())
        } else {
            Err(corrupt(format!(
                "inconsistent shapes (kp {:?}, kp_source {:?}, feature {:?})",
                kp,
                self.kp_source.size(),
                self.feature.size()
            )))
        }
    }

    /// Bytes the feature volume takes (the bulk of the state).
    pub fn feature_bytes(&self) -> usize {
        self.feature.numel() * 4
    }
}
