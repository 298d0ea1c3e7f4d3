//! The `classic` engine: the embedded default that needs no network weights.
//!
//! Prepare (per avatar, cached): canvas for the preprocess mode -> triangulated warp mesh over the
//! 68 landmarks + MediaPipe's other face-mesh points (`dense`) + ring/border points ([`mesh`]),
//! mouth palette ([`mouth`]), 14 visemes and blink/brow shapes ([`visemes`]), 5 gesture curves
//! ([`gestures`]).
//! Generate (per audio): lip-sync analysis ([`lipsync`]) -> per-frame motion ([`motion`]) ->
//! piecewise-affine mesh warp of the source region per frame ([`render`]) -> with
//! `enhancer=gfpgan`, GFPGAN face restoration in batches at the warped landmarks (`enhance`).

mod dense;
pub mod dsp;
mod enhance;
pub mod gestures;
pub mod idle;
pub mod lipsync;
pub mod mesh;
pub mod motion;
pub mod mouth;
pub mod prototypes;
pub mod render;
pub mod shape;
pub mod stream;
pub mod visemes;

use crate::audio::AudioClip;
use crate::engine::{
    AvatarInput, ChunkRenderer, Engine, EngineKind, Enhancer, FrameSink, GenerateOptions, MotionInput, PreparedAvatar,
    PreprocessMode, RenderStats, StateKind, StreamParts,
};
use crate::error::{PipelineError, Result, ResultExt};
use crate::face::crop::CropInfo;
use crate::gfpgan::{EnhancerSlot, GFPGAN_V1_4_FILE};
use crate::image::RgbImage;
use gestures::GestureSet;
use lipsync::LipSyncTrack;
use mesh::FaceMesh;
use motion::MotionTrack;
use mouth::MouthPalette;
use opencv::core::Vector;
use opencv::prelude::*;
use prototypes::VisemeModel;
use render::SourceState;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;
use stream::{ClassicMotion, ClassicRenderer};
use visemes::VisemeSet;

/// Bumped whenever a cached blob layout or its meaning changes; stale blobs are rejected.
/// 2: the warp mesh takes the face mesh's points (`follow`, `inner_lips`).
const STATE_VERSION: u32 = 2;

/// The `face_crop` part: the aligned face crop at the requested size (PNG) + where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceCrop {
    pub size: u32,
    pub crop: CropInfo,
    pub png: Vec<u8>,
}

impl FaceCrop {
    /// The `crop`-mode face crop of `image` at `size` x `size`, PNG-encoded.
    pub fn build(image: &RgbImage, crop: &CropInfo, size: u32) -> Result<Self> {
        Ok(Self { size, crop: crop.clone(), png: face_crop_png(image, crop, size)? })
    }
}

/// The classic engine. Stateless apart from the optional GFPGAN enhancer (loaded on first use);
/// cheap to share.
#[derive(Debug, Clone, Default)]
pub struct ClassicEngine {
    enhancer: Option<Arc<EnhancerSlot>>,
    /// The trained viseme prototypes; without them the mouth shapes come from the formant
    /// templates alone.
    visemes: Option<Arc<VisemeModel>>,
}

/// The refusal of `enhancer=gfpgan` by an engine built without a checkpoints directory.
fn no_enhancer() -> PipelineError {
    PipelineError::Unsupported {
        engine: "classic",
        what: format!("enhancer=gfpgan needs {GFPGAN_V1_4_FILE} in the checkpoints directory, and none was configured"),
    }
}

impl ClassicEngine {
    /// The engine without a face enhancer (`enhancer=gfpgan` is refused).
    pub fn new() -> Self {
        Self::default()
    }

    /// The service's engine: the trained viseme model from `checkpoints` (fetched by the
    /// set-up, verified against the manifest), and `enhancer=gfpgan` with `GFPGANv1.4.pth` from
    /// there when that file is present, loaded on first use onto `device`.
    pub fn with_checkpoints(checkpoints: &std::path::Path, device: tch::Device) -> Result<Self> {
        let model = crate::checkpoints::Checkpoints::open(checkpoints)?.verified(prototypes::FILE)?;
        Ok(Self::with_enhancer(EnhancerSlot::official(checkpoints, device)).with_visemes(VisemeModel::load(&model)?))
    }

