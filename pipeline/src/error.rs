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
    #[error("opencv error in {context}: {source}")]
    OpenCv {
        context: String,
        #[source]
        source: opencv::Error,
    },
    /// A model call panicked; the job fails (retrying the same input would panic again) and
    /// the device owner rebuilds the engine before its next call.
    /// A cached engine blob does not decode: evict it and compute it again.
    #[error("{reason}")]
    StaleBlob { blob: crate::engine::BlobKind, reason: String },
    #[error("a model call panicked: {0}")]
    ModelPanic(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// Stable machine code for the API's `{message, code, type}` body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAnImage(_) => "not_an_image",
            Self::ImageTooSmall { .. } => "image_too_small",
            Self::ImageTooLarge { .. } => "image_too_large",
            Self::NoFace => "no_face_found",
            Self::NotAudio(_) => "not_audio",
            Self::AudioTooShort { .. } => "audio_too_short",
            Self::AudioTooLong { .. } => "audio_too_long",
            Self::InvalidOption { .. } => "invalid_option",
            Self::Unsupported { .. } => "unsupported_option",
            Self::Checkpoint { .. } => "checkpoint_error",
            Self::Encode(_) => "encode_failed",
            Self::Io { .. } => "io_error",
            Self::Torch { .. } => "tensor_error",
            Self::OpenCv { .. } => "opencv_error",
            Self::ModelPanic(_) => "model_panicked",
            Self::StaleBlob { .. } => "stale_cache_entry",
            Self::Internal(_) => "internal",
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

impl<T> ResultExt<T> for std::result::Result<T, opencv::Error> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| PipelineError::OpenCv { context: context.to_string(), source })
    }
}
