//! The SPADE decoder of `OcclusionAwareSPADEGenerator` (`SPADEDecoder`, `SPADEResnetBlock`,
//! `SPADE` in `src/facerender/modules/{generator,util}.py`) with eval-mode spectral norm.
//!
//! Spectral norm is resolved once after loading ([`SpadeDecoder::prepare`]): the checkpoint's
//! `weight_orig` divided by `sigma = u . (W v)` (no power iteration, as in eval mode). The same
//! step folds the nearest upsampling of the segmap into `mlp_shared` at the x2 / x4 blocks
//! ([`super::upconv`]), and the two SPADEs that read the block input share its instance norm.

use super::blocks::{channels_last, leaky_relu, Conv, ConvOpts};
use super::config::SpadeDecoderConfig;
use super::upconv::UpsampledConv;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// InstanceNorm2d epsilon (affine=False, no running statistics).
const IN_EPS: f64 = 1e-5;
/// Leaky-ReLU slope used everywhere in the decoder.
const SLOPE: f64 = 0.2;

/// A convolution wrapped in `torch.nn.utils.spectral_norm`: stores `weight_orig`, `weight_u`,
/// `weight_v` (+ `bias`).
#[derive(Debug)]
pub struct SpectralConv {
    weight_orig: Tensor,
    weight_u: Tensor,
    weight_v: Tensor,
    bias: Option<Tensor>,
    opts: ConvOpts,
    /// The normalised convolution, set by [`SpectralConv::prepare`].
    conv: Option<Conv>,
}

impl SpectralConv {
    pub fn new(p: Path, cin: i64, cout: i64, kernel: i64, opts: ConvOpts) -> Self {
        let weight_orig = p.zeros_no_train("weight_orig", &[cout, cin, kernel, kernel]);
        let weight_u = p.zeros_no_train("weight_u", &[cout]);
        let weight_v = p.zeros_no_train("weight_v", &[cin * kernel * kernel]);
        let bias = opts.bias.then(|| p.zeros_no_train("bias", &[cout]));
        Self { weight_orig, weight_u, weight_v, bias, opts, conv: None }
    }

    /// `weight_orig / (u . (W v))`.
    pub fn normalized_weight(&self) -> Tensor {
        let out = self.weight_orig.size()[0];
        let mat = self.weight_orig.reshape([out, -1]);
        let sigma = self.weight_u.dot(&mat.mv(&self.weight_v));
        &self.weight_orig / sigma
    }

    /// Resolve the normalised weight (call after loading the checkpoint).
    pub fn prepare(&mut self) {
        let weight = tch::no_grad(|| self.normalized_weight());
        self.conv = Some(Conv::from_tensors(weight, self.bias.as_ref().map(Tensor::shallow_clone), self.opts));
    }

    /// Channels-last weight for the resolved convolution.
    pub fn use_channels_last(&mut self) {
        if let Some(conv) = &mut self.conv {
            conv.use_channels_last();
        }
    }

    /// Cast the resolved convolution (e.g. to half precision on CUDA).
    pub fn set_kind(&mut self, kind: Kind) {
        if let Some(conv) = &self.conv {
            let weight = conv.weight.to_kind(kind);
            let bias = conv.bias.as_ref().map(|b| b.to_kind(kind));
            self.conv = Some(Conv::from_tensors(weight, bias, self.opts));
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.conv {
            Some(conv) => conv.forward(x),
            None => {
                Conv::from_tensors(self.normalized_weight(), self.bias.as_ref().map(Tensor::shallow_clone), self.opts)
                    .forward(x)
            }
        }
    }
}

/// `SPADE(norm_nc, label_nc)`: `instance_norm(x) * (1 + gamma) + beta`, with gamma and beta
/// predicted from the nearest-resized segmap by `mlp_shared` (conv3x3 -> ReLU) and two conv3x3.
#[derive(Debug)]
pub struct Spade {
    mlp_shared: Conv,
    /// `mlp_shared` applied directly to the un-upsampled segmap (set by `prepare_upsampled`).
    shared_up: Option<UpsampledConv>,
    mlp_gamma: Conv,
    mlp_beta: Conv,
}

/// The SPADE conditioning input: the decoder input and how much it must be upsampled to match
/// the activations it modulates.
#[derive(Debug)]
pub struct Segmap<'a> {
    pub base: &'a Tensor,
    pub scale: i64,
}

impl Spade {
    pub fn new(p: &Path, norm_nc: i64, label_nc: i64, nhidden: i64) -> Self {
        Self {
            mlp_shared: Conv::new(p / "mlp_shared" / "0", label_nc, nhidden, &[3, 3], ConvOpts::pad(1)),
            shared_up: None,
            mlp_gamma: Conv::new(p / "mlp_gamma", nhidden, norm_nc, &[3, 3], ConvOpts::pad(1)),
            mlp_beta: Conv::new(p / "mlp_beta", nhidden, norm_nc, &[3, 3], ConvOpts::pad(1)),
        }
    }

