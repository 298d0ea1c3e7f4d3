//! What the service keeps in Redis about avatars (`avatar:{image}:{mode}`) and generate sessions
//! (`session:{id}`, the 1-hour tier), plus where a finished video lives.

use crate::errors::{Code, ErrorBody, ErrorType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vipavatar_cache::{AudioHash, ImageHash, OptionsHash, SessionId};
use vipavatar_pipeline::engine::{EngineKind, GenerateOptions, PreprocessMode};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The latest webhook delivery attempt for a session or an avatar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookState {
    /// True once a delivery was answered 2xx.
    pub delivered: bool,
    /// Attempts made for the latest delivery.
    pub attempts: u32,
    /// HTTP status of the last attempt (absent when no answer came: timeout, refused connection).
    pub last_status: Option<u16>,
}

/// Precompute state of one image in one preprocess mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AvatarStatus {
    Processing,
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvatarRecord {
    pub image: ImageHash,
    pub mode: PreprocessMode,
    pub status: AvatarStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub error: Option<ErrorBody>,
    /// Stage -> milliseconds of the last precompute.
    pub timings_ms: Vec<(String, f64)>,
    /// Decoded image size and faces found (0 until precompute ran).
    pub width: u32,
    pub height: u32,
    pub faces_found: u32,
    /// The landmark model that placed the face's points (`mediapipe`, `dlib`), once ready.
    pub landmark_model: Option<String>,
    /// Webhook deliveries for this avatar's events.
    pub webhook: Option<WebhookState>,
}

impl AvatarRecord {
    pub fn processing(image: ImageHash, mode: PreprocessMode) -> Self {
        let now = now_ms();
        Self {
            image,
            mode,
            status: AvatarStatus::Processing,
            created_ms: now,
            updated_ms: now,
            error: None,
            timings_ms: Vec::new(),
            width: 0,
            height: 0,
            faces_found: 0,
            landmark_model: None,
            webhook: None,
        }
    }

    /// The failure to answer again at once, without running the precompute: one the image itself
    /// caused (no face, too small, not an image, ...), kept as long as this record (tier 1).
    /// A server-side failure (a retryable `system`/`internal` error) and a missing original
    /// (a new upload brings it back) are not remembered: the next upload tries again.
    pub fn remembered_failure(&self) -> Option<&ErrorBody> {
        let error = self.error.as_ref().filter(|_| self.status == AvatarStatus::Failed)?;
        let input = error.kind == ErrorType::InvalidRequest.as_str();
        (input && error.code != Code::ImageNotFound.info().1).then_some(error)
    }
}

/// Lifecycle of a generate session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Queued,
    Processing,
    Ready,
    Failed,
    /// Cancelled by `DELETE /api/vip/session/{id}` (or its face was erased).
    Cancelled,
}

/// Where a finished video and its first-frame thumbnail are (blob names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoRef {
    pub file: String,
    pub bytes: u64,
    pub duration_s: f64,
    pub frames: u64,
    pub thumbnail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub image: ImageHash,
    pub audio: AudioHash,
    pub engine: EngineKind,
    pub options: GenerateOptions,
    pub options_hash: OptionsHash,
    pub status: SessionStatus,
    pub progress: f32,
    pub audio_seconds: f64,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Stage -> milliseconds.
    pub stages_ms: Vec<(String, f64)>,
    /// Cache kinds that were hits / misses for this session.
    pub cache_hits: Vec<String>,
    pub cache_misses: Vec<String>,
    pub error: Option<ErrorBody>,
    pub video: Option<VideoRef>,
    /// Consumer name of the worker that holds (or last held) the job.
    pub worker: Option<String>,
    pub attempts: u32,
    /// True when the finished video came straight from the `video:` cache.
    pub from_cache: bool,
    /// Milliseconds from the request until the first live fragment was published.
    pub first_frame_ms: Option<u64>,
    /// Frames rendered so far, of `frames_total` (0 until rendering starts).
    pub frames_done: u64,
    pub frames_total: u64,
    /// Webhook deliveries for this session's events.
    pub webhook: Option<WebhookState>,
    /// Measured seconds of work the cache saved this session (image side; a cached video also
    /// its whole render), set when it finishes.
    pub saved_s: Option<f64>,
}

/// What a generate request asks for: the fields a new session starts from.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub image: ImageHash,
    pub audio: AudioHash,
    pub engine: EngineKind,
    pub options: GenerateOptions,
    pub options_hash: OptionsHash,
    pub audio_seconds: f64,
}

impl SessionRecord {
    /// A new session in the `queued` state, created now.
    pub fn queued(id: SessionId, req: SessionRequest) -> Self {
        Self {
            id,
            image: req.image,
            audio: req.audio,
            engine: req.engine,
            options: req.options,
            options_hash: req.options_hash,
            status: SessionStatus::Queued,
            progress: 0.0,
            audio_seconds: req.audio_seconds,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            stages_ms: Vec::new(),
            cache_hits: Vec::new(),
            cache_misses: Vec::new(),
            error: None,
            video: None,
            worker: None,
            attempts: 0,
            from_cache: false,
            first_frame_ms: None,
            frames_done: 0,
            frames_total: 0,
            webhook: None,
            saved_s: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, SessionStatus::Ready | SessionStatus::Failed | SessionStatus::Cancelled)
    }
}

/// `idle:{image}:{mode}:{size}`: the avatar's idle loop, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdleEntry {
    Rendered(IdleRef),
    /// The engine that prepared the avatar renders no idle loop.
    NoneFor(EngineKind),
}

/// Where an avatar's idle loop and its thumbnail are (relative names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleRef {
    pub video: String,
    pub thumbnail: String,
    pub frames: u64,
    pub bytes: u64,
}
