//! MTCNN face detection (P-Net -> R-Net -> O-Net cascade) in tch, with facenet-pytorch's weights.
//!
//! The three networks are small; they run on the CPU (a GPU round-trip costs more than they do).
//! The cascade follows the classic MTCNN inference recipe: an image pyramid scanned by P-Net,
//! NMS, box regression and squaring, then R-Net and O-Net refinement on resampled crops, with
//! O-Net also giving the five facial points.

use super::{FaceDetection, Point};
use crate::error::{PipelineError, Result, ResultExt};
use crate::image::RgbImage;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Detection thresholds and pyramid settings.
#[derive(Debug, Clone, Copy)]
pub struct MtcnnConfig {
    /// Smallest face side (pixels, in the detection image) the pyramid looks for.
    pub min_face: f64,
    pub pyramid_factor: f64,
    pub thresholds: [f32; 3],
    /// Images are downscaled so the long side is at most this before detection.
    pub max_side: u32,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        Self { min_face: 20.0, pyramid_factor: 0.709, thresholds: [0.6, 0.7, 0.7], max_side: 1024 }
    }
}

/// Named weights of one network, with strict shape checks on load.
struct Weights {
    file: String,
    map: HashMap<String, Tensor>,
}

impl Weights {
    fn load(path: &Path, expected: &[(&str, &[i64])]) -> Result<Self> {
        let file = path.display().to_string();
        let list = crate::torch_pickle::load(path)?;
        let map: HashMap<String, Tensor> = list.into_iter().map(|(k, v)| (k, v.to_kind(Kind::Float))).collect();
        for (name, shape) in expected {
            match map.get(*name) {
                None => return Err(PipelineError::Checkpoint { file, reason: format!("missing tensor `{name}`") }),
                Some(t) if t.size() != *shape => {
                    return Err(PipelineError::Checkpoint {
                        file,
                        reason: format!("tensor `{name}` has shape {:?}, expected {:?}", t.size(), shape),
                    })
                }
                _ => {}
            }
        }
        if map.len() != expected.len() {
            return Err(PipelineError::Checkpoint {
                file,
                reason: format!("{} tensors, expected {}", map.len(), expected.len()),
            });
        }
        Ok(Self { file, map })
    }

    fn get(&self, name: &str) -> &Tensor {
        // Presence was verified in `load` against the same static name list.
        &self.map[name]
    }

