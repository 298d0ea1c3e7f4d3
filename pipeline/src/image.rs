//! Owned RGB images and conversions to/from OpenCV; decoding and validation of uploads.

use crate::error::{PipelineError, Result, ResultExt};
use opencv::core::{Mat, CV_8UC3};
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
