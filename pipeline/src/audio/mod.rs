//! Audio input: decoding any common container/codec to 16 kHz mono f32.

pub mod decode;
pub mod native;

pub use decode::{audio_kind, decode_audio, decode_with_ffmpeg, probe_file, AudioLimits, AudioProbe};

use serde::{Deserialize, Serialize};

/// Sample rate every engine consumes.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decoded mono audio at [`SAMPLE_RATE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioClip {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl AudioClip {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
    /// Number of 25 fps video frames this clip yields.
    pub fn num_frames(&self) -> usize {
        (self.samples.len() as u64 * 25 / self.sample_rate as u64) as usize
    }
}
