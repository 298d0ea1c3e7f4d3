//! The engine interface: what the classic and sadtalker engines implement and the service drives.
//!
//! Engines exchange per-avatar state and per-audio motion as opaque byte blobs so the service can
//! cache them (DESIGN.md keys `face_crop`, `source_state`, `gestures`, `visemes`, `3dmm_coeffs`,
//! `audio_features`, `motion`) without knowing what is inside.

use crate::audio::AudioClip;
use crate::image::RgbImage;
use crate::precompute::AvatarAnalysis;
use crate::Result;
use serde::{Deserialize, Serialize};

/// Declares an option enum once, with its wire names: the enum (with the `cli` feature a
/// `clap::ValueEnum`, with `openapi` a `utoipa::ToSchema`), `as_str`, `parse`, `NAMES` and
/// `expected()` for error messages. The service's multipart reader, the CLI and the OpenAPI
/// document all use these, so a value is spelled once. Wire names are the lowercased variant
/// names, which is what serde (`rename_all`), utoipa (from serde) and clap (kebab-case of
/// one-word names) produce; a test checks that every `as_str` agrees with serde.
macro_rules! option_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every accepted value, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// `one of a, b, c`, for error messages.
            pub fn expected() -> String {
                format!("one of {}", Self::NAMES.join(", "))
            }
        }
    };
}

option_enum! {
    /// A talking-head engine.
    pub enum EngineKind {
        Classic = "classic",
        Sadtalker = "sadtalker",
    }
}

option_enum! {
    /// Which engine serves a request that does not name one: `auto` is sadtalker when its
    /// checkpoints are present, else classic.
    #[derive(Default)]
    pub enum EngineChoice {
        /// sadtalker when its checkpoints are present, else classic.
        #[default]
        Auto = "auto",
        Classic = "classic",
        Sadtalker = "sadtalker",
    }
}

impl EngineChoice {
    /// The engine, or `None` for `auto`.
    pub fn fixed(self) -> Option<EngineKind> {
        match self {
            Self::Auto => None,
            Self::Classic => Some(EngineKind::Classic),
            Self::Sadtalker => Some(EngineKind::Sadtalker),
        }
    }
}

option_enum! {
    /// SadTalker's framing of the source picture.
    #[derive(Default)]
    pub enum PreprocessMode {
        /// Face crop only (the video shows the cropped face; default).
        #[default]
        Crop = "crop",
        /// Whole image resized; the face crop box is still computed.
        Resize = "resize",
        /// Animate the face crop and paste it back into the original full frame.
        Full = "full",
    }
}

option_enum! {
    /// Face restoration after rendering: `none` (default) or `gfpgan` (GFPGAN v1.4; the server
    /// needs `checkpoints/GFPGANv1.4.pth`, else 422).
    #[derive(Default)]
    pub enum Enhancer {
        #[default]
        None = "none",
        Gfpgan = "gfpgan",
    }
}

option_enum! {
    /// Encoder quality preset (x264 CRF/preset): `low`, `medium` (default) or `high`.
    #[derive(Default)]
    pub enum Quality {
        Low = "low",
        #[default]
        Medium = "medium",
        High = "high",
    }
}

/// Everything a generate request can choose. Hashing it (with `options_hash`) keys `motion:` / `video:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// Output face size: 256 or 512.
    pub size: u32,
    pub preprocess: PreprocessMode,
    pub still_mode: bool,
    /// Mouth/expression amplitude multiplier (0..=3).
    pub expression_scale: f32,
    /// Deterministic motion variation, 0..=45.
    pub pose_style: u32,
    pub enhancer: Enhancer,
    pub quality: Quality,
    /// Seed for every random draw (blinks, CVAE noise); same seed -> same video.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            size: 256,
            preprocess: PreprocessMode::Crop,
            still_mode: false,
            expression_scale: 1.0,
            pose_style: 0,
            enhancer: Enhancer::None,
            quality: Quality::Medium,
            seed: 0,
        }
    }
}

impl GenerateOptions {
    /// Reject out-of-range values with a typed error naming the field.
    pub fn validate(&self) -> Result<()> {
        use crate::PipelineError::InvalidOption;
        if self.size != 256 && self.size != 512 {
            return Err(InvalidOption { field: "size", reason: format!("{} is not 256 or 512", self.size) });
        }
        if self.pose_style > 45 {
            return Err(InvalidOption {
                field: "pose_style",
                reason: format!("{} is outside 0..=45", self.pose_style),
            });
        }
        if !(0.0..=3.0).contains(&self.expression_scale) || !self.expression_scale.is_finite() {
            return Err(InvalidOption {
                field: "expression_scale",
                reason: format!("{} is outside 0..=3", self.expression_scale),
            });
        }
        Ok(())
    }

    /// Stable hex hash of the options that change the motion or the pixels.
    pub fn options_hash(&self, engine: EngineKind) -> String {
        let bytes = bincode::serialize(&(engine, self)).unwrap_or_default();
        blake3::hash(&bytes).to_hex()[..32].to_string()
    }
}

