//! Stand-in SadTalker checkpoints for benchmarks and end-to-end tests on machines without the
//! official files: the official file names and tensor layout (every key and shape the loaders
//! check, taken from the port's own modules built at full size) filled with seeded random
//! weights. Timings on them are real, because the cost of a forward pass does not depend on the
//! weight values; the pictures they make mean nothing.
//!
//! Weights are scaled so that activations stay finite (uniform in +-1/sqrt(fan_in), norm scales
//! near 1, positive running variances, spectral-norm vectors consistent with their weight), so no
//! NaN or denormal slows a pass down or makes it unrepresentative.

use super::audio2exp::{self, Audio2Exp};
use super::audio2pose::{self, training_only_layout, Audio2Pose};
use super::facerender::mapping::MappingNet;
use super::facerender::{generator, keypoint_detector, FaceRenderConfig, FaceRenderer, RenderSettings};
use super::paths::{CHECKPOINT_256, MAPPING_CROP, MAPPING_FULL};
use super::recon::{self, FaceRecon};
use crate::{PipelineError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The file a stand-in directory carries beside the weights, saying what they are.
pub const MARKER: &str = "STAND_IN_WEIGHTS.txt";

/// What [`write_stand_ins`] wrote.
#[derive(Debug, Clone)]
pub struct StandIns {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub bytes: u64,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Checkpoint { file: path.display().to_string(), reason: format!("cannot write: {e}") }
}

/// Random values for one variable, from its name and shape (see the module docs).
fn random_like(name: &str, shape: &[i64], integer: bool) -> Tensor {
    if integer || name.ends_with("num_batches_tracked") {
        return Tensor::zeros(shape, (Kind::Int64, Device::Cpu));
    }
    let uniform = |lo: f64, hi: f64| Tensor::empty(shape, (Kind::Float, Device::Cpu)).uniform_(lo, hi);
    if name.ends_with("running_var") {
        uniform(0.5, 1.5)
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        uniform(-0.05, 0.05)
    } else if shape.len() <= 1 {
        // Norm scales (and the few 1-d parameters such as class biases).
        uniform(0.9, 1.1)
    } else {
        let fan_in: i64 = shape[1..].iter().product::<i64>().max(1);
        let bound = 1.0 / (fan_in as f64).sqrt();
        uniform(-bound, bound)
    }
}

/// Every variable of `vs` as `(prefix.name, random tensor)`.
fn fill(prefix: &str, vs: &VarStore, out: &mut BTreeMap<String, Tensor>) {
    for (name, var) in vs.variables() {
        let full = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        out.insert(full, random_like(&name, &var.size(), !var.is_floating_point()));
    }
}

/// Make every spectral-norm triple consistent: `v` a unit vector and `u = W v / |W v|`, so the
/// eval-mode `sigma = u . (W v)` is the (positive) norm of `W v`.
fn fix_spectral_norms(tensors: &mut BTreeMap<String, Tensor>) {
    let stems: Vec<String> =
        tensors.keys().filter_map(|k| k.strip_suffix(".weight_orig").map(str::to_string)).collect();
    for stem in stems {
        let (Some(w), true) =
            (tensors.get(&format!("{stem}.weight_orig")), tensors.contains_key(&format!("{stem}.weight_v")))
        else {
            continue;
        };
        let rows = w.size()[0];
        let v = Tensor::randn([w.numel() as i64 / rows], (Kind::Float, Device::Cpu));
        let v = &v / v.norm();
        let wv = w.reshape([rows, -1]).mv(&v);
        let u = &wv / wv.norm().clamp_min(1e-6);
        tensors.insert(format!("{stem}.weight_v"), v);
        tensors.insert(format!("{stem}.weight_u"), u);
    }
}

/// The mapping network's state dict for `coeff_nc` inputs, randomly filled (keys without prefix).
fn mapping_tensors(coeff_nc: i64) -> BTreeMap<String, Tensor> {
    let vs = VarStore::new(Device::Cpu);
    let _net = MappingNet::new(&vs.root(), &FaceRenderConfig::official(coeff_nc).mapping);
    let mut out = BTreeMap::new();
    fill("", &vs, &mut out);
    out
}

fn named(tensors: &BTreeMap<String, Tensor>) -> Vec<(&str, &Tensor)> {
    tensors.iter().map(|(k, t)| (k.as_str(), t)).collect()
}

/// Write `dir/name` through `write` under a temporary name, then rename it into place.
fn write_renamed(dir: &Path, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let (target, partial) = (dir.join(name), dir.join(format!("{name}.partial")));
    write(&partial)?;
    std::fs::rename(&partial, &target).map_err(|e| io_err(&target, e))?;
    Ok(target)
}

/// Write `SadTalker_V0.0.2_256.safetensors`, `mapping_00229-model.pth.tar` and
/// `mapping_00109-model.pth.tar` with the official layout and random weights drawn from `seed`
/// into `dir` (created if needed), plus [`MARKER`]. Files are written under temporary names and
/// renamed, so an interrupted run leaves no half-written checkpoint.
pub fn write_stand_ins(dir: &Path, seed: i64) -> Result<StandIns> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    tch::manual_seed(seed);
    let _guard = tch::no_grad_guard();
    let mut main = BTreeMap::new();
    fill(audio2exp::PREFIX, Audio2Exp::new(Device::Cpu).var_store(), &mut main);
    fill(audio2pose::PREFIX, Audio2Pose::new(Device::Cpu).var_store(), &mut main);
    for spec in training_only_layout() {
        let tensor = random_like(&spec.name, &spec.shape, false);
        main.insert(format!("{}.{}", audio2pose::PREFIX, spec.name), tensor);
    }
    fill(recon::PREFIX, FaceRecon::new(Device::Cpu).var_store(), &mut main);
    {
        let renderer = FaceRenderer::new(&FaceRenderConfig::official(70), &RenderSettings::default())?;
        let [kp, gen, _mapping] = renderer.var_stores();
        fill(keypoint_detector::PREFIX, kp, &mut main);
        fill(generator::PREFIX, gen, &mut main);
    }
    fix_spectral_norms(&mut main);

    let mut tensors = main.len();
    let mut files = vec![write_renamed(dir, CHECKPOINT_256, |partial| {
        Tensor::write_safetensors(&named(&main), partial).map_err(|e| io_err(partial, e))
    })?];
    drop(main);
    for (name, coeff_nc) in [(MAPPING_CROP, 70), (MAPPING_FULL, 73)] {
        let mapping = mapping_tensors(coeff_nc);
        tensors += mapping.len();
        files.push(write_renamed(dir, name, |partial| {
            crate::torch_pickle::save_legacy(partial, "mapping", &named(&mapping))
        })?);
    }
    let marker = dir.join(MARKER);
    let text = format!(
        "Stand-in SadTalker checkpoints: the official file names and tensor layout filled with random weights \
         (seed {seed}), written by vipavatar. Use them to time the engine (the cost of a pass does not depend on \
         weight values); the videos they make are noise. {CHECKPOINT_512_NOTE}\n"
    );
    std::fs::write(&marker, text).map_err(|e| io_err(&marker, e))?;
    let bytes = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    Ok(StandIns { dir: dir.to_path_buf(), files, tensors, bytes })
}

const CHECKPOINT_512_NOTE: &str = "No 512 px checkpoint is written (size=512 stays unavailable).";
