//! The sadtalker engine's incremental motion (`sadtalker::coeff_stream`, `sadtalker::stream`):
//! coefficients produced a few frames at a time are the same, bit for bit, for every chunking,
//! equal the whole-clip `Audio2Coeff::generate` up to float rounding, and need only a short
//! lookahead; the renderer windows of a stretch of frames built from the rows a chunk carries
//! equal those frames' windows of the whole clip. Self-consistency of our own code on the
//! fixtures' full-size random audio weights (no golden numbers: the references are computed here).

use crate::sadtalker_common::{device, fixture_dir};
use tch::{Kind, Tensor};
use vipavatar_pipeline::audio::AudioClip;
use vipavatar_pipeline::engine::{Engine, GenerateOptions, MotionInput, MotionStream, PreparedAvatar, StateKind};
use vipavatar_pipeline::sadtalker::audio2coeff::{Audio2Coeff, MotionCoefficients, MotionOptions};
use vipavatar_pipeline::sadtalker::audio2exp::Audio2Exp;
use vipavatar_pipeline::sadtalker::audio2pose::Audio2Pose;
use vipavatar_pipeline::sadtalker::coeff_stream::CoeffStream;
use vipavatar_pipeline::sadtalker::engine::{decode, encode, SadTalkerEngine, SourceCoeffs};
use vipavatar_pipeline::sadtalker::facerender::windows::{target_windows, target_windows_range};
use vipavatar_pipeline::sadtalker::mel::MelFeatures;
use vipavatar_pipeline::sadtalker::stream::{MotionChunk, SadTalkerMotion};

const DIM: usize = 70;

fn model() -> Option<Audio2Coeff> {
    let dir = fixture_dir()?;
    Some(Audio2Coeff {
        exp: Audio2Exp::from_checkpoint(&dir.join("audio2exp.weights.safetensors"), device()).expect("audio2exp"),
        pose: Audio2Pose::from_checkpoint(&dir.join("audio2pose.weights.safetensors"), device()).expect("audio2pose"),
    })
}

/// `seconds` of a buzzy tone with a syllable-like envelope.
fn speech(seconds: f32) -> MelFeatures {
    MelFeatures::from_samples(&wave(seconds)).expect("mel")
}

fn wave(seconds: f32) -> Vec<f32> {
    (0..(16_000.0 * seconds) as usize)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let env = ((t * 3.1).sin().max(0.0) * (t * 0.7).cos().abs()).powi(2);
            0.4 * env * (2.0 * std::f32::consts::PI * (140.0 + 30.0 * t) * t).sin()
        })
        .collect()
}

fn source() -> Vec<f32> {
    (0..73).map(|i| 0.2 * (i as f32 * 0.37).sin()).collect()
}

/// The stream advanced `step` frames at a time; each step's rows as they became final.
fn streamed(model: &Audio2Coeff, features: &MelFeatures, opts: &MotionOptions, step: usize) -> Vec<f32> {
    let mut s = CoeffStream::new(features, &source(), opts, device()).expect("stream");
    let mut out = Vec::new();
    while s.ready() < s.total() {
        let before = s.ready();
        s.advance(model, before + step).expect("advance");
        // A step makes exactly the frames asked for; clips under 26 frames are smoothed whole.
        let want = if s.total() < 26 { s.total() } else { (before + step).min(s.total()) };
        assert_eq!(s.ready(), want, "frames final after asking for {} more", step);
        out.extend_from_slice(s.rows(before..s.ready()));
    }
    out
}

