//! The fields seed-style clients read, with measured values: `message` on upload,
//! `performance_ready` on a ready avatar, `performance_boost` on generate, `performance.speedup`
//! on a finished session and `performance_summary.average_speedup` in the cache stats, each
//! checked against the times it is computed from.

use crate::helpers::*;
use std::time::Duration;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_fields_carry_measured_speedups() {
    let Some(data) = testdata() else { return };
    let app = spawn_app().await;
    let (s, up) = app.upload(read(data.join("images/happy.png")), None).await;
    assert_eq!(s, 202, "{up}");
    assert!(up["message"].as_str().unwrap().contains("precomputing"), "{up}");
    let id = up["image_id"].as_str().unwrap().to_string();
    let ready = app.wait_avatar(&id).await;
    let image_side = ready["performance_ready"].as_f64().expect("performance_ready once ready");
    assert!(image_side > 0.0 && close(image_side, ready["timings"]["total"].as_f64().unwrap(), 1e-9), "{ready}");
    let (s, again) = app.upload(read(data.join("images/happy.png")), None).await;
    assert_eq!(s, 200);
    assert!(again["message"].as_str().unwrap().contains("already precomputed"), "{again}");

    let wav = read(data.join("audio/bus_chinese.wav"));
    let (s, gen) = app.generate(&id, wav.clone(), &[]).await;
    assert_eq!(s, 202, "{gen}");
    let est = gen["estimated_time"].as_f64().unwrap();
    let boost = gen["performance_boost"].as_f64().unwrap();
    assert!(boost > 1.0 && close(boost, (est + image_side) / est, 0.01), "{gen}");
    let sid = gen["session_id"].as_str().unwrap();
    let done = app.wait_session(sid, Duration::from_secs(180)).await;
    let total = done["performance"]["total_time"].as_f64().unwrap();
    let speedup = done["performance"]["speedup"].as_f64().expect("speedup once ready");
    assert!(speedup > 1.0 && close(speedup, (total + image_side) / total, 0.01), "{done}");

    // The same request again: the cached video, a far larger measured boost.
    let (s, cached) = app.generate(&id, wav, &[]).await;
    assert_eq!(s, 200, "{cached}");
    assert!(cached["performance_boost"].as_f64().unwrap() > speedup, "{cached}");
    let (_, stats) = app.get_json("/api/cache/stats").await;
    let summary = &stats["performance_summary"];
    assert_eq!(summary["sessions"], 2, "{stats}");
    let avg = summary["average_speedup"].as_f64().unwrap();
    let expected = (speedup + cached["performance_boost"].as_f64().unwrap()) / 2.0;
    assert!(close(avg, expected, 0.02), "{avg} vs {expected}: {stats}");
}
