//! The API's one error type. Every error body is `{message, code, type}`; the code table below
//! chooses the HTTP status and the error type for each stable machine code, in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::ToSchema;
use vipavatar_pipeline::{codes, PipelineError};

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

/// The code table: `variant => (HTTP status, machine code, error type)`, one row per code. It
/// generates [`Code`], its string, status and type, and [`Code::ALL`]. Pipeline rows take their
/// string from `vipavatar_pipeline::codes`, where the pipeline spells it once.
macro_rules! make_error_codes {
    ($($(#[$doc:meta])* $variant:ident => ($status:ident, $code:expr, $kind:ident);)*) => {
        /// Every error code the API returns (rows of `make_error_codes!`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable machine code (the body's `code`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// The HTTP status of the code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }

            /// The error family (the body's `type`).
            pub fn kind(self) -> ErrorType {
                match self {
                    $(Code::$variant => ErrorType::$kind,)*
                }
            }
        }
    };
}

make_error_codes! {
    // request shape
    BadRequest => (BAD_REQUEST, "bad_request", InvalidRequest);
    MissingField => (BAD_REQUEST, "missing_field", InvalidRequest);
    InvalidField => (BAD_REQUEST, "invalid_field", InvalidRequest);
    DuplicateField => (BAD_REQUEST, "duplicate_field", InvalidRequest);
    ExpectedMultipart => (UNSUPPORTED_MEDIA_TYPE, "expected_multipart", InvalidRequest);
    MalformedMultipart => (BAD_REQUEST, "malformed_multipart", InvalidRequest);
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "payload_too_large", InvalidRequest);
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", InvalidRequest);
    InvalidImageId => (BAD_REQUEST, "invalid_image_id", InvalidRequest);
    InvalidSessionId => (BAD_REQUEST, "invalid_session_id", InvalidRequest);
    RouteNotFound => (NOT_FOUND, "route_not_found", InvalidRequest);
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "method_not_allowed", InvalidRequest);
    BodyTimeout => (REQUEST_TIMEOUT, "body_timeout", InvalidRequest);
    InvalidBase64 => (BAD_REQUEST, "invalid_base64", InvalidRequest);
    UrlForbidden => (BAD_REQUEST, "url_forbidden", InvalidRequest);
    UrlFetchFailed => (UNPROCESSABLE_ENTITY, "url_fetch_failed", InvalidRequest);
    // resources
    ImageNotFound => (NOT_FOUND, "image_not_found", InvalidRequest);
    SessionNotFound => (NOT_FOUND, "session_not_found", InvalidRequest);
    VideoNotReady => (CONFLICT, "video_not_ready", InvalidRequest);
    VideoFailed => (CONFLICT, "video_failed", InvalidRequest);
    SessionCancelled => (CONFLICT, "session_cancelled", InvalidRequest);
    SessionFinished => (CONFLICT, "session_finished", InvalidRequest);
    ThumbnailNotFound => (NOT_FOUND, "thumbnail_not_found", InvalidRequest);
    IdleNotFound => (NOT_FOUND, "idle_not_found", InvalidRequest);
    StreamUnavailable => (NOT_FOUND, "stream_unavailable", InvalidRequest);
    AvatarFailed => (UNPROCESSABLE_ENTITY, "avatar_failed", InvalidRequest);
    EngineUnavailable => (UNPROCESSABLE_ENTITY, "engine_unavailable", InvalidRequest);
    // auth
    MissingApiKey => (UNAUTHORIZED, "missing_api_key", Auth);
    InvalidApiKey => (UNAUTHORIZED, "invalid_api_key", Auth);
    // system
    NotReady => (SERVICE_UNAVAILABLE, "not_ready", System);
    Overloaded => (TOO_MANY_REQUESTS, "overloaded", System);
    RedisUnavailable => (SERVICE_UNAVAILABLE, "redis_unavailable", System);
    WorkerLost => (INTERNAL_SERVER_ERROR, "worker_lost", System);
    Internal => (INTERNAL_SERVER_ERROR, codes::INTERNAL, Internal);
    NoWorker => (SERVICE_UNAVAILABLE, "no_worker", System);
    // from the pipeline
    NotAnImage => (UNPROCESSABLE_ENTITY, codes::NOT_AN_IMAGE, InvalidRequest);
    ImageTooSmall => (UNPROCESSABLE_ENTITY, codes::IMAGE_TOO_SMALL, InvalidRequest);
    ImageTooLarge => (UNPROCESSABLE_ENTITY, codes::IMAGE_TOO_LARGE, InvalidRequest);
    NoFace => (UNPROCESSABLE_ENTITY, codes::NO_FACE, InvalidRequest);
    NotAudio => (UNPROCESSABLE_ENTITY, codes::NOT_AUDIO, InvalidRequest);
    AudioTooShort => (UNPROCESSABLE_ENTITY, codes::AUDIO_TOO_SHORT, InvalidRequest);
    AudioTooLong => (PAYLOAD_TOO_LARGE, codes::AUDIO_TOO_LONG, InvalidRequest);
    InvalidOption => (BAD_REQUEST, codes::INVALID_OPTION, InvalidRequest);
    UnsupportedOption => (UNPROCESSABLE_ENTITY, codes::UNSUPPORTED_OPTION, InvalidRequest);
    CheckpointError => (SERVICE_UNAVAILABLE, codes::CHECKPOINT_ERROR, System);
    ConfigError => (INTERNAL_SERVER_ERROR, codes::CONFIG_ERROR, Internal);
    EncodeFailed => (INTERNAL_SERVER_ERROR, codes::ENCODE_FAILED, Internal);
    IoError => (INTERNAL_SERVER_ERROR, codes::IO_ERROR, Internal);
    TensorError => (INTERNAL_SERVER_ERROR, codes::TENSOR_ERROR, Internal);
    OpenCvError => (INTERNAL_SERVER_ERROR, codes::OPENCV_ERROR, Internal);
    ModelPanicked => (INTERNAL_SERVER_ERROR, codes::MODEL_PANICKED, Internal);
    StaleCacheEntry => (INTERNAL_SERVER_ERROR, codes::STALE_CACHE_ENTRY, Internal);
}

