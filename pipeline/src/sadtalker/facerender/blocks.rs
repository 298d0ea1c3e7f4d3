//! Building blocks of the face-vid2vid modules (`src/facerender/modules/util.py`): N-d
//! convolutions, the conv -> BatchNorm -> activation blocks, 3-D residual blocks, the 3-D
//! hourglass of the dense-motion network, the keypoint detector's 2-D -> 3-D hourglass, the
//! anti-aliased downsampler and the `[-1, 1]` coordinate grid. Variables are named like the
//! reference `state_dict()` keys; eval-mode only.

use crate::sadtalker::layers::BatchNorm;
use tch::nn::Path;
use tch::{Device, Kind, Tensor};

/// Shape options of a [`Conv`]; lists have one entry per spatial dimension (or one for all).
#[derive(Debug, Clone, Copy)]
pub struct ConvOpts {
    pub padding: i64,
    pub dilation: i64,
    pub stride: i64,
    pub bias: bool,
}

impl ConvOpts {
    /// Stride 1, dilation 1, the given zero padding, with bias.
    pub const fn pad(padding: i64) -> Self {
        Self { padding, dilation: 1, stride: 1, bias: true }
    }
    pub const fn dilated(self, dilation: i64) -> Self {
        Self { dilation, ..self }
    }
    pub const fn strided(self, stride: i64) -> Self {
        Self { stride, ..self }
    }
    pub const fn without_bias(self) -> Self {
        Self { bias: false, ..self }
    }
}

/// An N-d convolution (1-, 2- or 3-D by the kernel's rank) with `weight` and optional `bias`.
#[derive(Debug)]
pub struct Conv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    dims: usize,
    opts: ConvOpts,
}

impl Conv {
    /// `kernel` has one size per spatial dimension.
    pub fn new(p: Path, cin: i64, cout: i64, kernel: &[i64], opts: ConvOpts) -> Self {
        let mut shape = vec![cout, cin];
        shape.extend_from_slice(kernel);
        let weight = p.zeros_no_train("weight", &shape);
        let bias = opts.bias.then(|| p.zeros_no_train("bias", &[cout]));
        Self { weight, bias, dims: kernel.len(), opts }
    }

    /// A convolution that uses given tensors (e.g. spectrally normalised weights).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, opts: ConvOpts) -> Self {
        let dims = weight.dim().saturating_sub(2);
        Self { weight, bias, dims, opts }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = self.dims;
        x.convolution(
            &self.weight,
            self.bias.as_ref(),
            vec![self.opts.stride; n],
            vec![self.opts.padding; n],
            vec![self.opts.dilation; n],
            false,
            vec![0; n],
            1,
        )
    }

    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Store the weight channels-last: oneDNN / cuDNN then run the channels-last kernels, which
    /// are faster for most of these shapes, and the output is channels-last too.
    pub fn use_channels_last(&mut self) {
        self.weight = channels_last(&self.weight);
    }
}

/// A copy of a 4-D / 5-D tensor with channels-last strides (same logical shape and values).
pub fn channels_last(t: &Tensor) -> Tensor {
    match t.dim() {
        4 => t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
        5 => t.permute([0, 2, 3, 4, 1]).contiguous().permute([0, 4, 1, 2, 3]),
        _ => t.shallow_clone(),
    }
}

/// `F.leaky_relu(x, slope)`: `x` where positive, `x * slope` elsewhere.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    x.where_self(&x.gt(0.0), &(x * slope))
}

/// Activation after a block's BatchNorm.
#[derive(Debug, Clone, Copy)]
pub enum Act {
    Relu,
    /// `nn.LeakyReLU()` (slope 0.01).
    LeakyRelu,
}

/// `SameBlock2d`: conv -> BN -> ReLU / LeakyReLU(0.01).
#[derive(Debug)]
pub struct SameBlock2d {
    conv: Conv,
    norm: BatchNorm,
    act: Act,
}

impl SameBlock2d {
    pub fn use_channels_last(&mut self) {
        self.conv.use_channels_last();
    }

    pub fn new(p: &Path, cin: i64, cout: i64, kernel: i64, act: Act) -> Self {
        Self {
            conv: Conv::new(p / "conv", cin, cout, &[kernel, kernel], ConvOpts::pad(kernel / 2)),
            norm: BatchNorm::new(p / "norm", cout),
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.norm.forward(&self.conv.forward(x));
        match self.act {
            Act::Relu => y.relu(),
            Act::LeakyRelu => leaky_relu(&y, 0.01),
        }
    }
}

/// `DownBlock2d` / `DownBlock3d`: conv(k3, p1) -> BN -> ReLU -> average pool over (H, W) by 2.
#[derive(Debug)]
pub struct DownBlock {
    conv: Conv,
    norm: BatchNorm,
    three_d: bool,
}

impl DownBlock {
    pub fn use_channels_last(&mut self) {
        self.conv.use_channels_last();
    }