    /// The engine with this enhancer (tests use stand-in weights of reduced width).
    pub fn with_enhancer(slot: EnhancerSlot) -> Self {
        Self { enhancer: Some(Arc::new(slot)), visemes: None }
    }

    /// The same engine with the trained viseme model.
    pub fn with_visemes(self, model: VisemeModel) -> Self {
        Self { visemes: Some(Arc::new(model)), ..self }
    }

    /// The animated region `[x, y, w, h]` in output-frame pixels: pixels outside it are the
    /// unanimated canvas in every frame.
    pub fn animated_region(prepared: &PreparedAvatar) -> Result<[i32; 4]> {
        Ok(source_state(prepared)?.mesh.region)
    }

    /// Output frame size `(width, height)` for a prepared avatar.
    pub fn frame_size(prepared: &PreparedAvatar) -> Result<(u32, u32)> {
        let s = source_state(prepared)?;
        Ok((s.canvas[0], s.canvas[1]))
    }

    /// The prepared warp mesh (for measurements in tests and tools).
    pub fn warp_mesh(prepared: &PreparedAvatar) -> Result<FaceMesh> {
        Ok(source_state(prepared)?.mesh)
    }

    /// The 68 landmarks in output-frame pixels (for measurements in tests and tools).
    pub fn frame_landmarks(prepared: &PreparedAvatar) -> Result<Vec<crate::face::Point>> {
        let s = source_state(prepared)?;
        let [rx, ry, _, _] = s.mesh.region;
        Ok(s.mesh.points[..68].iter().map(|p| [p[0] + rx as f32, p[1] + ry as f32]).collect())
    }
}

impl Engine for ClassicEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Classic
    }

    fn check_options(&self, opts: &GenerateOptions) -> Result<()> {
        opts.validate()?;
        match (opts.enhancer, &self.enhancer) {
            (Enhancer::None, _) => Ok(()),
            (Enhancer::Gfpgan, Some(slot)) => slot.check("classic"),
            (Enhancer::Gfpgan, None) => Err(no_enhancer()),
        }
    }

    fn prepare(&self, avatar: &AvatarInput<'_>, size: u32) -> Result<PreparedAvatar> {
        if size != 256 && size != 512 {
            return Err(PipelineError::InvalidOption { field: "size", reason: format!("{size} is not 256 or 512") });
        }
        let a = avatar.analysis;
        let lm = &a.landmarks.0;
        if lm.len() != 68 {
            return Err(PipelineError::Internal(format!("expected 68 landmarks, got {}", lm.len())));
        }
        let (canvas, scale, offset) = build_canvas(avatar.image, &a.crop, a.preprocess, size)?;
        let map = CanvasMap { scale, offset };
        let lm_canvas: Vec<_> = lm.iter().map(|p| map.to_canvas(*p)).collect();
        let zscale = 0.5 * (scale[0] + scale[1]);
        let face_mesh: Option<Vec<[f32; 3]>> = a.mesh.as_ref().map(|m| {
            m.iter()
                .map(|p| {
                    let [x, y] = map.to_canvas([p[0], p[1]]);
                    [x, y, p[2] * zscale]
                })
                .collect()
        });
        let mesh = FaceMesh::build(&lm_canvas, face_mesh.as_deref(), canvas.width as i32, canvas.height as i32)?;
        let palette = MouthPalette::measure(
            &canvas.data,
            canvas.width as usize,
            canvas.height as usize,
            &lm_canvas,
            mesh.face_width,
        );
        let state = SourceState {
            mode: a.preprocess,
            size,
            canvas: [canvas.width, canvas.height],
            scale,
            offset,
            mesh,
            palette,
        };
        let visemes = VisemeSet::build(lm)?;
        let seed_bytes = bincode::serialize(&a.landmarks).unwrap_or_default();
        let seed_hash = blake3::hash(&seed_bytes);
        let seed = u64::from_le_bytes(seed_hash.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let gestures = GestureSet::build(&a.pose, seed);
        let face_crop = FaceCrop::build(avatar.image, &a.crop, size)?;
        Ok(PreparedAvatar {
            parts: vec![
                (StateKind::FaceCrop, encode(&face_crop)?),
                (StateKind::SourceState, encode(&state)?),
                (StateKind::Visemes, encode(&visemes)?),
                (StateKind::Gestures, encode(&gestures)?),
            ],
        })
    }

    fn audio_features(&self, clip: &AudioClip) -> Result<Vec<u8>> {
        if clip.sample_rate != crate::audio::SAMPLE_RATE {
            return Err(PipelineError::Internal(format!("audio must be 16 kHz, got {} Hz", clip.sample_rate)));
        }
        encode(&lipsync::analyse(clip, self.visemes.as_deref()))
    }

    fn motion(&self, prepared: &PreparedAvatar, features: &[u8], opts: &GenerateOptions) -> Result<Vec<u8>> {
        self.check_options(opts)?;
        let lips: LipSyncTrack = decode(features, "audio features")?;
        if lips.weights.len() != lips.open.len() {
            return Err(PipelineError::Internal("classic audio features blob is inconsistent; recompute it".into()));
        }
        let gestures: GestureSet = decode(part(prepared, StateKind::Gestures)?, "gestures")?;
        encode(&motion::build(&lips, &gestures, opts))
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
        let track: MotionTrack = decode(motion, "motion")?;
        let mut renderer = ClassicRenderer::new(avatar, prepared, opts, self.enhancer.as_ref())?;
        let total = track.frames.len();
        renderer.render_frames(&track.frames, sink, &mut |i| progress(i, total))?;
        Ok(RenderStats { frames: total, stage_ms: renderer.stage_ms() })
    }

    fn idle_motion(&self, prepared: &PreparedAvatar) -> Result<Option<(Vec<u8>, usize)>> {
        let gestures: GestureSet = decode(part(prepared, StateKind::Gestures)?, "gestures")?;
        let track = idle::idle_track(&gestures);
        Ok(Some((encode(&track)?, track.frames.len())))
    }

    fn renders_parts(&self) -> bool {
        true
    }

    fn stream<'a>(
        &'a self,
        avatar: AvatarInput<'a>,
        prepared: &'a PreparedAvatar,
        input: MotionInput<'a>,
        opts: &'a GenerateOptions,
    ) -> Result<StreamParts<'a>> {
        self.check_options(opts)?;
        let renderer = ClassicRenderer::new(&avatar, prepared, opts, self.enhancer.as_ref())?;
        let motion = ClassicMotion::new(prepared, input, opts, self.visemes.as_deref())?;
        Ok((Box::new(motion), Box::new(renderer)))
    }
}

