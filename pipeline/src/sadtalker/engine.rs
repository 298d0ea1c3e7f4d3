//! The `sadtalker` engine: SadTalker's inference pipeline on the official checkpoints.
//!
//! Prepare (per avatar, cached): face crop at the output size (the crop geometry of precompute),
//! 5-point alignment + 3DMM recon net -> the 73-d source coefficients (`3dmm_coeffs:`), and the
//! face renderer's source state (`source_state:`: keypoints + encoded feature volume).
//! Generate (per audio): mel features -> audio2exp + audio2pose (+ smoothing) -> 27-frame
//! coefficient windows -> batched face rendering -> paste-back (`full`) or aspect resize, a chunk
//! of frames at a time ([`super::stream`]): the first frames render while later audio is still
//! going through the audio networks, and a long clip's parts render on several workers.
//!
//! Models load from `checkpoints/` only; a missing checkpoint is a [`PipelineError::Checkpoint`]
//! at load time (so `engine=auto` falls back to classic). `enhancer=gfpgan` needs `GFPGANv1.4.pth`
//! there too (else a 422); it runs on each rendered batch (`super::enhance`).

use super::audio2coeff::{Audio2Coeff, MotionCoefficients};
use super::coeff_stream::CoeffStream;
use super::facerender::renderer::source_image_tensor;
use super::facerender::{
    FaceRenderConfig, FaceRenderer, MappingWeights, RenderSettings, RendererWeights, SharedRenderer,
};
use super::mel::MelFeatures;
use super::paths::{sadtalker_checkpoints_status, SadTalkerPaths, MAPPING_CROP, MAPPING_FULL};
use super::recon::{FaceRecon, SplitCoeffs};
use super::stream::{motion_options, MotionChunk, SadTalkerChunks, SadTalkerMotion};
use crate::audio::AudioClip;
use crate::classic::{build_canvas, CanvasMap, FaceCrop};
use crate::engine::{
    AvatarInput, Engine, EngineKind, Enhancer, FrameSink, GenerateOptions, MotionInput, PreparedAvatar, PreprocessMode,
    RenderStats, StateKind, StreamParts,
};
use crate::error::{PipelineError, Result, ResultExt};
use crate::face::align::{align_img, LM3D_STD};
use crate::gfpgan::{check_weights_file, EnhancerSlot, GFPGAN_V1_4_FILE};
use crate::image::RgbImage;
use opencv::core::Vector;
use opencv::prelude::VectorToVec;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::Device;

/// Set to `1` to run the face renderer's generator in float16 on CUDA (the other networks stay
/// float32).
pub const HALF_ENV: &str = "VIPAVATAR_SADTALKER_FP16";

/// Bumped whenever a cached blob layout or its meaning changes; stale blobs are rejected.
const STATE_VERSION: u32 = 1;

/// The `3dmm_coeffs` part: SadTalker's per-image `coeff_3dmm` `[exp 64, angle 3, trans 3, s, tx, ty]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceCoeffs {
    /// Crop size the coefficients were computed at.
    pub size: u32,
    pub coeff_3dmm: Vec<f32>,
    /// `[w0, h0, s, tx, ty]` of the 224 alignment.
    pub trans_params: [f32; 5],
}

/// Renderers by (size, full mode), loaded on first use.
type Renderers = HashMap<(u32, bool), Arc<SharedRenderer>>;

/// The loaded networks. tch modules are not `Sync`, so each group lives behind its own lock: the
/// audio networks (a session's motion thread) and the renderers (its render passes) run at once.
/// Sessions may run side by side ([`Engine::concurrent_sessions`]): a renderer's passes take the
/// frames of every session waiting for it ([`SharedRenderer`]).
pub struct SadTalkerEngine {
    paths: SadTalkerPaths,
    device: Device,
    settings: RenderSettings,
    audio: Mutex<Audio2Coeff>,
    recon: Mutex<FaceRecon>,
    renderers: Mutex<Renderers>,
    /// `enhancer=gfpgan`: loaded on first use.
    pub(super) enhancer: EnhancerSlot,
}

impl std::fmt::Debug for SadTalkerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SadTalkerEngine")
            .field("paths", &self.paths)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A sadtalker cache blob (`(STATE_VERSION, value)` in bincode).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    crate::engine::encode_blob("sadtalker", STATE_VERSION, value)
}

/// The value of an [`encode`] blob; another version or bytes that do not decode are stale.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    crate::engine::decode_blob("sadtalker", STATE_VERSION, bytes, what)
}

pub(super) fn part(prepared: &PreparedAvatar, kind: StateKind) -> Result<&[u8]> {
    prepared.get(kind).ok_or_else(|| PipelineError::Internal(format!("prepared avatar lacks its {kind:?} part")))
}

