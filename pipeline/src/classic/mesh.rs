//! The per-avatar face mesh: 68 landmarks + the face mesh's other points where MediaPipe placed
//! them (else a forehead row) + a head ring + border points (fixed, or following the face where
//! the border is the canvas's own edge), Delaunay-triangulated once, with each vertex's depth, how
//! it follows the landmarks' motion and how strongly the head's.

use super::dense::{self, Follow};
use super::shape::{self, FaceFrame, MEAN_FACE_3D, MEAN_FACE_WIDTH};
use crate::error::{PipelineError, Result, ResultExt};
use crate::face::Point;
use opencv::core::{Point2f, Rect, Vec6f, Vector};
use opencv::imgproc::Subdiv2D;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

/// Brow points that get a forehead point above them.
const FOREHEAD_FROM: [usize; 7] = [17, 19, 21, 27, 22, 24, 26];
/// Ring radius relative to the face outline (around hair, ears and the top of the neck).
const RING_SCALE: f32 = 1.18;
/// How much of the head's motion the ring follows; the rest fades out towards the boundary.
pub const RING_FOLLOW: f32 = 0.6;
/// Margin between the ring and the fixed boundary, in face widths.
const BOUNDARY_MARGIN: f32 = 0.18;
/// Face-mesh points closer than this (in face widths) to a vertex already taken are left out.
const DENSE_MIN_GAP: f32 = 0.008;

/// What a mesh vertex is, which decides how it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VertexKind {
    /// iBUG landmark `i` (0..68): moves rigidly with the head and with mouth/eye shapes.
    Landmark(u8),
    /// Face-mesh point `i` (0..468): moves rigidly with the head and follows the landmarks'
    /// shapes by its [`FaceMesh::follow`] weights.
    Dense(u16),
    /// Above the brows: moves rigidly with the head.
    Forehead,
    /// Around the head: follows the head by [`RING_FOLLOW`].
    Ring,
    /// On the border of the animated region inside the canvas: never moves.
    Boundary,
    /// On a side of the animated region that is the canvas's own edge (a face that fills the
    /// canvas): follows the face like the ring, but never inwards, since nothing lies beyond.
    Edge,
}

/// The triangulated mesh in animated-region pixel coordinates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaceMesh {
    /// Animated region `[x, y, w, h]` inside the canvas; pixels outside it never change.
    pub region: [i32; 4],
    /// Vertex positions in region pixels (landmarks first, in iBUG order).
    pub points: Vec<Point>,
    /// Depth towards the camera, region pixels (from the generic 3-D face).
    pub depth: Vec<f32>,
    pub kind: Vec<VertexKind>,
    /// Per vertex, its share of each landmark's own displacement (mouth, eyes, brows): a landmark
    /// all of its own, a face-mesh point a blend ([`dense`]), every other vertex none.
    pub follow: Vec<Follow>,
    /// The inner lips as vertex lists from corner to corner (upper, lower): the mouth opening.
    pub inner_lips: [Vec<u32>; 2],
    pub triangles: Vec<[u32; 3]>,
    /// Rotation centre for head motion (region pixels + depth): behind the face, between ears.
    pub pivot: [f32; 3],
    /// Face width in region pixels (the unit of head translation).
    pub face_width: f32,
}

