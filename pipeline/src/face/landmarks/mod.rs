//! The face landmark models. The default is MediaPipe's face mesh ([`facemesh`], Apache-2.0);
//! this file is the opt-in one (`VIPAVATAR_LANDMARKS=dlib`): dlib's 68-point model (ensemble of
//! regression trees, Kazemi & Sullivan 2014) in pure Rust, which loads
//! `shape_predictor_68_face_landmarks.dat` and runs dlib's `shape_predictor::operator()` on a
//! face rectangle.

mod dlib_format;
pub mod facemesh;
mod geometry;
mod graph;
mod tflite;

use crate::error::{PipelineError, Result};
use crate::face::{Landmarks68, Point};
use crate::image::RgbImage;
use dlib_format::RawModel;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Number of points of the iBUG layout this module produces.
pub const NUM_PARTS: usize = 68;

/// A face box in dlib's convention: `right` and `bottom` are inclusive, so a box `w` pixels wide
/// starting at `left` has `right = left + w - 1`. The unit square of the model's shape space maps
/// `(0, 0)` to `(left, top)` and `(1, 1)` to `(right, bottom)`. Coordinates may be fractional; dlib
/// itself only takes integer rectangles (see [`FaceRect::rounded`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceRect {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl FaceRect {
    /// Inclusive corners; rejects non-finite values and empty or inverted boxes.
    pub fn new(left: f64, top: f64, right: f64, bottom: f64) -> Result<Self> {
        let finite = [left, top, right, bottom].iter().all(|v| v.is_finite());
        if !finite || right <= left || bottom <= top {
            return Err(PipelineError::Internal(format!("invalid face rectangle ({left}, {top}, {right}, {bottom})")));
        }
        Ok(Self { left, top, right, bottom })
    }

    /// From a top-left corner and a size in pixels (dlib: `rectangle(x, y, x + w - 1, y + h - 1)`).
    pub fn from_xywh(x: f64, y: f64, width: f64, height: f64) -> Result<Self> {
        Self::new(x, y, x + width - 1.0, y + height - 1.0)
    }

    pub fn left(&self) -> f64 {
        self.left
    }
    pub fn top(&self) -> f64 {
        self.top
    }
    pub fn right(&self) -> f64 {
        self.right
    }
    pub fn bottom(&self) -> f64 {
        self.bottom
    }
    /// Width in pixels (`right - left + 1`).
    pub fn width(&self) -> f64 {
        self.right - self.left + 1.0
    }
    pub fn height(&self) -> f64 {
        self.bottom - self.top + 1.0
    }

    /// The same box moved by `(dx, dy)`.
    pub fn translated(&self, dx: f64, dy: f64) -> Self {
        Self { left: self.left + dx, top: self.top + dy, right: self.right + dx, bottom: self.bottom + dy }
    }

    /// The integer rectangle dlib would use (corners rounded to the nearest pixel); predicting with
    /// it reproduces dlib exactly.
    pub fn rounded(&self) -> Self {
        let r = |v: f64| (v + 0.5).floor();
        Self { left: r(self.left), top: r(self.top), right: r(self.right), bottom: r(self.bottom) }
    }

    /// Unit-square shape coordinates to image coordinates (dlib's `unnormalizing_tform`).
    #[inline]
    fn unit_to_image(self, u: f32, v: f32) -> [f64; 2] {
        [self.left + f64::from(u) * (self.right - self.left), self.top + f64::from(v) * (self.bottom - self.top)]
    }
}

/// An image the predictor can sample: dlib's `get_pixel_intensity` per pixel.
pub trait IntensityImage {
    /// `(width, height)` in pixels.
    fn size(&self) -> (u32, u32);
    /// Intensity at a pixel inside the image.
    fn intensity(&self, x: u32, y: u32) -> u8;
}

impl IntensityImage for RgbImage {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// dlib's rgb -> grayscale `assign_pixel`: the truncated mean `(r + g + b) / 3`.
    #[inline]
    fn intensity(&self, x: u32, y: u32) -> u8 {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        match self.data.get(i..i + 3) {
            Some(p) => ((u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3) as u8,
            None => 0,
        }
    }
}

/// An 8-bit grayscale image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl GrayImage {
    /// dlib's conversion of an RGB image to `unsigned char` pixels.
    pub fn from_rgb(img: &RgbImage) -> Self {
        let data = img
            .data
            .chunks_exact(3)
            .map(|p| ((u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3) as u8)
            .collect();
        Self { width: img.width, height: img.height, data }
    }
}

impl IntensityImage for GrayImage {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    #[inline]
    fn intensity(&self, x: u32, y: u32) -> u8 {
        self.data.get(y as usize * self.width as usize + x as usize).copied().unwrap_or(0)
    }
}

/// What a loaded model consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSummary {
    pub parts: usize,
    pub cascades: usize,
    pub trees_per_cascade: usize,
    pub tree_depth: u32,
    pub features_per_cascade: Vec<usize>,
}

/// The loaded 68-point regression-tree cascade.
pub struct ShapePredictor {
    model: RawModel,
}

impl std::fmt::Debug for ShapePredictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShapePredictor").field(&self.summary()).finish()
    }
}