impl SadTalkerEngine {
    /// Check the checkpoint directory and load the audio networks, the recon net and the 256 px
    /// crop-mode renderer. Fails with [`PipelineError::Checkpoint`] when files are missing.
    pub fn load(checkpoints: &Path, device: Device) -> Result<Self> {
        let paths = sadtalker_checkpoints_status(checkpoints)?;
        if paths.mapping_crop.is_none() {
            return Err(PipelineError::Checkpoint {
                file: checkpoints.join(MAPPING_CROP).display().to_string(),
                reason: "not found (the face renderer's mapping network)".into(),
            });
        }
        let any = paths.any_checkpoint().ok_or_else(|| PipelineError::Checkpoint {
            file: checkpoints.display().to_string(),
            reason: "no SadTalker checkpoint".into(),
        })?;
        let audio = Audio2Coeff::from_checkpoints(any, any, device)?;
        let recon = FaceRecon::from_checkpoint(any, device)?;
        let half = std::env::var(HALF_ENV).map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
        let settings = RenderSettings { device, half, ..RenderSettings::default() };
        let engine = Self {
            paths,
            device,
            settings,
            audio: Mutex::new(audio),
            recon: Mutex::new(recon),
            renderers: Mutex::new(HashMap::new()),
            enhancer: EnhancerSlot::official(checkpoints, device),
        };
        let default_size = if engine.paths.checkpoint_256.is_some() { 256 } else { 512 };
        engine.with_renderer(default_size, false, |_| Ok(()))?;
        tracing::info!(dir = %checkpoints.display(), ?device, "sadtalker engine loaded");
        Ok(engine)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Run `f` with the audio networks.
    pub(super) fn with_audio<T>(&self, f: impl FnOnce(&Audio2Coeff) -> T) -> T {
        f(&lock(&self.audio))
    }

    /// Run `f` with the renderer for (`size`, `full`) alone, loading it on first use.
    pub(super) fn with_renderer<T>(
        &self,
        size: u32,
        full: bool,
        f: impl FnOnce(&FaceRenderer) -> Result<T>,
    ) -> Result<T> {
        self.renderer(size, full)?.with(f)
    }

    /// The shared renderer for (`size`, `full`), loaded on first use.
    pub fn renderer(&self, size: u32, full: bool) -> Result<Arc<SharedRenderer>> {
        let mut renderers = lock(&self.renderers);
        if let std::collections::hash_map::Entry::Vacant(slot) = renderers.entry((size, full)) {
            let checkpoint = self.paths.checkpoint_for_size(size)?;
            let (mapping, name) =
                if full { (&self.paths.mapping_full, MAPPING_FULL) } else { (&self.paths.mapping_crop, MAPPING_CROP) };
            let mapping = mapping.as_deref().ok_or_else(|| PipelineError::Unsupported {
                engine: "sadtalker",
                what: format!(
                    "preprocess {}: {name} is not in {}",
                    if full { "full" } else { "crop/resize" },
                    self.paths.dir.display()
                ),
            })?;
            let config = FaceRenderConfig::official(if full { 73 } else { 70 });
            let weights = RendererWeights { checkpoint, mapping: MappingWeights::Pickle(mapping) };
            slot.insert(Arc::new(SharedRenderer::new(FaceRenderer::load(&config, &weights, &self.settings)?)));
        }
        renderers.get(&(size, full)).cloned().ok_or_else(|| PipelineError::Internal("renderer missing".into()))
    }

    /// The crop the renderer animates, at `size` x `size`, and the landmarks mapped onto it.
    fn face_canvas(avatar: &AvatarInput<'_>, size: u32) -> Result<(RgbImage, Vec<[f32; 2]>)> {
        let a = avatar.analysis;
        let (canvas, scale, offset) = build_canvas(avatar.image, &a.crop, canvas_mode(a.preprocess), size)?;
        let map = CanvasMap { scale, offset };
        Ok((canvas, a.landmarks.0.iter().map(|p| map.to_canvas(*p)).collect()))
    }
}

/// The canvas the renderer draws for a preprocess mode: the resized picture for `resize`, else
/// the face crop (`full` pastes that crop back into the picture afterwards).
pub(super) fn canvas_mode(mode: PreprocessMode) -> PreprocessMode {
    match mode {
        PreprocessMode::Resize => PreprocessMode::Resize,
        PreprocessMode::Crop | PreprocessMode::Full => PreprocessMode::Crop,
    }
}

/// Whether the checkpoints in `paths` can honour `opts`: the renderer for `size`, for `full` the
/// 73-input mapping net, and for `enhancer=gfpgan` `GFPGANv1.4.pth` must be present (else 422).
pub fn check_options(paths: &SadTalkerPaths, opts: &GenerateOptions) -> Result<()> {
    opts.validate()?;
    if opts.enhancer == Enhancer::Gfpgan {
        check_weights_file("sadtalker", &paths.dir.join(GFPGAN_V1_4_FILE))?;
    }
    paths.checkpoint_for_size(opts.size)?;
    if opts.preprocess == PreprocessMode::Full && paths.mapping_full.is_none() {
        return Err(PipelineError::Unsupported {
            engine: "sadtalker",
            what: format!("preprocess=full needs {MAPPING_FULL} in {}", paths.dir.display()),
        });
    }
    Ok(())
}

/// A lock of the engine. Each is uncontended per kind of work (one device owner thread drives
/// this engine; a session's motion thread takes only the audio lock). A panic inside an earlier
/// model call poisons a lock but leaves the models as they were (inference only reads weights; a
/// renderer whose loading panicked was never inserted), so a poisoned lock is taken over, not
/// turned into an error for every later job.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Engine for SadTalkerEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sadtalker
    }

    fn check_options(&self, opts: &GenerateOptions) -> Result<()> {
        check_options(&self.paths, opts)
    }

    fn prepare(&self, avatar: &AvatarInput<'_>, size: u32) -> Result<PreparedAvatar> {
        self.paths.checkpoint_for_size(size)?;
        let a = avatar.analysis;
        if a.landmarks.0.len() != 68 {
            return Err(PipelineError::Internal(format!("expected 68 landmarks, got {}", a.landmarks.0.len())));
        }
        let (canvas, lm) = Self::face_canvas(avatar, size)?;
        // 3DMM coefficients of the crop (y-up landmarks, as CropAndExtract passes them).
        let flipped: Vec<[f32; 2]> = lm.iter().map(|p| [p[0], canvas.height as f32 - 1.0 - p[1]]).collect();
        let aligned = align_img(&canvas, &flipped, &LM3D_STD);
        let trans_params = aligned.trans_params.map(|v| v as f32);
        let coeffs = lock(&self.recon).coeffs_of_image(&aligned.image)?;
        let coeff_3dmm = SplitCoeffs::new(&coeffs).coeff_3dmm(trans_params);
        let coeff_3dmm =
            Vec::<f32>::try_from(coeff_3dmm.to_device(Device::Cpu).flatten(0, -1)).ctx("3dmm coefficients")?;
        let full = a.preprocess == PreprocessMode::Full;
        let image = source_image_tensor(&canvas, size as i64)?;
        let state = self.with_renderer(size, full, |r| r.prepare_source(&image, &coeff_3dmm))?;
        let mut png = Vector::<u8>::new();
        opencv::imgcodecs::imencode(".png", &canvas.to_bgr_mat()?, &mut png, &Vector::new()).ctx("encode face crop")?;
        let face_crop = FaceCrop { size, crop: a.crop.clone(), png: png.to_vec() };
        Ok(PreparedAvatar {
            parts: vec![
                (StateKind::FaceCrop, encode(&face_crop)?),
                (StateKind::Coeffs3dmm, encode(&SourceCoeffs { size, coeff_3dmm, trans_params })?),
                (StateKind::SourceState, encode(&state.to_bytes()?)?),
            ],
        })
    }

    fn audio_features(&self, clip: &AudioClip) -> Result<Vec<u8>> {
        encode(&MelFeatures::from_clip(clip)?)
    }

    fn motion(&self, prepared: &PreparedAvatar, features: &[u8], opts: &GenerateOptions) -> Result<Vec<u8>> {
        self.check_options(opts)?;
        let features: MelFeatures = decode(features, "audio features")?;
        let source: SourceCoeffs = decode(part(prepared, StateKind::Coeffs3dmm)?, "3dmm coefficients")?;
        let coeffs = CoeffStream::new(&features, &source.coeff_3dmm, &motion_options(opts), self.device)?;
        encode(&self.with_audio(|model| coeffs.finish(model))?)
    }

    fn render(
        &self,
        avatar: &AvatarInput<'_>,
        prepared: &PreparedAvatar,
        motion: &[u8],
        opts: &GenerateOptions,
        sink: &mut dyn FrameSink,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RenderStats> {
        self.check_options(opts)?;
        let coeffs: MotionCoefficients = decode(motion, "motion")?;
        let total = coeffs.num_frames;
        let mut chunks = SadTalkerChunks::new(self, avatar, prepared, opts)?;
        let frames =
            chunks.render_frames(&MotionChunk::of(&coeffs, 0, total), sink, &mut |done| progress(done, total))?;
        Ok(RenderStats { frames, stage_ms: chunks.stage_ms() })
    }

    /// Every frame depends only on motion near it (see [`super::stream`]), so parts of a clip
    /// render the frames of the whole.
    fn renders_parts(&self) -> bool {
        true
    }

    /// Sessions meet in the renderer's passes ([`SharedRenderer`]); the other networks each sit
    /// behind their own lock.
    fn concurrent_sessions(&self) -> bool {
        true
    }

    fn stream<'a>(
        &'a self,
        avatar: AvatarInput<'a>,
        prepared: &'a PreparedAvatar,
        input: MotionInput<'a>,
        opts: &'a GenerateOptions,
    ) -> Result<StreamParts<'a>> {
        let motion = SadTalkerMotion::new(self, prepared, input, opts)?;
        let chunks = SadTalkerChunks::new(self, &avatar, prepared, opts)?;
        Ok((Box::new(motion), Box::new(chunks)))
    }
}
