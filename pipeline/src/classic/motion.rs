//! Per-frame motion (cached as `motion:`): head pose from the avatar's gestures driven by the
//! speech prosody, mouth viseme weights from the lip-sync track, blinks and brow raises.
//!
//! Determinism: `pose_style` (0..=45) picks the idle speed/amplitude, starting point and which
//! gestures the speaker prefers; `seed` drives blink timing and per-accent gesture choice.

use super::gestures::{GestureSet, Pose};
use super::lipsync::LipSyncTrack;
use super::shape::SplitMix;
use super::visemes::NUM_VISEMES;
use crate::engine::GenerateOptions;
use serde::{Deserialize, Serialize};

/// Head motion left in still mode.
const STILL_FACTOR: f32 = 0.05;
/// Pose limits: yaw, pitch, roll (deg), tx, ty (face widths), scale.
const POSE_LIMIT: Pose = [6.0, 5.0, 4.0, 0.03, 0.03, 0.02];

/// One output frame's motion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameMotion {
    pub pose: Pose,
    /// Viseme strengths (weights x opening x expression scale).
    pub mouth: [f32; NUM_VISEMES],
    /// Eyelid closure 0..1.
    pub blink: f32,
    /// Brow raise 0..1 (x expression scale).
    pub brow: f32,
}

/// The whole clip's motion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionTrack {
    pub fps: u32,
    pub frames: Vec<FrameMotion>,
}

/// Speaker style derived from `pose_style`.
struct Style {
    idle_amp: f32,
    idle_speed: f32,
    idle_start: f32,
    /// Preference weights for nod / shake / tilt on accents.
    prefs: [f32; 3],
    accent_gain: f32,
    bias: Pose,
}

impl Style {
    fn from_index(pose_style: u32) -> Self {
        let mut r = SplitMix::new(0x5EED_0000 + pose_style as u64);
        Self {
            idle_amp: r.range(0.6, 1.3),
            idle_speed: r.range(0.7, 1.35),
            idle_start: r.range(0.0, 250.0),
            prefs: [r.range(0.5, 1.0), r.range(0.05, 0.35), r.range(0.1, 0.5)],
            accent_gain: r.range(0.6, 1.3),
            bias: [r.range(-1.5, 1.5), r.range(-1.0, 1.0), r.range(-1.0, 1.0), 0.0, 0.0, 0.0],
        }
    }
}

/// Combine lip-sync, gestures and options into per-frame motion.
pub fn build(lips: &LipSyncTrack, gestures: &GestureSet, opts: &GenerateOptions) -> MotionTrack {
    let n = lips.len();
    let style = Style::from_index(opts.pose_style);
    let mut pick = SplitMix::new(opts.seed ^ (opts.pose_style as u64).wrapping_mul(0x9E37_79B9));
    let mut poses: Vec<Pose> = (0..n)
        .map(|t| {
            let p = gestures.idle_at(style.idle_start + t as f32 * style.idle_speed);
            std::array::from_fn(|c| p[c] * style.idle_amp + style.bias[c])
        })
        .collect();
    let mut brow = vec![0.0f32; n];
    // Accents: a nod, shake or tilt (by style preference), sometimes with raised brows.
    for &(frame, strength) in &lips.accents {
        let total: f32 = style.prefs.iter().sum();
        let mut x = pick.unit() * total;
        let mut which = 0;
        for (i, w) in style.prefs.iter().enumerate() {
            if x < *w {
                which = i;
                break;
            }
            x -= w;
        }
        let seq = match which {
            0 => &gestures.nod,
            1 => &gestures.shake,
            _ => &gestures.tilt,
        };
        // Start slightly before the peak so the head arrives with the stress.
        let start = (frame as usize).saturating_sub(seq.len() / 3);
        let gain = strength * style.accent_gain;
        add_sequence(&mut poses, seq, start, gain);
        if pick.unit() < 0.5 {
            add_bump(&mut brow, start, 15, strength);
        }
    }
    // Speech onsets after pauses: a small tilt as the speaker starts a phrase.
    for &frame in &lips.onsets {
        if pick.unit() < 0.5 {
            add_sequence(&mut poses, &gestures.tilt, frame as usize, 0.5);
        }
    }
    let head_scale = if opts.still_mode { STILL_FACTOR } else { 1.0 };
    for p in poses.iter_mut() {
        for c in 0..6 {
            p[c] = (p[c] * head_scale).clamp(-POSE_LIMIT[c], POSE_LIMIT[c]);
        }
    }
    let blink = blink_curve(n, &gestures.blink, opts.seed);
    let expr = opts.expression_scale;
    let frames = (0..n)
        .map(|t| {
            let mut mouth = [0.0f32; NUM_VISEMES];
            for (m, w) in mouth.iter_mut().zip(&lips.weights[t]) {
                *m = w * lips.open[t] * expr;
            }
            FrameMotion { pose: poses[t], mouth, blink: blink[t], brow: (brow[t] * expr).min(1.5) }
        })
        .collect();
    MotionTrack { fps: lips.fps, frames }
}

