//! SadTalker's crop geometry (`croper.align_face` + `Preprocesser.crop` + `CropAndExtract.generate`)
//! for the `crop`, `resize` and `full` preprocess modes.

use crate::engine::PreprocessMode;
use serde::{Deserialize, Serialize};

/// Where the animated face lives in the original image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CropInfo {
    pub mode: PreprocessMode,
    /// `rsize` of align_face: the image size after the optional shrink (w, h).
    pub rsize: [i64; 2],
    /// Outer crop `(clx, cly, crx, cry)` in (shrunk) image pixels; whole image in `resize` mode.
    pub crop: [i64; 4],
    /// Quad `(lx, ly, rx, ry)` inside the outer crop, after the +0.5 shift (not truncated).
    pub quad: [f64; 4],
    /// The face box in original-image pixels `(x1, y1, x2, y2)` (exclusive end, inside the image):
    /// the region the engine animates; in `resize` mode the whole image.
    pub face_box: [i64; 4],
    /// SadTalker's `crop_info[0]` (w, h), computed from the unclamped quad.
    pub reference_size: [i64; 2],
}

impl CropInfo {
    /// Width and height of `face_box`.
    pub fn size(&self) -> [i64; 2] {
        [self.face_box[2] - self.face_box[0], self.face_box[3] - self.face_box[1]]
    }
}

/// The oriented-square geometry of SadTalker's `align_face` for an image of `img_w` x `img_h`.
/// Returns `(rsize, crop, quad)` exactly as the reference computes them (`quad` after +0.5).
pub fn align_face_geometry(
    lm: &[[f64; 2]],
    img_w: i64,
    img_h: i64,
    output_size: f64,
) -> ([i64; 2], [i64; 4], [f64; 4]) {
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let (mut sx, mut sy) = (0.0, 0.0);
        for p in &lm[r] {
            sx += p[0];
            sy += p[1];
        }
        [sx / n, sy / n]
    };
    let eye_left = mean(36..42);
    let eye_right = mean(42..48);
    let eye_avg = [(eye_left[0] + eye_right[0]) * 0.5, (eye_left[1] + eye_right[1]) * 0.5];
    let eye_to_eye = [eye_right[0] - eye_left[0], eye_right[1] - eye_left[1]];
    let mouth_avg = [(lm[48][0] + lm[54][0]) * 0.5, (lm[48][1] + lm[54][1]) * 0.5];
    let eye_to_mouth = [mouth_avg[0] - eye_avg[0], mouth_avg[1] - eye_avg[1]];

    // Direction: eye line plus the eye-to-mouth vector turned by 90 degrees.
    let mut x = [eye_to_eye[0] + eye_to_mouth[1], eye_to_eye[1] - eye_to_mouth[0]];
    let n = x[0].hypot(x[1]);
    x = [x[0] / n, x[1] / n];
    let len = (eye_to_eye[0].hypot(eye_to_eye[1]) * 2.0).max(eye_to_mouth[0].hypot(eye_to_mouth[1]) * 1.8);
    x = [x[0] * len, x[1] * len];
    let y = [-x[1], x[0]];
    let c = [eye_avg[0] + eye_to_mouth[0] * 0.1, eye_avg[1] + eye_to_mouth[1] * 0.1];
    let mut quad = [
        [c[0] - x[0] - y[0], c[1] - x[1] - y[1]],
        [c[0] - x[0] + y[0], c[1] - x[1] + y[1]],
        [c[0] + x[0] + y[0], c[1] + x[1] + y[1]],
        [c[0] + x[0] - y[0], c[1] + x[1] - y[1]],
    ];
    let mut qsize = x[0].hypot(x[1]) * 2.0;

    let (mut w, mut h) = (img_w, img_h);
    let shrink = (qsize / output_size * 0.5).floor() as i64;
    if shrink > 1 {
        w = (img_w as f64 / shrink as f64).round_ties_even() as i64;
        h = (img_h as f64 / shrink as f64).round_ties_even() as i64;
        for q in &mut quad {
            q[0] /= shrink as f64;
            q[1] /= shrink as f64;
        }
        qsize /= shrink as f64;
    }
    let rsize = [w, h];

    let border = ((qsize * 0.1).round_ties_even() as i64).max(3);
    let min_x = quad.iter().map(|q| q[0]).fold(f64::INFINITY, f64::min);
    let min_y = quad.iter().map(|q| q[1]).fold(f64::INFINITY, f64::min);
    let max_x = quad.iter().map(|q| q[0]).fold(f64::NEG_INFINITY, f64::max);
    let max_y = quad.iter().map(|q| q[1]).fold(f64::NEG_INFINITY, f64::max);
    let crop = [
        (min_x.floor() as i64 - border).max(0),
        (min_y.floor() as i64 - border).max(0),
        (max_x.ceil() as i64 + border).min(w),
        (max_y.ceil() as i64 + border).min(h),
    ];
    if crop[2] - crop[0] < w || crop[3] - crop[1] < h {
        for q in &mut quad {
            q[0] -= crop[0] as f64;
            q[1] -= crop[1] as f64;
        }
    }
    let f: Vec<f64> = quad.iter().flat_map(|q| [q[0] + 0.5, q[1] + 0.5]).collect();
    let lx = f[0].min(f[2]).max(0.0);
    let ly = f[1].min(f[7]).max(0.0);
    let rx = f[4].max(f[6]).min(w as f64);
    // The reference clamps the bottom edge with the image width; kept for parity.
    let ry = f[3].max(f[5]).min(w as f64);
    (rsize, crop, [lx, ly, rx, ry])
}

/// Full crop description for `mode` from 68 landmarks on an image of `img_w` x `img_h`.
pub fn crop_info(lm: &[[f64; 2]], img_w: u32, img_h: u32, mode: PreprocessMode) -> CropInfo {
    let (w, h) = (img_w as i64, img_h as i64);
    if mode == PreprocessMode::Resize {
        return CropInfo {
            mode,
            rsize: [w, h],
            crop: [0, 0, w, h],
            quad: [0.0, 0.0, w as f64, h as f64],
            face_box: [0, 0, w, h],
            reference_size: [w, h],
        };
    }
    let (rsize, crop, quad) = align_face_geometry(lm, w, h, 512.0);
    let [lx, ly, rx, ry] = quad.map(|v| v as i64);
    let reference_size = [rx - lx, ry - ly];
    // Pixels actually selected by `img[cly:cry, clx:crx][ly:ry, lx:rx]` (numpy slices clamp).
    let (cw, ch) = (crop[2] - crop[0], crop[3] - crop[1]);
    let (x1, x2) = (lx.clamp(0, cw), rx.clamp(0, cw));
    let (y1, y2) = (ly.clamp(0, ch), ry.clamp(0, ch));
    // Map from the (possibly shrunk) working image back to original pixels.
    let (sx, sy) = (w as f64 / rsize[0] as f64, h as f64 / rsize[1] as f64);
    let face_box = [
        ((crop[0] + x1) as f64 * sx).round() as i64,
        ((crop[1] + y1) as f64 * sy).round() as i64,
        (((crop[0] + x2) as f64 * sx).round() as i64).min(w),
        (((crop[1] + y2) as f64 * sy).round() as i64).min(h),
    ];
    CropInfo { mode, rsize, crop, quad, face_box, reference_size }
}
