//! GFPGANv1Clean parity against the reference (`gfpgan==1.3.8`) on the committed fixtures:
//! the reduced-width network's output image, style codes and every SFT condition, one
//! full-width decoder layer (style conv 128 -> 64 with upsampling + its to-RGB), the loader's
//! checks, and the deterministic noise choices. Both convolution paths (`ConvPath::Default`
//! and, on the CPU, NNPACK's `ConvPath::Winograd`) are checked. Sizes, widths and seeds come
//! from `fixtures/gfpgan/config.json`; tolerances are those of `fixtures/gfpgan/README.md`.

use crate::common::{env_list, env_usize, sync};
use crate::gfpgan_support as fx;
use tch::nn::VarStore;
use tch::Kind;
use vipavatar_pipeline::gfpgan::stylegan::{StyleConv, ToRgb};
use vipavatar_pipeline::gfpgan::{load_network, ConvPath, GfpganConfig, Noise};
use vipavatar_pipeline::PipelineError;

/// Network tensors in about [-1, 1]: float32 accumulation-order differences only.
const NET_MAX: f64 = 1e-4;
const NET_MEAN: f64 = 1e-5;

#[test]
fn gfpgan_network_matches_reference() {
    let cfg = fx::config();
    let section = &cfg["network"];
    assert_eq!(section["noise"], "stored");
    let device = fx::device();
    let mut net = load_network(&fx::dir().join("network.pth"), &fx::net_config(section), device).unwrap();
    assert_eq!(net.conv_path(), ConvPath::fastest(device), "a network starts on the device's fastest path");
    let io = fx::io("network.io.safetensors");
    let x = fx::get(&io, "in.x").to_device(device);
    assert_eq!(x.size()[0], fx::int(section, "batch"));
    let noise = net.noise_maps(&Noise::Stored);
    for path in fx::paths(device) {
        net.set_conv_path(path);
        assert_eq!(net.conv_path(), path);
        let (image, mid) = net.forward_with_intermediates(&x, &noise).unwrap();
        fx::check(
            &format!("{path:?} network style_code"),
            &mid.style_code,
            fx::get(&io, "mid.style_code"),
            NET_MAX,
            NET_MEAN,
        );
        assert_eq!(mid.conditions.len() as i64, 2 * (fx::net_config(section).log_size() - 2));
        for (i, c) in mid.conditions.iter().enumerate() {
            let what = format!("{path:?} network condition {i}");
            fx::check(&what, c, fx::get(&io, &format!("mid.condition.{i}")), NET_MAX, NET_MEAN);
        }
        fx::check(&format!("{path:?} network image"), &image, fx::get(&io, "out.image"), NET_MAX, NET_MEAN);
        // The output is not trivially small: the comparison could fail.
        assert!(image.abs().mean(Kind::Double).double_value(&[]) > 0.1);
        // Noise matters (the fixture's noise strengths are non-zero), so the noise path is tested too.
        let zero = net.forward(&x, &net.noise_maps(&Noise::Zero)).unwrap();
        assert!(fx::errors(&zero, fx::get(&io, "out.image")).0 > 1e-2);
    }
}

/// The reduced precisions the timing check measures (float16 on CUDA, bfloat16 on the CPU) run
/// end to end: every weight, input and noise map in that kind, with the output near float32's.
/// (A weight view kept from construction and a float32 reduction once broke this path.)
#[test]
fn gfpgan_network_runs_in_reduced_precision() {
    let cfg = fx::config();
    let section = &cfg["network"];
    let device = fx::device();
    let kind = if device.is_cuda() { Kind::Half } else { Kind::BFloat16 };
    let mut net = load_network(&fx::dir().join("network.pth"), &fx::net_config(section), device).unwrap();
    net.set_conv_path(ConvPath::Default);
    net.set_precision(kind);
    let io = fx::io("network.io.safetensors");
    let x = fx::get(&io, "in.x").to_device(device).to_kind(kind);
    let noise: Vec<_> = net.noise_maps(&Noise::Stored).iter().map(|n| n.to_kind(kind)).collect();
    let image = net.forward(&x, &noise).unwrap();
    assert_eq!(image.kind(), kind);
    let want = fx::get(&io, "out.image");
    let (max, mean) = fx::errors(&image.to_kind(Kind::Float), want);
    let scale = want.abs().mean(Kind::Double).double_value(&[]);
    eprintln!("gfpgan {kind:?} against float32: max abs {max:.3e}, mean abs {mean:.3e} (mean |output| {scale:.3})");
    assert!(mean < 0.05 * scale, "{kind:?} drifts from float32: mean abs {mean:.3e} against mean |output| {scale:.3}");
}

