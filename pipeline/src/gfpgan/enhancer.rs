//! The face helper without detection, batched: given each frame's five face points, align the
//! faces to the template ([`super::align`]), warp the crops, restore them through the network in
//! batches, and paste them back through the inverse affine with facexlib's soft square mask
//! (`use_parse=False`, `upscale_factor=1`), all on the tensor side ([`super::warp`]).
//!
//! Every step mirrors `GFPGANer.enhance` + `FaceRestoreHelper` numerically: 8-bit crops,
//! `(x / 255 - 0.5) / 0.5` input, output clamped to [-1, 1] and rounded back to 8 bits, the
//! eroded + blurred warped mask, and the float blend truncated to 8 bits.
//!
//! Difference from `GFPGANer`: it builds its helper with `use_parse=True`, blending through a
//! face-parsing mask from a second network (facexlib's ParseNet, `parsing_parsenet.pth`). That
//! network is not ported; the paste-back here is facexlib's square soft mask (`use_parse=False`),
//! which also covers hair/neck edges of the crop with the restored pixels.

use super::align::{fit_affine, FacePoints};
use super::network::GfpganNet;
use super::noise::Noise;
use super::warp::{erode, gaussian_blur, warp_affine_f32, warp_affine_u8, Affine};
use super::{load_network, GfpganConfig};
use crate::{PipelineError, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Border colour of the warped crop: facexlib's gray (135, 133, 132) BGR, here in RGB order.
pub const CROP_BORDER_RGB: [u8; 3] = [132, 133, 135];

/// Faces cut out of a batch of frames.
#[derive(Debug)]
pub struct AlignedFaces {
    /// (n, s, s, 3) uint8 RGB crops.
    pub crops: Tensor,
    /// Frame -> crop matrix of each face.
    pub affines: Vec<Affine>,
}

/// The geometry-only part of the paste-back for a batch of frames (see
/// [`FaceEnhancer::paste_masks`]).
#[derive(Debug)]
pub struct PasteMasks {
    affines: Vec<Affine>,
    frame_hw: (i64, i64),
    /// (n, h, w, 1) float: the warped square mask eroded by 2 px (`inv_mask_erosion`).
    eroded: Tensor,
    /// (n, h, w, 1) float: the blend weight (`inv_soft_mask`).
    soft: Tensor,
}

impl PasteMasks {
    pub fn affines(&self) -> &[Affine] {
        &self.affines
    }

    /// The masks of the first frame for `n` frames of the same geometry, as expanded views (no
    /// copy): how a face that does not move reuses one computation for every batch.
    pub fn repeat_first(&self, n: usize) -> Result<PasteMasks> {
        let first = *self.affines.first().ok_or_else(|| bad_input("no paste masks to repeat".into()))?;
        let (h, w) = self.frame_hw;
        let view = |t: &Tensor| t.narrow(0, 0, 1).expand([n as i64, h, w, 1], false);
        Ok(PasteMasks {
            affines: vec![first; n],
            frame_hw: self.frame_hw,
            eroded: view(&self.eroded),
            soft: view(&self.soft),
        })
    }
}

/// GFPGAN restoration of one face per frame.
#[derive(Debug)]
pub struct FaceEnhancer {
    net: GfpganNet,
    /// Faces per network call; frames are processed in chunks of this size. 1 on the CPU, where
    /// larger batches were slower (at 512 x 512 the activations of 4 faces no longer fit any
    /// cache: 4 faces per call took 1.2-1.5x as long per face), 8 elsewhere.
    pub max_batch: usize,
}

fn bad_input(reason: String) -> PipelineError {
    PipelineError::InvalidOption { field: "enhancer frames", reason }
}

impl FaceEnhancer {
    /// Load `GFPGANv1.4.pth` (or any file with that layout) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Ok(Self::new(load_network(path, &GfpganConfig::v1_4(), device)?))
    }

    pub fn new(net: GfpganNet) -> Self {
        let max_batch = Self::default_batch(net.device());
        Self { net, max_batch }
    }

    /// The default of [`Self::max_batch`] on `device`.
    pub fn default_batch(device: Device) -> usize {
        if device == Device::Cpu {
            1
        } else {
            8
        }
    }

    pub fn network_mut(&mut self) -> &mut GfpganNet {
        &mut self.net
    }

    pub fn network(&self) -> &GfpganNet {
        &self.net
    }

    /// Side of the aligned face (the network's `out_size`).
    pub fn face_size(&self) -> i64 {
        self.net.config().out_size
    }

    fn check_frames(frames: &Tensor, n: usize) -> Result<(i64, i64)> {
        let s = frames.size();
        if s.len() != 4 || s[3] != 3 || frames.kind() != Kind::Uint8 || s[0] != n as i64 {
            return Err(bad_input(format!("expected ({n}, h, w, 3) uint8 RGB frames, got {s:?} {:?}", frames.kind())));
        }
        Ok((s[1], s[2]))
    }

    /// Fit each frame's matrix and warp its face crop (`align_warp_face`, constant border).
    pub fn align(&self, frames: &Tensor, points: &[FacePoints]) -> Result<AlignedFaces> {
        Self::check_frames(frames, points.len())?;
        let s = self.face_size();
        let affines = points.iter().map(|p| fit_affine(p, s)).collect::<Result<Vec<_>>>()?;
        let crops = warp_affine_u8(frames, &affines, (s, s), &CROP_BORDER_RGB)?;
        Ok(AlignedFaces { crops, affines })
    }

    /// Restore (n, s, s, 3) uint8 crops, `max_batch` at a time -> (n, s, s, 3) uint8.
    pub fn restore(&self, crops: &Tensor, noise: &Noise) -> Result<Tensor> {
        let device = self.net.device();
        let maps = self.net.noise_maps(noise);
        let n = crops.size()[0];
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (self.max_batch.max(1) as i64).min(n - start);
            let chunk = crops.narrow(0, start, len).to_device(device);
            let x = (chunk.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0 - 0.5) / 0.5;
            let y = self.net.forward(&x, &maps)?;
            let img = ((y.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0).round().to_kind(Kind::Uint8);
            out.push(img.permute([0, 2, 3, 1]).to_device(crops.device()));
            start += len;
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// The paste-back masks of `affines` for frames of `frame_hw` (h, w), computed once per
    /// distinct matrix. They depend only on the geometry: an engine whose face does not move
    /// (still mode, an idle loop, a repeated source fit) computes them once per avatar and
    /// passes them to [`Self::paste_with_masks`].
    pub fn paste_masks(&self, frame_hw: (i64, i64), affines: &[Affine], device: Device) -> Result<PasteMasks> {
        let (h, w) = frame_hw;
        let s = self.face_size();
        let mut unique: Vec<Affine> = Vec::new();
        let mut slot = Vec::with_capacity(affines.len());
        for a in affines {
            let at = unique.iter().position(|u| u == a).unwrap_or_else(|| {
                unique.push(*a);
                unique.len() - 1
            });
            slot.push(at as i64);
        }
        let inverse: Vec<Affine> = unique.iter().map(Affine::invert).collect();
        let ones = Tensor::ones([1, s, s, 1], (Kind::Float, device));
        let inv_mask = warp_affine_f32(&ones, &inverse, (h, w), 0.0)?.permute([0, 3, 1, 2]); // (u, 1, h, w)
        let eroded = erode(&inv_mask, 2)?;
        let areas = Vec::<f64>::try_from(
            eroded.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Double).to_device(Device::Cpu),
        )
        .map_err(|e| PipelineError::Internal(format!("mask area: {e}")))?;
        let mut soft = Vec::with_capacity(areas.len());
        for (i, area) in areas.iter().enumerate() {
            // fusion edge from the face area, as the reference: int(sqrt(area)) // 20
            let w_edge = (area.max(0.0).sqrt() as i64) / 20;
            let center = erode(&eroded.narrow(0, i as i64, 1), w_edge * 2)?;
            soft.push(gaussian_blur(&center, w_edge * 2 + 1)?);
        }
        let index = Tensor::from_slice(&slot).to_device(device);
        let soft = Tensor::cat(&soft, 0).permute([0, 2, 3, 1]).index_select(0, &index); // (n, h, w, 1)
        let eroded = eroded.permute([0, 2, 3, 1]).index_select(0, &index);
        Ok(PasteMasks { affines: affines.to_vec(), frame_hw, eroded, soft })
    }

    /// Paste restored faces (n, s, s, 3) uint8 back into `frames` (n, h, w, 3) uint8 through the
    /// inverse of each `affines[i]` (`paste_faces_to_input_image`, square soft mask).
    pub fn paste(&self, frames: &Tensor, restored: &Tensor, affines: &[Affine]) -> Result<Tensor> {
        let (h, w) = Self::check_frames(frames, affines.len())?;
        let masks = self.paste_masks((h, w), affines, frames.device())?;
        self.paste_with_masks(frames, restored, &masks)
    }

    /// [`Self::paste`] with precomputed masks (see [`Self::paste_masks`]).
    pub fn paste_with_masks(&self, frames: &Tensor, restored: &Tensor, masks: &PasteMasks) -> Result<Tensor> {
        let n = masks.affines.len();
        let (h, w) = Self::check_frames(frames, n)?;
        let s = self.face_size();
        if (h, w) != masks.frame_hw {
            return Err(bad_input(format!("masks are for {:?} frames, got {h}x{w}", masks.frame_hw)));
        }
        if restored.size() != [n as i64, s, s, 3] {
            return Err(bad_input(format!("restored faces {:?} do not match {n} frames of {s}x{s}", restored.size())));
        }
        let device = frames.device();
        let inverse: Vec<Affine> = masks.affines.iter().map(Affine::invert).collect();
        let inv_restored = warp_affine_u8(&restored.to_device(device), &inverse, (h, w), &[0, 0, 0])?;
        let (soft, eroded) = (masks.soft.to_device(device), masks.eroded.to_device(device));
        let pasted_face = &eroded * inv_restored.to_kind(Kind::Float);
        let blended = &soft * pasted_face + (-&soft + 1.0) * frames.to_kind(Kind::Float);
        Ok(blended.floor().clamp(0.0, 255.0).to_kind(Kind::Uint8))
    }

    /// Align, restore and paste back one face per frame: frames (n, h, w, 3) uint8 RGB with
    /// their five points -> enhanced frames, same shape and device.
    pub fn enhance(&self, frames: &Tensor, points: &[FacePoints], noise: &Noise) -> Result<Tensor> {
        let aligned = self.align(frames, points)?;
        let restored = self.restore(&aligned.crops, noise)?;
        self.paste(frames, &restored, &aligned.affines)
    }
}
