//! Decoding uploaded audio bytes to 16 kHz mono f32: in process first ([`super::native`], symphonia +
//! rubato), with the ffmpeg CLI as the fallback for what symphonia lacks (Opus, WebM, AMR, ...).
//!
//! On the ffmpeg path the bytes go to a private temporary file (MP4/M4A keeps its index at the end, which a pipe
//! cannot seek to), `ffprobe` checks that there is an audio stream, and `ffmpeg -f f32le -ac 1
//! -ar 16000` streams the samples back through a pipe. The length limit is enforced on the
//! samples actually decoded, never on what a header claims.

use super::native::{self, Native};
use super::{AudioClip, SAMPLE_RATE};
use crate::error::{PipelineError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Accepted duration range for generate requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioLimits {
    /// Longest accepted audio in seconds (default 300).
    pub max_seconds: f64,
    /// Shortest accepted audio in seconds (default 0.5).
    pub min_seconds: f64,
}

impl Default for AudioLimits {
    fn default() -> Self {
        Self { max_seconds: 300.0, min_seconds: 0.5 }
    }
}

/// What `ffprobe` says about the first audio stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioProbe {
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u32,
    /// Duration from the container header; may be wrong or absent.
    pub header_seconds: Option<f64>,
}

/// Decode `bytes` to a 16 kHz mono clip, enforcing `limits`.
pub fn decode_audio(bytes: &[u8], limits: &AudioLimits) -> Result<AudioClip> {
    if bytes.is_empty() {
        return Err(PipelineError::NotAudio("the upload is empty".into()));
    }
    // Only containers recognised at byte 0 go to the native decoder: its probe would otherwise
    // scan arbitrary bytes for something that looks like an MP3 frame.
    let native = match audio_kind(bytes) {
        Some("wav" | "mp3" | "flac" | "ogg" | "mp4" | "aac" | "aiff" | "caf") => native::decode(bytes, limits)?,
        Some(other) => Native::Unsupported(format!("{other} is decoded by ffmpeg")),
        None => Native::Unsupported("unknown container".into()),
    };
    let samples = match native {
        Native::Decoded(samples) => samples,
        Native::Unsupported(why) => {
            tracing::debug!(reason = %why, "decoding with ffmpeg");
            decode_with_ffmpeg(bytes, limits)?
        }
    };
    let clip = AudioClip { samples, sample_rate: SAMPLE_RATE };
    let seconds = clip.duration_s();
    if seconds < limits.min_seconds {
        return Err(PipelineError::AudioTooShort { seconds, min: limits.min_seconds });
    }
    Ok(clip)
}

/// The ffmpeg CLI path: a private temporary file, `ffprobe`, then `ffmpeg` streaming f32 samples.
pub fn decode_with_ffmpeg(bytes: &[u8], limits: &AudioLimits) -> Result<Vec<f32>> {
    let file = TempInput::write(bytes)?;
    let probe = probe_file(file.path())?;
    tracing::debug!(codec = %probe.codec, rate = probe.sample_rate, channels = probe.channels, "probed audio");
    decode_file(file.path(), limits, &probe)
}

/// The audio container named by the magic bytes at the start of `b`, if any.
pub fn audio_kind(b: &[u8]) -> Option<&'static str> {
    let at = |i: usize, m: &[u8]| b.get(i..i + m.len()) == Some(m);
    if at(0, b"RIFF") && (at(8, b"WAVE") || at(8, b"RF64")) || at(0, b"RF64") {
        Some("wav")
    } else if at(0, b"ID3") || (b.len() > 1 && b[0] == 0xFF && (b[1] & 0xE0) == 0xE0 && (b[1] & 0x06) != 0) {
        Some("mp3")
    } else if b.len() > 1 && b[0] == 0xFF && (b[1] & 0xF6) == 0xF0 {
        Some("aac")
    } else if at(0, b"OggS") {
        Some("ogg")
    } else if at(0, b"fLaC") {
        Some("flac")
    } else if at(4, b"ftyp") {
        Some("mp4")
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("webm")
    } else if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        Some("aiff")
    } else if at(0, b"caff") {
        Some("caf")
    } else if at(0, b"#!AMR") {
        Some("amr")
    } else if at(0, b".snd") {
        Some("au")
    } else {
        None
    }
}

