//! Incremental generation for the sadtalker engine: motion coefficients a stretch of frames at a
//! time ([`SadTalkerMotion`], over [`CoeffStream`]), and a renderer of those chunks that keeps the
//! avatar's device-side source across chunks and ramps its batches ([`SadTalkerChunks`]). The
//! whole-clip `motion` / `render` calls of the engine are these same pieces run to the end.
//!
//! A chunk carries the coefficient rows its frames' 27-frame windows reach (13 each side), so
//! the renderer needs nothing of the rest of the clip, and a part of a clip (frames `a..b` of a
//! split session) renders the same frames as the whole clip does.

use super::audio2coeff::{MotionCoefficients, MotionOptions};
use super::batch::COEFF_DIM;
use super::coeff_stream::CoeffStream;
use super::engine::{decode, encode, part, SadTalkerEngine, SourceCoeffs};
use super::enhance::FrameEnhance;
use super::facerender::paste::PasteBack;
use super::facerender::renderer::PreparedSource;
use super::facerender::windows::{driving_coeffs, target_windows_range, SEMANTIC_RADIUS};
use super::facerender::{SourceState, WindowOptions};
use super::mel::MelFeatures;
use crate::engine::{
    AvatarInput, ChunkRenderer, FrameSink, GenerateOptions, MotionInput, MotionStream, PreparedAvatar, PreprocessMode,
    StateKind, StreamBlobs,
};
use crate::error::ResultExt;
use crate::image::RgbImage;
use crate::{PipelineError, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Coefficient rows each side of a frame that its renderer window reads.
const CONTEXT: usize = SEMANTIC_RADIUS as usize;

/// Frames `start..end` of a `total`-frame clip, with the clip's coefficient rows
/// `first_row..first_row + rows.len() / 70` that their windows reach. The stream's chunk blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionChunk {
    pub total: usize,
    pub start: usize,
    pub end: usize,
    pub first_row: usize,
    pub rows: Vec<f32>,
}

impl MotionChunk {
    /// Frames `start..end` of a whole clip's coefficients.
    pub fn of(coeffs: &MotionCoefficients, start: usize, end: usize) -> Self {
        let (lo, hi) = context_rows(coeffs.num_frames, start, end);
        Self {
            total: coeffs.num_frames,
            start,
            end,
            first_row: lo,
            rows: coeffs.values[lo * COEFF_DIM..hi * COEFF_DIM].to_vec(),
        }
    }
}

/// The rows (`lo..hi`) that the windows of frames `start..end` reach.
fn context_rows(total: usize, start: usize, end: usize) -> (usize, usize) {
    (start.saturating_sub(CONTEXT), (end + CONTEXT).min(total))
}

/// The request's options of the audio-to-coefficient stage.
pub fn motion_options(opts: &GenerateOptions) -> MotionOptions {
    MotionOptions { seed: opts.seed, pose_style: opts.pose_style, still: opts.still_mode, ..Default::default() }
}

enum Source {
    /// Run the audio networks as the chunks are asked for (`features`: the blob to cache, when
    /// the mel features were computed here).
    Compute { coeffs: CoeffStream, features: Option<Vec<u8>> },
    /// Cached motion: hand it out in slices.
    Replay(MotionCoefficients),
}

/// The sadtalker engine's motion stream.
pub struct SadTalkerMotion<'a> {
    engine: &'a SadTalkerEngine,
    source: Source,
    clip_frames: usize,
    /// Frames this stream hands out (the part's, or the whole clip's).
    total: usize,
    /// The clip frame the next chunk starts at, and the end of what this stream hands out.
    pos: usize,
    end: usize,
    /// Only a part of the clip: its blobs are not the clip's and are not left for the cache.
    part: bool,
}