    fn conv(&self, x: &Tensor, name: &str) -> Tensor {
        x.conv2d(
            self.get(&format!("{name}.weight")),
            Some(self.get(&format!("{name}.bias"))),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
    }

    fn prelu(&self, x: &Tensor, name: &str) -> Tensor {
        x.prelu(self.get(&format!("{name}.weight")))
    }

    fn dense(&self, x: &Tensor, name: &str) -> Tensor {
        x.linear(self.get(&format!("{name}.weight")), Some(self.get(&format!("{name}.bias"))))
    }
}

const PNET: &[(&str, &[i64])] = &[
    ("conv1.weight", &[10, 3, 3, 3]),
    ("conv1.bias", &[10]),
    ("prelu1.weight", &[10]),
    ("conv2.weight", &[16, 10, 3, 3]),
    ("conv2.bias", &[16]),
    ("prelu2.weight", &[16]),
    ("conv3.weight", &[32, 16, 3, 3]),
    ("conv3.bias", &[32]),
    ("prelu3.weight", &[32]),
    ("conv4_1.weight", &[2, 32, 1, 1]),
    ("conv4_1.bias", &[2]),
    ("conv4_2.weight", &[4, 32, 1, 1]),
    ("conv4_2.bias", &[4]),
];

const RNET: &[(&str, &[i64])] = &[
    ("conv1.weight", &[28, 3, 3, 3]),
    ("conv1.bias", &[28]),
    ("prelu1.weight", &[28]),
    ("conv2.weight", &[48, 28, 3, 3]),
    ("conv2.bias", &[48]),
    ("prelu2.weight", &[48]),
    ("conv3.weight", &[64, 48, 2, 2]),
    ("conv3.bias", &[64]),
    ("prelu3.weight", &[64]),
    ("dense4.weight", &[128, 576]),
    ("dense4.bias", &[128]),
    ("prelu4.weight", &[128]),
    ("dense5_1.weight", &[2, 128]),
    ("dense5_1.bias", &[2]),
    ("dense5_2.weight", &[4, 128]),
    ("dense5_2.bias", &[4]),
];

const ONET: &[(&str, &[i64])] = &[
    ("conv1.weight", &[32, 3, 3, 3]),
    ("conv1.bias", &[32]),
    ("prelu1.weight", &[32]),
    ("conv2.weight", &[64, 32, 3, 3]),
    ("conv2.bias", &[64]),
    ("prelu2.weight", &[64]),
    ("conv3.weight", &[64, 64, 3, 3]),
    ("conv3.bias", &[64]),
    ("prelu3.weight", &[64]),
    ("conv4.weight", &[128, 64, 2, 2]),
    ("conv4.bias", &[128]),
    ("prelu4.weight", &[128]),
    ("dense5.weight", &[256, 1152]),
    ("dense5.bias", &[256]),
    ("prelu5.weight", &[256]),
    ("dense6_1.weight", &[2, 256]),
    ("dense6_1.bias", &[2]),
    ("dense6_2.weight", &[4, 256]),
    ("dense6_2.bias", &[4]),
    ("dense6_3.weight", &[10, 256]),
    ("dense6_3.bias", &[10]),
];

/// A candidate box during the cascade: corners, score and the regression offsets to apply.
#[derive(Debug, Clone, Copy)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// The loaded MTCNN cascade.
pub struct Mtcnn {
    pnet: Weights,
    rnet: Weights,
    onet: Weights,
    config: MtcnnConfig,
}

impl Mtcnn {
    /// Load `pnet.pt`, `rnet.pt`, `onet.pt` (facenet-pytorch state dicts) from `dir`.
    pub fn load(dir: &Path, config: MtcnnConfig) -> Result<Self> {
        Ok(Self {
            pnet: Weights::load(&dir.join("pnet.pt"), PNET)?,
            rnet: Weights::load(&dir.join("rnet.pt"), RNET)?,
            onet: Weights::load(&dir.join("onet.pt"), ONET)?,
            config,
        })
    }

    /// Names of the weight files this detector was loaded from.
    pub fn files(&self) -> [&str; 3] {
        [&self.pnet.file, &self.rnet.file, &self.onet.file]
    }

    fn pnet_forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let w = &self.pnet;
        let x = w.prelu(&w.conv(x, "conv1"), "prelu1");
        let x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv2"), "prelu2");
        let x = w.prelu(&w.conv(&x, "conv3"), "prelu3");
        let prob = w.conv(&x, "conv4_1").softmax(1, Kind::Float);
        let reg = w.conv(&x, "conv4_2");
        (reg, prob)
    }