fn add_sequence(poses: &mut [Pose], seq: &[Pose], start: usize, gain: f32) {
    for (i, s) in seq.iter().enumerate() {
        if let Some(p) = poses.get_mut(start + i) {
            for c in 0..6 {
                p[c] += gain * s[c];
            }
        }
    }
}

fn add_bump(curve: &mut [f32], start: usize, len: usize, gain: f32) {
    for i in 0..len {
        if let Some(v) = curve.get_mut(start + i) {
            let u = i as f32 / (len - 1) as f32;
            *v = v.max(gain * (std::f32::consts::PI * u).sin());
        }
    }
}

/// Blinks at seeded intervals of 2-6 s (the first within 0.5-3 s).
pub fn blink_curve(n: usize, shape: &[f32], seed: u64) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let mut r = SplitMix::new(seed ^ 0xB1_1C_B1_1C);
    let fps = super::lipsync::FPS as f32;
    let mut at = r.range(0.5, 3.0) * fps;
    while (at as usize) < n {
        for (i, v) in shape.iter().enumerate() {
            if let Some(o) = out.get_mut(at as usize + i) {
                *o = o.max(*v);
            }
        }
        at += r.range(2.0, 6.0) * fps;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::HeadPose;

    fn lips(n: usize) -> LipSyncTrack {
        LipSyncTrack {
            fps: 25,
            open: (0..n).map(|t| if (t / 10) % 2 == 0 { 0.8 } else { 0.0 }).collect(),
            weights: vec![[1.0 / NUM_VISEMES as f32; NUM_VISEMES]; n],
            loudness_db: vec![-20.0; n],
            accents: vec![(10, 1.0), (50, 0.6)],
            onsets: vec![0, 40],
        }
    }

    #[test]
    fn deterministic_styles_still_mode_and_blinks() {
        let g = GestureSet::build(&HeadPose::default(), 1);
        let l = lips(500);
        let o = GenerateOptions::default();
        let a = build(&l, &g, &o);
        assert!(a == build(&l, &g, &o), "same inputs, same motion");
        let other = build(&l, &g, &GenerateOptions { pose_style: 7, ..o.clone() });
        assert!(a.frames[100].pose != other.frames[100].pose);
        let still = build(&l, &g, &GenerateOptions { still_mode: true, ..o.clone() });
        let amp = |m: &MotionTrack| m.frames.iter().map(|f| f.pose[0].abs() + f.pose[2].abs()).fold(0.0, f32::max);
        assert!(amp(&still) < 0.1 * amp(&a), "still {} vs {}", amp(&still), amp(&a));
        // Blinks: every 2-6 s after the first.
        let starts: Vec<usize> =
            (1..500).filter(|&t| a.frames[t].blink > 0.0 && a.frames[t - 1].blink == 0.0).collect();
        assert!(starts.len() >= 3, "{starts:?}");
        for w in starts.windows(2) {
            assert!((50..=151).contains(&(w[1] - w[0])), "blink gap {}", w[1] - w[0]);
        }
        let zero = build(&l, &g, &GenerateOptions { expression_scale: 0.0, ..o });
        assert!(zero.frames.iter().all(|f| f.mouth.iter().all(|&m| m == 0.0)));
    }
}
