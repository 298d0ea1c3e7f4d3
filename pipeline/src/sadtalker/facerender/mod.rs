//! SadTalker's face renderer (face-vid2vid with a SPADE decoder) ported to tch: the keypoint
//! detector ([`keypoint_detector`]), the coefficient-to-head-pose mapping net ([`mapping`]), the
//! occlusion-aware generator ([`generator`]) with its dense-motion network ([`dense_motion`]) and
//! SPADE decoder ([`spade`], [`upconv`]), their building blocks ([`blocks`]), the keypoint
//! transformation ([`keypoints`]), the coefficient windows ([`windows`]), the per-avatar source
//! state ([`source_state`]), batched rendering ([`renderer`], batch size from [`memory`]; passes
//! shared by concurrent sessions, [`shared`]) and the seamless paste-back into the full image
//! ([`paste`]).
//!
//! Layer widths come from SadTalker's YAML config ([`config`], read with `serde_yaml`); numerics follow
//! OpenTalker/SadTalker and are checked against the golden fixtures by
//! `pipeline/tests/sadtalker_facerender*.rs`.

pub mod blocks;
pub mod config;
pub mod dense_motion;
pub mod generator;
pub mod keypoint_detector;
pub mod keypoints;
pub mod mapping;
pub mod memory;
pub mod paste;
pub mod renderer;
pub mod shared;
pub mod source_state;
pub mod spade;
pub mod upconv;
pub mod windows;

pub use config::FaceRenderConfig;
pub use renderer::{FaceRenderer, MappingWeights, RenderSettings, RenderedBatch, RendererWeights};
pub use shared::{PassStats, SharedRenderer};
pub use source_state::SourceState;
pub use windows::{DrivingWindows, WindowOptions};
