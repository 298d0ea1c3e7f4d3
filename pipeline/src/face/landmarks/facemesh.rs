//! MediaPipe's face mesh as vipavatar's default landmark model: `face_landmark.tflite` (468 points,
//! Apache-2.0, from the `mediapipe==0.10.21` wheel on PyPI) run by our own TFLite reader and tch
//! graph runner. A rotated square around the detected face is cropped to 192x192, the network
//! gives 468 points, and the 68-point iBUG layout that the crop, alignment and classic-engine
//! geometry need is read off the mesh with the usual 468 -> 68 correspondence ([`MESH_TO_68`]).

use super::graph::GraphRunner;
use super::tflite::Graph;
use crate::error::{PipelineError, Result};
use crate::face::{FaceDetection, Landmarks68};
use crate::image::RgbImage;
use std::path::Path;
use tch::Tensor;

/// The model file in `checkpoints/` (see `checkpoints/manifest.json`).
pub const FILE: &str = "face_landmark.tflite";
/// Points of the mesh.
pub const MESH_POINTS: usize = 468;
/// The crop is this much larger than the face (MediaPipe's `scale_x/scale_y` for face rects).
const ROI_SCALE: f32 = 1.5;
/// The mesh's square against MTCNN's box (see [`Roi::from_detection`]).
const DETECTION_SCALE: f32 = 0.91;
const DETECTION_SHIFT: f32 = 0.031;

/// For each of the 68 iBUG points, the one or two mesh points whose mean stands for it. This is
/// the correspondence in common use (published by Peizhi Yan as `Mediapipe_2_Dlib_Landmarks`),
/// written out here per region; `pipeline/tests/facemesh.rs` measures how close the result comes
/// to dlib's own 68 points on the shared portraits.
pub const MESH_TO_68: [[u16; 2]; 68] = [
    // Jaw line, 0-16, from the image-left ear down to the chin and up again.
    [127, 127],
    [234, 234],
    [93, 93],
    [132, 58],
    [58, 172],
    [136, 136],
    [150, 150],
    [176, 176],
    [152, 152],
    [400, 400],
    [379, 379],
    [365, 365],
    [397, 288],
    [361, 361],
    [323, 323],
    [454, 454],
    [356, 356],
    // Brows, 17-21 then 22-26.
    [70, 70],
    [63, 63],
    [105, 105],
    [66, 66],
    [107, 107],
    [336, 336],
    [296, 296],
    [334, 334],
    [293, 293],
    [300, 300],
    // Nose bridge 27-30, nostrils 31-35.
    [168, 6],
    [197, 195],
    [5, 5],
    [4, 4],
    [75, 75],
    [97, 97],
    [2, 2],
    [326, 326],
    [305, 305],
    // Eyes, 36-41 then 42-47 (outer corner, upper lid, inner corner, lower lid).
    [33, 33],
    [160, 160],
    [158, 158],
    [133, 133],
    [153, 153],
    [144, 144],
    [362, 362],
    [385, 385],
    [387, 387],
    [263, 263],
    [373, 373],
    [380, 380],
    // Outer lip contour 48-59, inner 60-67.
    [61, 61],
    [39, 39],
    [37, 37],
    [0, 0],
    [267, 267],
    [269, 269],
    [291, 291],
    [321, 321],
    [314, 314],
    [17, 17],
    [84, 84],
    [91, 91],
    [78, 78],
    [82, 82],
    [13, 13],
    [312, 312],
    [308, 308],
    [317, 317],
    [14, 14],
    [87, 87],
];

/// A rotated square of the image: its centre and side in pixels, and the angle (radians,
/// clockwise on screen) that its x axis makes with the image's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roi {
    pub center: [f32; 2],
    pub size: f32,
    pub angle: f32,
}

