//! Helpers for the classic-engine / video tests: real avatars through the real precompute,
//! espeak-ng speech, ffprobe checks and decoding rendered MP4 frames back for measurement.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use vipavatar_pipeline::audio::{decode_audio, AudioClip, AudioLimits};
use vipavatar_pipeline::classic::ClassicEngine;
use vipavatar_pipeline::engine::{AvatarInput, Engine, GenerateOptions, PreparedAvatar, PreprocessMode};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::precompute::{AvatarAnalysis, ImageLimits, Precomputer};
use vipavatar_pipeline::video::{generate_video, GenerateOutput, GenerateRequest};

use crate::common;

/// The loaded precompute models, or None (with one skip line) when they are not fetched.
pub fn models() -> Option<&'static Precomputer> {
    static P: OnceLock<Option<Precomputer>> = OnceLock::new();
    P.get_or_init(|| common::checkpoints().map(|d| Precomputer::load(&d, ImageLimits::default()).expect("load models")))
        .as_ref()
}

/// The classic engine as the service builds it (trained viseme model, enhancer slot).
pub fn engine() -> ClassicEngine {
    let dir = common::checkpoints().expect("checkpoints fetched");
    ClassicEngine::with_checkpoints(&dir, tch::Device::Cpu).expect("the classic engine loads")
}

/// Shared test data, or None (one skip line) when absent outside CI.
pub fn testdata() -> Option<PathBuf> {
    common::shared_testdata()
}

/// A precomputed avatar from `images/<name>`.
pub struct Avatar {
    pub image: RgbImage,
    pub analysis: AvatarAnalysis,
    pub prepared: PreparedAvatar,
}

impl Avatar {
    pub fn input(&self) -> AvatarInput<'_> {
        AvatarInput { image: &self.image, analysis: &self.analysis }
    }
}

/// Load, analyse and prepare `images/<name>`; None when test data or models are missing.
pub fn avatar(name: &str, mode: PreprocessMode, size: u32) -> Option<Avatar> {
    let dir = testdata()?;
    let models = models()?;
    let bytes = std::fs::read(dir.join("images").join(name)).expect("read image");
    let (image, analysis) = models.run(&bytes, mode).expect("precompute");
    let prepared = engine().prepare(&AvatarInput { image: &image, analysis: &analysis }, size).expect("prepare");
    Some(Avatar { image, analysis, prepared })
}

/// Decode `audio/<name>` from the shared test data.
pub fn shared_audio(name: &str) -> Option<AudioClip> {
    let dir = testdata()?;
    let bytes = std::fs::read(dir.join("audio").join(name)).expect("read audio");
    Some(decode_audio(&bytes, &AudioLimits::default()).expect("decode audio"))
}

/// Speech synthesised by espeak-ng as WAV bytes.
pub fn espeak(text: &str) -> Vec<u8> {
    let out = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "--stdout", text])
        .output()
        .expect("espeak-ng is installed");
    assert!(out.status.success(), "espeak-ng failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A fresh scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("vipavatar-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// Where artefacts worth looking at go (contact sheets): `target/test-artifacts/`.
pub fn artifacts() -> PathBuf {
    let dir = common::workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Generate a video with the classic engine.
pub fn generate(
    avatar: &Avatar,
    clip: &AudioClip,
    opts: &GenerateOptions,
    output: &Path,
    sheet: Option<&Path>,
) -> GenerateOutput {
    let engine = engine();
    let thumb = output.with_extension("jpg");
    let req = GenerateRequest {
        engine: &engine,
        avatar: avatar.input(),
        prepared: &avatar.prepared,
        audio: clip,
        options: opts,
        features: None,
        motion: None,
        output,
        thumbnail: Some(&thumb),
        contact_sheet: sheet,
        close_loop: false,
    };
    generate_video(&req, &mut |_| {}).expect("generate video")
}

/// Streams of an MP4 as ffprobe reports them.
#[derive(Debug)]
pub struct Probe {
    pub video_codec: String,
    pub pix_fmt: String,
    pub width: u32,
    pub height: u32,
    pub frame_rate: String,
    pub video_frames: usize,
    pub video_seconds: f64,
    pub audio_codec: String,
    pub audio_seconds: f64,
}

pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_streams", "-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let streams = json["streams"].as_array().expect("streams");
    let v = streams.iter().find(|s| s["codec_type"] == "video").expect("a video stream");
    let a = streams.iter().find(|s| s["codec_type"] == "audio").expect("an audio stream");
    let f = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or_default().to_string();
    Probe {
        video_codec: f(v, "codec_name"),
        pix_fmt: f(v, "pix_fmt"),
        width: v["width"].as_u64().unwrap_or(0) as u32,
        height: v["height"].as_u64().unwrap_or(0) as u32,
        frame_rate: f(v, "r_frame_rate"),
        video_frames: f(v, "nb_read_frames").parse().unwrap_or(0),
        video_seconds: f(v, "duration").parse().unwrap_or(0.0),
        audio_codec: f(a, "codec_name"),
        audio_seconds: f(a, "duration").parse().unwrap_or(0.0),
    }
}

/// Whether the MP4's `moov` atom comes before `mdat` (faststart).
pub fn is_faststart(path: &Path) -> bool {
    let bytes = std::fs::read(path).expect("read mp4");
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag);
    matches!((find(b"moov"), find(b"mdat")), (Some(m), Some(d)) if m < d)
}

