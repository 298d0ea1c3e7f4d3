//! The face helper without detection, batched: given each frame's five face points, align the
//! faces to the template ([`super::align`]), warp the crops, restore them through the network in
//! batches, and paste them back through the inverse affine (`upscale_factor=1`), all on the
//! tensor side ([`super::warp`]).
//!
//! Every step mirrors `GFPGANer.enhance` + `FaceRestoreHelper` numerically: 8-bit crops,
//! `(x / 255 - 0.5) / 0.5` input, output clamped to [-1, 1] and rounded back to 8 bits, and the
//! float blend truncated to 8 bits. The blend weight is one of facexlib's two masks:
//! - with a [`FaceParser`] (`parsing_parsenet.pth` present): GFPGANer's own `use_parse=True`
//!   mask, computed per restored face ([`FaceParser::face_masks`]) and warped back bilinearly
//!   (the reference passes `flags=3`, `INTER_AREA`, which `cv2.warpAffine` runs as
//!   `INTER_LINEAR`); the pasted face is the warped restored face as is;
//! - without one: the square soft mask (`use_parse=False`), the warped crop square eroded and
//!   blurred, which depends only on the geometry ([`PasteMasks`], cacheable) and also covers
//!   hair / neck edges of the crop with restored pixels.

use super::align::{fit_affine, FacePoints};
use super::conv::ConvPath;
use super::network::{in_batches, GfpganNet};
use super::noise::Noise;
use super::parse::FaceParser;
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
    /// The ParseNet mask; `None`: the square soft mask.
    parser: Option<FaceParser>,
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
        Self { net, parser: None, max_batch }
    }

    /// Paste back through `parser`'s face mask (GFPGANer's `use_parse=True`) instead of the square
    /// mask. Its faces must be the network's (512: GFPGANer's resize to the parser is the identity).
    pub fn with_parser(mut self, mut parser: FaceParser) -> Result<Self> {
        if parser.face_size() != self.face_size() {
            return Err(PipelineError::Internal(format!(
                "parse mask for {0}x{0} faces, the network restores {1}x{1}",
                parser.face_size(),
                self.face_size()
            )));
        }
        parser.max_batch = self.max_batch;
        self.parser = Some(parser);
        Ok(self)
    }

    /// The face parser when the paste-back uses the ParseNet mask.
    pub fn parser(&self) -> Option<&FaceParser> {
        self.parser.as_ref()
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

    /// Run the restoration network and the face parser on `path` (see [`GfpganNet::set_conv_path`]).
    pub fn set_conv_path(&mut self, path: ConvPath) {
        self.net.set_conv_path(path);
        if let Some(parser) = &mut self.parser {
            parser.network_mut().set_conv_path(path);
        }
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
        let maps = self.net.noise_maps(noise);
        in_batches(crops, self.max_batch, self.net.device(), |x| {
            let y = self.net.forward(x, &maps)?;
            let img = ((y.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0).round().to_kind(Kind::Uint8);
            Ok(img.permute([0, 2, 3, 1]).to_device(crops.device()))
        })
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
    /// inverse of each `affines[i]` (`paste_faces_to_input_image`): with the parse mask when the
    /// enhancer has a parser, else with the square soft mask.
    pub fn paste(&self, frames: &Tensor, restored: &Tensor, affines: &[Affine]) -> Result<Tensor> {
        let (h, w) = Self::check_frames(frames, affines.len())?;
        if self.parser.is_some() {
            return self.paste_parsed(frames, restored, affines);
        }
        let masks = self.paste_masks((h, w), affines, frames.device())?;
        self.paste_with_masks(frames, restored, &masks)
    }

    fn check_restored(&self, restored: &Tensor, n: usize) -> Result<()> {
        let s = self.face_size();
        if restored.size() != [n as i64, s, s, 3] || restored.kind() != Kind::Uint8 {
            return Err(bad_input(format!("restored faces {:?} do not match {n} frames of {s}x{s}", restored.size())));
        }
        Ok(())
    }

    /// The parse-mask blend weight of each restored face (n, s, s, 3) uint8 in frame coordinates:
    /// (n, h, w, 1) float on `device` (`inv_soft_mask` of `use_parse=True`).
    pub fn parse_soft_masks(
        &self,
        frame_hw: (i64, i64),
        restored: &Tensor,
        affines: &[Affine],
        device: Device,
    ) -> Result<Tensor> {
        let parser = self.parser.as_ref().ok_or_else(|| PipelineError::Internal("no face parser loaded".into()))?;
        self.check_restored(restored, affines.len())?;
        let inverse: Vec<Affine> = affines.iter().map(Affine::invert).collect();
        let masks = parser.face_masks(restored)?.to_device(device);
        warp_affine_f32(&masks, &inverse, frame_hw, 0.0)
    }

    /// [`Self::paste`] with the parse mask (`use_parse=True`): the mask of each restored face,
    /// warped back, blends the warped restored face (no erosion) over the frame.
    pub fn paste_parsed(&self, frames: &Tensor, restored: &Tensor, affines: &[Affine]) -> Result<Tensor> {
        let (h, w) = Self::check_frames(frames, affines.len())?;
        let device = frames.device();
        let soft = self.parse_soft_masks((h, w), restored, affines, device)?;
        let inverse: Vec<Affine> = affines.iter().map(Affine::invert).collect();
        let inv_restored = warp_affine_u8(&restored.to_device(device), &inverse, (h, w), &[0, 0, 0])?;
        Ok(blend(&soft, &inv_restored.to_kind(Kind::Float), frames))
    }

    /// [`Self::paste`] with precomputed masks (see [`Self::paste_masks`]).
    pub fn paste_with_masks(&self, frames: &Tensor, restored: &Tensor, masks: &PasteMasks) -> Result<Tensor> {
        let n = masks.affines.len();
        let (h, w) = Self::check_frames(frames, n)?;
        if (h, w) != masks.frame_hw {
            return Err(bad_input(format!("masks are for {:?} frames, got {h}x{w}", masks.frame_hw)));
        }
        self.check_restored(restored, n)?;
        let device = frames.device();
        let inverse: Vec<Affine> = masks.affines.iter().map(Affine::invert).collect();
        let inv_restored = warp_affine_u8(&restored.to_device(device), &inverse, (h, w), &[0, 0, 0])?;
        let (soft, eroded) = (masks.soft.to_device(device), masks.eroded.to_device(device));
        let pasted_face = &eroded * inv_restored.to_kind(Kind::Float);
        Ok(blend(&soft, &pasted_face, frames))
    }

    /// Align, restore and paste back one face per frame: frames (n, h, w, 3) uint8 RGB with
    /// their five points -> enhanced frames, same shape and device.
    pub fn enhance(&self, frames: &Tensor, points: &[FacePoints], noise: &Noise) -> Result<Tensor> {
        let aligned = self.align(frames, points)?;
        let restored = self.restore(&aligned.crops, noise)?;
        self.paste(frames, &restored, &aligned.affines)
    }
}

/// `soft * face + (1 - soft) * frame`, truncated to 8 bits like the reference's `astype(uint8)`.
fn blend(soft: &Tensor, face: &Tensor, frames: &Tensor) -> Tensor {
    let blended = soft * face + (-soft + 1.0) * frames.to_kind(Kind::Float);
    blended.floor().clamp(0.0, 255.0).to_kind(Kind::Uint8)
}
