//! Speed of the GFPGAN face enhancer at 256 x 256 output frames on one run, same random
//! full-size v1.4 weights, same machine: vipavatar's batched face-only path (known points,
//! tensor-side warps, one network call per batch, the device's fastest convolution path) against
//! the reference's semantics implemented naively in this file (per frame: face detection, OpenCV
//! alignment, one face per network call with fresh noise and ATen's default convolution, as the
//! reference's PyTorch runs it, OpenCV paste-back). The face-only path is also timed on the
//! default convolution, to show which part of the gain is whose. It runs twice: with the square
//! soft mask, then with GFPGANer's own paste-back through the ParseNet face mask (`use_parse=True`,
//! a full-size stand-in ParseNet on every restored face, its convolutions on the same path as the
//! network's). Ignored by default (slow on CPU):
//!   cargo test --release -p vipavatar-pipeline --test main gfpgan_bench -- --ignored --nocapture
//! `GFPGAN_BENCH_FRAMES` (default 4) and `GFPGAN_BENCH_BATCH` (default: the enhancer's own, 1 on
//! the CPU) size the run;
//! detection uses MTCNN from `$VIPAVATAR_CHECKPOINTS/mtcnn` when present (its cost is counted
//! even when it finds no face in the synthetic frames; the given points are used then).

use crate::common::env_usize;
use crate::gfpgan_support;

use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT, CV_32F, CV_8UC3};
use opencv::prelude::*;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::face::mtcnn::{Mtcnn, MtcnnConfig};
use vipavatar_pipeline::gfpgan::align::{fit_affine, template, FacePoints};
use vipavatar_pipeline::gfpgan::{
    load_parsenet, write_parse_stand_in, Affine, ConvPath, FaceEnhancer, FaceParser, GfpganConfig, GfpganNet, Noise,
    ParseNetConfig,
};
use vipavatar_pipeline::image::RgbImage;

/// Synthetic 256 x 256 frames with a face-sized blob and its five points (moving slightly).
fn scene(n: usize) -> (Tensor, Vec<FacePoints>) {
    let s = 256i64;
    let yy = Tensor::arange(s, (Kind::Float, Device::Cpu)).view([s, 1, 1]);
    let xx = Tensor::arange(s, (Kind::Float, Device::Cpu)).view([1, s, 1]);
    let mut frames = Vec::new();
    let mut points = Vec::new();
    for i in 0..n {
        let shift = i as f64 * 1.5;
        let rgb = Tensor::from_slice(&[1.0f32, 0.8, 0.7]).view([1, 1, 3]);
        let blob = ((&xx - 128.0 - shift).square() / 3600.0 + (&yy - 130.0).square() / 5000.0).neg().exp();
        let f = (blob * rgb * 180.0 + (&xx * 0.1).sin() * 20.0 + 40.0).clamp(0.0, 255.0).to_kind(Kind::Uint8);
        frames.push(f);
        let t = template(512);
        points.push(t.map(|[x, y]| [(x - 256.0) * 0.3 + 128.0 + shift, (y - 256.0) * 0.3 + 130.0]));
    }
    (Tensor::stack(&frames, 0), points)
}

fn to_mat(t: &Tensor) -> Mat {
    let (h, w) = (t.size()[0] as i32, t.size()[1] as i32);
    let data = Vec::<u8>::try_from(t.contiguous().flatten(0, -1)).unwrap();
    let mut m = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0)).unwrap();
    m.data_bytes_mut().unwrap().copy_from_slice(&data);
    m
}

fn from_mat(m: &Mat) -> Tensor {
    Tensor::from_slice(m.data_bytes().unwrap()).view([m.rows() as i64, m.cols() as i64, 3])
}

fn affine_mat(a: &Affine) -> Mat {
    Mat::from_slice_2d(&[a.0[0].to_vec(), a.0[1].to_vec()]).unwrap()
}

