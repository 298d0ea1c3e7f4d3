//! `enhancer=gfpgan` in the engines: the 422 naming `GFPGANv1.4.pth` when it is absent, the
//! stand-in checkpoint writer, the five points each engine hands the enhancer, and the classic
//! engine rendering through the enhancer (stand-in weights of reduced width, so it stays cheap;
//! the pictures they make are noise, only the wiring is checked). The full-size runs are ignored.

use crate::classic_support as sup;
use crate::common;
use std::path::Path;
use tch::Device;
use vipavatar_pipeline::audio::AudioClip;
use vipavatar_pipeline::classic::ClassicEngine;
use vipavatar_pipeline::engine::{Engine, Enhancer, GenerateOptions, MotionInput, PreprocessMode};
use vipavatar_pipeline::gfpgan::{
    expected_layout, expected_parse_layout, load_network, load_parsenet, points_from_68, write_parse_stand_in,
    write_stand_in, EnhancerSlot, GfpganConfig, ParseNetConfig, GFPGAN_V1_4_FILE, PARSENET_FILE,
};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::sadtalker::enhance::rendered_points;
use vipavatar_pipeline::PipelineError;

use crate::common::Frames;

/// The parity fixtures' smallest network: 64 px faces, 1/16 of the official widths.
fn tiny() -> GfpganConfig {
    GfpganConfig { out_size: 64, num_style_feat: 32, narrow: 0.0625, ..GfpganConfig::v1_4() }
}

/// A reduced ParseNet for [`tiny`]'s 64 px faces.
fn tiny_parse() -> ParseNetConfig {
    ParseNetConfig {
        in_size: 64,
        out_size: 64,
        base_ch: 8,
        res_depth: 1,
        ch_range: (8, 32),
        ..ParseNetConfig::official()
    }
}

fn gfpgan(seed: u64) -> GenerateOptions {
    GenerateOptions { enhancer: Enhancer::Gfpgan, seed, ..GenerateOptions::default() }
}

/// 0.2 s of a two-tone signal: 5 frames.
fn short_clip() -> AudioClip {
    let samples = (0..3200).map(|i| ((i as f32 * 0.05).sin() + (i as f32 * 0.013).sin()) * 0.3).collect();
    AudioClip { samples, sample_rate: 16_000 }
}

#[test]
fn gfpgan_five_points_from_68_landmarks() {
    let lm: Vec<[f32; 2]> = (0..68).map(|i| [i as f32, 2.0 * i as f32 + 1.0]).collect();
    let p = points_from_68(&lm).expect("68 points");
    assert_eq!(p[0], [38.5, 78.0], "left eye: mean of 36..=41");
    assert_eq!(p[1], [44.5, 90.0], "right eye: mean of 42..=47");
    assert_eq!(p[2], [30.0, 61.0], "nose tip: 30");
    assert_eq!((p[3], p[4]), ([48.0, 97.0], [54.0, 109.0]), "mouth corners: 48, 54");
    assert!(points_from_68(&lm[..67]).is_err());
}

#[test]
fn gfpgan_without_the_weights_file_is_a_422_naming_it() {
    let dir = sup::scratch("gfpgan-absent");
    for engine in [ClassicEngine::with_enhancer(EnhancerSlot::official(dir.path(), Device::Cpu)), ClassicEngine::new()]
    {
        let err = engine.check_options(&gfpgan(0)).unwrap_err();
        assert!(matches!(err, PipelineError::Unsupported { .. }), "{err}");
        assert_eq!(err.code(), "unsupported_option");
        assert!(err.is_user_error());
        assert!(err.to_string().contains(GFPGAN_V1_4_FILE), "{err}");
        assert!(engine.check_options(&GenerateOptions::default()).is_ok());
    }
    let err = ClassicEngine::with_enhancer(EnhancerSlot::official(dir.path(), Device::Cpu))
        .check_options(&gfpgan(0))
        .unwrap_err();
    assert!(err.to_string().contains(&dir.path().display().to_string()), "where it goes: {err}");

    // Present: every size and preprocess mode accepts it (the file is only read on first use).
    std::fs::write(dir.join(GFPGAN_V1_4_FILE), b"not read yet").unwrap();
    let engine = ClassicEngine::with_enhancer(EnhancerSlot::official(dir.path(), Device::Cpu));
    for size in [256, 512] {
        for preprocess in [PreprocessMode::Crop, PreprocessMode::Resize, PreprocessMode::Full] {
            let opts = GenerateOptions { size, preprocess, ..gfpgan(0) };
            assert!(engine.check_options(&opts).is_ok(), "{opts:?}");
        }
    }
}

