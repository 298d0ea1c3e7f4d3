//! The image-only half: decode -> validate -> detect -> landmarks -> crop -> pose, with stage timings.

use crate::checkpoints::Checkpoints;
use crate::engine::PreprocessMode;
use crate::error::{PipelineError, Result};
use crate::face::crop::crop_info;
use crate::face::crop::CropInfo;
use crate::face::landmarks::facemesh::{self, FaceMesh};
use crate::face::landmarks::{GrayImage, ShapePredictor};
use crate::face::mtcnn::{Mtcnn, MtcnnConfig};
use crate::face::{FaceDetection, HeadPose, Landmarks68};
use crate::image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// The model that placed them.
    pub landmark_model: LandmarkModel,
    /// MediaPipe's whole face mesh (468 points, image pixels; z: depth in the same scale, smaller
    /// is nearer the camera) when that model placed the landmarks; the classic engine warps with
    /// it. `None` with dlib.
    pub mesh: Option<Vec<[f32; 3]>>,
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

/// Which model places the 68 landmarks: MediaPipe's face mesh (Apache-2.0, the default) or dlib's
/// regression trees (trained on iBUG 300-W, not for commercial use: opt in with
/// `VIPAVATAR_LANDMARKS=dlib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandmarkModel {
    #[default]
    Mediapipe,
    Dlib,
}

impl LandmarkModel {
    /// The environment variable that picks the model.
    pub const ENV: &'static str = "VIPAVATAR_LANDMARKS";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mediapipe => "mediapipe",
            Self::Dlib => "dlib",
        }
    }

    /// From `VIPAVATAR_LANDMARKS` (unset or empty: the default).
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(Self::default()),
        }
    }
}

impl std::str::FromStr for LandmarkModel {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mediapipe" => Ok(Self::Mediapipe),
            "dlib" => Ok(Self::Dlib),
            other => Err(PipelineError::Config {
                what: "VIPAVATAR_LANDMARKS",
                reason: format!("`{other}` is not a landmark model; use mediapipe (the default) or dlib"),
            }),
        }
    }
}

/// A loaded landmark model. tch tensors are `Send` but not `Sync`: the mesh runs under a lock.
enum Landmarker {
    Mesh(std::sync::Mutex<FaceMesh>),
    Dlib(ShapePredictor),
}

/// The loaded precompute models (MTCNN + a landmark model). Share it via `Arc`.
pub struct Precomputer {
    /// tch tensors are `Send` but not `Sync`: detection is serialised (it takes tens of ms).
    detector: std::sync::Mutex<Mtcnn>,
    landmarker: Landmarker,
    limits: ImageLimits,
}

/// Images smaller than this on the short side are refused outright (nothing to animate). The
/// service checks it from the file header at upload time.
pub const ABSOLUTE_MIN_SIDE: u32 = 48;

impl Precomputer {
    /// Load and verify the registry-fetched models from `checkpoints` (see
    /// checkpoints/manifest.json), with the landmark model `VIPAVATAR_LANDMARKS` names.
    pub fn load(checkpoints: &Path, limits: ImageLimits) -> Result<Self> {
        Self::load_with(checkpoints, limits, LandmarkModel::from_env()?)
    }

    /// Load with the given landmark model.
    pub fn load_with(checkpoints: &Path, limits: ImageLimits, model: LandmarkModel) -> Result<Self> {
        let ck = Checkpoints::open(checkpoints)?;
        for f in ["mtcnn/pnet.pt", "mtcnn/rnet.pt", "mtcnn/onet.pt"] {
            ck.verified(f)?;
        }
        let detector = Mtcnn::load(&checkpoints.join("mtcnn"), MtcnnConfig::default())?;
        let landmarker = match model {
            LandmarkModel::Mediapipe => {
                Landmarker::Mesh(std::sync::Mutex::new(FaceMesh::load(&ck.verified(facemesh::FILE)?)?))
            }
            LandmarkModel::Dlib => {
                Landmarker::Dlib(ShapePredictor::load(&ck.verified("shape_predictor_68_face_landmarks.dat")?)?)
            }
        };
        Ok(Self { detector: std::sync::Mutex::new(detector), landmarker, limits })
    }

