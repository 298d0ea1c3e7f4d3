//! Orchestration shared by the CLI and the service: engine + prepared avatar + audio + options ->
//! MP4 (+ JPEG thumbnail, optional contact sheet) + timings, with progress callbacks.

use super::encoder::{EncoderConfig, Mp4Encoder, FPS};
use super::sheet::{write_jpeg, ContactSheet};
use crate::audio::{decode_audio, AudioClip, AudioLimits};
use crate::engine::{AvatarInput, Engine, FrameSink, GenerateOptions, PreparedAvatar};
use crate::error::{PipelineError, Result};
use crate::image::RgbImage;
use crate::precompute::{ImageLimits, Precomputer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One generate job for a prepared avatar.
pub struct GenerateRequest<'a> {
    pub engine: &'a dyn Engine,
    pub avatar: AvatarInput<'a>,
    pub prepared: &'a PreparedAvatar,
    pub audio: &'a AudioClip,
    pub options: &'a GenerateOptions,
    /// Cached `audio_features` blob, if the caller has one.
    pub features: Option<&'a [u8]>,
    /// Cached `motion` blob, if the caller has one.
    pub motion: Option<&'a [u8]>,
    /// Where the MP4 goes.
    pub output: &'a Path,
    /// Where the first-frame JPEG goes (none: no thumbnail).
    pub thumbnail: Option<&'a Path>,
    /// Where a contact sheet PNG (every 5th frame) goes (none: no sheet).
    pub contact_sheet: Option<&'a Path>,
}

/// Progress report: which stage, and how far into it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Timings and shape of a finished video.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateStats {
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    pub audio_seconds: f64,
    pub video_seconds: f64,
    /// Stage -> milliseconds (features, motion, render, encode_finish, ...).
    pub stage_ms: Vec<(String, f64)>,
    pub total_ms: f64,
    /// Audio seconds per wall-clock second (above 1 = faster than real time).
    pub realtime_factor: f64,
}

/// The result: stats plus the blobs computed on the way (for the caller's cache).
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub stats: GenerateStats,
    pub features: Vec<u8>,
    pub motion: Vec<u8>,
}

/// Run features -> motion -> render -> encode for one prepared avatar.
pub fn generate_video(req: &GenerateRequest<'_>, progress: &mut dyn FnMut(Progress)) -> Result<GenerateOutput> {
    let t0 = Instant::now();
    req.engine.check_options(req.options)?;
    let mut stage_ms: Vec<(String, f64)> = Vec::new();
    let timed = |stages: &mut Vec<(String, f64)>, name: &str, since: Instant| {
        stages.push((name.to_string(), since.elapsed().as_secs_f64() * 1e3))
    };

    let t = Instant::now();
    let features = match req.features {
        Some(f) => f.to_vec(),
        None => req.engine.audio_features(req.audio)?,
    };
    timed(&mut stage_ms, "features", t);
    progress(Progress { stage: "features", done: 1, total: 1 });

    let t = Instant::now();
    let motion = match req.motion {
        Some(m) => m.to_vec(),
        None => req.engine.motion(req.prepared, &features, req.options)?,
    };
    timed(&mut stage_ms, "motion", t);
    progress(Progress { stage: "motion", done: 1, total: 1 });

    if let Some(dir) = req.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(format!("create {}", dir.display()), e))?;
    }
    let encoder = Mp4Encoder::new(EncoderConfig::new(req.output, req.options.quality), req.audio)?;
    let mut sink = Tee {
        encoder,
        sheet: req.contact_sheet.map(|_| ContactSheet::new(5, 256, 8)),
        first: None,
        want_first: req.thumbnail.is_some(),
    };
    let t = Instant::now();
    let render_stats = req.engine.render(&req.avatar, req.prepared, &motion, req.options, &mut sink, &mut |d, n| {
        progress(Progress { stage: "render", done: d, total: n })
    })?;
    timed(&mut stage_ms, "render", t);
    for (name, ms) in &render_stats.stage_ms {
        stage_ms.push((format!("render.{name}"), *ms));
    }
    let Tee { encoder, sheet, first, .. } = sink;
    let t = Instant::now();
    let frames = encoder.finish()?;
    timed(&mut stage_ms, "encode_finish", t);
    let first = first.ok_or_else(|| PipelineError::Encode("no frames were rendered".into()))?;
    if let Some(path) = req.thumbnail {
        write_jpeg(&first, path)?;
    }
    if let (Some(path), Some(sheet)) = (req.contact_sheet, sheet.as_ref()) {
        sheet.write_png(path)?;
    }
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    let audio_seconds = req.audio.duration_s();
    progress(Progress { stage: "done", done: frames, total: frames });
    tracing::info!(frames, total_ms, audio_seconds, "video generated");
    Ok(GenerateOutput {
        stats: GenerateStats {
            frames,
            width: first.width,
            height: first.height,
            audio_seconds,
            video_seconds: frames as f64 / FPS as f64,
            stage_ms,
            total_ms,
            realtime_factor: audio_seconds / (total_ms / 1e3).max(1e-9),
        },
        features,
        motion,
    })
}

