//! The image-only half: decode -> validate -> detect -> landmarks -> crop -> pose, with stage timings.

use crate::engine::PreprocessMode;
use crate::face::crop::CropInfo;
use crate::face::{FaceDetection, HeadPose, Landmarks68};
use serde::{Deserialize, Serialize};

/// Everything precompute learns about one image (cached; engines build on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvatarAnalysis {
    /// Decoded (orientation-corrected) image size.
    pub width: u32,
    pub height: u32,
    pub preprocess: PreprocessMode,
    /// The chosen (largest) face.
    pub face: FaceDetection,
    /// How many faces the detector found in total.
    pub faces_found: usize,
    /// 68 landmarks in original-image pixels.
    pub landmarks: Landmarks68,
    pub crop: CropInfo,
    pub pose: HeadPose,
    /// Set when the image was below the minimum size and was upscaled by this factor.
    pub upscaled: Option<f32>,
    /// Stage name -> milliseconds.
    pub timings_ms: Vec<(String, f64)>,
}
