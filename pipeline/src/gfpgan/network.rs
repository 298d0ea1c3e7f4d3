//! `GFPGANv1Clean` in tch: the U-Net encoder (residual down/up blocks), the linear head that
//! turns the bottleneck into per-layer W latents, the SFT condition branches and the StyleGAN2
//! decoder ([`super::stylegan`]). Inference only; built from a checkpoint by
//! [`super::weights::load_network`].

use super::config::GfpganConfig;
use super::conv::{Conv, ConvPath};
use super::noise::Noise;
use super::stylegan::{lrelu_, resize2, StyleGanDecoder};
use crate::error::ResultExt;
use crate::sadtalker::layers::Linear;
use crate::{PipelineError, Result};
use tch::nn::{Path, VarStore};
use tch::{Device, Kind, Tensor};

/// Faces (n, s, s, 3) uint8 RGB, `max_batch` at a time on `device`, as the networks' input
/// `(x / 255 - 0.5) / 0.5` (b, 3, s, s) float, through `f`; its results concatenated.
pub(crate) fn in_batches(
    faces: &Tensor,
    max_batch: usize,
    device: Device,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = faces.size()[0];
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (max_batch.max(1) as i64).min(n - start);
        let chunk = faces.narrow(0, start, len).to_device(device);
        out.push(f(&((chunk.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0 - 0.5) / 0.5))?);
        start += len;
    }
    Ok(Tensor::cat(&out, 0))
}

/// `ResBlock`: conv3x3 + lrelu, bilinear resize, conv3x3 + lrelu, plus a resized 1x1 skip.
#[derive(Debug)]
struct ResBlock {
    conv1: Conv,
    conv2: Conv,
    skip: Tensor,
    up: bool,
}

impl ResBlock {
    fn new(p: Path, cin: i64, cout: i64, up: bool) -> Self {
        let conv1 = Conv::new(&p / "conv1", cin, cin, 3);
        let conv2 = Conv::new(&p / "conv2", cin, cout, 3);
        let skip = (&p / "skip").zeros_no_train("weight", &[cout, cin, 1, 1]);
        Self { conv1, conv2, skip, up }
    }

    fn forward(&self, x: &Tensor, path: ConvPath) -> Tensor {
        let out = resize2(&lrelu_(self.conv1.forward(x, path)), self.up);
        let mut out = lrelu_(self.conv2.forward(&out, path));
        out += path.conv(&resize2(x, self.up), &self.skip, None, 0);
        out
    }
}

/// `nn.Sequential(conv3x3, LeakyReLU(0.2), conv3x3)` of the SFT scale / shift branches.
#[derive(Debug)]
struct ConditionBranch {
    first: Conv,
    second: Conv,
}

impl ConditionBranch {
    fn new(p: Path, channels: i64, out: i64) -> Self {
        Self { first: Conv::new(&p / 0, channels, channels, 3), second: Conv::new(&p / 2, channels, out, 3) }
    }

    fn forward(&self, x: &Tensor, path: ConvPath) -> Tensor {
        self.second.forward(&lrelu_(self.first.forward(x, path)), path)
    }
}

/// What one forward pass produced besides the image (for parity checks and diagnostics).
#[derive(Debug)]
pub struct Intermediates {
    /// The encoder's style codes, (b, num_latent, style) with `different_w`.
    pub style_code: Tensor,
    /// Scale, shift, scale, shift, ... from the coarsest level (8) up.
    pub conditions: Vec<Tensor>,
}

/// The GFPGAN v1 "clean" restoration network (eval mode, weights in a private `VarStore`).
#[derive(Debug)]
pub struct GfpganNet {
    vs: VarStore,
    cfg: GfpganConfig,
    conv_body_first: Conv,
    down: Vec<ResBlock>,
    final_conv: Conv,
    up: Vec<ResBlock>,
    /// `toRGB.*`: intermediate RGB heads, stored in the file, unused at inference.
    _to_rgb: Vec<Conv>,
    final_linear: Linear,
    decoder: StyleGanDecoder,
    condition_scale: Vec<ConditionBranch>,
    condition_shift: Vec<ConditionBranch>,
    conv_path: ConvPath,
}

impl GfpganNet {
    /// Build with zero weights; [`super::weights`] fills them in.
    pub(crate) fn build(cfg: &GfpganConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let log = cfg.log_size();
        let ch = |r: i64| cfg.unet_channels(r);
        let conv_body_first = Conv::new(&root / "conv_body_first", 3, ch(cfg.out_size), 1);
        let mut down = Vec::new();
        let mut cin = ch(cfg.out_size);
        for (k, level) in (3..=log).rev().enumerate() {
            let cout = ch(1 << (level - 1));
            down.push(ResBlock::new(&root / "conv_body_down" / k, cin, cout, false));
            cin = cout;
        }
        let final_conv = Conv::new(&root / "final_conv", cin, ch(4), 3);
        let (mut up, mut to_rgb, mut condition_scale, mut condition_shift) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cin = ch(4);
        for (k, level) in (3..=log).enumerate() {
            let cout = ch(1 << level);
            up.push(ResBlock::new(&root / "conv_body_up" / k, cin, cout, true));
            to_rgb.push(Conv::new(&root / "toRGB" / k, cout, 3, 1));
            let sft_out = if cfg.sft_half { cout } else { cout * 2 };
            condition_scale.push(ConditionBranch::new(&root / "condition_scale" / k, cout, sft_out));
            condition_shift.push(ConditionBranch::new(&root / "condition_shift" / k, cout, sft_out));
            cin = cout;
        }
        let linear_out = if cfg.different_w { cfg.num_latent() * cfg.num_style_feat } else { cfg.num_style_feat };
        let final_linear = Linear::new(&root / "final_linear", ch(4) * 16, linear_out);
        let decoder = StyleGanDecoder::new(&root / "stylegan_decoder", cfg);
        Ok(Self {
            vs,
            cfg: cfg.clone(),
            conv_body_first,
            down,
            final_conv,
            up,
            _to_rgb: to_rgb,
            final_linear,
            decoder,
            condition_scale,
            condition_shift,
            conv_path: ConvPath::fastest(device),
        })
    }