/// Fans frames out to the encoder, the contact sheet and the thumbnail.
struct Tee {
    encoder: Mp4Encoder,
    sheet: Option<ContactSheet>,
    first: Option<RgbImage>,
    want_first: bool,
}

impl FrameSink for Tee {
    fn push(&mut self, frame: &RgbImage) -> Result<()> {
        if self.first.is_none() {
            // Kept even without a thumbnail path: its size goes into the stats.
            self.first = Some(if self.want_first { frame.clone() } else { RgbImage::new(frame.width, frame.height) });
        }
        if let Some(s) = self.sheet.as_mut() {
            s.offer(frame)?;
        }
        self.encoder.push(frame)
    }
}

/// Everything the CLI's `generate` command needs to run one job from files, without a server.
#[derive(Debug, Clone)]
pub struct LocalGenerate {
    pub image: PathBuf,
    pub audio: PathBuf,
    pub output: PathBuf,
    pub options: GenerateOptions,
    /// Folder with the precompute models (face detector, landmarks).
    pub checkpoints: PathBuf,
    /// Optional contact sheet PNG.
    pub contact_sheet: Option<PathBuf>,
    pub audio_limits: AudioLimits,
    pub image_limits: ImageLimits,
}

impl LocalGenerate {
    /// Defaults for everything but the three paths.
    pub fn new(image: impl Into<PathBuf>, audio: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            audio: audio.into(),
            output: output.into(),
            options: GenerateOptions::default(),
            checkpoints: PathBuf::from("checkpoints"),
            contact_sheet: None,
            audio_limits: AudioLimits::default(),
            image_limits: ImageLimits::default(),
        }
    }

    /// The thumbnail path: the output with a `.jpg` extension.
    pub fn thumbnail_path(&self) -> PathBuf {
        self.output.with_extension("jpg")
    }
}

/// Read image + audio files, precompute, prepare, generate. Writes the MP4 and its thumbnail.
pub fn generate_local(
    engine: &dyn Engine,
    job: &LocalGenerate,
    progress: &mut dyn FnMut(Progress),
) -> Result<GenerateStats> {
    let t0 = Instant::now();
    engine.check_options(&job.options)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| PipelineError::io(format!("read {}", p.display()), e));
    let image_bytes = read(&job.image)?;
    let audio_bytes = read(&job.audio)?;
    let t = Instant::now();
    let clip = decode_audio(&audio_bytes, &job.audio_limits)?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let pre = Precomputer::load(&job.checkpoints, job.image_limits)?;
    let (image, analysis) = pre.run(&image_bytes, job.options.preprocess)?;
    let avatar = AvatarInput { image: &image, analysis: &analysis };
    let prepared = engine.prepare(&avatar, job.options.size)?;
    let precompute_ms = t.elapsed().as_secs_f64() * 1e3;
    progress(Progress { stage: "precompute", done: 1, total: 1 });
    let thumb = job.thumbnail_path();
    let req = GenerateRequest {
        engine,
        avatar,
        prepared: &prepared,
        audio: &clip,
        options: &job.options,
        features: None,
        motion: None,
        output: &job.output,
        thumbnail: Some(&thumb),
        contact_sheet: job.contact_sheet.as_deref(),
    };
    let mut out = generate_video(&req, progress)?.stats;
    out.stage_ms.insert(0, ("precompute".into(), precompute_ms));
    out.stage_ms.insert(0, ("audio_decode".into(), decode_ms));
    out.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    out.realtime_factor = out.audio_seconds / (out.total_ms / 1e3).max(1e-9);
    Ok(out)
}
