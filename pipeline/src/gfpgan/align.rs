//! Face alignment from five known points: the FFHQ 512 five-point template of facexlib's
//! `FaceRestoreHelper` (scaled to the face size) and the similarity fit it uses,
//! `cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)` (called through OpenCV so the
//! robust fit, including its fixed random sampling and refinement, is the same computation).

use super::warp::Affine;
use crate::error::ResultExt;
use crate::{PipelineError, Result};
use opencv::core::{Mat, Point2f, Vector};
use opencv::prelude::*;

/// Five face points in frame pixels: left eye, right eye, nose tip, left and right mouth corner
/// (image left/right, the order of RetinaFace / MTCNN and of the cached precompute).
pub type FacePoints = [[f64; 2]; 5];

/// The FFHQ template for 512 x 512 faces.
pub const FFHQ_TEMPLATE_512: FacePoints = [
    [192.98138, 239.94708],
    [318.90277, 240.1936],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
];

/// The template for a square face of side `face_size` (facexlib scales it by `face_size / 512`).
pub fn template(face_size: i64) -> FacePoints {
    let s = face_size as f64 / 512.0;
    FFHQ_TEMPLATE_512.map(|[x, y]| [x * s, y * s])
}

fn points2f(p: &FacePoints) -> Vector<Point2f> {
    p.iter().map(|[x, y]| Point2f::new(*x as f32, *y as f32)).collect()
}

/// The frame -> aligned-face similarity for `points` (what `align_warp_face` computes).
pub fn fit_affine(points: &FacePoints, face_size: i64) -> Result<Affine> {
    if points.iter().flatten().any(|v| !v.is_finite()) {
        return Err(PipelineError::InvalidOption { field: "face points", reason: "non-finite coordinate".into() });
    }
    let mut inliers = Mat::default();
    let m = opencv::calib3d::estimate_affine_partial_2d(
        &points2f(points),
        &points2f(&template(face_size)),
        &mut inliers,
        opencv::calib3d::LMEDS,
        3.0,
        2000,
        0.99,
        10,
    )
    .ctx("estimateAffinePartial2D")?;
    if m.rows() != 2 || m.cols() != 3 {
        return Err(PipelineError::InvalidOption {
            field: "face points",
            reason: "degenerate points: no similarity fits them".into(),
        });
    }
    let mut out = [[0.0; 3]; 2];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = *m.at_2d::<f64>(r as i32, c as i32).ctx("affine matrix")?;
        }
    }
    Ok(Affine(out))
}

/// The five points of the 68-point iBUG / dlib layout (image left/right, as [`FacePoints`]):
/// left eye = mean of the eye contour 36..=41, right eye = mean of 42..=47, nose tip = 30,
/// mouth corners = the outer lip corners 48 and 54. These are the points the five-point
/// detectors (RetinaFace, MTCNN) mark, which the FFHQ template was laid out for.
pub fn points_from_68(landmarks: &[[f32; 2]]) -> Result<FacePoints> {
    if landmarks.len() != 68 {
        return Err(PipelineError::Internal(format!("expected 68 landmarks, got {}", landmarks.len())));
    }
    let mean = |range: std::ops::RangeInclusive<usize>| {
        let n = range.clone().count() as f64;
        let (sx, sy) = range.fold((0.0, 0.0), |(x, y), i| (x + landmarks[i][0] as f64, y + landmarks[i][1] as f64));
        [sx / n, sy / n]
    };
    let at = |i: usize| [landmarks[i][0] as f64, landmarks[i][1] as f64];
    Ok([mean(36..=41), mean(42..=47), at(30), at(48), at(54)])
}
