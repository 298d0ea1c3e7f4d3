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
    /// The face box in original-image pixels `(x1, y1, x2, y2)` (exclusive end): the region the
    /// engine animates; in `resize` mode the whole image.
    pub face_box: [i64; 4],
}

impl CropInfo {
    /// Width and height of `face_box` (SadTalker's `crop_info[0]`).
    pub fn size(&self) -> [i64; 2] {
        [self.face_box[2] - self.face_box[0], self.face_box[3] - self.face_box[1]]
    }
}
