//! Per-frame rendering: move the mesh vertices (head pose + mouth/eye shapes), rasterize the
//! destination triangles into a backward warp map, `remap` the source region once, shade the
//! mouth opening, and write the region into the reused output frame.
//!
//! Everything that does not depend on the frame (mesh, triangle list, viseme displacements in
//! canvas pixels, the identity map, the source region as a `Mat`) is built once per render call
//! from the cached per-avatar state; per frame only vertex positions, the map and one remap run.

use super::mesh::{open_sides, sides_of, FaceMesh, VertexKind, RING_FOLLOW};
use super::motion::FrameMotion;
use super::mouth::{MouthPalette, LIP_PAIRS};
use super::shape::{self, FaceFrame};
use super::visemes::VisemeSet;
use crate::engine::PreprocessMode;
use crate::error::{PipelineError, Result, ResultExt};
use crate::face::Point;
use crate::image::RgbImage;
use opencv::core::{Mat, Scalar, Vec2s, BORDER_REPLICATE, CV_16SC2, CV_16UC1, CV_8UC3};
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-avatar render state (cached as `source_state:{image}:{preprocess}:{size}:classic`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceState {
    pub mode: PreprocessMode,
    pub size: u32,
    /// Output frame size (even).
    pub canvas: [u32; 2],
    /// Original pixels -> canvas pixels ([`super::CanvasMap`]).
    pub scale: [f32; 2],
    pub offset: [f32; 2],
    pub mesh: FaceMesh,
    pub palette: MouthPalette,
}

impl SourceState {
    /// Map a point from original-image pixels to canvas pixels (pixel-centre convention).
    pub fn to_canvas(&self, p: Point) -> Point {
        super::CanvasMap { scale: self.scale, offset: self.offset }.to_canvas(p)
    }
}

/// Reusable per-render buffers.
pub struct Renderer {
    state: SourceState,
    /// Landmark displacements in canvas pixels: 14 visemes, then blink, brow, rest.
    visemes: Vec<Vec<Point>>,
    blink: Vec<Point>,
    brow: Vec<Point>,
    rest: Vec<Point>,
    down: Point,
    mouth_width: f32,
    /// Inner-lip gaps (61-67, 62-66, 63-65) of the rest mouth: only opening beyond them is painted.
    rest_gaps: [f32; 3],
    source: Mat,
    /// Backward map in OpenCV's fixed-point form: integer source pixel + 5-bit sub-pixel index.
    map_xy: Mat,
    map_frac: Mat,
    identity: Vec<Vec2s>,
    /// Per vertex, how much of its motion it keeps: 1 inside the region, easing to 0 within
    /// [`BORDER_EASE`] face widths of the region's border, so a face cut by the canvas edge
    /// squeezes no pixels against the fixed border.
    border_ease: Vec<f32>,
    warped: Mat,
    /// This frame's landmark displacements before head motion.
    disp: Vec<Point>,
    dst: Vec<Point>,
    frame: RgbImage,
}

impl Renderer {
    /// `canvas` is the unanimated output frame (canvas-sized RGB).
    pub fn new(state: SourceState, visemes: &VisemeSet, canvas: RgbImage) -> Result<Self> {
        if canvas.width != state.canvas[0] || canvas.height != state.canvas[1] {
            return Err(PipelineError::Internal(format!(
                "canvas {}x{} does not match the prepared {}x{}",
                canvas.width, canvas.height, state.canvas[0], state.canvas[1]
            )));
        }
        let [_, _, rw, rh] = state.mesh.region;
        let source = region_mat(&canvas, state.mesh.region)?;
        let to_px = |v: &Vec<Point>| -> Vec<Point> {
            v.iter().map(|d| [d[0] * state.scale[0], d[1] * state.scale[1]]).collect()
        };
        if visemes.shapes.iter().chain([&visemes.blink, &visemes.brow, &visemes.rest]).any(|s| s.len() != 68) {
            return Err(PipelineError::Internal("viseme set does not have 68 points per shape".into()));
        }
        if state.mesh.points.len() < 68 || rw > i16::MAX as i32 || rh > i16::MAX as i32 {
            return Err(PipelineError::Internal("prepared mesh is inconsistent; prepare the avatar again".into()));
        }
        let lm: Vec<Point> = state.mesh.points[..68].to_vec();
        let frame = FaceFrame::measure(&lm)
            .ok_or_else(|| PipelineError::Internal("prepared landmarks are degenerate".into()))?;
        let rest_lip =
            |i: usize| shape::add(lm[i], [visemes.rest[i][0] * state.scale[0], visemes.rest[i][1] * state.scale[1]]);
        let rest_gaps = LIP_PAIRS.map(|(u, l)| shape::dist(rest_lip(u), rest_lip(l)));
        let identity = (0..rh).flat_map(|y| (0..rw).map(move |x| Vec2s::from([x as i16, y as i16]))).collect();
        let ease = (BORDER_EASE * state.mesh.face_width).max(1.0);
        let open = open_sides(state.mesh.region, state.canvas[0] as i32, state.canvas[1] as i32);
        let border_ease = state
            .mesh
            .points
            .iter()
            .map(|p| {
                // Distance to the nearest side that is not the canvas's own edge.
                let to_side = [p[0], p[1], rw as f32 - 1.0 - p[0], rh as f32 - 1.0 - p[1]];
                let d = to_side.iter().zip(open).filter(|(_, open)| !open).map(|(d, _)| *d).fold(f32::MAX, f32::min);
                let t = (d / ease).clamp(0.0, 1.0);
                t * t * (3.0 - 2.0 * t)
            })
            .collect();
        let map_xy = Mat::new_rows_cols_with_default(rh, rw, CV_16SC2, Scalar::all(0.0)).ctx("alloc map")?;
        let map_frac = Mat::new_rows_cols_with_default(rh, rw, CV_16UC1, Scalar::all(0.0)).ctx("alloc map")?;
        let warped = Mat::new_rows_cols_with_default(rh, rw, CV_8UC3, Scalar::all(0.0)).ctx("alloc warped")?;
        let vertices = state.mesh.points.len();
        Ok(Self {
            visemes: visemes.shapes.iter().map(to_px).collect(),
            blink: to_px(&visemes.blink),
            brow: to_px(&visemes.brow),
            rest: to_px(&visemes.rest),
            down: [-frame.up[0], -frame.up[1]],
            mouth_width: frame.mouth_width,
            rest_gaps,
            source,
            map_xy,
            map_frac,
            identity,
            border_ease,
            warped,
            disp: Vec::with_capacity(68),
            dst: Vec::with_capacity(vertices),
            frame: canvas,
            state,
        })
    }

    /// The animated region `[x, y, w, h]` in frame pixels.
    pub fn region(&self) -> [i32; 4] {
        self.state.mesh.region
    }

    /// The last rendered frame (the canvas before the first [`Self::render`]).
    pub fn frame(&self) -> &RgbImage {
        &self.frame
    }

    /// The 68 landmarks as the last [`Self::render`] moved them, in output-frame pixels.
    pub fn frame_landmarks(&self) -> Vec<Point> {
        let [rx, ry, _, _] = self.state.mesh.region;
        self.dst.iter().take(68).map(|p| [p[0] + rx as f32, p[1] + ry as f32]).collect()
    }

    /// Render one frame; the returned image is reused by the next call.
    pub fn render(&mut self, m: &FrameMotion) -> Result<&RgbImage> {
        self.move_vertices(m);
        self.rasterize()?;
        opencv::imgproc::remap(
            &self.source,
            &mut self.warped,
            &self.map_xy,
            &self.map_frac,
            opencv::imgproc::INTER_LINEAR,
            BORDER_REPLICATE,
            Scalar::default(),
        )
        .ctx("remap")?;
        self.shade_mouth()?;
        self.compose()?;
        Ok(&self.frame)
    }

    /// Destination vertex positions for one frame (region pixels).
    fn move_vertices(&mut self, m: &FrameMotion) {
        let mesh = &self.state.mesh;
        let [_, _, rw, rh] = mesh.region;
        // The landmarks' own motion in the face's plane: rest mouth, visemes, blink, brows.
        self.disp.clear();
        for k in 0..68 {
            let mut d = self.rest[k];
            for (v, w) in self.visemes.iter().zip(&m.mouth) {
                if *w != 0.0 {
                    d = shape::add(d, shape::scale(v[k], *w));
                }
            }
            d = shape::add(d, shape::scale(self.blink[k], m.blink));
            d = shape::add(d, shape::scale(self.brow[k], m.brow));
            self.disp.push(d);
        }
        // The lower inner lip never rises above the upper one (no inside-out mouth).
        for (u, l) in LIP_PAIRS {
            let (pu, pl) = (shape::add(mesh.points[u], self.disp[u]), shape::add(mesh.points[l], self.disp[l]));
            let gap = shape::sub(pl, pu);
            if gap[0] * self.down[0] + gap[1] * self.down[1] < 0.0 {
                let mid = shape::lerp(pu, pl, 0.5);
                self.disp[u] = shape::sub(mid, mesh.points[u]);
                self.disp[l] = shape::sub(mid, mesh.points[l]);
            }
        }
        let rot = rotation(m.pose[0], m.pose[1], m.pose[2]);
        let s = 1.0 + m.pose[5];
        let t = [m.pose[3] * mesh.face_width, m.pose[4] * mesh.face_width];
        let c = mesh.pivot;
        self.dst.clear();
        for (i, p) in mesh.points.iter().enumerate() {
            let head = match mesh.kind[i] {
                VertexKind::Landmark(_) | VertexKind::Dense(_) | VertexKind::Forehead => 1.0,
                VertexKind::Ring | VertexKind::Edge => RING_FOLLOW,
                VertexKind::Boundary => 0.0,
            };
            let mut q = *p;
            for &(k, w) in &mesh.follow[i] {
                q = shape::add(q, shape::scale(self.disp[k as usize], w));
            }
            if head > 0.0 {
                let v = [q[0] - c[0], q[1] - c[1], mesh.depth[i] - c[2]];
                let r = [
                    rot[0][0] * v[0] + rot[0][1] * v[1] + rot[0][2] * v[2],
                    rot[1][0] * v[0] + rot[1][1] * v[1] + rot[1][2] * v[2],
                ];
                let moved = [c[0] + s * r[0] + t[0], c[1] + s * r[1] + t[1]];
                q = shape::lerp(q, moved, head);
            }
            let k = self.border_ease[i];
            if k < 1.0 {
                q = shape::lerp(*p, q, k);
            }
            if mesh.kind[i] == VertexKind::Edge {
                // Outwards only: pixels between an edge moved inwards and the canvas edge would
                // have no triangle and show the unwarped photo.
                let [l, t, r, b] = sides_of(*p, rw, rh);
                let outwards = |q: f32, p: f32, low: bool, high: bool| {
                    if low {
                        q.min(p)
                    } else if high {
                        q.max(p)
                    } else {
                        q
                    }
                };
                q = [outwards(q[0], p[0], l, r), outwards(q[1], p[1], t, b)];
            }
            self.dst.push(q);
        }
    }

    /// Fill the backward map triangle by triangle (scanline), directly in fixed point.
    fn rasterize(&mut self) -> Result<()> {
        const BITS: i32 = 5; // OpenCV's INTER_BITS
        const TAB: f32 = (1 << BITS) as f32;
        const MASK: i32 = (1 << BITS) - 1;
        let mesh = &self.state.mesh;
        let [_, _, w, h] = mesh.region;
        let map_xy = self.map_xy.data_typed_mut::<Vec2s>().ctx("map data")?;
        map_xy.copy_from_slice(&self.identity);
        let map_frac = self.map_frac.data_typed_mut::<u16>().ctx("map data")?;
        map_frac.fill(0);
        for tri in mesh.triangles.iter() {
            let [a, b, c] = tri.map(|v| v as usize);
            let (d0, d1, d2) = (self.dst[a], self.dst[b], self.dst[c]);
            let (s0, s1, s2) = (mesh.points[a], mesh.points[b], mesh.points[c]);
            let e1 = shape::sub(d1, d0);
            let e2 = shape::sub(d2, d0);
            let det = e1[0] * e2[1] - e2[0] * e1[1];
            if det.abs() < 1e-4 {
                continue;
            }
            // src = s0 + J (p - d0), J = [f1 f2] [e1 e2]^-1, in 1/32 pixel units.
            let f1 = shape::sub(s1, s0);
            let f2 = shape::sub(s2, s0);
            let (ax, ay, bx, by) = (e2[1] / det, -e2[0] / det, -e1[1] / det, e1[0] / det);
            let jxx = (f1[0] * ax + f2[0] * bx) * TAB;
            let jxy = (f1[0] * ay + f2[0] * by) * TAB;
            let jyx = (f1[1] * ax + f2[1] * bx) * TAB;
            let jyy = (f1[1] * ay + f2[1] * by) * TAB;
            let cx = s0[0] * TAB - jxx * d0[0] - jxy * d0[1];
            let cy = s0[1] * TAB - jyx * d0[0] - jyy * d0[1];
            let ymin = d0[1].min(d1[1]).min(d2[1]).ceil().max(0.0) as i32;
            let ymax = d0[1].max(d1[1]).max(d2[1]).floor().min((h - 1) as f32) as i32;
            // Each edge as (lower end, upper y, x per row), its slope divided out once.
            let edges = [(d0, d1), (d1, d2), (d2, d0)].map(|(p, q)| {
                let (lo, hi) = if p[1] < q[1] { (p, q) } else { (q, p) };
                let span = hi[1] - lo[1];
                (lo, hi[1], if span < 1e-6 { f32::NAN } else { (hi[0] - lo[0]) / span })
            });
            for y in ymin..=ymax {
                let yf = y as f32;
                let (mut xl, mut xr) = (f32::MAX, f32::MIN);
                for &(lo, top, slope) in &edges {
                    if yf < lo[1] || yf > top || slope.is_nan() {
                        continue;
                    }
                    let x = lo[0] + (yf - lo[1]) * slope;
                    xl = xl.min(x);
                    xr = xr.max(x);
                }
                if xl > xr {
                    continue;
                }
                let x0 = (xl - 1e-3).ceil().max(0.0) as i32;
                let x1 = (xr + 1e-3).floor().min((w - 1) as f32) as i32;
                if x1 < x0 {
                    continue;
                }
                let row = (y * w) as usize;
                let (mut sx, mut sy) = (cx + jxx * x0 as f32 + jxy * yf, cy + jyx * x0 as f32 + jyy * yf);
                let span = row + x0 as usize..=row + x1 as usize;
                for (xy, frac) in map_xy[span.clone()].iter_mut().zip(&mut map_frac[span]) {
                    let (ix, iy) = (round_i32(sx), round_i32(sy));
                    *xy = Vec2s::from([(ix >> BITS) as i16, (iy >> BITS) as i16]);
                    *frac = (((iy & MASK) << BITS) | (ix & MASK)) as u16;
                    sx += jxx;
                    sy += jyx;
                }
            }
        }
        Ok(())
    }

    /// Paint the mouth interior between the inner lips (60..=67) of this frame. Each pixel gets
    /// its distance below the upper lip and above the lower lip, measured across the mouth axis.
    fn shade_mouth(&mut self) -> Result<()> {
        let [upper, lower] = &self.state.mesh.inner_lips;
        let Some(profile) = LipProfile::new(&self.dst, upper, lower) else { return Ok(()) };
        // How far the lips are apart beyond the photo's own (rest) lip line.
        let extra = LIP_PAIRS
            .iter()
            .zip(&self.rest_gaps)
            .map(|(&(u, l), rest)| shape::dist(self.dst[u], self.dst[l]) - rest)
            .fold(0.0f32, f32::max);
        let fade = ((extra - 0.5) / 1.5).clamp(0.0, 1.0);
        if fade <= 0.0 {
            return Ok(());
        }
        let [_, _, w, h] = self.state.mesh.region;
        let (x0, y0, x1, y1) = profile.bounds(w, h);
        let mw = self.mouth_width;
        let pal = self.state.palette;
        let px = self.warped.data_bytes_mut().ctx("warped data")?;
        for y in y0..=y1 {
            for x in x0..=x1 {
                let Some((d, e, u)) = profile.at([x as f32, y as f32]) else { continue };
                let (col, a) = pal.shade(d, e, u, mw);
                let a = a * fade;
                if a <= 0.0 {
                    continue;
                }
                let i = (y as usize * w as usize + x as usize) * 3;
                if let Some(p) = px.get_mut(i..i + 3) {
                    for k in 0..3 {
                        // `+ 0.5` then truncation rounds a non-negative value (no libm call per channel).
                        p[k] = ((p[k] as f32 * (1.0 - a) + col[k] * a).clamp(0.0, 255.0) + 0.5) as u8;
                    }
                }
            }
        }
        Ok(())
    }

    /// Copy the warped region into the output frame (everything else stays the canvas).
    fn compose(&mut self) -> Result<()> {
        let [rx, ry, rw, rh] = self.state.mesh.region;
        let src = self.warped.data_bytes().ctx("warped bytes")?;
        let fw = self.frame.width as usize;
        let row_bytes = rw as usize * 3;
        for y in 0..rh as usize {
            let d = ((ry as usize + y) * fw + rx as usize) * 3;
            let s = y * row_bytes;
            self.frame.data[d..d + row_bytes].copy_from_slice(&src[s..s + row_bytes]);
        }
        Ok(())
    }
}

/// Copy a region of an RGB image into a new 8-bit 3-channel `Mat` (channel order kept).
pub(super) fn region_mat(img: &RgbImage, [rx, ry, rw, rh]: [i32; 4]) -> Result<Mat> {
    if rx < 0 || ry < 0 || rw <= 0 || rh <= 0 || (rx + rw) as u32 > img.width || (ry + rh) as u32 > img.height {
        return Err(PipelineError::Internal(format!("region {rx},{ry} {rw}x{rh} is outside the canvas")));
    }
    let mut m = Mat::new_rows_cols_with_default(rh, rw, CV_8UC3, Scalar::all(0.0)).ctx("alloc region")?;
    let dst = m.data_bytes_mut().ctx("region bytes")?;
    let row = rw as usize * 3;
    for y in 0..rh as usize {
        let s = ((ry as usize + y) * img.width as usize + rx as usize) * 3;
        dst[y * row..(y + 1) * row].copy_from_slice(&img.data[s..s + row]);
    }
    Ok(m)
}

/// Width of the band along the animated region's border in which vertex motion eases out, in
/// face widths.
const BORDER_EASE: f32 = 0.08;

/// `v` rounded to the nearest integer (halves up) without a libm call: `f32::round` is a call
/// to `roundf` on baseline x86-64 (no SSE4.1), once per map pixel. Exact for |v| < 2^20.
#[inline]
fn round_i32(v: f32) -> i32 {
    const BIAS: f64 = (1u32 << 20) as f64;
    ((v as f64 + 0.5 + BIAS) as i64 - BIAS as i64) as i32
}

/// Rotation matrix (rows) for yaw about the vertical axis, pitch about the horizontal axis and
/// roll in the image plane, in image axes (x right, y down, z towards the camera); degrees.
fn rotation(yaw: f32, pitch: f32, roll: f32) -> [[f32; 3]; 3] {
    let (sy, cy) = yaw.to_radians().sin_cos();
    let (sp, cp) = pitch.to_radians().sin_cos();
    let (sr, cr) = roll.to_radians().sin_cos();
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]];
    let rz = [[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]];
    mat_mul(&rz, &mat_mul(&rx, &ry))
}

