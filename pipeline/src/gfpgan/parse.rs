//! facexlib's ParseNet face-parsing network in tch (inference, eval-mode BatchNorm), its loader
//! for the official `parsing_parsenet.pth`, and the paste-back weight GFPGANer derives from it
//! ([`FaceParser::face_masks`]): 19-class argmax of the restored face, face classes -> 1, two wide
//! Gaussian blurs, a zeroed border.
//!
//! Architecture (facexlib 0.3.0 `facexlib/parsing/parsenet.py`, built by `init_parsing_model`
//! as `ParseNet(in_size=512, out_size=512, parsing_ch=19)`): a 3x3 conv, residual blocks that
//! halve the map down to `min_feat_size` (channels doubling, clipped to `ch_range`), `res_depth`
//! residual blocks added back onto their input, residual blocks that double it up again, and two
//! 3x3 heads (a 3-channel image, unused by the mask, and the 19 parsing logits). Every conv pads
//! by reflection, nearest-neighbour upsampling precedes the up convs, BatchNorm runs on its
//! running statistics, activations are LeakyReLU(0.2).
//!
//! The official file is a plain state dict (no `params` wrapper); every key and shape, the
//! BatchNorm counters included, is checked both ways (`load_state_dict(strict=True)` there).

use super::conv::ConvPath;
use super::network::in_batches;
use super::stylegan::lrelu_;
use super::warp::{gaussian_blur_matrix, gaussian_kernel_sigma};
use super::weights::{err, fill_var_store, layout_of};
use crate::sadtalker::layers::{convolution, BatchNorm, Conv2d, ConvSpec};
use crate::{PipelineError, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{Path as VarPath, VarStore};
use tch::{Device, Kind, Tensor};

/// File name of the official ParseNet weights inside the checkpoints directory.
pub const PARSENET_FILE: &str = "parsing_parsenet.pth";

/// facexlib's `MASK_COLORMAP` as kept / dropped classes: background (0), neck (14), cloth (16),
/// hair (17) and hat (18) are outside the blend; every other class is face.
pub const FACE_CLASSES: [bool; 19] = {
    let mut keep = [true; 19];
    keep[0] = false;
    keep[14] = false;
    keep[16] = false;
    keep[17] = false;
    keep[18] = false;
    keep
};

/// The mask's two `cv2.GaussianBlur` passes: kernel side and sigma.
pub const MASK_BLUR_KSIZE: i64 = 101;
pub const MASK_BLUR_SIGMA: f64 = 11.0;
/// Rows and columns zeroed on each side of the blurred mask.
pub const MASK_BORDER: i64 = 10;

/// ParseNet's constructor arguments (relu `LeakyReLU`, norm `bn`: the only ones ported).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseNetConfig {
    pub in_size: i64,
    pub out_size: i64,
    pub min_feat_size: i64,
    pub base_ch: i64,
    pub parsing_ch: i64,
    pub res_depth: i64,
    /// `ch_range`: every block's channels are clipped to `[min, max]`.
    pub ch_range: (i64, i64),
}

impl ParseNetConfig {
    /// `init_parsing_model(model_name='parsenet')`: the architecture of `parsing_parsenet.pth`.
    pub fn official() -> Self {
        Self {
            in_size: 512,
            out_size: 512,
            min_feat_size: 32,
            base_ch: 64,
            parsing_ch: 19,
            res_depth: 10,
            ch_range: (32, 256),
        }
    }

    fn clip(&self, c: i64) -> i64 {
        c.min(self.ch_range.1).max(self.ch_range.0)
    }

    /// `int(np.log2(a // b))` for the reference's positive integer sizes.
    fn steps(a: i64, b: i64) -> usize {
        let q = (a / b).max(1);
        (63 - q.leading_zeros()) as usize
    }

    fn check(&self) -> Result<()> {
        let ok = self.in_size > 0
            && self.out_size > 0
            && self.min_feat_size > 0
            && self.base_ch > 0
            && self.parsing_ch > 0
            && self.res_depth >= 0
            && 0 < self.ch_range.0
            && self.ch_range.0 <= self.ch_range.1;
        if ok {
            Ok(())
        } else {
            Err(PipelineError::Internal(format!("invalid ParseNet config {self:?}")))
        }
    }
}

/// How a [`ConvLayer`] or [`ResidualBlock`] changes the map size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    None,
    /// Stride 2.
    Down,
    /// Nearest-neighbour 2x before the conv.
    Up,
}

