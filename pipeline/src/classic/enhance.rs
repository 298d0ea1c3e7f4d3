//! `enhancer=gfpgan` for the classic engine: rendered frames are buffered with their five face
//! points, restored a network batch at a time ([`EnhancerSlot::enhance`]) and only then pushed to
//! the sink, in order.
//!
//! The points are exact: the renderer knows where it moved each of the 68 landmarks in every
//! frame, and the five come from them ([`points_from_68`]: eye-contour centres, nose tip, outer
//! mouth corners). No detection runs. The decoder noise is seeded by the request's `seed`.

use crate::engine::FrameSink;
use crate::error::{PipelineError, Result};
use crate::face::Point;
use crate::gfpgan::slot::DEFAULT_BATCH;
use crate::gfpgan::{points_from_68, EnhancerSlot, FacePoints};
use crate::image::RgbImage;
use std::sync::Arc;
use std::time::Instant;
use tch::Tensor;

/// Frames waiting for the enhancer.
pub(super) struct EnhanceBuffer {
    slot: Arc<EnhancerSlot>,
    seed: u64,
    /// (width, height) of the buffered frames.
    size: (u32, u32),
    pixels: Vec<u8>,
    points: Vec<FacePoints>,
    /// Milliseconds spent enhancing.
    pub ms: f64,
}

impl EnhanceBuffer {
    pub fn new(slot: Arc<EnhancerSlot>, seed: u64) -> Self {
        Self { slot, seed, size: (0, 0), pixels: Vec::new(), points: Vec::with_capacity(DEFAULT_BATCH), ms: 0.0 }
    }

    /// Keep a copy of `frame` with the 68 landmarks it was rendered with (frame pixels); true
    /// when a batch is full and should be flushed.
    pub fn push(&mut self, frame: &RgbImage, landmarks: &[Point]) -> Result<bool> {
        if self.points.is_empty() {
            self.size = (frame.width, frame.height);
        } else if self.size != (frame.width, frame.height) {
            return Err(PipelineError::Internal("enhancer: frame size changed within a clip".into()));
        }
        self.points.push(points_from_68(landmarks)?);
        self.pixels.extend_from_slice(&frame.data);
        Ok(self.points.len() >= DEFAULT_BATCH)
    }

    /// Enhance the buffered frames and push them to `sink`; returns how many were pushed.
    pub fn flush(&mut self, sink: &mut dyn FrameSink) -> Result<usize> {
        let n = self.points.len();
        if n == 0 {
            return Ok(0);
        }
        let t = Instant::now();
        let (w, h) = self.size;
        let frames = Tensor::from_slice(&self.pixels).view([n as i64, h as i64, w as i64, 3]);
        let out = self.slot.enhance(&frames, &self.points, self.seed)?.contiguous();
        let data = Vec::<u8>::try_from(out.flatten(0, -1))
            .map_err(|e| PipelineError::Internal(format!("reading enhanced frames: {e}")))?;
        self.ms += crate::ms_since(t);
        self.points.clear();
        self.pixels.clear();
        let per_frame = (w * h * 3) as usize;
        for chunk in data.chunks_exact(per_frame) {
            sink.push(&RgbImage::from_raw(w, h, chunk.to_vec())?)?;
        }
        Ok(n)
    }
}
