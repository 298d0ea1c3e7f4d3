//! The classic engine's warp mesh on a real portrait: MediaPipe's points join it, cover the
//! animated region without holes, and follow the landmarks with weights a harmonic blend allows.

use crate::classic_support as sup;
use vipavatar_pipeline::classic::mesh::{point_in_polygon, VertexKind};
use vipavatar_pipeline::classic::ClassicEngine;
use vipavatar_pipeline::engine::PreprocessMode;

#[test]
fn the_face_mesh_points_join_the_warp_mesh() {
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    assert_eq!(av.analysis.mesh.as_ref().map(Vec::len), Some(468), "the analysis keeps the whole face mesh");
    let mesh = ClassicEngine::warp_mesh(&av.prepared).expect("mesh");
    let n = mesh.points.len();
    let dense = mesh.kind.iter().filter(|k| matches!(k, VertexKind::Dense(_))).count();
    eprintln!("{n} vertices, {dense} from the face mesh, {} triangles", mesh.triangles.len());
    assert!(dense > 300, "only {dense} face-mesh points joined");

    // The triangles tile the region: no holes (unwarped pixels) and no overlaps.
    let [_, _, w, h] = mesh.region;
    let area: f32 = mesh
        .triangles
        .iter()
        .map(|t| {
            let [a, b, c] = t.map(|v| mesh.points[v as usize]);
            0.5 * ((b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])).abs()
        })
        .sum();
    let full = ((w - 1) * (h - 1)) as f32;
    assert!((area - full).abs() / full < 0.02, "triangles cover {area} of {full}");

    // The inner lips run corner to corner through the face mesh's points, not just the 68's.
    let [upper, lower] = &mesh.inner_lips;
    assert!(upper.len() >= 9 && lower.len() >= 9, "inner lips of {} and {} vertices", upper.len(), lower.len());
    assert_eq!((upper[0], upper[upper.len() - 1]), (60, 64));
    assert_eq!((lower[0], lower[lower.len() - 1]), (60, 64));

    // Following weights: none negative and none above the whole (the harmonic blend's maximum
    // principle); a point on an inner lip follows its lip entirely.
    for (v, f) in mesh.follow.iter().enumerate() {
        let sum: f32 = f.iter().map(|x| x.1).sum();
        assert!(f.iter().all(|x| x.1 >= 0.0) && sum <= 1.0 + 1e-3, "vertex {v}: {f:?}");
    }
    for &v in upper.iter().chain(lower) {
        let sum: f32 = mesh.follow[v as usize].iter().map(|x| x.1).sum();
        assert!((sum - 1.0).abs() < 1e-5, "lip vertex {v}: {:?}", mesh.follow[v as usize]);
    }
    // Cheeks move a little with the mouth: some free points follow the lip corners partly.
    let corner_share = |v: usize| mesh.follow[v].iter().filter(|x| x.0 == 48 || x.0 == 54).map(|x| x.1).sum::<f32>();
    let partly = (0..n).filter(|&v| matches!(mesh.kind[v], VertexKind::Dense(_))).filter(|&v| {
        let s = corner_share(v);
        s > 0.05 && s < 0.9
    });
    assert!(partly.count() >= 10, "the cheeks do not follow the mouth corners");
}

#[test]
fn dlib_landmarks_keep_the_68_point_mesh() {
    // The same analysis without the face mesh (as dlib gives it) builds the coarse mesh.
    let Some(av) = sup::avatar("people_0.png", PreprocessMode::Crop, 256) else { return };
    let mut analysis = av.analysis.clone();
    analysis.mesh = None;
    let input = vipavatar_pipeline::engine::AvatarInput { image: &av.image, analysis: &analysis };
    let prepared = vipavatar_pipeline::engine::Engine::prepare(&sup::engine(), &input, 256).expect("prepare");
    let mesh = ClassicEngine::warp_mesh(&prepared).expect("mesh");
    assert!(mesh.kind.iter().all(|k| !matches!(k, VertexKind::Dense(_))));
    assert_eq!(mesh.inner_lips, [vec![60, 61, 62, 63, 64], vec![60, 67, 66, 65, 64]]);
}

#[test]
fn a_chin_at_the_canvas_edge_keeps_the_ring_outside_the_face() {
    // art_0's crop puts the chin about 3 px above the canvas's bottom edge. A head-ring point
    // pulled inside the border there would sit above the chin, and the triangles between them
    // would fold over as the jaw drops (a stair-step band along the bottom of the frame).
    let Some(av) = sup::avatar("art_0.png", PreprocessMode::Crop, 256) else { return };
    let mesh = ClassicEngine::warp_mesh(&av.prepared).expect("mesh");
    let [x, y, w, h] = mesh.region;
    assert_eq!(y + h, 256, "the region reaches the canvas's bottom edge");
    // The face: the jaw, then the brows from right to left.
    let face: Vec<[f32; 2]> = (0..17).chain((17..27).rev()).map(|i| mesh.points[i]).collect();
    for (v, k) in mesh.kind.iter().enumerate() {
        if matches!(k, VertexKind::Ring | VertexKind::Forehead) {
            assert!(
                !point_in_polygon(mesh.points[v], &face),
                "{k:?} vertex {v} at {:?} lies inside the face",
                mesh.points[v]
            );
        }
    }
    // The bottom side is the canvas's edge, so its points may follow the chin out of the frame;
    // the other sides stay fixed.
    let edge: Vec<usize> = (0..mesh.kind.len()).filter(|&v| mesh.kind[v] == VertexKind::Edge).collect();
    assert!(!edge.is_empty() && edge.iter().all(|&v| mesh.points[v][1] >= (h - 1) as f32), "edge vertices {edge:?}");
    assert!(edge.iter().any(|&v| mesh.follow[v].iter().any(|f| f.0 == 8)), "the bottom edge does not follow the chin");
    eprintln!("region {x},{y} {w}x{h}: {} edge vertices", edge.len());
}