#[test]
fn gfpgan_full_width_layer_matches_reference() {
    let cfg = fx::config();
    let c = &cfg["full_layer"];
    let device = fx::device();
    let vs = VarStore::new(device);
    let conv_key = c["conv_key"].as_str().unwrap();
    let rgb_key = c["rgb_key"].as_str().unwrap();
    let mut path = vs.root();
    for part in conv_key.split('.') {
        path = &path / part;
    }
    let (cin, cout, style) = (fx::int(c, "in_channels"), fx::int(c, "out_channels"), fx::int(c, "num_style_feat"));
    let conv = StyleConv::new(path, cin, cout, style, true);
    let mut path = vs.root();
    for part in rgb_key.split('.') {
        path = &path / part;
    }
    let rgb = ToRgb::new(path, cout, style, true);
    // The official shapes of these keys at full width.
    let layout = std::fs::read_to_string(fx::dir().join("official_layout.json")).unwrap();
    let layout: serde_json::Value = serde_json::from_str(&layout).unwrap();
    let official: std::collections::BTreeMap<String, Vec<i64>> = layout["tensors"]
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
    let stored = vipavatar_pipeline::torch_pickle::load(&fx::dir().join("full_layer.pth")).unwrap();
    let vars = vs.variables();
    assert_eq!(stored.len(), vars.len());
    tch::no_grad(|| {
        for (name, t) in &stored {
            let key = name.strip_prefix("params_ema.").expect("params_ema prefix");
            let var = vars.get(key).unwrap_or_else(|| panic!("no variable {key}"));
            assert_eq!(official.get(key), Some(&var.size()), "{key} is not an official full-width key/shape");
            var.shallow_clone().copy_(&t.to_kind(Kind::Float));
        }
    });
    let io = fx::io("full_layer.io.safetensors");
    let g = |k: &str| fx::get(&io, k).to_device(device);
    for path in fx::paths(device) {
        let out = tch::no_grad(|| conv.forward(&g("in.x"), &g("in.style1"), &g("in.noise"), path));
        fx::check(&format!("{path:?} full-width style conv"), &out, fx::get(&io, "out.features"), NET_MAX, NET_MEAN);
        let img = tch::no_grad(|| rgb.forward(&out, &g("in.style2"), Some(&g("in.skip")), path));
        fx::check(&format!("{path:?} full-width to_rgb"), &img, fx::get(&io, "out.rgb"), NET_MAX, NET_MEAN);
    }
}

