//! The 3DMM regression network (Deep3DFaceRecon `ReconNetWrapper`, ResNet-50 V1.5 backbone
//! without `fc`, seven 1x1 conv heads) on the 224x224 aligned face: 257 coefficients
//! (id 80, exp 64, tex 80, angle 3, gamma 27, translation 3), their split, and SadTalker's
//! 73-d source coefficients `[exp, angle, trans, s, tx, ty]`.

use super::layers::{BatchNorm, Conv2d, ConvSpec};
use super::weights::load_prefix;
use crate::error::ResultExt;
use crate::image::RgbImage;
use crate::{PipelineError, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Checkpoint key prefix of this network.
pub const PREFIX: &str = "face_3drecon";
/// Side of the aligned input image.
pub const INPUT_SIZE: u32 = 224;
/// Output coefficients.
pub const NUM_COEFFS: usize = 257;
/// Width of each head, in output order: id, exp, tex, angle, gamma, txy, tz.
const HEADS: [i64; 7] = [80, 64, 80, 3, 27, 2, 1];

/// ResNet bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), identity or 1x1-conv shortcut, ReLU.
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Conv2d,
    bn3: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Bottleneck {
    fn new(p: &tch::nn::Path, inplanes: i64, planes: i64, stride: i64) -> Self {
        let out = planes * 4;
        let downsample = (stride != 1 || inplanes != out).then(|| {
            let d = p / "downsample";
            (
                Conv2d::new(&d / "0", inplanes, out, ConvSpec::square(1, stride, 0).without_bias()),
                BatchNorm::new(&d / "1", out),
            )
        });
        Self {
            conv1: Conv2d::new(p / "conv1", inplanes, planes, ConvSpec::square(1, 1, 0).without_bias()),
            bn1: BatchNorm::new(p / "bn1", planes),
            conv2: Conv2d::new(p / "conv2", planes, planes, ConvSpec::square(3, stride, 1).without_bias()),
            bn2: BatchNorm::new(p / "bn2", planes),
            conv3: Conv2d::new(p / "conv3", planes, out, ConvSpec::square(1, 1, 0).without_bias()),
            bn3: BatchNorm::new(p / "bn3", out),
            downsample,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.bn1.forward(&self.conv1.forward(x)).relu();
        let y = self.bn2.forward(&self.conv2.forward(&y)).relu();
        let y = self.bn3.forward(&self.conv3.forward(&y));
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)),
            None => x.shallow_clone(),
        };
        (y + identity).relu()
    }
}

/// ResNet-50 (torchvision layout) + the seven coefficient heads.
#[derive(Debug)]
pub struct ReconNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<Bottleneck>,
    heads: Vec<Conv2d>,
}

impl ReconNet {
    pub fn new(p: tch::nn::Path) -> Self {
        let b = &p / "backbone";
        let mut blocks = Vec::new();
        let mut inplanes = 64;
        for (layer, (planes, count, stride)) in
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)].into_iter().enumerate()
        {
            let lp = &b / format!("layer{}", layer + 1);
            for i in 0..count {
                blocks.push(Bottleneck::new(&(&lp / i), inplanes, planes, if i == 0 { stride } else { 1 }));
                inplanes = planes * 4;
            }
        }
        let heads = HEADS
            .iter()
            .enumerate()
            .map(|(i, &w)| Conv2d::new(&p / "final_layers" / i, 2048, w, ConvSpec::square(1, 1, 0)))
            .collect();
        Self {
            conv1: Conv2d::new(&b / "conv1", 3, 64, ConvSpec::square(7, 2, 3).without_bias()),
            bn1: BatchNorm::new(&b / "bn1", 64),
            blocks,
            heads,
        }
    }

    /// (B, 3, 224, 224) float32 in [0, 1] -> (B, 257).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = self.bn1.forward(&self.conv1.forward(x)).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            y = block.forward(&y);
        }
        let pooled = y.adaptive_avg_pool2d([1, 1]);
        let outs: Vec<Tensor> = self.heads.iter().map(|h| h.forward(&pooled)).collect();
        Tensor::cat(&outs, 1).flatten(1, -1)
    }
}