    /// The landmark model this precomputer runs.
    pub fn landmark_model(&self) -> LandmarkModel {
        match self.landmarker {
            Landmarker::Mesh(_) => LandmarkModel::Mediapipe,
            Landmarker::Dlib(_) => LandmarkModel::Dlib,
        }
    }

    /// The 68 landmarks of a detected face, and the whole face mesh when the model gives one.
    pub fn landmarks(&self, image: &RgbImage, face: &FaceDetection) -> Result<(Landmarks68, Option<Vec<[f32; 3]>>)> {
        match &self.landmarker {
            // As with the detector, a panic leaves the network's weights as they were.
            Landmarker::Mesh(mesh) => {
                let mesh = mesh.lock().unwrap_or_else(std::sync::PoisonError::into_inner).detect(image, face)?;
                Ok((mesh.to_68(), Some(mesh.points)))
            }
            Landmarker::Dlib(predictor) => {
                let rect = predictor.rect_from_points5(&face.points)?;
                Ok((predictor.predict(&GrayImage::from_rgb(image), rect), None))
            }
        }
    }

    pub fn limits(&self) -> ImageLimits {
        self.limits
    }

    /// Decode, validate and analyse one uploaded image. Returns the (possibly upscaled) image the
    /// analysis refers to.
    pub fn run(&self, bytes: &[u8], mode: PreprocessMode) -> Result<(RgbImage, AvatarAnalysis)> {
        let mut timer = StageTimer::start();
        let mut image = crate::image::decode(bytes, self.limits.max_pixels)?;
        timer.lap("decode");
        let short = image.width.min(image.height);
        let too_small =
            || PipelineError::ImageTooSmall { width: image.width, height: image.height, min: self.limits.min_side };
        if short < ABSOLUTE_MIN_SIDE {
            return Err(too_small());
        }
        // A panic inside an earlier detection poisons the lock but leaves the network as it was
        // (inference only reads its weights), so the detector stays usable.
        let faces = self.detector.lock().unwrap_or_else(std::sync::PoisonError::into_inner).detect(&image)?;
        timer.lap("detect");
        let Some(mut face) = faces.first().cloned() else {
            return Err(if short < self.limits.min_side { too_small() } else { PipelineError::NoFace });
        };
        let mut upscaled = None;
        if short < self.limits.min_side {
            let f = self.limits.min_side as f32 / short as f32;
            let (w, h) = ((image.width as f32 * f).round() as u32, (image.height as f32 * f).round() as u32);
            image = crate::image::resize(&image, w, h)?;
            face.bbox = face.bbox.map(|v| v * f);
            face.points = face.points.map(|p| [p[0] * f, p[1] * f]);
            upscaled = Some(f);
            timer.lap("upscale");
        }
        let (landmarks, mesh) = self.landmarks(&image, &face)?;
        timer.lap("landmarks");
        let lm64: Vec<[f64; 2]> = landmarks.0.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
        let crop = crop_info(&lm64, image.width, image.height, mode);
        timer.lap("crop");
        let pose = crate::face::pose::estimate(&landmarks.0, image.width, image.height)?;
        timer.lap("pose");
        let analysis = AvatarAnalysis {
            width: image.width,
            height: image.height,
            preprocess: mode,
            face,
            faces_found: faces.len(),
            landmarks,
            landmark_model: self.landmark_model(),
            mesh,
            crop,
            pose,
            upscaled,
            timings_ms: timer.stages,
        };
        Ok((image, analysis))
    }
}

/// Collects per-stage wall times in milliseconds.
#[derive(Debug)]
pub struct StageTimer {
    last: std::time::Instant,
    pub stages: Vec<(String, f64)>,
}

impl StageTimer {
    pub fn start() -> Self {
        Self { last: std::time::Instant::now(), stages: Vec::new() }
    }

    /// Record the time since the previous lap (or the start) under `name`.
    pub fn lap(&mut self, name: &str) {
        let now = std::time::Instant::now();
        self.stages.push((name.to_string(), (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}
