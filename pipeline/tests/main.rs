//! The pipeline's one integration-test binary: every test file is a module here (as `tests/api`
//! is for the service), so libtorch and OpenCV are linked once instead of once per file.
//! Run one group with a filter: `cargo test -p vipavatar-pipeline --test main sadtalker_mel`.

// Shared helpers (fixture locations, the skip / fail-under-CI rule, per-engine support).
mod classic_support;
mod common;
mod gfpgan_support;
mod sadtalker_common;

mod audio_decode;
mod classic_bench;
mod classic_options;
mod classic_render;
mod classic_visemes;
mod facemesh;
mod gfpgan;
mod gfpgan_bench;
mod gfpgan_engines;
mod gfpgan_helper;
mod gfpgan_layout;
mod gfpgan_warp;
mod image_decode;
mod landmarks;
mod precompute;
mod sadtalker_align;
mod sadtalker_audio2exp;
mod sadtalker_audio2pose;
mod sadtalker_facerender;
mod sadtalker_facerender_bench;
mod sadtalker_facerender_engine;
mod sadtalker_facerender_layout;
mod sadtalker_facerender_paste;
mod sadtalker_layout;
mod sadtalker_mel;
mod sadtalker_recon;
mod sadtalker_shared_render;
mod sadtalker_standin;
mod sadtalker_stream;
mod sadtalker_timing;
mod video_encoder;
