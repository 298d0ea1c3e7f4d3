//! Background jobs: typed job enum, the queue (Redis Streams), the worker loop, and the job
//! kinds (avatar precompute, idle loop, video generation, one part of a long video) with their
//! cache-aware steps.

pub mod avatar;
pub mod generate;
pub mod model;
pub mod parts;
pub mod queue;
pub mod registry;
pub mod stale;
pub mod worker;

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::devices::DeviceModels;
use crate::errors::{ApiError, Code, ErrorBody};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use vipavatar_cache::{Cache, FragmentStreams, ImageHash, Kind, SessionId};
use vipavatar_pipeline::engine::{BlobKind, PreprocessMode};
use vipavatar_pipeline::PipelineError;

pub use model::ModelThread;
pub use queue::{Delivery, JobQueue, Queue, QueueDepth};

/// A unit of background work. Serialised as JSON into the stream entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    /// Analyse an uploaded image and prepare the default engine's per-avatar state.
    Precompute { image: ImageHash, mode: PreprocessMode },
    /// Produce the video of one session.
    Generate { session: SessionId },
    /// Render a ready avatar's idle loop and thumbnail (queued after its precompute).
    Idle { image: ImageHash, mode: PreprocessMode },
    /// Render frames `start..end` of a split session (`attempt` of its generate job).
    Part { session: SessionId, attempt: u32, index: usize, start: usize, end: usize },
}

/// How a job attempt ended badly.
#[derive(Debug, Clone)]
pub enum JobError {
    /// The input is at fault: fail now, retrying cannot help.
    Final(ErrorBody),
    /// A fault of the server or its surroundings: retry with backoff.
    Retry(ErrorBody),
    /// A cached engine blob did not decode: evict it and run again at once (once per kind).
    Stale { blob: BlobKind, body: ErrorBody },
}

impl JobError {
    pub fn body(&self) -> &ErrorBody {
        match self {
            JobError::Final(b) | JobError::Retry(b) | JobError::Stale { body: b, .. } => b,
        }
    }
}

impl From<PipelineError> for JobError {
    fn from(e: PipelineError) -> Self {
        let body = ApiError::from(&e).body();
        if let PipelineError::StaleBlob { blob, .. } = e {
            return JobError::Stale { blob, body };
        }
        // A panic fails the job at once: the same input would most likely panic again.
        if e.is_user_error() || matches!(e, PipelineError::ModelPanic(_)) {
            JobError::Final(body)
        } else {
            JobError::Retry(body)
        }
    }
}

impl From<ApiError> for JobError {
    fn from(e: ApiError) -> Self {
        if e.code.info().0.is_client_error() {
            JobError::Final(e.body())
        } else {
            JobError::Retry(e.body())
        }
    }
}

impl From<vipavatar_cache::CacheError> for JobError {
    fn from(e: vipavatar_cache::CacheError) -> Self {
        JobError::Retry(ApiError::from(e).body())
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        JobError::Retry(ApiError::from(e).body())
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        JobError::Retry(ApiError::from(e).body())
    }
}

/// The message of a caught panic (`panic!` with a literal or a formatted string), for the two
/// panic boundaries: the model thread and the job runner.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

pub fn internal(message: impl std::fmt::Display) -> JobError {
    JobError::Retry(ApiError::new(Code::Internal, message.to_string()).body())
}

/// Everything a worker needs to run jobs.
pub struct JobContext {
    pub config: Config,
    pub cache: Cache,
    pub queue: JobQueue,
    pub blobs: BlobStore,
    /// Live video streams: the generate job publishes its fragments here.
    pub streams: FragmentStreams,
    /// The engines of this worker's device; every call on them runs on `model`, the device's
    /// owner thread.
    pub engines: Arc<DeviceModels>,
    pub model: ModelThread,
    /// This worker's consumer name (also written into sessions it works on).
    pub consumer: String,
}

/// Per-job bookkeeping: stage times and which cache kinds hit or missed.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    pub stages_ms: Vec<(String, f64)>,
    pub hits: Vec<String>,
    pub misses: Vec<String>,
}

impl Tracker {
    pub fn hit(&mut self, kind: Kind) {
        self.hits.push(kind.name().to_string());
    }
    pub fn miss(&mut self, kind: Kind) {
        self.misses.push(kind.name().to_string());
    }
    pub fn stage(&mut self, name: &str, since: Instant) {
        self.stages_ms.push((name.to_string(), vipavatar_pipeline::ms_since(since)));
    }
}

/// Names of the shared counters (hash `{namespace}:stats`) the jobs maintain.
pub mod counters {
    pub const PRECOMPUTE_RUNS: &str = "computed:precompute";
    pub const PRECOMPUTE_MS: &str = "time_ms:precompute";
    pub const PREPARE_RUNS: &str = "computed:prepare";
    pub const AUDIO_FEATURE_RUNS: &str = "computed:audio_features";
    pub const MOTION_RUNS: &str = "computed:motion";
    pub const RENDER_RUNS: &str = "computed:render";
    /// Milliseconds of generation per second of audio, summed (for time estimates).
    pub const GENERATE_MS: &str = "time_ms:generate";
    pub const GENERATE_AUDIO_MS: &str = "audio_ms:generate";
    pub const JOBS_DONE: &str = "jobs:done";
    pub const JOBS_FAILED: &str = "jobs:failed";
    pub const JOBS_RETRIED: &str = "jobs:retried";
    pub const JOBS_RECLAIMED: &str = "jobs:reclaimed";
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let literal = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "plain");
        let formatted = std::panic::catch_unwind(|| panic!("call {}", 3)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "call 3");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "unknown panic");
    }
}