impl<'a> SadTalkerMotion<'a> {
    pub fn new(
        engine: &'a SadTalkerEngine,
        prepared: &PreparedAvatar,
        input: MotionInput<'_>,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let source = match (input.motion, input.features) {
            (Some(m), _) => Source::Replay(decode(m, "motion")?),
            (None, cached) => {
                let (features, blob) = match cached {
                    Some(f) => (decode::<MelFeatures>(f, "audio features")?, None),
                    None => {
                        let mel = MelFeatures::from_clip(input.clip)?;
                        let blob = encode(&mel)?;
                        (mel, Some(blob))
                    }
                };
                let source: SourceCoeffs = decode(part(prepared, StateKind::Coeffs3dmm)?, "3dmm coefficients")?;
                let coeffs = CoeffStream::new(&features, &source.coeff_3dmm, &motion_options(opts), engine.device())?;
                Source::Compute { coeffs, features: blob }
            }
        };
        let clip_frames = match &source {
            Source::Compute { coeffs, .. } => coeffs.total(),
            Source::Replay(m) => m.num_frames,
        };
        let range = input.frames.map(|(a, b)| a..b).unwrap_or(0..clip_frames);
        if range.start >= range.end || range.end > clip_frames {
            return Err(PipelineError::Internal(format!(
                "frames {}..{} are not a part of a {clip_frames}-frame clip",
                range.start, range.end
            )));
        }
        Ok(Self {
            engine,
            source,
            clip_frames,
            total: range.len(),
            pos: range.start,
            end: range.end,
            part: input.frames.is_some(),
        })
    }

    /// The motion of the next `frames` frames, or `None` at the end.
    pub fn next(&mut self, frames: usize) -> Result<Option<MotionChunk>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let (start, end) = (self.pos, (self.pos + frames.max(1)).min(self.end));
        let chunk = match &mut self.source {
            Source::Compute { coeffs, .. } => {
                let (lo, hi) = context_rows(self.clip_frames, start, end);
                self.engine.with_audio(|model| coeffs.advance(model, hi))?;
                MotionChunk { total: self.clip_frames, start, end, first_row: lo, rows: coeffs.rows(lo..hi).to_vec() }
            }
            Source::Replay(m) => MotionChunk::of(m, start, end),
        };
        self.pos = end;
        Ok(Some(chunk))
    }
}

impl MotionStream for SadTalkerMotion<'_> {
    fn total_frames(&self) -> usize {
        self.total
    }

    fn next_chunk(&mut self, frames: usize) -> Result<Option<Vec<u8>>> {
        self.next(frames)?.map(|c| encode(&c)).transpose()
    }

    fn finish(self: Box<Self>) -> Result<StreamBlobs> {
        if self.part {
            return Ok(StreamBlobs::default());
        }
        match self.source {
            Source::Compute { coeffs, features } => {
                let motion = self.engine.with_audio(|model| coeffs.finish(model))?;
                Ok(StreamBlobs { features, motion: encode(&motion)? })
            }
            Source::Replay(m) => Ok(StreamBlobs { features: None, motion: encode(&m)? }),
        }
    }
}

/// The sadtalker engine's renderer of motion chunks.
pub struct SadTalkerChunks<'a> {
    engine: &'a SadTalkerEngine,
    state: SourceState,
    /// The generator's device-side source, made on the first chunk.
    source: Option<PreparedSource>,
    source_coeff: Vec<f32>,
    window_opts: WindowOptions,
    size: u32,
    full: bool,
    paste: Option<PasteBack>,
    /// `enhancer=gfpgan` on each batch of output frames (a no-op otherwise).
    enhance: FrameEnhance<'a>,
    out: (u32, u32),
    /// Frames in the next generator pass: 1, 2, 4, ... up to the device's batch size, so the
    /// first frame waits for a one-frame pass.
    batch: usize,
    setup_ms: f64,
    render_ms: f64,
    output_ms: f64,
    enhance_ms: f64,
}