/// `ConvLayer`: optional nearest 2x upsampling, reflection pad 1, 3x3 conv (stride 2 for
/// `Down`), optional BatchNorm (then without conv bias), optional LeakyReLU(0.2).
///
/// The BatchNorm is folded into the convolution's weight and bias on every call (its running
/// statistics make it a per-channel affine map; the fold costs a pass over the weights, not over
/// the 512 x 512 maps), and stride-1 convolutions run on the network's [`ConvPath`] (Winograd on
/// the CPU).
#[derive(Debug)]
pub struct ConvLayer {
    conv: Conv2d,
    norm: Option<BatchNorm>,
    relu: bool,
    up: bool,
}

impl ConvLayer {
    fn new(p: VarPath, cin: i64, cout: i64, scale: Scale, norm: bool, relu: bool) -> Self {
        let stride = if scale == Scale::Down { 2 } else { 1 };
        let spec = ConvSpec::square(3, stride, 0);
        let spec = if norm { spec.without_bias() } else { spec };
        let conv = Conv2d::new(&p / "conv2d", cin, cout, spec);
        let norm = norm.then(|| BatchNorm::new(&p / "norm" / "norm", cout));
        Self { conv, norm, relu, up: scale == Scale::Up }
    }

    /// A plain layer (conv with bias, no norm, no activation): the first layer, the shortcuts and
    /// the two heads, e.g. `out_mask_conv`.
    pub fn plain(p: VarPath, cin: i64, cout: i64, scale: Scale) -> Self {
        Self::new(p, cin, cout, scale, false, false)
    }

    /// The convolution's weight and bias with the BatchNorm folded in.
    fn folded(&self) -> (Tensor, Option<Tensor>) {
        let (w, b) = (self.conv.weight(), self.conv.bias());
        match &self.norm {
            None => (w.shallow_clone(), b.map(Tensor::shallow_clone)),
            Some(norm) => {
                let (scale, shift) = norm.scale_shift();
                let bias = match b {
                    Some(b) => shift + b * &scale,
                    None => shift,
                };
                (w * scale.view([-1, 1, 1, 1]), Some(bias))
            }
        }
    }

    pub fn forward(&self, x: &Tensor, path: ConvPath) -> Tensor {
        self.apply(&self.input(x), path)
    }

    /// What the convolution reads: `x` upsampled (for `Up`) and reflection-padded.
    fn input(&self, x: &Tensor) -> Tensor {
        let x = if self.up {
            let s = x.size();
            x.upsample_nearest2d([s[2] * 2, s[3] * 2], Some(2.0), Some(2.0))
        } else {
            x.shallow_clone()
        };
        x.reflection_pad2d([1, 1, 1, 1])
    }

    /// The layer on its prepared [`Self::input`].
    fn apply(&self, x: &Tensor, path: ConvPath) -> Tensor {
        let (w, b) = self.folded();
        let stride = self.conv.stride();
        let mut out = if stride == [1, 1] {
            path.conv(x, &w, b.as_ref(), 0)
        } else {
            convolution(x, &w, b.as_ref(), stride, [0, 0], false)
        };
        if self.relu {
            out = lrelu_(out);
        }
        out
    }
}

/// `ResidualBlock`: identity (same size and channels) or a plain [`ConvLayer`] shortcut, plus
/// conv1 (BatchNorm + LeakyReLU) and conv2 (BatchNorm), the rescale on conv1 for `Up` and on
/// conv2 for `Down`.
#[derive(Debug)]
pub struct ResidualBlock {
    shortcut: Option<ConvLayer>,
    conv1: ConvLayer,
    conv2: ConvLayer,
}

impl ResidualBlock {
    pub fn new(p: VarPath, cin: i64, cout: i64, scale: Scale) -> Self {
        let shortcut =
            (scale != Scale::None || cin != cout).then(|| ConvLayer::plain(&p / "shortcut_func", cin, cout, scale));
        let (s1, s2) = match scale {
            Scale::Down => (Scale::None, Scale::Down),
            Scale::Up => (Scale::Up, Scale::None),
            Scale::None => (Scale::None, Scale::None),
        };
        let conv1 = ConvLayer::new(&p / "conv1", cin, cout, s1, true, true);
        let conv2 = ConvLayer::new(&p / "conv2", cout, cout, s2, true, false);
        Self { shortcut, conv1, conv2 }
    }

    pub fn forward(&self, x: &Tensor, path: ConvPath) -> Tensor {
        // conv1 and the shortcut read the same upsampled, padded map (both upsample for `Up`,
        // neither for `Down`, where only the shortcut's stride differs): prepared once.
        let input = self.conv1.input(x);
        let mut res = self.conv2.forward(&self.conv1.apply(&input, path), path);
        match &self.shortcut {
            Some(s) => res += s.apply(&input, path),
            None => res += x,
        }
        res
    }
}

