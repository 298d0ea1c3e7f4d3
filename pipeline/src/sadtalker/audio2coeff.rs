//! `Audio2Coeff.generate`: audio2exp + audio2pose, Savitzky-Golay pose smoothing and the optional
//! reference-pose offset, producing the (T, 70) motion coefficients `[exp 64, pose 6]` per frame.

use super::audio2exp::Audio2Exp;
use super::audio2pose::{draw_noise, Audio2Pose, PosePrediction};
use super::batch::{BatchOptions, CoeffBatch, COEFF_DIM, EXP_DIM, POSE_DIM};
use super::mel::MelFeatures;
use super::savgol::smooth_pose;
use crate::error::ResultExt;
use crate::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Per-request options of the audio-to-coefficient stage.
#[derive(Debug, Clone, Default)]
pub struct MotionOptions {
    /// Seed of every random draw (blinks and CVAE noise).
    pub seed: u64,
    /// Pose style class, 0..=45.
    pub pose_style: u32,
    /// No blinks.
    pub still: bool,
    /// Expression rows of a reference video driving the eyes (`--ref_eyeblink`).
    pub ref_eyeblink: Option<Vec<[f32; EXP_DIM]>>,
    /// Pose rows of a reference video (`--ref_pose`): their motion relative to their first row is
    /// added to the predicted pose.
    pub ref_pose: Option<Vec<[f32; POSE_DIM]>>,
}

/// Motion coefficients of a clip, frame-major (`values[t * 70 + k]`); the `motion:` cache value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionCoefficients {
    pub num_frames: usize,
    pub values: Vec<f32>,
}

impl MotionCoefficients {
    /// As a (T, 70) float32 tensor.
    pub fn to_tensor(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.values).reshape([self.num_frames as i64, COEFF_DIM as i64]).to_device(device)
    }

    /// Row `t`.
    pub fn frame(&self, t: usize) -> Option<&[f32]> {
        self.values.get(t * COEFF_DIM..(t + 1) * COEFF_DIM)
    }
}

/// Everything `generate` computes, for callers (and tests) that want the intermediate tensors.
#[derive(Debug)]
pub struct CoeffOutputs {
    /// (1, T, 64)
    pub exp: Tensor,
    pub pose: PosePrediction,
    /// (1, T, 6) after smoothing.
    pub pose_smoothed: Tensor,
    /// (T, 70) after the optional reference-pose offset.
    pub coeffs: Tensor,
}

/// The two audio networks together.
#[derive(Debug)]
pub struct Audio2Coeff {
    pub exp: Audio2Exp,
    pub pose: Audio2Pose,
}

impl Audio2Coeff {
    /// Load both networks from checkpoint files (the same official file holds both prefixes).
    pub fn from_checkpoints(exp_file: &Path, pose_file: &Path, device: Device) -> Result<Self> {
        Ok(Self {
            exp: Audio2Exp::from_checkpoint(exp_file, device)?,
            pose: Audio2Pose::from_checkpoint(pose_file, device)?,
        })
    }

    /// Mel features + source coefficients (first 70 used) -> motion coefficients.
    pub fn generate(
        &self,
        features: &MelFeatures,
        source_coeff: &[f32],
        opts: &MotionOptions,
    ) -> Result<MotionCoefficients> {
        let batch_opts =
            BatchOptions { seed: opts.seed, still: opts.still, ref_eyeblink: opts.ref_eyeblink.as_deref() };
        let batch = CoeffBatch::new(features, source_coeff, batch_opts, self.exp.var_store().device())?;
        let noise = draw_noise(batch.num_frames, opts.seed);
        let out = self.generate_batch(&batch, opts.pose_style, &noise, opts.ref_pose.as_deref())?;
        let values = Vec::<f32>::try_from(out.coeffs.to_device(Device::Cpu).reshape([-1])).ctx("coefficients")?;
        Ok(MotionCoefficients { num_frames: batch.num_frames, values })
    }

    /// The reference `generate` on a prepared batch with explicit CVAE noise.
    pub fn generate_batch(
        &self,
        batch: &CoeffBatch,
        pose_style: u32,
        noise: &Tensor,
        ref_pose: Option<&[[f32; POSE_DIM]]>,
    ) -> Result<CoeffOutputs> {
        let exp = self.exp.predict(batch);
        let pose = self.pose.predict(batch, pose_style, noise)?;
        let pose_smoothed = smooth_pose(&pose.pose)?;
        let exp_cpu = exp.to_device(Device::Cpu);
        let mut coeffs = Tensor::cat(&[&exp_cpu, &pose_smoothed.to_device(Device::Cpu)], -1).squeeze_dim(0);
        if let Some(reference) = ref_pose {
            coeffs = apply_reference_pose(&coeffs, reference)?;
        }
        Ok(CoeffOutputs { exp, pose, pose_smoothed, coeffs })
    }
}

/// `using_refpose`: add `ref[t % n] - ref[0]` to the pose columns 64..70 of (T, 70) coefficients.
pub fn apply_reference_pose(coeffs: &Tensor, reference: &[[f32; POSE_DIM]]) -> Result<Tensor> {
    let t = coeffs.size().first().copied().unwrap_or(0);
    if reference.is_empty() {
        return Err(PipelineError::InvalidOption {
            field: "ref_pose",
            reason: "the reference pose sequence is empty".into(),
        });
    }
    let first = reference[0];
    let offsets: Vec<f32> = (0..t as usize)
        .flat_map(|i| {
            let row = reference[i % reference.len()];
            (0..POSE_DIM).map(move |k| row[k] - first[k])
        })
        .collect();
    let offsets = Tensor::from_slice(&offsets).reshape([t, POSE_DIM as i64]).to_device(coeffs.device());
    let exp = coeffs.narrow(1, 0, EXP_DIM as i64);
    let pose = coeffs.narrow(1, EXP_DIM as i64, POSE_DIM as i64).to_kind(Kind::Float) + offsets;
    Ok(Tensor::cat(&[exp, pose], 1))
}