impl ShapePredictor {
    /// Read and parse a dlib `.dat` file; any problem is a [`PipelineError::Checkpoint`] naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let start = Instant::now();
        let bytes = std::fs::read(path)
            .map_err(|e| PipelineError::Checkpoint { file: file.clone(), reason: format!("cannot read: {e}") })?;
        let read_ms = crate::ms_since(start);
        let model = Self::from_bytes(&bytes, &file)?;
        tracing::info!(
            file,
            bytes = bytes.len(),
            read_ms,
            total_ms = crate::ms_since(start),
            "loaded 68-point shape predictor"
        );
        Ok(model)
    }

    /// Parse dlib-serialized bytes; `name` is used in error messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let checkpoint = |reason: String| PipelineError::Checkpoint { file: name.to_string(), reason };
        let model = dlib_format::parse_shape_predictor(bytes).map_err(|e| checkpoint(e.to_string()))?;
        if model.initial_shape.len() != 2 * NUM_PARTS {
            return Err(checkpoint(format!(
                "the model predicts {} points, expected {NUM_PARTS}",
                model.initial_shape.len() / 2
            )));
        }
        Ok(Self { model })
    }

    pub fn summary(&self) -> ModelSummary {
        ModelSummary {
            parts: self.model.initial_shape.len() / 2,
            cascades: self.model.cascades.len(),
            trees_per_cascade: self.model.trees_per_cascade,
            tree_depth: self.model.leaves_per_tree.trailing_zeros(),
            features_per_cascade: self.model.cascades.iter().map(|c| c.anchors.len()).collect(),
        }
    }

    /// The model's mean shape in unit-box coordinates.
    pub fn mean_shape(&self) -> Vec<Point> {
        self.model.initial_shape.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
    }

    /// Run the cascade on `rect` (dlib's `shape_predictor::operator()`); returns the 68 points in
    /// image pixels, unrounded (dlib rounds them to integers at the very end).
    pub fn predict<I: IntensityImage + ?Sized>(&self, img: &I, rect: FaceRect) -> Landmarks68 {
        let m = &self.model;
        let (width, height) = img.size();
        let shape_len = m.initial_shape.len();
        let (splits_per_tree, leaves_per_tree) = (m.splits_per_tree, m.leaves_per_tree);
        let mut shape = m.initial_shape.clone();
        let mut features: Vec<f32> = Vec::new();
        for cascade in &m.cascades {
            // Feature pixels: anchored to the current shape, offsets rotated/scaled like the shape.
            let t = geometry::similarity_2x2(&m.initial_shape, &shape);
            features.clear();
            features.extend(cascade.anchors.iter().zip(&cascade.deltas).map(|(&anchor, d)| {
                let a = anchor as usize * 2;
                let u = t[0][0] * d[0] + t[0][1] * d[1] + shape[a];
                let v = t[1][0] * d[0] + t[1][1] * d[1] + shape[a + 1];
                let [x, y] = rect.unit_to_image(u, v);
                let (x, y) = ((x + 0.5).floor(), (y + 0.5).floor());
                if x >= 0.0 && y >= 0.0 && x < f64::from(width) && y < f64::from(height) {
                    f32::from(img.intensity(x as u32, y as u32))
                } else {
                    0.0
                }
            }));
            // Each tree adds the offset stored at the leaf its comparisons lead to.
            // (The parser guarantees full trees of equal size and in-range feature indices.)
            for (tree, leaves) in cascade.leaves.chunks_exact(leaves_per_tree * shape_len).enumerate() {
                let splits = &cascade.splits[tree * splits_per_tree..][..splits_per_tree];
                let mut node = 0;
                while node < splits_per_tree {
                    let s = splits[node];
                    node = if features[s.idx1 as usize] - features[s.idx2 as usize] > s.thresh {
                        2 * node + 1
                    } else {
                        2 * node + 2
                    };
                }
                let leaf = &leaves[(node - splits_per_tree) * shape_len..][..shape_len];
                for (s, l) in shape.iter_mut().zip(leaf) {
                    *s += l;
                }
            }
        }
        Landmarks68(
            shape
                .chunks_exact(2)
                .map(|p| {
                    let [x, y] = rect.unit_to_image(p[0], p[1]);
                    [x as f32, y as f32]
                })
                .collect(),
        )
    }

    /// Fit a dlib-style (square, axis-aligned) face rectangle to 5 detector points (left eye centre,
    /// right eye centre, nose tip, left and right mouth corner; left/right as seen in the image):
    /// the least-squares scale + translation that maps the mean shape's corresponding points (eye
    /// centres = means of 36..41 and 42..47, nose tip 30, mouth corners 48 and 54) onto them.
    /// Degenerate or non-finite points give [`PipelineError::NoFace`].
    pub fn rect_from_points5(&self, points: &[Point; 5]) -> Result<FaceRect> {
        let mean = self.mean_shape();
        let Some(model_points) = five_points(&mean) else {
            return Err(PipelineError::Internal("shape model has fewer than 68 points".into()));
        };
        let from = model_points.map(|p| [f64::from(p[0]), f64::from(p[1])]);
        let to = points.map(|p| [f64::from(p[0]), f64::from(p[1])]);
        let fitted = geometry::fit_scale_translation(&from, &to).filter(|(s, _)| *s >= 1.0);
        let Some((scale, [tx, ty])) = fitted else {
            tracing::warn!(?points, "degenerate 5-point face layout");
            return Err(PipelineError::NoFace);
        };
        FaceRect::new(tx, ty, tx + scale, ty + scale).map_err(|_| PipelineError::NoFace)
    }
}

/// The 5 detector-style points of a 68-point shape: left eye centre (mean of 36..41), right eye
/// centre (42..47), nose tip (30), left (48) and right (54) mouth corner. `None` if fewer than 68
/// points are given.
pub fn five_points(points: &[Point]) -> Option<[Point; 5]> {
    if points.len() < NUM_PARTS {
        return None;
    }
    let centre = |range: std::ops::Range<usize>| {
        let n = range.len() as f32;
        let s = points[range].iter().fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]);
        [s[0] / n, s[1] / n]
    };
    Some([centre(36..42), centre(42..48), points[30], points[48], points[54]])
}
