//! The pipeline's typed errors: every bad input maps to one variant with a stable code.

use thiserror::Error;

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("the uploaded bytes are not a decodable image: {0}")]
    NotAnImage(String),
    #[error("image is too small: {width}x{height}, the short side must be at least {min} px")]
    ImageTooSmall { width: u32, height: u32, min: u32 },
    #[error("image is too large: {width}x{height} exceeds the limit of {max_pixels} pixels")]
    ImageTooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error("no face was found in the image")]
    NoFace,
    #[error("the uploaded bytes are not decodable audio: {0}")]
    NotAudio(String),
    #[error("audio is too short: {seconds:.2} s, at least {min:.2} s is needed")]
    AudioTooShort { seconds: f64, min: f64 },
    #[error("audio is too long: {seconds:.1} s exceeds the limit of {max:.1} s")]
    AudioTooLong { seconds: f64, max: f64 },
    #[error("invalid option `{field}`: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("not supported by the {engine} engine: {what}")]
    Unsupported { engine: &'static str, what: String },
    #[error("model checkpoint problem with {file}: {reason}")]
    Checkpoint { file: String, reason: String },
    #[error("video encoding failed: {0}")]
    Encode(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor error in {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    #[cfg(feature = "opencv")]
    #[error("opencv error in {context}: {source}")]
    OpenCv {
        context: String,
        #[source]
        source: opencv::Error,
    },
    /// A cached engine blob does not decode: evict it and compute it again.
    #[cfg(feature = "opencv")]
    #[error("{reason}")]
    StaleBlob { blob: crate::engine::BlobKind, reason: String },
    /// A model call panicked; the job fails (retrying the same input would panic again) and
    /// the device owner rebuilds the engine before its next call.
    #[error("a model call panicked: {0}")]
    ModelPanic(String),
    /// A server configuration mistake (bad device string, unreadable renderer YAML): not the
    /// request's fault, so start-up stops with this message.
    #[error("server configuration error in {what}: {reason}")]
    Config { what: &'static str, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// The machine code of every pipeline error, spelled once: [`PipelineError::code`] and the
/// service's code table (`src/errors.rs`) both read them from here.
pub mod codes {
    pub const NOT_AN_IMAGE: &str = "not_an_image";
    pub const IMAGE_TOO_SMALL: &str = "image_too_small";
    pub const IMAGE_TOO_LARGE: &str = "image_too_large";
    pub const NO_FACE: &str = "no_face_found";
    pub const NOT_AUDIO: &str = "not_audio";
    pub const AUDIO_TOO_SHORT: &str = "audio_too_short";
    pub const AUDIO_TOO_LONG: &str = "audio_too_long";
    pub const INVALID_OPTION: &str = "invalid_option";
    pub const UNSUPPORTED_OPTION: &str = "unsupported_option";
    pub const CHECKPOINT_ERROR: &str = "checkpoint_error";
    pub const CONFIG_ERROR: &str = "config_error";
    pub const ENCODE_FAILED: &str = "encode_failed";
    pub const IO_ERROR: &str = "io_error";
    pub const TENSOR_ERROR: &str = "tensor_error";
    pub const OPENCV_ERROR: &str = "opencv_error";
    pub const MODEL_PANICKED: &str = "model_panicked";
    pub const STALE_CACHE_ENTRY: &str = "stale_cache_entry";
    pub const INTERNAL: &str = "internal";
}

impl PipelineError {
    /// Stable machine code for the API's `{message, code, type}` body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAnImage(_) => codes::NOT_AN_IMAGE,
            Self::ImageTooSmall { .. } => codes::IMAGE_TOO_SMALL,
            Self::ImageTooLarge { .. } => codes::IMAGE_TOO_LARGE,
            Self::NoFace => codes::NO_FACE,
            Self::NotAudio(_) => codes::NOT_AUDIO,
            Self::AudioTooShort { .. } => codes::AUDIO_TOO_SHORT,
            Self::AudioTooLong { .. } => codes::AUDIO_TOO_LONG,
            Self::InvalidOption { .. } => codes::INVALID_OPTION,
            Self::Unsupported { .. } => codes::UNSUPPORTED_OPTION,
            Self::Checkpoint { .. } => codes::CHECKPOINT_ERROR,
            Self::Config { .. } => codes::CONFIG_ERROR,
            Self::Encode(_) => codes::ENCODE_FAILED,
            Self::Io { .. } => codes::IO_ERROR,
            Self::Torch { .. } => codes::TENSOR_ERROR,
            #[cfg(feature = "opencv")]
            Self::OpenCv { .. } => codes::OPENCV_ERROR,
            Self::ModelPanic(_) => codes::MODEL_PANICKED,
            #[cfg(feature = "opencv")]
            Self::StaleBlob { .. } => codes::STALE_CACHE_ENTRY,
            Self::Internal(_) => codes::INTERNAL,
        }
    }

    /// True when the error is caused by the user's input (4xx), false for server faults.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::NotAnImage(_)
                | Self::ImageTooSmall { .. }
                | Self::ImageTooLarge { .. }
                | Self::NoFace
                | Self::NotAudio(_)
                | Self::AudioTooShort { .. }
                | Self::AudioTooLong { .. }
                | Self::InvalidOption { .. }
                | Self::Unsupported { .. }
        )
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Attach context to tch / opencv results: `conv.forward_t(..).ctx("pnet")?`-style helpers.
pub trait ResultExt<T> {
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| PipelineError::Torch { context: context.to_string(), source })
    }
}

#[cfg(feature = "opencv")]
impl<T> ResultExt<T> for std::result::Result<T, opencv::Error> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| PipelineError::OpenCv { context: context.to_string(), source })
    }
}