/// facexlib's ParseNet (eval mode, weights in a private `VarStore`).
#[derive(Debug)]
pub struct ParseNet {
    vs: VarStore,
    cfg: ParseNetConfig,
    first: ConvLayer,
    encoder: Vec<ResidualBlock>,
    body: Vec<ResidualBlock>,
    decoder: Vec<ResidualBlock>,
    out_img: ConvLayer,
    out_mask: ConvLayer,
    conv_path: ConvPath,
}

impl ParseNet {
    /// The architecture `cfg` with zero weights on `device` (the loader fills them).
    pub fn build(cfg: &ParseNetConfig, device: Device) -> Result<Self> {
        cfg.check()?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let min_feat = cfg.min_feat_size.min(cfg.in_size);
        let first = ConvLayer::plain(&root / "encoder" / 0, 3, cfg.base_ch, Scale::None);
        let mut head = cfg.base_ch;
        let mut encoder = Vec::new();
        for i in 0..ParseNetConfig::steps(cfg.in_size, min_feat) {
            encoder.push(ResidualBlock::new(
                &root / "encoder" / (i + 1),
                cfg.clip(head),
                cfg.clip(head * 2),
                Scale::Down,
            ));
            head *= 2;
        }
        let body = (0..cfg.res_depth)
            .map(|i| ResidualBlock::new(&root / "body" / i, cfg.clip(head), cfg.clip(head), Scale::None))
            .collect();
        let mut decoder = Vec::new();
        for i in 0..ParseNetConfig::steps(cfg.out_size, min_feat) {
            decoder.push(ResidualBlock::new(&root / "decoder" / i, cfg.clip(head), cfg.clip(head / 2), Scale::Up));
            head /= 2;
        }
        let out_img = ConvLayer::plain(&root / "out_img_conv", cfg.clip(head), 3, Scale::None);
        let out_mask = ConvLayer::plain(&root / "out_mask_conv", cfg.clip(head), cfg.parsing_ch, Scale::None);
        let conv_path = ConvPath::fastest(device);
        Ok(Self { vs, cfg: cfg.clone(), first, encoder, body, decoder, out_img, out_mask, conv_path })
    }

    pub fn config(&self) -> &ParseNetConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// How the stride-1 convolutions run: [`ConvPath::fastest`] for the device unless set.
    pub fn conv_path(&self) -> ConvPath {
        self.conv_path
    }

    /// Choose the convolution path; Winograd falls back to the default where it cannot run.
    pub fn set_conv_path(&mut self, path: ConvPath) {
        self.conv_path = path.usable_on(self.device());
    }

    /// The decoder's features (before the two heads).
    fn features(&self, x: &Tensor) -> Tensor {
        let path = self.conv_path;
        let mut feat = self.first.forward(x, path);
        for b in &self.encoder {
            feat = b.forward(&feat, path);
        }
        let mut body = feat.shallow_clone();
        for b in &self.body {
            body = b.forward(&body, path);
        }
        let mut x = feat + body;
        for b in &self.decoder {
            x = b.forward(&x, path);
        }
        x
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 || x.kind() != Kind::Float || s[2] != self.cfg.in_size || s[3] != self.cfg.in_size
        {
            let side = self.cfg.in_size;
            return Err(PipelineError::Internal(format!(
                "parsenet: expected (b, 3, {side}, {side}) float input, got {s:?} {:?}",
                x.kind()
            )));
        }
        Ok(())
    }

    /// `forward`: x (b, 3, in, in) in [-1, 1] -> (parsing logits (b, parsing_ch, out, out),
    /// image (b, 3, out, out)).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let x = x.to_device(self.device());
        Ok(tch::no_grad(|| {
            let feat = self.features(&x);
            (self.out_mask.forward(&feat, self.conv_path), self.out_img.forward(&feat, self.conv_path))
        }))
    }

    /// Only the parsing logits of [`Self::forward`] (the image head is skipped).
    pub fn forward_mask(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let x = x.to_device(self.device());
        Ok(tch::no_grad(|| self.out_mask.forward(&self.features(&x), self.conv_path)))
    }
}

/// `(name, shape)` of every tensor of the architecture `cfg`, sorted by name (the official
/// layout, BatchNorm counters included, when `cfg` is [`ParseNetConfig::official`]).
pub fn expected_parse_layout(cfg: &ParseNetConfig) -> Result<Vec<(String, Vec<i64>)>> {
    Ok(layout_of(ParseNet::build(cfg, Device::Cpu)?.var_store()))
}

