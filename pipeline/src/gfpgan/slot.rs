//! The engines' face enhancer: `GFPGANv1.4.pth` found in the checkpoints directory, loaded once
//! on first use onto the engine's device (the file is about 350 MB), then run on the model
//! thread on each batch of rendered frames with their five face points and the request's seed.
//! It also owns the option check both engines share (no file: a 422 naming it and where it goes)
//! and a small in-memory cache of the paste masks of faces that do not move.
//!
//! The paste-back mask: when facexlib's `parsing_parsenet.pth` lies next to the GFPGAN weights it
//! is loaded with them and every restored face is blended through its parse mask, like GFPGANer;
//! without it the square soft mask is used (the file is optional: no error, one log line at load
//! says which mask is in use). The parse mask depends on each restored face, so it is computed
//! per frame; the cache of square masks only serves the square mask.

use super::align::{fit_affine, FacePoints};
use super::enhancer::{FaceEnhancer, PasteMasks, CROP_BORDER_RGB};
use super::parse::{load_parsenet, FaceParser, ParseNetConfig, PARSENET_FILE};
use super::warp::{warp_affine_u8, Affine};
use super::{load_network, GfpganConfig, Noise, GFPGAN_V1_4_FILE};
use crate::{PipelineError, Result};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Geometries (frame size + face matrix) whose paste masks are kept: a few avatars in turn.
const CACHED_GEOMETRIES: usize = 4;

/// The network once loaded, and the masks of recent fixed geometries (most recent first).
#[derive(Default)]
struct State {
    enhancer: Option<FaceEnhancer>,
    masks: Vec<((i64, i64), Affine, PasteMasks)>,
}

/// One engine's GFPGAN enhancer: where its weights are, their architecture, the device, and the
/// network once it was needed.
pub struct EnhancerSlot {
    path: PathBuf,
    config: GfpganConfig,
    /// The optional ParseNet weights (next to `path`) and their architecture.
    parse_path: PathBuf,
    parse_config: ParseNetConfig,
    device: Device,
    /// tch modules are not `Sync`; one device owner thread drives the engine, so the lock is
    /// uncontended. A panic inside an earlier call leaves the weights as they were (inference only
    /// reads them), so a poisoned lock is taken over.
    state: Mutex<State>,
}

impl std::fmt::Debug for EnhancerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnhancerSlot")
            .field("path", &self.path)
            .field("parse_path", &self.parse_path)
            .field("device", &self.device)
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

/// `Ok` when `path` (the GFPGAN weights) is a file; else the 422-class
/// [`PipelineError::Unsupported`] saying which file is missing and where it goes.
pub fn check_weights_file(engine: &'static str, path: &Path) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let dir = path.parent().map(|d| d.display().to_string()).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Err(PipelineError::Unsupported {
        engine,
        what: format!(
            "enhancer=gfpgan needs the GFPGAN v1.4 weights `{name}`, which are not in the checkpoints directory \
             {dir} (place the file there; see checkpoints/README.md)"
        ),
    })
}

impl EnhancerSlot {
    /// The official `GFPGANv1.4.pth` in `checkpoints`, run on `device`.
    pub fn official(checkpoints: &Path, device: Device) -> Self {
        Self::new(checkpoints.join(GFPGAN_V1_4_FILE), GfpganConfig::v1_4(), device)
    }

    /// Weights of architecture `config` at `path` (tests use reduced widths); the optional
    /// ParseNet is looked for as [`PARSENET_FILE`] in the same folder, official architecture.
    pub fn new(path: PathBuf, config: GfpganConfig, device: Device) -> Self {
        let parse_path = path.with_file_name(PARSENET_FILE);
        let parse_config = ParseNetConfig::official();
        Self { path, config, parse_path, parse_config, device, state: Mutex::new(State::default()) }
    }

    /// Read the optional ParseNet file as architecture `config` (tests use reduced widths).
    pub fn with_parse_config(mut self, config: ParseNetConfig) -> Self {
        self.parse_config = config;
        self
    }

