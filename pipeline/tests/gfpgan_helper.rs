//! The face helper against facexlib 0.3.0 (`FaceRestoreHelper`, upscale 1, no parsing) and the
//! GFPGANer per-face chain on the committed fixture: the alignment matrix and its inverse for
//! the given five points, the warped 512 crops, the pasted-back frames from the reference's own
//! restored faces, and the whole batched `enhance` (align -> reduced-width network -> paste).
//! Tolerances: `fixtures/gfpgan/README.md`.

use crate::gfpgan_support as fx;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::gfpgan::{load_network, FaceEnhancer, FacePoints, Noise};

/// Matrices: float32 inputs to the fit, so agreement to ~1e-6 relative.
const AFFINE_TOL: f64 = 1e-5;
fn enhancer() -> FaceEnhancer {
    let cfg = fx::config();
    let section = &cfg["enhance"];
    assert_eq!(fx::int(section, "upscale"), 1);
    assert_eq!(section["noise"], "stored");
    FaceEnhancer::new(load_network(&fx::dir().join("enhance.pth"), &fx::net_config(section), fx::device()).unwrap())
}

#[test]
fn gfpgan_helper_alignment_and_paste_match_facexlib() {
    let io = fx::io("enhance.io.safetensors");
    let enh = enhancer();
    let device = fx::device();
    let frames = fx::get(&io, "in.frames").to_device(device);
    let pts = fx::points(fx::get(&io, "in.points"));
    let cfg = fx::config();
    assert_eq!(pts.len(), cfg["enhance"]["face_scales"].as_array().unwrap().len());
    let aligned = enh.align(&frames, &pts).unwrap();
    let affines =
        Tensor::from_slice(&aligned.affines.iter().flat_map(|a| a.0.concat()).collect::<Vec<f64>>()).view([-1, 2, 3]);
    fx::check("affine matrix", &affines, fx::get(&io, "out.affine"), AFFINE_TOL, AFFINE_TOL);
    let inverse = Tensor::from_slice(&aligned.affines.iter().flat_map(|a| a.invert().0.concat()).collect::<Vec<f64>>())
        .view([-1, 2, 3]);
    fx::check("inverse affine", &inverse, fx::get(&io, "out.inverse_affine"), AFFINE_TOL, AFFINE_TOL);
    fx::check(
        "warped crops",
        &fx::unit(&aligned.crops),
        &fx::unit(fx::get(&io, "out.crops")),
        fx::FRAME_MAX,
        fx::FRAME_MEAN,
    );
    let restored = fx::get(&io, "out.restored").to_device(device);
    let pasted = enh.paste(&frames, &restored, &aligned.affines).unwrap();
    fx::check(
        "pasted frames",
        &fx::unit(&pasted),
        &fx::unit(fx::get(&io, "out.pasted")),
        fx::FRAME_MAX,
        fx::FRAME_MEAN,
    );
    // The paste really changed the frames (the comparison is not against the input).
    assert!(fx::errors(&fx::unit(&pasted), &fx::unit(&frames)).1 > 0.05);
    // Cached masks (computed once for a repeated matrix) give the same frames.
    let repeated = [aligned.affines[0], aligned.affines[0]];
    let masks = enh.paste_masks((frames.size()[1], frames.size()[2]), &repeated, device).unwrap();
    let first = enh.paste(&frames.narrow(0, 0, 1), &restored.narrow(0, 0, 1), &repeated[..1]).unwrap();
    let both = enh
        .paste_with_masks(
            &frames.narrow(0, 0, 1).repeat([2, 1, 1, 1]),
            &restored.narrow(0, 0, 1).repeat([2, 1, 1, 1]),
            &masks,
        )
        .unwrap();
    assert!(both.get(0).equal(&first.get(0)) && both.get(1).equal(&first.get(0)), "cached masks change the paste");
    assert!(enh
        .paste_with_masks(&frames, &restored, &enh.paste_masks((10, 10), &aligned.affines, device).unwrap())
        .is_err());
}

#[test]
fn gfpgan_enhance_chain_matches_gfpganer() {
    let io = fx::io("enhance.io.safetensors");
    let mut enh = enhancer();
    enh.max_batch = 1; // two network calls: chunking is exercised
    let frames = fx::get(&io, "in.frames").to_device(fx::device());
    let pts = fx::points(fx::get(&io, "in.points"));
    let aligned = enh.align(&frames, &pts).unwrap();
    let restored = enh.restore(&aligned.crops, &Noise::Stored).unwrap();
    fx::check(
        "restored faces",
        &fx::unit(&restored),
        &fx::unit(fx::get(&io, "out.restored")),
        fx::FRAME_MAX,
        fx::FRAME_MEAN,
    );
    let out = enh.enhance(&frames, &pts, &Noise::Stored).unwrap();
    fx::check("enhanced frames", &fx::unit(&out), &fx::unit(fx::get(&io, "out.pasted")), fx::FRAME_MAX, fx::FRAME_MEAN);
}

#[test]
fn gfpgan_helper_rejects_bad_inputs() {
    let enh = enhancer();
    let frames = Tensor::zeros([2, 64, 64, 3], (Kind::Uint8, Device::Cpu));
    let good: FacePoints = [[20.0, 24.0], [44.0, 24.0], [32.0, 36.0], [22.0, 46.0], [42.0, 46.0]];
    assert!(enh.align(&frames, &[good]).is_err(), "frame / point count mismatch accepted");
    assert!(enh.align(&frames.to_kind(Kind::Float), &[good, good]).is_err(), "float frames accepted");
    let mut nan = good;
    nan[2][0] = f64::NAN;
    assert!(enh.align(&frames, &[good, nan]).is_err(), "NaN point accepted");
    assert!(enh.align(&frames, &[good, good]).is_ok());
}