/// Which cache entry a piece of per-avatar engine state belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// `face_crop:{image}:{preprocess}:{size}`
    FaceCrop,
    /// `source_state:{image}:{preprocess}:{size}:{engine}`
    SourceState,
    /// `gestures:{image}`
    Gestures,
    /// `visemes:{image}`
    Visemes,
    /// `3dmm_coeffs:{image}:{preprocess}`
    Coeffs3dmm,
}

/// Which cached engine blob a [`crate::PipelineError::StaleBlob`] names, so the service can evict
/// exactly that entry and compute it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    /// `audio_features:{audio}`
    AudioFeatures,
    /// `motion:{audio}:{image}:{options}`
    Motion,
    /// One part of the prepared avatar (`source_state:` and the parts it lists).
    State(StateKind),
}

impl BlobKind {
    /// The kind an engine's blob name stands for (`"motion"`, `"source state"`, ...).
    pub fn from_name(what: &str) -> Option<Self> {
        Some(match what {
            "audio features" => Self::AudioFeatures,
            "motion" => Self::Motion,
            "source state" => Self::State(StateKind::SourceState),
            "face crop" => Self::State(StateKind::FaceCrop),
            "gestures" => Self::State(StateKind::Gestures),
            "visemes" => Self::State(StateKind::Visemes),
            "3dmm coefficients" => Self::State(StateKind::Coeffs3dmm),
            _ => return None,
        })
    }
}

/// The error of an engine blob that does not decode (older `STATE_VERSION`, truncated): a typed
/// stale entry when the blob is one the service caches, else an internal error.
pub fn stale_blob(engine: &str, what: &str, reason: impl std::fmt::Display) -> crate::PipelineError {
    let reason = format!("{engine} {what} blob is stale or corrupt: {reason}");
    match BlobKind::from_name(what) {
        Some(blob) => crate::PipelineError::StaleBlob { blob, reason },
        None => crate::PipelineError::Internal(reason),
    }
}

/// An engine blob as cached: `(version, value)` in bincode, so that a blob written under another
/// `STATE_VERSION` of `engine` decodes as stale, not as garbage.
pub fn encode_blob<T: serde::Serialize>(engine: &str, version: u32, value: &T) -> crate::error::Result<Vec<u8>> {
    bincode::serialize(&(version, value))
        .map_err(|e| crate::PipelineError::Internal(format!("encode {engine} state: {e}")))
}

/// The value of an [`encode_blob`] blob; another version or bytes that do not decode are a
/// [`stale_blob`].
pub fn decode_blob<T: serde::de::DeserializeOwned>(
    engine: &str,
    version: u32,
    bytes: &[u8],
    what: &str,
) -> crate::error::Result<T> {
    let (found, value): (u32, T) = bincode::deserialize(bytes).map_err(|e| stale_blob(engine, what, e))?;
    if found != version {
        return Err(stale_blob(engine, what, format!("version {found}, expected {version}")));
    }
    Ok(value)
}

/// Per-avatar engine state as cacheable parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PreparedAvatar {
    pub parts: Vec<(StateKind, Vec<u8>)>,
}

impl PreparedAvatar {
    pub fn get(&self, kind: StateKind) -> Option<&[u8]> {
        self.parts.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
    }
}

/// The inputs an engine sees for one avatar.
#[derive(Clone, Copy)]
pub struct AvatarInput<'a> {
    /// The decoded, orientation-corrected original image.
    pub image: &'a RgbImage,
    /// Precompute results (detection, landmarks, crop, pose).
    pub analysis: &'a AvatarAnalysis,
}

/// Receives rendered frames in order (the video encoder implements this).
pub trait FrameSink {
    fn push(&mut self, frame: &RgbImage) -> Result<()>;
}

/// What `render` reports back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenderStats {
    pub frames: usize,
    /// Named stage -> milliseconds spent (e.g. "motion", "render").
    pub stage_ms: Vec<(String, f64)>,
}

/// Where the motion of one generate run comes from.
#[derive(Clone, Copy)]
pub struct MotionInput<'a> {
    /// The decoded speech (always present: it is also the soundtrack and sets the frame count).
    pub clip: &'a AudioClip,
    /// Cached `audio_features` blob, if any.
    pub features: Option<&'a [u8]>,
    /// Cached `motion` blob, if any (then no analysis runs at all).
    pub motion: Option<&'a [u8]>,
    /// Only frames `start..end` of the clip (one part of a split session); `None`: all of them. The
    /// motion of a part equals the same frames of the whole clip's motion.
    pub frames: Option<(usize, usize)>,
}

/// Motion produced a chunk at a time, each chunk an engine-specific blob that the same engine's
/// [`ChunkRenderer`] reads. Runs on its own thread while earlier chunks render.
pub trait MotionStream: Send {
    /// Frames the whole clip will have.
    fn total_frames(&self) -> usize;
    /// Motion for about the next `frames` frames (an engine may return more, or all of them);
    /// `None` when every frame was produced.
    fn next_chunk(&mut self, frames: usize) -> Result<Option<Vec<u8>>>;
    /// The blobs to cache, once every chunk was produced.
    fn finish(self: Box<Self>) -> Result<StreamBlobs>;
}

