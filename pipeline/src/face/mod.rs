//! Face analysis results shared by every stage: detection, 68 landmarks, crop geometry, pose.

pub mod align;
pub mod crop;
pub mod landmarks;
pub mod mtcnn;
pub mod pose;

use serde::{Deserialize, Serialize};

/// A 2-D point in image pixel coordinates (x right, y down).
pub type Point = [f32; 2];

/// One detected face: box `[x1, y1, x2, y2]`, detector confidence and 5 points
/// (left eye, right eye, nose, left mouth corner, right mouth corner; left/right as seen in the image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceDetection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub points: [Point; 5],
}

impl FaceDetection {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }
}

/// The 68-point iBUG layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Landmarks68(pub Vec<Point>);

/// Coarse head pose in degrees (yaw: + turns to the image's right, pitch: + looks down, roll: + clockwise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct HeadPose {
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
}
