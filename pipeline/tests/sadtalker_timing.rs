//! CPU time of the audio-to-coefficient stage for 8 s of audio (200 frames) with the full-size
//! random fixture weights. Prints the numbers (run with `--nocapture`); asserts only shapes.

use crate::sadtalker_common::fixture_dir;
use std::time::Instant;
use tch::Device;
use vipavatar_pipeline::sadtalker::audio2coeff::{Audio2Coeff, MotionOptions};
use vipavatar_pipeline::sadtalker::audio2exp::Audio2Exp;
use vipavatar_pipeline::sadtalker::audio2pose::{draw_noise, Audio2Pose};
use vipavatar_pipeline::sadtalker::batch::{BatchOptions, CoeffBatch};
use vipavatar_pipeline::sadtalker::mel::MelFeatures;

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[test]
fn sadtalker_timing_audio2coeff_8s_cpu() {
    let Some(dir) = fixture_dir() else { return };
    let device = Device::Cpu;
    let model = Audio2Coeff {
        exp: Audio2Exp::from_checkpoint(&dir.join("audio2exp.weights.safetensors"), device).unwrap(),
        pose: Audio2Pose::from_checkpoint(&dir.join("audio2pose.weights.safetensors"), device).unwrap(),
    };
    let wav: Vec<f32> = (0..16_000 * 8)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * 220.0 * t).sin() * (1.0 + (3.0 * t).sin()) * 0.5
        })
        .collect();
    let source = vec![0.1f32; 70];
    let mut runs = Vec::new();
    for _ in 0..4 {
        let t0 = Instant::now();
        let features = MelFeatures::from_samples(&wav).unwrap();
        let mel_ms = ms(t0);
        let batch =
            CoeffBatch::new(&features, &source, BatchOptions { seed: 1, ..Default::default() }, device).unwrap();
        let t1 = Instant::now();
        let exp = model.exp.predict(&batch);
        let exp_ms = ms(t1);
        let t2 = Instant::now();
        let pose = model.pose.predict(&batch, 0, &draw_noise(batch.num_frames, 1)).unwrap();
        let pose_ms = ms(t2);
        let t3 = Instant::now();
        let all = model.generate(&features, &source, &MotionOptions { seed: 1, ..Default::default() }).unwrap();
        let total_ms = ms(t3) + mel_ms;
        assert_eq!(exp.size(), [1, 200, 64]);
        assert_eq!(pose.pose.size(), [1, 200, 6]);
        assert_eq!(all.num_frames, 200);
        runs.push((mel_ms, exp_ms, pose_ms, total_ms));
    }
    let threads = tch::get_num_threads();
    for (i, (mel, exp, pose, total)) in runs.iter().enumerate() {
        let tag = if i == 0 { "warm-up" } else { "run" };
        eprintln!(
            "sadtalker timing ({tag}, CPU, {threads} torch threads, 200 frames): mel {mel:.1} ms, \
             audio2exp {exp:.1} ms, audio2pose {pose:.1} ms, mel+generate {total:.1} ms"
        );
    }
    let best = |f: fn(&(f64, f64, f64, f64)) -> f64| runs[1..].iter().map(f).fold(f64::INFINITY, f64::min);
    eprintln!(
        "sadtalker timing best of {} (8 s audio, CPU): audio2exp {:.1} ms + audio2pose {:.1} ms; whole stage {:.1} ms",
        runs.len() - 1,
        best(|r| r.1),
        best(|r| r.2),
        best(|r| r.3)
    );
}