/// `split_coeff` of a (B, 257) tensor.
#[derive(Debug)]
pub struct SplitCoeffs {
    pub id: Tensor,
    pub exp: Tensor,
    pub tex: Tensor,
    pub angle: Tensor,
    pub gamma: Tensor,
    pub trans: Tensor,
}

impl SplitCoeffs {
    pub fn new(coeffs: &Tensor) -> Self {
        let part = |start: i64, len: i64| coeffs.narrow(1, start, len);
        Self {
            id: part(0, 80),
            exp: part(80, 64),
            tex: part(144, 80),
            angle: part(224, 3),
            gamma: part(227, 27),
            trans: part(254, 3),
        }
    }

    /// SadTalker's per-image `coeff_3dmm` (B, 73): `[exp 64, angle 3, trans 3, s, tx, ty]` with
    /// `trans_params = [w0, h0, s, tx, ty]` of the alignment.
    pub fn coeff_3dmm(&self, trans_params: [f32; 5]) -> Tensor {
        let b = self.exp.size()[0];
        let tail =
            Tensor::from_slice(&trans_params[2..]).to_device(self.exp.device()).reshape([1, 3]).expand([b, 3], false);
        Tensor::cat(&[&self.exp, &self.angle, &self.trans, &tail], 1)
    }
}

/// The recon network with its weights.
#[derive(Debug)]
pub struct FaceRecon {
    vs: VarStore,
    net: ReconNet,
}

impl FaceRecon {
    /// Build on `device` with zero weights (call [`FaceRecon::load`] next).
    pub fn new(device: Device) -> Self {
        let vs = VarStore::new(device);
        let net = ReconNet::new(vs.root());
        Self { vs, net }
    }

    pub fn from_checkpoint(path: &Path, device: Device) -> Result<Self> {
        let model = Self::new(device);
        model.load(path)?;
        Ok(model)
    }

    pub fn load(&self, path: &Path) -> Result<()> {
        load_prefix(&self.vs, path, PREFIX, &[])
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// 257 coefficients of a (B, 3, 224, 224) float input (values `u8 / 255`, RGB).
    pub fn coeffs(&self, input: &Tensor) -> Result<Tensor> {
        let size = input.size();
        if size.len() != 4 || size[1] != 3 || size[2] != i64::from(INPUT_SIZE) || size[3] != i64::from(INPUT_SIZE) {
            return Err(PipelineError::Internal(format!("recon input must be (B, 3, 224, 224), got {size:?}")));
        }
        let _guard = tch::no_grad_guard();
        let x = input.f_to_kind(Kind::Float).ctx("recon input")?.to_device(self.vs.device());
        Ok(self.net.forward(&x))
    }

    /// 257 coefficients of an aligned 224x224 RGB face.
    pub fn coeffs_of_image(&self, image: &RgbImage) -> Result<Tensor> {
        self.coeffs(&image_to_input(image)?)
    }
}

/// `torch.tensor(np.array(img) / 255., float32).permute(2, 0, 1).unsqueeze(0)`: (1, 3, 224, 224).
pub fn image_to_input(image: &RgbImage) -> Result<Tensor> {
    if image.width != INPUT_SIZE
        || image.height != INPUT_SIZE
        || image.data.len() != (INPUT_SIZE * INPUT_SIZE * 3) as usize
    {
        return Err(PipelineError::Internal(format!(
            "the recon network needs a 224x224 aligned face, got {}x{}",
            image.width, image.height
        )));
    }
    let values: Vec<f32> = image.data.iter().map(|&v| (f64::from(v) / 255.0) as f32).collect();
    let s = i64::from(INPUT_SIZE);
    Ok(Tensor::from_slice(&values).reshape([s, s, 3]).permute([2, 0, 1]).unsqueeze(0).contiguous())
}
