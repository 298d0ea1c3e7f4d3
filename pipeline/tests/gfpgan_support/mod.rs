//! Helpers of the `gfpgan*` tests: the committed fixture folder (`tests/fixtures/gfpgan`), its
//! `config.json`, safetensors io files, the network built from a fixture `.pth`, and error
//! reports (max / mean abs) with one printed line per comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::gfpgan::{GfpganConfig, ParseNetConfig};

/// The fixture folder: `$VIPAVATAR_GFPGAN_FIXTURES` (the GPU check's bundle), else the
/// committed one.
pub fn dir() -> PathBuf {
    match std::env::var_os("VIPAVATAR_GFPGAN_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gfpgan"),
    }
}

pub fn config() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("config.json")).expect("fixtures/gfpgan/config.json");
    serde_json::from_str(&text).expect("config.json")
}

pub fn io(name: &str) -> HashMap<String, Tensor> {
    let path = dir().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn get<'a>(fx: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    fx.get(key).unwrap_or_else(|| panic!("fixture tensor `{key}` is missing"))
}

pub fn int(v: &serde_json::Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("config key `{key}`"))
}

pub fn float(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("config key `{key}`"))
}

/// The network architecture of one fixture section (`network` or `enhance`): the official
/// v1.4 flags with that section's reduced widths.
pub fn net_config(section: &serde_json::Value) -> GfpganConfig {
    GfpganConfig {
        out_size: int(section, "out_size"),
        num_style_feat: int(section, "num_style_feat"),
        channel_multiplier: int(section, "channel_multiplier"),
        num_mlp: int(section, "num_mlp"),
        narrow: float(section, "narrow"),
        ..GfpganConfig::v1_4()
    }
}

/// The ParseNet architecture of one fixture section (`parse_network` or `parse_paste`).
pub fn parse_config(section: &serde_json::Value) -> ParseNetConfig {
    let range = section["ch_range"].as_array().expect("config key `ch_range`");
    ParseNetConfig {
        in_size: int(section, "in_size"),
        out_size: int(section, "out_size"),
        min_feat_size: int(section, "min_feat_size"),
        base_ch: int(section, "base_ch"),
        parsing_ch: int(section, "parsing_ch"),
        res_depth: int(section, "res_depth"),
        ch_range: (range[0].as_i64().expect("ch_range"), range[1].as_i64().expect("ch_range")),
    }
}

/// `(key, shape)` of every tensor listed in a layout JSON (`tensors: [{key, shape}]`).
pub fn layout(name: &str) -> std::collections::BTreeMap<String, Vec<i64>> {
    let text = std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("layout json");
    json["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            let key = t["key"].as_str().expect("key").to_string();
            (key, t["shape"].as_array().expect("shape").iter().map(|d| d.as_i64().expect("dim")).collect())
        })
        .collect()
}

/// Device of the parity runs: `$VIPAVATAR_DEVICE` (default auto).
pub fn device() -> Device {
    vipavatar_pipeline::device::device_from_env().expect("VIPAVATAR_DEVICE")
}

/// (max abs, mean abs) of `ours - expected` in float64 (same shape required).
pub fn errors(ours: &Tensor, expected: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), expected.size(), "shape");
    let d = (ours.to_device(Device::Cpu).to_kind(Kind::Double) - expected.to_device(Device::Cpu).to_kind(Kind::Double))
        .abs();
    (d.max().double_value(&[]), d.mean(Kind::Double).double_value(&[]))
}

/// Compare, print `gfpgan parity <what>: max abs .. mean abs ..`, assert both tolerances.
pub fn check(what: &str, ours: &Tensor, expected: &Tensor, max_tol: f64, mean_tol: f64) -> (f64, f64) {
    let (max, mean) = errors(ours, expected);
    eprintln!("gfpgan parity {what}: max abs {max:.3e} (tol {max_tol:.0e}), mean abs {mean:.3e} (tol {mean_tol:.0e})");
    assert!(max <= max_tol, "{what}: max abs error {max:e} exceeds {max_tol:e}");
    assert!(mean <= mean_tol, "{what}: mean abs error {mean:e} exceeds {mean_tol:e}");
    (max, mean)
}

/// The convolution paths to check on `device`: the default, and Winograd where it runs.
pub fn paths(device: tch::Device) -> Vec<vipavatar_pipeline::gfpgan::ConvPath> {
    use vipavatar_pipeline::gfpgan::ConvPath;
    let mut paths = vec![ConvPath::Default];
    if ConvPath::Winograd.usable_on(device) == ConvPath::Winograd {
        paths.push(ConvPath::Winograd);
    }
    paths
}

/// Frames and masks on [0, 1]: max abs 5e-3 (one 8-bit level is 3.9e-3), mean 1e-4.
pub const FRAME_MAX: f64 = 5e-3;
pub const FRAME_MEAN: f64 = 1e-4;

/// Five face points per row of a fixture's (n, 10) `in.points` tensor.
pub fn points(t: &Tensor) -> Vec<[[f64; 2]; 5]> {
    let n = t.size()[0];
    let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    (0..n as usize).map(|i| std::array::from_fn(|k| [v[i * 10 + 2 * k], v[i * 10 + 2 * k + 1]])).collect()
}

/// 8-bit pixels as values on [0, 1] (float64, CPU).
pub fn unit(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).to_kind(Kind::Double) / 255.0
}
