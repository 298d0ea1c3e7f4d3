//! Helpers shared by the `sadtalker_*` parity tests: fixture files (located by
//! `common::sadtalker_fixtures`, which applies the skip / fail-under-CI rule), building the
//! networks from the fixture weights, and max-abs-error comparison with a printed report line.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Device of the parity runs: `$VIPAVATAR_DEVICE` (default auto: CUDA when present, else CPU).
pub fn device() -> tch::Device {
    vipavatar_pipeline::device::device_from_env().expect("VIPAVATAR_DEVICE")
}

/// The fixture directory, or None (after one printed skip line) in a plain clone.
pub fn fixture_dir() -> Option<PathBuf> {
    crate::common::sadtalker_fixtures()
}

/// Every tensor of `<fixtures>/<name>`.
pub fn io(name: &str) -> Option<HashMap<String, Tensor>> {
    fixture_dir().map(|d| crate::common::read_safetensors(&d.join(name)))
}

/// A seed of the fixture set, from the "Seeds" table of its `README.md` (`| what | seed |`): the
/// row whose `what` cell starts with `what`, its first number. The fixture files carry only
/// some seeds in their safetensors metadata (the waveform's, not the blink draw's), so the
/// README, which is part of the set and hashed in its `manifest.json`, is where they live.
pub fn readme_seed(dir: &Path, what: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join("README.md")).expect("fixture README.md");
    let row = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('|'))
        .find(|l| l.trim_start().starts_with(what))
        .unwrap_or_else(|| panic!("fixture README.md has no seed row starting with `{what}`"));
    let cell = row.split('|').nth(1).unwrap_or_else(|| panic!("seed row `{row}` has no seed cell"));
    let digits: String = cell.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("seed cell `{cell}` of row `{what}` is not a number"))
}

/// `(io tensors, weights file path)` for a network fixture.
pub fn io_and_weights(io_name: &str, weights_name: &str) -> Option<(HashMap<String, Tensor>, PathBuf)> {
    let dir = fixture_dir()?;
    Some((crate::common::read_safetensors(&dir.join(io_name)), dir.join(weights_name)))
}

pub fn get<'a>(fx: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    fx.get(key).unwrap_or_else(|| panic!("fixture tensor `{key}` is missing"))
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Double).flatten(0, -1)).expect("tensor values")
}

pub fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1)).expect("tensor values")
}

/// Max |a - b| over two equally shaped value lists (compared in float64).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "different element counts");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Compare `ours` with the fixture tensor `key` (same shape required), print
/// `sadtalker parity <key>: max abs err E (tol T)`, and assert E <= tol.
pub fn check(fx: &HashMap<String, Tensor>, key: &str, ours: &Tensor, tol: f64) -> f64 {
    let expected = get(fx, key);
    assert_eq!(ours.size(), expected.size(), "shape of `{key}`");
    let err = max_abs_diff(&f64s(ours), &f64s(expected));
    eprintln!("sadtalker parity {key}: max abs err {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "`{key}`: max abs err {err:e} exceeds {tol:e}");
    err
}

/// Values of the fixture tensor `key` as a shape-checked comparison against plain values.
pub fn check_values(fx: &HashMap<String, Tensor>, key: &str, ours: &[f64], tol: f64) -> f64 {
    let expected = f64s(get(fx, key));
    let err = max_abs_diff(ours, &expected);
    eprintln!("sadtalker parity {key}: max abs err {err:.3e} (tol {tol:.0e})");
    assert!(err <= tol, "`{key}`: max abs err {err:e} exceeds {tol:e}");
    err
}

/// key -> (shape, dtype) of one file's entry in the fixtures' `official_layout.json`.
pub type Layout = BTreeMap<String, (Vec<i64>, String)>;

/// The official layout of `file` (e.g. `SadTalker_V0.0.2_256.safetensors`).
pub fn official_layout(dir: &Path, file: &str) -> Layout {
    let text = std::fs::read_to_string(dir.join("official_layout.json")).expect("official_layout.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("layout json");
    let tensors = json["files"][file]["tensors"].as_array().unwrap_or_else(|| panic!("no tensors for {file}"));
    tensors
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            (t["key"].as_str().unwrap().to_string(), (shape, t["dtype"].as_str().unwrap().to_string()))
        })
        .collect()
}
