//! Orchestration shared by the CLI and the service: engine + prepared avatar + audio + options ->
//! MP4 (+ optional live fragmented stream, JPEG thumbnail, contact sheet) + timings, in chunks
//! whose analysis, rendering and encoding overlap.

use super::encoder::{ByteSink, EncoderConfig, FragmentSink, Mp4Encoder, FPS};
use super::fmp4::Fragment;
use super::sheet::{write_jpeg, ContactSheet};
use crate::audio::{decode_audio, AudioClip, AudioLimits};
use crate::engine::{AvatarInput, Engine, FrameSink, GenerateOptions, MotionInput, PreparedAvatar};
use crate::error::{PipelineError, Result};
use crate::image::RgbImage;
use crate::precompute::{ImageLimits, Precomputer};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
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
    /// The last frame repeats the first (a loop): encode it as a keyframe too, so both carry
    /// the same encoder quality and the loop point shows no jump.
    pub close_loop: bool,
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
    /// Milliseconds from the start until the first frame was rendered.
    #[serde(default)]
    pub first_frame_ms: Option<f64>,
    /// Milliseconds from the start until the first live media fragment was published.
    #[serde(default)]
    pub first_fragment_ms: Option<f64>,
}

/// The result: stats plus the blobs computed on the way (for the caller's cache).
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub stats: GenerateStats,
    /// The audio features, when this run computed them.
    pub features: Option<Vec<u8>>,
    /// The whole clip's motion.
    pub motion: Vec<u8>,
}

/// Frames in the first chunk: small, so the first fragment of a live stream is out quickly.
pub const FIRST_CHUNK_FRAMES: usize = 6;
/// Frames in every later chunk (1 s): one keyframe and one live fragment each.
pub const CHUNK_FRAMES: usize = 25;
/// Motion chunks buffered between the analysis thread and the renderer.
const MOTION_QUEUE: usize = 2;