#[test]
fn gfpgan_loader_names_file_and_key() {
    let cfg = fx::config();
    let path = fx::dir().join("network.pth");
    // Wrong widths: every mismatch is a checkpoint error naming the file and a key.
    let wrong = GfpganConfig { narrow: fx::float(&cfg["network"], "narrow") * 2.0, ..fx::net_config(&cfg["network"]) };
    match load_network(&path, &wrong, tch::Device::Cpu) {
        Err(PipelineError::Checkpoint { file, reason }) => {
            assert!(file.ends_with("network.pth"), "{file}");
            assert!(reason.contains("params_ema.") && reason.contains("shape"), "{reason}");
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    // A pickle without params_ema / params.
    let dir = std::env::temp_dir().join(format!("gfpgan-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("GFPGANv1.4.pth");
    match load_network(&missing, &GfpganConfig::v1_4(), tch::Device::Cpu) {
        Err(PipelineError::Checkpoint { file, reason }) => {
            assert!(file.ends_with("GFPGANv1.4.pth") && reason.contains("not found"), "{reason}")
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    let other = fx::dir().join("full_layer.pth");
    match load_network(&other, &fx::net_config(&cfg["network"]), tch::Device::Cpu) {
        Err(PipelineError::Checkpoint { reason, .. }) => {
            assert!(reason.contains("missing key `params_ema."), "{reason}")
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gfpgan_seeded_noise_is_deterministic_per_seed() {
    let cfg = fx::config();
    let net = load_network(&fx::dir().join("network.pth"), &fx::net_config(&cfg["network"]), tch::Device::Cpu).unwrap();
    let x = fx::get(&fx::io("network.io.safetensors"), "in.x").shallow_clone();
    let run = |n: Noise| net.forward(&x, &net.noise_maps(&n)).unwrap();
    let (a, b, c) = (run(Noise::Seeded(11)), run(Noise::Seeded(11)), run(Noise::Seeded(12)));
    assert!(a.equal(&b), "same seed, different output");
    assert!(fx::errors(&a, &c).0 > 1e-3, "different seeds, same output");
    // The same noise map serves every face of a batch: one face alone gives the same result.
    let single = net.forward(&x.narrow(0, 1, 1), &net.noise_maps(&Noise::Seeded(11))).unwrap();
    let (max, _) = fx::errors(&single, &a.narrow(0, 1, 1));
    assert!(max < NET_MAX, "one face alone differs by {max:e}");
}

/// Speed of the full-size v1.4 network (seeded random weights) on `$VIPAVATAR_DEVICE`: faces/s
/// per batch size (`GFPGAN_TIMING_BATCHES`, default 1,2,4,8; `GFPGAN_TIMING_REPEATS` calls each,
/// default 3) on every convolution path the device offers; then the device's reduced precision
/// (float16 on CUDA, bfloat16 on the CPU) against float32: error on the output, and speed at the
/// largest batch. The GPU check runs it.
#[test]
#[ignore = "full-size network: several seconds per face on a CPU"]
fn gfpgan_network_timing() {
    use std::time::Instant;
    let device = fx::device();
    let batches = env_list("GFPGAN_TIMING_BATCHES", "1,2,4,8");
    let repeats = env_usize("GFPGAN_TIMING_REPEATS", 3).max(1);
    let seed = 20261207;
    let mut net = vipavatar_pipeline::gfpgan::GfpganNet::random(&GfpganConfig::v1_4(), device, seed).unwrap();
    let noise = net.noise_maps(&Noise::Seeded(1));
    let input = |b: usize, kind: Kind| {
        tch::manual_seed(7);
        (tch::Tensor::rand([b as i64, 3, 512, 512], (Kind::Float, device)) * 2.0 - 1.0).to_kind(kind)
    };
    let time = |net: &vipavatar_pipeline::gfpgan::GfpganNet, x: &tch::Tensor, noise: &[tch::Tensor]| {
        let _ = net.forward(x, noise).unwrap(); // warm-up (kernel choice, allocator)
        sync(device);
        let t = Instant::now();
        for _ in 0..repeats {
            let _ = net.forward(x, noise).unwrap();
        }
        sync(device);
        t.elapsed().as_secs_f64() / repeats as f64
    };
    let mut fp32 = Vec::new();
    for path in fx::paths(device) {
        net.set_conv_path(path);
        for &b in &batches {
            let s = time(&net, &input(b, Kind::Float), &noise);
            eprintln!("gfpgan timing: {device:?} {path:?} batch {b}: {s:.4} s per call, {:.2} faces/s", b as f64 / s);
            fp32.push((b, s));
        }
    }
    // The device's reduced precision (float16 on CUDA, bfloat16 on the CPU) on the default
    // convolution: its error against float32 and its speed at the largest batch.
    let kind = if device.is_cuda() { Kind::Half } else { Kind::BFloat16 };
    let b = *batches.iter().max().unwrap();
    let x = input(b, Kind::Float);
    net.set_conv_path(ConvPath::Default);
    let full = net.forward(&x, &noise).unwrap();
    let s32 = time(&net, &x, &noise);
    let mut low = vipavatar_pipeline::gfpgan::GfpganNet::random(&GfpganConfig::v1_4(), device, seed).unwrap();
    low.set_conv_path(ConvPath::Default);
    low.set_precision(kind);
    let noise_low: Vec<_> = noise.iter().map(|n| n.to_kind(kind)).collect();
    let out_low = low.forward(&x.to_kind(kind), &noise_low).unwrap().to_kind(Kind::Float);
    assert!(out_low.isfinite().all().int64_value(&[]) == 1, "{kind:?} output is not finite");
    // Random weights put most of the output far outside [-1, 1]; what reaches a frame is the
    // output clamped to [-1, 1], so its error is reported too.
    let (max, mean) = fx::errors(&out_low, &full);
    let (cmax, cmean) = fx::errors(&out_low.clamp(-1.0, 1.0), &full.clamp(-1.0, 1.0));
    let spread = full.std(true).double_value(&[]);
    let s_low = time(&low, &x.to_kind(kind), &noise_low);
    eprintln!(
        "gfpgan {kind:?}: batch {b}: max abs {max:.3e}, mean abs {mean:.3e} against float32 (output std \
         {spread:.3}); clamped to [-1, 1]: max {cmax:.3e}, mean {cmean:.3e}; {:.2} faces/s against {:.2} \
         faces/s float32 on the default convolution ({:.2}x)",
        b as f64 / s_low,
        b as f64 / s32,
        s32 / s_low
    );
}
