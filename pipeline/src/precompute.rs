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

/// Limits applied while decoding an upload.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest accepted width*height (default 4096*4096); checked from the header before decoding.
    pub max_pixels: u64,
    /// Images whose short side is below this are upscaled (and reported) if a face is found.
    pub min_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_pixels: 4096 * 4096, min_side: 256 }
    }
}

/// The loaded precompute models (MTCNN + 68-point regression trees). Cheap to share via `Arc`.
pub struct Precomputer {
    // filled in by the implementation
    _private: (),
}

impl Precomputer {
    /// Load and verify the registry-fetched models from `checkpoints` (see checkpoints/manifest.json).
    pub fn load(_checkpoints: &std::path::Path, _limits: ImageLimits) -> crate::Result<Self> {
        Err(crate::PipelineError::Internal("precompute not implemented yet".into()))
    }

    /// Decode, validate and analyse one uploaded image.
    pub fn run(&self, _bytes: &[u8], _mode: PreprocessMode) -> crate::Result<(crate::image::RgbImage, AvatarAnalysis)> {
        Err(crate::PipelineError::Internal("precompute not implemented yet".into()))
    }
}
