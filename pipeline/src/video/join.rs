//! Joining the parts of a split session: the parts' bare H.264 streams, fed in order, are muxed
//! with the whole clip's soundtrack by one ffmpeg (video copied, audio encoded once) into the
//! faststart MP4 and, live, the fragmented stream. Each part starts with its own keyframe and
//! parameter sets, and bare H.264 carries no timestamps, so the joined video's frames follow
//! each other at 25 fps across part borders with no gap and no second video encode.

use super::encoder::{
    read_fragments, soundtrack_bytes, tee_output, Ffmpeg, FragmentSink, Started, StdoutReader, AAC, AUDIO_INPUT, FPS,
};
use crate::audio::AudioClip;
use crate::error::{PipelineError, Result};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::SyncSender;

/// The muxer of one split session.
pub struct PartMuxer {
    ffmpeg: Option<Ffmpeg>,
}

/// A handle that feeds the muxer's H.264 input from any thread.
#[derive(Clone)]
pub struct MuxFeed(SyncSender<Vec<u8>>);

impl MuxFeed {
    /// Queue the next bytes of the joined H.264 stream; `false` when the muxer stopped.
    pub fn push(&self, bytes: Vec<u8>) -> bool {
        self.0.send(bytes).is_ok()
    }
}

impl PartMuxer {
    /// Start the muxer writing `output` (and, with `stream`, the live fragments) with the whole
    /// `audio` as the soundtrack.
    pub fn new(output: &Path, audio: &AudioClip, stream: Option<FragmentSink>) -> Result<Self> {
        let mut cmd = Command::new("ffmpeg");
        // The input is probed from its first bytes only, so the first fragment is not held back
        // waiting for seconds of video to arrive.
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(["-probesize", "32", "-analyzeduration", "0", "-fflags", "+genpts", "-thread_queue_size", "256"])
            .args(["-f", "h264", "-framerate", &FPS.to_string(), "-i", "pipe:0"])
            .args(["-f", "f32le", "-ar", &crate::audio::SAMPLE_RATE.to_string(), "-ac", "1", "-i"])
            .arg(AUDIO_INPUT)
            .args(["-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"])
            .args(AAC);
        let reader: Option<StdoutReader> = match stream {
            Some(sink) => {
                cmd.args(["-flags", "+global_header", "-f", "tee"]).arg(tee_output(output));
                Some(Box::new(move |out| read_fragments(out, sink)))
            }
            None => {
                cmd.args(["-movflags", "+faststart", "-f", "mp4"]).arg(output);
                None
            }
        };
        let started = Started::spawn(cmd, reader.is_some(), true)?;
        let ffmpeg = Ffmpeg::attach(started, reader, Some(soundtrack_bytes(audio)))?;
        Ok(Self { ffmpeg: Some(ffmpeg) })
    }

    /// A feeder for the joined H.264 stream.
    pub fn feed(&self) -> Result<MuxFeed> {
        self.ffmpeg
            .as_ref()
            .and_then(|f| f.sender())
            .map(MuxFeed)
            .ok_or_else(|| PipelineError::Encode("the muxer is not running".into()))
    }

    /// Close the input (every feeder must be dropped first) and wait for the MP4.
    pub fn finish(mut self) -> Result<()> {
        let ffmpeg = self.ffmpeg.take().ok_or_else(|| PipelineError::Encode("the muxer is not running".into()))?;
        ffmpeg.finish()
    }
}

impl Drop for PartMuxer {
    fn drop(&mut self) {
        drop(self.ffmpeg.take());
    }
}

/// How far (in frames) a part border may move from its even spacing to land on a quiet frame.
const BORDER_SEARCH: usize = 50;

/// The parts a clip splits into: `None` when it is not longer than `part_seconds` (or that is
/// 0), else about equal frame ranges whose borders sit on the quietest frame within 2 s of the
/// even spacing (a pause, or at least the softest moment), so a border falls between words.
pub fn split_parts(clip: &AudioClip, part_seconds: f64) -> Option<Vec<std::ops::Range<usize>>> {
    let total = clip.num_frames();
    if part_seconds <= 0.0 || clip.duration_s() <= part_seconds || total < 4 {
        return None;
    }
    let parts = (clip.duration_s() / part_seconds).ceil() as usize;
    let spf = clip.sample_rate as usize / FPS as usize;
    // Loudness around each frame start (three frames: 120 ms).
    let energy = |f: usize| -> f64 {
        let a = (f.saturating_sub(1) * spf).min(clip.samples.len());
        let b = ((f + 2) * spf).min(clip.samples.len());
        clip.samples[a..b].iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / (b - a).max(1) as f64
    };
    let even = total / parts;
    let reach = BORDER_SEARCH.min(even / 4);
    let mut borders = vec![0];
    for i in 1..parts {
        let target = i * total / parts;
        let lo = (target - reach).max(borders[i - 1] + 1);
        let hi = (target + reach).min(total - 1);
        let best = (lo..=hi).min_by(|&x, &y| energy(x).total_cmp(&energy(y))).unwrap_or(target);
        borders.push(best);
    }
    borders.push(total);
    Some(borders.windows(2).map(|w| w[0]..w[1]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip_with_pause(seconds: f32, pause: (f32, f32)) -> AudioClip {
        let sr = 16000;
        let samples = (0..(seconds * sr as f32) as usize)
            .map(|i| {
                let t = i as f32 / sr as f32;
                if t >= pause.0 && t < pause.1 {
                    0.0
                } else {
                    0.2 * (2.0 * std::f32::consts::PI * 180.0 * t).sin() * (1.0 + (t * 5.0).sin()) / 2.0
                }
            })
            .collect();
        AudioClip { samples, sample_rate: sr }
    }

    #[test]
    fn borders_land_in_pauses_and_cover_every_frame() {
        let clip = clip_with_pause(40.0, (19.2, 19.6));
        assert!(split_parts(&clip, 0.0).is_none());
        assert!(split_parts(&clip, 40.0).is_none());
        let parts = split_parts(&clip, 30.0).expect("split");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts[1].end, clip.num_frames());
        assert_eq!(parts[0].end, parts[1].start);
        let border = parts[0].end;
        assert!((481..489).contains(&border), "border at frame {border}, the pause is frames 480..490");
        // No pause: three parts of about equal length.
        let parts = split_parts(&clip_with_pause(45.0, (0.0, 0.0)), 15.0).expect("split");
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert!((p.len() as i64 - 375).abs() <= 50, "{p:?}");
        }
    }
}