    fn rnet_forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let w = &self.rnet;
        let x = w.prelu(&w.conv(x, "conv1"), "prelu1");
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv2"), "prelu2");
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv3"), "prelu3");
        // The converted Caffe weights expect (N, W, H, C) flattening order.
        let x = x.permute([0, 3, 2, 1]).contiguous().flatten(1, -1);
        let x = w.prelu(&w.dense(&x, "dense4"), "prelu4");
        (w.dense(&x, "dense5_2"), w.dense(&x, "dense5_1").softmax(1, Kind::Float))
    }

    fn onet_forward(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let w = &self.onet;
        let x = w.prelu(&w.conv(x, "conv1"), "prelu1");
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv2"), "prelu2");
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv3"), "prelu3");
        let x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
        let x = w.prelu(&w.conv(&x, "conv4"), "prelu4");
        let x = x.permute([0, 3, 2, 1]).contiguous().flatten(1, -1);
        let x = w.prelu(&w.dense(&x, "dense5"), "prelu5");
        (w.dense(&x, "dense6_2"), w.dense(&x, "dense6_3"), w.dense(&x, "dense6_1").softmax(1, Kind::Float))
    }

    /// Detect every face; sorted by area, largest first. Empty when there is none.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<FaceDetection>> {
        let _guard = tch::no_grad_guard();
        let long = image.width.max(image.height);
        let down = if long > self.config.max_side { self.config.max_side as f64 / long as f64 } else { 1.0 };
        let full = Tensor::from_slice(&image.data)
            .view([image.height as i64, image.width as i64, 3])
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(Kind::Float);
        let img = if down < 1.0 {
            let h = (image.height as f64 * down).round().max(1.0) as i64;
            let w = (image.width as f64 * down).round().max(1.0) as i64;
            full.adaptive_avg_pool2d([h, w])
        } else {
            full
        };
        let (h, w) = (img.size()[2], img.size()[3]);
        let mut faces = self.cascade(&img, w, h).ctx("mtcnn")?;
        let inv = (1.0 / down) as f32;
        for f in &mut faces {
            for v in &mut f.bbox {
                *v *= inv;
            }
            for p in &mut f.points {
                p[0] *= inv;
                p[1] *= inv;
            }
        }
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        Ok(faces)
    }

    fn cascade(&self, img: &Tensor, w: i64, h: i64) -> std::result::Result<Vec<FaceDetection>, tch::TchError> {
        let cfg = &self.config;
        // Stage 1: P-Net over the pyramid.
        let m = 12.0 / cfg.min_face;
        let mut minl = h.min(w) as f64 * m;
        let mut scale = m;
        let mut cands = Vec::new();
        while minl >= 12.0 {
            let hs = (h as f64 * scale + 1.0) as i64;
            let ws = (w as f64 * scale + 1.0) as i64;
            let x = normalize(&img.adaptive_avg_pool2d([hs, ws]));
            let (reg, prob) = self.pnet_forward(&x);
            let mut found = pnet_boxes(&reg, &prob, scale as f32, cfg.thresholds[0])?;
            found = nms(found, 0.5, false);
            cands.extend(found);
            scale *= cfg.pyramid_factor;
            minl *= cfg.pyramid_factor;
        }
        if cands.is_empty() {
            return Ok(vec![]);
        }
        let cands = nms(cands, 0.7, false);
        let cands: Vec<Cand> = cands
            .into_iter()
            .map(|c| {
                let (bw, bh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b =
                    [c.b[0] + c.reg[0] * bw, c.b[1] + c.reg[1] * bh, c.b[2] + c.reg[2] * bw, c.b[3] + c.reg[3] * bh];
                Cand { b: square(b), score: c.score, reg: [0.0; 4] }
            })
            .collect();

        // Stage 2: R-Net on 24x24 crops.
        let crops = crop_batch(img, &cands, w, h, 24)?;
        let (reg, prob) = self.rnet_forward(&crops);
        let reg = Vec::<Vec<f32>>::try_from(reg)?;
        let prob = Vec::<Vec<f32>>::try_from(prob)?;
        let mut next = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            if prob[i][1] > cfg.thresholds[1] {
                next.push(Cand { b: c.b, score: prob[i][1], reg: [reg[i][0], reg[i][1], reg[i][2], reg[i][3]] });
            }
        }
        let next = nms(next, 0.7, false);
        let cands: Vec<Cand> =
            next.into_iter().map(|c| Cand { b: square(bbreg(c.b, c.reg)), score: c.score, reg: [0.0; 4] }).collect();
        if cands.is_empty() {
            return Ok(vec![]);
        }

        // Stage 3: O-Net on 48x48 crops, with landmarks.
        let crops = crop_batch(img, &cands, w, h, 48)?;
        let (reg, pts, prob) = self.onet_forward(&crops);
        let reg = Vec::<Vec<f32>>::try_from(reg)?;
        let pts = Vec::<Vec<f32>>::try_from(pts)?;
        let prob = Vec::<Vec<f32>>::try_from(prob)?;
        let mut out: Vec<(Cand, [Point; 5])> = Vec::new();
        for (i, c) in cands.iter().enumerate() {
            if prob[i][1] <= cfg.thresholds[2] {
                continue;
            }
            let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let mut points = [[0.0f32; 2]; 5];
            for (k, p) in points.iter_mut().enumerate() {
                *p = [bw * pts[i][k] + c.b[0] - 1.0, bh * pts[i][k + 5] + c.b[1] - 1.0];
            }
            let reg4 = [reg[i][0], reg[i][1], reg[i][2], reg[i][3]];
            out.push((Cand { b: bbreg(c.b, reg4), score: prob[i][1], reg: [0.0; 4] }, points));
        }
        // Final NMS with intersection over the smaller box ("Min"), keeping landmarks aligned.
        out.sort_by(|a, b| b.0.score.total_cmp(&a.0.score));
        let mut keep: Vec<(Cand, [Point; 5])> = Vec::new();
        for (c, p) in out {
            if keep.iter().all(|(k, _)| overlap(&k.b, &c.b, true) <= 0.7) {
                keep.push((c, p));
            }
        }
        Ok(keep.into_iter().map(|(c, points)| FaceDetection { bbox: c.b, score: c.score, points }).collect())
    }
}

