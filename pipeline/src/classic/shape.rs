//! A generic 3-D face (68 iBUG points) and the small geometry helpers the classic engine shares.
//!
//! The mean shape is the average-face landmark set that ships with Deep3DFaceRecon/SadTalker
//! (`similarity_Lm3D_all.mat`), made left/right symmetric, rounded to 3 decimals and flipped to
//! image axes (x right, y down, z towards the camera). Units: about half a face width.
//! The engine uses its depths for head-turn parallax and its layout as a fallback shape.

use crate::face::Point;

/// Symmetric mean 3-D landmarks `[x, y, z]`, iBUG-68 order, image axes.
pub const MEAN_FACE_3D: [[f32; 3]; 68] = [
    [-0.731, -0.218, -0.590],
    [-0.712, -0.019, -0.567],
    [-0.675, 0.161, -0.549],
    [-0.637, 0.325, -0.510],
    [-0.582, 0.498, -0.419],
    [-0.484, 0.637, -0.259],
    [-0.368, 0.719, -0.062],
    [-0.219, 0.786, 0.124],
    [0.000, 0.825, 0.197],
    [0.219, 0.786, 0.124],
    [0.368, 0.719, -0.062],
    [0.484, 0.637, -0.259],
    [0.582, 0.498, -0.419],
    [0.637, 0.325, -0.510],
    [0.675, 0.161, -0.549],
    [0.712, -0.019, -0.567],
    [0.731, -0.218, -0.590],
    [-0.572, -0.436, 0.036],
    [-0.489, -0.500, 0.156],
    [-0.382, -0.521, 0.239],
    [-0.281, -0.512, 0.290],
    [-0.189, -0.487, 0.315],
    [0.189, -0.487, 0.315],
    [0.281, -0.512, 0.290],
    [0.382, -0.521, 0.239],
    [0.489, -0.500, 0.156],
    [0.572, -0.436, 0.036],
    [0.000, -0.296, 0.346],
    [0.000, -0.176, 0.436],
    [0.000, -0.056, 0.529],
    [0.000, 0.046, 0.552],
    [-0.119, 0.138, 0.329],
    [-0.069, 0.147, 0.375],
    [0.000, 0.160, 0.396],
    [0.069, 0.147, 0.375],
    [0.119, 0.138, 0.329],
    [-0.431, -0.291, 0.104],
    [-0.367, -0.332, 0.186],
    [-0.275, -0.333, 0.187],
    [-0.190, -0.289, 0.162],
    [-0.267, -0.267, 0.184],
    [-0.363, -0.263, 0.162],
    [0.190, -0.289, 0.162],
    [0.275, -0.333, 0.187],
    [0.367, -0.332, 0.186],
    [0.431, -0.291, 0.104],
    [0.363, -0.263, 0.162],
    [0.267, -0.267, 0.184],
    [-0.250, 0.381, 0.223],
    [-0.164, 0.321, 0.336],
    [-0.057, 0.283, 0.397],
    [0.000, 0.295, 0.402],
    [0.057, 0.283, 0.397],
    [0.164, 0.321, 0.336],
    [0.250, 0.381, 0.223],
    [0.158, 0.419, 0.317],
    [0.082, 0.446, 0.360],
    [0.000, 0.451, 0.370],
    [-0.082, 0.446, 0.360],
    [-0.158, 0.419, 0.317],
    [-0.230, 0.376, 0.230],
    [-0.074, 0.351, 0.344],
    [0.000, 0.349, 0.362],
    [0.074, 0.351, 0.344],
    [0.230, 0.376, 0.230],
    [0.072, 0.366, 0.344],
    [0.000, 0.369, 0.353],
    [-0.072, 0.366, 0.344],
];

/// Width of [`MEAN_FACE_3D`] between the jaw ends (points 0 and 16).
pub const MEAN_FACE_WIDTH: f32 = 1.462;

/// Place the generic face in a detector box (square-ish, brows near the top, chin at the bottom).
/// Good enough to exercise warps when no landmark model is at hand; real landmarks replace it.
pub fn mean_shape_in_box(bbox: [f32; 4]) -> Vec<Point> {
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let cx = 0.5 * (bbox[0] + bbox[2]);
    // The mean shape spans y in [-0.52, 0.83]; a typical detector box spans brows-0.1 .. chin.
    let sy = h / 1.45;
    let sx = w / 1.55;
    let top = bbox[1] + 0.10 * h;
    MEAN_FACE_3D.iter().map(|p| [cx + p[0] * sx, top + (p[1] + 0.52) * sy]).collect()
}

