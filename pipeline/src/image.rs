//! Owned RGB images and conversions to/from OpenCV; decoding and validation of uploads.

#[cfg(feature = "opencv")]
use crate::error::ResultExt;
use crate::error::{PipelineError, Result};
#[cfg(feature = "opencv")]
use opencv::core::{Mat, CV_8UC3};
#[cfg(feature = "opencv")]
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

/// A packed 8-bit RGB image, row-major, `data.len() == width * height * 3`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, data: vec![0; width as usize * height as usize * 3] }
    }

    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        if data.len() != width as usize * height as usize * 3 {
            return Err(PipelineError::Internal(format!(
                "RGB buffer of {} bytes does not match {width}x{height}",
                data.len()
            )));
        }
        Ok(Self { width, height, data })
    }

    #[inline]
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Copy into an OpenCV `Mat` in BGR order (OpenCV's convention).
    #[cfg(feature = "opencv")]
    pub fn to_bgr_mat(&self) -> Result<Mat> {
        let mut mat = Mat::new_rows_cols_with_default(
            self.height as i32,
            self.width as i32,
            CV_8UC3,
            opencv::core::Scalar::all(0.0),
        )
        .ctx("allocate Mat")?;
        let dst = mat.data_bytes_mut().ctx("Mat bytes")?;
        for (d, s) in dst.chunks_exact_mut(3).zip(self.data.chunks_exact(3)) {
            d[0] = s[2];
            d[1] = s[1];
            d[2] = s[0];
        }
        Ok(mat)
    }

    /// Copy from a continuous 8-bit BGR `Mat`.
    #[cfg(feature = "opencv")]
    pub fn from_bgr_mat(mat: &Mat) -> Result<Self> {
        if mat.typ() != CV_8UC3 {
            return Err(PipelineError::Internal(format!("expected CV_8UC3 Mat, got type {}", mat.typ())));
        }
        let mat = if mat.is_continuous() { mat.clone() } else { mat.try_clone().ctx("clone Mat")? };
        let src = mat.data_bytes().ctx("Mat bytes")?;
        let mut data = vec![0u8; src.len()];
        for (d, s) in data.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
            d[0] = s[2];
            d[1] = s[1];
            d[2] = s[0];
        }
        Ok(Self { width: mat.cols() as u32, height: mat.rows() as u32, data })
    }
}

/// Container formats we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// Identify the format from magic bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }
}

/// Read the pixel dimensions from the file header without decoding pixels, so oversized images
/// (decompression bombs) are refused before any allocation.
pub fn header_dimensions(bytes: &[u8]) -> Result<(ImageFormat, u32, u32)> {
    let not_image = |why: &str| PipelineError::NotAnImage(why.to_string());
    let format = ImageFormat::sniff(bytes).ok_or_else(|| not_image("unknown format (expected PNG, JPEG or WebP)"))?;
    let be32 = |b: &[u8], i: usize| b.get(i..i + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    let le16 = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u32);
    let le24 = |b: &[u8], i: usize| b.get(i..i + 3).map(|s| u32::from_le_bytes([s[0], s[1], s[2], 0]));
    let dims = match format {
        ImageFormat::Png => {
            if bytes.get(12..16) != Some(b"IHDR") {
                return Err(not_image("PNG without IHDR header"));
            }
            be32(bytes, 16).zip(be32(bytes, 20))
        }
        ImageFormat::Jpeg => jpeg_dimensions(bytes),
        ImageFormat::Webp => match bytes.get(12..16) {
            Some(b"VP8 ") => le16(bytes, 26).zip(le16(bytes, 28)).map(|(w, h)| (w & 0x3fff, h & 0x3fff)),
            Some(b"VP8L") => bytes.get(21..25).map(|b| {
                let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                ((v & 0x3fff) + 1, ((v >> 14) & 0x3fff) + 1)
            }),
            Some(b"VP8X") => le24(bytes, 24).zip(le24(bytes, 27)).map(|(w, h)| (w + 1, h + 1)),
            _ => None,
        },
    };
    match dims {
        Some((w, h)) if w > 0 && h > 0 => Ok((format, w, h)),
        _ => Err(not_image("truncated or corrupt image header")),
    }
}

