//! Coarse head pose (yaw, pitch, roll) from 68 landmarks: OpenCV `solvePnP` against a generic
//! six-point 3-D face template, for engines that have no 3DMM network.

use super::{HeadPose, Point};
use crate::error::{PipelineError, Result, ResultExt};
use opencv::core::{Mat, Point2d, Point3d, Vector, CV_64F};
use opencv::prelude::*;

/// Generic head model (arbitrary units, x right, y up, z towards the camera) for landmarks
/// 30 (nose tip), 8 (chin), 36 / 45 (outer eye corners), 48 / 54 (mouth corners).
const TEMPLATE: [(usize, [f64; 3]); 6] = [
    (30, [0.0, 0.0, 0.0]),
    (8, [0.0, -330.0, -65.0]),
    (36, [-225.0, 170.0, -135.0]),
    (45, [225.0, 170.0, -135.0]),
    (48, [-150.0, -150.0, -125.0]),
    (54, [150.0, -150.0, -125.0]),
];

/// Estimate the head pose from 68 landmarks of an image of `width` x `height`.
pub fn estimate(landmarks: &[Point], width: u32, height: u32) -> Result<HeadPose> {
    if landmarks.len() != 68 {
        return Err(PipelineError::Internal(format!("pose needs 68 landmarks, got {}", landmarks.len())));
    }
    // Image y points down; flip the template's y and z so both frames agree (camera looks along +z).
    let object: Vector<Point3d> = TEMPLATE.iter().map(|(_, p)| Point3d::new(p[0], -p[1], -p[2])).collect();
    let image: Vector<Point2d> =
        TEMPLATE.iter().map(|(i, _)| Point2d::new(landmarks[*i][0] as f64, landmarks[*i][1] as f64)).collect();
    let f = width.max(height) as f64;
    let camera = Mat::from_slice_2d(&[[f, 0.0, width as f64 / 2.0], [0.0, f, height as f64 / 2.0], [0.0, 0.0, 1.0]])
        .ctx("camera matrix")?;
    let dist = Mat::zeros(4, 1, CV_64F).ctx("dist")?.to_mat().ctx("dist")?;
    let mut rvec = Mat::default();
    let mut tvec = Mat::default();
    let ok = opencv::calib3d::solve_pnp(
        &object,
        &image,
        &camera,
        &dist,
        &mut rvec,
        &mut tvec,
        false,
        opencv::calib3d::SOLVEPNP_ITERATIVE,
    )
    .ctx("solvePnP")?;
    if !ok {
        return Err(PipelineError::Internal("solvePnP did not converge".into()));
    }
    let mut rot = Mat::default();
    let mut jac = Mat::default();
    opencv::calib3d::rodrigues(&rvec, &mut rot, &mut jac).ctx("Rodrigues")?;
    let r = |i: i32, j: i32| -> Result<f64> { Ok(*rot.at_2d::<f64>(i, j).ctx("rotation")?) };
    // R = Rz(roll) * Ry(yaw) * Rx(pitch) in the camera frame (x right, y down, z forward).
    let yaw = (-r(2, 0)?).asin();
    let pitch = r(2, 1)?.atan2(r(2, 2)?);
    let roll = r(1, 0)?.atan2(r(0, 0)?);
    Ok(HeadPose { yaw: yaw.to_degrees() as f32, pitch: pitch.to_degrees() as f32, roll: roll.to_degrees() as f32 })
}