impl Roi {
    /// Around a detection: turned so that the eyes are level, the square that a mesh of the
    /// face would give (its points' extent, levelled at the outer eye corners 33 and 263, times
    /// 1.5, as MediaPipe re-crops around a mesh). MTCNN's box is not the mesh's extent: on the
    /// shared portraits the mesh's square was 0.86-0.96 (mean 0.91) times the box's longer side
    /// times 1.5, and its centre 0.6-4.8% (mean 3.1%) of that side lower; both are applied here.
    pub fn from_detection(face: &FaceDetection) -> Self {
        let [x1, y1, x2, y2] = face.bbox;
        let [l, r] = [face.points[0], face.points[1]];
        let angle = (r[1] - l[1]).atan2(r[0] - l[0]);
        let side = (x2 - x1).max(y2 - y1) * ROI_SCALE;
        let (s, c) = angle.sin_cos();
        let down = DETECTION_SHIFT * side;
        Self { center: [(x1 + x2) / 2.0 - s * down, (y1 + y2) / 2.0 + c * down], size: side * DETECTION_SCALE, angle }
    }

    /// A point of an `n`-pixel crop of this region (continuous coordinates, 0..n) in the image.
    pub fn to_image(&self, u: f32, v: f32, n: f32) -> [f32; 2] {
        let (s, c) = self.angle.sin_cos();
        let (dx, dy) = ((u / n - 0.5) * self.size, (v / n - 0.5) * self.size);
        [self.center[0] + c * dx - s * dy, self.center[1] + s * dx + c * dy]
    }

    /// The region resampled (bilinear; black outside the image) to `n` x `n` RGB values in 0..1,
    /// row-major with channels last.
    pub fn crop(&self, image: &RgbImage, n: usize) -> Vec<f32> {
        let (w, h) = (image.width as i64, image.height as i64);
        let texel = |x: i64, y: i64| -> [f32; 3] {
            match x >= 0 && y >= 0 && x < w && y < h {
                true => {
                    let i = ((y * w + x) * 3) as usize;
                    [image.data[i] as f32, image.data[i + 1] as f32, image.data[i + 2] as f32]
                }
                false => [0.0; 3],
            }
        };
        // One crop pixel to the right / down, in image pixels.
        let (s, c) = self.angle.sin_cos();
        let step = self.size / n as f32;
        let (right, down) = ([c * step, s * step], [-s * step, c * step]);
        let origin = self.to_image(0.5, 0.5, n as f32);
        let mut out = Vec::with_capacity(n * n * 3);
        for row in 0..n {
            for col in 0..n {
                let (r, k) = (row as f32, col as f32);
                // Pixel centres sit at +0.5.
                let fx = origin[0] + k * right[0] + r * down[0] - 0.5;
                let fy = origin[1] + k * right[1] + r * down[1] - 0.5;
                let (x0, y0) = (fx.floor(), fy.floor());
                let (ax, ay) = (fx - x0, fy - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let (a, b, cc, d) = (texel(x0, y0), texel(x0 + 1, y0), texel(x0, y0 + 1), texel(x0 + 1, y0 + 1));
                for ch in 0..3 {
                    let top = a[ch] + (b[ch] - a[ch]) * ax;
                    let bottom = cc[ch] + (d[ch] - cc[ch]) * ax;
                    out.push((top + (bottom - top) * ay) * (1.0 / 255.0));
                }
            }
        }
        out
    }
}

/// The face mesh of one face, in image pixels (z: depth relative to the face's centre, in the
/// same scale as x).
#[derive(Debug, Clone)]
pub struct Mesh {
    pub points: Vec<[f32; 3]>,
    /// The network's face-presence probability for the final crop (sigmoid of its flag output).
    pub face_score: f32,
}

impl Mesh {
    /// The 68-point iBUG layout read off the mesh ([`MESH_TO_68`]).
    pub fn to_68(&self) -> Landmarks68 {
        Landmarks68(
            MESH_TO_68
                .iter()
                .map(|[a, b]| {
                    let (p, q) = (self.points[*a as usize], self.points[*b as usize]);
                    [(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0]
                })
                .collect(),
        )
    }
}

/// The loaded network.
pub struct FaceMesh {
    runner: GraphRunner,
    side: usize,
}

impl FaceMesh {
    /// Load `face_landmark.tflite`; the file's outputs must be the 1404 mesh values and the flag.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: String| PipelineError::Checkpoint { file: path.display().to_string(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let graph = Graph::parse(&bytes).map_err(|e| fail(e.to_string()))?;
        let runner = GraphRunner::new(&graph).map_err(|e| fail(e.to_string()))?;
        let side = match runner.input_shape() {
            [1, h, w, 3] if h == w => *h as usize,
            other => return Err(fail(format!("input shape {other:?} is not a face mesh's"))),
        };
        let outputs: Vec<i64> = graph.outputs.iter().map(|&o| graph.tensors[o].shape.iter().product()).collect();
        if outputs != [MESH_POINTS as i64 * 3, 1] {
            return Err(fail(format!("outputs of sizes {outputs:?} are not a face mesh's")));
        }
        Ok(Self { runner, side })
    }

