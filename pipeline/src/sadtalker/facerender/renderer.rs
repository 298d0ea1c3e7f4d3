//! The face renderer: keypoint detector + mapping net + SPADE generator loaded from the official
//! checkpoint layout, the once-per-avatar source precompute ([`FaceRenderer::prepare_source`]),
//! and batched rendering of driving windows with results streamed per batch
//! ([`FaceRenderer::render`]). The generator may run in float16 on CUDA; the keypoint detector
//! and the mapping net always run in float32.

use super::config::FaceRenderConfig;
use super::dense_motion::MotionSource;
use super::generator::{Generator, GeneratorOutput};
use super::keypoint_detector::KpDetector;
use super::keypoints::{transform_keypoints, PoseOverride, TransformedKeypoints};
use super::mapping::{load_mapping_pickle, MappingNet};
use super::memory;
use super::source_state::SourceState;
use super::windows::{source_window, DrivingWindows};
use crate::error::ResultExt;
use crate::image::RgbImage;
use crate::sadtalker::weights::load_prefix;
use crate::{PipelineError, Result};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Where the mapping network's weights come from.
#[derive(Debug, Clone, Copy)]
pub enum MappingWeights<'a> {
    /// An official `torch.save` file (`mapping_00229-model.pth.tar` / `mapping_00109-model.pth.tar`).
    Pickle(&'a Path),
    /// Tensors under `prefix.` of a safetensors file (the fixtures use `mapping`).
    Safetensors { path: &'a Path, prefix: &'a str },
}

/// Weight files of a renderer.
#[derive(Debug, Clone, Copy)]
pub struct RendererWeights<'a> {
    /// Safetensors file with `kp_extractor.*` and `generator.*` (SadTalker_V0.0.2_{256,512}).
    pub checkpoint: &'a Path,
    pub mapping: MappingWeights<'a>,
}

/// Runtime choices.
#[derive(Debug, Clone, Copy)]
pub struct RenderSettings {
    pub device: Device,
    /// Run the generator in float16 (CUDA only; ignored with a warning on the CPU).
    pub half: bool,
    /// Upper bound of frames per forward pass (the memory-derived size is capped by it).
    pub max_batch: usize,
    /// Channels-last convolution weights (faster oneDNN / cuDNN kernels; same values).
    pub channels_last: bool,
    /// Fold the SPADE segmap upsampling into `mlp_shared` ([`super::upconv`]; 2.25x fewer
    /// multiply-adds there).
    pub fold_upsampling: bool,
}

impl RenderSettings {
    /// The reference's computation: contiguous weights, no folding (for comparisons).
    pub fn reference_like(device: Device) -> Self {
        Self { device, channels_last: false, fold_upsampling: false, ..Self::default() }
    }
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self { device: Device::Cpu, half: false, max_batch: 16, channels_last: true, fold_upsampling: true }
    }
}

/// One finished batch of frames.
#[derive(Debug)]
pub struct RenderedBatch {
    /// Index of the first frame of the batch in the clip.
    pub start: usize,
    /// (n, 3, S, S) float32 in [0, 1], on the renderer's device.
    pub frames: Tensor,
}

/// The device-resident source inputs of the generator.
#[derive(Debug)]
pub struct PreparedSource {
    pub kp_canonical: Tensor,
    pub feature: Tensor,
    pub motion: MotionSource,
}

impl PreparedSource {
    /// The same tensors, sharing their storage (to hand a session's source to the thread that
    /// runs a shared pass, [`super::shared`]).
    pub fn shallow_clone(&self) -> Self {
        Self {
            kp_canonical: self.kp_canonical.shallow_clone(),
            feature: self.feature.shallow_clone(),
            motion: self.motion.shallow_clone(),
        }
    }

