//! `keypoint_transformation` of `src/facerender/modules/make_animation.py`: head-pose bin logits
//! -> degrees (`softmax . arange(bins) * 3 - 99`), optional yaw/pitch/roll overrides, the rotation
//! `Rx(pitch) Ry(yaw) Rz(roll)` (radians with the reference's 3.14), and
//! `kp = R kp_canonical + (0, t_y, 0) + exp`.

use super::mapping::HeadPoseLogits;
use tch::Tensor;

/// The reference converts degrees to radians with 3.14, not pi; kept for parity.
#[allow(clippy::approx_constant)]
const REFERENCE_PI: f64 = 3.14;

/// Degrees per bin and offset of the head-pose bins.
const DEG_PER_BIN: f64 = 3.0;
const DEG_OFFSET: f64 = 99.0;

/// Per-frame angle overrides in degrees (the reference's `yaw_c_seq` / `pitch_c_seq` / `roll_c_seq`).
#[derive(Debug, Default)]
pub struct PoseOverride {
    /// (B,) each; `None` keeps the predicted angle.
    pub yaw: Option<Tensor>,
    pub pitch: Option<Tensor>,
    pub roll: Option<Tensor>,
}

impl PoseOverride {
    pub fn narrow(&self, start: i64, len: i64) -> Self {
        let n = |t: &Option<Tensor>| t.as_ref().map(|t| t.narrow(0, start, len));
        Self { yaw: n(&self.yaw), pitch: n(&self.pitch), roll: n(&self.roll) }
    }
}

/// `headpose_pred_to_degree`: (B, bins) logits -> (B,) degrees.
pub fn logits_to_degrees(logits: &Tensor) -> Tensor {
    let bins = logits.size()[1];
    let idx = Tensor::arange(bins, (logits.kind(), logits.device()));
    (logits.softmax(1, logits.kind()) * idx).sum_dim_intlist([1i64].as_slice(), false, logits.kind()) * DEG_PER_BIN
        - DEG_OFFSET
}

/// `get_rotation_matrix(yaw, pitch, roll)` in degrees, (B,) each -> (B, 3, 3).
pub fn rotation_matrix(yaw: &Tensor, pitch: &Tensor, roll: &Tensor) -> Tensor {
    let rad = |t: &Tensor| (t / 180.0 * REFERENCE_PI).unsqueeze(1);
    let (yaw, pitch, roll) = (rad(yaw), rad(pitch), rad(roll));
    let mat = |entries: [Tensor; 9]| {
        let b = entries[0].size()[0];
        Tensor::cat(&entries, 1).view([b, 3, 3])
    };
    let (zeros, ones) = (pitch.zeros_like(), pitch.ones_like());
    let (cp, sp) = (pitch.cos(), pitch.sin());
    let pitch_mat = mat([
        ones.shallow_clone(),
        zeros.shallow_clone(),
        zeros.shallow_clone(),
        zeros.shallow_clone(),
        cp.shallow_clone(),
        -sp.shallow_clone(),
        zeros.shallow_clone(),
        sp,
        cp,
    ]);
    let (cy, sy) = (yaw.cos(), yaw.sin());
    let yaw_mat = mat([
        cy.shallow_clone(),
        zeros.shallow_clone(),
        sy.shallow_clone(),
        zeros.shallow_clone(),
        ones.shallow_clone(),
        zeros.shallow_clone(),
        -sy,
        zeros.shallow_clone(),
        cy,
    ]);
    let (cr, sr) = (roll.cos(), roll.sin());
    let roll_mat = mat([
        cr.shallow_clone(),
        -sr.shallow_clone(),
        zeros.shallow_clone(),
        sr,
        cr,
        zeros.shallow_clone(),
        zeros.shallow_clone(),
        zeros,
        ones,
    ]);
    Tensor::einsum("bij,bjk,bkm->bim", &[pitch_mat, yaw_mat, roll_mat], None::<i64>)
}

/// Intermediate values of one transformation (for parity checks and callers that cache poses).
#[derive(Debug)]
pub struct TransformedKeypoints {
    /// (B,) degrees actually used (after overrides).
    pub yaw: Tensor,
    pub pitch: Tensor,
    pub roll: Tensor,
    /// (B, 3, 3)
    pub rotation: Tensor,
    /// (B, num_kp, 3)
    pub value: Tensor,
}

/// `keypoint_transformation(kp_canonical, he)`; `kp_canonical` (B or 1, K, 3) is broadcast over
/// the batch of `he`.
pub fn transform_keypoints(
    kp_canonical: &Tensor,
    he: &HeadPoseLogits,
    overrides: &PoseOverride,
) -> TransformedKeypoints {
    let pick = |o: &Option<Tensor>, logits: &Tensor| match o {
        Some(deg) => deg.to_kind(logits.kind()),
        None => logits_to_degrees(logits),
    };
    let yaw = pick(&overrides.yaw, &he.yaw);
    let pitch = pick(&overrides.pitch, &he.pitch);
    let roll = pick(&overrides.roll, &he.roll);
    let rotation = rotation_matrix(&yaw, &pitch, &roll);
    let b = rotation.size()[0];
    let k = kp_canonical.size()[1];
    let kp = kp_canonical.expand([b, k, 3], false);
    let rotated = Tensor::einsum("bmp,bkp->bkm", &[&rotation, &kp], None::<i64>);
    // Only the y translation is used (the reference zeroes t[:, 0] and t[:, 2] in place).
    let keep_y = Tensor::from_slice(&[0.0f32, 1.0, 0.0]).to_kind(he.t.kind()).to_device(he.t.device());
    let t = (&he.t * keep_y).unsqueeze(1);
    let exp = he.exp.view([b, -1, 3]);
    let value = rotated + t + exp;
    TransformedKeypoints { yaw, pitch, roll, rotation, value }
}
