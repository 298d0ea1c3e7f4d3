//! The StyleGAN2 "clean" decoder of GFPGAN with SFT conditions: modulated convolutions (style
//! modulation + demodulation), noise injection, the to-RGB skip path and the constant input.
//! Variable names mirror the reference `state_dict()` keys under `stylegan_decoder.`.
//!
//! The reference folds each sample's style into a per-sample weight and runs one grouped
//! convolution. On [`ConvPath::Default`] the style scales the *input* channels and the
//! demodulation scales the output channels of one shared convolution, which is the same linear
//! map (up to float rounding order) and lets a whole batch run as one ordinary convolution. On
//! [`ConvPath::Winograd`] each image's style, demodulation and gain are folded into its own
//! weights, as the reference does, and the images run one at a time.

use super::config::GfpganConfig;
use super::conv::ConvPath;
use crate::sadtalker::layers::Linear;
use tch::nn::Path;
use tch::Tensor;

/// Demodulation epsilon and the `2 ** 0.5` gain of the reference style conv.
const DEMOD_EPS: f64 = 1e-8;
const STYLE_CONV_GAIN: f64 = std::f64::consts::SQRT_2;

/// `x -> leaky_relu(x, 0.2)`. tch's `leaky_relu` has no slope argument; ATen's leaky-ReLU
/// backward with `x` as both the gradient and the input is `x * (x > 0 ? 1 : 0.2)`, the same
/// numbers in one pass.
pub(crate) fn lrelu(x: &Tensor) -> Tensor {
    x.leaky_relu_backward(x, 0.2, false)
}

/// [`lrelu`] in place: no new full-size buffer (at 512 x 512 these dominate the CPU time).
pub(crate) fn lrelu_(x: Tensor) -> Tensor {
    let _ = x.leaky_relu_backward_grad_input(&x, &x, 0.2, false);
    x
}

/// Bilinear resize by 2 (up) or 1/2 (down), `align_corners=False`.
pub(crate) fn resize2(x: &Tensor, up: bool) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let size = if up { [h * 2, w * 2] } else { [h / 2, w / 2] };
    x.upsample_bilinear2d(size, false, None, None)
}

/// `ModulatedConv2d`: weight (1, out, in, k, k), `modulation` linear style -> in channels.
#[derive(Debug)]
pub struct ModulatedConv {
    modulation: Linear,
    /// The stored (1, out, in, k, k) weight. Views of it are taken per call: a view kept from
    /// construction would go on reading the old storage after the store changes its dtype.
    stored: Tensor,
    demodulate: bool,
    padding: i64,
    upsample: bool,
}

impl ModulatedConv {
    pub fn new(p: Path, cin: i64, cout: i64, kernel: i64, style: i64, demodulate: bool, upsample: bool) -> Self {
        let modulation = Linear::new(&p / "modulation", style, cin);
        let stored = p.zeros_no_train("weight", &[1, cout, cin, kernel, kernel]);
        Self { modulation, stored, demodulate, padding: kernel / 2, upsample }
    }

    /// The (out, in, k, k) weight.
    fn weight(&self) -> Tensor {
        self.stored.squeeze_dim(0)
    }

