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
