//! The SadTalker engine's networks ported to tch: the audio front end ([`mel`]), the
//! audio-to-coefficient half ([`audio2exp`], [`audio2pose`], [`savgol`], [`audio2coeff`]) and the
//! 3DMM regression network ([`recon`]), loading the official checkpoint layout ([`weights`],
//! [`paths`]). Numerics follow OpenTalker/SadTalker and are checked against the golden fixtures in
//! `../shared/fixtures/sadtalker` by `pipeline/tests/sadtalker_*.rs`.

pub mod audio2coeff;
pub mod audio2exp;
pub mod audio2pose;
pub mod batch;
pub mod coeff_stream;
#[cfg(feature = "opencv")]
pub mod engine;
#[cfg(feature = "opencv")]
pub mod enhance;
pub mod facerender;
pub mod layers;
pub mod mel;
pub mod paths;
pub mod recon;
pub mod rng;
pub mod savgol;
pub mod standin;
#[cfg(feature = "opencv")]
pub mod stream;
pub mod weights;

pub use audio2coeff::{Audio2Coeff, MotionCoefficients, MotionOptions};
pub use mel::MelFeatures;
pub use paths::{sadtalker_checkpoints_status, SadTalkerPaths};
pub use recon::{FaceRecon, SplitCoeffs};
