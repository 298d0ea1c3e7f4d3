//! The batched Poisson paste-back of `full` mode: pixels outside the face box are untouched, the
//! box's two outer rings keep the background, a face equal to the background reproduces it, and
//! every frame agrees with OpenCV's per-frame `seamlessClone` (NORMAL_CLONE, full-rectangle mask,
//! what the reference calls) to within one level.

use opencv::core::{Mat, Point, Scalar, CV_8UC3};
use tch::{Device, Kind, Tensor};
use vipavatar_pipeline::image::RgbImage;
use vipavatar_pipeline::sadtalker::facerender::paste::PasteBack;

/// A textured synthetic background (w x h).
fn background(w: u32, h: u32) -> RgbImage {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let v = |k: f32| {
                (128.0 + 60.0 * ((x as f32 * 0.05 + k).sin() * (y as f32 * 0.07 - k).cos()) + (x + 2 * y) as f32 * 0.1)
                    as u8
            };
            data.extend_from_slice(&[v(0.0), v(1.0), v(2.0)]);
        }
    }
    RgbImage::from_raw(w, h, data).unwrap()
}

/// Two "rendered faces" (2, 3, s, s) in [0, 1], exactly representable as u8 / 255.
fn faces(s: i64) -> Tensor {
    let yy = Tensor::arange(s, (Kind::Float, Device::Cpu)).view([1, 1, s, 1]);
    let xx = Tensor::arange(s, (Kind::Float, Device::Cpu)).view([1, 1, 1, s]);
    let base = ((&xx * 0.2).sin() * 40.0 + (&yy * 0.13).cos() * 30.0 + 100.0).expand([2, 3, s, s], true);
    let offset = Tensor::from_slice(&[0.0f32, 60.0]).view([2, 1, 1, 1]);
    ((base + offset).round().clamp(0.0, 255.0)) / 255.0
}

fn to_mat(img: &RgbImage) -> Mat {
    img.to_bgr_mat().unwrap()
}

#[test]
fn sadtalker_facerender_paste_is_seamless_and_matches_opencv() {
    let (w, h) = (200u32, 160u32);
    let bg = background(w, h);
    let face_box = [50i64, 30, 146, 126]; // 96 x 96
    let paste = PasteBack::new(&bg, face_box, Device::Cpu).unwrap();
    let f = faces(96);
    let frames = paste.apply(&f).unwrap();
    assert_eq!(frames.size(), [2, h as i64, w as i64, 3]);
    let bg_t = Tensor::from_slice(&bg.data).view([h as i64, w as i64, 3]);

    // Outside the box: untouched.
    let outside = Tensor::ones([h as i64, w as i64], (Kind::Bool, Device::Cpu));
    let _ = outside.narrow(0, 30, 96).narrow(1, 50, 96).fill_(0);
    let diff = (frames.to_kind(Kind::Int) - bg_t.unsqueeze(0).to_kind(Kind::Int)).abs();
    let outside_err = diff.masked_select(&outside.unsqueeze(0).unsqueeze(-1).expand_as(&diff)).max().int64_value(&[]);
    assert_eq!(outside_err, 0, "pixels outside the face box changed");

    // The two outer rings of the box keep the background.
    let region = bg_t.narrow(0, 30, 96).narrow(1, 50, 96).permute([2, 0, 1]);
    let blended = paste.blend(&f).unwrap();
    for (dim, at) in [(2, 0), (2, 1), (2, 94), (2, 95), (3, 0), (3, 1), (3, 94), (3, 95)] {
        let ring =
            blended.narrow(dim, at, 1).to_kind(Kind::Int) - region.unsqueeze(0).narrow(dim, at, 1).to_kind(Kind::Int);
        assert_eq!(ring.abs().max().int64_value(&[]), 0, "ring {dim}/{at} changed");
    }
    // A face identical to the background reproduces the background.
    let same = (region.to_kind(Kind::Float) / 255.0).unsqueeze(0);
    let back = paste.blend(&same).unwrap().to_kind(Kind::Int) - region.unsqueeze(0).to_kind(Kind::Int);
    assert!(back.abs().max().int64_value(&[]) <= 1, "background is not reproduced");

    // Against OpenCV's seamlessClone, frame by frame.
    let full = to_mat(&bg);
    let mut total = 0.0;
    for i in 0..2 {
        let face_u8 = (f.get(i) * 255.0).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
        let data = Vec::<u8>::try_from(face_u8.flatten(0, -1)).unwrap();
        let patch = to_mat(&RgbImage::from_raw(96, 96, data).unwrap());
        let mask = Mat::new_rows_cols_with_default(96, 96, CV_8UC3, Scalar::all(255.0)).unwrap();
        let mut out = Mat::default();
        let center = Point::new((50 + 146) / 2, (30 + 126) / 2);
        opencv::photo::seamless_clone(&patch, &full, &mask, center, &mut out, opencv::photo::NORMAL_CLONE).unwrap();
        let cv = RgbImage::from_bgr_mat(&out).unwrap();
        let cv_t = Tensor::from_slice(&cv.data).view([h as i64, w as i64, 3]).to_kind(Kind::Float);
        let ours = frames.get(i).to_kind(Kind::Float);
        let d = (&ours - &cv_t).abs().narrow(0, 30, 96).narrow(1, 50, 96);
        let mean = d.mean(Kind::Double).double_value(&[]);
        let max = d.max().double_value(&[]);
        eprintln!("sadtalker facerender paste vs cv::seamlessClone frame {i}: mean abs {mean:.4}, max {max:.0}");
        assert!(max <= 1.0, "frame {i}: differs from seamlessClone by up to {max} levels");
        total += mean;
    }
    assert!(total / 2.0 < 0.05, "paste-back differs from seamlessClone by {} levels on average", total / 2.0);
}

#[test]
fn sadtalker_facerender_paste_rejects_degenerate_boxes() {
    let bg = background(64, 64);
    assert!(PasteBack::new(&bg, [10, 10, 14, 40], Device::Cpu).is_err());
    assert!(PasteBack::new(&bg, [70, 70, 90, 90], Device::Cpu).is_err());
    // A box reaching past the image is clamped.
    let p = PasteBack::new(&bg, [40, 40, 90, 90], Device::Cpu).unwrap();
    assert_eq!(p.face_box(), [40, 40, 64, 64]);
    assert!(p.apply(&Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu))).is_err());
}