/// What a finished motion stream leaves for the cache.
#[derive(Debug, Clone, Default)]
pub struct StreamBlobs {
    /// The audio features, when they were computed (not when motion came from the cache).
    pub features: Option<Vec<u8>>,
    /// The whole clip's motion.
    pub motion: Vec<u8>,
}

/// Renders one session's motion chunks, in order, into a sink.
pub trait ChunkRenderer {
    /// Render every frame of one chunk; returns how many were pushed.
    fn render_chunk(&mut self, motion: &[u8], sink: &mut dyn FrameSink) -> Result<usize>;
    /// Named stage -> milliseconds so far.
    fn stage_ms(&self) -> Vec<(String, f64)>;
}

/// One talking-head engine. Implementations are synchronous; the service calls them from a
/// dedicated worker thread.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// Whether `opts` can be honoured (e.g. `enhancer=gfpgan`); typed error otherwise.
    fn check_options(&self, opts: &GenerateOptions) -> Result<()>;

    /// Image-only work, cached per avatar: crops, meshes, visemes, gestures, source state.
    fn prepare(&self, avatar: &AvatarInput<'_>, size: u32) -> Result<PreparedAvatar>;

    /// Audio-only features (cached under `audio_features:{audio_hash}`).
    fn audio_features(&self, clip: &AudioClip) -> Result<Vec<u8>>;

    /// Audio + avatar -> per-frame motion (cached under `motion:`); 25 fps.
    fn motion(&self, prepared: &PreparedAvatar, features: &[u8], opts: &GenerateOptions) -> Result<Vec<u8>>;

    /// Render every frame of `motion` into `sink`, calling `progress(done, total)` as frames finish.
    fn render(
        &self,
        avatar: &AvatarInput<'_>,
        prepared: &PreparedAvatar,
        motion: &[u8],
        opts: &GenerateOptions,
        sink: &mut dyn FrameSink,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RenderStats>;

    /// Motion of the avatar's seamless idle loop (rendered once per avatar) and its frame
    /// count, or `None` when the engine has none.
    fn idle_motion(&self, _prepared: &PreparedAvatar) -> Result<Option<(Vec<u8>, usize)>> {
        Ok(None)
    }

    /// Whether [`Engine::stream`] honours [`MotionInput::frames`], so a long clip can be split
    /// into parts that render on several workers.
    fn renders_parts(&self) -> bool {
        false
    }

    /// Whether sessions of this engine may run side by side on one device, each on its own
    /// thread, instead of one after another on the device owner's thread. True where the engine
    /// shares its heavy network between sessions itself (the sadtalker renderer batches frames
    /// across sessions); engines that compute on the calling thread alone say false.
    fn concurrent_sessions(&self) -> bool {
        false
    }

    /// Incremental generation: a motion stream and the renderer of its chunks (the whole-clip
    /// `motion` / `render` calls are the same pieces run to the end).
    fn stream<'a>(
        &'a self,
        avatar: AvatarInput<'a>,
        prepared: &'a PreparedAvatar,
        input: MotionInput<'a>,
        opts: &'a GenerateOptions,
    ) -> Result<StreamParts<'a>>;
}

/// A motion stream and the renderer that reads its chunks.
pub type StreamParts<'a> = (Box<dyn MotionStream + 'a>, Box<dyn ChunkRenderer + 'a>);

#[cfg(test)]
mod tests {
    use super::*;

    /// Each option's wire name (`as_str`, `parse`, `NAMES`) is the name serde (and with it the
    /// OpenAPI document and JSON bodies) uses.
    fn agrees<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Copy>(
        names: &[&str],
        parse: fn(&str) -> Option<T>,
        as_str: fn(T) -> &'static str,
    ) {
        for name in names {
            let value = parse(name).unwrap_or_else(|| panic!("{name} does not parse"));
            assert_eq!(as_str(value), *name);
            assert_eq!(serde_json::to_value(value).unwrap(), serde_json::json!(name));
            assert_eq!(serde_json::from_value::<T>(serde_json::json!(name)).unwrap(), value);
        }
        assert!(parse("nonsense").is_none());
    }

    #[test]
    fn option_names_agree_with_serde() {
        agrees(EngineKind::NAMES, EngineKind::parse, EngineKind::as_str);
        agrees(EngineChoice::NAMES, EngineChoice::parse, EngineChoice::as_str);
        agrees(PreprocessMode::NAMES, PreprocessMode::parse, PreprocessMode::as_str);
        agrees(Enhancer::NAMES, Enhancer::parse, Enhancer::as_str);
        agrees(Quality::NAMES, Quality::parse, Quality::as_str);
        assert_eq!(Quality::expected(), "one of low, medium, high");
    }
}
