//! Parity of SadTalker's audio front end (`get_data`: pre-emphasis, STFT, mel basis, dB /
//! normalisation, per-frame mel windows, blink ratio, reference rows) with the golden fixture
//! `audio_mel.io.safetensors` (../shared/fixtures/sadtalker/README.md section 1).

use crate::sadtalker_common::{check, check_values, f32s, f64s, fixture_dir, get, io, readme_seed};
use std::time::Instant;
use tch::{Device, Tensor};
use vipavatar_pipeline::sadtalker::batch::{BatchOptions, CoeffBatch};
use vipavatar_pipeline::sadtalker::mel::{self, MelFeatures, N_BINS, N_MELS};

/// (key infix, frame count) of the two fixture cases.
const CASES: [(&str, usize); 2] = [("", 55), ("short.", 10)];

#[test]
fn sadtalker_mel_front_end_matches_reference() {
    let Some(fx) = io("audio_mel.io.safetensors") else { return };
    let basis: Vec<f64> = mel::mel_basis().into_iter().map(f64::from).collect();
    check_values(&fx, "mid.mel_basis", &basis, 1e-9);
    for (case, frames) in CASES {
        let wav = f32s(get(&fx, &format!("in.{case}wav")));
        let (num_frames, len) = mel::frame_count(wav.len());
        assert_eq!(num_frames, frames);
        assert_eq!(f64s(get(&fx, &format!("out.{case}num_frames"))), vec![frames as f64]);
        let cut = mel::crop_pad(&wav, len);
        let pre = mel::preemphasis(&cut);
        check_values(&fx, &format!("mid.{case}preemphasis"), &pre, 1e-12);

        let (mag, n_frames) = mel::stft_magnitude(&pre);
        assert_eq!(n_frames, 1 + len / mel::HOP);
        // The fixture is bins x frames; ours is frames x bins.
        let mag_t: Vec<f64> =
            (0..N_BINS).flat_map(|k| (0..n_frames).map(move |t| (k, t))).map(|(k, t)| mag[t * N_BINS + k]).collect();
        check_values(&fx, &format!("mid.{case}stft_magnitude"), &mag_t, 1e-9);

        let features = MelFeatures::from_samples(&wav).expect("mel features");
        assert_eq!(features.mel.n_frames, n_frames);
        assert!(features.mel.values.iter().all(|v| (-4.0..=4.0).contains(v)));
        check_values(&fx, &format!("out.{case}orig_mel"), &features.mel.values, 1e-6);

        let starts: Vec<f64> = (0..frames).map(|i| mel::window_start(i) as f64).collect();
        assert_eq!(starts, f64s(get(&fx, &format!("mid.{case}mel_window_start"))));
        let windows = features.windows_tensor(Device::Cpu);
        check(&fx, &format!("out.{case}indiv_mels"), &windows, 1e-6);
    }
}

#[test]
fn sadtalker_mel_batch_matches_reference_blinks_and_ref() {
    let Some(fx) = io("audio_mel.io.safetensors") else { return };
    // The seed of Python's `random` before `get_data`, as the fixture set records it.
    let seed = readme_seed(&fixture_dir().expect("fixture dir"), "blink sequence");
    let first = f32s(get(&fx, "in.first_coeff_3dmm"));
    for (case, frames) in CASES {
        let wav = f32s(get(&fx, &format!("in.{case}wav")));
        let features = MelFeatures::from_samples(&wav).expect("mel features");
        let opts = BatchOptions { seed, ..Default::default() };
        let batch = CoeffBatch::new(&features, &first, opts, Device::Cpu).expect("batch");
        assert_eq!(batch.num_frames, frames);
        check(&fx, &format!("out.{case}ratio_gt"), &batch.ratio, 0.0);
        check(&fx, &format!("out.{case}ref"), &batch.ref_coeff, 0.0);
        check(&fx, &format!("out.{case}indiv_mels"), &batch.indiv_mels, 1e-6);
    }
    // Still mode and a blink reference zero the ratio; the reference replaces the 64 expression values.
    let wav = f32s(get(&fx, "in.wav"));
    let features = MelFeatures::from_samples(&wav).unwrap();
    let still =
        CoeffBatch::new(&features, &first, BatchOptions { seed, still: true, ..Default::default() }, Device::Cpu)
            .unwrap();
    assert_eq!(f64::try_from(still.ratio.abs().max()).unwrap(), 0.0);
    let blink_rows: Vec<[f32; 64]> = (0..7).map(|i| [i as f32; 64]).collect();
    let opts = BatchOptions { seed, still: false, ref_eyeblink: Some(&blink_rows) };
    let with_ref = CoeffBatch::new(&features, &first, opts, Device::Cpu).unwrap();
    assert_eq!(f64::try_from(with_ref.ratio.abs().max()).unwrap(), 0.0);
    let refs = f32s(&with_ref.ref_coeff);
    for t in [0usize, 6, 7, 54] {
        assert_eq!(refs[t * 70], (t % 7) as f32, "frame {t}");
        assert_eq!(refs[t * 70 + 69], first[69]);
    }
}

#[test]
fn sadtalker_mel_rejects_bad_audio_and_is_fast() {
    let err = MelFeatures::from_samples(&[0.0; 639]).unwrap_err();
    assert_eq!(err.code(), "audio_too_short");
    let err = MelFeatures::from_samples(&[0.0, f32::NAN].repeat(400)).unwrap_err();
    assert_eq!(err.code(), "not_audio");
    // 60 s of audio: report the front-end time (no timing assertion).
    let wav: Vec<f32> = (0..16_000 * 60).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    let start = Instant::now();
    let features = MelFeatures::from_samples(&wav).unwrap();
    let windows = features.windows_tensor(Device::Cpu);
    eprintln!(
        "sadtalker mel: 60 s of audio -> {} frames in {:.1} ms",
        features.num_frames,
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(features.num_frames, 1500);
    assert_eq!(windows.size(), [1, 1500, 1, N_MELS as i64, 16]);
    let _: Tensor = windows;
}
