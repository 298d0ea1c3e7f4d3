//! `OcclusionAwareSPADEGenerator` (`src/facerender/modules/generator.py`), split at the point
//! where the source image stops mattering:
//! - [`Generator::encode_source`]: `first` -> `down_blocks` -> `second` -> view as a 3-D volume ->
//!   `resblocks_3d` (the source feature volume, cached per avatar);
//! - [`Generator::render`]: dense motion -> `grid_sample` of the volume -> `third` -> `fourth` ->
//!   occlusion -> SPADE decoder, for a whole batch of driving keypoints at once.
//!
//! [`Generator::forward_reference`] runs the reference's one-call forward (re-encoding the source).

use super::blocks::{Act, Conv, ConvOpts, DownBlock, ResBlock3d, SameBlock2d};
use super::config::FaceRenderConfig;
use super::dense_motion::{DenseMotion, MotionOutput, MotionSource};
use super::spade::SpadeDecoder;
use tch::nn::Path;
use tch::Tensor;

/// Checkpoint key prefix of this network.
pub const PREFIX: &str = "generator";

/// Outputs of one batch.
#[derive(Debug)]
pub struct GeneratorOutput {
    /// (B, 3, H, W) in (0, 1).
    pub prediction: Tensor,
    pub motion: MotionOutput,
}

#[derive(Debug)]
pub struct Generator {
    pub dense_motion: DenseMotion,
    first: SameBlock2d,
    down_blocks: Vec<DownBlock>,
    second: Conv,
    resblocks_3d: Vec<ResBlock3d>,
    third: SameBlock2d,
    fourth: Conv,
    pub decoder: SpadeDecoder,
    reshape_channel: i64,
    reshape_depth: i64,
}

impl Generator {
    pub fn new(p: &Path, c: &FaceRenderConfig) -> Self {
        let g = &c.generator;
        let w = |i: i64| g.max_features.min(g.block_expansion * (1i64 << i));
        let down_blocks: Vec<DownBlock> =
            (0..g.num_down_blocks).map(|i| DownBlock::new(&(p / "down_blocks" / i), w(i), w(i + 1), false)).collect();
        let encoded = w(g.num_down_blocks);
        let third_out = c.third_out_features();
        Self {
            dense_motion: DenseMotion::new(&(p / "dense_motion_network"), c),
            first: SameBlock2d::new(&(p / "first"), c.common.image_channel, g.block_expansion, 3, Act::Relu),
            down_blocks,
            second: Conv::new(p / "second", encoded, g.max_features, &[1, 1], ConvOpts::pad(0)),
            resblocks_3d: (0..g.num_resblocks)
                .map(|i| ResBlock3d::new(&(p / "resblocks_3d" / format!("3dr{i}")), g.reshape_channel))
                .collect(),
            third: SameBlock2d::new(&(p / "third"), g.max_features, third_out, 3, Act::LeakyRelu),
            fourth: Conv::new(p / "fourth", third_out, third_out, &[1, 1], ConvOpts::pad(0)),
            decoder: SpadeDecoder::new(&(p / "decoder"), &c.decoder, c.common.image_channel),
            reshape_channel: g.reshape_channel,
            reshape_depth: g.reshape_depth,
        }
    }

    /// Resolve derived weights (spectral norm, optional upsampling folding) after loading.
    pub fn prepare(&mut self, fold_upsampling: bool) {
        self.decoder.prepare(fold_upsampling);
    }

    /// Channels-last weights everywhere (see [`super::blocks::Conv::use_channels_last`]).
    pub fn use_channels_last(&mut self, mask_too: bool) {
        self.dense_motion.use_channels_last(mask_too);
        self.first.use_channels_last();
        self.down_blocks.iter_mut().for_each(DownBlock::use_channels_last);
        self.second.use_channels_last();
        self.resblocks_3d.iter_mut().for_each(ResBlock3d::use_channels_last);
        self.third.use_channels_last();
        self.fourth.use_channels_last();
        self.decoder.use_channels_last();
    }

