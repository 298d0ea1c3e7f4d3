//! Classic engine options and edge inputs on a real avatar, measured on rendered frames:
//! determinism per seed, pose_style variation, still mode, expression scale, silent and very
//! short audio, option validation and corrupt cached blobs.

use crate::classic_support as sup;
use vipavatar_pipeline::audio::{decode_audio, AudioClip, AudioLimits};
use vipavatar_pipeline::classic::{build_canvas, ClassicEngine};
use vipavatar_pipeline::engine::{Engine, Enhancer, GenerateOptions, PreprocessMode};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::PipelineError;

use crate::common::Frames;

fn render(av: &sup::Avatar, clip: &AudioClip, opts: &GenerateOptions) -> (Vec<u8>, Vec<RgbImage>) {
    let engine = sup::engine();
    let features = engine.audio_features(clip).expect("features");
    let motion = engine.motion(&av.prepared, &features, opts).expect("motion");
    let mut sink = Frames::default();
    let stats = engine.render(&av.input(), &av.prepared, &motion, opts, &mut sink, &mut |_, _| {}).expect("render");
    assert_eq!(stats.frames, clip.num_frames());
    (motion, sink.0)
}

fn speech() -> AudioClip {
    decode_audio(&sup::espeak("Seven silver swans swam silently seaward."), &AudioLimits::default()).expect("decode")
}

/// Mean absolute difference over the animated region, excluding the brow/eye and mouth/jaw boxes:
/// what changes there is head motion.
fn head_motion(a: &RgbImage, b: &RgbImage, lm: &[[f32; 2]], region: [i32; 4]) -> f64 {
    // Brows + eyes (blinks, brow raises) and mouth + jaw (speech) move in still mode too.
    let upper: Vec<usize> = (17..27).chain(36..48).collect();
    let lower: Vec<usize> = (4..13).chain(48..68).collect();
    let boxes: Vec<[f32; 4]> = [upper, lower]
        .into_iter()
        .map(|idx| {
            let pad = 10.0;
            let xs = idx.iter().map(|&i| lm[i][0]);
            let ys = idx.iter().map(|&i| lm[i][1]);
            [
                xs.clone().fold(f32::MAX, f32::min) - pad,
                ys.clone().fold(f32::MAX, f32::min) - pad,
                xs.fold(f32::MIN, f32::max) + pad,
                ys.fold(f32::MIN, f32::max) + pad,
            ]
        })
        .collect();
    let (mut sum, mut n) = (0.0, 0.0);
    for y in region[1]..region[1] + region[3] {
        for x in region[0]..region[0] + region[2] {
            let (xf, yf) = (x as f32, y as f32);
            if boxes.iter().any(|b| xf >= b[0] && xf <= b[2] && yf >= b[1] && yf <= b[3]) {
                continue;
            }
            let (p, q) = (a.pixel(x as u32, y as u32), b.pixel(x as u32, y as u32));
            sum += (0..3).map(|k| (p[k] as f64 - q[k] as f64).abs()).sum::<f64>();
            n += 3.0;
        }
    }
    sum / n
}

#[test]
fn same_seed_same_frames_other_seed_or_style_differs() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let clip = speech();
    let opts = GenerateOptions { seed: 11, ..Default::default() };
    let (m1, f1) = render(&av, &clip, &opts);
    let (m2, f2) = render(&av, &clip, &opts);
    assert_eq!(m1, m2, "motion is deterministic");
    assert!(f1 == f2, "frames are bit-identical for the same seed");
    let (m3, _) = render(&av, &clip, &GenerateOptions { seed: 12, ..opts.clone() });
    assert_ne!(m1, m3, "another seed moves differently (blinks, gesture picks)");
    let (_, f4) = render(&av, &clip, &GenerateOptions { pose_style: 30, ..opts.clone() });
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let region = ClassicEngine::animated_region(&av.prepared).expect("region");
    let mid = f1.len() / 2;
    assert!(head_motion(&f1[mid], &f4[mid], &lm, region) > 0.5, "pose_style 30 holds the head differently");
    // The encoded files are byte-identical too.
    let dir = sup::scratch("determinism");
    let (a, b) = (dir.join("a.mp4"), dir.join("b.mp4"));
    sup::generate(&av, &clip, &opts, &a, None);
    sup::generate(&av, &clip, &opts, &b, None);
    assert!(std::fs::read(&a).expect("a") == std::fs::read(&b).expect("b"), "same seed, same MP4 bytes");
}

#[test]
fn still_mode_nearly_stops_the_head() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let clip = decode_audio(
        &sup::espeak("This sentence is long enough to see the head move while it is spoken aloud."),
        &AudioLimits::default(),
    )
    .expect("decode");
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let region = ClassicEngine::animated_region(&av.prepared).expect("region");
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
    let moving = |opts: &GenerateOptions| {
        let (_, frames) = render(&av, &clip, opts);
        frames.iter().map(|f| head_motion(f, &canvas, &lm, region)).fold(0.0, f64::max)
    };
    let normal = moving(&GenerateOptions::default());
    let still = moving(&GenerateOptions { still_mode: true, ..Default::default() });
    eprintln!("head motion: normal {normal:.2}, still {still:.2}");
    assert!(normal > 1.0, "the head moves in normal mode: {normal:.2}");
    assert!(still < 0.25 * normal, "still mode: {still:.2} vs {normal:.2}");
}