    /// The generator's source for a pass over several sessions' frames: `parts` are (source,
    /// frames) in pass order; every frame gets its own source row. `kp_canonical` is not part of
    /// a pass (driving keypoints are made per session) and stays the first part's.
    pub fn rows(parts: &[(&PreparedSource, i64)]) -> Self {
        let motions: Vec<(&MotionSource, i64)> = parts.iter().map(|(p, n)| (&p.motion, *n)).collect();
        Self {
            kp_canonical: parts.first().map(|(p, _)| p.kp_canonical.shallow_clone()).unwrap_or_default(),
            feature: super::generator::repeat_rows(parts, |p| &p.feature),
            motion: MotionSource::rows(&motions),
        }
    }
}

pub struct FaceRenderer {
    config: FaceRenderConfig,
    device: Device,
    /// Kind the generator runs in.
    gen_kind: Kind,
    kp_detector: KpDetector,
    mapping: MappingNet,
    generator: Generator,
    kp_vs: VarStore,
    gen_vs: VarStore,
    mapping_vs: VarStore,
    max_batch: usize,
    channels_last: bool,
    fold_upsampling: bool,
}

impl std::fmt::Debug for FaceRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceRenderer")
            .field("device", &self.device)
            .field("gen_kind", &self.gen_kind)
            .finish_non_exhaustive()
    }
}

impl FaceRenderer {
    /// Build the modules with zero weights (fill them with [`FaceRenderer::load_weights`] or
    /// through [`FaceRenderer::var_stores`]).
    pub fn new(config: &FaceRenderConfig, settings: &RenderSettings) -> Result<Self> {
        config.validate()?;
        let device = settings.device;
        let kp_vs = VarStore::new(device);
        let gen_vs = VarStore::new(device);
        let mapping_vs = VarStore::new(device);
        let kp_detector = KpDetector::new(&kp_vs.root(), config);
        let generator = Generator::new(&gen_vs.root(), config);
        let mapping = MappingNet::new(&mapping_vs.root(), &config.mapping);
        if device.is_cuda() {
            // Batch shapes repeat for a whole clip: let cuDNN pick its fastest algorithms once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let gen_kind = if settings.half && device.is_cuda() {
            Kind::Half
        } else {
            if settings.half {
                tracing::warn!("float16 generator requested on the CPU: running in float32");
            }
            Kind::Float
        };
        Ok(Self {
            config: config.clone(),
            device,
            gen_kind,
            kp_detector,
            mapping,
            generator,
            kp_vs,
            gen_vs,
            mapping_vs,
            max_batch: settings.max_batch.max(1),
            channels_last: settings.channels_last,
            fold_upsampling: settings.fold_upsampling,
        })
    }

    /// Build and load every module (strict key and shape checks), then resolve derived weights.
    pub fn load(config: &FaceRenderConfig, weights: &RendererWeights<'_>, settings: &RenderSettings) -> Result<Self> {
        let mut renderer = Self::new(config, settings)?;
        renderer.load_weights(weights)?;
        Ok(renderer)
    }

    /// Load the weights into the (float32) variables and finish the set-up.
    pub fn load_weights(&mut self, weights: &RendererWeights<'_>) -> Result<()> {
        load_prefix(&self.kp_vs, weights.checkpoint, super::keypoint_detector::PREFIX, &[])?;
        load_prefix(&self.gen_vs, weights.checkpoint, super::generator::PREFIX, &[])?;
        match weights.mapping {
            MappingWeights::Pickle(path) => load_mapping_pickle(&self.mapping_vs, path)?,
            MappingWeights::Safetensors { path, prefix } => load_prefix(&self.mapping_vs, path, prefix, &[])?,
        }
        self.finish_loading();
        Ok(())
    }

    /// Resolve spectral norms, cast the generator and lay out the weights; call once, after the
    /// variables hold their values (afterwards the modules no longer read the variable stores).
    pub fn finish_loading(&mut self) {
        self.generator.prepare(self.fold_upsampling);
        if self.gen_kind != Kind::Float {
            self.gen_vs.set_kind(self.gen_kind);
            self.generator.decoder.set_kind(self.gen_kind);
        }
        if self.channels_last {
            self.kp_detector.use_channels_last();
            self.generator.use_channels_last(self.device.is_cuda());
        }
    }

