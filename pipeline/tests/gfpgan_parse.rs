//! facexlib's ParseNet and GFPGANer's parse-mask paste-back (`use_parse=True`) against the
//! reference (`facexlib==0.3.0`) on the committed fixtures: the reduced-width network's logits and
//! image, one full-width block under its official keys, the official key list of
//! `parsing_parsenet.pth`, the loader's errors, and (with OpenCV) the parse classes, the warped
//! blend weight and the pasted frames, plus the mask filters against the linked OpenCV. Sizes,
//! widths and seeds come from `fixtures/gfpgan/config.json`; tolerances are those of
//! `fixtures/gfpgan/README.md`.

use crate::gfpgan_support as fx;
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::gfpgan::parse::{ConvLayer, ResidualBlock, Scale};
use vipavatar_pipeline::gfpgan::{expected_parse_layout, load_parsenet, ConvPath, ParseNet, ParseNetConfig};
use vipavatar_pipeline::PipelineError;

/// Network tensors: float32 accumulation-order differences only, per unit of the tensor's own
/// scale (see [`scaled`]): the reduced network's logits reach about 40, and a reordered float32
/// sum differs in proportion to the values summed.
const NET_MAX: f64 = 1e-4;
const NET_MEAN: f64 = 1e-5;

/// `tol` times the reference tensor's mean magnitude when that is above 1.
fn scaled(tol: f64, reference: &Tensor) -> f64 {
    tol * reference.abs().mean(Kind::Double).double_value(&[]).max(1.0)
}

