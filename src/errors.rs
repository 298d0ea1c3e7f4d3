//! The API's one error type. Every error body is `{message, code, type}`; the code table below
//! chooses the HTTP status and the error type for each stable machine code, in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::ToSchema;
use vipavatar_pipeline::PipelineError;

/// The error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"message": "no face was found in the image", "code": "no_face_found", "type": "invalid_request"}))]
pub struct ErrorBody {
    /// Human-readable explanation (names the offending field where there is one).
    pub message: String,
    /// Stable machine code.
    pub code: String,
    /// `invalid_request` (fix the request), `auth`, `system` (try again later) or `internal`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Error families (the `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Auth,
    System,
    Internal,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Auth => "auth",
            Self::System => "system",
            Self::Internal => "internal",
        }
    }
}

/// Every error code the API returns. `info()` is the code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    // request shape
    BadRequest,
    MissingField,
    InvalidField,
    DuplicateField,
    ExpectedMultipart,
    MalformedMultipart,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidImageId,
    InvalidSessionId,
    RouteNotFound,
    MethodNotAllowed,
    BodyTimeout,
    InvalidBase64,
    UrlForbidden,
    UrlFetchFailed,
    // resources
    ImageNotFound,
    SessionNotFound,
    VideoNotReady,
    VideoFailed,
    SessionCancelled,
    SessionFinished,
    ThumbnailNotFound,
    IdleNotFound,
    AvatarFailed,
    EngineUnavailable,
    // auth
    MissingApiKey,
    InvalidApiKey,
    // system
    NotReady,
    Overloaded,
    RedisUnavailable,
    WorkerLost,
    Internal,
    // from the pipeline
    NotAnImage,
    ImageTooSmall,
    ImageTooLarge,
    NoFace,
    NotAudio,
    AudioTooShort,
    AudioTooLong,
    InvalidOption,
    UnsupportedOption,
    CheckpointError,
    EncodeFailed,
    IoError,
    TensorError,
    OpenCvError,
    ModelPanicked,
    StaleCacheEntry,
    NoWorker,
}