/// Indices of the video's keyframes, read with ffprobe.
pub fn keyframes(path: &Path) -> Vec<usize> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=key_frame", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    // One `key_frame,` line per frame; side data adds blank lines, which are not frames.
    let flags = text.lines().filter_map(|l| l.split(',').next().filter(|f| !f.trim().is_empty()));
    flags.enumerate().filter(|(_, f)| f.trim() == "1").map(|(i, _)| i).collect()
}

/// Decode every frame of a video to RGB.
pub fn decode_frames(path: &Path) -> Vec<RgbImage> {
    let p = ffprobe(path);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg decode failed");
    let size = (p.width * p.height * 3) as usize;
    out.stdout.chunks_exact(size).map(|c| RgbImage::from_raw(p.width, p.height, c.to_vec()).expect("frame")).collect()
}

/// Pearson correlation.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa.sqrt() * sbb.sqrt()).max(1e-12)
}

/// RMS of the clip over each 25 fps frame interval.
pub fn frame_envelope(clip: &AudioClip, frames: usize) -> Vec<f64> {
    let spf = clip.sample_rate as usize / 25;
    (0..frames)
        .map(|t| {
            let s = (t * spf).min(clip.samples.len());
            let e = (s + spf).min(clip.samples.len());
            let w = &clip.samples[s..e];
            (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len().max(1) as f64).sqrt()
        })
        .collect()
}

/// Mouth opening measured on a rendered frame: the number of pixels in the mouth box (lips
/// padded sideways and downwards for the jaw) darker than 45% of the lips' median luminance in
/// the unanimated frame. A closed mouth has almost none; an open one shows its dark interior.
pub fn mouth_dark_pixels(frame: &RgbImage, source: &RgbImage, landmarks: &[[f32; 2]]) -> f64 {
    let mouth = &landmarks[48..60];
    let x0 = mouth.iter().map(|p| p[0]).fold(f32::MAX, f32::min);
    let x1 = mouth.iter().map(|p| p[0]).fold(f32::MIN, f32::max);
    let y0 = mouth.iter().map(|p| p[1]).fold(f32::MAX, f32::min);
    let y1 = mouth.iter().map(|p| p[1]).fold(f32::MIN, f32::max);
    let w = x1 - x0;
    let (bx0, bx1) = ((x0 - 0.1 * w).max(0.0) as u32, ((x1 + 0.1 * w) as u32).min(frame.width - 1));
    let (by0, by1) = ((y0 - 0.05 * w).max(0.0) as u32, ((y1 + 0.4 * w) as u32).min(frame.height - 1));
    let luma = |p: [u8; 3]| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
    // Median lip luminance: pixels of the source inside the box's lip band.
    let mut lips: Vec<f64> = Vec::new();
    for y in (y0.max(0.0) as u32)..=(y1 as u32).min(source.height - 1) {
        for x in (x0.max(0.0) as u32)..=(x1 as u32).min(source.width - 1) {
            lips.push(luma(source.pixel(x, y)));
        }
    }
    lips.sort_by(f64::total_cmp);
    let threshold = 0.45 * lips[lips.len() / 2];
    let mut n = 0.0;
    for y in by0..=by1 {
        for x in bx0..=bx1 {
            if luma(frame.pixel(x, y)) < threshold {
                n += 1.0;
            }
        }
    }
    n
}