    fn use_channels_last(&mut self) {
        self.mlp_shared.use_channels_last();
        if let Some(up) = &mut self.shared_up {
            up.use_channels_last();
        }
        self.mlp_gamma.use_channels_last();
        self.mlp_beta.use_channels_last();
    }

    /// For a segmap upsampled by `scale`: fold the upsampling into `mlp_shared`.
    fn prepare_upsampled(&mut self, scale: i64) {
        if scale > 1 {
            self.shared_up = Some(UpsampledConv::new(&self.mlp_shared.weight, self.mlp_shared.bias.as_ref(), scale));
        }
    }

    fn set_kind(&mut self, kind: Kind) {
        if let Some(up) = &mut self.shared_up {
            up.set_kind(kind);
        }
    }

    /// `normalized` is `instance_norm(x)`; the segmap is nearest-resized to x's size (`F.interpolate`).
    fn modulate(&self, normalized: &Tensor, seg: &Segmap<'_>) -> Tensor {
        let actv = match (&self.shared_up, seg.scale) {
            (_, 1) => self.mlp_shared.forward(seg.base),
            (Some(up), _) => up.forward(seg.base),
            (None, s) => {
                let bs = seg.base.size();
                self.mlp_shared.forward(&seg.base.upsample_nearest2d([bs[2] * s, bs[3] * s], None, None))
            }
        };
        let actv = actv.relu();
        let gamma = self.mlp_gamma.forward(&actv);
        let beta = self.mlp_beta.forward(&actv);
        normalized * (gamma + 1.0) + beta
    }
}

/// `InstanceNorm2d(affine=False)`. The library kernel returns a contiguous tensor; for
/// channels-last activations the same statistics are computed with layout-preserving ops so the
/// following convolutions need no reorder.
fn instance_norm(x: &Tensor, channels_last: bool) -> Tensor {
    if channels_last {
        let (var, mean) = x.var_mean_dim([2i64, 3].as_slice(), false, true);
        (x - mean) * (var + IN_EPS).rsqrt()
    } else {
        x.instance_norm(None::<&Tensor>, None::<&Tensor>, None::<&Tensor>, None::<&Tensor>, true, 0.1, IN_EPS, true)
    }
}

/// `SPADEResnetBlock(fin, fout)` with spectral norm on every conv.
#[derive(Debug)]
pub struct SpadeResnetBlock {
    conv_0: SpectralConv,
    conv_1: SpectralConv,
    conv_s: Option<SpectralConv>,
    norm_0: Spade,
    norm_1: Spade,
    norm_s: Option<Spade>,
}

/// Widths of one [`SpadeResnetBlock`].
#[derive(Debug, Clone, Copy)]
pub struct SpadeBlockSpec {
    pub fin: i64,
    pub fout: i64,
    pub label_nc: i64,
    pub nhidden: i64,
}

impl SpadeResnetBlock {
    pub fn new(p: &Path, s: SpadeBlockSpec) -> Self {
        let fmiddle = s.fin.min(s.fout);
        let learned = s.fin != s.fout;
        Self {
            conv_0: SpectralConv::new(p / "conv_0", s.fin, fmiddle, 3, ConvOpts::pad(1)),
            conv_1: SpectralConv::new(p / "conv_1", fmiddle, s.fout, 3, ConvOpts::pad(1)),
            conv_s: learned.then(|| SpectralConv::new(p / "conv_s", s.fin, s.fout, 1, ConvOpts::pad(0).without_bias())),
            norm_0: Spade::new(&(p / "norm_0"), s.fin, s.label_nc, s.nhidden),
            norm_1: Spade::new(&(p / "norm_1"), fmiddle, s.label_nc, s.nhidden),
            norm_s: learned.then(|| Spade::new(&(p / "norm_s"), s.fin, s.label_nc, s.nhidden)),
        }
    }

    fn convs_mut(&mut self) -> impl Iterator<Item = &mut SpectralConv> {
        [Some(&mut self.conv_0), Some(&mut self.conv_1), self.conv_s.as_mut()].into_iter().flatten()
    }

    fn norms_mut(&mut self) -> impl Iterator<Item = &mut Spade> {
        [Some(&mut self.norm_0), Some(&mut self.norm_1), self.norm_s.as_mut()].into_iter().flatten()
    }

    /// Resolve spectral norms; `scale`: how much this block's segmap is upsampled.
    fn prepare(&mut self, scale: i64) {
        self.convs_mut().for_each(SpectralConv::prepare);
        self.norms_mut().for_each(|n| n.prepare_upsampled(scale));
    }

    fn set_kind(&mut self, kind: Kind) {
        self.convs_mut().for_each(|c| c.set_kind(kind));
        self.norms_mut().for_each(|n| n.set_kind(kind));
    }

