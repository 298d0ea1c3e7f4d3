//! The dense part of the classic engine's warp mesh: which of MediaPipe's 468 face-mesh points
//! join it, their depth, and how each one follows the 68 landmarks' own motion (mouth shapes,
//! blinks, brows). Points on the lip, eye and jaw contours follow the landmark polyline they lie
//! on; every other point takes a harmonic blend over the mesh (each the mean of its neighbours),
//! so the lips open along their real outlines and cheeks and jaw line bend without kinks.

use crate::face::landmarks::facemesh::{MESH_POINTS, MESH_TO_68};
use crate::face::Point;

/// Mesh points along one contour of the face, and the landmark polyline (iBUG indices) that
/// runs along the same contour. Lists from MediaPipe's published contour connections.
struct Contour {
    points: &'static [u16],
    anchors: &'static [u8],
}

const CONTOURS: [Contour; 9] = [
    // Lips: outer upper and lower, inner upper and lower, corner to corner (image left first).
    Contour { points: &[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291], anchors: &[48, 49, 50, 51, 52, 53, 54] },
    Contour { points: &[61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291], anchors: &[48, 59, 58, 57, 56, 55, 54] },
    Contour { points: &[78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308], anchors: &[60, 61, 62, 63, 64] },
    Contour { points: &[78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308], anchors: &[60, 67, 66, 65, 64] },
    // Eyes: the image-left eye's upper and lower lid, then the image-right eye's.
    Contour { points: &[33, 246, 161, 160, 159, 158, 157, 173, 133], anchors: &[36, 37, 38, 39] },
    Contour { points: &[33, 7, 163, 144, 145, 153, 154, 155, 133], anchors: &[36, 41, 40, 39] },
    Contour { points: &[362, 398, 384, 385, 386, 387, 388, 466, 263], anchors: &[42, 43, 44, 45] },
    Contour { points: &[362, 382, 381, 380, 374, 373, 390, 249, 263], anchors: &[42, 47, 46, 45] },
    // The jaw line, ear to ear under the chin.
    Contour {
        points: &[
            127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454,
            356,
        ],
        anchors: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
    },
];

/// Index of the inner-lip contours in [`CONTOURS`] (upper, lower).
const INNER_LIPS: [usize; 2] = [2, 3];

/// The face oval, clockwise from the top of the forehead (MediaPipe's published order).
pub const FACE_OVAL: [u16; 36] = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150,
    136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
];

/// Weights over the 68 landmarks' displacements.
pub type Follow = Vec<(u8, f32)>;

/// One mesh point that joins the warp mesh.
#[derive(Debug, Clone)]
pub struct DensePoint {
    /// MediaPipe index.
    pub index: u16,
    pub point: Point,
    pub depth: f32,
    /// Set for points on a contour: the two landmarks it lies between.
    pub along: Option<Follow>,
}

/// The mesh point that stands for landmark `k` on its own, if one does.
fn exact_anchor(k: usize) -> Option<u16> {
    let [a, b] = MESH_TO_68[k];
    (a == b).then_some(a)
}

/// The mesh points that join the warp mesh: all but those that are a landmark already and those
/// within `min_gap` of a point taken before (the triangulation needs distinct points).
/// `mesh`: the 468 points in the same pixels as `landmarks`, z in that scale (smaller is nearer);
/// `depth68`: the landmarks' depths (towards the camera), which the mesh depths are fitted to.
pub fn dense_points(landmarks: &[Point], depth68: &[f32], mesh: &[[f32; 3]], min_gap: f32) -> Vec<DensePoint> {
    if mesh.len() != MESH_POINTS || landmarks.len() != 68 || depth68.len() != 68 {
        return Vec::new();
    }
    let mut is_landmark = [false; MESH_POINTS];
    for k in 0..68 {
        if let Some(i) = exact_anchor(k) {
            is_landmark[i as usize] = true;
        }
    }
    let depth = depth_fit(depth68, mesh);
    let mut along: Vec<Option<Follow>> = vec![None; MESH_POINTS];
    for c in &CONTOURS {
        let poly: Vec<Point> = c.anchors.iter().map(|&k| landmarks[k as usize]).collect();
        for &i in c.points {
            let p = [mesh[i as usize][0], mesh[i as usize][1]];
            if along[i as usize].is_none() {
                along[i as usize] = Some(project(p, &poly, c.anchors));
            }
        }
    }
    let mut taken: Vec<Point> = landmarks.to_vec();
    let mut out = Vec::new();
    for (i, q) in mesh.iter().enumerate() {
        if is_landmark[i] {
            continue;
        }
        let p = [q[0], q[1]];
        if !(p[0].is_finite() && p[1].is_finite()) {
            continue;
        }
        if taken.iter().any(|t| (t[0] - p[0]).powi(2) + (t[1] - p[1]).powi(2) < min_gap * min_gap) {
            continue;
        }
        taken.push(p);
        out.push(DensePoint { index: i as u16, point: p, depth: depth(q[2]), along: along[i].take() });
    }
    out
}