    /// x (b, in, h, w), style (b, style) -> (b, out, h', w'), times `gain`.
    pub fn forward(&self, x: &Tensor, style: &Tensor, gain: f64, path: ConvPath) -> Tensor {
        let s = self.modulation.forward(style); // (b, in)
        let b = s.size()[0];
        let weight = self.weight();
        let x = if self.upsample { resize2(x, true) } else { x.shallow_clone() };
        // sum over (in, k, k) of (weight * style)^2 = style^2 @ (sum over k of weight^2)^T
        let demod = self.demodulate.then(|| {
            let wsq = weight.square().sum_dim_intlist([2i64, 3].as_slice(), false, weight.kind()); // (out, in)
            (s.square().matmul(&wsq.tr()) + DEMOD_EPS).rsqrt() // (b, out)
        });
        if path.per_image() {
            let size = x.size();
            let cout = weight.size()[0];
            let out = Tensor::empty([b, cout, size[2], size[3]], (x.kind(), x.device()));
            for i in 0..b {
                let mut w = &weight * s.get(i).view([1, -1, 1, 1]);
                if let Some(d) = &demod {
                    w *= (d.get(i) * gain).view([-1, 1, 1, 1]);
                } else if gain != 1.0 {
                    w *= gain;
                }
                path.conv_into(&out.narrow(0, i, 1), &x.narrow(0, i, 1), &w, None, self.padding);
            }
            return out;
        }
        let x = x * s.view([b, -1, 1, 1]);
        let mut out = path.conv(&x, &weight, None, self.padding);
        if let Some(d) = demod {
            out *= d.view([b, -1, 1, 1]);
        }
        if gain != 1.0 {
            out *= gain;
        }
        out
    }
}

/// `StyleConv`: modulated 3x3 conv, noise injection (`weight` (1,)), `bias` (1, out, 1, 1), lrelu.
#[derive(Debug)]
pub struct StyleConv {
    conv: ModulatedConv,
    noise_strength: Tensor,
    bias: Tensor,
}

impl StyleConv {
    pub fn new(p: Path, cin: i64, cout: i64, style: i64, upsample: bool) -> Self {
        let conv = ModulatedConv::new(&p / "modulated_conv", cin, cout, 3, style, true, upsample);
        Self {
            conv,
            noise_strength: p.zeros_no_train("weight", &[1]),
            bias: p.zeros_no_train("bias", &[1, cout, 1, 1]),
        }
    }

    /// `noise` broadcasts over the batch: (1 or b, 1, h', w').
    pub fn forward(&self, x: &Tensor, style: &Tensor, noise: &Tensor, path: ConvPath) -> Tensor {
        let mut out = self.conv.forward(x, style, STYLE_CONV_GAIN, path);
        out += &self.noise_strength * noise;
        out += &self.bias;
        lrelu_(out)
    }
}

/// `ToRGB`: modulated 1x1 conv without demodulation, `bias` (1, 3, 1, 1), upsampled skip added.
#[derive(Debug)]
pub struct ToRgb {
    conv: ModulatedConv,
    bias: Tensor,
    upsample: bool,
}

impl ToRgb {
    pub fn new(p: Path, cin: i64, style: i64, upsample: bool) -> Self {
        let conv = ModulatedConv::new(&p / "modulated_conv", cin, 3, 1, style, false, false);
        Self { conv, bias: p.zeros_no_train("bias", &[1, 3, 1, 1]), upsample }
    }

    pub fn forward(&self, x: &Tensor, style: &Tensor, skip: Option<&Tensor>, path: ConvPath) -> Tensor {
        let mut out = self.conv.forward(x, style, 1.0, path);
        out += &self.bias;
        match skip {
            Some(s) if self.upsample => out += resize2(s, true),
            Some(s) => out += s,
            None => {}
        }
        out
    }
}

/// `StyleGAN2GeneratorCSFT` (inference path): style MLP (used only when the input is not a
/// latent), constant input, the style convs / to-RGB layers and the stored noise buffers.
#[derive(Debug)]
pub struct StyleGanDecoder {
    style_mlp: Vec<Linear>,
    constant: Tensor,
    conv1: StyleConv,
    to_rgb1: ToRgb,
    convs: Vec<StyleConv>,
    to_rgbs: Vec<ToRgb>,
    noises: Vec<Tensor>,
    num_latent: i64,
    sft_half: bool,
    input_is_latent: bool,
}