fn part(prepared: &PreparedAvatar, kind: StateKind) -> Result<&[u8]> {
    prepared
        .get(kind)
        .ok_or_else(|| PipelineError::Internal(format!("prepared avatar lacks the {kind:?} part; prepare it again")))
}

fn source_state(prepared: &PreparedAvatar) -> Result<SourceState> {
    let state: SourceState = decode(part(prepared, StateKind::SourceState)?, "source state")?;
    let m = &state.mesh;
    let n = m.points.len();
    let consistent = n >= 68
        && m.depth.len() == n
        && m.kind.len() == n
        && m.follow.len() == n
        && m.kind.iter().all(|k| !matches!(k, mesh::VertexKind::Landmark(i) if *i >= 68))
        && m.follow.iter().flatten().all(|(k, w)| *k < 68 && w.is_finite())
        && m.inner_lips.iter().all(|l| l.len() >= 2 && l.iter().all(|&v| (v as usize) < n))
        && (0..68).all(|i| m.kind[i] == mesh::VertexKind::Landmark(i as u8))
        && m.triangles.iter().all(|t| t.iter().all(|&v| (v as usize) < n))
        && m.region[0] >= 0
        && m.region[1] >= 0
        && m.region[2] > 0
        && m.region[3] > 0
        && (m.region[0] + m.region[2]) as u32 <= state.canvas[0]
        && (m.region[1] + m.region[3]) as u32 <= state.canvas[1];
    if !consistent {
        return Err(PipelineError::Internal(
            "classic source state blob is inconsistent; prepare the avatar again".into(),
        ));
    }
    Ok(state)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    crate::engine::encode_blob("classic", STATE_VERSION, value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    crate::engine::decode_blob("classic", STATE_VERSION, bytes, what)
}

/// How original-image pixels land on a canvas of [`build_canvas`]: with pixel centres,
/// `canvas = (orig - offset + 0.5) * scale - 0.5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanvasMap {
    pub scale: [f32; 2],
    pub offset: [f32; 2],
}

