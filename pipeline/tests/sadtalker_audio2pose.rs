//! Parity of audio2pose (`Audio2Pose.test` with the stored CVAE noise) and of
//! `Audio2Coeff.generate` (Savitzky-Golay smoothing, final 70-d coefficients) with the golden
//! fixture `audio2pose.io.safetensors`, long (55 frames: one full chunk + a remainder chunk) and
//! short (10 frames: padded remainder chunk, window 9) cases.

use crate::sadtalker_common::{check, check_values, device, f32s, f64s, get, io_and_weights};
use std::collections::HashMap;
use tch::{Device, Tensor};
use vipavatar_pipeline::sadtalker::audio2coeff::{apply_reference_pose, Audio2Coeff, MotionOptions};
use vipavatar_pipeline::sadtalker::audio2exp::Audio2Exp;
use vipavatar_pipeline::sadtalker::audio2pose::{noise_draws, Audio2Pose};
use vipavatar_pipeline::sadtalker::batch::CoeffBatch;
use vipavatar_pipeline::sadtalker::mel::MelFeatures;
use vipavatar_pipeline::sadtalker::savgol;

fn batch(fx: &HashMap<String, Tensor>, case: &str) -> CoeffBatch {
    let mels = get(fx, &format!("in.{case}indiv_mels")).shallow_clone();
    let num_frames = f64s(get(fx, &format!("in.{case}num_frames")))[0] as usize;
    assert_eq!(mels.size()[1] as usize, num_frames);
    CoeffBatch {
        num_frames,
        indiv_mels: mels,
        ref_coeff: get(fx, &format!("in.{case}ref")).shallow_clone(),
        ratio: get(fx, &format!("in.{case}ratio_gt")).shallow_clone(),
    }
}

fn models() -> Option<(HashMap<String, Tensor>, Audio2Coeff)> {
    let (fx, pose_weights) = io_and_weights("audio2pose.io.safetensors", "audio2pose.weights.safetensors")?;
    let exp_weights = pose_weights.with_file_name("audio2exp.weights.safetensors");
    let model = Audio2Coeff {
        exp: Audio2Exp::from_checkpoint(&exp_weights, device()).expect("load audio2exp"),
        pose: Audio2Pose::from_checkpoint(&pose_weights, device()).expect("load audio2pose"),
    };
    Some((fx, model))
}

#[test]
fn sadtalker_audio2pose_and_generate_match_reference() {
    let Some((fx, model)) = models() else { return };
    for (case, draws) in [("", 2usize), ("short.", 1)] {
        let b = batch(&fx, case);
        assert_eq!(noise_draws(b.num_frames), draws);
        let style = f64s(get(&fx, &format!("in.{case}class")))[0] as u32;
        let z = get(&fx, &format!("in.{case}z"));
        let out = model.generate_batch(&b, style, z, None).expect("generate");

        let emb = Tensor::stack(&out.pose.chunk_embeddings, 0).unsqueeze(1);
        check(&fx, &format!("mid.{case}audio_emb"), &emb, 1e-4);
        check(&fx, &format!("mid.{case}pose_motion_chunks"), &out.pose.chunk_motion.unsqueeze(1), 1e-5);
        check(&fx, &format!("out.{case}pose_motion_pred"), &out.pose.motion, 1e-5);
        check(&fx, &format!("out.{case}pose_pred"), &out.pose.pose, 1e-5);
        check(&fx, &format!("out.{case}pose_pred_savgol"), &out.pose_smoothed, 1e-5);
        check(&fx, &format!("out.{case}coeff_3dmm"), &out.coeffs, 1e-4);
        // The smoothing alone, on the reference's own unsmoothed pose.
        let smoothed = savgol::smooth_pose(get(&fx, &format!("out.{case}pose_pred"))).unwrap();
        check(&fx, &format!("out.{case}pose_pred_savgol"), &smoothed, 1e-6);
    }
    for (key, window) in [("mid.savgol_coeffs_w13_o2", 13), ("mid.savgol_coeffs_w9_o2", 9)] {
        check_values(&fx, key, &savgol::savgol_coeffs(window, 2), 1e-12);
    }
}

#[test]
fn sadtalker_audio2pose_rejects_bad_style_and_noise() {
    let Some((fx, model)) = models() else { return };
    let b = batch(&fx, "");
    let z = get(&fx, "in.z");
    let err = model.pose.predict(&b, 46, z).unwrap_err();
    assert_eq!(err.code(), "invalid_option");
    assert!(model.pose.predict(&b, 5, &z.narrow(0, 0, 1)).is_err(), "one z row for two chunks must fail");
}

#[test]
fn sadtalker_generate_is_seeded_and_applies_reference_pose() {
    let Some((fx, model)) = models() else { return };
    let wav: Vec<f32> =
        (0..16_000 * 2).map(|i| ((i as f32) * 0.031).sin() * 0.4 + ((i as f32) * 0.0021).cos() * 0.2).collect();
    let features = MelFeatures::from_samples(&wav).unwrap();
    let source = f32s(&get(&fx, "in.ref").get(0).get(0));
    let opts = MotionOptions { seed: 7, pose_style: 3, ..Default::default() };
    let a = model.generate(&features, &source, &opts).unwrap();
    let b = model.generate(&features, &source, &opts).unwrap();
    assert_eq!(a, b, "same seed, same motion");
    assert_eq!(a.num_frames, 50);
    assert_eq!(a.values.len(), 50 * 70);
    let c = model.generate(&features, &source, &MotionOptions { seed: 8, ..opts.clone() }).unwrap();
    assert_ne!(a.values, c.values, "another seed draws other noise");

    // Reference pose: pose columns shift by ref[t % n] - ref[0]; expression columns do not move.
    let reference: Vec<[f32; 6]> = (0..4).map(|i| [0.1 * i as f32, 0.0, -0.2 * i as f32, 1.0, 2.0, 3.0]).collect();
    let with_ref = model
        .generate(&features, &source, &MotionOptions { ref_pose: Some(reference.clone()), ..opts.clone() })
        .unwrap();
    for t in [0usize, 1, 3, 4, 49] {
        let (plain, shifted) = (a.frame(t).unwrap(), with_ref.frame(t).unwrap());
        assert_eq!(plain[..64], shifted[..64]);
        for k in 0..6 {
            let expect = plain[64 + k] + (reference[t % 4][k] - reference[0][k]);
            assert!((shifted[64 + k] - expect).abs() < 1e-6, "frame {t} col {k}");
        }
    }
    assert!(apply_reference_pose(&a.to_tensor(Device::Cpu), &[]).is_err());
}