/// The inner lips as mesh vertex lists, corner to corner: `vertex_of(mediapipe index)` gives a
/// dense point's vertex; the landmarks are vertices `0..68`. Points that did not join are left out.
pub fn inner_lips(vertex_of: impl Fn(u16) -> Option<u32>) -> [Vec<u32>; 2] {
    INNER_LIPS.map(|c| {
        let c = &CONTOURS[c];
        c.points
            .iter()
            .filter_map(|&i| {
                let anchor = (0..68).find(|&k| exact_anchor(k) == Some(i) && c.anchors.contains(&(k as u8)));
                anchor.map(|k| k as u32).or_else(|| vertex_of(i))
            })
            .collect()
    })
}

/// A linear map from the mesh's z to the landmarks' depth scale, fitted on the 68 points.
fn depth_fit(depth68: &[f32], mesh: &[[f32; 3]]) -> impl Fn(f32) -> f32 {
    let z68: Vec<f32> = MESH_TO_68.iter().map(|[a, b]| 0.5 * (mesh[*a as usize][2] + mesh[*b as usize][2])).collect();
    let n = 68.0f32;
    let (mz, md) = (z68.iter().sum::<f32>() / n, depth68.iter().sum::<f32>() / n);
    let (mut szz, mut szd) = (0.0f32, 0.0f32);
    for (z, d) in z68.iter().zip(depth68) {
        szz += (z - mz) * (z - mz);
        szd += (z - mz) * (d - md);
    }
    let a = if szz > 1e-6 { szd / szz } else { 0.0 };
    move |z: f32| if z.is_finite() { md + a * (z - mz) } else { md }
}

/// Where `p` lies along the polyline `poly` (landmarks `anchors`): the two landmarks of its
/// nearest segment, weighted by the position of its foot on that segment.
fn project(p: Point, poly: &[Point], anchors: &[u8]) -> Follow {
    let mut best = (f32::MAX, 0usize, 0.0f32);
    for s in 0..poly.len().saturating_sub(1) {
        let (a, b) = (poly[s], poly[s + 1]);
        let ab = [b[0] - a[0], b[1] - a[1]];
        let len2 = ab[0] * ab[0] + ab[1] * ab[1];
        let t =
            if len2 > 1e-9 { (((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1]) / len2).clamp(0.0, 1.0) } else { 0.0 };
        let f = [a[0] + t * ab[0] - p[0], a[1] + t * ab[1] - p[1]];
        let d = f[0] * f[0] + f[1] * f[1];
        if d < best.0 {
            best = (d, s, t);
        }
    }
    let (_, s, t) = best;
    vec![(anchors[s], 1.0 - t), (anchors[s + 1], t)]
}

/// How every vertex follows the landmarks. `fixed[v]`: `Some(weights)` for a vertex whose
/// following is given (a landmark, a contour point, a rigid point with no weights), `None` for
/// one that takes the harmonic blend of its mesh neighbours (each free vertex's weights are the
/// mean of its neighbours'). Weights under 1e-3 are dropped.
pub fn harmonic(fixed: &[Option<Follow>], triangles: &[[u32; 3]]) -> Vec<Follow> {
    let n = fixed.len();
    let mut neighbours: Vec<Vec<u32>> = vec![Vec::new(); n];
    for t in triangles {
        for (a, b) in [(t[0], t[1]), (t[1], t[2]), (t[2], t[0])] {
            let (a, b) = (a as usize, b as usize);
            if a < n && b < n && a != b {
                if !neighbours[a].contains(&(b as u32)) {
                    neighbours[a].push(b as u32);
                }
                if !neighbours[b].contains(&(a as u32)) {
                    neighbours[b].push(a as u32);
                }
            }
        }
    }
    // Free vertices that are connected at all get an equation; an isolated one follows nothing.
    let free: Vec<usize> = (0..n).filter(|&v| fixed[v].is_none() && !neighbours[v].is_empty()).collect();
    let mut slot = vec![usize::MAX; n];
    for (r, &v) in free.iter().enumerate() {
        slot[v] = r;
    }
    let m = free.len();
    // (D - A_ff) W_f = A_fc W_c, with a tiny ridge so a free island without fixed neighbours
    // solves to zero instead of failing.
    let mut a = vec![0.0f64; m * m];
    let mut b = vec![0.0f64; m * 68];
    for (r, &v) in free.iter().enumerate() {
        a[r * m + r] = neighbours[v].len() as f64 + 1e-9;
        for &u in &neighbours[v] {
            let u = u as usize;
            if slot[u] != usize::MAX {
                a[r * m + slot[u]] -= 1.0;
            } else if let Some(w) = &fixed[u] {
                for &(k, x) in w {
                    b[r * 68 + k as usize] += x as f64;
                }
            }
        }
    }
    let solved = cholesky_solve(&mut a, &mut b, m, 68);
    (0..n)
        .map(|v| match &fixed[v] {
            Some(w) => w.clone(),
            None if slot[v] != usize::MAX && solved => {
                let row = &b[slot[v] * 68..(slot[v] + 1) * 68];
                row.iter().enumerate().filter(|(_, x)| x.abs() >= 1e-3).map(|(k, x)| (k as u8, *x as f32)).collect()
            }
            None => Vec::new(),
        })
        .collect()
}

