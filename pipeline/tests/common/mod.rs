//! Shared test helpers: where the shared test data, fixtures and registry checkpoints live, the
//! skip rule (skip with one printed line in a plain clone; fail loudly when CI=true), and the
//! benchmarks' environment knobs and device sync.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// `dir` if it exists; otherwise panic under CI, or print one skip line and return None.
fn require(dir: PathBuf, what: &str) -> Option<PathBuf> {
    if dir.is_dir() {
        return Some(dir);
    }
    if in_ci() {
        panic!("{what} not found at {} (required when CI=true)", dir.display());
    }
    eprintln!("skipped: {what} not found at {}", dir.display());
    None
}

/// `../shared/testdata` beside the workspace.
pub fn shared_testdata() -> Option<PathBuf> {
    require(workspace().join("../shared/testdata"), "shared test data")
}

/// SadTalker fixture dir: `VIPAVATAR_SADTALKER_FIXTURES` if set (must exist), else the default.
pub fn sadtalker_fixtures() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("VIPAVATAR_SADTALKER_FIXTURES") {
        let p = PathBuf::from(&dir);
        assert!(p.is_dir(), "VIPAVATAR_SADTALKER_FIXTURES={dir} does not exist");
        return Some(p);
    }
    require(workspace().join("../shared/fixtures/sadtalker"), "SadTalker fixtures")
}

/// The registry-fetched model dir (checkpoints/), when fetch.sh has run.
pub fn checkpoints() -> Option<PathBuf> {
    let dir = workspace().join("checkpoints");
    let files = ["mtcnn/pnet.pt", "face_landmark.tflite", "shape_predictor_68_face_landmarks.dat"];
    if files.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    if in_ci() {
        panic!("checkpoints missing in {} (scripts/setup.sh fetches them)", dir.display());
    }
    eprintln!("skipped: model files not fetched into {} (run checkpoints/fetch.sh)", dir.display());
    None
}

/// Registry test images (astronaut.png etc.) fetched by checkpoints/fetch.sh.
pub fn registry_image(name: &str) -> Option<PathBuf> {
    checkpoints().map(|d| d.join("testdata").join(name))
}

/// Read every tensor of a safetensors file into a map.
pub fn read_safetensors(path: &std::path::Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// A frame sink that keeps every rendered frame in memory.
#[derive(Default)]
#[cfg(feature = "opencv")]
pub struct Frames(pub Vec<vipavatar_pipeline::image::RgbImage>);

#[cfg(feature = "opencv")]
impl vipavatar_pipeline::engine::FrameSink for Frames {
    fn push(&mut self, frame: &vipavatar_pipeline::image::RgbImage) -> vipavatar_pipeline::Result<()> {
        self.0.push(frame.clone());
        Ok(())
    }
}

/// `$key` as a number, else `default` (the benchmarks' sizes).
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `$key` as a comma-separated list of numbers, else `default`; a malformed entry panics.
pub fn env_list(key: &str, default: &str) -> Vec<usize> {
    let text = std::env::var(key).unwrap_or_else(|_| default.to_string());
    text.split(',').map(|b| b.trim().parse().unwrap_or_else(|_| panic!("{key}: `{text}`"))).collect()
}

/// Wait for `device`'s queued work (CUDA runs asynchronously; timings need this).
pub fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
