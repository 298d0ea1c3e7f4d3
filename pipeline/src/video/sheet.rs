//! Still images from a frame stream: the JPEG thumbnail of the first frame and a contact sheet
//! (every Nth frame tiled into one PNG) for looking at a clip at a glance.

use crate::error::{PipelineError, Result, ResultExt};
use crate::image::RgbImage;
use opencv::core::{Mat, Rect, Scalar, Size, Vector, CV_8UC3};
use opencv::prelude::*;
use std::path::Path;

/// Write `frame` as a JPEG (quality 90).
pub fn write_jpeg(frame: &RgbImage, path: &Path) -> Result<()> {
    let mut buf = Vector::<u8>::new();
    let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, 90]);
    opencv::imgcodecs::imencode(".jpg", &frame.to_bgr_mat()?, &mut buf, &params).ctx("encode thumbnail")?;
    std::fs::write(path, buf.as_slice()).map_err(|e| PipelineError::io(format!("write {}", path.display()), e))
}

/// Collects every `every`-th frame, scaled to fit `tile` pixels, into a grid.
pub struct ContactSheet {
    every: usize,
    tile: u32,
    columns: usize,
    seen: usize,
    /// Index of the next frame to keep.
    next: usize,
    tiles: Vec<Mat>,
}

impl ContactSheet {
    pub fn new(every: usize, tile: u32, columns: usize) -> Self {
        Self { every: every.max(1), tile: tile.max(16), columns: columns.max(1), seen: 0, next: 0, tiles: Vec::new() }
    }

    /// Offer the next frame of the stream.
    pub fn offer(&mut self, frame: &RgbImage) -> Result<()> {
        let index = self.seen;
        self.seen += 1;
        if index != self.next {
            return Ok(());
        }
        self.next += self.every;
        let m = frame.to_bgr_mat()?;
        let s = self.tile as f64 / frame.width.max(frame.height) as f64;
        let size = Size::new(
            ((frame.width as f64 * s).round() as i32).max(1),
            ((frame.height as f64 * s).round() as i32).max(1),
        );
        let mut small = Mat::default();
        opencv::imgproc::resize(&m, &mut small, size, 0.0, 0.0, opencv::imgproc::INTER_AREA).ctx("contact tile")?;
        self.tiles.push(small);
        Ok(())
    }

    /// Number of tiles collected.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Tile everything into one PNG at `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let Some(first) = self.tiles.first() else {
            return Err(PipelineError::Encode("contact sheet has no frames".into()));
        };
        let (tw, th) = (first.cols(), first.rows());
        let cols = self.columns.min(self.tiles.len()) as i32;
        let rows = self.tiles.len().div_ceil(self.columns) as i32;
        let gap = 2;
        let mut sheet = Mat::new_rows_cols_with_default(
            rows * (th + gap) + gap,
            cols * (tw + gap) + gap,
            CV_8UC3,
            Scalar::all(32.0),
        )
        .ctx("alloc contact sheet")?;
        for (i, t) in self.tiles.iter().enumerate() {
            let (r, c) = ((i / self.columns) as i32, (i % self.columns) as i32);
            let rect = Rect::new(gap + c * (tw + gap), gap + r * (th + gap), t.cols().min(tw), t.rows().min(th));
            let mut roi = Mat::roi_mut(&mut sheet, rect).ctx("contact roi")?;
            t.copy_to(&mut roi).ctx("contact copy")?;
        }
        let mut buf = Vector::<u8>::new();
        opencv::imgcodecs::imencode(".png", &sheet, &mut buf, &Vector::new()).ctx("encode contact sheet")?;
        std::fs::write(path, buf.as_slice()).map_err(|e| PipelineError::io(format!("write {}", path.display()), e))
    }
}
