//! Precompute on real photos with the real models: faces found, landmarks plausible, stable under
//! a 1-px shift, typed errors for face-free, tiny and broken images.

use crate::common;

use std::sync::OnceLock;
use vipavatar_pipeline::engine::PreprocessMode;
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::precompute::{AvatarAnalysis, ImageLimits, Precomputer};

fn models() -> Option<&'static Precomputer> {
    static P: OnceLock<Option<Precomputer>> = OnceLock::new();
    P.get_or_init(|| common::checkpoints().map(|d| Precomputer::load(&d, ImageLimits::default()).expect("load models")))
        .as_ref()
}

fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut buf = opencv::core::Vector::<u8>::new();
    opencv::imgcodecs::imencode(".png", &img.to_bgr_mat().unwrap(), &mut buf, &opencv::core::Vector::new()).unwrap();
    buf.iter().collect()
}

/// Anatomical sanity of 68 landmarks inside the detection box.
fn check_landmarks(name: &str, a: &AvatarAnalysis) {
    let lm = &a.landmarks.0;
    assert_eq!(lm.len(), 68, "{name}");
    let [x1, y1, x2, y2] = a.face.bbox;
    let (mx, my) = ((x2 - x1) * 0.25, (y2 - y1) * 0.25);
    for (i, p) in lm.iter().enumerate() {
        assert!(
            p[0] >= x1 - mx && p[0] <= x2 + mx && p[1] >= y1 - my && p[1] <= y2 + my,
            "{name}: landmark {i} {p:?} outside box {:?}",
            a.face.bbox
        );
    }
    let mean = |r: std::ops::Range<usize>| {
        let n = r.len() as f32;
        r.fold([0.0f32; 2], |s, i| [s[0] + lm[i][0] / n, s[1] + lm[i][1] / n])
    };
    let (eye_l, eye_r, mouth) = (mean(36..42), mean(42..48), mean(48..68));
    assert!(eye_l[0] < eye_r[0], "{name}: left eye right of right eye");
    assert!(eye_l[1] < lm[30][1] && eye_r[1] < lm[30][1], "{name}: eyes below nose tip");
    assert!(lm[30][1] < mouth[1], "{name}: nose tip below mouth");
    assert!(mouth[1] < lm[8][1], "{name}: mouth below chin");
    assert!(lm[48][0] < lm[54][0], "{name}: mouth corners swapped");
    assert!(lm[0][0] < lm[8][0] && lm[8][0] < lm[16][0], "{name}: jaw not left to right");
    // The 5 detector points agree with the landmarks (eye centres within 15% of the eye distance).
    let eye_dist = (eye_r[0] - eye_l[0]).hypot(eye_r[1] - eye_l[1]);
    for (pt, lmk) in [(a.face.points[0], eye_l), (a.face.points[1], eye_r)] {
        let d = (pt[0] - lmk[0]).hypot(pt[1] - lmk[1]);
        assert!(d < 0.15 * eye_dist, "{name}: detector eye {pt:?} vs landmark eye {lmk:?}");
    }
}

