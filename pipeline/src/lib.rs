//! vipavatar-pipeline: image/audio decoding, face analysis, motion, renderers and video encoding.
//! Knows nothing of HTTP or Redis; the service and the CLI drive it through [`engine::Engine`].

pub mod audio;
pub mod checkpoints;
pub mod classic;
pub mod device;
pub mod engine;
pub mod error;
pub mod face;
pub mod gfpgan;
pub mod image;
pub mod precompute;
pub mod sadtalker;
pub mod torch_pickle;
pub mod video;

pub use error::{codes, PipelineError, Result};

/// Milliseconds since `t`: the one way every stage time of the pipeline, the service and the
/// bench is taken.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
