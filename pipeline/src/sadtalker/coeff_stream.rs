//! `Audio2Coeff.generate` a stretch of frames at a time: the motion coefficients of a clip's
//! first frames are final before later audio went through the networks.
//!
//! Every frame depends only on audio near it: audio2exp is per frame, audio2pose decodes
//! independent 32-frame chunks (each with its own CVAE noise row, all drawn up front from the
//! seed), and the Savitzky-Golay smoothing of the pose looks 6 frames ahead (the edge fits use
//! the clip's first / last 13 frames). So the stream keeps what it computed and extends it as far
//! as the frames asked for need. Expression passes cover fixed 32-frame groups and pose passes
//! one chunk each, whatever is asked for, so the coefficients are the same for every chunking
//! (bit for bit), and equal [`Audio2Coeff::generate`] up to float rounding.

use super::audio2coeff::{Audio2Coeff, MotionCoefficients, MotionOptions};
use super::audio2pose::{draw_noise, noise_draws, window_rows};
use super::batch::{BatchOptions, CoeffBatch, COEFF_DIM, EXP_DIM, POSE_DIM};
use super::mel::MelFeatures;
use super::savgol::{pose_window, savgol_filter, POSE_ORDER, POSE_WINDOW};
use crate::error::ResultExt;
use crate::{PipelineError, Result};
use tch::{Device, Tensor};

/// Frames per audio2exp pass; passes start at multiples of it.
pub const EXP_GROUP: usize = 32;

/// The coefficients of one clip, computed in frame order as far as asked.
#[derive(Debug)]
pub struct CoeffStream {
    batch: CoeffBatch,
    noise: Tensor,
    pose_style: u32,
    total: usize,
    /// Source pose (the first reference row's pose columns).
    ref_pose: [f32; POSE_DIM],
    /// Expression rows computed so far, `EXP_DIM` values each.
    exp: Vec<f32>,
    /// Unsmoothed pose rows (source pose + predicted motion) computed so far.
    pose: Vec<[f32; POSE_DIM]>,
    /// Pose chunks decoded so far.
    windows: usize,
    /// Final rows (`[exp 64, smoothed pose 6]`), `COEFF_DIM` values each.
    coeffs: Vec<f32>,
}

impl CoeffStream {
    /// Prepare the whole clip's network inputs and random draws (cheap); no network runs yet.
    /// Reference blink or pose sequences are not supported here (the service never sends them).
    pub fn new(features: &MelFeatures, source_coeff: &[f32], opts: &MotionOptions, device: Device) -> Result<Self> {
        if opts.ref_eyeblink.is_some() || opts.ref_pose.is_some() {
            return Err(PipelineError::Internal("the coefficient stream takes no reference sequences".into()));
        }
        let batch_opts = BatchOptions { seed: opts.seed, still: opts.still, ref_eyeblink: None };
        let batch = CoeffBatch::new(features, source_coeff, batch_opts, device)?;
        let total = batch.num_frames;
        let mut ref_pose = [0.0f32; POSE_DIM];
        ref_pose.copy_from_slice(&source_coeff[EXP_DIM..COEFF_DIM]);
        Ok(Self {
            noise: draw_noise(total, opts.seed),
            batch,
            pose_style: opts.pose_style,
            total,
            ref_pose,
            exp: Vec::with_capacity(total * EXP_DIM),
            pose: Vec::with_capacity(total),
            windows: 0,
            coeffs: Vec::with_capacity(total * COEFF_DIM),
        })
    }

    /// Frames of the clip.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Frames whose coefficients are final.
    pub fn ready(&self) -> usize {
        self.coeffs.len() / COEFF_DIM
    }

    /// Frames whose expression rows, and whose unsmoothed pose rows, were computed so far (the
    /// lookahead beyond [`CoeffStream::ready`]).
    pub fn computed(&self) -> (usize, usize) {
        (self.exp.len() / EXP_DIM, self.pose.len())
    }