    /// (kp_extractor, generator, mapping) variable stores, named like the reference state dicts.
    pub fn var_stores(&self) -> [&VarStore; 3] {
        [&self.kp_vs, &self.gen_vs, &self.mapping_vs]
    }

    pub fn config(&self) -> &FaceRenderConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kp_detector(&self) -> &KpDetector {
        &self.kp_detector
    }

    pub fn mapping(&self) -> &MappingNet {
        &self.mapping
    }

    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// Frames per forward pass at `image_size`: on CUDA from the device's free memory; on the
    /// CPU one, because the CPU gains nothing from batching this network and a bigger batch only
    /// delays the first frame (full size, 2 cores: 9.7 s per frame at batch 1, 11.3 at 2, 12.2 at
    /// 4, 12.1 at 8; `sadtalker_facerender_batch_sizes`).
    pub fn batch_size(&self, image_size: i64) -> usize {
        if !self.device.is_cuda() {
            return 1;
        }
        let elem = if self.gen_kind == Kind::Half { 2 } else { 4 };
        let per_frame = memory::frame_bytes(&self.config, image_size, elem);
        memory::batch_size_for(memory::free_bytes(self.device), per_frame, self.max_batch)
    }

    /// `image` (1, 3, S, S) float in [0, 1] plus the source's 3DMM coefficients (>= 70 values,
    /// >= 73 when the mapping net takes 73) -> the cacheable per-avatar state.
    pub fn prepare_source(&self, image: &Tensor, source_coeff: &[f32]) -> Result<SourceState> {
        let s = image.size();
        if s.len() != 4 || s[0] != 1 || s[1] != self.config.common.image_channel || s[2] != s[3] || s[2] % 4 != 0 {
            return Err(PipelineError::InvalidOption {
                field: "source_image",
                reason: format!(
                    "shape {s:?}, expected (1, {}, S, S) with S a multiple of 4",
                    self.config.common.image_channel
                ),
            });
        }
        let full = match self.config.mapping.coeff_nc {
            70 => false,
            73 => true,
            other => {
                return Err(PipelineError::Unsupported {
                    engine: "sadtalker",
                    what: format!("mapping net with {other} inputs"),
                })
            }
        };
        let window = source_window(source_coeff, full)?.unsqueeze(0).to_device(self.device);
        let _guard = tch::no_grad_guard();
        let image = image.to_kind(Kind::Float).to_device(self.device);
        let kp_canonical = self.kp_detector.forward(&image);
        let source_pose = self.mapping.forward(&window);
        let kp_source = transform_keypoints(&kp_canonical, &source_pose, &PoseOverride::default()).value;
        let feature = self.generator.encode_source(&image.to_kind(self.gen_kind)).to_kind(Kind::Float);
        Ok(SourceState {
            image_size: s[2],
            coeff_nc: self.config.mapping.coeff_nc,
            kp_canonical,
            source_pose,
            kp_source,
            feature,
        })
    }

    /// Move a (possibly deserialised) state to the device and derive the dense-motion inputs.
    pub fn prepare_generator_source(&self, state: &SourceState) -> Result<PreparedSource> {
        state.check()?;
        if state.coeff_nc != self.config.mapping.coeff_nc {
            return Err(PipelineError::Internal(format!(
                "source state was computed for {}-dim windows, this renderer takes {}",
                state.coeff_nc, self.config.mapping.coeff_nc
            )));
        }
        let _guard = tch::no_grad_guard();
        let feature = state.feature.to_device(self.device).to_kind(self.gen_kind);
        let kp_source = state.kp_source.to_device(self.device);
        let motion = self.generator.dense_motion.prepare_source(&feature, &kp_source.to_kind(self.gen_kind));
        Ok(PreparedSource { kp_canonical: state.kp_canonical.to_device(self.device), feature, motion })
    }