/// The reference's per-frame semantics, naively: detect, align, restore one face, paste (through
/// `parser`'s face mask when given, as GFPGANer's `use_parse=True`, else the square soft mask).
fn naive_frame(
    net: &GfpganNet,
    parser: Option<&FaceParser>,
    mtcnn: Option<&Mtcnn>,
    frame: &Tensor,
    given: &FacePoints,
    call: u64,
) -> Tensor {
    let img = to_mat(frame);
    let pts = match mtcnn {
        Some(d) => {
            let rgb =
                RgbImage::from_raw(256, 256, Vec::<u8>::try_from(frame.contiguous().flatten(0, -1)).unwrap()).unwrap();
            let found = d.detect(&rgb).unwrap();
            found.first().map(|f| f.points.map(|[x, y]| [x as f64, y as f64])).unwrap_or(*given)
        }
        None => *given,
    };
    let a = fit_affine(&pts, 512).unwrap();
    let mut crop = Mat::default();
    opencv::imgproc::warp_affine(
        &img,
        &mut crop,
        &affine_mat(&a),
        Size::new(512, 512),
        opencv::imgproc::INTER_LINEAR,
        BORDER_CONSTANT,
        Scalar::new(132.0, 133.0, 135.0, 0.0),
    )
    .unwrap();
    let x = (from_mat(&crop).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0 - 0.5) / 0.5;
    let y = net.forward(&x.to_device(net.device()), &net.noise_maps(&Noise::Seeded(call))).unwrap();
    let face = ((y.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .to_device(Device::Cpu);
    let inv = affine_mat(&a.invert());
    let mut inv_face = Mat::default();
    let warp_back = |src: &Mat, dst: &mut Mat, flags: i32| {
        opencv::imgproc::warp_affine(src, dst, &inv, Size::new(256, 256), flags, BORDER_CONSTANT, Scalar::all(0.0))
            .unwrap()
    };
    warp_back(&to_mat(&face), &mut inv_face, opencv::imgproc::INTER_LINEAR);
    let inv_face = from_mat(&inv_face).to_kind(Kind::Float);
    if let Some(parser) = parser {
        // The parse mask of the restored face, warped back with the reference's flags=3.
        let m = parser.face_masks(&face.unsqueeze(0)).unwrap().to_device(Device::Cpu).contiguous();
        let values = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
        let mut m = Mat::new_rows_cols_with_default(512, 512, CV_32F, Scalar::all(0.0)).unwrap();
        m.data_typed_mut::<f32>().unwrap().copy_from_slice(&values);
        let mut soft = Mat::default();
        warp_back(&m, &mut soft, opencv::imgproc::INTER_AREA);
        let soft = Tensor::from_slice(soft.data_typed::<f32>().unwrap()).view([256, 256, 1]);
        let out = &soft * inv_face + (-&soft + 1.0) * frame.to_kind(Kind::Float);
        return out.floor().clamp(0.0, 255.0).to_kind(Kind::Uint8);
    }
    let ones = Mat::new_rows_cols_with_default(512, 512, CV_32F, Scalar::all(1.0)).unwrap();
    let mut mask = Mat::default();
    warp_back(&ones, &mut mask, opencv::imgproc::INTER_LINEAR);
    let erode = |src: &Mat, k: i32| {
        let kernel = Mat::new_rows_cols_with_default(k, k, opencv::core::CV_8U, Scalar::all(1.0)).unwrap();
        let mut out = Mat::default();
        opencv::imgproc::erode(
            src,
            &mut out,
            &kernel,
            opencv::core::Point::new(-1, -1),
            1,
            BORDER_CONSTANT,
            opencv::imgproc::morphology_default_border_value().unwrap(),
        )
        .unwrap();
        out
    };
    let ero = erode(&mask, 2);
    let area = opencv::core::sum_elems(&ero).unwrap()[0];
    let w_edge = (area.sqrt() as i32) / 20;
    let center = erode(&ero, (w_edge * 2).max(1));
    let mut soft = Mat::default();
    opencv::imgproc::gaussian_blur(
        &center,
        &mut soft,
        Size::new(w_edge * 2 + 1, w_edge * 2 + 1),
        0.0,
        0.0,
        opencv::core::BORDER_DEFAULT,
    )
    .unwrap();
    let soft = Tensor::from_slice(soft.data_typed::<f32>().unwrap()).view([256, 256, 1]);
    let ero = Tensor::from_slice(ero.data_typed::<f32>().unwrap()).view([256, 256, 1]);
    let out = &soft * (ero * inv_face) + (-&soft + 1.0) * frame.to_kind(Kind::Float);
    out.floor().clamp(0.0, 255.0).to_kind(Kind::Uint8)
}

#[test]
#[ignore]
fn gfpgan_bench_batched_vs_naive_at_256() {
    let n = env_usize("GFPGAN_BENCH_FRAMES", 4);
    let device = gfpgan_support::device();
    let mtcnn_dir = std::env::var("VIPAVATAR_CHECKPOINTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| gfpgan_support::dir().join("../../../../checkpoints"))
        .join("mtcnn");
    let mtcnn = Mtcnn::load(&mtcnn_dir, MtcnnConfig::default()).ok();
    let batch = env_usize("GFPGAN_BENCH_BATCH", FaceEnhancer::default_batch(device));
    eprintln!(
        "gfpgan bench: device {device:?}, {n} frames 256x256, batch {batch}, detector {}",
        if mtcnn.is_some() { "MTCNN" } else { "none (not found)" }
    );
    bench(n, batch, mtcnn.as_ref(), None);
    // GFPGANer's own paste-back (use_parse=True): ParseNet on every restored face.
    let dir = std::env::temp_dir().join(format!("gfpgan-bench-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(vipavatar_pipeline::gfpgan::PARSENET_FILE);
    let cfg = ParseNetConfig::official();
    write_parse_stand_in(&path, &cfg, 20261207).unwrap();
    let parser = FaceParser::new(load_parsenet(&path, &cfg, device).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bench(n, batch, mtcnn.as_ref(), Some(parser));
}

/// One comparison: the naive per-frame loop, then the face-only path on the default convolution
/// and on the device's fastest, all with the parse mask when `parser` is given.
fn bench(n: usize, batch: usize, mtcnn: Option<&Mtcnn>, mut parser: Option<FaceParser>) {
    let device = gfpgan_support::device();
    let mask = if parser.is_some() { "parse mask" } else { "square mask" };
    let mut net = GfpganNet::random(&GfpganConfig::v1_4(), device, 20261201).unwrap();
    let fastest = net.conv_path();
    net.set_conv_path(ConvPath::Default);
    if let Some(p) = &mut parser {
        p.network_mut().set_conv_path(ConvPath::Default);
    }
    let (frames, points) = scene(n);
    // warm-up (allocator, kernels) on both paths
    let warm = |net: &GfpganNet| {
        let x = Tensor::zeros([1, 3, 512, 512], (Kind::Float, device));
        let _ = net.forward(&x, &net.noise_maps(&Noise::Zero)).unwrap();
    };
    warm(&net);

    let t = Instant::now();
    let mut naive = Vec::new();
    for (i, given) in points.iter().enumerate() {
        naive.push(naive_frame(&net, parser.as_ref(), mtcnn, &frames.get(i as i64), given, i as u64));
    }
    let naive_s = t.elapsed().as_secs_f64();
    let naive = Tensor::stack(&naive, 0);

    let mut enh = FaceEnhancer::new(net);
    if let Some(p) = parser {
        enh = enh.with_parser(p).unwrap();
    }
    enh.max_batch = batch;
    let frames_dev = frames.to_device(device);
    let mut run = |path: ConvPath| {
        enh.set_conv_path(path);
        warm(enh.network());
        let t = Instant::now();
        let out = enh.enhance(&frames_dev, &points, &Noise::Seeded(0)).unwrap().to_device(Device::Cpu);
        (out, t.elapsed().as_secs_f64())
    };
    let (ours_default, default_s) = run(ConvPath::Default);
    let (ours, ours_s) = run(fastest);
    assert_eq!(ours.size(), [n as i64, 256, 256, 3]);
    // Same geometry: outside the face both paths leave the frame as it was.
    let changed = |x: &Tensor| x.ne_tensor(&frames).any_dim(-1, false).sum(Kind::Int64).int64_value(&[]);
    eprintln!("gfpgan bench ({mask}): changed pixels ours {} naive {}", changed(&ours), changed(&naive));
    // The two convolution paths give the same frames up to rounding (a level here and there).
    let diff = (ours.to_kind(Kind::Float) - ours_default.to_kind(Kind::Float)).abs();
    let (max, mean) = (diff.max().double_value(&[]), diff.mean(Kind::Double).double_value(&[]));
    eprintln!("gfpgan bench ({mask}): {fastest:?} vs default convolution frames: max {max} mean {mean:.2e} levels");
    assert!(max <= 2.0 && mean < 0.05, "the convolution paths disagree: max {max} mean {mean}");
    let fps = |s: f64| (n as f64 / s, s / n as f64);
    let ((nf, ns), (df, ds), (of, os)) = (fps(naive_s), fps(default_s), fps(ours_s));
    eprintln!("gfpgan bench ({mask}): naive per-frame {nf:.3} fps ({ns:.2} s/frame)");
    eprintln!(
        "gfpgan bench ({mask}): batched face-only, default convolution {df:.3} fps ({ds:.2} s/frame), {:.2}x",
        naive_s / default_s
    );
    eprintln!(
        "gfpgan bench ({mask}): batched face-only, {fastest:?} {of:.3} fps ({os:.2} s/frame), speed-up {:.2}x",
        naive_s / ours_s
    );
}