    /// Where the optional ParseNet weights are looked for.
    pub fn parse_path(&self) -> &Path {
        &self.parse_path
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the network was loaded (by an earlier [`Self::enhance`]).
    pub fn is_loaded(&self) -> bool {
        self.lock().enhancer.is_some()
    }

    /// Whether the loaded enhancer pastes through the ParseNet mask (`false` before loading).
    pub fn uses_parse_mask(&self) -> bool {
        self.lock().enhancer.as_ref().is_some_and(|e| e.parser().is_some())
    }

    /// The enhancer: GFPGAN from `path`, plus the ParseNet when its file is present.
    fn load(&self) -> Result<FaceEnhancer> {
        let t = Instant::now();
        let enhancer = FaceEnhancer::new(load_network(&self.path, &self.config, self.device)?);
        let gfpgan_ms = crate::ms_since(t);
        tracing::info!(file = %self.path.display(), device = ?self.device, ms = gfpgan_ms, "gfpgan enhancer loaded");
        if !self.parse_path.is_file() {
            tracing::info!(
                mask = "square",
                missing = %self.parse_path.display(),
                "gfpgan paste-back: square soft mask (no ParseNet weights; GFPGANer itself uses the parse mask)"
            );
            return Ok(enhancer);
        }
        let t = Instant::now();
        let parser = FaceParser::new(load_parsenet(&self.parse_path, &self.parse_config, self.device)?)?;
        tracing::info!(
            mask = "parsenet",
            file = %self.parse_path.display(),
            ms = crate::ms_since(t),
            "gfpgan paste-back: ParseNet face mask"
        );
        enhancer.with_parser(parser)
    }

    /// Whether `enhancer=gfpgan` can be served: the weights file is present (see
    /// [`check_weights_file`]). The file is only read on first use; a file that is present but
    /// does not load fails that job with a [`PipelineError::Checkpoint`] naming it.
    pub fn check(&self, engine: &'static str) -> Result<()> {
        check_weights_file(engine, &self.path)
    }

    /// Restore the face of every frame: frames (n, h, w, 3) uint8 RGB on any device with one
    /// [`FacePoints`] per frame (frame pixels) -> enhanced frames, same shape and device. The
    /// decoder noise is [`Noise::Seeded`] by `seed`, the same maps for every frame and batch.
    pub fn enhance(&self, frames: &Tensor, points: &[FacePoints], seed: u64) -> Result<Tensor> {
        let size = frames.size();
        if size.len() != 4 || size[0] != points.len() as i64 || size[3] != 3 || frames.kind() != Kind::Uint8 {
            return Err(PipelineError::Internal(format!(
                "enhancer: expected ({}, h, w, 3) uint8 frames, got {size:?} {:?}",
                points.len(),
                frames.kind()
            )));
        }
        if points.is_empty() {
            return Ok(frames.shallow_clone());
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.enhancer.is_none() {
            state.enhancer = Some(self.load()?);
        }
        let enhancer = state.enhancer.as_ref().ok_or_else(|| PipelineError::Internal("enhancer missing".into()))?;
        let face = enhancer.face_size();
        // One fit per distinct set of points (an engine whose face does not move repeats them).
        let mut affines: Vec<Affine> = Vec::with_capacity(points.len());
        for (i, p) in points.iter().enumerate() {
            let same = i > 0 && points[i - 1] == *p;
            affines.push(if same { affines[i - 1] } else { fit_affine(p, face)? });
        }
        let on_device = frames.to_device(self.device);
        let crops = warp_affine_u8(&on_device, &affines, (face, face), &CROP_BORDER_RGB)?;
        let restored = enhancer.restore(&crops, &Noise::Seeded(seed))?;
        if enhancer.parser().is_some() {
            let out = enhancer.paste_parsed(&on_device, &restored, &affines)?;
            return Ok(out.to_device(frames.device()));
        }
        let hw = (size[1], size[2]);
        let masks = if affines.iter().all(|a| *a == affines[0]) {
            let at = state.masks.iter().position(|(h, a, _)| *h == hw && *a == affines[0]);
            let entry = match at {
                Some(i) => state.masks.remove(i),
                None => (hw, affines[0], enhancer.paste_masks(hw, &affines[..1], self.device)?),
            };
            let masks = entry.2.repeat_first(points.len())?;
            state.masks.insert(0, entry);
            state.masks.truncate(CACHED_GEOMETRIES);
            masks
        } else {
            enhancer.paste_masks(hw, &affines, self.device)?
        };
        let out = enhancer.paste_with_masks(&on_device, &restored, &masks)?;
        Ok(out.to_device(frames.device()))
    }
}

/// Frames an engine hands to [`EnhancerSlot::enhance`] at once (one network batch of
/// [`FaceEnhancer`]'s default size).
pub const DEFAULT_BATCH: usize = 8;
