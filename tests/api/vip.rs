//! Generation end to end: upload -> ready -> generate -> ready -> download (valid MP4 as long as
//! the audio), Range requests, reuse of every image-side entry for new audio, the cached video
//! for repeated audio, a generate that waits for its avatar, and every bad input.

use crate::helpers::*;
use reqwest::multipart::{Form, Part};
use std::time::Duration;

const FRAME: f64 = 1.0 / 25.0;

async fn download(app: &TestApp, session: &serde_json::Value, to: &std::path::Path) -> Vec<u8> {
    let url = session["download_url"].as_str().expect("download_url");
    let r = app.get(url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let bytes = r.bytes().await.unwrap().to_vec();
    std::fs::write(to, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_generate_download_and_reuse() {
    let Some(data) = testdata() else { return };
    let dir = scratch("vip");
    let app = spawn_app().await;
    let id = app.ready_avatar(read(data.join("images/people_0.png"))).await;
    let (pre, prep) = (app.counter("computed:precompute").await, app.counter("computed:prepare").await);

    // First audio.
    let audio_a = data.join("audio/bus_chinese.wav");
    let (s, body) = app.generate(&id, read(&audio_a), &[("quality", "medium"), ("pose_style", "3")]).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["cached"], false);
    assert!(body["estimated_time"].as_f64().is_some_and(|t| t > 0.0), "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    let done = app.wait_session(&sid, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(done["video_ready"], true);
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["download_url"], format!("/api/vip/download/{sid}"));
    let perf = &done["performance"];
    assert!(perf["total_time"].as_f64().unwrap() >= perf["queue_time"].as_f64().unwrap(), "{perf}");
    // The API decoded the audio (the worker took its samples from `audio_pcm:`); the features
    // are computed chunk by chunk inside `motion`.
    for stage in ["generate", "render", "motion", "audio_load"] {
        assert!(perf["stages"][stage].as_f64().is_some(), "no {stage} stage: {perf}");
    }
    let hits: Vec<&str> = perf["cache_hits"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for kind in ["3dmm_coeffs", "source_state", "face_crop", "gestures", "visemes", "audio_pcm"] {
        assert!(hits.contains(&kind), "{kind} was not reused: {perf}");
    }
    let misses: Vec<&str> = perf["cache_misses"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(misses.contains(&"audio_features") && misses.contains(&"motion"), "{perf}");

    // The MP4: H.264 + audio, duration within one frame of the audio.
    let mp4 = dir.join("a.mp4");
    let bytes = download(&app, &done, &mp4).await;
    let (duration, frames, w, h, has_audio) = probe_mp4(&mp4);
    let audio_len = audio_seconds(&audio_a);
    assert!(has_audio);
    assert_eq!((w, h), (256, 256));
    assert!((duration - audio_len).abs() <= FRAME + 1e-3, "video {duration} s vs audio {audio_len} s");
    assert!((frames as f64 * FRAME - audio_len).abs() <= FRAME + 1e-3, "{frames} frames vs {audio_len} s");
    assert_eq!(done["audio_duration"].as_f64().map(|d| (d - audio_len).abs() < 0.05), Some(true), "{done}");

    // Range: a browser seeking asks for the tail.
    let r = app
        .client
        .get(app.url(&format!("/api/vip/download/{sid}")))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 100-199/{}", bytes.len()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[100..200]);
    let r = app
        .client
        .get(app.url(&format!("/api/vip/download/{sid}")))
        .header("Range", format!("bytes={}-", bytes.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    // New audio: every image-side entry is reused, nothing image-side recomputed.
    let audio_b = data.join("audio/chinese_poem1.wav");
    let (s, body) = app.generate(&id, read(&audio_b), &[]).await;
    assert_eq!(s, 202, "{body}");
    let sid_b = body["session_id"].as_str().unwrap().to_string();
    let done_b = app.wait_session(&sid_b, Duration::from_secs(300)).await;
    assert_eq!(done_b["status"], "ready", "{done_b}");
    assert_eq!(app.counter("computed:precompute").await, pre, "precompute ran again for new audio");
    assert_eq!(app.counter("computed:prepare").await, prep, "prepare ran again for new audio");
    let hits_b = done_b["performance"]["cache_hits"].as_array().unwrap();
    assert!(hits_b.iter().any(|h| h == "source_state"), "{done_b}");
    let (d_b, ..) = probe_mp4(&{
        let p = dir.join("b.mp4");
        download(&app, &done_b, &p).await;
        p
    });
    assert!((d_b - audio_seconds(&audio_b)).abs() <= FRAME + 1e-3);

    // Same image + same audio + same options: the finished video at once.
    let renders = app.counter("computed:render").await;
    let (s, body) = app.generate(&id, read(&audio_a), &[("quality", "medium"), ("pose_style", "3")]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!((body["status"].as_str(), body["cached"].as_bool()), (Some("ready"), Some(true)));
    let again = app.session(body["session_id"].as_str().unwrap()).await;
    assert_eq!(again["status"], "ready", "ready on the first poll: {again}");
    assert_eq!(again["cached"], true);
    let again_bytes = download(&app, &again, &dir.join("c.mp4")).await;
    assert_eq!(again_bytes, bytes, "the cached video is the same file");
    assert_eq!(app.counter("computed:render").await, renders, "the cached video was rendered again");
    // Different options are a different video (motion and render run, image side still cached).
    let (s, body) = app.generate(&id, read(&audio_a), &[("quality", "medium"), ("pose_style", "4")]).await;
    assert_eq!(s, 202, "{body}");
    let done_c = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(done_c["status"], "ready");
    assert!(done_c["performance"]["cache_hits"].as_array().unwrap().iter().any(|h| h == "audio_features"), "{done_c}");
    assert_eq!(app.counter("computed:prepare").await, prep);

    let (_, stats) = app.get_json("/api/cache/stats").await;
    let cs = &stats["cache_statistics"];
    assert_eq!(cs["cached_data"]["video"], 3, "{stats}");
    assert_eq!(cs["cached_data"]["motion"], 3, "{stats}");
    assert_eq!(cs["cached_data"]["audio_features"], 2, "{stats}");
    assert!(cs["performance"]["cache_hit_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(cs["performance"]["computed"]["render"], 3, "{stats}");
    assert_eq!(stats["queue_status"]["failed"], 0);
    assert!(stats["memory"]["redis_used_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_right_after_upload_waits_for_the_avatar() {
    let Some(data) = testdata() else { return };
    // Two workers: one precomputes while the other already holds the generate job and waits.
    let app = spawn_app_with(2, |_| {}).await;
    let (s, body) = app.upload(read(data.join("images/people_0.png")), None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["image_id"].as_str().unwrap().to_string();
    // No waiting: the avatar is (most likely) still processing; the job waits for it.
    let (s, body) = app.generate(&id, read(data.join("audio/bus_chinese.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    // Had the job not waited, it would have found no analysis and precomputed a second time.
    assert_eq!(app.counter("computed:precompute").await, 1, "precompute must run once");
    assert_eq!(app.counter("computed:prepare").await, 1, "prepare must run once");
    assert!(done["performance"]["stages"]["wait_avatar"].as_f64().is_some(), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_generate_requests_get_the_right_status_and_code() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(1, |c| {
        c.limits.max_audio_seconds = 4.0;
        c.limits.max_audio_bytes = 600_000;
    })
    .await;
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    let wav = read(data.join("audio/bus_chinese.wav")); // 3.4 s, 48 kHz stereo: ~650 kB
    let dir = scratch("badgen");
    let small = dir.join("small.wav");
    ffmpeg(&["-i", data.join("audio/bus_chinese.wav").to_str().unwrap(), "-ac", "1", "-ar", "16000"], &small);
    let small = read(&small);
    let long = dir.join("long.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=300:duration=6", "-ar", "8000"], &long);
    let long = read(&long);

    let unknown = "f".repeat(64);
    assert_error(&app.generate(&unknown, small.clone(), &[]).await, 404, "image_not_found");
    assert_error(&app.generate("xyz", small.clone(), &[]).await, 400, "invalid_image_id");
    let form = Form::new().text("image_id", id.clone());
    assert_error(&app.post_form("/api/vip/generate", form).await, 400, "missing_field");
    let form = Form::new().part("audio_file", wav_part(small.clone()));
    assert_error(&app.post_form("/api/vip/generate", form).await, 400, "missing_field");
    // Wrong media, undecodable, too long, too big.
    let png = read(data.join("images/happy.png"));
    assert_error(&app.generate(&id, png, &[]).await, 415, "unsupported_media_type");
    let mut broken = small[..44].to_vec();
    broken.extend(std::iter::repeat_n(0xAB, 100));
    broken[4..8].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F]);
    broken[20] = 0x77; // unknown WAV format tag
    assert_error(&app.generate(&id, broken, &[]).await, 422, "not_audio");
    assert_error(&app.generate(&id, long, &[]).await, 413, "audio_too_long");
    assert_error(&app.generate(&id, wav, &[]).await, 413, "payload_too_large");
    // Options.
    for (field, value, code) in [
        ("size", "300", "invalid_option"),
        ("size", "big", "invalid_field"),
        ("pose_style", "46", "invalid_option"),
        ("expression_scale", "9", "invalid_option"),
        ("quality", "ultra", "invalid_field"),
        ("still_mode", "maybe", "invalid_field"),
        ("engine", "magic", "invalid_field"),
        ("enhancer", "codeformer", "invalid_field"),
    ] {
        let got = app.generate(&id, small.clone(), &[(field, value)]).await;
        assert_error(&got, 400, code);
        assert!(got.1["message"].as_str().unwrap().contains(field), "field not named: {got:?}");
    }
    assert_error(&app.generate(&id, small.clone(), &[("enhancer", "gfpgan")]).await, 422, "unsupported_option");
    assert_error(&app.generate(&id, small.clone(), &[("engine", "sadtalker")]).await, 422, "engine_unavailable");
    // Sessions: unknown, malformed, not ready yet.
    assert_error(&app.get_json(&format!("/api/vip/status/{}", "0".repeat(32))).await, 404, "session_not_found");
    assert_error(&app.get_json("/api/vip/status/zzz").await, 400, "invalid_session_id");
    assert_error(&app.get_json(&format!("/api/vip/download/{}", "0".repeat(32))).await, 404, "session_not_found");
    let (s, body) = app.generate(&id, small.clone(), &[("seed", "7")]).await;
    assert_eq!(s, 202, "{body}");
    let sid = body["session_id"].as_str().unwrap();
    let early = app.get(&format!("/api/vip/download/{sid}")).await;
    // Normally still running (409); if the worker already finished, the download is the video.
    if early.status() != 200 {
        assert_error(&json(early).await, 409, "video_not_ready");
    }
    let done = app.wait_session(sid, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    // Multipart with a text field that is too long.
    let form =
        Form::new().text("image_id", "a".repeat(10_000)).part("audio_file", Part::bytes(small).file_name("a.wav"));
    assert_error(&app.post_form("/api/vip/generate", form).await, 413, "payload_too_large");
}

/// Delete every key of these kinds in the app's namespace (what eviction would do).
async fn evict(app: &TestApp, kinds: &[&str]) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut n = 0;
    for kind in kinds {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:{kind}:*", app.config.namespace.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        for k in keys {
            let _: () = redis::cmd("DEL").arg(&k).query_async(&mut conn).await.unwrap();
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_or_stale_entries_are_rebuilt_from_the_stored_original() {
    let Some(data) = testdata() else { return };
    let app = spawn_app().await;
    let id = app.ready_avatar(read(data.join("images/happy.png"))).await;
    assert_eq!(app.counter("computed:precompute").await, 1);

    // Everything image-side is evicted, the avatar's status record included.
    let all =
        ["face_detection", "landmarks", "3dmm_coeffs", "face_crop", "source_state", "gestures", "visemes", "avatar"];
    assert!(evict(&app, &all).await >= 8);
    let (s, body) = app.generate(&id, read(data.join("audio/bus_chinese.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(app.counter("computed:precompute").await, 2, "rebuilt from the original");
    assert_eq!(app.counter("computed:prepare").await, 2);
    let status = app.wait_avatar(&id).await;
    assert_eq!(status["status"], "ready", "{status}");

    // A value written by another format version is a miss (counted as stale) and rebuilt.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:source_state:*", app.config.namespace.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(b"VAVC\x01\x00\x63\x00old".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    let (s, body) = app.generate(&id, read(data.join("audio/chinese_poem1.wav")), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(app.counter("stale:source_state").await, 1);
    assert_eq!(app.counter("computed:prepare").await, 3, "stale state prepared again");
    assert_eq!(app.counter("computed:precompute").await, 2, "the analysis was still cached");
}
