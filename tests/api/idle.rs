//! The avatar's idle loop and thumbnail: rendered after the precompute, a seamless loop (last
//! frame = first frame, movement in between, mouth closed), and typed errors for unknown images.

use crate::helpers::*;
use std::time::{Duration, Instant};

/// Decoded RGB frames of a video (ffmpeg), each `w * h * 3` bytes.
fn rgb_frames(path: &std::path::Path, w: usize, h: usize) -> Vec<Vec<u8>> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(w * h * 3).map(|c| c.to_vec()).collect()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_loop_is_seamless_and_has_a_thumbnail() {
    let Some(data) = testdata() else { return };
    let dir = scratch("idle");
    let app = spawn_app().await;
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    // Rendered by its own job after the precompute: poll until it is there.
    let start = Instant::now();
    let resp = loop {
        let r = app.get(&format!("/api/avatar/idle/{id}")).await;
        if r.status() != 409 {
            break r;
        }
        assert!(r.headers().contains_key("retry-after"));
        assert!(start.elapsed() < Duration::from_secs(120), "the idle loop never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let path = dir.join("idle.mp4");
    std::fs::write(&path, resp.bytes().await.unwrap()).unwrap();
    let (duration, frames, w, h, _) = probe_mp4(&path);
    assert_eq!(frames, 251, "{duration} s");
    let video = rgb_frames(&path, w as usize, h as usize);
    assert_eq!(video.len(), 251);
    let seam = mean_abs_diff(&video[0], &video[250]);
    let step = (1..251).map(|i| mean_abs_diff(&video[i - 1], &video[i])).sum::<f64>() / 250.0;
    let far = (0..251).map(|i| mean_abs_diff(&video[0], &video[i])).fold(0.0, f64::max);
    println!("idle loop: first/last {seam:.2}, mean step {step:.2}, max from first {far:.2} levels");
    // First and last frames agree within encoder noise; the loop moves in between.
    assert!(seam < 1.0, "first vs last frame differ by {seam:.2} levels");
    assert!(far > 2.0 * seam.max(0.3), "the idle loop barely moves: {far:.2} levels at most");
    assert!(step < 3.0, "frame-to-frame jumps of {step:.2} levels on average");

    let r = app.get(&format!("/api/avatar/thumbnail/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let jpeg = r.bytes().await.unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.len() > 2000, "{} bytes", jpeg.len());

    let unknown = "0".repeat(64);
    assert_error(&json(app.get(&format!("/api/avatar/idle/{unknown}")).await).await, 404, "image_not_found");
    assert_error(&json(app.get("/api/avatar/thumbnail/nope").await).await, 400, "invalid_image_id");
    assert_error(
        &json(app.get(&format!("/api/avatar/idle/{id}?preprocess_mode=sideways")).await).await,
        400,
        "invalid_field",
    );
}
