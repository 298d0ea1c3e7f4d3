//! The avatar's idle loop: the face at rest between answers. One period of the gesture set's
//! loopable sway (10 s) with two blinks, a closed mouth and no accents, so the clip's last frame
//! is its first again and a player can loop it without a visible seam.

use super::gestures::{GestureSet, IDLE_FRAMES};
use super::motion::{FrameMotion, MotionTrack};
use super::visemes::NUM_VISEMES;

/// Where the two blinks of the loop start (frames; 2.4 s and 6.8 s into the 10 s loop).
const BLINKS_AT: [usize; 2] = [60, 170];

/// `IDLE_FRAMES + 1` frames: the last repeats the first (the sway's period is `IDLE_FRAMES`).
pub fn idle_track(gestures: &GestureSet) -> MotionTrack {
    let n = IDLE_FRAMES + 1;
    let mut blink = vec![0.0f32; n];
    for start in BLINKS_AT {
        for (i, v) in gestures.blink.iter().enumerate() {
            if let Some(b) = blink.get_mut(start + i) {
                *b = b.max(*v);
            }
        }
    }
    let frames = (0..n)
        .map(|t| FrameMotion {
            // A gentler sway than while speaking: breathing-sized nods and turns.
            pose: gestures.idle_at((t % IDLE_FRAMES) as f32).map(|v| 0.6 * v),
            mouth: [0.0; NUM_VISEMES],
            blink: blink[t],
            brow: 0.0,
        })
        .collect();
    MotionTrack { fps: super::lipsync::FPS, frames }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::HeadPose;

    #[test]
    fn the_loop_closes_and_moves_in_between() {
        let g = GestureSet::build(&HeadPose::default(), 7);
        let t = idle_track(&g);
        assert_eq!(t.frames.len(), IDLE_FRAMES + 1);
        assert!(t.frames[0] == t.frames[IDLE_FRAMES], "last frame differs from the first");
        let sway = (0..IDLE_FRAMES).map(|i| (t.frames[i].pose[0] - t.frames[0].pose[0]).abs()).fold(0.0, f32::max);
        assert!(sway > 0.2, "the head does not move: {sway} deg");
        assert!(t.frames.iter().all(|f| f.mouth.iter().all(|&m| m == 0.0)), "the mouth must stay closed");
        let blinks = (1..t.frames.len()).filter(|&i| t.frames[i].blink > 0.0 && t.frames[i - 1].blink == 0.0).count();
        assert_eq!(blinks, 2);
    }
}
