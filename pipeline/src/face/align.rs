//! The 5-point alignment to 224x224 that feeds 3DMM extraction (Deep3DFaceRecon's `align_img`, as
//! SadTalker uses it), including a bit-exact port of Pillow's bicubic resampling and box crop.

use crate::image::RgbImage;

/// Output side of the aligned face.
pub const TARGET_SIZE: f64 = 224.0;
/// Scale constant of the recon network's training crops.
pub const RESCALE_FACTOR: f64 = 102.0;

/// Mean 3-D positions of the 5 alignment points (eye L, eye R, nose, mouth L, mouth R) derived
/// from the BFM similarity landmarks SadTalker ships (`similarity_Lm3D_all.mat`); a test checks
/// them against the fixture copy of that file's 5-point reduction.
pub const LM3D_STD: [[f32; 3]; 5] = [
    [-0.311_486_57, 0.290_360_78, 0.133_779_53],
    [0.309_798_87, 0.289_720_36, 0.131_795_26],
    [0.003_253_498_8, -0.046_179_324, 0.552_442_43],
    [-0.252_169_28, -0.381_339_16, 0.224_057_32],
    [0.248_466_2, -0.381_282_36, 0.22235769],
];

/// Result of [`align_img`].
#[derive(Debug, Clone)]
pub struct Aligned {
    /// `[w0, h0, s, tx, ty]`: source size, scale and translation.
    pub trans_params: [f64; 5],
    /// The 224x224 aligned face.
    pub image: RgbImage,
    /// Input landmarks mapped into the aligned image (same y-up convention as the input).
    pub landmarks: Vec<[f64; 2]>,
}

