//! Incremental generation for the classic engine: lip-sync analysis and motion planning a chunk
//! at a time ([`ClassicMotion`]), and a renderer that keeps its buffers across chunks
//! ([`ClassicRenderer`]). The whole-clip `audio_features` / `motion` / `render` calls are these
//! same pieces run to the end.

use super::enhance::EnhanceBuffer;
use super::gestures::GestureSet;
use super::lipsync::{LipSyncStream, LipSyncTrack};
use super::motion::{FrameMotion, MotionPlanner, MotionTrack};
use super::prototypes::VisemeModel;
use super::render::{Renderer, SourceState};
use super::visemes::{self, VisemeSet};
use super::{build_canvas, decode, encode, part, source_state};
use crate::engine::{
    AvatarInput, ChunkRenderer, Enhancer, FrameSink, GenerateOptions, MotionInput, MotionStream, PreparedAvatar,
    PreprocessMode, StateKind, StreamBlobs,
};
use crate::error::{PipelineError, Result};
use crate::gfpgan::EnhancerSlot;
use std::sync::Arc;
use std::time::Instant;

/// Where the motion comes from. One per stream, so the variants' sizes need no boxing.
#[allow(clippy::large_enum_variant)]
enum Source<'a> {
    /// Analyse the audio as the chunks are asked for.
    Analyse { lips: LipSyncStream<'a>, planner: MotionPlanner },
    /// Cached lip-sync features: only plan the motion.
    Features { lips: LipSyncTrack, planner: MotionPlanner },
    /// Cached motion: hand it out in slices.
    Replay { track: MotionTrack, pos: usize },
}

/// The classic engine's motion stream.
pub struct ClassicMotion<'a> {
    source: Source<'a>,
    /// Frames this stream hands out (the part's, or the whole clip's).
    total: usize,
    /// The clip frame after the last one handed out.
    end: usize,
    /// Only a part of the clip: its blobs are not the clip's and are not left for the cache.
    part: bool,
    frames: Vec<FrameMotion>,
    /// Milliseconds spent analysing + planning.
    pub busy_ms: f64,
}

impl<'a> ClassicMotion<'a> {
    /// The stream of one clip (or part); `visemes`: the trained viseme model, if the engine has
    /// one.
    pub fn new(
        prepared: &PreparedAvatar,
        input: MotionInput<'a>,
        opts: &GenerateOptions,
        visemes: Option<&'a VisemeModel>,
    ) -> Result<Self> {
        let source = match (input.motion, input.features) {
            (Some(m), _) => {
                let track: MotionTrack = decode(m, "motion")?;
                Source::Replay { track, pos: 0 }
            }
            (None, features) => {
                if input.clip.sample_rate != crate::audio::SAMPLE_RATE {
                    return Err(PipelineError::Internal(format!(
                        "audio must be 16 kHz, got {} Hz",
                        input.clip.sample_rate
                    )));
                }
                let gestures: GestureSet = decode(part(prepared, StateKind::Gestures)?, "gestures")?;
                match features {
                    Some(f) => {
                        let lips: LipSyncTrack = decode(f, "audio features")?;
                        if lips.weights.len() != lips.open.len() {
                            return Err(PipelineError::Internal(
                                "classic audio features blob is inconsistent; recompute it".into(),
                            ));
                        }
                        let planner = MotionPlanner::new(lips.len(), gestures, opts);
                        Source::Features { lips, planner }
                    }
                    None => {
                        let lips = LipSyncStream::new(input.clip, visemes);
                        let planner = MotionPlanner::new(lips.total(), gestures, opts);
                        Source::Analyse { lips, planner }
                    }
                }
            }
        };
        let clip_frames = match &source {
            Source::Analyse { lips, .. } => lips.total(),
            Source::Features { lips, .. } => lips.len(),
            Source::Replay { track, .. } => track.frames.len(),
        };
        let range = input.frames.map(|(a, b)| a..b).unwrap_or(0..clip_frames);
        if range.start >= range.end || range.end > clip_frames {
            return Err(PipelineError::Internal(format!(
                "frames {}..{} are not a part of a {clip_frames}-frame clip",
                range.start, range.end
            )));
        }
        let total = range.len();
        let mut me = Self {
            source,
            total,
            end: range.end,
            part: input.frames.is_some(),
            frames: Vec::with_capacity(total),
            busy_ms: 0.0,
        };
        // A part starts where the whole clip's motion is at its first frame: plan (or skip) the
        // frames before it, so every part of one clip follows the same plan.
        match &mut me.source {
            Source::Replay { pos, .. } => *pos = range.start,
            _ if range.start > 0 => {
                me.next_frames(range.start);
                me.frames.clear();
            }
            _ => {}
        }
        Ok(me)
    }