impl Code {
    /// (HTTP status, machine code, error type).
    pub fn info(self) -> (StatusCode, &'static str, ErrorType) {
        (self.status(), self.as_str(), self.kind())
    }

    /// Reverse lookup of a machine code.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// Exhaustive: a new pipeline variant does not compile until it has a row here.
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
            PipelineError::Config { .. } => Code::ConfigError,
            PipelineError::Internal(_) => Code::Internal,
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
        let code = Code::parse(&body.code).unwrap_or(Code::Internal);
        ApiError::new(code, body.message)
    }
}

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
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            assert_eq!(c.info(), (c.status(), c.as_str(), c.kind()));
        }
        // Wire strings the API tests and clients rely on.
        assert_eq!(Code::NoFace.as_str(), "no_face_found");
        assert_eq!(Code::InvalidOption.info(), (StatusCode::BAD_REQUEST, "invalid_option", ErrorType::InvalidRequest));
        assert_eq!(Code::NoWorker.info(), (StatusCode::SERVICE_UNAVAILABLE, "no_worker", ErrorType::System));
    }

    #[test]
    fn configuration_mistakes_are_server_errors() {
        let e = PipelineError::Config { what: "device", reason: "`tpu` is not one of auto, cpu, cuda".into() };
        assert!(!e.is_user_error());
        let api = ApiError::from(&e);
        assert_eq!((api.body().code.as_str(), api.body().kind.as_str()), ("config_error", "internal"));
        assert!(api.status_code().is_server_error());
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
            PipelineError::Config { what: "device", reason: "tpu".into() },
            PipelineError::Checkpoint { file: "x".into(), reason: "y".into() },
        ];
        for e in cases {
            let api = ApiError::from(&e);
            assert_eq!(api.body().code, e.code(), "code table must keep the pipeline's code");
            assert_eq!(api.status_code().is_client_error(), e.is_user_error(), "{e}");
        }
    }
}
