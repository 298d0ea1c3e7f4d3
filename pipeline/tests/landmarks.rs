//! dlib 68-point shape predictor on the real model: file structure, landmarks on the shared test
//! images (OpenCV Haar box -> predict -> 5-point refit -> predict), anatomical order, stability
//! under 1-px shifts, RGB/gray agreement, and malformed model bytes.

use crate::common;

use opencv::core::{Mat, Point as CvPoint, Rect, Scalar, Size, Vector};
use opencv::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;
use vipavatar_pipeline::face::landmarks::{five_points, FaceRect, GrayImage, ShapePredictor};
use vipavatar_pipeline::face::Point;
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::PipelineError;

const MODEL_FILE: &str = "shape_predictor_68_face_landmarks.dat";
const IMAGES: [&str; 6] = ["people_0.png", "happy.png", "sad.png", "art_0.png", "full4.jpeg", "full_body_1.jpg"];
const HAAR: &str = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

/// dlib 20.0.1's own output (PyPI `dlib-bin`: `dlib.shape_predictor(..)(img, rect)` on
/// `dlib.load_rgb_image`) for three PNG test images: the HOG detector's box for people_0 and happy,
/// and a box reaching past art_0's top-left corner. Rects are dlib's (left, top, right, bottom).
/// (image, dlib rect, its 68 points).
type Golden = (&'static str, [i32; 4], [[i32; 2]; 68]);

#[rustfmt::skip]
const DLIB_GOLDEN: [Golden; 3] = [
    (
        "people_0.png",
        [150, 98, 304, 253],
        [
            [154, 143], [157, 164], [162, 184], [167, 203], [174, 223], [184, 241], [198, 255], [215, 266], [235, 267],
            [254, 263], [271, 250], [286, 233], [297, 215], [303, 195], [305, 174], [308, 154], [308, 133], [161, 131],
            [172, 123], [187, 122], [201, 126], [216, 131], [240, 130], [254, 123], [268, 118], [283, 117], [296, 124],
            [229, 143], [230, 157], [231, 172], [232, 187], [220, 196], [226, 198], [232, 201], [239, 198], [244, 194],
            [179, 146], [188, 140], [200, 140], [210, 148], [199, 151], [187, 152], [250, 145], [259, 137], [271, 136],
            [280, 142], [273, 148], [261, 148], [203, 219], [215, 215], [226, 211], [233, 213], [240, 211], [250, 214],
            [261, 218], [251, 229], [241, 234], [233, 235], [226, 235], [215, 231], [209, 221], [226, 221], [233, 222],
            [240, 221], [256, 219], [240, 221], [233, 223], [226, 222],
        ],
    ),
    (
        "happy.png",
        [46, 81, 201, 236],
        [
            [61, 122], [61, 141], [65, 159], [68, 177], [74, 194], [85, 208], [97, 221], [111, 231], [128, 234],
            [143, 232], [157, 222], [169, 210], [179, 197], [185, 181], [189, 164], [192, 147], [192, 130], [69, 105],
            [80, 100], [92, 101], [104, 105], [115, 110], [142, 110], [153, 106], [163, 104], [174, 102], [184, 106],
            [129, 122], [130, 136], [130, 150], [131, 165], [117, 170], [123, 173], [129, 175], [136, 173], [141, 170],
            [83, 120], [91, 115], [101, 116], [109, 124], [100, 124], [90, 124], [147, 125], [155, 118], [164, 117],
            [171, 122], [165, 125], [156, 126], [102, 187], [113, 186], [123, 186], [130, 188], [137, 186], [146, 186],
            [154, 187], [145, 196], [136, 201], [128, 202], [121, 201], [112, 196], [106, 189], [122, 191], [129, 192],
            [137, 191], [150, 189], [137, 191], [129, 192], [122, 191],
        ],
    ),
    (
        "art_0.png",
        [-30, -20, 320, 310],
        [
            [-42, 98], [-37, 139], [-29, 183], [-13, 227], [14, 263], [48, 291], [89, 317], [133, 328], [168, 328],
            [196, 315], [214, 291], [229, 254], [240, 217], [248, 181], [251, 148], [250, 115], [243, 85], [32, 78],
            [55, 61], [83, 55], [113, 57], [140, 67], [179, 64], [195, 55], [212, 49], [227, 46], [240, 53],
            [162, 90], [170, 116], [176, 140], [184, 165], [134, 180], [154, 183], [175, 186], [192, 179], [205, 171],
            [65, 94], [81, 87], [98, 85], [113, 93], [99, 96], [83, 97], [187, 85], [199, 78], [213, 76],
            [224, 79], [213, 85], [201, 86], [93, 224], [122, 211], [150, 207], [171, 210], [189, 204], [207, 205],
            [218, 214], [206, 235], [188, 251], [169, 256], [147, 256], [121, 247], [101, 224], [150, 218], [171, 219],
            [188, 216], [213, 216], [187, 231], [169, 237], [148, 237],
        ],
    ),
];

fn model_path() -> Option<PathBuf> {
    let path = common::workspace().join("checkpoints").join(MODEL_FILE);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{} missing (checkpoints/fetch.sh fetches it)", path.display());
    }
    eprintln!("skipped: {} not fetched (run checkpoints/fetch.sh)", path.display());
    None
}

