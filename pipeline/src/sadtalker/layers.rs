//! Inference-only building blocks shared by the SadTalker networks (conv, transposed conv,
//! linear, eval-mode BatchNorm) and the Wav2Lip-style audio encoder used by audio2exp and
//! audio2pose. Variables are created untrainable (weights are always loaded from a checkpoint)
//! under the names of the reference `state_dict()` keys, including `num_batches_tracked`.

use tch::nn::Path;
use tch::{Kind, Tensor};

/// BatchNorm epsilon of every reference BatchNorm layer.
const BN_EPS: f64 = 1e-5;

/// `aten::_convolution` (what `conv2d` / `conv_transpose2d` dispatch to) with TF32 disabled, so
/// CUDA runs keep float32 precision (cuDNN would otherwise use TF32 by default) and stay within
/// the parity tolerances; on the CPU this is the same computation as `conv2d`.
pub(crate) fn convolution(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
    transposed: bool,
) -> Tensor {
    x.internal_convolution(w, b, stride, padding, [1, 1], transposed, [0, 0], 1, false, false, true, false)
}

/// A 2-D convolution with `weight` (out, in, kh, kw) and optional `bias`.
#[derive(Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
}

/// Shape options of a [`Conv2d`]: kernel, stride, padding as (h, w), and whether it has a bias.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub bias: bool,
}

impl ConvSpec {
    /// Square kernel `k`, stride `s`, padding `p`, with bias.
    pub const fn square(k: i64, s: i64, p: i64) -> Self {
        Self { kernel: [k, k], stride: [s, s], padding: [p, p], bias: true }
    }
    pub const fn with_stride(self, stride: [i64; 2]) -> Self {
        Self { stride, ..self }
    }
    pub const fn without_bias(self) -> Self {
        Self { bias: false, ..self }
    }
}

impl Conv2d {
    pub fn new(p: Path, cin: i64, cout: i64, spec: ConvSpec) -> Self {
        let weight = p.zeros_no_train("weight", &[cout, cin, spec.kernel[0], spec.kernel[1]]);
        let bias = spec.bias.then(|| p.zeros_no_train("bias", &[cout]));
        Self { weight, bias, stride: spec.stride, padding: spec.padding }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        convolution(x, &self.weight, self.bias.as_ref(), self.stride, self.padding, false)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn stride(&self) -> [i64; 2] {
        self.stride
    }
}

/// `nn.ConvTranspose2d` with kernel == stride and no padding (the ResUnet upsampler).
#[derive(Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    stride: [i64; 2],
}

impl ConvTranspose2d {
    pub fn new(p: Path, cin: i64, cout: i64, kernel: [i64; 2]) -> Self {
        let weight = p.zeros_no_train("weight", &[cin, cout, kernel[0], kernel[1]]);
        let bias = p.zeros_no_train("bias", &[cout]);
        Self { weight, bias, stride: kernel }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        convolution(x, &self.weight, Some(&self.bias), self.stride, [0, 0], true)
    }
}

/// `nn.Linear` (`weight` (out, in), `bias` (out)).
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(p: Path, fin: i64, fout: i64) -> Self {
        Self { weight: p.zeros_no_train("weight", &[fout, fin]), bias: p.zeros_no_train("bias", &[fout]) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// Eval-mode BatchNorm over dim 1: `(x - mean) / sqrt(var + 1e-5) * weight + bias`.
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    pub fn new(p: Path, channels: i64) -> Self {
        let weight = p.zeros_no_train("weight", &[channels]);
        let bias = p.zeros_no_train("bias", &[channels]);
        let running_mean = p.zeros_no_train("running_mean", &[channels]);
        let running_var = p.ones_no_train("running_var", &[channels]);
        // Stored by the reference state_dict; unused in eval mode but validated on load.
        let _ = p.add("num_batches_tracked", Tensor::zeros([], (Kind::Int64, p.device())), false);
        Self { weight, bias, running_mean, running_var }
    }

    /// The same map as per-channel `(scale, shift)`, `y = x * scale + shift`, for folding into
    /// the convolution before it.
    pub fn scale_shift(&self) -> (Tensor, Tensor) {
        let scale = &self.weight * (&self.running_var + BN_EPS).rsqrt();
        let shift = &self.bias - &self.running_mean * &scale;
        (scale, shift)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            BN_EPS,
            true,
        )
    }
}

/// One block of the audio encoder: conv -> BN (-> + x when residual) -> ReLU.
/// Paths `conv_block.0` (conv) and `conv_block.1` (BN).
#[derive(Debug)]
struct ConvBnBlock {
    conv: Conv2d,
    bn: BatchNorm,
    residual: bool,
}

impl ConvBnBlock {
    fn new(p: &Path, cin: i64, cout: i64, spec: ConvSpec, residual: bool) -> Self {
        let block = p / "conv_block";
        Self { conv: Conv2d::new(&block / "0", cin, cout, spec), bn: BatchNorm::new(&block / "1", cout), residual }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let out = self.bn.forward(&self.conv.forward(x));
        let out = if self.residual { out + x } else { out };
        out.relu()
    }
}

/// The Wav2Lip audio encoder: (N, 1, 80, 16) mel windows -> (N, 512) embeddings.
/// 13 blocks `0..=12`, every one followed by a ReLU.
#[derive(Debug)]
pub struct AudioEncoder {
    blocks: Vec<ConvBnBlock>,
}

impl AudioEncoder {
    pub fn new(p: Path) -> Self {
        // (cin, cout, conv spec, residual) for blocks 0..=12.
        let s3 = ConvSpec::square(3, 1, 1);
        let table: [(i64, i64, ConvSpec, bool); 13] = [
            (1, 32, s3, false),
            (32, 32, s3, true),
            (32, 32, s3, true),
            (32, 64, s3.with_stride([3, 1]), false),
            (64, 64, s3, true),
            (64, 64, s3, true),
            (64, 128, ConvSpec::square(3, 3, 1), false),
            (128, 128, s3, true),
            (128, 128, s3, true),
            (128, 256, s3.with_stride([3, 2]), false),
            (256, 256, s3, true),
            (256, 512, ConvSpec::square(3, 1, 0), false),
            (512, 512, ConvSpec::square(1, 1, 0), false),
        ];
        let blocks = table
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout, spec, residual))| ConvBnBlock::new(&(&p / i), cin, cout, spec, residual))
            .collect();
        Self { blocks }
    }

    /// `mels`: (N, 1, 80, 16) -> (N, 512).
    pub fn forward(&self, mels: &Tensor) -> Tensor {
        let n = mels.size()[0];
        let mut x = mels.shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x.reshape([n, -1])
    }
}