/// Walk JPEG markers to the first SOFn segment.
fn jpeg_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xD8 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let s = b.get(i + 5..i + 9)?;
            let h = u16::from_be_bytes([s[0], s[1]]) as u32;
            let w = u16::from_be_bytes([s[2], s[3]]) as u32;
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// Decode PNG / JPEG / WebP bytes to RGB: EXIF orientation applied, alpha composited over white,
/// palette / grey / 16-bit inputs converted. Refuses images over `max_pixels` before decoding.
#[cfg(feature = "opencv")]
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    use opencv::imgcodecs::{imdecode, IMREAD_COLOR, IMREAD_UNCHANGED};
    let (format, w, h) = header_dimensions(bytes)?;
    if w as u64 * h as u64 > max_pixels {
        return Err(PipelineError::ImageTooLarge { width: w, height: h, max_pixels });
    }
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(PipelineError::NotAnImage("truncated JPEG (no end-of-image marker)".into()));
    }
    let buf = opencv::core::Vector::<u8>::from_slice(bytes);
    // JPEG: IMREAD_COLOR applies the EXIF orientation. PNG/WebP: keep alpha to composite it.
    let flags = if format == ImageFormat::Jpeg { IMREAD_COLOR } else { IMREAD_UNCHANGED };
    let mat = imdecode(&buf, flags).map_err(|e| PipelineError::NotAnImage(e.message.clone()))?;
    if mat.empty() || mat.cols() <= 0 || mat.rows() <= 0 {
        return Err(PipelineError::NotAnImage("the decoder could not read the pixel data".into()));
    }
    let bgr = to_bgr8(&mat)?;
    RgbImage::from_bgr_mat(&bgr)
}

#[cfg(feature = "opencv")]
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Normalise any decoded Mat (1/3/4 channels, 8/16 bit) to 8-bit BGR, compositing alpha over white.
#[cfg(feature = "opencv")]
fn to_bgr8(mat: &Mat) -> Result<Mat> {
    use opencv::core::{CV_16U, CV_8U};
    use opencv::imgproc::{cvt_color, COLOR_GRAY2BGR};
    let mut m8 = Mat::default();
    match mat.depth() {
        d if d == CV_8U => m8 = mat.clone(),
        d if d == CV_16U => mat.convert_to(&mut m8, CV_8U, 1.0 / 257.0, 0.0).ctx("16-bit to 8-bit")?,
        d => return Err(PipelineError::NotAnImage(format!("unsupported pixel depth {d}"))),
    }
    let mut out = Mat::default();
    match m8.channels() {
        3 => out = m8,
        1 => cvt_color(&m8, &mut out, COLOR_GRAY2BGR, 0).ctx("grey to BGR")?,
        4 => {
            let src = m8.data_bytes().ctx("BGRA bytes")?.to_vec();
            let mut dst = Vec::with_capacity(src.len() / 4 * 3);
            for px in src.chunks_exact(4) {
                let a = px[3] as u32;
                for c in &px[..3] {
                    dst.push(((*c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
                }
            }
            let rows = m8.rows();
            let flat = Mat::from_slice(&dst).ctx("composite")?;
            out = flat.reshape(3, rows).ctx("reshape")?.try_clone().ctx("clone")?;
        }
        c => return Err(PipelineError::NotAnImage(format!("unsupported channel count {c}"))),
    }
    Ok(out)
}

/// Resize a `Mat` with OpenCV: INTER_AREA when either side shrinks, else INTER_CUBIC. Every
/// resize of a picture in the pipeline goes through here.
#[cfg(feature = "opencv")]
pub fn resize_mat(m: &Mat, width: u32, height: u32) -> Result<Mat> {
    use opencv::imgproc::{INTER_AREA, INTER_CUBIC};
    let shrink = (width as i32) < m.cols() || (height as i32) < m.rows();
    let mut dst = Mat::default();
    let size = opencv::core::Size::new(width as i32, height as i32);
    opencv::imgproc::resize(m, &mut dst, size, 0.0, 0.0, if shrink { INTER_AREA } else { INTER_CUBIC })
        .ctx("resize")?;
    Ok(dst)
}

/// [`resize_mat`] for an [`RgbImage`].
#[cfg(feature = "opencv")]
pub fn resize(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    RgbImage::from_bgr_mat(&resize_mat(&img.to_bgr_mat()?, width, height)?)
}

#[cfg(all(test, feature = "opencv"))]
mod tests {
    use super::*;

    #[test]
    fn sniff_rejects_text() {
        assert!(matches!(header_dimensions(b"hello world, not an image"), Err(PipelineError::NotAnImage(_))));
    }

    #[test]
    fn png_header_too_short_is_not_an_image() {
        let b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0";
        assert!(matches!(header_dimensions(b), Err(PipelineError::NotAnImage(_))));
    }

    #[test]
    fn png_bomb_is_refused_before_decoding() {
        // A valid-looking header claiming 100000 x 100000 pixels and no data.
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&100_000u32.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        match decode(&b, 4096 * 4096) {
            Err(PipelineError::ImageTooLarge { width, height, .. }) => assert_eq!((width, height), (100_000, 100_000)),
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
    }
}
