//! The trained viseme model (HeadAudio's Gaussian prototypes): our MFCC front end and distances
//! against the package's own processor on an excerpt of a shared speech clip (fixture
//! `fixtures/visemes`, made by its `make_fixture.mjs`), and a broken model file as a typed error.

use crate::common;

use std::path::PathBuf;
use vipavatar_pipeline::audio::{decode_audio, AudioLimits};
use vipavatar_pipeline::classic::prototypes::{Front, VisemeModel, FILE, HOP, SILENCE, WINDOW};

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/visemes/config.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn features_and_distances_match_the_packages_processor() {
    let Some(ck) = common::checkpoints() else { return };
    let Some(shared) = common::shared_testdata() else { return };
    let cfg = fixture();
    let model_bytes = std::fs::read(ck.join(FILE)).unwrap();
    assert_eq!(cfg["model_sha256"].as_str(), Some(sha256(&model_bytes).as_str()), "fixture made from another model");
    let wav = std::fs::read(shared.join("audio").join(cfg["audio"].as_str().unwrap())).unwrap();
    assert_eq!(cfg["audio_sha256"].as_str(), Some(sha256(&wav).as_str()), "fixture made from another clip");
    assert_eq!((cfg["hop"].as_u64(), cfg["window"].as_u64()), (Some(HOP as u64), Some(WINDOW as u64)));
    let clip = decode_audio(&wav, &AudioLimits::default()).unwrap();
    let sr = clip.sample_rate as f64;
    let first = (cfg["excerpt"]["start_s"].as_f64().unwrap() * sr).round() as usize;
    let len = (cfg["excerpt"]["seconds"].as_f64().unwrap() * sr).round() as usize;
    let x = &clip.samples[first..first + len];
    let model = VisemeModel::load(&ck.join(FILE)).unwrap();
    let front = Front::new();
    let tol = &cfg["tolerance"];
    let [tol_v, tol_le, tol_d] = ["feature", "log_energy", "distance_rel"].map(|k| tol[k].as_f64().unwrap() as f32);
    let frame_of = |end: u64| (end as usize - WINDOW) / HOP;

    let (mut worst_v, mut worst_le) = (0.0f32, 0.0f32);
    let frames = cfg["frames"].as_array().unwrap();
    assert!(frames.len() >= 20);
    for f in frames {
        let k = frame_of(f["end"].as_u64().unwrap());
        let (v, le) = front.frame(x, k).expect("frame inside the excerpt");
        let want = floats(&f["vector"]);
        worst_v = worst_v.max(v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
        worst_le = worst_le.max((le - f["log_energy"].as_f64().unwrap() as f32).abs());
    }
    eprintln!("features: max error {worst_v:.2e} (tolerance {tol_v}), log energy {worst_le:.2e}");
    assert!(worst_v <= tol_v && worst_le <= tol_le, "features differ: {worst_v} / {worst_le}");

    let mut worst_d = 0.0f32;
    let mut agree = 0;
    let visemes = cfg["visemes"].as_array().unwrap();
    for e in visemes {
        let k = frame_of(e["end"].as_u64().unwrap());
        let (v, _) = front.frame(x, k).unwrap();
        let sil = cfg["silence_sensitivity"].as_f64().unwrap() as f32;
        let d: Vec<f32> = model
            .distances(&v)
            .iter()
            .zip(model.prototypes())
            .map(|(d, p)| if p.viseme == SILENCE { d / sil } else { *d })
            .collect();
        let want = floats(&e["distances"]);
        assert_eq!(d.len(), want.len());
        for (a, b) in d.iter().zip(&want) {
            worst_d = worst_d.max((a - b).abs() / b.abs().max(1.0));
        }
        // The package reports a vote over its last 6 frames; how often this frame's own nearest
        // prototype agrees with the vote is printed for information.
        let nearest = d.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        agree += (model.prototypes()[nearest].viseme as u64 == e["viseme"].as_u64().unwrap()) as usize;
    }
    eprintln!(
        "distances: max relative error {worst_d:.2e} (tolerance {tol_d}); nearest = voted viseme on {agree} of {}",
        visemes.len()
    );
    assert!(worst_d <= tol_d, "distances differ by {worst_d}");
    assert_eq!(model.prototypes().len(), 39);
}

#[test]
fn a_broken_viseme_model_is_a_checkpoint_error() {
    let dir = std::env::temp_dir().join(format!("visemes-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bin");
    std::fs::write(&path, vec![0u8; 1000]).unwrap();
    let e = VisemeModel::load(&path).unwrap_err();
    assert_eq!(e.code(), "checkpoint_error", "{e}");
    assert_eq!(VisemeModel::load(&dir.join("absent.bin")).unwrap_err().code(), "checkpoint_error");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trained_shapes_stream_the_same_in_any_chunking_and_change_the_mix() {
    use vipavatar_pipeline::classic::lipsync::{analyse, LipSyncStream};
    let Some(ck) = common::checkpoints() else { return };
    let Some(shared) = common::shared_testdata() else { return };
    let model = VisemeModel::load(&ck.join(FILE)).unwrap();
    let wav = std::fs::read(shared.join("audio/RD_Radio31_000.wav")).unwrap();
    let clip = decode_audio(&wav, &AudioLimits::default()).unwrap();
    // Fastest of 3 runs each, alternating, for the printed cost of the prototypes.
    let ms = |f: &dyn Fn()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut with_ms, mut without_ms) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        with_ms = with_ms.min(ms(&|| drop(analyse(&clip, Some(&model)))));
        without_ms = without_ms.min(ms(&|| drop(analyse(&clip, None))));
    }
    let whole = analyse(&clip, Some(&model));
    for step in [1, 7, 33] {
        let mut s = LipSyncStream::new(&clip, Some(&model));
        let mut until = 0;
        while until < s.total() {
            until += step;
            s.advance(until);
        }
        assert_eq!(s.into_track(), whole, "steps of {step}");
    }
    // The prototypes move the shape weights but not the opening, which follows the loudness.
    let templates = analyse(&clip, None);
    eprintln!(
        "{:.1} s clip analysed in {with_ms:.1} ms with the prototypes, {without_ms:.1} ms without",
        clip.duration_s()
    );
    assert_eq!(templates.open, whole.open);
    let moved = templates.weights.iter().zip(&whole.weights).filter(|(a, b)| a != b).count();
    assert!(moved > whole.len() / 2, "only {moved} of {} frames changed shape", whole.len());
    for w in &whole.weights {
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-3);
    }
}
