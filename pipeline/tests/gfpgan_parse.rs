//! facexlib's ParseNet and GFPGANer's parse-mask paste-back (`use_parse=True`) against the
//! reference (`facexlib==0.3.0`) on the committed fixtures: the reduced-width network's logits and
//! image, one full-width block under its official keys, the official key list of
//! `parsing_parsenet.pth` and the loader's errors. Sizes, widths and seeds come from
//! `fixtures/gfpgan/config.json`; tolerances are those of `fixtures/gfpgan/README.md`.

use crate::gfpgan_support as fx;
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::gfpgan::parse::{ConvLayer, ResidualBlock, Scale};
use vipavatar_pipeline::gfpgan::{expected_parse_layout, load_parsenet, ParseNet, ParseNetConfig};
use vipavatar_pipeline::PipelineError;

/// Network tensors: float32 accumulation-order differences only (logits reach about 40).
const NET_MAX: f64 = 1e-4;
const NET_MEAN: f64 = 1e-5;

#[test]
fn gfpgan_parse_network_matches_reference() {
    let cfg = fx::config();
    let section = &cfg["parse_network"];
    let device = fx::device();
    let net = load_parsenet(&fx::dir().join("parse_network.pth"), &fx::parse_config(section), device).unwrap();
    let io = fx::io("parse_network.io.safetensors");
    let x = fx::get(&io, "in.x");
    assert_eq!(x.size(), [fx::int(section, "batch"), 3, fx::int(section, "in_size"), fx::int(section, "in_size")]);
    let (mask, img) = net.forward(x).unwrap();
    fx::check("parsenet logits", &mask, fx::get(&io, "out.mask"), NET_MAX, NET_MEAN);
    fx::check("parsenet image", &img, fx::get(&io, "out.img"), NET_MAX, NET_MEAN);
    assert!(net.forward_mask(x).unwrap().equal(&mask), "the mask-only pass differs");
    // Outputs are not trivially small, and the argmax is not one class everywhere.
    assert!(mask.abs().mean(Kind::Double).double_value(&[]) > 0.1);
    let classes = mask.argmax(1, false).to_device(Device::Cpu);
    assert!(classes.flatten(0, -1).bincount(None::<Tensor>, 0).gt(0).sum(Kind::Int64).int64_value(&[]) > 1);
    // Eval-mode BatchNorm runs on the stored running statistics, which are not the identity.
    let vars = net.var_store().variables();
    let spread = |suffix: &str, centre: f64| {
        vars.iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, t)| (t.to_device(Device::Cpu).to_kind(Kind::Double) - centre).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    };
    let (mean_spread, var_spread) = (spread("running_mean", 0.0), spread("running_var", 1.0));
    eprintln!(
        "parsenet fixture BatchNorm: running mean up to {mean_spread:.3} from 0, var up to {var_spread:.3} from 1"
    );
    assert!(mean_spread > 0.1 && var_spread > 0.1);
}

/// A `VarStore` path from a dotted key.
fn at<'a>(vs: &'a VarStore, key: &str) -> tch::nn::Path<'a> {
    key.split('.').fold(vs.root(), |p, part| &p / part)
}

#[test]
fn gfpgan_parse_full_width_block_matches_reference() {
    let cfg = fx::config();
    let c = &cfg["parse_full_layer"];
    let device = fx::device();
    let vs = VarStore::new(device);
    let (block_key, head_key) = (c["block_key"].as_str().unwrap(), c["head_key"].as_str().unwrap());
    let (cin, cout, classes) = (fx::int(c, "in_channels"), fx::int(c, "out_channels"), fx::int(c, "parsing_ch"));
    let block = ResidualBlock::new(at(&vs, block_key), cin, cout, Scale::Up);
    let head = ConvLayer::plain(at(&vs, head_key), cout, classes, Scale::None);
    let official = fx::layout("parse_official_layout.json");
    let stored = vipavatar_pipeline::torch_pickle::load(&fx::dir().join("parse_full_layer.pth")).unwrap();
    let vars = vs.variables();
    assert_eq!(stored.len(), vars.len());
    tch::no_grad(|| {
        for (key, t) in &stored {
            let var = vars.get(key).unwrap_or_else(|| panic!("no variable {key}"));
            assert_eq!(official.get(key), Some(&var.size()), "{key} is not an official full-width key/shape");
            var.shallow_clone().copy_(&t.to_kind(var.kind()));
        }
    });
    let io = fx::io("parse_full_layer.io.safetensors");
    let x = fx::get(&io, "in.x").to_device(device);
    let feat = tch::no_grad(|| block.forward(&x));
    fx::check("parsenet full-width decoder block", &feat, fx::get(&io, "out.features"), NET_MAX, NET_MEAN);
    let mask = tch::no_grad(|| head.forward(&feat));
    fx::check("parsenet full-width mask head", &mask, fx::get(&io, "out.mask"), NET_MAX, NET_MEAN);
}

