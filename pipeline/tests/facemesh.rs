//! MediaPipe's face mesh (the default landmark model): our TFLite reader and graph runner against
//! Google's own runtime on the fixture crops (`fixtures/facemesh`, made by its `make_fixture.py`),
//! the mesh's 68 points against dlib's on the shared portraits (normalised mean error, reported
//! per image), and typed errors for a broken model file.

use crate::common;

use std::path::{Path, PathBuf};
use vipavatar_pipeline::engine::PreprocessMode;
use vipavatar_pipeline::face::landmarks::facemesh::{FaceMesh, FILE, MESH_POINTS};
use vipavatar_pipeline::precompute::{ImageLimits, LandmarkModel, Precomputer};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/facemesh")
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn face_mesh_matches_the_tflite_runtime() {
    let Some(ck) = common::checkpoints() else { return };
    let path = ck.join(FILE);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_sha256"].as_str(), Some(sha256(&path).as_str()), "the fixture was made from another file");
    let model = FaceMesh::load(&path).expect("load the face mesh");
    let [lo, hi] = [0, 1].map(|i| config["input_range"][i].as_f64().unwrap() as f32);
    let mesh_tol = config["tolerance"]["mesh_px_max"].as_f64().unwrap() as f32;
    let flag_tol = config["tolerance"]["face_flag_max"].as_f64().unwrap() as f32;
    let cases = config["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["input"].as_str().unwrap();
        let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
        let img = vipavatar_pipeline::image::decode(&bytes, u64::MAX).unwrap();
        assert_eq!((img.width as usize, img.height as usize), (model.side(), model.side()), "{name}");
        let crop: Vec<f32> = img.data.iter().map(|&v| v as f32 / 255.0 * (hi - lo) + lo).collect();
        let (points, flag) = model.run_crop(&crop).unwrap();
        let want: Vec<f32> = case["mesh"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(points.len() * 3, want.len(), "{name}");
        assert_eq!(points.len(), MESH_POINTS);
        let err = points.iter().flatten().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let flag_err = (flag - case["face_flag"].as_f64().unwrap() as f32).abs();
        eprintln!("{name}: max mesh error {err:.5} px (of 192), face flag error {flag_err:.5}");
        assert!(err <= mesh_tol, "{name}: mesh differs by {err} px (tolerance {mesh_tol})");
        assert!(flag_err <= flag_tol, "{name}: face flag differs by {flag_err} (tolerance {flag_tol})");
    }
}

/// Mean distance of the 68 points to dlib's, over dlib's outer-eye-corner distance (the 300-W
/// "inter-ocular" normalisation), for all points and for the inner face (brows, eyes, nose,
/// mouth: 17..68) alone.
fn nme(mesh: &[[f32; 2]], dlib: &[[f32; 2]]) -> (f32, f32) {
    let d = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
    let ocular = d(dlib[36], dlib[45]);
    let errs: Vec<f32> = mesh.iter().zip(dlib).map(|(a, b)| d(*a, *b) / ocular).collect();
    (errs.iter().sum::<f32>() / 68.0, errs[17..].iter().sum::<f32>() / 51.0)
}

#[test]
fn mesh_landmarks_agree_with_dlibs_on_the_test_portraits() {
    let Some(ck) = common::checkpoints() else { return };
    let Some(shared) = common::shared_testdata() else { return };
    let mesh = Precomputer::load_with(&ck, ImageLimits::default(), LandmarkModel::Mediapipe).unwrap();
    let dlib = Precomputer::load_with(&ck, ImageLimits::default(), LandmarkModel::Dlib).unwrap();
    assert_eq!((mesh.landmark_model(), dlib.landmark_model()), (LandmarkModel::Mediapipe, LandmarkModel::Dlib));
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(shared.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths.extend(common::registry_image("astronaut.png"));
    let stage = |a: &vipavatar_pipeline::precompute::AvatarAnalysis| {
        a.timings_ms.iter().find(|(s, _)| s == "landmarks").map(|(_, ms)| *ms).unwrap_or(f64::NAN)
    };
    let mut worst = 0.0f32;
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(path).unwrap();
        let (_, a) = mesh.run(&bytes, PreprocessMode::Crop).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, b) = dlib.run(&bytes, PreprocessMode::Crop).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.landmark_model, LandmarkModel::Mediapipe);
        assert_eq!(a.face, b.face, "{name}: the same detector ran");
        let (all, inner) = nme(&a.landmarks.0, &b.landmarks.0);
        eprintln!(
            "{name}: NME vs dlib {:.2}% (inner face {:.2}%); landmarks stage {:.1} ms (dlib {:.1} ms)",
            all * 100.0,
            inner * 100.0,
            stage(&a),
            stage(&b)
        );
        worst = worst.max(all);
        // The crop geometry that engines build on stays close to dlib's.
        let side = (b.crop.face_box[2] - b.crop.face_box[0]) as f32;
        for k in 0..4 {
            let moved = (a.crop.face_box[k] - b.crop.face_box[k]).abs() as f32;
            assert!(moved < 0.1 * side, "{name}: crop edge {k} moved {moved} px of {side}");
        }
    }
    assert!(worst < 0.06, "a portrait's mesh landmarks are {:.1}% of the eye distance from dlib's", worst * 100.0);
}

#[test]
fn a_broken_model_file_is_a_checkpoint_error() {
    let Some(ck) = common::checkpoints() else { return };
    let bytes = std::fs::read(ck.join(FILE)).unwrap();
    let dir = std::env::temp_dir().join(format!("facemesh-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, cut) in
        [("truncated", bytes[..bytes.len() / 3].to_vec()), ("empty", Vec::new()), ("header only", bytes[..8].to_vec())]
    {
        let path = dir.join(what.replace(' ', "_"));
        std::fs::write(&path, &cut).unwrap();
        match FaceMesh::load(&path) {
            Err(e) => assert_eq!(e.code(), "checkpoint_error", "{what}: {e}"),
            Ok(_) => panic!("{what}: a broken file loaded"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_landmark_model_setting_is_checked() {
    assert_eq!("mediapipe".parse::<LandmarkModel>().unwrap(), LandmarkModel::Mediapipe);
    assert_eq!(" DLIB ".parse::<LandmarkModel>().unwrap(), LandmarkModel::Dlib);
    let e = "dlib68".parse::<LandmarkModel>().unwrap_err();
    assert_eq!(e.code(), "config_error");
    assert!(e.to_string().contains("mediapipe"), "{e}");
    assert_eq!(LandmarkModel::default(), LandmarkModel::Mediapipe);
}
