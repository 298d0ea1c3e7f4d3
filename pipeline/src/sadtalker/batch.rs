//! The audio-to-coefficient input batch (`get_data`): per-frame mel windows, the reference
//! coefficients repeated per frame (optionally with a reference eye-blink sequence), and the
//! blink ratio (seeded, or zero in still mode / with a blink reference).

use super::mel::MelFeatures;
use super::rng::{blink_rng, random_blink_ratio};
use crate::error::ResultExt;
use crate::{PipelineError, Result};
use tch::{Device, Tensor};

/// Width of SadTalker's motion coefficients: 64 expression + 6 pose (3 angles, 3 translations).
pub const COEFF_DIM: usize = 70;
/// Expression coefficients at the front of a motion row.
pub const EXP_DIM: usize = 64;
/// Pose coefficients at the end of a motion row.
pub const POSE_DIM: usize = 6;

/// Options of [`CoeffBatch::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOptions<'a> {
    /// Seed of the blink sequence (Python `random.seed` compatible).
    pub seed: u64,
    /// Still mode: no blinks (ratio zero).
    pub still: bool,
    /// Expression rows of a reference video (`ref_eyeblink`): replaces the first 64 reference
    /// values frame by frame (repeated cyclically when shorter) and disables the random blinks.
    pub ref_eyeblink: Option<&'a [[f32; EXP_DIM]]>,
}

/// Tensors the audio2exp / audio2pose networks consume for one clip (batch size 1).
#[derive(Debug)]
pub struct CoeffBatch {
    pub num_frames: usize,
    /// `(1, T, 1, 80, 16)` float32.
    pub indiv_mels: Tensor,
    /// `(1, T, 70)` float32: the source coefficients per frame.
    pub ref_coeff: Tensor,
    /// `(1, T, 1)` float32 eye-closure ratio.
    pub ratio: Tensor,
}

impl CoeffBatch {
    /// Build the batch from mel features and the first 70 source coefficients
    /// (`coeff_3dmm[:1, :70]` of the avatar).
    pub fn new(features: &MelFeatures, source_coeff: &[f32], opts: BatchOptions<'_>, device: Device) -> Result<Self> {
        let t = features.num_frames;
        let source = source_coeff.get(..COEFF_DIM).ok_or_else(|| {
            PipelineError::Internal(format!("source coefficients have {} values, need {COEFF_DIM}", source_coeff.len()))
        })?;
        let mut ref_rows: Vec<f32> = Vec::with_capacity(t * COEFF_DIM);
        for i in 0..t {
            ref_rows.extend_from_slice(source);
            if let Some(blink) = opts.ref_eyeblink.filter(|b| !b.is_empty()) {
                let row = &blink[i % blink.len()];
                let start = i * COEFF_DIM;
                ref_rows[start..start + EXP_DIM].copy_from_slice(row);
            }
        }
        let ratio = if opts.still || opts.ref_eyeblink.is_some() {
            vec![0.0f32; t]
        } else {
            random_blink_ratio(t, &mut blink_rng(opts.seed))
        };
        let ti = t as i64;
        Ok(Self {
            num_frames: t,
            indiv_mels: features.windows_tensor(device),
            ref_coeff: Tensor::f_from_slice(&ref_rows)
                .ctx("ref coeff")?
                .reshape([1, ti, COEFF_DIM as i64])
                .to_device(device),
            ratio: Tensor::f_from_slice(&ratio).ctx("blink ratio")?.reshape([1, ti, 1]).to_device(device),
        })
    }
}
