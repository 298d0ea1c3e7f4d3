//! The coefficient windows the renderer consumes (`get_facerender_data` in
//! `src/generate_facerender_batch.py`): the source window (the source coefficients repeated 27
//! times), one 27-frame window per output frame (radius 13, indices clamped at the clip edges),
//! `expression_scale`, `still_mode`, the crop parameters appended in `full` mode, and the
//! camera paths of `--input_yaw/pitch/roll` (`gen_camera_pose`).
//!
//! Unlike the reference, windows are kept frame-major (T, nc, 27); [`reference_batch_layout`]
//! reproduces the reference's padding to a multiple of `batch_size` and reshape, for parity tests.

use super::keypoints::PoseOverride;
use crate::{PipelineError, Result};
use tch::{Device, Kind, Tensor};

/// Half width of a window: frames f-13 ..= f+13.
pub const SEMANTIC_RADIUS: i64 = 13;
/// Coefficients per frame produced by audio2coeff: expression 64 + pose 6.
pub const MOTION_DIM: i64 = 70;
/// Expression coefficients (scaled by `expression_scale`).
pub const EXP_DIM: i64 = 64;
/// Source coefficients in `full` mode: motion 70 + crop parameters (s, tx, ty).
pub const FULL_DIM: i64 = 73;

fn bad(field: &'static str, reason: impl Into<String>) -> PipelineError {
    PipelineError::InvalidOption { field, reason: reason.into() }
}

/// Per-request window options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowOptions {
    /// Multiplier of the 64 expression coefficients.
    pub expression_scale: f32,
    /// Keep the source pose (columns 64..) in every frame.
    pub still_mode: bool,
    /// `preprocess == full`: 73-dim windows with the source crop parameters.
    pub full: bool,
    /// Camera paths in degrees (`--input_yaw` etc.): one value = constant, several = piecewise
    /// linear over the clip.
    pub yaw: Option<Vec<f32>>,
    pub pitch: Option<Vec<f32>>,
    pub roll: Option<Vec<f32>>,
}

impl WindowOptions {
    pub fn new(expression_scale: f32) -> Self {
        Self { expression_scale, ..Self::default() }
    }

    /// Window width: 73 in full mode, else 70.
    pub fn coeff_nc(&self) -> i64 {
        if self.full {
            FULL_DIM
        } else {
            MOTION_DIM
        }
    }
}

/// Everything the renderer needs from the motion side for one clip.
#[derive(Debug)]
pub struct DrivingWindows {
    /// (1, nc, 27)
    pub source: Tensor,
    /// (T, nc, 27), frame-major.
    pub targets: Tensor,
    /// Per-frame angle overrides, (T,) each.
    pub overrides: PoseOverride,
}

impl DrivingWindows {
    /// Build the windows from audio2coeff output `coeffs` (T, >= 70) and the source's 3DMM
    /// coefficients `source_coeff` (>= 70 values, >= 73 in full mode).
    pub fn build(coeffs: &Tensor, source_coeff: &[f32], opts: &WindowOptions) -> Result<Self> {
        let driving = driving_coeffs(coeffs, source_coeff, opts)?;
        let t = driving.size()[0];
        let path = |v: &Option<Vec<f32>>, field: &'static str| -> Result<Option<Tensor>> {
            v.as_ref().map(|deg| camera_pose(deg, t as usize, field).map(|p| Tensor::from_slice(&p))).transpose()
        };
        Ok(Self {
            source: source_window(source_coeff, opts.full)?.unsqueeze(0),
            targets: target_windows(&driving),
            overrides: PoseOverride {
                yaw: path(&opts.yaw, "input_yaw")?,
                pitch: path(&opts.pitch, "input_pitch")?,
                roll: path(&opts.roll, "input_roll")?,
            },
        })
    }

    pub fn num_frames(&self) -> i64 {
        self.targets.size()[0]
    }
}

/// `transform_semantic_1`: the first `nc` source coefficients repeated over the window -> (nc, 27).
pub fn source_window(source_coeff: &[f32], full: bool) -> Result<Tensor> {
    let nc = if full { FULL_DIM } else { MOTION_DIM } as usize;
    let values = source_coeff
        .get(..nc)
        .ok_or_else(|| bad("source_coeff", format!("{} values, at least {nc} are needed", source_coeff.len())))?;
    Ok(Tensor::from_slice(values).view([nc as i64, 1]).repeat([1, 2 * SEMANTIC_RADIUS + 1]))
}

/// The per-frame driving coefficients (T, nc): expression scaled, crop parameters appended in
/// full mode, pose (and crop) columns replaced by the source's in still mode.
pub fn driving_coeffs(coeffs: &Tensor, source_coeff: &[f32], opts: &WindowOptions) -> Result<Tensor> {
    let s = coeffs.size();
    if s.len() != 2 || s[1] < MOTION_DIM || s[0] < 1 {
        return Err(bad("coeffs", format!("shape {s:?}, expected (T >= 1, >= {MOTION_DIM})")));
    }
    if !opts.expression_scale.is_finite() {
        return Err(bad("expression_scale", "not a finite number"));
    }
    let nc = opts.coeff_nc();
    if (source_coeff.len() as i64) < nc {
        return Err(bad("source_coeff", format!("{} values, at least {nc} are needed", source_coeff.len())));
    }
    let t = s[0];
    let coeffs = coeffs.to_kind(Kind::Float).to_device(Device::Cpu);
    let exp = coeffs.narrow(1, 0, EXP_DIM) * opts.expression_scale as f64;
    let pose = coeffs.narrow(1, EXP_DIM, MOTION_DIM - EXP_DIM);
    let source = Tensor::from_slice(&source_coeff[..nc as usize]).view([1, nc]);
    let mut parts = vec![exp, pose];
    if opts.full {
        parts.push(source.narrow(1, MOTION_DIM, FULL_DIM - MOTION_DIM).expand([t, FULL_DIM - MOTION_DIM], true));
    }
    let mut driving = Tensor::cat(&parts, 1);
    if opts.still_mode {
        let rest = source.narrow(1, EXP_DIM, nc - EXP_DIM).expand([t, nc - EXP_DIM], true);
        driving = Tensor::cat(&[driving.narrow(1, 0, EXP_DIM), rest], 1);
    }
    Ok(driving.contiguous())
}