    pub fn new(p: &Path, cin: i64, cout: i64, three_d: bool) -> Self {
        let kernel: &[i64] = if three_d { &[3, 3, 3] } else { &[3, 3] };
        Self {
            conv: Conv::new(p / "conv", cin, cout, kernel, ConvOpts::pad(1)),
            norm: BatchNorm::new(p / "norm", cout),
            three_d,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.norm.forward(&self.conv.forward(x)).relu();
        if self.three_d {
            y.avg_pool3d([1, 2, 2], [1, 2, 2], [0, 0, 0], false, true, None::<i64>)
        } else {
            y.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
        }
    }
}

/// `UpBlock3d`: nearest upsampling by (1, 2, 2) -> conv(k3, p1) -> BN -> ReLU.
#[derive(Debug)]
pub struct UpBlock3d {
    conv: Conv,
    norm: BatchNorm,
}

impl UpBlock3d {
    pub fn use_channels_last(&mut self) {
        self.conv.use_channels_last();
    }

    pub fn new(p: &Path, cin: i64, cout: i64) -> Self {
        Self {
            conv: Conv::new(p / "conv", cin, cout, &[3, 3, 3], ConvOpts::pad(1)),
            norm: BatchNorm::new(p / "norm", cout),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let up = x.upsample_nearest3d([s[2], s[3] * 2, s[4] * 2], Some(1.0), Some(2.0), Some(2.0));
        self.norm.forward(&self.conv.forward(&up)).relu()
    }
}

/// `ResBlock3d`: BN -> ReLU -> conv -> BN -> ReLU -> conv, plus the input.
#[derive(Debug)]
pub struct ResBlock3d {
    norm1: BatchNorm,
    conv1: Conv,
    norm2: BatchNorm,
    conv2: Conv,
}

impl ResBlock3d {
    pub fn use_channels_last(&mut self) {
        self.conv1.use_channels_last();
        self.conv2.use_channels_last();
    }

