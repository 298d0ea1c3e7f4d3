//! Every key and shape of the official `GFPGANv1.4.pth` (`params_ema`), as listed in
//! `fixtures/gfpgan/official_layout.json` (the reference `GFPGANv1Clean` built with GFPGANer's
//! v1.4 arguments on torch's meta device and its `state_dict()` dumped), is exactly what the
//! port requests at full width, both ways.

use crate::gfpgan_support;

use std::collections::BTreeMap;
use vipavatar_pipeline::gfpgan::{expected_layout, GfpganConfig};

#[test]
fn gfpgan_v1_4_layout_matches_the_official_key_list() {
    let text = std::fs::read_to_string(gfpgan_support::dir().join("official_layout.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["file"], "GFPGANv1.4.pth");
    assert_eq!(json["dict_key"], "params_ema");
    let kw = &json["kwargs"];
    let cfg = GfpganConfig::v1_4();
    assert_eq!(kw["out_size"].as_i64(), Some(cfg.out_size));
    assert_eq!(kw["num_style_feat"].as_i64(), Some(cfg.num_style_feat));
    assert_eq!(kw["channel_multiplier"].as_i64(), Some(cfg.channel_multiplier));
    assert_eq!(kw["num_mlp"].as_i64(), Some(cfg.num_mlp));
    assert_eq!(kw["narrow"].as_f64(), Some(cfg.narrow));
    assert_eq!(kw["sft_half"].as_bool(), Some(cfg.sft_half));
    assert_eq!(kw["different_w"].as_bool(), Some(cfg.different_w));
    assert_eq!(kw["input_is_latent"].as_bool(), Some(cfg.input_is_latent));
    let official: BTreeMap<String, Vec<i64>> = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().to_string(),
                t["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
            )
        })
        .collect();
    let ours: BTreeMap<String, Vec<i64>> = expected_layout(&cfg).unwrap().into_iter().collect();
    for (k, shape) in &ours {
        assert_eq!(official.get(k), Some(shape), "requested `{k}` {shape:?} is not in the official layout as such");
    }
    for (k, shape) in &official {
        assert_eq!(ours.get(k), Some(shape), "official `{k}` {shape:?} is not requested");
    }
    let params: i64 = ours.values().map(|s| s.iter().product::<i64>()).sum();
    eprintln!("gfpgan layout: {} tensors, {params} values", ours.len());
    assert_eq!(ours.len(), official.len());
}
