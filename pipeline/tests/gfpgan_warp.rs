//! The tensor-side warps and mask filters against OpenCV itself (the C++ library the crate links)
//! beyond the fixture's geometry: faces partly outside the frame (constant border), rotated and
//! scaled matrices, 1- and 3-channel images, float masks, erosion with even and odd kernels and
//! Gaussian blurs that use OpenCV's fixed small tables (k <= 9) and sampled kernels.

use opencv::core::{Mat, Point, Scalar, Size, BORDER_CONSTANT, BORDER_DEFAULT, CV_32F, CV_8UC3};
use opencv::prelude::*;
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::gfpgan::warp::{erode, gaussian_blur, warp_affine_f32, warp_affine_u8, Affine};

fn textured(h: i64, w: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let noise = Tensor::randint(40, [h, w, 3], (Kind::Int, Device::Cpu));
    let yy = Tensor::arange(h, (Kind::Float, Device::Cpu)).view([h, 1, 1]);
    let xx = Tensor::arange(w, (Kind::Float, Device::Cpu)).view([1, w, 1]);
    let base = (&xx * 0.11).sin() * 80.0 + (&yy * 0.07).cos() * 60.0 + 110.0;
    (base + noise).clamp(0.0, 255.0).to_kind(Kind::Uint8)
}

fn mat_u8(t: &Tensor) -> Mat {
    let (h, w) = (t.size()[0] as i32, t.size()[1] as i32);
    let mut m = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0)).unwrap();
    m.data_bytes_mut().unwrap().copy_from_slice(&Vec::<u8>::try_from(t.contiguous().flatten(0, -1)).unwrap());
    m
}

fn mat_f32(t: &Tensor) -> Mat {
    let (h, w) = (t.size()[0] as i32, t.size()[1] as i32);
    let mut m = Mat::new_rows_cols_with_default(h, w, CV_32F, Scalar::all(0.0)).unwrap();
    m.data_typed_mut::<f32>().unwrap().copy_from_slice(&Vec::<f32>::try_from(t.contiguous().flatten(0, -1)).unwrap());
    m
}

fn affine_mat(a: &Affine) -> Mat {
    Mat::from_slice_2d(&[a.0[0].to_vec(), a.0[1].to_vec()]).unwrap()
}

fn matrices() -> Vec<Affine> {
    let mut out = Vec::new();
    for (k, (scale, angle, tx, ty)) in
        [(2.3f64, 0.09f64, -64.6, 8.7), (0.37, -0.3, 90.0, 40.0), (1.0, 0.0, 0.5, -0.25), (3.1, 1.2, 300.0, -200.0)]
            .into_iter()
            .enumerate()
    {
        let (c, s) = (angle.cos() * scale, angle.sin() * scale);
        out.push(Affine([[c, -s + 0.01 * k as f64, tx], [s, c, ty]]));
    }
    out
}

#[test]
fn gfpgan_warp_u8_is_bit_exact_with_opencv() {
    let src = textured(120, 160, 3);
    let (oh, ow) = (200i64, 180i64);
    let maps = matrices();
    let ours = warp_affine_u8(&src.unsqueeze(0), &maps, (oh, ow), &[132, 133, 135]).unwrap();
    for (i, m) in maps.iter().enumerate() {
        let mut cv = Mat::default();
        opencv::imgproc::warp_affine(
            &mat_u8(&src),
            &mut cv,
            &affine_mat(m),
            Size::new(ow as i32, oh as i32),
            opencv::imgproc::INTER_LINEAR,
            BORDER_CONSTANT,
            Scalar::new(132.0, 133.0, 135.0, 0.0),
        )
        .unwrap();
        let cv = Tensor::from_slice(cv.data_bytes().unwrap()).view([oh, ow, 3]);
        let diff = (ours.get(i as i64).to_kind(Kind::Int) - cv.to_kind(Kind::Int)).abs().max().int64_value(&[]);
        let border = ours
            .get(i as i64)
            .eq_tensor(&Tensor::from_slice(&[132u8, 133, 135]))
            .all_dim(-1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
        eprintln!("gfpgan warp u8 matrix {i}: max diff {diff} levels, {border} border-coloured pixels");
        assert_eq!(diff, 0, "matrix {i} differs from cv::warpAffine");
    }
}

#[test]
fn gfpgan_mask_warp_erode_blur_match_opencv() {
    let maps = matrices();
    let ones = Tensor::ones([1, 96, 96, 1], (Kind::Float, Device::Cpu));
    let (oh, ow) = (150i64, 170i64);
    let warped = warp_affine_f32(&ones, &maps, (oh, ow), 0.0).unwrap();
    for (i, m) in maps.iter().enumerate() {
        let mut cv = Mat::default();
        opencv::imgproc::warp_affine(
            &mat_f32(&ones.get(0).squeeze_dim(-1)),
            &mut cv,
            &affine_mat(m),
            Size::new(ow as i32, oh as i32),
            opencv::imgproc::INTER_LINEAR,
            BORDER_CONSTANT,
            Scalar::all(0.0),
        )
        .unwrap();
        let cv_t = Tensor::from_slice(cv.data_typed::<f32>().unwrap()).view([oh, ow]);
        let ours = warped.get(i as i64).squeeze_dim(-1);
        let d = (&ours - &cv_t).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "mask warp {i}: {d}");
        for k in [2i32, 3, 6, 7] {
            let kernel = Mat::new_rows_cols_with_default(k, k, opencv::core::CV_8U, Scalar::all(1.0)).unwrap();
            let mut e = Mat::default();
            opencv::imgproc::erode(
                &cv,
                &mut e,
                &kernel,
                Point::new(-1, -1),
                1,
                BORDER_CONSTANT,
                opencv::imgproc::morphology_default_border_value().unwrap(),
            )
            .unwrap();
            let e_t = Tensor::from_slice(e.data_typed::<f32>().unwrap()).view([oh, ow]);
            let ours_e = erode(&ours.view([1, 1, oh, ow]), k as i64).unwrap().view([oh, ow]);
            let d = (&ours_e - &e_t).abs().max().double_value(&[]);
            assert!(d <= 1e-6, "erode k={k} matrix {i}: {d}");
        }
        for k in [3i32, 5, 7, 9, 11, 21] {
            let mut b = Mat::default();
            opencv::imgproc::gaussian_blur(&cv, &mut b, Size::new(k, k), 0.0, 0.0, BORDER_DEFAULT).unwrap();
            let b_t = Tensor::from_slice(b.data_typed::<f32>().unwrap()).view([oh, ow]);
            let ours_b = gaussian_blur(&ours.view([1, 1, oh, ow]), k as i64).unwrap().view([oh, ow]);
            let d = (&ours_b - &b_t).abs().max().double_value(&[]);
            eprintln!("gfpgan blur k={k} matrix {i}: max diff {d:.2e}");
            assert!(d <= 1e-5, "blur k={k} matrix {i}: {d}");
        }
    }
}
