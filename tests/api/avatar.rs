//! Avatar upload: precompute in the background, status, the cache hit on a second upload of the
//! same bytes (asserted on the shared counters), and every bad input.

use crate::helpers::*;
use reqwest::multipart::{Form, Part};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_precomputes_once_and_the_same_bytes_hit_the_cache() {
    let Some(data) = testdata() else { return };
    let app = spawn_app().await;
    let image = read(data.join("images/people_0.png"));

    let (s, body) = app.upload(image.clone(), None).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["status"], "processing");
    assert_eq!(body["cached"], false);
    assert!(body["estimated_time"].as_f64().is_some_and(|t| t > 0.0), "{body}");
    let id = body["image_id"].as_str().unwrap().to_string();
    assert_eq!(id, blake3::hash(&image).to_hex().to_string(), "image_id is blake3 of the bytes");

    let status = app.wait_avatar(&id).await;
    assert_eq!(status["status"], "ready", "{status}");
    assert_eq!(status["preprocess_mode"], "crop");
    assert_eq!((status["width"].as_u64(), status["height"].as_u64()), (Some(474), Some(474)));
    assert_eq!(status["faces_found"], 1);
    assert_eq!(status["landmark_model"], "mediapipe", "{status}");
    for stage in ["decode", "detect", "landmarks", "prepare"] {
        assert!(status["timings"][stage].as_f64().is_some(), "no {stage} timing: {status}");
    }
    let cached: Vec<&str> = status["cached"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for entry in [
        "face_detection",
        "landmarks",
        "3dmm_coeffs:crop",
        "face_crop:crop:256",
        "source_state:crop:256:classic",
        "gestures",
        "visemes",
    ] {
        assert!(cached.contains(&entry), "{entry} not cached: {cached:?}");
    }
    assert_eq!(app.counter("computed:precompute").await, 1);
    assert_eq!(app.counter("computed:prepare").await, 1);
    // The idle job that follows the precompute reads the analysis too (a hit): let it finish.
    app.wait_idle_rendered(&id).await;
    let hits_before = app.counter("hits:3dmm_coeffs").await;
    let misses_before = app.counter("misses:3dmm_coeffs").await;

    // Same bytes again: 200, cached, nothing recomputed.
    let (s, body) = app.upload(image.clone(), Some("crop")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!((body["status"].as_str(), body["cached"].as_bool()), (Some("ready"), Some(true)));
    assert_eq!(body["image_id"], id);
    // The upload's status check is not a cache lookup: it counts neither a hit nor a miss.
    assert_eq!(app.counter("hits:3dmm_coeffs").await, hits_before, "the status check counted a hit");
    assert_eq!(app.counter("misses:3dmm_coeffs").await, misses_before);
    // Give a (wrongly) queued job time to run before checking nothing ran.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.counter("computed:precompute").await, 1, "the second upload recomputed");
    assert_eq!(app.counter("computed:prepare").await, 1);

    // The same image in another mode is a separate precompute (new 3dmm_coeffs entry).
    let (s, body) = app.upload(image, Some("full")).await;
    assert_eq!(s, 202, "{body}");
    let status = app.wait_avatar(&id).await;
    assert_eq!((status["status"].as_str(), status["preprocess_mode"].as_str()), (Some("ready"), Some("full")));
    assert_eq!(status["modes"].as_array().map(|m| m.len()), Some(2), "{status}");
    assert_eq!(app.counter("computed:precompute").await, 2);
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["cache_statistics"]["cached_data"]["3dmm_coeffs"], 2, "{stats}");
    assert_eq!(stats["cache_statistics"]["cached_data"]["face_detection"], 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_without_a_face_fails_with_the_typed_error() {
    let dir = scratch("noface");
    let png = dir.join("grey.png");
    ffmpeg(&["-f", "lavfi", "-i", "color=c=gray:s=320x320", "-frames:v", "1"], &png);
    let app = spawn_app().await;
    let (s, body) = app.upload(read(&png), None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["image_id"].as_str().unwrap().to_string();
    let status = app.wait_avatar(&id).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "no_face_found", "{status}");
    assert_eq!(status["error"]["type"], "invalid_request", "{status}");
    // Generating for it reports the same error.
    let wav = dir.join("a.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=220:duration=1"], &wav);
    assert_error(&app.generate(&id, read(&wav), &[]).await, 422, "no_face_found");
}

/// Poll until the shared counter reaches `want` (a job's outcome lands a moment after its record).
async fn wait_counter(app: &TestApp, name: &str, want: i64) {
    let start = std::time::Instant::now();
    while app.counter(name).await < want {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "{name} never reached {want}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_precompute_is_remembered_until_its_ttl_unless_the_server_failed() {
    use vipavatar::records::AvatarRecord;
    use vipavatar::startup::CACHE_SCHEMA_VERSION;
    use vipavatar_cache::codec::{self, Decoded};
    let dir = scratch("noface-memo");
    let png = dir.join("grey.png");
    ffmpeg(&["-f", "lavfi", "-i", "color=c=gray:s=320x320", "-frames:v", "1"], &png);
    let wav = dir.join("a.wav");
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=220:duration=1"], &wav);
    let app = spawn_app().await;
    let (s, body) = app.upload(read(&png), None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["image_id"].as_str().unwrap().to_string();
    assert_eq!(app.wait_avatar(&id).await["error"]["code"], "no_face_found");
    wait_counter(&app, "jobs:failed", 1).await;

    // The same bytes again: the stored typed error at once, nothing queued or run.
    assert_error(&app.upload(read(&png), None).await, 422, "no_face_found");
    assert_error(&app.generate(&id, read(&wav), &[]).await, 422, "no_face_found");
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["queue_status"]["standard"], 0, "{stats}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.counter("jobs:failed").await, 1, "the precompute ran again");

    // An explicit retry runs it again (and fails the same way).
    let form = Form::new().part("image_file", png_part(read(&png))).text("retry", "true");
    let (s, body) = app.post_form("/api/avatar/upload", form).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(app.wait_avatar(&id).await["error"]["code"], "no_face_found");
    wait_counter(&app, "jobs:failed", 2).await;

    // A server-side failure is not remembered: the next upload (and generate) precompute again.
    let key = format!("{}:avatar:{id}:crop", app.config.namespace.as_str());
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let Decoded::Value(mut rec) = codec::decode::<AvatarRecord>(&raw, CACHE_SCHEMA_VERSION) else {
        panic!("avatar record")
    };
    let error = rec.error.as_mut().unwrap();
    (error.code, error.kind) = ("io_error".into(), "internal".into());
    let bytes = codec::encode(&rec, CACHE_SCHEMA_VERSION).unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg(bytes).arg("KEEPTTL").query_async(&mut conn).await.unwrap();
    let (s, body) = app.upload(read(&png), None).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(app.wait_avatar(&id).await["error"]["code"], "no_face_found");
    wait_counter(&app, "jobs:failed", 3).await;
    let raw: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let Decoded::Value(mut rec) = codec::decode::<AvatarRecord>(&raw, CACHE_SCHEMA_VERSION) else {
        panic!("avatar record")
    };
    rec.error.as_mut().unwrap().kind = "system".into();
    let bytes = codec::encode(&rec, CACHE_SCHEMA_VERSION).unwrap();
    let _: () = redis::cmd("SET").arg(&key).arg(bytes).arg("KEEPTTL").query_async(&mut conn).await.unwrap();
    let (s, body) = app.generate(&id, read(&wav), &[]).await;
    assert_eq!(s, 202, "{body}");
    let done = app.wait_session(body["session_id"].as_str().unwrap(), std::time::Duration::from_secs(120)).await;
    assert_eq!(done["error"]["code"], "no_face_found", "{done}");

    // The memory lasts as long as the record (tier 1): once it expires the image runs again.
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 29 * 24 * 3600 * 1000, "the failure is kept for the tier-1 TTL, not {ttl} ms");
    let _: () = redis::cmd("PEXPIRE").arg(&key).arg(1).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (s, body) = app.upload(read(&png), None).await;
    assert_eq!(s, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_the_right_status_and_code() {
    let Some(data) = testdata() else { return };
    let app = spawn_app_with(0, |c| c.limits.max_image_bytes = 300_000).await;
    let png = read(data.join("images/people_0.png"));

    // Missing file field.
    let form = Form::new().text("preprocess_mode", "crop");
    assert_error(&app.post_form("/api/avatar/upload", form).await, 400, "missing_field");
    // Wrong media: a WAV and plain text.
    let wav = read(data.join("audio/bus_chinese.wav"));
    let form = Form::new().part("image_file", Part::bytes(wav[..4096].to_vec()).file_name("a.wav"));
    assert_error(&app.post_form("/api/avatar/upload", form).await, 415, "unsupported_media_type");
    let form = Form::new().part("image_file", Part::bytes(b"hello, I am text".to_vec()).file_name("a.txt"));
    assert_error(&app.post_form("/api/avatar/upload", form).await, 415, "unsupported_media_type");
    // Looks like a PNG but does not decode.
    assert_error(&app.upload(png[..2000].to_vec(), None).await, 422, "not_an_image");
    let mut corrupt = png.clone();
    for b in corrupt.iter_mut().skip(100) {
        *b = 0x5a;
    }
    assert_error(&app.upload(corrupt, None).await, 422, "not_an_image");
    // Empty file.
    assert_error(&app.upload(Vec::new(), None).await, 422, "not_an_image");
    // Bad option.
    assert_error(&app.upload(png.clone(), Some("sideways")).await, 400, "invalid_field");
    // Larger than the byte limit: refused from Content-Length, and from the stream when the
    // length is unknown (chunked).
    let big: Vec<u8> = png.iter().copied().chain(std::iter::repeat_n(0u8, 400_000)).collect();
    assert_error(&app.upload(big.clone(), None).await, 413, "payload_too_large");
    let stream =
        futures_util::stream::iter(big.chunks(65536).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let part = Part::stream(reqwest::Body::wrap_stream(stream)).file_name("big.png");
    let form = Form::new().part("image_file", part);
    assert_error(&app.post_form("/api/avatar/upload", form).await, 413, "payload_too_large");
    // Neither multipart nor JSON.
    let r = app
        .client
        .post(app.url("/api/avatar/upload"))
        .header("Content-Type", "text/plain")
        .body("image_file=x")
        .send()
        .await
        .unwrap();
    assert_error(&json(r).await, 415, "expected_multipart");
    // JSON cannot carry a file field: it names the JSON alternatives.
    let r = app
        .client
        .post(app.url("/api/avatar/upload"))
        .json(&serde_json::json!({"image_file": "x"}))
        .send()
        .await
        .unwrap();
    let got = json(r).await;
    assert_error(&got, 400, "invalid_field");
    assert!(got.1["message"].as_str().unwrap().contains("image_base64"), "{}", got.1);
    // Duplicate field.
    let form = Form::new()
        .part("image_file", png_part(png[..1000].to_vec()))
        .part("image_file", png_part(png[..1000].to_vec()));
    assert_error(&app.post_form("/api/avatar/upload", form).await, 400, "duplicate_field");
    // Status of unknown / malformed ids.
    assert_error(&app.get_json(&format!("/api/avatar/status/{}", "0".repeat(64))).await, 404, "image_not_found");
    assert_error(&app.get_json("/api/avatar/status/not-a-hash").await, 400, "invalid_image_id");
    // Nothing was queued or stored by the rejected requests.
    let (_, stats) = app.get_json("/api/cache/stats").await;
    assert_eq!(stats["queue_status"]["standard"], 0, "{stats}");
    assert_eq!(stats["cache_statistics"]["cached_data"]["avatar"], 0, "{stats}");
}