impl Code {
    /// (HTTP status, machine code, error type).
    pub fn info(self) -> (StatusCode, &'static str, ErrorType) {
        use ErrorType::*;
        use StatusCode as S;
        match self {
            Code::BadRequest => (S::BAD_REQUEST, "bad_request", InvalidRequest),
            Code::MissingField => (S::BAD_REQUEST, "missing_field", InvalidRequest),
            Code::InvalidField => (S::BAD_REQUEST, "invalid_field", InvalidRequest),
            Code::DuplicateField => (S::BAD_REQUEST, "duplicate_field", InvalidRequest),
            Code::ExpectedMultipart => (S::UNSUPPORTED_MEDIA_TYPE, "expected_multipart", InvalidRequest),
            Code::MalformedMultipart => (S::BAD_REQUEST, "malformed_multipart", InvalidRequest),
            Code::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", InvalidRequest),
            Code::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", InvalidRequest),
            Code::InvalidImageId => (S::BAD_REQUEST, "invalid_image_id", InvalidRequest),
            Code::InvalidSessionId => (S::BAD_REQUEST, "invalid_session_id", InvalidRequest),
            Code::RouteNotFound => (S::NOT_FOUND, "route_not_found", InvalidRequest),
            Code::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed", InvalidRequest),
            Code::BodyTimeout => (S::REQUEST_TIMEOUT, "body_timeout", InvalidRequest),
            Code::InvalidBase64 => (S::BAD_REQUEST, "invalid_base64", InvalidRequest),
            Code::UrlForbidden => (S::BAD_REQUEST, "url_forbidden", InvalidRequest),
            Code::UrlFetchFailed => (S::UNPROCESSABLE_ENTITY, "url_fetch_failed", InvalidRequest),
            Code::ImageNotFound => (S::NOT_FOUND, "image_not_found", InvalidRequest),
            Code::SessionNotFound => (S::NOT_FOUND, "session_not_found", InvalidRequest),
            Code::VideoNotReady => (S::CONFLICT, "video_not_ready", InvalidRequest),
            Code::VideoFailed => (S::CONFLICT, "video_failed", InvalidRequest),
            Code::SessionCancelled => (S::CONFLICT, "session_cancelled", InvalidRequest),
            Code::SessionFinished => (S::CONFLICT, "session_finished", InvalidRequest),
            Code::ThumbnailNotFound => (S::NOT_FOUND, "thumbnail_not_found", InvalidRequest),
            Code::IdleNotFound => (S::NOT_FOUND, "idle_not_found", InvalidRequest),
            Code::AvatarFailed => (S::UNPROCESSABLE_ENTITY, "avatar_failed", InvalidRequest),
            Code::EngineUnavailable => (S::UNPROCESSABLE_ENTITY, "engine_unavailable", InvalidRequest),
            Code::MissingApiKey => (S::UNAUTHORIZED, "missing_api_key", Auth),
            Code::InvalidApiKey => (S::UNAUTHORIZED, "invalid_api_key", Auth),
            Code::NotReady => (S::SERVICE_UNAVAILABLE, "not_ready", System),
            Code::Overloaded => (S::TOO_MANY_REQUESTS, "overloaded", System),
            Code::RedisUnavailable => (S::SERVICE_UNAVAILABLE, "redis_unavailable", System),
            Code::WorkerLost => (S::INTERNAL_SERVER_ERROR, "worker_lost", System),
            Code::Internal => (S::INTERNAL_SERVER_ERROR, "internal", Internal),
            Code::NotAnImage => (S::UNPROCESSABLE_ENTITY, "not_an_image", InvalidRequest),
            Code::ImageTooSmall => (S::UNPROCESSABLE_ENTITY, "image_too_small", InvalidRequest),
            Code::ImageTooLarge => (S::UNPROCESSABLE_ENTITY, "image_too_large", InvalidRequest),
            Code::NoFace => (S::UNPROCESSABLE_ENTITY, "no_face_found", InvalidRequest),
            Code::NotAudio => (S::UNPROCESSABLE_ENTITY, "not_audio", InvalidRequest),
            Code::AudioTooShort => (S::UNPROCESSABLE_ENTITY, "audio_too_short", InvalidRequest),
            Code::AudioTooLong => (S::PAYLOAD_TOO_LARGE, "audio_too_long", InvalidRequest),
            Code::InvalidOption => (S::BAD_REQUEST, "invalid_option", InvalidRequest),
            Code::UnsupportedOption => (S::UNPROCESSABLE_ENTITY, "unsupported_option", InvalidRequest),
            Code::CheckpointError => (S::SERVICE_UNAVAILABLE, "checkpoint_error", System),
            Code::EncodeFailed => (S::INTERNAL_SERVER_ERROR, "encode_failed", Internal),
            Code::IoError => (S::INTERNAL_SERVER_ERROR, "io_error", Internal),
            Code::TensorError => (S::INTERNAL_SERVER_ERROR, "tensor_error", Internal),
            Code::OpenCvError => (S::INTERNAL_SERVER_ERROR, "opencv_error", Internal),
            Code::ModelPanicked => (S::INTERNAL_SERVER_ERROR, "model_panicked", Internal),
            Code::StaleCacheEntry => (S::INTERNAL_SERVER_ERROR, "stale_cache_entry", Internal),
            Code::NoWorker => (S::SERVICE_UNAVAILABLE, "no_worker", System),
        }
    }

    fn of_pipeline(e: &PipelineError) -> Self {
        match e {
            PipelineError::NotAnImage(_) => Code::NotAnImage,
            PipelineError::ImageTooSmall { .. } => Code::ImageTooSmall,
            PipelineError::ImageTooLarge { .. } => Code::ImageTooLarge,
            PipelineError::NoFace => Code::NoFace,
            PipelineError::NotAudio(_) => Code::NotAudio,
            PipelineError::AudioTooShort { .. } => Code::AudioTooShort,
            PipelineError::AudioTooLong { .. } => Code::AudioTooLong,
            PipelineError::InvalidOption { .. } => Code::InvalidOption,
            PipelineError::Unsupported { .. } => Code::UnsupportedOption,
            PipelineError::Checkpoint { .. } => Code::CheckpointError,
            PipelineError::Encode(_) => Code::EncodeFailed,
            PipelineError::Io { .. } => Code::IoError,
            PipelineError::Torch { .. } => Code::TensorError,
            PipelineError::OpenCv { .. } => Code::OpenCvError,
            PipelineError::ModelPanic(_) => Code::ModelPanicked,
            PipelineError::StaleBlob { .. } => Code::StaleCacheEntry,
            _ => Code::Internal,
        }
    }
}

