//! `full` preprocess mode: paste rendered faces back into the original image with seamless
//! (Poisson) blending, batched as tensor ops.
//!
//! The reference resizes every frame to the face box and calls OpenCV's `seamlessClone`
//! (NORMAL_CLONE, full-rectangle mask) once per frame on the CPU. That call solves, on the box
//! shrunk by one pixel, `laplacian(u) = div(G)` with `u` = destination on the outer ring, where the
//! guidance `G` is the face's forward-difference gradient inside the mask eroded by 3 pixels and
//! the destination's gradient in the band outside it; the result is truncated to u8.
//! Here the same system is solved for all frames at once with a type-I discrete sine transform
//! (OpenCV's solver family). Everything that depends only on the avatar - the box, the eroded
//! mask, the destination's share of the right-hand side, the Laplacian eigenvalues - is computed
//! once in [`PasteBack::new`]; per frame only the face's masked divergence is added.

use crate::error::ResultExt;
use crate::image::RgbImage;
use crate::{PipelineError, Result};
use tch::{Device, Kind, Tensor};

/// Pixels the guidance mask is eroded by inside the solve region (OpenCV: 3x3 kernel, 3 passes).
const ERODE: i64 = 3;

/// Per-avatar paste-back state.
#[derive(Debug)]
pub struct PasteBack {
    /// (x1, y1, x2, y2), exclusive end, inside the image.
    face_box: [i64; 4],
    /// (3, H, W) uint8 original image on the device.
    background: Tensor,
    /// Guidance weights of the face gradients: x (rh, rw - 1) and y (rh - 1, rw), 1 inside the
    /// eroded mask, 0 in the band where the destination's gradients guide.
    mask_x: Tensor,
    mask_y: Tensor,
    /// (3, rh - 2, rw - 2): the destination's part of the right-hand side (its masked divergence
    /// minus the ring contributions).
    rhs_dest: Tensor,
    /// (rh - 2, rw - 2): eigenvalues of the 5-point Laplacian with zero Dirichlet boundary.
    eigen: Tensor,
    width: i64,
    height: i64,
}

/// Type-I DST along the last dim: `X_k = sum_j x_j sin(pi j k / (n + 1))`, via a real FFT of the
/// odd extension.
fn dst1(x: &Tensor) -> Tensor {
    let n = *x.size().last().unwrap_or(&0);
    let mut pad_shape = x.size();
    if let Some(last) = pad_shape.last_mut() {
        *last = 1;
    }
    let zeros = Tensor::zeros(pad_shape.as_slice(), (x.kind(), x.device()));
    let ext = Tensor::cat(&[&zeros, x, &zeros, &(-x.flip([-1]))], -1);
    ext.fft_rfft(None, -1, "backward").imag().narrow(-1, 1, n) * -0.5
}

/// Type-I DST over the last two dims (its own inverse up to `4 / ((n + 1)(m + 1))`).
fn dst2(x: &Tensor) -> Tensor {
    dst1(&dst1(x).transpose(-1, -2)).transpose(-1, -2)
}

/// Divergence (backward differences) of the masked forward-difference gradient of `p`
/// (.., rh, rw) at the interior pixels: (.., rh - 2, rw - 2).
fn masked_divergence(p: &Tensor, mask_x: &Tensor, mask_y: &Tensor) -> Tensor {
    let s = p.size();
    let (rh, rw) = (s[s.len() - 2], s[s.len() - 1]);
    let gx = (p.narrow(-1, 1, rw - 1) - p.narrow(-1, 0, rw - 1)) * mask_x;
    let gy = (p.narrow(-2, 1, rh - 1) - p.narrow(-2, 0, rh - 1)) * mask_y;
    let lx = gx.narrow(-1, 1, rw - 2) - gx.narrow(-1, 0, rw - 2);
    let ly = gy.narrow(-2, 1, rh - 2) - gy.narrow(-2, 0, rh - 2);
    lx.narrow(-2, 1, rh - 2) + ly.narrow(-1, 1, rw - 2)
}

/// Sum of the outer-ring neighbours of every interior pixel of `p` (.., rh, rw).
fn ring_neighbours(p: &Tensor) -> Tensor {
    let s = p.size();
    let (rh, rw) = (s[s.len() - 2], s[s.len() - 1]);
    let ring = p.copy();
    let _ = ring.narrow(-2, 1, rh - 2).narrow(-1, 1, rw - 2).fill_(0.0);
    ring.narrow(-2, 0, rh - 2).narrow(-1, 1, rw - 2)
        + ring.narrow(-2, 2, rh - 2).narrow(-1, 1, rw - 2)
        + ring.narrow(-2, 1, rh - 2).narrow(-1, 0, rw - 2)
        + ring.narrow(-2, 1, rh - 2).narrow(-1, 2, rw - 2)
}