#[test]
fn gfpgan_stand_in_has_the_layout_loads_and_is_repeatable() {
    let dir = sup::scratch("gfpgan-standin");
    let cfg = tiny();
    let (a, b) = (dir.join("a.pth"), dir.join("b.pth"));
    let written = write_stand_in(&a, &cfg, 5).expect("stand-in");
    write_stand_in(&b, &cfg, 5).expect("stand-in");
    assert_eq!(written.tensors, expected_layout(&cfg).unwrap().len());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, same file");
    assert!(!dir.join("a.pth.partial").exists());
    let net = load_network(&a, &cfg, Device::Cpu).expect("the strict loader accepts it");
    for (name, t) in net.var_store().variables() {
        assert_eq!(t.isfinite().all().int64_value(&[]), 1, "{name}");
    }
    // The official architecture refuses it (every key's shape is checked).
    let err = load_network(&a, &GfpganConfig::v1_4(), Device::Cpu).unwrap_err();
    assert!(matches!(err, PipelineError::Checkpoint { .. }), "{err}");
}

#[test]
fn gfpgan_sadtalker_points_are_the_source_points_in_the_rendered_frame() {
    for mode in [PreprocessMode::Crop, PreprocessMode::Resize, PreprocessMode::Full] {
        let Some(av) = sup::avatar("people_0.png", mode, 256) else { return };
        let p = rendered_points(&av.input(), 256, mode).expect("points");
        let (w, h) = if mode == PreprocessMode::Full { (av.image.width, av.image.height) } else { (256, 256) };
        assert!(p.iter().all(|q| q[0] >= 0.0 && q[1] >= 0.0 && q[0] < w as f64 && q[1] < h as f64), "{mode:?} {p:?}");
        assert!(p[0][0] < p[1][0] && p[3][0] < p[4][0], "{mode:?}: left before right {p:?}");
        assert!(p[0][1] < p[2][1] && p[2][1] < p[3][1], "{mode:?}: eyes above nose above mouth {p:?}");
        if mode == PreprocessMode::Full {
            assert_eq!(p[2], av.analysis.face.points[2].map(f64::from));
        }
    }
}

/// Render `clip` with the classic engine through `Engine::render`.
fn classic_frames(engine: &ClassicEngine, av: &sup::Avatar, clip: &AudioClip, opts: &GenerateOptions) -> Vec<RgbImage> {
    let features = engine.audio_features(clip).expect("features");
    let motion = engine.motion(&av.prepared, &features, opts).expect("motion");
    let mut sink = Frames::default();
    let mut seen = Vec::new();
    let stats = engine
        .render(&av.input(), &av.prepared, &motion, opts, &mut sink, &mut |done, _| seen.push(done))
        .expect("render");
    assert_eq!((stats.frames, sink.0.len()), (clip.num_frames(), clip.num_frames()));
    assert_eq!(seen.last(), Some(&clip.num_frames()), "progress reaches the end");
    sink.0
}

fn write_tiny(dir: &Path) -> EnhancerSlot {
    let path = dir.join(GFPGAN_V1_4_FILE);
    write_stand_in(&path, &tiny(), 3).expect("stand-in");
    EnhancerSlot::new(path, tiny(), Device::Cpu)
}