/// Run `ffprobe` on a file and describe its first audio stream.
pub fn probe_file(path: &Path) -> Result<AudioProbe> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type,codec_name,sample_rate,channels:format=duration"])
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PipelineError::io("run ffprobe (is ffmpeg installed?)", e))?;
    if !out.status.success() {
        return Err(PipelineError::NotAudio(first_line(&out.stderr, "ffprobe could not read the data")));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| PipelineError::Internal(format!("ffprobe printed invalid JSON: {e}")))?;
    let streams = json.get("streams").and_then(|s| s.as_array()).cloned().unwrap_or_default();
    let audio = streams
        .iter()
        .find(|s| s.get("codec_type").and_then(|t| t.as_str()) == Some("audio"))
        .ok_or_else(|| PipelineError::NotAudio("the data has no audio stream".into()))?;
    let num = |v: Option<&serde_json::Value>| -> Option<f64> {
        match v? {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        }
    };
    let sample_rate = num(audio.get("sample_rate")).unwrap_or(0.0) as u32;
    let channels = num(audio.get("channels")).unwrap_or(0.0) as u32;
    if sample_rate == 0 || channels == 0 {
        return Err(PipelineError::NotAudio("the audio stream has no sample rate or channels".into()));
    }
    Ok(AudioProbe {
        codec: audio.get("codec_name").and_then(|c| c.as_str()).unwrap_or("unknown").to_string(),
        sample_rate,
        channels,
        header_seconds: num(json.get("format").and_then(|f| f.get("duration"))).filter(|d| d.is_finite()),
    })
}

/// Stream-decode the first audio stream to f32 samples, stopping as soon as the limit is passed.
fn decode_file(path: &Path, limits: &AudioLimits, probe: &AudioProbe) -> Result<Vec<f32>> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-i"]).arg(path).args(["-map", "0:a:0", "-vn"]);
    if probe.channels > 1 {
        // Plain average of the channels (what librosa's mono=True does). ffmpeg's own `-ac 1`
        // matrix scales differently per input sample format.
        let gain = format!("{:.6}", 1.0 / probe.channels as f64);
        let terms: Vec<String> = (0..probe.channels).map(|c| format!("{gain}*c{c}")).collect();
        cmd.args(["-af", &format!("pan=mono|c0={}", terms.join("+"))]);
    }
    let mut child = cmd
        .args(["-f", "f32le", "-ac", "1", "-ar"])
        .arg(SAMPLE_RATE.to_string())
        .arg("pipe:1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PipelineError::io("run ffmpeg (is it installed?)", e))?;
    // Drain stderr on a thread so a chatty decoder can never block on a full pipe.
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    let max_samples = (limits.max_seconds.max(0.0) * SAMPLE_RATE as f64).ceil() as usize;
    let mut samples: Vec<f32> = Vec::with_capacity(max_samples.min(SAMPLE_RATE as usize * 60));
    let mut too_long = false;
    if let Some(mut out) = child.stdout.take() {
        let mut buf = vec![0u8; 64 * 1024];
        let mut carry: Vec<u8> = Vec::with_capacity(4);
        loop {
            let n = out.read(&mut buf).map_err(|e| PipelineError::io("read decoded audio", e))?;
            if n == 0 {
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            let whole = carry.len() / 4 * 4;
            samples.extend(carry[..whole].chunks_exact(4).map(|b| {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            }));
            carry.drain(..whole);
            if samples.len() > max_samples {
                too_long = true;
                break;
            }
        }
    }
    if too_long {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| PipelineError::io("wait for ffmpeg", e))?;
    let stderr = err_reader.join().unwrap_or_default();
    if too_long {
        let seconds = probe
            .header_seconds
            .filter(|&h| h > limits.max_seconds)
            .unwrap_or(samples.len() as f64 / SAMPLE_RATE as f64);
        return Err(PipelineError::AudioTooLong { seconds, max: limits.max_seconds });
    }
    if samples.is_empty() {
        let why = if status.success() {
            "no audio samples could be decoded".to_string()
        } else {
            first_line(&stderr, "ffmpeg could not decode the audio")
        };
        return Err(PipelineError::NotAudio(why));
    }
    if !status.success() {
        // Partial decode of a damaged file: keep what was decoded, note it.
        tracing::warn!(reason = %first_line(&stderr, "unknown"), "ffmpeg reported an error after decoding part of the audio");
    }
    Ok(samples)
}

fn first_line(bytes: &[u8], fallback: &str) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(fallback);
    // ffmpeg prefixes the (private) temp path; keep only the reason.
    let reason = line.rsplit(": ").next().unwrap_or(line);
    reason.chars().take(200).collect()
}

/// A private temporary copy of the upload, removed on drop.
struct TempInput {
    path: PathBuf,
}

impl TempInput {
    fn write(bytes: &[u8]) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = &blake3::hash(bytes).to_hex()[..12];
        let path = std::env::temp_dir().join(format!("vipavatar-audio-{}-{n}-{tag}", std::process::id()));
        std::fs::write(&path, bytes).map_err(|e| PipelineError::io("write temporary audio file", e))?;
        Ok(Self { path })
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempInput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
