//! The `sadtalker` engine: SadTalker's inference pipeline on the official checkpoints.
//!
//! Prepare (per avatar, cached): face crop at the output size (the crop geometry of precompute),
//! 5-point alignment + 3DMM recon net -> the 73-d source coefficients (`3dmm_coeffs:`), and the
//! face renderer's source state (`source_state:`: keypoints + encoded feature volume).
//! Generate (per audio): mel features -> audio2exp + audio2pose (+ smoothing) -> 27-frame
//! coefficient windows -> batched face rendering -> paste-back (`full`) or aspect resize.
//!
//! Models load from `checkpoints/` only; a missing checkpoint is a [`PipelineError::Checkpoint`]
//! at load time (so `engine=auto` falls back to classic). `enhancer=gfpgan` needs `GFPGANv1.4.pth`
//! there too (else a 422); it runs on each rendered batch (`super::enhance`).

use super::audio2coeff::{Audio2Coeff, MotionCoefficients, MotionOptions};
use super::facerender::paste::PasteBack;
use super::facerender::renderer::source_image_tensor;
use super::facerender::{
    DrivingWindows, FaceRenderConfig, FaceRenderer, MappingWeights, RenderSettings, RendererWeights, SourceState,
    WindowOptions,
};
use super::mel::MelFeatures;
use super::paths::{sadtalker_checkpoints_status, SadTalkerPaths, MAPPING_CROP, MAPPING_FULL};
use super::recon::{FaceRecon, SplitCoeffs};
use crate::audio::AudioClip;
use crate::classic::{build_canvas, FaceCrop};
use crate::engine::{
    AvatarInput, Engine, EngineKind, Enhancer, FrameSink, GenerateOptions, PreparedAvatar, PreprocessMode, RenderStats,
    StateKind,
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
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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

/// Loaded networks; tch modules are not `Sync`, so they live behind one lock (the service drives
/// engines from one worker thread anyway).
struct Models {
    audio: Audio2Coeff,
    recon: FaceRecon,
    /// Renderers by (size, full mode), loaded on first use.
    renderers: HashMap<(u32, bool), FaceRenderer>,
}

pub struct SadTalkerEngine {
    paths: SadTalkerPaths,
    device: Device,
    settings: RenderSettings,
    models: Mutex<Models>,
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

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    crate::engine::encode_blob("sadtalker", STATE_VERSION, value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    crate::engine::decode_blob("sadtalker", STATE_VERSION, bytes, what)
}

fn part(prepared: &PreparedAvatar, kind: StateKind) -> Result<&[u8]> {
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
        let models = Mutex::new(Models { audio, recon, renderers: HashMap::new() });
        let enhancer = EnhancerSlot::official(checkpoints, device);
        let engine = Self { paths, device, settings, models, enhancer };
        let default_size = if engine.paths.checkpoint_256.is_some() { 256 } else { 512 };
        engine.with_renderer(default_size, false, |_| Ok(()))?;
        tracing::info!(dir = %checkpoints.display(), ?device, "sadtalker engine loaded");
        Ok(engine)
    }

    /// The models. The lock is uncontended (one device owner thread drives this engine; the
    /// Mutex only makes the engine `Sync`). A panic inside an earlier model call poisons it but
    /// leaves the models as they were (inference only reads weights; a renderer whose loading
    /// panicked was never inserted), so a poisoned lock is taken over, not turned into an error
    /// for every later job.
    fn lock(&self) -> MutexGuard<'_, Models> {
        self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` with the renderer for (`size`, `full`), loading it on first use.
    fn with_renderer<T>(&self, size: u32, full: bool, f: impl FnOnce(&FaceRenderer) -> Result<T>) -> Result<T> {
        let mut models = self.lock();
        if let std::collections::hash_map::Entry::Vacant(slot) = models.renderers.entry((size, full)) {
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
            slot.insert(FaceRenderer::load(&config, &weights, &self.settings)?);
        }
        let renderer =
            models.renderers.get(&(size, full)).ok_or_else(|| PipelineError::Internal("renderer missing".into()))?;
        f(renderer)
    }

    /// The crop the renderer animates, at `size` x `size`, and the landmarks mapped onto it.
    fn face_canvas(avatar: &AvatarInput<'_>, size: u32) -> Result<(RgbImage, Vec<[f32; 2]>)> {
        let a = avatar.analysis;
        let mode = if a.preprocess == PreprocessMode::Resize { PreprocessMode::Resize } else { PreprocessMode::Crop };
        let (canvas, scale, offset) = build_canvas(avatar.image, &a.crop, mode, size)?;
        let lm = a
            .landmarks
            .0
            .iter()
            .map(|p| [(p[0] - offset[0] + 0.5) * scale[0] - 0.5, (p[1] - offset[1] + 0.5) * scale[1] - 0.5]);
        Ok((canvas, lm.collect()))
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

/// Output frame size for the crop / resize modes: the reference resizes the square render to
/// `(size, size * h / w)` of the cropped region; both sides even for H.264.
fn output_size(reference: [i64; 2], size: u32) -> (u32, u32) {
    let [w, h] = reference;
    let height = if w > 0 && h > 0 { (size as f64 * h as f64 / w as f64) as u32 } else { size };
    (size & !1, height.max(2) & !1)
}

/// (n, 3, S, S) float [0, 1] -> (n, S, S, 3) uint8 on the CPU (`img_as_ubyte`).
fn to_u8_frames(frames: &Tensor) -> Tensor {
    (frames.to_kind(Kind::Float) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu)
}

/// Frame `i` of an (n, H, W, 3) uint8 tensor, cropped to (width, height).
fn frame_image(frames: &Tensor, i: i64, width: u32, height: u32) -> Result<RgbImage> {
    let f = frames.get(i).narrow(0, 0, height as i64).narrow(1, 0, width as i64).contiguous();
    let data = Vec::<u8>::try_from(f.flatten(0, -1)).ctx("reading rendered frames")?;
    RgbImage::from_raw(width, height, data)
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
        let coeffs = self.lock().recon.coeffs_of_image(&aligned.image)?;
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
        let motion_opts = MotionOptions {
            seed: opts.seed,
            pose_style: opts.pose_style,
            still: opts.still_mode,
            ..Default::default()
        };
        let coeffs = self.lock().audio.generate(&features, &source.coeff_3dmm, &motion_opts)?;
        encode(&coeffs)
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
        let a = avatar.analysis;
        if opts.preprocess != a.preprocess {
            return Err(PipelineError::InvalidOption {
                field: "preprocess",
                reason: format!(
                    "the avatar was prepared for {}, not {}",
                    a.preprocess.as_str(),
                    opts.preprocess.as_str()
                ),
            });
        }
        let coeffs: MotionCoefficients = decode(motion, "motion")?;
        let source: SourceCoeffs = decode(part(prepared, StateKind::Coeffs3dmm)?, "3dmm coefficients")?;
        if source.size != opts.size {
            return Err(PipelineError::InvalidOption {
                field: "size",
                reason: format!("the avatar was prepared at {} px, not {}", source.size, opts.size),
            });
        }
        let state_bytes: Vec<u8> = decode(part(prepared, StateKind::SourceState)?, "source state")?;
        let state = SourceState::from_bytes(&state_bytes, self.device)?;
        let full = a.preprocess == PreprocessMode::Full;
        let window_opts =
            WindowOptions { still_mode: opts.still_mode, full, ..WindowOptions::new(opts.expression_scale) };
        let windows = DrivingWindows::build(&coeffs.to_tensor(Device::Cpu), &source.coeff_3dmm, &window_opts)?;
        let total = coeffs.num_frames;

        let paste = if full { Some(PasteBack::new(avatar.image, a.crop.face_box, self.device)?) } else { None };
        let (out_w, out_h) = match &paste {
            Some(_) => (avatar.image.width & !1, avatar.image.height & !1),
            None => output_size(a.crop.reference_size, opts.size),
        };
        let enhance = super::enhance::FrameEnhance::new(&self.enhancer, avatar, opts)?;
        let (mut render_ms, mut paste_ms, mut done) = (0.0, 0.0, 0usize);
        let mut last = Instant::now();
        self.with_renderer(opts.size, full, |renderer| {
            renderer.render(&state, &windows, None, &mut |batch| {
                render_ms += crate::ms_since(last);
                let t = Instant::now();
                let frames = match &paste {
                    Some(p) => p.apply(&batch.frames)?,
                    None => to_u8_frames(&batch.frames),
                };
                let frames = enhance.apply(frames)?;
                for i in 0..frames.size()[0] {
                    let frame = match &paste {
                        Some(_) => frame_image(&frames, i, out_w, out_h)?,
                        None => {
                            let square = frame_image(&frames, i, opts.size, opts.size)?;
                            if (out_w, out_h) == (opts.size, opts.size) {
                                square
                            } else {
                                crate::image::resize(&square, out_w, out_h)?
                            }
                        }
                    };
                    sink.push(&frame)?;
                    done += 1;
                    progress(done, total);
                }
                paste_ms += crate::ms_since(t);
                last = Instant::now();
                Ok(())
            })
        })?;
        Ok(RenderStats { frames: done, stage_ms: vec![("render".into(), render_ms), ("output".into(), paste_ms)] })
    }
}