    /// The network's input side in pixels (192).
    pub fn side(&self) -> usize {
        self.side
    }

    /// Run the network on one crop (`side` x `side` RGB in 0..1, channels last): the 468 points
    /// in crop pixels and the face flag's logit.
    pub fn run_crop(&self, crop: &[f32]) -> Result<(Vec<[f32; 3]>, f32)> {
        let n = self.side as i64;
        if crop.len() != (n * n * 3) as usize {
            return Err(PipelineError::Internal(format!(
                "a face-mesh crop of {} values, expected {}",
                crop.len(),
                n * n * 3
            )));
        }
        let out = self.runner.run(&Tensor::from_slice(crop).reshape([1, n, n, 3]))?;
        let mesh = Vec::<f32>::try_from(out[0].reshape([-1])).map_err(|e| PipelineError::Internal(e.to_string()))?;
        let flag = out[1].reshape([-1]).double_value(&[0]) as f32;
        Ok((mesh.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect(), flag))
    }

    /// The mesh of the face in `region`, in image pixels.
    pub fn mesh_in(&self, image: &RgbImage, region: Roi) -> Result<Mesh> {
        let n = self.side as f32;
        let (points, flag) = self.run_crop(&region.crop(image, self.side))?;
        let scale = region.size / n;
        let points = points
            .iter()
            .map(|p| {
                let [x, y] = region.to_image(p[0], p[1], n);
                [x, y, p[2] * scale]
            })
            .collect();
        Ok(Mesh { points, face_score: 1.0 / (1.0 + (-flag).exp()) })
    }

    /// The mesh of a detected face, one pass around [`Roi::from_detection`] (as MediaPipe runs
    /// a still image). A second pass around the first one's points (as MediaPipe's tracking
    /// does) came no closer to dlib's points on the shared portraits (mean
    /// normalised error 3.94% against 3.96% with one pass) for twice the time.
    pub fn detect(&self, image: &RgbImage, face: &FaceDetection) -> Result<Mesh> {
        self.mesh_in(image, Roi::from_detection(face))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_68_table_names_mesh_points_only() {
        assert!(MESH_TO_68.iter().flatten().all(|&i| (i as usize) < MESH_POINTS));
    }

    #[test]
    fn a_level_roi_maps_crop_corners_to_its_square() {
        let roi = Roi { center: [100.0, 50.0], size: 40.0, angle: 0.0 };
        assert_eq!(roi.to_image(0.0, 0.0, 192.0), [80.0, 30.0]);
        assert_eq!(roi.to_image(192.0, 192.0, 192.0), [120.0, 70.0]);
        // A quarter turn: the crop's x axis points down the image.
        let turned = Roi { angle: std::f32::consts::FRAC_PI_2, ..roi };
        let p = turned.to_image(192.0, 96.0, 192.0);
        assert!((p[0] - 100.0).abs() < 1e-4 && (p[1] - 70.0).abs() < 1e-4, "{p:?}");
    }
}