#[inline]
pub fn sub(a: Point, b: Point) -> Point {
    [a[0] - b[0], a[1] - b[1]]
}
#[inline]
pub fn add(a: Point, b: Point) -> Point {
    [a[0] + b[0], a[1] + b[1]]
}
#[inline]
pub fn scale(a: Point, s: f32) -> Point {
    [a[0] * s, a[1] * s]
}
#[inline]
pub fn dist(a: Point, b: Point) -> f32 {
    let d = sub(a, b);
    (d[0] * d[0] + d[1] * d[1]).sqrt()
}
#[inline]
pub fn lerp(a: Point, b: Point, t: f32) -> Point {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]
}
pub fn mean(points: &[Point]) -> Point {
    let n = points.len().max(1) as f32;
    let s = points.iter().fold([0.0, 0.0], |acc, p| add(acc, *p));
    [s[0] / n, s[1] / n]
}

/// Measurements of one face (in whatever pixel space its landmarks are given).
#[derive(Debug, Clone, Copy)]
pub struct FaceFrame {
    /// Jaw-end to jaw-end distance.
    pub face_width: f32,
    /// Brow-centre to chin distance.
    pub face_height: f32,
    /// Mouth corner to corner (outer lips).
    pub mouth_width: f32,
    /// Unit vector along the eye line (towards the image's right for an upright face).
    pub right: Point,
    /// Unit vector from chin to brows (towards the top of the head).
    pub up: Point,
}

impl FaceFrame {
    /// Measure a 68-point face. Returns `None` when the points are degenerate.
    pub fn measure(lm: &[Point]) -> Option<Self> {
        if lm.len() != 68 || lm.iter().any(|p| !p[0].is_finite() || !p[1].is_finite()) {
            return None;
        }
        let eye_l = mean(&lm[36..42]);
        let eye_r = mean(&lm[42..48]);
        let eyes = sub(eye_r, eye_l);
        let eye_d = (eyes[0] * eyes[0] + eyes[1] * eyes[1]).sqrt();
        let brow = mean(&[lm[19], lm[24]]);
        let face_height = dist(brow, lm[8]);
        let face_width = dist(lm[0], lm[16]);
        let mouth_width = dist(lm[48], lm[54]);
        if eye_d < 1e-3 || face_height < 1e-3 || face_width < 1e-3 || mouth_width < 1e-3 {
            return None;
        }
        let right = [eyes[0] / eye_d, eyes[1] / eye_d];
        // Perpendicular to the eye line, pointing to the top of the head (image y grows downwards).
        let mut up = [right[1], -right[0]];
        let chin_to_brow = sub(brow, lm[8]);
        if up[0] * chin_to_brow[0] + up[1] * chin_to_brow[1] < 0.0 {
            up = [-up[0], -up[1]];
        }
        Some(Self { face_width, face_height, mouth_width, right, up })
    }

    /// Convert a displacement given in the face's own axes (x along `right`, y towards the chin).
    #[inline]
    pub fn to_image(&self, d: Point) -> Point {
        [self.right[0] * d[0] - self.up[0] * d[1], self.right[1] * d[0] - self.up[1] * d[1]]
    }
}

/// Small deterministic PRNG (splitmix64): same seed, same sequence, on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_shape_is_symmetric_and_sized() {
        let w = MEAN_FACE_3D[16][0] - MEAN_FACE_3D[0][0];
        assert!((w - MEAN_FACE_WIDTH).abs() < 1e-3);
        assert_eq!(MEAN_FACE_3D[8][0], 0.0);
        let lm = mean_shape_in_box([100.0, 100.0, 200.0, 200.0]);
        let f = FaceFrame::measure(&lm).expect("measurable");
        assert!(f.up[1] < -0.99, "up points to the top of the image: {:?}", f.up);
        assert!(f.right[0] > 0.99);
        assert!(f.face_width > 80.0 && f.face_width < 110.0, "{}", f.face_width);
    }

    #[test]
    fn splitmix_is_deterministic() {
        let a: Vec<u64> = {
            let mut r = SplitMix::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SplitMix::new(8);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