    /// Source image (B, 3, H, W) -> feature volume (B, C, D, H/4, W/4).
    pub fn encode_source(&self, image: &Tensor) -> Tensor {
        let mut out = self.first.forward(image);
        for block in &self.down_blocks {
            out = block.forward(&out);
        }
        let out = self.second.forward(&out);
        let s = out.size();
        let mut feature = out.reshape([s[0], self.reshape_channel, self.reshape_depth, s[2], s[3]]);
        for block in &self.resblocks_3d {
            feature = block.forward(&feature);
        }
        feature
    }

    /// `deform_input` for a batch of deformations sampling one volume `feature` (1, C, D, H, W),
    /// or one volume per frame (B, C, D, H, W); returns the deformed volume viewed as
    /// (B, C * D, H, W).
    pub fn deform(&self, feature: &Tensor, deformation: &Tensor) -> Tensor {
        let fs = feature.size();
        let (c, d, h, w) = (fs[1], fs[2], fs[3], fs[4]);
        let mut deformation = deformation.shallow_clone();
        let ds = deformation.size();
        if ds[1] != d || ds[2] != h || ds[3] != w {
            deformation = deformation
                .permute([0, 4, 1, 2, 3])
                .upsample_trilinear3d([d, h, w], false, None, None, None)
                .permute([0, 2, 3, 4, 1]);
        }
        let b = deformation.size()[0];
        if fs[0] == b {
            let out = feature.grid_sampler(&deformation, 0, 0, false);
            return out.reshape([b, c * d, h, w]);
        }
        let out = feature.grid_sampler(&deformation.reshape([1, b * d, h, w, 3]), 0, 0, false);
        out.view([c, b, d, h, w]).permute([1, 0, 2, 3, 4]).reshape([b, c * d, h, w])
    }

    /// The decoder input: deformed volume -> `third` -> `fourth` -> times the occlusion map.
    pub fn decoder_input(&self, feature: &Tensor, motion: &MotionOutput) -> Tensor {
        let out = self.deform(feature, &motion.deformation);
        let out = self.fourth.forward(&self.third.forward(&out));
        match &motion.occlusion {
            Some(occ) => {
                let os = out.size();
                let occ = if occ.size()[2..] != os[2..] {
                    occ.upsample_bilinear2d([os[2], os[3]], false, None, None)
                } else {
                    occ.shallow_clone()
                };
                out * occ
            }
            None => out,
        }
    }

    /// Render a batch: `kp_driving` (B, K, 3) against the cached source volume (1, C, D, H, W),
    /// or against one source per frame (volumes (B, C, D, H, W) with a per-row `source`).
    pub fn render(&self, feature: &Tensor, source: &MotionSource, kp_driving: &Tensor) -> GeneratorOutput {
        let motion = self.dense_motion.forward(source, kp_driving);
        let input = self.decoder_input(feature, &motion);
        GeneratorOutput { prediction: self.decoder.forward(&input), motion }
    }

    /// The reference forward, everything from scratch: encode `image` (1, 3, H, W), build the
    /// dense-motion source from `kp_source` (1, K, 3), render `kp_driving` (B, K, 3).
    pub fn forward_reference(&self, image: &Tensor, kp_driving: &Tensor, kp_source: &Tensor) -> GeneratorOutput {
        let feature = self.encode_source(image);
        let source = self.dense_motion.prepare_source(&feature, kp_source);
        self.render(&feature, &source, kp_driving)
    }
}

/// `parts`' tensors (batch 1 each, picked by `pick`) repeated to one row per frame and stacked:
/// (sum of frames, ...). The rows of a pass that mixes sessions.
pub fn repeat_rows<T>(parts: &[(&T, i64)], pick: fn(&T) -> &Tensor) -> Tensor {
    let rows: Vec<Tensor> = parts
        .iter()
        .map(|(p, n)| {
            let t = pick(p);
            let mut shape = t.size();
            shape[0] = *n;
            t.expand(shape.as_slice(), false)
        })
        .collect();
    Tensor::cat(&rows, 0)
}