impl FaceMesh {
    /// Build the mesh for 68 landmarks given in canvas pixels on a `canvas_w x canvas_h` canvas,
    /// with MediaPipe's 468 points in the same pixels when the landmarks came from it.
    pub fn build(landmarks: &[Point], face_mesh: Option<&[[f32; 3]]>, canvas_w: i32, canvas_h: i32) -> Result<Self> {
        let frame = FaceFrame::measure(landmarks)
            .ok_or_else(|| PipelineError::Internal("landmarks are degenerate; cannot build a face mesh".into()))?;
        let fw = frame.face_width;
        let up = frame.up;
        let s3d = fw / MEAN_FACE_WIDTH;
        let depth68: Vec<f32> = (0..68).map(|i| MEAN_FACE_3D[i][2] * s3d).collect();
        let dense =
            face_mesh.map(|m| dense::dense_points(landmarks, &depth68, m, DENSE_MIN_GAP * fw)).unwrap_or_default();
        // With the face mesh, its oval is the face outline; else the jaw and a forehead row half
        // the brow-to-chin height above the brows (the nose bridge for the middle one).
        let forehead: Vec<Point> = if dense.is_empty() {
            FOREHEAD_FROM
                .iter()
                .map(|&i| {
                    let base = if i == 27 { shape::mean(&[landmarks[21], landmarks[22]]) } else { landmarks[i] };
                    let lift = if i == 17 || i == 26 { 0.38 } else { 0.5 };
                    shape::add(base, shape::scale(up, lift * frame.face_height))
                })
                .collect()
        } else {
            Vec::new()
        };
        let outline: Vec<Point> = match face_mesh {
            Some(m) if !dense.is_empty() => {
                dense::FACE_OVAL.iter().map(|&i| [m[i as usize][0], m[i as usize][1]]).collect()
            }
            _ => landmarks[0..17].iter().chain(forehead.iter().rev()).copied().collect(),
        };
        let centre = shape::mean(&outline);
        let ring: Vec<Point> = outline.iter().map(|&p| shape::lerp(centre, p, RING_SCALE)).collect();

        // Region: the ring's bounding box plus a margin, clipped to the canvas.
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for p in ring.iter().chain(landmarks.iter()) {
            x0 = x0.min(p[0]);
            y0 = y0.min(p[1]);
            x1 = x1.max(p[0]);
            y1 = y1.max(p[1]);
        }
        let m = BOUNDARY_MARGIN * fw;
        let rx0 = ((x0 - m).floor() as i32).clamp(0, canvas_w - 1);
        let ry0 = ((y0 - m).floor() as i32).clamp(0, canvas_h - 1);
        let rx1 = ((x1 + m).ceil() as i32).clamp(rx0 + 1, canvas_w);
        let ry1 = ((y1 + m).ceil() as i32).clamp(ry0 + 1, canvas_h);
        let (rw, rh) = (rx1 - rx0, ry1 - ry0);
        if rw < 16 || rh < 16 {
            return Err(PipelineError::Internal(format!("animated region {rw}x{rh} is too small")));
        }
        let to_region = |p: Point| [p[0] - rx0 as f32, p[1] - ry0 as f32];
        // Forehead and ring points are kept this far inside the border. Where the canvas cuts the
        // region they would lie closer (or beyond), and they are left out: pulled in, they would
        // sit inside the face (a ring point above a chin that touches the canvas's bottom) and
        // its triangles would fold over as the jaw drops. The edge's own points take their place.
        let inset = 2.0f32.max(0.04 * fw);
        let inside = |p: Point| {
            p[0] >= inset && p[1] >= inset && p[0] <= rw as f32 - 1.0 - inset && p[1] <= rh as f32 - 1.0 - inset
        };

        let mut points = Vec::new();
        let mut depth = Vec::new();
        let mut kind = Vec::new();
        // How each vertex follows the landmarks: given, or `None` for the harmonic blend.
        let mut fixed: Vec<Option<Follow>> = Vec::new();
        // A face cut by the canvas edge: its points beyond the edge sit on the edge (landmarks
        // keep their place in the vertex list) or are left out (face-mesh points), so no triangle
        // reaches outside the region and samples replicated border pixels.
        let (xmax, ymax) = ((rw - 1) as f32, (rh - 1) as f32);
        let on_canvas = |p: Point| [p[0].clamp(0.0, xmax), p[1].clamp(0.0, ymax)];
        for (i, p) in landmarks.iter().enumerate() {
            points.push(on_canvas(to_region(*p)));
            depth.push(depth68[i]);
            kind.push(VertexKind::Landmark(i as u8));
            fixed.push(Some(vec![(i as u8, 1.0)]));
        }
        let mut vertex_of = std::collections::HashMap::new();
        for d in &dense {
            let p = to_region(d.point);
            if on_canvas(p) != p {
                continue;
            }
            vertex_of.insert(d.index, points.len() as u32);
            points.push(p);
            depth.push(d.depth);
            kind.push(VertexKind::Dense(d.index));
            fixed.push(d.along.clone());
        }
        let brow_z = MEAN_FACE_3D[19][2] * s3d;
        for p in forehead.iter().map(|p| to_region(*p)).filter(|p| inside(*p)) {
            points.push(p);
            depth.push(0.8 * brow_z);
            kind.push(VertexKind::Forehead);
            fixed.push(Some(Vec::new()));
        }
        let pivot_z = -0.55 * s3d;
        for p in ring.iter().map(|p| to_region(*p)).filter(|p| inside(*p)) {
            points.push(p);
            depth.push(pivot_z);
            kind.push(VertexKind::Ring);
            fixed.push(Some(Vec::new()));
        }
        let open = open_sides([rx0, ry0, rw, rh], canvas_w, canvas_h);
        for p in boundary_points(rw, rh) {
            let on = sides_of(p, rw, rh);
            let edge = on.iter().any(|&o| o) && on.iter().zip(open).all(|(&o, open)| !o || open);
            points.push(p);
            depth.push(pivot_z);
            kind.push(if edge { VertexKind::Edge } else { VertexKind::Boundary });
            fixed.push(if edge { None } else { Some(Vec::new()) });
        }
        // Pivot: below the nose, between the ears, behind the face.
        let pivot2 = to_region(shape::lerp(landmarks[30], landmarks[8], 0.35));
        let pivot = [pivot2[0], pivot2[1], pivot_z];
        let inner_lips = if dense.is_empty() {
            [vec![60, 61, 62, 63, 64], vec![60, 67, 66, 65, 64]]
        } else {
            dense::inner_lips(|i| vertex_of.get(&i).copied())
        };

        // Triangulate a copy whose inner lips are pulled apart a little, so the mouth opening
        // gets its own triangles (between the lips) even when the lips touch in the photo.
        let mut topo = points.clone();
        let gap = 0.03 * frame.mouth_width;
        for (lip, dir) in inner_lips.iter().zip([1.0f32, -1.0]) {
            for &v in &lip[1..lip.len() - 1] {
                topo[v as usize] = shape::add(topo[v as usize], shape::scale(up, dir * gap));
            }
        }
        for p in topo.iter_mut() {
            // Lips pulled apart at the canvas's edge stay on it.
            *p = on_canvas(*p);
        }
        let triangles = delaunay(&topo, rw, rh)?;
        let follow = dense::harmonic(&fixed, &triangles);
        Ok(Self {
            region: [rx0, ry0, rw, rh],
            points,
            depth,
            kind,
            follow,
            inner_lips,
            triangles,
            pivot,
            face_width: fw,
        })
    }
}