impl PasteBack {
    /// `face_box` (x1, y1, x2, y2) is clamped into the image; it must keep at least 5x5 pixels.
    pub fn new(original: &RgbImage, face_box: [i64; 4], device: Device) -> Result<Self> {
        let (w, h) = (original.width as i64, original.height as i64);
        if original.data.len() as i64 != w * h * 3 {
            return Err(PipelineError::NotAnImage("inconsistent original image buffer".into()));
        }
        let [x1, y1, x2, y2] =
            [face_box[0].clamp(0, w), face_box[1].clamp(0, h), face_box[2].clamp(0, w), face_box[3].clamp(0, h)];
        let (bw, bh) = (x2 - x1, y2 - y1);
        if bw < 5 || bh < 5 {
            return Err(PipelineError::InvalidOption {
                field: "face_box",
                reason: format!("{face_box:?} leaves a {bw}x{bh} region inside the {w}x{h} image"),
            });
        }
        let _guard = tch::no_grad_guard();
        let background =
            Tensor::from_slice(&original.data).view([h, w, 3]).permute([2, 0, 1]).contiguous().to_device(device);
        // The solve region: the box without its outer pixel ring.
        let (rh, rw) = (bh - 2, bw - 2);
        let dest = background.narrow(1, y1 + 1, rh).narrow(2, x1 + 1, rw).to_kind(Kind::Float);
        let mask = Tensor::zeros([rh, rw], (Kind::Float, device));
        if rh > 2 * ERODE && rw > 2 * ERODE {
            let _ = mask.narrow(0, ERODE, rh - 2 * ERODE).narrow(1, ERODE, rw - 2 * ERODE).fill_(1.0);
        }
        let (mask_x, mask_y) = (mask.narrow(1, 0, rw - 1), mask.narrow(0, 0, rh - 1));
        let rhs_dest = masked_divergence(&dest, &(1.0 - &mask_x), &(1.0 - &mask_y)) - ring_neighbours(&dest);
        let eig = |n: i64| {
            let k = Tensor::arange_start(1, n + 1, (Kind::Float, device));
            (k * (std::f64::consts::PI / (n + 1) as f64)).cos() * 2.0 - 2.0
        };
        let eigen = eig(rh - 2).unsqueeze(1) + eig(rw - 2).unsqueeze(0);
        Ok(Self { face_box: [x1, y1, x2, y2], background, mask_x, mask_y, rhs_dest, eigen, width: w, height: h })
    }

    pub fn face_box(&self) -> [i64; 4] {
        self.face_box
    }

    /// Solve for the interior of the region for `faces` (n, 3, S, S) in [0, 1]:
    /// (n, 3, bh - 4, bw - 4) float (before clamping / truncation), the pixels at box offset 2..
    pub fn solve(&self, faces: &Tensor) -> Result<Tensor> {
        let s = faces.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(PipelineError::Internal(format!("paste-back got frames of shape {s:?}")));
        }
        let _guard = tch::no_grad_guard();
        let [x1, y1, x2, y2] = self.face_box;
        let (bw, bh) = (x2 - x1, y2 - y1);
        let (rh, rw) = (bh - 2, bw - 2);
        let face = faces
            .to_device(self.background.device())
            .to_kind(Kind::Float)
            .f_upsample_bilinear2d([bh, bw], false, None, None)
            .ctx("resizing faces to the face box")?
            * 255.0;
        let patch = face.narrow(2, 1, rh).narrow(3, 1, rw);
        let rhs = masked_divergence(&patch, &self.mask_x, &self.mask_y) + &self.rhs_dest;
        let scale = 4.0 / ((rh - 1) * (rw - 1)) as f64;
        Ok(dst2(&(dst2(&rhs) / &self.eigen)) * scale)
    }

    /// The blended box (n, 3, bh, bw) as uint8: background on the two outer rings, the solved
    /// interior clamped to 0..=255 and truncated like OpenCV.
    pub fn blend(&self, faces: &Tensor) -> Result<Tensor> {
        let interior = self.solve(faces)?.clamp(0.0, 255.0).floor().to_kind(Kind::Uint8);
        let n = interior.size()[0];
        let [x1, y1, x2, y2] = self.face_box;
        let (bw, bh) = (x2 - x1, y2 - y1);
        let region = self.background.narrow(1, y1, bh).narrow(2, x1, bw).unsqueeze(0).repeat([n, 1, 1, 1]);
        region.narrow(2, 2, bh - 4).narrow(3, 2, bw - 4).copy_(&interior);
        Ok(region)
    }

    /// Full frames (n, H, W, 3) uint8 on the CPU with the blended faces pasted in.
    pub fn apply(&self, faces: &Tensor) -> Result<Tensor> {
        let blended = self.blend(faces)?;
        let n = blended.size()[0];
        let [x1, y1, x2, y2] = self.face_box;
        let frames = self.background.unsqueeze(0).repeat([n, 1, 1, 1]);
        frames.narrow(2, y1, y2 - y1).narrow(3, x1, x2 - x1).copy_(&blended);
        Ok(frames.permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu))
    }

    /// Frames of [`PasteBack::apply`] as images.
    pub fn apply_images(&self, faces: &Tensor) -> Result<Vec<RgbImage>> {
        let frames = self.apply(faces)?;
        let n = frames.size()[0];
        (0..n)
            .map(|i| {
                let data = Vec::<u8>::try_from(frames.get(i).flatten(0, -1)).ctx("reading pasted frames")?;
                RgbImage::from_raw(self.width as u32, self.height as u32, data)
            })
            .collect()
    }
}
