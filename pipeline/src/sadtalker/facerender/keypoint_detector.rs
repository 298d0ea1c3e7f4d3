//! `KPDetector` (`src/facerender/modules/keypoint_detector.py`): anti-aliased downsampling,
//! the 2-D -> 3-D keypoint hourglass, a 3x3x3 conv to one heatmap per keypoint, a softmax over
//! all voxels at temperature `t`, and the heatmap-weighted mean of the `[-1, 1]` grid:
//! the canonical keypoints (B, num_kp, 3) in (x, y, z) order. Jacobians are not estimated.

use super::blocks::{coordinate_grid, AntiAlias, Conv, ConvOpts, KpHourglass, KpHourglassSpec};
use super::config::FaceRenderConfig;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// Checkpoint key prefix of this network.
pub const PREFIX: &str = "kp_extractor";

#[derive(Debug)]
pub struct KpDetector {
    down: Option<AntiAlias>,
    predictor: KpHourglass,
    kp: Conv,
    temperature: f64,
}

impl KpDetector {
    pub fn new(p: &Path, c: &FaceRenderConfig) -> Self {
        let k = &c.kp_detector;
        let predictor = KpHourglass::new(
            &(p / "predictor"),
            KpHourglassSpec {
                block_expansion: k.block_expansion,
                in_features: c.common.image_channel,
                reshape_features: k.reshape_channel,
                reshape_depth: k.reshape_depth,
                num_blocks: k.num_blocks,
                max_features: k.max_features,
            },
        );
        let kp = Conv::new(p / "kp", predictor.out_filters(), c.common.num_kp, &[3, 3, 3], ConvOpts::pad(1));
        let down =
            (k.scale_factor != 1.0).then(|| AntiAlias::new(&(p / "down"), c.common.image_channel, k.scale_factor));
        Self { down, predictor, kp, temperature: k.temperature }
    }

    /// Channels-last weights for the hourglass and the heatmap conv.
    pub fn use_channels_last(&mut self) {
        self.predictor.use_channels_last();
        self.kp.use_channels_last();
    }

    /// The anti-aliased input of the hourglass (the image itself when scale_factor is 1).
    pub fn downsample(&self, image: &Tensor) -> Tensor {
        match &self.down {
            Some(down) => down.forward(image),
            None => image.shallow_clone(),
        }
    }

    /// `image` (B, 3, H, W) in [0, 1] -> canonical keypoints (B, num_kp, 3).
    pub fn forward(&self, image: &Tensor) -> Tensor {
        let x = self.downsample(image);
        let prediction = self.kp.forward(&self.predictor.forward(&x));
        let s = prediction.size();
        let heatmap = (prediction.reshape([s[0], s[1], -1]) / self.temperature).softmax(2, Kind::Float);
        let heatmap = heatmap.view([s[0], s[1], s[2], s[3], s[4], 1]);
        let grid =
            coordinate_grid(s[2], s[3], s[4], (heatmap.kind(), heatmap.device())).view([1, 1, s[2], s[3], s[4], 3]);
        (heatmap * grid).sum_dim_intlist([2i64, 3, 4].as_slice(), false, Kind::Float)
    }
}
