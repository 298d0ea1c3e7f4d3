//! The pipeline's one integration-test binary: every test file is a module here (as `tests/api`
//! is for the service), so libtorch and OpenCV are linked once instead of once per file.
//! Run one group with a filter: `cargo test -p vipavatar-pipeline --test main sadtalker_mel`.
//! Without the `opencv` feature only the SadTalker and GFPGAN network tests build (the GPU
//! check's set: `scripts/gpu-check.sh`).

// Shared helpers (fixture locations, the skip / fail-under-CI rule, per-engine support).
#[cfg(feature = "opencv")]
mod classic_support;
mod common;
mod gfpgan_support;
mod sadtalker_common;

#[cfg(feature = "opencv")]
mod audio_decode;
#[cfg(feature = "opencv")]
mod classic_bench;
#[cfg(feature = "opencv")]
mod classic_mesh;
#[cfg(feature = "opencv")]
mod classic_options;
#[cfg(feature = "opencv")]
mod classic_render;
#[cfg(feature = "opencv")]
mod classic_visemes;
#[cfg(feature = "opencv")]
mod facemesh;
mod gfpgan;
#[cfg(feature = "opencv")]
mod gfpgan_bench;
#[cfg(feature = "opencv")]
mod gfpgan_engines;
#[cfg(feature = "opencv")]
mod gfpgan_helper;
mod gfpgan_layout;
mod gfpgan_parse;
#[cfg(feature = "opencv")]
mod gfpgan_warp;
#[cfg(feature = "opencv")]
mod image_decode;
#[cfg(feature = "opencv")]
mod landmarks;
#[cfg(feature = "opencv")]
mod precompute;
#[cfg(feature = "opencv")]
mod sadtalker_align;
mod sadtalker_audio2exp;
mod sadtalker_audio2pose;
mod sadtalker_facerender;
mod sadtalker_facerender_bench;
#[cfg(feature = "opencv")]
mod sadtalker_facerender_engine;
mod sadtalker_facerender_layout;
#[cfg(feature = "opencv")]
mod sadtalker_facerender_paste;
mod sadtalker_layout;
mod sadtalker_mel;
mod sadtalker_recon;
mod sadtalker_shared_render;
#[cfg(feature = "opencv")]
mod sadtalker_standin;
mod sadtalker_standin_timing;
#[cfg(feature = "opencv")]
mod sadtalker_stream;
mod sadtalker_timing;
#[cfg(feature = "opencv")]
mod video_encoder;