impl StyleGanDecoder {
    pub fn new(p: Path, cfg: &GfpganConfig) -> Self {
        let s = cfg.num_style_feat;
        // style_mlp.0 is the parameter-free normalisation; the linears sit at odd indices.
        let style_mlp = (0..cfg.num_mlp).map(|i| Linear::new(&p / "style_mlp" / (2 * i + 1), s, s)).collect();
        let c4 = cfg.decoder_channels(4);
        let constant = (&p / "constant_input").zeros_no_train("weight", &[1, c4, 4, 4]);
        let conv1 = StyleConv::new(&p / "style_conv1", c4, c4, s, false);
        let to_rgb1 = ToRgb::new(&p / "to_rgb1", c4, s, false);
        let (mut convs, mut to_rgbs) = (Vec::new(), Vec::new());
        let mut cin = c4;
        for (j, level) in (3..=cfg.log_size()).enumerate() {
            let cout = cfg.decoder_channels(1 << level);
            convs.push(StyleConv::new(&p / "style_convs" / (2 * j), cin, cout, s, true));
            convs.push(StyleConv::new(&p / "style_convs" / (2 * j + 1), cout, cout, s, false));
            to_rgbs.push(ToRgb::new(&p / "to_rgbs" / j, cout, s, true));
            cin = cout;
        }
        let noises = (0..cfg.num_layers())
            .map(|i| {
                let r = GfpganConfig::noise_size(i);
                (&p / "noises").zeros_no_train(&format!("noise{i}"), &[1, 1, r, r])
            })
            .collect();
        Self {
            style_mlp,
            constant,
            conv1,
            to_rgb1,
            convs,
            to_rgbs,
            noises,
            num_latent: cfg.num_latent(),
            sft_half: cfg.sft_half,
            input_is_latent: cfg.input_is_latent,
        }
    }

    /// The noise buffers stored in the checkpoint, one per style conv.
    pub fn stored_noise(&self) -> &[Tensor] {
        &self.noises
    }

    fn style_mlp(&self, z: &Tensor) -> Tensor {
        let mut x = z * (z.square().mean_dim([1i64].as_slice(), true, z.kind()) + 1e-8).rsqrt();
        for l in &self.style_mlp {
            x = lrelu(&l.forward(&x));
        }
        x
    }

    /// `styles`: (b, num_latent, style) or (b, style); `conditions`: scale/shift pairs per level;
    /// `noise`: one map per style conv. Returns the image (b, 3, out, out) in about [-1, 1].
    pub fn forward(&self, styles: &Tensor, conditions: &[Tensor], noise: &[Tensor], path: ConvPath) -> Tensor {
        let latent = if styles.dim() == 2 {
            let w = if self.input_is_latent { styles.shallow_clone() } else { self.style_mlp(styles) };
            w.unsqueeze(1).repeat([1, self.num_latent, 1])
        } else if self.input_is_latent {
            styles.shallow_clone()
        } else {
            let (b, n) = (styles.size()[0], styles.size()[1]);
            self.style_mlp(&styles.flatten(0, 1)).view([b, n, -1])
        };
        let b = latent.size()[0];
        let w = |i: i64| latent.select(1, i);
        let mut out = self.constant.expand([b, -1, -1, -1], false);
        out = self.conv1.forward(&out, &w(0), &noise[0], path);
        let mut skip = self.to_rgb1.forward(&out, &w(1), None, path);
        let mut i = 1i64;
        for (j, to_rgb) in self.to_rgbs.iter().enumerate() {
            out = self.convs[2 * j].forward(&out, &w(i), &noise[2 * j + 1], path);
            if (i as usize) < conditions.len() {
                let (scale, shift) = (&conditions[i as usize - 1], &conditions[i as usize]);
                // `out` is this layer's own fresh output: the condition is applied in place.
                let mut sft = if self.sft_half {
                    let half = out.size()[1] / 2;
                    out.narrow(1, half, out.size()[1] - half)
                } else {
                    out.shallow_clone()
                };
                sft *= scale;
                sft += shift;
            }
            out = self.convs[2 * j + 1].forward(&out, &w(i + 1), &noise[2 * j + 2], path);
            skip = to_rgb.forward(&out, &w(i + 2), Some(&skip), path);
            i += 2;
        }
        skip
    }
}