#[test]
fn gfpgan_parse_layout_matches_the_official_key_list() {
    let text = std::fs::read_to_string(fx::dir().join("parse_official_layout.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["file"], "parsing_parsenet.pth");
    assert!(json["dict_key"].is_null(), "the official file is a plain state dict");
    let kw = &json["kwargs"];
    let cfg = ParseNetConfig::official();
    assert_eq!(fx::parse_config(kw), cfg);
    assert_eq!((kw["relu_type"].as_str(), kw["norm_type"].as_str()), (Some("LeakyReLU"), Some("bn")));
    let official = fx::layout("parse_official_layout.json");
    let ours: BTreeMap<String, Vec<i64>> = expected_parse_layout(&cfg).unwrap().into_iter().collect();
    for (k, shape) in &ours {
        assert_eq!(official.get(k), Some(shape), "requested `{k}` {shape:?} is not in the official layout as such");
    }
    for (k, shape) in &official {
        assert_eq!(ours.get(k), Some(shape), "official `{k}` {shape:?} is not requested");
    }
    // dtypes: float parameters and buffers, int64 BatchNorm counters.
    let net = ParseNet::build(&cfg, Device::Cpu).unwrap();
    let vars = net.var_store().variables();
    for t in json["tensors"].as_array().unwrap() {
        let (key, dtype) = (t["key"].as_str().unwrap(), t["dtype"].as_str().unwrap());
        let want = if dtype == "int64" { Kind::Int64 } else { Kind::Float };
        assert_eq!(vars[key].kind(), want, "{key}");
    }
    let values: i64 = ours.values().map(|s| s.iter().product::<i64>()).sum();
    eprintln!("parsenet layout: {} tensors, {values} values", ours.len());
    assert_eq!(json["tensors"].as_array().unwrap().len() as i64, fx::int(&fx::config(), "parse_official_tensors"));
}

fn checkpoint_error(r: vipavatar_pipeline::Result<ParseNet>) -> (String, String) {
    match r {
        Err(PipelineError::Checkpoint { file, reason }) => (file, reason),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn gfpgan_parse_loader_names_file_and_key() {
    let cfg = fx::config();
    let section = fx::parse_config(&cfg["parse_network"]);
    let path = fx::dir().join("parse_network.pth");
    // Wrong widths: a shape error naming the file and the key.
    let wrong = ParseNetConfig { base_ch: section.base_ch * 2, ..section.clone() };
    let (file, reason) = checkpoint_error(load_parsenet(&path, &wrong, Device::Cpu));
    assert!(file.ends_with("parse_network.pth"), "{file}");
    assert!(reason.contains("` has shape [") && reason.contains("conv2d.weight"), "{reason}");
    // One key missing (a copy of the file without it).
    let dir = std::env::temp_dir().join(format!("gfpgan-parse-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stored = vipavatar_pipeline::torch_pickle::load(&path).unwrap();
    let dropped = "body.1.conv2.norm.norm.running_var";
    let kept: Vec<(&str, &Tensor)> =
        stored.iter().filter(|(k, _)| k != dropped).map(|(k, t)| (k.as_str(), t)).collect();
    assert_eq!(kept.len() + 1, stored.len(), "the fixture has `{dropped}`");
    let partial = dir.join("parsing_parsenet.pth");
    vipavatar_pipeline::torch_pickle::save_legacy(&partial, "", &kept).unwrap();
    let (file, reason) = checkpoint_error(load_parsenet(&partial, &section, Device::Cpu));
    assert!(file.ends_with("parsing_parsenet.pth"), "{file}");
    assert!(reason.contains(&format!("missing key `{dropped}`")), "{reason}");
    // The rewritten full file loads (the plain-dict writer is what the stand-in uses).
    let all: Vec<(&str, &Tensor)> = stored.iter().map(|(k, t)| (k.as_str(), t)).collect();
    vipavatar_pipeline::torch_pickle::save_legacy(&partial, "", &all).unwrap();
    assert!(load_parsenet(&partial, &section, Device::Cpu).is_ok());
    // A nested GFPGAN file: its keys are unexpected, ParseNet's missing.
    let (_, reason) = checkpoint_error(load_parsenet(&fx::dir().join("network.pth"), &section, Device::Cpu));
    assert!(reason.contains("missing key `") && reason.contains("more problems"), "{reason}");
    let (_, reason) = checkpoint_error(load_parsenet(&dir.join("absent.pth"), &section, Device::Cpu));
    assert!(reason.contains("not found"), "{reason}");
    std::fs::remove_dir_all(&dir).ok();
}
