//! Inputs by URL or base64, in multipart and JSON bodies: fetched from a real local HTTP server
//! (allowed by the operator), sniffed like uploads, limited while streaming, and refused for
//! private, loopback and metadata addresses (literal, by name, or after a redirect) without the
//! operator's allowance. Nothing is stored for a refused request.

use crate::helpers::*;
use crate::remote::Remote;
use base64::Engine as _;
use reqwest::multipart::Form;
use serde_json::json;
use std::time::{Duration, Instant};

async fn post_json(app: &TestApp, path: &str, body: serde_json::Value) -> (reqwest::StatusCode, serde_json::Value) {
    json(app.client.post(app.url(path)).json(&body).send().await.expect("request")).await
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Avatar records and stored originals of the app (nothing may be left by refused requests).
async fn stored_state(app: &TestApp) -> (usize, usize) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*avatar*", app.config.namespace.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let files = std::fs::read_dir(app.config.data_dir.join("images")).map(|d| d.count()).unwrap_or(0);
    (keys.len(), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_audio_arrive_by_url_or_base64_in_multipart_or_json() {
    let Some(data) = testdata() else { return };
    let files = scratch("inputs-files");
    let (face, speech) = (read(data.join("images/happy.png")), read(data.join("audio/bus_chinese.wav")));
    std::fs::write(files.join("face.png"), &face).unwrap();
    std::fs::write(files.join("speech.wav"), &speech).unwrap();
    let remote = Remote::start(files, 0).await;
    let app = spawn_app_with(1, |c| c.fetch.fetch_allow_private = true).await;
    let face_id = blake3::hash(&face).to_hex().to_string();

    // JSON + URL (through two redirects).
    let got = post_json(&app, "/api/avatar/upload", json!({"image_url": remote.url("/redirect/2/face.png")})).await;
    assert_eq!(got.0, 202, "{}", got.1);
    assert_eq!(got.1["image_id"], face_id);
    // JSON + base64 (a data: URL), another mode; multipart + URL; multipart + base64.
    let data_url = format!("data:image/png;base64,{}", b64(&face));
    let got =
        post_json(&app, "/api/avatar/upload", json!({"image_base64": data_url, "preprocess_mode": "resize"})).await;
    assert!(got.0 == 202 || got.0 == 200, "{}", got.1);
    assert_eq!(got.1["image_id"], face_id);
    assert_eq!(got.1["preprocess_mode"], "resize");
    let form = Form::new().text("image_url", remote.url("/files/face.png"));
    let got = app.post_form("/api/avatar/upload", form).await;
    assert_eq!(got.1["image_id"], face_id, "{}", got.1);
    let form = Form::new().text("image_base64", b64(&face));
    let got = app.post_form("/api/avatar/upload", form).await;
    assert_eq!(got.1["image_id"], face_id, "{}", got.1);
    assert_eq!(app.wait_avatar(&face_id).await["status"], "ready");

    // Generate: JSON + audio URL, then multipart + base64 of the same audio (the same video).
    let got = post_json(
        &app,
        "/api/vip/generate",
        json!({"image_id": face_id, "audio_url": remote.url("/files/speech.wav"), "still_mode": true, "seed": 3}),
    )
    .await;
    assert_eq!(got.0, 202, "{}", got.1);
    let sid = got.1["session_id"].as_str().unwrap().to_string();
    let done = app.wait_session(&sid, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(
        (done["audio_duration"].as_f64().unwrap() - audio_seconds(&data.join("audio/bus_chinese.wav"))).abs() < 0.05
    );
    let form = Form::new()
        .text("image_id", face_id.clone())
        .text("audio_base64", b64(&speech))
        .text("still_mode", "true")
        .text("seed", "3");
    let got = app.post_form("/api/vip/generate", form).await;
    assert_eq!(got.0, 200, "the same audio by base64 is the cached video: {}", got.1);
    assert_eq!(got.1["cached"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_base64_get_typed_errors_and_store_nothing() {
    let Some(data) = testdata() else { return };
    let files = scratch("inputs-bad");
    std::fs::write(files.join("face.png"), read(data.join("images/happy.png"))).unwrap();
    std::fs::write(files.join("notes.txt"), b"just some text, not an image").unwrap();
    let remote = Remote::start(files, 0).await;
    let port = remote.base.rsplit(':').next().unwrap().to_string();
    // No allowance: every private target is refused before any byte is fetched.
    let strict = spawn_app_with(0, |_| {}).await;
    for url in [
        remote.url("/files/face.png"),
        format!("http://localhost:{port}/files/face.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/latest/".to_string(),
        format!("http://[::ffff:127.0.0.1]:{port}/files/face.png"),
        "http://10.0.0.1/x.png".to_string(),
        "http://100.64.0.1/x.png".to_string(),
        format!("http://[::1]:{port}/files/face.png"),
    ] {
        let got = post_json(&strict, "/api/avatar/upload", json!({"image_url": url})).await;
        assert_error(&got, 400, "url_forbidden");
        assert!(got.1["message"].as_str().unwrap().contains("image_url"), "{}", got.1);
    }
    for url in ["ftp://example.com/face.png", "file:///etc/passwd"] {
        assert_error(&post_json(&strict, "/api/avatar/upload", json!({"image_url": url})).await, 400, "url_forbidden");
    }
    assert_error(
        &post_json(&strict, "/api/avatar/upload", json!({"image_url": "not a url"})).await,
        400,
        "invalid_field",
    );
    assert_eq!(stored_state(&strict).await, (0, 0));

    // An allow-list for the file server's address only: a redirect from it to another private
    // address is refused (the redirect target is checked again).
    let app = spawn_app_with(0, |c| {
        c.fetch.fetch_allow = "127.0.0.1".into();
        c.fetch.fetch_read_timeout_secs = 1;
        c.fetch.fetch_max_redirects = 3;
        c.limits.max_image_bytes = 1024 * 1024;
    })
    .await;
    let upload_url = |url: String| json!({ "image_url": url });
    let to_metadata = remote.url("/to?url=http%3A%2F%2F169.254.169.254%2Flatest%2F");
    let got = post_json(&app, "/api/avatar/upload", upload_url(to_metadata)).await;
    assert_error(&got, 400, "url_forbidden");
    assert!(got.1["message"].as_str().unwrap().contains("redirected"), "{}", got.1);
    let got = post_json(&app, "/api/avatar/upload", upload_url(remote.url("/redirect/5/face.png"))).await;
    assert_error(&got, 422, "url_fetch_failed");
    assert!(got.1["message"].as_str().unwrap().contains("redirect"), "{}", got.1);
    let got = post_json(&app, "/api/avatar/upload", upload_url(remote.url("/files/missing.png"))).await;
    assert_error(&got, 422, "url_fetch_failed");
    assert!(got.1["message"].as_str().unwrap().contains("404"), "{}", got.1);
    // Sniffed like an upload.
    let got = post_json(&app, "/api/avatar/upload", upload_url(remote.url("/files/notes.txt"))).await;
    assert_error(&got, 415, "unsupported_media_type");
    // The byte limit holds while streaming a body without Content-Length.
    let got = post_json(&app, "/api/avatar/upload", upload_url(remote.url("/endless"))).await;
    assert_error(&got, 413, "payload_too_large");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = remote.endless_sent();
    assert!(sent < 8 * 1024 * 1024, "the fetch stopped near the 1 MiB limit; the server sent {sent} bytes");
    // A body that stops arriving times out.
    let started = Instant::now();
    let got = post_json(&app, "/api/avatar/upload", upload_url(remote.url("/slow"))).await;
    assert_error(&got, 422, "url_fetch_failed");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // base64 errors and ambiguous inputs.
    let got = post_json(&app, "/api/avatar/upload", json!({"image_base64": "%%% not base64 %%%"})).await;
    assert_error(&got, 400, "invalid_base64");
    let form = Form::new().text("image_base64", "!!!!");
    assert_error(&app.post_form("/api/avatar/upload", form).await, 400, "invalid_base64");
    // Blank fields beside the real input are not a second input (as clients that send every
    // field of the schema do).
    let blanks = json!({"image_base64": " ", "image_url": "", "callback_url": ""});
    let got = post_json(&app, "/api/avatar/upload", blanks).await;
    assert_error(&got, 400, "missing_field");
    let both = json!({"image_base64": b64(b"x"), "image_url": remote.url("/files/face.png")});
    assert_error(&post_json(&app, "/api/avatar/upload", both).await, 400, "invalid_field");
    assert_error(&post_json(&app, "/api/avatar/upload", json!({"retry": true})).await, 400, "missing_field");
    assert_error(&post_json(&app, "/api/avatar/upload", json!(["image_url"])).await, 400, "bad_request");
    let image_id = "0".repeat(64);
    let got = post_json(&app, "/api/vip/generate", json!({"image_id": image_id, "audio_base64": "***"})).await;
    assert_error(&got, 400, "invalid_base64");
    let got =
        post_json(&app, "/api/vip/generate", json!({"image_id": image_id, "audio_url": "http://127.0.0.2/a.wav"}))
            .await;
    assert_error(&got, 400, "url_forbidden");
    assert_eq!(stored_state(&app).await, (0, 0), "refused requests leave nothing in Redis or storage");
}