/// Solve `A X = B` in place for a symmetric positive definite `m x m` `A` (row-major) and an
/// `m x k` `B` (overwritten with `X`). False if `A` is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], m: usize, k: usize) -> bool {
    // A = L L^T, L in the lower triangle of `a`.
    for j in 0..m {
        let mut d = a[j * m + j];
        for p in 0..j {
            d -= a[j * m + p] * a[j * m + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * m + j] = d;
        for i in j + 1..m {
            let mut s = a[i * m + j];
            for p in 0..j {
                s -= a[i * m + p] * a[j * m + p];
            }
            a[i * m + j] = s / d;
        }
    }
    // L Y = B, then L^T X = Y.
    for i in 0..m {
        for p in 0..i {
            let l = a[i * m + p];
            if l != 0.0 {
                for c in 0..k {
                    b[i * k + c] -= l * b[p * k + c];
                }
            }
        }
        let d = a[i * m + i];
        for c in 0..k {
            b[i * k + c] /= d;
        }
    }
    for i in (0..m).rev() {
        for p in i + 1..m {
            let l = a[p * m + i];
            if l != 0.0 {
                for c in 0..k {
                    b[i * k + c] -= l * b[p * k + c];
                }
            }
        }
        let d = a[i * m + i];
        for c in 0..k {
            b[i * k + c] /= d;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contour_anchors_are_the_landmarks_mesh_points() {
        for c in &CONTOURS {
            for &k in c.anchors {
                let [a, b] = MESH_TO_68[k as usize];
                assert!(c.points.contains(&a) || c.points.contains(&b), "landmark {k} is off its contour");
            }
        }
        assert!(FACE_OVAL.iter().all(|&i| (i as usize) < MESH_POINTS));
    }

    #[test]
    fn a_point_on_a_segment_follows_its_two_ends_by_position() {
        let w = project([3.0, 0.5], &[[0.0, 0.0], [4.0, 0.0], [8.0, 0.0]], &[10, 11, 12]);
        assert_eq!(w[0].0, 10);
        assert_eq!(w[1].0, 11);
        assert!((w[0].1 - 0.25).abs() < 1e-6 && (w[1].1 - 0.75).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn harmonic_weights_are_the_mean_of_the_neighbours() {
        // A strip 0 - 1 - 2 - 3 with the ends fixed: landmark 5 at vertex 0, nothing at vertex 3.
        let fixed = vec![Some(vec![(5u8, 1.0f32)]), None, None, Some(vec![])];
        let tris = [[0u32, 1, 1], [1, 2, 2], [2, 3, 3]];
        let w = harmonic(&fixed, &tris);
        let at = |v: usize| w[v].iter().find(|(k, _)| *k == 5).map_or(0.0, |x| x.1);
        assert!((at(1) - 2.0 / 3.0).abs() < 1e-5 && (at(2) - 1.0 / 3.0).abs() < 1e-5, "{w:?}");
        // A free vertex with no edges follows nothing.
        let w = harmonic(&[None, Some(vec![(1, 1.0)])], &[]);
        assert!(w[0].is_empty());
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2, 1));
        // 4x + 2y = 2, 2x + 3y = 1 -> x = 0.5, y = 0.
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve(&mut a, &mut [0.0, 0.0], 2, 1));
    }
}
