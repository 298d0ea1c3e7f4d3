//! Batched image warps and mask filters on tensors that reproduce OpenCV's CPU results:
//! `cv2.warpAffine` with `INTER_LINEAR` (fixed-point source coordinates in 1/32 px, integer
//! bilinear weights and rounding for 8-bit images, constant border), `cv2.erode` with a
//! rectangular kernel and `cv2.GaussianBlur` with `sigma = 0` (reflect-101 border), as the
//! facexlib face helper calls them; for the parse mask also `cv2.GaussianBlur` with a given
//! sigma, as a product with a blur matrix ([`gaussian_blur_matrix`]). Frames are (n, h, w, c)
//! tensors on any device; the small per-row / per-column coordinate tables are computed on the
//! CPU in float64 like OpenCV does.

use crate::error::ResultExt;
use crate::{PipelineError, Result};
use tch::{Device, Kind, Tensor};

/// A 2x3 affine matrix `[[a, b, c], [d, e, f]]` mapping (x, y) to (a x + b y + c, d x + e y + f).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    /// The inverse map, computed exactly like `cv2.invertAffineTransform` (and like the
    /// inversion `cv2.warpAffine` applies to its matrix); a singular matrix gives zeros, as there.
    pub fn invert(&self) -> Affine {
        let [[a, b, c], [d, e, f]] = self.0;
        let det = a * e - b * d;
        let det = if det != 0.0 { 1.0 / det } else { 0.0 };
        let (a11, a22, a12, a21) = (e * det, a * det, -b * det, -d * det);
        let b1 = -a11 * c - a12 * f;
        let b2 = -a21 * c - a22 * f;
        Affine([[a11, a12, b1], [a21, a22, b2]])
    }

    /// Apply to a point.
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let [[a, b, c], [d, e, f]] = self.0;
        [a * p[0] + b * p[1] + c, d * p[0] + e * p[1] + f]
    }
}

/// OpenCV `saturate_cast<int>(double)`: round half to even, clamp to i32.
fn cv_round(v: f64) -> i64 {
    v.round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i64
}

const AB_SCALE: f64 = 1024.0; // 1 << AB_BITS (10)
const ROUND_DELTA: i64 = 16; // AB_SCALE / INTER_TAB_SIZE / 2
const AB_TO_INTER_SHIFT: i64 = 32; // 1 << (AB_BITS - INTER_BITS)
const TAB: i64 = 32; // INTER_TAB_SIZE

/// Source positions of every output pixel in 1/32 px for the forward matrix `m` of
/// `cv2.warpAffine(src, m, (w, h))`: (x, y) as (h, w) int64 tensors on the CPU.
fn source_positions(m: &Affine, w: i64, h: i64) -> (Tensor, Tensor) {
    let [[a, b, c], [d, e, f]] = m.invert().0;
    let adelta: Vec<i64> = (0..w).map(|x| cv_round(a * x as f64 * AB_SCALE)).collect();
    let bdelta: Vec<i64> = (0..w).map(|x| cv_round(d * x as f64 * AB_SCALE)).collect();
    let x0: Vec<i64> = (0..h).map(|y| cv_round((b * y as f64 + c) * AB_SCALE) + ROUND_DELTA).collect();
    let y0: Vec<i64> = (0..h).map(|y| cv_round((e * y as f64 + f) * AB_SCALE) + ROUND_DELTA).collect();
    let floor = |t: Tensor| t.divide_scalar_mode(AB_TO_INTER_SHIFT, "floor");
    let xs = floor(Tensor::from_slice(&x0).view([h, 1]) + Tensor::from_slice(&adelta).view([1, w]));
    let ys = floor(Tensor::from_slice(&y0).view([h, 1]) + Tensor::from_slice(&bdelta).view([1, w]));
    (xs, ys)
}

/// Taps and bilinear weights (in 1/1024) of a batch: `(indices (n, h*w) into the 1-px padded
/// source for the 4 taps, weights (n, h*w, 1) for the 4 taps)`.
fn taps(maps: &[Affine], out_hw: (i64, i64), src_hw: (i64, i64), device: Device) -> (Vec<Tensor>, Vec<Tensor>) {
    let (h, w) = out_hw;
    let (sh, sw) = src_hw;
    let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = maps.iter().map(|m| source_positions(m, w, h)).unzip();
    let xs = Tensor::stack(&xs, 0).to_device(device).view([maps.len() as i64, h * w]);
    let ys = Tensor::stack(&ys, 0).to_device(device).view([maps.len() as i64, h * w]);
    let ix = xs.divide_scalar_mode(TAB, "floor");
    let iy = ys.divide_scalar_mode(TAB, "floor");
    let fx = &xs - &ix * TAB;
    let fy = &ys - &iy * TAB;
    let mut idx = Vec::with_capacity(4);
    let mut wts = Vec::with_capacity(4);
    for (dy, dx) in [(0i64, 0i64), (0, 1), (1, 0), (1, 1)] {
        // index into the source padded by one border pixel on each side; anything further out
        // lands on that border ring, which holds the border value
        let px = (&ix + (dx + 1)).clamp(0, sw + 1);
        let py = (&iy + (dy + 1)).clamp(0, sh + 1);
        idx.push(py * (sw + 2) + px);
        let wx = if dx == 0 { -&fx + TAB } else { fx.shallow_clone() };
        let wy = if dy == 0 { -&fy + TAB } else { fy.shallow_clone() };
        wts.push((wx * wy).unsqueeze(-1));
    }
    (idx, wts)
}

