//! audio2pose: the CVAE test path of SadTalker's `Audio2Pose` (46 pose-style classes).
//! Per 32-frame chunk: `z + classbias[style]`, `[ref pose 6, z 64, linear_audio(emb) 32x6]` ->
//! MLP (ReLU, Sigmoid) -> (32, 6) -> ResUnet -> `pose_linear`. The first frame is the reference
//! pose; the remainder chunk is taken from the last 32 frames and only its tail rows are kept.
//! All chunks of a clip run as one batch; the noise `z` is an explicit input.

use super::batch::{CoeffBatch, COEFF_DIM, EXP_DIM, POSE_DIM};
use super::layers::{AudioEncoder, BatchNorm, Conv2d, ConvSpec, ConvTranspose2d, Linear};
use super::rng::noise_rng;
use super::weights::{load_prefix, var_store_layout, KeySpec};
use crate::error::ResultExt;
use crate::{PipelineError, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Checkpoint key prefix of this network.
pub const PREFIX: &str = "audio2pose";
/// Frames per CVAE chunk (`MODEL.CVAE.SEQ_LEN`).
pub const SEQ_LEN: usize = 32;
/// CVAE latent size.
pub const LATENT: usize = 64;
/// Pose-style classes (`DATASET.NUM_CLASSES`).
pub const NUM_CLASSES: usize = 46;

/// ResUnet residual block: `conv(relu(bn(conv(relu(bn(x)))))) + bn(conv(x))`.
#[derive(Debug)]
struct ResidualConv {
    bn_in: BatchNorm,
    conv_a: Conv2d,
    bn_mid: BatchNorm,
    conv_b: Conv2d,
    skip_conv: Conv2d,
    skip_bn: BatchNorm,
}

impl ResidualConv {
    fn new(p: &tch::nn::Path, cin: i64, cout: i64, stride: [i64; 2]) -> Self {
        let block = p / "conv_block";
        let skip = p / "conv_skip";
        let strided = ConvSpec::square(3, 1, 1).with_stride(stride);
        Self {
            bn_in: BatchNorm::new(&block / "0", cin),
            conv_a: Conv2d::new(&block / "2", cin, cout, strided),
            bn_mid: BatchNorm::new(&block / "3", cout),
            conv_b: Conv2d::new(&block / "5", cout, cout, ConvSpec::square(3, 1, 1)),
            skip_conv: Conv2d::new(&skip / "0", cin, cout, strided),
            skip_bn: BatchNorm::new(&skip / "1", cout),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let main = self.bn_in.forward(x).relu();
        let main = self.bn_mid.forward(&self.conv_a.forward(&main)).relu();
        self.conv_b.forward(&main) + self.skip_bn.forward(&self.skip_conv.forward(x))
    }
}

/// The pose ResUnet on (B, 1, 32, 6): three (2, 1)-strided residual stages, transposed-conv
/// upsampling with `[upsampled, skip]` concatenation, 1x1 conv + sigmoid.
#[derive(Debug)]
struct ResUnet {
    input_conv: Conv2d,
    input_bn: BatchNorm,
    input_conv2: Conv2d,
    input_skip: Conv2d,
    down: [ResidualConv; 3],
    up: [(ConvTranspose2d, ResidualConv); 3],
    output: Conv2d,
}

impl ResUnet {
    fn new(p: &tch::nn::Path) -> Self {
        let s3 = ConvSpec::square(3, 1, 1);
        let f = [32i64, 64, 128, 256];
        let half = [2, 1];
        let input = p / "input_layer";
        let up = |i: usize, c: i64, skip: i64, out: i64| {
            (
                ConvTranspose2d::new(p / format!("upsample_{i}") / "upsample", c, c, half),
                ResidualConv::new(&(p / format!("up_residual_conv{i}")), c + skip, out, [1, 1]),
            )
        };
        Self {
            input_conv: Conv2d::new(&input / "0", 1, f[0], s3),
            input_bn: BatchNorm::new(&input / "1", f[0]),
            input_conv2: Conv2d::new(&input / "3", f[0], f[0], s3),
            input_skip: Conv2d::new(p / "input_skip" / "0", 1, f[0], s3),
            down: [
                ResidualConv::new(&(p / "residual_conv_1"), f[0], f[1], half),
                ResidualConv::new(&(p / "residual_conv_2"), f[1], f[2], half),
                ResidualConv::new(&(p / "bridge"), f[2], f[3], half),
            ],
            up: [up(1, f[3], f[2], f[2]), up(2, f[2], f[1], f[1]), up(3, f[1], f[0], f[0])],
            output: Conv2d::new(p / "output_layer" / "0", f[0], 1, ConvSpec::square(1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x1 = self.input_conv2.forward(&self.input_bn.forward(&self.input_conv.forward(x)).relu())
            + self.input_skip.forward(x);
        let x2 = self.down[0].forward(&x1);
        let x3 = self.down[1].forward(&x2);
        let mut y = self.down[2].forward(&x3);
        for ((upsample, conv), skip) in self.up.iter().zip([&x3, &x2, &x1]) {
            y = conv.forward(&Tensor::cat(&[&upsample.forward(&y), skip], 1));
        }
        self.output.forward(&y).sigmoid()
    }
}

/// The CVAE decoder (`netG.decoder`).
#[derive(Debug)]
struct PoseDecoder {
    classbias: Tensor,
    resunet: ResUnet,
    mlp0: Linear,
    mlp1: Linear,
    pose_linear: Linear,
    linear_audio: Linear,
}

impl PoseDecoder {
    fn new(p: &tch::nn::Path) -> Self {
        let audio_out = (SEQ_LEN * POSE_DIM) as i64;
        Self {
            classbias: p.zeros_no_train("classbias", &[NUM_CLASSES as i64, LATENT as i64]),
            resunet: ResUnet::new(&(p / "resunet")),
            mlp0: Linear::new(p / "MLP" / "L0", LATENT as i64 + audio_out + POSE_DIM as i64, 128),
            mlp1: Linear::new(p / "MLP" / "L1", 128, audio_out),
            pose_linear: Linear::new(p / "pose_linear", POSE_DIM as i64, POSE_DIM as i64),
            linear_audio: Linear::new(p / "linear_audio", 512, POSE_DIM as i64),
        }
    }

    /// `z` (B, 64), `class` (B,) int64, `ref_pose` (B, 6), `audio_emb` (B, 32, 512) -> (B, 32, 6).
    fn forward(&self, z: &Tensor, class: &Tensor, ref_pose: &Tensor, audio_emb: &Tensor) -> Tensor {
        let b = z.size()[0];
        let audio = self.linear_audio.forward(audio_emb).reshape([b, -1]);
        let z = z + self.classbias.index_select(0, class);
        let x = Tensor::cat(&[ref_pose, &z, &audio], -1);
        let x = self.mlp1.forward(&self.mlp0.forward(&x).relu()).sigmoid();
        let x = x.reshape([b, SEQ_LEN as i64, -1]).unsqueeze(1);
        self.pose_linear.forward(&self.resunet.forward(&x).squeeze_dim(1))
    }
}

/// Result of [`Audio2Pose::predict`].
#[derive(Debug)]
pub struct PosePrediction {
    /// Audio embeddings of each decoded chunk before left padding: (len <= 32, 512) each.
    pub chunk_embeddings: Vec<Tensor>,
    /// Decoder output per chunk: (n_chunks, 32, 6).
    pub chunk_motion: Tensor,
    /// Motion relative to the reference pose, zero for frame 0: (1, T, 6).
    pub motion: Tensor,
    /// Reference pose + motion, before smoothing: (1, T, 6).
    pub pose: Tensor,
}

/// Number of CVAE noise draws (`z` rows) a clip of `num_frames` frames consumes.
pub fn noise_draws(num_frames: usize) -> usize {
    num_frames.saturating_sub(1).div_ceil(SEQ_LEN)
}

/// Seeded standard-normal CVAE noise for a clip: (noise_draws, 64) float32 on the CPU.
pub fn draw_noise(num_frames: usize, seed: u64) -> Tensor {
    let rows = noise_draws(num_frames);
    let mut rng = noise_rng(seed);
    let values: Vec<f32> = (0..rows * LATENT).map(|_| rng.normal_f32()).collect();
    Tensor::from_slice(&values).reshape([rows as i64, LATENT as i64])
}

/// audio2pose with its weights (audio encoder + CVAE decoder).
#[derive(Debug)]
pub struct Audio2Pose {
    vs: VarStore,
    audio_encoder: AudioEncoder,
    decoder: PoseDecoder,
}

impl Audio2Pose {
    /// Build on `device` with zero weights (call [`Audio2Pose::load`] next).
    pub fn new(device: Device) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        let audio_encoder = AudioEncoder::new(&root / "audio_encoder" / "audio_encoder");
        let decoder = PoseDecoder::new(&(&root / "netG" / "decoder"));
        Self { vs, audio_encoder, decoder }
    }

    pub fn from_checkpoint(path: &Path, device: Device) -> Result<Self> {
        let model = Self::new(device);
        model.load(path)?;
        Ok(model)
    }

    /// Load `audio2pose.*`; the training-only `netG.encoder.*` / `netD_motion.*` keys are
    /// validated by name and shape but not kept.
    pub fn load(&self, path: &Path) -> Result<()> {
        load_prefix(&self.vs, path, PREFIX, &training_only_layout())
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// `Audio2Pose.test` for batch size 1: `noise` holds [`noise_draws`] rows of 64 values
    /// (full chunks first, then the remainder chunk), `pose_style` in 0..46.
    pub fn predict(&self, batch: &CoeffBatch, pose_style: u32, noise: &Tensor) -> Result<PosePrediction> {
        let _guard = tch::no_grad_guard();
        let device = self.vs.device();
        let t = batch.num_frames;
        let (full, rest) = window_counts(t);
        let draws = noise_draws(t);
        let noise = check_noise(noise, t, device)?;
        let ref_pose = reference_pose(batch, device)?;
        let zero_row = Tensor::zeros([1, POSE_DIM as i64], (Kind::Float, device));
        if draws == 0 {
            check_style(pose_style)?;
            let motion = zero_row.unsqueeze(0);
            let pose = &ref_pose.unsqueeze(0) + &motion;
            let chunk_motion = Tensor::zeros([0, SEQ_LEN as i64, POSE_DIM as i64], (Kind::Float, device));
            return Ok(PosePrediction { chunk_embeddings: Vec::new(), chunk_motion, motion, pose });
        }

        // One encoder pass over frames 1..T (frame 0 is the reference).
        let n = t - 1;
        let mels = mel_windows(batch, device)?;
        let emb = self.audio_encoder.forward(&mels.narrow(0, 1, n as i64)); // (n, 512)
        let chunk_embeddings: Vec<Tensor> = (0..draws)
            .map(|w| {
                let (start, len) = window_frames(t, w);
                emb.narrow(0, (start - 1) as i64, len as i64)
            })
            .collect();
        let audio = Tensor::stack(&chunk_embeddings.iter().map(pad_window).collect::<Vec<_>>(), 0); // (draws, 32, 512)
        let chunk_motion = self.decode(&noise, pose_style, &ref_pose, &audio)?;

        let mut rows = vec![zero_row];
        rows.extend((0..full).map(|i| chunk_motion.get(i as i64)));
        if rest != 0 {
            rows.push(chunk_motion.get(full as i64).narrow(0, (SEQ_LEN - rest) as i64, rest as i64));
        }
        let motion = Tensor::cat(&rows, 0).unsqueeze(0); // (1, T, 6)
        let pose = &ref_pose.unsqueeze(0) + &motion;
        Ok(PosePrediction { chunk_embeddings, chunk_motion, motion, pose })
    }

    /// The pose motion of chunk `window` alone (0..[`noise_draws`]): its rows of the clip's
    /// `motion` as (rows, 6), for frames [`window_rows`]. The same computation as
    /// [`Audio2Pose::predict`] for that chunk, one chunk per network call, so a clip's pose does
    /// not depend on how many chunks are asked for at once.
    pub fn predict_window(&self, batch: &CoeffBatch, pose_style: u32, noise: &Tensor, window: usize) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let device = self.vs.device();
        let t = batch.num_frames;
        if window >= noise_draws(t) {
            return Err(PipelineError::Internal(format!("audio2pose chunk {window} of a {t}-frame clip")));
        }
        let noise = check_noise(noise, t, device)?.narrow(0, window as i64, 1);
        let ref_pose = reference_pose(batch, device)?;
        let (start, len) = window_frames(t, window);
        let emb = self.audio_encoder.forward(&mel_windows(batch, device)?.narrow(0, start as i64, len as i64));
        let motion = self.decode(&noise, pose_style, &ref_pose, &pad_window(&emb).unsqueeze(0))?.get(0);
        let rows = window_rows(t, window);
        Ok(motion.narrow(0, (SEQ_LEN - rows.len()) as i64, rows.len() as i64))
    }

    /// The CVAE decoder on `audio` (draws, 32, 512) with one noise row per chunk.
    fn decode(&self, noise: &Tensor, pose_style: u32, ref_pose: &Tensor, audio: &Tensor) -> Result<Tensor> {
        check_style(pose_style)?;
        let draws = audio.size()[0];
        let class = Tensor::full([draws], i64::from(pose_style), (Kind::Int64, audio.device()));
        Ok(self.decoder.forward(noise, &class, &ref_pose.expand([draws, -1], false), audio))
    }
}

fn check_style(pose_style: u32) -> Result<()> {
    if pose_style as usize >= NUM_CLASSES {
        return Err(PipelineError::InvalidOption {
            field: "pose_style",
            reason: format!("{pose_style} is outside 0..={}", NUM_CLASSES - 1),
        });
    }
    Ok(())
}

/// (full 32-frame chunks, frames in the remainder chunk) of a `t`-frame clip's frames 1..t.
fn window_counts(t: usize) -> (usize, usize) {
    let n = t.saturating_sub(1);
    (n / SEQ_LEN, n % SEQ_LEN)
}

/// Clip frames whose audio feeds chunk `window`: (first frame, count). Full chunks take frames
/// `1 + 32 w ..`; the remainder chunk takes the last (up to) 32 frames of the clip.
fn window_frames(t: usize, window: usize) -> (usize, usize) {
    let (full, _) = window_counts(t);
    let n = t.saturating_sub(1);
    if window < full {
        (1 + window * SEQ_LEN, SEQ_LEN)
    } else {
        let len = n.min(SEQ_LEN);
        (1 + n - len, len)
    }
}

/// Clip frames whose pose motion chunk `window` gives: `1 + 32 w ..` for a full chunk, the
/// frames after the last full chunk for the remainder chunk (frame 0 is the reference, zero).
pub fn window_rows(t: usize, window: usize) -> std::ops::Range<usize> {
    let (full, rest) = window_counts(t);
    let start = 1 + window * SEQ_LEN;
    if window < full {
        start..start + SEQ_LEN
    } else {
        start..start + rest
    }
}

/// A chunk's embeddings padded to 32 rows with copies of its first row (clips under 33 frames).
fn pad_window(e: &Tensor) -> Tensor {
    let missing = SEQ_LEN as i64 - e.size()[0];
    if missing > 0 {
        Tensor::cat(&[e.narrow(0, 0, 1).repeat([missing, 1]), e.shallow_clone()], 0)
    } else {
        e.shallow_clone()
    }
}

fn check_noise(noise: &Tensor, t: usize, device: Device) -> Result<Tensor> {
    let draws = noise_draws(t);
    let noise = noise.to_device(device).to_kind(Kind::Float);
    if noise.size() != [draws as i64, LATENT as i64] && noise.size() != [draws as i64, 1, LATENT as i64] {
        return Err(PipelineError::Internal(format!(
            "audio2pose needs {draws} noise rows of {LATENT} for {t} frames, got {:?}",
            noise.size()
        )));
    }
    Ok(noise.reshape([draws as i64, LATENT as i64]))
}

/// The source pose (1, 6): the pose columns of the first reference row.
fn reference_pose(batch: &CoeffBatch, device: Device) -> Result<Tensor> {
    Ok(batch.ref_coeff.to_device(device).f_narrow(1, 0, 1).ctx("ref pose")?.reshape([1, COEFF_DIM as i64]).narrow(
        1,
        EXP_DIM as i64,
        POSE_DIM as i64,
    ))
}

fn mel_windows(batch: &CoeffBatch, device: Device) -> Result<Tensor> {
    batch.indiv_mels.to_device(device).f_reshape([batch.num_frames as i64, 1, 80, 16]).ctx("mel windows")
}

/// Names and shapes of the `audio2pose.*` keys that the official checkpoint stores but inference
/// never reads: the CVAE encoder (`netG.encoder.*`) and the pose discriminator (`netD_motion.*`).
pub fn training_only_layout() -> Vec<KeySpec> {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let enc = &root / "netG" / "encoder";
    let audio_out = (SEQ_LEN * POSE_DIM) as i64;
    let _ = enc.zeros_no_train("classbias", &[NUM_CLASSES as i64, LATENT as i64]);
    ResUnet::new(&(&enc / "resunet"));
    // ENCODER_LAYER_SIZES [192, 128] with the first widened by latent + audio + ref.
    Linear::new(&enc / "MLP" / "L0", 192 + LATENT as i64 + audio_out + POSE_DIM as i64, 128);
    Linear::new(&enc / "linear_means", 128, LATENT as i64);
    Linear::new(&enc / "linear_logvar", 128, LATENT as i64);
    Linear::new(&enc / "linear_audio", 512, POSE_DIM as i64);
    let seq = &root / "netD_motion" / "seq";
    for (i, (cin, cout, k)) in [(6i64, 256i64, 4i64), (256, 512, 4), (512, 1024, 3)].into_iter().enumerate() {
        let _ = seq.sub(i).sub("conv").zeros_no_train("weight", &[cout, cin, k]);
        BatchNorm::new(seq.sub(i).sub("norm"), cout);
    }
    let _ = seq.sub(3).zeros_no_train("weight", &[1, 1024, 3]);
    let _ = seq.sub(3).zeros_no_train("bias", &[1]);
    var_store_layout(&vs)
}