    pub fn new(p: &Path, channels: i64) -> Self {
        Self {
            norm1: BatchNorm::new(p / "norm1", channels),
            conv1: Conv::new(p / "conv1", channels, channels, &[3, 3, 3], ConvOpts::pad(1)),
            norm2: BatchNorm::new(p / "norm2", channels),
            conv2: Conv::new(p / "conv2", channels, channels, &[3, 3, 3], ConvOpts::pad(1)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.conv1.forward(&self.norm1.forward(x).relu());
        let y = self.conv2.forward(&self.norm2.forward(&y).relu());
        y + x
    }
}

/// `min(max_features, block_expansion * 2^i)`, the width rule of every hourglass.
pub fn width(block_expansion: i64, max_features: i64, i: i64) -> i64 {
    max_features.min(block_expansion * (1i64 << i))
}

/// The dense-motion network's 3-D `Hourglass` (encoder of `DownBlock3d`, decoder of
/// `UpBlock3d` with skip concatenation `[upsampled, skip]`, final conv -> BN -> ReLU).
#[derive(Debug)]
pub struct Hourglass {
    down: Vec<DownBlock>,
    up: Vec<UpBlock3d>,
    conv: Conv,
    norm: BatchNorm,
    out_filters: i64,
}

impl Hourglass {
    pub fn new(p: &Path, block_expansion: i64, in_features: i64, num_blocks: i64, max_features: i64) -> Self {
        let enc = p / "encoder";
        let down = (0..num_blocks)
            .map(|i| {
                let cin = if i == 0 { in_features } else { width(block_expansion, max_features, i) };
                DownBlock::new(&(&enc / "down_blocks" / i), cin, width(block_expansion, max_features, i + 1), true)
            })
            .collect();
        let dec = p / "decoder";
        let up = (0..num_blocks)
            .rev()
            .enumerate()
            .map(|(slot, i)| {
                let factor = if i == num_blocks - 1 { 1 } else { 2 };
                let cin = factor * width(block_expansion, max_features, i + 1);
                UpBlock3d::new(&(&dec / "up_blocks" / slot), cin, width(block_expansion, max_features, i))
            })
            .collect();
        let out_filters = block_expansion + in_features;
        Self {
            down,
            up,
            conv: Conv::new(&dec / "conv", out_filters, out_filters, &[3, 3, 3], ConvOpts::pad(1)),
            norm: BatchNorm::new(&dec / "norm", out_filters),
            out_filters,
        }
    }

    pub fn out_filters(&self) -> i64 {
        self.out_filters
    }

    pub fn use_channels_last(&mut self) {
        self.down.iter_mut().for_each(DownBlock::use_channels_last);
        self.up.iter_mut().for_each(UpBlock3d::use_channels_last);
        self.conv.use_channels_last();
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut skips = vec![x.shallow_clone()];
        for block in &self.down {
            let next = block.forward(skips.last().unwrap_or(x));
            skips.push(next);
        }
        let mut out = skips.pop().unwrap_or_else(|| x.shallow_clone());
        for block in &self.up {
            out = block.forward(&out);
            if let Some(skip) = skips.pop() {
                out = Tensor::cat(&[&out, &skip], 1);
            }
        }
        self.norm.forward(&self.conv.forward(&out)).relu()
    }
}

/// The keypoint detector's `KPHourglass`: 2-D `DownBlock2d`s, a 1x1 conv to
/// `reshape_features` channels viewed as (C / depth, depth, H, W), then `UpBlock3d`s.
#[derive(Debug)]
pub struct KpHourglass {
    down: Vec<DownBlock>,
    conv: Conv,
    up: Vec<UpBlock3d>,
    reshape_depth: i64,
    out_filters: i64,
}

/// Widths of a [`KpHourglass`].
#[derive(Debug, Clone, Copy)]
pub struct KpHourglassSpec {
    pub block_expansion: i64,
    pub in_features: i64,
    pub reshape_features: i64,
    pub reshape_depth: i64,
    pub num_blocks: i64,
    pub max_features: i64,
}

impl KpHourglass {
    pub fn new(p: &Path, s: KpHourglassSpec) -> Self {
        let w = |i| width(s.block_expansion, s.max_features, i);
        let down = (0..s.num_blocks)
            .map(|i| {
                let cin = if i == 0 { s.in_features } else { w(i) };
                DownBlock::new(&(p / "down_blocks" / format!("down{i}")), cin, w(i + 1), false)
            })
            .collect();
        let conv = Conv::new(p / "conv", w(s.num_blocks), s.reshape_features, &[1, 1], ConvOpts::pad(0));
        let up = (0..s.num_blocks)
            .map(|i| {
                UpBlock3d::new(&(p / "up_blocks" / format!("up{i}")), w(s.num_blocks - i), w(s.num_blocks - i - 1))
            })
            .collect();
        let out_filters = if s.num_blocks > 0 { w(0) } else { s.reshape_features / s.reshape_depth };
        Self { down, conv, up, reshape_depth: s.reshape_depth, out_filters }
    }

    pub fn out_filters(&self) -> i64 {
        self.out_filters
    }

    pub fn use_channels_last(&mut self) {
        self.down.iter_mut().for_each(DownBlock::use_channels_last);
        self.conv.use_channels_last();
        self.up.iter_mut().for_each(UpBlock3d::use_channels_last);
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut out = x.shallow_clone();
        for block in &self.down {
            out = block.forward(&out);
        }
        let out = self.conv.forward(&out);
        let s = out.size();
        let mut out = out.reshape([s[0], s[1] / self.reshape_depth, self.reshape_depth, s[2], s[3]]);
        for block in &self.up {
            out = block.forward(&out);
        }
        out
    }
}

/// `AntiAliasInterpolation2d`: depthwise Gaussian blur (zero padded) then keep every
/// `1/scale`-th pixel. The kernel is the checkpoint buffer `weight` (channels, 1, k, k).
#[derive(Debug)]
pub struct AntiAlias {
    weight: Tensor,
    ka: i64,
    kb: i64,
    step: i64,
    channels: i64,
}

impl AntiAlias {
    pub fn new(p: &Path, channels: i64, scale: f64) -> Self {
        let sigma = (1.0 / scale - 1.0) / 2.0;
        let kernel = 2 * (sigma * 4.0).round_ties_even() as i64 + 1;
        let ka = kernel / 2;
        let kb = if kernel % 2 == 0 { ka - 1 } else { ka };
        let weight = p.zeros_no_train("weight", &[channels, 1, kernel, kernel]);
        Self { weight, ka, kb, step: (1.0 / scale) as i64, channels }
    }

    /// The Gaussian kernel the reference registers as its buffer (for building test weights).
    pub fn reference_kernel(channels: i64, scale: f64) -> Tensor {
        let sigma = (1.0 / scale - 1.0) / 2.0;
        let size = 2 * (sigma * 4.0).round_ties_even() as i64 + 1;
        let mean = (size - 1) as f64 / 2.0;
        let g = (Tensor::arange(size, (Kind::Float, Device::Cpu)) - mean).square().neg() / (2.0 * sigma * sigma);
        let g = g.exp();
        let kernel = g.unsqueeze(1) * g.unsqueeze(0);
        let kernel = &kernel / kernel.sum(Kind::Float);
        kernel.view([1, 1, size, size]).repeat([channels, 1, 1, 1])
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.step == 1 {
            return x.shallow_clone();
        }
        let padded = x.constant_pad_nd([self.ka, self.kb, self.ka, self.kb]);
        // A strided depthwise conv computes exactly the kept outputs of `conv(...)[::s, ::s]`.
        padded.conv2d(&self.weight, None::<&Tensor>, [self.step, self.step], [0, 0], [1, 1], self.channels)
    }
}

/// `make_coordinate_grid((d, h, w))`: (d, h, w, 3) with last dim (x, y, z) in [-1, 1]
/// (`2 * i / (n - 1) - 1`, computed in the reference's operation order).
pub fn coordinate_grid(d: i64, h: i64, w: i64, options: (Kind, Device)) -> Tensor {
    let axis = |n: i64| Tensor::arange(n, options) / (n - 1) as f64 * 2.0 - 1.0;
    let x = axis(w).view([1, 1, w]).expand([d, h, w], true);
    let y = axis(h).view([1, h, 1]).expand([d, h, w], true);
    let z = axis(d).view([d, 1, 1]).expand([d, h, w], true);
    Tensor::stack(&[x, y, z], 3)
}
