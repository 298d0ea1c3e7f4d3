//! GFPGAN v1.4 face restoration in tch: the `GFPGANv1Clean` network ([`network`], [`stylegan`],
//! [`config`]) loaded from the official `GFPGANv1.4.pth` ([`weights`]), deterministic noise
//! ([`noise`]), and the face helper without detection ([`align`], [`warp`], [`enhancer`]): align
//! each frame's face to the FFHQ 512 five-point template from known points, restore the crops in
//! batches, paste them back through the inverse affine with a soft mask: facexlib's ParseNet face
//! mask ([`parse`], from the optional `parsing_parsenet.pth`, as GFPGANer does) or, without that
//! file, facexlib's square soft mask.
//!
//! Numerics follow `gfpgan==1.3.8` / `basicsr==1.4.2` / `facexlib==0.3.0` and are checked against
//! the golden fixtures in `pipeline/tests/fixtures/gfpgan` by `pipeline/tests/gfpgan*.rs`.
//!
//! How an engine uses it (on its model thread, after rendering a batch of frames):
//! ```text
//! let enhancer = FaceEnhancer::load(&checkpoints.join(GFPGAN_V1_4_FILE), device)?; // once
//! // frames: (n, h, w, 3) uint8 RGB on any device; points: one FacePoints per frame
//! let out = enhancer.enhance(&frames, &points, &Noise::Seeded(request_seed))?;
//! ```
//! A missing or mismatched file is a [`crate::PipelineError::Checkpoint`] naming the file and key.
//!
//! The engines hold an [`EnhancerSlot`] ([`slot`]): the file is looked for when a request asks for
//! `enhancer=gfpgan` (absent: a 422 naming it) and loaded on first use, with `parsing_parsenet.pth`
//! from the same folder when it is there (absent: the square mask, no error). [`standin`] writes
//! stand-in files with the same layouts and random weights for tests and timing.
//!
//! Without the `opencv` feature the networks (GFPGAN and ParseNet with its mask), their loaders
//! and the tensor-side warps still build (the GPU check times the network on hosts without
//! OpenCV); the face helper (`align`, `enhancer`, `slot`) needs OpenCV's affine fit.

#[cfg(feature = "opencv")]
pub mod align;
pub mod config;
pub mod conv;
#[cfg(feature = "opencv")]
pub mod enhancer;
pub mod network;
pub mod noise;
pub mod parse;
#[cfg(feature = "opencv")]
pub mod slot;
pub mod standin;
pub mod stylegan;
pub mod warp;
pub mod weights;

#[cfg(feature = "opencv")]
pub use align::{fit_affine, points_from_68, FacePoints};
pub use config::GfpganConfig;
pub use conv::ConvPath;
#[cfg(feature = "opencv")]
pub use enhancer::{AlignedFaces, FaceEnhancer, PasteMasks};
pub use network::{GfpganNet, Intermediates};
pub use noise::Noise;
pub use parse::{expected_parse_layout, load_parsenet, FaceParser, ParseNet, ParseNetConfig, PARSENET_FILE};
#[cfg(feature = "opencv")]
pub use slot::{check_weights_file, EnhancerSlot};
pub use standin::{write_parse_stand_in, write_stand_in};
pub use warp::Affine;
pub use weights::{expected_layout, load_network, GFPGAN_V1_4_FILE};