/// The model, loaded once per test binary (None = skip).
fn model() -> Option<&'static ShapePredictor> {
    static MODEL: OnceLock<Option<ShapePredictor>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_path()?;
            let start = Instant::now();
            let model = ShapePredictor::load(&path).expect("load the 68-point model");
            eprintln!("model load: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
            Some(model)
        })
        .as_ref()
}

/// Model and test image dir, or None (after one printed line) when either is missing.
fn setup() -> Option<(&'static ShapePredictor, PathBuf)> {
    let model = model()?;
    let images = common::shared_testdata()?.join("images");
    Some((model, images))
}

fn load_rgb(path: &std::path::Path) -> RgbImage {
    let mat = opencv::imgcodecs::imread(path.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
    assert!(!mat.empty(), "cannot decode {}", path.display());
    RgbImage::from_bgr_mat(&mat).unwrap()
}

/// The most-confirmed OpenCV Haar-cascade face, as a dlib-style rectangle.
fn haar_face(img: &RgbImage) -> FaceRect {
    let mut gray = Mat::default();
    opencv::imgproc::cvt_color_def(&img.to_bgr_mat().unwrap(), &mut gray, opencv::imgproc::COLOR_BGR2GRAY).unwrap();
    let mut equalized = Mat::default();
    opencv::imgproc::equalize_hist(&gray, &mut equalized).unwrap();
    let mut cascade = opencv::objdetect::CascadeClassifier::new(HAAR).unwrap();
    let (mut faces, mut votes) = (Vector::<Rect>::new(), Vector::<i32>::new());
    let min_side = (img.width.min(img.height) / 10) as i32;
    cascade
        .detect_multi_scale2(
            &equalized,
            &mut faces,
            &mut votes,
            1.1,
            5,
            0,
            Size::new(min_side, min_side),
            Size::new(0, 0),
        )
        .unwrap();
    // The most-confirmed detection (the largest can be a false positive on clothing).
    let (face, _) = faces.iter().zip(votes.iter()).max_by_key(|(_, v)| *v).expect("the Haar cascade finds a face");
    FaceRect::from_xywh(face.x.into(), face.y.into(), face.width.into(), face.height.into()).unwrap()
}

struct Analysis {
    haar: FaceRect,
    refined: FaceRect,
    first: Vec<Point>,
    points: Vec<Point>,
}

/// Haar box -> landmarks -> 5 points -> refitted box -> landmarks.
fn analyse(model: &ShapePredictor, img: &RgbImage) -> Analysis {
    let haar = haar_face(img);
    let first = model.predict(img, haar).0;
    let refined = model.rect_from_points5(&five_points(&first).unwrap()).unwrap();
    let points = model.predict(img, refined).0;
    Analysis { haar, refined, first, points }
}

fn mean_distance(a: &[Point], b: &[Point], offset: [f32; 2]) -> f32 {
    let sum: f32 = a.iter().zip(b).map(|(p, q)| (q[0] - p[0] - offset[0]).hypot(q[1] - p[1] - offset[1])).sum();
    sum / a.len() as f32
}

fn mean_y(points: &[Point], range: std::ops::Range<usize>) -> f32 {
    points[range.clone()].iter().map(|p| p[1]).sum::<f32>() / range.len() as f32
}

#[test]
fn model_file_has_the_known_structure() {
    let Some(model) = model() else { return };
    let s = model.summary();
    assert_eq!(s.parts, 68);
    assert_eq!(s.cascades, 15);
    assert_eq!(s.trees_per_cascade, 500);
    assert_eq!(s.tree_depth, 4);
    assert_eq!(s.features_per_cascade, vec![500; 15]);
    // The mean shape lies in (roughly) the unit box of the face rectangle, jaw left to right.
    let mean = model.mean_shape();
    assert!(mean.iter().all(|p| (-0.2..1.2).contains(&p[0]) && (-0.2..1.2).contains(&p[1])), "{mean:?}");
    assert!(mean[0][0] < mean[8][0] && mean[8][0] < mean[16][0]);
}

#[test]
fn rect_from_points5_inverts_the_mean_shape_and_rejects_degenerate_points() {
    let Some(model) = model() else { return };
    // The mean shape's own 5 points placed in a known box give that box back.
    let (left, top, size) = (120.0f32, 45.5f32, 210.0f32);
    let placed = five_points(&model.mean_shape()).unwrap().map(|p| [left + p[0] * size, top + p[1] * size]);
    let rect = model.rect_from_points5(&placed).unwrap();
    let got = [rect.left(), rect.top(), rect.right(), rect.bottom()];
    let want = [left, top, left + size, top + size].map(f64::from);
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3), "{got:?} vs {want:?}");
    for bad in [[[10.0, 10.0]; 5], [[f32::NAN, 1.0]; 5]] {
        assert!(matches!(model.rect_from_points5(&bad), Err(PipelineError::NoFace)), "{bad:?}");
    }
    assert!(FaceRect::new(5.0, 5.0, 5.0, 9.0).is_err() && FaceRect::new(0.0, f64::NAN, 1.0, 1.0).is_err());
}