/// Chunk sizes for a clip of `total` frames.
pub fn chunk_sizes(total: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = total;
    while left > 0 {
        let size = if sizes.is_empty() { FIRST_CHUNK_FRAMES } else { CHUNK_FRAMES }.min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// First frame of each chunk (where keyframes and live fragments start).
pub fn chunk_starts(total: usize) -> Vec<usize> {
    chunk_sizes(total)
        .iter()
        .scan(0, |at, &n| {
            let start = *at;
            *at += n;
            Some(start)
        })
        .collect()
}

/// Run features -> motion -> render -> encode for one prepared avatar.
pub fn generate_video(req: &GenerateRequest<'_>, progress: &mut dyn FnMut(Progress)) -> Result<GenerateOutput> {
    generate_streamed(req, None, progress)
}

/// [`generate_video`] with an optional live stream. The stages overlap: audio analysis and
/// motion planning run a chunk ahead on their own thread, frames render on this one, and ffmpeg
/// encodes (and publishes each live fragment) while later chunks are still being analysed.
pub fn generate_streamed(
    req: &GenerateRequest<'_>,
    stream: Option<FragmentSink>,
    progress: &mut dyn FnMut(Progress),
) -> Result<GenerateOutput> {
    run_chunks(req, Output::Mp4 { stream }, progress, &|| false)
}

/// [`generate_streamed`] that gives up between chunks once `stop()` turns true (with
/// [`STOPPED`] as an internal error): a cancelled session stops at its next chunk.
pub fn generate_streamed_until(
    req: &GenerateRequest<'_>,
    stream: Option<FragmentSink>,
    progress: &mut dyn FnMut(Progress),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<GenerateOutput> {
    run_chunks(req, Output::Mp4 { stream }, progress, stop)
}

/// [`generate_video`] that gives up between chunks once `stop()` turns true (with
/// [`STOPPED`] as an internal error), so background work can yield to a waiting request.
pub fn generate_video_until(
    req: &GenerateRequest<'_>,
    progress: &mut dyn FnMut(Progress),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<GenerateOutput> {
    run_chunks(req, Output::Mp4 { stream: None }, progress, stop)
}

/// The message of the error [`generate_video_until`] stops with.
pub const STOPPED: &str = "stopped between chunks: other work goes first";

/// One part of a split session: frames `frames` of the clip (their motion equal to the whole
/// clip's), encoded as a bare H.264 stream into `sink` (no soundtrack: [`super::join`] adds the
/// whole clip's). `req.output` is unused; `req.motion`, when given, is the whole clip's motion.
/// The blobs returned are empty (a part's are not the clip's).
pub fn generate_part(
    req: &GenerateRequest<'_>,
    frames: Range<usize>,
    sink: ByteSink,
    progress: &mut dyn FnMut(Progress),
) -> Result<GenerateOutput> {
    if !req.engine.renders_parts() {
        return Err(PipelineError::Internal(format!(
            "the {} engine cannot render one part of a clip",
            req.engine.kind().as_str()
        )));
    }
    run_chunks(req, Output::Part { frames, sink }, progress, &|| false)
}

/// Where [`run_chunks`] sends the encoded video.
enum Output {
    /// The faststart MP4 at `req.output` (+ the live fragments).
    Mp4 { stream: Option<FragmentSink> },
    /// A part's bare H.264 stream.
    Part { frames: Range<usize>, sink: ByteSink },
}

fn run_chunks(
    req: &GenerateRequest<'_>,
    output: Output,
    progress: &mut dyn FnMut(Progress),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<GenerateOutput> {
    let t0 = Instant::now();
    req.engine.check_options(req.options)?;
    use crate::ms_since;
    let (stream, elementary, frames) = match output {
        Output::Mp4 { stream } => (stream, None, None),
        Output::Part { frames, sink } => (None, Some(sink), Some(frames)),
    };
    let input = MotionInput {
        clip: req.audio,
        features: req.features,
        motion: req.motion,
        frames: frames.as_ref().map(|r| (r.start, r.end)),
    };
    let (motion_stream, mut renderer) = req.engine.stream(req.avatar, req.prepared, input, req.options)?;
    let total = motion_stream.total_frames();
    if total == 0 {
        return Err(PipelineError::Encode("the audio yields no video frames".into()));
    }
    if let Some(dir) = req.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(format!("create {}", dir.display()), e))?;
    }
    // The first live media fragment, in ms since t0.
    let first_fragment = Arc::new(AtomicU64::new(u64::MAX));
    let stream = stream.map(|mut sink| {
        let first = first_fragment.clone();
        Box::new(move |f: Fragment| {
            if matches!(f, Fragment::Media(_)) {
                let _ =
                    first.compare_exchange(u64::MAX, (ms_since(t0) * 1e3) as u64, Ordering::Relaxed, Ordering::Relaxed);
            }
            sink(f)
        }) as FragmentSink
    });
    let mut keyframes = chunk_starts(total);
    if req.close_loop && keyframes.last() != Some(&(total - 1)) {
        keyframes.push(total - 1);
    }
    let config = EncoderConfig {
        stream,
        elementary,
        keyframes,
        zero_latency: req.close_loop,
        constant_quantizer: req.close_loop,
        ..EncoderConfig::new(req.output, req.options.quality)
    };
    let encoder = Mp4Encoder::new(config, req.audio)?;
    let mut sink = Tee {
        encoder,
        sheet: req.contact_sheet.map(|_| ContactSheet::new(5, 256, 8)),
        first: None,
        first_ms: None,
        want_first: req.thumbnail.is_some(),
        started: t0,
        total,
        progress,
    };
    let t_render = Instant::now();
    let sizes = chunk_sizes(total);
    let (blobs, motion_ms) = std::thread::scope(|scope| -> Result<(crate::engine::StreamBlobs, f64)> {
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>>>(MOTION_QUEUE);
        let planner = std::thread::Builder::new()
            .name("motion-plan".into())
            .spawn_scoped(scope, move || {
                let mut ms = motion_stream;
                let mut busy = 0.0;
                for size in sizes {
                    let t = Instant::now();
                    let next = ms.next_chunk(size);
                    busy += ms_since(t);
                    let stop = !matches!(next, Ok(Some(_)));
                    let next = next.transpose();
                    if let Some(item) = next {
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                    if stop {
                        break;
                    }
                }
                (ms, busy)
            })
            .map_err(|e| PipelineError::io("spawn the motion thread", e))?;
        let mut rendered: Result<()> = Ok(());
        for chunk in rx.iter() {
            if stop() {
                rendered = Err(PipelineError::Internal(STOPPED.into()));
                break;
            }
            rendered = chunk.and_then(|c| renderer.render_chunk(&c, &mut sink).map(|_| ()));
            if rendered.is_err() {
                break;
            }
        }
        drop(rx);
        let (ms, busy) = planner.join().map_err(|_| PipelineError::Internal("the motion thread panicked".into()))?;
        rendered?;
        Ok((ms.finish()?, busy))
    })?;
    let render_ms = ms_since(t_render);
    let mut stage_ms: Vec<(String, f64)> = vec![("motion".into(), motion_ms), ("render".into(), render_ms)];
    for (name, ms) in renderer.stage_ms() {
        stage_ms.push((format!("render.{name}"), ms));
    }
    drop(renderer);
    let Tee { encoder, sheet, first, first_ms, .. } = sink;
    let t = Instant::now();
    let part = frames;
    let frames = encoder.finish()?;
    stage_ms.push(("encode_finish".into(), ms_since(t)));
    let first = first.ok_or_else(|| PipelineError::Encode("no frames were rendered".into()))?;
    if let Some(path) = req.thumbnail {
        write_jpeg(&first, path)?;
    }
    if let (Some(path), Some(sheet)) = (req.contact_sheet, sheet.as_ref()) {
        sheet.write_png(path)?;
    }
    let total_ms = ms_since(t0);
    let audio_seconds = match &part {
        Some(r) => r.len() as f64 / FPS as f64,
        None => req.audio.duration_s(),
    };
    progress(Progress { stage: "done", done: frames, total: frames });
    let first_fragment_ms = match first_fragment.load(Ordering::Relaxed) {
        u64::MAX => None,
        us => Some(us as f64 / 1e3),
    };
    tracing::info!(frames, total_ms, audio_seconds, ?first_fragment_ms, "video generated");
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
            first_frame_ms: first_ms,
            first_fragment_ms,
        },
        features: blobs.features,
        motion: blobs.motion,
    })
}

/// Fans frames out to the encoder, the contact sheet and the thumbnail, and reports progress.
struct Tee<'p> {
    encoder: Mp4Encoder,
    sheet: Option<ContactSheet>,
    first: Option<RgbImage>,
    first_ms: Option<f64>,
    want_first: bool,
    started: Instant,
    total: usize,
    progress: &'p mut dyn FnMut(Progress),
}