/// Load the ParseNet `cfg` from the plain state dict at `path` onto `device`. Float tensors of
/// any precision are upcast; the BatchNorm counters must be integers and are not used.
pub fn load_parsenet(path: &Path, cfg: &ParseNetConfig, device: Device) -> Result<ParseNet> {
    if !path.is_file() {
        return Err(err(path, "file not found (place the ParseNet weights in the checkpoints directory)"));
    }
    let state: BTreeMap<String, Tensor> = crate::torch_pickle::load(path)?.into_iter().collect();
    let net = ParseNet::build(cfg, device)?;
    let tensors = fill_var_store(path, net.var_store(), &state, "")?;
    tracing::debug!(file = %path.display(), tensors, "loaded parsenet weights");
    Ok(net)
}

/// ParseNet plus what GFPGANer's paste-back (`use_parse=True`) does with its output.
#[derive(Debug)]
pub struct FaceParser {
    net: ParseNet,
    /// (19) float: 1 for [`FACE_CLASSES`], else 0 (`MASK_COLORMAP / 255`).
    colours: Tensor,
    /// (s, s) float: both Gaussian blur passes as one matrix `C = B B` (`blur(M) = B M B^T`).
    blur: Tensor,
    /// (s, s) float: 0 on the [`MASK_BORDER`] rows / columns of each side, else 1.
    border: Tensor,
    /// Faces per network call.
    pub max_batch: usize,
}

impl FaceParser {
    /// Wrap `net`, whose input and output side must match (the face is not resized: GFPGANer's
    /// resize of its 512 face to ParseNet's 512 input is the identity) and which has the 19
    /// classes of the colour map.
    pub fn new(net: ParseNet) -> Result<Self> {
        let cfg = net.config();
        if cfg.in_size != cfg.out_size || cfg.parsing_ch != FACE_CLASSES.len() as i64 || cfg.in_size <= 2 * MASK_BORDER
        {
            return Err(PipelineError::Internal(format!(
                "parse mask: needs in_size == out_size > {} and 19 classes, got {cfg:?}",
                2 * MASK_BORDER
            )));
        }
        let s = cfg.in_size;
        let device = net.device();
        let colours: Vec<f32> = FACE_CLASSES.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        let b = gaussian_blur_matrix(s, &gaussian_kernel_sigma(MASK_BLUR_KSIZE, MASK_BLUR_SIGMA))?;
        let blur = b.matmul(&b).to_kind(Kind::Float).to_device(device);
        let inner = Tensor::ones([s - 2 * MASK_BORDER], (Kind::Float, Device::Cpu));
        let line = inner.constant_pad_nd([MASK_BORDER, MASK_BORDER]);
        let border = line.view([s, 1]).matmul(&line.view([1, s])).to_device(device);
        let max_batch = if device == Device::Cpu { 1 } else { 8 };
        Ok(Self { net, colours: Tensor::from_slice(&colours).to_device(device), blur, border, max_batch })
    }

    pub fn network(&self) -> &ParseNet {
        &self.net
    }

    pub fn network_mut(&mut self) -> &mut ParseNet {
        &mut self.net
    }

    /// Side of the faces it parses.
    pub fn face_size(&self) -> i64 {
        self.net.config().in_size
    }

    /// Class of every pixel: faces (n, s, s, 3) uint8 RGB -> (n, s, s) int64 argmax of the logits
    /// (input `(x / 255 - 0.5) / 0.5`).
    pub fn classes(&self, faces: &Tensor) -> Result<Tensor> {
        let s = self.face_size();
        let size = faces.size();
        if size.len() != 4 || size[1..] != [s, s, 3] || faces.kind() != Kind::Uint8 {
            return Err(PipelineError::Internal(format!(
                "parse mask: expected (n, {s}, {s}, 3) uint8 faces, got {size:?} {:?}",
                faces.kind()
            )));
        }
        in_batches(faces, self.max_batch, self.net.device(), |x| Ok(self.net.forward_mask(x)?.argmax(1, false)))
    }

    /// GFPGANer's blend weight in face coordinates: faces (n, s, s, 3) uint8 RGB -> (n, s, s, 1)
    /// float in [0, 1] on the parser's device: face classes 1, background / neck / cloth / hair /
    /// hat 0, Gaussian-blurred twice (101 x 101, sigma 11, reflect-101), border zeroed.
    pub fn face_masks(&self, faces: &Tensor) -> Result<Tensor> {
        let classes = self.classes(faces)?;
        let s = self.face_size();
        let n = classes.size()[0];
        let mask = self.colours.index_select(0, &classes.flatten(0, -1)).view([n, s, s]);
        let blurred = self.blur.matmul(&mask).matmul(&self.blur.tr());
        Ok((blurred * &self.border).unsqueeze(-1))
    }
}