    /// Make the coefficients of frames `..upto` (clamped to the clip) final.
    pub fn advance(&mut self, model: &Audio2Coeff, upto: usize) -> Result<()> {
        let upto = upto.min(self.total);
        let done = self.ready();
        if upto <= done {
            return Ok(());
        }
        // Short clips (window under 13, or edge fits that overlap) are smoothed whole.
        let whole = self.total < 2 * POSE_WINDOW;
        let upto = if whole { self.total } else { upto };
        let half = POSE_WINDOW / 2;
        let pose_needed = if whole { self.total } else { (upto + half).max(POSE_WINDOW).min(self.total) };
        self.expressions(model, upto)?;
        self.poses(model, pose_needed)?;

        // Smooth a slice long enough for the window: rows done..upto are then interior to it, or
        // at a clip edge that is also the slice's edge, exactly as in the whole-clip smoothing.
        let window = pose_window(self.total);
        let lo = done.saturating_sub(half).min(pose_needed.saturating_sub(window));
        let mut smoothed = vec![[0.0f32; POSE_DIM]; upto - done];
        for ch in 0..POSE_DIM {
            let column: Vec<f32> = self.pose[lo..pose_needed].iter().map(|r| r[ch]).collect();
            let y = savgol_filter(&column, window, POSE_ORDER);
            for (row, v) in smoothed.iter_mut().zip(&y[done - lo..upto - lo]) {
                row[ch] = *v;
            }
        }
        for (t, pose) in (done..upto).zip(smoothed) {
            self.coeffs.extend_from_slice(&self.exp[t * EXP_DIM..(t + 1) * EXP_DIM]);
            self.coeffs.extend_from_slice(&pose);
        }
        Ok(())
    }

    /// Expression rows up to `upto`, whole [`EXP_GROUP`] passes at a time.
    fn expressions(&mut self, model: &Audio2Coeff, upto: usize) -> Result<()> {
        while self.exp.len() / EXP_DIM < upto {
            let start = self.exp.len() / EXP_DIM;
            let len = EXP_GROUP.min(self.total - start);
            let rows = model.exp.predict_frames(&self.batch, start, len).to_device(Device::Cpu);
            self.exp.extend(Vec::<f32>::try_from(rows.reshape([-1])).ctx("expression coefficients")?);
        }
        Ok(())
    }

    /// Unsmoothed pose rows up to `upto`, one decoded chunk at a time.
    fn poses(&mut self, model: &Audio2Coeff, upto: usize) -> Result<()> {
        if self.pose.is_empty() && self.total > 0 {
            self.pose.push(self.ref_pose); // frame 0: the source pose, zero motion
        }
        while self.pose.len() < upto && self.windows < noise_draws(self.total) {
            let motion = model.pose.predict_window(&self.batch, self.pose_style, &self.noise, self.windows)?;
            let values = Vec::<f32>::try_from(motion.to_device(Device::Cpu).reshape([-1])).ctx("pose motion")?;
            let rows = window_rows(self.total, self.windows);
            if rows.start != self.pose.len() || values.len() != rows.len() * POSE_DIM {
                return Err(PipelineError::Internal(format!("audio2pose chunk {} is out of order", self.windows)));
            }
            for m in values.chunks_exact(POSE_DIM) {
                let mut row = self.ref_pose;
                for (r, v) in row.iter_mut().zip(m) {
                    *r += v;
                }
                self.pose.push(row);
            }
            self.windows += 1;
        }
        Ok(())
    }

    /// Final rows `range` (each `COEFF_DIM` values); the range must be [`CoeffStream::ready`].
    pub fn rows(&self, range: std::ops::Range<usize>) -> &[f32] {
        &self.coeffs[range.start * COEFF_DIM..range.end * COEFF_DIM]
    }

    /// The whole clip's coefficients (computing what is left).
    pub fn finish(mut self, model: &Audio2Coeff) -> Result<MotionCoefficients> {
        self.advance(model, self.total)?;
        Ok(MotionCoefficients { num_frames: self.total, values: self.coeffs })
    }
}