    /// Driving keypoints for windows (B, nc, 27) with per-frame overrides.
    pub fn driving_keypoints(
        &self,
        source: &PreparedSource,
        windows: &Tensor,
        overrides: &PoseOverride,
    ) -> TransformedKeypoints {
        let _guard = tch::no_grad_guard();
        let he = self.mapping.forward(&windows.to_kind(Kind::Float).to_device(self.device));
        let overrides = PoseOverride {
            yaw: overrides.yaw.as_ref().map(|t| t.to_device(self.device)),
            pitch: overrides.pitch.as_ref().map(|t| t.to_device(self.device)),
            roll: overrides.roll.as_ref().map(|t| t.to_device(self.device)),
        };
        transform_keypoints(&source.kp_canonical, &he, &overrides)
    }

    /// One generator pass for driving keypoints (B, K, 3); outputs in the generator's kind.
    pub fn render_keypoints(&self, source: &PreparedSource, kp_driving: &Tensor) -> GeneratorOutput {
        let _guard = tch::no_grad_guard();
        self.generator.render(&source.feature, &source.motion, &kp_driving.to_kind(self.gen_kind))
    }

    /// Render every frame of `windows`, `batch_size` frames per pass, handing each finished batch
    /// to `on_batch` in order. With `None` the size comes from [`FaceRenderer::batch_size`] and
    /// the batches ramp up to it (1, 2, 4, ...), so a stream's first frame waits for a one-frame
    /// pass rather than a whole batch; the frames are the same either way.
    pub fn render(
        &self,
        state: &SourceState,
        windows: &DrivingWindows,
        batch_size: Option<usize>,
        on_batch: &mut dyn FnMut(RenderedBatch) -> Result<()>,
    ) -> Result<()> {
        let source = self.prepare_generator_source(state)?;
        let nc = windows.targets.size().get(1).copied().unwrap_or(0);
        if nc != self.config.mapping.coeff_nc {
            return Err(PipelineError::InvalidOption {
                field: "windows",
                reason: format!("{nc}-dim windows for a renderer that takes {}", self.config.mapping.coeff_nc),
            });
        }
        let total = windows.num_frames();
        let full = batch_size.unwrap_or_else(|| self.batch_size(state.image_size)).max(1) as i64;
        tracing::debug!(frames = total, batch = full, "rendering");
        let mut batch = if batch_size.is_some() { full } else { 1 };
        let mut start = 0;
        while start < total {
            let len = batch.min(total - start);
            batch = (batch * 2).min(full);
            let kp = self.driving_keypoints(
                &source,
                &windows.targets.narrow(0, start, len),
                &windows.overrides.narrow(start, len),
            );
            let out = self.render_keypoints(&source, &kp.value);
            let frames = out.prediction.to_kind(Kind::Float);
            on_batch(RenderedBatch { start: start as usize, frames })?;
            start += len;
        }
        Ok(())
    }

    /// All frames of `windows` as one (T, 3, S, S) CPU tensor (convenience over [`render`]).
    ///
    /// [`render`]: FaceRenderer::render
    pub fn render_all(
        &self,
        state: &SourceState,
        windows: &DrivingWindows,
        batch_size: Option<usize>,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        self.render(state, windows, batch_size, &mut |b| {
            parts.push(b.frames.to_device(Device::Cpu));
            Ok(())
        })?;
        Tensor::f_cat(&parts, 0).ctx("concatenating rendered batches")
    }
}

/// `img_as_float32` + resize of the source crop: (1, 3, size, size) float32 in [0, 1].
/// Images already at `size` are converted exactly (`u8 / 255`); others are resized bilinearly.
pub fn source_image_tensor(image: &RgbImage, size: i64) -> Result<Tensor> {
    if image.width == 0 || image.height == 0 || image.data.len() != (image.width * image.height * 3) as usize {
        return Err(PipelineError::NotAnImage("empty or inconsistent source image".into()));
    }
    let t = Tensor::from_slice(&image.data)
        .view([image.height as i64, image.width as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 255.0;
    if image.width as i64 == size && image.height as i64 == size {
        return Ok(t);
    }
    let resized = t.f_upsample_bilinear2d([size, size], false, None, None).ctx("resizing the source image")?;
    Ok(resized.clamp(0.0, 1.0))
}