/// An API error: a code from the table plus a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: Cow<'static, str>,
    /// Seconds for `Retry-After` on 503s.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(Code::Internal, message.to_string())
    }

    pub fn body(&self) -> ErrorBody {
        let (_, code, kind) = self.code.info();
        ErrorBody { message: self.message.to_string(), code: code.to_string(), kind: kind.as_str().to_string() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.info().1)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.info().0
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(code = self.code.info().1, message = %self.message, "request failed");
        } else {
            tracing::debug!(code = self.code.info().1, message = %self.message, "request rejected");
        }
        let mut resp = HttpResponse::build(status);
        if self.code == Code::BodyTimeout {
            // The rest of the body may never come: do not keep the connection for another request.
            resp.force_close();
        }
        if let Some(s) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        resp.json(self.body())
    }
}

impl From<&PipelineError> for ApiError {
    fn from(e: &PipelineError) -> Self {
        let code = Code::of_pipeline(e);
        let mut err = ApiError::new(code, e.to_string());
        if code.info().0 == StatusCode::SERVICE_UNAVAILABLE {
            err = err.retry_after(30);
        }
        err
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        (&e).into()
    }
}

impl From<vipavatar_cache::CacheError> for ApiError {
    fn from(e: vipavatar_cache::CacheError) -> Self {
        match e {
            vipavatar_cache::CacheError::Redis(r) => ApiError::from(r),
            other => ApiError::internal(other),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::new(Code::RedisUnavailable, format!("the job store is unavailable: {e}")).retry_after(5)
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::new(Code::IoError, format!("storage error: {e}"))
    }
}

impl From<ErrorBody> for ApiError {
    /// Re-raise a stored error (e.g. a failed avatar) with its original code where known.
    fn from(body: ErrorBody) -> Self {
        let code = Code::from_str(&body.code).unwrap_or(Code::Internal);
        ApiError::new(code, body.message)
    }
}

impl Code {
    /// Reverse lookup of a machine code.
    pub fn from_str(code: &str) -> Option<Code> {
        ALL_CODES.iter().copied().find(|c| c.info().1 == code)
    }
}

const ALL_CODES: &[Code] = &[
    Code::BadRequest,
    Code::MissingField,
    Code::InvalidField,
    Code::DuplicateField,
    Code::ExpectedMultipart,
    Code::MalformedMultipart,
    Code::PayloadTooLarge,
    Code::UnsupportedMediaType,
    Code::InvalidImageId,
    Code::InvalidSessionId,
    Code::RouteNotFound,
    Code::MethodNotAllowed,
    Code::BodyTimeout,
    Code::InvalidBase64,
    Code::UrlForbidden,
    Code::UrlFetchFailed,
    Code::ImageNotFound,
    Code::SessionNotFound,
    Code::VideoNotReady,
    Code::VideoFailed,
    Code::SessionCancelled,
    Code::SessionFinished,
    Code::ThumbnailNotFound,
    Code::IdleNotFound,
    Code::AvatarFailed,
    Code::EngineUnavailable,
    Code::MissingApiKey,
    Code::InvalidApiKey,
    Code::NotReady,
    Code::Overloaded,
    Code::RedisUnavailable,
    Code::WorkerLost,
    Code::Internal,
    Code::NotAnImage,
    Code::ImageTooSmall,
    Code::ImageTooLarge,
    Code::NoFace,
    Code::NotAudio,
    Code::AudioTooShort,
    Code::AudioTooLong,
    Code::InvalidOption,
    Code::UnsupportedOption,
    Code::CheckpointError,
    Code::EncodeFailed,
    Code::IoError,
    Code::TensorError,
    Code::OpenCvError,
    Code::ModelPanicked,
    Code::StaleCacheEntry,
    Code::NoWorker,
];

/// JSON error bodies for actix's own extractor failures (path, query, JSON).
pub fn extractor_error(err: impl std::fmt::Display, code: Code) -> actix_web::Error {
    ApiError::new(code, err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_reverse_lookup_works() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL_CODES {
            assert!(seen.insert(c.info().1), "duplicate code {}", c.info().1);
            assert_eq!(Code::from_str(c.info().1), Some(*c));
        }
    }

    #[test]
    fn pipeline_user_errors_are_4xx_and_faults_5xx() {
        let cases = [
            PipelineError::NoFace,
            PipelineError::NotAudio("x".into()),
            PipelineError::InvalidOption { field: "size", reason: "no".into() },
            PipelineError::Unsupported { engine: "classic", what: "gfpgan".into() },
            PipelineError::Encode("x".into()),
            PipelineError::Internal("x".into()),
            PipelineError::ModelPanic("x".into()),
        ];
        for e in cases {
            let api = ApiError::from(&e);
            assert_eq!(api.body().code, e.code(), "code table must keep the pipeline's code");
            assert_eq!(api.status_code().is_client_error(), e.is_user_error(), "{e}");
        }
    }
}
