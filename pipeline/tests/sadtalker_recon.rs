//! Parity of the 3DMM regression network (ResNet-50 `ReconNetWrapper`, `split_coeff`, the 73-d
//! `coeff_3dmm` of `CropAndExtract.generate`) with the golden fixture `face3d_recon.io.safetensors`
//! and the full-size random weights `face3d_recon.weights.safetensors`.

use crate::sadtalker_common::{check, device, f32s, get, io_and_weights};
use tch::{Device, Kind};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::sadtalker::recon::{image_to_input, FaceRecon, SplitCoeffs};

#[test]
fn sadtalker_recon_matches_reference() {
    let Some((fx, weights)) = io_and_weights("face3d_recon.io.safetensors", "face3d_recon.weights.safetensors") else {
        return;
    };
    let model = FaceRecon::from_checkpoint(&weights, device()).expect("load face_3drecon");
    let coeffs = model.coeffs(get(&fx, "in.image")).expect("forward");
    check(&fx, "out.coeffs", &coeffs, 3e-4);
    let split = SplitCoeffs::new(&coeffs);
    for (key, part) in [
        ("out.id", &split.id),
        ("out.exp", &split.exp),
        ("out.tex", &split.tex),
        ("out.angle", &split.angle),
        ("out.gamma", &split.gamma),
        ("out.trans", &split.trans),
    ] {
        check(&fx, key, part, 3e-4);
    }

    // Chain case: the aligned u8 image -> u8 / 255 -> network -> [exp, angle, trans, s, tx, ty].
    let u8_img = get(&fx, "in.chain.image_u8");
    let data = Vec::<u8>::try_from(u8_img.flatten(0, -1)).unwrap();
    let image = RgbImage::from_raw(224, 224, data).unwrap();
    let input = image_to_input(&image).unwrap();
    let reference_input = (u8_img.to_kind(Kind::Double) / 255.0).to_kind(Kind::Float).permute([2, 0, 1]).unsqueeze(0);
    assert_eq!(f32s(&input), f32s(&reference_input), "u8 / 255 conversion");
    let chain = model.coeffs_of_image(&image).expect("forward");
    check(&fx, "out.chain.coeffs", &chain, 3e-4);
    check(&fx, "out.chain.full_3dmm", &chain, 3e-4);
    let tp = f32s(get(&fx, "in.chain.trans_params"));
    let coeff73 = SplitCoeffs::new(&chain).coeff_3dmm([tp[0], tp[1], tp[2], tp[3], tp[4]]);
    check(&fx, "out.chain.coeff_3dmm", &coeff73, 3e-4);
}

#[test]
fn sadtalker_recon_rejects_wrong_input_sizes() {
    let model = FaceRecon::new(Device::Cpu);
    assert!(image_to_input(&RgbImage::new(256, 256)).is_err());
    assert!(model.coeffs_of_image(&RgbImage::new(224, 200)).is_err());
    assert!(model.coeffs(&tch::Tensor::zeros([1, 3, 256, 256], (Kind::Float, Device::Cpu))).is_err());
    let out = model.coeffs(&tch::Tensor::zeros([2, 3, 224, 224], (Kind::Float, Device::Cpu))).unwrap();
    assert_eq!(out.size(), [2, 257]);
}