/// Reduce 68 landmarks to the 5 alignment points: eye centres (mean of two lid points), nose tip,
/// mouth corners, ordered eye L, eye R, nose, mouth L, mouth R. Means are taken in f32 like the
/// reference does on its float32 landmark arrays.
pub fn extract_5p(lm: &[[f32; 2]]) -> [[f32; 2]; 5] {
    let mean2 = |a: [f32; 2], b: [f32; 2]| [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
    [mean2(lm[36], lm[39]), mean2(lm[42], lm[45]), lm[30], lm[48], lm[54]]
}

/// Least-squares fit of a scaled orthographic projection of `x3d` onto `xp`; returns the
/// translation and the mean norm of the two projection rows (the scale).
pub fn pos(xp: &[[f64; 2]; 5], x3d: &[[f32; 3]; 5]) -> ([f64; 2], f64) {
    // The 10x8 system decouples into two 5x4 problems (one per image axis): [X 1] k = u.
    let mut a = [[0.0f64; 4]; 5];
    for (row, p) in a.iter_mut().zip(x3d) {
        *row = [p[0] as f64, p[1] as f64, p[2] as f64, 1.0];
    }
    let kx = lstsq_5x4(&a, &xp.map(|p| p[0]));
    let ky = lstsq_5x4(&a, &xp.map(|p| p[1]));
    let norm = |k: &[f64; 4]| (k[0] * k[0] + k[1] * k[1] + k[2] * k[2]).sqrt();
    ([kx[3], ky[3]], (norm(&kx) + norm(&ky)) / 2.0)
}

/// Solve min |A k - b| for a full-rank 5x4 A with Householder QR.
// Index loops: the Householder steps read as the matrix algebra they implement.
#[allow(clippy::needless_range_loop)]
fn lstsq_5x4(a: &[[f64; 4]; 5], b: &[f64; 5]) -> [f64; 4] {
    let mut r = *a;
    let mut qb = *b;
    for j in 0..4 {
        let norm = (j..5).map(|i| r[i][j] * r[i][j]).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if r[j][j] > 0.0 { -norm } else { norm };
        let mut v = [0.0f64; 5];
        v[j] = r[j][j] - alpha;
        for i in j + 1..5 {
            v[i] = r[i][j];
        }
        let vnorm2: f64 = v.iter().map(|x| x * x).sum();
        if vnorm2 == 0.0 {
            continue;
        }
        for c in j..4 {
            let dot: f64 = (j..5).map(|i| v[i] * r[i][c]).sum();
            for i in j..5 {
                r[i][c] -= 2.0 * dot / vnorm2 * v[i];
            }
        }
        let dot: f64 = (j..5).map(|i| v[i] * qb[i]).sum();
        for i in j..5 {
            qb[i] -= 2.0 * dot / vnorm2 * v[i];
        }
    }
    let mut k = [0.0f64; 4];
    for j in (0..4).rev() {
        let s: f64 = (j + 1..4).map(|c| r[j][c] * k[c]).sum();
        k[j] = (qb[j] - s) / r[j][j];
    }
    k
}

/// Align an image to the 224x224 recon crop. `lm` are 5 or 68 points in the reference's y-up
/// convention (`y' = H - 1 - y`).
pub fn align_img(img: &RgbImage, lm: &[[f32; 2]], lm3d: &[[f32; 3]; 5]) -> Aligned {
    let (w0, h0) = (img.width as f64, img.height as f64);
    let lm5: [[f32; 2]; 5] = if lm.len() == 5 { [lm[0], lm[1], lm[2], lm[3], lm[4]] } else { extract_5p(lm) };
    let (t, s0) = pos(&lm5.map(|p| [p[0] as f64, p[1] as f64]), lm3d);
    let s = RESCALE_FACTOR / s0;

    let w = (w0 * s) as i32;
    let h = (h0 * s) as i32;
    let half = TARGET_SIZE / 2.0;
    let left = (w as f64 / 2.0 - half + (t[0] - w0 / 2.0) * s) as i32;
    let up = (h as f64 / 2.0 - half + (h0 / 2.0 - t[1]) * s) as i32;
    let resized = pil_resize_bicubic(img, w.max(1) as u32, h.max(1) as u32);
    let image = pil_crop(&resized, left, up, TARGET_SIZE as u32, TARGET_SIZE as u32);

    let (ox, oy) = (w as f64 / 2.0 - half, h as f64 / 2.0 - half);
    let landmarks = lm
        .iter()
        .map(|p| [(p[0] as f64 - t[0] + w0 / 2.0) * s - ox, (p[1] as f64 - t[1] + h0 / 2.0) * s - oy])
        .collect();
    Aligned { trans_params: [w0, h0, s, t[0], t[1]], image, landmarks }
}

/// Crop `width` x `height` at (`left`, `up`); pixels outside the source are black (Pillow's crop).
pub fn pil_crop(img: &RgbImage, left: i32, up: i32, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    for y in 0..height as i32 {
        let sy = y + up;
        if sy < 0 || sy >= img.height as i32 {
            continue;
        }
        for x in 0..width as i32 {
            let sx = x + left;
            if sx < 0 || sx >= img.width as i32 {
                continue;
            }
            let si = (sy as usize * img.width as usize + sx as usize) * 3;
            let di = (y as usize * width as usize + x as usize) * 3;
            out.data[di..di + 3].copy_from_slice(&img.data[si..si + 3]);
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's per-output-pixel source window and fixed-point weights for one axis.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < n && ww != 0.0 {
                k[x] / ww
            } else if x < n {
                k[x]
            } else {
                0.0
            };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((w, h), BICUBIC)` for 8-bit RGB, bit-exact: horizontal pass over the
/// rows the vertical pass needs, then the vertical pass, both in 22-bit fixed point.
pub fn pil_resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width as usize, img.height as usize);
    let (ow, oh) = (width as usize, height as usize);
    let need_h = ow != iw;
    let need_v = oh != ih;
    let vert = precompute_coeffs(ih, oh);
    let (y_first, y_last) = if need_h && oh > 0 {
        let (b0, _) = vert.bounds[0];
        let (bl, nl) = vert.bounds[oh - 1];
        (b0, bl + nl)
    } else {
        (0, ih)
    };

    let mut cur = img.clone();
    let mut row_offset = 0usize;
    if need_h {
        let hc = precompute_coeffs(iw, ow);
        let rows = y_last - y_first;
        let mut tmp = RgbImage::new(width, rows as u32);
        for y in 0..rows {
            let src = &img.data[(y + y_first) * iw * 3..(y + y_first + 1) * iw * 3];
            let dst = &mut tmp.data[y * ow * 3..(y + 1) * ow * 3];
            for (xx, &(xmin, n)) in hc.bounds.iter().enumerate() {
                let k = &hc.kk[xx * hc.ksize..xx * hc.ksize + n];
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &src[(x + xmin) * 3..(x + xmin) * 3 + 3];
                    for c in 0..3 {
                        ss[c] = ss[c].wrapping_add(p[c] as i32 * kx);
                    }
                }
                for c in 0..3 {
                    dst[xx * 3 + c] = clip8(ss[c]);
                }
            }
        }
        cur = tmp;
        row_offset = y_first;
    }
    if need_v {
        let cw = cur.width as usize;
        let mut out = RgbImage::new(cur.width, height);
        for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
            let ymin = ymin - row_offset;
            let k = &vert.kk[yy * vert.ksize..yy * vert.ksize + n];
            for x in 0..cw {
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (y, &ky) in k.iter().enumerate() {
                    let i = ((y + ymin) * cw + x) * 3;
                    for (s, &p) in ss.iter_mut().zip(&cur.data[i..i + 3]) {
                        *s = s.wrapping_add(p as i32 * ky);
                    }
                }
                let o = (yy * cw + x) * 3;
                for (px, s) in out.data[o..o + 3].iter_mut().zip(ss) {
                    *px = clip8(s);
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_to_same_size_is_identity() {
        let mut img = RgbImage::new(7, 5);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i * 37 % 251) as u8;
        }
        assert_eq!(pil_resize_bicubic(&img, 7, 5), img);
    }

    #[test]
    fn flat_image_stays_flat_when_resized() {
        let img = RgbImage { width: 40, height: 30, data: vec![200; 40 * 30 * 3] };
        let out = pil_resize_bicubic(&img, 23, 17);
        assert!(out.data.iter().all(|&v| v == 200));
    }

    #[test]
    fn lstsq_recovers_exact_solution() {
        let a = [
            [1.0, 2.0, 0.5, 1.0],
            [0.3, -1.0, 2.0, 1.0],
            [2.0, 0.1, 0.0, 1.0],
            [-1.0, 1.0, 1.0, 1.0],
            [0.5, 0.5, -2.0, 1.0],
        ];
        let k = [0.7, -0.2, 1.5, 3.0];
        let b = a.map(|r| r.iter().zip(&k).map(|(x, y)| x * y).sum::<f64>());
        let got = lstsq_5x4(&a, &b);
        for (g, e) in got.iter().zip(&k) {
            assert!((g - e).abs() < 1e-12);
        }
    }
}