/// Which sides of the region `[x, y, w, h]` (left, top, right, bottom) are the canvas's own edges.
pub fn open_sides([x, y, w, h]: [i32; 4], canvas_w: i32, canvas_h: i32) -> [bool; 4] {
    [x == 0, y == 0, x + w == canvas_w, y + h == canvas_h]
}

/// Which sides of a `w x h` region (left, top, right, bottom) the point `p` lies on.
pub fn sides_of(p: Point, w: i32, h: i32) -> [bool; 4] {
    [p[0] <= 0.0, p[1] <= 0.0, p[0] >= (w - 1) as f32, p[1] >= (h - 1) as f32]
}

/// Corners plus evenly spaced points on the border of a `w x h` region.
fn boundary_points(w: i32, h: i32) -> Vec<Point> {
    let (wf, hf) = ((w - 1) as f32, (h - 1) as f32);
    let nx = 6;
    let ny = 6;
    let mut pts = Vec::new();
    for i in 0..nx {
        let x = wf * i as f32 / nx as f32;
        pts.push([x, 0.0]);
        pts.push([wf - x, hf]);
    }
    for j in 0..ny {
        let y = hf * j as f32 / ny as f32;
        pts.push([wf, y]);
        pts.push([0.0, hf - y]);
    }
    pts
}

/// Delaunay triangles (as vertex indices) of `points` inside a `w x h` region.
fn delaunay(points: &[Point], w: i32, h: i32) -> Result<Vec<[u32; 3]>> {
    let mut sub = Subdiv2D::new(Rect::new(-2, -2, w + 4, h + 4)).ctx("Subdiv2D")?;
    for p in points {
        sub.insert(Point2f::new(p[0], p[1])).ctx("Subdiv2D insert")?;
    }
    let mut list: Vector<Vec6f> = Vector::new();
    sub.get_triangle_list(&mut list).ctx("Subdiv2D triangles")?;
    let nearest = |x: f32, y: f32| -> Option<u32> {
        let mut best = (f32::MAX, 0usize);
        for (i, p) in points.iter().enumerate() {
            let d = (p[0] - x).powi(2) + (p[1] - y).powi(2);
            if d < best.0 {
                best = (d, i);
            }
        }
        (best.0 < 1e-4).then_some(best.1 as u32)
    };
    let mut tris = Vec::with_capacity(list.len());
    for t in list.iter() {
        let (Some(a), Some(b), Some(c)) = (nearest(t[0], t[1]), nearest(t[2], t[3]), nearest(t[4], t[5])) else {
            continue; // touches one of Subdiv2D's virtual outer vertices
        };
        if a != b && b != c && a != c {
            tris.push([a, b, c]);
        }
    }
    if tris.len() < points.len() {
        return Err(PipelineError::Internal(format!("triangulation produced only {} triangles", tris.len())));
    }
    Ok(tris)
}

/// Even-odd rule point-in-polygon.
pub fn point_in_polygon(p: Point, poly: &[Point]) -> bool {
    let mut inside = false;
    let n = poly.len();
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (poly[i], poly[j]);
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_covers_region() {
        let lm = shape::mean_shape_in_box([80.0, 70.0, 176.0, 176.0]);
        let mesh = FaceMesh::build(&lm, None, 256, 256).expect("mesh");
        let [_, _, w, h] = mesh.region;
        let area: f32 = mesh
            .triangles
            .iter()
            .map(|t| {
                let (a, b, c) = (mesh.points[t[0] as usize], mesh.points[t[1] as usize], mesh.points[t[2] as usize]);
                0.5 * ((b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])).abs()
            })
            .sum();
        let full = ((w - 1) * (h - 1)) as f32;
        assert!((area - full).abs() / full < 0.02, "triangles cover {area} of {full}");
        assert!(mesh.points.len() > 68 + 7 + 17);
    }
}