#[test]
fn gfpgan_parse_network_matches_reference() {
    let cfg = fx::config();
    let section = &cfg["parse_network"];
    let device = fx::device();
    let mut net = load_parsenet(&fx::dir().join("parse_network.pth"), &fx::parse_config(section), device).unwrap();
    assert_eq!(net.conv_path(), ConvPath::fastest(device), "a network starts on the device's fastest path");
    let io = fx::io("parse_network.io.safetensors");
    let x = fx::get(&io, "in.x");
    assert_eq!(x.size(), [fx::int(section, "batch"), 3, fx::int(section, "in_size"), fx::int(section, "in_size")]);
    let mut mask = Tensor::new();
    for path in fx::paths(device) {
        net.set_conv_path(path);
        let (m, img) = net.forward(x).unwrap();
        for (what, ours, key) in [("logits", &m, "out.mask"), ("image", &img, "out.img")] {
            let want = fx::get(&io, key);
            let (max, mean) = (scaled(NET_MAX, want), scaled(NET_MEAN, want));
            fx::check(&format!("{path:?} parsenet {what}"), ours, want, max, mean);
        }
        assert!(net.forward_mask(x).unwrap().equal(&m), "the mask-only pass differs");
        mask = m;
    }
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
    for path in fx::paths(device) {
        let feat = tch::no_grad(|| block.forward(&x, path));
        let what = format!("{path:?} parsenet full-width decoder block");
        fx::check(&what, &feat, fx::get(&io, "out.features"), NET_MAX, NET_MEAN);
        let mask = tch::no_grad(|| head.forward(&feat, path));
        let what = format!("{path:?} parsenet full-width mask head");
        fx::check(&what, &mask, fx::get(&io, "out.mask"), NET_MAX, NET_MEAN);
    }
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

#[cfg(feature = "opencv")]
mod paste {
    use super::*;
    use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT, BORDER_DEFAULT, CV_64F};
    use opencv::prelude::*;
    use vipavatar_pipeline::gfpgan::parse::{MASK_BLUR_KSIZE, MASK_BLUR_SIGMA};
    use vipavatar_pipeline::gfpgan::warp::{gaussian_blur_matrix, gaussian_kernel_sigma, warp_affine_f32, Affine};
    use vipavatar_pipeline::gfpgan::{load_network, FaceEnhancer, FaceParser, Noise};

    fn enhancer() -> FaceEnhancer {
        let cfg = fx::config();
        let device = fx::device();
        let net = load_network(&fx::dir().join("enhance.pth"), &fx::net_config(&cfg["enhance"]), device).unwrap();
        let parse_cfg = fx::parse_config(&cfg["parse_paste"]);
        let parser = FaceParser::new(load_parsenet(&fx::dir().join("parse_paste.pth"), &parse_cfg, device).unwrap());
        FaceEnhancer::new(net).with_parser(parser.unwrap()).unwrap()
    }

    #[test]
    fn gfpgan_parse_mask_and_paste_match_facexlib() {
        let cfg = fx::config();
        let section = &cfg["parse_paste"];
        let colormap: Vec<i64> =
            section["mask_colormap"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let ours: Vec<i64> =
            vipavatar_pipeline::gfpgan::parse::FACE_CLASSES.iter().map(|&k| if k { 255 } else { 0 }).collect();
        assert_eq!(colormap, ours, "MASK_COLORMAP");
        assert_eq!(
            (fx::int(section, "blur_ksize"), fx::float(section, "blur_sigma"), fx::int(section, "border")),
            (MASK_BLUR_KSIZE, MASK_BLUR_SIGMA, vipavatar_pipeline::gfpgan::parse::MASK_BORDER)
        );
        let src = fx::io("enhance.io.safetensors");
        let io = fx::io("parse_paste.io.safetensors");
        let device = fx::device();
        let enh = enhancer();
        let frames = fx::get(&src, "in.frames").to_device(device);
        let restored = fx::get(&src, "out.restored").to_device(device);
        let (h, w) = (frames.size()[1], frames.size()[2]);
        let affines = enh.align(&frames, &fx::points(fx::get(&src, "in.points"))).unwrap().affines;

        let classes = enh.parser().unwrap().classes(&restored).unwrap().to_device(Device::Cpu);
        let expected = fx::get(&io, "out.classes").to_kind(Kind::Int64);
        let differ = classes.ne_tensor(&expected).sum(Kind::Int64).int64_value(&[]);
        let share = differ as f64 / expected.numel() as f64;
        eprintln!(
            "gfpgan parity parse classes: {differ} of {} pixels differ ({share:.2e}; tol 1e-3)",
            expected.numel()
        );
        assert!(share <= 1e-3, "parse classes: {differ} pixels differ");

        let soft = enh.parse_soft_masks((h, w), &restored, &affines, device).unwrap().squeeze_dim(-1);
        fx::check("parse soft mask", &soft, fx::get(&io, "out.soft_mask"), fx::FRAME_MAX, fx::FRAME_MEAN);
        // The mask is not the square one: partly-open pixels inside the face region.
        let partial = soft.gt(0.05).logical_and(&soft.lt(0.95)).to_kind(Kind::Double).mean(Kind::Double);
        assert!(partial.double_value(&[]) > 0.1);

        let pasted = enh.paste(&frames, &restored, &affines).unwrap();
        let want = fx::unit(fx::get(&io, "out.pasted"));
        fx::check("parse pasted frames", &fx::unit(&pasted), &want, fx::FRAME_MAX, fx::FRAME_MEAN);
        assert!(fx::errors(&fx::unit(&pasted), &fx::unit(&frames)).1 > 0.02, "the paste changed the frames");
        let square = FaceEnhancer::new(
            load_network(&fx::dir().join("enhance.pth"), &fx::net_config(&cfg["enhance"]), device).unwrap(),
        );
        let square = square.paste(&frames, &restored, &affines).unwrap();
        assert!(fx::errors(&fx::unit(&square), &want).1 > 0.01, "the parse mask is the square mask");

        // The whole chain: align, the reduced GFPGAN, the parse mask, paste.
        let full = enh.enhance(&frames, &fx::points(fx::get(&src, "in.points")), &Noise::Stored).unwrap();
        fx::check("parse enhance chain", &fx::unit(&full), &want, fx::FRAME_MAX, fx::FRAME_MEAN);
    }

    fn mat_f64(t: &Tensor) -> Mat {
        let (h, w) = (t.size()[0] as i32, t.size()[1] as i32);
        let mut m = Mat::new_rows_cols_with_default(h, w, CV_64F, Scalar::all(0.0)).unwrap();
        m.data_typed_mut::<f64>()
            .unwrap()
            .copy_from_slice(&Vec::<f64>::try_from(t.contiguous().flatten(0, -1)).unwrap());
        m
    }

    fn from_mat(m: &Mat, h: i64, w: i64) -> Tensor {
        Tensor::from_slice(m.data_typed::<f64>().unwrap()).view([h, w])
    }

    /// The mask filters against the linked OpenCV on a random 0 / 255 float64 mask (what the
    /// reference blurs): the sigma-11 kernel, both 101 x 101 blur passes as one matrix product
    /// (float64 and the float32 the parser runs), and the `flags=3` inverse warp, which OpenCV runs
    /// as bilinear.
    #[test]
    fn gfpgan_parse_mask_filters_match_opencv() {
        let kernel = gaussian_kernel_sigma(MASK_BLUR_KSIZE, MASK_BLUR_SIGMA);
        let cv_kernel = opencv::imgproc::get_gaussian_kernel(MASK_BLUR_KSIZE as i32, MASK_BLUR_SIGMA, CV_64F).unwrap();
        let cv_kernel = cv_kernel.data_typed::<f64>().unwrap();
        let kdiff = kernel.iter().zip(cv_kernel).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("gfpgan parse blur kernel: max diff {kdiff:.2e}");
        assert!(kdiff <= 1e-15);

        let s = 160i64;
        tch::manual_seed(5);
        let mask = Tensor::randint(2, [s, s], (Kind::Double, Device::Cpu)) * 255.0;
        let mut once = Mat::default();
        let mut twice = Mat::default();
        let k = Size::new(MASK_BLUR_KSIZE as i32, MASK_BLUR_KSIZE as i32);
        opencv::imgproc::gaussian_blur(&mat_f64(&mask), &mut once, k, MASK_BLUR_SIGMA, 0.0, BORDER_DEFAULT).unwrap();
        opencv::imgproc::gaussian_blur(&once, &mut twice, k, MASK_BLUR_SIGMA, 0.0, BORDER_DEFAULT).unwrap();
        let cv = from_mat(&twice, s, s) / 255.0;
        let b = gaussian_blur_matrix(s, &kernel).unwrap();
        let c = b.matmul(&b);
        let ours64 = c.matmul(&(&mask / 255.0)).matmul(&c.tr());
        let (max, _) = fx::errors(&ours64, &cv);
        eprintln!("gfpgan parse blur (float64 matrices): max diff {max:.2e}");
        assert!(max <= 1e-12);
        let c32 = c.to_kind(Kind::Float);
        let ours32 = c32.matmul(&(&mask / 255.0).to_kind(Kind::Float)).matmul(&c32.tr());
        fx::check("parse blur (float32 matrices)", &ours32, &cv, 1e-6, 1e-7);

        let soft = ours64.shallow_clone();
        let m = Affine([[0.43, 0.05, 31.0], [-0.05, 0.43, 27.5]]);
        let (oh, ow) = (150i64, 130i64);
        let mut warped = Mat::default();
        let flags = 3; // what the reference passes: INTER_AREA
        let cv_m = Mat::from_slice_2d(&[m.0[0].to_vec(), m.0[1].to_vec()]).unwrap();
        opencv::imgproc::warp_affine(
            &mat_f64(&soft),
            &mut warped,
            &cv_m,
            Size::new(ow as i32, oh as i32),
            flags,
            BORDER_CONSTANT,
            Scalar::all(0.0),
        )
        .unwrap();
        let ours = warp_affine_f32(&soft.to_kind(Kind::Float).view([1, s, s, 1]), &[m], (oh, ow), 0.0).unwrap();
        fx::check("parse mask warp (flags=3)", &ours.view([oh, ow]), &from_mat(&warped, oh, ow), 1e-6, 1e-7);
    }

    /// Cost of the parse mask with the full-size ParseNet (a stand-in `parsing_parsenet.pth` with
    /// the official layout, seeded random weights) on `$VIPAVATAR_DEVICE`: seconds per 512 face for
    /// the network alone and for the whole mask (argmax, colour map, blurs, border).
    #[test]
    #[ignore = "writes an 85 MB stand-in; seconds per face on a CPU"]
    fn gfpgan_parse_mask_timing() {
        use std::time::Instant;
        let device = fx::device();
        let dir = std::env::temp_dir().join(format!("gfpgan-parse-timing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(vipavatar_pipeline::gfpgan::PARSENET_FILE);
        let cfg = ParseNetConfig::official();
        let written = vipavatar_pipeline::gfpgan::write_parse_stand_in(&path, &cfg, 3).unwrap();
        eprintln!("parsenet stand-in: {written:?}");
        let parser = FaceParser::new(load_parsenet(&path, &cfg, device).unwrap()).unwrap();
        tch::manual_seed(1);
        let faces = Tensor::randint(256, [1, 512, 512, 3], (Kind::Uint8, Device::Cpu));
        let x = (faces.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0 - 0.5) / 0.5;
        let _ = parser.face_masks(&faces).unwrap(); // warm-up
        let repeats = 3;
        let t = Instant::now();
        for _ in 0..repeats {
            let _ = parser.network().forward_mask(&x).unwrap().to_device(Device::Cpu);
        }
        let net_s = t.elapsed().as_secs_f64() / repeats as f64;
        let t = Instant::now();
        for _ in 0..repeats {
            let _ = parser.face_masks(&faces).unwrap().to_device(Device::Cpu);
        }
        let mask_s = t.elapsed().as_secs_f64() / repeats as f64;
        eprintln!("parse mask timing: {device:?}: network {net_s:.3} s per face, whole mask {mask_s:.3} s per face");
        std::fs::remove_dir_all(&dir).ok();
    }
}