fn check_src(src: &Tensor, maps: &[Affine], kind: Kind) -> Result<(i64, i64, i64, i64)> {
    let s = src.size();
    if s.len() != 4 || (s[0] != maps.len() as i64 && s[0] != 1) || src.kind() != kind {
        return Err(PipelineError::Internal(format!(
            "warp: expected ({} or 1, h, w, c) {kind:?} source, got {s:?} {:?}",
            maps.len(),
            src.kind()
        )));
    }
    Ok((s[0], s[1], s[2], s[3]))
}

/// Pad (n, h, w, c) by one pixel of `border` (per channel) on each side, flatten to (n, p, c).
fn padded_flat(src: &Tensor, border: &Tensor) -> Tensor {
    let (n, h, w, c) = (src.size()[0], src.size()[1], src.size()[2], src.size()[3]);
    let canvas = border.view([1, 1, 1, c]).expand([n, h + 2, w + 2, c], false).contiguous();
    canvas.narrow(1, 1, h).narrow(2, 1, w).copy_(src);
    canvas.view([n, (h + 2) * (w + 2), c])
}

fn gather(flat: &Tensor, idx: &Tensor, n: i64) -> Tensor {
    let c = flat.size()[2];
    let flat = if flat.size()[0] == n { flat.shallow_clone() } else { flat.expand([n, -1, -1], false) };
    flat.gather(1, &idx.unsqueeze(-1).expand([-1, -1, c], false), false)
}

/// `cv2.warpAffine(img, m, (w, h), flags=INTER_LINEAR, borderMode=BORDER_CONSTANT,
/// borderValue=border)` for each 8-bit frame of `src` (n, sh, sw, c) with its matrix
/// (a single source frame may be shared by all matrices). Bit-exact with OpenCV's C++ path.
pub fn warp_affine_u8(src: &Tensor, maps: &[Affine], out_hw: (i64, i64), border: &[u8]) -> Result<Tensor> {
    let (_, sh, sw, c) = check_src(src, maps, Kind::Uint8)?;
    if border.len() as i64 != c {
        return Err(PipelineError::Internal(format!("warp: {} border values for {c} channels", border.len())));
    }
    let device = src.device();
    let n = maps.len() as i64;
    let border = Tensor::from_slice(&border.iter().map(|&b| b as i32).collect::<Vec<_>>()).to_device(device);
    let flat = padded_flat(&src.to_kind(Kind::Int), &border);
    let (idx, wts) = taps(maps, out_hw, (sh, sw), device);
    let mut acc = Tensor::zeros([n, out_hw.0 * out_hw.1, c], (Kind::Int, device));
    for (i, w) in idx.iter().zip(&wts) {
        acc += gather(&flat, i, n) * w.to_kind(Kind::Int);
    }
    // weights sum to 1024: (acc * 32 + 2^14) >> 15 == (acc + 512) >> 10
    let out = (acc + 512).divide_scalar_mode(1024, "floor").clamp(0, 255).to_kind(Kind::Uint8);
    Ok(out.view([n, out_hw.0, out_hw.1, c]))
}

/// [`warp_affine_u8`] for float32 images (OpenCV's float path: same 1/32 px positions, float
/// bilinear weights, no rounding), constant border `border`.
pub fn warp_affine_f32(src: &Tensor, maps: &[Affine], out_hw: (i64, i64), border: f32) -> Result<Tensor> {
    let (_, sh, sw, c) = check_src(src, maps, Kind::Float)?;
    let device = src.device();
    let n = maps.len() as i64;
    let flat = padded_flat(src, &Tensor::from_slice(&vec![border; c as usize]).to_device(device));
    let (idx, wts) = taps(maps, out_hw, (sh, sw), device);
    let mut acc = Tensor::zeros([n, out_hw.0 * out_hw.1, c], (Kind::Float, device));
    for (i, w) in idx.iter().zip(&wts) {
        acc += gather(&flat, i, n) * (w.to_kind(Kind::Float) / 1024.0);
    }
    Ok(acc.view([n, out_hw.0, out_hw.1, c]))
}

/// `cv2.erode(mask, np.ones((k, k)))` on (n, 1, h, w) float masks: minimum over the window
/// `[x - k/2, x + k - 1 - k/2]` (OpenCV's default anchor), pixels outside the image ignored.
/// `k == 0` behaves like OpenCV's empty kernel (a 3x3 rectangle).
pub fn erode(mask: &Tensor, k: i64) -> Result<Tensor> {
    let k = if k == 0 { 3 } else { k };
    if k == 1 {
        return Ok(mask.shallow_clone());
    }
    let (before, after) = (k / 2, k - 1 - k / 2);
    // pixels outside the image must not lower the minimum: pad with a huge value
    let padded = mask.f_pad([before, after, before, after], "constant", Some(1.0e9)).ctx("erode pad")?;
    let pooled = (-padded).f_max_pool2d([k, k], [1, 1], [0, 0], [1, 1], false).ctx("erode")?;
    Ok(-pooled)
}

