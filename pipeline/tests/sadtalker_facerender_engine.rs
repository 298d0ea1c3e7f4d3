//! The sadtalker engine's behaviour without the official checkpoints: loading fails with a
//! checkpoint error naming the missing file (so `engine=auto` falls back to classic), and the
//! option check refuses `enhancer=gfpgan` without `GFPGANv1.4.pth` with the 422-class
//! `unsupported_option` error naming the file instead of ignoring it.

use std::path::PathBuf;
use tch::Device;
use vipavatar_pipeline::engine::{Enhancer, GenerateOptions, PreprocessMode};
use vipavatar_pipeline::gfpgan::GFPGAN_V1_4_FILE;
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
fn sadtalker_engine_checks_gfpgan_and_refuses_missing_renderers() {
    let dir = scratch_dir("paths");
    let paths = SadTalkerPaths {
        dir: dir.clone(),
        checkpoint_256: Some(dir.join(CHECKPOINT_256)),
        checkpoint_512: None,
        mapping_crop: Some(dir.join(MAPPING_CROP)),
        mapping_full: None,
    };
    assert!(check_options(&paths, &GenerateOptions::default()).is_ok());

    // enhancer=gfpgan: a 422 naming GFPGANv1.4.pth until the file is in the directory.
    let gfpgan = GenerateOptions { enhancer: Enhancer::Gfpgan, ..GenerateOptions::default() };
    let err = check_options(&paths, &gfpgan).unwrap_err();
    assert_eq!(err.code(), "unsupported_option");
    assert!(err.is_user_error());
    assert!(err.to_string().contains(GFPGAN_V1_4_FILE), "{err}");
    std::fs::write(dir.join(GFPGAN_V1_4_FILE), b"read on first use").unwrap();
    assert!(check_options(&paths, &gfpgan).is_ok());

    let big = GenerateOptions { size: 512, ..GenerateOptions::default() };
    assert_eq!(check_options(&paths, &big).unwrap_err().code(), "unsupported_option");
    let full = GenerateOptions { preprocess: PreprocessMode::Full, ..GenerateOptions::default() };
    let err = check_options(&paths, &full).unwrap_err();
    assert!(err.to_string().contains("mapping_00109"), "{err}");
    let bad = GenerateOptions { expression_scale: 9.0, ..GenerateOptions::default() };
    assert_eq!(check_options(&paths, &bad).unwrap_err().code(), "invalid_option");
    let _ = std::fs::remove_dir_all(&dir);
}

use crate::common;

use crate::common::Frames;

/// The whole engine on a checkpoint directory named by `VIPAVATAR_SADTALKER_CHECKPOINTS` (the
/// official files), else on stand-ins it writes (official layout, random weights): prepare ->
/// audio features -> motion -> render for crop and full preprocessing, checking frame counts,
/// sizes and that frames change.
#[test]
#[ignore = "minutes of CPU (full-size renderer, about 5 s per frame on 2 cores)"]
fn sadtalker_engine_generates_frames_end_to_end() {
    use vipavatar_pipeline::engine::{AvatarInput, Engine};
    let stand_ins = std::env::temp_dir().join(format!("vipavatar-standin-e2e-{}", std::process::id()));
    let dir = match std::env::var("VIPAVATAR_SADTALKER_CHECKPOINTS") {
        Ok(dir) => std::path::PathBuf::from(dir),
        Err(_) => {
            vipavatar_pipeline::sadtalker::standin::write_stand_ins(&stand_ins, 11).expect("stand-ins");
            stand_ins.clone()
        }
    };
    let Some(models) = common::checkpoints() else { return };
    let Some(testdata) = common::shared_testdata() else { return };
    tch::set_num_threads(2);
    let engine = SadTalkerEngine::load(&dir, Device::Cpu).expect("engine loads");
    let pre =
        vipavatar_pipeline::precompute::Precomputer::load(&models, Default::default()).expect("precompute models");
    let bytes = std::fs::read(testdata.join("images/happy.png")).expect("test image");
    // 0.2 s of a two-tone signal: 5 frames.
    let samples: Vec<f32> = (0..3200).map(|i| ((i as f32 * 0.05).sin() + (i as f32 * 0.013).sin()) * 0.3).collect();
    let clip = vipavatar_pipeline::audio::AudioClip { samples, sample_rate: 16_000 };
    for mode in [PreprocessMode::Crop, PreprocessMode::Full] {
        let (image, analysis) = pre.run(&bytes, mode).expect("precompute");
        let avatar = AvatarInput { image: &image, analysis: &analysis };
        let prepared = engine.prepare(&avatar, 256).expect("prepare");
        let features = engine.audio_features(&clip).expect("features");
        let opts = GenerateOptions { preprocess: mode, ..GenerateOptions::default() };
        let motion = engine.motion(&prepared, &features, &opts).expect("motion");
        let mut sink = Frames(Vec::new());
        let mut calls = 0;
        let stats =
            engine.render(&avatar, &prepared, &motion, &opts, &mut sink, &mut |_, _| calls += 1).expect("render");
        assert_eq!(stats.frames, 5);
        assert_eq!(sink.0.len(), 5);
        assert_eq!(calls, 5);
        let (w, h) = (sink.0[0].width, sink.0[0].height);
        if mode == PreprocessMode::Full {
            assert_eq!((w, h), (image.width & !1, image.height & !1));
        } else {
            assert_eq!(w, 256);
        }
        assert!(w % 2 == 0 && h % 2 == 0);
        assert!(sink.0.iter().all(|f| (f.width, f.height) == (w, h)));
        assert!(sink.0.windows(2).any(|p| p[0].data != p[1].data), "{mode:?}: the frames do not change");
        eprintln!("sadtalker engine {mode:?}: {} frames of {w}x{h}, stages {:?}", stats.frames, stats.stage_ms);
        if mode == PreprocessMode::Crop {
            // The engine's stream renders the same frames chunk by chunk, and a part of the clip
            // renders the whole clip's frames for its range.
            for frames in [None, Some((2, 5))] {
                let input =
                    vipavatar_pipeline::engine::MotionInput { clip: &clip, features: None, motion: None, frames };
                let (mut motion, mut chunks) = engine.stream(avatar, &prepared, input, &opts).expect("stream");
                let mut streamed = Frames(Vec::new());
                for size in [2, 3] {
                    if let Some(chunk) = motion.next_chunk(size).expect("motion chunk") {
                        chunks.render_chunk(&chunk, &mut streamed).expect("render chunk");
                    }
                }
                assert!(motion.next_chunk(3).expect("end").is_none());
                let (a, b) = frames.unwrap_or((0, 5));
                assert!(streamed.0 == sink.0[a..b], "streamed frames {a}..{b} differ from the whole render's");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&stand_ins);
}