/// `transform_semantic_target` for every frame: (T, nc) -> (T, nc, 27) with clamped indices.
pub fn target_windows(driving: &Tensor) -> Tensor {
    let t = driving.size()[0];
    gather_windows(driving, 0, t, 0..t)
}

/// The windows of frames `frames` of a `total`-frame clip when `driving` (rows, nc) holds only
/// the clip's rows `first_row..first_row + rows`: (frames, nc, 27), the same values as those
/// frames of [`target_windows`] over the whole clip. The rows must cover every frame the windows
/// reach (13 each side, clamped at the clip edges).
pub fn target_windows_range(
    driving: &Tensor,
    first_row: usize,
    total: usize,
    frames: std::ops::Range<usize>,
) -> Result<Tensor> {
    let rows = driving.size().first().copied().unwrap_or(0) as usize;
    let radius = SEMANTIC_RADIUS as usize;
    let need = frames.start.saturating_sub(radius)..(frames.end + radius).min(total);
    if frames.is_empty() || frames.end > total || first_row > need.start || first_row + rows < need.end {
        return Err(PipelineError::Internal(format!(
            "windows of frames {frames:?} of {total} need rows {need:?}, got {first_row}..{}",
            first_row + rows
        )));
    }
    Ok(gather_windows(driving, first_row as i64, total as i64, frames.start as i64..frames.end as i64))
}

fn gather_windows(driving: &Tensor, first_row: i64, total: i64, frames: std::ops::Range<i64>) -> Tensor {
    let len = frames.end - frames.start;
    let offsets = Tensor::arange_start(-SEMANTIC_RADIUS, SEMANTIC_RADIUS + 1, (Kind::Int64, driving.device()));
    let frames = Tensor::arange_start(frames.start, frames.end, (Kind::Int64, driving.device()));
    let index = (frames.unsqueeze(1) + offsets.unsqueeze(0)).clamp(0, (total - 1).max(0)) - first_row;
    let gathered = driving.index_select(0, &index.flatten(0, -1)); // (len * 27, nc)
    gathered.view([len, 2 * SEMANTIC_RADIUS + 1, -1]).transpose(1, 2).contiguous()
}

/// `gen_camera_pose` without the batch padding: one angle per frame (float64 arithmetic as in
/// numpy, including `arange`'s `start + i * ((start + step) - start)` fill).
pub fn camera_pose(degrees: &[f32], frame_num: usize, field: &'static str) -> Result<Vec<f32>> {
    if degrees.is_empty() || degrees.iter().any(|d| !d.is_finite()) {
        return Err(bad(field, "needs one or more finite angles"));
    }
    if frame_num == 0 {
        return Ok(Vec::new());
    }
    if degrees.len() == 1 || frame_num == 1 {
        return Ok(vec![degrees[0]; frame_num]);
    }
    let d: Vec<f64> = degrees.iter().map(|&v| v as f64).collect();
    let total: f64 = d.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
    let per_frame = total / (frame_num - 1) as f64;
    let mut out: Vec<f64> = Vec::with_capacity(frame_num);
    for w in d.windows(2) {
        let (last, next) = (w[0], w[1]);
        if next == last {
            // The reference divides by zero here; a flat segment adds no frames.
            continue;
        }
        let step = per_frame * (next - last).abs() / (next - last);
        let len = ((next - last) / step).ceil().max(0.0) as usize;
        let delta = (last + step) - last;
        out.extend((0..len).map(|i| last + i as f64 * delta));
    }
    out.truncate(frame_num);
    let fill = out.last().copied().unwrap_or(d[0]);
    out.resize(frame_num, fill);
    Ok(out.into_iter().map(|v| v as f32).collect())
}

/// The reference's batch layout: pad `frames` (T, ...) with copies of its last row to a multiple
/// of `batch_size`, then reshape to (batch_size, -1, ...), so batch b holds consecutive frames.
pub fn reference_batch_layout(frames: &Tensor, batch_size: i64) -> Tensor {
    let t = frames.size()[0];
    let rem = t % batch_size;
    let padded = if rem != 0 {
        let last = frames.narrow(0, t - 1, 1);
        let reps: Vec<i64> =
            std::iter::once(batch_size - rem).chain(std::iter::repeat_n(1, frames.dim() - 1)).collect();
        Tensor::cat(&[frames.shallow_clone(), last.repeat(reps.as_slice())], 0)
    } else {
        frames.shallow_clone()
    };
    let mut shape = vec![batch_size, -1];
    shape.extend_from_slice(&frames.size()[1..]);
    padded.reshape(shape.as_slice())
}