    /// A network with seeded random weights of plausible scale (weights ~ N(0, 1/fan_in),
    /// biases ~ N(0, 0.01), modulation biases ~ 1): meaningless output, for benchmarks and
    /// tests that need the real architecture without the official file.
    pub fn random(cfg: &GfpganConfig, device: Device, seed: u64) -> Result<Self> {
        let net = Self::build(cfg, device)?;
        let mut rng = super::noise::SplitMix64(seed);
        let mut vars: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, var) in &vars {
                let size = var.size();
                let numel: i64 = size.iter().product();
                let draws = Tensor::from_slice(&super::noise::normals(&mut rng, numel as usize)).view(size.as_slice());
                let fan_in: i64 = if name.ends_with("modulated_conv.weight") {
                    size[2..].iter().product()
                } else {
                    size[1..].iter().product::<i64>().max(1)
                };
                let value = if name.ends_with("modulation.bias") {
                    draws * 0.1 + 1.0
                } else if name.ends_with("bias") {
                    draws * 0.1
                } else if name.contains("noises.") || name.contains("constant_input") {
                    draws
                } else if size.len() == 1 {
                    draws * 0.3
                } else {
                    draws / (fan_in as f64).sqrt()
                };
                var.shallow_clone().copy_(&value.to_device(device));
            }
        });
        Ok(net)
    }

    pub fn config(&self) -> &GfpganConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// How the forward pass convolves: [`ConvPath::fastest`] for the device unless set.
    pub fn conv_path(&self) -> ConvPath {
        self.conv_path
    }

    /// Choose the convolution path; Winograd falls back to the default where it cannot run.
    pub fn set_conv_path(&mut self, path: ConvPath) {
        self.conv_path = path.usable_on(self.device());
    }

    /// Weights in `kind`: float16 on CUDA or bfloat16 on the CPU, for measuring a reduced
    /// precision's error and speed (the service runs float32). Inputs and noise maps must then
    /// be `kind` too.
    pub fn set_precision(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The decoder's stored noise buffers (`stylegan_decoder.noises.noise{i}`).
    pub fn stored_noise(&self) -> &[Tensor] {
        self.decoder.stored_noise()
    }

    /// The noise maps for `noise` on this network's device, one per style conv, each (1, 1, r, r).
    pub fn noise_maps(&self, noise: &Noise) -> Vec<Tensor> {
        noise.maps(self.decoder.stored_noise(), self.device())
    }

    /// Restore a batch of aligned faces: x (b, 3, out, out) in [-1, 1] -> image in about [-1, 1].
    pub fn forward(&self, x: &Tensor, noise: &[Tensor]) -> Result<Tensor> {
        self.forward_with_intermediates(x, noise).map(|(image, _)| image)
    }

    /// [`Self::forward`] that also returns the style codes and SFT conditions.
    pub fn forward_with_intermediates(&self, x: &Tensor, noise: &[Tensor]) -> Result<(Tensor, Intermediates)> {
        let s = self.cfg.out_size;
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(PipelineError::InvalidOption {
                field: "gfpgan input",
                reason: format!("expected (b, 3, {s}, {s}), got {size:?}"),
            });
        }
        if noise.len() as i64 != self.cfg.num_layers() {
            return Err(PipelineError::Internal(format!(
                "gfpgan: {} noise maps for {} layers",
                noise.len(),
                self.cfg.num_layers()
            )));
        }
        let path = self.conv_path;
        let run = || -> std::result::Result<(Tensor, Intermediates), tch::TchError> {
            tch::no_grad(|| {
                let mut feat = lrelu_(self.conv_body_first.forward(x, path));
                let mut skips = Vec::with_capacity(self.down.len());
                for block in &self.down {
                    feat = block.forward(&feat, path);
                    skips.push(feat.shallow_clone());
                }
                feat = lrelu_(self.final_conv.forward(&feat, path));
                let b = feat.size()[0];
                let mut style_code = self.final_linear.forward(&feat.reshape([b, -1]));
                if self.cfg.different_w {
                    style_code = style_code.view([b, -1, self.cfg.num_style_feat]);
                }
                let mut conditions = Vec::with_capacity(2 * self.up.len());
                for (k, block) in self.up.iter().enumerate() {
                    feat = block.forward(&(feat + &skips[skips.len() - 1 - k]), path);
                    conditions.push(self.condition_scale[k].forward(&feat, path));
                    conditions.push(self.condition_shift[k].forward(&feat, path));
                }
                let image = self.decoder.forward(&style_code, &conditions, noise, path);
                Ok((image, Intermediates { style_code, conditions }))
            })
        };
        run().ctx("gfpgan forward")
    }
}
