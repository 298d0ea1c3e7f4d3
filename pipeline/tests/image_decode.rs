//! Decoding of uploads: formats, EXIF orientation, alpha and palette images, broken bytes.

use opencv::core::{Mat, Scalar, Vector, CV_8UC3, CV_8UC4};
use opencv::prelude::*;
use vipavatar_pipeline::image::{decode, RgbImage};
use vipavatar_pipeline::PipelineError;

const MAX: u64 = 4096 * 4096;

/// A 4x3 palette PNG (colour type 3) with a tRNS chunk: index 0 red, 1 green, 2 blue at alpha
/// 128, 3 white at alpha 0; pixel (x, y) uses index (x + y) % 4.
const PALETTE_PNG: [u8; 114] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x04, 0x00, 0x00, 0x00, 0x03, 0x08, 0x03, 0x00, 0x00, 0x00, 0x83, 0x2a, 0x5e, 0xf4, 0x00, 0x00, 0x00, 0x0c, 0x50,
    0x4c, 0x54, 0x45, 0xff, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xfb, 0x00, 0x60, 0xf6,
    0x00, 0x00, 0x00, 0x04, 0x74, 0x52, 0x4e, 0x53, 0xff, 0xff, 0x80, 0x00, 0xe8, 0x8d, 0xcc, 0xcd, 0x00, 0x00, 0x00,
    0x11, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x60, 0x64, 0x62, 0x06, 0x63, 0x06, 0x10, 0x0d, 0x00, 0x00,
    0x95, 0x00, 0x13, 0x16, 0xd0, 0x2d, 0x8b, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn encode(mat: &Mat, ext: &str) -> Vec<u8> {
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode(ext, mat, &mut buf, &Vector::new()).unwrap();
    buf.iter().collect()
}

/// A 60x40 BGR test card: left half blue, right half red (in RGB terms: blue | red).
fn card() -> Mat {
    let mut m = Mat::new_rows_cols_with_default(40, 60, CV_8UC3, Scalar::new(255.0, 0.0, 0.0, 0.0)).unwrap();
    for y in 0..40 {
        for x in 30..60 {
            *m.at_2d_mut::<opencv::core::Vec3b>(y, x).unwrap() = opencv::core::Vec3b::from([0, 0, 255]);
        }
    }
    m
}

fn near(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= tol)
}

#[test]
fn png_jpeg_webp_decode_to_rgb() {
    for ext in [".png", ".jpg", ".webp"] {
        let img = decode(&encode(&card(), ext), MAX).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!((img.width, img.height), (60, 40), "{ext}");
        assert!(near(img.pixel(5, 20), [0, 0, 255], 12), "{ext} left {:?}", img.pixel(5, 20));
        assert!(near(img.pixel(55, 20), [255, 0, 0], 12), "{ext} right {:?}", img.pixel(55, 20));
    }
}

#[test]
fn rgba_png_is_composited_over_white() {
    let mut m = Mat::new_rows_cols_with_default(8, 8, CV_8UC4, Scalar::new(0.0, 0.0, 0.0, 0.0)).unwrap();
    for x in 4..8 {
        for y in 0..8 {
            *m.at_2d_mut::<opencv::core::Vec4b>(y, x).unwrap() = opencv::core::Vec4b::from([0, 0, 0, 255]);
        }
    }
    let img = decode(&encode(&m, ".png"), MAX).unwrap();
    assert_eq!(img.pixel(1, 1), [255, 255, 255], "transparent pixel becomes white");
    assert_eq!(img.pixel(6, 1), [0, 0, 0], "opaque black stays black");
}

#[test]
fn palette_png_with_transparency() {
    let img = decode(&PALETTE_PNG, MAX).unwrap();
    assert_eq!((img.width, img.height), (4, 3));
    assert_eq!(img.pixel(0, 0), [255, 0, 0]);
    assert_eq!(img.pixel(1, 0), [0, 255, 0]);
    assert!(near(img.pixel(2, 0), [127, 127, 255], 1), "{:?}", img.pixel(2, 0));
    assert_eq!(img.pixel(3, 0), [255, 255, 255]);
}

/// Insert an EXIF APP1 segment with the given orientation right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let jpeg = encode(&card(), ".jpg");
    // Orientation 6: the stored image must be rotated 90 degrees clockwise for display.
    let img = decode(&with_exif_orientation(&jpeg, 6), MAX).unwrap();
    assert_eq!((img.width, img.height), (40, 60));
    // Blue (stored left) ends up on top after a clockwise rotation.
    assert!(near(img.pixel(20, 5), [0, 0, 255], 12), "{:?}", img.pixel(20, 5));
    assert!(near(img.pixel(20, 55), [255, 0, 0], 12), "{:?}", img.pixel(20, 55));
}

#[test]
fn broken_and_truncated_bytes_are_not_images() {
    let png = encode(&card(), ".png");
    let jpg = encode(&card(), ".jpg");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("text", b"GIF89a? no, just text".to_vec()),
        ("truncated png", png[..png.len() / 2].to_vec()),
        ("png header only", png[..40].to_vec()),
        ("truncated jpeg", jpg[..jpg.len() / 2].to_vec()),
        ("jpeg magic only", vec![0xFF, 0xD8, 0xFF]),
        ("riff not webp", b"RIFF\0\0\0\0WAVEfmt ".to_vec()),
    ];
    for (name, bytes) in cases {
        match decode(&bytes, MAX) {
            Err(PipelineError::NotAnImage(_)) => {}
            other => panic!("{name}: expected NotAnImage, got {other:?}"),
        }
    }
}

#[test]
fn oversized_real_image_is_rejected_before_decoding() {
    let png = encode(&card(), ".png");
    match decode(&png, 1000) {
        Err(PipelineError::ImageTooLarge { width: 60, height: 40, max_pixels: 1000 }) => {}
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
}

#[test]
fn rgb_image_round_trips_through_opencv() {
    let img = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
    let back = RgbImage::from_bgr_mat(&img.to_bgr_mat().unwrap()).unwrap();
    assert_eq!(back, img);
}