/// OpenCV's `getGaussianKernel(k, 0)` (float32): the fixed small tables for k <= 9, else
/// [`gaussian_kernel_sigma`] with `sigma = 0.3 ((k - 1) / 2 - 1) + 0.8`, rounded to float32.
pub fn gaussian_kernel(k: i64) -> Vec<f32> {
    let small: &[f32] = match k {
        1 => &[1.0],
        3 => &[0.25, 0.5, 0.25],
        5 => &[0.0625, 0.25, 0.375, 0.25, 0.0625],
        7 => &[0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
        9 => &[
            4.0 / 256.0,
            13.0 / 256.0,
            30.0 / 256.0,
            51.0 / 256.0,
            60.0 / 256.0,
            51.0 / 256.0,
            30.0 / 256.0,
            13.0 / 256.0,
            4.0 / 256.0,
        ],
        _ => &[],
    };
    if !small.is_empty() {
        return small.to_vec();
    }
    let sigma = ((k - 1) as f64 * 0.5 - 1.0) * 0.3 + 0.8;
    gaussian_kernel_sigma(k, sigma).iter().map(|v| *v as f32).collect()
}

/// `cv2.GaussianBlur(mask, (k, k), 0)` on (n, 1, h, w) float masks (reflect-101 border).
pub fn gaussian_blur(mask: &Tensor, k: i64) -> Result<Tensor> {
    if k <= 1 {
        return Ok(mask.shallow_clone());
    }
    let r = k / 2;
    let kern = Tensor::from_slice(&gaussian_kernel(k)).to_device(mask.device());
    let conv = |x: &Tensor, w: Tensor, pad: [i64; 4]| -> Result<Tensor> {
        let x = x.f_pad(pad, "reflect", None).ctx("gaussian blur pad")?;
        x.f_conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).ctx("gaussian blur")
    };
    let rows = conv(mask, kern.view([1, 1, 1, k]), [r, r, 0, 0])?;
    conv(&rows, kern.view([1, 1, k, 1]), [0, 0, r, r])
}

/// OpenCV's `getGaussianKernel(k, sigma, CV_64F)` for `sigma > 0` (the kernel `cv2.GaussianBlur`
/// uses on float64 images): `exp(-x^2 / (2 sigma^2))` at `x = i - (k - 1) / 2`, divided by the sum,
/// the centre tap being exactly that reciprocal, symmetric by construction.
pub fn gaussian_kernel_sigma(k: i64, sigma: f64) -> Vec<f64> {
    let k = k.max(1) as usize;
    let half = (k - 1) / 2;
    let scale = -0.125 / (sigma * sigma); // applied to (2x)^2
    let side: Vec<f64> = (0..half)
        .map(|i| {
            let x = 2 * i as i64 + 1 - k as i64;
            ((x * x) as f64 * scale).exp()
        })
        .collect();
    let mut sum = side.iter().sum::<f64>() * 2.0 + 1.0;
    if k.is_multiple_of(2) {
        sum += 1.0;
    }
    let mul = 1.0 / sum;
    let mut out = vec![mul; k];
    for (i, v) in side.iter().enumerate() {
        out[i] = v * mul;
        out[k - 1 - i] = v * mul;
    }
    out
}

/// OpenCV's `BORDER_REFLECT_101` index of `p` in `0..n` (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(mut p: i64, n: i64) -> i64 {
    if n == 1 {
        return 0;
    }
    while p < 0 || p >= n {
        p = if p < 0 { -p } else { 2 * n - 2 - p };
    }
    p
}

/// The 1-D filter of `kernel` (odd length, centred) over `n` samples with a reflect-101 border as
/// an (n, n) float64 matrix `B` (`out = B in`): a separable `cv2.GaussianBlur` of an (n, n) image
/// `M` is `B M B^T`. For masks blurred with one large kernel, where the matrix products are cheaper
/// than the convolution and do not depend on cuDNN's TF32 setting.
pub fn gaussian_blur_matrix(n: i64, kernel: &[f64]) -> Result<Tensor> {
    let k = kernel.len() as i64;
    if n <= 0 || k % 2 == 0 {
        return Err(PipelineError::Internal(format!("blur matrix: {n} samples, {k} taps (must be odd)")));
    }
    let r = k / 2;
    let mut m = vec![0.0f64; (n * n) as usize];
    for i in 0..n {
        for (t, w) in kernel.iter().enumerate() {
            let j = reflect101(i + t as i64 - r, n);
            m[(i * n + j) as usize] += w;
        }
    }
    Ok(Tensor::from_slice(&m).view([n, n]))
}