fn shared_images() -> Vec<std::path::PathBuf> {
    let Some(dir) = common::shared_testdata() else { return vec![] };
    let mut v: Vec<_> = std::fs::read_dir(dir.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn finds_a_face_with_plausible_landmarks_in_every_portrait() {
    let Some(p) = models() else { return };
    let mut paths = shared_images();
    paths.extend(common::registry_image("astronaut.png"));
    assert!(!paths.is_empty());
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let (img, a) = p.run(&bytes, PreprocessMode::Crop).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(a.face.score > 0.9, "{name}: score {}", a.face.score);
        assert!(a.faces_found >= 1);
        check_landmarks(&name, &a);
        let [x1, y1, x2, y2] = a.crop.face_box;
        assert!(
            x1 >= 0 && y1 >= 0 && x2 <= img.width as i64 && y2 <= img.height as i64 && x2 > x1 && y2 > y1,
            "{name}: crop {:?}",
            a.crop.face_box
        );
        assert!(
            a.pose.yaw.abs() < 45.0 && a.pose.pitch.abs() < 45.0 && a.pose.roll.abs() < 30.0,
            "{name}: pose {:?}",
            a.pose
        );
        eprintln!(
            "{name}: box {:?} score {:.3} pose {:?} timings {:?}",
            a.face.bbox, a.face.score, a.pose, a.timings_ms
        );
    }
}

#[test]
fn detection_and_landmarks_are_stable_under_a_one_pixel_shift() {
    let Some(p) = models() else { return };
    let Some(dir) = common::shared_testdata() else { return };
    let bytes = std::fs::read(dir.join("images/people_0.png")).unwrap();
    let (img, a) = p.run(&bytes, PreprocessMode::Crop).unwrap();
    // Shift right and down by one pixel (replicating the first row/column).
    let mut shifted = RgbImage::new(img.width, img.height);
    for y in 0..img.height {
        for x in 0..img.width {
            let px = img.pixel(x.saturating_sub(1), y.saturating_sub(1));
            let i = ((y * img.width + x) * 3) as usize;
            shifted.data[i..i + 3].copy_from_slice(&px);
        }
    }
    let (_, b) = p.run(&encode_png(&shifted), PreprocessMode::Crop).unwrap();
    for k in 0..4 {
        let d = b.face.bbox[k] - a.face.bbox[k] - 1.0;
        assert!(d.abs() < 3.0, "box coordinate {k} moved by {} (expected 1)", d + 1.0);
    }
    let n = a.landmarks.0.len() as f32;
    let mean_err: f32 = a
        .landmarks
        .0
        .iter()
        .zip(&b.landmarks.0)
        .map(|(p, q)| ((q[0] - p[0] - 1.0).powi(2) + (q[1] - p[1] - 1.0).powi(2)).sqrt())
        .sum::<f32>()
        / n;
    assert!(mean_err < 1.5, "landmarks moved inconsistently: mean error {mean_err} px");
}

fn expect_err(p: &Precomputer, bytes: &[u8], want: &str) {
    match p.run(bytes, PreprocessMode::Crop) {
        Err(e) => assert_eq!(e.code(), want, "got {e}"),
        Ok((_, a)) => panic!("expected {want}, found a face at {:?}", a.face.bbox),
    }
}

#[test]
fn images_without_faces_give_the_no_face_error() {
    let Some(p) = models() else { return };
    let mut noise = RgbImage::new(400, 300);
    let mut s = 12345u32;
    for v in &mut noise.data {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        *v = (s >> 24) as u8;
    }
    let flat = RgbImage { width: 320, height: 320, data: vec![90; 320 * 320 * 3] };
    expect_err(p, &encode_png(&noise), "no_face_found");
    expect_err(p, &encode_png(&flat), "no_face_found");
    for name in ["coffee.png", "rocket.jpg"] {
        if let Some(path) = common::registry_image(name) {
            expect_err(p, &std::fs::read(path).unwrap(), "no_face_found");
        }
    }
}

#[test]
fn broken_bytes_are_not_an_image_and_never_panic() {
    let Some(p) = models() else { return };
    let Some(path) = common::registry_image("astronaut.png") else { return };
    let bytes = std::fs::read(path).unwrap();
    expect_err(p, &bytes[..bytes.len() / 3], "not_an_image");
    expect_err(p, b"definitely not an image", "not_an_image");
    let mut corrupt = bytes.clone();
    for b in corrupt.iter_mut().skip(100).step_by(7) {
        *b ^= 0x5a;
    }
    expect_err(p, &corrupt, "not_an_image");
}

#[test]
fn small_images_are_upscaled_only_when_a_face_is_found() {
    let Some(p) = models() else { return };
    let Some(path) = common::registry_image("astronaut.png") else { return };
    let (img, _) = p.run(&std::fs::read(path).unwrap(), PreprocessMode::Crop).unwrap();
    let small = vipavatar_pipeline::image::resize(&img, 200, 200).unwrap();
    let (up, a) = p.run(&encode_png(&small), PreprocessMode::Crop).unwrap();
    let f = a.upscaled.expect("upscaling must be reported");
    assert!((f - 256.0 / 200.0).abs() < 1e-3);
    assert_eq!((up.width, up.height), (256, 256));
    check_landmarks("astronaut 200px", &a);

    let flat = RgbImage { width: 120, height: 200, data: vec![200; 120 * 200 * 3] };
    expect_err(p, &encode_png(&flat), "image_too_small");
}

#[test]
fn preprocess_modes_choose_the_face_region() {
    let Some(p) = models() else { return };
    let Some(dir) = common::shared_testdata() else { return };
    let bytes = std::fs::read(dir.join("images/full_body_1.jpg")).unwrap();
    let (img, crop) = p.run(&bytes, PreprocessMode::Crop).unwrap();
    let (_, full) = p.run(&bytes, PreprocessMode::Full).unwrap();
    let (_, resize) = p.run(&bytes, PreprocessMode::Resize).unwrap();
    assert_eq!(crop.crop.face_box, full.crop.face_box);
    assert_eq!(resize.crop.face_box, [0, 0, img.width as i64, img.height as i64]);
    // In a full-body photo the face region is a small part of the frame and contains the face.
    let [x1, y1, x2, y2] = crop.crop.face_box;
    assert!(((x2 - x1) * (y2 - y1)) < (img.width * img.height / 4) as i64);
    let c = [(crop.face.bbox[0] + crop.face.bbox[2]) / 2.0, (crop.face.bbox[1] + crop.face.bbox[3]) / 2.0];
    assert!(c[0] > x1 as f32 && c[0] < x2 as f32 && c[1] > y1 as f32 && c[1] < y2 as f32);
}