impl CanvasMap {
    /// The map of `build_canvas(image, crop, mode, size)` for a `width` x `height` image, without
    /// building the canvas.
    pub fn of(width: u32, height: u32, crop: &CropInfo, mode: PreprocessMode, size: u32) -> Result<Self> {
        Ok(match mode {
            PreprocessMode::Full => Self { scale: [1.0, 1.0], offset: [0.0, 0.0] },
            PreprocessMode::Resize => {
                Self { scale: [size as f32 / width as f32, size as f32 / height as f32], offset: [0.0, 0.0] }
            }
            PreprocessMode::Crop => {
                let b = clamp_box(crop.face_box, width, height)?;
                let scale = [size as f32 / (b[2] - b[0]) as f32, size as f32 / (b[3] - b[1]) as f32];
                Self { scale, offset: [b[0] as f32, b[1] as f32] }
            }
        })
    }

    pub fn to_canvas(&self, p: crate::face::Point) -> crate::face::Point {
        [(p[0] - self.offset[0] + 0.5) * self.scale[0] - 0.5, (p[1] - self.offset[1] + 0.5) * self.scale[1] - 0.5]
    }
}

/// The unanimated output frame for a preprocess mode, and its [`CanvasMap`]'s scale and offset.
pub fn build_canvas(
    img: &RgbImage,
    crop: &CropInfo,
    mode: PreprocessMode,
    size: u32,
) -> Result<(RgbImage, [f32; 2], [f32; 2])> {
    let map = CanvasMap::of(img.width, img.height, crop, mode, size)?;
    let canvas = match mode {
        PreprocessMode::Full => {
            let (w, h) = (img.width & !1, img.height & !1);
            if w < 16 || h < 16 {
                return Err(PipelineError::Internal(format!("image {}x{} is too small", img.width, img.height)));
            }
            if (w, h) == (img.width, img.height) {
                img.clone()
            } else {
                mat_to_rgb(&render::region_mat(img, [0, 0, w as i32, h as i32])?)?
            }
        }
        PreprocessMode::Resize => {
            let m = render::region_mat(img, [0, 0, img.width as i32, img.height as i32])?;
            mat_to_rgb(&crate::image::resize_mat(&m, size, size)?)?
        }
        PreprocessMode::Crop => {
            let b = clamp_box(crop.face_box, img.width, img.height)?;
            let m = render::region_mat(img, [b[0], b[1], b[2] - b[0], b[3] - b[1]])?;
            mat_to_rgb(&crate::image::resize_mat(&m, size, size)?)?
        }
    };
    Ok((canvas, map.scale, map.offset))
}

fn clamp_box(b: [i64; 4], width: u32, height: u32) -> Result<[i32; 4]> {
    let (w, h) = (width as i64, height as i64);
    let x0 = b[0].clamp(0, w - 1);
    let y0 = b[1].clamp(0, h - 1);
    let x1 = b[2].clamp(x0 + 1, w);
    let y1 = b[3].clamp(y0 + 1, h);
    if x1 - x0 < 16 || y1 - y0 < 16 {
        return Err(PipelineError::Internal(format!("face box {b:?} is too small")));
    }
    Ok([x0 as i32, y0 as i32, x1 as i32, y1 as i32])
}

/// Copy an 8-bit 3-channel `Mat` whose channels are already RGB.
fn mat_to_rgb(m: &opencv::core::Mat) -> Result<RgbImage> {
    let m = if m.is_continuous() { m.clone() } else { m.try_clone().ctx("clone")? };
    RgbImage::from_raw(m.cols() as u32, m.rows() as u32, m.data_bytes().ctx("mat bytes")?.to_vec())
}

fn face_crop_png(img: &RgbImage, crop: &CropInfo, size: u32) -> Result<Vec<u8>> {
    let (c, _, _) = build_canvas(img, crop, PreprocessMode::Crop, size)?;
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode(".png", &c.to_bgr_mat()?, &mut buf, &Vector::new()).ctx("encode face crop")?;
    Ok(buf.to_vec())
}