    /// The clip frame the next chunk starts at.
    fn position(&self) -> usize {
        match &self.source {
            Source::Analyse { planner, .. } | Source::Features { planner, .. } => planner.emitted(),
            Source::Replay { pos, .. } => *pos,
        }
    }

    /// The motion of the next `frames` frames (empty at the end).
    pub fn next_frames(&mut self, frames: usize) -> Vec<FrameMotion> {
        let frames = frames.min(self.end.saturating_sub(self.position()));
        if frames == 0 {
            return Vec::new();
        }
        let t = Instant::now();
        let out = match &mut self.source {
            Source::Analyse { lips, planner } => {
                let upto = planner.emitted() + frames;
                lips.advance(upto + planner.lookahead());
                planner.emit(lips.track(), upto)
            }
            Source::Features { lips, planner } => {
                let upto = planner.emitted() + frames;
                planner.emit(lips, upto)
            }
            Source::Replay { track, pos } => {
                let end = *pos + frames;
                let out = track.frames[*pos..end].to_vec();
                *pos = end;
                out
            }
        };
        self.frames.extend_from_slice(&out);
        self.busy_ms += crate::ms_since(t);
        out
    }
}

impl MotionStream for ClassicMotion<'_> {
    fn total_frames(&self) -> usize {
        self.total
    }

    fn next_chunk(&mut self, frames: usize) -> Result<Option<Vec<u8>>> {
        let out = self.next_frames(frames.max(1));
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(encode(&MotionTrack { fps: super::lipsync::FPS, frames: out })?))
    }

    fn finish(self: Box<Self>) -> Result<StreamBlobs> {
        if self.part {
            return Ok(StreamBlobs::default());
        }
        let features = match self.source {
            Source::Analyse { lips, .. } => Some(encode(&lips.into_track())?),
            Source::Features { .. } | Source::Replay { .. } => None,
        };
        let motion = encode(&MotionTrack { fps: super::lipsync::FPS, frames: self.frames })?;
        Ok(StreamBlobs { features, motion })
    }
}

/// The classic engine's renderer: one mesh warp per frame, buffers kept across chunks.
pub struct ClassicRenderer {
    renderer: Renderer,
    /// `enhancer=gfpgan`: frames wait here for a batch of the face enhancer.
    enhance: Option<EnhanceBuffer>,
    setup_ms: f64,
    render_ms: f64,
    sink_ms: f64,
}

impl ClassicRenderer {
    /// `enhancer` is the engine's GFPGAN slot, used when `opts` asks for `enhancer=gfpgan`.
    pub fn new(
        avatar: &AvatarInput<'_>,
        prepared: &PreparedAvatar,
        opts: &GenerateOptions,
        enhancer: Option<&Arc<EnhancerSlot>>,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let state: SourceState = source_state(prepared)?;
        if state.mode != opts.preprocess || (state.mode != PreprocessMode::Full && state.size != opts.size) {
            return Err(PipelineError::InvalidOption {
                field: "preprocess",
                reason: format!(
                    "the avatar was prepared for {} at {}, the request asks for {} at {}",
                    state.mode.as_str(),
                    state.size,
                    opts.preprocess.as_str(),
                    opts.size
                ),
            });
        }
        let visemes: VisemeSet = decode(part(prepared, StateKind::Visemes)?, "visemes")?;
        let shapes_ok = visemes.shapes.len() == visemes::NUM_VISEMES
            && visemes.shapes.iter().chain([&visemes.blink, &visemes.brow, &visemes.rest]).all(|s| s.len() == 68);
        if !shapes_ok {
            return Err(PipelineError::Internal(
                "classic visemes blob is inconsistent; prepare the avatar again".into(),
            ));
        }
        let (canvas, _, _) = build_canvas(avatar.image, &avatar.analysis.crop, state.mode, state.size)?;
        let renderer = Renderer::new(state, &visemes, canvas)?;
        let enhance = match (opts.enhancer, enhancer) {
            (Enhancer::None, _) => None,
            (Enhancer::Gfpgan, Some(slot)) => Some(EnhanceBuffer::new(slot.clone(), opts.seed)),
            (Enhancer::Gfpgan, None) => return Err(super::no_enhancer()),
        };
        Ok(Self { renderer, enhance, setup_ms: crate::ms_since(t0), render_ms: 0.0, sink_ms: 0.0 })
    }