#[test]
fn matches_dlib_exactly_on_integer_boxes() {
    let Some((model, dir)) = setup() else { return };
    for (name, [l, t, r, b], expected) in DLIB_GOLDEN {
        let img = load_rgb(&dir.join(name));
        let rect = FaceRect::new(l.into(), t.into(), r.into(), b.into()).unwrap();
        let got = model.predict(&img, rect).0;
        // dlib rounds the final points to the nearest pixel.
        let rounded: Vec<[i32; 2]> =
            got.iter().map(|p| [(p[0] + 0.5).floor() as i32, (p[1] + 0.5).floor() as i32]).collect();
        assert_eq!(rounded, expected.to_vec(), "{name}");
    }
}

#[test]
fn landmarks_follow_face_anatomy_on_test_images() {
    let Some((model, dir)) = setup() else { return };
    for name in IMAGES {
        let img = load_rgb(&dir.join(name));
        let a = analyse(model, &img);
        let p = &a.points;
        assert_eq!(p.len(), 68, "{name}");
        let (r, w, h) = (a.refined, a.refined.width() as f32, a.refined.height() as f32);
        eprintln!(
            "{name}: haar ({:.0},{:.0},{:.0},{:.0}) refined ({:.1},{:.1},{:.1},{:.1}) first->refined {:.2} px",
            a.haar.left(),
            a.haar.top(),
            a.haar.right(),
            a.haar.bottom(),
            r.left(),
            r.top(),
            r.right(),
            r.bottom(),
            mean_distance(&a.first, p, [0.0, 0.0])
        );
        // Inside the refitted box grown by 15% per side.
        let (mx, my) = (0.15 * w, 0.15 * h);
        for (i, q) in p.iter().enumerate() {
            let inside = q[0] >= r.left() as f32 - mx
                && q[0] <= r.right() as f32 + mx
                && q[1] >= r.top() as f32 - my
                && q[1] <= r.bottom() as f32 + my;
            assert!(inside, "{name}: point {i} {q:?} outside {r:?}");
        }
        // The refitted box agrees with the Haar box about where the face is.
        let (hc, rc) = (
            [(a.haar.left() + a.haar.right()) / 2.0, (a.haar.top() + a.haar.bottom()) / 2.0],
            [(r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0],
        );
        let centre_shift = (hc[0] - rc[0]).hypot(hc[1] - rc[1]) / a.haar.width();
        let scale = r.width() / a.haar.width();
        assert!(
            centre_shift < 0.25 && (0.6..1.4).contains(&scale),
            "{name}: shift {centre_shift:.2}, scale {scale:.2}"
        );
        // Refitting the box moves the landmarks only a little (relative to the face size).
        assert!(mean_distance(&a.first, p, [0.0, 0.0]) < 0.05 * w, "{name}: refit moved the landmarks too much");

        // Anatomical order (image left = the subject's right).
        let max_x = |range: std::ops::Range<usize>| p[range].iter().map(|q| q[0]).fold(f32::MIN, f32::max);
        let min_x = |range: std::ops::Range<usize>| p[range].iter().map(|q| q[0]).fold(f32::MAX, f32::min);
        assert!(max_x(36..42) < min_x(42..48), "{name}: eyes out of order");
        let eyes = mean_y(p, 36..48);
        assert!(eyes < p[30][1], "{name}: eyes not above the nose tip");
        assert!(p[30][1] < mean_y(p, 48..68), "{name}: nose tip not above the mouth");
        assert!(p[48..68].iter().all(|q| q[1] < p[8][1]), "{name}: mouth not above the chin");
        assert!(mean_y(p, 17..27) < eyes, "{name}: brows not above the eyes");
        assert!(p[48][0] < p[54][0], "{name}: mouth corners out of order");
        // Jaw: the lower part runs left to right; the upper ends are near-vertical, so there each
        // point only has to be left of its mirror partner.
        assert!(
            p[2..15].windows(2).all(|q| q[0][0] < q[1][0]),
            "{name}: jaw does not run left to right: {:?}",
            &p[0..17]
        );
        assert!((0..8).all(|i| p[i][0] < p[16 - i][0]), "{name}: jaw sides swapped: {:?}", &p[0..17]);
    }
}

/// The image moved right/down by 1 px (new border column/row black).
fn shifted(img: &RgbImage) -> RgbImage {
    let mut out = RgbImage::new(img.width + 1, img.height + 1);
    let (src_row, dst_row) = (img.width as usize * 3, (img.width as usize + 1) * 3);
    for y in 0..img.height as usize {
        let dst = (y + 1) * dst_row + 3;
        out.data[dst..dst + src_row].copy_from_slice(&img.data[y * src_row..(y + 1) * src_row]);
    }
    out
}

#[test]
fn landmarks_are_stable_under_one_pixel_shifts() {
    let Some((model, dir)) = setup() else { return };
    for name in IMAGES {
        let img = load_rgb(&dir.join(name));
        let a = analyse(model, &img);
        // Image and box shifted together: the landmarks follow by (1, 1).
        let moved = model.predict(&shifted(&img), a.refined.translated(1.0, 1.0)).0;
        let err = mean_distance(&a.points, &moved, [1.0, 1.0]);
        eprintln!("{name}: image+box shift error {err:.3} px");
        assert!(err < 1.5, "{name}: image+box shift error {err} px");
        // Only the box moved (by 1 px, and by 5% of its size): the landmarks stay on the face
        // instead of following the box.
        let w = a.refined.width();
        for (dx, dy) in [(1.0, 0.0), (0.0, -1.0), (0.05 * w, 0.0), (0.0, 0.05 * w), (-0.035 * w, -0.035 * w)] {
            let jittered = model.predict(&img, a.refined.translated(dx, dy)).0;
            let moved = mean_distance(&a.points, &jittered, [0.0, 0.0]);
            eprintln!("{name}: box moved ({dx:.1}, {dy:.1}) -> landmarks moved {moved:.2} px");
            // A predictor tied to its box would move them by the full 5%.
            let limit = (0.015 * w as f32).max(1.5);
            assert!(moved < limit, "{name}: box moved ({dx}, {dy}), landmarks moved {moved} px");
        }
    }
}

#[test]
fn rgb_and_gray_inputs_agree_and_predict_is_fast() {
    let Some((model, dir)) = setup() else { return };
    let img = load_rgb(&dir.join("people_0.png"));
    let rect = haar_face(&img);
    let from_rgb = model.predict(&img, rect);
    assert_eq!(from_rgb, model.predict(&GrayImage::from_rgb(&img), rect));
    // A box partly outside the image still gives 68 finite points (outside pixels read as 0).
    let edge = model.predict(&img, rect.translated(-rect.left() - rect.width() / 2.0, 0.0));
    assert!(edge.0.iter().all(|p| p[0].is_finite() && p[1].is_finite()));
    // Timing is reported, not asserted.
    let runs = 50;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(model.predict(&img, rect));
    }
    eprintln!("predict: {:.2} ms per face (mean of {runs})", start.elapsed().as_secs_f64() * 1e3 / runs as f64);
}

