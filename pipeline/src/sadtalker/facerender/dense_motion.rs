//! `DenseMotionNetwork` (`src/facerender/modules/dense_motion.py`): from source / driving
//! keypoints and the source feature volume to a per-voxel softmax mask over
//! {background, keypoint 1..K}, the dense backward deformation and the occlusion map.
//!
//! The parts that depend only on the source ([`MotionSource`]: compressed feature volume,
//! source Gaussian heatmaps) are computed once per avatar. All frames of a batch sample the
//! single source volume in one `grid_sample` call (the reference repeats the volume per frame
//! and keypoint); every output voxel is computed by the same kernel, so the values are the same.

use super::blocks::{coordinate_grid, Conv, ConvOpts, Hourglass};
use super::config::FaceRenderConfig;
use crate::sadtalker::layers::BatchNorm;
use tch::nn::Path;
use tch::Tensor;

/// Variance of the keypoint Gaussians.
const KP_VARIANCE: f64 = 0.01;
/// Mask entries below this are zeroed (without renormalising).
const MASK_THRESHOLD: f64 = 1e-3;

/// Outputs for a batch of frames.
#[derive(Debug)]
pub struct MotionOutput {
    /// (B, K + 1, D, H, W), softmax before thresholding.
    pub mask: Tensor,
    /// (B, D, H, W, 3) sampling grid into the source volume, (x, y, z) in [-1, 1].
    pub deformation: Tensor,
    /// (B, 1, H, W) when the network estimates occlusion.
    pub occlusion: Option<Tensor>,
}

/// Source-only inputs of the network, computed once per avatar. The batch dimension is 1 (one
/// source for every frame of a pass) or the pass's frame count (one source row per frame, when a
/// pass mixes sessions: [`MotionSource::rows`]).
#[derive(Debug)]
pub struct MotionSource {
    /// (1 or B, compress, D, H, W): `relu(norm(compress(feature_3d)))`.
    pub compressed: Tensor,
    /// (1 or B, K, D, H, W) Gaussians around the source keypoints.
    pub source_heatmap: Tensor,
    /// (1 or B, K, 3)
    pub kp_source: Tensor,
    /// (D, H, W, 3) identity grid.
    pub grid: Tensor,
}

impl MotionSource {
    /// The same tensors, sharing their storage.
    pub fn shallow_clone(&self) -> Self {
        Self {
            compressed: self.compressed.shallow_clone(),
            source_heatmap: self.source_heatmap.shallow_clone(),
            kp_source: self.kp_source.shallow_clone(),
            grid: self.grid.shallow_clone(),
        }
    }