impl<'a> SadTalkerChunks<'a> {
    pub fn new(
        engine: &'a SadTalkerEngine,
        avatar: &AvatarInput<'_>,
        prepared: &PreparedAvatar,
        opts: &GenerateOptions,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let a = avatar.analysis;
        if opts.preprocess != a.preprocess {
            return Err(PipelineError::InvalidOption {
                field: "preprocess",
                reason: format!(
                    "the avatar was prepared for {}, not {}",
                    a.preprocess.as_str(),
                    opts.preprocess.as_str()
                ),
            });
        }
        let source: SourceCoeffs = decode(part(prepared, StateKind::Coeffs3dmm)?, "3dmm coefficients")?;
        if source.size != opts.size {
            return Err(PipelineError::InvalidOption {
                field: "size",
                reason: format!("the avatar was prepared at {} px, not {}", source.size, opts.size),
            });
        }
        let state_bytes: Vec<u8> = decode(part(prepared, StateKind::SourceState)?, "source state")?;
        let state = SourceState::from_bytes(&state_bytes, engine.device())?;
        let full = a.preprocess == PreprocessMode::Full;
        let window_opts =
            WindowOptions { still_mode: opts.still_mode, full, ..WindowOptions::new(opts.expression_scale) };
        let paste = if full { Some(PasteBack::new(avatar.image, a.crop.face_box, engine.device())?) } else { None };
        let out = match &paste {
            Some(_) => (avatar.image.width & !1, avatar.image.height & !1),
            None => output_size(a.crop.reference_size, opts.size),
        };
        let enhance = FrameEnhance::new(&engine.enhancer, avatar, opts)?;
        Ok(Self {
            engine,
            state,
            source: None,
            source_coeff: source.coeff_3dmm,
            window_opts,
            size: opts.size,
            full,
            paste,
            enhance,
            out,
            batch: 1,
            setup_ms: crate::ms_since(t0),
            render_ms: 0.0,
            output_ms: 0.0,
            enhance_ms: 0.0,
        })
    }

    /// Render the frames of `chunk` in order into `sink`, calling `progress(i)` after the i-th.
    pub fn render_frames(
        &mut self,
        chunk: &MotionChunk,
        sink: &mut dyn FrameSink,
        progress: &mut dyn FnMut(usize),
    ) -> Result<usize> {
        let rows = chunk.rows.len() / COEFF_DIM;
        if !chunk.rows.len().is_multiple_of(COEFF_DIM) || chunk.start >= chunk.end {
            return Err(PipelineError::Internal("a sadtalker motion chunk is malformed".into()));
        }
        let coeffs = Tensor::from_slice(&chunk.rows).reshape([rows as i64, COEFF_DIM as i64]);
        let driving = driving_coeffs(&coeffs, &self.source_coeff, &self.window_opts)?;
        let targets = target_windows_range(&driving, chunk.first_row, chunk.total, chunk.start..chunk.end)?;
        let total = (chunk.end - chunk.start) as i64;
        let renderer = self.engine.renderer(self.size, self.full)?;
        if self.source.is_none() {
            let t = Instant::now();
            self.source = Some(renderer.with(|r| r.prepare_generator_source(&self.state))?);
            self.setup_ms += crate::ms_since(t);
        }
        let Some(source) = &self.source else { return Ok(0) };
        let most = renderer.with(|r| r.batch_size(self.state.image_size)).max(1);
        let mut done = 0usize;
        let mut start = 0i64;
        while start < total {
            let t = Instant::now();
            let len = (self.batch as i64).min(total - start);
            self.batch = (self.batch * 2).min(most);
            // The pass may carry other sessions' frames too (see `SharedRenderer`).
            let frames = renderer.render(source, &targets.narrow(0, start, len), most)?;
            let t1 = Instant::now();
            self.render_ms += crate::ms_since(t);
            let frames = output_tensor(&frames, self.paste.as_ref())?;
            let t2 = Instant::now();
            let frames = self.enhance.apply(frames)?;
            self.enhance_ms += crate::ms_since(t2);
            for frame in output_frames(&frames, self.paste.is_some(), self.size, self.out)? {
                sink.push(&frame)?;
                done += 1;
                progress(done);
            }
            self.output_ms += crate::ms_since(t1);
            start += len;
        }
        Ok(done)
    }

