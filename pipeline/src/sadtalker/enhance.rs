//! `enhancer=gfpgan` for the sadtalker engine: each batch of rendered uint8 frames goes through
//! the engine's GFPGAN enhancer ([`EnhancerSlot::enhance`]) before it is written out.
//!
//! Where the face is: the renderer does not report where it moved the face, so the five points
//! are the source's, as precompute cached them (the detector's five points of
//! `face_detection:`), mapped into the rendered frame: into the square crop the renderer draws
//! (`crop` / `resize`: the same mapping as the engine's face canvas), or left in image pixels
//! (`full`, whose frames are the original picture with the face pasted back). SadTalker keeps
//! the head near its source position, so the fixed points stay close; re-estimating them per
//! frame (a detector pass on the rendered frames) can come later. Because the points do not
//! change within a request, the fit to the template and the paste masks are computed once and
//! reused for every batch (and by later requests for the same avatar, see
//! [`EnhancerSlot`]). The decoder noise is seeded by the request's `seed`.

use super::engine::{canvas_mode, SadTalkerEngine};
use crate::classic::CanvasMap;
use crate::engine::{AvatarInput, Enhancer, GenerateOptions, PreprocessMode};
use crate::error::Result;
use crate::gfpgan::{EnhancerSlot, FacePoints, GfpganConfig};
use tch::Tensor;

/// The five source points of `avatar` in the frames the engine renders at `size` for `mode`.
pub fn rendered_points(avatar: &AvatarInput<'_>, size: u32, mode: PreprocessMode) -> Result<FacePoints> {
    let a = avatar.analysis;
    if mode == PreprocessMode::Full {
        return Ok(a.face.points.map(|p| p.map(f64::from)));
    }
    let map = CanvasMap::of(avatar.image.width, avatar.image.height, &a.crop, canvas_mode(mode), size)?;
    Ok(a.face.points.map(|p| map.to_canvas(p).map(f64::from)))
}

/// The enhancer step of one render call: does nothing unless `enhancer=gfpgan`.
pub(super) struct FrameEnhance<'a> {
    step: Option<(&'a EnhancerSlot, FacePoints, u64)>,
}

impl<'a> FrameEnhance<'a> {
    pub(super) fn new(slot: &'a EnhancerSlot, avatar: &AvatarInput<'_>, opts: &GenerateOptions) -> Result<Self> {
        let step = match opts.enhancer {
            Enhancer::None => None,
            Enhancer::Gfpgan => {
                slot.check("sadtalker")?;
                Some((slot, rendered_points(avatar, opts.size, opts.preprocess)?, opts.seed))
            }
        };
        Ok(Self { step })
    }

    /// Rendered frames (n, H, W, 3) uint8 -> the same frames with the face restored.
    pub(super) fn apply(&self, frames: Tensor) -> Result<Tensor> {
        match &self.step {
            None => Ok(frames),
            Some((slot, points, seed)) => {
                let n = frames.size().first().copied().unwrap_or(0).max(0) as usize;
                slot.enhance(&frames, &vec![*points; n], *seed)
            }
        }
    }
}

impl SadTalkerEngine {
    /// Read the `GFPGANv1.4.pth` of the checkpoints directory as weights of architecture `config`
    /// (tests run stand-ins of reduced width through the same path).
    pub fn with_enhancer_config(mut self, config: GfpganConfig) -> Self {
        self.enhancer = EnhancerSlot::new(self.enhancer.path().to_path_buf(), config, self.enhancer.device());
        self
    }
}