    fn use_channels_last(&mut self) {
        self.convs_mut().for_each(SpectralConv::use_channels_last);
        self.norms_mut().for_each(Spade::use_channels_last);
    }

    /// `seg.base` upsampled by `seg.scale` has x's spatial size.
    pub fn forward(&self, x: &Tensor, segmap: &Segmap<'_>, channels_last: bool) -> Tensor {
        // norm_0 and norm_s normalise the same input: compute the instance norm once.
        let normalized = instance_norm(x, channels_last);
        let shortcut = match (&self.conv_s, &self.norm_s) {
            (Some(conv), Some(norm)) => conv.forward(&norm.modulate(&normalized, segmap)),
            _ => x.shallow_clone(),
        };
        let dx = self.conv_0.forward(&leaky_relu(&self.norm_0.modulate(&normalized, segmap), SLOPE));
        let dx =
            self.conv_1.forward(&leaky_relu(&self.norm_1.modulate(&instance_norm(&dx, channels_last), segmap), SLOPE));
        shortcut + dx
    }
}

/// `SPADEDecoder`: fc conv, six `G_middle` blocks at the input resolution, two x2 nearest
/// upsamplings each followed by a block, leaky ReLU, `conv_img`, sigmoid.
#[derive(Debug)]
pub struct SpadeDecoder {
    fc: Conv,
    middle: Vec<SpadeResnetBlock>,
    up_0: SpadeResnetBlock,
    up_1: SpadeResnetBlock,
    conv_img: Conv,
    /// Run on channels-last activations (set by [`SpadeDecoder::use_channels_last`]).
    channels_last: bool,
}

impl SpadeDecoder {
    pub fn new(p: &Path, c: &SpadeDecoderConfig, image_channel: i64) -> Self {
        let spec = |fin, fout| SpadeBlockSpec { fin, fout, label_nc: c.label_nc, nhidden: c.nhidden };
        let wide = 2 * c.ic;
        Self {
            fc: Conv::new(p / "fc", c.ic, wide, &[3, 3], ConvOpts::pad(1)),
            middle: (0..6).map(|i| SpadeResnetBlock::new(&(p / format!("G_middle_{i}")), spec(wide, wide))).collect(),
            up_0: SpadeResnetBlock::new(&(p / "up_0"), spec(wide, c.ic)),
            up_1: SpadeResnetBlock::new(&(p / "up_1"), spec(c.ic, c.oc)),
            conv_img: Conv::new(p / "conv_img", c.oc, image_channel, &[3, 3], ConvOpts::pad(1)),
            channels_last: false,
        }
    }

    fn blocks_mut(&mut self) -> impl Iterator<Item = &mut SpadeResnetBlock> {
        self.middle.iter_mut().chain([&mut self.up_0, &mut self.up_1])
    }

    /// Resolve spectral norms (after loading); with `fold_upsampling`, also fold the segmap
    /// upsampling of `up_0` / `up_1` into their `mlp_shared` convolutions.
    pub fn prepare(&mut self, fold_upsampling: bool) {
        let (s2, s4) = if fold_upsampling { (2, 4) } else { (1, 1) };
        self.middle.iter_mut().for_each(|b| b.prepare(1));
        self.up_0.prepare(s2);
        self.up_1.prepare(s4);
    }

    /// Cast the resolved spectral-norm weights (the other variables are cast by their VarStore).
    pub fn set_kind(&mut self, kind: Kind) {
        self.blocks_mut().for_each(|b| b.set_kind(kind));
    }

    /// Channels-last weights for every convolution (call after [`SpadeDecoder::prepare`]).
    pub fn use_channels_last(&mut self) {
        self.channels_last = true;
        self.fc.use_channels_last();
        self.blocks_mut().for_each(SpadeResnetBlock::use_channels_last);
        self.conv_img.use_channels_last();
    }

    /// `feature`: (B, ic, H, W) -> image (B, 3, 4H, 4W) in (0, 1).
    pub fn forward(&self, feature: &Tensor) -> Tensor {
        let s = feature.size();
        let (h, w) = (s[2], s[3]);
        let cl = self.channels_last;
        let feature = if cl { channels_last(feature) } else { feature.shallow_clone() };
        let seg = |scale| Segmap { base: &feature, scale };
        let mut x = self.fc.forward(&feature);
        for block in &self.middle {
            x = block.forward(&x, &seg(1), cl);
        }
        x = x.upsample_nearest2d([h * 2, w * 2], Some(2.0), Some(2.0));
        x = self.up_0.forward(&x, &seg(2), cl);
        x = x.upsample_nearest2d([h * 4, w * 4], Some(2.0), Some(2.0));
        x = self.up_1.forward(&x, &seg(4), cl);
        self.conv_img.forward(&leaky_relu(&x, SLOPE)).sigmoid()
    }
}