#[test]
fn expression_scale_scales_the_mouth() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let clip = speech();
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let opening = |scale: f32| {
        let (_, frames) = render(&av, &clip, &GenerateOptions { expression_scale: scale, ..Default::default() });
        frames.iter().map(|f| sup::mouth_dark_pixels(f, &canvas, &lm)).sum::<f64>() / frames.len() as f64
    };
    let closed = sup::mouth_dark_pixels(&canvas, &canvas, &lm);
    let (zero, one, two) = (opening(0.0), opening(1.0), opening(2.0));
    eprintln!("mouth opening: closed {closed}, x0 {zero:.1}, x1 {one:.1}, x2 {two:.1}");
    assert!(zero <= closed + 3.0, "expression_scale 0 keeps the mouth closed: {zero} vs {closed}");
    // Dark pixels beyond the closed mouth's own (lip line, nostril shadows) grow with the scale.
    assert!(one > zero + 10.0 && two - closed > 1.3 * (one - closed), "{zero} < {one} < {two}, closed {closed}");
}

#[test]
fn silent_and_very_short_audio() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let (canvas, _, _) = build_canvas(&av.image, &av.analysis.crop, PreprocessMode::Crop, 256).expect("canvas");
    let lm = ClassicEngine::frame_landmarks(&av.prepared).expect("landmarks");
    let closed = sup::mouth_dark_pixels(&canvas, &canvas, &lm);
    // 6 s of digital silence: a valid video, mouth closed throughout, eyes still blink.
    let silent = AudioClip { samples: vec![0.0; 6 * 16000], sample_rate: 16000 };
    let dir = sup::scratch("silent");
    let out = dir.join("silent.mp4");
    sup::generate(&av, &silent, &GenerateOptions::default(), &out, None);
    let frames = sup::decode_frames(&out);
    assert_eq!(frames.len(), 150);
    for (t, f) in frames.iter().enumerate() {
        let m = sup::mouth_dark_pixels(f, &canvas, &lm);
        // Head sway and coding noise move a few dark pixels; an open mouth adds 40 or more.
        assert!(m <= closed + 12.0, "frame {t}: mouth opened in silence ({m} vs {closed})");
    }
    let eyes = |f: &RgbImage| {
        let (x0, x1) = (lm[36][0] as u32, lm[45][0] as u32);
        let (y0, y1) = (lm[37][1] as u32 - 2, lm[41][1] as u32 + 2);
        let mut s = 0.0;
        for y in y0..=y1 {
            for x in x0..=x1 {
                let p = f.pixel(x, y);
                s += p[0] as f64 + p[1] as f64 + p[2] as f64;
            }
        }
        s
    };
    let e: Vec<f64> = frames.iter().map(eyes).collect();
    let (lo, hi) = (e.iter().copied().fold(f64::MAX, f64::min), e.iter().copied().fold(f64::MIN, f64::max));
    assert!((hi - lo) / hi > 0.03, "the eyes blink in 6 s: eye-band brightness range {:.3}", (hi - lo) / hi);
    // 0.2 s is refused by default, and renders 5 frames when a caller allows it.
    let short = AudioClip { samples: (0..3200).map(|i| 0.3 * (i as f32 * 0.1).sin()).collect(), sample_rate: 16000 };
    let out = dir.join("short.mp4");
    sup::generate(&av, &short, &GenerateOptions::default(), &out, None);
    assert_eq!(sup::ffprobe(&out).video_frames, 5);
}

#[test]
fn invalid_options_and_corrupt_state_are_typed_errors() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let engine = sup::engine();
    let clip = AudioClip { samples: vec![0.0; 16000], sample_rate: 16000 };
    let features = engine.audio_features(&clip).expect("features");
    let bad = [
        GenerateOptions { size: 300, ..Default::default() },
        GenerateOptions { pose_style: 46, ..Default::default() },
        GenerateOptions { expression_scale: f32::NAN, ..Default::default() },
    ];
    for opts in &bad {
        assert!(
            matches!(engine.motion(&av.prepared, &features, opts), Err(PipelineError::InvalidOption { .. })),
            "{opts:?}"
        );
    }
    let gfpgan = GenerateOptions { enhancer: Enhancer::Gfpgan, ..Default::default() };
    assert!(matches!(engine.check_options(&gfpgan), Err(PipelineError::Unsupported { .. })));
    // The avatar was prepared for crop at 256: asking for full or 512 is refused, not mis-rendered.
    let motion = engine.motion(&av.prepared, &features, &GenerateOptions::default()).expect("motion");
    for opts in [
        GenerateOptions { preprocess: PreprocessMode::Full, ..Default::default() },
        GenerateOptions { size: 512, ..Default::default() },
    ] {
        let r = engine.render(&av.input(), &av.prepared, &motion, &opts, &mut Frames::default(), &mut |_, _| {});
        assert!(matches!(r, Err(PipelineError::InvalidOption { field: "preprocess", .. })), "{opts:?}");
    }
    // Corrupt or foreign blobs: errors, never panics.
    assert!(engine.motion(&av.prepared, b"not a feature blob", &GenerateOptions::default()).is_err());
    let r = engine.render(
        &av.input(),
        &av.prepared,
        b"garbage",
        &GenerateOptions::default(),
        &mut Frames::default(),
        &mut |_, _| {},
    );
    assert!(r.is_err());
    let mut broken = av.prepared.clone();
    for (_, bytes) in broken.parts.iter_mut() {
        bytes.truncate(bytes.len() / 2);
    }
    assert!(engine.motion(&broken, &features, &GenerateOptions::default()).is_err());
    let r = engine.render(
        &av.input(),
        &broken,
        &motion,
        &GenerateOptions::default(),
        &mut Frames::default(),
        &mut |_, _| {},
    );
    assert!(r.is_err());
    let wrong_rate = AudioClip { samples: vec![0.0; 44100], sample_rate: 44100 };
    assert!(engine.audio_features(&wrong_rate).is_err());
}