fn mat_mul(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut o = [[0.0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            o[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// The inner-lip opening of one frame in mouth coordinates: `t` along the corner-to-corner
/// axis (0..1), `v` across it (positive towards the chin).
struct LipProfile {
    origin: Point,
    axis: Point,
    normal: Point,
    length: f32,
    /// (t, v) of the upper and the lower inner-lip contour, corner to corner.
    upper: Vec<(f32, f32)>,
    lower: Vec<(f32, f32)>,
}

impl LipProfile {
    /// The opening between the inner lips `upper` and `lower` (vertex lists that share their
    /// first and last vertex, the corners) at the vertex positions `dst`.
    fn new(dst: &[Point], upper: &[u32], lower: &[u32]) -> Option<Self> {
        let (&first, &last) = (upper.first()?, upper.last()?);
        let origin = dst[first as usize];
        let span = shape::sub(dst[last as usize], origin);
        let length = (span[0] * span[0] + span[1] * span[1]).sqrt();
        if length < 2.0 {
            return None;
        }
        let axis = [span[0] / length, span[1] / length];
        let normal = [-axis[1], axis[0]]; // y-down image: rotates the axis towards the chin
        let tv = |p: Point| {
            let q = shape::sub(p, origin);
            ((q[0] * axis[0] + q[1] * axis[1]) / length, q[0] * normal[0] + q[1] * normal[1])
        };
        let upper = upper.iter().map(|&i| tv(dst[i as usize])).collect();
        let lower = lower.iter().map(|&i| tv(dst[i as usize])).collect();
        Some(Self { origin, axis, normal, length, upper, lower })
    }

    /// Pixel bounding box of the opening, clipped to `w x h`.
    fn bounds(&self, w: i32, h: i32) -> (i32, i32, i32, i32) {
        let pts = self.upper.iter().chain(self.lower.iter()).map(|&(t, v)| {
            [
                self.origin[0] + self.axis[0] * t * self.length + self.normal[0] * v,
                self.origin[1] + self.axis[1] * t * self.length + self.normal[1] * v,
            ]
        });
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in pts {
            x0 = x0.min(p[0]);
            y0 = y0.min(p[1]);
            x1 = x1.max(p[0]);
            y1 = y1.max(p[1]);
        }
        (
            (x0.floor() as i32 - 1).clamp(0, w - 1),
            (y0.floor() as i32 - 1).clamp(0, h - 1),
            (x1.ceil() as i32 + 1).clamp(0, w - 1),
            (y1.ceil() as i32 + 1).clamp(0, h - 1),
        )
    }

    /// `(d, e, u)` for a pixel inside (or within half a pixel of) the opening.
    fn at(&self, p: Point) -> Option<(f32, f32, f32)> {
        let q = shape::sub(p, self.origin);
        let t = (q[0] * self.axis[0] + q[1] * self.axis[1]) / self.length;
        if !(0.0..=1.0).contains(&t) {
            return None;
        }
        let v = q[0] * self.normal[0] + q[1] * self.normal[1];
        let (top, bottom) = (interp(&self.upper, t), interp(&self.lower, t));
        let (d, e) = (v - top, bottom - v);
        if d < -0.5 || e < -0.5 || bottom - top <= 0.0 {
            return None;
        }
        Some((d, e, 1.0 - (2.0 * t - 1.0).abs()))
    }
}

/// Piecewise-linear `v(t)` through points sorted by `t` (clamped at the ends).
fn interp(pts: &[(f32, f32)], t: f32) -> f32 {
    for k in 1..pts.len() {
        let (t0, v0) = pts[k - 1];
        let (t1, v1) = pts[k];
        if t <= t1 || k == pts.len() - 1 {
            let span = t1 - t0;
            if span.abs() < 1e-6 {
                return v1;
            }
            return v0 + (v1 - v0) * ((t - t0) / span).clamp(0.0, 1.0);
        }
    }
    pts.last().map_or(0.0, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::round_i32;

    #[test]
    fn round_i32_rounds_halves_up_on_both_signs() {
        for v in [-70000.5f32, -3.5, -2.6, -2.5, -2.4, -0.5, -0.49, 0.0, 0.49, 0.5, 2.5, 7.75, 8191.5, 65535.4] {
            assert_eq!(round_i32(v), (v as f64 + 0.5).floor() as i32, "{v}");
        }
    }
}
