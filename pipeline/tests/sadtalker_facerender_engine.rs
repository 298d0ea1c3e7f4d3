//! The sadtalker engine's behaviour without the official checkpoints: loading fails with a
//! checkpoint error naming the missing file (so `engine=auto` falls back to classic), and the
//! option check refuses `enhancer=gfpgan` with the 422-class `unsupported_option` error instead
//! of ignoring it.

use std::path::PathBuf;
use tch::Device;
use vipavatar_pipeline::engine::{Enhancer, GenerateOptions, PreprocessMode};
use vipavatar_pipeline::sadtalker::engine::{check_options, SadTalkerEngine};
use vipavatar_pipeline::sadtalker::paths::{SadTalkerPaths, CHECKPOINT_256, MAPPING_CROP};
use vipavatar_pipeline::PipelineError;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vipavatar-sadtalker-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn sadtalker_engine_without_checkpoints_is_a_checkpoint_error() {
    let dir = scratch_dir("empty");
    let err = SadTalkerEngine::load(&dir, Device::Cpu).unwrap_err();
    assert!(matches!(err, PipelineError::Checkpoint { .. }), "{err}");
    assert_eq!(err.code(), "checkpoint_error");
    assert!(err.to_string().contains(CHECKPOINT_256), "{err}");
    assert!(!err.is_user_error());

    let missing = dir.join("does-not-exist");
    assert!(matches!(SadTalkerEngine::load(&missing, Device::Cpu), Err(PipelineError::Checkpoint { .. })));

    // A truncated checkpoint is refused by its header check, naming the file.
    std::fs::write(dir.join(CHECKPOINT_256), b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let err = SadTalkerEngine::load(&dir, Device::Cpu).unwrap_err();
    assert!(matches!(err, PipelineError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains(CHECKPOINT_256), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sadtalker_engine_refuses_gfpgan_and_missing_renderers() {
    let dir = scratch_dir("paths");
    let paths = SadTalkerPaths {
        dir: dir.clone(),
        checkpoint_256: Some(dir.join(CHECKPOINT_256)),
        checkpoint_512: None,
        mapping_crop: Some(dir.join(MAPPING_CROP)),
        mapping_full: None,
    };
    assert!(check_options(&paths, &GenerateOptions::default()).is_ok());

    let gfpgan = GenerateOptions { enhancer: Enhancer::Gfpgan, ..GenerateOptions::default() };
    let err = check_options(&paths, &gfpgan).unwrap_err();
    assert_eq!(err.code(), "unsupported_option");
    assert!(err.is_user_error());
    assert!(err.to_string().contains("gfpgan"), "{err}");

    let big = GenerateOptions { size: 512, ..GenerateOptions::default() };
    assert_eq!(check_options(&paths, &big).unwrap_err().code(), "unsupported_option");
    let full = GenerateOptions { preprocess: PreprocessMode::Full, ..GenerateOptions::default() };
    let err = check_options(&paths, &full).unwrap_err();
    assert!(err.to_string().contains("mapping_00109"), "{err}");
    let bad = GenerateOptions { expression_scale: 9.0, ..GenerateOptions::default() };
    assert_eq!(check_options(&paths, &bad).unwrap_err().code(), "invalid_option");
    let _ = std::fs::remove_dir_all(&dir);
}