#[test]
fn gfpgan_classic_engine_renders_through_the_enhancer() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let dir = sup::scratch("gfpgan-classic");
    let engine = ClassicEngine::with_enhancer(write_tiny(dir.path()));
    let clip = short_clip();
    let plain = classic_frames(&engine, &av, &clip, &GenerateOptions::default());
    let enhanced = classic_frames(&engine, &av, &clip, &gfpgan(1));
    for (p, e) in plain.iter().zip(&enhanced) {
        assert_eq!((p.width, p.height), (e.width, e.height));
        assert_ne!(p.data, e.data, "the face was not touched");
    }
    // Deterministic for a seed; another seed draws other decoder noise.
    assert!(classic_frames(&engine, &av, &clip, &gfpgan(1)) == enhanced, "same seed, same frames");
    assert!(classic_frames(&engine, &av, &clip, &gfpgan(2)) != enhanced, "the seed reaches the noise");

    // Only the face is pasted over: pixels far from every landmark keep the plain rendering.
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let (cx, cy) = (lm.iter().map(|p| p[0]).sum::<f32>() / 68.0, lm.iter().map(|p| p[1]).sum::<f32>() / 68.0);
    let w = plain[0].width as usize;
    let px = |img: &RgbImage, x: usize, y: usize| img.data[(y * w + x) * 3..(y * w + x) * 3 + 3].to_vec();
    let face = px(&plain[0], cx as usize, cy as usize) != px(&enhanced[0], cx as usize, cy as usize);
    assert!(face, "the face centre changed");

    // The streaming path (chunks of 2 frames) gives the frames of the whole render.
    let opts = gfpgan(1);
    let input = MotionInput { clip: &clip, features: None, motion: None, frames: None };
    let (mut motion, mut renderer) = engine.stream(av.input(), &av.prepared, input, &opts).expect("stream");
    let mut sink = Frames::default();
    while let Some(chunk) = motion.next_chunk(2).expect("chunk") {
        renderer.render_chunk(&chunk, &mut sink).expect("render chunk");
    }
    // Other batches (2, 2, 1 faces per network call instead of 5) change the float rounding of
    // the convolutions: at most 1 LSB on a few values.
    assert_eq!(sink.0.len(), enhanced.len());
    for (f, (a, b)) in sink.0.iter().zip(&enhanced).enumerate() {
        let d: Vec<u8> = a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y)).collect();
        let (max, differing) = (d.iter().copied().max().unwrap_or(0), d.iter().filter(|v| **v > 0).count());
        assert!(max <= 1 && differing * 1000 < d.len(), "frame {f}: max {max}, {differing} values differ");
    }
    assert!(renderer.stage_ms().iter().any(|(name, ms)| name == "enhance" && *ms > 0.0), "{:?}", renderer.stage_ms());
}

