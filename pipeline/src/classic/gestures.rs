//! Five precomputed motion sequences per avatar (cached as `gestures:{image}`): a loopable idle
//! sway, a nod, a head shake, a tilt and a blink, as small pose / eyelid curves at 25 fps.

use super::lipsync::FPS;
use super::shape::SplitMix;
use crate::face::HeadPose;
use serde::{Deserialize, Serialize};
use std::f32::consts::PI;

/// Head pose offset: yaw, pitch, roll (degrees), x/y translation (face widths), scale (relative).
pub type Pose = [f32; 6];

/// Length of the loopable idle sway in frames (10 s).
pub const IDLE_FRAMES: usize = 250;

/// The avatar's gesture library.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GestureSet {
    pub fps: u32,
    /// Slow, loopable sway (`IDLE_FRAMES` long).
    pub idle: Vec<Pose>,
    /// Dip and return (0.8 s).
    pub nod: Vec<Pose>,
    /// Small side-to-side turn (1.2 s).
    pub shake: Vec<Pose>,
    /// Sideways tilt and return (1.2 s).
    pub tilt: Vec<Pose>,
    /// Eyelid closure 0..1 over one blink (0.28 s).
    pub blink: Vec<f32>,
}

impl GestureSet {
    /// Build the library for one face. `seed` gives each avatar its own idle rhythm; a face that
    /// is already turned away gets less yaw so hidden parts are never revealed.
    pub fn build(pose: &HeadPose, seed: u64) -> Self {
        let yaw_room = (1.0 - ((pose.yaw.abs() - 15.0).max(0.0) / 30.0)).clamp(0.4, 1.0);
        let mut rng = SplitMix::new(seed);
        // Idle: per channel a few loop-periodic sinusoids with random phases.
        let amps: Pose = [1.6 * yaw_room, 1.0, 0.8, 0.006, 0.004, 0.004];
        let mut idle = vec![[0.0f32; 6]; IDLE_FRAMES];
        for (c, amp) in amps.iter().enumerate() {
            for (k, share) in [(1usize, 0.6f32), (2, 0.3), (3, 0.15), (5, 0.08)] {
                let phase = rng.range(0.0, 2.0 * PI);
                for (f, pose) in idle.iter_mut().enumerate() {
                    let x = 2.0 * PI * k as f32 * f as f32 / IDLE_FRAMES as f32 + phase;
                    pose[c] += amp * share * x.sin();
                }
            }
        }
        let curve = |secs: f32, f: &dyn Fn(f32) -> Pose| -> Vec<Pose> {
            let n = (secs * FPS as f32).round() as usize;
            (0..n).map(|i| f(i as f32 / (n - 1).max(1) as f32)).collect()
        };
        let nod = curve(0.8, &|u| {
            let s = (PI * u).sin().max(0.0);
            [0.0, 3.0 * s.powf(1.5), 0.0, 0.0, 0.004 * s, 0.0]
        });
        let shake = curve(1.2, &|u| {
            let env = (PI * u).sin();
            [2.5 * yaw_room * (3.0 * PI * u).sin() * env, 0.0, 0.0, 0.0, 0.0, 0.0]
        });
        let tilt_dir = if rng.unit() < 0.5 { -1.0 } else { 1.0 };
        let tilt = curve(1.2, &|u| {
            let s = (PI * u).sin().powi(2);
            [0.6 * tilt_dir * s, -0.5 * s, 2.2 * tilt_dir * s, 0.0, 0.0, 0.0]
        });
        let blink = vec![0.0, 0.45, 0.9, 1.0, 0.75, 0.4, 0.15];
        Self { fps: FPS, idle, nod, shake, tilt, blink }
    }

    /// The idle sway at fractional frame `f` (wraps, linear interpolation).
    pub fn idle_at(&self, f: f32) -> Pose {
        let n = self.idle.len();
        if n == 0 {
            return [0.0; 6];
        }
        let f = f.rem_euclid(n as f32);
        let i = f.floor() as usize % n;
        let j = (i + 1) % n;
        let t = f - f.floor();
        let (a, b) = (self.idle[i], self.idle[j]);
        std::array::from_fn(|c| a[c] * (1.0 - t) + b[c] * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gestures_are_small_loopable_and_seeded() {
        let g = GestureSet::build(&HeadPose::default(), 42);
        assert_eq!(g.idle.len(), IDLE_FRAMES);
        let max_yaw = g.idle.iter().map(|p| p[0].abs()).fold(0.0, f32::max);
        assert!(max_yaw > 0.3 && max_yaw < 4.0, "idle yaw {max_yaw}");
        // Loop: the last frame flows into the first.
        let jump = (g.idle[IDLE_FRAMES - 1][0] - g.idle[0][0]).abs();
        assert!(jump < 0.2, "loop seam {jump}");
        assert!(g == GestureSet::build(&HeadPose::default(), 42));
        assert!(g.idle != GestureSet::build(&HeadPose::default(), 43).idle);
        assert!(g.nod.iter().any(|p| p[1] > 2.5));
        assert_eq!(g.blink.iter().copied().fold(0.0, f32::max), 1.0);
        let turned = GestureSet::build(&HeadPose { yaw: 40.0, ..HeadPose::default() }, 42);
        let turned_yaw = turned.idle.iter().map(|p| p[0].abs()).fold(0.0, f32::max);
        assert!(turned_yaw < max_yaw);
    }
}
