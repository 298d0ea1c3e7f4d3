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

/// Combine lip-sync, gestures and options into per-frame motion for the whole track.
pub fn build(lips: &LipSyncTrack, gestures: &GestureSet, opts: &GenerateOptions) -> MotionTrack {
    let mut planner = MotionPlanner::new(lips.len(), gestures.clone(), opts);
    MotionTrack { fps: lips.fps, frames: planner.emit(lips, lips.len()) }
}

/// Motion, a few frames at a time, as the lip-sync track grows. Events (accents, onsets) are
/// taken in frame order as they appear and each draws from one seeded stream, so the motion of
/// a frame is the same however the track is chunked. A frame is final once the lip-sync track
/// reaches [`MotionPlanner::lookahead`] frames past it (a gesture starts a little before its
/// accent).
pub struct MotionPlanner {
    gestures: GestureSet,
    style: Style,
    pick: SplitMix,
    head_scale: f32,
    expr: f32,
    poses: Vec<Pose>,
    brow: Vec<f32>,
    blink: Vec<f32>,
    accents_seen: usize,
    onsets_seen: usize,
    emitted: usize,
}

impl MotionPlanner {
    /// A planner for a clip of `n` frames.
    pub fn new(n: usize, gestures: GestureSet, opts: &GenerateOptions) -> Self {
        let style = Style::from_index(opts.pose_style);
        let poses = (0..n)
            .map(|t| {
                let p = gestures.idle_at(style.idle_start + t as f32 * style.idle_speed);
                std::array::from_fn(|c| p[c] * style.idle_amp + style.bias[c])
            })
            .collect();
        let blink = blink_curve(n, &gestures.blink, opts.seed);
        Self {
            gestures,
            pick: SplitMix::new(opts.seed ^ (opts.pose_style as u64).wrapping_mul(0x9E37_79B9)),
            style,
            head_scale: if opts.still_mode { STILL_FACTOR } else { 1.0 },
            expr: opts.expression_scale,
            poses,
            brow: vec![0.0; n],
            blink,
            accents_seen: 0,
            onsets_seen: 0,
            emitted: 0,
        }
    }

    /// Lip-sync frames needed past the last frame to emit.
    pub fn lookahead(&self) -> usize {
        let g = &self.gestures;
        g.nod.len().max(g.shake.len()).max(g.tilt.len()) / 3 + 1
    }

    /// Frames emitted so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    /// Motion of frames `emitted()..upto`; `lips` must reach `upto + lookahead()` (or its end).
    pub fn emit(&mut self, lips: &LipSyncTrack, upto: usize) -> Vec<FrameMotion> {
        let upto = upto.min(self.poses.len()).min(lips.len());
        self.take_events(lips);
        let frames = (self.emitted..upto)
            .map(|t| {
                let mut pose = self.poses[t];
                for c in 0..6 {
                    pose[c] = (pose[c] * self.head_scale).clamp(-POSE_LIMIT[c], POSE_LIMIT[c]);
                }
                let mut mouth = [0.0f32; NUM_VISEMES];
                for (m, w) in mouth.iter_mut().zip(&lips.weights[t]) {
                    *m = w * lips.open[t] * self.expr;
                }
                FrameMotion { pose, mouth, blink: self.blink[t], brow: (self.brow[t] * self.expr).min(1.5) }
            })
            .collect();
        self.emitted = self.emitted.max(upto);
        frames
    }

    /// Apply the accents and onsets that appeared since the last call, in frame order (an
    /// accent before an onset of the same frame).
    fn take_events(&mut self, lips: &LipSyncTrack) {
        loop {
            let accent = lips.accents.get(self.accents_seen).copied();
            let onset = lips.onsets.get(self.onsets_seen).copied();
            match (accent, onset) {
                (Some((fa, strength)), o) if o.is_none_or(|fo| fa <= fo) => {
                    self.accents_seen += 1;
                    self.accent(fa as usize, strength);
                }
                (_, Some(fo)) => {
                    self.onsets_seen += 1;
                    // Speech onsets after pauses: a small tilt as the speaker starts a phrase.
                    if self.pick.unit() < 0.5 {
                        add_sequence(&mut self.poses, &self.gestures.tilt, fo as usize, 0.5);
                    }
                }
                _ => break,
            }
        }
    }

    /// A nod, shake or tilt (by style preference), sometimes with raised brows.
    fn accent(&mut self, frame: usize, strength: f32) {
        let prefs = self.style.prefs;
        let total: f32 = prefs.iter().sum();
        let mut x = self.pick.unit() * total;
        let mut which = 0;
        for (i, w) in prefs.iter().enumerate() {
            if x < *w {
                which = i;
                break;
            }
            x -= w;
        }
        let g = &self.gestures;
        let seq = match which {
            0 => &g.nod,
            1 => &g.shake,
            _ => &g.tilt,
        };
        // Start slightly before the peak so the head arrives with the stress.
        let start = frame.saturating_sub(seq.len() / 3);
        add_sequence(&mut self.poses, seq, start, strength * self.style.accent_gain);
        if self.pick.unit() < 0.5 {
            add_bump(&mut self.brow, start, 15, strength);
        }
    }
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
        let zero = build(&l, &g, &GenerateOptions { expression_scale: 0.0, ..o.clone() });
        assert!(zero.frames.iter().all(|f| f.mouth.iter().all(|&m| m == 0.0)));
        // Chunked planning, fed a growing track, gives the same frames.
        let mut planner = MotionPlanner::new(l.len(), g.clone(), &o);
        let mut chunked = Vec::new();
        let mut upto = 0;
        while upto < l.len() {
            upto = (upto + 7).min(l.len());
            let seen = (upto + planner.lookahead()).min(l.len());
            let partial = LipSyncTrack {
                open: l.open[..seen].to_vec(),
                weights: l.weights[..seen].to_vec(),
                loudness_db: l.loudness_db[..seen].to_vec(),
                accents: l.accents.iter().copied().filter(|a| (a.0 as usize) < seen).collect(),
                onsets: l.onsets.iter().copied().filter(|&f| (f as usize) < seen).collect(),
                ..l.clone()
            };
            chunked.extend(planner.emit(&partial, upto));
        }
        assert!(chunked == a.frames, "chunked motion differs");
    }
}