fn normalize(x: &Tensor) -> Tensor {
    (x - 127.5) * 0.0078125
}

/// Turn P-Net's score map into candidate boxes in detection-image pixels.
fn pnet_boxes(reg: &Tensor, prob: &Tensor, scale: f32, thresh: f32) -> std::result::Result<Vec<Cand>, tch::TchError> {
    const STRIDE: f32 = 2.0;
    const CELL: f32 = 12.0;
    let score = prob.get(0).get(1); // (H, W)
    let (hh, ww) = (score.size()[0], score.size()[1]);
    let score: Vec<f32> = Vec::try_from(score.contiguous().view([-1]))?;
    let reg: Vec<f32> = Vec::try_from(reg.get(0).contiguous().view([-1]))?; // (4, H, W)
    let plane = (hh * ww) as usize;
    let mut out = Vec::new();
    for (i, &s) in score.iter().enumerate() {
        if s >= thresh {
            let (y, x) = ((i as i64 / ww) as f32, (i as i64 % ww) as f32);
            let b = [
                ((STRIDE * x + 1.0) / scale).floor(),
                ((STRIDE * y + 1.0) / scale).floor(),
                ((STRIDE * x + CELL) / scale).floor(),
                ((STRIDE * y + CELL) / scale).floor(),
            ];
            out.push(Cand { b, score: s, reg: [reg[i], reg[plane + i], reg[2 * plane + i], reg[3 * plane + i]] });
        }
    }
    Ok(out)
}

/// Greedy NMS by score; `min_mode` divides the intersection by the smaller area instead of the union.
fn nms(mut cands: Vec<Cand>, thresh: f32, min_mode: bool) -> Vec<Cand> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Cand> = Vec::new();
    for c in cands {
        if keep.iter().all(|k| overlap(&k.b, &c.b, min_mode) <= thresh) {
            keep.push(c);
        }
    }
    keep
}

fn overlap(a: &[f32; 4], b: &[f32; 4], min_mode: bool) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let denom = if min_mode { area(a).min(area(b)) } else { area(a) + area(b) - inter };
    if denom <= 0.0 {
        0.0
    } else {
        inter / denom
    }
}

fn bbreg(b: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// Make a box square around its centre (side = the longer side).
fn square(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// Crop each candidate (clamped to the image, 1-based inclusive as the reference does) and
/// area-resample it to `size` x `size`, normalised, as one batch.
fn crop_batch(img: &Tensor, cands: &[Cand], w: i64, h: i64, size: i64) -> std::result::Result<Tensor, tch::TchError> {
    let mut crops = Vec::with_capacity(cands.len());
    for c in cands {
        let x = (c.b[0].trunc() as i64).max(1);
        let y = (c.b[1].trunc() as i64).max(1);
        let ex = (c.b[2].trunc() as i64).min(w);
        let ey = (c.b[3].trunc() as i64).min(h);
        if ey > y - 1 && ex > x - 1 {
            let patch = img.f_narrow(2, y - 1, ey - y + 1)?.f_narrow(3, x - 1, ex - x + 1)?;
            crops.push(patch.adaptive_avg_pool2d([size, size]));
        } else {
            crops.push(Tensor::full([1, 3, size, size], 127.5, (Kind::Float, Device::Cpu)));
        }
    }
    Ok(normalize(&Tensor::cat(&crops, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_keeps_centre_and_uses_long_side() {
        let s = square([10.0, 20.0, 30.0, 60.0]);
        assert_eq!(s, [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn nms_drops_overlaps_and_keeps_best() {
        let c = |b: [f32; 4], s| Cand { b, score: s, reg: [0.0; 4] };
        let kept =
            nms(vec![c([0., 0., 10., 10.], 0.8), c([1., 1., 11., 11.], 0.9), c([50., 50., 60., 60.], 0.7)], 0.5, false);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.7);
    }

    #[test]
    fn overlap_min_mode_is_containment() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [2.0, 2.0, 6.0, 6.0];
        assert!((overlap(&a, &b, true) - 1.0).abs() < 1e-6);
        assert!(overlap(&a, &b, false) < 0.2);
    }
}
