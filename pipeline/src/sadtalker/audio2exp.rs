//! audio2exp (`SimpleWrapperV2`): the Wav2Lip audio encoder followed by one linear layer over
//! `[audio 512, reference expression 64, blink ratio 1]` -> 64 expression coefficients per frame.
//! The reference runs 10-frame chunks; every op is per-frame, so all frames go through in large
//! batches here (a test proves the two agree).

use super::batch::{CoeffBatch, EXP_DIM};
use super::layers::{AudioEncoder, Linear};
use super::weights::load_prefix;
use crate::Result;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Checkpoint key prefix of this network.
pub const PREFIX: &str = "audio2exp";
/// Frames per forward pass (bounds activation memory: ~0.2 MB per frame in the first blocks).
const FRAMES_PER_PASS: i64 = 512;

/// The network's layers (paths mirror the `SimpleWrapperV2` state_dict).
#[derive(Debug)]
pub struct SimpleWrapperV2 {
    audio_encoder: AudioEncoder,
    mapping1: Linear,
}

impl SimpleWrapperV2 {
    pub fn new(p: tch::nn::Path) -> Self {
        Self {
            audio_encoder: AudioEncoder::new(&p / "audio_encoder"),
            mapping1: Linear::new(&p / "mapping1", 512 + 64 + 1, 64),
        }
    }

    /// `mels` (N, 1, 80, 16), `ref_exp` (N, 64), `ratio` (N, 1) -> (N, 64).
    pub fn forward(&self, mels: &Tensor, ref_exp: &Tensor, ratio: &Tensor) -> Tensor {
        let audio = self.audio_encoder.forward(mels);
        self.mapping1.forward(&Tensor::cat(&[&audio, ref_exp, ratio], 1))
    }
}

/// audio2exp with its weights.
#[derive(Debug)]
pub struct Audio2Exp {
    vs: VarStore,
    net: SimpleWrapperV2,
}

impl Audio2Exp {
    /// Build the network on `device` with zero weights (call [`Audio2Exp::load`] next).
    pub fn new(device: Device) -> Self {
        let vs = VarStore::new(device);
        let net = SimpleWrapperV2::new(vs.root());
        Self { vs, net }
    }

    /// Build and load from a checkpoint holding `audio2exp.*` keys.
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

    pub fn net(&self) -> &SimpleWrapperV2 {
        &self.net
    }

    /// Expression coefficients for every frame of the batch: (1, T, 64).
    pub fn predict(&self, batch: &CoeffBatch) -> Tensor {
        let t = batch.num_frames as i64;
        if t == 0 {
            return Tensor::zeros([1, 0, EXP_DIM as i64], (tch::Kind::Float, self.vs.device()));
        }
        let mut parts = Vec::new();
        let mut start = 0;
        while start < t {
            let len = FRAMES_PER_PASS.min(t - start);
            parts.push(self.predict_frames(batch, start as usize, len as usize));
            start += len;
        }
        Tensor::cat(&parts, 0).reshape([1, t, EXP_DIM as i64])
    }

    /// Expression coefficients of frames `start..start + len` in one pass: (len, 64).
    pub fn predict_frames(&self, batch: &CoeffBatch, start: usize, len: usize) -> Tensor {
        let _guard = tch::no_grad_guard();
        let t = batch.num_frames as i64;
        let device = self.vs.device();
        let (start, len) = (start as i64, len as i64);
        let mels = batch.indiv_mels.to_device(device).reshape([t, 1, 80, 16]).narrow(0, start, len);
        let ref_exp =
            batch.ref_coeff.to_device(device).reshape([t, -1]).narrow(1, 0, EXP_DIM as i64).narrow(0, start, len);
        let ratio = batch.ratio.to_device(device).reshape([t, 1]).narrow(0, start, len);
        self.net.forward(&mels, &ref_exp, &ratio)
    }
}