    /// Render `frames` in order into `sink`, calling `progress(i)` after each.
    pub fn render_frames(
        &mut self,
        frames: &[FrameMotion],
        sink: &mut dyn FrameSink,
        progress: &mut dyn FnMut(usize),
    ) -> Result<()> {
        let mut pushed = 0;
        for m in frames {
            let t = Instant::now();
            self.renderer.render(m)?;
            let t1 = Instant::now();
            self.render_ms += (t1 - t).as_secs_f64() * 1e3;
            match &mut self.enhance {
                None => {
                    sink.push(self.renderer.frame())?;
                    pushed += 1;
                    progress(pushed);
                }
                Some(buffer) => {
                    if buffer.push(self.renderer.frame(), &self.renderer.frame_landmarks())? {
                        pushed += buffer.flush(sink)?;
                        progress(pushed);
                    }
                }
            }
            self.sink_ms += crate::ms_since(t1);
        }
        if let Some(buffer) = &mut self.enhance {
            let t = Instant::now();
            pushed += buffer.flush(sink)?;
            self.sink_ms += crate::ms_since(t);
            progress(pushed);
        }
        Ok(())
    }
}

impl ChunkRenderer for ClassicRenderer {
    fn render_chunk(&mut self, motion: &[u8], sink: &mut dyn FrameSink) -> Result<usize> {
        let track: MotionTrack = decode(motion, "motion")?;
        self.render_frames(&track.frames, sink, &mut |_| {})?;
        Ok(track.frames.len())
    }

    fn stage_ms(&self) -> Vec<(String, f64)> {
        let mut stages = vec![("render_setup".into(), self.setup_ms), ("render".into(), self.render_ms)];
        match &self.enhance {
            // the enhancer runs inside the sink step: report it apart from the rest of it
            Some(e) => stages.extend([("enhance".into(), e.ms), ("sink".into(), self.sink_ms - e.ms)]),
            None => stages.push(("sink".into(), self.sink_ms)),
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::AudioClip;
    use crate::face::HeadPose;

    /// Syllable-like bursts of a buzzy tone, 6 s.
    fn speechy() -> AudioClip {
        let sr = 16000;
        let samples = (0..6 * sr)
            .map(|i| {
                let ts = i as f32 / sr as f32;
                let env = ((ts * 3.1).sin().max(0.0) * (ts * 0.7).cos().abs()).powi(2);
                0.3 * env * (2.0 * std::f32::consts::PI * (140.0 + 30.0 * ts) * ts).sin().powi(3)
            })
            .collect();
        AudioClip { samples, sample_rate: sr as u32 }
    }

    fn all_frames(
        prepared: &PreparedAvatar,
        clip: &AudioClip,
        frames: Option<(usize, usize)>,
        motion: Option<&[u8]>,
    ) -> Vec<FrameMotion> {
        let input = MotionInput { clip, features: None, motion, frames };
        let mut m = ClassicMotion::new(prepared, input, &GenerateOptions::default(), None).expect("motion stream");
        let mut out = Vec::new();
        loop {
            let chunk = m.next_frames(11);
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        assert_eq!(out.len(), m.total_frames());
        out
    }

    #[test]
    fn a_part_has_the_whole_clips_motion_for_its_frames() {
        let gestures = GestureSet::build(&HeadPose::default(), 1);
        let prepared = PreparedAvatar { parts: vec![(StateKind::Gestures, encode(&gestures).expect("encode"))] };
        let clip = speechy();
        let whole = all_frames(&prepared, &clip, None, None);
        assert_eq!(whole.len(), clip.num_frames());
        let cached = encode(&MotionTrack { fps: super::super::lipsync::FPS, frames: whole.clone() }).expect("encode");
        for (a, b) in [(0, 40), (37, 101), (101, whole.len())] {
            assert!(all_frames(&prepared, &clip, Some((a, b)), None) == whole[a..b], "analysed part {a}..{b}");
            assert!(all_frames(&prepared, &clip, Some((a, b)), Some(&cached)) == whole[a..b], "cached part {a}..{b}");
        }
        for bad in [(5, 5), (10, whole.len() + 1)] {
            let input = MotionInput { clip: &clip, features: None, motion: None, frames: Some(bad) };
            assert!(ClassicMotion::new(&prepared, input, &GenerateOptions::default(), None).is_err(), "{bad:?}");
        }
    }
}