    /// One source row per frame: `parts` are (single source, frames) in pass order.
    pub fn rows(parts: &[(&MotionSource, i64)]) -> Self {
        let rows = |pick: fn(&MotionSource) -> &Tensor| super::generator::repeat_rows(parts, pick);
        Self {
            compressed: rows(|m| &m.compressed),
            source_heatmap: rows(|m| &m.source_heatmap),
            kp_source: rows(|m| &m.kp_source),
            grid: parts.first().map(|(m, _)| m.grid.shallow_clone()).unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
pub struct DenseMotion {
    hourglass: Hourglass,
    mask: Conv,
    compress: Conv,
    norm: BatchNorm,
    occlusion: Option<Conv>,
    num_kp: i64,
}

/// `kp2gaussian`: kp (B, K, 3) on `grid` (D, H, W, 3) -> (B, K, D, H, W).
fn gaussian(kp: &Tensor, grid: &Tensor) -> Tensor {
    let s = kp.size();
    let g = grid.size();
    let diff = grid.view([1, 1, g[0], g[1], g[2], 3]) - kp.view([s[0], s[1], 1, 1, 1, 3]);
    (diff.square().sum_dim_intlist([-1i64].as_slice(), false, diff.kind()) * -0.5 / KP_VARIANCE).exp()
}

impl DenseMotion {
    pub fn new(p: &Path, c: &FaceRenderConfig) -> Self {
        let d = &c.generator.dense_motion;
        let num_kp = c.common.num_kp;
        let hourglass = Hourglass::new(
            &(p / "hourglass"),
            d.block_expansion,
            (num_kp + 1) * (d.compress + 1),
            d.num_blocks,
            d.max_features,
        );
        let out = hourglass.out_filters();
        Self {
            mask: Conv::new(p / "mask", out, num_kp + 1, &[7, 7, 7], ConvOpts::pad(3)),
            compress: Conv::new(p / "compress", c.common.feature_channel, d.compress, &[1, 1, 1], ConvOpts::pad(0)),
            norm: BatchNorm::new(p / "norm", d.compress),
            occlusion: c
                .generator
                .estimate_occlusion_map
                .then(|| Conv::new(p / "occlusion", out * d.reshape_depth, 1, &[7, 7], ConvOpts::pad(3))),
            hourglass,
            num_kp,
        }
    }

    /// Channels-last weights (the hourglass, the occlusion conv; the 7x7x7 mask conv too when
    /// `mask_too`: on the CPU its contiguous kernel is faster).
    pub fn use_channels_last(&mut self, mask_too: bool) {
        self.hourglass.use_channels_last();
        if mask_too {
            self.mask.use_channels_last();
        }
        if let Some(occ) = &mut self.occlusion {
            occ.use_channels_last();
        }
    }

    /// Everything that depends only on the source volume (1, C, D, H, W) and keypoints (1, K, 3).
    pub fn prepare_source(&self, feature_3d: &Tensor, kp_source: &Tensor) -> MotionSource {
        let compressed = self.norm.forward(&self.compress.forward(feature_3d)).relu();
        let s = compressed.size();
        let grid = coordinate_grid(s[2], s[3], s[4], (kp_source.kind(), kp_source.device()));
        let source_heatmap = gaussian(kp_source, &grid);
        MotionSource { compressed, source_heatmap, kp_source: kp_source.shallow_clone(), grid }
    }

    /// Dense motion for every driving keypoint set `kp_driving` (B, K, 3).
    pub fn forward(&self, src: &MotionSource, kp_driving: &Tensor) -> MotionOutput {
        let b = kp_driving.size()[0];
        let k = self.num_kp;
        let cs = src.compressed.size();
        let (c, d, h, w) = (cs[1], cs[2], cs[3], cs[4]);
        let grid = src.grid.view([1, 1, d, h, w, 3]);

        let sources = cs[0];

        // Sparse motions: identity for the background, grid - kp_driving + kp_source per keypoint.
        let driving_to_source =
            (&grid - kp_driving.view([b, k, 1, 1, 1, 3])) + src.kp_source.view([sources, k, 1, 1, 1, 3]);
        let sparse = Tensor::cat(&[grid.expand([b, 1, d, h, w, 3], false), driving_to_source], 1);

        let deformed = if sources == b && b > 1 {
            // One source row per frame: each samples its own volume at its K + 1 grids.
            let grids = sparse.view([b, (k + 1) * d, h, w, 3]).to_kind(src.compressed.kind());
            let deformed = src.compressed.grid_sampler(&grids, 0, 0, false); // (B, C, (K+1)*D, H, W)
            deformed.view([b, c, k + 1, d, h, w]).permute([0, 2, 1, 3, 4, 5])
        } else {
            // Sample the single source volume at all B * (K + 1) grids in one call.
            let grids = sparse.view([1, b * (k + 1) * d, h, w, 3]).to_kind(src.compressed.kind());
            let deformed = src.compressed.grid_sampler(&grids, 0, 0, false); // (1, C, B*(K+1)*D, H, W)
            deformed.view([c, b, k + 1, d, h, w]).permute([1, 2, 0, 3, 4, 5])
        };

        let heat = gaussian(kp_driving, &src.grid) - &src.source_heatmap;
        let heat = Tensor::cat(&[heat.zeros_like().narrow(1, 0, 1), heat], 1).unsqueeze(2);
        let input = Tensor::cat(&[heat, deformed], 2).reshape([b, -1, d, h, w]);

        let prediction = self.hourglass.forward(&input);
        let mask = self.mask.forward(&prediction).softmax(1, prediction.kind());
        let kept = mask.zeros_like().where_self(&mask.lt(MASK_THRESHOLD), &mask).unsqueeze(2);
        let deformation =
            (sparse.permute([0, 1, 5, 2, 3, 4]) * kept).sum_dim_intlist([1i64].as_slice(), false, mask.kind());
        let deformation = deformation.permute([0, 2, 3, 4, 1]);

        let occlusion = self.occlusion.as_ref().map(|conv| {
            let ps = prediction.size();
            conv.forward(&prediction.reshape([ps[0], -1, ps[3], ps[4]])).sigmoid()
        });
        MotionOutput { mask, deformation, occlusion }
    }
}