fn max_diff(a: &[f32], b: &[f32], cols: std::ops::Range<usize>) -> f32 {
    a.chunks(DIM)
        .zip(b.chunks(DIM))
        .flat_map(|(x, y)| cols.clone().map(move |k| (x[k] - y[k]).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn sadtalker_motion_streams_the_same_coefficients_in_any_chunking() {
    let Some(model) = model() else { return };
    // 131 frames: four full 32-frame pose chunks, a 2-frame remainder chunk, and >= 13 frames.
    let features = speech(5.24);
    let opts = MotionOptions { seed: 11, pose_style: 3, ..Default::default() };
    let whole: MotionCoefficients = model.generate(&features, &source(), &opts).expect("generate");
    assert_eq!(whole.num_frames, 131);

    let one_go = streamed(&model, &features, &opts, whole.num_frames);
    for step in [1, 6, 25, 32, 50] {
        let chunked = streamed(&model, &features, &opts, step);
        assert!(chunked == one_go, "chunks of {step} frames differ from one pass");
    }
    // Against the reference-shaped whole-clip computation: batching changes only rounding.
    let (exp, pose) = (max_diff(&one_go, &whole.values, 0..64), max_diff(&one_go, &whole.values, 64..70));
    eprintln!("sadtalker stream vs whole clip: expression {exp:.2e}, pose {pose:.2e}");
    assert!(exp < 1e-4 && pose < 1e-4, "expression {exp}, pose {pose}");
    // The seed still decides the draws.
    let other = streamed(&model, &features, &MotionOptions { seed: 12, ..opts.clone() }, 25);
    assert!(max_diff(&other, &one_go, 64..70) > 1e-3, "another seed gives another pose");

    // Short clips (smoothing window under 13) go in one pass and still equal the whole clip.
    let short = speech(0.4);
    let whole = model.generate(&short, &source(), &opts).expect("generate");
    assert_eq!(whole.num_frames, 10);
    assert!(max_diff(&streamed(&model, &short, &opts, 3), &whole.values, 0..DIM) < 1e-4);
}

#[test]
fn sadtalker_first_frames_need_only_a_short_lookahead() {
    let Some(model) = model() else { return };
    let features = speech(20.0);
    let mut s = CoeffStream::new(&features, &source(), &MotionOptions::default(), device()).expect("stream");
    let t = std::time::Instant::now();
    // The first chunk's windows reach frame 6 + 13: final rows up to 19 need pose up to 25.
    s.advance(&model, 19).expect("advance");
    let first = t.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    s.advance(&model, s.total()).expect("advance");
    let rest = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("sadtalker coefficients, 20 s clip (500 frames): first 19 frames {first:.1} ms, the rest {rest:.1} ms");
    assert_eq!(s.ready(), 500);
    let mut s = CoeffStream::new(&features, &source(), &MotionOptions::default(), device()).expect("stream");
    s.advance(&model, 19).expect("advance");
    // One expression pass (32 frames) and the source row + one pose chunk (32 frames).
    assert_eq!(s.computed(), (32, 33));
}

#[test]
fn sadtalker_windows_of_a_chunk_equal_the_whole_clips() {
    let total = 60usize;
    let coeffs = MotionCoefficients {
        num_frames: total,
        values: (0..total * DIM).map(|v| ((v * 7919) % 1000) as f32 / 1000.0).collect(),
    };
    let all = Tensor::from_slice(&coeffs.values).reshape([total as i64, DIM as i64]);
    let whole = target_windows(&all);
    for (a, b) in [(0, 6), (6, 31), (31, 60), (50, 60), (0, 60), (29, 30)] {
        let chunk = MotionChunk::of(&coeffs, a, b);
        let rows = Tensor::from_slice(&chunk.rows).reshape([-1, DIM as i64]);
        let ours = target_windows_range(&rows, chunk.first_row, total, a..b).expect("windows");
        let want = whole.narrow(0, a as i64, (b - a) as i64);
        assert_eq!(ours.size(), want.size());
        let diff = (&ours - &want).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "frames {a}..{b}");
    }
    // Rows that do not reach a window's last frame are refused, not read out of bounds.
    let short = all.narrow(0, 0, 20).to_kind(Kind::Float);
    assert!(target_windows_range(&short, 0, total, 0..10).is_err());
    assert!(target_windows_range(&short, 0, total, 0..7).is_ok());
    assert!(target_windows_range(&all, 0, total, 10..10).is_err());
}

/// Every chunk of an engine's motion stream for `input`, checked against the whole clip's rows.
fn chunks_of(engine: &SadTalkerEngine, prepared: &PreparedAvatar, input: MotionInput<'_>, whole: &MotionCoefficients) {
    let mut stream = SadTalkerMotion::new(engine, prepared, input, &GenerateOptions::default()).expect("stream");
    let (mut pos, end) = input.frames.unwrap_or((0, whole.num_frames));
    for size in [6, 25, 1, 25, 25, 25] {
        let Some(chunk) = stream.next(size).expect("chunk") else { break };
        assert_eq!((chunk.start, chunk.end), (pos, (pos + size).min(end)));
        assert!(chunk == MotionChunk::of(whole, chunk.start, chunk.end), "chunk {}..{}", chunk.start, chunk.end);
        pos = chunk.end;
    }
    assert_eq!(pos, end, "the chunks cover the frames asked for");
    assert!(stream.next(25).expect("end").is_none());
}

/// The engine's motion stream on a loaded engine (stand-in weights: the sadtalker stand-in test
/// calls this): its chunks carry the whole clip's rows, for analysed, cached-feature and cached
/// motion, and for a part of the clip; its blobs for the cache are the whole-clip calls' blobs.
pub fn check_engine_motion(engine: &SadTalkerEngine) {
    let clip = AudioClip { samples: wave(3.0), sample_rate: 16_000 };
    let coeffs = SourceCoeffs { size: 256, coeff_3dmm: source(), trans_params: [256.0, 256.0, 1.0, 0.0, 0.0] };
    let prepared = PreparedAvatar { parts: vec![(StateKind::Coeffs3dmm, encode(&coeffs).expect("encode"))] };
    let opts = GenerateOptions::default();
    let features = engine.audio_features(&clip).expect("features");
    let motion = engine.motion(&prepared, &features, &opts).expect("motion");
    let whole: MotionCoefficients = decode(&motion, "motion").expect("decode");
    assert_eq!(whole.num_frames, 75);

    let analysed = MotionInput { clip: &clip, features: None, motion: None, frames: None };
    chunks_of(engine, &prepared, analysed, &whole);
    chunks_of(engine, &prepared, MotionInput { features: Some(&features), ..analysed }, &whole);
    chunks_of(engine, &prepared, MotionInput { motion: Some(&motion), ..analysed }, &whole);
    chunks_of(engine, &prepared, MotionInput { frames: Some((30, 61)), ..analysed }, &whole);
    chunks_of(engine, &prepared, MotionInput { frames: Some((61, 75)), motion: Some(&motion), ..analysed }, &whole);

    // Run to the end, a stream leaves the whole-clip blobs for the cache; a part leaves none.
    let mut stream = SadTalkerMotion::new(engine, &prepared, analysed, &opts).expect("stream");
    while stream.next(25).expect("chunk").is_some() {}
    let blobs = Box::new(stream).finish().expect("finish");
    assert!(blobs.features.as_deref() == Some(features.as_slice()) && blobs.motion == motion);
    let part = SadTalkerMotion::new(engine, &prepared, MotionInput { frames: Some((0, 10)), ..analysed }, &opts);
    let blobs = Box::new(part.expect("part")).finish().expect("finish");
    assert!(blobs.features.is_none() && blobs.motion.is_empty());
    for bad in [(5, 5), (70, 76)] {
        let input = MotionInput { frames: Some(bad), ..analysed };
        assert!(SadTalkerMotion::new(engine, &prepared, input, &opts).is_err(), "{bad:?}");
    }
}