/// With `parsing_parsenet.pth` next to the GFPGAN weights the slot loads it and pastes through
/// the parse mask (stand-ins of reduced width): frames of the right size, other than the square
/// mask's for the same seed, deterministic; without the file nothing changes.
#[test]
fn gfpgan_classic_engine_pastes_through_the_parse_mask() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let dir = sup::scratch("gfpgan-classic-parse");
    let clip = short_clip();
    let square_slot = write_tiny(dir.path());
    assert_eq!(square_slot.parse_path(), dir.join(PARSENET_FILE));
    let square = ClassicEngine::with_enhancer(square_slot);
    let plain = classic_frames(&square, &av, &clip, &GenerateOptions::default());
    let square = classic_frames(&square, &av, &clip, &gfpgan(1));

    let written = write_parse_stand_in(&dir.join(PARSENET_FILE), &tiny_parse(), 4).expect("parse stand-in");
    assert_eq!(written.tensors, expected_parse_layout(&tiny_parse()).unwrap().len());
    assert!(load_parsenet(&dir.join(PARSENET_FILE), &tiny_parse(), Device::Cpu).is_ok());
    let slot = EnhancerSlot::new(dir.join(GFPGAN_V1_4_FILE), tiny(), Device::Cpu).with_parse_config(tiny_parse());
    let (h, w) = (plain[0].height as i64, plain[0].width as i64);
    let frames = tch::Tensor::from_slice(&plain[0].data).view([1, h, w, 3]);
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let points = points_from_68(&lm).expect("points");
    assert!(!slot.uses_parse_mask());
    let out = slot.enhance(&frames, &[points], 1).expect("enhance");
    assert!(slot.uses_parse_mask(), "the parse file was not used");
    assert_eq!(out.size(), frames.size());

    let engine = ClassicEngine::with_enhancer(slot);
    let parsed = classic_frames(&engine, &av, &clip, &gfpgan(1));
    assert_eq!(parsed.len(), square.len());
    for ((p, s), e) in plain.iter().zip(&square).zip(&parsed) {
        assert_eq!((p.width, p.height, p.data.len()), (e.width, e.height, e.data.len()));
        assert_ne!(p.data, e.data, "the face was not touched");
        assert_ne!(s.data, e.data, "the parse mask gave the square mask's frame");
    }
    assert!(classic_frames(&engine, &av, &clip, &gfpgan(1)) == parsed, "same seed, same frames");
    // A broken parse file fails the job naming it (it is optional only when absent).
    std::fs::write(dir.join(PARSENET_FILE), b"not a pickle").unwrap();
    let broken = EnhancerSlot::new(dir.join(GFPGAN_V1_4_FILE), tiny(), Device::Cpu).with_parse_config(tiny_parse());
    match broken.enhance(&frames, &[points], 1) {
        Err(PipelineError::Checkpoint { file, .. }) => assert!(file.ends_with(PARSENET_FILE), "{file}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

/// The classic engine with a full-size stand-in `GFPGANv1.4.pth` (349 MB, official layout):
/// `EnhancerSlot::official` finds it, loads it once and enhances 5 frames at 512 px faces.
#[test]
#[ignore = "writes 349 MB and restores 5 faces at 512 px (about 4 s each on 2 CPU cores)"]
fn gfpgan_classic_engine_with_a_full_size_stand_in() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let dir = sup::scratch("gfpgan-classic-full");
    let written = write_stand_in(&dir.join(GFPGAN_V1_4_FILE), &GfpganConfig::v1_4(), 9).expect("stand-in");
    eprintln!("stand-in: {written:?}");
    tch::set_num_threads(2);
    let engine = ClassicEngine::with_enhancer(EnhancerSlot::official(dir.path(), Device::Cpu));
    let t = std::time::Instant::now();
    let frames = classic_frames(&engine, &av, &short_clip(), &gfpgan(4));
    eprintln!("classic + gfpgan (full-size stand-in): {} frames in {:.1} s", frames.len(), t.elapsed().as_secs_f64());
}

/// The sadtalker engine on stand-in SadTalker files with a reduced-width GFPGAN stand-in: every
/// rendered batch goes through the enhancer (crop and full modes).
#[test]
#[ignore = "minutes of CPU (the full-size SadTalker renderer, about 5 s per frame on 2 cores)"]
fn gfpgan_sadtalker_engine_renders_through_the_enhancer() {
    use vipavatar_pipeline::sadtalker::engine::SadTalkerEngine;
    let Some(testdata) = common::shared_testdata() else { return };
    let Some(models) = sup::models() else { return };
    let dir = sup::scratch("gfpgan-sadtalker");
    vipavatar_pipeline::sadtalker::standin::write_stand_ins(dir.path(), 11).expect("sadtalker stand-ins");
    write_tiny(dir.path());
    tch::set_num_threads(2);
    let engine = SadTalkerEngine::load(dir.path(), Device::Cpu).expect("engine").with_enhancer_config(tiny());
    let bytes = std::fs::read(testdata.join("images/happy.png")).expect("test image");
    let clip = short_clip();
    for mode in [PreprocessMode::Crop, PreprocessMode::Full] {
        let (image, analysis) = models.run(&bytes, mode).expect("precompute");
        let avatar = vipavatar_pipeline::engine::AvatarInput { image: &image, analysis: &analysis };
        let prepared = engine.prepare(&avatar, 256).expect("prepare");
        let features = engine.audio_features(&clip).expect("features");
        let mut frames = Vec::new();
        for opts in [
            GenerateOptions { preprocess: mode, ..GenerateOptions::default() },
            GenerateOptions { preprocess: mode, ..gfpgan(0) },
        ] {
            assert!(engine.check_options(&opts).is_ok());
            let motion = engine.motion(&prepared, &features, &opts).expect("motion");
            let mut sink = Frames::default();
            let stats = engine.render(&avatar, &prepared, &motion, &opts, &mut sink, &mut |_, _| {}).expect("render");
            assert_eq!(stats.frames, 5);
            frames.push(sink.0);
        }
        let (plain, enhanced) = (&frames[0], &frames[1]);
        assert_eq!((plain[0].width, plain[0].height), (enhanced[0].width, enhanced[0].height));
        assert!(plain.iter().zip(enhanced).all(|(p, e)| p.data != e.data), "{mode:?}: a frame was not enhanced");
    }
}