    pub fn stage_ms(&self) -> Vec<(String, f64)> {
        vec![
            ("render_setup".into(), self.setup_ms),
            ("render".into(), self.render_ms),
            ("output".into(), self.output_ms - self.enhance_ms),
            ("enhance".into(), self.enhance_ms),
        ]
    }
}

impl ChunkRenderer for SadTalkerChunks<'_> {
    fn render_chunk(&mut self, motion: &[u8], sink: &mut dyn FrameSink) -> Result<usize> {
        let chunk: MotionChunk = decode(motion, "motion")?;
        self.render_frames(&chunk, sink, &mut |_| {})
    }

    fn stage_ms(&self) -> Vec<(String, f64)> {
        SadTalkerChunks::stage_ms(self)
    }
}

/// Output frame size for the crop / resize modes: the reference resizes the square render to
/// `(size, size * h / w)` of the cropped region; both sides even for H.264.
fn output_size(reference: [i64; 2], size: u32) -> (u32, u32) {
    let [w, h] = reference;
    let height = if w > 0 && h > 0 { (size as f64 * h as f64 / w as f64) as u32 } else { size };
    (size & !1, height.max(2) & !1)
}

/// Rendered faces (n, 3, S, S) float in [0, 1] -> (n, H, W, 3) uint8: pasted into the original
/// (`full`), or the square render.
fn output_tensor(faces: &Tensor, paste: Option<&PasteBack>) -> Result<Tensor> {
    match paste {
        Some(p) => p.apply(faces),
        None => Ok(to_u8_frames(faces)),
    }
}

/// Output frames of [`output_tensor`]'s frames: the pasted frames, or the square render resized
/// to the crop's aspect.
fn output_frames(frames: &Tensor, pasted: bool, size: u32, out: (u32, u32)) -> Result<Vec<RgbImage>> {
    let (out_w, out_h) = out;
    (0..frames.size()[0])
        .map(|i| match pasted {
            true => frame_image(frames, i, out_w, out_h),
            false => {
                let square = frame_image(frames, i, size, size)?;
                if (out_w, out_h) == (size, size) {
                    Ok(square)
                } else {
                    crate::image::resize(&square, out_w, out_h)
                }
            }
        })
        .collect()
}

/// (n, 3, S, S) float [0, 1] -> (n, S, S, 3) uint8 on the CPU (`img_as_ubyte`).
fn to_u8_frames(frames: &Tensor) -> Tensor {
    (frames.to_kind(Kind::Float) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu)
}

/// Frame `i` of an (n, H, W, 3) uint8 tensor, cropped to (width, height).
fn frame_image(frames: &Tensor, i: i64, width: u32, height: u32) -> Result<RgbImage> {
    let f = frames.get(i).narrow(0, 0, height as i64).narrow(1, 0, width as i64).contiguous();
    let data = Vec::<u8>::try_from(f.flatten(0, -1)).ctx("reading rendered frames")?;
    RgbImage::from_raw(width, height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_carries_the_rows_its_windows_reach() {
        let coeffs = MotionCoefficients { num_frames: 60, values: (0..60 * COEFF_DIM).map(|v| v as f32).collect() };
        let c = MotionChunk::of(&coeffs, 20, 30);
        assert_eq!((c.first_row, c.rows.len() / COEFF_DIM), (7, 36));
        assert_eq!(c.rows[0], (7 * COEFF_DIM) as f32);
        let head = MotionChunk::of(&coeffs, 0, 6);
        assert_eq!((head.first_row, head.rows.len() / COEFF_DIM), (0, 19));
        let tail = MotionChunk::of(&coeffs, 55, 60);
        assert_eq!((tail.first_row, tail.rows.len() / COEFF_DIM), (42, 18));
    }
}
