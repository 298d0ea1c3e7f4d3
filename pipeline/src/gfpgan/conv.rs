//! How the GFPGAN network runs its convolutions: ATen's default convolution (oneDNN on the CPU,
//! cuDNN on CUDA; what the reference runs), or, on the CPU, NNPACK's Winograd transform for 3x3
//! kernels, one image at a time, with each image's style folded into its own weights.
//!
//! On this project's 2-core AMD EPYC (Zen 4, AVX-512) CPU NNPACK's Winograd convolution ran the
//! network's 3x3 layers 1.4-2.4x faster than oneDNN on maps of 32 x 32 and up (slower below, see
//! `WINOGRAD_MIN_SIDE`), at a relative error of about 1.5e-5 per layer (the transforms reorder
//! exact arithmetic, they do not approximate); the parity tests run both paths against the
//! fixtures. NNPACK's batched entry point uses a slower algorithm (4 images at 64 x 64 took 2.7x
//! as long as 4 single calls), hence one image per call. oneDNN on channels-last inputs was
//! faster than NNPACK only for the 32- and 64-channel layers at 512 px, and only without the
//! layout conversions it needs; with them, every 3x3 layer of 32 px and up is fastest on NNPACK.

use crate::sadtalker::layers::convolution;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Below this height NNPACK's per-call weight transform costs more than the Winograd
/// arithmetic saves (measured: a 512 -> 512 channel conv is 1.3x faster on Winograd at 32 x 32,
/// 2.4x slower at 16 x 16).
const WINOGRAD_MIN_SIDE: i64 = 32;

/// Which convolution the network runs; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// `aten::_convolution` with TF32 off: the reference's arithmetic on every device.
    Default,
    /// NNPACK Winograd for 3x3 kernels on maps of at least 32 x 32 (CPU only), per image; other
    /// convolutions use the default.
    Winograd,
}

/// Whether NNPACK initialised in this process. ATen initialises it on the first availability
/// query; its convolution fails until then.
fn nnpack_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| Tensor::f_internal_nnpack_available().unwrap_or(false))
}

impl ConvPath {
    /// The faster path that works on `device`: Winograd on a CPU where NNPACK initialises.
    pub fn fastest(device: Device) -> Self {
        if device == Device::Cpu && nnpack_ready() {
            Self::Winograd
        } else {
            Self::Default
        }
    }

    /// `self`, or [`Self::Default`] where Winograd cannot run (`device` not the CPU, no NNPACK).
    pub fn usable_on(self, device: Device) -> Self {
        match self {
            Self::Winograd if Self::fastest(device) == Self::Winograd => Self::Winograd,
            _ => Self::Default,
        }
    }

    /// Whether this path folds per-image styles into per-image weights (one image per call).
    pub fn per_image(self) -> bool {
        self == Self::Winograd
    }

    /// Whether this path convolves `x` with `w` on NNPACK.
    fn winograd(self, x: &Tensor, w: &Tensor) -> bool {
        self == Self::Winograd
            && w.size()[2..] == [3, 3]
            && x.size()[2] >= WINOGRAD_MIN_SIDE
            && x.kind() == Kind::Float
            && x.device() == Device::Cpu
            && nnpack_ready()
    }

    /// Stride-1 convolution of `x` (b, in, h, w) with `w` (out, in, k, k), `padding` each side.
    pub fn conv(self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, padding: i64) -> Tensor {
        if !self.winograd(x, w) {
            return default_conv(x, w, b, padding);
        }
        let (s, k) = (x.size(), w.size());
        let side = |i: usize| s[i] + 2 * padding - k[i] + 1;
        let out = Tensor::empty([s[0], k[0], side(2), side(3)], (Kind::Float, Device::Cpu));
        for i in 0..s[0] {
            self.conv_into(&out.narrow(0, i, 1), &x.narrow(0, i, 1), w, b, padding);
        }
        out
    }

    /// [`Self::conv`] of one image (1, in, h, w) written into `out` (1, out, h', w'), which may
    /// be a slice of a batch.
    pub fn conv_into(self, out: &Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>, padding: i64) {
        if self.winograd(x, w) {
            let _ = x.contiguous().internal_nnpack_spatial_convolution_out(out, w, b, [padding, padding], [1, 1]);
        } else {
            out.shallow_clone().copy_(&default_conv(x, w, b, padding));
        }
    }
}

/// The shared layers' `aten::_convolution` (TF32 off), stride 1.
fn default_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, padding: i64) -> Tensor {
    convolution(x, w, b, [1, 1], [padding, padding], false)
}

/// A convolution layer of the encoder: `weight` (out, in, k, k), `bias` (out), stride 1,
/// padding `k / 2`, under the reference's `weight` / `bias` keys.
#[derive(Debug)]
pub(crate) struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
}

impl Conv {
    pub(crate) fn new(p: tch::nn::Path, cin: i64, cout: i64, kernel: i64) -> Self {
        Self {
            weight: p.zeros_no_train("weight", &[cout, cin, kernel, kernel]),
            bias: p.zeros_no_train("bias", &[cout]),
            padding: kernel / 2,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, path: ConvPath) -> Tensor {
        path.conv(x, &self.weight, Some(&self.bias), self.padding)
    }
}