impl FrameSink for Tee<'_> {
    fn push(&mut self, frame: &RgbImage) -> Result<()> {
        if self.first.is_none() {
            // Kept even without a thumbnail path: its size goes into the stats.
            self.first = Some(if self.want_first { frame.clone() } else { RgbImage::new(frame.width, frame.height) });
            self.first_ms = Some(crate::ms_since(self.started));
        }
        if let Some(s) = self.sheet.as_mut() {
            s.offer(frame)?;
        }
        self.encoder.push(frame)?;
        (self.progress)(Progress { stage: "render", done: self.encoder.frames(), total: self.total });
        Ok(())
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
    let decode_ms = crate::ms_since(t);
    let t = Instant::now();
    let pre = Precomputer::load(&job.checkpoints, job.image_limits)?;
    let (image, analysis) = pre.run(&image_bytes, job.options.preprocess)?;
    let avatar = AvatarInput { image: &image, analysis: &analysis };
    let prepared = engine.prepare(&avatar, job.options.size)?;
    let precompute_ms = crate::ms_since(t);
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
        close_loop: false,
    };
    let mut out = generate_video(&req, progress)?.stats;
    out.stage_ms.insert(0, ("precompute".into(), precompute_ms));
    out.stage_ms.insert(0, ("audio_decode".into(), decode_ms));
    out.total_ms = crate::ms_since(t0);
    out.realtime_factor = out.audio_seconds / (out.total_ms / 1e3).max(1e-9);
    Ok(out)
}