#[test]
fn malformed_model_bytes_are_checkpoint_errors() {
    let Some(path) = model_path() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let expect_checkpoint = |data: &[u8], case: &str| match ShapePredictor::from_bytes(data, "bad.dat") {
        Err(PipelineError::Checkpoint { file, reason }) => {
            assert_eq!(file, "bad.dat", "{case}");
            eprintln!("{case}: {reason}");
        }
        other => panic!("{case}: expected a checkpoint error, got {other:?}"),
    };
    for cut in [0, 1, 2, 3, 100, 10_000, bytes.len() / 2, bytes.len() - 1] {
        expect_checkpoint(&bytes[..cut], &format!("truncated to {cut} bytes"));
    }
    let mut with_tail = bytes.clone();
    with_tail.push(1);
    expect_checkpoint(&with_tail, "trailing byte");
    let mut version = bytes.clone();
    version[1] = 2;
    expect_checkpoint(&version, "version 2");
    // The file starts 01 01 (version 1), 81 88 (rows -136), 81 01 (cols -1).
    let mut odd_rows = bytes.clone();
    odd_rows[3] = 0x87;
    expect_checkpoint(&odd_rows, "135 shape values");
    let mut two_cols = bytes.clone();
    two_cols[5] = 0x02;
    expect_checkpoint(&two_cols, "2-column initial shape");
    expect_checkpoint(b"not a dlib model at all", "text");
    expect_checkpoint(&vec![0xFFu8; 4096], "0xFF bytes");
    // A model for a different number of points (the 5-point one is in the same sdist) is refused.
    let five = path.with_file_name("shape_predictor_5_face_landmarks.dat");
    if five.is_file() {
        expect_checkpoint(&std::fs::read(&five).unwrap(), "5-point model");
    }
    match ShapePredictor::load(&path.with_file_name("no_such_model.dat")) {
        Err(PipelineError::Checkpoint { file, .. }) => assert!(file.ends_with("no_such_model.dat")),
        other => panic!("missing file: expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn debug_image_with_landmarks() {
    let Some((model, dir)) = setup() else { return };
    let img = load_rgb(&dir.join("people_0.png"));
    let a = analyse(model, &img);
    let mut mat = img.to_bgr_mat().unwrap();
    let r = a.refined;
    let rect = Rect::new(r.left() as i32, r.top() as i32, r.width() as i32, r.height() as i32);
    opencv::imgproc::rectangle_def(&mut mat, rect, Scalar::new(255.0, 128.0, 0.0, 0.0)).unwrap();
    for (i, p) in a.points.iter().enumerate() {
        let colour =
            if (36..48).contains(&i) { Scalar::new(0.0, 255.0, 0.0, 0.0) } else { Scalar::new(0.0, 0.0, 255.0, 0.0) };
        let centre = CvPoint::new(p[0].round() as i32, p[1].round() as i32);
        opencv::imgproc::circle(&mut mat, centre, 2, colour, -1, opencv::imgproc::LINE_AA, 0).unwrap();
    }
    let h = a.haar;
    let haar = Rect::new(h.left() as i32, h.top() as i32, h.width() as i32, h.height() as i32);
    opencv::imgproc::rectangle_def(&mut mat, haar, Scalar::new(0.0, 255.0, 255.0, 0.0)).unwrap();
    let out = std::env::temp_dir().join("landmarks_people_0.png");
    assert!(opencv::imgcodecs::imwrite_def(out.to_str().unwrap(), &mat).unwrap());
    eprintln!("wrote {}", out.display());
}
